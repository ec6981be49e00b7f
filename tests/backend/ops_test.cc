// The non-matmul ops against float64 references, and the fused heads ops (rms_norm_rope,
// kv_write_normed) bitwise against the ops they fuse. Tolerances (stated per test) are relative to
// the scale of the result; they are a few f32 ulps of headroom, far below what a wrong formula gives.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "backend_test_util.h"

namespace tandem::test {
namespace {

double gelu_tanh_ref(double z) {
  return 0.5 * z * (1.0 + std::tanh(std::sqrt(2.0 / M_PI) * (z + 0.044715 * z * z * z)));
}

TEST(RmsNorm, WeightDtypesNullWeightAliasAndStride) {
  auto be = make_cpu_backend(2);
  Rng rng(20);
  const int64_t R = 5;
  for (int64_t D : {1, 3, 17, 256, 2816}) {
    std::vector<const Stored*> weights;
    std::vector<Stored> ws;
    for (DType wt : {DType::F32, DType::BF16, DType::F16}) ws.push_back(make_stored(wt, D, rng));
    for (size_t wi = 0; wi <= ws.size(); ++wi) {
      Stored* w = wi < ws.size() ? &ws[wi] : nullptr;
      TensorView wv;
      if (w) wv = w->view({D});
      const int64_t ld = D + 3;  // strided input rows
      std::vector<float> x = rng.normals(R * ld, 3.0f), y(R * D);
      TensorView xv(DType::F32, x.data(), {R, D});
      xv.row_stride = ld;
      TensorView yv(DType::F32, y.data(), {R, D});
      be->rms_norm(xv, w ? &wv : nullptr, 1e-6f, yv);
      for (int64_t r = 0; r < R; ++r) {
        double ss = 0;
        for (int64_t i = 0; i < D; ++i) ss += static_cast<double>(x[r * ld + i]) * x[r * ld + i];
        const double inv = 1.0 / std::sqrt(ss / D + 1e-6);
        for (int64_t i = 0; i < D; ++i) {
          const double ref = x[r * ld + i] * inv * (w ? w->values[i] : 1.0);
          ASSERT_NEAR(y[r * D + i], ref, 2e-6 * std::abs(ref) + 1e-7) << "D=" << D << " weight " << wi;
        }
      }
      // In place (x aliases y) gives the same result.
      std::vector<float> xi(R * D);
      for (int64_t r = 0; r < R; ++r) std::copy_n(&x[r * ld], D, &xi[r * D]);
      TensorView xiv(DType::F32, xi.data(), {R, D});
      be->rms_norm(xiv, w ? &wv : nullptr, 1e-6f, xiv);
      EXPECT_EQ(xi, y);
    }
  }
}

// rms_norm_add: x += RMS(y) · w against float64, y untouched, strided rows on both sides.
TEST(RmsNorm, AddResidualForm) {
  auto be = make_cpu_backend(2);
  Rng rng(21);
  const int64_t R = 4;
  for (int64_t D : {3, 256, 2816}) {
    Stored w = make_stored(DType::BF16, D, rng);
    const TensorView wv = w.view({D});
    for (bool weighted : {false, true}) {
      const int64_t ld = D + 5;
      std::vector<float> y = rng.normals(R * ld, 3.0f), x = rng.normals(R * ld, 1.0f);
      const std::vector<float> y0 = y, x0 = x;
      TensorView yv(DType::F32, y.data(), {R, D}), xv(DType::F32, x.data(), {R, D});
      yv.row_stride = xv.row_stride = ld;
      be->rms_norm_add(yv, weighted ? &wv : nullptr, 1e-6f, xv);
      EXPECT_EQ(y, y0);
      for (int64_t r = 0; r < R; ++r) {
        double ss = 0;
        for (int64_t i = 0; i < D; ++i) ss += static_cast<double>(y[r * ld + i]) * y[r * ld + i];
        const double inv = 1.0 / std::sqrt(ss / D + 1e-6);
        for (int64_t i = 0; i < D; ++i) {
          const double ref = x0[r * ld + i] + y[r * ld + i] * inv * (weighted ? w.values[i] : 1.0);
          ASSERT_NEAR(x[r * ld + i], ref, 4e-6 * (std::abs(ref) + std::abs(y[r * ld + i] * inv)) + 1e-7) << "D=" << D;
        }
        for (int64_t i = D; i < ld; ++i) ASSERT_EQ(x[r * ld + i], x0[r * ld + i]) << "gap written";
      }
    }
  }
}

// rms_norms: a chain (residual add, in-place norm, a norm of the new residual with a scale) against
// float64 steps, each step reading what the one before it wrote.
TEST(RmsNorm, ChainOfSteps) {
  auto be = make_cpu_backend(2);
  Rng rng(22);
  const int64_t R = 3;
  for (int64_t D : {5, 256, 2816}) {
    Stored w0 = make_stored(DType::BF16, D, rng), w1 = make_stored(DType::F32, D, rng);
    const TensorView wv0 = w0.view({D}), wv1 = w1.view({D});
    std::vector<float> x = rng.normals(R * D, 1.0f), a = rng.normals(R * D, 3.0f), y(R * D);
    std::vector<double> xr(x.begin(), x.end()), ar(a.begin(), a.end()), yr(R * D);
    TensorView xv(DType::F32, x.data(), {R, D}), av(DType::F32, a.data(), {R, D}), yv(DType::F32, y.data(), {R, D});
    const RmsNormStep steps[] = {
        {&av, &wv0, &av},                        // a = RMS(a; w0)
        {&av, nullptr, &xv, true},               // x += RMS(a)
        {&xv, &wv1, &yv, false, 0.25f},          // y = RMS(x; w1) · 0.25
    };
    be->rms_norms(steps, 1e-6f);
    auto norm = [&](const std::vector<double>& in, const Stored* w, int64_t r, int64_t i) {
      double ss = 0;
      for (int64_t j = 0; j < D; ++j) ss += in[r * D + j] * in[r * D + j];
      return in[r * D + i] / std::sqrt(ss / D + 1e-6) * (w ? w->values[i] : 1.0);
    };
    for (int64_t r = 0; r < R; ++r) {
      std::vector<double> an(R * D, 0.0);
      for (int64_t i = 0; i < D; ++i) an[r * D + i] = norm(ar, &w0, r, i);
      for (int64_t i = 0; i < D; ++i) xr[r * D + i] += norm(an, nullptr, r, i);
      for (int64_t i = 0; i < D; ++i) yr[r * D + i] = norm(xr, &w1, r, i) * 0.25;
      for (int64_t i = 0; i < D; ++i) {
        ASSERT_NEAR(a[r * D + i], an[r * D + i], 2e-6 * std::abs(an[r * D + i]) + 1e-7) << "D=" << D;
        ASSERT_NEAR(x[r * D + i], xr[r * D + i], 1e-5 * (std::abs(xr[r * D + i]) + 1.0)) << "D=" << D;
        ASSERT_NEAR(y[r * D + i], yr[r * D + i], 1e-5 * (std::abs(yr[r * D + i]) + 0.1)) << "D=" << D;
      }
    }
  }
}

TEST(Rope, RotateHalfMatchesPytorchAngles) {
  // PyTorch: freqs = pos · inv_freq in f32, cos/sin of that f32 angle; the reference takes the same
  // f32 angle and evaluates cos/sin in f64. Bound: 2e-6 · max|x| (f32 cos/sin are within 1 ulp).
  auto be = make_cpu_backend(2);
  Rng rng(21);
  for (int64_t d : {2, 32, 256, 512}) {
    const int64_t T = 4, H = 3, half = d / 2;
    std::vector<float> inv_freq(half);
    for (int64_t i = 0; i < half; ++i) inv_freq[i] = std::pow(10000.0f, -2.0f * i / d);
    inv_freq[half - 1] = 0.0f;  // proportional RoPE leaves trailing pairs unrotated
    const int32_t positions[] = {0, 1, 4097, 131071};
    std::vector<float> x = rng.normals(T * H * d), x0 = x;
    TensorView xv(DType::F32, x.data(), {T, H, d});
    be->rope(xv, TensorView(DType::I32, const_cast<int32_t*>(positions), {T}),
             TensorView(DType::F32, inv_freq.data(), {half}));
    for (int64_t t = 0; t < T; ++t)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t i = 0; i < half; ++i) {
          const float angle = static_cast<float>(positions[t]) * inv_freq[i];
          const double c = std::cos(static_cast<double>(angle)), s = std::sin(static_cast<double>(angle));
          const int64_t base = (t * H + h) * d;
          const double a = x0[base + i], b = x0[base + i + half];
          ASSERT_NEAR(x[base + i], a * c - b * s, 2e-6 * 5) << "d=" << d << " t=" << t << " i=" << i;
          ASSERT_NEAR(x[base + i + half], b * c + a * s, 2e-6 * 5);
          if (inv_freq[i] == 0.0f) {
            ASSERT_EQ(x[base + i], x0[base + i]);
          }
        }
  }
}

TEST(Rope, StridedTwoDimensionalView) {
  // q as the first H·d columns of a fused [T, (H + 2)·d] projection; the rest must stay untouched.
  auto be = make_cpu_backend(1);
  Rng rng(22);
  const int64_t T = 2, H = 2, d = 8, ld = (H + 2) * d;
  const std::vector<float> inv_freq = {1.0f, 0.1f, 0.01f, 0.001f};
  const int32_t positions[] = {3, 10};
  std::vector<float> x = rng.normals(T * ld), x0 = x;
  TensorView xv(DType::F32, x.data(), {T, H * d});
  xv.row_stride = ld;
  be->rope(xv, TensorView(DType::I32, const_cast<int32_t*>(positions), {T}),
           TensorView(DType::F32, const_cast<float*>(inv_freq.data()), {d / 2}));
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < d / 2; ++i) {
        const float angle = static_cast<float>(positions[t]) * inv_freq[i];
        const int64_t base = t * ld + h * d;
        ASSERT_NEAR(x[base + i], x0[base + i] * std::cos(angle) - x0[base + i + d / 2] * std::sin(angle), 1e-5);
      }
    for (int64_t i = H * d; i < ld; ++i) ASSERT_EQ(x[t * ld + i], x0[t * ld + i]);
  }
}

