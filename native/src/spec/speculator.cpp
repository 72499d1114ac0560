// Speculative decoding (see speculator.h).
#include "spec/speculator.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "common/vmath.h"
#include "ops/matmul_kernels.h"

// The vector helpers are inlined into each ISA variant; their ABI never crosses a call.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace edgellm {

namespace {

// The top probability of a softmax over one row of logits (temperature 1, no filters), in f32,
// 16 lanes at a time: it only decides whether the draft goes on. Over SmolLM2's 49,152 logits the
// scalar double loop took ~0.16 ms of a ~3 ms draft step, the AVX-512 variant ~0.015 ms.
inline float top_probability_body(const float* row, int32_t n) {
    using namespace vmath;
    const int32_t n16 = n / 16 * 16;
    float mx = row[0];
    if (n16 > 0) {
        f32x16 m = load16(row);
        for (int32_t i = 16; i < n16; i += 16) m = max16(load16(row + i), m);
        mx = hmax16(m);
    }
    for (int32_t i = n16; i < n; ++i) mx = std::max(mx, row[i]);
    f32x16 z = {};
    for (int32_t i = 0; i < n16; i += 16) z += exp16(load16(row + i) - mx);
    float sum = hsum16(z);
    for (int32_t i = n16; i < n; ++i) sum += exp1(row[i] - mx);
    return 1.0f / sum;
}

__attribute__((flatten)) float top_probability_generic(const float* row, int32_t n) {
    return top_probability_body(row, n);
}
#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx512f,avx512vl,avx512bw,avx512dq"), flatten)) float top_probability_avx512(
    const float* row, int32_t n) {
    return top_probability_body(row, n);
}
#endif

// The variant of the instruction set the matmul kernels run (set_isa() switches both).
float top_probability(const float* row, int32_t n) {
#if defined(__x86_64__) && defined(__GNUC__)
    if (ops::detail::best_isa() == ops::detail::Isa::Avx512) return top_probability_avx512(row, n);
#endif
    return top_probability_generic(row, n);
}

double prob_of(const std::vector<TokenProb>& d, int32_t id) {
    for (const TokenProb& tp : d)
        if (tp.id == id) return tp.p;
    return 0.0;
}

}  // namespace

Speculator::Speculator(Context& target, Context* draft, int32_t n_vocab, const SpecParams& params, IsEog is_eog)
    : target_(target), draft_(draft), p_(params), is_eog_(std::move(is_eog)), n_vocab_(n_vocab) {
    if (p_.draft_max < 1 || p_.draft_max > 64)
        throw Error("draft_max: " + std::to_string(p_.draft_max) + " is outside [1, 64]");
    if (p_.draft_min < 0 || p_.draft_min > p_.draft_max)
        throw Error("draft_min: " + std::to_string(p_.draft_min) + " is outside [0, draft_max]");
    if (!(p_.p_min >= 0.0f && p_.p_min <= 1.0f)) throw Error("p_min: must be in [0, 1]");
    if (p_.draft_vocab < 0) throw Error("draft_vocab: must be 0 or more");
    if (p_.ngram_min < 1 || p_.ngram_max < p_.ngram_min || p_.ngram_max > 64)
        throw Error("ngram_min, ngram_max: need 1 <= ngram_min <= ngram_max <= 64");
    if (n_vocab_ <= 0) throw Error("n_vocab: must be positive");
    k_ = p_.draft_max;
}

void Speculator::propose_lookup(const std::vector<int32_t>& seq, size_t k) {
    const size_t len = seq.size();
    for (size_t n = std::min<size_t>(size_t(p_.ngram_max), len - 1); n >= size_t(p_.ngram_min); --n) {
        const int32_t* key = seq.data() + (len - n);
        // most recent earlier occurrence first; its continuation starts at start + n < len
        for (size_t start = len - n; start-- > 0;) {
            if (seq[start] != key[0] || !std::equal(key, key + n, seq.data() + start)) continue;
            const size_t from = start + n, to = std::min(len, from + k);
            drafts_.assign(seq.begin() + std::ptrdiff_t(from), seq.begin() + std::ptrdiff_t(to));
            return;
        }
        if (n == 1) break;
    }
}

