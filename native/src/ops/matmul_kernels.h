// Internal to ops/: the per-ISA kernels behind matmul(). One table per instruction set; matmul.cpp
// picks the best the CPU supports at run time. Tests use matmul_with() to hold every variant to
// the scalar reference.
#pragma once

#include <cstddef>
#include <cstdint>

#include "common/thread_pool.h"
#include "ops/qgemm.h"
#include "quant/quant.h"

namespace edgellm::ops::detail {

enum class Isa { Scalar, Avx2, Avx512 };

const char* isa_name(Isa isa);

struct Kernels {
    Isa isa;
    // Dequantizes n rows of k elements (src rows rs bytes apart) into dst (n rows, ldd floats
    // apart), bit-identical to quant::dequantize. Returns false when this ISA has no fast
    // dequantizer for the type (the caller then uses the scalar one).
    bool (*dequant)(quant::Type type, const uint8_t* src, size_t rs, int64_t n, int64_t k, float* dst, int64_t ldd);
    // y[t * ldy + r] = sum_j w[r * ldw + j] * x[t * ldx + j] for r < nr, t < nt, j < k. The sum of
    // one element is accumulated in a fixed order (lanes over j, then a fixed reduction tree) that
    // depends only on k: the same for any nr, nt or position inside the tile.
    void (*gemm)(const float* w, int64_t ldw, int64_t nr, const float* x, int64_t ldx, int64_t nt, int64_t k, float* y,
                 int64_t ldy);
    // The integer path (ops/qgemm.h): y[t * ldy + r] for the rows r of panels [p0, p0 + np) of
    // the panels at w (r < rows) and tokens t < nt of a, bit-identical to qgemm_ref.
    void (*qgemm)(const QFmt& f, const uint8_t* w, int64_t p0, int64_t np, int64_t rows, const QActs& a, int64_t nt,
                  float* y, int64_t ldy);
    // gemm() of f16 rows (ldw elements apart) read in place, bit-identical to gemm() on the rows
    // converted to f32 (the conversion is exact); nullptr when this ISA has none (the caller then
    // converts tiles of rows and calls gemm()).
    void (*gemm_f16)(const uint16_t* w, int64_t ldw, int64_t nr, const float* x, int64_t ldx, int64_t nt, int64_t k,
                     float* y, int64_t ldy) = nullptr;
};

// nullptr when the build target has no such kernels (not x86) or the CPU lacks the instructions.
const Kernels* kernels_avx512();
const Kernels* kernels_avx2();
const Kernels* kernels_scalar();

// The kernels matmul() uses: the best the CPU supports, or the level set_isa() or the environment
// variable EDGELLM_ISA (scalar | avx2 | avx512, read once) asks for.
Isa best_isa();
// Makes matmul() use the kernels of `isa` (tests run the model on every code path with it);
// throws edgellm::Error when this CPU cannot run them.
void set_isa(Isa isa);
// "scalar" | "avx2" | "avx512" -> Isa; throws edgellm::Error for another name.
Isa isa_from_name(const char* name);
// True when kernels for `isa` can run on this CPU.
bool isa_available(Isa isa);

// matmul() with the kernels of a given ISA (which must be available).
void matmul_with(Isa isa, const uint8_t* W, quant::Type type, int64_t rows, int64_t k, const float* x,
                 int64_t n_tokens, float* y, ThreadPool& pool);

}  // namespace edgellm::ops::detail
