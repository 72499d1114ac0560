// AVX2+FMA kernels of matmul: dequantizers writing 8 floats at a time, bit-identical to the scalar
// ones (same f32 operations, no fused multiply-add), and a 4-row x 3-token register-blocked dot
// product kernel (12 accumulators + 4 of the 16 ymm registers). Every function carries the target
// attribute and is only called after a run-time CPU check.
#include "ops/matmul_kernels.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))

#include <immintrin.h>

#include <cstring>
#include <type_traits>
#include <vector>

#include "quant/fp16.h"

#define EDGELLM_AVX2 __attribute__((target("avx2,fma,f16c")))

namespace edgellm::ops::detail {

namespace {

// f16 scale -> f32 with the F16C instruction (exact, as quant::fp16_to_fp32).
EDGELLM_AVX2 inline float load_f16(const uint8_t* p) {
    uint16_t h;
    std::memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

// 8 bytes -> 8 u32 lanes.
EDGELLM_AVX2 inline __m256i bytes8(const uint8_t* p) {
    return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
}

EDGELLM_AVX2 inline __m256 to_f32(__m256i v) { return _mm256_cvtepi32_ps(v); }

// Lanes of bit (first + lane) of bits, moved to bit 4: the 5th bit of q5 elements.
EDGELLM_AVX2 inline __m256i bit4_of(uint32_t bits, int first) {
    const __m256i idx = _mm256_add_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(first));
    const __m256i b = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int>(bits)), idx),
                                       _mm256_set1_epi32(1));
    return _mm256_slli_epi32(b, 4);
}

EDGELLM_AVX2 void deq_f16(const uint8_t* y, float* x, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(x + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(y + 2 * i))));
    for (; i < n; ++i) x[i] = load_f16(y + 2 * i);
}

EDGELLM_AVX2 void deq_bf16(const uint8_t* y, float* x, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256i h = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(y + 2 * i)));
        _mm256_storeu_ps(x + i, _mm256_castsi256_ps(_mm256_slli_epi32(h, 16)));
    }
    for (; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, y + 2 * i, 2);
        x[i] = quant::bf16_to_fp32(h);
    }
}

// ---- quantized formats: elements [32u, 32u + 32) of a row as four vectors of 8 ----
// One definition per format serves both the dequantizer (prefill) and the fused kernel (decode),
// so the values multiplied are the same bits either way. d*q + m uses a fused multiply-add: the
// product of an f16 scale (11 significant bits), a 6-bit sub-block scale and a 5-bit level is
// exact in f32, so the result equals the reference's rounded product then sum.

// q4_0 (18 bytes / 32): d | qs[16]; element j low nibble of qs[j], j+16 high nibble; d*(q-8).
struct Q4_0 {
    EDGELLM_AVX2 static inline void unit(const uint8_t* row, int64_t u, __m256 (&v)[4]) {
        const uint8_t* y = row + 18 * u;
        const __m256i m4 = _mm256_set1_epi32(0xF), eight = _mm256_set1_epi32(8);
        const __m256 d = _mm256_set1_ps(load_f16(y));
        for (int h = 0; h < 2; ++h) {
            const __m256i q = bytes8(y + 2 + 8 * h);
            v[h] = _mm256_mul_ps(d, to_f32(_mm256_sub_epi32(_mm256_and_si256(q, m4), eight)));
            v[2 + h] = _mm256_mul_ps(d, to_f32(_mm256_sub_epi32(_mm256_srli_epi32(q, 4), eight)));
        }
    }
};

// q4_1 (20 bytes / 32): d | m | qs[16]; d*q + m.
struct Q4_1 {
    EDGELLM_AVX2 static inline void unit(const uint8_t* row, int64_t u, __m256 (&v)[4]) {
        const uint8_t* y = row + 20 * u;
        const __m256i m4 = _mm256_set1_epi32(0xF);
        const __m256 d = _mm256_set1_ps(load_f16(y)), m = _mm256_set1_ps(load_f16(y + 2));
        for (int h = 0; h < 2; ++h) {
            const __m256i q = bytes8(y + 4 + 8 * h);
            v[h] = _mm256_fmadd_ps(d, to_f32(_mm256_and_si256(q, m4)), m);
            v[2 + h] = _mm256_fmadd_ps(d, to_f32(_mm256_srli_epi32(q, 4)), m);
        }
    }
};

