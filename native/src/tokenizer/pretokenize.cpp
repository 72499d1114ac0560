#include "tokenizer/pretokenize.h"

#include <string>

#include "tokenizer/unicode.h"

namespace edgellm::tokenizer {

namespace {

using Lengths = std::vector<size_t>;

// The text with its classes precomputed, and one fragment [ini, end) of it being split. Positions
// outside the fragment belong to no class (the regexes run on each fragment alone).
struct Fragment {
    const uint32_t* cp;
    const uint8_t* cat;  // unicode::Category per code point
    const uint8_t* ws;   // White_Space per code point
    size_t ini, end;

    bool in(size_t p) const { return p >= ini && p < end; }
    bool letter(size_t p) const { return in(p) && cat[p] == unicode::Letter; }
    bool number(size_t p) const { return in(p) && cat[p] == unicode::Number; }
    bool space(size_t p) const { return in(p) && ws[p]; }
    // [^\s\p{L}\p{N}]
    bool other(size_t p) const { return in(p) && !ws[p] && cat[p] != unicode::Letter && cat[p] != unicode::Number; }
    bool newline(size_t p) const { return in(p) && (cp[p] == '\r' || cp[p] == '\n'); }
};

// Collects word lengths: emit(to) closes the word that started where the previous one ended.
struct Emitter {
    Lengths& out;
    size_t prev;
    void emit(size_t to) {
        if (to > prev) out.push_back(to - prev);
        prev = to;
    }
};

struct Text {
    const std::vector<uint32_t>& cpts;
    std::vector<uint8_t> cat, ws;

    explicit Text(const std::vector<uint32_t>& c) : cpts(c), cat(c.size()), ws(c.size()) {
        for (size_t i = 0; i < c.size(); ++i) {
            cat[i] = unicode::category(c[i]);
            ws[i] = unicode::is_whitespace(c[i]);
        }
    }