// Rotate-half inverse frequencies for head_dim d, a few of them zero (proportional RoPE's unrotated pairs).
std::vector<float> test_inv_freq(int64_t d) {
  std::vector<float> f(d / 2);
  for (int64_t i = 0; i < d / 2; ++i) f[i] = i % 7 == 3 ? 0.0f : std::pow(10000.0f, -2.0f * i / d);
  return f;
}

// The fused query-heads op gives bitwise what rms_norm over the head rows and then rope give, for
// every weight dtype, odd head counts, strided rows and positions that are not contiguous.
TEST(RmsNormRope, BitwiseRmsNormThenRope) {
  auto be = make_cpu_backend(2);
  Rng rng(24);
  for (int64_t d : {2, 6, 256, 512}) {
    for (int64_t H : {1, 3, 5}) {
      for (int64_t T : {1, 3, 17}) {
        for (DType wt : kWeightDtypes) {
          SCOPED_TRACE(::testing::Message() << "d=" << d << " H=" << H << " T=" << T << " " << dtype_name(wt));
          Stored w = make_stored(wt, d, rng);
          const TensorView wv = w.view({d});
          std::vector<float> inv_freq = test_inv_freq(d);
          std::vector<int32_t> positions(T);
          for (int32_t& p : positions) p = static_cast<int32_t>(rng.index(200000));
          const TensorView pv(DType::I32, positions.data(), {T}), fv(DType::F32, inv_freq.data(), {d / 2});
          const int64_t ld = H * d + 3;  // q as a strided [T, H·d] view
          const std::vector<float> x0 = rng.normals(T * ld, 3.0f);
          std::vector<float> fused = x0, dense(T * H * d);
          TensorView xv(DType::F32, fused.data(), {T, H * d});
          xv.row_stride = ld;
          be->rms_norm_rope(xv, wv, 1e-6f, pv, fv);
          for (int64_t t = 0; t < T; ++t) std::copy_n(&x0[t * ld], H * d, &dense[t * H * d]);
          TensorView rows(DType::F32, dense.data(), {T * H, d}), heads(DType::F32, dense.data(), {T, H, d});
          be->rms_norm(rows, &wv, 1e-6f, rows);
          be->rope(heads, pv, fv);
          for (int64_t t = 0; t < T; ++t) {
            ASSERT_EQ(0, std::memcmp(&fused[t * ld], &dense[t * H * d], H * d * sizeof(float))) << "token " << t;
            for (int64_t i = H * d; i < ld; ++i) ASSERT_EQ(fused[t * ld + i], x0[t * ld + i]) << "gap written";
          }
        }
      }
    }
  }
}

