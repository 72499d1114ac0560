// Quantizers of the 32-element block formats q4_0, q4_1, q5_0, q5_1, q8_0.
// Each block is a small search over f16 scales (and offsets): the plain round-to-nearest scale
// is always a candidate, others come from a sweep of the scale that maps the extreme element
// to the end levels and from weighted least-squares refits. Every candidate is scored with its
// stored f16 values and the best level per element, so the result is never worse than plain
// rounding in sum_j w_j (x_j - deq_j)^2 (w: importance weights, or the prior sqrt(sigma2 + x^2)
// of qsearch.h without them).
#include <cmath>
#include <limits>

#include "quant/qsearch.h"
#include "quant/rows.h"

namespace edgellm::quant {

namespace {

constexpr int QK = 32;

// Symmetric levels [lo, hi], deq = d*q. Returns the f16 bits of d; levels in L.
uint16_t search_sym(const float* x, const float* w, int lo, int hi, float d_rtn, int nstep, int8_t* L) {
    double best = std::numeric_limits<double>::infinity();
    uint16_t best_h = 0;
    int8_t tmp[QK];
    // Tries scale d, then refits d by least squares on the levels found; keeps the best.
    auto attempt = [&](float d, int refits) {
        for (int r = 0; r <= refits; ++r) {
            const uint16_t h = fp32_to_fp16_sat(d);
            const float s = fp16_to_fp32(h);
            const double err = fit_levels(x, w, QK, s, 0.0f, lo, hi, tmp);
            if (err < best) {
                best = err;
                best_h = h;
                std::memcpy(L, tmp, QK);
            }
            double sxq = 0, sqq = 0;
            for (int i = 0; i < QK; ++i) {
                const double wi = weight_at(w, i);
                sxq += wi * x[i] * tmp[i];
                sqq += wi * tmp[i] * tmp[i];
            }
            if (sqq <= 0) break;
            d = static_cast<float>(sxq / sqq);
        }
    };
    float amax = 0, max = 0;
    for (int i = 0; i < QK; ++i)
        if (std::fabs(x[i]) > amax) {
            amax = std::fabs(x[i]);
            max = x[i];
        }
    attempt(d_rtn, amax == 0 ? 0 : 2);  // plain rounding first, then its refits
    if (amax == 0) return best_h;
    for (int k = -nstep; k <= nstep; ++k) {
        attempt(max / (static_cast<float>(lo) - 0.1f * k), 1);  // extreme element at the low end
        attempt(max / (static_cast<float>(hi) + 0.1f * k), 1);  // ... or at the high end
    }
    return best_h;
}

// Asymmetric levels [0, nmax], deq = d*q + m. Returns f16 bits of d and m; levels in L.
void search_asym(const float* x, const float* w, int nmax, int nstep, uint16_t& hd, uint16_t& hm, int8_t* L) {
    float min = x[0], max = x[0];
    for (int i = 1; i < QK; ++i) {
        min = std::min(min, x[i]);
        max = std::max(max, x[i]);
    }
    double best = std::numeric_limits<double>::infinity();
    int8_t tmp[QK];
    // Tries (d, m), then refits both by weighted least squares on the levels found.
    auto attempt = [&](float d, float m, int refits) {
        for (int r = 0; r <= refits; ++r) {
            const uint16_t h1 = fp32_to_fp16_sat(d), h2 = fp32_to_fp16_sat(m);
            const float s = fp16_to_fp32(h1), off = fp16_to_fp32(h2);
            const double err = fit_levels(x, w, QK, s, -off, 0, nmax, tmp);
            if (err < best) {
                best = err;
                hd = h1;
                hm = h2;
                std::memcpy(L, tmp, QK);
            }
            double sw = 0, sq = 0, sqq = 0, sx = 0, sxq = 0;
            for (int i = 0; i < QK; ++i) {
                const double wi = weight_at(w, i);
                sw += wi;
                sq += wi * tmp[i];
                sqq += wi * tmp[i] * tmp[i];
                sx += wi * x[i];
                sxq += wi * x[i] * tmp[i];
            }
            const double det = sw * sqq - sq * sq;
            if (!(det > 0)) break;
            d = static_cast<float>((sw * sxq - sx * sq) / det);
            m = static_cast<float>((sqq * sx - sq * sxq) / det);
        }
    };
    attempt((max - min) / static_cast<float>(nmax), min, max == min ? 0 : 2);  // plain rounding, refits
    if (max == min) return;
    for (int k = -nstep; k <= nstep; ++k) {
        // levels from a stretched grid anchored at min, then refit
        const float iscale = (static_cast<float>(nmax) + 0.1f * k) / (max - min);
        double sw = 0, sq = 0, sqq = 0, sx = 0, sxq = 0;
        for (int i = 0; i < QK; ++i) {
            const int q = std::clamp(nearest_int(iscale * (x[i] - min)), 0, nmax);
            const double wi = weight_at(w, i);
            sw += wi;
            sq += wi * q;
            sqq += wi * q * q;
            sx += wi * x[i];
            sxq += wi * x[i] * q;
        }
        const double det = sw * sqq - sq * sq;
        if (!(det > 0)) continue;
        attempt(static_cast<float>((sw * sxq - sx * sq) / det), static_cast<float>((sqq * sx - sq * sxq) / det), 1);
    }
}

// Objective weights of block b: its slice of the imatrix, or the prior of qsearch.h.
const float* block_weights(const float* x, const float* imatrix, int64_t b, float* buf) {
    if (imatrix) return imatrix + b * QK;
    float sumx2 = 0;
    for (int i = 0; i < QK; ++i) sumx2 += x[i] * x[i];
    return prior_weights(x, QK, sumx2 / QK, buf);
}

// Extreme element (largest magnitude, signed) of a block.
float signed_absmax(const float* x) {
    float amax = 0, max = 0;
    for (int i = 0; i < QK; ++i)
        if (std::fabs(x[i]) > amax) {
            amax = std::fabs(x[i]);
            max = x[i];
        }
    return max;
}

void pack_nibbles(const int8_t* L, int offset, uint8_t* qs) {
    for (int j = 0; j < 16; ++j)
        qs[j] = static_cast<uint8_t>(((L[j] + offset) & 0x0F) | (((L[j + 16] + offset) & 0x0F) << 4));
}

uint32_t pack_high_bits(const int8_t* L, int offset) {
    uint32_t qh = 0;
    for (int j = 0; j < QK; ++j) qh |= static_cast<uint32_t>(((L[j] + offset) >> 4) & 1) << j;
    return qh;
}

}  // namespace

void quantize_row_q4_0(const float* x, uint8_t* y, int64_t n, const float* imatrix) {
    int8_t L[QK];
    for (int64_t b = 0; b < n / QK; ++b, x += QK, y += 18) {
        float wb[QK];
        const float* w = block_weights(x, imatrix, b, wb);
        put_u16(y, search_sym(x, w, -8, 7, signed_absmax(x) / -8.0f, 8, L));
        pack_nibbles(L, 8, y + 2);
    }
}

void quantize_row_q5_0(const float* x, uint8_t* y, int64_t n, const float* imatrix) {
    int8_t L[QK];
    for (int64_t b = 0; b < n / QK; ++b, x += QK, y += 22) {
        float wb[QK];
        const float* w = block_weights(x, imatrix, b, wb);
        put_u16(y, search_sym(x, w, -16, 15, signed_absmax(x) / -16.0f, 8, L));
        const uint32_t qh = pack_high_bits(L, 16);
        std::memcpy(y + 2, &qh, 4);
        pack_nibbles(L, 16, y + 6);
    }
}

void quantize_row_q8_0(const float* x, uint8_t* y, int64_t n, const float* imatrix) {
    int8_t L[QK];
    for (int64_t b = 0; b < n / QK; ++b, x += QK, y += 34) {
        float wb[QK];
        const float* w = block_weights(x, imatrix, b, wb);
        const float amax = std::fabs(signed_absmax(x));
        put_u16(y, search_sym(x, w, -128, 127, amax / 127.0f, 3, L));
        std::memcpy(y + 2, L, QK);
    }
}

void quantize_row_q4_1(const float* x, uint8_t* y, int64_t n, const float* imatrix) {
    int8_t L[QK];
    for (int64_t b = 0; b < n / QK; ++b, x += QK, y += 20) {
        float wb[QK];
        const float* w = block_weights(x, imatrix, b, wb);
        uint16_t hd = 0, hm = 0;
        search_asym(x, w, 15, 8, hd, hm, L);
        put_u16(y, hd);
        put_u16(y + 2, hm);
        pack_nibbles(L, 0, y + 4);
    }
}

void quantize_row_q5_1(const float* x, uint8_t* y, int64_t n, const float* imatrix) {
    int8_t L[QK];
    for (int64_t b = 0; b < n / QK; ++b, x += QK, y += 24) {
        float wb[QK];
        const float* w = block_weights(x, imatrix, b, wb);
        uint16_t hd = 0, hm = 0;
        search_asym(x, w, 31, 8, hd, hm, L);
        put_u16(y, hd);
        put_u16(y + 2, hm);
        const uint32_t qh = pack_high_bits(L, 0);
        std::memcpy(y + 4, &qh, 4);
        pack_nibbles(L, 0, y + 8);
    }
}

}  // namespace edgellm::quant
