// SentencePiece-style vocabularies (tokenizer.ggml.model "llama"): spaces become U+2581 (with one
// put before the text when add_space_prefix), then adjacent symbols merge best score first
// whenever their concatenation is a vocabulary entry (leftmost on ties); what stays outside the
// vocabulary falls back to <0xXX> byte tokens, or to the unknown token when there are none.
#include <algorithm>
#include <queue>

#include "common/error.h"
#include "gguf/gguf.h"
#include "tokenizer/unicode.h"
#include "tokenizer/vocab.h"

namespace edgellm::tokenizer {

namespace {

constexpr const char* kSpace = "\xE2\x96\x81";  // U+2581, SentencePiece's visible space

class Spm final : public Vocab {
public:
    explicit Spm(const gguf::Reader& file) : Vocab(file) {
        load_tokens(file);
        add_space_prefix_ = optional_bool(file, "tokenizer.ggml.add_space_prefix", true);
        for (int b = 0; b < 256; ++b) {
            static const char* hex = "0123456789ABCDEF";
            const char text[6] = {'<', '0', 'x', hex[b >> 4], hex[b & 15], '>'};
            byte_ids_[b] = find(std::string_view(text, 6));
            if (byte_ids_[b] < 0) byte_ids_[b] = find(std::string(1, static_cast<char>(b)));
        }
        Defaults d;  // llama.cpp's defaults for this model: <unk> 0, <s> 1, </s> 2, BOS added
        d.unk = 0;
        d.bos = 1;
        d.eos = 2;
        d.add_bos = true;
        load_specials(file, d);
    }

protected:
    void encode_raw(std::string_view text, bool after_special, std::vector<int32_t>& out) const override {
        std::string s;
        s.reserve(text.size() + 16);
        if (add_space_prefix_ && after_special) s += kSpace;
        for (char c : text) {
            if (c == ' ') {
                s += kSpace;
            } else {
                s.push_back(c);
            }
        }

        // one symbol per UTF-8 character (by its lead byte; a truncated tail is one symbol)
        std::vector<Symbol> sym;
        for (uint32_t off = 0; off < s.size();) {
            const auto len = static_cast<uint32_t>(unicode::sequence_length(static_cast<uint8_t>(s[off])));
            const uint32_t n = std::min(len, static_cast<uint32_t>(s.size()) - off);
            const int i = static_cast<int>(sym.size());
            sym.push_back({off, n, i - 1, off + n == s.size() ? -1 : i + 1});
            off += n;
        }
        const std::string_view sv(s);
        std::priority_queue<Pair, std::vector<Pair>, Worse> queue;
        auto add = [&](int l, int r) {
            if (l < 0 || r < 0) return;
            const uint32_t size = sym[l].n + sym[r].n;
            const int32_t id = find(sv.substr(sym[l].start, size));
            if (id >= 0) queue.push({scores_[id], l, r, size});
        };
        for (int i = 1; i < static_cast<int>(sym.size()); ++i) add(i - 1, i);

        while (!queue.empty()) {
            const Pair p = queue.top();
            queue.pop();
            Symbol& l = sym[p.left];
            Symbol& r = sym[p.right];
            if (l.n == 0 || r.n == 0 || l.n + r.n != p.size) continue;  // one side changed since queued
            l.n += r.n;
            r.n = 0;
            l.next = r.next;
            if (r.next >= 0) sym[r.next].prev = p.left;
            add(l.prev, p.left);
            add(p.left, l.next);
        }

        bool last_was_unknown = false;
        for (int i = sym.empty() ? -1 : 0; i != -1; i = sym[i].next) {
            const std::string_view piece = sv.substr(sym[i].start, sym[i].n);
            const int32_t id = find(piece);
            if (id >= 0) {
                out.push_back(id);
                last_was_unknown = false;
                continue;
            }
            bool all_bytes = true;
            for (char c : piece) all_bytes = all_bytes && byte_ids_[static_cast<uint8_t>(c)] >= 0;
            if (all_bytes) {
                for (char c : piece) out.push_back(byte_ids_[static_cast<uint8_t>(c)]);
                last_was_unknown = false;
            } else if (unk_ >= 0) {
                if (!last_was_unknown) out.push_back(unk_);  // a run of unknown characters is one <unk>
                last_was_unknown = true;
            } else {
                throw Error(path_ + ": the vocabulary has neither byte tokens nor an unknown token for the text " +
                            quoted(piece));
            }
        }
    }

    std::string render_normal(int32_t id) const override {
        std::string out;
        const std::string& t = texts_[id];
        for (size_t i = 0; i < t.size();) {
            if (t.compare(i, 3, kSpace) == 0) {
                out.push_back(' ');
                i += 3;
            } else {
                out.push_back(t[i++]);
            }
        }
        return out;
    }

private:
    struct Symbol {
        uint32_t start, n;  // bytes of the text; n == 0 once merged into the symbol on its left
        int prev, next;     // neighbours in the chain, -1 at the ends
    };
    struct Pair {
        float score;
        int left, right;
        uint32_t size;  // bytes of the merged text when queued
    };
    struct Worse {
        bool operator()(const Pair& a, const Pair& b) const {
            return a.score < b.score || (a.score == b.score && a.left > b.left);
        }
    };

    int32_t byte_ids_[256];  // the token of each byte for the fallback, -1 when none
};

}  // namespace

std::unique_ptr<Tokenizer> load_spm(const gguf::Reader& file) {
    return std::make_unique<Spm>(file);
}

}  // namespace edgellm::tokenizer
