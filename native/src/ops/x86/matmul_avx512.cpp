// AVX-512 kernels of matmul: dequantizers writing 16 floats at a time, bit-identical to the scalar
// ones (same f32 operations, no fused multiply-add), and a 4-row x 6-token register-blocked dot
// product kernel. Built without -march: every function carries the target attribute and is only
// called after a run-time CPU check (matmul.cpp).
#include "ops/matmul_kernels.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))

#include <immintrin.h>

#include <cstring>
#include <type_traits>
#include <vector>

#include "quant/fp16.h"

// GCC 12's AVX-512 headers trip -W(maybe-)uninitialized on their own _mm512_undefined_*() helpers.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

#define EDGELLM_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c")))

namespace edgellm::ops::detail {

namespace {

// f16 scale -> f32 with the F16C instruction (exact, as quant::fp16_to_fp32).
EDGELLM_AVX512 inline float load_f16(const uint8_t* p) {
    uint16_t h;
    std::memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

// 16 bytes -> 16 u32 lanes.
EDGELLM_AVX512 inline __m512i bytes16(const uint8_t* p) {
    return _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

EDGELLM_AVX512 inline __m512 to_f32(__m512i v) { return _mm512_cvtepi32_ps(v); }

// ---- dequantizers: one row of n elements (n a multiple of the block size) ----

EDGELLM_AVX512 void deq_f16(const uint8_t* y, float* x, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(x + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(y + 2 * i))));
    for (; i < n; ++i) x[i] = load_f16(y + 2 * i);
}

EDGELLM_AVX512 void deq_bf16(const uint8_t* y, float* x, int64_t n) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512i h = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(y + 2 * i)));
        _mm512_storeu_ps(x + i, _mm512_castsi512_ps(_mm512_slli_epi32(h, 16)));
    }
    for (; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, y + 2 * i, 2);
        x[i] = quant::bf16_to_fp32(h);
    }
}

// ---- quantized formats: elements [32u, 32u + 32) of a row as two vectors of 16 ----
// One definition per format serves both the dequantizer (prefill) and the fused kernel (decode),
// so the values multiplied are the same bits either way. 4- and 5-bit formats look their values
// up in a table of the block's 16 (or 32) possible values, computed with the scalar reference's
// operations, so the results are bit-identical to it. The tables use a fused multiply-add where
// the product is exact, which makes it equal to the reference's rounded product then sum: an f16
// scale has 11 significant bits, a 6-bit sub-block scale adds 6 and a 5-bit level 5, at most 22
// of the 24 bits of an f32 (q6_K, with 8-bit scales, keeps a separate product).

