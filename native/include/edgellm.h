/* edgellm.h: the C API of the edgellm core. Every face (Python, CLI, Android, WASM) binds this and
 * nothing deeper.
 *
 * Usage (error handling shortened; every call that can fail returns an edgellm_status, and
 * edgellm_last_error() gives the message of the last failure on the calling thread):
 *
 *     edgellm_model* model;
 *     edgellm_model_params mp = edgellm_model_default_params();
 *     if (edgellm_model_load("model.gguf", &mp, &model) != EDGELLM_STATUS_OK) {
 *         fprintf(stderr, "%s\n", edgellm_last_error());
 *         return 1;
 *     }
 *     edgellm_context_params cp = edgellm_context_default_params();
 *     cp.n_ctx = 2048;
 *     edgellm_context* ctx;
 *     edgellm_context_init(model, &cp, &ctx);
 *     edgellm_sampler_params sp = edgellm_sampler_default_params();
 *     sp.temperature = 0.7f;
 *     edgellm_sampler* smpl;
 *     edgellm_sampler_init(model, &sp, &smpl);
 *
 *     edgellm_token toks[512];
 *     size_t n;
 *     edgellm_tokenize(model, "Hello", 5, true, false, toks, 512, &n);
 *     for (size_t i = 0; i < n; ++i) edgellm_sampler_accept(smpl, toks[i]);
 *     edgellm_detokenizer* detok = edgellm_detokenizer_init(model, false);
 *     char piece[256];
 *     size_t len;
 *     while (edgellm_context_eval(ctx, toks, n, false) == EDGELLM_STATUS_OK) {
 *         edgellm_token t;
 *         edgellm_sampler_sample(smpl, edgellm_context_logits(ctx, NULL), &t);
 *         if (edgellm_token_is_eog(model, t)) break;
 *         edgellm_sampler_accept(smpl, t);
 *         edgellm_detokenizer_push(detok, t, piece, sizeof piece, &len);
 *         fwrite(piece, 1, len, stdout);
 *         toks[0] = t;
 *         n = 1;
 *     }  // stops with EDGELLM_STATUS_CONTEXT_FULL when the cache has no room left
 *     edgellm_detokenizer_free(detok);
 *     edgellm_sampler_free(smpl);
 *     edgellm_context_free(ctx);
 *     edgellm_model_free(model);
 *
 * Threading contract:
 *   - A model is immutable after load: any number of threads may use one model at the same time
 *     (tokenize, detokenize, create contexts and samplers), and it must outlive them all.
 *   - A context, a sampler and a detokenizer are each used by one thread at a time. Different
 *     contexts of one model may run concurrently on different threads.
 *   - edgellm_context_eval runs its own worker threads (n_threads in the context params, the
 *     calling thread counted as one) and returns only when they are done.
 *   - A speculator drives its target and draft contexts: while it steps, nothing else uses them.
 *   - edgellm_last_error() is per thread.
 *
 * Conventions: `n_max`/`buf_len` are capacities in elements/bytes; `*n_out` receives the count
 * written, or the count needed when the call returns EDGELLM_STATUS_BUFFER_TOO_SMALL (nothing is
 * written then). Text is UTF-8, never NUL-terminated on output. No call aborts the process or
 * throws across this boundary.
 */
#ifndef EDGELLM_H
#define EDGELLM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define EDGELLM_API __declspec(dllexport)
#else
#define EDGELLM_API __attribute__((visibility("default")))
#endif

typedef int32_t edgellm_token;

typedef struct edgellm_model edgellm_model;
typedef struct edgellm_context edgellm_context;
typedef struct edgellm_sampler edgellm_sampler;
typedef struct edgellm_detokenizer edgellm_detokenizer;
typedef struct edgellm_speculator edgellm_speculator;

typedef enum edgellm_status {
    EDGELLM_STATUS_OK = 0,
    EDGELLM_STATUS_INVALID_ARGUMENT = 1,  /* a parameter out of range, a token id outside the vocabulary */
    EDGELLM_STATUS_IO = 2,                /* the file is missing or unreadable */
    EDGELLM_STATUS_INVALID_FILE = 3,      /* malformed GGUF, missing or inconsistent metadata or tensors */
    EDGELLM_STATUS_UNSUPPORTED = 4,       /* an architecture, tensor type or tokenizer we do not run */
    EDGELLM_STATUS_CONTEXT_FULL = 5,      /* the KV cache has no room for the tokens; nothing was evaluated */
    EDGELLM_STATUS_BUFFER_TOO_SMALL = 6,  /* *n_out holds the size needed; nothing was written */
    EDGELLM_STATUS_OUT_OF_MEMORY = 7,
    EDGELLM_STATUS_INTERNAL = 8,
} edgellm_status;

