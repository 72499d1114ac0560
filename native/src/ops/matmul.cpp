// matmul: weight rows split over the pool in tasks of whole row tiles.
// Quantized weights take the integer path (ops/qgemm.h): activations quantized once per call, then
// either the fused decode kernel over raw blocks (a few tokens) or tiles of unpacked rows
// multiplied against every token; both give the same bits.
// F32 / F16 / BF16 weights take the float path: a task dequantizes a tile of rows into a per-thread
// f32 buffer (sized to stay in cache; F32 is used in place) and multiplies it against every token
// with the ISA's register-blocked kernel, the summation order fixed by k alone.
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

bool qunpack_scalar(quant::Type, const uint8_t*, size_t, int64_t, const QRows&, int64_t) { return false; }
bool qfused_scalar(quant::Type, const uint8_t*, size_t, int64_t, const QActs&, int64_t, float*, int64_t) {
    return false;
}

const Kernels kScalar = {Isa::Scalar, dequant_scalar, gemm_scalar, qunpack_scalar, qgemm_ref, qfused_scalar};

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
constexpr int64_t kQTileBytes = 128 << 10;      // unpacked bytes of one integer-path tile

int64_t round_up(int64_t v, int64_t m) { return (v + m - 1) / m * m; }

// The integer path: activations quantized once (in parallel over tokens when there are many),
// then each task unpacks tiles of its rows and multiplies them against every token.
void run_qmatmul(const Kernels& K, const QFormat& qf, const uint8_t* W, quant::Type type, size_t rs, int64_t rows,
                 int64_t k, const float* x, int64_t n_tokens, float* y, ThreadPool& pool, int64_t n_tasks,
                 int64_t task_rows) {
    const int64_t nb = k / kQBlock;
    thread_local std::vector<int16_t> aq;
    thread_local std::vector<float> ad, as;
    aq.resize(static_cast<size_t>(n_tokens * k));
    ad.resize(static_cast<size_t>(n_tokens * nb));
    as.resize(static_cast<size_t>(n_tokens * 2 * nb));
    int16_t* q = aq.data();
    float *d = ad.data(), *s = as.data();
    if (n_tokens >= 16) {
        const int64_t per = 8, n = (n_tokens + per - 1) / per;
        pool.run(n, [&](int64_t i, int) {
            const int64_t t0 = i * per, nt = std::min(n_tokens, t0 + per) - t0;
            quantize_acts(x + t0 * k, nt, k, q + t0 * k, d + t0 * nb, s + t0 * 2 * nb);
        });
    } else {
        quantize_acts(x, n_tokens, k, q, d, s);
    }
    const QActs acts{k, nb, q, d, s};

    // A few tokens: the blocks are decoded in registers, each weight byte read once.
    if (K.qfused(type, W, rs, 0, acts, n_tokens, y, rows)) {
        pool.run(n_tasks, [&](int64_t task, int) {
            const int64_t r0 = task * task_rows, nr = std::min(rows, r0 + task_rows) - r0;
            K.qfused(type, W + static_cast<size_t>(r0) * rs, rs, nr, acts, n_tokens, y + r0, rows);
        });
        return;
    }

    // Rows per unpacked tile: its bytes stay in L2 while the tokens pass over it.
    const int64_t tile_rows = std::max<int64_t>(kRowAlign, (kQTileBytes / (2 * k)) / kRowAlign * kRowAlign);
    pool.run(n_tasks, [&](int64_t task, int) {
        thread_local std::vector<int16_t> tv;
        thread_local std::vector<float> td, tm;
        const int64_t r_end = std::min(rows, (task + 1) * task_rows);
        const int64_t n = std::min(tile_rows, r_end - task * task_rows);
        if (tv.size() < qrows_v_count(n, k)) tv.resize(qrows_v_count(n, k));
        if (td.size() < qrows_scale_count(n, k)) {
            td.resize(qrows_scale_count(n, k));
            tm.resize(qrows_scale_count(n, k));
        }
        const QRows tile{qf, k, nb, tv.data(), td.data(), tm.data()};
        for (int64_t r0 = task * task_rows; r0 < r_end; r0 += tile_rows) {
            const int64_t nr = std::min(tile_rows, r_end - r0);
            const uint8_t* src = W + static_cast<size_t>(r0) * rs;
            if (!K.qunpack(type, src, rs, nr, tile, 0)) unpack_rows_ref(type, src, rs, nr, tile, 0);
            K.qgemm(tile, nr, acts, n_tokens, y + r0, rows);
        }
    });
}

void run_matmul(const Kernels& K, const uint8_t* W, quant::Type type, int64_t rows, int64_t k, const float* x,
                int64_t n_tokens, float* y, ThreadPool& pool) {
    check(type, k);
    if (rows <= 0 || n_tokens <= 0) return;
    const size_t rs = quant::row_size(type, k);
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

    QFormat qf;
    if (qformat(type, &qf)) {
        run_qmatmul(K, qf, W, type, rs, rows, k, x, n_tokens, y, pool, n_tasks, task_rows);
        return;
    }

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

void get_row(const uint8_t* W, quant::Type type, int64_t k, int64_t r, float* out) {
    detail::check(type, k);
    const size_t rs = quant::row_size(type, k);
    const uint8_t* src = W + static_cast<size_t>(r) * rs;
    if (!detail::best_kernels().dequant(type, src, rs, 1, k, out, k)) quant::dequantize(type, src, out, 1, k, 1);
}

}  // namespace edgellm::ops
