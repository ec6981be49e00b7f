// matmul and moe_experts with quantized weights (QuantParams) against dequantize-then-float64, on
// the odd shapes of Gemma 4 26B-A4B (K = 704 and 2112, N not a multiple of the kernels' row tile,
// groups of 32 and of 128, which leaves a short last group on those K, and per channel; K = 704 and
// 2112 also end in half a block of the avx512-bf16 int4 kernel, K = 256 in a whole one, K = 200 in a
// short group), for every code type, with and without zero points and an act-order permutation, on
// every kernel family the CPU has, and for batch invariance on each; and the CUDA backend's kernels
// (tensor-core and CUDA-core) against the CPU's on the same weights for matmul, matmul_gelu_glu and
// moe_experts, for batch invariance, and for the same bits from the one-row kernels' wide CTAs
// (skipped without a CUDA GPU).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <memory>
#include <numeric>

#include "backend/cpu/matmul.h"
#include "backend_test_util.h"

namespace tandem::test {
namespace {

struct QuantCase {
  QuantCode code;
  int64_t group;
  bool zeros;
  bool perm;
  DType scale_dtype;
};

// A random quantized weight of `experts` stacked [N, K] matrices and its dequantized values as
// multiplied with the unpermuted x: ref[(e·N + n)·K + k] with k the index into x.
struct QuantWeight {
  std::vector<uint8_t> codes, zeros;
  std::vector<uint8_t> scales;  // F32, BF16 or F16 bytes
  std::vector<int32_t> perm;
  std::vector<double> ref;
  QuantParams q;
  TensorView view;
};

QuantWeight make_quant(const QuantCase& c, int64_t experts, int64_t N, int64_t K, Rng& rng) {
  QuantWeight w;
  const int bits = quant_code_bits(c.code);
  const int64_t rows = experts * N, G = (K + c.group - 1) / c.group;
  w.codes.resize(rows * K * bits / 8);
  for (uint8_t& b : w.codes) {
    b = static_cast<uint8_t>(rng.index(256));
    if (c.code == QuantCode::kF8E4M3 && (b & 0x7F) == 0x7F) b &= 0xF0;  // no NaN codes
  }
  std::vector<float> s(rows * G);
  w.scales.resize(s.size() * dtype_size(c.scale_dtype));
  for (size_t i = 0; i < s.size(); ++i) {
    if (c.scale_dtype == DType::BF16) {
      const uint16_t h = f32_to_bf16(rng.uniform(0.01f, 0.1f));
      s[i] = bf16_to_f32(h);
      std::memcpy(&w.scales[i * 2], &h, 2);
    } else if (c.scale_dtype == DType::F16) {
      const uint16_t h = static_cast<uint16_t>(0x2200 + rng.index(0x0C00));  // f16 values in [0.0117, 0.09]
      s[i] = f16_to_f32(h);
      std::memcpy(&w.scales[i * 2], &h, 2);
    } else {
      s[i] = rng.uniform(0.01f, 0.1f);
      std::memcpy(&w.scales[i * 4], &s[i], 4);
    }
  }
  if (c.zeros) {
    w.zeros.resize(rows * G);
    for (uint8_t& z : w.zeros) z = static_cast<uint8_t>(rng.index(bits == 4 ? 16 : 256));
  }
  if (c.perm) {
    w.perm.resize(experts * K);
    for (int64_t e = 0; e < experts; ++e) {
      std::iota(w.perm.begin() + e * K, w.perm.begin() + (e + 1) * K, 0);
      std::shuffle(w.perm.begin() + e * K, w.perm.begin() + (e + 1) * K, rng.gen());
    }
  }
  w.ref.resize(rows * K);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < K; ++j) {
      const int64_t g = j / c.group;
      double v;
      if (bits == 4) {
        const int u = (w.codes[(r * K + j) / 2] >> (4 * (j % 2))) & 15;
        v = c.code == QuantCode::kU4 ? u : cpu::kE2M1ToF32[u];
      } else {
        const uint8_t u = w.codes[r * K + j];
        v = c.code == QuantCode::kU8 ? u : f8e4m3_to_f32(u);
      }
      const double z = c.zeros ? w.zeros[r * G + g] : quant_default_zero(c.code);
      const int64_t k = c.perm ? w.perm[(r / N) * K + j] : j;
      w.ref[r * K + k] = (v - z) * s[r * G + g];
    }
  w.q.code = c.code;
  w.q.group = c.group;
  w.q.scales = TensorView(c.scale_dtype, w.scales.data(), {rows, G});
  if (c.zeros) w.q.zeros = TensorView(DType::U8, w.zeros.data(), {rows, G});
  if (c.perm) w.q.k_perm = TensorView(DType::I32, w.perm.data(), {experts, K});
  w.view = experts == 1 ? TensorView(DType::U8, w.codes.data(), {N, K})
                        : TensorView(DType::U8, w.codes.data(), {experts, N, K});
  w.view.quant = &w.q;
  return w;
}

std::string describe(const QuantCase& c) {
  static const char* names[] = {"u4", "u8", "e2m1", "f8"};
  return fmt::format("{} g{}{}{} scales {}", names[static_cast<int>(c.code)], c.group, c.zeros ? " zeros" : "",
                     c.perm ? " perm" : "", dtype_name(c.scale_dtype));
}

const QuantCase kCases[] = {
    {QuantCode::kU4, 32, false, false, DType::BF16},   // compressed-tensors symmetric int4
    {QuantCode::kU4, 128, true, false, DType::F32},    // asymmetric, short last group
    {QuantCode::kU4, 128, false, true, DType::BF16},   // act order
    {QuantCode::kU4, 32, true, true, DType::F32},
    {QuantCode::kU8, 32, false, false, DType::BF16},
    {QuantCode::kU8, 128, true, false, DType::F32},
    {QuantCode::kE2M1, 16, false, false, DType::F32},  // NVFP4
    {QuantCode::kF8E4M3, 704, false, false, DType::BF16},  // per channel on K = 704
    {QuantCode::kF8E4M3, 32, false, false, DType::F32},
    {QuantCode::kE2M1, 32, false, false, DType::BF16},     // FP4 in groups the tensor-core path takes
    {QuantCode::kU4, 2112, true, false, DType::BF16},      // per channel on K = 2112, asymmetric
    {QuantCode::kU8, 704, false, true, DType::F32},        // per channel on K = 704, act order
    {QuantCode::kU4, 16, false, false, DType::F16},    // avx512-bf16: two groups per lane pattern step
    {QuantCode::kU4, 64, false, true, DType::BF16},    // avx512-bf16: two groups per block
    {QuantCode::kU4, 128, true, true, DType::F16},     // avx512-bf16: zeros, one table per block
    {QuantCode::kU4, 704, true, false, DType::BF16},   // per channel on K = 704: one group per row
    {QuantCode::kE2M1, 32, false, true, DType::BF16},
};

// Per-channel cases (group > 128) are written for one K only.
bool channel_elsewhere(const QuantCase& c, int64_t K) { return c.group > 128 && c.group != K; }

// The case with per-channel groups made to fit rows of K (the MoE tests' two weights differ in K).
QuantCase for_rows_of(QuantCase c, int64_t K) {
  if (c.group > 128) c.group = K;
  return c;
}

TEST(QuantMatmul, OddShapesAllCodesAllIsas) {
  auto be = make_cpu_backend(2);
  Rng rng(11);
  for (const std::string& isa : available_isas()) {
    ForceIsa force(isa);
    for (const QuantCase& c : kCases)
      for (int64_t K : {200, 256, 704, 2112}) {
        if (channel_elsewhere(c, K)) continue;
        const int64_t N = 37 + rng.index(100);
        QuantWeight w = make_quant(c, 1, N, K, rng);
        for (int64_t T : {1, 2, 3, 5, 9, 16}) {
          std::vector<float> x = rng.normals(T * K), y(T * N);
          TensorView xv(DType::F32, x.data(), {T, K}), yv(DType::F32, y.data(), {T, N});
          be->matmul(xv, w.view, yv);
          for (int64_t t = 0; t < T; ++t)
            for (int64_t n = 0; n < N; ++n) {
              double ref = 0, mag = 0;
              for (int64_t k = 0; k < K; ++k) {
                ref += x[t * K + k] * w.ref[n * K + k];
                mag += std::abs(x[t * K + k] * w.ref[n * K + k]);
              }
              ASSERT_NEAR(y[t * N + n], ref, 1e-5 * mag + 1e-30)
                  << isa << " " << describe(c) << " T=" << T << " N=" << N << " K=" << K << " t=" << t << " n=" << n;
            }
        }
      }
  }
}

// The same routed tokens through quantized experts and through their dequantized f32 values.
TEST(QuantMatmul, MoeExpertsMatchDequantizedWeights) {
  auto be = make_cpu_backend(2);
  Rng rng(12);
  const int64_t E = 4, H = 128, I = 704, T = 5, k = 2;
  for (const std::string& isa : available_isas()) {
    ForceIsa force(isa);
    for (const QuantCase& c : {kCases[0], kCases[3], kCases[6]}) {
      QuantWeight gu = make_quant(c, E, 2 * I, H, rng);
      QuantWeight dn = make_quant(c, E, H, I, rng);
      std::vector<float> gu_f(gu.ref.begin(), gu.ref.end()), dn_f(dn.ref.begin(), dn.ref.end());
      std::vector<float> x = rng.normals(T * H, 0.05f), wts(T * k), y_q(T * H), y_f(T * H);
      std::vector<int32_t> ids(T * k);
      for (int64_t i = 0; i < T * k; ++i) ids[i] = static_cast<int32_t>(rng.index(E)), wts[i] = rng.uniform(0, 1);
      TensorView xv(DType::F32, x.data(), {T, H}), idv(DType::I32, ids.data(), {T, k}),
          wv(DType::F32, wts.data(), {T, k}), yq(DType::F32, y_q.data(), {T, H}), yf(DType::F32, y_f.data(), {T, H});
      be->moe_experts(xv, idv, wv, gu.view, dn.view, yq);
      be->moe_experts(xv, idv, wv, TensorView(DType::F32, gu_f.data(), {E, 2 * I, H}),
                      TensorView(DType::F32, dn_f.data(), {E, H, I}), yf);
      for (int64_t i = 0; i < T * H; ++i)
        ASSERT_NEAR(y_q[i], y_f[i], 1e-4 * (1 + std::abs(y_f[i]))) << isa << " " << describe(c) << " at " << i;
    }
  }
}

// Rows s..s+n of x (s = 5n mod (T - n + 1)) through the matmul alone give bitwise the rows of `all`, the
// product of all T rows of x [T, K] with w [N, K], for each n of `rows` up to T.
void expect_rows_as_in_batch(Backend& be, const QuantWeight& w, const std::vector<float>& x, const std::vector<float>& all,
                             int64_t T, int64_t N, int64_t K, std::initializer_list<int64_t> rows,
                             const std::string& what) {
  std::vector<float> part(T * N);
  const TensorView xv(DType::F32, const_cast<float*>(x.data()), {T, K});
  for (int64_t n : rows) {
    if (n > T) continue;
    const int64_t s = (n * 5) % (T - n + 1);
    TensorView xp = xv.row_slice(s, s + n), yp(DType::F32, part.data(), {n, N});
    be.matmul(xp, w.view, yp);
    ASSERT_EQ(std::memcmp(part.data(), &all[s * N], n * N * 4), 0) << what << " rows " << s << ".." << s + n;
  }
}

// A row's result is the same bits alone and inside batches of any size, on every kernel family and
// thread count (greedy speculative decoding under batching relies on it), also in prefill-sized
// batches (split by rows of x, not into tiles).
TEST(QuantMatmul, CpuIsBatchInvariant) {
  Rng rng(14);
  const int64_t N = 77;
  for (int threads : {1, 2}) {
    auto be = make_cpu_backend(threads);
    for (const std::string& isa : available_isas()) {
      ForceIsa force(isa);
      for (const QuantCase& c : kCases)
        for (int64_t K : {704, 2112})
          for (const int64_t T : {11, 140}) {
            if (channel_elsewhere(c, K)) continue;
            QuantWeight w = make_quant(c, 1, N, K, rng);
            std::vector<float> x = rng.normals(T * K), all(T * N);
            TensorView xv(DType::F32, x.data(), {T, K}), av(DType::F32, all.data(), {T, N});
            be->matmul(xv, w.view, av);
            expect_rows_as_in_batch(*be, w, x, all, T, N, K, {1, 3, 4, 5, 9, 70},
                                    fmt::format("{} {} K={} T={} threads {}", isa, describe(c), K, T, threads));
            if (HasFatalFailure()) return;
          }
    }
  }
}

// The same with as many weight rows as a 26B-A4B expert's down projection (N = 2816, K = 704): there one row
// of x splits 4-bit weights into tasks of 512 rows and a batch of them into tasks of 188 (for_tiles sizes a
// task by the bytes it streams and the rows of x it serves), so a row's bits must not depend on its task.
TEST(QuantMatmul, CpuRowIsTheSameInAnyTask) {
  Rng rng(15);
  const int64_t N = 2816, K = 704, T = 11;
  auto be = make_cpu_backend(2);
  for (const std::string& isa : available_isas()) {
    ForceIsa force(isa);
    for (const QuantCase& c : {kCases[0], kCases[1], kCases[4], kCases[6], kCases[8]}) {
      QuantWeight w = make_quant(c, 1, N, K, rng);
      std::vector<float> x = rng.normals(T * K), all(T * N);
      TensorView xv(DType::F32, x.data(), {T, K}), av(DType::F32, all.data(), {T, N});
      be->matmul(xv, w.view, av);
      expect_rows_as_in_batch(*be, w, x, all, T, N, K, {1, 2, 4}, isa + " " + describe(c));
      if (HasFatalFailure()) return;
    }
  }
}

// Which weights the avx512-bf16 family's quantized kernel takes (the others run the exact avx512
// kernels, which the tests above cover too).
TEST(QuantMatmul, Bf16KernelTakesFourBitCodes) {
  auto take = [](QuantCode code, int64_t group, bool zeros, int64_t K) {
    uint8_t z = 0;
    QuantParams q;
    q.code = code;
    q.group = group;
    if (zeros) q.zeros = TensorView(DType::U8, &z, {1, 1});
    return cpu::quant_uses_bf16(q, K);
  };
  EXPECT_TRUE(take(QuantCode::kU4, 32, false, 2816));
  EXPECT_TRUE(take(QuantCode::kU4, 16, false, 2816));
  EXPECT_TRUE(take(QuantCode::kE2M1, 16, false, 2816));
  EXPECT_TRUE(take(QuantCode::kU4, 128, true, 2816));
  EXPECT_TRUE(take(QuantCode::kU4, 704, true, 704));    // one group per row
  EXPECT_FALSE(take(QuantCode::kU4, 32, true, 2816));   // zeros of groups smaller than a block
  EXPECT_FALSE(take(QuantCode::kU4, 704, false, 2112));  // not a power of two
  EXPECT_FALSE(take(QuantCode::kU4, 8, false, 2816));
  EXPECT_FALSE(take(QuantCode::kE2M1, 128, true, 2816));  // value - zero need not be a bf16 value
  EXPECT_FALSE(take(QuantCode::kU8, 32, false, 2816));
  EXPECT_FALSE(take(QuantCode::kF8E4M3, 2816, false, 2816));
}

TEST(QuantMatmul, RefusesInconsistentParams) {
  auto be = make_cpu_backend(1);
  Rng rng(13);
  QuantWeight w = make_quant(kCases[0], 1, 8, 64, rng);
  std::vector<float> x(64), y(8);
  TensorView xv(DType::F32, x.data(), {1, 64}), yv(DType::F32, y.data(), {1, 8});
  w.q.scales = TensorView(DType::BF16, w.scales.data(), {8, 1});  // 2 groups per row expected
  EXPECT_THROW(be->matmul(xv, w.view, yv), Error);
  w.q.scales = TensorView(DType::I32, w.scales.data(), {8, 2});
  EXPECT_THROW(be->matmul(xv, w.view, yv), Error);
}

// --- CUDA ---------------------------------------------------------------------------------------

// Device copies of a quantized weight (its codes, scales, zeros and permutation, prepared as a
// loaded weight is: Backend::prepare_quant) and of f32 data.
class DeviceQuant {
 public:
  explicit DeviceQuant(Backend& be) : be_(be) {}
  TensorView weight(const QuantWeight& w) {
    auto q = std::make_unique<QuantParams>(w.q);
    q->scales.data = put(w.scales.data(), w.scales.size());
    if (!w.zeros.empty()) q->zeros.data = put(w.zeros.data(), w.zeros.size());
    if (!w.perm.empty()) q->k_perm.data = put(w.perm.data(), w.perm.size() * 4);
    TensorView v = w.view;
    v.data = put(w.codes.data(), w.codes.size());
    v.quant = q.get();
    be_.prepare_quant(v);
    params_.push_back(std::move(q));
    return v;
  }
  template <typename T>
  TensorView data(const std::vector<T>& host, DType t, std::initializer_list<int64_t> dims) {
    return TensorView(t, put(host.data(), host.size() * sizeof(T)), dims);
  }
  template <typename T>
  std::vector<T> get(const TensorView& v, size_t n) {
    std::vector<T> h(n);
    be_.download(h.data(), v.data, n * sizeof(T));
    return h;
  }

