#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <unordered_map>

namespace tandem {

Sampler::Sampler(const SamplingParams& params, uint64_t seed, std::span<const int32_t> prompt)
    : params_(params), rng_(seed) {
  if (params_.repetition_penalty != 1.0f) {
    prompt_ids_.assign(prompt.begin(), prompt.end());
    std::sort(prompt_ids_.begin(), prompt_ids_.end());
    prompt_ids_.erase(std::unique(prompt_ids_.begin(), prompt_ids_.end()), prompt_ids_.end());
  }
}

void Sampler::penalize(std::span<const float> logits, std::span<const int32_t> output_tokens,
                       std::vector<float>& adjusted, const uint32_t* grammar_mask) const {
  adjusted.assign(logits.begin(), logits.end());
  const int64_t V = static_cast<int64_t>(adjusted.size());
  if (grammar_mask) grammar::apply_token_bitmask(adjusted, grammar_mask, params_.grammar->vocabulary().size());
  if (!params_.allowed_token_ids.empty()) {
    std::vector<float> kept(params_.allowed_token_ids.size());
    for (size_t i = 0; i < kept.size(); ++i) {
      const int32_t t = params_.allowed_token_ids[i];
      kept[i] = t >= 0 && t < V ? adjusted[t] : 0.0f;
    }
    std::fill(adjusted.begin(), adjusted.end(), -std::numeric_limits<float>::infinity());
    for (size_t i = 0; i < kept.size(); ++i) {
      const int32_t t = params_.allowed_token_ids[i];
      if (t >= 0 && t < V) adjusted[t] = kept[i];
    }
  }
  for (const auto& [t, bias] : params_.logit_bias)
    if (t >= 0 && t < V) adjusted[t] += bias;
  if (static_cast<int64_t>(output_tokens.size()) < params_.min_tokens)
    for (int32_t t : params_.min_tokens_stop_ids)
      if (t >= 0 && t < V) adjusted[t] = -std::numeric_limits<float>::infinity();
  if (params_.repetition_penalty != 1.0f) {
    const float r = params_.repetition_penalty;
    auto apply = [&](int32_t t) {
      float& l = adjusted[t];
      l = l > 0.0f ? l / r : l * r;
    };
    for (int32_t t : prompt_ids_) apply(t);
    std::vector<int32_t> out(output_tokens.begin(), output_tokens.end());
    std::sort(out.begin(), out.end());
    out.erase(std::unique(out.begin(), out.end()), out.end());
    for (int32_t t : out)
      if (!std::binary_search(prompt_ids_.begin(), prompt_ids_.end(), t)) apply(t);
  }
  if (params_.presence_penalty == 0.0f && params_.frequency_penalty == 0.0f) return;
  std::unordered_map<int32_t, int> counts;
  for (int32_t t : output_tokens) ++counts[t];
  for (auto [t, n] : counts)
    adjusted[t] -= params_.presence_penalty + params_.frequency_penalty * static_cast<float>(n);
}

int32_t Sampler::argmax(std::span<const float> logits, std::span<const int32_t> output_tokens,
                        const uint32_t* grammar_mask) {
  penalize(logits, output_tokens, scratch_, grammar_mask);
  return static_cast<int32_t>(std::max_element(scratch_.begin(), scratch_.end()) - scratch_.begin());
}

void Sampler::distribution(std::span<const float> logits, std::span<const int32_t> output_tokens,
                           std::vector<float>& probs, const uint32_t* grammar_mask) {
  penalize(logits, output_tokens, scratch_, grammar_mask);
  const double total = static_cast<double>(sampling::kept_masses(scratch_, row_params(), sampling_));
  probs.resize(scratch_.size());
  for (size_t i = 0; i < probs.size(); ++i) probs[i] = static_cast<float>(static_cast<double>(sampling_.w[i]) / total);
}

std::array<float, sampling::kUniforms> Sampler::uniforms() {
  std::array<float, sampling::kUniforms> u;
  static_assert(sampling::kUniformBits == 24);
  for (float& x : u) x = static_cast<float>(rng_() >> (64 - sampling::kUniformBits)) * 0x1p-24f;
  return u;
}

int32_t Sampler::sample(std::span<const float> logits, std::span<const int32_t> output_tokens, int32_t draft,
                        const std::array<float, sampling::kUniforms>& u, const uint32_t* grammar_mask) {
  penalize(logits, output_tokens, scratch_, grammar_mask);
  return sampling::sample_row(scratch_, row_params(), u.data(), draft, sampling_);
}

namespace {
double log_sum_exp(std::span<const float> logits) {
  const float maxv = *std::max_element(logits.begin(), logits.end());
  double sum = 0;
  for (float l : logits) sum += std::exp(static_cast<double>(l - maxv));
  return maxv + std::log(sum);
}
}  // namespace

float token_logprob(std::span<const float> logits, int32_t token) {
  return static_cast<float>(logits[token] - log_sum_exp(logits));
}

int32_t token_rank(std::span<const float> logits, int32_t token) {
  const float v = logits[token];
  int32_t larger = 0;
  for (float l : logits) larger += l > v;
  return larger + 1;
}

std::vector<TokenLogprob> top_logprobs(std::span<const float> logits, int n) {
  const double lse = log_sum_exp(logits);
  std::vector<int32_t> ids(logits.size());
  std::iota(ids.begin(), ids.end(), 0);
  n = std::min<int>(n, static_cast<int>(ids.size()));
  std::partial_sort(ids.begin(), ids.begin() + n, ids.end(),
                    [&](int32_t a, int32_t b) { return logits[a] > logits[b] || (logits[a] == logits[b] && a < b); });
  std::vector<TokenLogprob> out;
  for (int i = 0; i < n; ++i) out.push_back({ids[i], static_cast<float>(logits[ids[i]] - lse)});
  return out;
}

const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::stop: return "stop";
    case FinishReason::length: return "length";
    case FinishReason::abort: return "abort";
    case FinishReason::error: return "error";
    case FinishReason::none: break;
  }
  return "none";
}

}  // namespace tandem
