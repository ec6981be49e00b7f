// tandem plan: what fits in memory and why — weights (mmapped, in their stored dtype), the KV cache
// per token and per sequence, and how many full-length sequences a memory budget holds.
#include <algorithm>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "cli/common.h"
#include <filesystem>

#include "io/safetensors.h"
#include "engine/image_prompt.h"
#include "model/gemma4.h"
#include "model/gemma4_vision.h"
#include "model/gemma4_assistant.h"
#include "model/config.h"
#include "model/kv_cache.h"
#include "model/byte_model.h"
#include "spec/speculative_config.h"

namespace tandem::cli {
namespace {

struct PlanOptions {
  std::string model, speculative_config, memory, device = "cpu";
  int max_model_len = 8192, max_num_seqs = 64;
  int max_num_batched_tokens = 2048, max_soft_tokens = 0;
  int context = 512;                // cached tokens per sequence for the byte model's steps
  double bandwidth_gbps = 0;        // for the roofline's times (0: bytes and ratios only)
  std::vector<double> acceptance;   // draft acceptance rates at k = 1, 2, ... (or one for every k)
  bool json = false;
  QuantizationOptions quantization;
};

bool has_safetensors(const std::string& dir) {
  for (const auto& e : std::filesystem::directory_iterator(dir))
    if (e.path().extension() == ".safetensors") return true;
  return false;
}

// The checkpoint's tensor bytes; with a config.json alone (nothing downloaded yet) or online
// quantization, what its tensors take as loaded (bf16; quantized linears in the form the loader keeps
// them): `loaded_bytes`, the weight_bytes() of its model loaded without data (LoadFormat::meta) with
// `online`, from the same shapes the loader binds.
int64_t checkpoint_bytes(const std::string& dir, const OnlineQuant& online, int64_t loaded_bytes) {
  if (!has_safetensors(dir) || online.any()) return loaded_bytes;
  const WeightStore store = WeightStore::open(dir);
  int64_t bytes = 0;
  for (const auto& [name, t] : store.tensors()) bytes += static_cast<int64_t>(t.nbytes);
  return bytes;
}

std::string mib(int64_t bytes) { return fmt::format("{:.1f} MiB", bytes / 1048576.0); }

// The largest n in [0, hi] with fits(n) (fits is monotone: true up to some n, false after).
template <typename F>
int64_t largest(int64_t hi, F fits) {
  int64_t lo = 0;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo + 1) / 2;
    if (fits(mid)) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

// The byte model of a batch-1 step (model/byte_model.h) at --context cached tokens: what a decode step, a
// verify block of k + 1 rows and a draft step read (the experts as uniform routing spreads k + 1 rows),
// the roofline's times at --bandwidth, and the speedups --acceptance implies when every step takes its
// bytes' time. The weights are the loader's views without data (LoadFormat::meta), in the format the
// run would keep them: the target's `model` and the drafter's, `assistant` (method mtp) or `draft_model`
// (method draft_model); n-gram drafts have neither.
nlohmann::json byte_model(const PlanOptions& o, const Gemma4Model& model, const Gemma4Assistant* assistant,
                          const Gemma4Model* draft_model, const ModelConfig& target, const std::string& method, int k,
                          DType kv_dtype) {
  if (!o.acceptance.empty() && method == "none")
    fail("--acceptance needs --speculative-config (the drafter whose steps a round pays for)");
  if (static_cast<int>(o.acceptance.size()) > kMaxSpeculativeTokens)
    fail("--acceptance: at most {} rates (k = 1 to {})", kMaxSpeculativeTokens, kMaxSpeculativeTokens);
  // A step's bytes are linear in the experts a layer touches: those of no expert, plus per expert.
  auto weights_of = [](const Gemma4Model& m) {
    const std::vector<int> none(m.config().n_layers, 0), one(m.config().n_layers, 1);
    const double base = static_cast<double>(m.step_weight_bytes(none));
    return std::pair{base, static_cast<double>(m.step_weight_bytes(one)) - base};
  };
  const auto [base, per_expert] = weights_of(model);
  auto experts = [](const ModelConfig& c, int rows) {
    return c.moe ? expected_experts(c.num_experts, c.top_k_experts, rows) : 0.0;
  };
  auto target_step = [&](int rows) {
    return base + experts(target, rows) * per_expert +
           kv_read_bytes(target, 1, o.context + rows, rows - 1, kv_dtype);
  };
  const double decode = target_step(1);
  double draft = 0;  // n-gram drafts read nothing on the device
  if (assistant) {
    draft = static_cast<double>(assistant->step_weight_bytes()) +
            kv_read_bytes(assistant->config(), 1, o.context, 0, kv_dtype);
  } else if (draft_model) {
    const auto [d_base, d_per_expert] = weights_of(*draft_model);
    const ModelConfig& dc = draft_model->config();
    draft = d_base + experts(dc, 1) * d_per_expert + kv_read_bytes(dc, 1, o.context + 1, 0, kv_dtype);
  }
  nlohmann::json j = {{"context", o.context},
                      {"kv_dtype", kv_dtype == DType::BF16 ? "bf16" : "f32"},
                      {"decode_bytes", decode},
                      {"decode_experts_per_layer", experts(target, 1)},
                      {"num_experts", target.moe ? target.num_experts : 0},
                      {"draft_bytes", draft}};
  if (o.bandwidth_gbps > 0) {
    const double ms = decode / (o.bandwidth_gbps * 1e9) * 1e3;
    j["bandwidth_gbps"] = o.bandwidth_gbps;
    j["decode_ms"] = ms;
    j["decode_tokens_per_second"] = 1e3 / ms;
  }
  if (method == "none") return j;
  // Rows k = 1 .. n of --acceptance, or the speculative config's k at its one rate; without rates, the
  // config's k and the rate at which a round pays for itself.
  const int first = o.acceptance.empty() ? k : 1;
  const int last = o.acceptance.size() > 1 ? static_cast<int>(o.acceptance.size()) : k;
  nlohmann::json rounds = nlohmann::json::array();
  for (int kk = first; kk <= last; ++kk) {
    const double verify = target_step(kk + 1);
    nlohmann::json r = {{"k", kk},
                        {"verify_bytes", verify},
                        {"verify_experts_per_layer", experts(target, kk + 1)},
                        {"round_bytes", verify + kk * draft},
                        // A round pays at the roofline once 1 + k · a tokens outweigh its bytes in decode steps.
                        {"break_even_acceptance", ((verify + kk * draft) / decode - 1.0) / kk}};
    if (!o.acceptance.empty()) {
      const double a = o.acceptance.size() == 1 ? o.acceptance[0] : o.acceptance[kk - 1];
      const SpeculationEstimate e = estimate_speculation(kk, a, decode, verify, draft);
      r["acceptance"] = a;
      r["tokens_per_round"] = e.tokens_per_round;
      r["speedup"] = e.speedup;
    }
    rounds.push_back(r);
  }
  j["speculation"] = rounds;
  return j;
}

void print_byte_model(const nlohmann::json& j, const std::string& method) {
  const int E = j["num_experts"];
  auto experts = [&](double e) { return E > 0 ? fmt::format(", {:.1f} of {} experts a layer", e, E) : std::string(); };
  const std::string draft = method == "none"    ? ""
                            : method == "ngram" ? "; n-gram drafts read nothing on the device"
                                                : fmt::format("; a draft step {:.2f} GB", j["draft_bytes"].get<double>() / 1e9);
  std::printf("  byte model     batch 1 at --context %d (%s KV): a decode step reads %.2f GB%s%s\n", j["context"].get<int>(),
              j["kv_dtype"].get<std::string>().c_str(), j["decode_bytes"].get<double>() / 1e9,
              experts(j["decode_experts_per_layer"]).c_str(), draft.c_str());
  if (j.contains("bandwidth_gbps"))
    std::printf("  roofline       decode %.3f ms, %.0f tok/s at --bandwidth %.0f GB/s\n", j["decode_ms"].get<double>(),
                j["decode_tokens_per_second"].get<double>(), j["bandwidth_gbps"].get<double>());
  if (!j.contains("speculation")) return;
  const char* label = "  speculation    ";
  for (const auto& r : j["speculation"]) {
    const double round_steps = r["round_bytes"].get<double>() / j["decode_bytes"].get<double>();
    std::string line = fmt::format("k = {}: the verify block reads {:.2f} GB{}, a round {:.2f} decode steps' bytes",
                                   r["k"].get<int>(), r["verify_bytes"].get<double>() / 1e9,
                                   experts(r["verify_experts_per_layer"]), round_steps);
    if (r.contains("speedup"))
      line += fmt::format("; at acceptance {:.1f} %, {:.2f} tokens a round: {:.2f}x at the roofline",
                          100 * r["acceptance"].get<double>(), r["tokens_per_round"].get<double>(),
                          r["speedup"].get<double>());
    else
      line += fmt::format("; it pays above acceptance {:.1f} %", 100 * r["break_even_acceptance"].get<double>());
    std::printf("%s%s\n", label, line.c_str());
    label = "                 ";
  }
}

void run_plan(const PlanOptions& o) {
  const std::string dir = o.model.empty() ? bundled_model_dir() : o.model;
  const ModelConfig target = load_model_config(dir);
  if (target.is_assistant()) fail("{} is a drafter; plan its target and pass the drafter in --speculative-config", dir);
  const OnlineQuant online = o.quantization.parse();
  const bool stored_here = has_safetensors(dir);
  const bool counted = !stored_here || online.any();  // weights from config.json's shapes
  // Each model is loaded once, without data, in the format the run would keep it (the target here, the
  // drafter below): the weights' bytes and the byte model both read it.
  auto backend = make_cpu_backend(1);
  const auto target_model = Gemma4Model::load(dir, *backend, LoadFormat::meta, online);
  int64_t weights = checkpoint_bytes(dir, online, target_model->weight_bytes());
  // Images: the tower's weights (in the checkpoint's bytes already when its safetensors are here),
  // what encoding one image takes, and whether one image's soft tokens fit a step.
  nlohmann::json vision_json;
  int64_t vision_activations = 0;
  if (target.takes_images()) {
    const auto tower = Gemma4Vision::load(target, *backend, LoadFormat::meta);
    const VisionConfig& v = *target.vision;
    const int soft = image_soft_token_budget(target, o.max_soft_tokens);
    const int64_t patches = int64_t{soft} * v.pooling_kernel * v.pooling_kernel;
    vision_activations = vision_activation_bytes(target, soft, o.max_num_batched_tokens);
    if (counted) weights += tower->weight_bytes();
    vision_json = {{"weights_bytes", tower->weight_bytes()},
                   {"parameters", tower->parameter_count()},
                   {"soft_tokens_per_image", soft},
                   {"patches_per_image", patches},
                   {"encoder_activation_bytes", vision_activations},
                   {"max_num_batched_tokens", o.max_num_batched_tokens},
                   {"image_fits_step", o.max_num_batched_tokens >= soft},
                   {"min_max_num_batched_tokens", soft},
                   {"vllm_encoder_budget_tokens", std::max(soft, 32 * (70 + 2 + 6))}};
  }
  int64_t drafter_weights = 0, drafter_kv_per_token = 0;
  int k = 0;
  std::string method = "none";
  std::unique_ptr<Gemma4Assistant> assistant;  // method mtp
  std::unique_ptr<Gemma4Model> draft_model;    // method draft_model
  if (!o.speculative_config.empty()) {
    const SpeculativeConfig spec = parse_speculative_config(o.speculative_config);
    k = spec.num_speculative_tokens;
    method = spec.method;
    if (!spec.model.empty()) {
      const ModelConfig d = load_model_config(spec.model);
      if (!d.is_assistant()) drafter_kv_per_token = d.kv_bytes_per_token(4);  // a draft model keeps its own KV
      else method = "mtp";  // reads the target's KV: no cache of its own
      // An assistant's weights are its own checkpoint's, quantized with spec.quantization; of the target
      // it reads only the config, backend and shard, which --quantization leaves alone, so the target
      // loaded above serves it. Method mtp with a draft model's checkpoint fails in this load.
      if (method == "mtp")
        assistant = Gemma4Assistant::load(spec.model, *target_model, LoadFormat::meta, spec.quantization);
      else
        draft_model = Gemma4Model::load(spec.model, *backend, LoadFormat::meta, spec.quantization);
      drafter_weights = checkpoint_bytes(spec.model, spec.quantization,
                                         assistant ? assistant->weight_bytes() : draft_model->weight_bytes());
    }
  }
  // The CPU backend keeps K/V in f32, serve on a GPU in bf16; a verify block needs k more positions
  // per sequence.
  if (o.device != "cpu" && o.device != "cuda") fail("--device must be cpu or cuda, got \"{}\"", o.device);
  const int kv_elem = o.device == "cuda" ? 2 : 4;
  if (drafter_kv_per_token) drafter_kv_per_token = drafter_kv_per_token / 4 * kv_elem;
  // The engine's KV cache (blocks of 16): full layers keep every position, sliding layers the window
  // of each running sequence plus the rows of one step (kv_cache.h).
  const KvSizing sizing = kv_sizing(target, 16, kv_elem == 2 ? DType::BF16 : DType::F32);
  const int64_t positions = int64_t{o.max_model_len} + k + 1;
  auto kv_bytes = [&](int64_t seqs, int64_t pos) {
    const int64_t cap = sizing.sliding_working_set(seqs, o.max_num_batched_tokens, k);
    return sizing.bytes(sizing.blocks_for(seqs, pos, cap)) + drafter_kv_per_token * pos * seqs;
  };
  const int64_t full_per_token = sizing.full_block_bytes / sizing.block_size + drafter_kv_per_token;
  const int64_t sliding_per_token = sizing.sliding_block_bytes / sizing.block_size;
  // What one sequence of --max-model-len holds: every position on full layers, its window on sliding ones.
  const int64_t sliding_window_bytes = sizing.bytes({0, sizing.sliding_working_set(1, 0, k)});
  const int64_t per_sequence =
      sizing.bytes(sizing.blocks_for(1, positions, sizing.sliding_working_set(1, 0, k))) + drafter_kv_per_token * positions;
  const int64_t step_bytes = sizing.bytes({0, sizing.sliding_working_set(0, o.max_num_batched_tokens, k)});
  const int64_t kv_needed = kv_bytes(o.max_num_seqs, positions);
  // On a GPU serve keeps the activations of its largest step out of the KV cache (the logits of up to
  // max_num_seqs verify blocks of k + 1 rows), and gives the cache all the rest of its budget.
  const int64_t logit_rows = step_logit_rows(o.max_num_batched_tokens, o.max_num_seqs, k);
  const int64_t step_activations =
      o.device == "cuda" ? activation_bytes(target, o.max_num_batched_tokens, logit_rows) : 0;
  const int64_t budget = o.memory.empty() ? mem_available_bytes() : parse_bytes("--memory", o.memory);
  const int64_t not_kv = weights + drafter_weights + vision_activations + step_activations;
  const int64_t needed = not_kv + kv_needed;
  const int64_t for_kv = budget - not_kv;
  const int64_t seqs_that_fit =
      for_kv > 0 ? largest(for_kv / std::max<int64_t>(1, full_per_token * positions) + 1,
                           [&](int64_t n) { return kv_bytes(n, positions) <= for_kv; })
                 : 0;
  const int64_t len_that_fits =
      for_kv > 0 ? std::max<int64_t>(0, largest(for_kv / std::max<int64_t>(1, full_per_token * o.max_num_seqs) + 1,
                                                [&](int64_t p) { return kv_bytes(o.max_num_seqs, p) <= for_kv; }) -
                                            k - 1)
                 : 0;
  const bool fits = needed <= budget;
  const nlohmann::json bytes_json = byte_model(o, *target_model, assistant.get(), draft_model.get(), target, method, k,
                                               kv_elem == 2 ? DType::BF16 : DType::F32);

  nlohmann::json j = {{"model", dir},
                      {"weights_bytes", weights},
                      {"speculative_method", method},
                      {"num_speculative_tokens", k},
                      {"drafter_weights_bytes", drafter_weights},
                      {"kv_bytes_per_token", full_per_token},
                      {"kv_bytes_per_token_bf16", kv_sizing(target, 16, DType::BF16).full_block_bytes / 16},
                      {"kv_sliding_bytes_per_token", sliding_per_token},
                      {"kv_sliding_positions_kept", sizing.keep},
                      {"kv_sliding_bytes_per_sequence", sliding_window_bytes},
                      {"kv_sliding_bytes_per_step", step_bytes},
                      {"kv_bytes_per_sequence", per_sequence},
                      {"kv_bytes_needed", kv_needed},
                      {"max_model_len", o.max_model_len},
                      {"max_num_seqs", o.max_num_seqs},
                      {"budget_bytes", budget},
                      {"needed_bytes", needed},
                      {"activation_bytes", step_activations},
                      {"fits", fits},
                      {"bytes_left", budget - needed},
                      {"sequences_that_fit", seqs_that_fit},
                      {"max_model_len_that_fits", len_that_fits},
                      {"byte_model", bytes_json}};
  if (target.takes_images()) j["vision"] = vision_json;
  if (o.json) {
    std::printf("%s\n", j.dump(2).c_str());
    return;
  }
  std::printf("%s (%s)\n", dir.c_str(), target.model_type.c_str());
  // How the counted weights are stored: the checkpoint's own format (from config.json where no
  // safetensors are here), then what --quantization / --quantize-lm-head change at load.
  const std::string stored = stored_here                ? "the rest as stored"
                             : target.quant.quantized() ? "from config.json (no safetensors here): " +
                                                              target.quant.describe() + ", the rest bf16"
                                                        : "bf16 from config.json (no safetensors here)";
  const std::string from_config = online.any() ? "as loaded: " + online.describe() + "; " + stored : stored;
  std::printf("  weights        %s, %s\n", mib(weights).c_str(),
              counted ? from_config.c_str()
              : o.device == "cuda"        ? "uploaded to the GPU in their stored dtype"
              : target.quant.quantized() ? "quantized linears rewritten at load (copied), the rest mmapped"
                                         : "mmapped in their stored dtype (pages shared, not copied)");
  if (!o.speculative_config.empty())
    std::printf("  drafter        %s, %s, k = %d%s\n", mib(drafter_weights).c_str(), method.c_str(), k,
                method == "mtp" ? " (reads the target's KV: no cache of its own)" : "");
  std::printf("  KV cache       %lld bytes/token%s (%s, as the %s backend stores it)\n",
              static_cast<long long>(full_per_token), sizing.keep > 0 ? " on full layers" : "",
              kv_elem == 2 ? "bf16" : "f32", o.device == "cuda" ? "CUDA" : "CPU");
  if (sizing.keep > 0)
    std::printf("                 + sliding layers (%lld bytes/token) keep only the last %d positions: %s per sequence, "
                "+ %s for a step's --max-num-batched-tokens %d rows\n",
                static_cast<long long>(sliding_per_token), sizing.keep, mib(sliding_window_bytes).c_str(),
                mib(step_bytes).c_str(), o.max_num_batched_tokens);
  std::printf("  per sequence   %s at --max-model-len %d (+%d verify positions)\n", mib(per_sequence).c_str(),
              o.max_model_len, k + 1);
  if (target.takes_images()) {
    const int soft = vision_json["soft_tokens_per_image"];
    std::printf("  images         vision tower %s (%.1f M parameters, %s); %d soft tokens per image from %lld patches; "
                "encoding one takes %s of activations (and the encoder cache)\n",
                mib(vision_json["weights_bytes"]).c_str(), vision_json["parameters"].get<int64_t>() / 1e6,
                counted ? "added to the weights above" : "counted in the weights above", soft,
                static_cast<long long>(vision_json["patches_per_image"].get<int64_t>()), mib(vision_activations).c_str());
    std::printf("  step budget    an image's %d soft tokens attend to each other, so they prefill in one step: "
                "--max-num-batched-tokens %d %s\n",
                soft, o.max_num_batched_tokens,
                o.max_num_batched_tokens >= soft ? "holds one" : fmt::format("is too small, use {} or more", soft).c_str());
    std::printf("                 (vLLM's encoder budget for Gemma 4 also counts a video, 32 frames x (70 + 2 + 6) = 2496 "
                "tokens, and so refuses --max-num-batched-tokens below 2496; tandem takes no video)\n");
  }
  if (step_activations)
    std::printf("  activations    %s for a step of --max-num-batched-tokens %d rows with the logits of %lld rows (kept out of "
                "the KV cache, as serve does on a GPU)\n",
                mib(step_activations).c_str(), o.max_num_batched_tokens, static_cast<long long>(logit_rows));
  std::printf("  budget         %s (%s)\n", mib(budget).c_str(), o.memory.empty() ? "MemAvailable" : "--memory");
  std::printf("  needed         %s for --max-num-seqs %d full-length sequences: %s\n", mib(needed).c_str(),
              o.max_num_seqs, fits ? "fits" : "does NOT fit");
  if (fits) {
    // What the rest would hold, within the model's own context length.
    const int64_t model_len = target.max_position > 0 ? target.max_position : 0;
    const bool capped = model_len > 0 && len_that_fits > model_len;
    std::printf("  left           %s: room for --max-num-seqs %lld at this length, or --max-model-len %lld%s for %d "
                "sequences%s\n",
                mib(budget - needed).c_str(), static_cast<long long>(seqs_that_fit),
                static_cast<long long>(capped ? model_len : len_that_fits),
                capped ? " (the model's max_position_embeddings)" : "", o.max_num_seqs,
                o.device == "cuda" ? " (serve on a GPU gives it all to the KV cache)" : "");
  }
  if (!fits && seqs_that_fit == 0 && len_that_fits == 0)  // no --max-num-seqs / --max-model-len helps
    std::printf("  to fit         no sequence fits: the weights%s take %s, %s; a smaller weight format or more memory\n",
                drafter_weights || vision_activations ? " (with the drafter and image activations)" : "",
                mib(weights + drafter_weights + vision_activations).c_str(),
                for_kv <= 0 ? "more than the budget"
                            : ("leaving " + mib(for_kv) + " for the KV cache, less than one sequence needs").c_str());
  else if (!fits)
    std::printf("  to fit         --max-num-seqs %lld at this length, or --max-model-len %lld for %d sequences "
                "(requests beyond the KV cache wait instead of failing)\n",
                static_cast<long long>(seqs_that_fit), static_cast<long long>(len_that_fits), o.max_num_seqs);
  print_byte_model(bytes_json, method);
}

const RegisterCommand plan_command("plan", "What fits in memory and why (weights, KV cache, sequences)", [](CLI::App& app) {
  auto o = std::make_shared<PlanOptions>();
  app.add_option("model", o->model, "Target checkpoint directory (default: the bundled model)");
  app.add_option("--speculative-config", o->speculative_config, "vLLM-style JSON, as for serve");
  app.add_option("--max-model-len", o->max_model_len, "Tokens per sequence")->check(CLI::Range(1, 1 << 24));
  app.add_option("--max-num-seqs", o->max_num_seqs, "Concurrent sequences")->check(CLI::Range(1, 1 << 16));
  app.add_option("--memory", o->memory, "Memory budget, e.g. 24GiB (default: MemAvailable)");
  app.add_option("--device", o->device, "cpu (f32 KV) or cuda (bf16 KV)");
  o->quantization.add_to(app);
  app.add_option("--max-num-batched-tokens", o->max_num_batched_tokens, "Rows per engine step, as for serve")
      ->check(CLI::Range(1, 1 << 24));
  app.add_option("--max-soft-tokens", o->max_soft_tokens, "Soft tokens per image (70, 140, 280, 560, 1120; default 280)");
  app.add_option("--context", o->context, "Cached tokens per sequence for the byte model's steps (default 512, as bench step)")
      ->check(CLI::Range(0, 1 << 24));
  app.add_option("--bandwidth", o->bandwidth_gbps,
                 "Memory bandwidth in GB/s for the roofline's step times and decode tok/s (bench step prints the "
                 "device's copy bandwidth)")
      ->check(CLI::PositiveNumber);
  app.add_option("--acceptance", o->acceptance,
                 "Draft acceptance rates (accepted / drafted, as vLLM counts) at k = 1, 2, ..., comma-separated, "
                 "or one rate for every k up to the speculative config's: the speedups they imply at the roofline")
      ->delimiter(',')
      ->check(CLI::Range(0.0, 1.0));
  app.add_flag("--json", o->json, "Print JSON");
  app.callback([o] { run_plan(*o); });
});

}  // namespace
}  // namespace tandem::cli
