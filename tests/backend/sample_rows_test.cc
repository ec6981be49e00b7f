// sample_rows on the CPU backend (the reference the CUDA test compares against):
//   - the kept set (top-k, top-p over the renormalised top-k, min-p) against a float64 textbook
//     version of transformers' warpers, over many parameter combinations and rows with ties;
//   - the drawn token against an inverse-CDF walk over those kept masses, for random uniforms;
//   - rejection sampling against a draft (likely, unlikely, outside the kept set) reproduces the
//     target distribution: Pearson chi-square below its 1 − 1e-4 quantile with fixed seeds;
//   - bad shapes and drafts are refused.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <vector>

#include "backend/sampling.h"
#include "backend_test_util.h"

namespace tandem::test {
namespace {

using sampling::RowParams;

// A uniform in [0, 1), a multiple of 2^-24 (what sample_rows takes).
float uniform24(Rng& rng) { return static_cast<float>(rng.gen()() >> 40) * 0x1p-24f; }

// Logits with ties: normals rounded to a 1/4 grid.
std::vector<float> tied_logits(int64_t V, Rng& rng, float sd) {
  std::vector<float> l(V);
  for (float& x : l) x = std::round(rng.normal(sd) * 4.0f) / 4.0f;
  return l;
}

// Runs sample_rows on the CPU backend; params, uniforms and drafts per row.
std::vector<int32_t> run_op(Backend& be, const std::vector<float>& logits, int64_t V, const std::vector<RowParams>& p,
                            const std::vector<float>& u, const std::vector<int32_t>& drafts) {
  const int64_t R = static_cast<int64_t>(p.size());
  // Params and uniforms interleaved in one [R, 6] buffer, as the engine uploads them (strided views).
  std::vector<float> in(R * 6);
  for (int64_t r = 0; r < R; ++r) {
    in[r * 6 + 0] = p[r].temperature, in[r * 6 + 1] = p[r].top_k, in[r * 6 + 2] = p[r].top_p, in[r * 6 + 3] = p[r].min_p;
    in[r * 6 + 4] = u[r * 2], in[r * 6 + 5] = u[r * 2 + 1];
  }
  TensorView lv(DType::F32, const_cast<float*>(logits.data()), {R, V});
  TensorView pv(DType::F32, in.data(), {R, 4});
  TensorView uv(DType::F32, in.data() + 4, {R, 2});
  pv.row_stride = uv.row_stride = 6;
  TensorView dv(DType::I32, const_cast<int32_t*>(drafts.data()), {R});
  std::vector<int32_t> out(R, -7);
  TensorView ov(DType::I32, out.data(), {R});
  be.sample_rows(lv, pv, uv, dv, ov);
  return out;
}

// transformers' TemperatureLogitsWarper → TopK → TopP → MinP in float64 on one row: the kept set,
// with the order (logit desc, id asc). `margin` gets how close the top-p cut came to flipping
// (|cumulative probability − top_p| at the boundary tokens), to skip rows where float64 and the
// fixed-point masses may legitimately disagree.
std::vector<char> reference_kept(const std::vector<float>& l, const RowParams& p, double* margin) {
  const int64_t V = static_cast<int64_t>(l.size());
  std::vector<int32_t> order(V);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return l[a] > l[b]; });
  const double t = p.temperature <= 0 ? 1.0 : std::max<double>(p.temperature, 1e-6);
  const double m = l[order[0]];
  std::vector<double> e(V);
  for (int64_t i = 0; i < V; ++i) e[i] = std::exp((l[i] - m) / t);
  int64_t n = p.temperature <= 0 ? 1 : (p.top_k >= 1 && p.top_k < V ? static_cast<int64_t>(p.top_k) : V);
  *margin = INFINITY;
  if (p.top_p < 1.0f) {
    double sk = 0;
    for (int64_t i = 0; i < n; ++i) sk += e[order[i]];
    double cum = 0;
    for (int64_t i = 0; i < n; ++i) {
      cum += e[order[i]] / sk;
      *margin = std::min(*margin, std::abs(cum - p.top_p));
      if (cum >= p.top_p) {
        n = i + 1;
        break;
      }
    }
  }
  std::vector<char> kept(V, 0);
  for (int64_t i = 0; i < n; ++i) {
    const int32_t id = order[i];
    const double ratio = e[id];  // p_i / p_max: the top token's e is 1
    if (p.min_p > 0) *margin = std::min(*margin, std::abs(ratio - p.min_p) / p.min_p);
    if (!(ratio < p.min_p)) kept[id] = 1;
  }
  return kept;
}

