// all_reduce over an in-process group: every rank, a thread with its own CPU backend, ends with the
// sum of all ranks' partials, added in rank order (so the same bits on every rank); a lone backend
// leaves its tensor as it is.
#include <gtest/gtest.h>

#include <thread>

#include "backend_test_util.h"
#include "util/error.h"

namespace tandem::test {
namespace {

TEST(AllReduce, SumsEveryRanksPartialsInRankOrder) {
  for (int N : {2, 3, 4}) {
    SCOPED_TRACE("ranks " + std::to_string(N));
    const int64_t R = 3, C = 37;
    FakeCommunicatorGroup group(N);
    std::vector<std::unique_ptr<Backend>> backends;
    std::vector<std::vector<float>> partials, results;
    Rng rng(static_cast<uint64_t>(N));
    for (int r = 0; r < N; ++r) {
      backends.push_back(make_cpu_backend(1));
      backends[r]->set_communicator(&group.endpoint(r));
      partials.push_back(rng.normals(R * C));
    }
    results = partials;
    // Two all-reduces back to back: the second must not see the first's buffers.
    std::vector<std::thread> threads;
    for (int r = 0; r < N; ++r)
      threads.emplace_back([&, r] {
        TensorView x(DType::F32, results[r].data(), {R, C});
        backends[r]->all_reduce(x);
        backends[r]->all_reduce(x);
      });
    for (std::thread& t : threads) t.join();
    EXPECT_EQ(group.calls(), 2u);
    std::vector<float> once(R * C), twice(R * C);
    for (int64_t i = 0; i < R * C; ++i) {
      once[i] = partials[0][i];
      for (int r = 1; r < N; ++r) once[i] += partials[r][i];
      twice[i] = once[i];
      for (int r = 1; r < N; ++r) twice[i] += once[i];
    }
    for (int r = 0; r < N; ++r) EXPECT_EQ(results[r], twice) << "rank " << r;  // bit-exact
  }
}

TEST(AllReduce, SingleRankIsTheIdentity) {
  auto be = make_cpu_backend(1);
  std::vector<float> x = Rng(7).normals(12), before = x;
  TensorView v(DType::F32, x.data(), {3, 4});
  be->all_reduce(v);
  EXPECT_EQ(x, before);
  FakeCommunicatorGroup one(1);
  be->set_communicator(&one.endpoint(0));
  be->all_reduce(v);
  EXPECT_EQ(x, before);
}

TEST(AllReduce, RefusesStridedAndNonF32Tensors) {
  auto be = make_cpu_backend(1);
  std::vector<float> x(16);
  TensorView strided(DType::F32, x.data(), {2, 4});
  strided.row_stride = 8;
  EXPECT_THROW(be->all_reduce(strided), Error);
  TensorView ints(DType::I32, x.data(), {2, 4});
  EXPECT_THROW(be->all_reduce(ints), Error);
}

}  // namespace
}  // namespace tandem::test