 private:
  void* put(const void* src, size_t bytes) {
    bufs_.emplace_back(be_, std::max<size_t>(bytes, 256));
    be_.upload(bufs_.back().data(), src, bytes);
    return bufs_.back().data();
  }
  Backend& be_;
  std::vector<Buffer> bufs_;
  std::vector<std::unique_ptr<QuantParams>> params_;
};

double rel_l2(const std::vector<float>& got, const std::vector<float>& want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    if (!std::isfinite(got[i])) return INFINITY;
    num += (double(got[i]) - want[i]) * (double(got[i]) - want[i]), den += double(want[i]) * want[i];
  }
  return std::sqrt(num / den);
}

// matmul of x [T, K] (row stride ldx) with quantized weight w on the CPU and on the GPU (wd: w's copy
// in d, the GPU's output poisoned with NaN first): the relative L2 distance of the GPU's result.
double matmul_gpu_vs_cpu(Backend& cpu, Backend& gpu, DeviceQuant& d, const QuantWeight& w, const TensorView& wd,
                         std::vector<float> x, int64_t T, int64_t ldx) {
  const int64_t N = w.view.dim(0), K = w.view.cols();
  std::vector<float> y(T * N);
  TensorView xv(DType::F32, x.data(), {T, K}), yv(DType::F32, y.data(), {T, N});
  xv.row_stride = ldx;
  cpu.matmul(xv, w.view, yv);
  TensorView xd = d.data(x, DType::F32, {T, K}), yd = d.data(std::vector<float>(T * N, NAN), DType::F32, {T, N});
  xd.row_stride = ldx;
  gpu.matmul(xd, wd, yd);
  return rel_l2(d.get<float>(yd, T * N), y);
}

