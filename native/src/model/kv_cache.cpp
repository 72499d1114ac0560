// KvCache allocation: sizes checked for overflow, failures reported as one Error.
#include "model/kv_cache.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <new>
#include <string>

#include "common/error.h"
#include "model/model.h"

namespace edgellm {

namespace {

constexpr int64_t kQ8 = 32;            // values per q8_0 block
constexpr size_t kQ8Bytes = 2 + kQ8;   // f16 scale + 32 int8

// One q8_0 block (GGUF layout) from 32 floats: d = max|x| / 127, q = round(x / d).
void quantize_q8(const float* x, uint8_t* out) {
    float amax = 0.0f;
    for (int64_t i = 0; i < kQ8; ++i) amax = std::max(amax, std::fabs(x[i]));
    const float d = amax / 127.0f;
    const float id = d > 0.0f ? 1.0f / d : 0.0f;
    const uint16_t dh = quant::fp32_to_fp16_sat(d);
    std::memcpy(out, &dh, 2);
    auto* q = reinterpret_cast<int8_t*>(out + 2);
    for (int64_t i = 0; i < kQ8; ++i) {
        const float v = std::nearbyint(x[i] * id);
        q[i] = static_cast<int8_t>(std::isfinite(v) ? std::clamp(v, -127.0f, 127.0f) : 0.0f);
    }
}

// One whole q8_0 block (32 values) as floats.
void q8_block_plain(const uint8_t* blk, float* dst) {
    uint16_t dh;
    std::memcpy(&dh, blk, 2);
    const float d = half_to_float(dh);
    const auto* q = reinterpret_cast<const int8_t*>(blk + 2);
    for (int64_t i = 0; i < kQ8; ++i) dst[i] = d * float(q[i]);
}

#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx2"))) void q8_block_avx2(const uint8_t* blk, float* dst) {
    uint16_t dh;
    std::memcpy(&dh, blk, 2);
    const __m256 d = _mm256_set1_ps(half_to_float(dh));
    for (int i = 0; i < 32; i += 8) {
        const __m128i q8 = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(blk + 2 + i));
        _mm256_storeu_ps(dst + i, _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q8))));
    }
}

// Key tile of a q8_0 cache, transposed: 16 positions at a time, each block's 32 int8 values of the
// 16 positions transposed as two 16x16 byte matrices (four rounds of byte interleaving), then
// widened and scaled 8 at a time. rows[i]: position i's first block of the head (nullptr past n:
// zeros); blocks: the head's blocks; out: (32 * blocks, kTile) at column 0 of the 16. The floats are
// d * q as dequant_q8 gives them.
__attribute__((target("avx2"))) void q8_keys16_avx2(const uint8_t* const* rows, int64_t blocks, float* out,
                                                     int64_t stride) {
    for (int64_t b = 0; b < blocks; ++b) {
        alignas(32) float s[16];
        for (int i = 0; i < 16; ++i) {
            s[i] = 0.0f;
            if (!rows[i]) continue;
            uint16_t dh;
            std::memcpy(&dh, rows[i] + b * kQ8Bytes, 2);
            s[i] = half_to_float(dh);
        }
        const __m256 s_lo = _mm256_load_ps(s), s_hi = _mm256_load_ps(s + 8);
        for (int half = 0; half < 2; ++half) {
            __m128i r[16], t[16];
            for (int i = 0; i < 16; ++i) {
                const uint8_t* q = rows[i] ? rows[i] + b * kQ8Bytes + 2 + 16 * half : nullptr;
                r[i] = q ? _mm_loadu_si128(reinterpret_cast<const __m128i*>(q)) : _mm_setzero_si128();
            }
            for (int round = 0; round < 4; ++round) {  // r[d] ends as byte d of every position
                for (int i = 0; i < 8; ++i) {
                    t[2 * i] = _mm_unpacklo_epi8(r[i], r[i + 8]);
                    t[2 * i + 1] = _mm_unpackhi_epi8(r[i], r[i + 8]);
                }
                for (int i = 0; i < 16; ++i) r[i] = t[i];
            }
            for (int d = 0; d < 16; ++d) {
                float* o = out + (b * 32 + 16 * half + d) * stride;
                const __m256 lo = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(r[d]));
                const __m256 hi = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(r[d], 8)));
                _mm256_storeu_ps(o, _mm256_mul_ps(s_lo, lo));
                _mm256_storeu_ps(o + 8, _mm256_mul_ps(s_hi, hi));
            }
        }
    }
}

bool has_avx2() {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2");
}
#endif

using Q8BlockFn = void (*)(const uint8_t*, float*);

Q8BlockFn pick_q8_block() {
#if defined(__x86_64__) && defined(__GNUC__)
    if (has_avx2()) return q8_block_avx2;
#endif
    return q8_block_plain;
}