// q5_0 (22 bytes / 32): d | qh u32 | qs[16]; bit j of qh is the 5th bit of element j; d*(q-16).
struct Q5_0 {
    EDGELLM_AVX2 static inline void unit(const uint8_t* row, int64_t u, __m256 (&v)[4]) {
        const uint8_t* y = row + 22 * u;
        const __m256i m4 = _mm256_set1_epi32(0xF), b16 = _mm256_set1_epi32(16);
        const __m256 d = _mm256_set1_ps(load_f16(y));
        uint32_t qh;
        std::memcpy(&qh, y + 2, 4);
        for (int h = 0; h < 2; ++h) {
            const __m256i q = bytes8(y + 6 + 8 * h);
            const __m256i lo = _mm256_or_si256(_mm256_and_si256(q, m4), bit4_of(qh, 8 * h));
            const __m256i hi = _mm256_or_si256(_mm256_srli_epi32(q, 4), bit4_of(qh, 16 + 8 * h));
            v[h] = _mm256_mul_ps(d, to_f32(_mm256_sub_epi32(lo, b16)));
            v[2 + h] = _mm256_mul_ps(d, to_f32(_mm256_sub_epi32(hi, b16)));
        }
    }
};

// q5_1 (24 bytes / 32): d | m | qh u32 | qs[16]; d*q + m.
struct Q5_1 {
    EDGELLM_AVX2 static inline void unit(const uint8_t* row, int64_t u, __m256 (&v)[4]) {
        const uint8_t* y = row + 24 * u;
        const __m256i m4 = _mm256_set1_epi32(0xF);
        const __m256 d = _mm256_set1_ps(load_f16(y)), m = _mm256_set1_ps(load_f16(y + 2));
        uint32_t qh;
        std::memcpy(&qh, y + 4, 4);
        for (int h = 0; h < 2; ++h) {
            const __m256i q = bytes8(y + 8 + 8 * h);
            const __m256i lo = _mm256_or_si256(_mm256_and_si256(q, m4), bit4_of(qh, 8 * h));
            const __m256i hi = _mm256_or_si256(_mm256_srli_epi32(q, 4), bit4_of(qh, 16 + 8 * h));
            v[h] = _mm256_fmadd_ps(d, to_f32(lo), m);
            v[2 + h] = _mm256_fmadd_ps(d, to_f32(hi), m);
        }
    }
};

// q8_0 (34 bytes / 32): d | qs[32] int8; q*d.
struct Q8_0 {
    EDGELLM_AVX2 static inline void unit(const uint8_t* row, int64_t u, __m256 (&v)[4]) {
        const uint8_t* y = row + 34 * u;
        const __m256 d = _mm256_set1_ps(load_f16(y));
        for (int h = 0; h < 4; ++h) {
            const __m256i q = _mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(y + 2 + 8 * h)));
            v[h] = _mm256_mul_ps(to_f32(q), d);
        }
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

// q4_K (144 bytes / 256): d | dmin | scales[12] | qs[128]; sub-block j of 32: (d*sc)*q - dmin*m.
struct Q4_K {
    EDGELLM_AVX2 static inline void unit(const uint8_t* row, int64_t u, __m256 (&v)[4]) {
        const uint8_t* y = row + 144 * (u / 8);
        const int j = static_cast<int>(u % 8);
        int sc, m;
        scale_min_k4(j, y + 4, sc, m);
        const __m256 dl = _mm256_set1_ps(load_f16(y) * static_cast<float>(sc));
        const __m256 ml = _mm256_set1_ps(load_f16(y + 2) * static_cast<float>(m));
        const uint8_t* q = y + 16 + 32 * (j / 2);
        const int shift = 4 * (j % 2);
        const __m256i m4 = _mm256_set1_epi32(0xF);
        for (int h = 0; h < 4; ++h) {
            const __m256i e = _mm256_and_si256(_mm256_srli_epi32(bytes8(q + 8 * h), shift), m4);
            v[h] = _mm256_fmsub_ps(dl, to_f32(e), ml);
        }
    }
};