/* Message of the last failing call on this thread ("" when none). Valid until the next call. */
EDGELLM_API const char* edgellm_last_error(void);
/* "OK", "INVALID_ARGUMENT", ... */
EDGELLM_API const char* edgellm_status_name(edgellm_status status);
/* The library version, "MAJOR.MINOR.PATCH". */
EDGELLM_API const char* edgellm_version(void);

/* The CPU kernels every context of the process uses: "avx512", "avx2" or "scalar" (the portable
 * reference). The best this CPU runs is chosen at start, unless the environment variable
 * EDGELLM_ISA names one. edgellm_set_isa switches (tests run each code path with it; not while a
 * context is evaluating): INVALID_ARGUMENT for an unknown name, UNSUPPORTED when this CPU cannot
 * run those kernels. "auto" returns to the best. */
EDGELLM_API const char* edgellm_isa(void);
EDGELLM_API edgellm_status edgellm_set_isa(const char* name);

/* ---------------------------------------------------------------- model */

typedef struct edgellm_model_params {
    bool vocab_only; /* load metadata and tokenizer only: no weights are checked or used */
} edgellm_model_params;

EDGELLM_API edgellm_model_params edgellm_model_default_params(void);

/* Maps the GGUF file (weights are used in place, never copied) and validates its metadata and
 * tensors. On failure *out is NULL and the message names the file and the field. */
EDGELLM_API edgellm_status edgellm_model_load(const char* path, const edgellm_model_params* params,
                                              edgellm_model** out);
EDGELLM_API void edgellm_model_free(edgellm_model* model);

EDGELLM_API const char* edgellm_model_arch(const edgellm_model* model);  /* "llama", "qwen2", ... */
EDGELLM_API int32_t edgellm_model_n_vocab(const edgellm_model* model);
EDGELLM_API int32_t edgellm_model_n_ctx_train(const edgellm_model* model);
EDGELLM_API int32_t edgellm_model_n_embd(const edgellm_model* model);
EDGELLM_API int32_t edgellm_model_n_layer(const edgellm_model* model);
EDGELLM_API uint64_t edgellm_model_n_params(const edgellm_model* model);
EDGELLM_API uint64_t edgellm_model_size(const edgellm_model* model);  /* bytes of tensor data */

/* A string metadata value (for example "tokenizer.chat_template", "general.name").
 * Returns NULL when the key is absent or not a string. The pointer and length stay valid while
 * the model lives; the text is not NUL-terminated. */
EDGELLM_API const char* edgellm_model_meta_string(const edgellm_model* model, const char* key, size_t* len);

/* Special tokens; -1 when the vocabulary has none. */
EDGELLM_API edgellm_token edgellm_model_token_bos(const edgellm_model* model);
EDGELLM_API edgellm_token edgellm_model_token_eos(const edgellm_model* model);
EDGELLM_API bool edgellm_model_add_bos(const edgellm_model* model);
EDGELLM_API bool edgellm_model_add_eos(const edgellm_model* model);
/* End of generation: EOS, end-of-turn and the like, per the vocabulary. */
EDGELLM_API bool edgellm_token_is_eog(const edgellm_model* model, edgellm_token token);

/* ------------------------------------------------------------ tokenizer */

/* Text to token ids with the model's own tokenizer. add_special: BOS/EOS as the metadata says.
 * parse_special: special-token text in `text` (like "<|im_start|>") becomes that token; otherwise
 * it is tokenized as plain text. */
EDGELLM_API edgellm_status edgellm_tokenize(const edgellm_model* model, const char* text, size_t text_len,
                                            bool add_special, bool parse_special, edgellm_token* tokens,
                                            size_t n_max, size_t* n_out);

/* The bytes of one token (byte-level and byte-fallback tokens decoded; these bytes may be part of
 * a UTF-8 character). special: control tokens render their text; otherwise they render as "". */
EDGELLM_API edgellm_status edgellm_token_to_piece(const edgellm_model* model, edgellm_token token, bool special,
                                                  char* buf, size_t buf_len, size_t* n_out);

/* Token ids to text in one call: the pieces joined, the space a SentencePiece vocabulary puts before
 * the first word dropped (so detokenize(tokenize(s)) == s), invalid UTF-8 replaced by U+FFFD. */
EDGELLM_API edgellm_status edgellm_detokenize(const edgellm_model* model, const edgellm_token* tokens, size_t n,
                                              bool special, char* buf, size_t buf_len, size_t* n_out);

/* Incremental detokenizer: push tokens one by one and get back text that always ends on a whole
 * UTF-8 character (bytes of an incomplete character are held until the next push; invalid
 * sequences become U+FFFD). Concatenated outputs equal the detokenized text of all tokens. */