void Speculator::propose_draft(Sampler& smpl, const std::vector<int32_t>& seq, size_t k) {
    Context& d = *draft_;
    // the ids below draft_vocab and every id of the context (set_output_rows marks each row group once)
    if (p_.draft_vocab > 0 && p_.draft_vocab < n_vocab_) d.set_output_rows(p_.draft_vocab, seq);
    d.prefill(seq.data(), seq.size());  // the draft's cache to seq, reusing the common prefix

    Sampler ds = smpl.fork(smpl.greedy() ? 0 : smpl.next_seed());
    const bool sampled = !smpl.greedy();
    for (size_t i = 0; i < k; ++i) {
        const float* row = d.logits();
        if (top_probability(row, n_vocab_) < p_.p_min) break;
        int32_t x;
        if (sampled) {
            if (q_.size() <= i) q_.emplace_back();
            ds.distribution(row, q_[i]);
            x = ds.draw_from(q_[i]);
        } else {
            x = ds.sample(row);
        }
        ds.accept(x);
        drafts_.push_back(x);
        if (is_eog_(x) || i + 1 == k || d.n_past() + 1 > d.n_ctx()) break;
        d.eval(&x, 1, false);
    }
}

// A sampling draft's token i against the target's row: accepted with probability min(1, p/q),
// else a token drawn from max(0, p - q).
int32_t Speculator::verify_sampled(Sampler& smpl, const float* row, size_t i, bool* accepted) {
    const int32_t x = drafts_[i];
    const std::vector<TokenProb>& q = q_[i];
    smpl.distribution(row, p_dist_);
    const double px = prob_of(p_dist_, x), qx = prob_of(q, x);
    if (qx > 0 && smpl.uniform() * qx < px) {
        *accepted = true;
        return x;
    }
    *accepted = false;
    if (q_dense_.size() != size_t(n_vocab_)) q_dense_.assign(size_t(n_vocab_), 0.0);
    for (const TokenProb& tp : q) q_dense_[size_t(tp.id)] = tp.p;
    resid_.clear();
    for (const TokenProb& tp : p_dist_) {
        const double r = tp.p - q_dense_[size_t(tp.id)];
        if (r > 0) resid_.push_back({tp.id, r});
    }
    for (const TokenProb& tp : q) q_dense_[size_t(tp.id)] = 0.0;
    return smpl.draw_from(resid_.empty() ? p_dist_ : resid_);
}

void Speculator::step(Sampler& smpl, int32_t pending, size_t n_max, std::vector<int32_t>& out) {
    if (n_max == 0) throw Error("speculative step: n_max must be at least 1");
    const uint32_t n0 = target_.n_past(), n_ctx = target_.n_ctx();
    if (n0 >= n_ctx)
        throw ContextFull("context full: " + std::to_string(n0) + " cached tokens fill n_ctx " + std::to_string(n_ctx));
    const size_t room = n_ctx - n0;  // pending takes one
    const size_t k = std::min({size_t(k_), n_max - 1, room - 1});

    drafts_.clear();
    if (k > 0) {
        seq_ = target_.tokens();
        seq_.push_back(pending);
        if (draft_) {
            try {
                propose_draft(smpl, seq_, k);
            } catch (const ContextFull&) {
                // the draft's context is full: verify what was drafted
            }
        } else {
            propose_lookup(seq_, k);
        }
    }
    try {
        verify(smpl, pending, n0, out);
    } catch (...) {
        if (target_.n_past() > n0) target_.truncate(n0);  // as before the step
        throw;
    }
}

void Speculator::verify(Sampler& smpl, int32_t pending, uint32_t n0, std::vector<int32_t>& out) {
    const size_t nd = drafts_.size();
    const bool sampled_drafts = draft_ != nullptr && !smpl.greedy();  // drafts drawn from q_
    batch_.assign(1, pending);
    batch_.insert(batch_.end(), drafts_.begin(), drafts_.end());
    target_.eval(batch_.data(), batch_.size(), true);
    const float* rows = target_.logits();

    size_t n_out = 0, n_acc = 0;
    for (size_t i = 0; i <= nd; ++i) {
        const float* row = rows + i * size_t(n_vocab_);
        bool accepted;
        int32_t t;
        if (i < nd && sampled_drafts) {
            t = verify_sampled(smpl, row, i, &accepted);
        } else {
            t = smpl.sample(row);
            accepted = i < nd && t == drafts_[i];
        }
        smpl.accept(t);
        out.push_back(t);
        ++n_out;
        if (!accepted) break;
        ++n_acc;
        if (is_eog_(t)) break;
    }
    // keep pending and every token out but the last
    target_.truncate(n0 + uint32_t(n_out));

    ++stats_.steps;
    stats_.drafted += nd;
    stats_.accepted += n_acc;
    if (nd > 0) {
        if (n_acc == nd)
            k_ = std::min(p_.draft_max, k_ + 2);
        else
            k_ = std::max(p_.draft_min, int32_t(n_acc) + 1);
        k_ = std::max(k_, 1);
    }
}

}  // namespace edgellm
