// The CPU backend's thread pool: every index runs exactly once, for jobs issued back to back (workers
// polling) and after the workers have gone to sleep; nested calls run serially on the calling thread.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "backend/cpu/thread_pool.h"

namespace tandem::test {
namespace {

void expect_each_index_once(ThreadPool& pool, int64_t n) {
  std::vector<std::atomic<int>> hits(n);
  pool.parallel_for(n, [&](int64_t i) { hits[i].fetch_add(1); });
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << "n=" << n << " i=" << i;
}

TEST(ThreadPool, EveryIndexOnceBackToBack) {
  for (int threads : {1, 2, 3}) {
    ThreadPool pool(threads);
    EXPECT_EQ(pool.size(), threads);
    for (int job = 0; job < 2000; ++job) expect_each_index_once(pool, 1 + job % 37);
    expect_each_index_once(pool, 0);
  }
}

TEST(ThreadPool, WakesSleepingWorkers) {
  ThreadPool pool(3);
  for (int job = 0; job < 3; ++job) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));  // longer than the workers poll
    expect_each_index_once(pool, 64);
  }
}

TEST(ThreadPool, WorkersShareTheJob) {
  // Tasks that wait for each other can only finish if two threads run them at once.
  ThreadPool pool(2);
  std::atomic<int> arrived{0};
  pool.parallel_for(2, [&](int64_t) {
    arrived.fetch_add(1);
    while (arrived.load() < 2) std::this_thread::yield();
  });
  EXPECT_EQ(arrived.load(), 2);
}

// Workers that keep finishing far behind the caller (as when other processes take their core) make
// the pool run jobs on the caller alone for a while; every index still runs exactly once.
TEST(ThreadPool, RunsOnTheCallerWhenWorkersAreLate) {
  ThreadPool pool(2);
  const std::thread::id caller = std::this_thread::get_id();
  auto job = [&](bool late_worker) {
    std::vector<std::atomic<int>> hits(64);
    std::atomic<bool> worker_ran{false};
    pool.parallel_for(64, [&](int64_t i) {
      if (std::this_thread::get_id() != caller) {
        worker_ran = true;
        if (late_worker) std::this_thread::sleep_for(std::chrono::milliseconds(1));  // lost its core
      }
      hits[i].fetch_add(1);
    });
    for (auto& h : hits) EXPECT_EQ(h.load(), 1);
    return worker_ran.load();
  };
  EXPECT_FALSE(pool.running_solo());
  for (int j = 0; j < 400 && !pool.running_solo(); ++j) job(true);
  ASSERT_TRUE(pool.running_solo()) << "jobs kept going to the late worker";
  EXPECT_FALSE(job(false));  // now the caller runs every task
}

TEST(ThreadPool, NestedCallsRunSerially) {
  ThreadPool pool(2);
  std::vector<std::atomic<int>> hits(8 * 8);
  pool.parallel_for(8, [&](int64_t i) {
    const std::thread::id outer = std::this_thread::get_id();
    pool.parallel_for(8, [&](int64_t j) {
      EXPECT_EQ(std::this_thread::get_id(), outer);
      hits[i * 8 + j].fetch_add(1);
    });
  });
  for (auto& h : hits) EXPECT_EQ(h.load(), 1);
}

}  // namespace
}  // namespace tandem::test
