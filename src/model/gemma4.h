// The Gemma 4 text model (target): gemma4 (multimodal wrapper, text under model.language_model.)
// and gemma4_text (Gemma4ForCausalLM, text under model.). Vision/audio towers are not loaded.
#pragma once
#include <algorithm>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "backend/staged_inputs.h"
#include "backend/step_recordings.h"
#include "model/config.h"
#include "model/gemma4_layer.h"
#include "model/kv_cache.h"
#include "model/weights.h"

namespace tandem {

// Rows [row, row + features.rows()) of a batch whose input embeddings are image features (the
// <|image|> placeholders of a prompt): they replace the token embeddings, unscaled.
struct EmbedOverride {
  int32_t row = 0;
  TensorView features;  // [n, H] F32, backend memory
};

// A ragged batch: prefill chunks, decode tokens and verify blocks are all just rows.
struct ForwardBatch {
  std::vector<int32_t> tokens;                      // [T]
  std::vector<int32_t> positions;                   // [T] position of each row in its sequence
  std::vector<const BlockTables*> tables;           // [T] block tables of each row's sequence
  std::vector<int32_t> output_rows;                 // rows whose hidden state / logits are wanted
  // [T] for a row inside an image block: the position just past the block (the row also sees the
  // block's later rows on the layer types the model makes bidirectional); 0 for other rows. All
  // rows of such a block are in the same batch.
  std::vector<int32_t> block_end;
  std::vector<EmbedOverride> embeds;
  // Rows whose token id is only in backend memory (drafts a proposer left there, so the verify step
  // needs no host round trip): row `row` takes device_tokens[index]; its `tokens` entry is a
  // placeholder. The model copies them on the backend inside the step.
  struct DeviceToken {
    int32_t row = 0, index = 0;
  };
  TensorView device_tokens;  // [N] I32, backend memory (dense)
  std::vector<DeviceToken> device_rows;

  void clear() {
    tokens.clear(), positions.clear(), tables.clear(), output_rows.clear(), block_end.clear(), embeds.clear();
    device_tokens = {}, device_rows.clear();
  }
  // A row whose token is device_tokens[index].
  void add_device(int32_t index, int32_t position, const BlockTables* table, bool output) {
    device_rows.push_back({size(), index});
    add(0, position, table, output);
  }
  void add(int32_t token, int32_t position, const BlockTables* table, bool output, int32_t image_block_end = 0) {
    if (output) output_rows.push_back(static_cast<int32_t>(tokens.size()));
    tokens.push_back(token), positions.push_back(position), tables.push_back(table), block_end.push_back(image_block_end);
  }
  int32_t size() const { return static_cast<int32_t>(tokens.size()); }
};

// The keys [begin, end) of its sequence a row at `position` attends to on one layer: causal, from
// position − window + 1 on sliding layers (window 0: full layers, from 0), and — for a row inside an
// image block (block_end > 0) on a layer type made bidirectional for images — on to the block's end.
struct KeyRange {
  int32_t begin = 0, end = 0;
};
inline KeyRange key_range(int32_t position, int32_t window, int32_t block_end, bool bidirectional) {
  const int32_t begin = window > 0 ? std::max(0, position - window + 1) : 0;
  return {begin, bidirectional ? std::max(position + 1, block_end) : position + 1};
}

// What a forward leaves in backend memory for its output rows, valid until the model's next forward.
struct ForwardOutput {
  TensorView hidden;  // [R, H] final-normed hidden states
  TensorView logits;  // [R, V] soft-capped logits (no data unless asked for)
};

class TensorParallelGroup;

class Gemma4Model {
 public:
  // online: --quantization (and --quantize-lm-head), applied at load to a bf16 checkpoint.
  // shard: the tensor-parallel rank this model is (its slice of the weights is all it loads); the
  // backend must then hold that rank's communicator, and every rank runs each step
  // (TensorParallelGroup). The default, rank 0 of 1, is the whole model.
  static std::unique_ptr<Gemma4Model> load(const std::string& dir, Backend& backend,
                                           LoadFormat format = LoadFormat::safetensors, const OnlineQuant& online = {},
                                           const Shard& shard = {});
  static std::unique_ptr<Gemma4Model> load(const ModelConfig& config, Backend& backend, LoadFormat format,
                                           const OnlineQuant& online = {}, const Shard& shard = {});

  const ModelConfig& config() const { return config_; }
  // The shapes this rank computes with (shard_config): what its KV cache is sized by.
  const ModelConfig& rank_config() const { return rank_config_; }
  const Shard& shard() const { return shard_; }
  // The group this model is rank 0 of (it then leads the other ranks through each step), or nullptr.
  TensorParallelGroup* group() const { return group_; }
  Backend& backend() { return be_; }

