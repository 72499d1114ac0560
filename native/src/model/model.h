// A loaded model (hyperparameters + weights viewed in place in the mapped GGUF) and a context
// (KV cache + work buffers) that runs the forward pass. The architectures live one per file in
// native/src/models/; this header is what the C API layer (native/src/api/) uses.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/error.h"

namespace edgellm {

namespace gguf {
class Reader;
}

// Thrown by Context::eval when the tokens do not fit: nothing was evaluated.
struct ContextFull : Error {
    using Error::Error;
};
// Thrown for an architecture, tensor type or feature we do not run (message names file and field).
struct Unsupported : Error {
    using Error::Error;
};

class Model {
public:
    virtual ~Model() = default;
    // Validates the architecture's metadata and tensors (names, types, shapes) of an opened file;
    // throws gguf::Error / Unsupported naming the file and the key or tensor. The reader must
    // outlive the model: weights point into its map.
    static std::unique_ptr<Model> load(const gguf::Reader& file);

    virtual const std::string& arch() const = 0;
    virtual int32_t n_vocab() const = 0;
    virtual int32_t n_ctx_train() const = 0;
    virtual int32_t n_embd() const = 0;
    virtual int32_t n_layer() const = 0;
    virtual uint64_t n_params() const = 0;  // elements of every tensor in the file
    virtual uint64_t size() const = 0;      // bytes of tensor data in the file
};

// Element type of the KV cache: f16 (the default), f32 (exact; twice the memory), q8_0 (about
// half of f16; blocks of 32 int8 values with an f16 scale).
enum class KvType : uint32_t { F16 = 0, F32 = 1, Q8_0 = 2 };

struct ContextParams {
    uint32_t n_ctx = 0;    // 0: the model's training context
    uint32_t n_batch = 512;
    int32_t n_threads = 0;  // 0: all cores
    KvType kv_type = KvType::F16;
};

// Who a saved state belongs to: a context refuses a state file saved for another model (by
// identity: a hash of the model file's header and a sample of every tensor's bytes).
struct StateOwner {
    uint64_t model_id = 0;
    std::string model_path;  // for messages
};

// Thrown when a state file cannot be used (the message names the file and the field): io when it
// cannot be read or written, otherwise its contents are unusable (corrupt, truncated, or saved for
// another model or context shape).
struct StateError : Error {
    StateError(const std::string& message, bool io) : Error(message), io(io) {}
    bool io;
};

class Context {
public:
    virtual ~Context() = default;
    // Throws Error for bad parameters (naming the field) or when the KV cache cannot be allocated.
    static std::unique_ptr<Context> create(const Model& model, const ContextParams& params);

    virtual uint32_t n_ctx() const = 0;
    virtual uint32_t n_past() const = 0;
    // Appends tokens after n_past and runs the forward pass (split into n_batch chunks). Token ids
    // are checked against n_vocab first (Error naming the id and position). ContextFull when
    // n_past + n > n_ctx. On any throw the cache is as before the call.
    virtual void eval(const int32_t* tokens, size_t n, bool logits_all) = 0;
    virtual const float* logits() const = 0;  // n_logit_rows() x n_vocab, row-major; nullptr before eval
    virtual size_t n_logit_rows() const = 0;
    // Logits for some token ids only (a draft model proposing for a target): the ids below n_first
    // and the row groups (ops::kRowGroup ids) holding the ids in `extra`; every other logit of later
    // evaluations is -inf. n_first <= 0 (the default) computes every row again; so does a head
    // that is not packed (float types). Throws Error for an id outside the vocabulary.
    virtual void set_output_rows(int64_t n_first, const std::vector<int32_t>& extra) = 0;
    virtual void truncate(uint32_t n_past) = 0;  // n_past <= this->n_past()
    // Brings the cache to exactly tokens[0, n): keeps the longest cached prefix (at most n - 1
    // tokens, so that the last one is evaluated and its logits are there) and evaluates the rest.
    // Returns the count kept. ContextFull (the cache untouched) when n > n_ctx.
    virtual size_t prefill(const int32_t* tokens, size_t n) = 0;

    // The tokens in the cache, in order (n_past of them).
    virtual const std::vector<int32_t>& tokens() const = 0;
    // Tokens run through the forward pass since the context was made (cache reuse shows here).
    virtual uint64_t n_evaluated() const = 0;
    virtual size_t kv_bytes() const = 0;  // keys and values, every layer and position
    virtual KvType kv_type() const = 0;

    // Writes the cached tokens, their keys and values and the last logits row to `path` (a
    // temporary file renamed into place: never a partial file). Throws StateError.
    virtual void save_state(const std::string& path, const StateOwner& owner) const = 0;
    // Replaces the cache with a saved one. Everything is checked (format, checksum, model identity,
    // n_ctx, KV type and shape) before the cache is touched: on any throw (StateError) it is as before.
    virtual void load_state(const std::string& path, const StateOwner& owner) = 0;
};

}  // namespace edgellm
