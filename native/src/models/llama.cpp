// llama: Llama 1/2/3, Mistral-style, SmolLM, TinyLlama.
//   x = embed(tokens)
//   per block: x += wo . attn(rope(wq . norm(x)), rope(wk . norm(x)), wv . norm(x))      (rope: adjacent pairs)
//              x += down(silu(gate . norm(x)) * (up . norm(x)))
//   logits = output . norm(x)
// Optional: q/k/v biases (some llama-arch files carry them), rope_freqs (llama3 scaling).
#include "model/arch.h"

namespace edgellm::models {

namespace {

void load(const TensorLoader& t, HParams& hp, Weights& w) {
    load_weights(t, hp, BlockSpec{/*qkv_bias=*/true, Need::Optional, /*qk_norm=*/false, /*post_norms=*/false}, w);
}

void forward(Forward& f) {
    const HParams& hp = f.hp;
    embed(f);
    for (int64_t il = 0; il < hp.n_layer; ++il) {
        const Layer& L = f.w.layers[size_t(il)];
        // attention
        rms_norm(f, f.x, L.attn_norm, f.xn);
        linear_many(f, f.xn, {{L.wq, f.q, &L.bq}, {L.wk, f.k, &L.bk}, {L.wv, f.v, &L.bv}});
        rope(f, f.q, hp.n_head, *f.rope, RopeLayout::Normal);
        rope(f, f.k, hp.n_head_kv, *f.rope, RopeLayout::Normal);
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

const Arch& llama() {
    static const Arch arch{"llama", load, forward};
    return arch;
}

}  // namespace edgellm::models
