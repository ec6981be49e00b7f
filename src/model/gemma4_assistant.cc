#include "model/gemma4_assistant.h"

#include <algorithm>
#include <cstring>
#include <numeric>

#include "model/step_inputs.h"
#include "model/tensor_parallel_group.h"
#include "util/error.h"
#include "util/log.h"

namespace tandem {

std::unique_ptr<Gemma4Assistant> Gemma4Assistant::load(const std::string& dir, Gemma4Model& target,
                                                        LoadFormat format, const OnlineQuant& online) {
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
  // The target's cache keeps only the window before each sequence's next position on its sliding
  // layers: the drafter's sliding layers may look no further back.
  const bool sliding = std::any_of(c.layers.begin(), c.layers.end(), [](const LayerSpec& l) { return l.type == LayerType::sliding; });
  if (sliding && c.sliding_window > t.sliding_window) mismatch("sliding_window", c.sliding_window, t.sliding_window);
  // Each drafter layer reads the last KV-owning target layer of its own attention type.
  std::vector<int> target_layers;
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
    target_layers.push_back(src);
    log::info("drafter layer {} ({}) reads target layer {} KV", i, layer_type_name(l.type), src);
  }
  if (online.lm_head && c.ordered_embeddings)
    fail("drafter {}: quantize_lm_head needs the full head; this drafter scores centroids, then gathers rows of "
         "its bf16 table",
         dir);
  std::unique_ptr<Gemma4Assistant> a = load_rank(c, target, target_layers, format, online);
  if (TensorParallelGroup* group = target.group())
    for (int r = 1; r < group->size(); ++r)
      a->peers_.push_back(load_rank(c, group->rank(r), target_layers, format, online));
  return a;
}

std::unique_ptr<Gemma4Assistant> Gemma4Assistant::load_rank(const ModelConfig& c, Gemma4Model& target,
                                                             const std::vector<int>& target_layers,
                                                             LoadFormat format, const OnlineQuant& online) {
  const std::string& dir = c.dir;
  std::unique_ptr<Gemma4Assistant> a(new Gemma4Assistant(c, target));
  a->target_layers_ = target_layers;
  a->weights_ = Weights::open(dir, format, target.backend(), c.quant, online);
  Weights& w = a->weights_;
  const int64_t V = c.vocab_size, H = c.hidden, B = c.backbone_hidden;
  a->embed_ = w.get("model.embed_tokens.weight", {V, H});
  a->head_ = online.lm_head ? w.quantized_copy("model.embed_tokens.weight", a->embed_) : a->embed_;
  a->final_norm_ = w.get("model.norm.weight", {H});
  a->pre_projection_ = w.linear("pre_projection", H, 2 * B);
  a->post_projection_ = w.linear("post_projection", B, H);
  if (c.ordered_embeddings) {
    a->centroids_ = w.get("masked_embedding.centroids.weight", {c.num_centroids, H});
    if (V % c.num_centroids != 0)
      fail("drafter {}: vocab_size {} is not a multiple of num_centroids {}", dir, V, c.num_centroids);
    std::vector<int32_t> ordering(V);
    if (w.dummy()) {
      std::iota(ordering.begin(), ordering.end(), 0);
    } else {
      const TensorInfo* ord = w.info("masked_embedding.token_ordering");
      if (!ord) fail("checkpoint {} has no tensor masked_embedding.token_ordering", dir);
      if (ord->numel() != V || (ord->dtype != DType::I64 && ord->dtype != DType::I32))
        fail("tensor masked_embedding.token_ordering in {} must hold {} I64 ids, has {} {}", ord->file, V,
             ord->shape_string(), dtype_name(ord->dtype));
      for (int64_t i = 0; i < V; ++i) {
        const int64_t id = ord->dtype == DType::I64 ? static_cast<const int64_t*>(ord->data)[i]
                                                    : static_cast<const int32_t*>(ord->data)[i];
        if (id < 0 || id >= V) fail("masked_embedding.token_ordering in {} holds id {} outside [0, {})", ord->file, id, V);
        ordering[i] = static_cast<int32_t>(id);
      }
    }
    TensorView& t = a->token_ordering_.resize(DType::I32, {c.num_centroids, V / c.num_centroids});
    upload_to(target.backend(), ordering.data(), t);
  }
  for (int i = 0; i < c.n_layers; ++i)
    a->layers_.push_back(
        Gemma4LayerWeights::bind(w, c, i, "model.layers." + std::to_string(i) + ".", target.shard()));
  for (LayerType type : {LayerType::sliding, LayerType::full}) {
    auto l = std::find_if(c.layers.begin(), c.layers.end(), [&](const LayerSpec& s) { return s.type == type; });
    if (l != c.layers.end())
      upload_floats(type == LayerType::full ? a->inv_freq_full_ : a->inv_freq_sliding_,
                    rope_inv_freq(c.rope(type), l->head_dim));
  }
  return a;
}

