#include "model/config.h"

#include <cmath>
#include <filesystem>

#include "io/json_file.h"
#include "model/quant.h"
#include "util/error.h"

namespace tandem {
using nlohmann::json;

const char* layer_type_name(LayerType t) { return t == LayerType::full ? "full" : "sliding"; }

bool ModelConfig::takes_images() const {
  for (int id : {boi_id, eoi_id, image_token_id})
    if (id < 0 || id >= vocab_size) return false;
  return vision.has_value();
}

int ModelConfig::last_kv_layer(LayerType t) const {
  for (int i = n_layers - 1; i >= 0; --i)
    if (layers[i].type == t && layers[i].owns_kv()) return i;
  return -1;
}

int64_t ModelConfig::kv_bytes_per_token(int bytes_per_elem) const {
  int64_t total = 0;
  for (const auto& l : layers)
    if (l.owns_kv()) total += 2LL * l.n_kv_heads * l.head_dim * bytes_per_elem;
  return total;
}

std::vector<float> rope_inv_freq(const RopeSpec& rope, int head_dim) {
  std::vector<float> inv(head_dim / 2, 0.0f);
  // Pairs that rotate. Default RoPE rotates all; proportional rotates int(p · d / 2) pairs but keeps
  // the full head dim as the exponent's denominator.
  const int rotated = rope.type == "proportional"
                          ? static_cast<int>(std::floor(rope.partial_rotary_factor * head_dim / 2))
                          : head_dim / 2;
  for (int i = 0; i < rotated; ++i) {
    // transformers: 1 / base ** (float(2i) / d), in f32.
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(head_dim);
    const float denom = std::pow(static_cast<float>(rope.theta), exponent);
    inv[i] = (1.0f / denom) / static_cast<float>(rope.factor);
  }
  return inv;
}

namespace {

struct Reader {
  const json& j;
  const std::string& file;

