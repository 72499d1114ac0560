// Attention over the KV cache: grouped-query, causal, optionally windowed.
//
// Work is split into tasks of (query heads of one KV group, block of tokens). A task walks the
// cached keys in tiles of kTile positions anchored at multiples of kTile (the cache stores keys
// transposed by tile, so the scores of a query are a loop over the tile that vectorises; an f16 or
// f32 cache is read in place, f16 converted in registers; a q8_0 cache is dequantized once per
// layer into f32 tiles that the query heads of a KV head's group share); the task's heads take
// each tile together, every key and value loaded and converted once for all of them, and every
// token of the block folds the tile into a running softmax per head (online softmax: max, sum and
// weighted value sum, rescaled when the max grows). A token's result depends
// only on its own positions and the tile grid, never on which block or chunk it was evaluated in,
// so token-by-token decode and batched prefill give the same numbers.
//
// The per-(token, tile) step is plain loops over fixed chunks of 16 floats that the compiler keeps
// in registers; it is compiled three times (AVX-512, AVX2, baseline) and picked at run time (with
// the matmul kernels' instruction set, so set_isa() switches both). The loops vectorise across
// independent elements, the tile's maximum and sum of weights reduce their 16 lanes in one fixed
// order (common/vmath.h), the products of scores and of values are fused multiply-adds written out
// (the FMA instruction, std::fma on the baseline: one rounding everywhere, and half the arithmetic of
// a multiply and an add), and the library is otherwise built without FMA contraction, so every
// variant gives the same bits.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#include "common/vmath.h"
#include "model/kv_cache.h"
#include "model/ops.h"
#include "ops/matmul_kernels.h"

// The vector helpers below are inlined into each ISA variant; their ABI never crosses a call.
#pragma GCC diagnostic ignored "-Wpsabi"
// GCC 12's AVX-512 headers trip -W(maybe-)uninitialized on their own _mm512_undefined_*() helpers.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace edgellm {

