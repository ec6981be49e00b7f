// MTP drafting with a gemma4_assistant: k sequential drafter steps per round, all rows of the
// batch together, position and target-KV view frozen for the round.
#pragma once
#include <memory>

#include "engine/proposer.h"
#include "model/gemma4_assistant.h"

namespace tandem {

class MtpProposer : public Proposer {
 public:
  MtpProposer(std::unique_ptr<Gemma4Assistant> assistant, std::vector<int> stop_ids);
  std::string method() const override { return "mtp"; }
  // Leaves the drafts in backend memory (DraftRequest::device_count; device_drafts()).
  void propose(std::span<DraftRequest> requests, const KvCache& target_kv) override;
  const DeviceDrafts* device_drafts() const override { return &device_; }
  Gemma4Assistant& assistant() { return *assistant_; }

 private:
  std::unique_ptr<Gemma4Assistant> assistant_;
  // Backend memory: the round's tokens and states per step (ping-pong) and the drafts [k, R].
  Tensor tokens_, hidden_a_, hidden_b_, drafts_;
  DeviceDrafts device_;  // views drafts_; its stop ids are the target's EOS ids
};

}  // namespace tandem
