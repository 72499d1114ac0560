// matmul: weight rows split over the pool in tasks of whole row tiles.
// Quantized weights take the integer path (ops/qgemm.h): activations quantized once per call,
// then each task multiplies its panels against every token; the panels come packed (pack(), at
// model load) or, for raw rows, are packed by each task into a buffer of its own first. Both give
// the same bits.
// F32 / F16 / BF16 weights take the float path: a task dequantizes a tile of rows into a per-thread
// f32 buffer (sized to stay in cache; F32 is used in place) and multiplies it against every token
// with the ISA's register-blocked kernel, the summation order fixed by k alone. F16 rows against
// few tokens are read in place instead (gemm_f16: the same sums on the same exact conversions).
// Either way results depend neither on the split nor on n_tokens.
#include "ops/matmul.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <cstdint>
#include <string>
#include <vector>

#include "common/error.h"
#include "ops/matmul_kernels.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace edgellm::ops {

bool supports(quant::Type type) {
    using T = quant::Type;
    switch (type) {
        case T::F32: case T::F16: case T::BF16: case T::Q4_0: case T::Q4_1: case T::Q5_0: case T::Q5_1:
        case T::Q8_0: case T::Q2_K: case T::Q3_K: case T::Q4_K: case T::Q5_K: case T::Q6_K:
            return true;
        default:
            return false;
    }
}

