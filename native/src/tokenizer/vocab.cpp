#include "tokenizer/vocab.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "common/error.h"
#include "gguf/gguf.h"
#include "tokenizer/unicode.h"

namespace edgellm::tokenizer {

namespace {

constexpr const char* kTokens = "tokenizer.ggml.tokens";
constexpr const char* kTokenType = "tokenizer.ggml.token_type";
constexpr const char* kScores = "tokenizer.ggml.scores";

// Vocabulary texts that end a turn or the text (llama.cpp's list): they end generation and are
// treated as control tokens whatever their stored type.
const char* const kEndOfGeneration[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>",
    "_<EOT>", "<|end_of_text|>", "<end_of_utterance>", "<eos>",
    "<\xEF\xBD\x9C" "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>",  // DeepSeek's, full-width bars
    // fill-in-the-middle padding, repository and file separators also end generation
    "<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>",
    "<reponame>", "<|file_sep|>",
};
// Fill-in-the-middle markers: control tokens whatever their stored type (as llama.cpp).
const char* const kFimMarkers[] = {
    "<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<PRE>", "\xE2\x96\x81<PRE>", "<|fim_suffix|>",
    "<fim-suffix>", "<fim_suffix>", "<SUF>", "\xE2\x96\x81<SUF>", "<|fim_middle|>", "<fim-middle>",
    "<fim_middle>", "<MID>", "\xE2\x96\x81<MID>",
};

bool is_integer(gguf::ValueType t) {
    using V = gguf::ValueType;
    return t == V::UINT8 || t == V::INT8 || t == V::UINT16 || t == V::INT16 || t == V::UINT32 || t == V::INT32 ||
           t == V::UINT64 || t == V::INT64;
}

// An integer scalar of any width as int64 (UINT64 above INT64_MAX saturates).
int64_t integer_value(const gguf::KV& kv) {
    using V = gguf::ValueType;
    const size_t n = gguf::value_type_size(static_cast<uint32_t>(kv.type));
    uint64_t raw = 0;
    std::memcpy(&raw, kv.data, n);  // little-endian file, little-endian host
    switch (kv.type) {
        case V::INT8: return static_cast<int8_t>(raw);
        case V::INT16: return static_cast<int16_t>(raw);
        case V::INT32: return static_cast<int32_t>(raw);
        case V::INT64: return static_cast<int64_t>(raw);
        default: return raw > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())
                            ? std::numeric_limits<int64_t>::max()
                            : static_cast<int64_t>(raw);
    }
}

}  // namespace

std::string quoted(std::string_view s) {
    // Messages must stay valid UTF-8: whole characters pass, control and invalid bytes are escaped.
    static const char* hex = "0123456789abcdef";
    std::string out = "'";
    size_t i = 0;
    while (i < s.size() && i < 48) {
        const auto c = static_cast<uint8_t>(s[i]);
        const size_t len = unicode::well_formed_length(s, i);
        if (len > 0 && c >= 0x20 && c != 0x7F && c != '\'' && c != '\\') {
            out.append(s.substr(i, len));
            i += len;
        } else {
            out += "\\x";
            out += hex[c >> 4];
            out += hex[c & 15];
            ++i;
        }
    }
    if (i < s.size()) out += "...";
    return out + "'";
}

Vocab::Vocab(const gguf::Reader& file) : path_(file.path()) {}

void Vocab::fail(std::string_view key, const std::string& what) const {
    throw gguf::Error(path_ + ": key '" + std::string(key) + "': " + what);
}

int32_t Vocab::find(std::string_view text) const {
    const auto it = ids_.find(text);
    return it == ids_.end() ? -1 : it->second;
}

