#include "spec/draft_model_proposer.h"

#include <algorithm>
#include <cstdint>

namespace tandem {

DraftModelProposer::DraftModelProposer(std::unique_ptr<Gemma4Model> model, int64_t kv_bytes)
    : model_(std::move(model)), greedy_(model_->backend()) {
  // Both groups the same number of blocks (the proposer does not know how many sequences it serves);
  // sliding blocks behind the window are still released as the sequences advance.
  const KvSizing sizing = kv_sizing(model_->config(), 16);
  kv_ = std::make_unique<KvCache>(model_->backend(), model_->config(), sizing.split(kv_bytes, INT64_MAX), 16);
}

void DraftModelProposer::release(uint64_t seq_id) {
  auto it = states_.find(seq_id);
  if (it == states_.end()) return;
  kv_->release_all(it->second.tables);
  states_.erase(it);
}

void DraftModelProposer::propose(std::span<DraftRequest> requests, const KvCache&) {
  // Step 0: feed every token the drafter has not seen (it may have fed drafts the target
  // rejected: keep only the common prefix), up to and including the bonus token.
  ForwardBatch batch;
  std::vector<DraftRequest*> active;
  for (DraftRequest& r : requests) {
    r.drafts.clear();
    if (r.k <= 0) continue;
    State& s = states_[r.seq_id];
    const auto& tokens = *r.tokens;
    size_t common = 0;
    while (common < s.fed.size() && common < tokens.size() && s.fed[common] == tokens[common]) ++common;
    s.fed.resize(common);
    if (!kv_->reserve(s.tables, static_cast<int64_t>(common), static_cast<int64_t>(tokens.size()) + r.k))
      continue;  // no room: no drafts
    for (size_t i = common; i < tokens.size(); ++i) {
      batch.add(tokens[i], static_cast<int32_t>(i), &s.tables, i + 1 == tokens.size());
      s.fed.push_back(tokens[i]);
    }
    active.push_back(&r);
  }
  Backend& be = model_->backend();
  for (int step = 0; !active.empty(); ++step) {
    const ForwardOutput out = model_->run(batch, *kv_, true);
    batch.clear();
    TensorView& ids = greedy_.resize(DType::I32, {static_cast<int64_t>(active.size())});
    be.argmax_rows(out.logits, nullptr, ids);
    const HostTensor tokens = to_host(be, ids);
    std::vector<DraftRequest*> still;
    for (size_t a = 0; a < active.size(); ++a) {
      DraftRequest& r = *active[a];
      const int32_t token = tokens.view().as<int32_t>()[a];
      r.drafts.push_back(token);
      if (static_cast<int>(r.drafts.size()) < r.k) {
        State& s = states_[r.seq_id];
        batch.add(token, static_cast<int32_t>(s.fed.size()), &s.tables, true);
        s.fed.push_back(token);
        still.push_back(&r);
      }
    }
    active.swap(still);
  }
}

}  // namespace tandem
