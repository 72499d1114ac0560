// The element-wise and row-wise steps of the forward pass (attention lives in attention.cpp).
// Plain loops over contiguous rows; rows are spread over the pool when there is enough work.
#include "model/ops.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "common/vmath.h"
#include "ops/matmul.h"
#include "ops/matmul_kernels.h"

// The vector helpers are inlined into each instruction-set variant; their ABI never crosses a call.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace edgellm {

namespace {

// Runs fn(row) for row in [0, n_rows): on the pool when the chunk has enough work (row_cost:
// rough operations per row), inline otherwise (decode steps are too small to be worth a wake-up).
template <typename Fn>
void for_rows(Forward& f, int64_t n_rows, int64_t row_cost, Fn&& fn) {
    if (n_rows <= 1 || n_rows * row_cost < (1 << 15) || f.pool.n_threads() == 1) {
        for (int64_t r = 0; r < n_rows; ++r) fn(r);
        return;
    }
    f.pool.run(n_rows, [&](int64_t r, int) { fn(r); });
}

void rms_norm_row(const float* x, const float* w, float* out, int64_t n, float eps) {
    double sum = 0.0;
    for (int64_t i = 0; i < n; ++i) sum += double(x[i]) * double(x[i]);
    const float scale = float(1.0 / std::sqrt(sum / double(n) + double(eps)));
    for (int64_t i = 0; i < n; ++i) out[i] = (x[i] * scale) * w[i];
}

}  // namespace

RopeFreqs rope_freqs(const RopeParams& p, int64_t n_rot, const std::vector<float>& freq_factors) {
    RopeFreqs out;
    const int64_t half = n_rot / 2;
    out.inv_freq.resize(static_cast<size_t>(half));
    // yarn: pairs below `low` rotate too fast to need interpolation, pairs above `high` are fully
    // interpolated, a linear ramp in between (the dims where the frequencies cross the training context).
    float low = 0.0f, high = 0.0f;
    if (p.scaling == RopeScaling::Yarn) {
        auto corr_dim = [&](float n_rotations) {
            return float(n_rot) * std::log(float(p.n_ctx_orig) / (n_rotations * 2.0f * 3.14159265358979f)) /
                   (2.0f * std::log(p.freq_base));
        };
        low = std::max(0.0f, std::floor(corr_dim(p.yarn_beta_fast)));
        high = std::min(float(n_rot - 1), std::ceil(corr_dim(p.yarn_beta_slow)));
        if (p.yarn_ext_factor != 0.0f) out.mscale = p.yarn_attn_factor * (1.0f + 0.1f * std::log(p.factor));
        else out.mscale = p.yarn_attn_factor;
    }
    for (int64_t i = 0; i < half; ++i) {
        float inv = 1.0f / std::pow(p.freq_base, float(2 * i) / float(n_rot));
        if (p.use_freq_factors && size_t(i) < freq_factors.size()) inv /= freq_factors[static_cast<size_t>(i)];
        switch (p.scaling) {
            case RopeScaling::None: break;
            case RopeScaling::Linear: inv /= p.factor; break;
            case RopeScaling::Yarn: {
                const float ramp = (float(i) - low) / std::max(0.001f, high - low);
                const float extrap = (1.0f - std::min(1.0f, std::max(0.0f, ramp))) * p.yarn_ext_factor;
                inv = (inv / p.factor) * (1.0f - extrap) + inv * extrap;
                break;
            }
        }
        out.inv_freq[static_cast<size_t>(i)] = inv;
    }
    return out;
}

void rope_table(const RopeFreqs& freqs, int64_t pos0, int64_t n_tokens, RopeTable& table) {
    const size_t half = freqs.inv_freq.size();
    table.cos.resize(size_t(n_tokens) * half);  // capacity is kept between chunks
    table.sin.resize(size_t(n_tokens) * half);
    for (int64_t t = 0; t < n_tokens; ++t) {
        const float pos = float(pos0 + t);
        for (size_t i = 0; i < half; ++i) {
            const double angle = double(pos * freqs.inv_freq[i]);
            table.cos[size_t(t) * half + i] = float(std::cos(angle)) * freqs.mscale;
            table.sin[size_t(t) * half + i] = float(std::sin(angle)) * freqs.mscale;
        }
    }
}

