// Model configuration as tandem uses it, parsed from a Hugging Face config.json. Both spellings of a
// Gemma 4 config are accepted: the published one (global_head_dim, num_global_key_value_heads) and
// the one transformers 5.17 writes (per_layer_config with per-layer head_dim / num_key_value_heads).
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/quant.h"

namespace tandem {

enum class LayerType { sliding, full };

struct RopeSpec {
  std::string type = "default";  // "default" or "proportional"
  double theta = 10000.0;
  double partial_rotary_factor = 1.0;
  double factor = 1.0;  // optional linear scaling; divides every frequency
};

// Everything that differs between layers of one model.
struct LayerSpec {
  LayerType type = LayerType::sliding;
  int head_dim = 0;
  int n_kv_heads = 0;
  bool k_eq_v = false;        // no v_proj: V is the weightless norm of the raw K projection
  // -1: the layer computes and caches its own K/V; >= 0: it reads that earlier layer's (KV
  // sharing); kTargetKv: it reads its target model's cache (every layer of an assistant drafter).
  int kv_source = -1;
  int intermediate = 0;       // dense MLP width (doubled on KV-shared layers with double-wide MLP)
  static constexpr int kTargetKv = -2;
  bool owns_kv() const { return kv_source == -1; }
};

// Gemma 4's vision tower (vision_config of a gemma4 checkpoint) and how its images enter the prompt.
struct VisionConfig {
  int hidden = 0, n_layers = 0, n_heads = 0, n_kv_heads = 0, head_dim = 0, intermediate = 0;
  int patch_size = 16;
  int pooling_kernel = 3;              // k: k×k patches average into one soft token
  int position_embedding_size = 10240;  // rows of each of the x and y position tables
  double rms_eps = 1e-6;
  double rope_theta = 100.0;
  bool standardize = false;      // (h − std_bias) · std_scale after pooling (26B/31B)
  bool clipped_linears = false;  // every linear clamps its input and output (E2B/E4B)
  int default_soft_tokens = 280;  // soft tokens per image when nothing else is asked for
};

struct ModelConfig {
  std::string dir;          // checkpoint directory
  std::string model_type;   // "gemma4", "gemma4_text" or "gemma4_assistant"
  std::string weight_prefix;  // "model.language_model." or "model."

  int vocab_size = 0;
  int hidden = 0;
  int n_layers = 0;
  int n_heads = 0;
  double rms_eps = 1e-6;
  int sliding_window = 0;
  double final_softcap = 0.0;  // 0: none
  bool tie_embeddings = true;
  int max_position = 0;
  RopeSpec rope_sliding, rope_full;
  std::vector<LayerSpec> layers;
  QuantConfig quant;  // quantization_config; method none for a plain checkpoint

  // Hybrid MoE FFN (26B-A4B): routed experts in parallel with the dense MLP, in every layer.
  bool moe = false;
  int num_experts = 0, top_k_experts = 0, moe_intermediate = 0;

  // Per-layer embeddings (E2B/E4B); 0 disables.
  int ple_dim = 0;
  int ple_vocab = 0;

  int bos_id = 2, pad_id = 0;
  std::vector<int> eos_ids;

  // Images (gemma4 with a vision_config): the tower, the prompt's marker tokens, and which layer
  // types let a row inside an image block also see the later rows of its block
  // (use_bidirectional_attention "vision"; transformers 5.17 applies it to sliding layers only).
  std::optional<VisionConfig> vision;
  int boi_id = 255999, eoi_id = 258882, image_token_id = 258880;
  // gemma4 (the multimodal wrapper) embeds these placeholder ids as the pad token wherever they occur
  // (transformers' multimodal mask); -1 elsewhere.
  int video_token_id = -1, audio_token_id = -1;
  bool has_audio = false;  // audio_config present (E2B/E4B); audio input is not supported
  bool image_bidirectional_sliding = false, image_bidirectional_full = false;

  // gemma4_assistant only.
  int backbone_hidden = 0;
  bool ordered_embeddings = false;
  int num_centroids = 0, centroid_top_k = 0;

  bool is_assistant() const { return model_type == "gemma4_assistant"; }
  // A vision tower whose image marker tokens lie inside the vocabulary (test checkpoints may carry a
  // tower with the real ids in a tiny vocabulary: those take no images).
  bool takes_images() const;
  const RopeSpec& rope(LayerType t) const { return t == LayerType::full ? rope_full : rope_sliding; }
  // Last layer of the given type that owns a KV cache (-1 if none): what KV-shared layers and the
  // assistant drafter read.
  int last_kv_layer(LayerType t) const;
  // Bytes of KV cache per token per sequence, F32 storage, counting layers that own KV.
  int64_t kv_bytes_per_token(int bytes_per_elem = 4) const;
};

// Reads DIR/config.json. Throws tandem::Error naming the file and field on anything malformed or
// unsupported (unknown model_type, missing field, inconsistent values).
ModelConfig load_model_config(const std::string& dir);
ModelConfig parse_model_config(const nlohmann::json& config, const std::string& dir);

// RoPE inverse frequencies for one layer type, length head_dim / 2 (zeros: pair not rotated), as
// transformers computes them: default: theta^(-2i/d); proportional: the first
// int(partial · d / 2) pairs get theta^(-2i/d) (denominator the full head dim), the rest 0.
std::vector<float> rope_inv_freq(const RopeSpec& rope, int head_dim);

const char* layer_type_name(LayerType t);

}  // namespace tandem