// K = 704 / 2112 take the tensor-core path (mma_quant.cuh) where the group allows it and the 16-byte
// CUDA-core path otherwise (the NVFP4 group of 16); K = 200 (not a multiple of 32 four-bit or 16
// eight-bit codes) exercises the scalar path's odd shapes. T = 1 .. 8 rows are one x tile of the
// tensor-core kernels, 9 .. 40 their prefill tiles (40: a second CTA row).
TEST(QuantMatmul, CudaMatchesCpu) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU";
  ExactCpuKernels exact;
  auto cpu = make_cpu_backend(2);
  auto gpu = make_backend("cuda");
  Rng rng(21);
  for (const QuantCase& c : kCases)
    for (int64_t K : {200, 704, 2112}) {
      if (channel_elsewhere(c, K)) continue;
      const int64_t N = 37 + rng.index(100);
      QuantWeight w = make_quant(c, 1, N, K, rng);
      DeviceQuant d(*gpu);
      const TensorView wd = d.weight(w);
      for (int64_t T : {1, 2, 3, 5, 8, 9, 17, 40}) {
        SCOPED_TRACE(::testing::Message() << describe(c) << " T=" << T << " N=" << N << " K=" << K);
        const int64_t ldx = T % 2 ? K + 3 : K;  // odd rows: an unaligned stride (the scalar x loads)
        EXPECT_LT(matmul_gpu_vs_cpu(*cpu, *gpu, d, w, wd, rng.normals(T * ldx), T, ldx), 1e-5);
      }
    }
}

