// The Gemma 4 text model (target): gemma4 (multimodal wrapper, text under model.language_model.)
// and gemma4_text (Gemma4ForCausalLM, text under model.). Vision/audio towers are not loaded.
#pragma once
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "model/config.h"
#include "model/gemma4_layer.h"
#include "model/kv_cache.h"
#include "model/weights.h"

namespace tandem {

// A ragged batch: prefill chunks, decode tokens and verify blocks are all just rows.
struct ForwardBatch {
  std::vector<int32_t> tokens;                      // [T]
  std::vector<int32_t> positions;                   // [T] position of each row in its sequence
  std::vector<const std::vector<int32_t>*> tables;  // [T] block table of each row's sequence
  std::vector<int32_t> output_rows;                 // rows whose hidden state / logits are wanted

  void clear() { tokens.clear(), positions.clear(), tables.clear(), output_rows.clear(); }
  void add(int32_t token, int32_t position, const std::vector<int32_t>* table, bool output) {
    if (output) output_rows.push_back(static_cast<int32_t>(tokens.size()));
    tokens.push_back(token), positions.push_back(position), tables.push_back(table);
  }
  int32_t size() const { return static_cast<int32_t>(tokens.size()); }
};

class Gemma4Model {
 public:
  static std::unique_ptr<Gemma4Model> load(const std::string& dir, Backend& backend,
                                           LoadFormat format = LoadFormat::safetensors);
  static std::unique_ptr<Gemma4Model> load(const ModelConfig& config, Backend& backend, LoadFormat format);

  const ModelConfig& config() const { return config_; }
  Backend& backend() { return be_; }

  // Runs every row (writing its K/V into `kv` at its position; the row sees keys [0 or window
  // start, position] of its sequence). For the output rows, fills `hidden` [R, H] with the
  // final-normed hidden state and, if non-null, `logits` [R, V] (soft-capped).
  void forward(const ForwardBatch& batch, KvCache& kv, HostTensor* hidden, HostTensor* logits);

  // logits [R, V] = soft-cap(hidden [R, H] · headᵀ).
  void lm_head(const TensorView& hidden, TensorView& logits);
  // out [T, H] = embedding of ids, scaled as the model scales its inputs (what the drafter reads).
  void embed(std::span<const int32_t> ids, TensorView& out);

  int64_t parameter_count() const { return parameters_; }
  int64_t active_parameter_count() const { return active_parameters_; }
  int64_t weight_bytes() const { return weight_bytes_; }

 private:
  Gemma4Model(const ModelConfig& c, Backend& be) : config_(c), be_(be) {}
  void count_parameters();

  ModelConfig config_;
  Backend& be_;
  Weights weights_;
  TensorView embed_tokens_, final_norm_, lm_head_;
  float embed_scale_ = 1.0f;
  std::vector<Gemma4LayerWeights> layers_;
  std::vector<float> inv_freq_sliding_, inv_freq_full_;
  // Per-layer embeddings.
  TensorView ple_table_, ple_projection_, ple_norm_;
  float ple_scale_ = 1.0f;
  int64_t parameters_ = 0, active_parameters_ = 0, weight_bytes_ = 0;

  // Scratch.
  HostTensor x_, gathered_, ple_tokens_, ple_inputs_;
  Gemma4Scratch scratch_;
  std::vector<AttentionRow> rows_sliding_, rows_full_;
  std::vector<int64_t> slots_;
  std::vector<int32_t> ple_ids_;
};

}  // namespace tandem
