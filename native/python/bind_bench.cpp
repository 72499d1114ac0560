// _core.bench_read_bandwidth: a memory read-bandwidth probe for bench/run.py, which divides it by the
// bytes of weights read per token to get the decode ceiling (tok/s) of a model file.
#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "bindings.h"

namespace py = pybind11;

namespace edgellm_py {

namespace {

// Every pass stores its checksum here: a volatile store the compiler must keep, so it cannot drop the sums.
volatile uint64_t g_sink = 0;

// Sum of p[0, n) with 8 independent accumulators: one add per word and no long dependency chain, so the
// plain loop (or what the compiler vectorizes it into) runs as fast as memory delivers words.
uint64_t sum_words(const uint64_t* p, size_t n) {
    uint64_t acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        for (size_t j = 0; j < 8; ++j) acc[j] += p[i + j];
    }
    for (; i < n; ++i) acc[0] += p[i];
    uint64_t s = 0;
    for (size_t j = 0; j < 8; ++j) s += acc[j];
    return s;
}

// Runs fn(t, begin, end) on n_threads std::threads over [0, n) split into equal word ranges.
template <typename Fn>
void split(size_t n, int n_threads, Fn&& fn) {
    std::vector<std::thread> pool;
    pool.reserve(static_cast<size_t>(n_threads));
    const size_t per = n / static_cast<size_t>(n_threads);
    for (int t = 0; t < n_threads; ++t) {
        const size_t begin = per * static_cast<size_t>(t);
        const size_t end = t == n_threads - 1 ? n : begin + per;
        pool.emplace_back([&fn, t, begin, end] { fn(t, begin, end); });
    }
    for (auto& th : pool) th.join();
}

// Best read bandwidth (GB/s, 1e9 bytes) over `passes` full reads of a size_mb MiB buffer by n_threads.
double read_bandwidth(int n_threads, size_t size_mb, int passes) {
    const size_t n = size_mb * (size_t{1} << 20) / sizeof(uint64_t);  // words
    std::unique_ptr<uint64_t[]> buf(new uint64_t[n]);
    uint64_t* data = buf.get();
    // Touch every page (written by the threads that later read them) with values no compiler can predict.
    split(n, n_threads, [data](int, size_t begin, size_t end) {
        for (size_t i = begin; i < end; ++i) data[i] = i * 0x9E3779B97F4A7C15ull;
    });
    std::vector<uint64_t> partial(static_cast<size_t>(n_threads));
    double best = 0.0;
    for (int pass = 0; pass < passes; ++pass) {
        const auto t0 = std::chrono::steady_clock::now();
        split(n, n_threads, [data, &partial](int t, size_t begin, size_t end) {
            partial[static_cast<size_t>(t)] = sum_words(data + begin, end - begin);
        });
        const std::chrono::duration<double> dt = std::chrono::steady_clock::now() - t0;
        uint64_t total = 0;
        for (uint64_t s : partial) total += s;
        g_sink = total;
        if (dt.count() > 0) best = std::max(best, static_cast<double>(n * sizeof(uint64_t)) / dt.count() / 1e9);
    }
    return best;
}

}  // namespace

void bind_bench(py::module_& m) {
    m.def(
        "bench_read_bandwidth",
        [](int n_threads, int64_t size_mb, int passes) {
            if (n_threads < 1 || n_threads > 1024) {
                throw py::value_error("bench_read_bandwidth: n_threads=" + std::to_string(n_threads) +
                                      ": must be in [1, 1024]");
            }
            if (size_mb < 1 || size_mb > (int64_t{1} << 20)) {
                throw py::value_error("bench_read_bandwidth: size_mb=" + std::to_string(size_mb) +
                                      ": must be in [1, 1048576]");
            }
            if (passes < 1 || passes > 1000) {
                throw py::value_error("bench_read_bandwidth: passes=" + std::to_string(passes) +
                                      ": must be in [1, 1000]");
            }
            py::gil_scoped_release nogil;
            return read_bandwidth(n_threads, static_cast<size_t>(size_mb), passes);
        },
        py::arg("n_threads"), py::arg("size_mb") = 1024, py::arg("passes") = 5,
        "Best memory read bandwidth in GB/s (1e9 bytes/s) of `passes` full sums over a size_mb MiB buffer "
        "(make it much larger than the last-level cache) split across n_threads threads.");
}

}  // namespace edgellm_py
