// The steps a forward pass is built from (norm, rope, attention, ffn, ...) and the state they share.
// An architecture file (native/src/models/) strings these together for one chunk of tokens; every
// step works on all tokens of the chunk and uses the context's thread pool.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <vector>

#include "common/thread_pool.h"
#include "model/hparams.h"
#include "model/kv_cache.h"
#include "model/weights.h"

namespace edgellm {

enum class RopeLayout {
    Normal,  // rotates adjacent pairs (x[2i], x[2i+1]): llama
    NeoX,    // rotates (x[i], x[i + n_rot/2]): qwen2, qwen3, gemma3
};

// Per-pair inverse frequencies and the cos/sin scale of one RopeParams (fixed per context).
struct RopeFreqs {
    std::vector<float> inv_freq;  // (n_rot / 2)
    float mscale = 1.0f;
};
RopeFreqs rope_freqs(const RopeParams& p, int64_t n_rot, const std::vector<float>& freq_factors);

// cos/sin of every (token, pair) of the current chunk: (n_tokens, n_rot / 2) each.
struct RopeTable {
    std::vector<float> cos, sin;
};

// Per-thread scratch of the attention step (sized once per context).
struct AttnScratch {
    std::vector<float> kt;   // (head_dim, kTile): keys of a tile, transposed (f16 cache)
    std::vector<float> v;    // (kTile, head_dim): values of a tile (f16 cache)
    std::vector<float> s;    // (heads of a task, kTile): scores of one token's queries
    std::vector<float> m, l; // (heads x tokens of a task): running max and sum of the softmax
    std::vector<float> acc;  // (heads x tokens of a task, head_dim): running weighted sum of values
};
void attn_scratch_init(AttnScratch& sc, int64_t head_dim);

// Everything one forward pass over a chunk of tokens reads and writes. Activation buffers hold
// n_tokens rows and are allocated once per context for n_batch rows.
struct Forward {
    const HParams& hp;
    const Weights& w;
    ThreadPool& pool;
    KvCache& cache;
    std::vector<AttnScratch>& scratch;  // one per pool thread

    const int32_t* tokens = nullptr;
    int64_t n_tokens = 0;
    int64_t pos0 = 0;  // position of tokens[0] (= n_past before the chunk)

    float* x = nullptr;     // (n_tokens, n_embd): the residual stream
    float* xn = nullptr;    // (n_tokens, n_embd): normalised input of a sub-block
    float* q = nullptr;     // (n_tokens, n_head * head_dim)
    float* k = nullptr;     // (n_tokens, n_head_kv * head_dim)
    float* v = nullptr;     // (n_tokens, n_head_kv * head_dim)
    float* attn = nullptr;  // (n_tokens, n_head * head_dim): attention output, before wo
    float* tmp = nullptr;   // (n_tokens, n_embd): output of a sub-block, before the residual add
    float* gate = nullptr;  // (n_tokens, n_ff)
    float* up = nullptr;    // (n_tokens, n_ff)

    const RopeTable* rope = nullptr;      // full-attention layers
    const RopeTable* rope_swa = nullptr;  // sliding-window layers

    int64_t out_first = 0;   // logits are wanted for tokens [out_first, n_tokens)
    float* logits = nullptr; // (n_tokens - out_first, n_vocab)
    const std::vector<int64_t>* out_runs = nullptr;  // (first, count) row groups of the head to compute; null: all

    // q8_0 cache: attention dequantizes each KV head's tiles once per layer into this buffer (keys
    // and values of the positions the chunk attends to, f32), shared by the query heads of its
    // group; without it, every query head dequantizes its own copy.
    std::vector<float>* kv_f32 = nullptr;
};

// Fills `table` for positions pos0 .. pos0 + n_tokens - 1.
void rope_table(const RopeFreqs& freqs, int64_t pos0, int64_t n_tokens, RopeTable& table);

// x[t] = token_embd[tokens[t]] * scale
void embed(Forward& f, float scale = 1.0f);
// out[t] = x[t] / rms(x[t]) * w, rows of w.size() values, n_rows rows (default: all tokens).
void rms_norm(Forward& f, const float* x, const std::vector<float>& w, float* out, int64_t n_rows = -1);
// In place, per head: x viewed as (n_tokens, n_heads, head_dim), each head normalised with w (head_dim).
void rms_norm_heads(Forward& f, float* x, int64_t n_heads, const std::vector<float>& w);
// out (n_rows, W.rows) = in (n_rows, W.cols) W^T (+ bias when not empty); n_rows default: all tokens.
void linear(Forward& f, const Matrix& W, const float* in, float* out, const std::vector<float>& bias = {},
            int64_t n_rows = -1);
// linear() of the same input (all tokens) through a few matrices (q, k, v; gate, up): one pass
// over the pool for all of them when they are packed; the same numbers either way.
struct LinearOut {
    const Matrix& W;
    float* out;
    const std::vector<float>* bias;  // nullptr: none
};
void linear_many(Forward& f, const float* in, std::initializer_list<LinearOut> outs);
// Rotates the first n_rot dims of each head of x (n_tokens, n_heads, head_dim) in place.
void rope(Forward& f, float* x, int64_t n_heads, const RopeTable& table, RopeLayout layout);
// Stores f.k / f.v of the chunk in layer `il` of the cache, then f.attn = softmax(q k^T * scale) v over
// the cached positions each token sees (causal; with window > 0 only the last `window` positions).
void attention(Forward& f, int64_t il, int64_t window);
// x += y, rows of `width`.
void add(Forward& f, float* x, const float* y, int64_t width);
// f.gate = silu(f.gate) * f.up (SwiGLU) / gelu_tanh(f.gate) * f.up (GeGLU), (n_tokens, n_ff).
void swiglu(Forward& f);
void geglu(Forward& f);
// Final norm and output head for tokens [out_first, n_tokens) into f.logits; tanh soft-capping when
// the model has final_logit_softcapping.
void output(Forward& f);

}  // namespace edgellm
