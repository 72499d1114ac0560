// The C API (native/include/edgellm.h) over the C++ core: handles own their C++ objects, every
// entry point catches everything and turns it into a status plus a per-thread message.
#include "edgellm.h"

#include <sys/stat.h>

#include <cerrno>
#include <algorithm>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <vector>

#include "common/error.h"
#include "gguf/gguf.h"
#include "model/model.h"
#include "ops/matmul_kernels.h"
#include "model/state.h"
#include "sampling/sampler.h"
#include "spec/speculator.h"
#include "tokenizer/tokenizer.h"

using namespace edgellm;

struct edgellm_model {
    std::unique_ptr<gguf::Reader> file;
    std::unique_ptr<Tokenizer> tokenizer;
    std::unique_ptr<Model> model;  // nullptr when loaded vocab_only
    std::string arch;
    uint64_t n_params = 0;
    uint64_t size = 0;
    // The model's identity for saved states, computed on first use (model_identity).
    mutable std::once_flag identity_once;
    mutable uint64_t identity = 0;
};

struct edgellm_context {
    const edgellm_model* model;
    std::unique_ptr<Context> ctx;
};

struct edgellm_speculator {
    edgellm_context* target;
    std::unique_ptr<Speculator> spec;
    std::vector<int32_t> out;
};

struct edgellm_sampler {
    const edgellm_model* model;
    Sampler sampler;
};

struct edgellm_detokenizer {
    const edgellm_model* model;
    bool special;
    Utf8Stream stream;
};

namespace {

thread_local std::string g_last_error;

edgellm_status fail(edgellm_status status, const std::string& message) {
    g_last_error = message;
    return status;
}

// Runs fn, mapping exceptions to statuses. `generic` is the status of a plain edgellm::Error in
// this call (a malformed file when loading, a bad argument elsewhere).
template <typename Fn>
edgellm_status guarded(edgellm_status generic, Fn&& fn) {
    try {
        g_last_error.clear();
        return fn();
    } catch (const ContextFull& e) {
        return fail(EDGELLM_STATUS_CONTEXT_FULL, e.what());
    } catch (const Unsupported& e) {
        return fail(EDGELLM_STATUS_UNSUPPORTED, e.what());
    } catch (const gguf::Error& e) {
        return fail(EDGELLM_STATUS_INVALID_FILE, e.what());
    } catch (const StateError& e) {
        return fail(e.io ? EDGELLM_STATUS_IO : EDGELLM_STATUS_INVALID_FILE, e.what());
    } catch (const Error& e) {
        return fail(generic, e.what());
    } catch (const std::bad_alloc&) {
        return fail(EDGELLM_STATUS_OUT_OF_MEMORY, "out of memory");
    } catch (const std::exception& e) {
        return fail(EDGELLM_STATUS_INTERNAL, std::string("internal error: ") + e.what());
    } catch (...) {
        return fail(EDGELLM_STATUS_INTERNAL, "internal error");
    }
}

edgellm_status null_arg(const char* fn, const char* name) {
    return fail(EDGELLM_STATUS_INVALID_ARGUMENT, std::string(fn) + ": " + name + " is NULL");
}

// Copies bytes into a caller's buffer under the capacity convention of edgellm.h.
edgellm_status copy_out(const std::string& s, char* buf, size_t buf_len, size_t* n_out) {
    if (n_out) *n_out = s.size();
    if (s.size() > buf_len) return fail(EDGELLM_STATUS_BUFFER_TOO_SMALL, "buffer too small");
    if (!s.empty()) std::memcpy(buf, s.data(), s.size());
    return EDGELLM_STATUS_OK;
}

// Runs a step of the detokenizer's stream on a copy and keeps the result only when the text fits
// the caller's buffer, so BUFFER_TOO_SMALL consumes nothing and the caller can retry the same call.
template <typename Step>
edgellm_status stream_out(edgellm_detokenizer* d, Step&& step, char* buf, size_t buf_len, size_t* n_out) {
    Utf8Stream probe = d->stream;
    const edgellm_status st = copy_out(step(probe), buf, buf_len, n_out);
    if (st == EDGELLM_STATUS_OK) d->stream = std::move(probe);
    return st;
}

// A model's identity: a hash of the file's header (metadata and tensor table) and of the first
// 4 KiB of every tensor's data, so files with the same shapes but other weights differ.
uint64_t model_identity(const gguf::Reader& f) {
    uint64_t h = hash_bytes(f.bytes(), size_t(f.data_offset()), f.file_size());
    for (const auto& t : f.tensors())
        h = hash_bytes(f.tensor_data(t), size_t(std::min<uint64_t>(t.nbytes, 4096)), h);
    return h;
}

StateOwner owner_of(const edgellm_model* m) {
    std::call_once(m->identity_once, [m] { m->identity = model_identity(*m->file); });
    return StateOwner{m->identity, m->file->path()};
}

bool token_in_range(const edgellm_model* m, edgellm_token t) {
    return t >= 0 && t < m->tokenizer->n_vocab();
}

edgellm_status bad_token(const edgellm_model* m, edgellm_token t) {
    return fail(EDGELLM_STATUS_INVALID_ARGUMENT, "token id " + std::to_string(t) + " is outside the vocabulary [0, " +
                                                     std::to_string(m->tokenizer->n_vocab()) + ")");
}

}  // namespace