std::vector<RowParams> param_grid(int64_t V) {
  std::vector<RowParams> grid;
  for (float t : {0.0f, 1e-7f, 0.5f, 1.0f, 1.7f})
    for (float k : {0.0f, 1.0f, 2.0f, 40.0f, static_cast<float>(V - 1), static_cast<float>(V), static_cast<float>(V + 5)})
      for (float tp : {1.0f, 0.95f, 0.5f, 1e-6f})
        for (float mp : {0.0f, 0.05f, 0.5f}) grid.push_back({t, k, tp, mp});
  return grid;
}

TEST(SampleRows, KeptSetMatchesTransformersWarpersInFloat64) {
  Rng rng(11);
  const int64_t V = 300;
  sampling::Scratch s;
  int checked = 0;
  for (const RowParams& p : param_grid(V)) {
    for (float sd : {1.0f, 4.0f}) {
      const std::vector<float> l = tied_logits(V, rng, sd);
      double margin;
      const std::vector<char> want = reference_kept(l, p, &margin);
      if (margin < 1e-6) continue;  // a cut within rounding of its threshold
      sampling::kept_masses(l, p, s);
      SCOPED_TRACE(::testing::Message() << "t=" << p.temperature << " k=" << p.top_k << " p=" << p.top_p
                                        << " min_p=" << p.min_p << " sd=" << sd);
      int64_t diffs = 0;
      for (int64_t i = 0; i < V; ++i) {
        // A kept token whose e is below 2^-40 has mass 0 (sampling.h step 4): never drawn.
        const bool tiny = std::exp((l[i] - *std::max_element(l.begin(), l.end())) /
                                   std::max<double>(p.temperature <= 0 ? 1.0 : p.temperature, 1e-6)) < 0x1p-39;
        if (!tiny) diffs += (s.w[i] > 0) != (want[i] != 0);
      }
      EXPECT_EQ(diffs, 0);
      ++checked;
    }
  }
  EXPECT_GT(checked, 700);
}

TEST(SampleRows, DrawIsTheInverseCdfOfTheKeptMassesAndDraftsFollowTheRule) {
  auto be = make_cpu_backend(2);
  Rng rng(12);
  const int64_t V = 1000;
  const std::vector<RowParams> grid = param_grid(V);
  const int64_t R = static_cast<int64_t>(grid.size());
  std::vector<float> logits;
  std::vector<float> u(R * 2);
  std::vector<int32_t> drafts(R);
  for (int64_t r = 0; r < R; ++r) {
    const std::vector<float> l = tied_logits(V, rng, r % 2 ? 1.0f : 3.0f);
    logits.insert(logits.end(), l.begin(), l.end());
    u[r * 2] = uniform24(rng), u[r * 2 + 1] = uniform24(rng);
    const int32_t argmax = static_cast<int32_t>(std::max_element(l.begin(), l.end()) - l.begin());
    drafts[r] = r % 4 == 0 ? -1 : r % 4 == 1 ? argmax : static_cast<int32_t>(rng.index(V));
  }
  const std::vector<int32_t> out = run_op(*be, logits, V, grid, u, drafts);
  sampling::Scratch s;
  int accepted = 0;
  for (int64_t r = 0; r < R; ++r) {
    SCOPED_TRACE(r);
    const std::span<const float> l(logits.data() + r * V, V);
    const uint64_t total = sampling::kept_masses(l, grid[r], s);
    const int32_t d = drafts[r];
    // The rule of sampling.h step 5, written out in 128-bit arithmetic.
    const unsigned __int128 u0 = static_cast<uint32_t>(u[r * 2] * 0x1p24f), u1 = static_cast<uint32_t>(u[r * 2 + 1] * 0x1p24f);
    if (d >= 0 && (static_cast<unsigned __int128>(s.w[d]) << 24) > u0 * total) {
      EXPECT_EQ(out[r], d);
      ++accepted;
      continue;
    }
    const uint64_t rest = total - (d >= 0 ? s.w[d] : 0);
    unsigned __int128 cum = 0;
    int32_t want = -1;
    for (int64_t i = 0; i < V && want < 0; ++i) {
      if (i == d) continue;
      cum += s.w[i];
      if ((cum << 24) > u1 * rest) want = static_cast<int32_t>(i);
    }
    EXPECT_EQ(out[r], want);
    EXPECT_NE(out[r], d);
    EXPECT_GT(s.w[out[r]], 0u);
  }
  EXPECT_GT(accepted, R / 8);  // the argmax drafts are accepted often
  EXPECT_EQ(out, run_op(*be, logits, V, grid, u, drafts));  // and the op is deterministic
}

