// Saved sessions: a context's tokens, KV cache and last logits in one file.
//
// Layout (little-endian):
//   "EDGLSTAT" u32 version
//   u64 model_id, u32 n_vocab, n_layer, n_head_kv, head_dim, n_ctx, kv_type, n_tokens, n_logits
//   i32 tokens[n_tokens]
//   f32 logits[n_logits]                          (0 or n_vocab: the last evaluated row)
//   for each layer, for each position < n_tokens: keys (row_bytes), values (row_bytes)
//   u64 checksum of every byte before it
// The file is written to a temporary name and renamed into place; reading checks the size the
// header implies and the checksum before anything is used.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "model/kv_cache.h"

namespace edgellm {

struct StateShape {
    uint64_t model_id = 0;
    uint32_t n_vocab = 0, n_layer = 0, n_head_kv = 0, head_dim = 0, n_ctx = 0, kv_type = 0;
};

// logits: n_vocab floats or nullptr. Throws StateError naming the path.
void write_state(const std::string& path, const StateShape& shape, const KvCache& cache,
                 const std::vector<int32_t>& tokens, const float* logits);

struct LoadedState {
    std::vector<int32_t> tokens;
    std::vector<float> logits;  // empty or n_vocab
    std::vector<uint8_t> kv;    // n_layer x n_tokens x (keys, values) rows of row_bytes
};

// Reads and checks a state file against the shape this context has (model, n_ctx, KV type and
// dimensions). model_path names the model in mismatch messages. Throws StateError.
LoadedState read_state(const std::string& path, const StateShape& want, size_t row_bytes,
                       const std::string& model_path);

// A 64-bit hash of bytes (word at a time; for integrity checks and model identity, not security).
uint64_t hash_bytes(const void* data, size_t n, uint64_t seed = 0);

}  // namespace edgellm
