// Helpers shared by the quantizers: level choice for a given scale, weighted error, fp16 scales.
// Quantizers score their final candidates with the exact f32 arithmetic of the dequantizer,
// deq = s*q - m, so the candidate kept is the best one as it will actually be read back; cheaper
// scores (round_sums, fit_levels_rounded) only screen or steer the searches.
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

// Value an f32 scale has once stored as (saturated) f16.
inline float f16_round(float f) { return fp16_to_fp32(fp32_to_fp16_sat(f)); }

// Lanes of the partial sums in the loops below: a fixed-width inner loop the compiler turns into
// SIMD code (plain -O3, no -march) while the sums keep one order, so results do not depend on it.
constexpr int kLanes = 8;

inline float lane_sum(const float* acc) {
    return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

// Sum of v[0..n) (n a multiple of kLanes) in kLanes fixed lanes.
float lane_total(const float* v, int n);

// Level sums of a fit, for the least-squares refits: sum w*q, w*q^2, w*x*q (sum w and w*x do not
// depend on the levels: callers take them once).
struct LevelSums {
    float err = 0;  // sum_i w_i * (x_i - deq_i)^2
    float sq = 0, sqq = 0, sxq = 0;
};

constexpr int kMaxFit = 32;  // longest run of elements fitted at once (one block or sub-block)

// Chooses the best level of each of n elements (n = 16 or 32) for scale s and offset m
// (deq = s*q - m, f32 as dequantized): the rounded quotient (x + m)/s clamped to [lo, hi], or its
// neighbour towards the quotient when that one dequantizes nearer to x (the quotient may be off
// by an ulp). Stores the levels in L (unless null) and returns sum_i w_i * (x_i - deq_i)^2
// (w not null). Defined out of line (qsearch.cpp): inlined with constant lo/hi, the compiler
// folds the clamp into branches and no longer vectorises the loop.
float fit_levels(const float* x, const float* w, int n, float s, float m, int lo, int hi, int8_t* L);

// fit_levels with the rounded quotient as the level, without the neighbour check: a few ulps of
// error worse at worst, about a third cheaper. For searches whose winner is fitted exactly after.
float fit_levels_rounded(const float* x, const float* w, int n, float s, float m, int lo, int hi, int8_t* L);

// fit_levels plus the level sums of the fit (for a least-squares refit of s and m).
LevelSums fit_levels_sums(const float* x, const float* w, int n, float s, float m, int lo, int hi, int8_t* L);

// Sums of plain rounding q = clamp(round(iscale * (x + off)), lo, hi) over n = 16 or 32
// elements: a cheap screen of a candidate scale (the least-squares scale of these levels and
// its error follow from the sums).
struct RoundSums {
    float sq, sqq, sxq;  // sum w*q, w*q^2, w*x*q
};
RoundSums round_sums(const float* x, const float* w, int n, float iscale, float off, int lo, int hi);

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
