// The weights of a model: the matrices moved at load into one block of huge-page memory, quantized
// ones repacked for the integer kernels (ops::pack), float ones copied (the mapped pages they came
// from are then released), and the small vectors (norms, biases, rope factors) dequantized to f32. Shapes are given as
// (rows, cols) in row-major terms: a GGUF tensor with ne = [cols, rows].
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model/hparams.h"
#include "ops/matmul.h"
#include "quant/quant.h"

namespace edgellm {

namespace gguf {
class Reader;
}

// rows x cols elements of `type`, quant::row_size(type, cols) bytes per row, inside the map; once
// pack_weights() has run, quantized types have their packed copy and float types point into `copy`.
struct Matrix {
    const uint8_t* data = nullptr;
    std::shared_ptr<const ops::Packed> packed;
    std::shared_ptr<const uint8_t> copy;  // float types after pack_weights(): the memory data lies in
    quant::Type type = quant::Type::F32;
    int64_t rows = 0;
    int64_t cols = 0;
    explicit operator bool() const { return data != nullptr; }
};

// One transformer block. Vectors left empty are absent (optional for the architecture).
struct Layer {
    std::vector<float> attn_norm;       // (n_embd)
    Matrix wq;                          // (n_head * head_dim, n_embd)
    Matrix wk;                          // (n_head_kv * head_dim, n_embd)
    Matrix wv;                          // (n_head_kv * head_dim, n_embd)
    std::vector<float> bq, bk, bv;      // (n_head * head_dim), (n_head_kv * head_dim) x 2: qwen2
    std::vector<float> q_norm, k_norm;  // (head_dim): per-head RMS norms, qwen3 / gemma3
    Matrix wo;                          // (n_embd, n_head * head_dim)
    std::vector<float> post_attn_norm;  // (n_embd): gemma3
    std::vector<float> ffn_norm;        // (n_embd)
    Matrix ffn_gate;                    // (n_ff, n_embd)
    Matrix ffn_up;                      // (n_ff, n_embd)
    Matrix ffn_down;                    // (n_embd, n_ff)
    std::vector<float> post_ffn_norm;   // (n_embd): gemma3
    bool swa = false;                   // attends over the last n_swa positions only
};

struct Weights {
    Matrix token_embd;                // (n_vocab, n_embd)
    std::vector<float> output_norm;   // (n_embd)
    Matrix output;                    // (n_vocab, n_embd); token_embd itself when tied
    std::vector<float> rope_freqs;    // (n_rot / 2): llama3 rope scaling divisors; empty when absent
    std::vector<Layer> layers;
};

enum class Need { Required, Optional };

// Looks tensors up by name and checks each against the shape the hyperparameters give. Every
// failure is a gguf::Error (or Unsupported for a type we do not run) naming the file and tensor.
class TensorLoader {
public:
    explicit TensorLoader(const gguf::Reader& file) : file_(file) {}

    // A weight matrix of `rows` x `cols`; `why` names the hyperparameters behind the shape.
    Matrix matrix(const std::string& name, int64_t rows, int64_t cols, const char* why,
                  Need need = Need::Required) const;
    // A vector of n values (f32, f16 or bf16 in the file), returned as f32; empty when optional and absent.
    std::vector<float> vector(const std::string& name, int64_t n, const char* why,
                              Need need = Need::Required) const;

    static std::string blk(int64_t layer, const char* part) {
        return "blk." + std::to_string(layer) + "." + part;
    }

    const gguf::Reader& file() const { return file_; }

private:
    const gguf::Reader& file_;
};

// What a llama-like block holds beyond attn_norm, wq/wk/wv/wo, ffn_norm and the three FFN matrices.
struct BlockSpec {
    bool qkv_bias = false;        // attn_q/k/v.bias
    Need qkv_bias_need = Need::Optional;
    bool qk_norm = false;         // attn_q_norm / attn_k_norm (required when set)
    bool post_norms = false;      // post_attention_norm / post_ffw_norm (required when set)
};

// token_embd, output_norm, output (optional: tied to token_embd), rope_freqs (optional) and every
// block per `spec`. hp.n_vocab is set from token_embd and checked against tokenizer.ggml.tokens.
void load_weights(const TensorLoader& t, HParams& hp, const BlockSpec& spec, Weights& w);

}  // namespace edgellm
