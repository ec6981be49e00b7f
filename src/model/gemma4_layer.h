// One Gemma 4 decoder layer, shared by the target (gemma4 / gemma4_text) and the assistant drafter
// (whose layers are all KV-shared: Q-only attention over the target's cache).
#pragma once
#include <span>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "model/config.h"
#include "model/weights.h"

namespace tandem {

struct Gemma4LayerWeights {
  TensorView input_norm, post_attention_norm, pre_ffn_norm, post_ffn_norm;
  TensorView q_proj, q_norm, o_proj;
  TensorView k_proj, v_proj, k_norm;  // absent (data == nullptr) on KV-shared layers; v_proj on K=V layers
  TensorView gate_proj, up_proj, down_proj;
  // Hybrid MoE (26B-A4B).
  TensorView post_ffn_norm_1, pre_ffn_norm_2, post_ffn_norm_2;
  TensorView router_proj, router_scale, per_expert_scale, experts_gate_up, experts_down;
  // Per-layer embeddings (E2B/E4B).
  TensorView ple_gate, ple_projection, ple_post_norm;
  float layer_scalar = 1.0f;

  // prefix: e.g. "model.language_model.layers.3."
  static Gemma4LayerWeights bind(Weights& w, const ModelConfig& c, int layer, const std::string& prefix);
};

// Scratch activations, grown on demand and reused across layers and steps.
struct Gemma4Scratch {
  HostTensor normed, q, k, v, attn, proj, ffn_in, gate, up, act, ffn_out, moe_in, moe_out, router_logits,
      ple;
  std::vector<int32_t> expert_ids;
  std::vector<float> expert_weights;
};

// What one layer needs besides its weights and the residual stream.
struct Gemma4LayerInputs {
  std::span<const int32_t> positions;   // RoPE position of each row [T]
  std::span<const AttentionRow> rows;   // key range of each row, for this layer's type [T]
  std::span<const int64_t> kv_slots;    // where each row's K/V goes [T]; empty for KV-shared layers
  const KvLayer* kv = nullptr;          // this layer's cache (the source layer's if shared)
  std::span<const float> inv_freq;      // RoPE inverse frequencies for this layer's type
  const TensorView* ple_input = nullptr;  // [T, ple_dim] per-layer input, or nullptr
};

// x [T, H] ← layer(x), in place.
void gemma4_layer_forward(Backend& be, const ModelConfig& c, const LayerSpec& spec,
                          const Gemma4LayerWeights& w, const Gemma4LayerInputs& in, TensorView& x,
                          Gemma4Scratch& s);

// Embedding scale as transformers applies it: sqrt(width) cast to the table's dtype (bf16 → 53.0
// for width 2816), since the scale buffer is cast to the weight dtype before multiplying.
float embedding_scale(int width, DType table_dtype);

}  // namespace tandem