  // Runs every row (writing its K/V into `kv` at its position; the row sees keys [0 or window
  // start, position] of its sequence), with one upload of the step's inputs and no host round trip.
  // Returns the output rows' final-normed hidden states and, if want_logits, their logits.
  // On rank 0 of a TensorParallelGroup: every rank runs the step, rank r over its own storage of
  // kv's blocks (TensorParallelGroup::cache); kv (sized by rank_config()) is rank 0's.
  ForwardOutput run(const ForwardBatch& batch, KvCache& kv, bool want_logits);
  // run(), then copies to the host (tools and tests): hidden [R, H], and logits [R, V] if non-null.
  void forward(const ForwardBatch& batch, KvCache& kv, HostTensor* hidden, HostTensor* logits);

  // logits [R, V] = soft-cap(hidden [R, H] · headᵀ).
  void lm_head(const TensorView& hidden, TensorView& logits);
  // out [T, H] = embedding of ids [T] I32 (backend memory), scaled as the model scales its inputs
  // (what the drafter reads).
  void embed(const TensorView& ids, TensorView& out);

  // Byte model of one step (`tandem bench step`, `tandem plan`): weight bytes a forward must read when
  // layer i's rows were routed to experts_per_layer[i] distinct experts (ignored for dense models):
  // every non-expert weight, that many experts' gate_up + down, the final norm and the head.
  int64_t step_weight_bytes(std::span<const int> experts_per_layer) const;
  // While non-null, run() appends each MoE layer's expert ids [T, top_k] here (a host copy per layer:
  // for measuring, never in a timed step).
  void record_routing(std::vector<std::vector<int32_t>>* record) { routing_record_ = record; }

  // Which layer types let an image-block row see the rest of its block (defaults from the config:
  // transformers' behaviour; `tandem --image-attention` changes it).
  // (On rank 0 of a group: every rank's.)
  void set_image_attention(bool sliding, bool full);

  int64_t parameter_count() const { return parameters_; }
  int64_t active_parameter_count() const { return active_parameters_; }
  int64_t weight_bytes() const { return weight_bytes_; }

 private:
  Gemma4Model(const ModelConfig& c, const Shard& shard, Backend& be)
      : config_(c), rank_config_(shard_config(c, shard.size)), shard_(shard), be_(be), token_map_(be), ple_map_(be),
        inputs_(be), merged_tokens_(be), merged_ple_ids_(be), x_(be), hidden_(be), logits_(be), ple_tokens_(be),
        ple_inputs_(be),
        scratch_(be), inv_freq_sliding_(be), inv_freq_full_(be) {}
  friend class TensorParallelGroup;
  void count_parameters();
  // run() of this rank alone.
  ForwardOutput run_rank(const ForwardBatch& batch, KvCache& kv, bool want_logits);
  // The recorded part of run(): embedding, layers, final norm and head of the staged step.
  void issue_layers(int64_t T, const ForwardOutput& out);

  ModelConfig config_, rank_config_;
  Shard shard_;
  TensorParallelGroup* group_ = nullptr;
  Backend& be_;
  Weights weights_;
  TensorView embed_tokens_, final_norm_, lm_head_;
  float embed_scale_ = 1.0f;
  std::vector<Gemma4LayerWeights> layers_;
  // Per-layer embeddings.
  TensorView ple_table_, ple_projection_, ple_norm_;
  float ple_scale_ = 1.0f;
  int64_t parameters_ = 0, active_parameters_ = 0, weight_bytes_ = 0;
  bool own_head_ = false;  // an untied lm_head.weight (not the embedding, nor a quantized copy of it)
  std::vector<std::vector<int32_t>>* routing_record_ = nullptr;
  // [V, 1] I32: the id each token is looked up as, in the embedding and the per-layer table (what
  // run() applies on the host), for rows whose token is in backend memory.
  Tensor token_map_, ple_map_;

  // Per-step inputs (views into one uploaded buffer) and scratch, all in backend memory.
  StagedInputs inputs_;
  TensorView tokens_, positions_, slots_full_, slots_sliding_, output_rows_, ple_ids_;
  // A step with device token rows: the staged [T + N] host ids (tail filled on the backend), the
  // [T] index that merges them, the batch's device tokens, and the merged ids tokens_ / ple_ids_ view.
  TensorView combined_tokens_, combined_ple_ids_, token_index_, device_tokens_;
  Tensor merged_tokens_, merged_ple_ids_;
  AttentionRows rows_sliding_, rows_full_;
  Tensor x_, hidden_, logits_, ple_tokens_, ple_inputs_;
  Gemma4Scratch scratch_;
  Tensor inv_freq_sliding_, inv_freq_full_;
  KvCache* kv_ = nullptr;  // the staged step's cache
  const std::vector<EmbedOverride>* embeds_ = nullptr;  // the staged step's image rows
  StepRecordings recordings_;
};

}  // namespace tandem
