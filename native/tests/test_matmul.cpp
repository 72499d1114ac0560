// matmul and ThreadPool against references. For every weight type, every kernel variant this CPU
// runs (scalar, AVX2, AVX-512), thread counts 1/2/3, odd row counts and n_tokens 1..33:
//  - each output is within 1e-5 * sum_j |w_j x_j| of a double-precision dot of the dequantized
//    weights (quant::dequantize, the scalar reference) and the activations (for the quantized
//    types, which take the integer path, the activations as quantized to 16-bit blocks);
//  - each output is bit-identical whatever the thread count and n_tokens (a token alone or in a
//    batch: every register tile of tokens) for a given variant, and the SIMD kernels of the
//    integer path are bit-identical to its scalar reference (they compute the same operations);
//  - a weight packed once (ops::pack) gives the bits of the same weight packed per call;
//  - the SIMD dequantizers and get_row are bit-identical to quant::dequantize.
// ThreadPool: every task runs once, exceptions reach the caller, nested runs work, many short runs.
// Usage: test_matmul [quick]   (exit status 0 when every check passes)
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "common/error.h"
#include "common/thread_pool.h"
#include "ops/matmul.h"
#include "ops/matmul_kernels.h"
#include "quant/quant.h"

using namespace edgellm;
using ops::detail::Isa;

namespace {

int g_failures = 0;

void fail(const std::string& what) {
    if (g_failures < 30) std::fprintf(stderr, "FAIL: %s\n", what.c_str());
    ++g_failures;
}

bool same_bits(float a, float b) { return std::memcmp(&a, &b, sizeof a) == 0; }

std::vector<float> random_floats(std::mt19937& rng, size_t n, float scale) {
    std::normal_distribution<float> dist(0.0f, scale);
    std::vector<float> v(n);
    for (auto& f : v) f = dist(rng);
    return v;
}

struct Weights {
    std::vector<uint8_t> bytes;  // rows * row_size
    std::vector<float> ref;      // rows x k, dequantized by the scalar reference
};

Weights make_weights(std::mt19937& rng, quant::Type type, int64_t rows, int64_t k) {
    const std::vector<float> w = random_floats(rng, static_cast<size_t>(rows * k), 0.5f);
    Weights out;
    out.bytes.resize(rows * quant::row_size(type, k));
    quant::quantize(type, w.data(), out.bytes.data(), rows, k, nullptr, 1);
    out.ref.resize(static_cast<size_t>(rows * k));
    quant::dequantize(type, out.bytes.data(), out.ref.data(), rows, k, 1);
    return out;
}

std::vector<Isa> isas() {
    std::vector<Isa> v;
    for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512})
        if (ops::detail::isa_available(isa)) v.push_back(isa);
    return v;
}

