// Turns one row of target logits into the distribution a request samples from (penalties,
// temperature, top-k, top-p, min-p), and draws from it with the request's own RNG so seeded
// requests are reproducible whatever else is in the batch.
#pragma once
#include <cstdint>
#include <random>
#include <span>
#include <vector>

#include "engine/request.h"

namespace tandem {

class Sampler {
 public:
  Sampler(const SamplingParams& params, uint64_t seed) : params_(params), rng_(seed) {}

  const SamplingParams& params() const { return params_; }

  // Applies presence/frequency penalties (counted over `output_tokens`, as OpenAI defines them)
  // to a copy of logits [V] in `adjusted`.
  void penalize(std::span<const float> logits, std::span<const int32_t> output_tokens,
                std::vector<float>& adjusted) const;
  // Greedy choice: argmax of the penalized logits (ties: lowest id).
  int32_t argmax(std::span<const float> logits, std::span<const int32_t> output_tokens);
  // probs [V] = the sampling distribution (zeros outside top-k / top-p / min-p). Not for greedy.
  void distribution(std::span<const float> logits, std::span<const int32_t> output_tokens,
                    std::vector<float>& probs);
  // Draws a token from probs (need not be normalised).
  int32_t sample(std::span<const float> probs);
  double uniform() { return std::uniform_real_distribution<double>(0.0, 1.0)(rng_); }

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
  std::vector<float> scratch_;
  std::vector<int32_t> order_;
};

// log-softmax of logits [V] at `token`, and the top `n` (token, logprob) pairs.
float token_logprob(std::span<const float> logits, int32_t token);
std::vector<TokenLogprob> top_logprobs(std::span<const float> logits, int n);

}  // namespace tandem
