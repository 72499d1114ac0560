// TensorLoader and load_weights: tensor lookup with shape, type and alignment checks, then the
// weight matrices moved into huge-page memory (quantized ones repacked for the integer kernels).
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>

#include "gguf/gguf.h"
#include "gguf/names.h"
#include "model/model.h"
#include "model/weights.h"
#include "common/thread_pool.h"
#include "ops/matmul.h"

#if defined(__unix__) || defined(__APPLE__)
#include <sys/mman.h>
#include <unistd.h>
#endif

namespace edgellm {

namespace {

const char* type_name(quant::Type type) {
    const quant::Traits* t = quant::traits(static_cast<uint32_t>(type));
    return t ? t->name : "unknown";
}

std::string shape_str(const gguf::TensorInfo& t) {
    std::string s = "[";
    for (uint32_t i = 0; i < t.n_dims; ++i) s += (i ? ", " : "") + std::to_string(t.ne[i]);
    return s + "]";
}

// Drops the mapped pages of [p, p + n) from this process (whole pages inside the range): they are
// not read again once packed, and a read would map them back from the file.
void release_pages(const uint8_t* p, size_t n) {
#if defined(__unix__) || defined(__APPLE__)
    const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
    const uintptr_t lo = (reinterpret_cast<uintptr_t>(p) + page - 1) / page * page;
    const uintptr_t hi = (reinterpret_cast<uintptr_t>(p) + n) / page * page;
    if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_DONTNEED);
#else
    (void)p;
    (void)n;
#endif
}

// Every weight matrix moves into one block of huge-page memory (ops::huge_page_memory): the quantized
// ones repacked for the integer kernels (the work split over the cores), the float ones copied. Read
// in place from the file's map they would run on 4 KiB pages, a TLB miss every 4 KiB of a matrix
// (SmolLM2 f16 decode: 150 -> 159 tok/s). The mapped pages they came from are then released.
void pack_weights(Weights& w) {
    ThreadPool pool(0);
    const bool tied = w.output.data == w.token_embd.data;
    std::vector<Matrix*> all;
    auto add = [&](Matrix& m) {
        if (m && !m.packed && !m.copy) all.push_back(&m);
    };
    add(w.output);  // the embedding table itself when tied: get_row() reads only its rows in use
    for (Layer& L : w.layers)
        for (Matrix* m : {&L.wq, &L.wk, &L.wv, &L.wo, &L.ffn_gate, &L.ffn_up, &L.ffn_down}) add(*m);
    auto raw_bytes = [](const Matrix& m) { return quant::row_size(m.type, m.cols) * static_cast<size_t>(m.rows); };
    auto room = [&](const Matrix& m) {  // bytes of m in the block, rounded up to keep the next one 64-byte aligned
        const size_t n = ops::packed_bytes(m.type, m.rows, m.cols);
        return ((n ? n : raw_bytes(m)) + 63) / 64 * 64;
    };
    size_t total = 0;
    for (const Matrix* m : all) total += room(*m);
    std::shared_ptr<uint8_t> block = ops::huge_page_memory(total);
    size_t at = 0;
    for (Matrix* m : all) {
        const uint8_t* src = m->data;
        const size_t n = raw_bytes(*m);
        if (std::shared_ptr<const ops::Packed> p = ops::pack(src, m->type, m->rows, m->cols, &pool, block, at)) {
            m->packed = std::move(p);
        } else {
            uint8_t* dst = block.get() + at;
            const size_t piece = size_t(1) << 20;
            pool.run(static_cast<int64_t>((n + piece - 1) / piece), [&](int64_t t, int) {
                const size_t a = static_cast<size_t>(t) * piece;
                std::memcpy(dst + a, src + a, std::min(piece, n - a));
            });
            m->data = dst;
            m->copy = block;
        }
        release_pages(src, n);
        at += room(*m);
    }
    if (tied && w.output.copy) {  // token_embd reads its rows from the copy too
        w.token_embd.data = w.output.data;
        w.token_embd.copy = w.output.copy;
    }
}

}  // namespace

Matrix TensorLoader::matrix(const std::string& name, int64_t rows, int64_t cols, const char* why,
                            Need need) const {
    const gguf::TensorInfo* t = file_.find_tensor(name);
    const std::string where = file_.path() + ": tensor " + gguf::quote(name) + ": ";
    if (!t) {
        if (need == Need::Optional) return {};
        throw gguf::Error(where + "missing");
    }
    if (t->ne[0] != cols || t->ne[1] != rows || t->ne[2] != 1 || t->ne[3] != 1)
        throw gguf::Error(where + "shape " + shape_str(*t) + " does not match the hyperparameters: expected [" +
                          std::to_string(cols) + ", " + std::to_string(rows) + "] (" + why + ")");
    if (!ops::supports(t->type))
        throw Unsupported(where + "type " + type_name(t->type) + " is not supported for weight matrices");
    const quant::Traits* tr = quant::traits(static_cast<uint32_t>(t->type));
    if (cols % tr->block_size != 0)
        throw gguf::Error(where + "row length " + std::to_string(cols) + " is not a multiple of the " +
                          tr->name + " block size " + std::to_string(tr->block_size));
    const uint8_t* data = file_.tensor_data(*t);
    // plain float types are read as arrays of their element: the start must be aligned for them
    const size_t align = t->type == quant::Type::F32 ? 4 : (tr->block_size == 1 ? 2 : 1);
    if (reinterpret_cast<uintptr_t>(data) % align != 0)
        throw gguf::Error(where + "data is not " + std::to_string(align) + "-byte aligned in the file");
    return Matrix{data, nullptr, nullptr, t->type, rows, cols};
}

