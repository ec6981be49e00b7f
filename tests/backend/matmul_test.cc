// matmul against a float64 reference for every weight dtype, odd shapes, strided views and both
// kernel families. The error bound is relative to Σ_k |x_k·w_k| (the scale of the rounding error of
// any f32 summation order): |y - y_ref| <= 1e-5 · Σ|x·w| + 1e-30 (far below
// the ~4e-3 a mis-decoded bf16 or a wrong element would cause).
#include <gtest/gtest.h>

#include <cmath>

#include "backend_test_util.h"

namespace tandem::test {
namespace {

struct Case {
  int64_t T, N, K;
};

// Runs y = x · wᵀ with x and y embedded in wider rows (strides ldx >= K, ldy >= N) and checks it.
void check_matmul(Backend& be, DType wt, Case c, int64_t ldx, int64_t ldy, Rng& rng) {
  Stored w = make_stored(wt, c.N * c.K, rng);
  std::vector<float> x = rng.normals(c.T * ldx);
  const float sentinel = 12345.0f;
  std::vector<float> y(c.T * ldy, sentinel);
  TensorView xv(DType::F32, x.data(), {c.T, c.K});
  xv.row_stride = ldx == c.K ? 0 : ldx;
  TensorView yv(DType::F32, y.data(), {c.T, c.N});
  yv.row_stride = ldy == c.N ? 0 : ldy;
  be.matmul(xv, w.view({c.N, c.K}), yv);
  for (int64_t t = 0; t < c.T; ++t) {
    for (int64_t n = 0; n < c.N; ++n) {
      double ref = 0, mag = 0;
      for (int64_t k = 0; k < c.K; ++k) {
        const double p = x[t * ldx + k] * w.values[n * c.K + k];
        ref += p;
        mag += std::abs(p);
      }
      ASSERT_NEAR(y[t * ldy + n], ref, 1e-5 * mag + 1e-30)
          << dtype_name(wt) << " T=" << c.T << " N=" << c.N << " K=" << c.K << " at t=" << t << " n=" << n;
    }
    for (int64_t n = c.N; n < ldy; ++n) ASSERT_EQ(y[t * ldy + n], sentinel) << "wrote past row end";
  }
}

TEST(Matmul, AllDtypesOddShapesBothIsas) {
  auto be = make_cpu_backend(2);
  Rng rng(1);
  const Case cases[] = {{1, 1, 1},   {1, 7, 3},   {2, 257, 17}, {3, 9, 1000}, {4, 33, 64},
                        {5, 5, 129}, {8, 130, 31}, {9, 257, 17}, {1, 1000, 33}, {70, 37, 40}};
  for (const std::string& isa : available_isas()) {
    ForceIsa force(isa);
    for (DType wt : kWeightDtypes)
      for (Case c : cases) check_matmul(*be, wt, c, c.K, c.N, rng);
  }
}

TEST(Matmul, AllRowCountsOneToNine) {
  auto be = make_cpu_backend(2);
  Rng rng(2);
  for (const std::string& isa : available_isas()) {
    ForceIsa force(isa);
    for (int64_t T = 1; T <= 9; ++T) check_matmul(*be, DType::BF16, {T, 67, 250}, 250, 67, rng);
  }
}

TEST(Matmul, StridedInputAndOutput) {
  auto be = make_cpu_backend(2);
  Rng rng(3);
  for (const std::string& isa : available_isas()) {
    ForceIsa force(isa);
    for (DType wt : kWeightDtypes) {
      check_matmul(*be, wt, {3, 20, 48}, 64, 50, rng);  // e.g. writing the q part of a fused qkv row
      check_matmul(*be, wt, {1, 9, 17}, 20, 30, rng);
    }
  }
}

TEST(Matmul, SingleThreadAndManyThreadsAgreeWithReference) {
  Rng rng(4);
  for (int threads : {1, 3, 8}) {
    auto be = make_cpu_backend(threads);
    check_matmul(*be, DType::BF16, {2, 1031, 96}, 96, 1031, rng);
    check_matmul(*be, DType::F32, {130, 40, 24}, 24, 40, rng);
  }
}

TEST(Matmul, Avx2AndAvx512Agree) {
  if (cpu_best_isa() == CpuIsa::kAvx2) GTEST_SKIP() << "CPU has no AVX-512";
  auto be = make_cpu_backend(2);
  Rng rng(5);
  for (DType wt : kWeightDtypes) {
    const int64_t T = 5, N = 77, K = 2050;
    Stored w = make_stored(wt, N * K, rng);
    std::vector<float> x = rng.normals(T * K), y2(T * N), y512(T * N);
    TensorView xv(DType::F32, x.data(), {T, K}), yv2(DType::F32, y2.data(), {T, N}),
        yv512(DType::F32, y512.data(), {T, N});
    {
      ForceIsa force("avx2");
      be->matmul(xv, w.view({N, K}), yv2);
    }
    {
      ForceIsa force("avx512");
      be->matmul(xv, w.view({N, K}), yv512);
    }
    // Both are exact-f32 FMA sums of the same products, only in a different order.
    for (int64_t i = 0; i < T * N; ++i) {
      double mag = 0;
      for (int64_t k = 0; k < K; ++k) mag += std::abs(x[(i / N) * K + k] * w.values[(i % N) * K + k]);
      ASSERT_NEAR(y2[i], y512[i], 1e-5 * mag) << dtype_name(wt) << " element " << i;
    }
  }
}

// matmul_gelu_glu is the composition it replaces: matmul, matmul, gelu_tanh_mul, bit for bit, in
// every kernel family, on the caller alone, split over the pool in tiles and by rows of x (prefill).
TEST(Matmul, GeluGluIsTheComposition) {
  auto be = make_cpu_backend(2);
  Rng rng(31);
  for (const std::string& isa : available_isas()) {
    ForceIsa force(isa);
    for (DType wt : {DType::BF16, DType::F32})
      for (Case c : {Case{5, 37, 96}, Case{3, 1100, 512}, Case{150, 40, 96}}) {
        const int64_t T = c.T, I = c.N, K = c.K;
        Stored g = make_stored(wt, I * K, rng), u = make_stored(wt, I * K, rng);
        std::vector<float> x = rng.normals(T * K), fused(T * I), gate(T * I), up(T * I);
        TensorView xv(DType::F32, x.data(), {T, K}), fv(DType::F32, fused.data(), {T, I}),
            gv(DType::F32, gate.data(), {T, I}), uv(DType::F32, up.data(), {T, I});
        be->matmul_gelu_glu(xv, g.view({I, K}), u.view({I, K}), fv);
        be->matmul(xv, g.view({I, K}), gv);
        be->matmul(xv, u.view({I, K}), uv);
        be->gelu_tanh_mul(gv, uv, gv);
        EXPECT_EQ(fused, gate) << isa << " " << dtype_name(wt) << " I=" << I;
      }
  }
}

// A row's result is the same bits whatever other rows share its call (speculative verify blocks and
// batched requests rest on this), in every kernel family, for every weight dtype and thread count,
// also in prefill-sized calls (split by rows of x, not into tiles; every 7th row checked).
TEST(Matmul, RowResultIndependentOfBatch) {
  Rng rng(6);
  for (int threads : {1, 2}) {
    auto be = make_cpu_backend(threads);
    for (const std::string& isa : available_isas()) {
      ForceIsa force(isa);
      for (DType wt : kWeightDtypes)
        for (const int64_t T : {11, 140}) {
          const int64_t N = 300, K = 2080;
          Stored w = make_stored(wt, N * K, rng);
          std::vector<float> x = rng.normals(T * K), all(T * N), one(N);
          TensorView xv(DType::F32, x.data(), {T, K}), av(DType::F32, all.data(), {T, N});
          be->matmul(xv, w.view({N, K}), av);
          for (int64_t t = 0; t < T; t += T > 11 ? 7 : 1) {
            TensorView x1(DType::F32, &x[t * K], {1, K}), y1(DType::F32, one.data(), {1, N});
            be->matmul(x1, w.view({N, K}), y1);
            ASSERT_TRUE(std::equal(one.begin(), one.end(), &all[t * N]))
                << isa << " " << dtype_name(wt) << " T=" << T << " row " << t << " threads " << threads;
          }
        }
    }
  }
}

TEST(Matmul, RejectsMismatchedShapes) {
  auto be = make_cpu_backend(1);
  std::vector<float> x(6), w(12), y(8);
  TensorView xv(DType::F32, x.data(), {2, 3}), wv(DType::F32, w.data(), {3, 4}), yv(DType::F32, y.data(), {2, 4});
  EXPECT_THROW(be->matmul(xv, wv, yv), Error);
  TensorView wi(DType::I32, w.data(), {4, 3});
  EXPECT_THROW(be->matmul(xv, wi, yv), Error);
}

TEST(CpuFeatures, ForcingUnknownIsaFails) { EXPECT_THROW(cpu_force_isa("sse2"), Error); }

}  // namespace
}  // namespace tandem::test