// kv_write_normed puts bitwise rms_norm(k; k_norm) + rope and rms_norm(v) into each token's slot
// (bf16-rounded in a BF16 cache), V from K itself on K=V layers, leaves every other slot and its
// inputs alone, and refuses a slot outside the cache.
TEST(KvWriteNormed, BitwiseNormsRopeAndCopyIntoSlots) {
  auto be = make_cpu_backend(2);
  Rng rng(25);
  struct Case {
    int64_t d, n_kv, num_blocks, bs;
  };
  // A sliding layer's shape (head_dim 256, several KV heads) and a full one's (512, few heads), odd counts.
  for (const Case c : {Case{256, 3, 7, 4}, Case{512, 1, 5, 16}, Case{6, 5, 3, 2}}) {
    for (int64_t T : {1, 3, 17}) {
      if (T > c.num_blocks * c.bs) continue;
      for (bool k_eq_v : {false, true}) {
        for (DType kvt : {DType::F32, DType::BF16}) {
          SCOPED_TRACE(::testing::Message() << "d=" << c.d << " n_kv=" << c.n_kv << " T=" << T << " k_eq_v=" << k_eq_v
                                            << " " << dtype_name(kvt));
          const int64_t d = c.d, W = c.n_kv * d, n_slots = c.num_blocks * c.bs;
          Stored kn = make_stored(DType::BF16, d, rng);
          const TensorView knv = kn.view({d});
          std::vector<float> inv_freq = test_inv_freq(d);
          std::vector<int32_t> positions(T);
          for (int32_t& p : positions) p = static_cast<int32_t>(rng.index(200000));
          std::vector<int64_t> slots(n_slots);
          std::iota(slots.begin(), slots.end(), 0);
          std::shuffle(slots.begin(), slots.end(), rng.gen());
          slots.resize(T);
          const TensorView pv(DType::I32, positions.data(), {T}), fv(DType::F32, inv_freq.data(), {d / 2}),
              sv(DType::I64, slots.data(), {T});
          const int64_t ld = W + 5;  // k as a strided [T, n_kv·d] view, v dense [T, n_kv, d]
          const std::vector<float> k0 = rng.normals(T * ld, 2.0f), v0 = rng.normals(T * W, 2.0f);
          std::vector<float> k = k0, v = v0;
          TensorView kv(DType::F32, k.data(), {T, W}), vv(DType::F32, v.data(), {T, c.n_kv, d});
          kv.row_stride = ld;
          const size_t es = dtype_size(kvt), cache_bytes = n_slots * W * es;
          std::vector<uint8_t> kc(cache_bytes), vc(cache_bytes);
          for (uint8_t& b : kc) b = static_cast<uint8_t>(rng.index(256));
          for (uint8_t& b : vc) b = static_cast<uint8_t>(rng.index(256));
          std::vector<uint8_t> want_k = kc, want_v = vc;
          const KvLayer layer{kc.data(), vc.data(), kvt, static_cast<int32_t>(c.num_blocks), static_cast<int32_t>(c.bs),
                              static_cast<int32_t>(c.n_kv), static_cast<int32_t>(d)};
          be->kv_write_normed(kv, k_eq_v ? kv : vv, knv, 1e-6f, pv, fv, layer, sv);
          EXPECT_EQ(k, k0);
          EXPECT_EQ(v, v0);

          // The unfused ops on dense copies, then a plain copy into the slots.
          std::vector<float> kr(T * W), vr(T * W);
          for (int64_t t = 0; t < T; ++t) {
            std::copy_n(&k0[t * ld], W, &kr[t * W]);
            if (k_eq_v) std::copy_n(&k0[t * ld], W, &vr[t * W]);
          }
          if (!k_eq_v) vr = v0;
          TensorView krows(DType::F32, kr.data(), {T * c.n_kv, d}), vrows(DType::F32, vr.data(), {T * c.n_kv, d}),
              kheads(DType::F32, kr.data(), {T, c.n_kv, d});
          be->rms_norm(vrows, nullptr, 1e-6f, vrows);
          be->rms_norm(krows, &knv, 1e-6f, krows);
          be->rope(kheads, pv, fv);
          for (int64_t t = 0; t < T; ++t) {
            for (int64_t i = 0; i < W; ++i) {
              const int64_t dst = (slots[t] * W + i) * es;
              if (kvt == DType::F32) {
                std::memcpy(&want_k[dst], &kr[t * W + i], 4);
                std::memcpy(&want_v[dst], &vr[t * W + i], 4);
              } else {
                const uint16_t kb = f32_to_bf16(kr[t * W + i]), vb = f32_to_bf16(vr[t * W + i]);
                std::memcpy(&want_k[dst], &kb, 2);
                std::memcpy(&want_v[dst], &vb, 2);
              }
            }
          }
          EXPECT_TRUE(kc == want_k);
          EXPECT_TRUE(vc == want_v);

          std::vector<int64_t> bad = slots;
          bad[T - 1] = n_slots;
          EXPECT_THROW(be->kv_write_normed(kv, vv, knv, 1e-6f, pv, fv, layer, TensorView(DType::I64, bad.data(), {T})),
                       Error);
        }
      }
    }
  }
}