namespace {

constexpr int64_t kTile = 64;       // key positions per tile (a multiple of kChunk)
constexpr int64_t kMaxBlock = 64;   // most tokens per task
constexpr int64_t kChunk = 16;      // floats per register-resident accumulator

using vmath::f32x16;
using vmath::exp16;
using vmath::exp1;
using vmath::load16;
using vmath::store16;

// One token against one tile of keys, for nh query heads of one KV group at once (they share the
// tile: each key and value is loaded and converted once for all of them). The keys and values are
// f32, or f16 (an f16 cache read in place: each value converted exactly in registers as it is
// used, so the bits are those of a converted copy). Every head's arithmetic is that of a step over
// that head alone, in the same order: grouping heads changes no bit.
constexpr int kMaxGroup = 4;  // most query heads per step

struct TileStep {
    const float* q[kMaxGroup];    // (head_dim) each: the token's query for each head
    const void* kt;               // (head_dim, kTile): the tile's keys, transposed
    const void* v;                // (kTile, head_dim): the tile's values
    bool f16;                     // kt and v hold f16 bits, else f32
    int nh;                       // heads, 1..kMaxGroup
    float* s;                     // (nh, kTile): scratch for the scores
    int64_t a, b;                 // the token's keys are tile offsets [a, b)
    int64_t hd;
    float scale;
    float* m[kMaxGroup];          // running max of the scores, per head
    float* l[kMaxGroup];          // running sum of exp(score - m)
    float* acc[kMaxGroup];        // (head_dim): running sum of exp(score - m) * value
};

// 16 values from f32 or f16 storage; Cvt converts 16 f16, takes 16 maxima and computes a * b + c
// with one rounding (fma), with the variant's instructions (a comparison of 16-float vectors is
// lowered one lane at a time below AVX-512).
// (Not forced inline: the variants below are flattened, which inlines these into a function of the
// variant's instruction set, where Cvt's intrinsics may be inlined.)
template <class Cvt>
inline f32x16 load16(const float* p) {
    return load16(p);
}
template <class Cvt>
inline f32x16 load16(const uint16_t* p) {
    return Cvt::load(p);
}

// s[h * kTile + 16c + i] = scale * sum_d q[h][d] * kt[d * kTile + 16c + i] for heads h < NH and
// chunks c < NC, the sum over d in order: NH * NC independent chains, so the adds overlap.
template <class E, class Cvt, int NC, int NH>
inline void scores(const float* const* q, const E* kt, int64_t hd, float scale, float* s) {
    f32x16 sum[NH][NC] = {};
    for (int64_t d = 0; d < hd; ++d) {
#pragma GCC unroll 4
        for (int c = 0; c < NC; ++c) {
            const f32x16 k = load16<Cvt>(kt + d * kTile + kChunk * c);
#pragma GCC unroll 4
            for (int h = 0; h < NH; ++h) sum[h][c] = Cvt::fma(q[h][d], k, sum[h][c]);
        }
    }
#pragma GCC unroll 4
    for (int h = 0; h < NH; ++h)
#pragma GCC unroll 4
        for (int c = 0; c < NC; ++c) store16(s + h * kTile + kChunk * c, sum[h][c] * scale);
}

// acc[h][16c + i] += sum_j s[h * kTile + j] * v[j * hd + 16c + i] over j in [a, b) in order, for
// heads h < NH and chunks c < NC.
template <class E, class Cvt, int NC, int NH>
inline void weigh_values(const float* s, const E* v, int64_t a, int64_t b, int64_t hd, float* const* acc,
                         int64_t dc) {
    f32x16 o[NH][NC];
#pragma GCC unroll 4
    for (int h = 0; h < NH; ++h)
#pragma GCC unroll 4
        for (int c = 0; c < NC; ++c) o[h][c] = load16(acc[h] + dc + kChunk * c);
    for (int64_t j = a; j < b; ++j) {
#pragma GCC unroll 4
        for (int c = 0; c < NC; ++c) {
            const f32x16 x = load16<Cvt>(v + j * hd + dc + kChunk * c);
#pragma GCC unroll 4
            for (int h = 0; h < NH; ++h) o[h][c] = Cvt::fma(s[h * kTile + j], x, o[h][c]);
        }
    }
#pragma GCC unroll 4
    for (int h = 0; h < NH; ++h)
#pragma GCC unroll 4
        for (int c = 0; c < NC; ++c) store16(acc[h] + dc + kChunk * c, o[h][c]);
}

template <class E, class Cvt, int NH>
inline void tile_step_body(const TileStep& t) {
    constexpr float kNegInf = -std::numeric_limits<float>::infinity();
    const int64_t hd = t.hd, a = t.a, b = t.b;
    const int64_t c0 = a / kChunk * kChunk;  // chunks [c0, c1) of 16 keys cover [a, b)
    const int64_t nc = (b - c0 + kChunk - 1) / kChunk, c1 = c0 + nc * kChunk;
    const E* kt = static_cast<const E*>(t.kt);
    const E* v = static_cast<const E*>(t.v);
    // scores; the keys of the chunks outside [a, b) score -inf
    switch (nc) {
        case 1: scores<E, Cvt, 1, NH>(t.q, kt + c0, hd, t.scale, t.s + c0); break;
        case 2: scores<E, Cvt, 2, NH>(t.q, kt + c0, hd, t.scale, t.s + c0); break;
        case 3: scores<E, Cvt, 3, NH>(t.q, kt + c0, hd, t.scale, t.s + c0); break;
        default: scores<E, Cvt, 4, NH>(t.q, kt + c0, hd, t.scale, t.s + c0); break;
    }
    for (int h = 0; h < NH; ++h) {
        float* s = t.s + h * kTile;
        for (int64_t j = c0; j < a; ++j) s[j] = kNegInf;
        for (int64_t j = b; j < c1; ++j) s[j] = kNegInf;
        f32x16 mx16 = load16(s + c0);
        for (int64_t jc = c0 + kChunk; jc < c1; jc += kChunk) mx16 = Cvt::max(mx16, load16(s + jc));
        const float mx = vmath::hmax16(mx16);
        if (mx > *t.m[h]) {  // rescale what was summed under the old maximum
            const float c = *t.m[h] == kNegInf ? 0.0f : exp1(*t.m[h] - mx);
            *t.l[h] *= c;
            for (int64_t d = 0; d < hd; ++d) t.acc[h][d] *= c;
            *t.m[h] = mx;
        }
        // weights exp(score - max), 0 outside [a, b); their sum lane by lane, then across the lanes
        const f32x16 m = f32x16{} + *t.m[h];
        for (int64_t jc = c0; jc < c1; jc += kChunk) store16(s + jc, exp16(load16(s + jc) - m));
        for (int64_t j = c0; j < a; ++j) s[j] = 0.0f;
        for (int64_t j = b; j < c1; ++j) s[j] = 0.0f;
        f32x16 l16 = load16(s + c0);
        for (int64_t jc = c0 + kChunk; jc < c1; jc += kChunk) l16 += load16(s + jc);
        *t.l[h] += vmath::hsum16(l16);
    }
    // values, 16 dims at a time, summed over the keys in order
    const int64_t hd16 = hd / kChunk * kChunk;
    int64_t dc = 0;
    for (; dc + 4 * kChunk <= hd16; dc += 4 * kChunk) weigh_values<E, Cvt, 4, NH>(t.s, v, a, b, hd, t.acc, dc);
    for (; dc < hd16; dc += kChunk) weigh_values<E, Cvt, 1, NH>(t.s, v, a, b, hd, t.acc, dc);
    for (int h = 0; h < NH; ++h)
        for (int64_t d = hd16; d < hd; ++d)
            for (int64_t j = a; j < b; ++j) {
                float vj;
                if constexpr (std::is_same_v<E, float>)
                    vj = v[j * hd + d];
                else
                    vj = half_to_float(v[j * hd + d]);
                t.acc[h][d] += t.s[h * kTile + j] * vj;
            }
}

template <class E, class Cvt>
inline void tile_step_heads(const TileStep& t) {
    switch (t.nh) {
        case 1: tile_step_body<E, Cvt, 1>(t); break;
        case 2: tile_step_body<E, Cvt, 2>(t); break;
        case 3: tile_step_body<E, Cvt, 3>(t); break;
        default: tile_step_body<E, Cvt, 4>(t); break;
    }
}

struct CvtScalar {
    static f32x16 load(const uint16_t* p) {
        f32x16 r;
        for (int i = 0; i < 16; ++i) r[i] = half_to_float(p[i]);
        return r;
    }
    static f32x16 max(const f32x16& a, const f32x16& b) { return vmath::max16(a, b); }
    static f32x16 fma(float a, const f32x16& b, const f32x16& c) {
        f32x16 r;
        for (int i = 0; i < 16; ++i) r[i] = std::fma(a, b[i], c[i]);
        return r;
    }
};

__attribute__((flatten)) void tile_step_generic(const TileStep& t) {
    if (t.f16)
        tile_step_heads<uint16_t, CvtScalar>(t);
    else
        tile_step_heads<float, CvtScalar>(t);
}
#if defined(__x86_64__) && defined(__GNUC__)
struct CvtAvx2 {
    __attribute__((target("avx2,fma,f16c"))) static inline f32x16 load(const uint16_t* p) {
        const __m256 lo = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
        const __m256 hi = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 8)));
        f32x16 r;
        std::memcpy(&r, &lo, 32);
        std::memcpy(reinterpret_cast<char*>(&r) + 32, &hi, 32);
        return r;
    }
    __attribute__((target("avx2,fma,f16c"))) static inline f32x16 max(const f32x16& a, const f32x16& b) {
        __m256 x[2], y[2];
        std::memcpy(x, &a, 64);
        std::memcpy(y, &b, 64);
        x[0] = _mm256_max_ps(x[0], y[0]);
        x[1] = _mm256_max_ps(x[1], y[1]);
        f32x16 r;
        std::memcpy(&r, x, 64);
        return r;
    }
    __attribute__((target("avx2,fma,f16c"))) static inline f32x16 fma(float a, const f32x16& b, const f32x16& c) {
        const __m256 x = _mm256_set1_ps(a);
        __m256 y[2], z[2];
        std::memcpy(y, &b, 64);
        std::memcpy(z, &c, 64);
        z[0] = _mm256_fmadd_ps(x, y[0], z[0]);
        z[1] = _mm256_fmadd_ps(x, y[1], z[1]);
        f32x16 r;
        std::memcpy(&r, z, 64);
        return r;
    }
};
struct CvtAvx512 {
    __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq"))) static inline f32x16 load(const uint16_t* p) {
        const __m512 v = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
        f32x16 r;
        std::memcpy(&r, &v, 64);
        return r;
    }
    __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq"))) static inline f32x16 max(const f32x16& a,
                                                                                         const f32x16& b) {
        __m512 x, y;
        std::memcpy(&x, &a, 64);
        std::memcpy(&y, &b, 64);
        x = _mm512_max_ps(x, y);
        f32x16 r;
        std::memcpy(&r, &x, 64);
        return r;
    }
    __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq"))) static inline f32x16 fma(float a, const f32x16& b,
                                                                                         const f32x16& c) {
        const __m512 x = _mm512_set1_ps(a);
        __m512 y, z;
        std::memcpy(&y, &b, 64);
        std::memcpy(&z, &c, 64);
        z = _mm512_fmadd_ps(x, y, z);
        f32x16 r;
        std::memcpy(&r, &z, 64);
        return r;
    }
};
__attribute__((target("avx2,fma,f16c"), flatten)) void tile_step_avx2(const TileStep& t) {
    if (t.f16)
        tile_step_heads<uint16_t, CvtAvx2>(t);
    else
        tile_step_heads<float, CvtAvx2>(t);
}
__attribute__((target("avx512f,avx512vl,avx512bw,avx512dq"), flatten)) void tile_step_avx512(const TileStep& t) {
    if (t.f16)
        tile_step_heads<uint16_t, CvtAvx512>(t);
    else
        tile_step_heads<float, CvtAvx512>(t);
}
#endif

