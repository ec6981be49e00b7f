// Speculative-decoding proposers (implemented in src/spec/): given sequences whose last token is
// the bonus token (sampled by the target, no KV yet), draft up to k next tokens each.
#pragma once
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
  std::vector<int32_t> drafts;                        // out: at most k tokens
};

class Proposer {
 public:
  virtual ~Proposer() = default;
  virtual std::string method() const = 0;  // "mtp", "draft_model", "ngram"
  // Drafts for every request (they may be drafted together as one batch).
  virtual void propose(std::span<DraftRequest> requests, const KvCache& target_kv) = 0;
  // A sequence finished or was aborted: drop any state kept for it.
  virtual void release(uint64_t seq_id) {}
};

}  // namespace tandem
