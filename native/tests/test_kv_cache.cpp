// The q8_0 KV cache's readers against a scalar dequantization of its own stored bytes (get_row):
// keys() (a transposed tile: 16 positions at a time, SIMD where the CPU has it) and values() (rows),
// for head sizes of one to four q8_0 blocks and one that splits blocks (80), every KV head and layer,
// whole tiles and partial ones.
// Each float must have the bits of d * q; columns from n up to the next multiple of 16 must be zero.
// Usage: test_kv_cache   (exit status 0 when every check passes)
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "model/kv_cache.h"

using namespace edgellm;

namespace {

int failures = 0;

void check_bits(float got, float want, const char* what, int64_t hd, int64_t layer, int64_t kvh, int64_t pos,
                int64_t d) {
    if (std::memcmp(&got, &want, sizeof got) == 0) return;
    if (++failures <= 10)
        std::printf("FAIL: %s head_dim=%lld layer=%lld kvh=%lld pos=%lld d=%lld: %.9g, want %.9g\n", what,
                    static_cast<long long>(hd), static_cast<long long>(layer), static_cast<long long>(kvh),
                    static_cast<long long>(pos), static_cast<long long>(d), got, want);
}

// Value e (of n_kv) of a q8_0 row as d * q, from the row's bytes.
float dequant(const uint8_t* row, int64_t e) {
    const uint8_t* blk = row + (e / 32) * 34;
    uint16_t dh;
    std::memcpy(&dh, blk, 2);
    return half_to_float(dh) * static_cast<float>(static_cast<int8_t>(blk[2 + e % 32]));
}

}  // namespace

int main() {
    constexpr int64_t kTile = KvCache::kTile;
    for (const int64_t hd : {32, 64, 80, 96, 128}) {
        const int64_t n_layer = 2, n_ctx = 200, n_kv_heads = hd % 32 == 0 ? 3 : 4, n_kv = n_kv_heads * hd;
        KvCache cache(n_layer, n_ctx, n_kv_heads, hd, quant::Type::Q8_0);
        std::mt19937 rng(static_cast<uint32_t>(hd));
        std::normal_distribution<float> normal;
        std::vector<float> k(static_cast<size_t>(n_kv)), v(static_cast<size_t>(n_kv));
        for (int64_t layer = 0; layer < n_layer; ++layer)
            for (int64_t pos = 0; pos < n_ctx; ++pos) {
                for (float& x : k) x = normal(rng) * (pos % 7 == 0 ? 100.0f : 1.0f);  // scales apart
                for (float& x : v) x = normal(rng);
                cache.write(layer, pos, k.data(), v.data());
            }
        std::vector<uint8_t> krow(cache.row_bytes()), vrow(cache.row_bytes());
        std::vector<float> buf(static_cast<size_t>(hd * kTile));
        for (int64_t layer = 0; layer < n_layer; ++layer)
            for (int64_t kvh = 0; kvh < n_kv_heads; ++kvh)
                for (int64_t tile = 0; tile * kTile < n_ctx; ++tile)
                    for (const int64_t n : {kTile, int64_t(1), int64_t(8), int64_t(17), int64_t(33)}) {
                        const int64_t n_here = std::min(n, n_ctx - tile * kTile);
                        const int64_t cols = std::min<int64_t>(kTile, (n_here + 15) / 16 * 16);
                        std::fill(buf.begin(), buf.end(), 12345.0f);
                        const float* kt = cache.keys(layer, kvh, tile, n_here, buf.data());
                        for (int64_t j = 0; j < cols; ++j) {
                            const int64_t pos = tile * kTile + j;
                            if (j < n_here) cache.get_row(layer, pos, krow.data(), vrow.data());
                            for (int64_t d = 0; d < hd; ++d)
                                check_bits(kt[d * kTile + j], j < n_here ? dequant(krow.data(), kvh * hd + d) : 0.0f,
                                           "keys", hd, layer, kvh, pos, d);
                        }
                        const float* vt = cache.values(layer, kvh, tile * kTile, n_here, buf.data());
                        for (int64_t j = 0; j < n_here; ++j) {
                            cache.get_row(layer, tile * kTile + j, krow.data(), vrow.data());
                            for (int64_t d = 0; d < hd; ++d)
                                check_bits(vt[j * hd + d], dequant(vrow.data(), kvh * hd + d), "values", hd, layer,
                                           kvh, tile * kTile + j, d);
                        }
                    }
    }
    if (failures) {
        std::printf("test_kv_cache: %d failures\n", failures);
        return 1;
    }
    std::printf("test_kv_cache: ok\n");
    return 0;
}
