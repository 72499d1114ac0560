// The sampler chain (see sampler.h). Filters work on the untempered distribution, as llama.cpp's
// default chain does; temperature only shapes the final draw. Penalties and softmax sums are in
// double (penalized logits clamped to the finite floats), and every step keeps the candidates in a canonical order
// (ascending id, or descending logit with ascending id on ties) so that the draw does not depend
// on how a standard library orders equal elements.
#include "sampling/sampler.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <string>

#include "common/error.h"

namespace edgellm {

// ---------------------------------------------------------------- random stream

namespace {

uint64_t splitmix64(uint64_t& x) {
    uint64_t z = (x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

}  // namespace

void Rng::seed_with(uint64_t seed) {
    // splitmix64 never yields four zero words in a row, so the xoshiro state is never all zero.
    uint64_t x = seed;
    for (uint64_t& w : s_) w = splitmix64(x);
}

uint64_t Rng::next_u64() {
    const uint64_t result = rotl(s_[1] * 5, 7) * 9;
    const uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return result;
}

double Rng::next_double() { return static_cast<double>(next_u64() >> 11) * 0x1.0p-53; }

// ---------------------------------------------------------------- parameters

namespace {

std::string fmt(double v) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%g", v);
    return buf;
}

[[noreturn]] void bad(const char* field, const std::string& value, const char* what) {
    throw Error(std::string("sampler: ") + field + ": " + value + " " + what);
}

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr size_t kHeapSelectMax = 1024;  // top-k up to this size by heap selection, above by nth_element

}  // namespace

Sampler::Sampler(const SamplerParams& params, int32_t n_vocab) : params_(params), n_vocab_(n_vocab), rng_(params.seed) {
    const SamplerParams& p = params;
    if (n_vocab <= 0) bad("n_vocab", std::to_string(n_vocab), "must be positive");
    if (!std::isfinite(p.temperature) || p.temperature < 0)
        bad("temperature", fmt(p.temperature), "must be a finite number >= 0");
    if (!(p.top_p > 0 && p.top_p <= 1)) bad("top_p", fmt(p.top_p), "is outside (0, 1]");
    if (!(p.min_p >= 0 && p.min_p < 1)) bad("min_p", fmt(p.min_p), "is outside [0, 1)");
    if (!std::isfinite(p.repeat_penalty) || p.repeat_penalty <= 0)
        bad("repeat_penalty", fmt(p.repeat_penalty), "must be a finite number > 0");
    if (!std::isfinite(p.frequency_penalty)) bad("frequency_penalty", fmt(p.frequency_penalty), "must be finite");
    if (!std::isfinite(p.presence_penalty)) bad("presence_penalty", fmt(p.presence_penalty), "must be finite");
    if (p.penalty_last_n < 0) bad("penalty_last_n", std::to_string(p.penalty_last_n), "must be >= 0");

    // The history grows on accept up to penalty_last_n (a huge window costs only what is used).
    work_.resize(static_cast<size_t>(n_vocab));
    cand_.reserve(static_cast<size_t>(n_vocab));
    prob_.reserve(static_cast<size_t>(n_vocab));
}

void Sampler::accept(int32_t token) {
    const size_t window = static_cast<size_t>(params_.penalty_last_n);
    if (window == 0 || token < 0 || token >= n_vocab_) return;
    if (history_.size() < window) {
        history_.push_back(token);  // still filling
    } else {
        history_[history_pos_] = token;  // full: overwrite the oldest
    }
    history_pos_ = (history_pos_ + 1) % window;
}

void Sampler::reset() {
    history_.clear();
    history_pos_ = 0;
    rng_.seed_with(params_.seed);
}

// ---------------------------------------------------------------- the chain

namespace {

// Descending logit, ascending id on ties: a strict total order, so every sort gives one result.
struct Better {
    template <class C>
    bool operator()(const C& a, const C& b) const {
        return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
    }
};

}  // namespace

void Sampler::load(const float* logits) {
    const size_t n = static_cast<size_t>(n_vocab_);
    bool bad = false;
    for (size_t i = 0; i < n; ++i) {
        work_[i] = logits[i];
        bad |= !(logits[i] < kInf);  // NaN or +inf
    }
    if (bad) {
        for (size_t i = 0; i < n; ++i)
            if (!(logits[i] < kInf))
                throw Error("sampler: logits: token " + std::to_string(i) + " is " +
                            (std::isnan(logits[i]) ? "nan" : "+inf"));
    }

    // Penalties: each distinct recent token once, with its count. Arithmetic in double, the result
    // clamped to the finite floats so that a penalty never turns a logit into an infinity.
    const SamplerParams& p = params_;
    const bool any = p.repeat_penalty != 1.0f || p.frequency_penalty != 0.0f || p.presence_penalty != 0.0f;
    if (!any || history_.empty()) return;
    recent_.assign(history_.begin(), history_.end());
    std::sort(recent_.begin(), recent_.end());
    const double fmax = std::numeric_limits<float>::max();
    for (size_t i = 0; i < recent_.size();) {
        size_t j = i;
        while (j < recent_.size() && recent_[j] == recent_[i]) ++j;
        const double count = static_cast<double>(j - i);
        float& slot = work_[static_cast<size_t>(recent_[i])];
        if (slot != -kInf) {  // a banned token stays banned
            double l = slot;
            l = l > 0 ? l / p.repeat_penalty : l * p.repeat_penalty;
            l -= count * p.frequency_penalty + p.presence_penalty;
            slot = static_cast<float>(std::min(fmax, std::max(-fmax, l)));
        }
        i = j;
    }
}

int32_t Sampler::argmax() const {
    size_t best = 0;
    for (size_t i = 1; i < work_.size(); ++i)
        if (work_[i] > work_[best]) best = i;
    if (work_[best] == -kInf) throw Error("sampler: logits: every logit is -inf");
    return static_cast<int32_t>(best);
}

void Sampler::select_top_k() {
    const size_t n = work_.size();
    const size_t k = params_.top_k > 0 ? static_cast<size_t>(params_.top_k) : n;
    cand_.clear();
    cand_sorted_ = false;
    if (k < n && k <= kHeapSelectMax) {
        // Heap selection in one pass: the heap's front is the worst of the k kept so far, and most
        // tokens cost one comparison with it. Output sorted.
        const Better better;
        for (size_t i = 0; i < n; ++i) {
            const Candidate c{work_[i], static_cast<int32_t>(i)};
            if (c.logit == -kInf) continue;
            if (cand_.size() < k) {
                cand_.push_back(c);
                if (cand_.size() == k) std::make_heap(cand_.begin(), cand_.end(), better);
            } else if (better(c, cand_.front())) {
                std::pop_heap(cand_.begin(), cand_.end(), better);
                cand_.back() = c;
                std::push_heap(cand_.begin(), cand_.end(), better);
            }
        }
        std::sort(cand_.begin(), cand_.end(), better);
        cand_sorted_ = true;
    } else {
        for (size_t i = 0; i < n; ++i)
            if (work_[i] != -kInf) cand_.push_back({work_[i], static_cast<int32_t>(i)});
        if (k < cand_.size()) {  // a large k: O(n) selection, then a sort of the k kept
            std::nth_element(cand_.begin(), cand_.begin() + static_cast<std::ptrdiff_t>(k), cand_.end(), Better());
            cand_.resize(k);
            std::sort(cand_.begin(), cand_.end(), Better());
            cand_sorted_ = true;
        }
    }
    if (cand_.empty()) throw Error("sampler: logits: every logit is -inf");
}

void Sampler::apply_top_p() {
    const double top_p = params_.top_p;
    if (top_p >= 1.0) return;
    const size_t n = cand_.size();

    double lmax = -std::numeric_limits<double>::infinity();
    for (const Candidate& c : cand_) lmax = std::max<double>(lmax, c.logit);
    double z = 0;
    for (const Candidate& c : cand_) z += std::exp(c.logit - lmax);

    // Sort a growing prefix until it holds the mass: usually a few hundred tokens out of the
    // whole vocabulary, so this stays near O(n) instead of a full O(n log n) sort. The best m of
    // a total order start with the best m/8, so the running sum carries over between rounds.
    size_t m = cand_sorted_ ? n : std::min<size_t>(n, 256);
    size_t i = 0;
    double cum = 0;
    for (;;) {
        if (!cand_sorted_)
            std::partial_sort(cand_.begin() + static_cast<std::ptrdiff_t>(i),
                              cand_.begin() + static_cast<std::ptrdiff_t>(m), cand_.end(), Better());
        for (; i < m; ++i) {
            cum += std::exp(cand_[i].logit - lmax) / z;
            if (cum >= top_p) {
                cand_.resize(i + 1);
                cand_sorted_ = true;
                return;
            }
        }
        if (m == n) break;  // rounding left the total just under top_p: keep everything
        m = std::min(n, m * 8);
    }
    cand_sorted_ = true;
}

void Sampler::apply_min_p() {
    const double min_p = params_.min_p;
    if (min_p <= 0) return;
    double lmax = -std::numeric_limits<double>::infinity();
    for (const Candidate& c : cand_) lmax = std::max<double>(lmax, c.logit);
    // p_i >= min_p * p_max  <=>  l_i - l_max >= log(min_p); the top token always stays.
    // The kept tokens keep their order (stable removal).
    const double cut = std::log(min_p);
    cand_.erase(std::remove_if(cand_.begin(), cand_.end(), [&](const Candidate& c) { return c.logit - lmax < cut; }),
                cand_.end());
}

int32_t Sampler::draw() {
    const double t = params_.temperature;
    double lmax = -std::numeric_limits<double>::infinity();
    for (const Candidate& c : cand_) lmax = std::max<double>(lmax, c.logit);
    prob_.resize(cand_.size());
    double z = 0;
    for (size_t i = 0; i < cand_.size(); ++i) {
        prob_[i] = std::exp((cand_[i].logit - lmax) / t);
        z += prob_[i];
    }
    const double u = rng_.next_double() * z;
    double cum = 0;
    size_t last = 0;
    for (size_t i = 0; i < cand_.size(); ++i) {
        if (prob_[i] <= 0) continue;
        cum += prob_[i];
        last = i;
        if (cum > u) return cand_[i].id;
    }
    return cand_[last].id;  // u landed past the rounded total: the last token with weight
}

int32_t Sampler::sample(const float* logits) {
    if (logits == nullptr) throw Error("sampler: logits: null pointer");
    load(logits);
    if (params_.temperature == 0.0f) return argmax();  // greedy: penalties apply, filters cannot change it
    select_top_k();
    apply_top_p();
    apply_min_p();
    return draw();
}

void Sampler::distribution(const float* logits, std::vector<TokenProb>& out) {
    out.clear();
    if (logits == nullptr) throw Error("sampler: logits: null pointer");
    load(logits);
    if (params_.temperature == 0.0f) {
        out.push_back({argmax(), 1.0});
        return;
    }
    select_top_k();
    apply_top_p();
    apply_min_p();
    const double t = params_.temperature;
    double lmax = -std::numeric_limits<double>::infinity();
    for (const Candidate& c : cand_) lmax = std::max<double>(lmax, c.logit);
    double z = 0;
    for (const Candidate& c : cand_) {
        const double w = std::exp((c.logit - lmax) / t);
        if (w > 0) {
            out.push_back({c.id, w});
            z += w;
        }
    }
    for (TokenProb& tp : out) tp.p /= z;
}

int32_t Sampler::draw_from(const std::vector<TokenProb>& weights) {
    double z = 0;
    for (const TokenProb& tp : weights)
        if (tp.p > 0) z += tp.p;
    if (!(z > 0)) throw Error("sampler: draw: no token has a positive weight");
    const double u = rng_.next_double() * z;
    double cum = 0;
    int32_t last = -1;
    for (const TokenProb& tp : weights) {
        if (!(tp.p > 0)) continue;
        cum += tp.p;
        last = tp.id;
        if (cum > u) return tp.id;
    }
    return last;  // u landed past the rounded total
}

Sampler Sampler::fork(uint64_t seed) const {
    Sampler s(*this);
    s.rng_.seed_with(seed);
    return s;
}

}  // namespace edgellm
