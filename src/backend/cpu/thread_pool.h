// A small persistent thread pool for the CPU backend: parallel_for(n, fn) runs fn(i) for i in [0, n)
// on the pool's threads plus the calling thread, pulling indices from a shared atomic counter (so
// uneven tasks balance themselves), and returns when all are done.
//
// A decode step issues a parallel job every few microseconds, and waking a sleeping thread costs
// several microseconds more (tens on a busy virtual machine), so after each job the workers poll for
// the next one for a while (kSpin in thread_pool.cc) before they sleep; a job then reaches them in
// the time one cache line takes to move between cores. The caller only takes the mutex and makes a
// system call when a worker is actually asleep.
//
// On a machine whose cores other processes also want, a worker can lose its core in the middle of a
// task, and the caller then waits a time slice for it: parallel becomes slower than serial. The pool
// notices (most jobs of a window ending with the caller waiting longer than it worked) and runs jobs on
// the caller alone for a while before trying again. Which thread runs a task never changes a result.
#pragma once
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

namespace tandem {

class ThreadPool {
 public:
  // threads: total parallelism including the caller (>= 1).
  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }
  // Whether jobs run on the caller alone now (the contention guard above).
  bool running_solo() const { return std::chrono::steady_clock::now() < solo_until_; }

  // fn must not throw. Calls from inside a task run serially on that thread (no nested jobs).
  template <typename F>
  void parallel_for(int64_t n, F&& fn) {
    using Fn = std::remove_reference_t<F>;
    auto call = [](void* ctx, int64_t i) { (*static_cast<Fn*>(ctx))(i); };
    run(n, call, const_cast<void*>(static_cast<const void*>(&fn)));
  }

 private:
  using Call = void (*)(void*, int64_t);
  void run(int64_t n, Call call, void* ctx);
  void work();  // pulls indices of the current job until none are left
  void worker_main();

  std::vector<std::thread> workers_;
  // Contention guard (run() is called by one thread at a time): jobs and late jobs of the current
  // window, and until when jobs run on the caller alone.
  int window_jobs_ = 0, window_late_ = 0;
  std::chrono::steady_clock::time_point solo_until_{};
  std::mutex mu_;
  std::condition_variable wake_cv_, done_cv_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> generation_{0};  // bumped once per job
  std::atomic<int> sleepers_{0};         // workers blocked (or about to block) on wake_cv_
  std::atomic<bool> caller_waiting_{false};  // the caller blocks on done_cv_
  std::atomic<int> busy_{0};             // workers still inside the current job
  std::atomic<int64_t> next_{0};
  int64_t n_ = 0;
  Call call_ = nullptr;
  void* ctx_ = nullptr;
};

}  // namespace tandem
