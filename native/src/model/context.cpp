// Context: the KV cache, the work buffers (allocated once, for n_batch tokens) and eval(), which
// checks its input, splits it into chunks and runs the architecture's forward pass on each.
#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "model/arch.h"
#include "model/state.h"

namespace edgellm {

namespace {

class ContextImpl : public Context {
public:
    ContextImpl(const ModelImpl& model, const ContextParams& params);

    uint32_t n_ctx() const override { return uint32_t(n_ctx_); }
    uint32_t n_past() const override { return uint32_t(n_past_); }
    void eval(const int32_t* tokens, size_t n, bool logits_all) override;
    const float* logits() const override { return n_logit_rows_ ? logits_.data() : nullptr; }
    size_t n_logit_rows() const override { return n_logit_rows_; }
    void truncate(uint32_t n_past) override;
    void set_output_rows(int64_t n_first, const std::vector<int32_t>& extra) override;
    size_t prefill(const int32_t* tokens, size_t n) override;
    const std::vector<int32_t>& tokens() const override { return tokens_; }
    uint64_t n_evaluated() const override { return n_evaluated_; }
    size_t kv_bytes() const override { return cache_.bytes(); }
    KvType kv_type() const override { return kv_type_; }
    void save_state(const std::string& path, const StateOwner& owner) const override;
    void load_state(const std::string& path, const StateOwner& owner) override;

private:
    StateShape shape(const StateOwner& owner) const;
    void run_chunk(const int32_t* tokens, int64_t n_tokens, int64_t out_first, float* logits);