void test_type(std::mt19937& rng, quant::Type type, int64_t k, const std::vector<int64_t>& row_counts,
               const std::vector<int64_t>& token_counts, std::vector<ThreadPool*>& pools) {
    const char* tname = quant::traits(static_cast<uint32_t>(type))->name;
    const int64_t max_tokens = 33;
    const std::vector<float> x = random_floats(rng, static_cast<size_t>(max_tokens * k), 1.0f);
    for (int64_t rows : row_counts) {
        const Weights W = make_weights(rng, type, rows, k);
        // The integer path multiplies the activations quantized to 16-bit blocks: the reference
        // uses the same activations, dequantized (d * q).
        ops::detail::QFmt qf;
        const bool integer = ops::detail::qfmt(type, &qf);
        std::vector<float> xr = x;
        if (integer) {
            const int64_t nb = k / 32;
            std::vector<int16_t> q(x.size());
            std::vector<float> d(static_cast<size_t>(max_tokens * nb)), s(2 * d.size());
            std::vector<int32_t> z(s.size());
            ops::detail::quantize_acts(qf, x.data(), max_tokens, k, q.data(), d.data(), z.data(), s.data());
            for (size_t j = 0; j < x.size(); ++j) xr[j] = d[j / 32] * static_cast<float>(q[j]);
        }
        // reference: double dot and the magnitude sum_j |w_j x_j| per output
        std::vector<double> ref(static_cast<size_t>(max_tokens * rows)), mag(ref.size());
        for (int64_t t = 0; t < max_tokens; ++t)
            for (int64_t r = 0; r < rows; ++r) {
                double s = 0, m = 0;
                for (int64_t j = 0; j < k; ++j) {
                    const double p = static_cast<double>(W.ref[r * k + j]) * xr[t * k + j];
                    s += p;
                    m += std::fabs(p);
                }
                ref[t * rows + r] = s;
                mag[t * rows + r] = m;
            }
        for (Isa isa : isas()) {
            const std::string where = std::string(tname) + " k=" + std::to_string(k) + " rows=" +
                                      std::to_string(rows) + " " + ops::detail::isa_name(isa);
            // baseline: one thread, all tokens in one batch
            std::vector<float> base(static_cast<size_t>(max_tokens * rows));
            ops::detail::matmul_with(isa, W.bytes.data(), type, rows, k, x.data(), max_tokens, base.data(), *pools[0]);
            double worst = 0;
            for (size_t i = 0; i < base.size(); ++i) {
                const double err = std::fabs(base[i] - ref[i]) / (mag[i] + 1e-30);
                worst = std::max(worst, err);
            }
            if (!(worst <= 1e-5)) fail(where + ": relative error " + std::to_string(worst));
            if (integer && isa != Isa::Scalar) {
                std::vector<float> ref_bits(base.size());
                ops::detail::matmul_with(Isa::Scalar, W.bytes.data(), type, rows, k, x.data(), max_tokens,
                                         ref_bits.data(), *pools[0]);
                if (std::memcmp(ref_bits.data(), base.data(), base.size() * sizeof(float)) != 0)
                    fail(where + ": differs from the scalar reference");
            }
            for (ThreadPool* pool : pools)
                for (int64_t nt : token_counts)
                    for (int64_t t0 = 0; t0 + nt <= max_tokens; t0 += std::max<int64_t>(nt, 11)) {
                        std::vector<float> y(static_cast<size_t>(nt * rows), -1.0f);
                        ops::detail::matmul_with(isa, W.bytes.data(), type, rows, k, x.data() + t0 * k, nt, y.data(),
                                                 *pool);
                        int64_t diff = 0;
                        for (int64_t i = 0; i < nt * rows; ++i)
                            if (!same_bits(y[i], base[t0 * rows + i])) ++diff;
                        if (diff)
                            fail(where + " threads=" + std::to_string(pool->n_threads()) + " n_tokens=" +
                                 std::to_string(nt) + " t0=" + std::to_string(t0) + ": " + std::to_string(diff) +
                                 " outputs differ from the batched single-thread result");
                    }
        }
        // weights at an odd address (a GGUF may align tensors to 1 byte): same bits
        {
            std::vector<uint8_t> shifted(W.bytes.size() + 1);
            std::copy(W.bytes.begin(), W.bytes.end(), shifted.begin() + 1);
            std::vector<float> a(static_cast<size_t>(max_tokens * rows)), b(a.size());
            for (int64_t nt : {int64_t(1), max_tokens}) {
                ops::matmul(W.bytes.data(), type, rows, k, x.data(), nt, a.data(), *pools[1]);
                ops::matmul(shifted.data() + 1, type, rows, k, x.data(), nt, b.data(), *pools[1]);
                if (std::memcmp(a.data(), b.data(), static_cast<size_t>(nt * rows) * sizeof(float)) != 0)
                    fail(std::string(tname) + " k=" + std::to_string(k) + ": misaligned weights give other results");
            }
        }
        // dequantizers of every ISA and get_row: bit-identical to the scalar reference
        for (Isa isa : isas()) {
            const ops::detail::Kernels* K = isa == Isa::Avx512 ? ops::detail::kernels_avx512()
                                            : isa == Isa::Avx2 ? ops::detail::kernels_avx2()
                                                               : ops::detail::kernels_scalar();
            std::vector<float> d(static_cast<size_t>(rows * k));
            if (!K->dequant(type, W.bytes.data(), quant::row_size(type, k), rows, k, d.data(), k)) continue;
            if (std::memcmp(d.data(), W.ref.data(), d.size() * sizeof(float)) != 0)
                fail(std::string(tname) + " k=" + std::to_string(k) + " " + ops::detail::isa_name(isa) +
                     ": dequantizer differs from quant::dequantize");
        }
        // packed once (into memory of its own, and at an offset into a shared block whose bytes around it
        // must stay untouched): the bits of packing per call
        if (integer) {
            const size_t pb = ops::packed_bytes(type, rows, k);
            const std::shared_ptr<uint8_t> block = ops::huge_page_memory(pb + 192);
            std::memset(block.get(), 0xA5, pb + 192);
            const std::unique_ptr<ops::Packed> Ps[2] = {ops::pack(W.bytes.data(), type, rows, k, pools[2]),
                                                        ops::pack(W.bytes.data(), type, rows, k, pools[2], block, 128)};
            if (Ps[0]->bytes() != pb || Ps[1]->bytes() != pb || Ps[1]->data() != block.get() + 128)
                fail(std::string(tname) + " k=" + std::to_string(k) + ": packed_bytes() or the block's offset is off");
            for (size_t i = 0; i < pb + 192; i = i + 1 == 128 ? 128 + pb : i + 1)
                if (block.get()[i] != 0xA5) {
                    fail(std::string(tname) + " k=" + std::to_string(k) + ": pack() wrote outside its bytes");
                    break;
                }
            for (const std::unique_ptr<ops::Packed>& P : Ps)
                for (int64_t nt : {int64_t(1), int64_t(3), max_tokens}) {
                    std::vector<float> a(static_cast<size_t>(nt * rows)), b(a.size());
                    ops::matmul(W.bytes.data(), type, rows, k, x.data(), nt, a.data(), *pools[1]);
                    ops::matmul(*P, x.data(), nt, b.data(), *pools[1]);
                    if (std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) != 0)
                        fail(std::string(tname) + " k=" + std::to_string(k) + " rows=" + std::to_string(rows) +
                             ": packed weight differs from per-call packing");
                }
            // some row groups only (the first, and every third from the second on): their rows get
            // matmul()'s bits, every other element of y stays as it was
            {
                const int64_t ng = (rows + ops::kRowGroup - 1) / ops::kRowGroup;
                std::vector<int64_t> runs = {0, 1};
                for (int64_t g = 2; g < ng; g += 3) runs.insert(runs.end(), {g, 1});
                for (int64_t nt : {int64_t(1), int64_t(4)}) {
                    std::vector<float> a(static_cast<size_t>(nt * rows)), b(a.size(), -7.0f);
                    ops::matmul(*Ps[0], x.data(), nt, a.data(), *pools[1]);
                    ops::matmul_groups(*Ps[0], runs.data(), int64_t(runs.size() / 2), x.data(), nt, b.data(),
                                       *pools[1]);
                    for (int64_t t = 0; t < nt; ++t)
                        for (int64_t r = 0; r < rows; ++r) {
                            const int64_t g = r / ops::kRowGroup;
                            const bool in = g == 0 || (g >= 2 && (g - 2) % 3 == 0);
                            const float got = b[size_t(t * rows + r)], want = in ? a[size_t(t * rows + r)] : -7.0f;
                            if (std::memcmp(&got, &want, sizeof(float)) != 0) {
                                fail(std::string(tname) + " k=" + std::to_string(k) + " rows=" +
                                     std::to_string(rows) + ": matmul_groups differs at row " + std::to_string(r));
                                t = nt;
                                break;
                            }
                        }
                }
            }
        } else if (ops::pack(W.bytes.data(), type, rows, k, nullptr) || ops::packed_bytes(type, rows, k) != 0) {
            fail(std::string(tname) + ": a float type was packed");
        }
        // several raw weights in one call (the weight twice, then a shorter slice of it): the bits of
        // one matmul() each
        {
            const int64_t rows2 = std::max<int64_t>(1, rows / 2 + 1);
            const uint8_t* Ws[3] = {W.bytes.data(), W.bytes.data(), W.bytes.data()};
            const int64_t rs[3] = {rows, rows, rows2};
            for (int64_t nt : {int64_t(1), int64_t(2), int64_t(5), max_tokens}) {
                std::vector<float> one(static_cast<size_t>(nt * rows));
                std::vector<float> many[3] = {std::vector<float>(one.size()), std::vector<float>(one.size()),
                                              std::vector<float>(static_cast<size_t>(nt * rows2))};
                float* ys[3] = {many[0].data(), many[1].data(), many[2].data()};
                ops::matmul(W.bytes.data(), type, rows, k, x.data(), nt, one.data(), *pools[1]);
                ops::matmul_many(Ws, type, rs, k, ys, 3, x.data(), nt, *pools[1]);
                bool same = std::memcmp(one.data(), many[0].data(), one.size() * sizeof(float)) == 0 &&
                            std::memcmp(one.data(), many[1].data(), one.size() * sizeof(float)) == 0;
                std::vector<float> part(static_cast<size_t>(nt * rows2));
                ops::matmul(W.bytes.data(), type, rows2, k, x.data(), nt, part.data(), *pools[1]);
                same = same && std::memcmp(part.data(), many[2].data(), part.size() * sizeof(float)) == 0;
                if (!same)
                    fail(std::string(tname) + " k=" + std::to_string(k) + " rows=" + std::to_string(rows) +
                         " n_tokens=" + std::to_string(nt) + ": matmul_many of raw weights differs from matmul");
            }
        }
        std::vector<float> row(static_cast<size_t>(k));
        for (int64_t r = 0; r < rows; r += std::max<int64_t>(1, rows / 3)) {
            ops::get_row(W.bytes.data(), type, k, r, row.data());
            if (std::memcmp(row.data(), W.ref.data() + r * k, k * sizeof(float)) != 0)
                fail(std::string(tname) + ": get_row " + std::to_string(r) + " differs from quant::dequantize");
        }
    }
}