// E4M3 codes at the edges of the format, which random codes hardly weigh in a sum: only subnormals
// (0x01 .. 0x07, their negatives), zeros of both signs and the largest values, so a GPU decode that
// flushed subnormals or lost a sign would miss the CPU's result by far more than the tolerance. Per
// channel and in groups of 32 (both take the tensor-core path), T = 1 and 3.
TEST(QuantMatmul, CudaFp8EdgeCodesMatchCpu) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU";
  ExactCpuKernels exact;
  auto cpu = make_cpu_backend(2);
  auto gpu = make_backend("cuda");
  Rng rng(25);
  const uint8_t edge[] = {0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x81, 0x82, 0x83,
                          0x84, 0x85, 0x86, 0x87, 0x00, 0x80, 0x7E, 0xFE, 0x08, 0x88};
  const int64_t K = 704, N = 53;
  for (int64_t group : {K, int64_t{32}})
    for (int subnormal_only : {1, 0}) {
      QuantWeight w = make_quant({QuantCode::kF8E4M3, group, false, false, DType::BF16}, 1, N, K, rng);
      for (uint8_t& b : w.codes) b = edge[rng.index(subnormal_only ? 14 : std::size(edge))];
      DeviceQuant d(*gpu);
      const TensorView wd = d.weight(w);
      for (int64_t T : {1, 3}) {
        SCOPED_TRACE(::testing::Message() << "group " << group << " subnormals only " << subnormal_only << " T=" << T);
        EXPECT_LT(matmul_gpu_vs_cpu(*cpu, *gpu, d, w, wd, rng.normals(T * K), T, K), 1e-5);
      }
    }
}