  template <typename T>
  T get(const char* key) const {
    if (!j.contains(key) || j[key].is_null()) fail("{}: missing field \"{}\"", file, key);
    try {
      return j[key].get<T>();
    } catch (const json::exception&) {
      fail("{}: field \"{}\" has the wrong type ({})", file, key, j[key].dump());
    }
  }
  template <typename T>
  T get(const char* key, T fallback) const {
    if (!j.contains(key) || j[key].is_null()) return fallback;
    return get<T>(key);
  }
};

RopeSpec parse_rope(const json& r, const std::string& file, const char* which) {
  if (!r.is_object()) fail("{}: rope_parameters.{} must be an object", file, which);
  Reader rd{r, file};
  RopeSpec s;
  s.type = rd.get<std::string>("rope_type", "default");
  if (s.type != "default" && s.type != "proportional")
    fail("{}: rope_parameters.{}.rope_type \"{}\" is not supported (default, proportional)", file, which,
         s.type);
  s.theta = rd.get<double>("rope_theta");
  s.partial_rotary_factor = rd.get<double>("partial_rotary_factor", 1.0);
  s.factor = rd.get<double>("factor", 1.0);
  if (s.theta <= 0 || s.factor <= 0 || s.partial_rotary_factor <= 0 || s.partial_rotary_factor > 1)
    fail("{}: rope_parameters.{} has out-of-range values", file, which);
  return s;
}

void parse_text_config(const json& t, const std::string& file, ModelConfig& c) {
  Reader rd{t, file};
  c.vocab_size = rd.get<int>("vocab_size");
  c.hidden = rd.get<int>("hidden_size");
  c.n_layers = rd.get<int>("num_hidden_layers");
  c.n_heads = rd.get<int>("num_attention_heads");
  c.rms_eps = rd.get<double>("rms_norm_eps", 1e-6);
  c.sliding_window = rd.get<int>("sliding_window", 512);
  c.final_softcap = rd.get<double>("final_logit_softcapping", 0.0);
  c.max_position = rd.get<int>("max_position_embeddings", 131072);
  if (t.contains("tie_word_embeddings")) c.tie_embeddings = rd.get<bool>("tie_word_embeddings");
  const std::string act = rd.get<std::string>("hidden_activation", "gelu_pytorch_tanh");
  if (act != "gelu_pytorch_tanh")
    fail("{}: hidden_activation \"{}\" is not supported (gelu_pytorch_tanh)", file, act);
  if (rd.get<bool>("attention_bias", false)) fail("{}: attention_bias=true is not supported", file);
  const auto bidir = t.contains("use_bidirectional_attention") && t["use_bidirectional_attention"].is_string()
                         ? t["use_bidirectional_attention"].get<std::string>()
                         : "";
  if (bidir == "all") fail("{}: use_bidirectional_attention=\"all\" (embedding models) is not supported", file);
  // What transformers 5.17 does with "vision" (create_masks_for_generate): the image-block overlay on
  // sliding layers; full layers stay causal. --image-attention can change it per layer type.
  c.image_bidirectional_sliding = bidir == "vision";
  c.image_bidirectional_full = false;
  if (c.vocab_size <= 0 || c.hidden <= 0 || c.n_layers <= 0 || c.n_heads <= 0)
    fail("{}: vocab_size, hidden_size, num_hidden_layers and num_attention_heads must be positive", file);

  // Layer types; the last layer is always full (transformers forces it).
  std::vector<std::string> types;
  if (t.contains("layer_types") && !t["layer_types"].is_null()) {
    types = rd.get<std::vector<std::string>>("layer_types");
    if (static_cast<int>(types.size()) != c.n_layers)
      fail("{}: layer_types has {} entries but num_hidden_layers is {}", file, types.size(), c.n_layers);
  } else {
    for (int i = 0; i < c.n_layers; ++i)
      types.push_back((i + 1) % 6 ? "sliding_attention" : "full_attention");
  }
  types.back() = "full_attention";

  // RoPE per layer type.
  c.rope_sliding = {"default", 10000.0, 1.0, 1.0};
  c.rope_full = {"proportional", 1000000.0, 0.25, 1.0};
  if (t.contains("rope_parameters") && t["rope_parameters"].is_object()) {
    const json& rp = t["rope_parameters"];
    if (rp.contains("sliding_attention")) c.rope_sliding = parse_rope(rp["sliding_attention"], file, "sliding_attention");
    if (rp.contains("full_attention")) c.rope_full = parse_rope(rp["full_attention"], file, "full_attention");
  }

  // Attention geometry. Published spelling: head_dim / num_key_value_heads for sliding layers,
  // global_head_dim (+ num_global_key_value_heads when attention_k_eq_v) for full layers.
  // transformers 5.17 spelling: per_layer_config {"<layer>": {"head_dim": .., "num_key_value_heads": ..}}
  // overriding the base values for the listed layers.
  const int head_dim = rd.get<int>("head_dim", 256);
  const int n_kv = rd.get<int>("num_key_value_heads", c.n_heads);
  const bool k_eq_v = rd.get<bool>("attention_k_eq_v", false);
  const int global_head_dim = rd.get<int>("global_head_dim", 0);
  const int n_global_kv = rd.get<int>("num_global_key_value_heads", 0);
  const json per_layer = t.contains("per_layer_config") && t["per_layer_config"].is_object()
                             ? t["per_layer_config"]
                             : json::object();
  c.layers.resize(c.n_layers);
  for (int i = 0; i < c.n_layers; ++i) {
    LayerSpec& l = c.layers[i];
    if (types[i] == "sliding_attention") l.type = LayerType::sliding;
    else if (types[i] == "full_attention") l.type = LayerType::full;
    else fail("{}: layer_types[{}] = \"{}\" is not supported (sliding_attention, full_attention)", file, i, types[i]);
    l.head_dim = head_dim;
    l.n_kv_heads = n_kv;
    l.k_eq_v = k_eq_v && l.type == LayerType::full;
    const std::string key = std::to_string(i);
    if (per_layer.contains(key)) {
      Reader pl{per_layer[key], file};
      l.head_dim = pl.get<int>("head_dim", l.head_dim);
      l.n_kv_heads = pl.get<int>("num_key_value_heads", l.n_kv_heads);
    } else if (per_layer.empty() && l.type == LayerType::full) {
      if (global_head_dim) l.head_dim = global_head_dim;
      if (l.k_eq_v && n_global_kv) l.n_kv_heads = n_global_kv;
    }
    if (l.head_dim <= 0 || l.head_dim % 2 || l.n_kv_heads <= 0 || c.n_heads % l.n_kv_heads)
      fail("{}: layer {} has head_dim {} and {} KV heads for {} query heads; head_dim must be even and "
           "the KV heads must divide the query heads",
           file, i, l.head_dim, l.n_kv_heads, c.n_heads);
  }

  // Cross-layer KV sharing: layers from L - num_kv_shared_layers on read the last earlier layer
  // of their type (E2B/E4B; every layer of an assistant drafter).
  const int shared = rd.get<int>("num_kv_shared_layers", 0);
  if (shared < 0 || shared > c.n_layers) fail("{}: num_kv_shared_layers {} is out of range", file, shared);
  const int first_shared = c.n_layers - shared;
  for (int i = first_shared; i < c.n_layers; ++i) {
    int src = -1;
    for (int j = first_shared - 1; j >= 0; --j)
      if (c.layers[j].type == c.layers[i].type) { src = j; break; }
    c.layers[i].kv_source = first_shared == 0 ? LayerSpec::kTargetKv : src;
    if (first_shared > 0 && src < 0)
      fail("{}: KV-shared layer {} ({}) has no earlier {} layer to read KV from", file, i,
           layer_type_name(c.layers[i].type), layer_type_name(c.layers[i].type));
  }

  c.moe = rd.get<bool>("enable_moe_block", rd.get<bool>("use_second_mlp_block", false));
  const int intermediate = rd.get<int>("intermediate_size");
  const bool double_wide = rd.get<bool>("use_double_wide_mlp", false);
  for (int i = 0; i < c.n_layers; ++i)
    c.layers[i].intermediate = intermediate * (double_wide && first_shared > 0 && i >= first_shared ? 2 : 1);
  if (c.moe) {
    c.num_experts = rd.get<int>("num_experts");
    c.top_k_experts = rd.get<int>("top_k_experts");
    c.moe_intermediate = rd.get<int>("moe_intermediate_size", rd.get<int>("expert_intermediate_size", 0));
    if (c.num_experts <= 0 || c.top_k_experts <= 0 || c.top_k_experts > c.num_experts || c.moe_intermediate <= 0)
      fail("{}: enable_moe_block needs 0 < top_k_experts <= num_experts and moe_intermediate_size > 0", file);
  }
  c.ple_dim = rd.get<int>("hidden_size_per_layer_input", 0);
  c.ple_vocab = rd.get<int>("vocab_size_per_layer_input", c.vocab_size);

  c.pad_id = rd.get<int>("pad_token_id", 0);
  c.bos_id = rd.get<int>("bos_token_id", 2);
  if (t.contains("eos_token_id") && !t["eos_token_id"].is_null()) {
    if (t["eos_token_id"].is_array()) c.eos_ids = rd.get<std::vector<int>>("eos_token_id");
    else c.eos_ids = {rd.get<int>("eos_token_id")};
  }
}

VisionConfig parse_vision_config(const json& v, const std::string& file) {
  if (!v.is_object()) fail("{}: vision_config must be an object", file);
  Reader rd{v, file};
  VisionConfig c;
  c.hidden = rd.get<int>("hidden_size");
  c.n_layers = rd.get<int>("num_hidden_layers");
  c.n_heads = rd.get<int>("num_attention_heads");
  c.n_kv_heads = rd.get<int>("num_key_value_heads", c.n_heads);
  c.head_dim = rd.get<int>("head_dim", c.n_heads > 0 ? c.hidden / c.n_heads : 0);
  c.intermediate = rd.get<int>("intermediate_size");
  c.patch_size = rd.get<int>("patch_size", 16);
  c.pooling_kernel = rd.get<int>("pooling_kernel_size", 3);
  c.position_embedding_size = rd.get<int>("position_embedding_size", 10240);
  c.rms_eps = rd.get<double>("rms_norm_eps", 1e-6);
  c.standardize = rd.get<bool>("standardize", false);
  c.clipped_linears = rd.get<bool>("use_clipped_linears", false);
  c.default_soft_tokens = rd.get<int>("default_output_length", 280);
  const std::string act = rd.get<std::string>("hidden_activation", "gelu_pytorch_tanh");
  if (act != "gelu_pytorch_tanh")
    fail("{}: vision_config.hidden_activation \"{}\" is not supported (gelu_pytorch_tanh)", file, act);
  if (rd.get<bool>("attention_bias", false)) fail("{}: vision_config.attention_bias=true is not supported", file);
  if (v.contains("rope_parameters") && v["rope_parameters"].is_object()) {
    Reader rp{v["rope_parameters"], file};
    // transformers writes "default" or "axial"; both are the per-axis RoPE of the vision tower.
    const std::string type = rp.get<std::string>("rope_type", "default");
    if (type != "default" && type != "axial")
      fail("{}: vision_config.rope_parameters.rope_type \"{}\" is not supported (default, axial)", file, type);
    c.rope_theta = rp.get<double>("rope_theta", 100.0);
  }
  // Each head is two halves (x, y), each rotated NeoX-style: the head dim must split into 4.
  if (c.hidden <= 0 || c.n_layers <= 0 || c.n_heads <= 0 || c.n_kv_heads <= 0 || c.n_heads % c.n_kv_heads ||
      c.head_dim <= 0 || c.head_dim % 4 || c.intermediate <= 0 || c.patch_size <= 0 || c.pooling_kernel <= 0 ||
      c.position_embedding_size <= 0 || c.rope_theta <= 0 || c.default_soft_tokens <= 0)
    fail("{}: vision_config has out-of-range values (sizes must be positive, head_dim a multiple of 4, the KV "
         "heads must divide the heads)", file);
  return c;
}

}  // namespace

ModelConfig parse_model_config(const json& j, const std::string& dir) {
  const std::string file = (std::filesystem::path(dir) / "config.json").string();
  if (!j.is_object()) fail("{}: expected a JSON object", file);
  Reader rd{j, file};
  ModelConfig c;
  c.dir = dir;
  c.model_type = rd.get<std::string>("model_type");
  if (j.contains("quantization_config") && !j["quantization_config"].is_null())
    c.quant = parse_quant_config(j["quantization_config"], file);
  if (c.model_type == "gemma4") {
    if (!j.contains("text_config") || !j["text_config"].is_object())
      fail("{}: model_type gemma4 needs a text_config object", file);
    parse_text_config(j["text_config"], file, c);
    c.weight_prefix = "model.language_model.";
    if (j.contains("tie_word_embeddings")) c.tie_embeddings = rd.get<bool>("tie_word_embeddings");
    if (j.contains("eos_token_id") && !j["eos_token_id"].is_null())
      c.eos_ids = j["eos_token_id"].is_array() ? rd.get<std::vector<int>>("eos_token_id")
                                               : std::vector<int>{rd.get<int>("eos_token_id")};
    if (j.contains("vision_config") && !j["vision_config"].is_null())
      c.vision = parse_vision_config(j["vision_config"], file);
    c.has_audio = j.contains("audio_config") && !j["audio_config"].is_null();
    c.boi_id = rd.get<int>("boi_token_id", c.boi_id);
    c.eoi_id = rd.get<int>("eoi_token_id", c.eoi_id);
    c.image_token_id = rd.get<int>("image_token_id", c.image_token_id);
    c.video_token_id = rd.get<int>("video_token_id", 258884);
    c.audio_token_id = rd.get<int>("audio_token_id", 258881);
  } else if (c.model_type == "gemma4_text") {
    parse_text_config(j, file, c);
    c.weight_prefix = "model.";
  } else if (c.model_type == "gemma4_assistant") {
    if (!j.contains("text_config") || !j["text_config"].is_object())
      fail("{}: model_type gemma4_assistant needs a text_config object", file);
    json text = j["text_config"];
    // transformers' post-init: an assistant's layers all read the target's KV.
    if (!text.contains("num_kv_shared_layers") || text["num_kv_shared_layers"].is_null() ||
        text["num_kv_shared_layers"].get<int>() == 0)
      text["num_kv_shared_layers"] = text.value("num_hidden_layers", 0);
    parse_text_config(text, file, c);
    if (c.layers.empty() || c.layers[0].kv_source != LayerSpec::kTargetKv)
      fail("{}: a gemma4_assistant must share KV in every layer (num_kv_shared_layers = num_hidden_layers)", file);
    if (c.moe || c.ple_dim) fail("{}: a gemma4_assistant cannot have MoE or per-layer embeddings", file);
    c.weight_prefix = "model.";
    c.backbone_hidden = rd.get<int>("backbone_hidden_size");
    c.ordered_embeddings = rd.get<bool>("use_ordered_embeddings", false);
    c.num_centroids = rd.get<int>("num_centroids", 2048);
    c.centroid_top_k = rd.get<int>("centroid_intermediate_top_k", 32);
    c.tie_embeddings = true;
    c.final_softcap = 0.0;  // no soft-cap on drafter logits, whatever text_config says
    if (c.ordered_embeddings && (c.num_centroids <= 0 || c.vocab_size % c.num_centroids ||
                                 c.centroid_top_k <= 0 || c.centroid_top_k > c.num_centroids))
      fail("{}: use_ordered_embeddings needs num_centroids dividing vocab_size ({}) and 0 < "
           "centroid_intermediate_top_k <= num_centroids",
           file, c.vocab_size);
  } else {
    fail("{}: model_type \"{}\" is not supported (gemma4, gemma4_text, gemma4_assistant)", file, c.model_type);
  }
  return c;
}

ModelConfig load_model_config(const std::string& dir) {
  const std::string file = (std::filesystem::path(dir) / "config.json").string();
  if (!std::filesystem::is_directory(dir)) fail("model directory {} does not exist", dir);
  return parse_model_config(read_json_file(file), dir);
}

}  // namespace tandem
