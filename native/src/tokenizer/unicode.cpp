#include "tokenizer/unicode.h"

#include <algorithm>
#include <array>

namespace edgellm::unicode {

namespace {

Category lookup(uint32_t cp) {
    if (cp > 0x10FFFF) return Undefined;
    // Last range whose first code point is <= cp.
    const uint32_t* first = kCategoryRanges;
    const uint32_t* last = kCategoryRanges + kCategoryRangeCount;
    const uint32_t* it = std::upper_bound(first, last, cp, [](uint32_t v, uint32_t e) { return v < (e >> 3); });
    if (it == first) return Undefined;
    return static_cast<Category>(it[-1] & 7);
}

struct AsciiCategories {
    std::array<Category, 128> cat{};
    AsciiCategories() {
        for (uint32_t c = 0; c < 128; ++c) cat[c] = lookup(c);
    }
};

// GPT-2's table: printable Latin-1 bytes map to themselves, the other 68 bytes to U+0100.. in order.
struct ByteAlphabet {
    std::array<uint32_t, 256> to_cp{};
    std::array<int16_t, 324> from_cp{};  // code points 0..323 cover the whole alphabet
    ByteAlphabet() {
        from_cp.fill(-1);
        uint32_t next = 256;
        for (uint32_t b = 0; b < 256; ++b) {
            const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
            to_cp[b] = printable ? b : next++;
            from_cp[to_cp[b]] = static_cast<int16_t>(b);
        }
    }
};

const AsciiCategories& ascii() {
    static const AsciiCategories table;
    return table;
}

const ByteAlphabet& alphabet() {
    static const ByteAlphabet table;
    return table;
}

}  // namespace

Category category(uint32_t cp) {
    return cp < 128 ? ascii().cat[cp] : lookup(cp);
}

bool is_whitespace(uint32_t cp) {
    if (cp < 0x80) return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20;
    switch (cp) {
        case 0x0085: case 0x00A0: case 0x1680: case 0x2028: case 0x2029: case 0x202F: case 0x205F: case 0x3000:
            return true;
        default:
            return cp >= 0x2000 && cp <= 0x200A;
    }
}

std::vector<uint32_t> decode_lenient(std::string_view s) {
    std::vector<uint32_t> out;
    out.reserve(s.size());
    const auto* p = reinterpret_cast<const uint8_t*>(s.data());
    const size_t n = s.size();
    size_t i = 0;
    while (i < n) {
        const uint8_t b = p[i];
        if (b < 0x80) {
            out.push_back(b);
            ++i;
            continue;
        }
        size_t len = 0;
        uint32_t cp = 0;
        if ((b & 0xE0) == 0xC0) {
            len = 2;
            cp = b & 0x1F;
        } else if ((b & 0xF0) == 0xE0) {
            len = 3;
            cp = b & 0x0F;
        } else if ((b & 0xF8) == 0xF0) {
            len = 4;
            cp = b & 0x07;
        }
        bool ok = len != 0 && i + len <= n;
        for (size_t k = 1; ok && k < len; ++k) {
            if ((p[i + k] & 0xC0) != 0x80) {
                ok = false;
            } else {
                cp = (cp << 6) | (p[i + k] & 0x3F);
            }
        }
        if (ok && cp <= 0x10FFFF) {
            out.push_back(cp);
            i += len;
        } else {
            out.push_back(kReplacement);
            ++i;
        }
    }
    return out;
}

size_t well_formed_length(std::string_view s, size_t i) {
    if (i >= s.size()) return 0;
    const auto* p = reinterpret_cast<const uint8_t*>(s.data()) + i;
    const size_t avail = s.size() - i;
    const uint8_t b = p[0];
    if (b < 0x80) return 1;
    size_t len = 0;
    uint8_t lo = 0x80, hi = 0xBF;  // range of the second byte (Unicode table 3-7)
    if (b >= 0xC2 && b <= 0xDF) {
        len = 2;
    } else if (b >= 0xE0 && b <= 0xEF) {
        len = 3;
        if (b == 0xE0) lo = 0xA0;
        if (b == 0xED) hi = 0x9F;
    } else if (b >= 0xF0 && b <= 0xF4) {
        len = 4;
        if (b == 0xF0) lo = 0x90;
        if (b == 0xF4) hi = 0x8F;
    }
    if (len == 0 || avail < len || p[1] < lo || p[1] > hi) return 0;
    for (size_t k = 2; k < len; ++k) {
        if ((p[k] & 0xC0) != 0x80) return 0;
    }
    return len;
}

void append_utf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
        out.push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
        out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
        out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
        out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
        out.push_back(static_cast<char>(0xF0 | ((cp >> 18) & 0x07)));
        out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
        out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
        out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
}

uint32_t byte_to_codepoint(uint8_t b) {
    return alphabet().to_cp[b];
}

int byte_from_codepoint(uint32_t cp) {
    return cp < alphabet().from_cp.size() ? alphabet().from_cp[cp] : -1;
}

}  // namespace edgellm::unicode