void embed(Forward& f, float scale) {
    const int64_t n = f.hp.n_embd;
    for_rows(f, f.n_tokens, 4 * n, [&](int64_t t) {
        float* x = f.x + t * n;
        ops::get_row(f.w.token_embd.data, f.w.token_embd.type, n, f.tokens[t], x);
        if (scale != 1.0f)
            for (int64_t i = 0; i < n; ++i) x[i] *= scale;
    });
}

void rms_norm(Forward& f, const float* x, const std::vector<float>& w, float* out, int64_t n_rows) {
    if (n_rows < 0) n_rows = f.n_tokens;
    const int64_t n = int64_t(w.size());
    const float eps = f.hp.norm_eps;
    for_rows(f, n_rows, 4 * n, [&](int64_t t) { rms_norm_row(x + t * n, w.data(), out + t * n, n, eps); });
}

void rms_norm_heads(Forward& f, float* x, int64_t n_heads, const std::vector<float>& w) {
    const int64_t hd = int64_t(w.size());
    const float eps = f.hp.norm_eps;
    for_rows(f, f.n_tokens, 4 * n_heads * hd, [&](int64_t t) {
        for (int64_t h = 0; h < n_heads; ++h) {
            float* row = x + (t * n_heads + h) * hd;
            rms_norm_row(row, w.data(), row, hd, eps);
        }
    });
}

namespace {

// out (n_rows, n) += bias (n) on every row; nothing when the bias is empty.
void add_bias(float* out, int64_t n_rows, int64_t n, const std::vector<float>& bias) {
    if (bias.empty()) return;
    for (int64_t t = 0; t < n_rows; ++t) {
        float* y = out + t * n;
        for (int64_t i = 0; i < n; ++i) y[i] += bias[size_t(i)];
    }
}

}  // namespace

void linear(Forward& f, const Matrix& W, const float* in, float* out, const std::vector<float>& bias,
            int64_t n_rows) {
    if (n_rows < 0) n_rows = f.n_tokens;
    if (W.packed)
        ops::matmul(*W.packed, in, n_rows, out, f.pool);
    else
        ops::matmul(W.data, W.type, W.rows, W.cols, in, n_rows, out, f.pool);
    add_bias(out, n_rows, W.rows, bias);
}

void linear_many(Forward& f, const float* in, std::initializer_list<LinearOut> outs) {
    // one pass when all are packed, or all raw of one type (f16 against few tokens); else one linear() each
    if (outs.size() == 0) return;
    const Matrix& first = outs.begin()->W;
    const ops::Packed* packed[4];
    const uint8_t* raw[4];
    int64_t rows[4];
    float* y[4];
    int n = 0;
    bool all_packed = true, all_raw = true;
    for (const LinearOut& o : outs) {
        if (n == 4 || o.W.cols != first.cols) {
            all_packed = all_raw = false;
            break;
        }
        all_packed = all_packed && o.W.packed;
        all_raw = all_raw && !o.W.packed && o.W.type == first.type;
        packed[n] = o.W.packed.get();
        raw[n] = o.W.data;
        rows[n] = o.W.rows;
        y[n++] = o.out;
    }
    if (all_packed) {
        ops::matmul_many(packed, y, n, in, f.n_tokens, f.pool);
    } else if (all_raw) {
        ops::matmul_many(raw, first.type, rows, first.cols, y, n, in, f.n_tokens, f.pool);
    } else {
        for (const LinearOut& o : outs) linear(f, o.W, in, o.out, o.bias ? *o.bias : std::vector<float>());
        return;
    }
    for (const LinearOut& o : outs)
        if (o.bias) add_bias(o.out, f.n_tokens, o.W.rows, *o.bias);
}

void rope(Forward& f, float* x, int64_t n_heads, const RopeTable& table, RopeLayout layout) {
    const int64_t hd = f.hp.head_dim, half = f.hp.n_rot / 2;
    for_rows(f, f.n_tokens, 4 * n_heads * half, [&](int64_t t) {
        const float* c = table.cos.data() + t * half;
        const float* s = table.sin.data() + t * half;
        for (int64_t h = 0; h < n_heads; ++h) {
            float* v = x + (t * n_heads + h) * hd;
            if (layout == RopeLayout::Normal) {
                for (int64_t i = 0; i < half; ++i) {
                    const float x0 = v[2 * i], x1 = v[2 * i + 1];
                    v[2 * i] = x0 * c[i] - x1 * s[i];
                    v[2 * i + 1] = x0 * s[i] + x1 * c[i];
                }
            } else {
                for (int64_t i = 0; i < half; ++i) {
                    const float x0 = v[i], x1 = v[i + half];
                    v[i] = x0 * c[i] - x1 * s[i];
                    v[i + half] = x1 * c[i] + x0 * s[i];
                }
            }
        }
    });
}

