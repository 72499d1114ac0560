// read_hparams: the `<arch>.*` keys, with llama.cpp's defaults and our range checks.
#include "model/hparams.h"

#include <cmath>
#include <cstring>
#include <limits>

#include "gguf/gguf.h"
#include "gguf/names.h"
#include "model/model.h"

namespace edgellm {

namespace {

// Largest value accepted for a size-like key: far above any real model, small enough that products
// of two of them fit in int64 and per-context buffers stay addressable.
constexpr int64_t kMaxDim = int64_t(1) << 24;

class Keys {
public:
    Keys(const gguf::Reader& file, const std::string& arch) : file_(file), arch_(arch) {}

    std::string name(std::string_view suffix) const { return arch_ + "." + std::string(suffix); }

    [[noreturn]] void fail(std::string_view suffix, const std::string& what) const {
        throw gguf::Error(file_.path() + ": key " + gguf::quote(name(suffix)) + ": " + what);
    }

    bool has(std::string_view suffix) const { return file_.find(name(suffix)) != nullptr; }

    // Any integer type is accepted (writers differ); the value must lie in [lo, hi].
    int64_t integer(std::string_view suffix, int64_t lo, int64_t hi) const {
        const gguf::KV* kv = file_.find(name(suffix));
        if (!kv) fail(suffix, "missing");
        int64_t v = 0;
        switch (kv->type) {
            case gguf::ValueType::UINT8: v = load<uint8_t>(kv->data); break;
            case gguf::ValueType::INT8: v = load<int8_t>(kv->data); break;
            case gguf::ValueType::UINT16: v = load<uint16_t>(kv->data); break;
            case gguf::ValueType::INT16: v = load<int16_t>(kv->data); break;
            case gguf::ValueType::UINT32: v = load<uint32_t>(kv->data); break;
            case gguf::ValueType::INT32: v = load<int32_t>(kv->data); break;
            case gguf::ValueType::INT64: v = load<int64_t>(kv->data); break;
            case gguf::ValueType::UINT64: {
                const uint64_t u = load<uint64_t>(kv->data);
                v = u > uint64_t(std::numeric_limits<int64_t>::max()) ? std::numeric_limits<int64_t>::max()
                                                                      : int64_t(u);
                break;
            }
            default:
                fail(suffix, std::string("type is ") + gguf::value_type_name(uint32_t(kv->type)) +
                                 ", expected an integer");
        }
        if (v < lo || v > hi)
            fail(suffix, std::to_string(v) + " is outside [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
        return v;
    }

    int64_t integer_or(std::string_view suffix, int64_t def, int64_t lo, int64_t hi) const {
        return has(suffix) ? integer(suffix, lo, hi) : def;
    }

    // f32 or f64; must be finite and in [lo, hi].
    float real(std::string_view suffix, double lo, double hi) const {
        const gguf::KV* kv = file_.find(name(suffix));
        if (!kv) fail(suffix, "missing");
        double v = 0;
        if (kv->type == gguf::ValueType::FLOAT32)
            v = load<float>(kv->data);
        else if (kv->type == gguf::ValueType::FLOAT64)
            v = load<double>(kv->data);
        else
            fail(suffix, std::string("type is ") + gguf::value_type_name(uint32_t(kv->type)) + ", expected float32");
        if (!std::isfinite(v) || v < lo || v > hi)
            fail(suffix, std::to_string(v) + " is outside [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
        return float(v);
    }

    float real_or(std::string_view suffix, float def, double lo, double hi) const {
        return has(suffix) ? real(suffix, lo, hi) : def;
    }

    std::string_view string(std::string_view suffix) const {
        const gguf::KV* kv = file_.find(name(suffix));
        if (!kv) fail(suffix, "missing");
        if (kv->type != gguf::ValueType::STRING)
            fail(suffix, std::string("type is ") + gguf::value_type_name(uint32_t(kv->type)) + ", expected string");
        return {reinterpret_cast<const char*>(kv->data), size_t(kv->nbytes)};
    }

    const gguf::Reader& file() const { return file_; }

private:
    template <typename T>
    static T load(const uint8_t* p) {
        T v;
        std::memcpy(&v, p, sizeof v);
        return v;
    }

    const gguf::Reader& file_;
    const std::string& arch_;
};

RopeParams read_rope(const Keys& k, int64_t n_ctx_train) {
    RopeParams r;
    r.freq_base = k.real_or("rope.freq_base", 10000.0f, 1.000001, 1e12);
    std::string_view type = "none";
    if (k.has("rope.scaling.type")) type = k.string("rope.scaling.type");
    if (type == "none") {
        // older files give linear scaling as a plain scale (positions x scale)
        if (k.has("rope.scale_linear")) {
            const float scale = k.real("rope.scale_linear", 1e-6, 1e6);
            if (scale != 1.0f) {
                r.scaling = RopeScaling::Linear;
                r.factor = scale;
            }
        }
    } else if (type == "linear") {
        r.scaling = RopeScaling::Linear;
        r.factor = k.real("rope.scaling.factor", 1e-6, 1e6);
    } else if (type == "yarn") {
        r.scaling = RopeScaling::Yarn;
        r.factor = k.real("rope.scaling.factor", 1e-6, 1e6);
        r.n_ctx_orig = uint32_t(k.integer_or("rope.scaling.original_context_length", n_ctx_train, 1, kMaxDim));
        r.yarn_ext_factor = k.real_or("rope.scaling.yarn_ext_factor", 1.0f, 0.0, 1e6);
        r.yarn_attn_factor = k.real_or("rope.scaling.yarn_attn_factor", 1.0f, 1e-6, 1e6);
        r.yarn_beta_fast = k.real_or("rope.scaling.yarn_beta_fast", 32.0f, 1e-6, 1e6);
        r.yarn_beta_slow = k.real_or("rope.scaling.yarn_beta_slow", 1.0f, 1e-6, 1e6);
    } else {
        throw Unsupported(k.file().path() + ": key " + gguf::quote(k.name("rope.scaling.type")) + ": " +
                          gguf::quote(type) + " is not supported (supported: none, linear, yarn)");
    }
    return r;
}

}  // namespace

HParams read_hparams(const gguf::Reader& file, const std::string& arch) {
    const Keys k(file, arch);
    HParams hp;
    hp.arch = arch;
    hp.n_ctx_train = k.integer("context_length", 1, kMaxDim);
    hp.n_embd = k.integer("embedding_length", 1, kMaxDim);
    hp.n_layer = k.integer("block_count", 1, 4096);
    hp.n_ff = k.integer("feed_forward_length", 1, kMaxDim);
    hp.n_head = k.integer("attention.head_count", 1, 65536);
    hp.n_head_kv = k.integer_or("attention.head_count_kv", hp.n_head, 1, hp.n_head);
    if (hp.n_head % hp.n_head_kv != 0)
        k.fail("attention.head_count_kv", std::to_string(hp.n_head_kv) + " does not divide attention.head_count " +
                                              std::to_string(hp.n_head));
    if (!k.has("attention.key_length") && hp.n_embd % hp.n_head != 0)
        k.fail("embedding_length", std::to_string(hp.n_embd) + " is not a multiple of attention.head_count " +
                                       std::to_string(hp.n_head) + " and attention.key_length is not given");
    hp.head_dim = k.integer_or("attention.key_length", hp.n_embd / hp.n_head, 2, 65536);
    const int64_t head_dim_v = k.integer_or("attention.value_length", hp.head_dim, 1, 65536);
    if (head_dim_v != hp.head_dim)
        throw Unsupported(file.path() + ": key " + gguf::quote(k.name("attention.value_length")) + ": " +
                          std::to_string(head_dim_v) + " differs from attention.key_length " +
                          std::to_string(hp.head_dim) + " (not supported)");
    if (hp.n_head * hp.head_dim > kMaxDim)
        k.fail("attention.head_count", "head_count x key_length = " + std::to_string(hp.n_head * hp.head_dim) +
                                           " is too large");
    hp.n_rot = k.integer_or("rope.dimension_count", hp.head_dim, 2, hp.head_dim);
    if (hp.n_rot % 2 != 0) k.fail("rope.dimension_count", std::to_string(hp.n_rot) + " is not even");
    hp.norm_eps = k.real("attention.layer_norm_rms_epsilon", 1e-30, 1.0);
    hp.attn_scale = 1.0f / std::sqrt(float(hp.head_dim));
    hp.n_swa = k.integer_or("attention.sliding_window", 0, 0, kMaxDim);
    hp.final_logit_softcap = k.real_or("final_logit_softcapping", 0.0f, 0.0, 1e6);
    hp.rope = read_rope(k, hp.n_ctx_train);
    hp.rope_swa = hp.rope;  // architectures with sliding-window layers set their own
    return hp;
}

}  // namespace edgellm
