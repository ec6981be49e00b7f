#include "backend/cpu/thread_pool.h"

#include <immintrin.h>
#include <sched.h>

#include <chrono>

namespace tandem {
namespace {

using Clock = std::chrono::steady_clock;

thread_local bool t_in_pool_task = false;

// How long a worker polls for the next job before it sleeps: longer than the gaps between the
// parallel ops of a step and between the steps of a generation, short enough that an idle pool
// soon stops using a core that others may need.
constexpr auto kWorkerSpin = std::chrono::microseconds(2000);
// How long the caller polls for the workers to finish before it sleeps: they normally finish
// within microseconds of it, unless the OS has taken their core away for a time slice.
constexpr auto kCallerSpin = std::chrono::microseconds(200);

// The contention guard (thread_pool.h): a job is late when the caller, out of tasks, waits longer for
// the workers than it spent on tasks itself (plus kLateSlack); when more than kMaxLate of kWindow jobs
// are late, the jobs of the next kSolo run on the caller alone.
constexpr int kWindow = 64;
constexpr int kMaxLate = 16;
constexpr auto kLateSlack = std::chrono::microseconds(20);
constexpr auto kSolo = std::chrono::milliseconds(50);

// How long a poll uses the core alone before it also yields it between polls: the thread it waits
// for may be queued on the same core (the OS places new and woken threads where it likes, and the
// machine may have fewer free cores than the pool has threads).
constexpr auto kPollAlone = std::chrono::microseconds(20);

// Polls done() for up to `limit` (a pause between polls, and after kPollAlone a yield of the core
// between rounds of polls); returns its last value.
template <typename Done>
bool spin_until(Done done, Clock::duration limit) {
  const Clock::time_point start = Clock::now();
  for (;;) {
    for (int i = 0; i < 32; ++i) {  // ~1 µs between clock reads
      if (done()) return true;
      _mm_pause();
    }
    const Clock::duration spun = Clock::now() - start;
    if (spun > limit) return done();
    if (spun > kPollAlone) sched_yield();
  }
}

}  // namespace

ThreadPool::ThreadPool(int threads) {
  for (int i = 1; i < threads; ++i) workers_.emplace_back([this] { worker_main(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard lk(mu_);
    stop_.store(true);
  }
  wake_cv_.notify_all();
  for (auto& t : workers_) t.join();
}

void ThreadPool::work() {
  for (int64_t i; (i = next_.fetch_add(1, std::memory_order_relaxed)) < n_;) call_(ctx_, i);
}

void ThreadPool::run(int64_t n, Call call, void* ctx) {
  if (n <= 0) return;
  const Clock::time_point start = n > 1 && !workers_.empty() && !t_in_pool_task ? Clock::now() : Clock::time_point{};
  if (n == 1 || workers_.empty() || t_in_pool_task || start < solo_until_) {
    for (int64_t i = 0; i < n; ++i) call(ctx, i);
    return;
  }
  n_ = n;
  call_ = call;
  ctx_ = ctx;
  next_.store(0, std::memory_order_relaxed);
  busy_.store(static_cast<int>(workers_.size()), std::memory_order_relaxed);
  generation_.fetch_add(1);  // publishes the job (seq_cst: ordered before the sleepers_ check)
  if (sleepers_.load() > 0) {
    { std::lock_guard lk(mu_); }  // a worker between its check and its wait is now waiting
    wake_cv_.notify_all();
  }
  t_in_pool_task = true;
  work();
  t_in_pool_task = false;
  const Clock::time_point own_done = Clock::now();
  auto done = [&] { return busy_.load(std::memory_order_acquire) == 0; };
  if (!spin_until(done, kCallerSpin)) {
    caller_waiting_.store(true);
    {
      std::unique_lock lk(mu_);
      done_cv_.wait(lk, done);
    }
    caller_waiting_.store(false);
  }
  const Clock::time_point end = Clock::now();
  if (end - own_done > (own_done - start) + kLateSlack) ++window_late_;
  if (++window_jobs_ == kWindow) {
    if (window_late_ > kMaxLate) solo_until_ = end + kSolo;
    window_jobs_ = window_late_ = 0;
  }
}

void ThreadPool::worker_main() {
  t_in_pool_task = true;
  uint64_t seen = 0;
  auto job_or_stop = [&] { return generation_.load(std::memory_order_acquire) != seen || stop_.load(); };
  for (;;) {
    if (!spin_until(job_or_stop, kWorkerSpin)) {
      sleepers_.fetch_add(1);  // seq_cst: ordered before the predicate's generation_ check
      {
        std::unique_lock lk(mu_);
        wake_cv_.wait(lk, job_or_stop);
      }
      sleepers_.fetch_sub(1);
    }
    if (stop_.load()) return;
    seen = generation_.load(std::memory_order_acquire);
    work();
    if (busy_.fetch_sub(1) == 1 && caller_waiting_.load()) {  // seq_cst pair with the caller's flag
      std::lock_guard lk(mu_);
      done_cv_.notify_one();
    }
  }
}

}  // namespace tandem
