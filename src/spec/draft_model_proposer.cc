#include "spec/draft_model_proposer.h"

#include <algorithm>
#include <cstdint>

namespace tandem {

DraftModelProposer::DraftModelProposer(std::unique_ptr<Gemma4Model> model, int64_t kv_bytes)
    : model_(std::move(model)), drafts_(model_->backend()) {
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
  // rejected: keep only the common prefix), up to and including the bonus token. Every drafting
  // row then runs all k_max steps (a fixed shape; a row that needs fewer drafts takes the first k),
  // step j reading row j-1 of the drafts on the backend, so no step waits for the host.
  int k_max = 0;
  for (DraftRequest& r : requests) {
    r.drafts.clear(), r.device_count = 0;
    k_max = std::max(k_max, r.k);
  }
  ForwardBatch batch;
  std::vector<DraftRequest*> active;
  for (DraftRequest& r : requests) {
    if (r.k <= 0) continue;
    State& s = states_[r.seq_id];
    const auto& tokens = *r.tokens;
    size_t common = 0;
    while (common < s.fed.size() && common < tokens.size() && s.fed[common] == tokens[common]) ++common;
    s.fed.resize(common);
    if (!kv_->reserve(s.tables, static_cast<int64_t>(common), static_cast<int64_t>(tokens.size()) + k_max))
      continue;  // no room: no drafts
    for (size_t i = common; i < tokens.size(); ++i) {
      batch.add(tokens[i], static_cast<int32_t>(i), &s.tables, i + 1 == tokens.size());
      s.fed.push_back(tokens[i]);
    }
    active.push_back(&r);
  }
  if (active.empty()) return;
  Backend& be = model_->backend();
  const int64_t R = static_cast<int64_t>(active.size());
  TensorView& drafts = drafts_.resize(DType::I32, {k_max, R});
  unseen_.clear();
  for (int j = 0; j < k_max; ++j) {
    if (j > 0) {  // row a feeds its previous draft, drafts[j - 1, a]
      batch.clear();
      batch.device_tokens = TensorView(DType::I32, drafts.as<int32_t>() + (j - 1) * R, {R});
      for (int64_t a = 0; a < R; ++a) {
        State& s = states_[active[a]->seq_id];
        unseen_.push_back({active[a]->seq_id, s.fed.size(), static_cast<int32_t>((j - 1) * R + a)});
        batch.add_device(static_cast<int32_t>(a), static_cast<int32_t>(s.fed.size()), &s.tables, true);
        s.fed.push_back(-1);
      }
    }
    const ForwardOutput out = model_->run(batch, *kv_, true);
    TensorView step(DType::I32, drafts.as<int32_t>() + j * R, {R});
    be.argmax_rows(out.logits, nullptr, step);
  }
  device_.ids = drafts.reshaped({k_max * R});
  device_.stride = static_cast<int32_t>(R);
  for (int64_t a = 0; a < R; ++a)
    active[a]->device_count = active[a]->k, active[a]->device_index = static_cast<int32_t>(a);
}

void DraftModelProposer::drafts_arrived(std::span<const int32_t> ids) {
  for (const Fed& f : unseen_) {
    auto it = states_.find(f.seq_id);
    if (it != states_.end() && f.position < it->second.fed.size() && it->second.fed[f.position] == -1)
      it->second.fed[f.position] = ids[f.index];
  }
  unseen_.clear();
}

}  // namespace tandem
