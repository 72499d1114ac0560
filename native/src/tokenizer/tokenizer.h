// The model's tokenizer, built from GGUF metadata (tokenizer.ggml.*): byte-level BPE with the
// pre-tokenizer named by tokenizer.ggml.pre, or SentencePiece-style (tokenizer.ggml.model "llama":
// scores, byte fallback, space prefix). Immutable after load; safe to share between threads.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace edgellm {

namespace gguf {
class Reader;
}

// tokenizer.ggml.token_type values.
enum class TokenType : int32_t {
    Undefined = 0,
    Normal = 1,
    Unknown = 2,
    Control = 3,
    UserDefined = 4,
    Unused = 5,
    Byte = 6,
};

class Tokenizer {
public:
    virtual ~Tokenizer() = default;

    // Reads the tokenizer.* keys of an opened file. Throws gguf::Error (edgellm::Error) naming the
    // file and the key ("<path>: tokenizer.ggml.merges: ...") for missing or inconsistent data, and
    // for a tokenizer model or pre-tokenizer we do not support.
    static std::unique_ptr<Tokenizer> load(const gguf::Reader& file);

    virtual int32_t n_vocab() const = 0;
    virtual int32_t bos() const = 0;  // -1 when none
    virtual int32_t eos() const = 0;  // -1 when none
    virtual bool add_bos() const = 0;
    virtual bool add_eos() const = 0;
    virtual bool is_eog(int32_t id) const = 0;  // eos, eot, <|im_end|>, <end_of_turn>, ...
    virtual TokenType type(int32_t id) const = 0;
    virtual const std::string& text(int32_t id) const = 0;  // the vocabulary entry as stored

    // add_special: BOS/EOS per metadata. parse_special: control / user-defined token text in
    // `text` becomes those tokens; otherwise everything is plain text.
    virtual std::vector<int32_t> encode(std::string_view text, bool add_special, bool parse_special) const = 0;
    // The bytes of one token: byte-level symbols mapped back to bytes, <0xXX> byte tokens to one
    // byte, SentencePiece's U+2581 to a space. Control tokens give their text when `special`,
    // otherwise "". Callers check 0 <= id < n_vocab() first.
    virtual std::string piece(int32_t id, bool special) const = 0;

    // SentencePiece vocabularies that put a space before the text (tokenizer.ggml.add_space_prefix).
    virtual bool add_space_prefix() const = 0;
    // The bytes of a whole sequence: pieces joined, less the one space the space prefix put before
    // the first word (what sentencepiece's decode does), so decode(encode(s)) == s. Ids out of range
    // give nothing. The result may end inside a UTF-8 character (pass it through a Utf8Stream).
    std::string decode(const std::vector<int32_t>& ids, bool special) const;
};

// Splits a byte stream into whole UTF-8 characters: push() returns the longest complete prefix of
// what it holds (invalid sequences replaced by U+FFFD) and keeps an incomplete tail for next time.
class Utf8Stream {
public:
    std::string push(std::string_view bytes);
    std::string flush();  // the held tail as U+FFFD (one per invalid sequence), then empty

private:
    std::string held_;
};

}  // namespace edgellm