TEST(QuantMatmul, CudaMoeExpertsMatchCpu) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU";
  ExactCpuKernels exact;
  auto cpu = make_cpu_backend(2);
  auto gpu = make_backend("cuda");
  Rng rng(22);
  const int64_t E = 8, H = 128, I = 704, k = 2;
  for (const QuantCase& c : kCases) {
    QuantWeight gu = make_quant(for_rows_of(c, H), E, 2 * I, H, rng), dn = make_quant(for_rows_of(c, I), E, H, I, rng);
    DeviceQuant d(*gpu);
    const TensorView gud = d.weight(gu), dnd = d.weight(dn);
    for (int64_t T : {1, 3, 5, 9, 17, 40}) {
      SCOPED_TRACE(::testing::Message() << describe(c) << " T=" << T);
      std::vector<float> x = rng.normals(T * H, 0.05f), wts(T * k), y(T * H);
      std::vector<int32_t> ids(T * k);
      for (int64_t t = 0; t < T; ++t)
        for (int64_t j = 0; j < k; ++j)
          ids[t * k + j] = static_cast<int32_t>((t * 3 + j * 5) % E), wts[t * k + j] = rng.uniform(0, 1);
      TensorView xv(DType::F32, x.data(), {T, H}), idv(DType::I32, ids.data(), {T, k}),
          wv(DType::F32, wts.data(), {T, k}), yv(DType::F32, y.data(), {T, H});
      cpu->moe_experts(xv, idv, wv, gu.view, dn.view, yv);
      TensorView yd = d.data(std::vector<float>(T * H, NAN), DType::F32, {T, H});
      gpu->moe_experts(d.data(x, DType::F32, {T, H}), d.data(ids, DType::I32, {T, k}), d.data(wts, DType::F32, {T, k}),
                       gud, dnd, yd);
      EXPECT_LT(rel_l2(d.get<float>(yd, T * H), y), 1e-5);
    }
  }
}

// The fused GeGLU with quantized gate and up against the CPU, and bit-identical to the CUDA backend's
// own matmul, matmul, gelu_tanh_mul (the fused tensor-core kernel must sum exactly as the matmul one);
// matmul_pair of the same two weights (one code: one launch of the tensor-core kernel where it
// applies) bit-identical to those two matmuls.
TEST(QuantMatmul, CudaGeluGluAndPairMatchTheirComposition) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU";
  ExactCpuKernels exact;
  auto cpu = make_cpu_backend(2);
  auto gpu = make_backend("cuda");
  Rng rng(24);
  for (const QuantCase& c : kCases)
    for (int64_t K : {704, 2112}) {
      if (channel_elsewhere(c, K)) continue;
      const int64_t I = 37 + rng.index(100);
      QuantWeight g = make_quant(c, 1, I, K, rng), u = make_quant(c, 1, I, K, rng);
      DeviceQuant d(*gpu);
      const TensorView gd = d.weight(g), ud = d.weight(u);
      for (int64_t T : {1, 3, 5, 9, 17, 40}) {
        SCOPED_TRACE(::testing::Message() << describe(c) << " T=" << T << " I=" << I << " K=" << K);
        std::vector<float> x = rng.normals(T * K, 0.1f), y(T * I);
        TensorView xv(DType::F32, x.data(), {T, K}), yv(DType::F32, y.data(), {T, I});
        cpu->matmul_gelu_glu(xv, g.view, u.view, yv);
        const TensorView xd = d.data(x, DType::F32, {T, K});
        TensorView yd = d.data(std::vector<float>(T * I, NAN), DType::F32, {T, I});
        gpu->matmul_gelu_glu(xd, gd, ud, yd);
        const std::vector<float> fused = d.get<float>(yd, T * I);
        EXPECT_LT(rel_l2(fused, y), 1e-5);
        TensorView gate = d.data(std::vector<float>(T * I, NAN), DType::F32, {T, I});
        TensorView up = d.data(std::vector<float>(T * I, NAN), DType::F32, {T, I});
        gpu->matmul(xd, gd, gate);
        gpu->matmul(xd, ud, up);
        TensorView pair_gate = d.data(std::vector<float>(T * I, NAN), DType::F32, {T, I});
        TensorView pair_up = d.data(std::vector<float>(T * I, NAN), DType::F32, {T, I});
        gpu->matmul_pair(xd, gd, pair_gate, ud, pair_up);
        EXPECT_EQ(std::memcmp(d.get<float>(pair_gate, T * I).data(), d.get<float>(gate, T * I).data(), T * I * 4), 0);
        EXPECT_EQ(std::memcmp(d.get<float>(pair_up, T * I).data(), d.get<float>(up, T * I).data(), T * I * 4), 0);
        gpu->gelu_tanh_mul(gate, up, gate);
        EXPECT_EQ(std::memcmp(fused.data(), d.get<float>(gate, T * I).data(), T * I * 4), 0);
      }
    }
}

