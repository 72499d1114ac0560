// Block formats of GGUF weights: type traits, quantize from f32, dequantize to f32.
// The converter and the runtime share this code; layouts are exactly those of GGUF files.
#pragma once

#include <cstddef>
#include <cstdint>

namespace edgellm::quant {

// Type ids as stored in GGUF tensor infos (ggml_type).
enum class Type : uint32_t {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q8_1 = 9,
    Q2_K = 10,
    Q3_K = 11,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    Q8_K = 15,
    I8 = 24,
    I16 = 25,
    I32 = 26,
    I64 = 27,
    F64 = 28,
    BF16 = 30,
};

struct Traits {
    const char* name;    // "q4_K", as GGUF tools print it
    int64_t block_size;  // elements per block (1 for plain types)
    size_t type_size;    // bytes per block
    bool can_quantize;   // quantize()/dequantize() implemented for it
};

// Traits of a GGUF type id, or nullptr when the id is unknown.
const Traits* traits(uint32_t type);

// Bytes of one row of n_per_row elements. Throws edgellm::Error when the type is unknown or
// n_per_row is not a multiple of the block size.
size_t row_size(Type type, int64_t n_per_row);

// Quantize nrows rows of n_per_row floats (src: (nrows, n_per_row), row-major) into dst
// (nrows * row_size bytes). imatrix, when not null, holds n_per_row non-negative importance
// weights per column: quantizers minimise sum_j imatrix[j] * (x_j - q_j)^2. Without it they
// minimise sum_j sqrt(sigma2 + x_j^2) * (x_j - q_j)^2 (sigma2: the block's mean square), which
// favours the large weights a little over the plain squared error. Rows are split over n_threads (0: all cores); the bytes written do not depend on
// it. Throws edgellm::Error on bad input: an unknown or non-quantizable type, a row length that is
// not a multiple of the block size, a NaN/inf input (the message names row and column), or a
// negative/non-finite imatrix weight. Finite values beyond a format's range (f16 65504, block
// scales stored as f16) saturate rather than becoming inf.
void quantize(Type type, const float* src, void* dst, int64_t nrows, int64_t n_per_row,
              const float* imatrix, int n_threads);

// Dequantize nrows rows (src: nrows * row_size bytes) into dst (nrows, n_per_row) floats.
void dequantize(Type type, const void* src, float* dst, int64_t nrows, int64_t n_per_row, int n_threads);

}  // namespace edgellm::quant
