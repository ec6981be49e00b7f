// What a caller asks of the engine and what it gets back, token by token.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "grammar/matcher.h"
#include "vision/image_preprocess.h"

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
  // vLLM's extra sampling parameters.
  float repetition_penalty = 1.0f;  // logits of tokens in prompt + output: / penalty if > 0, else × penalty
  std::vector<std::pair<int32_t, float>> logit_bias;  // (token, bias) added to the logits
  std::vector<int32_t> allowed_token_ids;             // non-empty: every other token is masked
  int min_tokens = 0;                // EOS / stop token ids are masked until this many tokens are generated
  std::vector<int32_t> min_tokens_stop_ids;  // set by Engine::submit: the ids masked below min_tokens
  // Structured outputs (vLLM's SamplingParams.structured_outputs): every output token must keep
  // the output a prefix of a match of this grammar, and a stop token is allowed only where it
  // matches whole. Compiled over the model's vocabulary (Engine::submit checks its width).
  std::optional<grammar::CompiledGrammar> grammar;
  // -1: the grammar applies from the first output token. Otherwise it applies to the tokens after
  // the first output token equal to this id (the end of the reasoning, for a request whose output
  // starts with reasoning: vLLM constrains only what follows it).
  int32_t grammar_after_token = -1;

  bool greedy() const { return temperature <= 0.0f; }
};

// An image of a prompt: its placeholders are prompt[offset, offset + soft tokens), all the model's
// image_token_id (the prompt already holds <|image> before and <image|> after them).
struct ImageInput {
  int32_t offset = 0;
  std::shared_ptr<const vision::PatchImage> image;
  int32_t end() const { return offset + image->soft_tokens(); }
};

struct Request {
  std::vector<int32_t> prompt;
  std::vector<ImageInput> images;  // in prompt order, not overlapping
  SamplingParams sampling;
  int max_tokens = 16;
  std::vector<int32_t> stop_token_ids;  // besides the model's EOS ids
  bool ignore_eos = false;
  int num_speculative_tokens = -1;  // -1: the engine's configured k; 0: no speculation; else ≤ k
  int prompt_logprobs = -1;  // -1: none; else logprob of each prompt token (from the second) + this many top
};

enum class FinishReason { none, stop, length, abort, error };
const char* finish_reason_name(FinishReason r);

struct TokenLogprob {
  int32_t token;
  float logprob;
};

// The logprob of one prompt token given the tokens before it, its rank (1 = most likely) and the
// most likely alternatives at that position.
struct PromptLogprob {
  int32_t token;
  float logprob;
  int32_t rank;
  std::vector<TokenLogprob> top;
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
  // The speculative round behind `tokens` (what Engine::spec_trace reports): how many drafts the
  // target verified and how many it accepted. The first `num_accepted_draft_tokens` of `tokens`
  // are accepted drafts; a token after them is the target's own (a correction when a draft was
  // rejected, the bonus when all were accepted). Both 0 for a step without drafts.
  int num_draft_tokens = 0;
  int num_accepted_draft_tokens = 0;
  int prompt_tokens = 0;
  int completion_tokens = 0;  // total so far
  int cached_prompt_tokens = 0;
  // With the first output of a request with prompt_logprobs >= 0: prompt tokens 1..P-1.
  std::vector<PromptLogprob> prompt_logprobs;
  // Seconds from submit to first scheduling, and when that was (steady_clock seconds); 0 when
  // the request was never scheduled (e.g. aborted while waiting).
  double queue_seconds = 0;
  double scheduled_time = 0;
};

// Called on the engine thread; must not block for long and must not call back into the engine
// except abort().
using OutputCallback = std::function<void(const RequestOutput&)>;

}  // namespace tandem