EDGELLM_API edgellm_detokenizer* edgellm_detokenizer_init(const edgellm_model* model, bool special);
EDGELLM_API edgellm_status edgellm_detokenizer_push(edgellm_detokenizer* detok, edgellm_token token, char* buf,
                                                    size_t buf_len, size_t* n_out);
/* Emits what is held (an incomplete character becomes U+FFFD) and starts over. */
EDGELLM_API edgellm_status edgellm_detokenizer_flush(edgellm_detokenizer* detok, char* buf, size_t buf_len,
                                                     size_t* n_out);
EDGELLM_API void edgellm_detokenizer_free(edgellm_detokenizer* detok);

/* -------------------------------------------------------------- context */

typedef enum edgellm_kv_type {
    EDGELLM_KV_TYPE_F16 = 0, /* the default: half the memory of f32 */
    EDGELLM_KV_TYPE_F32 = 1, /* exact; for reference comparisons */
    EDGELLM_KV_TYPE_Q8_0 = 2, /* blocks of 32 int8 values with an f16 scale: about half of f16 */
} edgellm_kv_type;

typedef struct edgellm_context_params {
    uint32_t n_ctx;    /* tokens the KV cache holds; 0 = the model's training context */
    uint32_t n_batch;  /* most tokens per forward pass; longer inputs are split (prefill) */
    int32_t n_threads; /* threads for the forward pass, the caller included; 0 = all cores */
    edgellm_kv_type kv_type; /* element type of the KV cache */
} edgellm_context_params;

EDGELLM_API edgellm_context_params edgellm_context_default_params(void);

/* Allocates the KV cache and work buffers. The model must outlive the context. */
EDGELLM_API edgellm_status edgellm_context_init(const edgellm_model* model, const edgellm_context_params* params,
                                                edgellm_context** out);
EDGELLM_API void edgellm_context_free(edgellm_context* ctx);

EDGELLM_API uint32_t edgellm_context_n_ctx(const edgellm_context* ctx);
/* Tokens in the KV cache (the position of the next token). */
EDGELLM_API uint32_t edgellm_context_n_past(const edgellm_context* ctx);

/* Runs the model over `tokens`, placed after the n_past tokens already cached, and appends them
 * to the cache. logits_all: keep the logits of every token (n rows); otherwise of the last only.
 * When n_past + n exceeds n_ctx nothing is evaluated and EDGELLM_STATUS_CONTEXT_FULL is returned.
 * Any other failure leaves the cache as it was before the call. */
EDGELLM_API edgellm_status edgellm_context_eval(edgellm_context* ctx, const edgellm_token* tokens, size_t n,
                                                bool logits_all);
/* Logits of the last eval: rows x n_vocab floats, row-major (*n_rows may be NULL). The pointer is
 * valid until the next eval, truncate or free. NULL before the first eval. */
EDGELLM_API const float* edgellm_context_logits(const edgellm_context* ctx, size_t* n_rows);
/* Forgets cached tokens from position n_past on (n_past <= edgellm_context_n_past): rewinding is
 * free, and evaluating after it gives the same logits as evaluating from scratch. */
EDGELLM_API edgellm_status edgellm_context_truncate(edgellm_context* ctx, uint32_t n_past);
/* Brings the cache to exactly tokens[0, n): keeps the longest prefix already cached (at most n - 1
 * tokens, so the last one is evaluated and its logits are there) and evaluates the rest; *n_reused
 * (may be NULL) receives the count kept. The next chat turn or a repeated system prompt costs only
 * its new tokens. CONTEXT_FULL (the cache untouched) when n > n_ctx. */
EDGELLM_API edgellm_status edgellm_context_prefill(edgellm_context* ctx, const edgellm_token* tokens, size_t n,
                                                   size_t* n_reused);
/* The tokens in the cache, in order (n_past of them), under the capacity convention. */
EDGELLM_API edgellm_status edgellm_context_tokens(const edgellm_context* ctx, edgellm_token* tokens, size_t n_max,
                                                  size_t* n_out);
/* Tokens run through the model since the context was made: what cache reuse saves shows here. */
EDGELLM_API uint64_t edgellm_context_n_evaluated(const edgellm_context* ctx);
/* Bytes of the KV cache (keys and values of every layer and position). */
EDGELLM_API uint64_t edgellm_context_kv_bytes(const edgellm_context* ctx);

/* Saved sessions. save writes the cached tokens, their keys and values and the last logits row to
 * path (through a temporary file: never a partial file). load replaces the context's cache with a
 * saved one, after checking the format, the checksum, the model (identity of the GGUF file), n_ctx
 * and the KV type: EDGELLM_STATUS_INVALID_FILE with a message naming the file and the field
 * otherwise (the context is then unchanged); EDGELLM_STATUS_IO when the file cannot be read or
 * written. After a load, edgellm_context_logits gives the saved row. */
