// The integer path's portable parts: the formats, the repacking of every block format into panels
// (the block layouts are those of quant/dequant.cpp, whose comments describe each), activation
// quantization, and the scalar reference product the SIMD kernels are tested against.
#include "ops/qgemm.h"

#include <cmath>
#include <cstring>
#include <vector>

#include "quant/fp16.h"

namespace edgellm::ops::detail {

namespace {

using quant::Type;

uint16_t u16_at(const uint8_t* p) {
    uint16_t h;
    std::memcpy(&h, p, 2);
    return h;
}

float f16_at(const uint8_t* p) { return quant::fp16_to_fp32(u16_at(p)); }

int halves(const QFmt& f) { return f.g16 ? 2 : 1; }

size_t scale_bytes(const QFmt& f) {
    const size_t per = f.super ? 16 * static_cast<size_t>(halves(f)) : 32;  // i8 per half, or f16
    return per * (f.has_m ? 2 : 1);
}

size_t value_bytes(const QFmt& f) { return f.nib ? 256 + 64 * static_cast<size_t>(f.hb) : 512; }

// Offset of group g's record in a panel.
size_t group_offset(const QFmt& f, int64_t g) {
    const size_t grp = qgroup_bytes(f);
    if (!f.super) return static_cast<size_t>(g) * grp;
    const size_t sb = qheader_bytes(f) + 8 * grp;
    return static_cast<size_t>(g / 8) * sb + qheader_bytes(f) + static_cast<size_t>(g % 8) * grp;
}

// Byte of the value array holding value j (0..31) of panel row i, and its shift (nibbles).
inline size_t value_pos(const QFmt& f, int i, int j, int& shift) {
    if (f.nib) {
        const int c = j / 8, w = j % 8, s = w / 2 + 4 * (w % 2);
        shift = 4 * (s % 2);
        return static_cast<size_t>(64 * c + 4 * i + s / 2);
    }
    static const int kPos[4] = {0, 2, 1, 3};
    shift = 0;
    return static_cast<size_t>(64 * (j / 4) + 4 * i + kPos[j % 4]);
}

// One row decoded: values v[k] (with the zero point still in), and the scales as the panel
// stores them: legacy formats d16/m16 per group (raw f16 bits); k-quants D16/Dmin16 per
// super-block and sc/mn per group half.
struct RowParts {
    std::vector<int8_t> v;
    std::vector<uint16_t> d16, m16;
    std::vector<int8_t> sc;
    std::vector<uint8_t> mn;
};

void scale_min_k4(int j, const uint8_t* q, int& sc, int& mn) {
    if (j < 4) {
        sc = q[j] & 63;
        mn = q[j + 4] & 63;
    } else {
        sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        mn = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

void decode_row(const QFmt& f, const uint8_t* y, int64_t k, RowParts& o) {
    const int64_t nb = k / 32;
    o.v.resize(static_cast<size_t>(k));
    int8_t* v = o.v.data();
    switch (f.type) {
        case Type::Q4_0: case Type::Q4_1: case Type::Q5_0: case Type::Q5_1: {
            const bool has_min = f.has_m, five = f.hb == 1;
            const size_t bs = quant::traits(static_cast<uint32_t>(f.type))->type_size;
            o.d16.resize(static_cast<size_t>(nb));
            o.m16.resize(has_min ? static_cast<size_t>(nb) : 0);
            for (int64_t b = 0; b < nb; ++b, y += bs, v += 32) {
                o.d16[static_cast<size_t>(b)] = u16_at(y);
                if (has_min) o.m16[static_cast<size_t>(b)] = u16_at(y + 2);
                const uint8_t* p = y + (has_min ? 4 : 2);
                uint32_t qh = 0;
                if (five) {
                    std::memcpy(&qh, p, 4);
                    p += 4;
                }
                for (int j = 0; j < 16; ++j) {
                    v[j] = static_cast<int8_t>((p[j] & 0x0F) | (((qh >> j) & 1u) << 4));
                    v[j + 16] = static_cast<int8_t>((p[j] >> 4) | (((qh >> (j + 16)) & 1u) << 4));
                }
            }
            return;
        }
        case Type::Q8_0:
            o.d16.resize(static_cast<size_t>(nb));
            for (int64_t b = 0; b < nb; ++b, y += 34, v += 32) {
                o.d16[static_cast<size_t>(b)] = u16_at(y);
                for (int j = 0; j < 32; ++j) v[j] = static_cast<int8_t>(y[2 + j]);
            }
            return;
        default:
            break;
    }
    // k-quants: super-blocks of 256
    const int64_t ns = k / 256;
    o.d16.resize(static_cast<size_t>(ns));
    o.m16.resize(f.has_m ? static_cast<size_t>(ns) : 0);
    o.sc.resize(static_cast<size_t>(nb * halves(f)));
    o.mn.resize(f.has_m ? o.sc.size() : 0);
    for (int64_t sb = 0; sb < ns; ++sb, v += 256) {
        const size_t s0 = static_cast<size_t>(sb * 8 * halves(f));
        switch (f.type) {
            case Type::Q4_K: case Type::Q5_K: {
                const bool five = f.type == Type::Q5_K;
                o.d16[static_cast<size_t>(sb)] = u16_at(y);
                o.m16[static_cast<size_t>(sb)] = u16_at(y + 2);
                const uint8_t* qh = y + 16;
                const uint8_t* qs = y + (five ? 48 : 16);
                for (int j = 0; j < 8; ++j) {
                    int sc, mn;
                    scale_min_k4(j, y + 4, sc, mn);
                    o.sc[s0 + j] = static_cast<int8_t>(sc);
                    o.mn[s0 + j] = static_cast<uint8_t>(mn);
                    const uint8_t* q = qs + 32 * (j / 2);
                    const int shift = 4 * (j % 2);
                    for (int l = 0; l < 32; ++l) {
                        const int hi = five ? ((qh[l] >> j) & 1) << 4 : 0;
                        v[32 * j + l] = static_cast<int8_t>(((q[l] >> shift) & 0xF) | hi);
                    }
                }
                y += five ? 176 : 144;
                break;
            }
            case Type::Q2_K:
                o.d16[static_cast<size_t>(sb)] = u16_at(y + 80);
                o.m16[static_cast<size_t>(sb)] = u16_at(y + 82);
                for (int c = 0; c < 8; ++c) {
                    const uint8_t* q = y + 16 + 32 * (c / 4);
                    const int sl = 2 * (c % 4);
                    for (int l = 0; l < 32; ++l) v[32 * c + l] = static_cast<int8_t>((q[l] >> sl) & 3);
                }
                for (int s = 0; s < 16; ++s) {
                    o.sc[s0 + s] = static_cast<int8_t>(y[s] & 0xF);
                    o.mn[s0 + s] = static_cast<uint8_t>(y[s] >> 4);
                }
                y += 84;
                break;
            case Type::Q3_K: {
                o.d16[static_cast<size_t>(sb)] = u16_at(y + 108);
                const uint8_t* s = y + 96;
                for (int c = 0; c < 8; ++c) {
                    const uint8_t* ql = y + 32 + 32 * (c / 4);
                    const int sl = 2 * (c % 4);
                    for (int l = 0; l < 32; ++l)
                        v[32 * c + l] = static_cast<int8_t>(((ql[l] >> sl) & 3) | (((y[l] >> c) & 1) << 2));
                }
                for (int j = 0; j < 16; ++j) {
                    const int lo = j < 8 ? (s[j] & 0xF) : (s[j - 8] >> 4);
                    const int hi = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
                    o.sc[s0 + j] = static_cast<int8_t>((lo | (hi << 4)) - 32);
                }
                y += 110;
                break;
            }
            case Type::Q6_K:
                o.d16[static_cast<size_t>(sb)] = u16_at(y + 208);
                for (int h = 0; h < 2; ++h)
                    for (int kk = 0; kk < 4; ++kk) {
                        const uint8_t* ql = y + 64 * h + 32 * (kk % 2);
                        const uint8_t* qh = y + 128 + 32 * h;
                        int8_t* out = v + 128 * h + 32 * kk;
                        const int sl = 4 * (kk / 2), sh = 2 * kk;
                        for (int l = 0; l < 32; ++l)
                            out[l] = static_cast<int8_t>(((ql[l] >> sl) & 0xF) | (((qh[l] >> sh) & 3) << 4));
                    }
                for (int j = 0; j < 16; ++j) o.sc[s0 + j] = static_cast<int8_t>(y[192 + j]);
                y += 210;
                break;
            default:
                return;  // qfmt() refused it; never here
        }
    }
}

// Scale d and offset m of half h of group g of row i of a panel.
void group_scales(const QFmt& f, const uint8_t* panel, int64_t g, int h, int i, float& d, float& m) {
    const uint8_t* rec = panel + group_offset(f, g);
    if (!f.super) {
        d = f16_at(rec + 2 * i);
        m = f.has_m ? f16_at(rec + 32 + 2 * i) : 0.0f;
        return;
    }
    const uint8_t* hdr = panel + group_offset(f, g - g % 8) - qheader_bytes(f);
    const int nh = halves(f);
    d = f16_at(hdr + 2 * i) * static_cast<float>(static_cast<int8_t>(rec[16 * h + i]));
    m = f.has_m ? -(f16_at(hdr + 32 + 2 * i) * static_cast<float>(rec[16 * nh + 16 * h + i])) : 0.0f;
}

// Bit of row i's u32 in high-bit chunk *chunk holding the high bits of value j (0..31).
inline int high_pos(const QFmt& f, int j, int* chunk) {
    const int per = 16 / f.hb, pair = j / 2;
    *chunk = pair / per;
    return 16 * (j % 2) + f.hb * (pair % per);
}

int value_at(const QFmt& f, const uint8_t* vals, int i, int j) {
    int shift;
    const uint8_t b = vals[value_pos(f, i, j, shift)];
    if (!f.nib) return static_cast<int8_t>(b);
    int v = (b >> shift) & 0xF;
    if (f.hb > 0) {
        int c;
        const int bit = high_pos(f, j, &c);
        uint32_t u;
        std::memcpy(&u, vals + 256 + 64 * c + 4 * i, 4);
        v |= static_cast<int>((u >> bit) & ((1u << f.hb) - 1)) << 4;
    }
    return v;
}

}  // namespace

bool qfmt(quant::Type type, QFmt* f) {
    QFmt q;
    q.type = type;
    switch (type) {
        case Type::Q4_0: q.nib = true; q.z = 8; break;
        case Type::Q4_1: q.nib = true; q.has_m = true; break;
        case Type::Q5_0: q.nib = true; q.hb = 1; q.z = 16; break;
        case Type::Q5_1: q.nib = true; q.hb = 1; q.has_m = true; break;
        case Type::Q8_0: break;
        case Type::Q2_K: q.nib = q.g16 = q.has_m = q.super = true; break;
        case Type::Q3_K: q.nib = q.g16 = q.super = true; q.z = 4; break;
        case Type::Q4_K: q.nib = q.has_m = q.super = true; break;
        case Type::Q5_K: q.nib = q.has_m = q.super = true; q.hb = 1; break;
        case Type::Q6_K: q.nib = q.g16 = q.super = true; q.hb = 2; q.z = 32; break;
        default: return false;
    }
    *f = q;
    return true;
}

size_t qgroup_bytes(const QFmt& f) { return scale_bytes(f) + value_bytes(f); }

size_t qheader_bytes(const QFmt& f) { return f.super ? 32 * (f.has_m ? 2 : 1) : 0; }

size_t qpanel_bytes(const QFmt& f, int64_t k) {
    const int64_t nb = k / kQBlock;
    return static_cast<size_t>(nb) * qgroup_bytes(f) + static_cast<size_t>(nb / 8) * qheader_bytes(f);
}

namespace {

// The value bytes of one group of row i (32 values v, the zero point still in) at vals + 4i, in
// the order value_pos() and high_pos() give.
void pack_values(const QFmt& f, const uint8_t* v, uint8_t* vals) {
    if (!f.nib) {
        for (int c = 0; c < 8; ++c) {
            const uint32_t u = uint32_t(v[4 * c]) | uint32_t(v[4 * c + 2]) << 8 | uint32_t(v[4 * c + 1]) << 16 |
                               uint32_t(v[4 * c + 3]) << 24;
            std::memcpy(vals + 64 * c, &u, 4);
        }
        return;
    }
    for (int c = 0; c < 4; ++c) {
        uint32_t u = 0;
        for (int p = 0; p < 4; ++p)
            u |= (uint32_t(v[8 * c + 2 * p] & 0xF) << (4 * p)) | (uint32_t(v[8 * c + 2 * p + 1] & 0xF) << (4 * p + 16));
        std::memcpy(vals + 64 * c, &u, 4);
    }
    if (f.hb > 0) {  // the high bits of value j at the chunk and bit high_pos() gives
        uint32_t u[2] = {0, 0};
        for (int j = 0; j < 32; ++j) {
            int c;
            const int bit = high_pos(f, j, &c);
            u[c] |= uint32_t(v[j] >> 4) << bit;
        }
        for (int c = 0; c < f.hb; ++c) std::memcpy(vals + 256 + 64 * c, &u[c], 4);
    }
}

}  // namespace

void qpack(const QFmt& f, const uint8_t* src, size_t rs, int64_t rows, int64_t k, int64_t r0, int64_t nr,
           uint8_t* dst) {
    const int64_t nb = k / kQBlock, pb = static_cast<int64_t>(qpanel_bytes(f, k));
    const int64_t p_first = r0 / kPanelRows, p_end = (r0 + nr + kPanelRows - 1) / kPanelRows;
    // every byte of a full panel is written below: only a last, partial one needs zeros first
    if ((r0 + nr) % kPanelRows != 0)
        std::memset(dst + (p_end - 1 - p_first) * pb, 0, static_cast<size_t>(pb));
    const size_t grp = qgroup_bytes(f), hdr = qheader_bytes(f), sbytes = scale_bytes(f);
    RowParts row;
    const int nh = halves(f);
    for (int64_t r = r0; r < r0 + nr && r < rows; ++r) {
        uint8_t* panel = dst + (r / kPanelRows - p_first) * pb;
        const int i = static_cast<int>(r % kPanelRows);
        decode_row(f, src + static_cast<size_t>(r) * rs, k, row);
        uint8_t* rec = panel;
        for (int64_t g = 0; g < nb; ++g, rec += grp) {
            if (!f.super) {
                std::memcpy(rec + 2 * i, &row.d16[static_cast<size_t>(g)], 2);
                if (f.has_m) std::memcpy(rec + 32 + 2 * i, &row.m16[static_cast<size_t>(g)], 2);
            } else {
                if (g % 8 == 0) {  // the super-block header comes first
                    std::memcpy(rec + 2 * i, &row.d16[static_cast<size_t>(g / 8)], 2);
                    if (f.has_m) std::memcpy(rec + 32 + 2 * i, &row.m16[static_cast<size_t>(g / 8)], 2);
                    rec += hdr;
                }
                for (int h = 0; h < nh; ++h) {
                    rec[16 * h + i] = static_cast<uint8_t>(row.sc[static_cast<size_t>(g * nh + h)]);
                    if (f.has_m) rec[16 * nh + 16 * h + i] = row.mn[static_cast<size_t>(g * nh + h)];
                }
            }
            pack_values(f, reinterpret_cast<const uint8_t*>(row.v.data()) + 32 * g, rec + sbytes + 4 * i);
        }
    }
}

// Compiled for AVX-512, AVX2 and the baseline, chosen when the library loads (the arithmetic is
// the same in each: a max, one multiply, an exact rounding, so every clone gives the same bits).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx512f", "avx2", "default")))
#endif
void quantize_acts(const QFmt& f, const float* x, int64_t nt, int64_t k, int16_t* q, float* d, int32_t* zs,
                   float* s) {
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
            int32_t* zt = zs + t * 2 * nb + 2 * b;
            float* st = s + t * 2 * nb + 2 * b;
            if (f.g16) {
                zt[0] = -f.z * sum0;
                zt[1] = -f.z * sum1;
                st[0] = db * static_cast<float>(sum0);
                st[1] = db * static_cast<float>(sum1);
            } else {
                zt[0] = -f.z * (sum0 + sum1);
                zt[1] = 0;
                st[0] = db * static_cast<float>(sum0 + sum1);
                st[1] = 0.0f;
            }
        }
}

void qgemm_ref(const QFmt& f, const uint8_t* w, int64_t nr, const QActs& a, int64_t nt, float* y, int64_t ldy) {
    const int64_t k = a.k, nb = a.nb;
    const size_t pb = qpanel_bytes(f, k);
    const int nh = halves(f), span = 32 / nh;
    for (int64_t t = 0; t < nt; ++t)
        for (int64_t r = 0; r < nr; ++r) {
            const uint8_t* panel = w + static_cast<size_t>(r / kPanelRows) * pb;
            const int i = static_cast<int>(r % kPanelRows);
            const int16_t* q = a.q + t * k;
            float acc = 0.0f;
            for (int64_t g = 0; g < nb; ++g) {
                const uint8_t* vals = panel + group_offset(f, g) + scale_bytes(f);
                const float da = a.d[t * nb + g];
                for (int h = 0; h < nh; ++h) {
                    float d, m;
                    group_scales(f, panel, g, h, i, d, m);
                    int32_t dot = a.zs[t * 2 * nb + 2 * g + h];
                    for (int j = span * h; j < span * (h + 1); ++j) dot += value_at(f, vals, i, j) * q[32 * g + j];
                    acc = std::fma(static_cast<float>(dot), d * da, acc);
                    if (f.has_m) acc = std::fma(m, a.s[t * 2 * nb + 2 * g + h], acc);
                }
            }
            y[t * ldy + r] = acc;
        }
}

}  // namespace edgellm::ops::detail