TEST(GeluTanhMul, StridedHalvesOfFusedGateUp) {
  // Bound: 2e-6 · |ref| + 1e-7 · |gate · up|. For very negative gate 1 + tanh(·) cancels, so f32
  // (PyTorch's too) keeps only an absolute ~eps · |gate · up| there.
  auto be = make_cpu_backend(2);
  Rng rng(23);
  for (int64_t I : {1, 7, 100, 9000}) {
    const int64_t R = 3;
    std::vector<float> gu = rng.normals(R * 2 * I, 2.0f), out(R * I);
    TensorView gate(DType::F32, gu.data(), {R, I}), up(DType::F32, gu.data() + I, {R, I});
    gate.row_stride = up.row_stride = 2 * I;
    TensorView ov(DType::F32, out.data(), {R, I});
    be->gelu_tanh_mul(gate, up, ov);
    for (int64_t r = 0; r < R; ++r)
      for (int64_t i = 0; i < I; ++i) {
        const double g = gu[r * 2 * I + i], u = gu[r * 2 * I + I + i], ref = gelu_tanh_ref(g) * u;
        ASSERT_NEAR(out[r * I + i], ref, 2e-6 * std::abs(ref) + 1e-7 * std::abs(g * u)) << "I=" << I;
      }
  }
}

