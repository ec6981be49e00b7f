// Prompt-lookup drafting (vLLM's "ngram"): find the most recent earlier occurrence of the
// sequence's last n tokens (n from prompt_lookup_max down to prompt_lookup_min) and propose the
// tokens that followed it.
#pragma once
#include "engine/proposer.h"

namespace tandem {

class NgramProposer : public Proposer {
 public:
  NgramProposer(int min_n, int max_n) : min_n_(min_n), max_n_(max_n) {}
  std::string method() const override { return "ngram"; }
  void propose(std::span<DraftRequest> requests, const KvCache& target_kv) override;

 private:
  int min_n_, max_n_;
};

// The lookup itself, for one token sequence.
std::vector<int32_t> ngram_lookup(std::span<const int32_t> tokens, int min_n, int max_n, int k);

}  // namespace tandem
