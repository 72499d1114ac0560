// Internal to ops/: the integer path of matmul for quantized weights.
//
// Weights are repacked once (at model load, or per call for raw weights) into panels of 16 rows
// whose values are interleaved row by row, so that one 32-bit lane of a vector register holds one
// row's values: a 512-bit register is the 16 rows of a panel, a 256-bit one half of them. The
// dot products then need no horizontal sums, the activations are broadcast (the same for every
// row) and a panel streams from memory in order.
//
// Activations are quantized per token to 16-bit integers in blocks of 32 (QActs). For each group
// of 32 weights of a row (a block, or a sub-block of a k-quant super-block) the panel holds 32
// small integers v and a scale d (per 16 values for the formats that scale per 16: g16), with
//   w_j = d_h * (v_j - z) + m_h,
// z a zero point fixed by the format (8 for q4_0, 16 for q5_0, 4 for q3_K, 32 for q6_K, else 0)
// and m an offset for the formats that have one. Per token, block b and half (or whole block) h:
//   acc = fma(float(dot_h - z * S_h), d_h * da_b, acc),   dot_h = sum_j v_j q_j,  S_h = sum_j q_j
//   acc = fma(m_h, da_b * float(S_h), acc)               (formats with offsets)
// in block order, one f32 accumulator per output: the integer parts are exact (|v| <= 127,
// |q| <= 32767, 32 products), so every ISA and the scalar reference give the same bits, and the
// result depends neither on the thread count nor on which tokens are multiplied together.
//
// Why 16-bit activations and not 8-bit blocks (llama.cpp's q8_0 / q8_K): on SmolLM2-135M, 8-bit
// activations move the logits by ~0.16 (median) from an f32 evaluation of the same weights and
// change the top token on 3-4% of GPL-3 text positions; 16-bit ones stay within f32 rounding.
//
// Panel layout. A panel is a sequence of group records, in k order; before the first group of
// each 256-value super-block the k-quants put a header. All per-row arrays are 16 entries, row
// i of the panel at entry i (rows past the end of the matrix are zero). The values keep the bits
// of the file (nibbles for the 2- to 4-bit formats, nibbles and a 1- or 2-bit plane for the 5- and
// 6-bit ones, bytes for q8_0), so decode reads about as many bytes per token as the file holds.
//   super-block header (k-quants):  D f16[16], then Dmin f16[16] (formats with offsets)
//   group scales, legacy formats:   d f16[16], then m f16[16] (formats with offsets)
//   group scales, k-quants:         sc i8[16] per half (2 halves when g16), then mn u8[16] per
//                                   half (formats with offsets); d_h = D * sc_h, m_h = -(Dmin * mn_h)
//   values, nibbles (0..15):        4 chunks of 64 bytes; chunk c holds values 8c..8c+7 of row i
//                                   in bytes 4i..4i+3, nibble s (bits 4s..4s+3 of the little-
//                                   endian u32) being value 8c + 2s (s < 4) or 8c + 2(s-4) + 1.
//                                   Shifting each 16-bit word right by 4p and masking 0xF gives
//                                   the pair (8c + 2p, 8c + 2p + 1): activation dword 4c + p.
//   high bits (hb = 1 or 2):        after the nibbles, hb chunks of 64 bytes holding bits 4.. of
//                                   the values (v = nibble | high << 4): row i's u32 at bytes
//                                   4i..4i+3 of each chunk, its low 16-bit word for the even values
//                                   and its high word for the odd ones; pair j (values 2j, 2j+1,
//                                   j < 16) is in chunk j / (16 / hb), at bit hb * (j % (16 / hb))
//                                   of both words. Shifting that field to bit 4, masking and or-ing
//                                   it into the pair's nibbles gives the pair's values.
//   values, bytes (int8):           8 chunks of 64 bytes; chunk c holds values 4c..4c+3 of row i
//                                   in bytes 4i..4i+3 in the order 4c, 4c+2, 4c+1, 4c+3. The
//                                   sign-extended low bytes of the two words are the pair
//                                   (4c, 4c+1) (activation dword 2c), the high bytes (4c+2, 4c+3).
#pragma once

#include <cstddef>
#include <cstdint>

#include "quant/quant.h"

namespace edgellm::ops::detail {

constexpr int64_t kQBlock = 32;  // activation block, and the group of weights one scale covers
constexpr int64_t kPanelRows = 16;

// How a weight type is repacked.
struct QFmt {
    quant::Type type = quant::Type::F32;
    bool nib = false;    // values as nibbles (+ hb high bits), else as bytes (int8)
    int32_t hb = 0;      // high bits of nibble values: 0 (4-bit), 1 (5-bit) or 2 (6-bit)
    bool g16 = false;    // a scale (and offset) per 16 values, else per 32
    bool has_m = false;  // offsets m
    bool super = false;  // k-quant scales (super-block header + int8 group scales), else f16 per group
    int32_t z = 0;       // zero point
};

// False for the types the float path handles (F32, F16, BF16) and for unknown ones.
bool qfmt(quant::Type type, QFmt* f);

// Bytes of one group's record (without the super-block header), of the header, and of a panel of
// k values per row (k a multiple of the type's block size).
size_t qgroup_bytes(const QFmt& f);
size_t qheader_bytes(const QFmt& f);
size_t qpanel_bytes(const QFmt& f, int64_t k);

// Repacks rows [r0, r0 + nr) of a weight (rows rs bytes apart, `rows` in all; k values each) into
// the panels that hold them: r0 and nr are multiples of kPanelRows except at the end of the
// matrix. dst is the first of those panels.
void qpack(const QFmt& f, const uint8_t* src, size_t rs, int64_t rows, int64_t k, int64_t r0, int64_t nr,
           uint8_t* dst);

// Quantized activations of nt tokens, prepared for one weight format: q[t * k + j] (16-bit
// blocks of 32, the d[t * nb + b] scale each); for block b and half h (h = 0 only unless g16,
// the whole block then): zs[t * 2nb + 2b + h] = -z * S_h and s[t * 2nb + 2b + h] = d_b * S_h.
struct QActs {
    int64_t k = 0, nb = 0;
    const int16_t* q = nullptr;
    const float* d = nullptr;
    const int32_t* zs = nullptr;
    const float* s = nullptr;
};

// Per block of 32: amax = max |x|, d = amax / 32767, q = round-to-nearest-even(x * (32767 / amax))
// (all zero when amax is below 1e-30 or not finite: a block with an inf or NaN gets d = inf or
// NaN, so its products are NaN). Every ISA uses this one function: the same bits everywhere.
// zs and s as QActs describes for format f (2 * nb entries per token each).
void quantize_acts(const QFmt& f, const float* x, int64_t nt, int64_t k, int16_t* q, float* d, int32_t* zs,
                   float* s);

// The scalar reference: y[t * ldy + r] for the rows r < nr of the panels at w (from panel 0),
// tokens t < nt of a.
void qgemm_ref(const QFmt& f, const uint8_t* w, int64_t nr, const QActs& a, int64_t nt, float* y, int64_t ldy);

}  // namespace edgellm::ops::detail
