#include "backend/cpu/thread_pool.h"

#include <immintrin.h>

namespace tandem {
namespace {

thread_local bool t_in_pool_task = false;

// ~100 µs of polling (pause is ~40-140 cycles): longer than the gap between two ops of a decode step, much shorter than a
// scheduler time slice, so an idle pool soon stops burning a core that others may need.
constexpr int kSpinIterations = 2000;

}  // namespace

ThreadPool::ThreadPool(int threads) {
  for (int i = 1; i < threads; ++i) workers_.emplace_back([this] { worker_main(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard lk(mu_);
    stop_ = true;
  }
  wake_cv_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::work() {
  for (int64_t i; (i = next_.fetch_add(1, std::memory_order_relaxed)) < n_;) call_(ctx_, i);
}

void ThreadPool::run(int64_t n, Call call, void* ctx) {
  if (n <= 0) return;
  if (n == 1 || workers_.empty() || t_in_pool_task) {
    for (int64_t i = 0; i < n; ++i) call(ctx, i);
    return;
  }
  {
    std::lock_guard lk(mu_);
    n_ = n;
    call_ = call;
    ctx_ = ctx;
    next_.store(0, std::memory_order_relaxed);
    busy_.store(static_cast<int>(workers_.size()), std::memory_order_relaxed);
    generation_.fetch_add(1, std::memory_order_release);
  }
  wake_cv_.notify_all();
  t_in_pool_task = true;
  work();
  t_in_pool_task = false;
  for (int spin = 0; busy_.load(std::memory_order_acquire) != 0; ++spin) {
    if (spin < kSpinIterations) {
      _mm_pause();
    } else {
      std::unique_lock lk(mu_);
      done_cv_.wait(lk, [&] { return busy_.load(std::memory_order_acquire) == 0; });
    }
  }
}

void ThreadPool::worker_main() {
  t_in_pool_task = true;
  uint64_t seen = 0;
  for (;;) {
    uint64_t gen = generation_.load(std::memory_order_acquire);
    for (int spin = 0; gen == seen && spin < kSpinIterations; ++spin) {
      _mm_pause();
      gen = generation_.load(std::memory_order_acquire);
    }
    if (gen == seen) {
      std::unique_lock lk(mu_);
      wake_cv_.wait(lk, [&] { return stop_ || generation_.load(std::memory_order_acquire) != seen; });
      if (stop_) return;
      gen = generation_.load(std::memory_order_acquire);
    }
    seen = gen;
    work();
    if (busy_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      std::lock_guard lk(mu_);  // pairs with the caller's predicate check under mu_
      done_cv_.notify_one();
    }
  }
}

}  // namespace tandem
