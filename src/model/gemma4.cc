#include "model/gemma4.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <unordered_map>

#include "model/step_inputs.h"
#include "model/tensor_parallel_group.h"
#include "util/error.h"

namespace tandem {
namespace {
// transformers' Gemma4Model looks video and audio placeholders up as the pad token (their rows would
// take encoder features; tandem takes neither modality, so a generated one stays a pad).
int32_t embedding_id(const ModelConfig& c, int32_t id) {
  return id == c.video_token_id || id == c.audio_token_id ? c.pad_id : id;
}
// The per-layer table has ple_vocab rows; other ids (and the placeholders) take the pad's.
int32_t ple_id(const ModelConfig& c, int32_t id) {
  return id < c.ple_vocab && id != c.video_token_id && id != c.audio_token_id ? id : c.pad_id;
}
}  // namespace

std::unique_ptr<Gemma4Model> Gemma4Model::load(const std::string& dir, Backend& backend, LoadFormat format,
                                               const OnlineQuant& online, const Shard& shard) {
  return load(load_model_config(dir), backend, format, online, shard);
}

std::unique_ptr<Gemma4Model> Gemma4Model::load(const ModelConfig& c, Backend& backend, LoadFormat format,
                                               const OnlineQuant& online, const Shard& shard) {
  if (c.is_assistant())
    fail("{} is a gemma4_assistant drafter; it needs a target (pass it in --speculative-config)", c.dir);
  std::unique_ptr<Gemma4Model> m(new Gemma4Model(c, shard, backend));
  m->weights_ = Weights::open(c.dir, format, backend, c.quant, online);
  Weights& w = m->weights_;
  const std::string& p = c.weight_prefix;
  const int64_t V = c.vocab_size, H = c.hidden;
  m->embed_tokens_ = w.get(p + "embed_tokens.weight", {V, H});
  m->embed_scale_ = embedding_scale(c.hidden, m->embed_tokens_.dtype);
  m->final_norm_ = w.get(p + "norm.weight", {H});
  std::optional<TensorView> head;
  if (!c.tie_embeddings && w.quant().quantizes("lm_head")) head = w.linear("lm_head", V, H);
  else if (!c.tie_embeddings && w.online().quantizes("lm_head") && (w.dummy() || w.info("lm_head.weight")))
    head = w.linear("lm_head", V, H);
  else if (!c.tie_embeddings) head = w.find("lm_head.weight", {V, H});
  m->own_head_ = head.has_value();
  // --quantize-lm-head on a tied head: a quantized copy for the head matmul; the lookup keeps bf16.
  if (!head && w.online().quantizes("lm_head")) head = w.quantized_copy(p + "embed_tokens.weight", m->embed_tokens_);
  m->lm_head_ = head ? *head : m->embed_tokens_;
  for (int i = 0; i < c.n_layers; ++i)
    m->layers_.push_back(Gemma4LayerWeights::bind(w, c, i, p + "layers." + std::to_string(i) + ".", shard));
  if (c.ple_dim) {
    const int64_t LP = static_cast<int64_t>(c.n_layers) * c.ple_dim;
    m->ple_table_ = w.get(p + "embed_tokens_per_layer.weight", {c.ple_vocab, LP});
    m->ple_scale_ = embedding_scale(c.ple_dim, m->ple_table_.dtype);
    m->ple_projection_ = w.linear(p + "per_layer_model_projection", LP, H);
    m->ple_norm_ = w.get(p + "per_layer_projection_norm.weight", {c.ple_dim});
  }
  // Both layer types' frequencies, sized by the head dim each type uses.
  for (LayerType type : {LayerType::sliding, LayerType::full}) {
    auto l = std::find_if(c.layers.begin(), c.layers.end(), [&](const LayerSpec& s) { return s.type == type; });
    if (l != c.layers.end())
      upload_floats(type == LayerType::full ? m->inv_freq_full_ : m->inv_freq_sliding_,
                    rope_inv_freq(c.rope(type), l->head_dim));
  }
  std::vector<int32_t> map(V);
  for (int32_t id = 0; id < V; ++id) map[id] = embedding_id(c, id);
  upload_to(backend, map.data(), m->token_map_.resize(DType::I32, {V, 1}));
  if (c.ple_dim) {
    for (int32_t id = 0; id < V; ++id) map[id] = ple_id(c, id);
    upload_to(backend, map.data(), m->ple_map_.resize(DType::I32, {V, 1}));
  }
  m->weight_bytes_ = w.bound_bytes();
  m->count_parameters();
  return m;
}

void Gemma4Model::count_parameters() {
  const ModelConfig& c = config_;
  int64_t total = static_cast<int64_t>(c.vocab_size) * c.hidden + c.hidden;  // embedding + final norm
  if (own_head_) total += static_cast<int64_t>(c.vocab_size) * c.hidden;
  int64_t inactive = 0;
  for (size_t i = 0; i < layers_.size(); ++i) {
    const Gemma4LayerWeights& l = layers_[i];
    for (const TensorView* t : l.tensors())
      if (t->data) total += t->numel();
    if (c.moe)  // only top-k of the experts run per token
      inactive += (l.experts_gate_up.numel() + l.experts_down.numel()) / c.num_experts *
                  (c.num_experts - c.top_k_experts);
  }
  if (c.ple_dim) total += ple_table_.numel() + ple_projection_.numel() + ple_norm_.numel();
  parameters_ = total;
  active_parameters_ = total - inactive;
}

int64_t Gemma4Model::step_weight_bytes(std::span<const int> experts_per_layer) const {
  int64_t bytes = static_cast<int64_t>(final_norm_.nbytes() + stored_bytes(lm_head_));
  for (size_t i = 0; i < layers_.size(); ++i) {
    const Gemma4LayerWeights& l = layers_[i];
    for (const TensorView* t : l.tensors())
      if (t->ndim > 0 && t != &l.experts_gate_up && t != &l.experts_down) bytes += static_cast<int64_t>(stored_bytes(*t));
    if (config_.moe) {
      const int64_t per_expert = static_cast<int64_t>(stored_bytes(l.experts_gate_up) + stored_bytes(l.experts_down)) /
                                 config_.num_experts;
      bytes += per_expert * experts_per_layer[i];
    }
  }
  if (config_.ple_dim) bytes += static_cast<int64_t>(stored_bytes(ple_projection_) + ple_norm_.nbytes());
  return bytes;
}

void Gemma4Model::set_image_attention(bool sliding, bool full) {
  for (int r = 0; r < (group_ ? group_->size() : 1); ++r) {
    ModelConfig& c = group_ ? group_->rank(r).config_ : config_;
    c.image_bidirectional_sliding = sliding, c.image_bidirectional_full = full;
  }
}

void Gemma4Model::embed(const TensorView& ids, TensorView& out) { be_.embed(ids, embed_tokens_, embed_scale_, out); }

void Gemma4Model::lm_head(const TensorView& hidden, TensorView& logits) {
  be_.matmul(hidden, lm_head_, logits);
  if (config_.final_softcap > 0) be_.softcap(logits, static_cast<float>(config_.final_softcap));
}

void Gemma4Model::forward(const ForwardBatch& batch, KvCache& kv, HostTensor* hidden, HostTensor* logits) {
  const ForwardOutput out = run(batch, kv, logits != nullptr);
  if (!out.hidden.data) return;
  if (hidden) *hidden = to_host(be_, out.hidden);
  if (logits) *logits = to_host(be_, out.logits);
}

ForwardOutput Gemma4Model::run(const ForwardBatch& batch, KvCache& kv, bool want_logits) {
  if (!group_) return run_rank(batch, kv, want_logits);
  group_->follow(kv);
  ForwardOutput out;  // rank 0's; every rank's holds the same values
  group_->run([&](int r) {
    const ForwardOutput o = group_->rank(r).run_rank(batch, r == 0 ? kv : group_->cache(r), want_logits);
    if (r == 0) out = o;
  });
  return out;
}

ForwardOutput Gemma4Model::run_rank(const ForwardBatch& batch, KvCache& kv, bool want_logits) {
  const ModelConfig& c = config_;
  const int64_t T = batch.size(), H = c.hidden, R = static_cast<int64_t>(batch.output_rows.size());
  TANDEM_CHECK(T > 0 && batch.positions.size() == static_cast<size_t>(T) &&
               batch.tables.size() == static_cast<size_t>(T));
  for (int32_t id : batch.tokens)
    if (id < 0 || id >= c.vocab_size)
      fail("token id {} is outside the vocabulary of {} (size {})", id, c.dir, c.vocab_size);
  TANDEM_CHECK(batch.block_end.size() == static_cast<size_t>(T));
  for (const EmbedOverride& e : batch.embeds)
    if (e.row < 0 || e.row + e.features.rows() > T || e.features.cols() != H || e.features.dtype != DType::F32)
      fail("image features [{}, {}] at row {} do not fit a batch of {} rows of width {}", e.features.rows(),
           e.features.cols(), e.row, T, H);
  // An image block's later rows must be in this batch: their K/V is written before any row reads it.
  std::unordered_map<const BlockTables*, int32_t> last_position;
  for (int64_t t = 0; t < T; ++t) {
    int32_t& m = last_position.try_emplace(batch.tables[t], -1).first->second;
    m = std::max(m, batch.positions[t]);
  }
  for (int64_t t = 0; t < T; ++t)
    if (batch.block_end[t] > last_position[batch.tables[t]] + 1)
      fail("row {} (position {}) is in an image block ending at {}, but the batch stops at position {}", t,
           batch.positions[t], batch.block_end[t], last_position[batch.tables[t]]);

  // Plan the step on the host: which keys each row sees, per layer type, and where its own K/V goes
  // in each KV group; then one upload. Sliding layers read their group's table (the full one when the
  // cache has no sliding group).
  inputs_.clear();
  const KvGroup sliding_group = kv.group(LayerType::sliding);
  const GroupTableIndices table_index = stage_group_block_tables(inputs_, batch.tables, sliding_group,
                                                                &rows_full_.block_tables, &rows_sliding_.block_tables);
  // Rows whose token is in backend memory: their ids are staged after the host rows' and merged in
  // the step (merge_device_ids); the host entries of those rows are placeholders.
  const int64_t N = batch.device_rows.empty() ? 0 : batch.device_tokens.numel();
  device_tokens_ = N ? batch.device_tokens : TensorView();
  std::span<int32_t> tokens = inputs_.add<int32_t>(N ? &combined_tokens_ : &tokens_, DType::I32, {T + N});
  for (int64_t t = 0; t < T; ++t) tokens[t] = embedding_id(c, batch.tokens[t]);
  if (N) {
    TANDEM_CHECK(batch.device_tokens.dtype == DType::I32 && batch.device_tokens.row_stride == 0);
    std::span<int32_t> index = inputs_.add<int32_t>(&token_index_, DType::I32, {T});
    std::iota(index.begin(), index.end(), 0);
    for (const ForwardBatch::DeviceToken& d : batch.device_rows) {
      TANDEM_CHECK(d.row >= 0 && d.row < T && d.index >= 0 && d.index < N);
      index[d.row] = static_cast<int32_t>(T + d.index);
    }
  }
  std::ranges::copy(batch.positions, inputs_.add<int32_t>(&positions_, DType::I32, {T}).begin());
  // Causal (and windowed on sliding layers); a row inside an image block also sees the block's
  // later rows on the layer types made bidirectional (transformers' block overlay).
  int32_t longest_sliding = c.sliding_window;
  for (const bool full : {true, false}) {
    const bool bidirectional = full ? c.image_bidirectional_full : c.image_bidirectional_sliding;
    const std::vector<int32_t>& row_table = full ? table_index.full : table_index.sliding;
    std::span<int32_t> ranges = inputs_.add<int32_t>(full ? &rows_full_.ranges : &rows_sliding_.ranges, DType::I32, {T, 3});
    for (int64_t t = 0; t < T; ++t) {
      const KeyRange r = key_range(batch.positions[t], full ? 0 : c.sliding_window, batch.block_end[t], bidirectional);
      ranges[3 * t] = row_table[t];
      ranges[3 * t + 1] = r.begin;
      ranges[3 * t + 2] = r.end;
      if (!full) longest_sliding = std::max(longest_sliding, r.end - r.begin);
    }
  }
  // Each row's K/V slot in each group (the sliding group's block of a row's position is always held).
  for (const KvGroup g : {KvGroup::full, KvGroup::sliding}) {
    if (g == KvGroup::sliding && !kv.has_sliding()) break;
    std::span<int64_t> slots = inputs_.add<int64_t>(g == KvGroup::full ? &slots_full_ : &slots_sliding_, DType::I64, {T});
    for (int64_t t = 0; t < T; ++t) {
      const std::vector<int32_t>& table = (*batch.tables[t])[g];
      const int32_t p = batch.positions[t];
      TANDEM_CHECK(static_cast<int64_t>(table.size()) * kv.block_size() > p && table[p / kv.block_size()] >= 0);
      slots[t] = kv.slot(*batch.tables[t], g, p);
    }
  }
  std::ranges::copy(batch.output_rows, inputs_.add<int32_t>(&output_rows_, DType::I32, {R}).begin());
  if (c.ple_dim) {
    std::span<int32_t> ple_ids = inputs_.add<int32_t>(N ? &combined_ple_ids_ : &ple_ids_, DType::I32, {T + N});
    for (int64_t t = 0; t < T; ++t) ple_ids[t] = ple_id(c, batch.tokens[t]);
    for (const EmbedOverride& e : batch.embeds)  // image rows take the pad token's per-layer embedding
      std::fill_n(ple_ids.begin() + e.row, e.features.rows(), c.pad_id);
  }
  inputs_.upload();
  if (sliding_group == KvGroup::full) rows_sliding_.block_tables = rows_full_.block_tables;
  rows_sliding_.max_keys = longest_sliding;
  kv_ = &kv;
  embeds_ = &batch.embeds;

  // Everything below depends on the host only through these shapes, so a step of a shape seen before
  // replays as one recorded sequence (a CUDA graph) instead of ~30 launches per layer.
  ForwardOutput out;
  if (R > 0) out.hidden = hidden_.resize(DType::F32, {R, H});
  if (R > 0 && want_logits) out.logits = logits_.resize(DType::F32, {R, c.vocab_size});
  const std::vector<int64_t> shape{T,
                                   R,
                                   want_logits,
                                   rows_full_.block_tables.dim(0),
                                   rows_full_.block_tables.dim(1),
                                   rows_sliding_.block_tables.dim(1),
                                   reinterpret_cast<intptr_t>(kv.layer(0).k),
                                   N,
                                   reinterpret_cast<intptr_t>(device_tokens_.data)};
  // Steps with image rows run directly: their features live wherever the encoder put them.
  recordings_.run(be_, shape, T, /*record=*/!routing_record_ && batch.embeds.empty(), [&] { issue_layers(T, out); });
  return out;
}

void Gemma4Model::issue_layers(int64_t T, const ForwardOutput& out) {
  const ModelConfig& c = config_;
  const int64_t H = c.hidden, L = c.n_layers, P = c.ple_dim;
  if (device_tokens_.data) {  // rows whose token is a draft in backend memory: ids [T] merged here
    tokens_ = merged_tokens_.resize(DType::I32, {T});
    merge_device_ids(be_, combined_tokens_, device_tokens_, &token_map_.view(), token_index_, tokens_);
    if (P) {
      ple_ids_ = merged_ple_ids_.resize(DType::I32, {T});
      merge_device_ids(be_, combined_ple_ids_, device_tokens_, &ple_map_.view(), token_index_, ple_ids_);
    }
  }
  TensorView& x = x_.resize(DType::F32, {T, H});  // [T, H] residual stream
  embed(tokens_, x);
  for (const EmbedOverride& e : *embeds_) {  // image rows: the projected vision features, unscaled
    TensorView rows = x.row_slice(e.row, e.row + e.features.rows());
    be_.copy(e.features, rows);
  }

  // Per-layer embeddings: p [T, L, P] = (RMS(x·W_projᵀ · H^-½) + E_ple[id] · √P) · 2^-½.
  if (P) {
    TensorView& ple_tokens = ple_tokens_.resize(DType::F32, {T, L * P});
    be_.embed(ple_ids_, ple_table_, ple_scale_, ple_tokens);
    TensorView& ple_inputs = ple_inputs_.resize(DType::F32, {T, L * P});
    be_.matmul(x, ple_projection_, ple_inputs);
    be_.scale(ple_inputs, static_cast<float>(1.0 / std::sqrt(static_cast<double>(H))));
    TensorView per_layer = ple_inputs.reshaped({T * L, P});
    be_.rms_norm(per_layer, &ple_norm_, static_cast<float>(c.rms_eps), per_layer);
    be_.add(ple_inputs, ple_tokens, ple_inputs);
    be_.scale(ple_inputs, static_cast<float>(1.0 / std::sqrt(2.0)));
  }

  for (int i = 0; i < c.n_layers; ++i) {
    const LayerSpec& spec = rank_config_.layers[i];  // this rank's heads and widths
    const bool full = spec.type == LayerType::full;
    TensorView ple_view;
    Gemma4LayerInputs in;
    in.positions = &positions_;
    in.rows = full ? &rows_full_ : &rows_sliding_;
    in.kv_slots = kv_->group(spec.type) == KvGroup::full ? &slots_full_ : &slots_sliding_;
    in.kv = &kv_->layer(i);
    in.inv_freq = full ? &inv_freq_full_.view() : &inv_freq_sliding_.view();
    if (P) {  // layer i's slice of p: rows of [T, P] with a stride of L·P
      ple_view = TensorView(DType::F32, ple_inputs_.view().as<float>() + i * P, {T, P});
      ple_view.row_stride = L * P;
      in.ple_input = &ple_view;
    }
    // Each layer leaves the next one's normed input in scratch_.normed.
    in.input_normed = i > 0;
    in.out_norm = i + 1 < c.n_layers ? &layers_[i + 1].input_norm : nullptr;
    gemma4_layer_forward(be_, rank_config_, spec, layers_[i], in, x, scratch_);
    if (routing_record_ && c.moe) {
      const HostTensor ids = to_host(be_, scratch_.expert_ids);
      routing_record_->emplace_back(ids.view().as<int32_t>(), ids.view().as<int32_t>() + ids.view().numel());
    }
  }

  if (!out.hidden.data) return;
  TensorView hidden = out.hidden, logits = out.logits;
  be_.gather_rows(x, output_rows_, hidden);  // [R, H]
  be_.rms_norm(hidden, &final_norm_, static_cast<float>(c.rms_eps), hidden);
  if (logits.data) lm_head(hidden, logits);  // [R, V]
}

}  // namespace tandem
