// Unicode helpers for the tokenizers: general categories (the major class only, as the pre-tokenizer
// regexes use them), the White_Space property, UTF-8 decoding and encoding, and GPT-2's byte-level
// alphabet (every byte as one printable code point).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace edgellm::unicode {

// Major general category; Undefined is Cn (unassigned) and anything above U+10FFFF.
enum Category : uint8_t {
    Undefined = 0,
    Number = 1,       // \p{N}
    Letter = 2,       // \p{L}
    Separator = 3,    // \p{Z}
    Mark = 4,         // \p{M}
    Punctuation = 5,  // \p{P}
    Symbol = 6,       // \p{S}
    Control = 7,      // \p{C} other than Cn
};

// Generated table (unicode_tables.cpp): (first code point << 3) | Category, sorted.
extern const uint32_t kCategoryRanges[];
extern const size_t kCategoryRangeCount;

Category category(uint32_t cp);
// The White_Space property (PropList.txt): \t..\r, space, U+0085, U+00A0, U+1680, U+2000..U+200A,
// U+2028, U+2029, U+202F, U+205F, U+3000.
bool is_whitespace(uint32_t cp);

constexpr uint32_t kReplacement = 0xFFFD;

// Length of the UTF-8 sequence a byte starts, judged by its high bits only (continuation bytes: 1).
inline size_t sequence_length(uint8_t lead) {
    static constexpr uint8_t kByHighNibble[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    return kByHighNibble[lead >> 4];
}

// Code points of `s`, decoded the way llama.cpp does before pre-tokenizing: the lead byte's high bits
// give the length, continuation bytes must be 10xxxxxx; anything else (and values above U+10FFFF)
// becomes one U+FFFD per offending byte. Overlong forms and surrogates are decoded, not rejected.
std::vector<uint32_t> decode_lenient(std::string_view s);

// Bytes of the well-formed UTF-8 character at s[i] (no overlong forms, surrogates or values above
// U+10FFFF), 0 when the bytes there are not one.
size_t well_formed_length(std::string_view s, size_t i);

// Appends the UTF-8 form of cp (cp <= U+10FFFF; surrogates are encoded like any other value).
void append_utf8(std::string& out, uint32_t cp);

// GPT-2 byte-level alphabet: byte -> its code point, and back (-1 for code points outside it).
uint32_t byte_to_codepoint(uint8_t b);
int byte_from_codepoint(uint32_t cp);

}  // namespace edgellm::unicode
