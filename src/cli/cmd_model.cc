// tandem logits / inspect: run or describe a checkpoint directly.
#include <cstdio>
#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "cli/common.h"
#include "engine/image_prompt.h"
#include "model/gemma4.h"
#include "model/gemma4_vision.h"

namespace tandem::cli {
namespace {

struct LogitsOptions {
  std::string model;
  std::string ids;
  std::vector<std::string> images;
  int max_soft_tokens = 0;
  std::string image_attention = "auto";
  bool all_positions = false;
  BackendOptions backend;
  QuantizationOptions quantization;
};

void run_logits(const LogitsOptions& o) {
  auto backend = o.backend.make_backend();
  auto model = Gemma4Model::load(o.model.empty() ? bundled_model_dir() : o.model, *backend, LoadFormat::safetensors,
                                 o.quantization.parse());
  apply_image_attention(o.image_attention, *model);
  const ModelConfig& c = model->config();
  // Images: each image_token_id of --ids becomes <|image> + N placeholders + <image|>, whose rows
  // take the vision tower's features.
  Request prompt;
  std::unique_ptr<Gemma4Vision> vision;
  std::vector<std::shared_ptr<const vision::PatchImage>> images;
  if (!o.images.empty()) {
    const int budget = image_soft_token_budget(c, o.max_soft_tokens);
    for (const std::string& path : o.images) images.push_back(prepare_image(c, read_file_bytes(path), budget));
    vision = Gemma4Vision::load(c, *backend);
  }
  if (c.takes_images()) expand_image_placeholders(c, parse_ids(o.ids), images, prompt);
  else prompt.prompt = parse_ids(o.ids);
  const std::vector<int32_t>& ids = prompt.prompt;
  const int32_t n = static_cast<int32_t>(ids.size());
  const int64_t blocks = (n + 15) / 16;
  KvCache kv(model->backend(), model->config(), {blocks, blocks}, 16);
  BlockTables tables;
  kv.reserve(tables, 0, n);
  ForwardBatch batch;
  for (int32_t i = 0; i < n; ++i) {
    int32_t block_end = 0;
    for (const ImageInput& im : prompt.images)
      if (i >= im.offset && i < im.end()) block_end = im.end();
    batch.add(ids[i], i, &tables, o.all_positions || i == n - 1, block_end);
  }
  std::vector<Tensor> features;
  for (const ImageInput& im : prompt.images) {
    features.emplace_back(*backend);
    TensorView& f = features.back().resize(DType::F32, {im.image->soft_tokens(), c.hidden});
    vision->encode(*im.image, f);
    batch.embeds.push_back({im.offset, f});
  }
  HostTensor hidden, logits;
  model->forward(batch, kv, &hidden, &logits);
  const int64_t V = model->config().vocab_size;
  auto row = [&](int64_t r) { return std::vector<float>(logits.f32() + r * V, logits.f32() + (r + 1) * V); };
  nlohmann::json out;
  if (o.all_positions) {
    out["logits"] = nlohmann::json::array();
    for (int64_t r = 0; r < n; ++r) out["logits"].push_back(row(r));
  } else {
    out["logits"] = row(0);
  }
  std::printf("%s\n", out.dump().c_str());
}

const RegisterCommand logits_command("logits", "Print the logits of a prompt (JSON)", [](CLI::App& app) {
  auto o = std::make_shared<LogitsOptions>();
  app.add_option("--model", o->model, "Checkpoint directory (default: the bundled model)");
  app.add_option("--ids", o->ids, "Prompt token ids, comma-separated (one image_token_id per --image)")->required();
  o->quantization.add_to(app);
  app.add_option("--image", o->images, "Image file (JPEG, PNG, GIF, WebP); repeatable, in prompt order");
  app.add_option("--max-soft-tokens", o->max_soft_tokens,
                 "Soft tokens per image: 70, 140, 280, 560 or 1120 (default: the model's, 280)");
  app.add_option("--image-attention", o->image_attention, kImageAttentionHelp);
  app.add_flag("--all-positions", o->all_positions, "Logits of every position, not only the last");
  o->backend.add_to(app, 0);
  app.callback([o] { run_logits(*o); });
});

// A drafter runs only beside its target, so it is described from its config and tensors alone.
void inspect_assistant(const ModelConfig& c, bool json_out) {
  const WeightStore store = WeightStore::open(c.dir);
  int64_t params = 0, bytes = 0;
  for (const auto& [name, t] : store.tensors()) params += t.numel(), bytes += static_cast<int64_t>(t.nbytes);
  nlohmann::json j = {{"architecture", c.model_type},
                      {"hidden_size", c.hidden},
                      {"backbone_hidden_size", c.backbone_hidden},
                      {"num_layers", c.n_layers},
                      {"head", c.ordered_embeddings ? "centroid" : "dense"},
                      {"parameters_total", params},
                      {"weight_bytes", bytes}};
  if (json_out) {
    std::printf("%s\n", j.dump(2).c_str());
    return;
  }
  std::printf("%s  %s (MTP drafter: Q-only layers over its target's KV cache)\n", c.dir.c_str(), c.model_type.c_str());
  std::printf("  parameters: %.3f M; weights %.1f MiB; width %d, target width %d, %s head%s\n", params / 1e6,
              bytes / 1048576.0, c.hidden, c.backbone_hidden, c.ordered_embeddings ? "centroid" : "dense",
              c.ordered_embeddings ? fmt::format(" ({} clusters, top {})", c.num_centroids, c.centroid_top_k).c_str() : "");
  for (int i = 0; i < c.n_layers; ++i)
    std::printf("  layer %d: %s, head_dim %d, reads the target's last %s layer (%d KV heads)\n", i,
                layer_type_name(c.layers[i].type), c.layers[i].head_dim, layer_type_name(c.layers[i].type),
                c.layers[i].n_kv_heads);
}

void run_inspect(const std::string& dir, bool json_out, const std::string& load_format) {
  const ModelConfig config = load_model_config(dir);
  if (config.is_assistant()) return inspect_assistant(config, json_out);
  auto backend = make_cpu_backend(1);
  auto model = Gemma4Model::load(config, *backend, parse_load_format(load_format));
  const ModelConfig& c = model->config();
  nlohmann::json j;
  j["architecture"] = c.model_type;
  j["vocab_size"] = c.vocab_size;
  j["hidden_size"] = c.hidden;
  j["num_layers"] = c.n_layers;
  j["num_attention_heads"] = c.n_heads;
  j["sliding_window"] = c.sliding_window;
  j["final_logit_softcapping"] = c.final_softcap;
  j["tied_embeddings"] = c.tie_embeddings;
  j["parameters_total"] = model->parameter_count();
  j["parameters_active_per_token"] = model->active_parameter_count();
  j["weight_bytes"] = model->weight_bytes();  // quantized weights: codes, scales and zeros as loaded
  j["quantization"] = c.quant.describe();
  j["kv_cache_bytes_per_token_f32"] = c.kv_bytes_per_token(4);
  j["kv_cache_bytes_per_token_bf16"] = c.kv_bytes_per_token(2);
  if (c.moe) j["moe"] = {{"experts", c.num_experts}, {"top_k", c.top_k_experts}, {"intermediate", c.moe_intermediate}};
  if (c.ple_dim) j["per_layer_embeddings"] = c.ple_dim;
  j["layers"] = nlohmann::json::array();
  for (int i = 0; i < c.n_layers; ++i) {
    const LayerSpec& l = c.layers[i];
    j["layers"].push_back({{"index", i},
                           {"type", layer_type_name(l.type)},
                           {"head_dim", l.head_dim},
                           {"kv_heads", l.n_kv_heads},
                           {"k_eq_v", l.k_eq_v},
                           {"kv_source", l.owns_kv() ? i : l.kv_source},
                           {"mlp_intermediate", l.intermediate}});
  }
  if (json_out) {
    std::printf("%s\n", j.dump(2).c_str());
    return;
  }
  std::printf("%s  %s\n", dir.c_str(), c.model_type.c_str());
  std::printf("  parameters: %.3f M total, %.3f M active per token; weights %.1f MiB\n",
              model->parameter_count() / 1e6, model->active_parameter_count() / 1e6, model->weight_bytes() / 1048576.0);
  std::printf("  vocab %d, hidden %d, %d layers, %d query heads, sliding window %d, soft-cap %g\n", c.vocab_size,
              c.hidden, c.n_layers, c.n_heads, c.sliding_window, c.final_softcap);
  if (c.moe) std::printf("  MoE: %d experts, top-%d, width %d (in parallel with the dense MLP)\n", c.num_experts,
                         c.top_k_experts, c.moe_intermediate);
  if (c.ple_dim) std::printf("  per-layer embeddings: %d per layer\n", c.ple_dim);
  if (c.quant.quantized()) std::printf("  quantization: %s\n", c.quant.describe().c_str());
  std::printf("  KV cache per position, all layers: %lld bytes (bf16), %lld bytes (f32, as tandem's CPU backend stores it)\n",
              static_cast<long long>(c.kv_bytes_per_token(2)), static_cast<long long>(c.kv_bytes_per_token(4)));
  const KvSizing kv = kv_sizing(c, 16, DType::BF16);
  if (kv.keep > 0)
    std::printf("  of which full layers %lld bytes (bf16) for every position; sliding layers keep only the last %d "
                "positions of a sequence\n",
                static_cast<long long>(kv.full_block_bytes / kv.block_size), kv.keep);
  std::printf("  %-5s %-8s %-8s %-8s %-6s %-9s %s\n", "layer", "type", "head_dim", "kv_heads", "k=v", "kv_from", "mlp");
  for (int i = 0; i < c.n_layers; ++i) {
    const LayerSpec& l = c.layers[i];
    std::printf("  %-5d %-8s %-8d %-8d %-6s %-9d %d\n", i, layer_type_name(l.type), l.head_dim, l.n_kv_heads,
                l.k_eq_v ? "yes" : "no", l.owns_kv() ? i : l.kv_source, l.intermediate);
  }
}

const RegisterCommand inspect_command("inspect", "Describe a checkpoint: layers, parameters, KV bytes", [](CLI::App& app) {
  auto dir = std::make_shared<std::string>();
  auto json_out = std::make_shared<bool>(false);
  auto load_format = std::make_shared<std::string>("safetensors");
  app.add_option("model", *dir, "Checkpoint directory")->required();
  app.add_flag("--json", *json_out, "Print JSON");
  app.add_option("--load-format", *load_format, "safetensors, or dummy (a config.json alone)");
  app.callback([dir, json_out, load_format] { run_inspect(*dir, *json_out, *load_format); });
});

}  // namespace
}  // namespace tandem::cli
