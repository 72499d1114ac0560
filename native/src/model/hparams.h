// Hyperparameters of a model, read from the `<arch>.*` keys of a GGUF file and validated.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace edgellm {

namespace gguf {
class Reader;
}

enum class RopeScaling { None, Linear, Yarn };

// How positions become rotation angles for one group of layers. The angle of pair i at position p is
// p * inv_freq[i], inv_freq[i] = freq_base^(-2i / n_rot), changed by the scaling; cos/sin are then
// multiplied by mscale (yarn).
struct RopeParams {
    float freq_base = 10000.0f;
    RopeScaling scaling = RopeScaling::None;
    float factor = 1.0f;          // context extension factor (linear: positions / factor)
    uint32_t n_ctx_orig = 0;      // yarn: the training context before extension
    float yarn_ext_factor = 1.0f;   // yarn: weight of the extrapolation ramp
    float yarn_attn_factor = 1.0f;  // yarn: extra cos/sin scale (times 1 + 0.1 ln(factor))
    float yarn_beta_fast = 32.0f;
    float yarn_beta_slow = 1.0f;
    bool use_freq_factors = false;  // llama3 scaling: divide inv_freq[i] by rope_freqs[i]
};

struct HParams {
    std::string arch;
    int64_t n_vocab = 0;      // rows of token_embd
    int64_t n_ctx_train = 0;  // context_length
    int64_t n_embd = 0;       // embedding_length
    int64_t n_layer = 0;      // block_count
    int64_t n_ff = 0;         // feed_forward_length
    int64_t n_head = 0;       // attention.head_count
    int64_t n_head_kv = 0;    // attention.head_count_kv (default n_head)
    int64_t head_dim = 0;     // attention.key_length = value_length (default n_embd / n_head)
    int64_t n_rot = 0;        // rope.dimension_count (default head_dim): leading dims of a head rotated
    float norm_eps = 1e-5f;   // attention.layer_norm_rms_epsilon
    float attn_scale = 0.0f;  // q.k multiplier: 1/sqrt(head_dim) unless the architecture says otherwise
    int64_t n_swa = 0;        // attention.sliding_window (0: none); which layers use it is per arch
    float final_logit_softcap = 0.0f;  // final_logit_softcapping (0: none)

    RopeParams rope;      // full-attention layers
    RopeParams rope_swa;  // sliding-window layers (gemma3: base freq_base_swa, no scaling)

    int64_t n_embd_q() const { return n_head * head_dim; }
    int64_t n_embd_kv() const { return n_head_kv * head_dim; }
};

// Reads and validates the hyperparameters of architecture `arch` (general.architecture). Throws
// gguf::Error "<path>: key '<arch>.x': <what>" for missing, mistyped or inconsistent values and
// Unsupported for a rope scaling type we do not run. n_vocab is filled in by the loader (it comes
// from the token_embd shape).
HParams read_hparams(const gguf::Reader& file, const std::string& arch);

}  // namespace edgellm