extern "C" {

const char* edgellm_last_error(void) { return g_last_error.c_str(); }

const char* edgellm_status_name(edgellm_status status) {
    switch (status) {
        case EDGELLM_STATUS_OK: return "OK";
        case EDGELLM_STATUS_INVALID_ARGUMENT: return "INVALID_ARGUMENT";
        case EDGELLM_STATUS_IO: return "IO";
        case EDGELLM_STATUS_INVALID_FILE: return "INVALID_FILE";
        case EDGELLM_STATUS_UNSUPPORTED: return "UNSUPPORTED";
        case EDGELLM_STATUS_CONTEXT_FULL: return "CONTEXT_FULL";
        case EDGELLM_STATUS_BUFFER_TOO_SMALL: return "BUFFER_TOO_SMALL";
        case EDGELLM_STATUS_OUT_OF_MEMORY: return "OUT_OF_MEMORY";
        case EDGELLM_STATUS_INTERNAL: return "INTERNAL";
    }
    return "UNKNOWN";
}

const char* edgellm_version(void) { return "0.1.0"; }

const char* edgellm_isa(void) { return ops::detail::isa_name(ops::detail::best_isa()); }

edgellm_status edgellm_set_isa(const char* name) {
    if (!name) return null_arg("edgellm_set_isa", "name");
    return guarded(EDGELLM_STATUS_INVALID_ARGUMENT, [&] {
        using ops::detail::Isa;
        Isa isa;
        if (std::strcmp(name, "auto") == 0) {
            isa = ops::detail::isa_available(Isa::Avx512) ? Isa::Avx512
                  : ops::detail::isa_available(Isa::Avx2) ? Isa::Avx2
                                                          : Isa::Scalar;
        } else {
            isa = ops::detail::isa_from_name(name);
        }
        if (!ops::detail::isa_available(isa))
            throw Unsupported(std::string("kernels ") + name + " cannot run on this CPU");
        ops::detail::set_isa(isa);
        return EDGELLM_STATUS_OK;
    });
}

// ------------------------------------------------------------------ model

edgellm_model_params edgellm_model_default_params(void) {
    edgellm_model_params p;
    p.vocab_only = false;
    return p;
}

edgellm_status edgellm_model_load(const char* path, const edgellm_model_params* params, edgellm_model** out) {
    if (!out) return null_arg("edgellm_model_load", "out");
    *out = nullptr;
    if (!path) return null_arg("edgellm_model_load", "path");
    const edgellm_model_params p = params ? *params : edgellm_model_default_params();
    struct stat st;
    if (::stat(path, &st) != 0)
        return fail(EDGELLM_STATUS_IO, std::string(path) + ": " + std::strerror(errno));
    if (!S_ISREG(st.st_mode)) return fail(EDGELLM_STATUS_IO, std::string(path) + ": not a regular file");
    return guarded(EDGELLM_STATUS_INVALID_FILE, [&] {
        auto m = std::make_unique<edgellm_model>();
        m->file = std::make_unique<gguf::Reader>(path);
        const gguf::Reader& f = *m->file;
        m->arch = std::string(f.get_string("general.architecture"));
        m->tokenizer = Tokenizer::load(f);
        for (const auto& t : f.tensors()) {
            m->n_params += static_cast<uint64_t>(t.n_elements());
            m->size += t.nbytes;
        }
        if (!p.vocab_only) {
            m->model = Model::load(f);
            if (m->model->n_vocab() != m->tokenizer->n_vocab())
                throw gguf::Error(f.path() + ": token_embd.weight: " + std::to_string(m->model->n_vocab()) +
                                  " rows, but tokenizer.ggml.tokens has " +
                                  std::to_string(m->tokenizer->n_vocab()) + " tokens");
        }
        *out = m.release();
        return EDGELLM_STATUS_OK;
    });
}

void edgellm_model_free(edgellm_model* model) { delete model; }

const char* edgellm_model_arch(const edgellm_model* m) { return m ? m->arch.c_str() : ""; }
int32_t edgellm_model_n_vocab(const edgellm_model* m) { return m ? m->tokenizer->n_vocab() : 0; }
int32_t edgellm_model_n_ctx_train(const edgellm_model* m) { return m && m->model ? m->model->n_ctx_train() : 0; }
int32_t edgellm_model_n_embd(const edgellm_model* m) { return m && m->model ? m->model->n_embd() : 0; }
int32_t edgellm_model_n_layer(const edgellm_model* m) { return m && m->model ? m->model->n_layer() : 0; }
uint64_t edgellm_model_n_params(const edgellm_model* m) { return m ? m->n_params : 0; }
uint64_t edgellm_model_size(const edgellm_model* m) { return m ? m->size : 0; }

const char* edgellm_model_meta_string(const edgellm_model* m, const char* key, size_t* len) {
    if (len) *len = 0;
    if (!m || !key) return nullptr;
    const gguf::KV* kv = m->file->find(key);
    if (!kv || kv->type != gguf::ValueType::STRING) return nullptr;
    if (len) *len = static_cast<size_t>(kv->nbytes);
    return reinterpret_cast<const char*>(kv->data);
}

edgellm_token edgellm_model_token_bos(const edgellm_model* m) { return m ? m->tokenizer->bos() : -1; }
edgellm_token edgellm_model_token_eos(const edgellm_model* m) { return m ? m->tokenizer->eos() : -1; }
bool edgellm_model_add_bos(const edgellm_model* m) { return m && m->tokenizer->add_bos(); }
bool edgellm_model_add_eos(const edgellm_model* m) { return m && m->tokenizer->add_eos(); }

bool edgellm_token_is_eog(const edgellm_model* m, edgellm_token t) {
    return m && token_in_range(m, t) && m->tokenizer->is_eog(t);
}

// -------------------------------------------------------------- tokenizer

edgellm_status edgellm_tokenize(const edgellm_model* m, const char* text, size_t text_len, bool add_special,
                                bool parse_special, edgellm_token* tokens, size_t n_max, size_t* n_out) {
    if (!m) return null_arg("edgellm_tokenize", "model");
    if (!text && text_len) return null_arg("edgellm_tokenize", "text");
    if (!tokens && n_max) return null_arg("edgellm_tokenize", "tokens");
    return guarded(EDGELLM_STATUS_INVALID_ARGUMENT, [&] {
        const std::vector<int32_t> ids =
            m->tokenizer->encode(std::string_view(text ? text : "", text_len), add_special, parse_special);
        if (n_out) *n_out = ids.size();
        if (ids.size() > n_max) return fail(EDGELLM_STATUS_BUFFER_TOO_SMALL, "token buffer too small");
        if (!ids.empty()) std::memcpy(tokens, ids.data(), ids.size() * sizeof(int32_t));
        return EDGELLM_STATUS_OK;
    });
}

edgellm_status edgellm_token_to_piece(const edgellm_model* m, edgellm_token t, bool special, char* buf,
                                      size_t buf_len, size_t* n_out) {
    if (!m) return null_arg("edgellm_token_to_piece", "model");
    if (!buf && buf_len) return null_arg("edgellm_token_to_piece", "buf");
    if (!token_in_range(m, t)) return bad_token(m, t);
    return guarded(EDGELLM_STATUS_INVALID_ARGUMENT,
                   [&] { return copy_out(m->tokenizer->piece(t, special), buf, buf_len, n_out); });
}

edgellm_status edgellm_detokenize(const edgellm_model* m, const edgellm_token* tokens, size_t n, bool special,
                                  char* buf, size_t buf_len, size_t* n_out) {
    if (!m) return null_arg("edgellm_detokenize", "model");
    if (!tokens && n) return null_arg("edgellm_detokenize", "tokens");
    if (!buf && buf_len) return null_arg("edgellm_detokenize", "buf");
    for (size_t i = 0; i < n; ++i)
        if (!token_in_range(m, tokens[i])) return bad_token(m, tokens[i]);
    return guarded(EDGELLM_STATUS_INVALID_ARGUMENT, [&] {
        Utf8Stream stream;
        std::string text = stream.push(m->tokenizer->decode(std::vector<int32_t>(tokens, tokens + n), special));
        text += stream.flush();
        return copy_out(text, buf, buf_len, n_out);
    });
}

edgellm_detokenizer* edgellm_detokenizer_init(const edgellm_model* m, bool special) {
    if (!m) return nullptr;
    try {
        return new edgellm_detokenizer{m, special, Utf8Stream()};
    } catch (...) {
        return nullptr;
    }
}

edgellm_status edgellm_detokenizer_push(edgellm_detokenizer* d, edgellm_token t, char* buf, size_t buf_len,
                                        size_t* n_out) {
    if (!d) return null_arg("edgellm_detokenizer_push", "detok");
    if (!buf && buf_len) return null_arg("edgellm_detokenizer_push", "buf");
    if (!token_in_range(d->model, t)) return bad_token(d->model, t);
    return guarded(EDGELLM_STATUS_INVALID_ARGUMENT, [&] {
        const std::string piece = d->model->tokenizer->piece(t, d->special);
        return stream_out(d, [&](Utf8Stream& s) { return s.push(piece); }, buf, buf_len, n_out);
    });
}

edgellm_status edgellm_detokenizer_flush(edgellm_detokenizer* d, char* buf, size_t buf_len, size_t* n_out) {
    if (!d) return null_arg("edgellm_detokenizer_flush", "detok");
    if (!buf && buf_len) return null_arg("edgellm_detokenizer_flush", "buf");
    return guarded(EDGELLM_STATUS_INVALID_ARGUMENT, [&] {
        return stream_out(d, [](Utf8Stream& s) { return s.flush(); }, buf, buf_len, n_out);
    });
}

void edgellm_detokenizer_free(edgellm_detokenizer* d) { delete d; }

// ---------------------------------------------------------------- context

edgellm_context_params edgellm_context_default_params(void) {
    const ContextParams d;
    edgellm_context_params p;
    p.n_ctx = d.n_ctx;
    p.n_batch = d.n_batch;
    p.n_threads = d.n_threads;
    p.kv_type = static_cast<edgellm_kv_type>(d.kv_type);
    return p;
}

edgellm_status edgellm_context_init(const edgellm_model* m, const edgellm_context_params* params,
                                    edgellm_context** out) {
    if (!out) return null_arg("edgellm_context_init", "out");
    *out = nullptr;
    if (!m) return null_arg("edgellm_context_init", "model");
    if (!m->model)
        return fail(EDGELLM_STATUS_INVALID_ARGUMENT,
                    m->file->path() + ": loaded with vocab_only; load the weights to create a context");
    const edgellm_context_params p = params ? *params : edgellm_context_default_params();
    return guarded(EDGELLM_STATUS_INVALID_ARGUMENT, [&] {
        ContextParams cp;
        cp.n_ctx = p.n_ctx;
        cp.n_batch = p.n_batch;
        cp.n_threads = p.n_threads;
        if (p.kv_type != EDGELLM_KV_TYPE_F16 && p.kv_type != EDGELLM_KV_TYPE_F32 && p.kv_type != EDGELLM_KV_TYPE_Q8_0)
            return fail(EDGELLM_STATUS_INVALID_ARGUMENT,
                        "kv_type: " + std::to_string(static_cast<int>(p.kv_type)) + " is not a KV cache type");
        cp.kv_type = static_cast<KvType>(p.kv_type);
        auto c = std::make_unique<edgellm_context>();
        c->model = m;
        c->ctx = Context::create(*m->model, cp);
        *out = c.release();
        return EDGELLM_STATUS_OK;
    });
}

void edgellm_context_free(edgellm_context* c) { delete c; }

uint32_t edgellm_context_n_ctx(const edgellm_context* c) { return c ? c->ctx->n_ctx() : 0; }
uint32_t edgellm_context_n_past(const edgellm_context* c) { return c ? c->ctx->n_past() : 0; }

edgellm_status edgellm_context_eval(edgellm_context* c, const edgellm_token* tokens, size_t n, bool logits_all) {
    if (!c) return null_arg("edgellm_context_eval", "ctx");
    if (n == 0) return fail(EDGELLM_STATUS_INVALID_ARGUMENT, "edgellm_context_eval: no tokens to evaluate");
    if (!tokens) return null_arg("edgellm_context_eval", "tokens");
    // Context::eval checks the ids itself (the message names the id and its position).
    return guarded(EDGELLM_STATUS_INVALID_ARGUMENT, [&] {
        c->ctx->eval(tokens, n, logits_all);
        return EDGELLM_STATUS_OK;
    });
}

const float* edgellm_context_logits(const edgellm_context* c, size_t* n_rows) {
    if (n_rows) *n_rows = c ? c->ctx->n_logit_rows() : 0;
    return c ? c->ctx->logits() : nullptr;
}

edgellm_status edgellm_context_truncate(edgellm_context* c, uint32_t n_past) {
    if (!c) return null_arg("edgellm_context_truncate", "ctx");
    if (n_past > c->ctx->n_past())
        return fail(EDGELLM_STATUS_INVALID_ARGUMENT, "edgellm_context_truncate: n_past " + std::to_string(n_past) +
                                                         " is beyond the " + std::to_string(c->ctx->n_past()) +
                                                         " cached tokens");
    return guarded(EDGELLM_STATUS_INVALID_ARGUMENT, [&] {
        c->ctx->truncate(n_past);
        return EDGELLM_STATUS_OK;
    });
}

edgellm_status edgellm_context_tokens(const edgellm_context* c, edgellm_token* tokens, size_t n_max, size_t* n_out) {
    if (!c) return null_arg("edgellm_context_tokens", "ctx");
    if (!tokens && n_max) return null_arg("edgellm_context_tokens", "tokens");
    const std::vector<int32_t>& t = c->ctx->tokens();
    if (n_out) *n_out = t.size();
    if (t.size() > n_max) return fail(EDGELLM_STATUS_BUFFER_TOO_SMALL, "token buffer too small");
    if (!t.empty()) std::memcpy(tokens, t.data(), t.size() * sizeof(int32_t));
    return EDGELLM_STATUS_OK;
}

uint64_t edgellm_context_n_evaluated(const edgellm_context* c) { return c ? c->ctx->n_evaluated() : 0; }
uint64_t edgellm_context_kv_bytes(const edgellm_context* c) { return c ? c->ctx->kv_bytes() : 0; }

edgellm_status edgellm_context_save_state(const edgellm_context* c, const char* path) {
    if (!c) return null_arg("edgellm_context_save_state", "ctx");
    if (!path) return null_arg("edgellm_context_save_state", "path");
    return guarded(EDGELLM_STATUS_INTERNAL, [&] {
        c->ctx->save_state(path, owner_of(c->model));
        return EDGELLM_STATUS_OK;
    });
}

edgellm_status edgellm_context_load_state(edgellm_context* c, const char* path) {
    if (!c) return null_arg("edgellm_context_load_state", "ctx");
    if (!path) return null_arg("edgellm_context_load_state", "path");
    return guarded(EDGELLM_STATUS_INTERNAL, [&] {
        c->ctx->load_state(path, owner_of(c->model));
        return EDGELLM_STATUS_OK;
    });
}

edgellm_status edgellm_context_prefill(edgellm_context* c, const edgellm_token* tokens, size_t n, size_t* n_reused) {
    if (n_reused) *n_reused = 0;
    if (!c) return null_arg("edgellm_context_prefill", "ctx");
    if (n == 0) return fail(EDGELLM_STATUS_INVALID_ARGUMENT, "edgellm_context_prefill: no tokens");
    if (!tokens) return null_arg("edgellm_context_prefill", "tokens");
    return guarded(EDGELLM_STATUS_INVALID_ARGUMENT, [&] {
        const size_t kept = c->ctx->prefill(tokens, n);
        if (n_reused) *n_reused = kept;
        return EDGELLM_STATUS_OK;
    });
}

// ---------------------------------------------------------------- sampler

edgellm_sampler_params edgellm_sampler_default_params(void) {
    const SamplerParams d;
    edgellm_sampler_params p;
    p.temperature = d.temperature;
    p.top_k = d.top_k;
    p.top_p = d.top_p;
    p.min_p = d.min_p;
    p.repeat_penalty = d.repeat_penalty;
    p.frequency_penalty = d.frequency_penalty;
    p.presence_penalty = d.presence_penalty;
    p.penalty_last_n = d.penalty_last_n;
    p.seed = d.seed;
    return p;
}

edgellm_status edgellm_sampler_init(const edgellm_model* m, const edgellm_sampler_params* params,
                                    edgellm_sampler** out) {
    if (!out) return null_arg("edgellm_sampler_init", "out");
    *out = nullptr;
    if (!m) return null_arg("edgellm_sampler_init", "model");
    const edgellm_sampler_params p = params ? *params : edgellm_sampler_default_params();
    return guarded(EDGELLM_STATUS_INVALID_ARGUMENT, [&] {
        SamplerParams sp;
        sp.temperature = p.temperature;
        sp.top_k = p.top_k;
        sp.top_p = p.top_p;
        sp.min_p = p.min_p;
        sp.repeat_penalty = p.repeat_penalty;
        sp.frequency_penalty = p.frequency_penalty;
        sp.presence_penalty = p.presence_penalty;
        sp.penalty_last_n = p.penalty_last_n;
        sp.seed = p.seed;
        *out = new edgellm_sampler{m, Sampler(sp, m->tokenizer->n_vocab())};
        return EDGELLM_STATUS_OK;
    });
}

void edgellm_sampler_free(edgellm_sampler* s) { delete s; }

edgellm_status edgellm_sampler_sample(edgellm_sampler* s, const float* logits, edgellm_token* out) {
    if (!s) return null_arg("edgellm_sampler_sample", "smpl");
    if (!logits) return null_arg("edgellm_sampler_sample", "logits");
    if (!out) return null_arg("edgellm_sampler_sample", "out");
    return guarded(EDGELLM_STATUS_INVALID_ARGUMENT, [&] {
        *out = s->sampler.sample(logits);
        return EDGELLM_STATUS_OK;
    });
}

void edgellm_sampler_accept(edgellm_sampler* s, edgellm_token t) {
    if (s && token_in_range(s->model, t)) s->sampler.accept(t);
}

void edgellm_sampler_reset(edgellm_sampler* s) {
    if (s) s->sampler.reset();
}

// ------------------------------------------------------------ speculative

edgellm_spec_params edgellm_spec_default_params(void) {
    const SpecParams d;
    edgellm_spec_params p;
    p.draft_max = d.draft_max;
    p.draft_min = d.draft_min;
    p.p_min = d.p_min;
    p.ngram_min = d.ngram_min;
    p.ngram_max = d.ngram_max;
    p.draft_vocab = d.draft_vocab;
    return p;
}

edgellm_status edgellm_speculator_init(edgellm_context* target, edgellm_context* draft,
                                       const edgellm_spec_params* params, edgellm_speculator** out) {
    if (!out) return null_arg("edgellm_speculator_init", "out");
    *out = nullptr;
    if (!target) return null_arg("edgellm_speculator_init", "target");
    const edgellm_spec_params p = params ? *params : edgellm_spec_default_params();
    return guarded(EDGELLM_STATUS_INVALID_ARGUMENT, [&] {
        const edgellm_model* tm = target->model;
        if (draft) {
            if (draft == target) throw Error("draft: the draft context is the target context");
            const Tokenizer& a = *tm->tokenizer;
            const Tokenizer& b = *draft->model->tokenizer;
            const std::string where = "draft model " + draft->model->file->path() + ": ";
            if (a.n_vocab() != b.n_vocab())
                throw Error(where + "vocabulary of " + std::to_string(b.n_vocab()) + " tokens; the target " +
                            tm->file->path() + " has " + std::to_string(a.n_vocab()));
            for (int32_t t = 0; t < a.n_vocab(); ++t)
                if (a.piece(t, true) != b.piece(t, true))
                    throw Error(where + "token " + std::to_string(t) + " is '" + b.piece(t, true) +
                                "'; in the target it is '" + a.piece(t, true) + "' (the vocabularies differ)");
            if (a.bos() != b.bos() || a.eos() != b.eos())
                throw Error(where + "BOS/EOS ids differ from the target's");
        }
        SpecParams sp;
        sp.draft_max = p.draft_max;
        sp.draft_min = p.draft_min;
        sp.p_min = p.p_min;
        sp.ngram_min = p.ngram_min;
        sp.ngram_max = p.ngram_max;
        sp.draft_vocab = p.draft_vocab;
        const Tokenizer* tok = tm->tokenizer.get();
        auto s = std::make_unique<edgellm_speculator>();
        s->target = target;
        s->spec = std::make_unique<Speculator>(*target->ctx, draft ? draft->ctx.get() : nullptr, tok->n_vocab(), sp,
                                               [tok](int32_t t) { return tok->is_eog(t); });
        *out = s.release();
        return EDGELLM_STATUS_OK;
    });
}

void edgellm_speculator_free(edgellm_speculator* s) { delete s; }

edgellm_status edgellm_speculator_step(edgellm_speculator* s, edgellm_sampler* smpl, edgellm_token pending,
                                       edgellm_token* tokens, size_t n_max, size_t* n_out) {
    if (n_out) *n_out = 0;
    if (!s) return null_arg("edgellm_speculator_step", "spec");
    if (!smpl) return null_arg("edgellm_speculator_step", "smpl");
    if (!tokens) return null_arg("edgellm_speculator_step", "tokens");
    if (n_max == 0) return fail(EDGELLM_STATUS_INVALID_ARGUMENT, "edgellm_speculator_step: n_max is 0");
    if (!token_in_range(s->target->model, pending)) return bad_token(s->target->model, pending);
    if (smpl->model->tokenizer->n_vocab() != s->target->model->tokenizer->n_vocab())
        return fail(EDGELLM_STATUS_INVALID_ARGUMENT, "edgellm_speculator_step: the sampler is for another vocabulary");
    return guarded(EDGELLM_STATUS_INVALID_ARGUMENT, [&] {
        s->out.clear();
        s->spec->step(smpl->sampler, pending, n_max, s->out);
        std::memcpy(tokens, s->out.data(), s->out.size() * sizeof(int32_t));
        if (n_out) *n_out = s->out.size();
        return EDGELLM_STATUS_OK;
    });
}

edgellm_spec_stats edgellm_speculator_stats(const edgellm_speculator* s) {
    edgellm_spec_stats st{0, 0, 0};
    if (!s) return st;
    const SpecStats& x = s->spec->stats();
    st.steps = x.steps;
    st.drafted = x.drafted;
    st.accepted = x.accepted;
    return st;
}

}  // extern "C"
