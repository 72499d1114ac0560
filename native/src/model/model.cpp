// Model::load: the architecture table, then hyperparameters and weights.
#include <memory>
#include <string>

#include "gguf/gguf.h"
#include "gguf/names.h"
#include "model/arch.h"

namespace edgellm {

namespace {

const Arch* const* arch_table() {
    static const Arch* const table[] = {&models::llama(), &models::qwen2(), &models::qwen3(), &models::gemma3(),
                                        nullptr};
    return table;
}

}  // namespace

std::unique_ptr<Model> Model::load(const gguf::Reader& file) {
    const gguf::KV* kv = file.find("general.architecture");
    if (!kv) throw gguf::Error(file.path() + ": key 'general.architecture': missing");
    if (kv->type != gguf::ValueType::STRING)
        throw gguf::Error(file.path() + ": key 'general.architecture': type is " +
                          gguf::value_type_name(uint32_t(kv->type)) + ", expected string");
    const std::string name(reinterpret_cast<const char*>(kv->data), size_t(kv->nbytes));
    const Arch* arch = nullptr;
    std::string known;
    for (const Arch* const* a = arch_table(); *a; ++a) {
        if (name == (*a)->name) arch = *a;
        known += std::string(known.empty() ? "" : ", ") + (*a)->name;
    }
    if (!arch)
        throw Unsupported(file.path() + ": key 'general.architecture': " + gguf::quote(name) +
                          " is not supported (supported: " + known + ")");

    HParams hp = read_hparams(file, name);
    Weights w;
    arch->load(TensorLoader(file), hp, w);
    uint64_t n_params = 0, size = 0;
    for (const gguf::TensorInfo& t : file.tensors()) {
        n_params += uint64_t(t.n_elements());
        size += t.nbytes;
    }
    return std::make_unique<ModelImpl>(*arch, std::move(hp), std::move(w), n_params, size);
}

}  // namespace edgellm
