#include "tokenizer/tokenizer.h"

#include "gguf/gguf.h"
#include "model/model.h"
#include "tokenizer/vocab.h"

namespace edgellm {

std::unique_ptr<Tokenizer> Tokenizer::load(const gguf::Reader& file) {
    static constexpr const char* kModel = "tokenizer.ggml.model";
    const std::string_view model = file.get_string(kModel);  // throws naming the key when absent
    if (model == "gpt2") return tokenizer::load_bpe(file);
    if (model == "llama") return tokenizer::load_spm(file);
    throw Unsupported(file.path() + ": key '" + kModel + "': unsupported tokenizer model " + tokenizer::quoted(model) +
                      " (supported: gpt2 = byte-level BPE, llama = SentencePiece)");
}

std::string Tokenizer::decode(const std::vector<int32_t>& ids, bool special) const {
    std::string out;
    // The space prefix is the U+2581 a normal token starts with; byte tokens keep their spaces.
    bool strip = add_space_prefix();
    for (int32_t id : ids) {
        std::string p = piece(id, special);
        if (strip && !p.empty()) {
            if (type(id) == TokenType::Normal && text(id).compare(0, 3, "\xE2\x96\x81") == 0) p.erase(0, 1);
            strip = false;
        }
        out += p;
    }
    return out;
}

namespace {

constexpr char kReplacementUtf8[] = "\xEF\xBF\xBD";

// Bytes allowed after a lead byte, per position (Unicode table 3-7, well-formed UTF-8).
// Returns the sequence length for a lead byte and the range of its second byte; 0 when the byte
// cannot start a sequence.
size_t lead_info(uint8_t b, uint8_t* lo, uint8_t* hi) {
    *lo = 0x80;
    *hi = 0xBF;
    if (b >= 0xC2 && b <= 0xDF) return 2;
    if (b >= 0xE0 && b <= 0xEF) {
        if (b == 0xE0) *lo = 0xA0;
        if (b == 0xED) *hi = 0x9F;  // no surrogates
        return 3;
    }
    if (b >= 0xF0 && b <= 0xF4) {
        if (b == 0xF0) *lo = 0x90;  // no overlong forms
        if (b == 0xF4) *hi = 0x8F;  // nothing above U+10FFFF
        return 4;
    }
    return 0;
}

}  // namespace

// Invalid input becomes one U+FFFD per maximal ill-formed subpart (the practice of the Unicode
// standard, WHATWG and Python's errors="replace").
std::string Utf8Stream::push(std::string_view bytes) {
    held_.append(bytes.data(), bytes.size());
    std::string out;
    const auto* p = reinterpret_cast<const uint8_t*>(held_.data());
    const size_t n = held_.size();
    size_t i = 0;
    while (i < n) {
        if (p[i] < 0x80) {
            out.push_back(static_cast<char>(p[i++]));
            continue;
        }
        uint8_t lo, hi;
        const size_t len = lead_info(p[i], &lo, &hi);
        if (len == 0) {
            out += kReplacementUtf8;
            ++i;
            continue;
        }
        size_t k = 1;
        while (k < len && i + k < n) {
            const uint8_t c = p[i + k];
            if (c < (k == 1 ? lo : 0x80) || c > (k == 1 ? hi : 0xBF)) break;
            ++k;
        }
        if (k == len) {
            out.append(held_, i, len);
            i += len;
        } else if (i + k == n) {
            break;  // a valid beginning cut by the end of the input: wait for more
        } else {
            out += kReplacementUtf8;  // the valid beginning, as one character
            i += k;
        }
    }
    held_.erase(0, i);
    return out;
}

std::string Utf8Stream::flush() {
    std::string out = held_.empty() ? "" : kReplacementUtf8;  // held_ is one incomplete character
    held_.clear();
    return out;
}

}  // namespace edgellm
