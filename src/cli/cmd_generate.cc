// tandem generate: one request through the engine (plain or speculative), ids or JSON out.
#include <chrono>
#include <optional>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "cli/common.h"
#include "engine/engine.h"
#include "engine/image_prompt.h"
#include "model/gemma4_vision.h"
#include "model/tensor_parallel_group.h"
#include "spec/speculative_config.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"

namespace tandem::cli {
namespace {

struct GenerateOptions {
  std::string model, ids, prompt, speculative_config, draft_position, load_format = "safetensors";
  std::vector<std::string> images;
  int max_soft_tokens = 0;
  std::string image_attention = "auto";
  int max_tokens = 32;
  bool json = false, trace_spec = false, ignore_eos = false;
  float temperature = 0.0f, top_p = 1.0f, min_p = 0.0f;
  int top_k = 0;
  int64_t seed = -1;
  BackendOptions backend;
  QuantizationOptions quantization;
};

void run_generate(const GenerateOptions& o) {
  auto backend = o.backend.make_backend();
  const std::string model_dir = o.model.empty() ? bundled_model_dir() : o.model;
  TensorParallelGroup group(*backend, load_model_config(model_dir), o.backend.tensor_parallel_size, o.backend.threads,
                           parse_load_format(o.load_format), o.quantization.parse());
  Gemma4Model& target = group.rank(0);
  apply_image_attention(o.image_attention, target);
  std::optional<Tokenizer> tokenizer;
  if (!o.prompt.empty()) tokenizer = Tokenizer::load(model_dir);
  std::unique_ptr<Proposer> proposer;
  EngineConfig config;
  if (!o.speculative_config.empty()) {
    SpeculativeConfig spec = parse_speculative_config(o.speculative_config);
    if (!o.draft_position.empty()) spec.draft_position = parse_draft_position(o.draft_position);
    spec.load_format = parse_load_format(o.load_format);
    proposer = make_proposer(spec, target);
    config.num_speculative_tokens = spec.num_speculative_tokens;
  }
  Request request;
  if (o.ids.empty() == o.prompt.empty()) fail("give exactly one of --ids and --prompt");
  request.prompt = tokenizer ? tokenizer->encode(o.prompt, /*add_special_tokens=*/true) : parse_ids(o.ids);
  // Images: each image_token_id of the prompt expands to <|image> + N placeholders + <image|>.
  std::unique_ptr<Gemma4Vision> vision;
  const ModelConfig& c = target.config();
  std::vector<std::shared_ptr<const vision::PatchImage>> images;
  if (!o.images.empty()) {
    const int budget = image_soft_token_budget(c, o.max_soft_tokens);
    for (const std::string& path : o.images) images.push_back(prepare_image(c, read_file_bytes(path), budget));
    vision = Gemma4Vision::load(c, *backend, parse_load_format(o.load_format));
  }
  if (c.takes_images()) {
    const std::vector<int32_t> ids = request.prompt;
    expand_image_placeholders(c, ids, images, request);
  }
  request.max_tokens = o.max_tokens;
  request.ignore_eos = o.ignore_eos;
  request.sampling.temperature = o.temperature;
  request.sampling.top_p = o.top_p;
  request.sampling.top_k = o.top_k;
  request.sampling.min_p = o.min_p;
  if (o.seed >= 0) request.sampling.seed = static_cast<uint64_t>(o.seed);
  config.max_num_seqs = 1;
  config.max_model_len = static_cast<int>(request.prompt.size()) + o.max_tokens + 1;
  config.max_num_batched_tokens = std::max(512, config.max_model_len);
  config.kv_dtype = parse_kv_cache_dtype(o.backend.kv_cache_dtype, *backend);
  // One sequence: every position on full layers, the window (and a step) on sliding layers.
  const KvSizing sizing = kv_sizing(target.rank_config(), config.block_size, config.kv_dtype);
  config.kv_cache_bytes = sizing.bytes(sizing.blocks_for(
      1, config.max_model_len + config.num_speculative_tokens + 1,
      sizing.sliding_working_set(1, config.max_num_batched_tokens, config.num_speculative_tokens)));
  Engine engine(target, std::move(proposer), config);
  engine.set_vision(vision.get());
  int round = 0;
  if (o.trace_spec)
    engine.spec_trace = [&](uint64_t, const std::vector<int32_t>& drafted, int accepted) {
      std::printf("%s\n", nlohmann::json{{"round", round++}, {"drafted", drafted}, {"accepted", accepted}}.dump().c_str());
    };
  std::vector<int32_t> ids;
  std::string error;
  using Clock = std::chrono::steady_clock;
  const Clock::time_point t0 = Clock::now();
  Clock::time_point t_first, t_last;  // when the first tokens (the prefill's) and the last ones arrived
  size_t first_tokens = 0;
  engine.submit(request, [&](const RequestOutput& out) {
    if (!out.tokens.empty()) {
      t_last = Clock::now();
      if (ids.empty()) t_first = t_last, first_tokens = out.tokens.size();
    }
    ids.insert(ids.end(), out.tokens.begin(), out.tokens.end());
    if (out.finish_reason == FinishReason::error) error = out.error;
  });
  engine.run_until_idle();
  const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  if (!error.empty()) fail("generation failed: {}", error);
  if (!o.json) {
    if (tokenizer) {
      std::printf("%s%s\n", o.prompt.c_str(), tokenizer->decode(ids, /*skip_special_tokens=*/true).c_str());
    } else {
      for (size_t i = 0; i < ids.size(); ++i) std::printf("%s%d", i ? "," : "", ids[i]);
      std::printf("\n");
    }
    return;
  }
  nlohmann::json j;
  j["ids"] = ids;
  if (tokenizer) j["text"] = tokenizer->decode(ids, /*skip_special_tokens=*/true);
  j["tokens_per_second"] = seconds > 0 ? ids.size() / seconds : 0.0;
  if (!ids.empty()) {
    // Prefill (submit to the first token) and decode (the tokens after it, over the time after it).
    j["prefill_seconds"] = std::chrono::duration<double>(t_first - t0).count();
    j["decode_tokens"] = ids.size() - first_tokens;
    j["decode_seconds"] = std::chrono::duration<double>(t_last - t_first).count();
  }
  if (!request.images.empty()) {
    const EngineStats s = engine.stats();
    j["images"] = {{"encoded", s.mm_images_encoded}, {"encode_seconds", s.mm_encode_seconds},
                   {"prompt_tokens", request.prompt.size()}};
  }
  if (engine.proposer()) {
    const SpecStats s = engine.stats().spec;
    j["spec"] = {{"method", engine.proposer()->method()},
                 {"num_drafts", s.num_drafts},
                 {"num_draft_tokens", s.num_draft_tokens},
                 {"num_accepted_tokens", s.num_accepted_tokens},
                 {"accepted_per_position", s.accepted_per_position},
                 {"draft_seconds", s.draft_seconds},
                 {"verify_seconds", s.verify_seconds}};
  }
  std::printf("%s\n", j.dump().c_str());
}

const RegisterCommand generate_command("generate", "Generate from a prompt (greedy unless --temperature)", [](CLI::App& app) {
  auto o = std::make_shared<GenerateOptions>();
  app.add_option("--model", o->model, "Target checkpoint directory (default: the bundled model)");
  app.add_option("--ids", o->ids, "Prompt token ids, comma-separated");
  app.add_option("--prompt", o->prompt, "Prompt text (tokenized with the model's tokenizer.json, <bos> added)");
  app.add_option("--image", o->images,
                 "Image file (JPEG, PNG, GIF, WebP) for the next image_token_id of the prompt; repeatable, in order");
  app.add_option("--max-soft-tokens", o->max_soft_tokens,
                 "Soft tokens per image: 70, 140, 280, 560 or 1120 (default: the model's, 280)");
  app.add_option("--image-attention", o->image_attention, kImageAttentionHelp);
  app.add_option("--max-tokens", o->max_tokens, "Tokens to generate")->check(CLI::Range(1, 1 << 20));
  app.add_option("--speculative-config", o->speculative_config, "vLLM-style JSON, e.g. {\"model\": DIR, \"num_speculative_tokens\": 3}");
  app.add_option("--draft-position", o->draft_position,
                 "MTP drafter query position: vllm (p-1, last W keys; default) or hf (p, last W+1 keys, as transformers)");
  app.add_option("--load-format", o->load_format, "safetensors, or dummy (random weights for the config; benchmarks)");
  o->quantization.add_to(app);
  app.add_flag("--json", o->json,
               "Print {\"ids\": [...], \"tokens_per_second\": x, \"prefill_seconds\": x, \"decode_tokens\": n, "
               "\"decode_seconds\": x, \"spec\": {...}}");
  app.add_flag("--trace-spec", o->trace_spec, "Print one JSON line per speculative round");
  app.add_flag("--ignore-eos", o->ignore_eos, "Do not stop at end-of-sequence tokens");
  app.add_option("--temperature", o->temperature, "0 = greedy")->check(CLI::Range(0.0, 100.0));
  app.add_option("--top-p", o->top_p)->check(CLI::Range(0.0, 1.0));
  app.add_option("--top-k", o->top_k)->check(CLI::NonNegativeNumber);
  app.add_option("--min-p", o->min_p)->check(CLI::Range(0.0, 1.0));
  app.add_option("--seed", o->seed, "Sampling seed");
  o->backend.add_to(app, BackendOptions::kSteps);
  app.callback([o] { run_generate(*o); });
});

}  // namespace
}  // namespace tandem::cli