TEST(GeluTanhMul, ExtremeAndTinyGateValues) {
  // Far tails (gelu → 0 or → z) and values near zero; bound 2e-6 · |ref| + 1e-30.
  auto be = make_cpu_backend(1);
  std::vector<float> g = {-60.0f, -30.0f, -10.0f, -3.0f, -1e-3f, 0.0f, 1e-3f, 1e-20f, 3.0f, 10.0f, 30.0f, 60.0f};
  std::vector<float> u(g.size(), 1.5f), out(g.size());
  const int64_t n = g.size();
  TensorView gv(DType::F32, g.data(), {1, n}), uv(DType::F32, u.data(), {1, n}), ov(DType::F32, out.data(), {1, n});
  be->gelu_tanh_mul(gv, uv, ov);
  for (int64_t i = 0; i < n; ++i) {
    const double ref = gelu_tanh_ref(g[i]) * 1.5;
    ASSERT_NEAR(out[i], ref, 2e-6 * std::abs(ref) + 1e-30) << "gate " << g[i];
  }
}

TEST(Elementwise, AddAxpyScaleSoftcap) {
  // add/axpy/scale are one f32 operation per element: bound 1 ulp-ish (1e-6 relative).
  // softcap: 2e-6 relative + 1e-7 (f32 tanh).
  auto be = make_cpu_backend(2);
  Rng rng(24);
  for (int64_t n : {1, 5, 1000, 262144 + 3}) {
    const int64_t R = n > 1000 ? 1 : 3;
    std::vector<float> a = rng.normals(R * n, 10.0f), b = rng.normals(R * n), y(R * n);
    TensorView av(DType::F32, a.data(), {R, n}), bv(DType::F32, b.data(), {R, n}), yv(DType::F32, y.data(), {R, n});
    be->add(av, bv, yv);
    for (int64_t i = 0; i < R * n; ++i) ASSERT_FLOAT_EQ(y[i], a[i] + b[i]);
    be->axpy(0.5f, av, yv);
    for (int64_t i = 0; i < R * n; ++i) ASSERT_NEAR(y[i], 1.5 * a[i] + b[i], 1e-6 * (std::abs(a[i]) * 2 + std::abs(b[i])));
    std::vector<float> s = a;
    TensorView sv(DType::F32, s.data(), {R, n});
    be->scale(sv, -0.25f);
    for (int64_t i = 0; i < R * n; ++i) ASSERT_EQ(s[i], a[i] * -0.25f);
    std::vector<float> c = a;
    TensorView cv(DType::F32, c.data(), {R, n});
    be->softcap(cv, 30.0f);
    for (int64_t i = 0; i < R * n; ++i) {
      const double ref = 30.0 * std::tanh(a[i] / 30.0);
      ASSERT_NEAR(c[i], ref, 2e-6 * std::abs(ref) + 1e-7) << "n=" << n << " i=" << i;
    }
  }
}