namespace detail {

namespace {

// ---- scalar kernels: the portable fallback ----

bool dequant_scalar(quant::Type, const uint8_t*, size_t, int64_t, int64_t, float*, int64_t) { return false; }

// Plain sequential f32 sums (no contraction: the library is built with -ffp-contract=off).
void gemm_scalar(const float* w, int64_t ldw, int64_t nr, const float* x, int64_t ldx, int64_t nt, int64_t k, float* y,
                 int64_t ldy) {
    for (int64_t t = 0; t < nt; ++t)
        for (int64_t r = 0; r < nr; ++r) {
            const float* wr = w + r * ldw;
            const float* xt = x + t * ldx;
            float s = 0.0f;
            for (int64_t j = 0; j < k; ++j) s += wr[j] * xt[j];
            y[t * ldy + r] = s;
        }
}

void qgemm_scalar(const QFmt& f, const uint8_t* w, int64_t p0, int64_t np, int64_t rows, const QActs& a, int64_t nt,
                  float* y, int64_t ldy) {
    const int64_t r0 = p0 * kPanelRows, r1 = std::min(rows, (p0 + np) * kPanelRows);
    qgemm_ref(f, w + static_cast<size_t>(p0) * qpanel_bytes(f, a.k), r1 - r0, a, nt, y + r0, ldy);
}

const Kernels kScalar = {Isa::Scalar, dequant_scalar, gemm_scalar, qgemm_scalar};

const Kernels* kernels_of(Isa isa) {
    switch (isa) {
        case Isa::Avx512: return kernels_avx512();
        case Isa::Avx2: return kernels_avx2();
        case Isa::Scalar: return &kScalar;
    }
    return nullptr;
}

// The kernels in use: the best the CPU has unless EDGELLM_ISA or set_isa() asks for another.
std::atomic<const Kernels*>& active_kernels() {
    static std::atomic<const Kernels*> active{[] {
        if (const char* env = std::getenv("EDGELLM_ISA"); env && *env) {
            const Kernels* k = kernels_of(isa_from_name(env));
            if (!k) throw Error(std::string("EDGELLM_ISA=") + env + ": this CPU cannot run those kernels");
            return k;
        }
        if (const Kernels* k = kernels_avx512()) return k;
        if (const Kernels* k = kernels_avx2()) return k;
        return &kScalar;
    }()};
    return active;
}

const Kernels& best_kernels() { return *active_kernels().load(std::memory_order_relaxed); }

void check(quant::Type type, int64_t k) {
    if (!supports(type)) {
        const quant::Traits* t = quant::traits(static_cast<uint32_t>(type));
        throw Error(std::string("matmul: weight type ") +
                    (t ? t->name : "id " + std::to_string(static_cast<uint32_t>(type))) + " is not supported");
    }
    if (k <= 0) throw Error("matmul: row length " + std::to_string(k) + " is not positive");
    quant::row_size(type, k);  // throws when k is not a multiple of the block size
}

constexpr int64_t kRowAlign = 4;                // the kernels' row tile
constexpr int64_t kPrefillTileBytes = 96 << 10;  // dequantized rows per tile when many tokens reuse them
constexpr int64_t kDecodeTileBytes = 16 << 10;   // ... and when few do: stay in L1
constexpr int64_t kManyTokens = 4;
constexpr int64_t kDirectF16Tokens = 16;  // up to this many tokens, f16 rows are read in place (gemm_f16)

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

int64_t n_panels(int64_t rows) { return (rows + kPanelRows - 1) / kPanelRows; }

constexpr int kMaxFused = 4;  // weights in one matmul_many()

// The activations of one call, quantized for format f (in parallel over tokens when there are
// many), in buffers of the calling thread.
QActs quantize_for(const QFmt& f, const float* x, int64_t n_tokens, int64_t k, ThreadPool& pool, int slot = 0) {
    const int64_t nb = k / kQBlock;
    struct Buffers {
        std::vector<int16_t> q;
        std::vector<float> d, s;
        std::vector<int32_t> z;
    };
    thread_local Buffers slots[kMaxFused];
    std::vector<int16_t>& aq = slots[slot].q;
    std::vector<float>&ad = slots[slot].d, &as = slots[slot].s;
    std::vector<int32_t>& az = slots[slot].z;
    aq.resize(static_cast<size_t>(n_tokens * k));
    ad.resize(static_cast<size_t>(n_tokens * nb));
    as.resize(static_cast<size_t>(n_tokens * 2 * nb));
    az.resize(static_cast<size_t>(n_tokens * 2 * nb));
    int16_t* q = aq.data();
    float *d = ad.data(), *s = as.data();
    int32_t* z = az.data();
    if (n_tokens >= 16) {
        const int64_t per = 8, n = (n_tokens + per - 1) / per;
        pool.run(n, [&](int64_t i, int) {
            const int64_t t0 = i * per, nt = std::min(n_tokens, t0 + per) - t0;
            quantize_acts(f, x + t0 * k, nt, k, q + t0 * k, d + t0 * nb, z + t0 * 2 * nb, s + t0 * 2 * nb);
        });
    } else {
        quantize_acts(f, x, n_tokens, k, q, d, z, s);
    }
    return QActs{k, nb, q, d, z, s};
}

// Panels per task: a few tasks per thread for balance.
int64_t panels_per_task(int64_t np, int64_t n_threads) {
    return std::max<int64_t>(1, (np + 4 * n_threads - 1) / (4 * n_threads));
}

// The integer path over raw rows: each task packs its panels into a buffer of its thread first.
void run_qmatmul(const Kernels& K, const QFmt& f, const uint8_t* W, size_t rs, int64_t rows, int64_t k,
                 const float* x, int64_t n_tokens, float* y, ThreadPool& pool) {
    const QActs acts = quantize_for(f, x, n_tokens, k, pool);
    const size_t pb = qpanel_bytes(f, k);
    const int64_t np = n_panels(rows), per = panels_per_task(np, pool.n_threads());
    pool.run((np + per - 1) / per, [&](int64_t task, int) {
        thread_local std::vector<uint8_t> buf;
        const int64_t p0 = task * per, n = std::min(per, np - p0), r0 = p0 * kPanelRows;
        if (buf.size() < static_cast<size_t>(n) * pb) buf.resize(static_cast<size_t>(n) * pb);
        qpack(f, W, rs, rows, k, r0, std::min(rows - r0, n * kPanelRows), buf.data());
        K.qgemm(f, buf.data(), 0, n, rows - r0, acts, n_tokens, y + r0, rows);
    });
}

// f16 weights W[i] (rows[i] x k) against n_tokens <= kDirectF16Tokens, read in place by the ISA's
// gemm_f16, all n in one pass over the pool; false (nothing done) when that does not apply.
bool run_f16_direct(const Kernels& K, const uint8_t* const* W, quant::Type type, const int64_t* rows, int64_t k,
                    float* const* y, int n, const float* x, int64_t n_tokens, ThreadPool& pool) {
    if (type != quant::Type::F16 || !K.gemm_f16 || n_tokens > kDirectF16Tokens || n > kMaxFused) return false;
    int64_t per[kMaxFused], first[kMaxFused + 1] = {0};
    for (int i = 0; i < n; ++i) {
        if (reinterpret_cast<uintptr_t>(W[i]) % alignof(uint16_t) != 0) return false;
        const int64_t r = rows[i], nt = pool.n_threads();
        per[i] = round_up(std::max<int64_t>(1, (r + 4 * nt - 1) / (4 * nt)), 2 * kRowAlign);
        first[i + 1] = first[i] + (r + per[i] - 1) / per[i];
    }
    pool.run(first[n], [&](int64_t task, int) {
        int i = 0;
        while (task >= first[i + 1]) ++i;
        const int64_t r0 = (task - first[i]) * per[i], nr = std::min(per[i], rows[i] - r0);
        K.gemm_f16(reinterpret_cast<const uint16_t*>(W[i]) + r0 * k, k, nr, x, k, n_tokens, k, y[i] + r0, rows[i]);
    });
    return true;
}

void run_matmul(const Kernels& K, const uint8_t* W, quant::Type type, int64_t rows, int64_t k, const float* x,
                int64_t n_tokens, float* y, ThreadPool& pool) {
    check(type, k);
    if (rows <= 0 || n_tokens <= 0) return;
    const size_t rs = quant::row_size(type, k);
    QFmt qf;
    if (qfmt(type, &qf)) {
        run_qmatmul(K, qf, W, rs, rows, k, x, n_tokens, y, pool);
        return;
    }

    // f16 weights against few tokens: read in place, widened in registers (no tile conversion pass)
    if (run_f16_direct(K, &W, type, &rows, k, &y, 1, x, n_tokens, pool)) return;

    // f32 weights are read in place when aligned (GGUF aligns tensor data to 32 bytes by default)
    const bool in_place = type == quant::Type::F32 && reinterpret_cast<uintptr_t>(W) % alignof(float) == 0;

    // Rows per dequantized tile: bounded by cache, a multiple of the kernel's 4 rows.
    const int64_t tile_bytes = n_tokens >= kManyTokens ? kPrefillTileBytes : kDecodeTileBytes;
    const int64_t tile_rows = std::max(kRowAlign, tile_bytes / (k * 4) / kRowAlign * kRowAlign);
    // Rows per task: a few tasks per thread for balance, whole tiles when there are enough rows.
    const int64_t n_threads = pool.n_threads();
    int64_t task_rows = round_up(std::max<int64_t>(1, (rows + 4 * n_threads - 1) / (4 * n_threads)), kRowAlign);
    if (task_rows > tile_rows) task_rows = round_up(task_rows, tile_rows);
    const int64_t n_tasks = (rows + task_rows - 1) / task_rows;

    pool.run(n_tasks, [&](int64_t task, int) {
        thread_local std::vector<float> buf;
        const int64_t r_end = std::min(rows, (task + 1) * task_rows);
        for (int64_t r0 = task * task_rows; r0 < r_end; r0 += tile_rows) {
            const int64_t nr = std::min(tile_rows, r_end - r0);
            const uint8_t* src = W + static_cast<size_t>(r0) * rs;
            const float* w;
            if (in_place) {
                w = reinterpret_cast<const float*>(src);
            } else {
                if (buf.size() < static_cast<size_t>(nr * k)) buf.resize(static_cast<size_t>(tile_rows * k));
                if (!K.dequant(type, src, rs, nr, k, buf.data(), k)) quant::dequantize(type, src, buf.data(), nr, k, 1);
                w = buf.data();
            }
            K.gemm(w, k, nr, x, k, n_tokens, k, y + r0, rows);
        }
    });
}

}  // namespace

const char* isa_name(Isa isa) {
    switch (isa) {
        case Isa::Avx512: return "avx512";
        case Isa::Avx2: return "avx2";
        case Isa::Scalar: return "scalar";
    }
    return "?";
}

Isa best_isa() { return best_kernels().isa; }

void set_isa(Isa isa) {
    const Kernels* k = kernels_of(isa);
    if (!k) throw Error(std::string("kernels ") + isa_name(isa) + " are not available on this CPU");
    active_kernels().store(k, std::memory_order_relaxed);
}

Isa isa_from_name(const char* name) {
    for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512})
        if (std::strcmp(name, isa_name(isa)) == 0) return isa;
    throw Error(std::string("unknown instruction set '") + name + "' (expected scalar, avx2 or avx512)");
}

