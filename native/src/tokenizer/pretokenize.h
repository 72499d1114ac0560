// Pre-tokenizers of byte-level BPE vocabularies: split text into words before BPE merges, as the
// split regexes llama.cpp associates with each tokenizer.ggml.pre name, implemented by hand over
// Unicode categories (no regex engine). Each regex splits every fragment of the previous step
// into its matches and the unmatched gaps between them.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

namespace edgellm::tokenizer {

enum class PreTokenizer {
    // [\p{P}$+<=>^~|]+ ; gpt2 ; \p{N}+ ; [0-9][0-9][0-9]
    Default,
    // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)
    Gpt2,
    // (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|
    //     \s*[\r\n]+|\s+(?!\S)|\s+
    Llama3,
    // as Llama3 with \p{N} (single digits) instead of \p{N}{1,3}
    Qwen2,
    // \p{N} ; gpt2
    Smollm,
};

// Properties of a tokenizer.ggml.pre name.
struct PreTokenizerInfo {
    PreTokenizer type;
    bool ignore_merges;  // a word that is a whole vocabulary entry is taken as is (llama3)
    bool add_bos;        // default of tokenizer.ggml.add_bos_token
};

// false for names we do not implement.
bool pre_tokenizer_from_name(std::string_view name, PreTokenizerInfo* out);

// Splits `cpts` into words; returns their lengths in code points (all > 0, summing to cpts.size()).
std::vector<size_t> split_words(PreTokenizer pre, const std::vector<uint32_t>& cpts);

}  // namespace edgellm::tokenizer