int Vocab::byte_token_value(std::string_view t) {
    auto hex = [](char c) {
        if (c >= '0' && c <= '9') return c - '0';
        if (c >= 'A' && c <= 'F') return c - 'A' + 10;
        if (c >= 'a' && c <= 'f') return c - 'a' + 10;
        return -1;
    };
    if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return -1;
    const int hi = hex(t[3]), lo = hex(t[4]);
    return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

void Vocab::load_tokens(const gguf::Reader& file) {
    const auto& tokens = file.get_string_array(kTokens);  // throws naming the key when absent / mistyped
    const size_t n = tokens.size();
    if (n == 0) fail(kTokens, "the vocabulary is empty");
    if (n > static_cast<size_t>(std::numeric_limits<int32_t>::max())) fail(kTokens, std::to_string(n) + " tokens");

    texts_.reserve(n);
    for (size_t i = 0; i < n; ++i) {
        // an empty entry could never be matched; llama.cpp names it like this
        texts_.emplace_back(tokens[i].empty() ? "[EMPTY_" + std::to_string(i) + "]" : std::string(tokens[i]));
    }
    ids_.reserve(n);
    for (size_t i = 0; i < n; ++i) {
        const auto [it, inserted] = ids_.emplace(texts_[i], static_cast<int32_t>(i));
        if (!inserted) {
            fail(kTokens, "token " + std::to_string(i) + " " + quoted(texts_[i]) + " repeats token " +
                              std::to_string(it->second));
        }
    }

    types_.assign(n, TokenType::Normal);
    if (file.find(kTokenType)) {
        const std::vector<int32_t> types = file.get_i32_array(kTokenType);
        if (types.size() != n) {
            fail(kTokenType, std::to_string(types.size()) + " entries for the " + std::to_string(n) + " tokens of " +
                                 kTokens);
        }
        for (size_t i = 0; i < n; ++i) {
            if (types[i] < 0 || types[i] > static_cast<int32_t>(TokenType::Byte)) {
                fail(kTokenType, "token " + std::to_string(i) + " has type " + std::to_string(types[i]) +
                                     " (types are 0..6)");
            }
            types_[i] = static_cast<TokenType>(types[i]);
            if (types_[i] == TokenType::Byte && byte_token_value(texts_[i]) < 0) {
                fail(kTokenType, "token " + std::to_string(i) + " " + quoted(texts_[i]) +
                                     " has type BYTE (6) but is not written <0xXX>");
            }
        }
    }

    scores_.assign(n, 0.0f);
    if (const gguf::KV* kv = file.find(kScores)) {
        std::vector<float> scores;
        if (kv->type == gguf::ValueType::ARRAY && kv->elem_type == gguf::ValueType::INT32) {
            for (int32_t v : file.get_i32_array(kScores)) scores.push_back(static_cast<float>(v));
        } else {
            scores = file.get_f32_array(kScores);  // throws naming the key for other types
        }
        if (scores.size() != n) {
            fail(kScores, std::to_string(scores.size()) + " entries for the " + std::to_string(n) + " tokens of " +
                              kTokens);
        }
        for (size_t i = 0; i < n; ++i) {
            if (std::isnan(scores[i])) fail(kScores, "the score of token " + std::to_string(i) + " is NaN");
        }
        scores_ = std::move(scores);
    }
}

int32_t Vocab::optional_id(const gguf::Reader& file, std::string_view key, int32_t fallback) const {
    const gguf::KV* kv = file.find(key);
    const int64_t n = n_vocab();
    if (!kv) return fallback >= 0 && fallback < n ? fallback : -1;
    if (!is_integer(kv->type)) {
        fail(key, std::string("type is ") + gguf::value_type_name(static_cast<uint32_t>(kv->type)) +
                      ", expected uint32");
    }
    const int64_t v = integer_value(*kv);
    if (v == -1) return -1;  // a signed "none"
    if (v < 0 || v >= n) {
        fail(key, "token id " + std::to_string(v) + " is outside the vocabulary [0, " + std::to_string(n) + ")");
    }
    return static_cast<int32_t>(v);
}

bool Vocab::optional_bool(const gguf::Reader& file, std::string_view key, bool fallback) const {
    return file.find(key) ? file.get_bool(key) : fallback;
}

void Vocab::load_specials(const gguf::Reader& file, const Defaults& defaults) {
    const int32_t n = n_vocab();
    bos_ = optional_id(file, "tokenizer.ggml.bos_token_id", defaults.bos);
    eos_ = optional_id(file, "tokenizer.ggml.eos_token_id", defaults.eos);
    unk_ = optional_id(file, "tokenizer.ggml.unknown_token_id", defaults.unk);
    optional_id(file, "tokenizer.ggml.padding_token_id", -1);  // checked, not used
    const int32_t eot = optional_id(file, "tokenizer.ggml.eot_token_id", -1);
    const int32_t eom = optional_id(file, "tokenizer.ggml.eom_token_id", -1);

    // A flag the file sets needs its token; a default without a token is dropped.
    add_bos_ = optional_bool(file, "tokenizer.ggml.add_bos_token", defaults.add_bos);
    add_eos_ = optional_bool(file, "tokenizer.ggml.add_eos_token", false);
    if (add_bos_ && bos_ < 0) {
        if (file.find("tokenizer.ggml.add_bos_token")) {
            fail("tokenizer.ggml.add_bos_token", "is true, but tokenizer.ggml.bos_token_id is not set");
        }
        add_bos_ = false;
    }
    if (add_eos_ && eos_ < 0) {
        fail("tokenizer.ggml.add_eos_token", "is true, but tokenizer.ggml.eos_token_id is not set");
    }

    for (int32_t id : {eos_, eot, eom}) {
        if (id >= 0) eog_.insert(id);
    }
    for (const char* t : kEndOfGeneration) {
        const int32_t id = find(t);
        if (id < 0) continue;
        eog_.insert(id);
        types_[id] = TokenType::Control;
    }
    for (const char* t : kFimMarkers) {
        const int32_t id = find(t);
        if (id >= 0) types_[id] = TokenType::Control;
    }

    for (int32_t id = 0; id < n; ++id) {
        const TokenType t = types_[id];
        if (t == TokenType::Control || t == TokenType::UserDefined || t == TokenType::Unknown) specials_.push_back(id);
    }
    std::stable_sort(specials_.begin(), specials_.end(),
                     [&](int32_t a, int32_t b) { return texts_[a].size() > texts_[b].size(); });

    pieces_.resize(n);
    for (int32_t id = 0; id < n; ++id) {
        switch (types_[id]) {
            case TokenType::Control:
            case TokenType::Unknown:
            case TokenType::UserDefined:
                pieces_[id] = texts_[id];
                break;
            case TokenType::Normal:
                pieces_[id] = render_normal(id);
                break;
            case TokenType::Byte:
                pieces_[id] = std::string(1, static_cast<char>(byte_token_value(texts_[id])));
                break;
            case TokenType::Undefined:
            case TokenType::Unused:
                break;  // render as nothing
        }
    }
}

TokenType Vocab::type(int32_t id) const {
    return id >= 0 && id < n_vocab() ? types_[id] : TokenType::Undefined;
}

const std::string& Vocab::text(int32_t id) const {
    static const std::string none;
    return id >= 0 && id < n_vocab() ? texts_[id] : none;
}

std::string Vocab::piece(int32_t id, bool special) const {
    if (id < 0 || id >= n_vocab()) return {};
    if (!special && (types_[id] == TokenType::Control || types_[id] == TokenType::Unknown)) return {};
    return pieces_[id];
}

// Splits the input on special-token text, one token at a time, longest first (llama.cpp's order:
// a longer token wins over a shorter one it overlaps). User-defined tokens are always split off;
// control and unknown tokens only when parse_special.
std::vector<Vocab::Fragment> Vocab::partition(std::string_view text, bool parse_special) const {
    std::vector<Fragment> frags{{0, text.size(), -1}};
    std::vector<Fragment> next;
    for (int32_t id : specials_) {
        if (!parse_special && types_[id] != TokenType::UserDefined) continue;
        const std::string& tok = texts_[id];
        if (text.find(tok) == std::string_view::npos) continue;  // cheap filter: nowhere in the input
        next.clear();
        for (const Fragment& f : frags) {
            if (f.token >= 0) {
                next.push_back(f);
                continue;
            }
            size_t off = f.offset;
            const size_t end = f.offset + f.length;
            while (off < end) {
                const size_t at = text.substr(0, end).find(tok, off);
                if (at == std::string_view::npos) break;
                if (at > off) next.push_back({off, at - off, -1});
                next.push_back({at, tok.size(), id});
                off = at + tok.size();
            }
            if (off < end) next.push_back({off, end - off, -1});
        }
        frags.swap(next);
    }
    return frags;
}

std::vector<int32_t> Vocab::encode(std::string_view text, bool add_special, bool parse_special) const {
    // keeps symbol offsets (<= 3 bytes per input byte) and indices within 32 bits
    constexpr size_t kMaxText = size_t{1} << 29;
    if (text.size() > kMaxText) {
        throw Error("tokenize: the text is " + std::to_string(text.size()) + " bytes, more than the " +
                    std::to_string(kMaxText) + " one call takes");
    }
    std::vector<int32_t> out;
    if (add_special && add_bos_) out.push_back(bos_);
    if (!text.empty()) {
        bool after_special = true;
        for (const Fragment& f : partition(text, parse_special)) {
            if (f.token >= 0) {
                out.push_back(f.token);
                after_special = true;
            } else {
                encode_raw(text.substr(f.offset, f.length), after_special, out);
                after_special = false;
            }
        }
    }
    if (add_special && add_eos_) out.push_back(eos_);
    return out;
}

}  // namespace edgellm::tokenizer
