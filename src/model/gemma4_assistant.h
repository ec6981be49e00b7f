// The Gemma 4 "assistant" MTP drafter (gemma4_assistant): 4 Q-only layers that read the target's
// KV cache, fed concat(target embedding of a token, a B-wide hidden state) through pre_projection,
// with its own tied head (dense, or centroid-routed when use_ordered_embeddings) and a
// post_projection back to the target width for the next draft step.
#pragma once
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "model/config.h"
#include "model/gemma4.h"
#include "model/gemma4_layer.h"
#include "model/kv_cache.h"
#include "model/weights.h"

namespace tandem {

// Which query position the drafter uses within a round (frozen for all k steps), and how many
// committed keys its sliding layers see: vLLM's convention (tandem's default) queries at p-1 (the
// last token that has KV) over the last W keys; transformers' queries at p (the bonus token's own
// position) over the last W+1 keys.
enum class DraftPosition { vllm, hf };

// One drafter query row: a token, the B-wide state it starts from, and the committed target
// context (positions 0..committed-1 of the sequence with this block table).
struct AssistantRow {
  int32_t token = 0;
  const float* hidden = nullptr;  // [B]
  int32_t committed = 0;          // p
  const std::vector<int32_t>* block_table = nullptr;
};

class Gemma4Assistant {
 public:
  // Loads DIR as a drafter for `target` and checks that the pair fits (backbone width, vocabulary,
  // head dims and KV heads per layer type); a mismatch fails naming the field, both values and
  // both directories. Logs which target layer each drafter layer reads.
  static std::unique_ptr<Gemma4Assistant> load(const std::string& dir, Gemma4Model& target,
                                               LoadFormat format = LoadFormat::safetensors);

  const ModelConfig& config() const { return config_; }
  DraftPosition position_convention = DraftPosition::vllm;

  // One draft step for every row: next_hidden [R, B] = post_projection output (the state of the
  // next step) and the greedy token of each row. If `logits` is non-null it receives the full
  // [R, V] drafter logits (centroid head: masked entries hold the row's min - 1, as transformers).
  void step(std::span<const AssistantRow> rows, const KvCache& target_kv, HostTensor& next_hidden,
            std::vector<int32_t>& tokens, HostTensor* logits = nullptr);

  // Target layer whose cache drafter layer i reads.
  int target_layer(int i) const { return target_layers_[i]; }

 private:
  Gemma4Assistant(const ModelConfig& c, Gemma4Model& t) : config_(c), target_(t) {}

  ModelConfig config_;
  Gemma4Model& target_;
  Weights weights_;
  TensorView embed_, final_norm_, pre_projection_, post_projection_, centroids_;
  std::vector<int32_t> token_ordering_;  // [V] (centroid head)
  std::vector<Gemma4LayerWeights> layers_;
  std::vector<int> target_layers_;
  std::vector<float> inv_freq_sliding_, inv_freq_full_;

  HostTensor input_, x_, normed_, cluster_scores_, gathered_, candidate_logits_;
  Gemma4Scratch scratch_;
  std::vector<AttentionRow> rows_sliding_, rows_full_;
  std::vector<int32_t> positions_;
};

}  // namespace tandem
