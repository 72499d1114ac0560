// The KV cache: keys and values of every layer and position, allocated once per context, stored
// in f16 (the default, as llama.cpp does) or f32 (exact, twice the memory). Layout per layer:
// (n_ctx, n_head_kv * head_dim), position-major, so a batch of tokens writes contiguous rows.
// Positions >= n_past hold stale data that is overwritten before it is read, which is what makes
// truncate() free.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>

#include "quant/fp16.h"
#include "quant/quant.h"

namespace edgellm {

// f16 -> f32 without branches (exact for every value, inf and NaN included), so loops over a row
// vectorise: normal numbers are rebiased by a multiply, subnormals come from a float subtraction.
inline float half_to_float(uint16_t h) {
    const uint32_t w = uint32_t(h) << 16;
    const uint32_t sign = w & 0x80000000u;
    const uint32_t two_w = w + w;
    const float normal = quant::bits_f32((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
    const float denormal = quant::bits_f32((two_w >> 17) | (126u << 23)) - 0.5f;
    const uint32_t bits = two_w < (1u << 27) ? quant::f32_bits(denormal) : quant::f32_bits(normal);
    return quant::bits_f32(sign | bits);
}

class KvCache {
public:
    // type: F16 or F32. Throws Error for another type, or when the cache cannot be allocated (the
    // message gives the size).
    KvCache(int64_t n_layer, int64_t n_ctx, int64_t n_embd_kv, quant::Type type);

    int64_t n_ctx() const { return n_ctx_; }
    quant::Type type() const { return f32_ ? quant::Type::F32 : quant::Type::F16; }
    size_t bytes() const { return 2 * elem_ * n_elems_; }

    // Stores the n_embd_kv keys and values of position `pos` of layer `layer`.
    void write(int64_t layer, int64_t pos, const float* k, const float* v) {
        const size_t o = offset(layer, pos);
        if (f32_) {
            std::memcpy(kf_.get() + o, k, size_t(n_embd_kv_) * sizeof(float));
            std::memcpy(vf_.get() + o, v, size_t(n_embd_kv_) * sizeof(float));
            return;
        }
        uint16_t* kd = kh_.get() + o;
        uint16_t* vd = vh_.get() + o;
        for (int64_t i = 0; i < n_embd_kv_; ++i) kd[i] = quant::fp32_to_fp16(k[i]);
        for (int64_t i = 0; i < n_embd_kv_; ++i) vd[i] = quant::fp32_to_fp16(v[i]);
    }

    // Values [first, first + n) of the keys / values at `pos`, as f32.
    void read_k(int64_t layer, int64_t pos, int64_t first, int64_t n, float* out) const {
        read(kf_.get(), kh_.get(), offset(layer, pos) + size_t(first), n, out);
    }
    void read_v(int64_t layer, int64_t pos, int64_t first, int64_t n, float* out) const {
        read(vf_.get(), vh_.get(), offset(layer, pos) + size_t(first), n, out);
    }

private:
    size_t offset(int64_t layer, int64_t pos) const { return size_t((layer * n_ctx_ + pos) * n_embd_kv_); }

    void read(const float* f, const uint16_t* h, size_t o, int64_t n, float* out) const {
        if (f32_) {
            std::memcpy(out, f + o, size_t(n) * sizeof(float));
            return;
        }
        const uint16_t* src = h + o;
        for (int64_t i = 0; i < n; ++i) out[i] = half_to_float(src[i]);
    }

    int64_t n_layer_, n_ctx_, n_embd_kv_;
    bool f32_;
    size_t elem_;     // bytes per value
    size_t n_elems_;  // values per cache (keys or values)
    // One pair is allocated, per the type. Not value-initialised: pages are touched only as
    // positions are written.
    std::unique_ptr<float[]> kf_, vf_;
    std::unique_ptr<uint16_t[]> kh_, vh_;
};

}  // namespace edgellm