double chi_square_quantile_1e4(int df) {
  const double z = 3.719;  // standard normal 1 - 1e-4 quantile
  const double a = 2.0 / (9.0 * df);
  return df * std::pow(1 - a + z * std::sqrt(a), 3);
}

TEST(SampleRows, RejectionSamplingWithADraftKeepsTheTargetDistribution) {
  auto be = make_cpu_backend(2);
  Rng rng(13);
  const int64_t V = 12;
  std::vector<float> row(V);
  for (int64_t i = 0; i < V; ++i) row[i] = 1.5f - 0.35f * static_cast<float>(i) + (i == 4 ? 0.3f : 0.0f);
  struct Case {
    RowParams p;
    int32_t draft;
  };
  // Gemma 4's defaults-like truncation (top-k and top-p), min-p, plain temperature; drafts likely,
  // middling and outside the kept set; one row without a draft.
  const Case cases[] = {{{1.0f, 8, 0.9f, 0.0f}, 0}, {{1.0f, 8, 0.9f, 0.0f}, 4}, {{1.0f, 8, 0.9f, 0.0f}, 11},
                        {{0.7f, 0, 1.0f, 0.1f}, 2}, {{1.3f, 0, 1.0f, 0.0f}, 9},  {{1.0f, 5, 1.0f, 0.0f}, -1}};
  for (const Case& c : cases) {
    SCOPED_TRACE(::testing::Message() << "k=" << c.p.top_k << " p=" << c.p.top_p << " min_p=" << c.p.min_p
                                      << " t=" << c.p.temperature << " draft=" << c.draft);
    const int64_t n = 200000;
    std::vector<float> logits;
    logits.reserve(n * V);
    for (int64_t i = 0; i < n; ++i) logits.insert(logits.end(), row.begin(), row.end());
    std::vector<float> u(n * 2);
    for (float& x : u) x = uniform24(rng);
    const std::vector<int32_t> out =
        run_op(*be, logits, V, std::vector<RowParams>(n, c.p), u, std::vector<int32_t>(n, c.draft));
    // The target: the kept distribution, in float64 from the reference warpers.
    double margin;
    const std::vector<char> kept = reference_kept(row, c.p, &margin);
    std::vector<double> target(V, 0.0);
    double z = 0;
    for (int64_t i = 0; i < V; ++i)
      if (kept[i]) z += target[i] = std::exp((row[i] - row[0]) / c.p.temperature);
    std::map<int32_t, int> observed;
    for (int32_t t : out) ++observed[t];
    double chi2 = 0;
    int cells = 0;
    for (int64_t i = 0; i < V; ++i) {
      const double e = target[i] / z * n;
      const double o = observed.count(i) ? observed[i] : 0;
      if (e == 0) {
        EXPECT_EQ(o, 0) << "token " << i << " is outside the kept set";
        continue;
      }
      ASSERT_GE(e, 5);
      chi2 += (o - e) * (o - e) / e;
      ++cells;
    }
    ASSERT_GE(cells, 3);
    EXPECT_LT(chi2, chi_square_quantile_1e4(cells - 1)) << "cells " << cells;
    if (c.draft >= 0) {  // the draft is emitted with exactly its target probability
      const double pd = target[c.draft] / z;
      const double got = static_cast<double>(observed[c.draft]) / n;
      EXPECT_NEAR(got, pd, 5 * std::sqrt(std::max(pd, 1e-9) / n) + 1e-12);
    }
  }
}

TEST(SampleRows, BadInputIsRefused) {
  auto be = make_cpu_backend(1);
  const std::vector<float> logits = {0.0f, 1.0f, 2.0f};
  const std::vector<float> u = {0.5f, 0.5f};
  const std::vector<RowParams> p = {RowParams{}};
  EXPECT_THROW(run_op(*be, logits, 3, p, u, {3}), Error);   // draft outside the vocabulary
  EXPECT_THROW(run_op(*be, logits, 3, p, u, {-2}), Error);  // not -1 either
  EXPECT_NO_THROW(run_op(*be, logits, 3, p, u, {-1}));
  std::vector<float> in(6, 0.0f);
  int32_t d = -1, o = 0;
  TensorView lv(DType::F32, const_cast<float*>(logits.data()), {1, 3});
  TensorView pv(DType::F32, in.data(), {1, 3});  // three parameter columns instead of four
  TensorView uv(DType::F32, in.data(), {1, 2});
  TensorView dv(DType::I32, &d, {1}), ov(DType::I32, &o, {1});
  EXPECT_THROW(be->sample_rows(lv, pv, uv, dv, ov), Error);
}

}  // namespace
}  // namespace tandem::test
