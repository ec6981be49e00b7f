// matmul and moe_experts with quantized weights (QuantParams) against dequantize-then-float64, on
// the odd shapes of Gemma 4 26B-A4B (K = 704 and 2112, N not a multiple of the kernels' row tile,
// groups of 32 and of 128, which leaves a short last group on those K), for every code type, with
// and without zero points and an act-order permutation, on both kernel families.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
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
  std::vector<uint8_t> scales;  // F32 or BF16 bytes
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
  for (float& f : s) f = (c.scale_dtype == DType::BF16 ? round_to_bf16(rng.uniform(0.01f, 0.1f)) : rng.uniform(0.01f, 0.1f));
  w.scales.resize(s.size() * dtype_size(c.scale_dtype));
  for (size_t i = 0; i < s.size(); ++i) {
    if (c.scale_dtype == DType::BF16) {
      const uint16_t h = f32_to_bf16(s[i]);
      std::memcpy(&w.scales[i * 2], &h, 2);
    } else {
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
};

TEST(QuantMatmul, OddShapesAllCodesBothIsas) {
  auto be = make_cpu_backend(2);
  Rng rng(11);
  for (const std::string& isa : available_isas()) {
    ForceIsa force(isa);
    for (const QuantCase& c : kCases)
      for (int64_t K : {704, 2112}) {
        if (c.code == QuantCode::kF8E4M3 && c.group == 704 && K != 704) continue;
        const int64_t N = 37 + rng.index(100);
        QuantWeight w = make_quant(c, 1, N, K, rng);
        for (int64_t T : {1, 2, 5, 16}) {
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

}  // namespace
}  // namespace tandem::test