TEST(Elementwise, StridedViewsAndAliasing) {
  auto be = make_cpu_backend(2);
  Rng rng(25);
  const int64_t R = 4, C = 9, ld = 13;
  std::vector<float> a = rng.normals(R * ld), a0 = a, b = rng.normals(R * C);
  TensorView av(DType::F32, a.data(), {R, C});
  av.row_stride = ld;
  TensorView bv(DType::F32, b.data(), {R, C});
  be->add(av, bv, av);  // y aliases a
  for (int64_t r = 0; r < R; ++r) {
    for (int64_t i = 0; i < C; ++i) ASSERT_FLOAT_EQ(a[r * ld + i], a0[r * ld + i] + b[r * C + i]);
    for (int64_t i = C; i < ld; ++i) ASSERT_EQ(a[r * ld + i], a0[r * ld + i]);
  }
}

TEST(Elementwise, ClampBoundsInfinityAndStride) {
  auto be = make_cpu_backend(2);
  Rng rng(26);
  const int64_t R = 3, C = 1000, ld = 1003;
  std::vector<float> x = rng.normals(R * ld, 4.0f), x0 = x;
  TensorView xv(DType::F32, x.data(), {R, C});
  xv.row_stride = ld;
  be->clamp(xv, -1.5f, 0.25f);
  int clamped = 0;
  for (int64_t r = 0; r < R; ++r) {
    for (int64_t i = 0; i < C; ++i) {
      const float v = x0[r * ld + i];
      ASSERT_EQ(x[r * ld + i], std::min(std::max(v, -1.5f), 0.25f));
      clamped += v < -1.5f || v > 0.25f;
    }
    for (int64_t i = C; i < ld; ++i) ASSERT_EQ(x[r * ld + i], x0[r * ld + i]);  // the gaps are untouched
  }
  EXPECT_GT(clamped, C);  // both bounds were exercised on many elements
  std::vector<float> y = x0;
  TensorView yv(DType::F32, y.data(), {R, ld});
  be->clamp(yv, -INFINITY, INFINITY);  // the bounds of an unclipped ClippableLinear
  EXPECT_EQ(y, x0);
  EXPECT_THROW(be->clamp(yv, 1.0f, -1.0f), Error);
}

TEST(Standardize, WeightDtypesStrideAndAlias) {
  // One subtraction and one multiplication per element in f32: exact against the same f32 sequence.
  auto be = make_cpu_backend(2);
  Rng rng(27);
  for (int64_t D : {1, 7, 1152}) {
    for (DType wt : {DType::F32, DType::BF16, DType::F16}) {
      Stored bias = make_stored(wt, D, rng), scale = make_stored(wt, D, rng);
      const int64_t R = 4, ld = D + 5;
      std::vector<float> x = rng.normals(R * ld, 3.0f), y(R * D);
      TensorView xv(DType::F32, x.data(), {R, D});
      xv.row_stride = ld;
      TensorView yv(DType::F32, y.data(), {R, D});
      be->standardize(xv, bias.view({D}), scale.view({D}), yv);
      for (int64_t r = 0; r < R; ++r)
        for (int64_t i = 0; i < D; ++i) {
          const float want = (x[r * ld + i] - static_cast<float>(bias.values[i])) * static_cast<float>(scale.values[i]);
          ASSERT_EQ(y[r * D + i], want) << "D=" << D << " dtype " << dtype_name(wt);
        }
      be->standardize(xv, bias.view({D}), scale.view({D}), xv);  // in place
      for (int64_t r = 0; r < R; ++r)
        for (int64_t i = 0; i < D; ++i) ASSERT_EQ(x[r * ld + i], y[r * D + i]);
      EXPECT_THROW(be->standardize(xv, bias.view({D}), make_stored(wt, D + 1, rng).view({D + 1}), yv), Error);
    }
  }
}

