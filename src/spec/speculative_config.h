// --speculative-config, as vLLM accepts it: {"method": "draft_model"|"mtp"|"ngram", "model": DIR,
// "num_speculative_tokens": k, "prompt_lookup_min": n, "prompt_lookup_max": n, "quantization":
// "int4"|"int8"|"fp8"|null}, plus tandem's "draft_position": "vllm" (default, query at p-1) | "hf"
// (transformers' p) and "quantize_lm_head": true (the drafter's head, as --quantize-lm-head for the
// target). As in vLLM the drafter does not follow the target's --quantization.
#pragma once
#include <memory>
#include <string>

#include "engine/proposer.h"
#include "model/gemma4.h"
#include "model/gemma4_assistant.h"

namespace tandem {

struct SpeculativeConfig {
  std::string method;  // "mtp", "draft_model" or "ngram"
  std::string model;   // drafter directory (mtp / draft_model)
  int num_speculative_tokens = 0;
  int prompt_lookup_min = 1;
  int prompt_lookup_max = 0;
  DraftPosition draft_position = DraftPosition::vllm;
  OnlineQuant quantization;  // of a bf16 drafter at load (none: as stored)
  LoadFormat load_format = LoadFormat::safetensors;  // set by the caller (dummy for benchmarks), not JSON
};

// Largest k tandem accepts (drafting more than this is never useful and bounds verify blocks).
constexpr int kMaxSpeculativeTokens = 16;

// Throws tandem::Error naming the key for malformed JSON, unknown keys, bad values, or a
// missing drafter directory.
SpeculativeConfig parse_speculative_config(const std::string& json_text);

// Loads the drafter (if any) and builds the proposer. A draft_model whose checkpoint is a
// gemma4_assistant is upgraded to mtp (logged); the config's method is updated accordingly.
std::unique_ptr<Proposer> make_proposer(SpeculativeConfig& config, Gemma4Model& target);

}  // namespace tandem