std::vector<float> TensorLoader::vector(const std::string& name, int64_t n, const char* why, Need need) const {
    const gguf::TensorInfo* t = file_.find_tensor(name);
    const std::string where = file_.path() + ": tensor " + gguf::quote(name) + ": ";
    if (!t) {
        if (need == Need::Optional) return {};
        throw gguf::Error(where + "missing");
    }
    if (t->ne[0] != n || t->ne[1] != 1 || t->ne[2] != 1 || t->ne[3] != 1)
        throw gguf::Error(where + "shape " + shape_str(*t) + " does not match the hyperparameters: expected [" +
                          std::to_string(n) + "] (" + why + ")");
    if (t->type != quant::Type::F32 && t->type != quant::Type::F16 && t->type != quant::Type::BF16)
        throw Unsupported(where + "type " + type_name(t->type) + " is not supported for vectors (f32, f16, bf16)");
    std::vector<float> out(static_cast<size_t>(n));
    quant::dequantize(t->type, file_.tensor_data(*t), out.data(), 1, n, 1);  // copies: no alignment needed
    return out;
}

void load_weights(const TensorLoader& t, HParams& hp, const BlockSpec& spec, Weights& w) {
    const gguf::Reader& file = t.file();
    const int64_t e = hp.n_embd, q = hp.n_embd_q(), kv = hp.n_embd_kv(), ff = hp.n_ff, hd = hp.head_dim;

    // The vocabulary size comes from the embedding matrix; the tokenizer must agree with it.
    const gguf::TensorInfo* te = file.find_tensor("token_embd.weight");
    if (!te) throw gguf::Error(file.path() + ": tensor 'token_embd.weight': missing");
    if (te->ne[1] < 1 || te->ne[1] > std::numeric_limits<int32_t>::max())
        throw gguf::Error(file.path() + ": tensor 'token_embd.weight': " + std::to_string(te->ne[1]) +
                          " rows is not a vocabulary size");
    hp.n_vocab = te->ne[1];
    if (const gguf::KV* tokens = file.find("tokenizer.ggml.tokens")) {
        if (tokens->type == gguf::ValueType::ARRAY && int64_t(tokens->count) != hp.n_vocab)
            throw gguf::Error(file.path() + ": tensor 'token_embd.weight': " + std::to_string(hp.n_vocab) +
                              " rows, but tokenizer.ggml.tokens has " + std::to_string(tokens->count) + " entries");
    }
    const int64_t nv = hp.n_vocab;
    w.token_embd = t.matrix("token_embd.weight", nv, e, "n_vocab, embedding_length");
    w.output_norm = t.vector("output_norm.weight", e, "embedding_length");
    w.output = t.matrix("output.weight", nv, e, "n_vocab, embedding_length", Need::Optional);
    if (!w.output) w.output = w.token_embd;  // tied embeddings
    w.rope_freqs = t.vector("rope_freqs.weight", hp.n_rot / 2, "rope.dimension_count / 2", Need::Optional);
    hp.rope.use_freq_factors = !w.rope_freqs.empty();

    const char* why_q = "embedding_length, head_count x key_length";
    const char* why_kv = "embedding_length, head_count_kv x key_length";
    w.layers.resize(static_cast<size_t>(hp.n_layer));
    for (int64_t i = 0; i < hp.n_layer; ++i) {
        Layer& L = w.layers[static_cast<size_t>(i)];
        auto blk = [i](const char* part) { return TensorLoader::blk(i, part); };
        L.attn_norm = t.vector(blk("attn_norm.weight"), e, "embedding_length");
        L.wq = t.matrix(blk("attn_q.weight"), q, e, why_q);
        L.wk = t.matrix(blk("attn_k.weight"), kv, e, why_kv);
        L.wv = t.matrix(blk("attn_v.weight"), kv, e, why_kv);
        if (spec.qkv_bias) {
            L.bq = t.vector(blk("attn_q.bias"), q, "head_count x key_length", spec.qkv_bias_need);
            L.bk = t.vector(blk("attn_k.bias"), kv, "head_count_kv x key_length", spec.qkv_bias_need);
            L.bv = t.vector(blk("attn_v.bias"), kv, "head_count_kv x key_length", spec.qkv_bias_need);
        }
        if (spec.qk_norm) {
            L.q_norm = t.vector(blk("attn_q_norm.weight"), hd, "key_length");
            L.k_norm = t.vector(blk("attn_k_norm.weight"), hd, "key_length");
        }
        L.wo = t.matrix(blk("attn_output.weight"), e, q, "head_count x key_length, embedding_length");
        if (spec.post_norms) L.post_attn_norm = t.vector(blk("post_attention_norm.weight"), e, "embedding_length");
        L.ffn_norm = t.vector(blk("ffn_norm.weight"), e, "embedding_length");
        L.ffn_gate = t.matrix(blk("ffn_gate.weight"), ff, e, "embedding_length, feed_forward_length");
        L.ffn_up = t.matrix(blk("ffn_up.weight"), ff, e, "embedding_length, feed_forward_length");
        L.ffn_down = t.matrix(blk("ffn_down.weight"), e, ff, "feed_forward_length, embedding_length");
        if (spec.post_norms) L.post_ffn_norm = t.vector(blk("post_ffw_norm.weight"), e, "embedding_length");
    }
    pack_weights(w);
}

}  // namespace edgellm