int64_t Gemma4Assistant::step_weight_bytes() const {
  const ModelConfig& c = config_;
  int64_t bytes = static_cast<int64_t>(final_norm_.nbytes() + stored_bytes(pre_projection_) +
                                       stored_bytes(post_projection_));
  for (const Gemma4LayerWeights& l : layers_)
    for (const TensorView* t : l.tensors())
      if (t->ndim > 0) bytes += static_cast<int64_t>(stored_bytes(*t));
  if (!c.ordered_embeddings) return bytes + static_cast<int64_t>(stored_bytes(head_));
  const int64_t row_bytes = static_cast<int64_t>(embed_.nbytes()) / c.vocab_size;
  return bytes + static_cast<int64_t>(centroids_.nbytes()) +
         row_bytes * c.centroid_top_k * (c.vocab_size / c.num_centroids);
}

void Gemma4Assistant::begin_round(std::span<const AssistantRow> rows, const KvCache& target_kv) {
  begin_round_rank(rows, target_kv);
  if (peers_.empty()) return;
  TensorParallelGroup& group = *target_.group();
  group.follow(target_kv);
  for (int r = 1; r < group.size(); ++r) peers_[r - 1]->begin_round_rank(rows, group.cache(r));
}

void Gemma4Assistant::begin_round_rank(std::span<const AssistantRow> rows, const KvCache& target_kv) {
  const int64_t R = static_cast<int64_t>(rows.size());
  target_kv_ = &target_kv;
  inputs_.clear();
  // The target's tables of each group its layers read (sliding layers: the target's sliding group).
  const KvGroup sliding_group = target_kv.group(LayerType::sliding);
  std::vector<const BlockTables*> row_tables(R);
  for (int64_t r = 0; r < R; ++r) row_tables[r] = rows[r].tables;
  const GroupTableIndices table_index = stage_group_block_tables(inputs_, row_tables, sliding_group,
                                                                &rows_full_.block_tables, &rows_sliding_.block_tables);
  // Frozen query position and the committed target keys each row may see (each span is filled before
  // the next add, which may move the staging buffer).
  const bool hf = position_convention == DraftPosition::hf;
  std::span<int32_t> positions = inputs_.add<int32_t>(&positions_, DType::I32, {R});
  for (int64_t r = 0; r < R; ++r) positions[r] = hf ? rows[r].committed : std::max(0, rows[r].committed - 1);
  // vLLM: the W keys ending at p-1. transformers' drafter mask (|q - kv| <= W, flipped) shows the
  // last W+1 committed keys; the hf convention reproduces that too.
  const int32_t window = config_.sliding_window + (hf ? 1 : 0);
  TANDEM_CHECK(!target_kv.has_sliding() || window <= target_kv.keep());
  for (const bool full : {true, false}) {
    std::span<int32_t> ranges = inputs_.add<int32_t>(full ? &rows_full_.ranges : &rows_sliding_.ranges, DType::I32, {R, 3});
    for (int64_t r = 0; r < R; ++r) {
      const int32_t p = rows[r].committed;
      ranges[3 * r] = full ? table_index.full[r] : table_index.sliding[r];
      ranges[3 * r + 1] = full ? 0 : std::max(0, p - window);
      ranges[3 * r + 2] = p;
    }
  }
  inputs_.upload();
  if (sliding_group == KvGroup::full) rows_sliding_.block_tables = rows_full_.block_tables;
  rows_sliding_.max_keys = window;
}

void Gemma4Assistant::draft(const TensorView& tokens, TensorView& state, TensorView& spare, TensorView& drafts) {
  if (peers_.empty()) return draft_rank(tokens, state, spare, drafts);
  // The other ranks start from copies of rank 0's tokens and states (host memory: a CPU group) and
  // write states and drafts of their own.
  for (const std::unique_ptr<Gemma4Assistant>& a : peers_) {
    upload_to(a->target_.backend(), tokens.data, a->round_tokens_.resize(DType::I32, {tokens.numel()}));
    upload_to(a->target_.backend(), state.data, a->round_state_.resize(DType::F32, {state.rows(), state.cols()}));
    a->round_spare_.resize(DType::F32, {spare.rows(), spare.cols()});
    a->round_drafts_.resize(DType::I32, {drafts.rows(), drafts.cols()});
  }
  target_.group()->run([&](int r) {
    if (r == 0) return draft_rank(tokens, state, spare, drafts);
    Gemma4Assistant& a = *peers_[r - 1];
    a.draft_rank(a.round_tokens_, a.round_state_.view(), a.round_spare_.view(), a.round_drafts_.view());
  });
}

void Gemma4Assistant::draft_rank(const TensorView& tokens, TensorView& state, TensorView& spare,
                                 TensorView& drafts) {
  const int64_t k = drafts.rows(), R = drafts.cols();
  TANDEM_CHECK(tokens.numel() == R && state.rows() == R && spare.rows() == R && target_kv_);
  // Every input of the k steps is in backend memory at an address that is stable for this shape.
  const std::vector<int64_t> shape{R, k, rows_full_.block_tables.dim(0), rows_full_.block_tables.dim(1),
                                   rows_sliding_.block_tables.dim(1), reinterpret_cast<intptr_t>(target_kv_), reinterpret_cast<intptr_t>(tokens.data),
                                   reinterpret_cast<intptr_t>(state.data), reinterpret_cast<intptr_t>(spare.data),
                                   reinterpret_cast<intptr_t>(drafts.data)};
  recordings_.run(target_.backend(), shape, R, /*record=*/true, [&] {
    TensorView step_tokens = tokens;
    TensorView *in = &state, *out = &spare;
    for (int64_t j = 0; j < k; ++j) {
      TensorView row_drafts(DType::I32, drafts.as<int32_t>() + j * R, {R});
      step_rank(step_tokens, *in, *out, row_drafts, nullptr);
      step_tokens = row_drafts;  // step j+1 feeds each row its own draft and projected state
      std::swap(in, out);
    }
  });
}

