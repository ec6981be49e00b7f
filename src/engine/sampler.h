// Turns one row of target logits into the distribution a request samples from (penalties, then
// temperature, top-k, top-p, min-p as backend/sampling.h defines them, the same code the backends'
// sample_rows op runs), and draws from it with the request's own RNG so seeded requests are
// reproducible whatever else is in the batch.
#pragma once
#include <array>
#include <cstdint>
#include <random>
#include <span>
#include <utility>
#include <vector>

#include "backend/sampling.h"
#include "engine/request.h"

namespace tandem {

class Sampler {
 public:
  // `prompt`: the request's prompt tokens (only kept when repetition_penalty is not 1).
  Sampler(const SamplingParams& params, uint64_t seed, std::span<const int32_t> prompt = {});

  const SamplingParams& params() const { return params_; }

  // Applies, to a copy of logits [V] in `adjusted` and in vLLM's order: the grammar's token mask
  // (`grammar_mask`, a bitmask from GrammarMatcher::fill_next_token_bitmask; null: none), the
  // allowed_token_ids mask, logit_bias, the min_tokens mask of stop ids, repetition_penalty (prompt
  // + output tokens), then presence / frequency penalties (counted over `output_tokens`, as OpenAI
  // defines them).
  void penalize(std::span<const float> logits, std::span<const int32_t> output_tokens,
                std::vector<float>& adjusted, const uint32_t* grammar_mask = nullptr) const;
  // True when penalize() returns the logits unchanged for every output of at least `n_output`
  // tokens: no grammar, allowed_token_ids, logit_bias, repetition / presence / frequency penalty,
  // and no min_tokens mask left to apply. A greedy choice is then the raw argmax (a backend can
  // take it).
  bool leaves_logits(int64_t n_output) const {
    const SamplingParams& p = params_;
    return !p.grammar && p.allowed_token_ids.empty() && p.logit_bias.empty() && p.repetition_penalty == 1.0f &&
           p.presence_penalty == 0.0f && p.frequency_penalty == 0.0f &&
           (n_output >= p.min_tokens || p.min_tokens_stop_ids.empty());
  }
  // Greedy choice: argmax of the penalized logits (ties: lowest id).
  int32_t argmax(std::span<const float> logits, std::span<const int32_t> output_tokens,
                 const uint32_t* grammar_mask = nullptr);
  // probs [V] = the sampling distribution after penalize(): the normalised masses that
  // backend/sampling.h keeps (zeros outside top-k / top-p / min-p). Not for greedy.
  void distribution(std::span<const float> logits, std::span<const int32_t> output_tokens,
                    std::vector<float>& probs, const uint32_t* grammar_mask = nullptr);
  // The two uniforms of one output row, from this request's RNG. Every output row of a request
  // takes exactly two (sampling::kUniforms), whether it samples on the host or the backend, has a
  // draft or not, and whether or not an earlier row of its round was rejected: the RNG's position
  // then depends only on the request's own rows, so a seeded request gives the same tokens
  // whatever else is in the batch and whichever path runs it.
  std::array<float, sampling::kUniforms> uniforms();
  // The RNG's position, and a return to it. A round whose device drafts are cut at a stop id on the
  // host after every draft row drew its uniforms returns there and draws again for the rows it
  // keeps, so the RNG advances as if the cut drafts had never been drafted.
  const std::mt19937_64& rng_position() const { return rng_; }
  void set_rng_position(const std::mt19937_64& position) { rng_ = position; }
  // The token of one output row, on the host: penalize(), then backend/sampling.h with `u` (the
  // row's uniforms()). With a draft (>= 0), the draft itself when accepted (speculative rejection
  // sampling against a greedy, i.e. one-hot, draft: the result is distributed exactly as the
  // target), else a token drawn with the draft's mass removed. Not for greedy.
  int32_t sample(std::span<const float> logits, std::span<const int32_t> output_tokens, int32_t draft,
                 const std::array<float, sampling::kUniforms>& u, const uint32_t* grammar_mask = nullptr);
  // The parameters of the backend's sample_rows op (temperature <= 0: greedy).
  sampling::RowParams row_params() const {
    return {params_.temperature, static_cast<float>(params_.top_k), params_.top_p, params_.min_p};
  }

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
  std::vector<float> scratch_;
  sampling::Scratch sampling_;
  std::vector<int32_t> prompt_ids_;  // distinct prompt tokens, for repetition_penalty
};

// The 1-based rank of `token` in logits [V] (1 + the number of strictly larger logits).
int32_t token_rank(std::span<const float> logits, int32_t token);

// log-softmax of logits [V] at `token`, and the top `n` (token, logprob) pairs.
float token_logprob(std::span<const float> logits, int32_t token);
std::vector<TokenLogprob> top_logprobs(std::span<const float> logits, int n);

}  // namespace tandem
