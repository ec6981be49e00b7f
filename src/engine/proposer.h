// Speculative-decoding proposers (implemented in src/spec/): given sequences whose last token is
// the bonus token (sampled by the target, no KV yet), draft up to k next tokens each.
#pragma once
#include <algorithm>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "model/kv_cache.h"

namespace tandem {

struct DraftRequest {
  uint64_t seq_id = 0;
  const std::vector<int32_t>* tokens = nullptr;       // prompt + generated; back() is the bonus token
  int32_t committed = 0;                              // p: positions 0..p-1 have target KV (= tokens.size() - 1)
  const BlockTables* tables = nullptr;                // the sequence's target KV pages
  TensorView target_hidden;                           // [1, H] target final-normed hidden at position p-1
                                                      // (backend memory; no data when unknown)
  int k = 0;                                          // drafts wanted
  std::vector<int32_t> drafts;                        // out: at most k tokens, on the host
  // out, instead of `drafts`: device_count (at most k) drafts left in backend memory, draft j at
  // element device_index + j · stride of the proposer's DeviceDrafts::ids. They are not cut at a
  // stop id yet (host_drafts does that once they reach the host).
  int device_count = 0;
  int32_t device_index = 0;
};

// Drafts a proposer leaves in backend memory, so that the verify step reads them there and they reach
// the host in the download of the verify's sampled ids: one host wait per round.
struct DeviceDrafts {
  TensorView ids;       // [N] I32 (dense), valid until the proposer's next propose()
  int32_t stride = 1;   // elements between a request's consecutive drafts
  std::vector<int> stop_ids;  // a request's drafts end at (and include) the first of these
};

// A request's device drafts as the host sees them, from `ids`, a host copy of DeviceDrafts::ids: the
// `count` from element `index` on, up to and including the first stop id.
inline std::vector<int32_t> host_drafts(const DeviceDrafts& d, const int32_t* ids, int32_t index, int count) {
  std::vector<int32_t> drafts;
  for (int j = 0; j < count; ++j) {
    drafts.push_back(ids[index + static_cast<int64_t>(j) * d.stride]);
    if (std::find(d.stop_ids.begin(), d.stop_ids.end(), drafts.back()) != d.stop_ids.end()) break;
  }
  return drafts;
}

class Proposer {
 public:
  virtual ~Proposer() = default;
  virtual std::string method() const = 0;  // "mtp", "draft_model", "ngram"
  // Drafts for every request (they may be drafted together as one batch).
  virtual void propose(std::span<DraftRequest> requests, const KvCache& target_kv) = 0;
  // Where requests with a device_count find their drafts after propose(); null when drafts are always
  // returned on the host.
  virtual const DeviceDrafts* device_drafts() const { return nullptr; }
  // The host copy of device_drafts()->ids, once the engine has it (with the verify's sampled ids, or
  // before the verify when a grammar needs the drafts): for a proposer that keeps what it drafted.
  virtual void drafts_arrived(std::span<const int32_t> ids) {}
  // A sequence finished or was aborted: drop any state kept for it.
  virtual void release(uint64_t seq_id) {}
};

}  // namespace tandem