// A row's result is bit-identical alone and inside batches of any size (greedy losslessness of
// speculative decoding under batching relies on it), for matmul and moe_experts.
TEST(QuantMatmul, CudaIsBatchInvariant) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU";
  auto gpu = make_backend("cuda");
  Rng rng(23);
  const int64_t T = 40, K = 704, N = 77, E = 4, I = 704, k = 2;
  for (const QuantCase& c : kCases) {
    if (channel_elsewhere(c, K)) continue;
    SCOPED_TRACE(describe(c));
    DeviceQuant d(*gpu);
    QuantWeight w = make_quant(c, 1, N, K, rng), gu = make_quant(c, E, 2 * I, K, rng), dn = make_quant(c, E, K, I, rng);
    const TensorView wd = d.weight(w), gud = d.weight(gu), dnd = d.weight(dn);
    std::vector<float> x = rng.normals(T * K, 0.05f), wts(T * k);
    std::vector<int32_t> ids(T * k);
    for (int64_t i = 0; i < T * k; ++i) ids[i] = static_cast<int32_t>(rng.index(E)), wts[i] = rng.uniform(0, 1);
    const TensorView xd = d.data(x, DType::F32, {T, K}), idd = d.data(ids, DType::I32, {T, k}),
                     wtd = d.data(wts, DType::F32, {T, k});
    auto run = [&](int64_t r0, int64_t n) {
      TensorView ym = d.data(std::vector<float>(n * N), DType::F32, {n, N});
      TensorView ye = d.data(std::vector<float>(n * K), DType::F32, {n, K});
      gpu->matmul(xd.row_slice(r0, r0 + n), wd, ym);
      gpu->moe_experts(xd.row_slice(r0, r0 + n), idd.row_slice(r0, r0 + n), wtd.row_slice(r0, r0 + n), gud, dnd, ye);
      std::vector<float> out = d.get<float>(ym, n * N), e = d.get<float>(ye, n * K);
      out.insert(out.end(), e.begin(), e.end());
      return out;
    };
    std::vector<std::vector<float>> alone;
    for (int64_t r = 0; r < T; ++r) alone.push_back(run(r, 1));
    for (int64_t n : {2, 3, 4, 5, 8, 9, 17, 24, 40}) {
      const int64_t s = (n * 5) % (T - n + 1);
      const std::vector<float> batch = run(s, n);
      for (int64_t i = 0; i < n; ++i) {
        const bool same = std::memcmp(&batch[i * N], alone[s + i].data(), N * 4) == 0 &&
                          std::memcmp(&batch[n * N + i * K], alone[s + i].data() + N, K * 4) == 0;
        EXPECT_TRUE(same) << "row " << s + i << " in a batch of " << n;
      }
    }
  }
}

// Steps of up to 8 rows over many weight rows per SM take wide CTAs (with_mma_width, mma_quant.cuh: a
// CTA per 4 row tiles, or 2 with gate and up rows, each warp standing for several of a tile's virtual
// warps). On the H200 (132 SMs) the int4 cases below take them at one row for every op by the cost
// model's count: the matmul's 1024 row tiles, the GeGLU's 512, the pair's 2 × 512, the MoE down
// projection's 4 experts × 128 tiles (config a) and its gate_up's 4 × 128 (config b). Their outputs,
// one row and three, must be the bits of the CTA per row tile (a backend made with TANDEM_CUDA_WIDE=0)
// and a row's the same alone and in the batch. In the three-row MoE batch two experts have all three
// rows (a tile) and six have one each (the one-row path that a single row's step takes too).
bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// Row i of each n-row output in `all` (the outputs one after another, of the given widths), in order.
std::vector<float> rows_of(const std::vector<float>& all, int64_t n, int64_t i, std::initializer_list<int64_t> widths) {
  std::vector<float> row;
  int64_t at = 0;
  for (int64_t width : widths) {
    row.insert(row.end(), all.begin() + at + i * width, all.begin() + at + (i + 1) * width);
    at += n * width;
  }
  return row;
}

