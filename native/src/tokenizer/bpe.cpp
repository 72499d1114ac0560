// Byte-level BPE (tokenizer.ggml.model "gpt2"): pre-tokenize into words, write each word's bytes in
// GPT-2's byte alphabet, then merge adjacent symbols lowest merge rank first (leftmost on ties).
#include <algorithm>
#include <limits>
#include <queue>

#include "gguf/gguf.h"
#include "model/model.h"
#include "tokenizer/pretokenize.h"
#include "tokenizer/unicode.h"
#include "tokenizer/vocab.h"

namespace edgellm::tokenizer {

namespace {

constexpr const char* kMerges = "tokenizer.ggml.merges";
constexpr const char* kPre = "tokenizer.ggml.pre";

class Bpe final : public Vocab {
public:
    explicit Bpe(const gguf::Reader& file) : Vocab(file) {
        const gguf::KV* pre = file.find(kPre);
        const std::string name = pre ? std::string(file.get_string(kPre)) : "default";
        if (!pre_tokenizer_from_name(name, &pre_)) {
            throw Unsupported(path_ + ": key '" + kPre + "': unsupported pre-tokenizer " + quoted(name) +
                              " (supported: default, gpt-2, llama-bpe, qwen2, smollm and aliases)");
        }
        load_tokens(file);
        load_merges(file);
        Defaults d;
        d.add_bos = pre_.add_bos;
        load_specials(file, d);
    }

protected:
    void encode_raw(std::string_view text, bool, std::vector<int32_t>& out) const override {
        const std::vector<uint32_t> cpts = unicode::decode_lenient(text);
        std::string word;
        size_t start = 0;
        for (size_t len : split_words(pre_.type, cpts)) {
            // the word's UTF-8 bytes (invalid input already became U+FFFD), each as its alphabet symbol
            std::string bytes;
            for (size_t i = start; i < start + len; ++i) unicode::append_utf8(bytes, cpts[i]);
            word.clear();
            for (unsigned char b : bytes) unicode::append_utf8(word, unicode::byte_to_codepoint(b));
            encode_word(word, out);
            start += len;
        }
    }

    std::string render_normal(int32_t id) const override {
        std::string out;
        for (uint32_t cp : unicode::decode_lenient(texts_[id])) {
            const int b = unicode::byte_from_codepoint(cp);
            if (b >= 0) {
                out.push_back(static_cast<char>(b));
            } else {
                unicode::append_utf8(out, cp);  // outside the byte alphabet: kept as written
            }
        }
        return out;
    }

private:
    struct Symbol {
        uint32_t start, n;  // bytes of the word; n == 0 once merged into the symbol on its left
        int prev, next;     // neighbours in the chain, -1 at the ends
        int32_t id;         // vocabulary id of the symbol's text, -1 when it is not an entry
    };
    struct Pair {
        int32_t rank;
        int left, right;
        uint32_t left_n, right_n;  // sizes when queued: a pair whose symbols changed since is stale
    };
    struct Later {
        bool operator()(const Pair& a, const Pair& b) const {
            return a.rank > b.rank || (a.rank == b.rank && a.left > b.left);
        }
    };

    static uint64_t key(int32_t a, int32_t b) {
        return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
    }

    void load_merges(const gguf::Reader& file) {
        const auto& merges = file.get_string_array(kMerges);  // throws naming the key when absent
        if (merges.size() > static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
            fail(kMerges, std::to_string(merges.size()) + " merges, more than ranks can number");
        }
        ranks_.reserve(merges.size());
        for (size_t i = 0; i < merges.size(); ++i) {
            const std::string_view m = merges[i];
            const size_t sp = m.size() > 1 ? m.find(' ', 1) : std::string_view::npos;
            if (sp == std::string_view::npos) {
                fail(kMerges, "merge " + std::to_string(i) + " is not two tokens separated by a space");
            }
            const std::string_view parts[2] = {m.substr(0, sp), m.substr(sp + 1)};
            int32_t ids[2];
            for (int k = 0; k < 2; ++k) {
                ids[k] = find(parts[k]);
                if (ids[k] < 0) {
                    fail(kMerges, "merge " + std::to_string(i) + " names " + quoted(parts[k]) +
                                      ", which is not in tokenizer.ggml.tokens");
                }
            }
            ranks_.emplace(key(ids[0], ids[1]), static_cast<int32_t>(i));  // the first rank of a pair wins
        }
    }

    void encode_word(const std::string& w, std::vector<int32_t>& out) const {
        if (pre_.ignore_merges) {
            const int32_t id = find(w);
            if (id >= 0) {
                out.push_back(id);
                return;
            }
        }
        std::vector<Symbol> sym;
        for (uint32_t off = 0; off < w.size();) {
            const auto len = static_cast<uint32_t>(unicode::sequence_length(static_cast<uint8_t>(w[off])));
            const uint32_t n = std::min(len, static_cast<uint32_t>(w.size()) - off);
            const int i = static_cast<int>(sym.size());
            sym.push_back({off, n, i - 1, off + n == w.size() ? -1 : i + 1, find(std::string_view(w).substr(off, n))});
            off += n;
        }
        std::priority_queue<Pair, std::vector<Pair>, Later> queue;
        auto add = [&](int l, int r) {
            if (l < 0 || r < 0 || sym[l].id < 0 || sym[r].id < 0) return;
            const auto it = ranks_.find(key(sym[l].id, sym[r].id));
            if (it != ranks_.end()) queue.push({it->second, l, r, sym[l].n, sym[r].n});
        };
        for (int i = 1; i < static_cast<int>(sym.size()); ++i) add(i - 1, i);

        while (!queue.empty()) {
            const Pair p = queue.top();
            queue.pop();
            Symbol& l = sym[p.left];
            Symbol& r = sym[p.right];
            if (l.n == 0 || r.n == 0 || l.n != p.left_n || r.n != p.right_n) continue;
            l.n += r.n;
            r.n = 0;
            l.next = r.next;
            if (r.next >= 0) sym[r.next].prev = p.left;
            l.id = find(std::string_view(w).substr(l.start, l.n));
            add(l.prev, p.left);
            add(p.left, l.next);
        }

        for (int i = sym.empty() ? -1 : 0; i != -1; i = sym[i].next) {
            const Symbol& s = sym[i];
            if (s.id >= 0) {
                out.push_back(s.id);
                continue;
            }
            // not an entry: its bytes one by one, where they are entries (as llama.cpp)
            for (uint32_t k = 0; k < s.n; ++k) {
                const int32_t id = find(std::string_view(w).substr(s.start + k, 1));
                if (id >= 0) out.push_back(id);
            }
        }
    }

    PreTokenizerInfo pre_{};
    std::unordered_map<uint64_t, int32_t> ranks_;  // (left id, right id) -> merge rank
};

}  // namespace

std::unique_ptr<Tokenizer> load_bpe(const gguf::Reader& file) {
    return std::make_unique<Bpe>(file);
}

}  // namespace edgellm::tokenizer
