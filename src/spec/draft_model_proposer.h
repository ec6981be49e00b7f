// Drafting with a small causal LM of the same vocabulary that keeps its own KV cache. Each round
// it catches up on the tokens the target committed since the last round (batched over sequences),
// then drafts greedily one token per step, each step's argmax fed to the next on the backend: the
// drafts stay there (device_drafts) and the proposer learns them when the engine has them.
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
  const DeviceDrafts* device_drafts() const override { return &device_; }
  void drafts_arrived(std::span<const int32_t> ids) override;
  void release(uint64_t seq_id) override;

 private:
  struct State {
    BlockTables tables;
    std::vector<int32_t> fed;  // tokens whose KV the drafter holds, in order (-1: a draft not seen yet)
  };
  // A draft the drafter fed: position `position` of sequence `seq_id` holds device_.ids[index].
  struct Fed {
    uint64_t seq_id;
    size_t position;
    int32_t index;
  };
  std::unique_ptr<Gemma4Model> model_;
  std::unique_ptr<KvCache> kv_;
  std::map<uint64_t, State> states_;
  Tensor drafts_;  // [k, R] I32 each step's argmax
  DeviceDrafts device_;
  std::vector<Fed> unseen_;  // the last round's fed drafts, filled in by drafts_arrived
};

}  // namespace tandem
