// What the BPE and SentencePiece tokenizers share: the vocabulary read from tokenizer.ggml.*, the
// special ids, end-of-generation tokens, splitting the input on special-token text, and pieces.
// Internal to native/src/tokenizer/.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "tokenizer/tokenizer.h"

namespace edgellm::tokenizer {

class Vocab : public Tokenizer {
public:
    // ids_ holds views into texts_: never copied.
    Vocab(const Vocab&) = delete;
    Vocab& operator=(const Vocab&) = delete;

    int32_t n_vocab() const override { return static_cast<int32_t>(texts_.size()); }
    int32_t bos() const override { return bos_; }
    int32_t eos() const override { return eos_; }
    bool add_bos() const override { return add_bos_; }
    bool add_eos() const override { return add_eos_; }
    bool is_eog(int32_t id) const override { return eog_.count(id) > 0; }
    bool add_space_prefix() const override { return add_space_prefix_; }
    TokenType type(int32_t id) const override;
    const std::string& text(int32_t id) const override;
    std::vector<int32_t> encode(std::string_view text, bool add_special, bool parse_special) const override;
    std::string piece(int32_t id, bool special) const override;

protected:
    // Part of the input: raw text [offset, offset + length), or a special token (token >= 0).
    struct Fragment {
        size_t offset;
        size_t length;
        int32_t token;
    };

    explicit Vocab(const gguf::Reader& file);

    // Step 1 of loading: tokens, token types and (when present) scores.
    void load_tokens(const gguf::Reader& file);
    // Last step: special ids (with the defaults given), add_bos/add_eos, end-of-generation tokens,
    // the special-token list and the piece of every token.
    struct Defaults {
        int32_t bos = -1, eos = -1, unk = -1;
        bool add_bos = false;
    };
    void load_specials(const gguf::Reader& file, const Defaults& defaults);

    // Tokenizes one raw fragment of the input; `after_special` is true at the start of the input
    // and right after a special token.
    virtual void encode_raw(std::string_view text, bool after_special, std::vector<int32_t>& out) const = 0;
    // Bytes of a normal token (byte-level symbols decoded, U+2581 to space, ...).
    virtual std::string render_normal(int32_t id) const = 0;

    // Error naming the file and the key: "<path>: key '<key>': <what>".
    [[noreturn]] void fail(std::string_view key, const std::string& what) const;
    // Id of a vocabulary entry, -1 when absent.
    int32_t find(std::string_view text) const;
    // Byte of a <0xXX> token text, -1 for any other text.
    static int byte_token_value(std::string_view text);

    std::string path_;  // for messages
    std::vector<std::string> texts_;
    std::vector<TokenType> types_;
    std::vector<float> scores_;  // 0 when the file has none
    std::unordered_map<std::string_view, int32_t> ids_;  // views into texts_

    int32_t bos_ = -1, eos_ = -1, unk_ = -1;
    bool add_bos_ = false, add_eos_ = false;
    bool add_space_prefix_ = false;  // SentencePiece only

    bool optional_bool(const gguf::Reader& file, std::string_view key, bool fallback) const;

private:
    std::vector<Fragment> partition(std::string_view text, bool parse_special) const;
    int32_t optional_id(const gguf::Reader& file, std::string_view key, int32_t fallback) const;

    std::unordered_set<int32_t> eog_;
    std::vector<int32_t> specials_;       // control, user-defined and unknown tokens, longest text first
    std::vector<std::string> pieces_;     // piece(id, special = true)
};

// Text from a file or the input, for messages: quoted, cut after 48 bytes, control bytes and bytes
// that are not UTF-8 escaped (\xNN) so the message stays valid UTF-8.
std::string quoted(std::string_view text);

// The two models (bpe.cpp, spm.cpp); both throw gguf::Error / Unsupported naming the key.
std::unique_ptr<Tokenizer> load_bpe(const gguf::Reader& file);
std::unique_ptr<Tokenizer> load_spm(const gguf::Reader& file);

}  // namespace edgellm::tokenizer