void add(Forward& f, float* x, const float* y, int64_t width) {
    for_rows(f, f.n_tokens, width, [&](int64_t t) {
        float* a = x + t * width;
        const float* b = y + t * width;
        for (int64_t i = 0; i < width; ++i) a[i] += b[i];
    });
}

namespace {

// g = silu(g) * u = g / (1 + exp(-g)) * u over n floats, 16 at a time with vmath::exp16 (the tail
// through the same function), so an element's result does not depend on where it sits, and every
// variant below gives the same bits. SmolLM2 (30 x 1536 elements per token): ~10 us per token where
// the C library's expf took ~48 us (perf, a 5-token pass of the f16 file).
inline void swiglu_body(float* g, const float* u, int64_t n) {
    using vmath::f32x16;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const f32x16 x = vmath::load16(g + i);
        vmath::store16(g + i, x / (1.0f + vmath::exp16(-x)) * vmath::load16(u + i));
    }
    for (; i < n; ++i) g[i] = g[i] / (1.0f + vmath::exp1(-g[i])) * u[i];
}

using SwigluFn = void (*)(float*, const float*, int64_t);

__attribute__((flatten)) void swiglu_generic(float* g, const float* u, int64_t n) { swiglu_body(g, u, n); }
#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx2"), flatten)) void swiglu_avx2(float* g, const float* u, int64_t n) {
    swiglu_body(g, u, n);
}
__attribute__((target("avx512f,avx512vl,avx512bw,avx512dq"), flatten)) void swiglu_avx512(float* g, const float* u,
                                                                                         int64_t n) {
    swiglu_body(g, u, n);
}
#endif

// The variant of the matmul kernels' instruction set (set_isa() switches both).
SwigluFn swiglu_for(ops::detail::Isa isa) {
#if defined(__x86_64__) && defined(__GNUC__)
    if (isa == ops::detail::Isa::Avx512) return swiglu_avx512;
    if (isa == ops::detail::Isa::Avx2) return swiglu_avx2;
#endif
    (void)isa;
    return swiglu_generic;
}

}  // namespace

void swiglu(Forward& f) {
    const int64_t n = f.hp.n_ff;
    const SwigluFn fn = swiglu_for(ops::detail::best_isa());
    for_rows(f, f.n_tokens, 4 * n, [&](int64_t t) { fn(f.gate + t * n, f.up + t * n, n); });
}

void geglu(Forward& f) {
    const int64_t n = f.hp.n_ff;
    const float c = 0.7978845608028654f;  // sqrt(2 / pi)
    for_rows(f, f.n_tokens, 16 * n, [&](int64_t t) {
        float* g = f.gate + t * n;
        const float* u = f.up + t * n;
        for (int64_t i = 0; i < n; ++i) {
            const float x = g[i];
            g[i] = 0.5f * x * (1.0f + std::tanh(c * (x + 0.044715f * x * x * x))) * u[i];
        }
    });
}

void output(Forward& f) {
    const int64_t n_rows = f.n_tokens - f.out_first;
    if (n_rows <= 0) return;
    const int64_t n = f.hp.n_embd;
    rms_norm(f, f.x + f.out_first * n, f.w.output_norm, f.xn, n_rows);
    const float cap = f.hp.final_logit_softcap;
    const int64_t total = n_rows * f.hp.n_vocab;
    if (f.out_runs && f.w.output.packed) {  // some rows only (Context::set_output_rows), the rest -inf
        std::fill(f.logits, f.logits + total, -std::numeric_limits<float>::infinity());
        ops::matmul_groups(*f.w.output.packed, f.out_runs->data(), int64_t(f.out_runs->size() / 2), f.xn, n_rows,
                           f.logits, f.pool);
        if (cap > 0.0f)
            for (int64_t i = 0; i < total; ++i)
                if (std::isfinite(f.logits[i])) f.logits[i] = std::tanh(f.logits[i] / cap) * cap;
        return;
    }
    linear(f, f.w.output, f.xn, f.logits, {}, n_rows);
    if (cap > 0.0f)
        for (int64_t i = 0; i < total; ++i) f.logits[i] = std::tanh(f.logits[i] / cap) * cap;
}

}  // namespace edgellm
