// One Gemma 4 decoder layer, shared by the target (gemma4 / gemma4_text) and the assistant drafter
// (whose layers are all KV-shared: Q-only attention over the target's cache).
#pragma once
#include <span>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "model/config.h"
#include "model/tensor_parallel.h"
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

  // prefix: e.g. "model.language_model.layers.3.". c: the checkpoint's config (not the shard's);
  // shard: which slice of the heads, MLP and expert columns to bind (norms, router, per-layer
  // embeddings: all of them).
  static Gemma4LayerWeights bind(Weights& w, const ModelConfig& c, int layer, const std::string& prefix,
                                 const Shard& shard = {});
  // Every weight tensor of the layer: absent ones are empty views (ndim 0); present ones have a shape,
  // and data unless the load was LoadFormat::meta.
  std::vector<const TensorView*> tensors() const;
};

// Scratch activations in backend memory, grown on demand and reused across layers and steps.
struct Gemma4Scratch {
  explicit Gemma4Scratch(Backend& be)
      : normed(be), q(be), k(be), v(be), attn(be), proj(be), ffn_in(be), gate(be), ffn_out(be),
        router_in(be), moe_in(be), moe_out(be), router_logits(be), ple(be), expert_ids(be), expert_weights(be) {}
  Tensor normed, q, k, v, attn, proj, ffn_in, gate, ffn_out, router_in, moe_in, moe_out, router_logits, ple;
  Tensor expert_ids, expert_weights;  // [T, top_k] I32 / F32
};

// What one layer needs besides its weights and the residual stream (all in backend memory).
struct Gemma4LayerInputs {
  const TensorView* positions = nullptr;  // [T] I32 RoPE position of each row
  const AttentionRows* rows = nullptr;    // key range of each row, for this layer's type
  const TensorView* kv_slots = nullptr;   // [T] I64 where each row's K/V goes; unused on KV-shared layers
  const KvLayer* kv = nullptr;            // this layer's cache (the source layer's if shared)
  const TensorView* inv_freq = nullptr;   // [head_dim / 2] F32 RoPE inverse frequencies for this layer's type
  const TensorView* ple_input = nullptr;  // [T, ple_dim] per-layer input, or nullptr
  // The norm that whatever reads the layer's output applies first (the next layer's input norm, the
  // drafter's final norm), or nullptr: the layer's last norm op then also leaves RMS(x_out; out_norm)
  // in s.normed, one kernel fewer a layer. input_normed: s.normed already holds RMS(x; input_norm)
  // (the previous layer's out_norm was this layer's input norm).
  const TensorView* out_norm = nullptr;
  bool input_normed = false;
};

// x [T, H] ← layer(x), in place. c: the shard's config (shard_config), whose head counts and widths
// are those of the weights bound for it; the row-parallel projections' partial sums are all-reduced.
void gemma4_layer_forward(Backend& be, const ModelConfig& c, const LayerSpec& spec,
                          const Gemma4LayerWeights& w, const Gemma4LayerInputs& in, TensorView& x,
                          Gemma4Scratch& s);

// Embedding scale as transformers applies it: sqrt(width) cast to the table's dtype (bf16 → 53.0
// for width 2816), since the scale buffer is cast to the weight dtype before multiplying.
float embedding_scale(int width, DType table_dtype);

}  // namespace tandem
