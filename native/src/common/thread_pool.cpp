// ThreadPool: spin-then-sleep workers over a generation counter; tasks handed out by an atomic
// counter. See thread_pool.h for the contract.
#include "common/thread_pool.h"

#include <chrono>
#include <string>

#include "common/error.h"

#if defined(__linux__)
#include <sched.h>
#endif

namespace edgellm {

namespace {

// How long an idle worker (or a waiting caller) polls before it sleeps. Long enough to bridge the
// gap between two ops of a forward pass, short enough not to steal a shared core for long.
constexpr auto kSpinTime = std::chrono::microseconds(200);
constexpr int kPureSpins = 256;

// The pool whose job the current thread is executing and its worker index there (null / -1
// outside a job): a run() on that same pool from inside a job executes serially.
thread_local const ThreadPool* tl_pool = nullptr;
thread_local int tl_worker = -1;

// Marks the current thread as worker `index` of `pool` for its lifetime.
struct WorkerScope {
    const ThreadPool* saved_pool = tl_pool;
    int saved_worker = tl_worker;
    WorkerScope(const ThreadPool* pool, int index) {
        tl_pool = pool;
        tl_worker = index;
    }
    ~WorkerScope() {
        tl_pool = saved_pool;
        tl_worker = saved_worker;
    }
    WorkerScope(const WorkerScope&) = delete;
    WorkerScope& operator=(const WorkerScope&) = delete;
};

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield");
#endif
}

// A few hundred pause instructions (a few microseconds), then yield the core between polls: when
// threads outnumber free cores, the thread we wait for may need exactly this core.
inline void pause_or_yield(int spins) {
    if (spins < kPureSpins)
        cpu_relax();
    else
        std::this_thread::yield();
}

}  // namespace

int available_cores() {
#if defined(__linux__)
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        const int n = CPU_COUNT(&set);
        if (n > 0) return n;
    }
#endif
    const unsigned hw = std::thread::hardware_concurrency();
    return hw == 0 ? 1 : static_cast<int>(hw);
}

ThreadPool::ThreadPool(int n_threads) {
    if (n_threads < 0 || n_threads > 1024)
        throw Error("n_threads: " + std::to_string(n_threads) + " is not a thread count (0 = all cores, up to 1024)");
    n_threads_ = n_threads == 0 ? available_cores() : n_threads;
    threads_.reserve(static_cast<size_t>(n_threads_ - 1));
    try {
        for (int i = 1; i < n_threads_; ++i) threads_.emplace_back(&ThreadPool::worker_main, this, i);
    } catch (...) {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            stop_ = true;
            generation_.fetch_add(1, std::memory_order_release);
        }
        wake_cv_.notify_all();
        for (auto& t : threads_) t.join();
        throw Error("cannot start " + std::to_string(n_threads_) + " threads");
    }
}

ThreadPool::~ThreadPool() {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        stop_ = true;
        generation_.fetch_add(1, std::memory_order_release);
    }
    wake_cv_.notify_all();
    for (auto& t : threads_) t.join();
}

void ThreadPool::work(int index) {
    const WorkerScope scope(this, index);
    for (;;) {
        if (failed_.load(std::memory_order_relaxed)) break;
        const int64_t i = next_.fetch_add(1, std::memory_order_relaxed);
        if (i >= n_tasks_) break;
        try {
            (*fn_)(i, index);
        } catch (...) {
            std::lock_guard<std::mutex> lock(mutex_);
            if (!error_) error_ = std::current_exception();
            failed_.store(true, std::memory_order_relaxed);
        }
    }
}

void ThreadPool::worker_main(int index) {
    uint64_t seen = 0;
    for (;;) {
        // Poll for the next job for a while, then sleep until run() or the destructor wakes us.
        uint64_t gen = generation_.load(std::memory_order_acquire);
        if (gen == seen) {
            const auto until = std::chrono::steady_clock::now() + kSpinTime;
            for (int spins = 0; gen == seen; ++spins) {
                pause_or_yield(spins);
                gen = generation_.load(std::memory_order_acquire);
                if ((spins & 15) == 15 && std::chrono::steady_clock::now() > until) break;
            }
        }
        if (gen == seen) {
            std::unique_lock<std::mutex> lock(mutex_);
            ++sleepers_;
            wake_cv_.wait(lock, [&] { return generation_.load(std::memory_order_acquire) != seen; });
            --sleepers_;
            gen = generation_.load(std::memory_order_acquire);
        }
        seen = gen;
        // stop_ is only set together with a generation bump, so checking it here is enough.
        if (stop_.load(std::memory_order_acquire)) return;
        work(index);
        if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
            std::lock_guard<std::mutex> lock(mutex_);
            done_cv_.notify_one();
        }
    }
}

void ThreadPool::run(int64_t n_tasks, const std::function<void(int64_t, int)>& fn) {
    if (n_tasks <= 0) return;
    if (tl_pool == this) {
        // Nested inside one of our own jobs: run serially as the calling worker.
        for (int64_t i = 0; i < n_tasks; ++i) fn(i, tl_worker);
        return;
    }
    // One job at a time: a second thread driving the same pool waits here.
    std::lock_guard<std::mutex> job_lock(run_mutex_);
    if (n_threads_ == 1 || n_tasks == 1) {
        const WorkerScope scope(this, 0);
        for (int64_t i = 0; i < n_tasks; ++i) fn(i, 0);
        return;
    }
    fn_ = &fn;
    n_tasks_ = n_tasks;
    next_.store(0, std::memory_order_relaxed);
    failed_.store(false, std::memory_order_relaxed);
    error_ = nullptr;
    pending_.store(n_threads_ - 1, std::memory_order_relaxed);
    bool wake;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        generation_.fetch_add(1, std::memory_order_release);
        wake = sleepers_ > 0;
    }
    if (wake) wake_cv_.notify_all();

    work(0);

    // Wait for the workers still finishing their last task.
    if (pending_.load(std::memory_order_acquire) != 0) {
        const auto until = std::chrono::steady_clock::now() + kSpinTime;
        for (int spins = 0; pending_.load(std::memory_order_acquire) != 0; ++spins) {
            pause_or_yield(spins);
            if ((spins & 15) == 15 && std::chrono::steady_clock::now() > until) {
                std::unique_lock<std::mutex> lock(mutex_);
                done_cv_.wait(lock, [&] { return pending_.load(std::memory_order_acquire) == 0; });
                break;
            }
        }
    }
    fn_ = nullptr;
    std::exception_ptr error;
    {
        std::lock_guard<std::mutex> lock(mutex_);
        error = error_;
        error_ = nullptr;
    }
    if (error) std::rethrow_exception(error);
}

}  // namespace edgellm
