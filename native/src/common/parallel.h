// parallel_for: split [0, n) into contiguous chunks over up to n_threads std::threads.
// A simple fork/join for the converter's row loops; the runtime gets a persistent pool later.
#pragma once

#include <algorithm>
#include <cstdint>
#include <exception>
#include <thread>
#include <vector>

namespace edgellm {

inline int resolve_threads(int n_threads) {
    if (n_threads > 0) return n_threads;
    unsigned hw = std::thread::hardware_concurrency();
    return hw == 0 ? 1 : static_cast<int>(hw);
}

// fn(begin, end) is called on disjoint ranges; exceptions from workers are rethrown in the caller.
template <typename Fn>
void parallel_for(int64_t n, int n_threads, int64_t min_chunk, Fn&& fn) {
    if (n <= 0) return;
    int64_t nt = std::min<int64_t>(resolve_threads(n_threads), std::max<int64_t>(1, n / std::max<int64_t>(1, min_chunk)));
    if (nt <= 1) {
        fn(int64_t(0), n);
        return;
    }
    std::vector<std::thread> workers;
    std::vector<std::exception_ptr> errors(static_cast<size_t>(nt));
    int64_t chunk = (n + nt - 1) / nt;
    for (int64_t t = 1; t < nt; ++t) {
        int64_t b = t * chunk, e = std::min(n, b + chunk);
        if (b >= e) break;
        workers.emplace_back([&, t, b, e] {
            try { fn(b, e); } catch (...) { errors[static_cast<size_t>(t)] = std::current_exception(); }
        });
    }
    try { fn(int64_t(0), std::min(n, chunk)); } catch (...) { errors[0] = std::current_exception(); }
    for (auto& w : workers) w.join();
    for (auto& e : errors)
        if (e) std::rethrow_exception(e);
}

}  // namespace edgellm
