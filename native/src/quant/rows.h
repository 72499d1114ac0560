// Row kernels of each block format (scalar reference). n is the row length, a multiple of the
// block size; imatrix (n importance weights, may be null) weights the squared error minimised.
#pragma once

#include <cstdint>

namespace edgellm::quant {

void quantize_row_q4_0(const float* x, uint8_t* y, int64_t n, const float* imatrix);
void quantize_row_q4_1(const float* x, uint8_t* y, int64_t n, const float* imatrix);
void quantize_row_q5_0(const float* x, uint8_t* y, int64_t n, const float* imatrix);
void quantize_row_q5_1(const float* x, uint8_t* y, int64_t n, const float* imatrix);
void quantize_row_q8_0(const float* x, uint8_t* y, int64_t n, const float* imatrix);
void quantize_row_q2_K(const float* x, uint8_t* y, int64_t n, const float* imatrix);
void quantize_row_q3_K(const float* x, uint8_t* y, int64_t n, const float* imatrix);
void quantize_row_q4_K(const float* x, uint8_t* y, int64_t n, const float* imatrix);
void quantize_row_q5_K(const float* x, uint8_t* y, int64_t n, const float* imatrix);
void quantize_row_q6_K(const float* x, uint8_t* y, int64_t n, const float* imatrix);

void dequantize_row_q4_0(const uint8_t* y, float* x, int64_t n);
void dequantize_row_q4_1(const uint8_t* y, float* x, int64_t n);
void dequantize_row_q5_0(const uint8_t* y, float* x, int64_t n);
void dequantize_row_q5_1(const uint8_t* y, float* x, int64_t n);
void dequantize_row_q8_0(const uint8_t* y, float* x, int64_t n);
void dequantize_row_q2_K(const uint8_t* y, float* x, int64_t n);
void dequantize_row_q3_K(const uint8_t* y, float* x, int64_t n);
void dequantize_row_q4_K(const uint8_t* y, float* x, int64_t n);
void dequantize_row_q5_K(const uint8_t* y, float* x, int64_t n);
void dequantize_row_q6_K(const uint8_t* y, float* x, int64_t n);

}  // namespace edgellm::quant
