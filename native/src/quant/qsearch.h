// Helpers shared by the quantizers: level choice for a given scale, weighted error, fp16 scales.
// Every quantizer scores its candidates with the exact f32 arithmetic of the dequantizer,
// deq = s*q - m, so the candidate kept is the best one as it will actually be read back.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "quant/fp16.h"

namespace edgellm::quant {

constexpr int kQK = 256;  // elements per k-quant super-block

// Round to nearest int, ties to even, for |f| < 2^22: adding 1.5*2^23 leaves the rounded integer
// in the low mantissa bits. No libm call (floor/nearbyint are calls without SSE4.1), and a NaN
// yields some int instead of undefined behaviour; callers clamp the result.
inline int nearest_int(float f) {
    const float v = f + 12582912.0f;
    int32_t i;
    std::memcpy(&i, &v, sizeof i);
    return (i & 0x007fffff) - 0x00400000;
}

// Objective weight of element i: the importance weight, or 1 without one.
inline float weight_at(const float* w, int i) { return w ? w[i] : 1.0f; }

// Value an f32 scale has once stored as (saturated) f16.
inline float f16_round(float f) { return fp16_to_fp32(fp32_to_fp16_sat(f)); }

// The level q in [lo, hi] whose value s*q - m (f32, as dequantized) is nearest to x.
inline int best_level(float x, float s, float inv_s, float m, int lo, int hi) {
    if (s == 0.0f) return std::clamp(0, lo, hi);
    const float t = (x + m) * inv_s;
    if (!(t > lo)) return lo;  // also catches NaN from an f32 overflow
    if (!(t < hi)) return hi;
    // The best level is floor(t) or ceil(t) of the exact quotient: the rounded t and its neighbour
    // towards t cover both even when t is off by an ulp; compare their dequantized values.
    const int q0 = nearest_int(t);
    const int q1 = t > static_cast<float>(q0) ? q0 + 1 : q0 - 1;
    if (q1 < lo || q1 > hi) return q0;
    const float e0 = std::fabs(x - (s * static_cast<float>(q0) - m));
    const float e1 = std::fabs(x - (s * static_cast<float>(q1) - m));
    return e1 < e0 ? q1 : q0;
}

// Chooses the best level of each of n elements for scale s and offset m (deq = s*q - m);
// stores them in L and returns sum_i w_i * (x_i - deq_i)^2.
inline double fit_levels(const float* x, const float* w, int n, float s, float m, int lo, int hi, int8_t* L) {
    const float inv_s = s != 0.0f ? 1.0f / s : 0.0f;
    double err = 0;
    for (int i = 0; i < n; ++i) {
        const int q = best_level(x[i], s, inv_s, m, lo, hi);
        L[i] = static_cast<int8_t>(q);
        const double diff = static_cast<double>(x[i]) - static_cast<double>(s * static_cast<float>(q) - m);
        err += weight_at(w, i) * diff * diff;
    }
    return err;
}

// Weighted error of given levels.
inline double levels_error(const float* x, const float* w, int n, float s, float m, const int8_t* L) {
    double err = 0;
    for (int i = 0; i < n; ++i) {
        const double diff = static_cast<double>(x[i]) - static_cast<double>(s * static_cast<float>(L[i]) - m);
        err += weight_at(w, i) * diff * diff;
    }
    return err;
}

// Objective weights without an importance matrix: sqrt(sigma2 + x^2), sigma2 the block's mean
// square. Plain squared error would spend precision on the many small weights at the expense of
// the few large ones; this prior (the one GGUF's reference quantizers pair with an imatrix) gives
// lower KL divergence of the model's logits at a ~1% higher RMSE. Fills buf, returns it.
inline const float* prior_weights(const float* x, int n, float sigma2, float* buf) {
    for (int i = 0; i < n; ++i) buf[i] = std::sqrt(sigma2 + x[i] * x[i]);
    return buf;
}

inline void put_u16(uint8_t* p, uint16_t v) { std::memcpy(p, &v, 2); }
inline uint16_t get_u16(const uint8_t* p) {
    uint16_t v;
    std::memcpy(&v, p, 2);
    return v;
}

}  // namespace edgellm::quant
