// Element-wise math on 16 floats at a time, written with the compiler's vector extensions so that
// the same source lowers to whatever registers the target has (1 zmm, 2 ymm, 4 xmm, NEON, WASM
// SIMD). Element-wise arithmetic, and horizontal sums and maxima in one fixed order written out
// (never left to the compiler), so every lowering gives the same bits (the library is built
// without FMA contraction).
#pragma once

#include <cstdint>
#include <cstring>

// Every helper is forced inline: vectors never cross a call, so the ABI note GCC gives for 64-byte
// vectors on targets without AVX-512 does not apply.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"

namespace edgellm::vmath {

typedef float f32x16 __attribute__((vector_size(64)));
typedef int32_t i32x16 __attribute__((vector_size(64)));

__attribute__((always_inline)) inline f32x16 load16(const float* p) {
    f32x16 v;
    std::memcpy(&v, p, sizeof v);
    return v;
}
__attribute__((always_inline)) inline void store16(float* p, const f32x16& v) { std::memcpy(p, &v, sizeof v); }

// mask ? a : b per lane, mask from a comparison (all ones or zeros). Written with bit operations:
// GCC lowers `?:` on vectors wider than the target's registers one lane at a time.
__attribute__((always_inline)) inline f32x16 select16(const i32x16& mask, const f32x16& a, const f32x16& b) {
    i32x16 ia, ib;
    std::memcpy(&ia, &a, sizeof ia);
    std::memcpy(&ib, &b, sizeof ib);
    const i32x16 r = (ia & mask) | (ib & ~mask);
    f32x16 out;
    std::memcpy(&out, &r, sizeof out);
    return out;
}

// max(a, b) per lane; b where a is NaN.
__attribute__((always_inline)) inline f32x16 max16(const f32x16& a, const f32x16& b) {
    return select16(a > b, a, b);
}

// exp(x) to ~1 ulp, element-wise: x = n ln2 + r, |r| <= ln2/2, e^r by its Taylor polynomial, 2^n
// from the exponent bits. Inputs are clamped to [-87, 88] (NaN becomes -87) so that results stay
// normal and the conversion to int is always in range.
__attribute__((always_inline)) inline f32x16 exp16(const f32x16& in) {
    const f32x16 lo = f32x16{} - 87.0f, hi = f32x16{} + 88.0f;
    f32x16 x = select16(in > lo, in, lo);
    x = select16(x < hi, x, hi);
    const f32x16 n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round(x / ln2)
    const f32x16 r = (x - n * 0.693145751953125f) - n * 1.428606765330187e-06f;
    const f32x16 p =
        1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 + r * (1.0f / 120 + r * (1.0f / 720))))));
    const i32x16 bits = (__builtin_convertvector(n, i32x16) + 127) << 23;
    f32x16 scale;
    std::memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

// The sum and the maximum of the 16 lanes, in a fixed tree (halves, quarters, ...) of element-wise
// steps, so that every lowering gives the same bits.
__attribute__((always_inline)) inline float hsum16(f32x16 v) {
    v += __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7);
    v += __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3);
    v += __builtin_shufflevector(v, v, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1);
    return v[0] + v[1];
}
__attribute__((always_inline)) inline float hmax16(f32x16 v) {
    v = max16(v, __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7));
    v = max16(v, __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3));
    v = max16(v, __builtin_shufflevector(v, v, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1));
    return v[0] > v[1] ? v[0] : v[1];
}

__attribute__((always_inline)) inline float exp1(float x) {
    f32x16 v = {};
    v[0] = x;
    return exp16(v)[0];
}

}  // namespace edgellm::vmath

#pragma GCC diagnostic pop