void test_errors() {
    ThreadPool pool(1);
    float x[64] = {}, y[4] = {};
    uint8_t w[1024] = {};
    auto expect_error = [&](const char* what, auto fn) {
        try {
            fn();
            fail(std::string(what) + ": no error");
        } catch (const Error&) {
        } catch (...) {
            fail(std::string(what) + ": wrong exception type");
        }
    };
    expect_error("q8_1 weights", [&] { ops::matmul(w, quant::Type::Q8_1, 1, 32, x, 1, y, pool); });
    expect_error("unknown type id", [&] { ops::matmul(w, static_cast<quant::Type>(99), 1, 32, x, 1, y, pool); });
    expect_error("k not a block multiple", [&] { ops::matmul(w, quant::Type::Q4_0, 1, 48, x, 1, y, pool); });
    expect_error("k = 0", [&] { ops::matmul(w, quant::Type::F32, 1, 0, x, 1, y, pool); });
    expect_error("get_row of i32", [&] { ops::get_row(w, quant::Type::I32, 4, 0, x); });
    expect_error("negative threads", [&] { ThreadPool p(-1); });
    if (ops::supports(quant::Type::Q8_K) || !ops::supports(quant::Type::Q3_K)) fail("supports()");
}

void test_pool() {
    for (int n : {1, 2, 3, 5}) {
        ThreadPool pool(n);
        if (pool.n_threads() != n) fail("n_threads");
        for (int64_t tasks : {int64_t(0), int64_t(1), int64_t(2), int64_t(7), int64_t(1000)}) {
            std::vector<std::atomic<int>> hits(static_cast<size_t>(tasks));
            std::atomic<int> bad_index{0};
            pool.run(tasks, [&](int64_t i, int t) {
                hits[static_cast<size_t>(i)].fetch_add(1);
                if (t < 0 || t >= n) bad_index.fetch_add(1);
            });
            for (auto& h : hits)
                if (h.load() != 1) fail("pool(" + std::to_string(n) + "): a task did not run exactly once");
            if (bad_index.load()) fail("pool: thread index out of range");
        }
        // exceptions: the first one is rethrown, the pool stays usable
        bool caught = false;
        try {
            pool.run(100, [&](int64_t i, int) {
                if (i == 37) throw Error("task 37");
            });
        } catch (const Error& e) {
            caught = std::string(e.what()) == "task 37";
        }
        if (!caught) fail("pool: exception not rethrown");
        // nested run: executes serially on the calling worker
        std::atomic<int64_t> sum{0};
        pool.run(8, [&](int64_t i, int) { pool.run(10, [&](int64_t j, int) { sum.fetch_add(i * 10 + j); }); });
        if (sum.load() != 79 * 80 / 2) fail("pool: nested run");
        // another pool driven from inside jobs (from several workers at once): its own indices
        ThreadPool inner(2);
        std::atomic<int64_t> inner_sum{0};
        std::atomic<int> inner_bad{0};
        pool.run(6, [&](int64_t, int) {
            inner.run(5, [&](int64_t j, int t) {
                if (t < 0 || t >= 2) inner_bad.fetch_add(1);
                inner_sum.fetch_add(j);
            });
        });
        if (inner_sum.load() != 6 * 10 || inner_bad.load()) fail("pool: run of another pool inside a job");
        // two outside threads driving the same pool: serialised, nothing lost
        std::atomic<int64_t> shared{0};
        std::thread other([&] {
            for (int it = 0; it < 2000; ++it) pool.run(3, [&](int64_t, int) { shared.fetch_add(1); });
        });
        for (int it = 0; it < 2000; ++it) pool.run(3, [&](int64_t, int) { shared.fetch_add(1); });
        other.join();
        if (shared.load() != 2 * 2000 * 3) fail("pool: runs from two threads");
        // many short runs (the spin/sleep handshake)
        std::atomic<int64_t> count{0};
        for (int it = 0; it < 20000; ++it) pool.run(n, [&](int64_t, int) { count.fetch_add(1); });
        if (count.load() != 20000LL * n) fail("pool: lost tasks over many runs");
    }
    ThreadPool all(0);
    if (all.n_threads() < 1) fail("pool(0): no threads");
}

}  // namespace