// 0, 1, ..., 15 (and 16, ..., 31) as floats: the quantized levels a table is built from.
EDGELLM_AVX512 inline __m512 levels(int first) {
    return _mm512_add_ps(_mm512_set_ps(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                         _mm512_set1_ps(static_cast<float>(first)));
}

// One f16 at p, broadcast to 16 lanes.
EDGELLM_AVX512 inline __m512 bcast_f16(const uint8_t* p) {
    int16_t h;
    std::memcpy(&h, p, 2);
    return _mm512_cvtph_ps(_mm256_set1_epi16(h));
}

// The pair of f16 (d, m) at p, each broadcast to 16 lanes.
EDGELLM_AVX512 inline void bcast_f16_pair(const uint8_t* p, __m512& d, __m512& m) {
    int32_t dm;
    std::memcpy(&dm, p, 4);
    const __m512 v = _mm512_cvtph_ps(_mm256_set1_epi32(dm));  // d, m, d, m, ...
    d = _mm512_permute_ps(v, 0x00);
    m = _mm512_permute_ps(v, 0x55);
}

// Table lookups: vpermps reads index bits 0..3, vpermt2ps bits 0..4, so higher bits of an index
// lane (the other nibble of the byte) need no masking.
EDGELLM_AVX512 inline __m512 lookup16(__m512i idx, __m512 table) { return _mm512_permutexvar_ps(idx, table); }
EDGELLM_AVX512 inline __m512 lookup32(__m512i idx, __m512 t0, __m512 t1) {
    return _mm512_permutex2var_ps(t0, idx, t1);
}

// q4_0 (18 bytes / 32): d | qs[16]; element j low nibble of qs[j], j+16 high nibble; d*(q-8).
struct Q4_0 {
    EDGELLM_AVX512 static inline void unit(const uint8_t* row, int64_t u, __m512& lo, __m512& hi) {
        const uint8_t* y = row + 18 * u;
        const __m512 table = _mm512_mul_ps(bcast_f16(y), levels(-8));
        const __m512i q = bytes16(y + 2);
        lo = lookup16(q, table);
        hi = lookup16(_mm512_srli_epi32(q, 4), table);
    }
};

// q4_1 (20 bytes / 32): d | m | qs[16]; d*q + m.
struct Q4_1 {
    EDGELLM_AVX512 static inline void unit(const uint8_t* row, int64_t u, __m512& lo, __m512& hi) {
        const uint8_t* y = row + 20 * u;
        __m512 d, m;
        bcast_f16_pair(y, d, m);
        const __m512 table = _mm512_fmadd_ps(d, levels(0), m);
        const __m512i q = bytes16(y + 4);
        lo = lookup16(q, table);
        hi = lookup16(_mm512_srli_epi32(q, 4), table);
    }
};

// 5-bit indices of q5_0/q5_1: nibbles of qs plus bit 4 from the bits of qh (bit j: element j).
EDGELLM_AVX512 inline void q5_indices(const uint8_t* qs, uint32_t qh, __m512i& lo, __m512i& hi) {
    const __m512i q = bytes16(qs), m4 = _mm512_set1_epi32(0xF), b4 = _mm512_set1_epi32(16);
    const __m512i l4 = _mm512_and_si512(q, m4), h4 = _mm512_srli_epi32(q, 4);
    lo = _mm512_mask_or_epi32(l4, static_cast<__mmask16>(qh), l4, b4);
    hi = _mm512_mask_or_epi32(h4, static_cast<__mmask16>(qh >> 16), h4, b4);
}

// q5_0 (22 bytes / 32): d | qh u32 | qs[16]; d*(q-16).
struct Q5_0 {
    EDGELLM_AVX512 static inline void unit(const uint8_t* row, int64_t u, __m512& lo, __m512& hi) {
        const uint8_t* y = row + 22 * u;
        const __m512 d = bcast_f16(y);
        const __m512 t0 = _mm512_mul_ps(d, levels(-16)), t1 = _mm512_mul_ps(d, levels(0));
        uint32_t qh;
        std::memcpy(&qh, y + 2, 4);
        __m512i il, ih;
        q5_indices(y + 6, qh, il, ih);
        lo = lookup32(il, t0, t1);
        hi = lookup32(ih, t0, t1);
    }
};

// q5_1 (24 bytes / 32): d | m | qh u32 | qs[16]; d*q + m.
struct Q5_1 {
    EDGELLM_AVX512 static inline void unit(const uint8_t* row, int64_t u, __m512& lo, __m512& hi) {
        const uint8_t* y = row + 24 * u;
        __m512 d, m;
        bcast_f16_pair(y, d, m);
        const __m512 t0 = _mm512_fmadd_ps(d, levels(0), m);
        const __m512 t1 = _mm512_fmadd_ps(d, levels(16), m);
        uint32_t qh;
        std::memcpy(&qh, y + 4, 4);
        __m512i il, ih;
        q5_indices(y + 8, qh, il, ih);
        lo = lookup32(il, t0, t1);
        hi = lookup32(ih, t0, t1);
    }
};

// q8_0 (34 bytes / 32): d | qs[32] int8; q*d.
struct Q8_0 {
    EDGELLM_AVX512 static inline void unit(const uint8_t* row, int64_t u, __m512& lo, __m512& hi) {
        const uint8_t* y = row + 34 * u;
        const __m512 d = bcast_f16(y);
        lo = _mm512_mul_ps(to_f32(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(y + 2)))), d);
        hi = _mm512_mul_ps(to_f32(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(y + 18)))), d);
    }
};

