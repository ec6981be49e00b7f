#include "model/gemma4.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "util/error.h"

namespace tandem {

std::unique_ptr<Gemma4Model> Gemma4Model::load(const std::string& dir, Backend& backend, LoadFormat format) {
  return load(load_model_config(dir), backend, format);
}

std::unique_ptr<Gemma4Model> Gemma4Model::load(const ModelConfig& c, Backend& backend, LoadFormat format) {
  if (c.is_assistant())
    fail("{} is a gemma4_assistant drafter; it needs a target (pass it in --speculative-config)", c.dir);
  std::unique_ptr<Gemma4Model> m(new Gemma4Model(c, backend));
  m->weights_ = Weights::open(c.dir, format);
  Weights& w = m->weights_;
  const std::string& p = c.weight_prefix;
  const int64_t V = c.vocab_size, H = c.hidden;
  m->embed_tokens_ = w.get(p + "embed_tokens.weight", {V, H});
  m->embed_scale_ = embedding_scale(c.hidden, m->embed_tokens_.dtype);
  m->final_norm_ = w.get(p + "norm.weight", {H});
  auto head = c.tie_embeddings ? std::nullopt : w.find("lm_head.weight", {V, H});
  m->lm_head_ = head ? *head : m->embed_tokens_;
  for (int i = 0; i < c.n_layers; ++i)
    m->layers_.push_back(Gemma4LayerWeights::bind(w, c, i, p + "layers." + std::to_string(i) + "."));
  if (c.ple_dim) {
    const int64_t LP = static_cast<int64_t>(c.n_layers) * c.ple_dim;
    m->ple_table_ = w.get(p + "embed_tokens_per_layer.weight", {c.ple_vocab, LP});
    m->ple_scale_ = embedding_scale(c.ple_dim, m->ple_table_.dtype);
    m->ple_projection_ = w.get(p + "per_layer_model_projection.weight", {LP, H});
    m->ple_norm_ = w.get(p + "per_layer_projection_norm.weight", {c.ple_dim});
  }
  // Both layer types' frequencies, sized by the head dim each type uses.
  for (const auto& l : c.layers) {
    auto& f = l.type == LayerType::full ? m->inv_freq_full_ : m->inv_freq_sliding_;
    if (f.empty()) f = rope_inv_freq(c.rope(l.type), l.head_dim);
  }
  m->weight_bytes_ = w.bound_bytes();
  m->count_parameters();
  return m;
}

void Gemma4Model::count_parameters() {
  const ModelConfig& c = config_;
  int64_t total = static_cast<int64_t>(c.vocab_size) * c.hidden + c.hidden;  // embedding + final norm
  if (lm_head_.data != embed_tokens_.data) total += static_cast<int64_t>(c.vocab_size) * c.hidden;
  int64_t inactive = 0;
  for (size_t i = 0; i < layers_.size(); ++i) {
    const Gemma4LayerWeights& l = layers_[i];
    for (const TensorView* t : {&l.input_norm, &l.post_attention_norm, &l.pre_ffn_norm, &l.post_ffn_norm, &l.q_proj,
                                &l.q_norm, &l.o_proj, &l.k_proj, &l.v_proj, &l.k_norm, &l.gate_proj, &l.up_proj,
                                &l.down_proj, &l.post_ffn_norm_1, &l.pre_ffn_norm_2, &l.post_ffn_norm_2,
                                &l.router_proj, &l.router_scale, &l.per_expert_scale, &l.experts_gate_up,
                                &l.experts_down, &l.ple_gate, &l.ple_projection, &l.ple_post_norm})
      if (t->data) total += t->numel();
    if (c.moe)  // only top-k of the experts run per token
      inactive += (l.experts_gate_up.numel() + l.experts_down.numel()) / c.num_experts *
                  (c.num_experts - c.top_k_experts);
  }
  if (c.ple_dim) total += ple_table_.numel() + ple_projection_.numel() + ple_norm_.numel();
  parameters_ = total;
  active_parameters_ = total - inactive;
}

void Gemma4Model::embed(std::span<const int32_t> ids, TensorView& out) {
  for (int32_t id : ids)
    if (id < 0 || id >= config_.vocab_size)
      fail("token id {} is outside the vocabulary of {} (size {})", id, config_.dir, config_.vocab_size);
  be_.embed(ids, embed_tokens_, embed_scale_, out);
}

void Gemma4Model::lm_head(const TensorView& hidden, TensorView& logits) {
  be_.matmul(hidden, lm_head_, logits);
  if (config_.final_softcap > 0) be_.softcap(logits, static_cast<float>(config_.final_softcap));
}

void Gemma4Model::forward(const ForwardBatch& batch, KvCache& kv, HostTensor* hidden, HostTensor* logits) {
  const ModelConfig& c = config_;
  const int64_t T = batch.size(), H = c.hidden;
  TANDEM_CHECK(T > 0 && batch.positions.size() == static_cast<size_t>(T) &&
               batch.tables.size() == static_cast<size_t>(T));

  // Which keys each row sees, per layer type, and where its own K/V goes.
  rows_sliding_.resize(T);
  rows_full_.resize(T);
  slots_.resize(T);
  for (int64_t t = 0; t < T; ++t) {
    const int32_t pos = batch.positions[t];
    const int32_t* table = batch.tables[t]->data();
    TANDEM_CHECK(static_cast<int64_t>(batch.tables[t]->size()) * kv.block_size() > pos);
    rows_full_[t] = {table, 0, pos + 1};
    rows_sliding_[t] = {table, std::max(0, pos - c.sliding_window + 1), pos + 1};
    slots_[t] = kv.slot(*batch.tables[t], pos);
  }

  x_.resize(DType::F32, {T, H});
  embed(batch.tokens, x_.view());

  // Per-layer embeddings: p [T, L, P] = (RMS(x·W_projᵀ · H^-½) + E_ple[id] · √P) · 2^-½.
  const int64_t L = c.n_layers, P = c.ple_dim;
  if (P) {
    ple_ids_.resize(T);
    for (int64_t t = 0; t < T; ++t)
      ple_ids_[t] = batch.tokens[t] < c.ple_vocab ? batch.tokens[t] : c.pad_id;
    ple_tokens_.resize(DType::F32, {T, L * P});
    be_.embed(ple_ids_, ple_table_, ple_scale_, ple_tokens_.view());
    ple_inputs_.resize(DType::F32, {T, L * P});
    be_.matmul(x_, ple_projection_, ple_inputs_.view());
    be_.scale(ple_inputs_.view(), static_cast<float>(1.0 / std::sqrt(static_cast<double>(H))));
    TensorView per_layer = ple_inputs_.view().reshaped({T * L, P});
    be_.rms_norm(per_layer, &ple_norm_, static_cast<float>(c.rms_eps), per_layer);
    be_.add(ple_inputs_, ple_tokens_, ple_inputs_.view());
    be_.scale(ple_inputs_.view(), static_cast<float>(1.0 / std::sqrt(2.0)));
  }

  for (int i = 0; i < c.n_layers; ++i) {
    const LayerSpec& spec = c.layers[i];
    const bool full = spec.type == LayerType::full;
    TensorView ple_view;
    Gemma4LayerInputs in;
    in.positions = batch.positions;
    in.rows = full ? rows_full_ : rows_sliding_;
    if (spec.owns_kv()) in.kv_slots = slots_;
    in.kv = &kv.layer(i);
    in.inv_freq = full ? inv_freq_full_ : inv_freq_sliding_;
    if (P) {  // layer i's slice of p: rows of [T, P] with a stride of L·P
      ple_view = TensorView(DType::F32, ple_inputs_.f32() + i * P, {T, P});
      ple_view.row_stride = L * P;
      in.ple_input = &ple_view;
    }
    gemma4_layer_forward(be_, c, spec, layers_[i], in, x_.view(), scratch_);
  }

  const int64_t R = static_cast<int64_t>(batch.output_rows.size());
  if (!hidden || R == 0) return;
  hidden->resize(DType::F32, {R, H});
  for (int64_t r = 0; r < R; ++r)
    std::memcpy(hidden->f32() + r * H, x_.f32() + static_cast<int64_t>(batch.output_rows[r]) * H, H * sizeof(float));
  be_.rms_norm(*hidden, &final_norm_, static_cast<float>(c.rms_eps), hidden->view());
  if (logits) {
    logits->resize(DType::F32, {R, c.vocab_size});
    lm_head(*hidden, logits->view());
  }
}

}  // namespace tandem