    const ModelImpl& model_;
    const HParams& hp_;
    int64_t n_ctx_, n_batch_;
    KvType kv_type_;
    ThreadPool pool_;
    KvCache cache_;
    std::vector<AttnScratch> scratch_;
    RopeFreqs freqs_, freqs_swa_;
    RopeTable rope_, rope_swa_;
    // activations: n_batch rows each
    std::vector<float> x_, xn_, q_, k_, v_, attn_, tmp_, gate_, up_;
    std::vector<float> logits_;  // grows to the largest request, never shrinks
    std::vector<float> kv_f32_;  // q8_0 cache: one layer's dequantized tiles (Forward::kv_f32)
    std::vector<int64_t> out_runs_;      // set_output_rows(): (first, count) row groups; empty: all
    std::vector<uint8_t> group_marks_;  // its scratch
    size_t n_logit_rows_ = 0;
    int64_t n_past_ = 0;
    std::vector<int32_t> tokens_;  // the n_past_ cached tokens
    uint64_t n_evaluated_ = 0;
};

quant::Type cache_type(KvType t) {
    switch (t) {
        case KvType::F16: return quant::Type::F16;
        case KvType::F32: return quant::Type::F32;
        case KvType::Q8_0: return quant::Type::Q8_0;
    }
    throw Error("kv_type: " + std::to_string(static_cast<uint32_t>(t)) + " is not a KV cache type");
}

int64_t checked_ctx(const HParams& hp, const ContextParams& p) {
    return p.n_ctx == 0 ? hp.n_ctx_train : int64_t(p.n_ctx);
}

int64_t checked_batch(int64_t n_ctx, const ContextParams& p) {
    if (p.n_batch == 0) throw Error("n_batch: must be at least 1");
    return std::min<int64_t>(p.n_batch, n_ctx);
}

ContextImpl::ContextImpl(const ModelImpl& model, const ContextParams& params)
    : model_(model),
      hp_(model.hparams()),
      n_ctx_(checked_ctx(hp_, params)),
      n_batch_(checked_batch(n_ctx_, params)),
      kv_type_(params.kv_type),
      pool_(params.n_threads),
      cache_(hp_.n_layer, n_ctx_, hp_.n_head_kv, hp_.head_dim, cache_type(params.kv_type)) {
    scratch_.resize(size_t(pool_.n_threads()));
    for (AttnScratch& sc : scratch_) attn_scratch_init(sc, hp_.head_dim);
    const Weights& w = model.weights();
    freqs_ = rope_freqs(hp_.rope, hp_.n_rot, w.rope_freqs);
    freqs_swa_ = rope_freqs(hp_.rope_swa, hp_.n_rot, w.rope_freqs);
    const size_t nb = size_t(n_batch_);
    x_.resize(nb * size_t(hp_.n_embd));
    xn_.resize(nb * size_t(hp_.n_embd));
    tmp_.resize(nb * size_t(hp_.n_embd));
    q_.resize(nb * size_t(hp_.n_embd_q()));
    attn_.resize(nb * size_t(hp_.n_embd_q()));
    k_.resize(nb * size_t(hp_.n_embd_kv()));
    v_.resize(nb * size_t(hp_.n_embd_kv()));
    gate_.resize(nb * size_t(hp_.n_ff));
    up_.resize(nb * size_t(hp_.n_ff));
    rope_.cos.reserve(nb * size_t(hp_.n_rot / 2));
    rope_.sin.reserve(nb * size_t(hp_.n_rot / 2));
    tokens_.reserve(size_t(n_ctx_));
}

void ContextImpl::eval(const int32_t* tokens, size_t n, bool logits_all) {
    if (n == 0) throw Error("eval: no tokens given");
    for (size_t i = 0; i < n; ++i)
        if (tokens[i] < 0 || int64_t(tokens[i]) >= hp_.n_vocab)
            throw Error("token id " + std::to_string(tokens[i]) + " at position " + std::to_string(i) +
                        " is outside the vocabulary [0, " + std::to_string(hp_.n_vocab) + ")");
    if (uint64_t(n_past_) + n > uint64_t(n_ctx_))
        throw ContextFull("context full: " + std::to_string(n_past_) + " cached + " + std::to_string(n) +
                          " new tokens exceed n_ctx " + std::to_string(n_ctx_));

    const size_t rows = logits_all ? n : 1;
    if (logits_.size() < rows * size_t(hp_.n_vocab)) logits_.resize(rows * size_t(hp_.n_vocab));
    n_logit_rows_ = 0;
    const int64_t saved = n_past_;
    try {
        for (size_t start = 0; start < n; start += size_t(n_batch_)) {
            const int64_t len = int64_t(std::min(n - start, size_t(n_batch_)));
            const bool last = start + size_t(len) == n;
            if (logits_all)
                run_chunk(tokens + start, len, 0, logits_.data() + start * size_t(hp_.n_vocab));
            else
                run_chunk(tokens + start, len, last ? len - 1 : len, logits_.data());
            n_past_ += len;
            n_evaluated_ += uint64_t(len);
        }
    } catch (...) {
        n_past_ = saved;
        throw;
    }
    tokens_.insert(tokens_.end(), tokens, tokens + n);
    n_logit_rows_ = rows;
}

void ContextImpl::run_chunk(const int32_t* tokens, int64_t n_tokens, int64_t out_first, float* logits) {
    rope_table(freqs_, n_past_, n_tokens, rope_);
    if (hp_.n_swa > 0) rope_table(freqs_swa_, n_past_, n_tokens, rope_swa_);
    Forward f{hp_, model_.weights(), pool_, cache_, scratch_};
    f.tokens = tokens;
    f.n_tokens = n_tokens;
    f.pos0 = n_past_;
    f.x = x_.data();
    f.xn = xn_.data();
    f.q = q_.data();
    f.k = k_.data();
    f.v = v_.data();
    f.attn = attn_.data();
    f.tmp = tmp_.data();
    f.gate = gate_.data();
    f.up = up_.data();
    f.rope = &rope_;
    f.rope_swa = hp_.n_swa > 0 ? &rope_swa_ : &rope_;
    f.out_first = out_first;
    f.logits = logits;
    f.kv_f32 = &kv_f32_;
    f.out_runs = out_runs_.empty() ? nullptr : &out_runs_;
    model_.spec().forward(f);
}

void ContextImpl::set_output_rows(int64_t n_first, const std::vector<int32_t>& extra) {
    out_runs_.clear();
    const int64_t n_vocab = hp_.n_vocab, g = ops::kRowGroup;
    if (n_first <= 0 || n_first >= n_vocab) return;
    const int64_t n_groups = (n_vocab + g - 1) / g;
    group_marks_.assign(size_t(n_groups), 0);
    std::fill(group_marks_.begin(), group_marks_.begin() + (n_first + g - 1) / g, 1);
    for (int32_t id : extra) {
        if (id < 0 || id >= n_vocab)
            throw Error("set_output_rows: token id " + std::to_string(id) + " is outside the vocabulary (" +
                        std::to_string(n_vocab) + " tokens)");
        group_marks_[size_t(id / g)] = 1;
    }
    for (int64_t i = 0; i < n_groups;) {
        if (!group_marks_[size_t(i)]) {
            ++i;
            continue;
        }
        int64_t j = i;
        while (j < n_groups && group_marks_[size_t(j)]) ++j;
        out_runs_.push_back(i);
        out_runs_.push_back(j - i);
        i = j;
    }
    if (out_runs_.size() == 2 && out_runs_[1] == n_groups) out_runs_.clear();  // every row
}

void ContextImpl::truncate(uint32_t n_past) {
    if (int64_t(n_past) > n_past_)
        throw Error("truncate: n_past " + std::to_string(n_past) + " is beyond the " + std::to_string(n_past_) +
                    " cached tokens");
    n_past_ = n_past;
    tokens_.resize(n_past);
    n_logit_rows_ = 0;
}

size_t ContextImpl::prefill(const int32_t* tokens, size_t n) {
    if (n == 0) throw Error("prefill: no tokens given");
    if (n > size_t(n_ctx_))
        throw ContextFull("context full: " + std::to_string(n) + " tokens exceed n_ctx " + std::to_string(n_ctx_));
    size_t common = 0;
    while (common < tokens_.size() && common < n && tokens_[common] == tokens[common]) ++common;
    common = std::min(common, n - 1);
    truncate(uint32_t(common));
    eval(tokens + common, n - common, false);
    return common;
}

StateShape ContextImpl::shape(const StateOwner& owner) const {
    StateShape s;
    s.model_id = owner.model_id;
    s.n_vocab = uint32_t(hp_.n_vocab);
    s.n_layer = uint32_t(hp_.n_layer);
    s.n_head_kv = uint32_t(hp_.n_head_kv);
    s.head_dim = uint32_t(hp_.head_dim);
    s.n_ctx = uint32_t(n_ctx_);
    s.kv_type = static_cast<uint32_t>(kv_type_);
    return s;
}

void ContextImpl::save_state(const std::string& path, const StateOwner& owner) const {
    const float* last = n_logit_rows_ ? logits_.data() + (n_logit_rows_ - 1) * size_t(hp_.n_vocab) : nullptr;
    write_state(path, shape(owner), cache_, tokens_, last);
}

void ContextImpl::load_state(const std::string& path, const StateOwner& owner) {
    LoadedState st = read_state(path, shape(owner), cache_.row_bytes(), owner.model_path);
    if (logits_.size() < st.logits.size()) logits_.resize(st.logits.size());
    // Everything is checked and allocated: from here on nothing throws.
    const size_t rb = cache_.row_bytes(), n = st.tokens.size();
    for (int64_t l = 0; l < hp_.n_layer; ++l)
        for (size_t p = 0; p < n; ++p) {
            const uint8_t* row = st.kv.data() + (size_t(l) * n + p) * 2 * rb;
            cache_.set_row(l, int64_t(p), row, row + rb);
        }
    tokens_ = std::move(st.tokens);
    n_past_ = int64_t(n);
    if (!st.logits.empty()) {
        std::copy(st.logits.begin(), st.logits.end(), logits_.begin());
        n_logit_rows_ = 1;
    } else {
        n_logit_rows_ = 0;
    }
}

}  // namespace

std::unique_ptr<Context> Context::create(const Model& model, const ContextParams& params) {
    const auto* impl = dynamic_cast<const ModelImpl*>(&model);
    if (!impl) throw Error("context: the model was not loaded by Model::load");
    return std::make_unique<ContextImpl>(*impl, params);
}

}  // namespace edgellm