// The dense ops' outputs for rows [r0, r0 + n) of x (rows of K, K the weights' width) on backend `be`,
// one after another in one vector: x · wᵀ ([n, N]), matmul_gelu_glu of g and u ([n, NG]), then
// matmul_pair of g and u ([n, NG] twice); N and NG are w's and g's rows.
std::vector<float> dense_ops(Backend& be, const QuantWeight& w, const QuantWeight& g, const QuantWeight& u,
                             const std::vector<float>& x, int64_t r0, int64_t n) {
  const int64_t N = w.view.dim(0), NG = g.view.dim(0), K = w.view.cols(), T = static_cast<int64_t>(x.size()) / K;
  DeviceQuant d(be);
  const TensorView wd = d.weight(w), gd = d.weight(g), ud = d.weight(u);
  const TensorView xd = d.data(x, DType::F32, {T, K}).row_slice(r0, r0 + n);
  TensorView y = d.data(std::vector<float>(n * N, NAN), DType::F32, {n, N});
  TensorView glu = d.data(std::vector<float>(n * NG, NAN), DType::F32, {n, NG});
  TensorView y1 = d.data(std::vector<float>(n * NG, NAN), DType::F32, {n, NG});
  TensorView y2 = d.data(std::vector<float>(n * NG, NAN), DType::F32, {n, NG});
  be.matmul(xd, wd, y);
  be.matmul_gelu_glu(xd, gd, ud, glu);
  be.matmul_pair(xd, gd, y1, ud, y2);
  std::vector<float> out = d.get<float>(y, n * N);
  for (const TensorView* v : {&glu, &y1, &y2}) {
    const std::vector<float> o = d.get<float>(*v, n * NG);
    out.insert(out.end(), o.begin(), o.end());
  }
  return out;
}

TEST(QuantMatmul, CudaWideCtasKeepTheBits) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU";
  auto gpu = make_backend("cuda");
  setenv("TANDEM_CUDA_WIDE", "0", 1);
  auto narrow = make_backend("cuda");
  unsetenv("TANDEM_CUDA_WIDE");
  Rng rng(29);
  const int64_t T = 3, N = 16384, NG = 8192, K = 704, E = 8, k = 4;
  struct MoeShape {
    int64_t H, I;
  };
  const MoeShape moe_shapes[] = {{2048, 704}, {1024, 2048}};
  for (const QuantCase& c : kCases) {
    if (c.perm || c.group > 32) continue;  // the decode formats, without an act-order gather
    SCOPED_TRACE(describe(c));
    QuantWeight w = make_quant(c, 1, N, K, rng), g = make_quant(c, 1, NG, K, rng), u = make_quant(c, 1, NG, K, rng);
    std::vector<float> x = rng.normals(T * K, 0.05f);
    auto dense = [&](Backend& be, int64_t r0, int64_t n) { return dense_ops(be, w, g, u, x, r0, n); };
    const std::vector<float> batch = dense(*gpu, 0, T);
    EXPECT_TRUE(same_bits(batch, dense(*narrow, 0, T))) << "dense ops, " << T << " rows";
    for (int64_t r = 0; r < T; ++r) {
      const std::vector<float> wide = dense(*gpu, r, 1), tile = dense(*narrow, r, 1);
      EXPECT_TRUE(same_bits(wide, tile)) << "dense ops, row " << r;
      EXPECT_TRUE(same_bits(wide, rows_of(batch, T, r, {N, NG, NG, NG}))) << "dense ops, row " << r << " in a batch";
    }
    for (const MoeShape& m : moe_shapes) {
      SCOPED_TRACE(::testing::Message() << "moe H=" << m.H << " I=" << m.I);
      QuantWeight gu = make_quant(c, E, 2 * m.I, m.H, rng), dn = make_quant(c, E, m.H, m.I, rng);
      std::vector<float> xm = rng.normals(T * m.H, 0.05f), wts(T * k);
      std::vector<int32_t> ids(T * k);
      // Row t picks experts 0 and 1 (three rows each: a tile) and 2 + 2t, 3 + 2t (one row each: the
      // one-row path of a multi-row step).
      for (int64_t i = 0; i < T * k; ++i) {
        const int64_t t = i / k, j = i % k;
        ids[i] = static_cast<int32_t>(j < 2 ? j : 2 * t + j);
        wts[i] = rng.uniform(0, 1);
      }
      auto moe = [&](Backend& be, int64_t r0, int64_t n) {
        DeviceQuant d(be);
        const TensorView gud = d.weight(gu), dnd = d.weight(dn);
        const TensorView xd = d.data(xm, DType::F32, {T, m.H}).row_slice(r0, r0 + n);
        const TensorView idd = d.data(ids, DType::I32, {T, k}).row_slice(r0, r0 + n);
        const TensorView wtd = d.data(wts, DType::F32, {T, k}).row_slice(r0, r0 + n);
        TensorView y = d.data(std::vector<float>(n * m.H, NAN), DType::F32, {n, m.H});
        be.moe_experts(xd, idd, wtd, gud, dnd, y);
        return d.get<float>(y, n * m.H);
      };
      const std::vector<float> moe_batch = moe(*gpu, 0, T);
      EXPECT_TRUE(same_bits(moe_batch, moe(*narrow, 0, T))) << "moe_experts, " << T << " rows";
      for (int64_t r = 0; r < T; ++r) {
        const std::vector<float> wide = moe(*gpu, r, 1), tile = moe(*narrow, r, 1);
        EXPECT_TRUE(same_bits(wide, tile)) << "moe_experts, row " << r;
        EXPECT_EQ(std::memcmp(wide.data(), moe_batch.data() + r * m.H, m.H * 4), 0)
            << "moe_experts, row " << r << " in a batch";
      }
    }
  }
}

