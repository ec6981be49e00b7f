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
#include "backend/step_recordings.h"
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

// One drafter query row of a round: the committed target context (positions 0..committed-1 of the
// sequence with these block tables). Its token and B-wide state change every step; its position and
// key ranges do not.
struct AssistantRow {
  int32_t committed = 0;  // p
  const BlockTables* tables = nullptr;
};

class Gemma4Assistant {
 public:
  // Loads DIR as a drafter for `target` and checks that the pair fits (backbone width, vocabulary,
  // head dims and KV heads per layer type); a mismatch fails naming the field, both values and
  // both directories. Logs which target layer each drafter layer reads.
  // online: speculative_config's "quantization" (and "quantize_lm_head": a quantized copy of the tied
  // table for the head matmul), applied at load to a bf16 drafter.
  // A target that leads a TensorParallelGroup gets a drafter sharded alike (its layers read each
  // rank's KV heads, so it cannot be replicated): one per rank, this one leading the others through
  // begin_round() and draft().
  static std::unique_ptr<Gemma4Assistant> load(const std::string& dir, Gemma4Model& target,
                                               LoadFormat format = LoadFormat::safetensors,
                                               const OnlineQuant& online = {});

  const ModelConfig& config() const { return config_; }
  Backend& backend() { return target_.backend(); }
  DraftPosition position_convention = DraftPosition::vllm;

  // Plans a round for these rows over the target's cache: positions and key ranges are fixed for all
  // of its steps, so they are uploaded once here.
  void begin_round(std::span<const AssistantRow> rows, const KvCache& target_kv);
  // (step() is one rank's: a tensor-parallel drafter refuses it; its rounds go through draft().)
  // One draft step for every row of the round, all in backend memory: from tokens [R] I32 and
  // states hidden [R, B], writes next_hidden [R, B] = post_projection output (the state of the next
  // step) and drafts [R] I32, the greedy token of each row. No host round trip, so a round's k steps
  // queue back to back. If `logits` is non-null it receives the full [R, V] drafter logits on the
  // host (centroid head: masked entries hold the row's min - 1, as transformers).
  void step(const TensorView& tokens, const TensorView& hidden, TensorView& next_hidden, TensorView& drafts,
            HostTensor* logits = nullptr);
  // The round's k = drafts.rows() steps: step j reads the drafts and states of step j-1 (step 0: tokens
  // [R] and state [R, B]); writes drafts [k, R]. `state` and `spare` [R, B] are overwritten. A round of
  // a shape seen before replays as one recorded sequence of ops (a CUDA graph).
  void draft(const TensorView& tokens, TensorView& state, TensorView& spare, TensorView& drafts);

  // Weight bytes one draft step reads: its layers, projections, final norm and head (dense: the whole
  // tied table; centroid head: the centroids and the top-k clusters' rows).
  int64_t step_weight_bytes() const;
  int64_t weight_bytes() const { return weights_.bound_bytes(); }

  // Target layer whose cache drafter layer i reads.
  int target_layer(int i) const { return target_layers_[i]; }

 private:
  Gemma4Assistant(const ModelConfig& c, Gemma4Model& t)
      : config_(c), rank_config_(shard_config(c, t.shard().size)), target_(t), round_tokens_(t.backend()),
        round_state_(t.backend()), round_spare_(t.backend()), round_drafts_(t.backend()),
        token_ordering_(t.backend()), inv_freq_sliding_(t.backend()),
        inv_freq_full_(t.backend()), inputs_(t.backend()), input_(t.backend()), x_(t.backend()),
        head_logits_(t.backend()), cluster_scores_(t.backend()), clusters_(t.backend()), candidates_(t.backend()),
        gathered_(t.backend()), scratch_(t.backend()) {}

  // One rank's drafter for target (that rank's model).
  // (target_layers: as target_layers_.)
  static std::unique_ptr<Gemma4Assistant> load_rank(const ModelConfig& c, Gemma4Model& target,
                                                    const std::vector<int>& target_layers, LoadFormat format,
                                                    const OnlineQuant& online);
  void begin_round_rank(std::span<const AssistantRow> rows, const KvCache& target_kv);
  void draft_rank(const TensorView& tokens, TensorView& state, TensorView& spare, TensorView& drafts);
  void step_rank(const TensorView& tokens, const TensorView& hidden, TensorView& next_hidden, TensorView& drafts,
                 HostTensor* logits);

  ModelConfig config_, rank_config_;  // rank_config_: this rank's heads and widths (shard_config)
  Gemma4Model& target_;
  // Ranks 1… of a tensor-parallel drafter (on rank 0 only), and, on those, their own copies of a
  // round's inputs and outputs (every rank writes its states and drafts).
  std::vector<std::unique_ptr<Gemma4Assistant>> peers_;
  Tensor round_tokens_, round_state_, round_spare_, round_drafts_;
  Weights weights_;
  TensorView embed_, final_norm_, pre_projection_, post_projection_, centroids_;
  TensorView head_;  // the full head's weight: embed_, or its quantized copy
  Tensor token_ordering_;  // [C, V / C] I32: the tokens of each centroid (centroid head)
  std::vector<Gemma4LayerWeights> layers_;
  std::vector<int> target_layers_;
  Tensor inv_freq_sliding_, inv_freq_full_;

  // The round's plan (uploaded once by begin_round) and per-step scratch, in backend memory.
  const KvCache* target_kv_ = nullptr;
  StagedInputs inputs_;
  TensorView positions_;
  AttentionRows rows_sliding_, rows_full_;
  Tensor input_, x_, head_logits_, cluster_scores_, clusters_, candidates_, gathered_;
  Gemma4Scratch scratch_;
  StepRecordings recordings_;
};

}  // namespace tandem
