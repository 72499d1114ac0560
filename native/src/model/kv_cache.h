// The KV cache: keys and values of every layer and position, allocated once per context, stored
// in f16 (the default, as llama.cpp does), f32 (exact, twice the memory) or q8_0 (blocks of 32
// int8 values with an f16 scale: 34 bytes per 32 values, about half of f16).
// f16 and f32 are laid out for the reader: per layer and KV head, keys in tiles of kTile positions
// stored transposed (head_dim rows of kTile), values position-major; so attention reads a tile's
// keys as contiguous rows of kTile and writing a token scatters its keys (once per token, cheap).
// q8_0 stores, per layer and position, the row of all KV heads (n_head_kv * head_dim values, the
// blocks running across heads as llama.cpp's do), keys and values alike; reading dequantizes.
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
    // Positions per key tile: attention reads keys a tile at a time (model/attention.cpp).
    static constexpr int64_t kTile = 64;

    // type: F16, F32 or Q8_0 (n_head_kv * head_dim a multiple of 32). Throws Error for another
    // type, or when the cache cannot be allocated (the message gives the size).
    KvCache(int64_t n_layer, int64_t n_ctx, int64_t n_head_kv, int64_t head_dim, quant::Type type);

    int64_t n_ctx() const { return n_ctx_; }
    quant::Type type() const { return type_; }
    size_t bytes() const { return 2 * n_bytes_; }  // keys and values

    // One position of one layer in the storage encoding, all KV heads: row_bytes() for the keys
    // and as many for the values (head-major values of the type; q8_0 blocks). For saving and
    // restoring a cache: get then set gives back the same bits.
    size_t row_bytes() const { return row_bytes_; }
    void get_row(int64_t layer, int64_t pos, uint8_t* k, uint8_t* v) const;
    void set_row(int64_t layer, int64_t pos, const uint8_t* k, const uint8_t* v);

    // Stores the keys and values (n_head_kv * head_dim each, head-major) of position `pos`.
    void write(int64_t layer, int64_t pos, const float* k, const float* v);

    // The keys of KV head `kvh` at positions [tile * kTile, tile * kTile + n), transposed: value d
    // of position tile * kTile + j at [d * kTile + j]. Columns from n up to the next multiple of
    // 16 hold whatever the cache holds there (callers ignore them). F32 and Q8_0 caches only (an
    // F16 one is read in place, below): f32 returns a pointer into itself; q8_0 dequantizes into buf
    // (head_dim * kTile floats) and returns buf.
    const float* keys(int64_t layer, int64_t kvh, int64_t tile, int64_t n, float* buf) const;
    // The values of KV head `kvh` at positions [pos, pos + n), row-major (n x head_dim), the same way.
    const float* values(int64_t layer, int64_t kvh, int64_t pos, int64_t n, float* buf) const;
    // An f16 cache's own storage of the same (f16 bits, the layouts above): a whole key tile, and
    // the values from position pos on.
    const uint16_t* keys_f16(int64_t layer, int64_t kvh, int64_t tile) const {
        return kh_.get() + k_offset(layer, kvh, tile);
    }
    const uint16_t* values_f16(int64_t layer, int64_t kvh, int64_t pos) const {
        return vh_.get() + v_offset(layer, kvh, pos);
    }

private:
    // Keys: (layer, kv head, tile, head_dim, kTile). Values: (layer, kv head, position, head_dim).
    size_t k_offset(int64_t layer, int64_t kvh, int64_t tile) const {
        return size_t(((layer * n_head_kv_ + kvh) * n_tiles_ + tile) * head_dim_ * kTile);
    }
    size_t v_offset(int64_t layer, int64_t kvh, int64_t pos) const {
        return size_t(((layer * n_head_kv_ + kvh) * n_tiles_ * kTile + pos) * head_dim_);
    }

    // Calls move(cache bytes, is key, offset in the packed row, byte count) for every piece of the
    // keys and values of (layer, pos): get_row and set_row copy one way or the other.
    template <class Move>
    void each_row_part(int64_t layer, int64_t pos, Move&& move) const;

    // q8_0: the row of (layer, pos).
    size_t q_offset(int64_t layer, int64_t pos) const { return size_t(layer * n_tiles_ * kTile + pos) * row_bytes_; }

    int64_t n_layer_, n_ctx_, n_head_kv_, head_dim_, n_tiles_;
    quant::Type type_;
    size_t row_bytes_;  // bytes of one position's keys (or values), all heads, one layer
    size_t n_bytes_;    // bytes of the keys (or of the values)
    // One pair is allocated, per the type. Not value-initialised: pages are touched only as
    // positions are written.
    std::unique_ptr<float[]> kf_, vf_;
    std::unique_ptr<uint16_t[]> kh_, vh_;
    std::unique_ptr<uint8_t[]> kq_, vq_;
};

}  // namespace edgellm