// A step of 2 .. kFewRows rows has each warp split the x values of all of its rows at once
// (XSplit::kFewRows, mma_rows.cuh) where a bigger tile has each lane split its own row's. Whatever
// the split, a row's bits must be those of the per-lane split (a backend made with
// TANDEM_CUDA_FEW_ROWS=0) and of the row alone, for the dense ops at the widths their launches take
// (8192 and 16384 weight rows: wide CTAs; 77: narrow, a partial row tile) and K = 704 (a partial last
// block of four-bit codes).
TEST(QuantMatmul, CudaFewRowsSplitKeepsTheBits) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU";
  auto gpu = make_backend("cuda");
  setenv("TANDEM_CUDA_FEW_ROWS", "0", 1);
  auto lanes = make_backend("cuda");
  unsetenv("TANDEM_CUDA_FEW_ROWS");
  Rng rng(31);
  const int64_t T = 4, K = 704;
  for (const QuantCase& c : kCases) {
    if (channel_elsewhere(c, K)) continue;
    for (int64_t N : {int64_t{77}, int64_t{16384}}) {
      SCOPED_TRACE(::testing::Message() << describe(c) << " N=" << N);
      const int64_t NG = N / 2 + 1;
      QuantWeight w = make_quant(c, 1, N, K, rng), g = make_quant(c, 1, NG, K, rng), u = make_quant(c, 1, NG, K, rng);
      std::vector<float> x = rng.normals(T * K, 0.05f);
      auto dense = [&](Backend& be, int64_t r0, int64_t n) { return dense_ops(be, w, g, u, x, r0, n); };
      std::vector<std::vector<float>> alone;
      for (int64_t r = 0; r < T; ++r) alone.push_back(dense(*gpu, r, 1));
      for (int64_t n = 2; n <= T; ++n) {
        const std::vector<float> batch = dense(*gpu, T - n, n);
        EXPECT_TRUE(same_bits(batch, dense(*lanes, T - n, n))) << n << " rows";
        for (int64_t i = 0; i < n; ++i)
          EXPECT_TRUE(same_bits(alone[T - n + i], rows_of(batch, n, i, {N, NG, NG, NG})))
              << "row " << T - n + i << " in a batch of " << n;
      }
    }
  }
}

// CTAs of half the wide width (VPW 2, with_mma_width): the 26B-A4B sliding layers' K + V pair (two
// [2048, 2816] weights) at one row takes them in int4 on a 132-SM GPU by the cost model's count (2
// slices: 512 CTAs of VPW 1 are two waves of 264, 128 of VPW 4 two loop iterations, 256 of VPW 2 one of
// each). Whatever width each format's launch takes, the bits must be those of the CTA per row tile
// (TANDEM_CUDA_WIDE=0) and of the rule before the half width (TANDEM_CUDA_WIDE=4), alone and in a batch.
TEST(QuantMatmul, CudaHalfWideCtasKeepTheBits) {
  if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU";
  auto gpu = make_backend("cuda");
  setenv("TANDEM_CUDA_WIDE", "0", 1);
  auto narrow = make_backend("cuda");
  setenv("TANDEM_CUDA_WIDE", "4", 1);
  auto before = make_backend("cuda");
  unsetenv("TANDEM_CUDA_WIDE");
  Rng rng(31);
  const int64_t T = 3, N = 2048, K = 2816;
  for (const QuantCase& c : kCases) {
    if (c.perm || c.group > 32) continue;  // the decode formats, without an act-order gather
    SCOPED_TRACE(describe(c));
    QuantWeight wk = make_quant(c, 1, N, K, rng), wv = make_quant(c, 1, N, K, rng);
    std::vector<float> x = rng.normals(T * K, 0.05f);
    auto pair = [&](Backend& be, int64_t r0, int64_t n) {  // K then V of rows [r0, r0 + n)
      DeviceQuant d(be);
      const TensorView kd = d.weight(wk), vd = d.weight(wv);
      const TensorView xd = d.data(x, DType::F32, {T, K}).row_slice(r0, r0 + n);
      TensorView yk = d.data(std::vector<float>(n * N, NAN), DType::F32, {n, N});
      TensorView yv = d.data(std::vector<float>(n * N, NAN), DType::F32, {n, N});
      be.matmul_pair(xd, kd, yk, vd, yv);
      std::vector<float> out = d.get<float>(yk, n * N);
      const std::vector<float> v = d.get<float>(yv, n * N);
      out.insert(out.end(), v.begin(), v.end());
      return out;
    };
    const std::vector<float> batch = pair(*gpu, 0, T);
    EXPECT_TRUE(same_bits(batch, pair(*narrow, 0, T))) << T << " rows";
    EXPECT_TRUE(same_bits(batch, pair(*before, 0, T))) << T << " rows";
    for (int64_t r = 0; r < T; ++r) {
      const std::vector<float> one = pair(*gpu, r, 1);
      EXPECT_TRUE(same_bits(one, pair(*narrow, r, 1))) << "row " << r;
      EXPECT_TRUE(same_bits(one, pair(*before, r, 1))) << "row " << r;
      EXPECT_TRUE(same_bits(one, rows_of(batch, T, r, {N, N}))) << "K and V row " << r << " in a batch";
    }
  }
}

}  // namespace
}  // namespace tandem::test
