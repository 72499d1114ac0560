// gemma3 (text): QK-norm, NeoX rope, GeGLU, norms after each sub-block, scaled embeddings, and
// sliding-window attention on every layer except each 6th. Norm weights already hold the +1 of
// Gemma's x * (1 + w) (the converter adds it).
//   x = embed(tokens) * sqrt(n_embd)
//   per block: q = rope(qnorm(wq . norm(x))), k = rope(knorm(wk . norm(x))), v = wv . norm(x)
//              x += post_attn_norm(wo . attn(q, k, v))            (window n_swa on local layers)
//              x += post_ffn_norm(down(gelu_tanh(gate . norm(x)) * (up . norm(x))))
//   logits = output . norm(x)                                       (output tied to token_embd)
// As llama.cpp runs it: local layers rotate with base freq_base_swa (10000 when absent) and no
// scaling; attention scale 1/sqrt(head_dim), except 1/sqrt(n_embd / n_head) for the 62-layer model.
#include <cmath>

#include "gguf/gguf.h"
#include "model/arch.h"

namespace edgellm::models {

namespace {

constexpr int64_t kSwaPattern = 6;  // layer i is global when (i + 1) % 6 == 0

void load(const TensorLoader& t, HParams& hp, Weights& w) {
    load_weights(t, hp, BlockSpec{/*qkv_bias=*/false, Need::Optional, /*qk_norm=*/true, /*post_norms=*/true}, w);
    if (hp.n_layer == 62) hp.attn_scale = 1.0f / std::sqrt(float(hp.n_embd / hp.n_head));
    hp.rope_swa = RopeParams{};
    hp.rope_swa.freq_base = 10000.0f;
    const std::string key = "gemma3.rope.freq_base_swa";
    if (t.file().find(key)) {
        const float base = t.file().get_f32(key);
        if (!std::isfinite(base) || base <= 1.0f)
            throw gguf::Error(t.file().path() + ": key '" + key + "': " + std::to_string(base) + " is not above 1");
        hp.rope_swa.freq_base = base;
    }
    for (int64_t i = 0; i < hp.n_layer; ++i) w.layers[size_t(i)].swa = hp.n_swa > 0 && (i + 1) % kSwaPattern != 0;
}

void forward(Forward& f) {
    const HParams& hp = f.hp;
    embed(f, std::sqrt(float(hp.n_embd)));
    for (int64_t il = 0; il < hp.n_layer; ++il) {
        const Layer& L = f.w.layers[size_t(il)];
        const RopeTable& rope_il = L.swa ? *f.rope_swa : *f.rope;
        // attention
        rms_norm(f, f.x, L.attn_norm, f.xn);
        linear_many(f, f.xn, {{L.wq, f.q, nullptr}, {L.wk, f.k, nullptr}, {L.wv, f.v, nullptr}});
        rms_norm_heads(f, f.q, hp.n_head, L.q_norm);
        rms_norm_heads(f, f.k, hp.n_head_kv, L.k_norm);
        rope(f, f.q, hp.n_head, rope_il, RopeLayout::NeoX);
        rope(f, f.k, hp.n_head_kv, rope_il, RopeLayout::NeoX);
        attention(f, il, L.swa ? hp.n_swa : 0);
        linear(f, L.wo, f.attn, f.tmp);
        rms_norm(f, f.tmp, L.post_attn_norm, f.tmp);
        add(f, f.x, f.tmp, hp.n_embd);
        // feed-forward (GeGLU)
        rms_norm(f, f.x, L.ffn_norm, f.xn);
        linear_many(f, f.xn, {{L.ffn_gate, f.gate, nullptr}, {L.ffn_up, f.up, nullptr}});
        geglu(f);
        linear(f, L.ffn_down, f.gate, f.tmp);
        rms_norm(f, f.tmp, L.post_ffn_norm, f.tmp);
        add(f, f.x, f.tmp, hp.n_embd);
    }
    output(f);
}

}  // namespace

const Arch& gemma3() {
    static const Arch arch{"gemma3", load, forward};
    return arch;
}

}  // namespace edgellm::models
