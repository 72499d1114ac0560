// An architecture: how its weights are found (load) and the steps of its forward pass (forward).
// One per file under native/src/models/; the table of known ones is in model.cpp.
#pragma once

#include <string>

#include "model/hparams.h"
#include "model/model.h"
#include "model/ops.h"
#include "model/weights.h"

namespace edgellm {

struct Arch {
    const char* name;  // general.architecture
    // Adjusts the hyperparameters the architecture fixes (attention scale, sliding-window layers,
    // their rope) and loads the weights; throws naming the file and key or tensor.
    void (*load)(const TensorLoader& t, HParams& hp, Weights& w);
    // Runs the blocks over f.n_tokens tokens and fills f.logits (via output()).
    void (*forward)(Forward& f);
};

namespace models {
const Arch& llama();
const Arch& qwen2();
const Arch& qwen3();
const Arch& gemma3();
}  // namespace models

// A loaded model: hyperparameters, weights viewed in the map, and its architecture.
class ModelImpl : public Model {
public:
    ModelImpl(const Arch& arch, HParams hp, Weights w, uint64_t n_params, uint64_t size)
        : arch_(arch), hp_(std::move(hp)), w_(std::move(w)), n_params_(n_params), size_(size) {}

    const std::string& arch() const override { return hp_.arch; }
    int32_t n_vocab() const override { return int32_t(hp_.n_vocab); }
    int32_t n_ctx_train() const override { return int32_t(hp_.n_ctx_train); }
    int32_t n_embd() const override { return int32_t(hp_.n_embd); }
    int32_t n_layer() const override { return int32_t(hp_.n_layer); }
    uint64_t n_params() const override { return n_params_; }
    uint64_t size() const override { return size_; }

    const Arch& spec() const { return arch_; }
    const HParams& hparams() const { return hp_; }
    const Weights& weights() const { return w_; }

private:
    const Arch& arch_;
    HParams hp_;
    Weights w_;
    uint64_t n_params_, size_;
};

}  // namespace edgellm
