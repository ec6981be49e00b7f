#include "spec/mtp_proposer.h"

#include <algorithm>
#include <utility>

namespace tandem {

MtpProposer::MtpProposer(std::unique_ptr<Gemma4Assistant> assistant, std::vector<int> stop_ids)
    : assistant_(std::move(assistant)),
      tokens_(assistant_->backend()),
      hidden_a_(assistant_->backend()),
      hidden_b_(assistant_->backend()),
      drafts_(assistant_->backend()) {
  device_.stop_ids = std::move(stop_ids);
}

void MtpProposer::propose(std::span<DraftRequest> requests, const KvCache& target_kv) {
  // Every drafting row runs all k_max steps of the round (a fixed shape; rows that need fewer drafts
  // take the first k, and a row's drafts are cut at a stop token once on the host), so the steps
  // queue on the backend back to back. The drafts stay there: the engine's verify step reads them and
  // they come back with its result.
  std::vector<DraftRequest*> active;
  std::vector<AssistantRow> rows;
  int k_max = 0;
  for (DraftRequest& r : requests) {
    r.drafts.clear();
    r.device_count = 0;
    if (r.k <= 0 || !r.target_hidden.data) continue;
    active.push_back(&r);
    rows.push_back({r.committed, r.tables});
    k_max = std::max(k_max, r.k);
  }
  if (active.empty()) return;
  Backend& be = assistant_->backend();
  const int64_t R = static_cast<int64_t>(active.size()), B = assistant_->config().backbone_hidden;
  assistant_->begin_round(rows, target_kv);
  std::vector<int32_t> bonus(R);
  for (int64_t a = 0; a < R; ++a) bonus[a] = active[a]->tokens->back();
  upload_to(be, bonus.data(), tokens_.resize(DType::I32, {R}));
  TensorView& state = hidden_a_.resize(DType::F32, {R, B});
  for (int64_t a = 0; a < R; ++a) {
    TensorView row = state.row_slice(a, a + 1);
    be.copy(active[a]->target_hidden, row);
  }
  TensorView& spare = hidden_b_.resize(DType::F32, {R, B});
  TensorView& drafts = drafts_.resize(DType::I32, {k_max, R});
  assistant_->draft(tokens_.view(), state, spare, drafts);
  device_.ids = drafts.reshaped({k_max * R});
  device_.stride = static_cast<int32_t>(R);
  for (int64_t a = 0; a < R; ++a)
    active[a]->device_count = active[a]->k, active[a]->device_index = static_cast<int32_t>(a);
}

}  // namespace tandem
