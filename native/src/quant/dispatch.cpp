// quantize()/dequantize(): input checks, the switch by type, rows split over threads.
// Rows are independent, so the bytes written do not depend on the thread count.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "common/error.h"
#include "common/parallel.h"
#include "quant/fp16.h"
#include "quant/quant.h"
#include "quant/rows.h"

namespace edgellm::quant {

namespace {

using QuantizeRow = void (*)(const float*, uint8_t*, int64_t, const float*);
using DequantizeRow = void (*)(const uint8_t*, float*, int64_t);

void quantize_row_f32(const float* x, uint8_t* y, int64_t n, const float*) { std::memcpy(y, x, n * sizeof(float)); }
void quantize_row_f16(const float* x, uint8_t* y, int64_t n, const float*) {
    // saturating: a finite weight beyond the f16 range is stored as +-65504, not inf
    for (int64_t i = 0; i < n; ++i) {
        const uint16_t h = fp32_to_fp16_sat(x[i]);
        std::memcpy(y + 2 * i, &h, 2);
    }
}
void quantize_row_bf16(const float* x, uint8_t* y, int64_t n, const float*) {
    for (int64_t i = 0; i < n; ++i) {
        const uint16_t h = fp32_to_bf16(x[i]);
        std::memcpy(y + 2 * i, &h, 2);
    }
}
void dequantize_row_f32(const uint8_t* y, float* x, int64_t n) { std::memcpy(x, y, n * sizeof(float)); }
void dequantize_row_f16(const uint8_t* y, float* x, int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, y + 2 * i, 2);
        x[i] = fp16_to_fp32(h);
    }
}
void dequantize_row_bf16(const uint8_t* y, float* x, int64_t n) {
    for (int64_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, y + 2 * i, 2);
        x[i] = bf16_to_fp32(h);
    }
}

struct Kernels {
    QuantizeRow quantize;
    DequantizeRow dequantize;
    int64_t cost;  // rough work per element, to size the row chunks given to threads
};

Kernels kernels_of(Type type) {
    switch (type) {
        case Type::F32: return {quantize_row_f32, dequantize_row_f32, 1};
        case Type::F16: return {quantize_row_f16, dequantize_row_f16, 1};
        case Type::BF16: return {quantize_row_bf16, dequantize_row_bf16, 1};
        case Type::Q4_0: return {quantize_row_q4_0, dequantize_row_q4_0, 64};
        case Type::Q4_1: return {quantize_row_q4_1, dequantize_row_q4_1, 64};
        case Type::Q5_0: return {quantize_row_q5_0, dequantize_row_q5_0, 64};
        case Type::Q5_1: return {quantize_row_q5_1, dequantize_row_q5_1, 64};
        case Type::Q8_0: return {quantize_row_q8_0, dequantize_row_q8_0, 32};
        case Type::Q2_K: return {quantize_row_q2_K, dequantize_row_q2_K, 128};
        case Type::Q3_K: return {quantize_row_q3_K, dequantize_row_q3_K, 128};
        case Type::Q4_K: return {quantize_row_q4_K, dequantize_row_q4_K, 128};
        case Type::Q5_K: return {quantize_row_q5_K, dequantize_row_q5_K, 128};
        case Type::Q6_K: return {quantize_row_q6_K, dequantize_row_q6_K, 128};
        default: break;
    }
    const Traits* t = traits(static_cast<uint32_t>(type));
    throw Error(std::string("tensor type ") + (t ? t->name : "id " + std::to_string(static_cast<uint32_t>(type))) +
                " cannot be quantized or dequantized");
}

// Rows per thread chunk: enough work (~1M element-units) that starting a thread pays off.
int64_t min_rows(int64_t n_per_row, int64_t cost) {
    const int64_t per_row = std::max<int64_t>(1, n_per_row * cost);
    return std::max<int64_t>(1, (int64_t(1) << 20) / per_row);
}

void check_shape(Type type, int64_t nrows, int64_t n_per_row) {
    if (nrows < 0 || n_per_row < 0)
        throw Error("negative tensor shape (" + std::to_string(nrows) + ", " + std::to_string(n_per_row) + ")");
    row_size(type, n_per_row);  // throws on an unknown type or a partial block
}

}  // namespace

void quantize(Type type, const float* src, void* dst, int64_t nrows, int64_t n_per_row, const float* imatrix,
              int n_threads) {
    check_shape(type, nrows, n_per_row);
    const Kernels k = kernels_of(type);
    const size_t rs = row_size(type, n_per_row);
    if (imatrix)
        for (int64_t j = 0; j < n_per_row; ++j)
            if (!(imatrix[j] >= 0.0f) || std::isinf(imatrix[j]))
                throw Error("imatrix value " + std::to_string(imatrix[j]) + " at column " + std::to_string(j) +
                            " is not a finite non-negative weight");
    uint8_t* out = static_cast<uint8_t*>(dst);
    parallel_for(nrows, n_threads, min_rows(n_per_row, k.cost), [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) {
            const float* x = src + r * n_per_row;
            for (int64_t j = 0; j < n_per_row; ++j)
                if (!std::isfinite(x[j]))
                    throw Error("cannot quantize row " + std::to_string(r) + ": column " + std::to_string(j) +
                                " holds a non-finite value (" + std::to_string(x[j]) + ")");
            k.quantize(x, out + static_cast<size_t>(r) * rs, n_per_row, imatrix);
        }
    });
}

void dequantize(Type type, const void* src, float* dst, int64_t nrows, int64_t n_per_row, int n_threads) {
    check_shape(type, nrows, n_per_row);
    const Kernels k = kernels_of(type);
    const size_t rs = row_size(type, n_per_row);
    const uint8_t* in = static_cast<const uint8_t*>(src);
    parallel_for(nrows, n_threads, min_rows(n_per_row, 1) * 4, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r)
            k.dequantize(in + static_cast<size_t>(r) * rs, dst + r * n_per_row, n_per_row);
    });
}

}  // namespace edgellm::quant