// Values [first, first + n) of a q8_0 row as floats into dst: whole blocks at once (the usual case,
// heads aligned to blocks), a partial block value by value.
void dequant_q8(const uint8_t* row, int64_t first, int64_t n, float* dst) {
    static const Q8BlockFn block = pick_q8_block();
    int64_t j = first;
    const int64_t end = first + n;
    while (j < end) {
        const uint8_t* blk = row + size_t(j / kQ8) * kQ8Bytes;
        if (j % kQ8 == 0 && end - j >= kQ8) {
            block(blk, dst);
            dst += kQ8;
            j += kQ8;
            continue;
        }
        uint16_t dh;
        std::memcpy(&dh, blk, 2);
        const float d = half_to_float(dh);
        const auto* q = reinterpret_cast<const int8_t*>(blk + 2);
        const int64_t stop = std::min(end, (j / kQ8 + 1) * kQ8);
        for (int64_t i = j % kQ8; j < stop; ++j, ++i) *dst++ = d * float(q[i]);
    }
}

}  // namespace

KvCache::KvCache(int64_t n_layer, int64_t n_ctx, int64_t n_head_kv, int64_t head_dim, quant::Type type)
    : n_layer_(n_layer),
      n_ctx_(n_ctx),
      n_head_kv_(n_head_kv),
      head_dim_(head_dim),
      n_tiles_((n_ctx + kTile - 1) / kTile),
      type_(type) {
    const int64_t n_embd_kv = n_head_kv * head_dim;
    if (type != quant::Type::F16 && type != quant::Type::F32 && type != quant::Type::Q8_0)
        throw Error("kv_type: the KV cache is stored as f16, f32 or q8_0, not type id " +
                    std::to_string(static_cast<uint32_t>(type)));
    if (type == quant::Type::Q8_0 && n_embd_kv % kQ8 != 0)
        throw Unsupported("kv_type: a q8_0 KV cache needs n_head_kv x head_dim (" + std::to_string(n_embd_kv) +
                          ") to be a multiple of 32");
    int64_t n = 0;
    if (n_layer <= 0 || n_ctx <= 0 || n_embd_kv <= 0 || __builtin_mul_overflow(n_layer, n_tiles_ * kTile, &n) ||
        __builtin_mul_overflow(n, n_embd_kv, &n) || n > (int64_t(1) << 40))
        throw Error("n_ctx: a KV cache of " + std::to_string(n_ctx) + " positions x " + std::to_string(n_layer) +
                    " layers x " + std::to_string(n_embd_kv) + " values is too large");
    const size_t n_elems = size_t(n);
    switch (type) {
        case quant::Type::F32: row_bytes_ = size_t(n_embd_kv) * sizeof(float); break;
        case quant::Type::F16: row_bytes_ = size_t(n_embd_kv) * sizeof(uint16_t); break;
        default: row_bytes_ = size_t(n_embd_kv / kQ8) * kQ8Bytes; break;
    }
    n_bytes_ = n_elems / size_t(n_embd_kv) * row_bytes_;
    try {
        if (type == quant::Type::F32) {
            kf_.reset(new float[n_elems]);
            vf_.reset(new float[n_elems]);
        } else if (type == quant::Type::F16) {
            kh_.reset(new uint16_t[n_elems]);
            vh_.reset(new uint16_t[n_elems]);
        } else {
            kq_.reset(new uint8_t[n_bytes_]);
            vq_.reset(new uint8_t[n_bytes_]);
        }
    } catch (const std::bad_alloc&) {
        throw Error("n_ctx: cannot allocate a KV cache of " + std::to_string(n_ctx) + " positions (" +
                    std::to_string(bytes() >> 20) + " MiB)");
    }
}

void KvCache::write(int64_t layer, int64_t pos, const float* k, const float* v) {
    if (type_ == quant::Type::Q8_0) {
        const size_t o = q_offset(layer, pos);
        const int64_t nb = n_head_kv_ * head_dim_ / kQ8;
        for (int64_t b = 0; b < nb; ++b) {
            quantize_q8(k + b * kQ8, kq_.get() + o + size_t(b) * kQ8Bytes);
            quantize_q8(v + b * kQ8, vq_.get() + o + size_t(b) * kQ8Bytes);
        }
        return;
    }
    const int64_t tile = pos / kTile, col = pos % kTile;
    for (int64_t h = 0; h < n_head_kv_; ++h) {
        const float* kh = k + h * head_dim_;
        const float* vh = v + h * head_dim_;
        const size_t ko = k_offset(layer, h, tile) + size_t(col), vo = v_offset(layer, h, pos);
        if (type_ == quant::Type::F32) {
            for (int64_t d = 0; d < head_dim_; ++d) kf_[ko + size_t(d * kTile)] = kh[d];
            std::memcpy(vf_.get() + vo, vh, size_t(head_dim_) * sizeof(float));
        } else {
            for (int64_t d = 0; d < head_dim_; ++d) kh_[ko + size_t(d * kTile)] = quant::fp32_to_fp16(kh[d]);
            for (int64_t d = 0; d < head_dim_; ++d) vh_[vo + size_t(d)] = quant::fp32_to_fp16(vh[d]);
        }
    }
}

