// Dequantizers of every block format. The f32 arithmetic order is that of GGUF's reference
// decoders (e.g. q4_K: (d*sc)*q - dmin*m), so results are bit-identical to them.
#include <cstring>

#include "quant/qsearch.h"
#include "quant/rows.h"

namespace edgellm::quant {

// q4_0 block (18 bytes): d f16 | qs[16], element j in the low nibble of qs[j], j+16 in the high one.
void dequantize_row_q4_0(const uint8_t* y, float* x, int64_t n) {
    for (int64_t b = 0; b < n / 32; ++b, y += 18, x += 32) {
        const float d = fp16_to_fp32(get_u16(y));
        for (int j = 0; j < 16; ++j) {
            x[j] = d * static_cast<float>((y[2 + j] & 0x0F) - 8);
            x[j + 16] = d * static_cast<float>((y[2 + j] >> 4) - 8);
        }
    }
}

// q4_1 block (20 bytes): d f16 | m f16 | qs[16]; value = d*q + m.
void dequantize_row_q4_1(const uint8_t* y, float* x, int64_t n) {
    for (int64_t b = 0; b < n / 32; ++b, y += 20, x += 32) {
        const float d = fp16_to_fp32(get_u16(y));
        const float m = fp16_to_fp32(get_u16(y + 2));
        for (int j = 0; j < 16; ++j) {
            x[j] = d * static_cast<float>(y[4 + j] & 0x0F) + m;
            x[j + 16] = d * static_cast<float>(y[4 + j] >> 4) + m;
        }
    }
}

// q5_0 block (22 bytes): d f16 | qh u32 (bit j: 5th bit of element j) | qs[16] as q4_0.
void dequantize_row_q5_0(const uint8_t* y, float* x, int64_t n) {
    for (int64_t b = 0; b < n / 32; ++b, y += 22, x += 32) {
        const float d = fp16_to_fp32(get_u16(y));
        uint32_t qh;
        std::memcpy(&qh, y + 2, 4);
        for (int j = 0; j < 16; ++j) {
            const int q0 = (y[6 + j] & 0x0F) | static_cast<int>(((qh >> j) & 1u) << 4);
            const int q1 = (y[6 + j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1u) << 4);
            x[j] = d * static_cast<float>(q0 - 16);
            x[j + 16] = d * static_cast<float>(q1 - 16);
        }
    }
}

// q5_1 block (24 bytes): d f16 | m f16 | qh u32 | qs[16]; value = d*q + m.
void dequantize_row_q5_1(const uint8_t* y, float* x, int64_t n) {
    for (int64_t b = 0; b < n / 32; ++b, y += 24, x += 32) {
        const float d = fp16_to_fp32(get_u16(y));
        const float m = fp16_to_fp32(get_u16(y + 2));
        uint32_t qh;
        std::memcpy(&qh, y + 4, 4);
        for (int j = 0; j < 16; ++j) {
            const int q0 = (y[8 + j] & 0x0F) | static_cast<int>(((qh >> j) & 1u) << 4);
            const int q1 = (y[8 + j] >> 4) | static_cast<int>(((qh >> (j + 16)) & 1u) << 4);
            x[j] = d * static_cast<float>(q0) + m;
            x[j + 16] = d * static_cast<float>(q1) + m;
        }
    }
}

// q8_0 block (34 bytes): d f16 | qs[32] int8.
void dequantize_row_q8_0(const uint8_t* y, float* x, int64_t n) {
    for (int64_t b = 0; b < n / 32; ++b, y += 34, x += 32) {
        const float d = fp16_to_fp32(get_u16(y));
        for (int j = 0; j < 32; ++j) x[j] = static_cast<float>(static_cast<int8_t>(y[2 + j])) * d;
    }
}

// q2_K block (84 bytes): scales[16] (low nibble scale, high nibble min) | qs[64] | d f16 | dmin f16.
// Element e = 128*h + 32*k + l (k = 0..3) is bits 2k..2k+1 of qs[32*h + l]; sub-block e/16.
void dequantize_row_q2_K(const uint8_t* y, float* x, int64_t n) {
    for (int64_t b = 0; b < n / kQK; ++b, y += 84, x += kQK) {
        const float d = fp16_to_fp32(get_u16(y + 80));
        const float dmin = fp16_to_fp32(get_u16(y + 82));
        for (int e = 0; e < kQK; ++e) {
            const uint8_t sc = y[e / 16];
            const float dl = d * static_cast<float>(sc & 0xF);
            const float ml = dmin * static_cast<float>(sc >> 4);
            const int q = (y[16 + 32 * (e / 128) + e % 32] >> (2 * ((e / 32) % 4))) & 3;
            x[e] = dl * static_cast<float>(q) - ml;
        }
    }
}

// Signed 6-bit scales of q3_K (12 bytes for 16 values, stored + 32).
static void unpack_q3_K_scales(const uint8_t* s, int* sc) {
    for (int j = 0; j < 16; ++j) {
        const int lo = j < 8 ? (s[j] & 0xF) : (s[j - 8] >> 4);
        const int hi = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
        sc[j] = (lo | (hi << 4)) - 32;
    }
}

// q3_K block (110 bytes): hmask[32] | qs[64] | scales[12] | d f16. Low 2 bits as in q2_K; the
// high bit of element e is bit e/32 of hmask[e%32]; q = low - (high ? 0 : 4).
void dequantize_row_q3_K(const uint8_t* y, float* x, int64_t n) {
    int sc[16];
    for (int64_t b = 0; b < n / kQK; ++b, y += 110, x += kQK) {
        const float d = fp16_to_fp32(get_u16(y + 108));
        unpack_q3_K_scales(y + 96, sc);
        for (int e = 0; e < kQK; ++e) {
            const float dl = d * static_cast<float>(sc[e / 16]);
            const int low = (y[32 + 32 * (e / 128) + e % 32] >> (2 * ((e / 32) % 4))) & 3;
            const int high = (y[e % 32] >> (e / 32)) & 1;
            x[e] = dl * static_cast<float>(low - (high ? 0 : 4));
        }
    }
}

// 6-bit scale and min of sub-block j of q4_K/q5_K from their 12 packed bytes.
static void scale_min_k4(int j, const uint8_t* q, int& sc, int& m) {
    if (j < 4) {
        sc = q[j] & 63;
        m = q[j + 4] & 63;
    } else {
        sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

// q4_K block (144 bytes): d f16 | dmin f16 | scales[12] | qs[128]. Element 64*c + l (l < 32) is the
// low nibble of qs[32*c + l], element 64*c + 32 + l the high nibble; sub-blocks of 32.
void dequantize_row_q4_K(const uint8_t* y, float* x, int64_t n) {
    for (int64_t b = 0; b < n / kQK; ++b, y += 144, x += kQK) {
        const float d = fp16_to_fp32(get_u16(y));
        const float dmin = fp16_to_fp32(get_u16(y + 2));
        for (int j = 0; j < 8; ++j) {
            int sc, m;
            scale_min_k4(j, y + 4, sc, m);
            const float dl = d * static_cast<float>(sc);
            const float ml = dmin * static_cast<float>(m);
            const uint8_t* q = y + 16 + 32 * (j / 2);
            const int shift = 4 * (j % 2);
            for (int l = 0; l < 32; ++l) x[32 * j + l] = dl * static_cast<float>((q[l] >> shift) & 0xF) - ml;
        }
    }
}

// q5_K block (176 bytes): d | dmin | scales[12] | qh[32] | qs[128]. Low nibbles as q4_K; the 5th
// bit of element 32*j + l is bit j of qh[l].
void dequantize_row_q5_K(const uint8_t* y, float* x, int64_t n) {
    for (int64_t b = 0; b < n / kQK; ++b, y += 176, x += kQK) {
        const float d = fp16_to_fp32(get_u16(y));
        const float dmin = fp16_to_fp32(get_u16(y + 2));
        const uint8_t* qh = y + 16;
        for (int j = 0; j < 8; ++j) {
            int sc, m;
            scale_min_k4(j, y + 4, sc, m);
            const float dl = d * static_cast<float>(sc);
            const float ml = dmin * static_cast<float>(m);
            const uint8_t* q = y + 48 + 32 * (j / 2);
            const int shift = 4 * (j % 2);
            for (int l = 0; l < 32; ++l) {
                const int v = ((q[l] >> shift) & 0xF) | (((qh[l] >> j) & 1) << 4);
                x[32 * j + l] = dl * static_cast<float>(v) - ml;
            }
        }
    }
}

// q6_K block (210 bytes): ql[128] | qh[64] | scales[16] int8 | d f16. In half h (128 elements),
// element 128*h + 32*k + l: low 4 bits in ql[64*h + 32*(k%2) + l] (nibble k/2), high 2 bits are
// bits 2k..2k+1 of qh[32*h + l]; q = v - 32; sub-blocks of 16.
void dequantize_row_q6_K(const uint8_t* y, float* x, int64_t n) {
    for (int64_t b = 0; b < n / kQK; ++b, y += 210, x += kQK) {
        const float d = fp16_to_fp32(get_u16(y + 208));
        const int8_t* sc = reinterpret_cast<const int8_t*>(y + 192);
        for (int e = 0; e < kQK; ++e) {
            const int h = e / 128, k = (e % 128) / 32, l = e % 32;
            const int low = (y[64 * h + 32 * (k % 2) + l] >> (4 * (k / 2))) & 0xF;
            const int high = (y[128 + 32 * h + l] >> (2 * k)) & 3;
            const float dl = d * static_cast<float>(sc[e / 16]);
            x[e] = dl * static_cast<float>((low | (high << 4)) - 32);
        }
    }
}

}  // namespace edgellm::quant
