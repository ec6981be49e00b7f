// Token masks against brute force, rollback, drafts, stop and special tokens.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "helpers.h"
#include "util/error.h"

namespace tandem::grammar {
namespace {

using namespace testing;

// A small vocabulary with multi-byte tokens that cross JSON token boundaries, partial UTF-8,
// duplicate tokens, a special token, an empty token and a stop token.
std::shared_ptr<const Vocabulary> mixed_vocab(int32_t* stop = nullptr, int32_t* special = nullptr) {
  std::vector<std::string> t;
  const std::string alphabet = "{}[]:,\"\\ \n-+.0123456789abcdeflnrstuxyzE/";
  for (char c : alphabet) t.push_back(std::string(1, c));  // duplicates of the byte tokens below
  // Every byte is a token (as with byte fallback), so the vocabulary never strands a state.
  for (int b = 1; b < 256; ++b) t.push_back(std::string(1, static_cast<char>(b)));
  for (const char* s : {"true", "false", "null", "\":", "\": ", "\",", "\", \"", "{\"", "\"}", "}]", "},", "[{", "]}",
                        "\\n", "\\u00", "\\\"", "é", "日本", "\xC3", "\xA9", "\xE6\x97", "ab", "abc", " \"", "\n  ",
                        "12", "0.", "e+", "1e", "-1", "name", "\"name", "type", "\"type\":", "\"a\":1,", "x\"", "\"x",
                        "::", "  ", "\"\"", "[]", "{}", "1,", "1]", "1}", "cat", "dog", "ca", "cats"})
    t.push_back(s);
  std::mt19937 rng(7);
  const std::string pool = "ab\":{},[] 1";
  for (int i = 0; i < 60; ++i) {
    std::string s;
    int n = 2 + rng() % 4;
    for (int k = 0; k < n; ++k) s += pool[rng() % pool.size()];
    t.push_back(s);
  }
  t.push_back("<special>");
  int32_t sp = static_cast<int32_t>(t.size()) - 1;
  t.push_back("");  // an id with no bytes
  t.push_back("<eos>");
  int32_t eos = static_cast<int32_t>(t.size()) - 1;
  if (stop) *stop = eos;
  if (special) *special = sp;
  return std::make_shared<const Vocabulary>(std::move(t), std::vector<int32_t>{eos}, std::vector<int32_t>{sp});
}

// Random walk: at every step the fast mask must equal brute force; then a random allowed token.
void walk_and_compare(const CompiledGrammar& g, uint32_t seed, int steps) {
  GrammarMatcher m(g);
  std::mt19937 rng(seed);
  const int32_t V = g.vocabulary().size();
  for (int s = 0; s < steps; ++s) {
    auto fast = fast_mask(m);
    auto brute = brute_mask(m);
    ASSERT_EQ(allowed_ids(fast, V), allowed_ids(brute, V)) << "step " << s << " seed " << seed;
    auto ids = allowed_ids(fast, V);
    ASSERT_FALSE(ids.empty()) << "stuck at step " << s;
    int32_t id = ids[rng() % ids.size()];
    ASSERT_TRUE(m.accept_token(id));
    if (m.is_terminated()) break;
  }
}

TEST(Masks, MatchBruteForceJsonSchema) {
  auto v = mixed_vocab();
  auto g = compile_json_schema(R"({"type":"object","properties":{"name":{"type":"string","maxLength":5},
      "type":{"enum":["cat","dog"]},"a":{"type":"integer"},"xs":{"type":"array","items":{"type":"number"}}},
      "required":["name"]})", v);
  for (uint32_t seed = 0; seed < 12; ++seed) walk_and_compare(g, seed, 40);
}

TEST(Masks, MatchBruteForceJsonObjectCompact) {
  auto v = mixed_vocab();
  JsonSchemaOptions o;
  o.compact = true;
  auto g = compile_json_object(v, o);
  for (uint32_t seed = 0; seed < 12; ++seed) walk_and_compare(g, seed, 40);
}

TEST(Masks, MatchBruteForceRegexAndEbnf) {
  auto v = mixed_vocab();
  auto r = compile_regex("(ab|cat)+[0-9]{1,3}(\"x\"|日本)?", v);
  for (uint32_t seed = 0; seed < 8; ++seed) walk_and_compare(r, seed, 20);
  auto e = compile_ebnf(R"(root ::= item ("," item)*
item ::= "[" (num ("," num)*)? "]" | "\"" [a-z]* "\""
num ::= "-"? [0-9]+)", v);
  for (uint32_t seed = 0; seed < 8; ++seed) walk_and_compare(e, seed, 30);
}

