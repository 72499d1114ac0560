// Half-precision conversions: IEEE f16 and bfloat16 <-> f32.
// f32 -> f16/bf16 round to nearest even; f16/bf16 -> f32 is exact. NaN stays NaN (made quiet).
#pragma once

#include <cstdint>
#include <cstring>

namespace edgellm::quant {

inline uint32_t f32_bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    return u;
}

inline float bits_f32(uint32_t u) {
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}

// Exact: every f16 value (subnormals, inf, NaN payloads) is representable in f32.
inline float fp16_to_fp32(uint16_t h) {
    const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1fu;
    const uint32_t man = h & 0x3ffu;
    if (exp == 0x1f) return bits_f32(sign | 0x7f800000u | (man << 13));
    if (exp == 0) {
        // subnormal: man * 2^-24, exact in f32 (man < 2^10)
        const float v = static_cast<float>(man) * 5.9604644775390625e-08f;
        return sign ? -v : v;
    }
    return bits_f32(sign | ((exp + 112u) << 23) | (man << 13));
}

// Round to nearest even; values at or beyond 65520 in magnitude become inf, as IEEE requires.
inline uint16_t fp32_to_fp16(float f) {
    uint32_t x = f32_bits(f);
    const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
    x &= 0x7fffffffu;
    if (x > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u | ((x >> 13) & 0x3ffu));  // NaN
    if (x >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);                         // inf
    if (x >= 0x38800000u) {  // normal f16: round the 13 dropped mantissa bits, rebias 127 -> 15
        x += 0xfffu + ((x >> 13) & 1u);
        return static_cast<uint16_t>(sign | ((x - 0x38000000u) >> 13));
    }
    // subnormal f16 (|f| < 2^-14): adding 0.5 puts the f32 ulp at 2^-24, the f16 subnormal step,
    // so the hardware add does the round-to-nearest-even for us.
    const float t = bits_f32(x) + 0.5f;
    return static_cast<uint16_t>(sign | (f32_bits(t) - 0x3f000000u));
}

// Like fp32_to_fp16 but finite inputs saturate at +-65504: used for block scales, where inf
// would turn a whole block into inf/NaN.
inline uint16_t fp32_to_fp16_sat(float f) {
    const uint32_t x = f32_bits(f) & 0x7fffffffu;
    if (x < 0x7f800000u && x >= 0x477ff000u) return static_cast<uint16_t>(((f32_bits(f) >> 16) & 0x8000u) | 0x7bffu);
    return fp32_to_fp16(f);
}

inline float bf16_to_fp32(uint16_t h) { return bits_f32(static_cast<uint32_t>(h) << 16); }

// Round to nearest even; NaN keeps its sign and top payload bits and is made quiet; finite
// values that would round to inf saturate at the largest finite bf16.
inline uint16_t fp32_to_bf16(float f) {
    uint32_t x = f32_bits(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);
    const bool finite = (x & 0x7fffffffu) < 0x7f800000u;
    uint32_t r = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
    if (finite && (r & 0x7fffu) == 0x7f80u) r = (r & 0x8000u) | 0x7f7fu;
    return static_cast<uint16_t>(r);
}

}  // namespace edgellm::quant
