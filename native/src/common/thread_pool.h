// A persistent pool of worker threads for the forward pass. Threads are created once; each run()
// wakes them, the caller works as worker 0, and run() returns when every task is done. Idle
// workers spin briefly (the next op usually follows within microseconds) and then sleep on a
// condition variable, so a pool that is not in use costs no CPU.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace edgellm {

// Cores this process may run on (the affinity mask where the OS has one), at least 1.
int available_cores();

class ThreadPool {
public:
    // n_threads: 0 = available_cores(); the calling thread is worker 0, so n_threads - 1 threads
    // are started. Throws edgellm::Error for a negative or absurd (> 1024) count.
    explicit ThreadPool(int n_threads);
    ~ThreadPool();
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    int n_threads() const { return n_threads_; }

    // Runs fn(i, thread_index) for i in [0, n_tasks) across the workers and the caller (tasks are
    // handed out dynamically, thread_index in [0, n_threads)); returns when all are done. The
    // first exception thrown by fn is rethrown here (remaining tasks are skipped). Not reentrant:
    // a run() on the same pool issued from inside fn executes its tasks serially on the calling
    // worker (with that worker's index); runs from two outside threads are serialised.
    void run(int64_t n_tasks, const std::function<void(int64_t, int)>& fn);

private:
    void worker_main(int index);
    void work(int index);

    int n_threads_ = 1;
    std::vector<std::thread> threads_;

    // One job at a time: published by run() before generation_ is bumped.
    const std::function<void(int64_t, int)>* fn_ = nullptr;
    int64_t n_tasks_ = 0;
    std::atomic<int64_t> next_{0};      // next task index to hand out
    std::atomic<int> pending_{0};       // workers (not the caller) still inside the current job
    std::atomic<uint64_t> generation_{0};
    std::atomic<bool> failed_{false};
    std::exception_ptr error_;          // first exception of the job (guarded by mutex_)

    std::mutex run_mutex_;              // held by the thread driving the current job
    std::mutex mutex_;
    std::condition_variable wake_cv_;   // workers sleep here between jobs
    std::condition_variable done_cv_;   // the caller sleeps here when a job runs long
    int sleepers_ = 0;                  // workers waiting on wake_cv_ (guarded by mutex_)
    std::atomic<bool> stop_{false};     // set with a generation bump, under mutex_
};

}  // namespace edgellm