TEST(Embed, AllTableDtypesWithScale) {
  auto be = make_cpu_backend(2);
  Rng rng(26);
  const int64_t V = 50, H = 37;
  const int32_t ids[] = {0, 49, 7, 7};
  for (DType dt : kWeightDtypes) {
    Stored table = make_stored(dt, V * H, rng);
    std::vector<float> y(4 * H);
    TensorView yv(DType::F32, y.data(), {4, H});
    be->embed(TensorView(DType::I32, const_cast<int32_t*>(ids), {4}), table.view({V, H}), 6.5f, yv);
    for (int t = 0; t < 4; ++t)
      for (int64_t i = 0; i < H; ++i) ASSERT_FLOAT_EQ(y[t * H + i], static_cast<float>(table.values[ids[t] * H + i]) * 6.5f);
    int32_t bad[] = {50};
    TensorView y1(DType::F32, y.data(), {1, H});
    EXPECT_THROW(be->embed(TensorView(DType::I32, bad, {1}), table.view({V, H}), 1.0f, y1), Error);
  }
}

// Router reference in f64: softmax, top-k (ties to the lower index), renormalise, scale.
void route_ref(const float* logits, int64_t E, int k, const double* scale, std::vector<int32_t>& ids,
               std::vector<double>& w) {
  const double mx = *std::max_element(logits, logits + E);
  std::vector<double> p(E);
  double sum = 0;
  for (int64_t e = 0; e < E; ++e) sum += p[e] = std::exp(logits[e] - mx);
  for (double& v : p) v /= sum;
  std::vector<int32_t> order(E);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return p[a] > p[b]; });
  double top = 0;
  for (int j = 0; j < k; ++j) top += p[order[j]];
  ids.assign(order.begin(), order.begin() + k);
  w.resize(k);
  for (int j = 0; j < k; ++j) w[j] = p[ids[j]] / top * (scale ? scale[ids[j]] : 1.0);
}

TEST(MoeRoute, TopKRenormalisedAndScaledWithTies) {
  // Weights: 2e-6 relative (f32 exp and divisions).
  auto be = make_cpu_backend(2);
  Rng rng(27);
  const int64_t T = 6, E = 128;
  const int k = 8;
  std::vector<float> logits = rng.normals(T * E, 2.0f);
  logits[1 * E + 5] = logits[1 * E + 90] = 9.0f;  // tie for first place: 5 must come before 90
  for (int64_t e = 0; e < E; ++e) logits[2 * E + e] = 0.5f;  // all tied: ids 0..k-1
  Stored scale = make_stored(DType::BF16, E, rng);
  for (double& v : scale.values) v = std::abs(v);  // keep a plausible positive scale...
  for (int64_t e = 0; e < E; ++e) {               // ...and store it back
    const uint16_t h = f32_to_bf16(static_cast<float>(scale.values[e]));
    std::memcpy(&scale.bytes[e * 2], &h, 2);
  }
  for (const Stored* s : {static_cast<const Stored*>(nullptr), static_cast<const Stored*>(&scale)}) {
    std::vector<int32_t> ids(T * k);
    std::vector<float> w(T * k);
    TensorView lv(DType::F32, logits.data(), {T, E});
    TensorView sv;
    if (s) sv = TensorView(s->dtype, const_cast<uint8_t*>(s->bytes.data()), {E});
    TensorView iv(DType::I32, ids.data(), {T, k}), wv(DType::F32, w.data(), {T, k});
    be->moe_route(lv, s ? &sv : nullptr, iv, wv);
    for (int64_t t = 0; t < T; ++t) {
      std::vector<int32_t> ref_ids;
      std::vector<double> ref_w;
      route_ref(&logits[t * E], E, k, s ? s->values.data() : nullptr, ref_ids, ref_w);
      for (int j = 0; j < k; ++j) {
        ASSERT_EQ(ids[t * k + j], ref_ids[j]) << "row " << t << " slot " << j;
        ASSERT_NEAR(w[t * k + j], ref_w[j], 2e-6 * std::abs(ref_w[j]));
      }
    }
    EXPECT_EQ(ids[1 * k + 0], 5);
    EXPECT_EQ(ids[1 * k + 1], 90);
    for (int j = 0; j < k; ++j) EXPECT_EQ(ids[2 * k + j], j);
  }
}

