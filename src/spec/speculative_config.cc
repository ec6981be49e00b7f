#include "spec/speculative_config.h"

#include <filesystem>
#include <nlohmann/json.hpp>

#include "model/tensor_parallel_group.h"
#include "spec/draft_model_proposer.h"
#include "spec/mtp_proposer.h"
#include "spec/ngram_proposer.h"
#include "util/error.h"
#include "util/json_parse.h"
#include "util/log.h"

namespace tandem {
using nlohmann::json;

SpeculativeConfig parse_speculative_config(const std::string& text) {
  json j;
  try {
    j = parse_json(text);
  } catch (const json::exception& e) {
    fail("--speculative-config is not valid JSON: {}", e.what());
  }
  if (!j.is_object()) fail("--speculative-config must be a JSON object");
  SpeculativeConfig c;
  static const char* known[] = {"method",          "model",          "num_speculative_tokens",
                                "prompt_lookup_min", "prompt_lookup_max", "draft_tensor_parallel_size",
                                "draft_position",  "quantization",   "quantize_lm_head"};
  for (auto& [key, value] : j.items()) {
    if (std::find_if(std::begin(known), std::end(known), [&](const char* k) { return key == k; }) == std::end(known))
      fail("--speculative-config: unknown key \"{}\" (accepted: method, model, num_speculative_tokens, "
           "prompt_lookup_min, prompt_lookup_max, draft_tensor_parallel_size, draft_position, quantization, "
           "quantize_lm_head)",
           key);
  }
  auto get_int = [&](const char* key, int fallback) {
    if (!j.contains(key)) return fallback;
    if (!j[key].is_number_integer()) fail("--speculative-config: \"{}\" must be an integer, got {}", key, j[key].dump());
    return j[key].get<int>();
  };
  auto get_string = [&](const char* key) -> std::string {
    if (!j.contains(key)) return "";
    if (!j[key].is_string()) fail("--speculative-config: \"{}\" must be a string, got {}", key, j[key].dump());
    return j[key].get<std::string>();
  };
  c.model = get_string("model");
  c.method = get_string("method");
  if (c.method.empty()) c.method = c.model.empty() ? "" : "draft_model";  // vLLM: a model alone means draft_model
  if (c.method != "mtp" && c.method != "draft_model" && c.method != "ngram")
    fail("--speculative-config: method \"{}\" is not supported (draft_model, mtp, ngram)", c.method);
  if (!j.contains("num_speculative_tokens")) fail("--speculative-config: \"num_speculative_tokens\" is required");
  c.num_speculative_tokens = get_int("num_speculative_tokens", 0);
  if (c.num_speculative_tokens < 1 || c.num_speculative_tokens > kMaxSpeculativeTokens)
    fail("--speculative-config: num_speculative_tokens must be between 1 and {}, got {}", kMaxSpeculativeTokens,
         c.num_speculative_tokens);
  if (get_int("draft_tensor_parallel_size", 1) != 1)
    fail("--speculative-config: draft_tensor_parallel_size must be 1 (tandem runs the drafter beside the target)");
  const std::string pos = get_string("draft_position");
  if (pos == "hf") c.draft_position = DraftPosition::hf;
  else if (!pos.empty() && pos != "vllm")
    fail("--speculative-config: draft_position must be \"vllm\" or \"hf\", got \"{}\"", pos);
  // vLLM's "quantization" (null: as stored); tandem quantizes a bf16 drafter at load with it.
  const std::string quant = j.contains("quantization") && j["quantization"].is_null() ? "" : get_string("quantization");
  if (j.contains("quantize_lm_head") && !j["quantize_lm_head"].is_boolean())
    fail("--speculative-config: \"quantize_lm_head\" must be true or false, got {}", j["quantize_lm_head"].dump());
  c.quantization = parse_online_quant(quant, j.value("quantize_lm_head", false),
                                      "--speculative-config \"quantization\"");
  if (c.method == "ngram") {
    if (c.quantization.any()) fail("--speculative-config: method ngram has no drafter to quantize");
    c.prompt_lookup_max = get_int("prompt_lookup_max", 0);
    c.prompt_lookup_min = get_int("prompt_lookup_min", c.prompt_lookup_max);
    if (c.prompt_lookup_max < 1) fail("--speculative-config: ngram needs prompt_lookup_max >= 1");
    if (c.prompt_lookup_min < 1 || c.prompt_lookup_min > c.prompt_lookup_max)
      fail("--speculative-config: ngram needs 1 <= prompt_lookup_min <= prompt_lookup_max, got min {} and max {}",
           c.prompt_lookup_min, c.prompt_lookup_max);
    if (!c.model.empty()) fail("--speculative-config: method ngram takes no \"model\"");
  } else {
    if (c.model.empty()) fail("--speculative-config: method {} needs \"model\" (the drafter directory)", c.method);
    if (!std::filesystem::is_directory(c.model))
      fail("--speculative-config: drafter directory {} does not exist", c.model);
  }
  return c;
}

std::unique_ptr<Proposer> make_proposer(SpeculativeConfig& config, Gemma4Model& target) {
  if (config.method == "ngram")
    return std::make_unique<NgramProposer>(config.prompt_lookup_min, config.prompt_lookup_max);
  const ModelConfig drafter = load_model_config(config.model);
  if (drafter.is_assistant()) {
    if (config.method == "draft_model")
      log::info("speculative method draft_model upgraded to mtp: {} is a gemma4_assistant drafter", config.model);
    config.method = "mtp";
    auto assistant = Gemma4Assistant::load(config.model, target, config.load_format, config.quantization);
    assistant->position_convention = config.draft_position;
    return std::make_unique<MtpProposer>(std::move(assistant), target.config().eos_ids);
  }
  if (config.method == "mtp")
    fail("--speculative-config: method mtp needs a gemma4_assistant drafter, but {} is {}", config.model,
         drafter.model_type);
  if (drafter.vocab_size != target.config().vocab_size)
    fail("drafter {} does not fit target {}: vocab_size is {} in the drafter but {} in the target", config.model,
         target.config().dir, drafter.vocab_size, target.config().vocab_size);
  if (target.group())
    fail("--speculative-config: method draft_model does not run with --tensor-parallel-size {} yet (mtp, whose "
         "drafter is sharded with the target, and ngram do)",
         target.group()->size());
  return std::make_unique<DraftModelProposer>(
      Gemma4Model::load(drafter, target.backend(), config.load_format, config.quantization));
}

}  // namespace tandem
