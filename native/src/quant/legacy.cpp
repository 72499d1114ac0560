// Quantizers of the 32-element block formats q4_0, q4_1, q5_0, q5_1, q8_0.
// Without importance weights, q5_0 and q8_0 are llama.cpp's plain quantizers, byte for byte (see
// quantize_row_q5_0). Otherwise each block is a small search over f16 scales (and
// offsets): the plain round-to-nearest scale
// is always a candidate, others come from a sweep of the scale that maps the extreme element
// to the end levels and from weighted least-squares refits. The sweep is screened cheaply (the
// least-squares error of its rounded levels); the plain scale, the best screened ones and their
// refits are scored exactly, with their stored f16 values and the best level per element, so the
// result is never worse than plain rounding in sum_j w_j (x_j - deq_j)^2 (w: importance weights,
// or the prior sqrt(sigma2 + x^2) of qsearch.h without them).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "quant/qsearch.h"
#include "quant/rows.h"

namespace edgellm::quant {

namespace {

constexpr int QK = 32;

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

// Whether a block already lies on the grid of scale s and offset m (deq = s*q + m, levels L) up to the
// rounding of the source's precision: every element within s/16 of its level. A checkpoint dequantized
// from this format (or trained for it) is such a block, and keeping its grid gives it back exactly;
// another candidate would only fit the source's rounding (an f16 copy of a Q4_1 model moved 18 of 3.3M
// blocks of SmolLM2 off their grid, at the outliers). Weights that are not on a grid never pass: each of
// some 30 free elements falls that near a level with odds 1/8.
bool on_grid(const float* x, const int8_t* L, float s, float m) {
    const float tol = std::fabs(s) / 16;
    if (!(tol > 0)) return false;
    for (int i = 0; i < QK; ++i)
        if (!(std::fabs(x[i] - (s * static_cast<float>(L[i]) + m)) <= tol)) return false;
    return true;
}

constexpr int kTop = 16;  // screened sweep scales scored exactly

// The f16 codes (scale, offset) already scored in one block: a chain of refits that reaches one
// again would only repeat itself.
class Tried {
public:
    bool insert(uint32_t code) {
        for (int i = 0; i < n_; ++i)
            if (codes_[i] == code) return false;
        if (n_ < kCap) codes_[n_++] = code;
        return true;
    }

private:
    static constexpr int kCap = 3 + 2 * kTop;  // plain scale + refits, each screened one + its refit
    uint32_t codes_[kCap];
    int n_ = 0;
};

// The kTop best-scoring candidates (higher score is better) of a sweep.
struct TopK {
    float score[kTop], a[kTop], b[kTop];
    int n = 0;
    void add(float sc, float va, float vb) {
        int i = n < kTop ? n++ : kTop;
        if (i == kTop && !(sc > score[kTop - 1])) return;
        if (i == kTop) i = kTop - 1;
        while (i > 0 && sc > score[i - 1]) {
            score[i] = score[i - 1];
            a[i] = a[i - 1];
            b[i] = b[i - 1];
            --i;
        }
        score[i] = sc;
        a[i] = va;
        b[i] = vb;
    }
};

// Symmetric levels [lo, hi], deq = d*q. Returns the f16 bits of d; levels in L.
// Candidates: plain rounding d_rtn and its least-squares refits; then a sweep of the scale that
// maps the extreme element to either end level (+-0.1*k), screened cheaply by the least-squares
// error of its rounded levels, whose kTop best are scored exactly (with a refit).
uint16_t search_sym(const float* x, const float* w, int lo, int hi, float d_rtn, int nstep, int8_t* L) {
    float best = std::numeric_limits<float>::infinity();
    uint16_t best_h = 0;
    int8_t tmp[QK];
    Tried tried;
    // Tries scale d, then refits d by least squares on the levels found; keeps the best. With keep_grid,
    // returns true when d itself already holds the block on its grid (on_grid): kept, no refit.
    auto attempt = [&](float d, int refits, bool keep_grid = false) {
        for (int r = 0; r <= refits; ++r) {
            const uint16_t h = fp32_to_fp16_sat(d);
            if (!tried.insert(h)) break;
            const float s = fp16_to_fp32(h);
            const LevelSums z = fit_levels_sums(x, w, QK, s, 0.0f, lo, hi, tmp);
            if (z.err < best) {
                best = z.err;
                best_h = h;
                std::memcpy(L, tmp, QK);
            }
            if (keep_grid && r == 0 && on_grid(x, tmp, s, 0.0f)) return true;
            if (r == refits || !(z.sqq > 0)) break;
            d = z.sxq / z.sqq;
        }
        return false;
    };
    const float max = signed_absmax(x);
    // plain rounding first, then its refits
    if (attempt(d_rtn, max == 0 ? 0 : 2, true) || max == 0) return best_h;
    TopK top;
    for (int k = -nstep; k <= nstep; ++k)
        for (const float end : {static_cast<float>(lo) - 0.1f * k, static_cast<float>(hi) + 0.1f * k}) {
            const RoundSums r = round_sums(x, w, QK, end / max, 0.0f, lo, hi);
            if (r.sqq > 0) top.add(r.sxq * r.sxq / r.sqq, r.sxq / r.sqq, 0.0f);
        }
    for (int t = 0; t < top.n; ++t) attempt(top.a[t], 1);
    return best_h;
}

// Symmetric levels [lo, hi] with the block's largest-magnitude weight kept exact: it maps either to
// the end of its own sign (lo when negative, as plain rounding does) or to the other end's
// magnitude; the candidate with the lower weighted error wins. Used for Q5_0 with importance weights.
uint16_t search_sym_anchored(const float* x, const float* w, int lo, int hi, int8_t* L) {
    const float max = signed_absmax(x);
    const float d_rtn = max / static_cast<float>(lo);
    uint16_t best_h = fp32_to_fp16_sat(d_rtn);
    float best = fit_levels_sums(x, w, QK, fp16_to_fp32(best_h), 0.0f, lo, hi, L).err;
    if (max == 0) return best_h;
    int8_t tmp[QK];
    const uint16_t h = fp32_to_fp16_sat(std::fabs(max) / static_cast<float>(hi));
    const LevelSums z = fit_levels_sums(x, w, QK, fp16_to_fp32(h), 0.0f, lo, hi, tmp);
    if (z.err < best) {
        best_h = h;
        std::memcpy(L, tmp, QK);
    }
    return best_h;
}

// Asymmetric levels [0, nmax], deq = d*q + m. Returns f16 bits of d and m; levels in L.
// Candidates as in search_sym: plain rounding and refits, then grids stretched around min.
void search_asym(const float* x, const float* w, int nmax, int nstep, uint16_t& hd, uint16_t& hm, int8_t* L) {
    float min = x[0], max = x[0];
    for (int i = 1; i < QK; ++i) {
        min = std::min(min, x[i]);
        max = std::max(max, x[i]);
    }
    float wx[QK];
    for (int i = 0; i < QK; ++i) wx[i] = w[i] * x[i];
    const double sw = lane_total(w, QK), sx = lane_total(wx, QK);
    float best = std::numeric_limits<float>::infinity();
    int8_t tmp[QK];
    Tried tried;
    // Weighted least-squares (d, m) of x ~ d*q + m; false when degenerate.
    auto solve = [&](double sq, double sqq, double sxq, float& d, float& m) {
        const double det = sw * sqq - sq * sq;
        if (!(det > 0)) return false;
        d = static_cast<float>((sw * sxq - sx * sq) / det);
        m = static_cast<float>((sqq * sx - sq * sxq) / det);
        return true;
    };
    // Tries (d, m), then refits both by weighted least squares on the levels found. With keep_grid,
    // returns true when (d, m) itself already holds the block on its grid (as search_sym's attempt).
    auto attempt = [&](float d, float m, int refits, bool keep_grid = false) {
        for (int r = 0; r <= refits; ++r) {
            const uint16_t h1 = fp32_to_fp16_sat(d), h2 = fp32_to_fp16_sat(m);
            if (!tried.insert(static_cast<uint32_t>(h1) << 16 | h2)) break;
            const float s = fp16_to_fp32(h1), off = fp16_to_fp32(h2);
            const LevelSums z = fit_levels_sums(x, w, QK, s, -off, 0, nmax, tmp);
            if (z.err < best) {
                best = z.err;
                hd = h1;
                hm = h2;
                std::memcpy(L, tmp, QK);
            }
            if (keep_grid && r == 0 && on_grid(x, tmp, s, off)) return true;
            if (r == refits || !solve(z.sq, z.sqq, z.sxq, d, m)) break;
        }
        return false;
    };
    // plain rounding, refits
    if (attempt((max - min) / static_cast<float>(nmax), min, max == min ? 0 : 2, true) || max == min) return;
    TopK top;
    for (int k = -nstep; k <= nstep; ++k) {
        const RoundSums r = round_sums(x, w, QK, (static_cast<float>(nmax) + 0.1f * k) / (max - min), -min, 0, nmax);
        float d, m;
        // least-squares error: sum w x^2 - (d*sxq + m*sx); the larger d*sxq + m*sx, the better
        if (solve(r.sq, r.sqq, r.sxq, d, m)) top.add(static_cast<float>(d * r.sxq + m * sx), d, m);
    }
    for (int t = 0; t < top.n; ++t) attempt(top.a[t], top.b[t], 1);
}

// Objective weights of block b: its slice of the imatrix, or the prior of qsearch.h.
const float* block_weights(const float* x, const float* imatrix, int64_t b, float* buf) {
    if (imatrix) return imatrix + b * QK;
    float sumx2 = 0;
    for (int i = 0; i < QK; ++i) sumx2 += x[i] * x[i];
    return prior_weights(x, QK, sumx2 / QK, buf);
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

// The nearest level in [lo, hi] of every element under the stored f16 scale s (no objective weights:
// nearest does not depend on them, so no prior is computed).
void nearest_levels(const float* x, float s, int lo, int hi, int8_t* L) {
    static constexpr float kOnes[QK] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
                                        1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
    if (s != 0)
        fit_levels(x, kOnes, QK, s, 0.0f, lo, hi, L);
    else
        std::memset(L, 0, QK);
}

// Plain quantization of a block with scale d (the extreme weight exact at one end level), rounded as
// llama.cpp's reference quantizer and gguf-py round: each weight's level comes from x * (1/d) with the
// unrounded scale, so the block's bytes are theirs. Only where the f16 scale is not close to d (a scale
// that underflows to a subnormal or zero, or saturates at 65504) does each weight get the nearest level
// under the stored scale instead. q8_0 rounds half away from zero (ggml's roundf); q5_0 takes
// trunc(x/d + 16.5), capped at level 15 (ggml's (int8_t)(x*id + 16.5f), MIN 31).
enum class Rounding { kRoundf, kTruncHalfUp };

uint16_t plain_block(const float* x, float d, int lo, int hi, Rounding rounding, int8_t* L) {
    const uint16_t h = fp32_to_fp16_sat(d);
    const float s = fp16_to_fp32(h);
    const float id = d != 0 ? 1.0f / d : 0.0f;
    constexpr float kMinNormalF16 = 6.103515625e-05f;  // 2^-14
    if (std::fabs(s) < kMinNormalF16 || std::fabs(d) > 65504.0f || !std::isfinite(id)) {
        nearest_levels(x, s, lo, hi, L);
        return h;
    }
    const float offset = 0.5f - static_cast<float>(lo);  // 16.5 for q5_0: one addition, as ggml's
    for (int j = 0; j < QK; ++j) {
        const float v = x[j] * id;
        const int q = rounding == Rounding::kRoundf ? static_cast<int>(std::roundf(v))
                                                    : static_cast<int>(v + offset) + lo;
        L[j] = static_cast<int8_t>(std::clamp(q, lo, hi));
    }
    return h;
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

// Without importance weights, q5_0 is llama.cpp's plain quantizer (scale max/-16, the block's
// largest-magnitude weight exact at level -16, rounded as ggml rounds): its bytes are gguf-py's, and
// llama-quantize's from the same f16 weights. Rules that lower the weight error did not lower perplexity:
// over six copies of SmolLM2's fp32 weights moved by at most 2^-11 of themselves (below f16's
// resolution; seeds 1000-1005), the mean GPL-3 perplexity ratio to llama.cpp's (quantizing f16 copies)
// was, for q5_0 / q4_k_m / q3_k_m (which use q5_0 where rows do not fit 256):
//   this (bench --jitter 5, results quant_quality-20261125-155238)  1.000 / - / -
//   the plain scale, the nearest level under the stored f16 scale    0.999 / 0.996 / 0.992
//   the extreme also tried at +15 (step max/15), by weighted error  1.002 / 1.014 / 1.008
//   the weighted search of search_sym                               1.021 / - / -
//   a least-squares scale on the plain levels                       1.012 / - / -
// With importance weights, the extreme is tried at both ends (search_sym_anchored), measured on what matters.
void quantize_row_q5_0(const float* x, uint8_t* y, int64_t n, const float* imatrix) {
    int8_t L[QK];
    for (int64_t b = 0; b < n / QK; ++b, x += QK, y += 22) {
        if (imatrix) {
            float wb[QK];
            put_u16(y, search_sym_anchored(x, block_weights(x, imatrix, b, wb), -16, 15, L));
        } else {
            put_u16(y, plain_block(x, signed_absmax(x) / -16.0f, -16, 15, Rounding::kTruncHalfUp, L));
        }
        const uint32_t qh = pack_high_bits(L, 16);
        std::memcpy(y + 2, &qh, 4);
        pack_nibbles(L, 16, y + 6);
    }
}

// Without importance weights, q8_0 is llama.cpp's plain quantizer (scale amax/127, rounded as ggml
// rounds): its bytes are gguf-py's, and llama-quantize's from the same f16 weights. The nearest level
// under the stored f16 scale was no better (jittered copies as for q5_0: mean ratio 1.0005, against this
// rule's 1.0006); the free search lowers the weight RMSE (0.88x) but raised SmolLM2's perplexity on two
// license texts in llama.cpp's runtime (GPL-3 18.504 vs 18.428, Apache-2.0 + MPL-2.0 13.412 vs 13.339).
// With importance weights the search is measured on what matters and stays.
void quantize_row_q8_0(const float* x, uint8_t* y, int64_t n, const float* imatrix) {
    int8_t L[QK];
    for (int64_t b = 0; b < n / QK; ++b, x += QK, y += 34) {
        const float amax = std::fabs(signed_absmax(x));
        if (imatrix) {
            float wb[QK];
            put_u16(y, search_sym(x, block_weights(x, imatrix, b, wb), -128, 127, amax / 127.0f, 3, L));
        } else {
            put_u16(y, plain_block(x, amax / 127.0f, -127, 127, Rounding::kRoundf, L));
        }
        std::memcpy(y + 2, L, QK);
    }
}

void quantize_row_q4_1(const float* x, uint8_t* y, int64_t n, const float* imatrix) {
    int8_t L[QK];
    for (int64_t b = 0; b < n / QK; ++b, x += QK, y += 20) {
        float wb[QK];
        const float* w = block_weights(x, imatrix, b, wb);
        uint16_t hd = 0, hm = 0;
        search_asym(x, w, 15, 12, hd, hm, L);
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
        search_asym(x, w, 31, 12, hd, hm, L);
        put_u16(y, hd);
        put_u16(y + 2, hm);
        const uint32_t qh = pack_high_bits(L, 0);
        std::memcpy(y + 4, &qh, 4);
        pack_nibbles(L, 0, y + 8);
    }
}

}  // namespace edgellm::quant