TEST(MoeExperts, GroupedExpertsMatchPerRowReference) {
  // Bound: 1e-5 · Σ|terms| of the final sum (two chained f32 matmuls plus gelu).
  auto be = make_cpu_backend(2);
  Rng rng(28);
  const int64_t T = 7, H = 48, I = 19, E = 5;
  const int k = 3;
  for (DType wt : {DType::F32, DType::BF16}) {
    Stored gate_up = make_stored(wt, E * 2 * I * H, rng, 0.2f);
    Stored down = make_stored(wt, E * H * I, rng, 0.2f);
    std::vector<float> x = rng.normals(T * H), y(T * H, 99.0f);
    std::vector<int32_t> ids(T * k);
    std::vector<float> w(T * k);
    for (int64_t t = 0; t < T; ++t) {
      std::vector<int32_t> perm(E);
      std::iota(perm.begin(), perm.end(), 0);
      std::shuffle(perm.begin(), perm.end(), rng.gen());
      for (int j = 0; j < k; ++j) {
        ids[t * k + j] = perm[j];
        w[t * k + j] = rng.uniform(0.1f, 1.0f);
      }
    }
    ids[0] = 2, ids[k] = 2, ids[2 * k] = 2;  // several rows share expert 2
    TensorView xv(DType::F32, x.data(), {T, H}), yv(DType::F32, y.data(), {T, H});
    be->moe_experts(xv, TensorView(DType::I32, ids.data(), {T, k}), TensorView(DType::F32, w.data(), {T, k}),
                    gate_up.view({E, 2 * I, H}), down.view({E, H, I}), yv);
    for (int64_t t = 0; t < T; ++t) {
      std::vector<double> ref(H, 0.0), mag(H, 0.0);
      for (int j = 0; j < k; ++j) {
        const int64_t e = ids[t * k + j];
        std::vector<double> act(I);
        for (int64_t i = 0; i < I; ++i) {
          double g = 0, u = 0;
          for (int64_t h = 0; h < H; ++h) {
            g += gate_up.values[(e * 2 * I + i) * H + h] * x[t * H + h];
            u += gate_up.values[(e * 2 * I + I + i) * H + h] * x[t * H + h];
          }
          act[i] = gelu_tanh_ref(g) * u;
        }
        for (int64_t h = 0; h < H; ++h)
          for (int64_t i = 0; i < I; ++i) {
            const double term = w[t * k + j] * down.values[(e * H + h) * I + i] * act[i];
            ref[h] += term;
            mag[h] += std::abs(term);
          }
      }
      for (int64_t h = 0; h < H; ++h) ASSERT_NEAR(y[t * H + h], ref[h], 1e-5 * mag[h] + 1e-6) << dtype_name(wt);
    }
  }
}

// A row's output is the same bits alone and in a prefill-sized batch, whose experts get hundreds of
// rows each (computed in chunks of rows, over the pool), at any thread count.
TEST(MoeExperts, RowResultIndependentOfBatch) {
  Rng rng(29);
  const int64_t T = 300, H = 64, I = 40, E = 3;
  const int k = 2;
  Stored gate_up = make_stored(DType::BF16, E * 2 * I * H, rng, 0.2f);
  Stored down = make_stored(DType::BF16, E * H * I, rng, 0.2f);
  std::vector<float> x = rng.normals(T * H), w(T * k);
  std::vector<int32_t> ids(T * k);
  for (int64_t t = 0; t < T; ++t) {
    ids[t * k] = static_cast<int32_t>(t % E), ids[t * k + 1] = static_cast<int32_t>((t / E + 1 + t) % E);
    if (ids[t * k + 1] == ids[t * k]) ids[t * k + 1] = (ids[t * k] + 1) % E;
    w[t * k] = rng.uniform(0.1f, 1.0f), w[t * k + 1] = rng.uniform(0.1f, 1.0f);
  }
  for (int threads : {1, 2}) {
    auto be = make_cpu_backend(threads);
    std::vector<float> all(T * H), one(H);
    auto run = [&](int64_t t0, int64_t n, float* out) {
      TensorView yv(DType::F32, out, {n, H});
      be->moe_experts(TensorView(DType::F32, &x[t0 * H], {n, H}), TensorView(DType::I32, &ids[t0 * k], {n, k}),
                      TensorView(DType::F32, &w[t0 * k], {n, k}), gate_up.view({E, 2 * I, H}), down.view({E, H, I}), yv);
    };
    run(0, T, all.data());
    for (int64_t t : {0, 1, 64, 150, 299}) {
      run(t, 1, one.data());
      ASSERT_TRUE(std::equal(one.begin(), one.end(), &all[t * H])) << "row " << t << " threads " << threads;
    }
  }
}

}  // namespace
}  // namespace tandem::test
