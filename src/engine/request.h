// What a caller asks of the engine and what it gets back, token by token.
#pragma once
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace tandem {

struct SamplingParams {
  float temperature = 1.0f;  // 0: greedy
  float top_p = 1.0f;
  int top_k = 0;             // 0: off
  float min_p = 0.0f;
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  std::optional<uint64_t> seed;  // absent: a fresh random seed per request
  int top_logprobs = -1;         // -1: no logprobs; 0..20: logprob of the chosen token + this many alternatives

  bool greedy() const { return temperature <= 0.0f; }
};

struct Request {
  std::vector<int32_t> prompt;
  SamplingParams sampling;
  int max_tokens = 16;
  std::vector<int32_t> stop_token_ids;  // besides the model's EOS ids
  bool ignore_eos = false;
  int num_speculative_tokens = -1;  // -1: the engine's configured k; 0: no speculation; else ≤ k
};

enum class FinishReason { none, stop, length, abort, error };
const char* finish_reason_name(FinishReason r);

struct TokenLogprob {
  int32_t token;
  float logprob;
};

// Emitted after every engine step that produced tokens for a request (speculative rounds may emit
// several at once) and once more, possibly with no tokens, when it finishes.
struct RequestOutput {
  uint64_t id = 0;
  std::vector<int32_t> tokens;                         // new tokens of this step
  std::vector<float> logprobs;                         // per new token, if requested
  std::vector<std::vector<TokenLogprob>> top_logprobs;  // per new token, if requested
  bool finished = false;
  FinishReason finish_reason = FinishReason::none;
  std::string error;  // when finish_reason == error
  int prompt_tokens = 0;
  int completion_tokens = 0;  // total so far
  int cached_prompt_tokens = 0;
};

// Called on the engine thread; must not block for long and must not call back into the engine
// except abort().
using OutputCallback = std::function<void(const RequestOutput&)>;

}  // namespace tandem
