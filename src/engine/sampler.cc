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
  penalize(logits, output_tokens, probs, grammar_mask);
  const int V = static_cast<int>(probs.size());
  const float inv_t = 1.0f / std::max(params_.temperature, 1e-6f);
  const float maxv = *std::max_element(probs.begin(), probs.end());
  double sum = 0;
  for (float& p : probs) {
    p = std::exp((p - maxv) * inv_t);
    sum += p;
  }
  for (float& p : probs) p = static_cast<float>(p / sum);
  const bool top_k = params_.top_k > 0 && params_.top_k < V;
  const bool top_p = params_.top_p < 1.0f;
  if (top_k || top_p) {
    order_.resize(V);
    std::iota(order_.begin(), order_.end(), 0);
    const int keep_k = top_k ? params_.top_k : V;
    std::partial_sort(order_.begin(), order_.begin() + keep_k, order_.end(), [&](int32_t a, int32_t b) {
      return probs[a] > probs[b] || (probs[a] == probs[b] && a < b);
    });
    int keep = keep_k;
    if (top_p) {  // smallest prefix whose mass reaches top_p (always at least one token)
      double mass = 0;
      for (int i = 0; i < keep_k; ++i) {
        mass += probs[order_[i]];
        if (mass >= params_.top_p) {
          keep = i + 1;
          break;
        }
      }
    }
    for (int i = keep; i < V; ++i) probs[order_[i]] = 0.0f;
  }
  if (params_.min_p > 0.0f) {
    const float pmax = *std::max_element(probs.begin(), probs.end());
    for (float& p : probs)
      if (p < params_.min_p * pmax) p = 0.0f;
  }
  const double total = std::accumulate(probs.begin(), probs.end(), 0.0);
  for (float& p : probs) p = static_cast<float>(p / total);
}

int32_t Sampler::sample(std::span<const float> probs) {
  const double total = std::accumulate(probs.begin(), probs.end(), 0.0);
  double u = uniform() * total;
  int32_t last_nonzero = 0;
  for (size_t i = 0; i < probs.size(); ++i) {
    if (probs[i] <= 0) continue;
    last_nonzero = static_cast<int32_t>(i);
    u -= probs[i];
    if (u < 0) return last_nonzero;
  }
  return last_nonzero;  // rounding left a sliver of mass
}

std::pair<int32_t, bool> Sampler::verify_draft(std::vector<float>& probs, int32_t draft) {
  if (uniform() < probs[draft]) return {draft, true};
  probs[draft] = 0.0f;
  return {sample(probs), false};
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
