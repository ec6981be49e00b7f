#include "spec/mtp_proposer.h"

#include <algorithm>

namespace tandem {

MtpProposer::MtpProposer(std::unique_ptr<Gemma4Assistant> assistant, std::vector<int> stop_ids)
    : assistant_(std::move(assistant)),
      stop_ids_(std::move(stop_ids)),
      tokens_(assistant_->backend()),
      hidden_a_(assistant_->backend()),
      hidden_b_(assistant_->backend()),
      drafts_(assistant_->backend()) {}

void MtpProposer::propose(std::span<DraftRequest> requests, const KvCache& target_kv) {
  // Every drafting row runs all k_max steps of the round (a fixed shape; rows that need fewer drafts
  // or draft a stop token are trimmed afterwards), so the steps queue on the backend back to back and
  // the drafts come back with a single download.
  std::vector<DraftRequest*> active;
  std::vector<AssistantRow> rows;
  int k_max = 0;
  for (DraftRequest& r : requests) {
    r.drafts.clear();
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
  const HostTensor host = to_host(be, drafts);
  for (int64_t a = 0; a < R; ++a) {
    DraftRequest& r = *active[a];
    for (int j = 0; j < r.k; ++j) {
      const int32_t token = host.view().as<int32_t>()[j * R + a];
      r.drafts.push_back(token);
      if (std::find(stop_ids_.begin(), stop_ids_.end(), token) != stop_ids_.end()) break;
    }
  }
}

}  // namespace tandem
