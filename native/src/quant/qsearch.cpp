// Level choice of the quantizers' inner loops; see qsearch.h.
// Loops have a compile-time length (16 or 32: one block or sub-block) and no branches, so the
// compiler vectorises them at plain -O3; sums are taken in kLanes fixed lanes.
#include "quant/qsearch.h"

namespace edgellm::quant {

namespace {

template <int N>
inline float total(const float* v) {
    float acc[kLanes];
    for (int l = 0; l < kLanes; ++l) acc[l] = v[l];
    for (int i = kLanes; i < N; i += kLanes)
        for (int l = 0; l < kLanes; ++l) acc[l] += v[i + l];
    return lane_sum(acc);
}

// Per-element results of one fit.
struct FitArrays {
    float q[kMaxFit];    // chosen level
    float e[kMaxFit];    // w * (x - deq)^2
    float wq[kMaxFit];   // w * q        (with_sums only)
    float wqq[kMaxFit];  // w * q * q
    float wxq[kMaxFit];  // w * x * q
};

// The level choice of fit_levels. Selects only between computed values: a select between
// q0+1 and q0-1 would become a branch (the sums might trap), hence the copysign.
template <int N, bool with_sums, bool exact = true>
void fit_raw(const float* __restrict x, const float* __restrict w, float s, float m, int lo, int hi,
             FitArrays& __restrict f) {
    const float inv_s = s != 0.0f ? 1.0f / s : 0.0f;
    const float lof = static_cast<float>(lo), hif = static_cast<float>(hi);
    for (int i = 0; i < N; ++i) {
        float t = (x[i] + m) * inv_s;
        t = lof < t ? t : lof;  // a NaN quotient (f32 overflow) becomes lo
        t = t < hif ? t : hif;
        const float q0 = (t + 12582912.0f) - 12582912.0f;  // round to nearest even, |t| < 2^22
        float q, d;
        if (exact) {
            const float q1 = q0 + std::copysign(1.0f, t - q0);  // the neighbour towards t
            const float d0 = x[i] - (s * q0 - m), d1 = x[i] - (s * q1 - m);
            const bool use1 = (q1 >= lof) & (q1 <= hif) & (std::fabs(d1) < std::fabs(d0));
            q = use1 ? q1 : q0;
            d = use1 ? d1 : d0;
        } else {
            q = q0;
            d = x[i] - (s * q0 - m);
        }
        f.q[i] = q;
        f.e[i] = w[i] * d * d;
        if (with_sums) {
            const float wq = w[i] * q;
            f.wq[i] = wq;
            f.wqq[i] = wq * q;
            f.wxq[i] = wq * x[i];
        }
    }
}

template <int N>
void store_levels(const float* q, int8_t* L) {
    for (int i = 0; i < N; ++i) L[i] = static_cast<int8_t>(static_cast<int>(q[i]));
}

template <int N, bool exact>
float fit_levels_n(const float* x, const float* w, float s, float m, int lo, int hi, int8_t* L) {
    FitArrays f;
    fit_raw<N, false, exact>(x, w, s, m, lo, hi, f);
    if (L) store_levels<N>(f.q, L);
    return total<N>(f.e);
}

template <int N>
LevelSums fit_levels_sums_n(const float* x, const float* w, float s, float m, int lo, int hi, int8_t* L) {
    FitArrays f;
    fit_raw<N, true>(x, w, s, m, lo, hi, f);
    store_levels<N>(f.q, L);
    LevelSums r;
    r.err = total<N>(f.e);
    r.sq = total<N>(f.wq);
    r.sqq = total<N>(f.wqq);
    r.sxq = total<N>(f.wxq);
    return r;
}

template <int N>
RoundSums round_sums_n(const float* __restrict x, const float* __restrict w, float iscale, float off, int lo,
                       int hi) {
    const float lof = static_cast<float>(lo), hif = static_cast<float>(hi);
    float wq[N], wqq[N], wxq[N];
    for (int i = 0; i < N; ++i) {
        float t = iscale * (x[i] + off);
        t = lof < t ? t : lof;
        t = t < hif ? t : hif;
        const float q = (t + 12582912.0f) - 12582912.0f;
        wq[i] = w[i] * q;
        wqq[i] = wq[i] * q;
        wxq[i] = wq[i] * x[i];
    }
    return {total<N>(wq), total<N>(wqq), total<N>(wxq)};
}

}  // namespace

float lane_total(const float* v, int n) {
    float acc[kLanes];
    for (int l = 0; l < kLanes; ++l) acc[l] = v[l];
    for (int i = kLanes; i < n; i += kLanes)
        for (int l = 0; l < kLanes; ++l) acc[l] += v[i + l];
    return lane_sum(acc);
}

float fit_levels(const float* x, const float* w, int n, float s, float m, int lo, int hi, int8_t* L) {
    return n == 16 ? fit_levels_n<16, true>(x, w, s, m, lo, hi, L) : fit_levels_n<32, true>(x, w, s, m, lo, hi, L);
}

float fit_levels_rounded(const float* x, const float* w, int n, float s, float m, int lo, int hi, int8_t* L) {
    return n == 16 ? fit_levels_n<16, false>(x, w, s, m, lo, hi, L) : fit_levels_n<32, false>(x, w, s, m, lo, hi, L);
}

LevelSums fit_levels_sums(const float* x, const float* w, int n, float s, float m, int lo, int hi, int8_t* L) {
    return n == 16 ? fit_levels_sums_n<16>(x, w, s, m, lo, hi, L) : fit_levels_sums_n<32>(x, w, s, m, lo, hi, L);
}

RoundSums round_sums(const float* x, const float* w, int n, float iscale, float off, int lo, int hi) {
    return n == 16 ? round_sums_n<16>(x, w, iscale, off, lo, hi) : round_sums_n<32>(x, w, iscale, off, lo, hi);
}

}  // namespace edgellm::quant