bool isa_available(Isa isa) { return kernels_of(isa) != nullptr; }

const Kernels* kernels_scalar() { return &kScalar; }

void matmul_with(Isa isa, const uint8_t* W, quant::Type type, int64_t rows, int64_t k, const float* x,
                 int64_t n_tokens, float* y, ThreadPool& pool) {
    const Kernels* K = kernels_of(isa);
    if (!K) throw Error(std::string("matmul: kernels ") + isa_name(isa) + " are not available on this CPU");
    run_matmul(*K, W, type, rows, k, x, n_tokens, y, pool);
}

}  // namespace detail

void matmul(const uint8_t* W, quant::Type type, int64_t rows, int64_t k, const float* x, int64_t n_tokens,
            float* y, ThreadPool& pool) {
    detail::run_matmul(detail::best_kernels(), W, type, rows, k, x, n_tokens, y, pool);
}

Packed::~Packed() = default;

size_t packed_bytes(quant::Type type, int64_t rows, int64_t k) {
    detail::check(type, k);
    detail::QFmt f;
    if (!detail::qfmt(type, &f)) return 0;
    return static_cast<size_t>(detail::n_panels(rows)) * detail::qpanel_bytes(f, k);
}

std::shared_ptr<uint8_t> huge_page_memory(size_t n) {
    const size_t align = n >= (size_t(2) << 20) ? size_t(2) << 20 : 64;
    void* mem = nullptr;
    if (n && posix_memalign(&mem, align, n) != 0)
        throw Error("cannot allocate " + std::to_string(n) + " bytes for weights");
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (align > 64) madvise(mem, n, MADV_HUGEPAGE);
#endif
    return std::shared_ptr<uint8_t>(static_cast<uint8_t*>(mem), [](uint8_t* p) { std::free(p); });
}

