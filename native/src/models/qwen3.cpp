// qwen3: llama's block with per-head RMS norms on Q and K before NeoX rope (QK-norm), no biases.
//   x = embed(tokens)
//   per block: q = rope(qnorm(wq . norm(x))), k = rope(knorm(wk . norm(x))), v = wv . norm(x)
//              x += wo . attn(q, k, v)
//              x += down(silu(gate . norm(x)) * (up . norm(x)))
//   logits = output . norm(x)
#include "model/arch.h"

namespace edgellm::models {

namespace {

void load(const TensorLoader& t, HParams& hp, Weights& w) {
    load_weights(t, hp, BlockSpec{/*qkv_bias=*/false, Need::Optional, /*qk_norm=*/true, /*post_norms=*/false}, w);
}

void forward(Forward& f) {
    const HParams& hp = f.hp;
    embed(f);
    for (int64_t il = 0; il < hp.n_layer; ++il) {
        const Layer& L = f.w.layers[size_t(il)];
        // attention
        rms_norm(f, f.x, L.attn_norm, f.xn);
        linear_many(f, f.xn, {{L.wq, f.q, nullptr}, {L.wk, f.k, nullptr}, {L.wv, f.v, nullptr}});
        rms_norm_heads(f, f.q, hp.n_head, L.q_norm);
        rms_norm_heads(f, f.k, hp.n_head_kv, L.k_norm);
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

const Arch& qwen3() {
    static const Arch arch{"qwen3", load, forward};
    return arch;
}

}  // namespace edgellm::models
