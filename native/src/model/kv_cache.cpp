// KvCache allocation: sizes checked for overflow, failures reported as one Error.
#include "model/kv_cache.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <new>
#include <string>

#include "common/error.h"

namespace edgellm {

namespace {

void convert_plain(const uint16_t* src, float* dst, int64_t n) {
    for (int64_t i = 0; i < n; ++i) dst[i] = half_to_float(src[i]);
}

#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx,f16c"))) void convert_f16c(const uint16_t* src, float* dst, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
    for (; i < n; ++i) dst[i] = half_to_float(src[i]);
}
#endif

}  // namespace

void halves_to_floats(const uint16_t* src, float* dst, int64_t n) {
    static const auto convert = [] {
#if defined(__x86_64__) && defined(__GNUC__)
        __builtin_cpu_init();
        if (__builtin_cpu_supports("f16c") && __builtin_cpu_supports("avx")) return convert_f16c;
#endif
        return convert_plain;
    }();
    convert(src, dst, n);
}

KvCache::KvCache(int64_t n_layer, int64_t n_ctx, int64_t n_head_kv, int64_t head_dim, quant::Type type)
    : n_layer_(n_layer),
      n_ctx_(n_ctx),
      n_head_kv_(n_head_kv),
      head_dim_(head_dim),
      n_tiles_((n_ctx + kTile - 1) / kTile),
      f32_(type == quant::Type::F32) {
    const int64_t n_embd_kv = n_head_kv * head_dim;
    if (type != quant::Type::F16 && type != quant::Type::F32)
        throw Error("kv_type: the KV cache is stored as f16 or f32, not type id " +
                    std::to_string(static_cast<uint32_t>(type)));
    elem_ = f32_ ? sizeof(float) : sizeof(uint16_t);
    int64_t n = 0;
    if (n_layer <= 0 || n_ctx <= 0 || n_embd_kv <= 0 || __builtin_mul_overflow(n_layer, n_tiles_ * kTile, &n) ||
        __builtin_mul_overflow(n, n_embd_kv, &n) || n > (int64_t(1) << 40))
        throw Error("n_ctx: a KV cache of " + std::to_string(n_ctx) + " positions x " + std::to_string(n_layer) +
                    " layers x " + std::to_string(n_embd_kv) + " values is too large");
    n_elems_ = size_t(n);
    try {
        if (f32_) {
            kf_.reset(new float[n_elems_]);
            vf_.reset(new float[n_elems_]);
        } else {
            kh_.reset(new uint16_t[n_elems_]);
            vh_.reset(new uint16_t[n_elems_]);
        }
    } catch (const std::bad_alloc&) {
        throw Error("n_ctx: cannot allocate a KV cache of " + std::to_string(n_ctx) + " positions (" +
                    std::to_string(bytes() >> 20) + " MiB)");
    }
}

void KvCache::write(int64_t layer, int64_t pos, const float* k, const float* v) {
    const int64_t tile = pos / kTile, col = pos % kTile;
    for (int64_t h = 0; h < n_head_kv_; ++h) {
        const float* kh = k + h * head_dim_;
        const float* vh = v + h * head_dim_;
        const size_t ko = k_offset(layer, h, tile) + size_t(col), vo = v_offset(layer, h, pos);
        if (f32_) {
            for (int64_t d = 0; d < head_dim_; ++d) kf_[ko + size_t(d * kTile)] = kh[d];
            std::memcpy(vf_.get() + vo, vh, size_t(head_dim_) * sizeof(float));
        } else {
            for (int64_t d = 0; d < head_dim_; ++d) kh_[ko + size_t(d * kTile)] = quant::fp32_to_fp16(kh[d]);
            for (int64_t d = 0; d < head_dim_; ++d) vh_[vo + size_t(d)] = quant::fp32_to_fp16(vh[d]);
        }
    }
}

const float* KvCache::keys(int64_t layer, int64_t kvh, int64_t tile, int64_t n, float* buf) const {
    const size_t o = k_offset(layer, kvh, tile);
    if (f32_) return kf_.get() + o;
    const int64_t cols = std::min<int64_t>(kTile, (n + 15) / 16 * 16);
    for (int64_t d = 0; d < head_dim_; ++d)
        halves_to_floats(kh_.get() + o + size_t(d * kTile), buf + d * kTile, cols);
    return buf;
}

const float* KvCache::values(int64_t layer, int64_t kvh, int64_t pos, int64_t n, float* buf) const {
    const size_t o = v_offset(layer, kvh, pos);
    if (f32_) return vf_.get() + o;
    halves_to_floats(vh_.get() + o, buf, n * head_dim_);
    return buf;
}

}  // namespace edgellm