using TileStepFn = void (*)(const TileStep&);

// The variant of the instruction set the matmul kernels run (the CPU's best, or what set_isa()
// chose: the tests switch it to run every variant). That set's CPU check covers this file's needs.
TileStepFn tile_step_for(ops::detail::Isa isa) {
#if defined(__x86_64__) && defined(__GNUC__)
    if (isa == ops::detail::Isa::Avx512) return tile_step_avx512;
    if (isa == ops::detail::Isa::Avx2) return tile_step_avx2;
#endif
    (void)isa;
    return tile_step_generic;
}

}  // namespace

void attention(Forward& f, int64_t il, int64_t window) {
    const HParams& hp = f.hp;
    const int64_t T = f.n_tokens, hd = hp.head_dim, n_head = hp.n_head, n_kv = hp.n_embd_kv();
    static_assert(kTile == KvCache::kTile, "attention tiles are the cache's key tiles");
    const int64_t group = hp.n_head / hp.n_head_kv;
    const float scale = hp.attn_scale;
    const TileStepFn tile_step = tile_step_for(ops::detail::best_isa());

    // 1. This chunk's keys and values go into the cache first: every token then reads all its keys,
    // its own chunk's included, from the same f16 storage.
    KvCache& cache = f.cache;
    const bool f16 = cache.type() == quant::Type::F16;  // read in place, converted in registers
    for (int64_t t = 0; t < T; ++t) cache.write(il, f.pos0 + t, f.k + t * n_kv, f.v + t * n_kv);

    // 2. Tasks: (query heads of one KV group, token block), enough of them to keep every thread busy
    // (run in 4.). The heads of a task walk each tile together (see TileStep): a group is split into
    // `split` near-equal runs of at most kMaxGroup heads.
    // More runs than that only when there would be fewer of them than threads: sharing a tile
    // between heads saves more than the uneven split of a few tasks costs (SmolLM2, 3 KV groups of 3
    // heads on 2 threads: a decode step 2.81 -> 2.62 ms at 500 cached positions, 3.97 -> 3.35 ms at
    // 1500).
    const int64_t n_threads = f.pool.n_threads();
    int64_t split = (group + kMaxGroup - 1) / kMaxGroup;
    while (split < group && hp.n_head_kv * split < n_threads) ++split;
    const int64_t max_nh = (group + split - 1) / split, n_runs = hp.n_head_kv * split;
    const int64_t target = 4 * n_threads;
    const int64_t block = std::clamp<int64_t>((T * n_runs + target - 1) / target, 1, kMaxBlock / max_nh);
    const int64_t n_blocks = (T + block - 1) / block;

    auto first_key = [&](int64_t t) { return window > 0 ? std::max<int64_t>(0, f.pos0 + t - window + 1) : 0; };

    // 3. A q8_0 cache dequantizes each KV head's tiles [tile0, tile1) once, in parallel, into f.kv_f32:
    // keys transposed then values, per (KV head, tile) head_dim * kTile floats each. Tiles hold the
    // same floats the per-task dequantization would give, so the results are the same bits.
    const bool shared = cache.type() == quant::Type::Q8_0 && f.kv_f32 != nullptr;
    const int64_t tile0 = first_key(0) / kTile, tile1 = (f.pos0 + T + kTile - 1) / kTile, n_t = tile1 - tile0;
    const int64_t tile_floats = hd * kTile;
    float* deq = nullptr;
    // keys of (kvh, tile) in deq; its values follow them
    auto deq_tile = [&](int64_t kvh, int64_t tile) { return deq + 2 * (kvh * n_t + tile - tile0) * tile_floats; };
    if (shared) {
        const size_t need = size_t(2 * hp.n_head_kv * n_t * tile_floats);
        if (f.kv_f32->size() < need) f.kv_f32->resize(need);
        deq = f.kv_f32->data();
        auto dequant_fn = [&](int64_t task) {
            const int64_t kvh = task / n_t, tile = tile0 + task % n_t;
            const int64_t n = std::min(kTile, f.pos0 + T - tile * kTile);
            float* kd = deq_tile(kvh, tile);
            cache.keys(il, kvh, tile, n, kd);  // q8_0: into kd
            cache.values(il, kvh, tile * kTile, n, kd + tile_floats);
        };
        f.pool.run(hp.n_head_kv * n_t, [&dequant_fn](int64_t task, int) { dequant_fn(task); });
    }

    auto task_fn = [&](int64_t task, int thread) {
        AttnScratch& sc = f.scratch[size_t(thread)];
        const int64_t run = task % n_runs, kvh = run / split, part = run % split;
        const int64_t h0 = kvh * group + part * group / split, nh = kvh * group + (part + 1) * group / split - h0;
        const int64_t t0 = (task / n_runs) * block, t1 = std::min(T, t0 + block), nt = t1 - t0;
        float* kbuf = sc.kt.data();
        float* vbuf = sc.v.data();
        for (int64_t i = 0; i < nh * nt; ++i) {
            sc.m[size_t(i)] = -std::numeric_limits<float>::infinity();
            sc.l[size_t(i)] = 0.0f;
            std::fill(sc.acc.begin() + i * hd, sc.acc.begin() + (i + 1) * hd, 0.0f);
        }
        TileStep st{};
        st.f16 = f16;
        st.nh = int(nh);
        st.s = sc.s.data();
        st.hd = hd;
        st.scale = scale;
        const int64_t lo = first_key(t0), hi = f.pos0 + t1;  // keys [lo, hi) cover the block
        for (int64_t ts = lo / kTile * kTile; ts < hi; ts += kTile) {
            const int64_t j0 = std::max(ts, lo), j1 = std::min(ts + kTile, hi);
            if (shared) {
                const float* kd = deq_tile(kvh, ts / kTile);
                st.kt = kd;
                st.v = kd + tile_floats;
            } else if (f16) {
                st.kt = cache.keys_f16(il, kvh, ts / kTile);
                st.v = cache.values_f16(il, kvh, ts);
            } else {
                st.kt = cache.keys(il, kvh, ts / kTile, j1 - ts, kbuf);
                st.v = cache.values(il, kvh, ts, j1 - ts, vbuf);
            }
            for (int64_t t = t0; t < t1; ++t) {
                // keys of this token inside the tile, as offsets [a, b) from ts
                st.a = std::max(j0, first_key(t)) - ts, st.b = std::min(j1, f.pos0 + t + 1) - ts;
                if (st.a >= st.b) continue;
                for (int64_t hh = 0; hh < nh; ++hh) {
                    const size_t i = size_t(hh * nt + t - t0);
                    st.q[hh] = f.q + (t * n_head + h0 + hh) * hd;
                    st.m[hh] = &sc.m[i];
                    st.l[hh] = &sc.l[i];
                    st.acc[hh] = sc.acc.data() + int64_t(i) * hd;
                }
                tile_step(st);
            }
        }
        for (int64_t hh = 0; hh < nh; ++hh)
            for (int64_t t = t0; t < t1; ++t) {
                const size_t i = size_t(hh * nt + t - t0);
                const float inv = 1.0f / sc.l[i];
                const float* acc = sc.acc.data() + int64_t(i) * hd;
                float* out = f.attn + (t * n_head + h0 + hh) * hd;
                for (int64_t d = 0; d < hd; ++d) out[d] = acc[d] * inv;
            }
    };
    // 4. A one-pointer capture fits std::function's inline storage: no allocation per call.
    f.pool.run(n_runs * n_blocks, [&task_fn](int64_t task, int thread) { task_fn(task, thread); });
}

// Scratch for one thread of attention(), sized for head_dim.
void attn_scratch_init(AttnScratch& sc, int64_t head_dim) {
    sc.kt.assign(size_t(head_dim * kTile), 0.0f);
    sc.v.assign(size_t(head_dim * kTile), 0.0f);
    sc.s.assign(size_t(kMaxGroup * kTile), 0.0f);
    sc.m.assign(size_t(kMaxBlock), 0.0f);
    sc.l.assign(size_t(kMaxBlock), 0.0f);
    sc.acc.assign(size_t(kMaxBlock * head_dim), 0.0f);
}

}  // namespace edgellm
