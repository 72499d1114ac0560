// The integer path's portable parts: activation quantization, the scalar unpackers of every block
// format (the layouts are those of quant/dequant.cpp, whose comments describe each), and the
// scalar reference product the SIMD kernels are tested against.
#include "ops/qgemm.h"

#include <cmath>
#include <cstring>

#include "quant/fp16.h"

namespace edgellm::ops::detail {

namespace {

using quant::Type;

float f16_at(const uint8_t* p) {
    uint16_t h;
    std::memcpy(&h, p, 2);
    return quant::fp16_to_fp32(h);
}

// Sets both halves of block b of one row.
inline void set_block(float* d, float* m, int64_t b, float dv, float mv) {
    d[2 * b] = d[2 * b + 1] = dv;
    m[2 * b] = m[2 * b + 1] = mv;
}

// Legacy formats: nibbles (plus a 5th bit) with d and an offset m.
void unpack_legacy(Type type, const uint8_t* y, int64_t nb, int16_t* v, float* d, float* m) {
    const bool has_min = type == Type::Q4_1 || type == Type::Q5_1;
    const bool five = type == Type::Q5_0 || type == Type::Q5_1;
    const size_t bs = quant::traits(static_cast<uint32_t>(type))->type_size;
    for (int64_t b = 0; b < nb; ++b, y += bs, v += 32) {
        const float dv = f16_at(y);
        const float mv = has_min ? f16_at(y + 2) : dv * (five ? -16.0f : -8.0f);
        const uint8_t* p = y + (has_min ? 4 : 2);
        uint32_t qh = 0;
        if (five) {
            std::memcpy(&qh, p, 4);
            p += 4;
        }
        for (int j = 0; j < 16; ++j) {
            v[j] = static_cast<int16_t>((p[j] & 0x0F) | (((qh >> j) & 1u) << 4));
            v[j + 16] = static_cast<int16_t>((p[j] >> 4) | (((qh >> (j + 16)) & 1u) << 4));
        }
        set_block(d, m, b, dv, mv);
    }
}

void unpack_q8_0(const uint8_t* y, int64_t nb, int16_t* v, float* d, float* m) {
    for (int64_t b = 0; b < nb; ++b, y += 34, v += 32) {
        for (int j = 0; j < 32; ++j) v[j] = static_cast<int8_t>(y[2 + j]);
        set_block(d, m, b, f16_at(y), 0.0f);
    }
}

void scale_min_k4(int j, const uint8_t* q, int& sc, int& mn) {
    if (j < 4) {
        sc = q[j] & 63;
        mn = q[j + 4] & 63;
    } else {
        sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        mn = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

// q4_K / q5_K: 8 blocks of 32 per super-block, scale d*sc and offset -(dmin*mn) each.
void unpack_q45_K(bool five, const uint8_t* y, int64_t nb, int16_t* v, float* d, float* m) {
    const size_t bs = five ? 176 : 144;
    for (int64_t sb = 0; sb < nb / 8; ++sb, y += bs) {
        const float dd = f16_at(y), dmin = f16_at(y + 2);
        const uint8_t* qh = y + 16;
        const uint8_t* qs = y + (five ? 48 : 16);
        for (int j = 0; j < 8; ++j, v += 32) {
            int sc, mn;
            scale_min_k4(j, y + 4, sc, mn);
            const uint8_t* q = qs + 32 * (j / 2);
            const int shift = 4 * (j % 2);
            for (int l = 0; l < 32; ++l) {
                const int hi = five ? ((qh[l] >> j) & 1) << 4 : 0;
                v[l] = static_cast<int16_t>(((q[l] >> shift) & 0xF) | hi);
            }
            set_block(d, m, 8 * sb + j, dd * static_cast<float>(sc), -(dmin * static_cast<float>(mn)));
        }
    }
}

// q2_K: 2-bit values, per 16: scale d*sc and offset -(dmin*mn).
void unpack_q2_K(const uint8_t* y, int64_t nb, int16_t* v, float* d, float* m) {
    for (int64_t sb = 0; sb < nb / 8; ++sb, y += 84, v += 256) {
        const float dd = f16_at(y + 80), dmin = f16_at(y + 82);
        for (int e = 0; e < 256; ++e)
            v[e] = static_cast<int16_t>((y[16 + 32 * (e / 128) + e % 32] >> (2 * ((e / 32) % 4))) & 3);
        for (int s = 0; s < 16; ++s) {
            d[16 * sb + s] = dd * static_cast<float>(y[s] & 0xF);
            m[16 * sb + s] = -(dmin * static_cast<float>(y[s] >> 4));
        }
    }
}

// q3_K: q = low - (high ? 0 : 4), stored as v = q + 4 in [0, 7] with offset -4 * scale.
void unpack_q3_K(const uint8_t* y, int64_t nb, int16_t* v, float* d, float* m) {
    for (int64_t sb = 0; sb < nb / 8; ++sb, y += 110, v += 256) {
        const float dd = f16_at(y + 108);
        const uint8_t* s = y + 96;
        for (int e = 0; e < 256; ++e) {
            const int low = (y[32 + 32 * (e / 128) + e % 32] >> (2 * ((e / 32) % 4))) & 3;
            const int high = (y[e % 32] >> (e / 32)) & 1;
            v[e] = static_cast<int16_t>(low + (high ? 4 : 0));
        }
        for (int j = 0; j < 16; ++j) {
            const int lo = j < 8 ? (s[j] & 0xF) : (s[j - 8] >> 4);
            const int hi = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
            const float dl = dd * static_cast<float>((lo | (hi << 4)) - 32);
            d[16 * sb + j] = dl;
            m[16 * sb + j] = dl * -4.0f;
        }
    }
}

// q6_K: v in [0, 63], scale d*sc per 16 and offset -32 * scale.
void unpack_q6_K(const uint8_t* y, int64_t nb, int16_t* v, float* d, float* m) {
    for (int64_t sb = 0; sb < nb / 8; ++sb, y += 210, v += 256) {
        const float dd = f16_at(y + 208);
        const int8_t* sc = reinterpret_cast<const int8_t*>(y + 192);
        for (int e = 0; e < 256; ++e) {
            const int h = e / 128, k = (e % 128) / 32, l = e % 32;
            const int low = (y[64 * h + 32 * (k % 2) + l] >> (4 * (k / 2))) & 0xF;
            const int high = (y[128 + 32 * h + l] >> (2 * k)) & 3;
            v[e] = static_cast<int16_t>(low | (high << 4));
        }
        for (int j = 0; j < 16; ++j) {
            const float dl = dd * static_cast<float>(sc[j]);
            d[16 * sb + j] = dl;
            m[16 * sb + j] = dl * -32.0f;
        }
    }
}

}  // namespace

bool qformat(quant::Type type, QFormat* f) {
    switch (type) {
        case Type::Q4_0: case Type::Q4_1: case Type::Q5_0: case Type::Q5_1: case Type::Q4_K: case Type::Q5_K:
            *f = {false, true};
            return true;
        case Type::Q8_0:
            *f = {false, false};
            return true;
        case Type::Q2_K: case Type::Q3_K: case Type::Q6_K:
            *f = {true, true};
            return true;
        default:
            return false;
    }
}

// Compiled for AVX-512, AVX2 and the baseline, chosen when the library loads (the arithmetic is
// the same in each: a max, one multiply, an exact rounding, so every clone gives the same bits).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
void quantize_acts(const float* x, int64_t nt, int64_t k, int16_t* q, float* d, float* s) {
    const int64_t nb = k / kQBlock;
    for (int64_t t = 0; t < nt; ++t)
        for (int64_t b = 0; b < nb; ++b) {
            const float* xb = x + t * k + b * kQBlock;
            int16_t* qb = q + t * k + b * kQBlock;
            // max |x| on the bit patterns: non-negative floats order like their integer bits
            uint32_t amax_bits = 0;
            for (int j = 0; j < kQBlock; ++j) {
                uint32_t u;
                std::memcpy(&u, xb + j, 4);
                u &= 0x7FFFFFFFu;
                amax_bits = u > amax_bits ? u : amax_bits;
            }
            float amax;
            std::memcpy(&amax, &amax_bits, 4);
            // A block with an inf or NaN: every q is 0 and d is inf or NaN, so the products are NaN
            // (as the float path would give). A block whose largest value is below 1e-30 (where
            // 32767 / amax would overflow) is all zeros. No float-to-int conversion sees a value
            // outside [-32767, 32767].
            const bool finite = amax_bits < 0x7F800000u && amax >= 1e-30f;
            const float db = amax / 32767.0f;
            const float id = finite ? 32767.0f / amax : 0.0f;
            int32_t v[kQBlock] = {};
            if (finite) {
                for (int j = 0; j < kQBlock; ++j) {
                    // round to nearest even: |x * id| <= 32767 < 2^22, so adding 1.5 * 2^23 leaves
                    // the rounded integer in the low mantissa bits (no libm call; it vectorises)
                    const float r = (xb[j] * id + 12582912.0f) - 12582912.0f;
                    v[j] = static_cast<int32_t>(r);
                }
            }
            int32_t sum0 = 0, sum1 = 0;
            for (int j = 0; j < 16; ++j) sum0 += v[j];
            for (int j = 16; j < 32; ++j) sum1 += v[j];
            for (int j = 0; j < kQBlock; ++j) qb[j] = static_cast<int16_t>(v[j]);
            d[t * nb + b] = db;
            s[t * 2 * nb + 2 * b] = db * static_cast<float>(sum0);
            s[t * 2 * nb + 2 * b + 1] = db * static_cast<float>(sum1);
        }
}

void unpack_rows_ref(quant::Type type, const uint8_t* src, size_t rs, int64_t nr, const QRows& dst, int64_t r_off) {
    const int64_t k = dst.k, nb = dst.nb;
    for (int64_t r = 0; r < nr; ++r) {
        const uint8_t* y = src + static_cast<size_t>(r) * rs;
        int16_t* v = dst.v + (r_off + r) * k;
        float* d = dst.d + (r_off + r) * 2 * nb;
        float* m = dst.m + (r_off + r) * 2 * nb;
        switch (type) {
            case Type::Q4_0: case Type::Q4_1: case Type::Q5_0: case Type::Q5_1:
                unpack_legacy(type, y, nb, v, d, m);
                break;
            case Type::Q8_0: unpack_q8_0(y, nb, v, d, m); break;
            case Type::Q4_K: unpack_q45_K(false, y, nb, v, d, m); break;
            case Type::Q5_K: unpack_q45_K(true, y, nb, v, d, m); break;
            case Type::Q2_K: unpack_q2_K(y, nb, v, d, m); break;
            case Type::Q3_K: unpack_q3_K(y, nb, v, d, m); break;
            case Type::Q6_K: unpack_q6_K(y, nb, v, d, m); break;
            default: break;  // qformat() refused it; the caller never gets here
        }
    }
}

void qgemm_ref(const QRows& w, int64_t nr, const QActs& a, int64_t nt, float* y, int64_t ldy) {
    const int64_t k = w.k, nb = w.nb;
    for (int64_t t = 0; t < nt; ++t)
        for (int64_t r = 0; r < nr; ++r) {
            const int16_t* v = w.v + r * k;
            const int16_t* q = a.q + t * k;
            float sum = 0.0f;
            for (int64_t b = 0; b < nb; ++b)
                for (int h = 0; h < 2; ++h) {
                    int32_t dot = 0;
                    for (int64_t j = 32 * b + 16 * h; j < 32 * b + 16 * h + 16; ++j) {
                        dot += static_cast<int32_t>(v[j]) * q[j];
                    }
                    sum += w.d[r * 2 * nb + 2 * b + h] * a.d[t * nb + b] * static_cast<float>(dot);
                    if (w.f.has_m) sum += w.m[r * 2 * nb + 2 * b + h] * a.s[t * 2 * nb + 2 * b + h];
                }
            y[t * ldy + r] = sum;
        }
}

}  // namespace edgellm::ops::detail