EDGELLM_API edgellm_status edgellm_context_save_state(const edgellm_context* ctx, const char* path);
EDGELLM_API edgellm_status edgellm_context_load_state(edgellm_context* ctx, const char* path);

/* -------------------------------------------------------------- sampler */

typedef struct edgellm_sampler_params {
    float temperature;       /* 0: greedy (argmax; penalties still apply); must be >= 0 */
    int32_t top_k;           /* keep the k most likely tokens; <= 0: off */
    float top_p;             /* keep the smallest set whose probability reaches p, in (0, 1]; 1: off */
    float min_p;             /* drop tokens below min_p x the top probability, in [0, 1); 0: off */
    float repeat_penalty;    /* divide positive (multiply negative) logits of recent tokens; 1: off */
    float frequency_penalty; /* subtract count x this from recent tokens' logits; 0: off */
    float presence_penalty;  /* subtract this from every recent token's logit; 0: off */
    int32_t penalty_last_n;  /* how many recent accepted tokens the penalties look at; 0: off */
    uint64_t seed;           /* the random stream; the same seed and inputs give the same tokens */
} edgellm_sampler_params;

EDGELLM_API edgellm_sampler_params edgellm_sampler_default_params(void);

/* Validates the parameters (INVALID_ARGUMENT naming the field otherwise). */
EDGELLM_API edgellm_status edgellm_sampler_init(const edgellm_model* model, const edgellm_sampler_params* params,
                                                edgellm_sampler** out);
EDGELLM_API void edgellm_sampler_free(edgellm_sampler* smpl);
/* Picks a token from one row of n_vocab logits (not modified). Does not accept it. */
EDGELLM_API edgellm_status edgellm_sampler_sample(edgellm_sampler* smpl, const float* logits, edgellm_token* out);
/* Records a token (prompt or generated) in the penalty history. */
EDGELLM_API void edgellm_sampler_accept(edgellm_sampler* smpl, edgellm_token token);
/* Clears the history and restarts the random stream from the seed. */
EDGELLM_API void edgellm_sampler_reset(edgellm_sampler* smpl);

/* ---------------------------------------------------------- speculative */

typedef struct edgellm_spec_params {
    int32_t draft_max; /* most tokens drafted per step, in [1, 64] (8) */
    int32_t draft_min; /* the adaptive draft length never falls below this (1) */
    float p_min;       /* draft model: stop drafting when its top probability is below this (0.2) */
    int32_t ngram_min; /* prompt lookup: n-gram lengths matched, longest first (3 .. 4) */
    int32_t ngram_max;
    int32_t draft_vocab; /* draft model: proposes only ids below this and ids already in the context; 0: any
                          * (16384) */
} edgellm_spec_params;

typedef struct edgellm_spec_stats {
    uint64_t steps;    /* target passes */
    uint64_t drafted;  /* tokens proposed */
    uint64_t accepted; /* proposed tokens kept */
} edgellm_spec_stats;

EDGELLM_API edgellm_spec_params edgellm_spec_default_params(void);

/* Speculative decoding over a target context. draft: a context of a draft model with the same
 * vocabulary (INVALID_ARGUMENT naming the first differing token otherwise), or NULL for prompt
 * lookup (drafts copied from earlier context that continues the last n-gram). */
EDGELLM_API edgellm_status edgellm_speculator_init(edgellm_context* target, edgellm_context* draft,
                                                   const edgellm_spec_params* params, edgellm_speculator** out);
EDGELLM_API void edgellm_speculator_free(edgellm_speculator* spec);

/* One step. pending: the last chosen token, already accepted by smpl and not yet evaluated. Drafts
 * up to the current draft length, evaluates pending and the drafts in one batched pass, and writes
 * to tokens the accepted drafts followed by one token the target chose: between 1 and n_max of
 * them, ending early after an end-of-generation token; each is accepted by smpl. Afterwards the
 * cache holds pending and every token written but the last (the next pending). Greedy output equals
 * plain greedy decoding; sampled output keeps the target's distribution. CONTEXT_FULL when there is
 * no room for pending. */
EDGELLM_API edgellm_status edgellm_speculator_step(edgellm_speculator* spec, edgellm_sampler* smpl,
                                                   edgellm_token pending, edgellm_token* tokens, size_t n_max,
                                                   size_t* n_out);
EDGELLM_API edgellm_spec_stats edgellm_speculator_stats(const edgellm_speculator* spec);

#ifdef __cplusplus
}
#endif

#endif /* EDGELLM_H */
