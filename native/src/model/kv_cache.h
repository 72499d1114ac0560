// The KV cache: keys and values of every layer and position, allocated once per context, stored
// in f16 (the default, as llama.cpp does) or f32 (exact, twice the memory). Laid out for the
// reader: per layer and KV head, keys in tiles of kTile positions stored transposed (head_dim rows
// of kTile), values position-major; so attention converts one contiguous block per tile and
// writing a token scatters its keys (once per token, cheap).
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

// f16 -> f32 of n values (exact), with F16C when the CPU has it.
void halves_to_floats(const uint16_t* src, float* dst, int64_t n);

class KvCache {
public:
    // Positions per key tile: attention reads keys a tile at a time (model/attention.cpp).
    static constexpr int64_t kTile = 64;

    // type: F16 or F32. Throws Error for another type, or when the cache cannot be allocated (the
    // message gives the size).
    KvCache(int64_t n_layer, int64_t n_ctx, int64_t n_head_kv, int64_t head_dim, quant::Type type);

    int64_t n_ctx() const { return n_ctx_; }
    quant::Type type() const { return f32_ ? quant::Type::F32 : quant::Type::F16; }
    size_t bytes() const { return 2 * elem_ * n_elems_; }

    // Stores the keys and values (n_head_kv * head_dim each, head-major) of position `pos`.
    void write(int64_t layer, int64_t pos, const float* k, const float* v);

    // The keys of KV head `kvh` at positions [tile * kTile, tile * kTile + n), transposed: value d
    // of position tile * kTile + j at [d * kTile + j]. Columns from n up to the next multiple of
    // 16 hold whatever the cache holds there (callers ignore them). An f32 cache returns a pointer
    // into itself; an f16 one converts into buf (head_dim * kTile floats) and returns buf.
    const float* keys(int64_t layer, int64_t kvh, int64_t tile, int64_t n, float* buf) const;
    // The values of KV head `kvh` at positions [pos, pos + n), row-major (n x head_dim), the same way.
    const float* values(int64_t layer, int64_t kvh, int64_t pos, int64_t n, float* buf) const;

private:
    // Keys: (layer, kv head, tile, head_dim, kTile). Values: (layer, kv head, position, head_dim).
    size_t k_offset(int64_t layer, int64_t kvh, int64_t tile) const {
        return size_t(((layer * n_head_kv_ + kvh) * n_tiles_ + tile) * head_dim_ * kTile);
    }
    size_t v_offset(int64_t layer, int64_t kvh, int64_t pos) const {
        return size_t(((layer * n_head_kv_ + kvh) * n_tiles_ * kTile + pos) * head_dim_);
    }

    int64_t n_layer_, n_ctx_, n_head_kv_, head_dim_, n_tiles_;
    bool f32_;
    size_t elem_;     // bytes per value
    size_t n_elems_;  // values per cache (keys or values)
    // One pair is allocated, per the type. Not value-initialised: pages are touched only as
    // positions are written.
    std::unique_ptr<float[]> kf_, vf_;
    std::unique_ptr<uint16_t[]> kh_, vh_;
};

}  // namespace edgellm
