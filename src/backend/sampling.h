// The one definition of how a row of logits becomes a sampled token (temperature, top-k, top-p,
// min-p, then the draw or the speculative acceptance test), shared by the host Sampler, the CPU
// backend's sample_rows op and, through the __host__ __device__ helpers below, the CUDA kernel.
//
// For one row of logits l[V] with parameters (temperature t, top_k, top_p, min_p) and two uniforms:
//   1. e_i = exp((l_i − max l) / max(t, 1e-6)) with sampling::exp_nonpositive (the same float
//      operations on every backend), so the top token has e = 1 exactly.
//   2. The order: larger logit first, ties toward the lower id (order_key below).
//   3. top-k: the first k tokens of the order (t <= 0, greedy, means k = 1: the argmax). top-p: of
//      those, the shortest prefix whose mass reaches top_p of the top-k mass (the top-k distribution
//      renormalised, as transformers' TopK then TopP warpers do; at least one token). min-p: of those,
//      the tokens with e_i >= min_p (that is p_i >= min_p · p_max, since the top token's e is 1).
//   4. Masses are fixed point: w_i = floor(e_i · 2^40) for kept tokens, 0 otherwise. Every sum is an
//      exact integer sum, so its value does not depend on the order a backend adds in, and the CPU
//      and CUDA backends keep the same tokens and draw the same token for the same uniforms (tokens
//      with e_i < 2^-40, probability below 1e-12 of the top token's, are never drawn).
//   5. Draw, with uniforms u0, u1 in [0, 1) that are multiples of 2^-24 (U = u · 2^24 exactly):
//      with a draft d (a one-hot draft distribution, Leviathan et al. 2023), accept d when
//      w_d > floor(U0 · W / 2^24) (probability w_d / W, W = Σ w); otherwise remove d's mass and
//      draw. The draw returns the first token in id order whose running mass exceeds
//      floor(U1 · W' / 2^24) over the remaining mass W'. A row without a draft uses only u1.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#ifdef __CUDACC__
#define TANDEM_HD __host__ __device__ __forceinline__
#else
#define TANDEM_HD inline
#endif

namespace tandem::sampling {

// One row's parameters as the sample_rows op reads them: [R, 4] F32 (top_k as a float, exact for
// every vocabulary size below 2^24; 0 or >= V: off; temperature <= 0: greedy).
struct RowParams {
  float temperature = 1.0f, top_k = 0.0f, top_p = 1.0f, min_p = 0.0f;
};
constexpr int kParamCols = 4;
// Uniforms per output row: every path (host sampler, CPU op, CUDA op) takes exactly two per row,
// used or not, so a seeded request consumes its RNG the same way whichever path runs its rows.
constexpr int kUniforms = 2;
constexpr int kUniformBits = 24;
constexpr float kMinTemperature = 1e-6f;
constexpr int kMassBits = 40;

// e^x for x <= 0 (x is clamped to >= -87.3, which gives ~1e-38, i.e. mass 0). Cephes' polynomial on
// x = n·ln2 + r with explicit fmas only, so host and device compute the same float bit for bit.
TANDEM_HD float exp_nonpositive(float x) {
  x = fminf(fmaxf(x, -87.3f), 0.0f);
  const float n = rintf(x * 1.44269504088896341f);
  float r = fmaf(-n, 0.693359375f, x);
  r = fmaf(-n, -2.12194440e-4f, r);
  float p = 1.9875691500e-4f;
  p = fmaf(p, r, 1.3981999507e-3f);
  p = fmaf(p, r, 8.3334519073e-3f);
  p = fmaf(p, r, 4.1665795894e-2f);
  p = fmaf(p, r, 1.6666665459e-1f);
  p = fmaf(p, r, 5.0000001201e-1f);
  const float rr = r * r, r1 = r + 1.0f;
  p = fmaf(p, rr, r1);
  const uint32_t bits = static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23;
  float pow2n;
  memcpy(&pow2n, &bits, sizeof(pow2n));
  return p * pow2n;
}

TANDEM_HD float inverse_temperature(float t) { return 1.0f / fmaxf(t, kMinTemperature); }
TANDEM_HD float weight_e(float logit, float max_logit, float inv_t) {
  return exp_nonpositive((logit - max_logit) * inv_t);
}
TANDEM_HD uint64_t mass(float e) { return static_cast<uint64_t>(e * 0x1p40f); }

// A key whose unsigned order is the float order of the logit (−0 below +0): the sort key of step 2.
TANDEM_HD uint32_t order_key(float logit) {
  uint32_t b;
  memcpy(&b, &logit, sizeof(b));
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
TANDEM_HD float key_logit(uint32_t key) {
  const uint32_t b = (key & 0x80000000u) ? (key & 0x7FFFFFFFu) : ~key;
  float f;
  memcpy(&f, &b, sizeof(f));
  return f;
}

// How many tokens top-k keeps (V: all).
TANDEM_HD int64_t keep_k(const RowParams& p, int64_t V) {
  if (p.temperature <= 0.0f) return 1;
  const int64_t k = p.top_k >= 1.0f && p.top_k < static_cast<float>(V) ? static_cast<int64_t>(p.top_k) : V;
  return k;
}
// The mass top-p's prefix must reach, out of the top-k mass W (in [1, W]).
TANDEM_HD uint64_t top_p_target(uint64_t W, float top_p) {
  const double t = ceil(static_cast<double>(top_p) * static_cast<double>(W));
  if (!(t >= 1.0)) return 1;
  return t >= static_cast<double>(W) ? W : static_cast<uint64_t>(t);
}
TANDEM_HD float min_p_threshold(float min_p) { return fminf(fmaxf(min_p, 0.0f), 1.0f); }
// u in [0, 1) as an integer of kUniformBits bits (values outside clamp to the ends).
TANDEM_HD uint32_t uniform_bits(float u) {
  const float s = u * 0x1p24f;
  if (!(s > 0.0f)) return 0;
  return s >= 0x1p24f ? (1u << kUniformBits) - 1 : static_cast<uint32_t>(s);
}
// floor(U · W / 2^24) without overflow (W < 2^63).
TANDEM_HD uint64_t scaled(uint32_t U, uint64_t W) {
  return (W >> kUniformBits) * U + (((W & ((1u << kUniformBits) - 1)) * U) >> kUniformBits);
}

// --- Host reference (the CPU op and the Sampler) ---

// Scratch a caller keeps between rows.
struct Scratch {
  std::vector<uint64_t> w;
  std::vector<int32_t> order;
};
// s.w[V] = the kept masses of steps 1–4; returns their sum (> 0 for finite logits).
uint64_t kept_masses(std::span<const float> logits, const RowParams& p, Scratch& s);
// Step 5 on the masses kept_masses wrote: the output token (the draft itself when accepted).
// draft < 0: no draft. The draft must be in [0, V).
int32_t draw(std::span<const uint64_t> w, uint64_t total, int32_t draft, const float u[kUniforms]);
// Steps 1–5 for one row.
int32_t sample_row(std::span<const float> logits, const RowParams& p, const float u[kUniforms], int32_t draft,
                   Scratch& s);

}  // namespace tandem::sampling