void Gemma4Assistant::step(const TensorView& tokens, const TensorView& hidden, TensorView& next_hidden,
                           TensorView& drafts, HostTensor* logits) {
  if (!peers_.empty()) fail("a tensor-parallel drafter drafts whole rounds only (draft())");
  step_rank(tokens, hidden, next_hidden, drafts, logits);
}

void Gemma4Assistant::step_rank(const TensorView& tokens, const TensorView& hidden, TensorView& next_hidden,
                                TensorView& drafts, HostTensor* logits) {
  Backend& be = target_.backend();
  const ModelConfig& c = config_;
  const int64_t R = tokens.numel(), H = c.hidden, B = c.backbone_hidden, V = c.vocab_size;
  TANDEM_CHECK(target_kv_ && positions_.numel() == R && hidden.rows() == R && next_hidden.rows() == R);

  // input [R, 2B] = [target embedding(token) ; hidden] (embedding first).
  TensorView& input = input_.resize(DType::F32, {R, 2 * B});
  TensorView emb(DType::F32, input.data, {R, B}), state(DType::F32, input.as<float>() + B, {R, B});
  emb.row_stride = state.row_stride = 2 * B;
  target_.embed(tokens, emb);
  be.copy(hidden, state);
  TensorView& x = x_.resize(DType::F32, {R, H});
  be.matmul(input, pre_projection_, x);

  for (int i = 0; i < c.n_layers; ++i) {
    const bool full = c.layers[i].type == LayerType::full;
    Gemma4LayerInputs in;
    in.positions = &positions_;
    in.rows = full ? &rows_full_ : &rows_sliding_;
    in.kv = &target_kv_->layer(target_layers_[i]);
    in.inv_freq = full ? &inv_freq_full_.view() : &inv_freq_sliding_.view();
    // Each layer leaves the next one's normed input (the last: the final norm's output) in scratch_.normed.
    in.input_normed = i > 0;
    in.out_norm = i + 1 < c.n_layers ? &layers_[i + 1].input_norm : &final_norm_;
    gemma4_layer_forward(be, rank_config_, rank_config_.layers[i], layers_[i], in, x, scratch_);
  }
  const TensorView& normed = scratch_.normed.view();  // [R, H] = RMS(x; final_norm)
  be.matmul(normed, post_projection_, next_hidden);

  if (!c.ordered_embeddings) {
    TensorView& head = head_logits_.resize(DType::F32, {R, V});
    be.matmul(normed, head_, head);
    be.argmax_rows(head, nullptr, drafts);
    if (logits) *logits = to_host(be, head);
    return;
  }
  // Centroid head: score clusters, keep the top-k, score only their tokens.
  const int64_t C = c.num_centroids, K = c.centroid_top_k, per = V / C, N = K * per;
  TensorView& scores = cluster_scores_.resize(DType::F32, {R, C});
  be.matmul(normed, centroids_, scores);
  TensorView& clusters = clusters_.resize(DType::I32, {R, K});
  be.topk_rows(scores, clusters);
  TensorView& candidates = candidates_.resize(DType::I32, {R * K, per});  // token ids, row r's N in a row
  be.gather_rows(token_ordering_, clusters.reshaped({R * K}), candidates);
  // The candidates' rows of the tied table, in its stored dtype, scored row by row.
  TensorView& gathered = gathered_.resize(embed_.dtype, {R * N, H});
  be.gather_rows(embed_, candidates.reshaped({R * N}), gathered);
  TensorView& candidate_logits = head_logits_.resize(DType::F32, {R, N});
  for (int64_t r = 0; r < R; ++r) {
    TensorView out = candidate_logits.row_slice(r, r + 1);
    be.matmul(normed.row_slice(r, r + 1), gathered.row_slice(r * N, (r + 1) * N), out);
  }
  const TensorView candidate_ids = candidates.reshaped({R, N});
  be.argmax_rows(candidate_logits, &candidate_ids, drafts);
  if (!logits) return;
  const HostTensor values = to_host(be, candidate_logits), ids = to_host(be, candidate_ids);
  logits->resize(DType::F32, {R, V});
  for (int64_t r = 0; r < R; ++r) {
    const float* v = values.f32() + r * N;
    const int32_t* id = ids.view().as<int32_t>() + r * N;
    float* out = logits->f32() + r * V;
    std::fill(out, out + V, *std::min_element(v, v + N) - 1.0f);
    for (int64_t j = 0; j < N; ++j) out[id[j]] = v[j];
  }
}

}  // namespace tandem