// q5_K (176 bytes / 256): d | dmin | scales[12] | qh[32] | qs[128]; the 5th bit of element
// 32j + l is bit j of qh[l].
struct Q5_K {
    EDGELLM_AVX2 static inline void unit(const uint8_t* row, int64_t u, __m256 (&v)[4]) {
        const uint8_t* y = row + 176 * (u / 8);
        const int j = static_cast<int>(u % 8);
        int sc, m;
        scale_min_k4(j, y + 4, sc, m);
        const __m256 dl = _mm256_set1_ps(load_f16(y) * static_cast<float>(sc));
        const __m256 ml = _mm256_set1_ps(load_f16(y + 2) * static_cast<float>(m));
        const uint8_t* q = y + 48 + 32 * (j / 2);
        const int shift = 4 * (j % 2);
        const __m256i m4 = _mm256_set1_epi32(0xF), one = _mm256_set1_epi32(1);
        for (int h = 0; h < 4; ++h) {
            const __m256i hb =
                _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(bytes8(y + 16 + 8 * h), j), one), 4);
            const __m256i e = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32(bytes8(q + 8 * h), shift), m4), hb);
            v[h] = _mm256_fmsub_ps(dl, to_f32(e), ml);
        }
    }
};

// q6_K (210 bytes / 256): ql[128] | qh[64] | scales[16] int8 | d. Element 128h + 32k + l: low 4
// bits nibble k/2 of ql[64h + 32(k%2) + l], high 2 bits bits 2k.. of qh[32h + l]; (d*sc)*(v-32)
// with one scale per 16 elements.
struct Q6_K {
    EDGELLM_AVX2 static inline void unit(const uint8_t* row, int64_t u, __m256 (&v)[4]) {
        const uint8_t* y = row + 210 * (u / 8);
        const int j = static_cast<int>(u % 8), h = j / 4, k = j % 4;
        const float d = load_f16(y + 208);
        const int8_t* sc = reinterpret_cast<const int8_t*>(y + 192) + 2 * j;
        const __m256i m4 = _mm256_set1_epi32(0xF), m2 = _mm256_set1_epi32(3), b32 = _mm256_set1_epi32(32);
        const uint8_t* ql = y + 64 * h + 32 * (k % 2);
        const uint8_t* qh = y + 128 + 32 * h;
        for (int i = 0; i < 4; ++i) {
            const __m256i l4 = _mm256_and_si256(_mm256_srli_epi32(bytes8(ql + 8 * i), 4 * (k / 2)), m4);
            const __m256i h2 = _mm256_and_si256(_mm256_srli_epi32(bytes8(qh + 8 * i), 2 * k), m2);
            const __m256i e = _mm256_sub_epi32(_mm256_or_si256(l4, _mm256_slli_epi32(h2, 4)), b32);
            v[i] = _mm256_mul_ps(_mm256_set1_ps(d * static_cast<float>(sc[i / 2])), to_f32(e));
        }
    }
};

