#include "model/gemma4_assistant.h"

#include <algorithm>
#include <cstring>
#include <numeric>

#include "util/error.h"
#include "util/log.h"

namespace tandem {

std::unique_ptr<Gemma4Assistant> Gemma4Assistant::load(const std::string& dir, Gemma4Model& target,
                                                        LoadFormat format) {
  ModelConfig c = load_model_config(dir);
  const ModelConfig& t = target.config();
  if (!c.is_assistant())
    fail("{} has model_type {}, not gemma4_assistant", dir, c.model_type);
  auto mismatch = [&](const std::string& field, auto drafter_value, auto target_value) {
    fail("drafter {} does not fit target {}: {} is {} in the drafter but {} in the target", dir, t.dir, field,
         drafter_value, target_value);
  };
  if (c.backbone_hidden != t.hidden) mismatch("backbone_hidden_size (target hidden_size)", c.backbone_hidden, t.hidden);
  if (c.vocab_size != t.vocab_size) mismatch("vocab_size", c.vocab_size, t.vocab_size);
  std::unique_ptr<Gemma4Assistant> a(new Gemma4Assistant(c, target));
  // Each drafter layer reads the last KV-owning target layer of its own attention type.
  for (int i = 0; i < c.n_layers; ++i) {
    const LayerSpec& l = c.layers[i];
    const int src = t.last_kv_layer(l.type);
    if (src < 0)
      fail("drafter {} layer {} is a {} layer but target {} has no {} layer to read KV from", dir, i,
           layer_type_name(l.type), t.dir, layer_type_name(l.type));
    const LayerSpec& tl = t.layers[src];
    if (l.head_dim != tl.head_dim)
      mismatch(fmt::format("head_dim of {} layers", layer_type_name(l.type)), l.head_dim, tl.head_dim);
    if (l.n_kv_heads != tl.n_kv_heads)
      mismatch(fmt::format("KV heads of {} layers", layer_type_name(l.type)), l.n_kv_heads, tl.n_kv_heads);
    a->target_layers_.push_back(src);
    log::info("drafter layer {} ({}) reads target layer {} KV", i, layer_type_name(l.type), src);
  }
  a->weights_ = Weights::open(dir, format);
  Weights& w = a->weights_;
  const int64_t V = c.vocab_size, H = c.hidden, B = c.backbone_hidden;
  a->embed_ = w.get("model.embed_tokens.weight", {V, H});
  a->final_norm_ = w.get("model.norm.weight", {H});
  a->pre_projection_ = w.get("pre_projection.weight", {H, 2 * B});
  a->post_projection_ = w.get("post_projection.weight", {B, H});
  if (c.ordered_embeddings) {
    a->centroids_ = w.get("masked_embedding.centroids.weight", {c.num_centroids, H});
    if (w.dummy()) {
      a->token_ordering_.resize(V);
      std::iota(a->token_ordering_.begin(), a->token_ordering_.end(), 0);
    } else {
      const TensorInfo* ord = w.info("masked_embedding.token_ordering");
      if (!ord) fail("checkpoint {} has no tensor masked_embedding.token_ordering", dir);
      if (ord->numel() != V || (ord->dtype != DType::I64 && ord->dtype != DType::I32))
        fail("tensor masked_embedding.token_ordering in {} must hold {} I64 ids, has {} {}", ord->file, V,
             ord->shape_string(), dtype_name(ord->dtype));
      a->token_ordering_.resize(V);
      for (int64_t i = 0; i < V; ++i) {
        const int64_t id = ord->dtype == DType::I64 ? static_cast<const int64_t*>(ord->data)[i]
                                                    : static_cast<const int32_t*>(ord->data)[i];
        if (id < 0 || id >= V) fail("masked_embedding.token_ordering in {} holds id {} outside [0, {})", ord->file, id, V);
        a->token_ordering_[i] = static_cast<int32_t>(id);
      }
    }
  }
  for (int i = 0; i < c.n_layers; ++i)
    a->layers_.push_back(Gemma4LayerWeights::bind(w, c, i, "model.layers." + std::to_string(i) + "."));
  for (const auto& l : c.layers) {
    auto& f = l.type == LayerType::full ? a->inv_freq_full_ : a->inv_freq_sliding_;
    if (f.empty()) f = rope_inv_freq(c.rope(l.type), l.head_dim);
  }
  return a;
}

void Gemma4Assistant::step(std::span<const AssistantRow> rows, const KvCache& target_kv, HostTensor& next_hidden,
                           std::vector<int32_t>& tokens, HostTensor* logits) {
  Backend& be = target_.backend();
  const ModelConfig& c = config_;
  const int64_t R = static_cast<int64_t>(rows.size()), H = c.hidden, B = c.backbone_hidden, V = c.vocab_size;
  const float eps = static_cast<float>(c.rms_eps);

  // input [R, 2B] = [target embedding(token) ; hidden] (embedding first).
  input_.resize(DType::F32, {R, 2 * B});
  std::vector<int32_t> ids(R);
  for (int64_t r = 0; r < R; ++r) ids[r] = rows[r].token;
  TensorView emb = input_.view();
  emb.shape = {R, B, 0, 0};
  emb.ndim = 2;
  emb.row_stride = 2 * B;
  target_.embed(ids, emb);
  for (int64_t r = 0; r < R; ++r) std::memcpy(input_.f32() + r * 2 * B + B, rows[r].hidden, B * sizeof(float));
  x_.resize(DType::F32, {R, H});
  be.matmul(input_, pre_projection_, x_.view());

  // Frozen query position and the committed target keys each row may see.
  positions_.resize(R);
  rows_sliding_.resize(R);
  rows_full_.resize(R);
  for (int64_t r = 0; r < R; ++r) {
    const int32_t p = rows[r].committed;
    positions_[r] = position_convention == DraftPosition::hf ? p : std::max(0, p - 1);
    const int32_t* table = rows[r].block_table->data();
    rows_full_[r] = {table, 0, p};
    // vLLM: the W keys ending at p-1. transformers' drafter mask (|q - kv| <= W, flipped) shows
    // the last W+1 committed keys; the hf convention reproduces that too.
    const int32_t window = c.sliding_window + (position_convention == DraftPosition::hf ? 1 : 0);
    rows_sliding_[r] = {table, std::max(0, p - window), p};
  }
  for (int i = 0; i < c.n_layers; ++i) {
    const bool full = c.layers[i].type == LayerType::full;
    Gemma4LayerInputs in;
    in.positions = positions_;
    in.rows = full ? rows_full_ : rows_sliding_;
    in.kv = &target_kv.layer(target_layers_[i]);
    in.inv_freq = full ? inv_freq_full_ : inv_freq_sliding_;
    gemma4_layer_forward(be, c, c.layers[i], layers_[i], in, x_.view(), scratch_);
  }
  normed_.resize(DType::F32, {R, H});
  be.rms_norm(x_, &final_norm_, eps, normed_.view());
  next_hidden.resize(DType::F32, {R, B});
  be.matmul(normed_, post_projection_, next_hidden.view());

  tokens.resize(R);
  if (!c.ordered_embeddings) {
    HostTensor local;
    HostTensor& out = logits ? *logits : local;
    out.resize(DType::F32, {R, V});
    be.matmul(normed_, embed_, out.view());
    for (int64_t r = 0; r < R; ++r) {
      const float* row = out.f32() + r * V;
      tokens[r] = static_cast<int32_t>(std::max_element(row, row + V) - row);
    }
    return;
  }
  // Centroid head: score clusters, keep the top-k, score only their tokens.
  const int C = c.num_centroids, K = c.centroid_top_k, per = static_cast<int>(V / C);
  cluster_scores_.resize(DType::F32, {R, C});
  be.matmul(normed_, centroids_, cluster_scores_.view());
  if (logits) logits->resize(DType::F32, {R, V});
  std::vector<int32_t> clusters(C), candidates(static_cast<size_t>(K) * per);
  for (int64_t r = 0; r < R; ++r) {
    const float* score = cluster_scores_.f32() + r * C;
    std::iota(clusters.begin(), clusters.end(), 0);
    std::partial_sort(clusters.begin(), clusters.begin() + K, clusters.end(),
                      [&](int32_t a, int32_t b) { return score[a] > score[b] || (score[a] == score[b] && a < b); });
    for (int j = 0; j < K; ++j)
      for (int i = 0; i < per; ++i) candidates[j * per + i] = token_ordering_[clusters[j] * per + i];
    // Gather the candidates' rows of the tied table (in its stored dtype) and score them at once.
    const int64_t N = static_cast<int64_t>(candidates.size());
    const size_t row_bytes = static_cast<size_t>(H) * dtype_size(embed_.dtype);
    gathered_.resize(embed_.dtype, {N, H});
    for (int64_t j = 0; j < N; ++j)
      std::memcpy(static_cast<char*>(gathered_.view().data) + j * row_bytes,
                  static_cast<const char*>(embed_.data) + static_cast<int64_t>(candidates[j]) * row_bytes, row_bytes);
    candidate_logits_.resize(DType::F32, {1, N});
    be.matmul(normed_.view().row_slice(r, r + 1), gathered_, candidate_logits_.view());
    const float* values = candidate_logits_.f32();
    int64_t best = 0;
    for (int64_t j = 1; j < N; ++j)
      if (values[j] > values[best] || (values[j] == values[best] && candidates[j] < candidates[best])) best = j;
    const int32_t best_token = candidates[best];
    tokens[r] = best_token;
    if (logits) {
      const float fill = *std::min_element(values, values + N) - 1.0f;
      float* out = logits->f32() + r * V;
      std::fill(out, out + V, fill);
      for (int64_t j = 0; j < N; ++j) out[candidates[j]] = values[j];
    }
  }
}

}  // namespace tandem
