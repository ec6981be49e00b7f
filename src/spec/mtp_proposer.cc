#include "spec/mtp_proposer.h"

#include <algorithm>

namespace tandem {

void MtpProposer::propose(std::span<DraftRequest> requests, const KvCache& target_kv) {
  // Rows still drafting, with their index into `requests`; step j feeds each row its previous
  // draft and the drafter's own projected state.
  std::vector<size_t> active;
  std::vector<AssistantRow> rows;
  for (size_t i = 0; i < requests.size(); ++i) {
    requests[i].drafts.clear();
    if (requests[i].k > 0 && requests[i].target_hidden) active.push_back(i);
  }
  const int64_t B = assistant_->config().backbone_hidden;
  std::vector<int32_t> tokens;
  HostTensor* state = nullptr;  // [active, B] from the previous step
  for (int j = 0; !active.empty(); ++j) {
    rows.clear();
    for (size_t a = 0; a < active.size(); ++a) {
      const DraftRequest& r = requests[active[a]];
      AssistantRow row;
      row.token = j == 0 ? r.tokens->back() : r.drafts.back();
      row.hidden = j == 0 ? r.target_hidden : state->f32() + static_cast<int64_t>(a) * B;
      row.committed = r.committed;
      row.block_table = r.block_table;
      rows.push_back(row);
    }
    HostTensor& next = (state == &hidden_a_) ? hidden_b_ : hidden_a_;
    assistant_->step(rows, target_kv, next, tokens);
    // Keep rows that want more drafts and did not draft a stop token; compact their states.
    std::vector<size_t> still;
    int64_t kept = 0;
    for (size_t a = 0; a < active.size(); ++a) {
      DraftRequest& r = requests[active[a]];
      r.drafts.push_back(tokens[a]);
      const bool stop = std::find(stop_ids_.begin(), stop_ids_.end(), tokens[a]) != stop_ids_.end();
      if (static_cast<int>(r.drafts.size()) < r.k && !stop) {
        if (kept != static_cast<int64_t>(a))
          std::copy(next.f32() + a * B, next.f32() + (a + 1) * B, next.f32() + kept * B);
        ++kept;
        still.push_back(active[a]);
      }
    }
    active.swap(still);
    state = &next;
  }
}

}  // namespace tandem
