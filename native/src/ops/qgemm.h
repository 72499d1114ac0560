// Internal to ops/: the integer path of matmul for quantized weights.
//
// Activations are quantized per token to 16-bit integers in blocks of 32 (QActs: int16 values, an
// f32 scale per block, and the scaled sum of each half block). Weight rows of every block format
// are unpacked into one common shape (QRows): for each block of 32, 32 small integers v (int16)
// with w_j = d_h * v_j + m_h, where h = j / 16 selects the half block's scale d and offset m.
// Formats with one scale per 32 store it twice. Then
//   y = sum_blocks sum_halves (d_h * da) * sum_j v_j q_j  +  m_h * s_h,      s_h = da * sum_j q_j,
// so the inner loop is an integer dot product of int16 pairs (vpdpwssd, or vpmaddwd + vpaddd), one
// conversion and one multiply-add per block, whatever the weight format. The offsets, when the
// format has them, add one short dot product per output over 2 * n_blocks values.
//
// Why 16-bit activations and not 8-bit blocks (llama.cpp's q8_0 / q8_K): on SmolLM2-135M, 8-bit
// activations move the logits by ~0.16 (median) from an f32 evaluation of the same weights and
// change the top token on 3-4% of GPL-3 text positions; 16-bit ones stay within f32 rounding, for
// about one more integer instruction per block.
#pragma once

#include <cstddef>
#include <cstdint>

#include "quant/quant.h"

namespace edgellm::ops::detail {

constexpr int64_t kQBlock = 32;

// How a weight format maps onto the common shape.
struct QFormat {
    bool g16 = false;        // a scale (and offset) per 16 values, else per 32 (stored twice)
    bool has_m = false;      // the offsets m are not all zero
};

// False for the types the float path handles (F32, F16, BF16) and for unknown ones.
bool qformat(quant::Type type, QFormat* f);

// Unpacked rows: row r, block b: values v[r * k + 32 b ...], scales d[r * 2nb + 2b + h], offsets
// m[...same] (nb = k / 32). Views into buffers the caller owns.
struct QRows {
    QFormat f;
    int64_t k = 0, nb = 0;
    int16_t* v = nullptr;
    float* d = nullptr;
    float* m = nullptr;
};

// Quantized activations of nt tokens: q[t * k + j], d[t * nb + b], s[t * 2nb + 2b + h].
struct QActs {
    int64_t k = 0, nb = 0;
    const int16_t* q = nullptr;
    const float* d = nullptr;
    const float* s = nullptr;
};

// Bytes of the buffers above for n rows (or tokens) of k values.
inline size_t qrows_v_count(int64_t n, int64_t k) { return static_cast<size_t>(n * k); }
inline size_t qrows_scale_count(int64_t n, int64_t k) { return static_cast<size_t>(n * 2 * (k / kQBlock)); }

// Per block of 32: amax = max |x|, d = amax / 32767, q = round-to-nearest-even(x * (32767 / amax))
// (all zero when amax is below 1e-30 or not finite: a block with an inf or NaN gets d = inf or
// NaN, so its products are NaN), s_h = d * sum of the half's q. Every ISA uses this one function, so
// the quantized activations are the same bits everywhere.
void quantize_acts(const float* x, int64_t nt, int64_t k, int16_t* q, float* d, float* s);

// Unpacks nr rows (src rows rs bytes apart) of a type qformat() accepts into dst, rows
// [r_off, r_off + nr) of it. Exact: d_h * v_j + m_h equals the dequantized weight up to the f32
// rounding of that expression.
void unpack_rows_ref(quant::Type type, const uint8_t* src, size_t rs, int64_t nr, const QRows& dst, int64_t r_off);

// The scalar reference: y[t * ldy + r] for r < nr, t < nt (rows of w from 0, tokens of a from 0),
// summed block by block in order.
void qgemm_ref(const QRows& w, int64_t nr, const QActs& a, int64_t nt, float* y, int64_t ldy);

}  // namespace edgellm::ops::detail