template <class Q>
EDGELLM_AVX2 void deq_units(const uint8_t* y, float* x, int64_t n) {
    for (int64_t u = 0; u < n / 32; ++u) {
        __m256 v[4];
        Q::unit(y, u, v);
        for (int i = 0; i < 4; ++i) _mm256_storeu_ps(x + 32 * u + 8 * i, v[i]);
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

// Sums of four 8-lane accumulators: s4[i] = a[i] + a[i+4], s2[i] = s4[i] + s4[i+2],
// s = s2[0] + s2[1]; each sum's tree is independent of the other three.
EDGELLM_AVX2 inline __m128 reduce4(__m256 a, __m256 b, __m256 c, __m256 d) {
    __m256 ab = _mm256_add_ps(_mm256_permute2f128_ps(a, b, 0x20), _mm256_permute2f128_ps(a, b, 0x31));
    __m256 cd = _mm256_add_ps(_mm256_permute2f128_ps(c, d, 0x20), _mm256_permute2f128_ps(c, d, 0x31));
    ab = _mm256_add_ps(ab, _mm256_permute_ps(ab, _MM_SHUFFLE(1, 0, 3, 2)));
    cd = _mm256_add_ps(cd, _mm256_permute_ps(cd, _MM_SHUFFLE(1, 0, 3, 2)));
    ab = _mm256_add_ps(ab, _mm256_permute_ps(ab, _MM_SHUFFLE(2, 3, 0, 1)));
    cd = _mm256_add_ps(cd, _mm256_permute_ps(cd, _MM_SHUFFLE(2, 3, 0, 1)));
    // sums in lane 0 of each 128-bit half: ab = [a . . . | b . . .], cd = [c . . . | d . . .]
    const __m128 a_b = _mm_unpacklo_ps(_mm256_castps256_ps128(ab), _mm256_extractf128_ps(ab, 1));
    const __m128 c_d = _mm_unpacklo_ps(_mm256_castps256_ps128(cd), _mm256_extractf128_ps(cd, 1));
    return _mm_movelh_ps(a_b, c_d);
}

constexpr int kMR = 4;
constexpr int kNR = 3;

// Writes the sums of the first nr rows of a tile: y[t * ldy + r].
template <int NR>
EDGELLM_AVX2 inline void store_tile(const __m256 (&acc)[4][NR], float* y, int64_t ldy, int nr) {
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

template <int MR, int NR>
EDGELLM_AVX2 void tile(const float* w, int64_t ldw, const float* x, int64_t ldx, int64_t k, float* y, int64_t ldy,
                       int nr) {
    __m256 acc[kMR][NR];
#pragma GCC unroll 4
    for (int r = 0; r < kMR; ++r)
#pragma GCC unroll 3
        for (int t = 0; t < NR; ++t) acc[r][t] = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 8 <= k; j += 8) {
        __m256 xv[NR];
#pragma GCC unroll 3
        for (int t = 0; t < NR; ++t) xv[t] = _mm256_loadu_ps(x + t * ldx + j);
#pragma GCC unroll 4
        for (int r = 0; r < MR; ++r) {
            const __m256 wv = _mm256_loadu_ps(w + r * ldw + j);
#pragma GCC unroll 3
            for (int t = 0; t < NR; ++t) acc[r][t] = _mm256_fmadd_ps(wv, xv[t], acc[r][t]);
        }
    }
    if (j < k) {
        alignas(32) static const int32_t kLanes[8] = {0, 1, 2, 3, 4, 5, 6, 7};
        const __m256i m = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(k - j)),
                                             _mm256_load_si256(reinterpret_cast<const __m256i*>(kLanes)));
        __m256 xv[NR];
        for (int t = 0; t < NR; ++t) xv[t] = _mm256_maskload_ps(x + t * ldx + j, m);
        for (int r = 0; r < MR; ++r) {
            const __m256 wv = _mm256_maskload_ps(w + r * ldw + j, m);
            for (int t = 0; t < NR; ++t) acc[r][t] = _mm256_fmadd_ps(wv, xv[t], acc[r][t]);
        }
    }
    store_tile<NR>(acc, y, ldy, nr);
}

template <int MR>
EDGELLM_AVX2 void tile_nt(const float* w, int64_t ldw, const float* x, int64_t ldx, int nt, int64_t k, float* y,
                          int64_t ldy, int nr) {
    switch (nt) {
        case 1: tile<MR, 1>(w, ldw, x, ldx, k, y, ldy, nr); break;
        case 2: tile<MR, 2>(w, ldw, x, ldx, k, y, ldy, nr); break;
        default: tile<MR, 3>(w, ldw, x, ldx, k, y, ldy, nr); break;
    }
}

EDGELLM_AVX2 void gemm(const float* w, int64_t ldw, int64_t nr, const float* x, int64_t ldx, int64_t nt, int64_t k,
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

// ---- integer path ----

#define EDGELLM_QTARGET EDGELLM_AVX2
#define EDGELLM_QZMM 0
constexpr int64_t kQMaxTokens = 4;  // a small tile: AVX2 has 16 ymm registers
#include "ops/x86/qgemm_x86.inc"
#undef EDGELLM_QTARGET
#undef EDGELLM_QZMM

const Kernels kAvx2 = {Isa::Avx2, dequant, gemm, qgemm};

}  // namespace

const Kernels* kernels_avx2() {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
        return &kAvx2;
    return nullptr;
}

}  // namespace edgellm::ops::detail

#else

namespace edgellm::ops::detail {
const Kernels* kernels_avx2() { return nullptr; }
}  // namespace edgellm::ops::detail

#endif
