// KvCache allocation: sizes checked for overflow, failures reported as one Error.
#include "model/kv_cache.h"

#include <new>
#include <string>

#include "common/error.h"

namespace edgellm {

KvCache::KvCache(int64_t n_layer, int64_t n_ctx, int64_t n_embd_kv, quant::Type type)
    : n_layer_(n_layer), n_ctx_(n_ctx), n_embd_kv_(n_embd_kv), f32_(type == quant::Type::F32) {
    if (type != quant::Type::F16 && type != quant::Type::F32)
        throw Error("kv_type: the KV cache is stored as f16 or f32, not type id " +
                    std::to_string(static_cast<uint32_t>(type)));
    elem_ = f32_ ? sizeof(float) : sizeof(uint16_t);
    int64_t n = 0;
    if (n_layer <= 0 || n_ctx <= 0 || n_embd_kv <= 0 || __builtin_mul_overflow(n_layer, n_ctx, &n) ||
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

}  // namespace edgellm