std::unique_ptr<Packed> pack(const uint8_t* W, quant::Type type, int64_t rows, int64_t k, ThreadPool* pool,
                             std::shared_ptr<uint8_t> block, size_t offset) {
    detail::check(type, k);
    detail::QFmt f;
    if (!detail::qfmt(type, &f)) return nullptr;
    const size_t pb = detail::qpanel_bytes(f, k), rs = quant::row_size(type, k);
    const int64_t np = detail::n_panels(rows);
    const size_t bytes = static_cast<size_t>(np) * pb;
    if (!block) {
        block = huge_page_memory(bytes);
        offset = 0;
    }
    uint8_t* mem = block.get() + offset;
    if (reinterpret_cast<uintptr_t>(mem) % 64 != 0) throw Error("pack: the destination is not 64-byte aligned");
    std::unique_ptr<Packed> out(new Packed());
    out->type_ = type;
    out->rows_ = rows;
    out->cols_ = k;
    out->bytes_ = bytes;
    out->data_ = mem;
    out->block_ = std::move(block);
    const int64_t per = 64;  // panels per task
    auto run = [&](int64_t task) {
        const int64_t p0 = task * per, r0 = p0 * detail::kPanelRows;
        const int64_t nr = std::min(rows - r0, per * detail::kPanelRows);
        detail::qpack(f, W, rs, rows, k, r0, nr, out->data_ + static_cast<size_t>(p0) * pb);
    };
    const int64_t n_tasks = (np + per - 1) / per;
    if (pool)
        pool->run(n_tasks, [&](int64_t task, int) { run(task); });
    else
        for (int64_t task = 0; task < n_tasks; ++task) run(task);
    return out;
}

