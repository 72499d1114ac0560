// qwen2: llama's block with q/k/v biases and NeoX rope (rotating the two halves of each head).
//   x = embed(tokens)
//   per block: x += wo . attn(rope(wq . norm(x) + bq), rope(wk . norm(x) + bk), wv . norm(x) + bv)
//              x += down(silu(gate . norm(x)) * (up . norm(x)))
//   logits = output . norm(x)     (output tied to token_embd when absent)
#include "model/arch.h"

namespace edgellm::models {

namespace {

void load(const TensorLoader& t, HParams& hp, Weights& w) {
    load_weights(t, hp, BlockSpec{/*qkv_bias=*/true, Need::Required, /*qk_norm=*/false, /*post_norms=*/false}, w);
}

void forward(Forward& f) {
    const HParams& hp = f.hp;
    embed(f);
    for (int64_t il = 0; il < hp.n_layer; ++il) {
        const Layer& L = f.w.layers[size_t(il)];
        // attention
        rms_norm(f, f.x, L.attn_norm, f.xn);
        linear_many(f, f.xn, {{L.wq, f.q, &L.bq}, {L.wk, f.k, &L.bk}, {L.wv, f.v, &L.bv}});
        rope(f, f.q, hp.n_head, *f.rope, RopeLayout::NeoX);
        rope(f, f.k, hp.n_head_kv, *f.rope, RopeLayout::NeoX);
        attention(f, il, /*window=*/0);
        linear(f, L.wo, f.attn, f.tmp);
        add(f, f.x, f.tmp, hp.n_embd);
        // feed-forward (SwiGLU)
        rms_norm(f, f.x, L.ffn_norm, f.xn);
        linear_many(f, f.xn, {{L.ffn_gate, f.gate, nullptr}, {L.ffn_up, f.up, nullptr}});
        swiglu(f);
        linear(f, L.ffn_down, f.gate, f.tmp);
        add(f, f.x, f.tmp, hp.n_embd);
    }
    output(f);
}

}  // namespace

const Arch& qwen2() {
    static const Arch arch{"qwen2", load, forward};
    return arch;
}

}  // namespace edgellm::models