    // Applies split(fragment, emitter) to every fragment of `in`.
    template <typename Split>
    Lengths each(const Lengths& in, Split split) const {
        Lengths out;
        out.reserve(in.size() * 2);
        size_t start = 0;
        for (size_t len : in) {
            Fragment f{cpts.data(), cat.data(), ws.data(), start, start + len};
            Emitter e{out, start};
            split(f, e);
            e.emit(f.end);
            start += len;
        }
        return out;
    }
};

uint32_t ascii_lower(uint32_t c) {
    return (c >= 'A' && c <= 'Z') ? c + 32 : c;
}

// 's|'t|'re|'ve|'m|'ll|'d (case-insensitive when `fold`): the length matched at pos, or 0.
size_t contraction(const Fragment& f, size_t pos, bool fold) {
    if (f.cp[pos] != '\'' || pos + 1 >= f.end) return 0;
    auto at = [&](size_t p) { return fold ? ascii_lower(f.cp[p]) : f.cp[p]; };
    const uint32_t a = at(pos + 1);
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
    if (pos + 2 >= f.end) return 0;
    const uint32_t b = at(pos + 2);
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
    return 0;
}

// Whitespace branches shared by the gpt2 and llama3 patterns, at a position no other branch took.
// \s*[\r\n]+ (llama3 only) | \s+(?!\S) | \s+
size_t whitespace_end(const Fragment& f, size_t pos, bool newline_branch) {
    size_t k = 0;
    size_t after_newline = 0;
    while (f.space(pos + k)) {
        if (f.newline(pos + k)) after_newline = pos + k + 1;
        ++k;
    }
    if (newline_branch && after_newline > 0) return after_newline;
    if (k > 1 && pos + k < f.end) return pos + k - 1;  // leave the last space to the next word
    if (k > 0) return pos + k;
    return pos + 1;  // no branch matched: one code point on its own
}

void split_gpt2(const Fragment& f, Emitter& e) {
    size_t pos = f.ini;
    while (pos < f.end) {
        if (const size_t n = contraction(f, pos, false)) {
            pos += n;
            e.emit(pos);
            continue;
        }
        const size_t q = f.cp[pos] == ' ' ? pos + 1 : pos;  // optional leading space
        if (f.letter(q) || f.number(q) || f.other(q)) {
            const bool letter = f.letter(q), number = f.number(q);
            pos = q;
            while (letter ? f.letter(pos) : number ? f.number(pos) : f.other(pos)) ++pos;
            e.emit(pos);
            continue;
        }
        pos = whitespace_end(f, pos, false);
        e.emit(pos);
    }
}

void split_llama3(const Fragment& f, Emitter& e, size_t max_digits) {
    size_t pos = f.ini;
    while (pos < f.end) {
        if (const size_t n = contraction(f, pos, true)) {
            pos += n;
            e.emit(pos);
            continue;
        }
        // [^\r\n\p{L}\p{N}]?\p{L}+
        if (!f.newline(pos) && !f.number(pos) && (f.letter(pos) || f.letter(pos + 1))) {
            ++pos;
            while (f.letter(pos)) ++pos;
            e.emit(pos);
            continue;
        }
        // \p{N}{1,max_digits}
        if (f.number(pos)) {
            size_t run = 0;
            while (f.number(pos)) {
                ++pos;
                if (++run == max_digits) {
                    e.emit(pos);
                    run = 0;
                }
            }
            e.emit(pos);
            continue;
        }
        // ' '?[^\s\p{L}\p{N}]+[\r\n]*
        const size_t q = f.cp[pos] == ' ' ? pos + 1 : pos;
        if (f.other(q)) {
            pos = q;
            while (f.other(pos)) ++pos;
            while (f.newline(pos)) ++pos;
            e.emit(pos);
            continue;
        }
        pos = whitespace_end(f, pos, true);
        e.emit(pos);
    }
}

// Maximal runs of code points in the class, and the gaps between them.
template <typename Pred>
void split_runs(const Fragment& f, Emitter& e, Pred in_class) {
    size_t pos = f.ini;
    while (pos < f.end) {
        if (!in_class(pos)) {
            ++pos;
            continue;
        }
        e.emit(pos);
        while (pos < f.end && in_class(pos)) ++pos;
        e.emit(pos);
    }
}

// Every code point of the class alone, and the gaps between them.
template <typename Pred>
void split_each(const Fragment& f, Emitter& e, Pred in_class) {
    for (size_t pos = f.ini; pos < f.end; ++pos) {
        if (in_class(pos)) {
            e.emit(pos);
            e.emit(pos + 1);
        }
    }
}

// [0-9][0-9][0-9]: leftmost non-overlapping triples of ASCII digits, and the gaps.
void split_digit_triples(const Fragment& f, Emitter& e) {
    auto digit = [&](size_t p) { return f.in(p) && f.cp[p] >= '0' && f.cp[p] <= '9'; };
    size_t pos = f.ini;
    while (pos + 3 <= f.end) {
        if (digit(pos) && digit(pos + 1) && digit(pos + 2)) {
            e.emit(pos);
            pos += 3;
            e.emit(pos);
        } else {
            ++pos;
        }
    }
}

}  // namespace

bool pre_tokenizer_from_name(std::string_view name, PreTokenizerInfo* out) {
    struct Entry {
        const char* name;
        PreTokenizerInfo info;
    };
    // Names as llama.cpp's converter writes them, for the split patterns implemented here.
    static const Entry kNames[] = {
        {"default", {PreTokenizer::Default, false, false}},
        {"gpt-2", {PreTokenizer::Gpt2, false, false}},
        {"gpt2", {PreTokenizer::Gpt2, false, false}},
        {"phi-2", {PreTokenizer::Gpt2, false, false}},
        {"mpt", {PreTokenizer::Gpt2, false, false}},
        {"olmo", {PreTokenizer::Gpt2, false, false}},
        {"llama3", {PreTokenizer::Llama3, true, true}},
        {"llama-v3", {PreTokenizer::Llama3, true, true}},
        {"llama-bpe", {PreTokenizer::Llama3, true, true}},
        {"falcon3", {PreTokenizer::Llama3, true, true}},
        {"pixtral", {PreTokenizer::Llama3, true, true}},
        {"smaug-bpe", {PreTokenizer::Llama3, false, false}},
        {"dbrx", {PreTokenizer::Llama3, false, false}},
        {"qwen2", {PreTokenizer::Qwen2, false, false}},
        {"deepseek-r1-qwen", {PreTokenizer::Qwen2, false, false}},
        {"stablelm2", {PreTokenizer::Qwen2, false, false}},
        {"megrez", {PreTokenizer::Qwen2, false, false}},
        {"smollm", {PreTokenizer::Smollm, false, false}},
        {"starcoder", {PreTokenizer::Smollm, false, false}},
        {"refact", {PreTokenizer::Smollm, false, false}},
        {"command-r", {PreTokenizer::Smollm, false, false}},
        {"codeshell", {PreTokenizer::Smollm, false, false}},
        {"exaone", {PreTokenizer::Smollm, false, false}},
        {"minerva-7b", {PreTokenizer::Smollm, false, false}},
    };
    for (const Entry& e : kNames) {
        if (name == e.name) {
            *out = e.info;
            return true;
        }
    }
    return false;
}

std::vector<size_t> split_words(PreTokenizer pre, const std::vector<uint32_t>& cpts) {
    if (cpts.empty()) return {};
    const Text text(cpts);
    Lengths words{cpts.size()};
    auto gpt2 = [](const Fragment& f, Emitter& e) { split_gpt2(f, e); };
    switch (pre) {
        case PreTokenizer::Default:
            words = text.each(words, [](const Fragment& f, Emitter& e) {
                split_runs(f, e, [&](size_t p) {
                    const uint32_t c = f.cp[p];
                    return f.cat[p] == unicode::Punctuation || c == '$' || c == '+' || c == '<' || c == '=' ||
                           c == '>' || c == '^' || c == '~' || c == '|';
                });
            });
            words = text.each(words, gpt2);
            words = text.each(words, [](const Fragment& f, Emitter& e) {
                split_runs(f, e, [&](size_t p) { return f.cat[p] == unicode::Number; });
            });
            words = text.each(words, split_digit_triples);
            break;
        case PreTokenizer::Gpt2:
            words = text.each(words, gpt2);
            break;
        case PreTokenizer::Llama3:
            words = text.each(words, [](const Fragment& f, Emitter& e) { split_llama3(f, e, 3); });
            break;
        case PreTokenizer::Qwen2:
            words = text.each(words, [](const Fragment& f, Emitter& e) { split_llama3(f, e, 1); });
            break;
        case PreTokenizer::Smollm:
            words = text.each(words, [](const Fragment& f, Emitter& e) {
                split_each(f, e, [&](size_t p) { return f.cat[p] == unicode::Number; });
            });
            words = text.each(words, gpt2);
            break;
    }
    return words;
}

}  // namespace edgellm::tokenizer
