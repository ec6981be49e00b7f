// Shared helpers for the grammar tests.
#pragma once
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "grammar/grammar.h"
#include "grammar/matcher.h"

namespace tandem::grammar::testing {

// 256 single-byte tokens (id = byte) and a stop token (id 256).
inline std::shared_ptr<const Vocabulary> byte_vocab() {
  static const auto v = [] {
    std::vector<std::string> t;
    for (int b = 0; b < 256; ++b) t.push_back(std::string(1, static_cast<char>(b)));
    t.push_back("<eos>");
    return std::make_shared<const Vocabulary>(std::move(t), std::vector<int32_t>{256});
  }();
  return v;
}

// Whether the grammar matches `s` exactly (fed byte by byte, then the end).
inline bool full_match(const CompiledGrammar& g, const std::string& s) {
  GrammarMatcher m(g);
  return m.accept_string(s) && m.can_terminate();
}
inline bool prefix_ok(const CompiledGrammar& g, const std::string& s) {
  GrammarMatcher m(g);
  return m.accept_string(s);
}

// The mask computed by brute force: every token fed to a copy of the matcher.
inline std::vector<uint32_t> brute_mask(GrammarMatcher& m) {
  const Vocabulary& v = m.grammar().vocabulary();
  std::vector<uint32_t> w(v.bitmask_words(), 0);
  for (int32_t id = 0; id < v.size(); ++id) {
    if (m.accept_token(id)) {
      w[id >> 5] |= 1u << (id & 31);
      m.rollback(1);
    }
  }
  return w;
}
inline std::vector<uint32_t> fast_mask(GrammarMatcher& m) {
  std::vector<uint32_t> w(m.grammar().vocabulary().bitmask_words(), 0xDEADBEEF);
  m.fill_next_token_bitmask(w.data());
  return w;
}
inline std::vector<int32_t> allowed_ids(const std::vector<uint32_t>& w, int32_t n) {
  std::vector<int32_t> ids;
  for (int32_t id = 0; id < n; ++id)
    if (bitmask_allows(w.data(), id)) ids.push_back(id);
  return ids;
}

}  // namespace tandem::grammar::testing
