#include "backend/sampling.h"

#include <algorithm>
#include <numeric>

#include "util/error.h"

namespace tandem::sampling {

uint64_t kept_masses(std::span<const float> logits, const RowParams& p, Scratch& s) {
  const int64_t V = static_cast<int64_t>(logits.size());
  if (V == 0) fail("sampling: the row is empty");
  const float maxv = *std::max_element(logits.begin(), logits.end());
  const float inv_t = inverse_temperature(p.temperature);
  s.w.resize(V);
  for (int64_t i = 0; i < V; ++i) s.w[i] = mass(weight_e(logits[i], maxv, inv_t));

  // top-k and top-p keep a prefix of the order; find its length n.
  const int64_t K = keep_k(p, V);
  const bool top_p = p.top_p < 1.0f;
  if (K < V || top_p) {
    s.order.resize(V);
    std::iota(s.order.begin(), s.order.end(), 0);
    std::partial_sort(s.order.begin(), s.order.begin() + K, s.order.end(), [&](int32_t a, int32_t b) {
      const uint32_t ka = order_key(logits[a]), kb = order_key(logits[b]);
      return ka > kb || (ka == kb && a < b);
    });
    int64_t n = K;
    if (top_p) {
      uint64_t W = 0;
      for (int64_t i = 0; i < K; ++i) W += s.w[s.order[i]];
      const uint64_t target = top_p_target(W, p.top_p);
      uint64_t cum = 0;
      for (int64_t i = 0; i < K; ++i) {
        cum += s.w[s.order[i]];
        if (cum >= target) {
          n = i + 1;
          break;
        }
      }
    }
    for (int64_t i = n; i < V; ++i) s.w[s.order[i]] = 0;
  }
  // min-p: e_i >= min_p keeps a prefix of the order too (e is monotone in the logit), so it can
  // apply token by token.
  const float min_p = min_p_threshold(p.min_p);
  uint64_t total = 0;
  for (int64_t i = 0; i < V; ++i) {
    if (s.w[i] && weight_e(logits[i], maxv, inv_t) < min_p) s.w[i] = 0;
    total += s.w[i];
  }
  return total;
}

int32_t draw(std::span<const uint64_t> w, uint64_t total, int32_t draft, const float u[kUniforms]) {
  const int64_t V = static_cast<int64_t>(w.size());
  if (draft >= V) fail("sampling: draft token {} is outside the vocabulary [0, {})", draft, V);
  if (draft >= 0) {
    if (w[draft] > scaled(uniform_bits(u[0]), total)) return draft;
    total -= w[draft];
  }
  const uint64_t target = scaled(uniform_bits(u[1]), total);
  uint64_t cum = 0;
  for (int64_t i = 0; i < V; ++i) {
    if (i == draft) continue;
    cum += w[i];
    if (cum > target) return static_cast<int32_t>(i);
  }
  // Unreachable: the top token has mass 2^40, and a rejected draft leaves another kept token.
  fail("sampling: no mass left to draw from (total {})", total);
}

int32_t sample_row(std::span<const float> logits, const RowParams& p, const float u[kUniforms], int32_t draft,
                   Scratch& s) {
  const uint64_t total = kept_masses(logits, p, s);
  return draw(s.w, total, draft, u);
}

}  // namespace tandem::sampling