const float* KvCache::keys(int64_t layer, int64_t kvh, int64_t tile, int64_t n, float* buf) const {
    const int64_t cols = std::min<int64_t>(kTile, (n + 15) / 16 * 16);
    if (type_ == quant::Type::Q8_0) {
#if defined(__x86_64__) && defined(__GNUC__)
        static const bool avx2 = has_avx2();
        if (avx2 && head_dim_ % kQ8 == 0) {  // the head's values are whole blocks
            for (int64_t j0 = 0; j0 < cols; j0 += 16) {
                const uint8_t* rows[16];
                for (int64_t i = 0; i < 16; ++i)
                    rows[i] = j0 + i < n ? kq_.get() + q_offset(layer, tile * kTile + j0 + i) +
                                               size_t(kvh * head_dim_ / kQ8) * kQ8Bytes
                                         : nullptr;
                q8_keys16_avx2(rows, head_dim_ / kQ8, buf + j0, kTile);
            }
            return buf;
        }
#endif
        // Each position's keys dequantize contiguously, then scatter into the transposed tile.
        // Positions past n (up to cols) are read too: their values are ignored by the caller, and
        // zeroing them keeps garbage scales out of the arithmetic.
        float row[512];
        for (int64_t d0 = 0; d0 < head_dim_; d0 += 512) {
            const int64_t nd = std::min<int64_t>(512, head_dim_ - d0);
            for (int64_t j = 0; j < cols; ++j) {
                if (j < n)
                    dequant_q8(kq_.get() + q_offset(layer, tile * kTile + j), kvh * head_dim_ + d0, nd, row);
                else
                    std::fill(row, row + nd, 0.0f);
                for (int64_t d = 0; d < nd; ++d) buf[(d0 + d) * kTile + j] = row[d];
            }
        }
        return buf;
    }
    return kf_.get() + k_offset(layer, kvh, tile);
}

const float* KvCache::values(int64_t layer, int64_t kvh, int64_t pos, int64_t n, float* buf) const {
    if (type_ == quant::Type::Q8_0) {
        for (int64_t j = 0; j < n; ++j)
            dequant_q8(vq_.get() + q_offset(layer, pos + j), kvh * head_dim_, head_dim_, buf + j * head_dim_);
        return buf;
    }
    return vf_.get() + v_offset(layer, kvh, pos);
}

template <class Move>
void KvCache::each_row_part(int64_t layer, int64_t pos, Move&& move) const {
    if (type_ == quant::Type::Q8_0) {
        move(kq_.get() + q_offset(layer, pos), true, 0, row_bytes_);
        move(vq_.get() + q_offset(layer, pos), false, 0, row_bytes_);
        return;
    }
    const bool f32 = type_ == quant::Type::F32;
    const size_t elem = f32 ? sizeof(float) : sizeof(uint16_t), head = size_t(head_dim_) * elem;
    auto* ks = f32 ? reinterpret_cast<uint8_t*>(kf_.get()) : reinterpret_cast<uint8_t*>(kh_.get());
    auto* vs = f32 ? reinterpret_cast<uint8_t*>(vf_.get()) : reinterpret_cast<uint8_t*>(vh_.get());
    const int64_t tile = pos / kTile, col = pos % kTile;
    for (int64_t h = 0; h < n_head_kv_; ++h) {
        const size_t ko = k_offset(layer, h, tile) + size_t(col), vo = v_offset(layer, h, pos);
        for (int64_t d = 0; d < head_dim_; ++d)
            move(ks + (ko + size_t(d * kTile)) * elem, true, size_t(h) * head + size_t(d) * elem, elem);
        move(vs + vo * elem, false, size_t(h) * head, head);
    }
}

void KvCache::get_row(int64_t layer, int64_t pos, uint8_t* k, uint8_t* v) const {
    each_row_part(layer, pos, [&](const uint8_t* cached, bool key, size_t off, size_t n) {
        std::memcpy((key ? k : v) + off, cached, n);
    });
}

void KvCache::set_row(int64_t layer, int64_t pos, const uint8_t* k, const uint8_t* v) {
    each_row_part(layer, pos, [&](uint8_t* cached, bool key, size_t off, size_t n) {
        std::memcpy(cached, (key ? k : v) + off, n);
    });
}

}  // namespace edgellm