TEST(Masks, StopAndSpecialTokens) {
  int32_t eos, special;
  auto v = mixed_vocab(&eos, &special);
  auto g = compile_regex("ab", v);
  GrammarMatcher m(g);
  auto w = fast_mask(m);
  EXPECT_FALSE(bitmask_allows(w.data(), eos));
  EXPECT_FALSE(bitmask_allows(w.data(), special));
  EXPECT_FALSE(m.accept_token(eos));
  EXPECT_FALSE(m.accept_token(special));
  EXPECT_FALSE(m.accept_token(special + 1));  // empty token
  EXPECT_FALSE(m.accept_token(-1));
  EXPECT_FALSE(m.accept_token(v->size()));
  ASSERT_TRUE(m.accept_string("ab"));
  EXPECT_TRUE(m.can_terminate());
  w = fast_mask(m);
  EXPECT_EQ(allowed_ids(w, v->size()), std::vector<int32_t>{eos});
  EXPECT_TRUE(m.accept_token(eos));
  EXPECT_TRUE(m.is_terminated());
  EXPECT_FALSE(m.accept_token(eos));
  EXPECT_FALSE(m.accept_string("a"));
  m.rollback(1);
  EXPECT_FALSE(m.is_terminated());
  EXPECT_TRUE(m.can_terminate());
}

TEST(Masks, ApplyBitmaskToLogits) {
  std::vector<uint32_t> w{0b1010};
  std::vector<float> logits{1, 2, 3, 4, 5, 6};
  apply_token_bitmask(logits, w.data(), 5);
  EXPECT_TRUE(std::isinf(logits[0]) && logits[0] < 0);
  EXPECT_EQ(logits[1], 2);
  EXPECT_TRUE(std::isinf(logits[2]));
  EXPECT_EQ(logits[3], 4);
  EXPECT_TRUE(std::isinf(logits[4]));
  EXPECT_TRUE(std::isinf(logits[5]));  // past the vocabulary
}

TEST(Rollback, RestoresEarlierMasks) {
  auto v = mixed_vocab();
  auto g = compile_json_object(v);
  const int32_t V = v->size();
  for (uint32_t seed = 0; seed < 10; ++seed) {
    std::mt19937 rng(seed);
    GrammarMatcher m(g);
    std::vector<std::vector<int32_t>> masks;
    std::vector<int32_t> taken;
    for (int s = 0; s < 30; ++s) {
      auto ids = allowed_ids(fast_mask(m), V);
      masks.push_back(ids);
      int32_t id = ids[rng() % ids.size()];
      ASSERT_TRUE(m.accept_token(id));
      taken.push_back(id);
      if (m.is_terminated()) break;
    }
    while (!taken.empty()) {
      int n = 1 + rng() % std::min<size_t>(taken.size(), 5);
      m.rollback(n);
      taken.resize(taken.size() - n);
      EXPECT_EQ(m.num_accepted(), static_cast<int>(taken.size()));
      EXPECT_EQ(allowed_ids(fast_mask(m), V), masks[taken.size()]);
    }
    EXPECT_THROW(m.rollback(1), Error);
  }
}

TEST(Rollback, DraftProtocol) {
  auto v = byte_vocab();
  auto g = compile_regex("[a-c]{2}x", v);
  GrammarMatcher m(g);
  ASSERT_TRUE(m.accept_token('a'));
  // Drafts "b", "z", "x": the grammar accepts "b" then forbids "z"; the rest is not tried.
  std::vector<int32_t> drafts{'b', 'z', 'x'};
  EXPECT_EQ(m.accept_tokens(drafts), 1);
  EXPECT_EQ(m.num_accepted(), 2);
  // The verifier rejected "b" after all: undo it, accept its correction.
  m.rollback(1);
  ASSERT_TRUE(m.accept_token('c'));
  ASSERT_TRUE(m.accept_token('x'));
  EXPECT_TRUE(m.can_terminate());
  GrammarMatcher copy(m);
  copy.rollback(2);
  EXPECT_FALSE(copy.can_terminate());
  EXPECT_TRUE(m.can_terminate());  // the copy is independent
}

TEST(Compile, SharedAcrossMatchersAndThreadsSafeToRead) {
  auto v = mixed_vocab();
  auto g = compile_json_schema(R"({"type":"array","items":{"type":"integer"}})", v);
  EXPECT_GT(g.num_states(), 0);
  EXPECT_GT(g.num_cached_states(), 0);
  GrammarMatcher a(g), b(g);
  ASSERT_TRUE(a.accept_string("[1,"));
  EXPECT_FALSE(b.accept_string("1"));
  EXPECT_TRUE(b.accept_string("[]"));
  EXPECT_TRUE(b.can_terminate());
  EXPECT_FALSE(a.can_terminate());
}

}  // namespace
}  // namespace tandem::grammar
