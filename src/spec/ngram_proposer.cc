#include "spec/ngram_proposer.h"

#include <algorithm>

namespace tandem {

std::vector<int32_t> ngram_lookup(std::span<const int32_t> tokens, int min_n, int max_n, int k) {
  const int len = static_cast<int>(tokens.size());
  for (int n = std::min(max_n, len - 1); n >= min_n; --n) {
    const auto suffix = tokens.subspan(len - n);
    // Latest start s < len - n whose n tokens equal the suffix and that has a continuation.
    for (int s = len - n - 1; s >= 0; --s) {
      if (!std::equal(suffix.begin(), suffix.end(), tokens.begin() + s)) continue;
      const int from = s + n, to = std::min(len, from + k);
      return std::vector<int32_t>(tokens.begin() + from, tokens.begin() + to);
    }
  }
  return {};
}

void NgramProposer::propose(std::span<DraftRequest> requests, const KvCache&) {
  for (DraftRequest& r : requests) r.drafts = ngram_lookup(*r.tokens, min_n_, max_n_, r.k);
}

}  // namespace tandem