void matmul_many(const Packed* const* W, float* const* y, int n, const float* x, int64_t n_tokens, ThreadPool& pool) {
    if (n < 1 || n > detail::kMaxFused) throw Error("matmul_many: " + std::to_string(n) + " weights (1 to 4)");
    if (n_tokens <= 0) return;
    const detail::Kernels& K = detail::best_kernels();
    detail::QFmt f[detail::kMaxFused];
    detail::QActs acts[detail::kMaxFused];
    int64_t first_task[detail::kMaxFused + 1] = {0}, per[detail::kMaxFused] = {};
    for (int i = 0; i < n; ++i) {
        if (W[i]->cols() != W[0]->cols()) throw Error("matmul_many: the weights' row lengths differ");
        detail::qfmt(W[i]->type(), &f[i]);
        // activations once per distinct (g16, zero point): they are all the prepared sums depend on
        int same = -1;
        for (int j = 0; j < i && same < 0; ++j)
            if (f[j].g16 == f[i].g16 && f[j].z == f[i].z) same = j;
        acts[i] = same >= 0 ? acts[same] : detail::quantize_for(f[i], x, n_tokens, W[0]->cols(), pool, i);
        const int64_t np = detail::n_panels(W[i]->rows());
        per[i] = detail::panels_per_task(np, pool.n_threads());
        first_task[i + 1] = first_task[i] + (np + per[i] - 1) / per[i];
    }
    pool.run(first_task[n], [&](int64_t task, int) {
        int i = 0;
        while (task >= first_task[i + 1]) ++i;
        const int64_t np = detail::n_panels(W[i]->rows()), p0 = (task - first_task[i]) * per[i];
        K.qgemm(f[i], W[i]->data(), p0, std::min(per[i], np - p0), W[i]->rows(), acts[i], n_tokens, y[i],
                W[i]->rows());
    });
}

void matmul_groups(const Packed& W, const int64_t* runs, int64_t n_runs, const float* x, int64_t n_tokens, float* y,
                   ThreadPool& pool) {
    static_assert(kRowGroup == detail::kPanelRows, "row groups are the packed panels");
    if (n_tokens <= 0 || n_runs <= 0) return;
    const int64_t np = detail::n_panels(W.rows());
    int64_t total = 0;
    for (int64_t r = 0; r < n_runs; ++r) {
        const int64_t g0 = runs[2 * r], n = runs[2 * r + 1];
        if (g0 < 0 || n < 1 || g0 + n > np || (r > 0 && g0 < runs[2 * r - 2] + runs[2 * r - 1]))
            throw Error("matmul_groups: run " + std::to_string(r) + " is out of order or outside the weight's " +
                        std::to_string(np) + " row groups");
        total += n;
    }
    const detail::Kernels& K = detail::best_kernels();
    detail::QFmt f;
    detail::qfmt(W.type(), &f);
    const detail::QActs acts = detail::quantize_for(f, x, n_tokens, W.cols(), pool);
    // tasks of up to `per` groups inside one run
    const int64_t per = detail::panels_per_task(total, pool.n_threads());
    std::vector<int64_t> tasks;  // (g0, n) pairs
    for (int64_t r = 0; r < n_runs; ++r)
        for (int64_t g = runs[2 * r], end = g + runs[2 * r + 1]; g < end; g += per) {
            tasks.push_back(g);
            tasks.push_back(std::min(per, end - g));
        }
    pool.run(int64_t(tasks.size() / 2), [&](int64_t t, int) {
        K.qgemm(f, W.data(), tasks[size_t(2 * t)], tasks[size_t(2 * t + 1)], W.rows(), acts, n_tokens, y, W.rows());
    });
}

void matmul(const Packed& W, const float* x, int64_t n_tokens, float* y, ThreadPool& pool) {
    const Packed* one = &W;
    matmul_many(&one, &y, 1, x, n_tokens, pool);
}

void matmul_many(const uint8_t* const* W, quant::Type type, const int64_t* rows, int64_t k, float* const* y, int n,
                 const float* x, int64_t n_tokens, ThreadPool& pool) {
    if (n < 1 || n > detail::kMaxFused) throw Error("matmul_many: " + std::to_string(n) + " weights (1 to 4)");
    detail::check(type, k);
    if (n_tokens <= 0) return;
    const detail::Kernels& K = detail::best_kernels();
    if (detail::run_f16_direct(K, W, type, rows, k, y, n, x, n_tokens, pool)) return;
    for (int i = 0; i < n; ++i) detail::run_matmul(K, W[i], type, rows[i], k, x, n_tokens, y[i], pool);
}

void get_row(const uint8_t* W, quant::Type type, int64_t k, int64_t r, float* out) {
    detail::check(type, k);
    const size_t rs = quant::row_size(type, k);
    const uint8_t* src = W + static_cast<size_t>(r) * rs;
    if (!detail::best_kernels().dequant(type, src, rs, 1, k, out, k)) quant::dequantize(type, src, out, 1, k, 1);
}

}  // namespace edgellm::ops
