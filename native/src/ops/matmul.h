// Matrix products against weights stored in any GGUF block format, and embedding row lookup.
// The kernels are chosen at run time by the CPU's instruction sets (AVX-512, AVX2+FMA, scalar);
// model code only calls these functions, never an ISA-specific kernel.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "common/thread_pool.h"
#include "quant/quant.h"

namespace edgellm::ops {

// True when matmul() and get_row() accept weights of this type (every type quant.h can
// dequantize: F32 F16 BF16 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K Q3_K Q4_K Q5_K Q6_K).
bool supports(quant::Type type);

// y (n_tokens x rows, row-major f32) = x (n_tokens x k, row-major f32) * W^T, where W is `rows`
// rows of k elements of quant type `type` stored contiguously (quant::row_size(type, k) bytes per
// row), as GGUF stores a weight of ne = [k, rows]. k must be a multiple of the type's block size
// (checked at load; here it throws edgellm::Error, as does an unsupported type).
// Each y element is computed by one thread with a summation order that depends neither on the
// thread count nor on n_tokens, so results are identical for 1 or many threads and for a token
// evaluated alone or inside a batch.
void matmul(const uint8_t* W, quant::Type type, int64_t rows, int64_t k, const float* x, int64_t n_tokens,
            float* y, ThreadPool& pool);

// A weight repacked for the integer path (ops/qgemm.h: panels of 16 interleaved rows), made
// once at load; the raw rows are not read again by matmul. Quantized types only.
class Packed {
public:
    ~Packed();
    Packed(const Packed&) = delete;
    Packed& operator=(const Packed&) = delete;
    quant::Type type() const { return type_; }
    int64_t rows() const { return rows_; }
    int64_t cols() const { return cols_; }
    size_t bytes() const { return bytes_; }
    const uint8_t* data() const { return data_; }

private:
    friend std::unique_ptr<Packed> pack(const uint8_t*, quant::Type, int64_t, int64_t, ThreadPool*,
                                        std::shared_ptr<uint8_t>, size_t);
    Packed() = default;
    quant::Type type_ = quant::Type::F32;
    int64_t rows_ = 0, cols_ = 0;
    size_t bytes_ = 0;
    uint8_t* data_ = nullptr;
    std::shared_ptr<uint8_t> block_;  // the memory data_ lies in (shared with other weights when the caller gave it)
};

// Bytes pack() writes for W: 0 for the types the float path multiplies (F32, F16, BF16).
size_t packed_bytes(quant::Type type, int64_t rows, int64_t k);

// Repacks W (as matmul() takes it); nullptr for the types the float path multiplies (F32, F16,
// BF16). The work is split over `pool` when given. The panels go to block.get() + offset (64-byte
// aligned, packed_bytes() long; the Packed keeps the block alive) when a block is given, else to
// huge_page_memory() of its own. Throws edgellm::Error as matmul() does, and when the memory cannot be allocated.
std::unique_ptr<Packed> pack(const uint8_t* W, quant::Type type, int64_t rows, int64_t k, ThreadPool* pool,
                             std::shared_ptr<uint8_t> block = nullptr, size_t offset = 0);

// n bytes the kernel may back with 2 MiB pages (madvise(MADV_HUGEPAGE); they start on a 2 MiB
// boundary when n is at least that): weights streamed from 4 KiB pages take a TLB miss every
// 4 KiB. Throws edgellm::Error when the memory cannot be allocated.
std::shared_ptr<uint8_t> huge_page_memory(size_t n);

// matmul() against a packed weight: the same bits as matmul() on its raw rows.
void matmul(const Packed& W, const float* x, int64_t n_tokens, float* y, ThreadPool& pool);

// Rows of a packed weight come in groups of kRowGroup (its panels).
constexpr int64_t kRowGroup = 16;

// matmul() against a packed weight for some rows only: the row groups [g0, g0 + n) of each run
// (g0, n), in order, without overlap. Only those rows of y (ldy = W.rows()) are written, each with
// the bits matmul() gives it.
void matmul_groups(const Packed& W, const int64_t* runs, int64_t n_runs, const float* x, int64_t n_tokens, float* y,
                   ThreadPool& pool);

// matmul() of the same x against n (1 to 4) packed weights of the same row length, into y[i]:
// one pass over the pool for all of them (the same bits as n calls).
void matmul_many(const Packed* const* W, float* const* y, int n, const float* x, int64_t n_tokens, ThreadPool& pool);

// matmul() of the same x against n (1 to 4) raw weights W[i] (rows[i] rows of k elements, one type):
// f16 weights against few tokens in one pass over the pool, others one matmul() each; the same bits
// as n calls either way.
void matmul_many(const uint8_t* const* W, quant::Type type, const int64_t* rows, int64_t k, float* const* y, int n,
                 const float* x, int64_t n_tokens, ThreadPool& pool);

// Row lookup for embeddings: dequantizes row `r` of W (rows of k elements) into out (k floats).
void get_row(const uint8_t* W, quant::Type type, int64_t k, int64_t r, float* out);

}  // namespace edgellm::ops