int main(int argc, char** argv) {
    const bool quick = argc > 1 && std::string(argv[1]) == "quick";
    std::mt19937 rng(1234);
    ThreadPool p1(1), p2(2), p3(3);
    std::vector<ThreadPool*> pools = {&p1, &p2, &p3};
    const std::vector<int64_t> tokens = quick ? std::vector<int64_t>{1, 7, 33}
                                              : std::vector<int64_t>{1, 2, 3, 5, 6, 7, 13, 33};
    using T = quant::Type;
    struct Case {
        T type;
        std::vector<int64_t> ks;
    };
    const std::vector<Case> cases = {
        {T::F32, {1, 19, 64, 577}}, {T::F16, {7, 64, 577}},  {T::BF16, {7, 64, 577}},   {T::Q8_0, {32, 96, 576}},
        {T::Q4_0, {32, 576}},       {T::Q4_1, {32, 576}},    {T::Q5_0, {32, 576}},      {T::Q5_1, {32, 576}},
        {T::Q2_K, {256}},           {T::Q3_K, {256}},        {T::Q4_K, {256, 1536}},    {T::Q5_K, {256, 768}},
        {T::Q6_K, {256, 768}},
    };
    for (const Case& c : cases)
        for (int64_t k : c.ks) test_type(rng, c.type, k, {1, 5, 37, 40}, tokens, pools);
    test_errors();
    test_pool();
    std::string names;
    for (Isa isa : isas()) names += std::string(" ") + ops::detail::isa_name(isa);
    if (g_failures) {
        std::fprintf(stderr, "test_matmul: %d failures (kernels:%s)\n", g_failures, names.c_str());
        return 1;
    }
    std::printf("test_matmul: ok (kernels:%s)\n", names.c_str());
    return 0;
}
