// Drafting with a small causal LM of the same vocabulary that keeps its own KV cache. Each round
// it catches up on the tokens the target committed since the last round (batched over sequences),
// then drafts greedily one token per step.
#pragma once
#include <map>
#include <memory>

#include "engine/proposer.h"
#include "model/gemma4.h"
#include "model/kv_cache.h"

namespace tandem {

class DraftModelProposer : public Proposer {
 public:
  explicit DraftModelProposer(std::unique_ptr<Gemma4Model> model, int64_t kv_bytes = 64ll << 20);
  std::string method() const override { return "draft_model"; }
  void propose(std::span<DraftRequest> requests, const KvCache& target_kv) override;
  void release(uint64_t seq_id) override;

 private:
  struct State {
    BlockTables tables;
    std::vector<int32_t> fed;  // tokens whose KV the drafter holds, in order
  };
  std::unique_ptr<Gemma4Model> model_;
  std::unique_ptr<KvCache> kv_;
  std::map<uint64_t, State> states_;
  Tensor greedy_;  // [R] I32 argmax of each step's logits
};

}  // namespace tandem