// 6-bit scale and min of sub-block j of q4_K/q5_K from their 12 packed bytes.
inline void scale_min_k4(int j, const uint8_t* q, int& sc, int& m) {
    if (j < 4) {
        sc = q[j] & 63;
        m = q[j + 4] & 63;
    } else {
        sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

// q4_K (144 bytes / 256): d | dmin | scales[12] | qs[128]; sub-block j of 32: (d*sc)*q - dmin*m,
// element 64c + l the low nibble of qs[32c + l], 64c + 32 + l the high one.
struct Q4_K {
    EDGELLM_AVX512 static inline void unit(const uint8_t* row, int64_t u, __m512& lo, __m512& hi) {
        const uint8_t* y = row + 144 * (u / 8);
        const int j = static_cast<int>(u % 8);
        int sc, m;
        scale_min_k4(j, y + 4, sc, m);
        const __m512 dl = _mm512_set1_ps(load_f16(y) * static_cast<float>(sc));
        const __m512 ml = _mm512_set1_ps(load_f16(y + 2) * static_cast<float>(m));
        const __m512 table = _mm512_fmsub_ps(dl, levels(0), ml);
        const uint8_t* q = y + 16 + 32 * (j / 2);
        const int shift = 4 * (j % 2);
        lo = lookup16(_mm512_srli_epi32(bytes16(q), shift), table);
        hi = lookup16(_mm512_srli_epi32(bytes16(q + 16), shift), table);
    }
};

// v << n for n in [-3, 4] (a right shift when negative).
EDGELLM_AVX512 inline __m512i shift_left(__m512i v, int n) {
    return n >= 0 ? _mm512_slli_epi32(v, static_cast<unsigned>(n)) : _mm512_srli_epi32(v, static_cast<unsigned>(-n));
}

// q5_K (176 bytes / 256): d | dmin | scales[12] | qh[32] | qs[128]; low nibbles as q4_K, the 5th
// bit of element 32j + l is bit j of qh[l].
struct Q5_K {
    EDGELLM_AVX512 static inline void unit(const uint8_t* row, int64_t u, __m512& lo, __m512& hi) {
        const uint8_t* y = row + 176 * (u / 8);
        const int j = static_cast<int>(u % 8);
        int sc, m;
        scale_min_k4(j, y + 4, sc, m);
        const __m512 dl = _mm512_set1_ps(load_f16(y) * static_cast<float>(sc));
        const __m512 ml = _mm512_set1_ps(load_f16(y + 2) * static_cast<float>(m));
        const __m512 t0 = _mm512_fmsub_ps(dl, levels(0), ml);
        const __m512 t1 = _mm512_fmsub_ps(dl, levels(16), ml);
        const uint8_t* q = y + 48 + 32 * (j / 2);
        const int shift = 4 * (j % 2);
        const __m512i m4 = _mm512_set1_epi32(0xF), b4 = _mm512_set1_epi32(16);
        // bit j of qh[l] moved to bit 4, then (nibble & 15) | that bit in one ternary-logic op
        const __m512i h0 = _mm512_and_si512(shift_left(bytes16(y + 16), 4 - j), b4);
        const __m512i h1 = _mm512_and_si512(shift_left(bytes16(y + 32), 4 - j), b4);
        const __m512i v0 = _mm512_ternarylogic_epi32(_mm512_srli_epi32(bytes16(q), shift), m4, h0, 0xEA);
        const __m512i v1 = _mm512_ternarylogic_epi32(_mm512_srli_epi32(bytes16(q + 16), shift), m4, h1, 0xEA);
        lo = lookup32(v0, t0, t1);
        hi = lookup32(v1, t0, t1);
    }
};

// q6_K (210 bytes / 256): ql[128] | qh[64] | scales[16] int8 | d. Element 128h + 32k + l: low 4
// bits nibble k/2 of ql[64h + 32(k%2) + l], high 2 bits bits 2k.. of qh[32h + l]; (d*sc)*(v-32)
// with one scale per 16 elements.
struct Q6_K {
    EDGELLM_AVX512 static inline void unit(const uint8_t* row, int64_t u, __m512& lo, __m512& hi) {
        const uint8_t* y = row + 210 * (u / 8);
        const int j = static_cast<int>(u % 8), h = j / 4, k = j % 4;
        const float d = load_f16(y + 208);
        const int8_t* sc = reinterpret_cast<const int8_t*>(y + 192) + 2 * j;
        const __m512i m4 = _mm512_set1_epi32(0xF), m2 = _mm512_set1_epi32(3), b32 = _mm512_set1_epi32(32);
        const uint8_t* ql = y + 64 * h + 32 * (k % 2);
        const uint8_t* qh = y + 128 + 32 * h;
        __m512 out[2];
        for (int half = 0; half < 2; ++half) {
            const __m512i l4 = _mm512_and_si512(_mm512_srli_epi32(bytes16(ql + 16 * half), 4 * (k / 2)), m4);
            const __m512i h2 = _mm512_and_si512(_mm512_srli_epi32(bytes16(qh + 16 * half), 2 * k), m2);
            const __m512i v = _mm512_sub_epi32(_mm512_or_si512(l4, _mm512_slli_epi32(h2, 4)), b32);
            out[half] = _mm512_mul_ps(_mm512_set1_ps(d * static_cast<float>(sc[half])), to_f32(v));
        }
        lo = out[0];
        hi = out[1];
    }
};

template <class Q>
EDGELLM_AVX512 void deq_units(const uint8_t* y, float* x, int64_t n) {
    for (int64_t u = 0; u < n / 32; ++u) {
        __m512 lo, hi;
        Q::unit(y, u, lo, hi);
        _mm512_storeu_ps(x + 32 * u, lo);
        _mm512_storeu_ps(x + 32 * u + 16, hi);
    }
}

using DeqRow = void (*)(const uint8_t*, float*, int64_t);

DeqRow row_dequantizer(quant::Type type) {
    using T = quant::Type;
    switch (type) {
        case T::F16: return deq_f16;
        case T::BF16: return deq_bf16;
        case T::Q4_0: return deq_units<Q4_0>;
        case T::Q4_1: return deq_units<Q4_1>;
        case T::Q5_0: return deq_units<Q5_0>;
        case T::Q5_1: return deq_units<Q5_1>;
        case T::Q8_0: return deq_units<Q8_0>;
        case T::Q4_K: return deq_units<Q4_K>;
        case T::Q5_K: return deq_units<Q5_K>;
        case T::Q6_K: return deq_units<Q6_K>;
        default: return nullptr;
    }
}

bool dequant(quant::Type type, const uint8_t* src, size_t rs, int64_t n, int64_t k, float* dst, int64_t ldd) {
    const DeqRow f = row_dequantizer(type);
    if (!f) return false;
    for (int64_t r = 0; r < n; ++r) f(src + static_cast<size_t>(r) * rs, dst + r * ldd, k);
    return true;
}

// ---- dot-product kernel ----

// Sums of four 16-lane accumulators, returned in lanes 0..3. Each sum is the same tree whatever
// the other three hold: s8[i] = a[i] + a[i+8], s4[i] = s8[i] + s8[i+4], s2[i] = s4[i] + s4[i+2],
// s = s2[0] + s2[1].
EDGELLM_AVX512 inline __m128 reduce4(__m512 a, __m512 b, __m512 c, __m512 d) {
    const __m512 ab = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(1, 0, 1, 0)),
                                    _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
    const __m512 cd = _mm512_add_ps(_mm512_shuffle_f32x4(c, d, _MM_SHUFFLE(1, 0, 1, 0)),
                                    _mm512_shuffle_f32x4(c, d, _MM_SHUFFLE(3, 2, 3, 2)));
    // ab = [a8[0:4], a8[4:8], b8[0:4], b8[4:8]] in 128-bit chunks, cd likewise
    const __m512 z = _mm512_add_ps(_mm512_shuffle_f32x4(ab, cd, _MM_SHUFFLE(2, 0, 2, 0)),
                                   _mm512_shuffle_f32x4(ab, cd, _MM_SHUFFLE(3, 1, 3, 1)));
    // chunk c of z holds the four lanes s4 of accumulator c
    const __m512 u = _mm512_add_ps(z, _mm512_permute_ps(z, _MM_SHUFFLE(1, 0, 3, 2)));
    const __m512 v = _mm512_add_ps(u, _mm512_permute_ps(u, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm512_castps512_ps128(_mm512_maskz_compress_ps(0x1111, v));
}

constexpr int kMR = 4;  // weight rows per tile

// Writes the sums of the first nr rows of a tile: y[t * ldy + r].
template <int NR>
EDGELLM_AVX512 inline void store_tile(const __m512 (&acc)[4][NR], float* y, int64_t ldy, int nr) {
    for (int t = 0; t < NR; ++t) {
        const __m128 s = reduce4(acc[0][t], acc[1][t], acc[2][t], acc[3][t]);
        if (nr == 4) {
            _mm_storeu_ps(y + t * ldy, s);
        } else {
            float tmp[4];
            _mm_storeu_ps(tmp, s);
            for (int r = 0; r < nr; ++r) y[t * ldy + r] = tmp[r];
        }
    }
}
constexpr int kNR = 6;  // tokens per tile: 24 accumulators + 4 + 1 of the 32 zmm registers

// 16 weights as floats: f32 loaded, f16 widened (exact); the masked forms load the first lanes of m.
__attribute__((always_inline)) EDGELLM_AVX512 inline __m512 wload(const float* p) { return _mm512_loadu_ps(p); }
__attribute__((always_inline)) EDGELLM_AVX512 inline __m512 wload(const uint16_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
__attribute__((always_inline)) EDGELLM_AVX512 inline __m512 wload(__mmask16 m, const float* p) {
    return _mm512_maskz_loadu_ps(m, p);
}
__attribute__((always_inline)) EDGELLM_AVX512 inline __m512 wload(__mmask16 m, const uint16_t* p) {
    return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p));
}

// One tile of MR rows (up to 8: more independent sums when few tokens share the rows) x NR tokens
// over all k. Lanes hold j mod 16; the tail (k % 16) is loaded masked (zeros add nothing). WT is the
// weights' element: float (rows converted beforehand) or f16 bits read in place, whose next tile of
// rows (contiguous when ldw == k, as matmul() calls it) is prefetched meanwhile: (MR + 1) / 2 lines
// per step of 16 columns cover it.
template <typename WT, int MR, int NR>
EDGELLM_AVX512 void tile(const WT* w, int64_t ldw, const float* x, int64_t ldx, int64_t k, float* y, int64_t ldy,
                         int nr) {
    constexpr int kRows = MR <= 4 ? 4 : 8;
    constexpr bool kPrefetch = std::is_same_v<WT, uint16_t>;
    __m512 acc[kRows][NR];
#pragma GCC unroll 8
    for (int r = 0; r < kRows; ++r)
#pragma GCC unroll 6
        for (int t = 0; t < NR; ++t) acc[r][t] = _mm512_setzero_ps();
    const char* next = reinterpret_cast<const char*>(w + MR * ldw);
    int64_t j = 0;
    for (; j + 16 <= k; j += 16) {
        if constexpr (kPrefetch) {
#pragma GCC unroll 4
            for (int i = 0; i < (MR + 1) / 2; ++i)
                _mm_prefetch(next + 64 * ((j / 16) * ((MR + 1) / 2) + i), _MM_HINT_T0);
        }
        __m512 xv[NR];
#pragma GCC unroll 6
        for (int t = 0; t < NR; ++t) xv[t] = _mm512_loadu_ps(x + t * ldx + j);
#pragma GCC unroll 8
        for (int r = 0; r < MR; ++r) {
            const __m512 wv = wload(w + r * ldw + j);
#pragma GCC unroll 6
            for (int t = 0; t < NR; ++t) acc[r][t] = _mm512_fmadd_ps(wv, xv[t], acc[r][t]);
        }
    }
    if (j < k) {
        const __mmask16 m = static_cast<__mmask16>((1u << (k - j)) - 1u);
        __m512 xv[NR];
        for (int t = 0; t < NR; ++t) xv[t] = _mm512_maskz_loadu_ps(m, x + t * ldx + j);
        for (int r = 0; r < MR; ++r) {
            const __m512 wv = wload(m, w + r * ldw + j);
            for (int t = 0; t < NR; ++t) acc[r][t] = _mm512_fmadd_ps(wv, xv[t], acc[r][t]);
        }
    }
    if constexpr (kRows == 4) {
        store_tile<NR>(acc, y, ldy, nr);
    } else {
        for (int r0 = 0; r0 < nr; r0 += 4) {
            __m512 part[4][NR];
            for (int r = 0; r < 4; ++r)
                for (int t = 0; t < NR; ++t) part[r][t] = acc[r0 + r][t];
            store_tile<NR>(part, y + r0, ldy, nr - r0 < 4 ? nr - r0 : 4);
        }
    }
}

template <int MR>
EDGELLM_AVX512 void tile_nt(const float* w, int64_t ldw, const float* x, int64_t ldx, int nt, int64_t k, float* y,
                            int64_t ldy, int nr) {
    switch (nt) {
        case 1: tile<float, MR, 1>(w, ldw, x, ldx, k, y, ldy, nr); break;
        case 2: tile<float, MR, 2>(w, ldw, x, ldx, k, y, ldy, nr); break;
        case 3: tile<float, MR, 3>(w, ldw, x, ldx, k, y, ldy, nr); break;
        case 4: tile<float, MR, 4>(w, ldw, x, ldx, k, y, ldy, nr); break;
        case 5: tile<float, MR, 5>(w, ldw, x, ldx, k, y, ldy, nr); break;
        default: tile<float, MR, 6>(w, ldw, x, ldx, k, y, ldy, nr); break;
    }
}

EDGELLM_AVX512 void gemm(const float* w, int64_t ldw, int64_t nr, const float* x, int64_t ldx, int64_t nt, int64_t k,
                         float* y, int64_t ldy) {
    for (int64_t t0 = 0; t0 < nt; t0 += kNR) {
        const int nt1 = static_cast<int>(nt - t0 < kNR ? nt - t0 : kNR);
        for (int64_t r0 = 0; r0 < nr; r0 += kMR) {
            const int nr1 = static_cast<int>(nr - r0 < kMR ? nr - r0 : kMR);
            const float* wt = w + r0 * ldw;
            float* yt = y + t0 * ldy + r0;
            switch (nr1) {
                case 1: tile_nt<1>(wt, ldw, x + t0 * ldx, ldx, nt1, k, yt, ldy, nr1); break;
                case 2: tile_nt<2>(wt, ldw, x + t0 * ldx, ldx, nt1, k, yt, ldy, nr1); break;
                case 3: tile_nt<3>(wt, ldw, x + t0 * ldx, ldx, nt1, k, yt, ldy, nr1); break;
                default: tile_nt<4>(wt, ldw, x + t0 * ldx, ldx, nt1, k, yt, ldy, nr1); break;
            }
        }
    }
}

// ---- f16 weights read in place (few tokens): the arithmetic of gemm() on the converted rows ----

template <int NR>
EDGELLM_AVX512 void tile_f16_rows(const uint16_t* w, int64_t ldw, const float* x, int64_t ldx, int64_t k, float* y,
                                  int64_t ldy, int nr) {
    switch (nr) {
        case 1: tile<uint16_t, 1, NR>(w, ldw, x, ldx, k, y, ldy, nr); return;
        case 2: tile<uint16_t, 2, NR>(w, ldw, x, ldx, k, y, ldy, nr); return;
        case 3: tile<uint16_t, 3, NR>(w, ldw, x, ldx, k, y, ldy, nr); return;
        case 4: tile<uint16_t, 4, NR>(w, ldw, x, ldx, k, y, ldy, nr); return;
        default: break;
    }
    if constexpr (NR <= 2) {  // 8-row tiles only for 1 or 2 tokens (register budget)
        switch (nr) {
            case 5: tile<uint16_t, 5, NR>(w, ldw, x, ldx, k, y, ldy, nr); break;
            case 6: tile<uint16_t, 6, NR>(w, ldw, x, ldx, k, y, ldy, nr); break;
            case 7: tile<uint16_t, 7, NR>(w, ldw, x, ldx, k, y, ldy, nr); break;
            default: tile<uint16_t, 8, NR>(w, ldw, x, ldx, k, y, ldy, nr); break;
        }
    }
}

// gemm() of f16 rows w (ldw elements apart): tiles of 8 rows for up to 2 tokens, else 4 rows.
EDGELLM_AVX512 void gemm_f16(const uint16_t* w, int64_t ldw, int64_t nr, const float* x, int64_t ldx, int64_t nt,
                             int64_t k, float* y, int64_t ldy) {
    for (int64_t t0 = 0; t0 < nt; t0 += kNR) {
        const int nt1 = static_cast<int>(nt - t0 < kNR ? nt - t0 : kNR);
        const int mr = nt1 <= 2 ? 8 : 4;
        for (int64_t r0 = 0; r0 < nr; r0 += mr) {
            const int nr1 = static_cast<int>(nr - r0 < mr ? nr - r0 : mr);
            const uint16_t* wt = w + r0 * ldw;
            const float* xt = x + t0 * ldx;
            float* yt = y + t0 * ldy + r0;
            switch (nt1) {
                case 1: tile_f16_rows<1>(wt, ldw, xt, ldx, k, yt, ldy, nr1); break;
                case 2: tile_f16_rows<2>(wt, ldw, xt, ldx, k, yt, ldy, nr1); break;
                case 3: tile_f16_rows<3>(wt, ldw, xt, ldx, k, yt, ldy, nr1); break;
                case 4: tile_f16_rows<4>(wt, ldw, xt, ldx, k, yt, ldy, nr1); break;
                case 5: tile_f16_rows<5>(wt, ldw, xt, ldx, k, yt, ldy, nr1); break;
                default: tile_f16_rows<6>(wt, ldw, xt, ldx, k, yt, ldy, nr1); break;
            }
        }
    }
}

// ---- integer path: AVX-512 BW + VNNI, a panel per zmm register, up to 8 tokens per tile ----

#define EDGELLM_QTARGET __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512vnni,avx2,fma,f16c")))
#define EDGELLM_QZMM 1
constexpr int64_t kQMaxTokens = 8;
#include "ops/x86/qgemm_x86.inc"
#undef EDGELLM_QTARGET
#undef EDGELLM_QZMM

const Kernels kAvx512 = {Isa::Avx512, dequant, gemm, qgemm, gemm_f16};

}  // namespace

const Kernels* kernels_avx512() {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma") &&
        __builtin_cpu_supports("f16c")) {
        // Without VNNI (the first AVX-512 parts) the integer path is AVX2's.
        static const Kernels k = [] {
            Kernels out = kAvx512;
            if (!__builtin_cpu_supports("avx512vnni")) {
                const Kernels* avx2 = kernels_avx2();
                out.qgemm = avx2->qgemm;
            }
            return out;
        }();
        return &k;
    }
    return nullptr;
}

}  // namespace edgellm::ops::detail

#else

namespace edgellm::ops::detail {
const Kernels* kernels_avx512() { return nullptr; }
}  // namespace edgellm::ops::detail

#endif
