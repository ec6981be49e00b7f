#include "model/gemma4_layer.h"

#include <cmath>
#include <vector>

#include "util/half.h"

namespace tandem {

float embedding_scale(int width, DType table_dtype) {
  const float s = std::sqrt(static_cast<float>(width));
  if (table_dtype == DType::BF16) return round_to_bf16(s);
  if (table_dtype == DType::F16) return static_cast<float>(static_cast<_Float16>(s));
  return s;
}

Gemma4LayerWeights Gemma4LayerWeights::bind(Weights& w, const ModelConfig& c, int layer, const std::string& p,
                                            const Shard& shard) {
  const LayerSpec& l = c.layers[layer];
  const int64_t H = c.hidden, d = l.head_dim, nh = c.n_heads, nkv = l.n_kv_heads, I = l.intermediate;
  Gemma4LayerWeights lw;
  lw.input_norm = w.get(p + "input_layernorm.weight", {H});
  lw.post_attention_norm = w.get(p + "post_attention_layernorm.weight", {H});
  lw.pre_ffn_norm = w.get(p + "pre_feedforward_layernorm.weight", {H});
  lw.post_ffn_norm = w.get(p + "post_feedforward_layernorm.weight", {H});
  // Column-parallel (heads, MLP columns): dim 0 of [out, in]; row-parallel (o_proj, down_proj): dim 1.
  lw.q_proj = w.linear(p + "self_attn.q_proj", nh * d, H, shard.along(0));
  lw.q_norm = w.get(p + "self_attn.q_norm.weight", {d});
  lw.o_proj = w.linear(p + "self_attn.o_proj", H, nh * d, shard.along(1));
  if (l.owns_kv()) {
    lw.k_proj = w.linear(p + "self_attn.k_proj", nkv * d, H, shard.kv_heads(l.n_kv_heads));
    lw.k_norm = w.get(p + "self_attn.k_norm.weight", {d});
    if (!l.k_eq_v) lw.v_proj = w.linear(p + "self_attn.v_proj", nkv * d, H, shard.kv_heads(l.n_kv_heads));
  }
  lw.gate_proj = w.linear(p + "mlp.gate_proj", I, H, shard.along(0));
  lw.up_proj = w.linear(p + "mlp.up_proj", I, H, shard.along(0));
  lw.down_proj = w.linear(p + "mlp.down_proj", H, I, shard.along(1));
  if (c.moe) {
    const int64_t E = c.num_experts, Ie = c.moe_intermediate;
    lw.post_ffn_norm_1 = w.get(p + "post_feedforward_layernorm_1.weight", {H});
    lw.pre_ffn_norm_2 = w.get(p + "pre_feedforward_layernorm_2.weight", {H});
    lw.post_ffn_norm_2 = w.get(p + "post_feedforward_layernorm_2.weight", {H});
    lw.router_proj = w.linear(p + "router.proj", E, H);
    lw.router_scale = w.get(p + "router.scale", {H});
    // Older exports keep the experts (and per_expert_scale) under "moe." instead of "experts."/"router.".
    auto either = [&](const std::string& a, const std::string& b, const std::vector<int64_t>& shape) {
      if (auto v = w.find(p + a, shape)) return *v;
      if (auto v = w.find(p + b, shape)) return *v;
      fail("checkpoint {} has neither {} nor {} (expected shape {})", w.path(), p + a, p + b, shape_string(shape));
    };
    lw.per_expert_scale = either("router.per_expert_scale", "moe.per_expert_scale", {E});
    // Experts: the fused bf16 parameters, or a quantized checkpoint's fused or per-expert linears.
    // Each expert's Ie columns split like the dense MLP's: gate_up's gate rows and its up rows alike.
    auto experts = [&](const std::string& fused, const std::vector<std::string>& parts, int64_t N, int64_t K,
                       const Split& split) {
      for (const char* dir : {"experts", "moe"})
        if (auto v = w.find_experts(p + dir, fused, parts, E, N, K, split)) return *v;
      fail("checkpoint {} has neither {} nor {} (expected shape {})", w.path(), p + "experts." + fused,
           p + "moe." + fused, shape_string({E, N, K}));
    };
    lw.experts_gate_up = experts("gate_up_proj", {"gate_proj", "up_proj"}, 2 * Ie, H, shard.along(1, 2));
    lw.experts_down = experts("down_proj", {"down_proj"}, H, Ie, shard.along(2));
  }
  if (c.ple_dim) {
    const int64_t P = c.ple_dim;
    lw.ple_gate = w.linear(p + "per_layer_input_gate", P, H);
    lw.ple_projection = w.linear(p + "per_layer_projection", H, P);
    lw.ple_post_norm = w.get(p + "post_per_layer_input_norm.weight", {H});
  }
  // layer_scalar is a buffer ([1], no ".weight"); transformers initialises it to 1 when absent.
  if (auto s = w.find(p + "layer_scalar", {1})) lw.layer_scalar = w.read_scalar(*s);
  return lw;
}

std::vector<const TensorView*> Gemma4LayerWeights::tensors() const {
  return {&input_norm,      &post_attention_norm, &pre_ffn_norm,    &post_ffn_norm,    &q_proj,
          &q_norm,          &o_proj,              &k_proj,          &v_proj,           &k_norm,
          &gate_proj,       &up_proj,             &down_proj,       &post_ffn_norm_1,  &pre_ffn_norm_2,
          &post_ffn_norm_2, &router_proj,         &router_scale,    &per_expert_scale, &experts_gate_up,
          &experts_down,    &ple_gate,            &ple_projection,  &ple_post_norm};
}

void gemma4_layer_forward(Backend& be, const ModelConfig& c, const LayerSpec& spec,
                          const Gemma4LayerWeights& w, const Gemma4LayerInputs& in, TensorView& x,
                          Gemma4Scratch& s) {
  const int64_t T = x.rows(), H = c.hidden, d = spec.head_dim, nh = c.n_heads, nkv = spec.n_kv_heads;
  const float eps = static_cast<float>(c.rms_eps);

  // Attention: h1 = x + RMS(Attn(RMS(x; input_norm)); post_attention_norm).
  s.normed.resize(DType::F32, {T, H});
  if (!in.input_normed) be.rms_norm(x, &w.input_norm, eps, s.normed.view());
  // The query heads and the layer's own K/V (if any) are independent: a GPU computes them side by side.
  s.q.resize(DType::F32, {T, nh * d});
  TensorView q3 = s.q.view().reshaped({T, nh, d});
  auto q_branch = [&] {
    be.matmul(s.normed, w.q_proj, s.q.view());
    be.rms_norm_rope(q3, w.q_norm, eps, *in.positions, *in.inv_freq);  // q [T, nh, d] = RoPE(RMS(q; q_norm))
  };
  auto kv_branch = [&] {
    s.k.resize(DType::F32, {T, nkv * d});
    const TensorView k3 = s.k.view().reshaped({T, nkv, d});  // raw K projection
    TensorView v3 = k3;  // K=V layers: V is the raw K projection's weightless norm (no k_norm, no RoPE)
    if (spec.k_eq_v) {
      be.matmul(s.normed, w.k_proj, s.k.view());
    } else {
      s.v.resize(DType::F32, {T, nkv * d});
      be.matmul_pair(s.normed, w.k_proj, s.k.view(), w.v_proj, s.v.view());
      v3 = s.v.view().reshaped({T, nkv, d});
    }
    // The cache's rows at kv_slots: K [T, nkv, d] = RoPE(RMS(k; k_norm)), V [T, nkv, d] = RMS0(v).
    be.kv_write_normed(k3, v3, w.k_norm, eps, *in.positions, *in.inv_freq, *in.kv, *in.kv_slots);
  };
  if (spec.owns_kv()) be.concurrently(kv_branch, q_branch);
  else q_branch();
  s.attn.resize(DType::F32, {T, nh * d});
  be.attention(q3, *in.kv, *in.rows, /*scale=*/1.0f, s.attn.view());
  s.proj.resize(DType::F32, {T, H});
  be.matmul(s.attn, w.o_proj, s.proj.view());  // this rank's heads' share of the projection
  be.all_reduce(s.proj.view());

  // Feed-forward: dense GeGLU MLP, plus (MoE models) routed experts reading h1 in parallel. The
  // residual add and every norm that reads its result h1 are one op (a backend may run them in one pass).
  const int64_t I = spec.intermediate;
  s.ffn_in.resize(DType::F32, {T, H});
  std::vector<RmsNormStep> h1_norms = {
      {&s.proj.view(), &w.post_attention_norm, &x, /*add=*/true},  // h1 = x + RMS(proj; post_attention_norm)
      {&x, &w.pre_ffn_norm, &s.ffn_in.view()},                     // ffn_in [T, H] = RMS(h1; pre_ffn_norm)
  };
  if (c.moe) {
    s.router_in.resize(DType::F32, {T, H});
    s.moe_in.resize(DType::F32, {T, H});
    // Router input [T, H]: RMS0(h1) ⊙ scale · H^-½ (h1 itself, not an FFN norm's output); the experts'
    // input [T, H]: RMS(h1; pre_ffn_norm_2).
    const float router_scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(H)));
    h1_norms.push_back({&x, &w.router_scale, &s.router_in.view(), false, router_scale});
    h1_norms.push_back({&x, &w.pre_ffn_norm_2, &s.moe_in.view()});
  }
  be.rms_norms(h1_norms, eps);
  auto dense_mlp = [&] {
    s.gate.resize(DType::F32, {T, I});
    be.matmul_gelu_glu(s.ffn_in, w.gate_proj, w.up_proj, s.gate.view());
    s.ffn_out.resize(DType::F32, {T, H});
    be.matmul(s.gate, w.down_proj, s.ffn_out.view());  // this rank's columns' share
  };
  // The tail: x += RMS(ffn; post_ffn_norm) (then · layer_scalar, unless the per-layer embedding comes
  // first), with ffn = RMS(dense; post_ffn_norm_1) + RMS(experts; post_ffn_norm_2) on MoE models.
  std::vector<RmsNormStep> tail;
  if (!c.moe) {
    dense_mlp();
    be.all_reduce(s.ffn_out.view());
  } else {
    // The routed experts read h1 independently of the dense MLP: a GPU runs the two side by side.
    auto experts = [&] {
      s.router_logits.resize(DType::F32, {T, c.num_experts});
      be.matmul(s.router_in, w.router_proj, s.router_logits.view());
      s.expert_ids.resize(DType::I32, {T, c.top_k_experts});
      s.expert_weights.resize(DType::F32, {T, c.top_k_experts});
      s.moe_out.resize(DType::F32, {T, H});
      // Back to back, so a backend may hand moe_route's work on the ids (CUDA: the grouping) to moe_experts.
      be.moe_route(s.router_logits, &w.per_expert_scale, s.expert_ids.view(), s.expert_weights.view());
      be.moe_experts(s.moe_in, s.expert_ids, s.expert_weights, w.experts_gate_up, w.experts_down, s.moe_out.view());
    };
    be.concurrently(experts, dense_mlp);
    be.all_reduce(s.ffn_out.view());
    be.all_reduce(s.moe_out.view());  // every expert's share of this rank's columns
    tail.push_back({&s.ffn_out.view(), &w.post_ffn_norm_1, &s.ffn_out.view()});
    tail.push_back({&s.moe_out.view(), &w.post_ffn_norm_2, &s.ffn_out.view(), /*add=*/true});
  }
  tail.push_back({&s.ffn_out.view(), &w.post_ffn_norm, &x, /*add=*/true});
  const RmsNormStep out_norm{&x, in.out_norm, &s.normed.view()};  // s.normed [T, H] = RMS(x_out; out_norm)
  if (in.ple_input) {
    be.rms_norms(tail, eps);
    // Per-layer embedding residual (E2B/E4B): x += RMS(W_proj (gelu(W_gate x) ⊙ p); norm).
    s.ple.resize(DType::F32, {T, c.ple_dim});
    be.matmul(x, w.ple_gate, s.ple.view());
    be.gelu_tanh_mul(s.ple, *in.ple_input, s.ple.view());
    be.matmul(s.ple, w.ple_projection, s.proj.view());
    tail = {{&s.proj.view(), &w.ple_post_norm, &x, /*add=*/true}};
  }
  tail.back().scale = w.layer_scalar;  // x · layer_scalar last
  if (in.out_norm) tail.push_back(out_norm);
  be.rms_norms(tail, eps);
}

}  // namespace tandem
