// Grammar-constrained decoding: a compiled grammar (pushdown automaton + per-state token-mask
// cache over one vocabulary) and a per-request matcher that yields the bitmask of allowed next
// tokens, accepts tokens, and rolls back (for speculative decoding).
//
// Engine protocol, one GrammarMatcher per request (thread-compatible: a matcher is used by one
// thread at a time; a CompiledGrammar and a Vocabulary are immutable and shared freely):
//   plain decoding   fill_next_token_bitmask(words); apply_token_bitmask(logits_row, words);
//                    sample; accept_token(token) (true by construction). A stop token is allowed
//                    only when can_terminate(); accepting it makes is_terminated() true.
//   speculative (k drafts d0..dk-1): for i = 0..k: fill the mask for row i into words_i, then
//                    if i < k and !accept_token(d_i) the drafts stop here (d_i is forbidden, so
//                    row i must sample a correction: its mask is already filled). After
//                    verification, rollback(number of drafts accepted by the grammar but
//                    rejected by the verifier), then accept_token(the correction / bonus token).
//                    Every row's logits are masked before verification, so the result keeps the
//                    target distribution restricted to the grammar.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "grammar/grammar.h"

namespace tandem {
class Tokenizer;
}

namespace tandem::grammar {

// The vocabulary as bytes, plus the trie the mask computation walks. Build once per model.
class Vocabulary {
 public:
  // token_bytes[id]: what the token adds to the output ("" = never allowed). Stop ids are allowed
  // only where the grammar may end; special ids never. size() = token_bytes.size().
  Vocabulary(std::vector<std::string> token_bytes, std::vector<int32_t> stop_ids,
             std::vector<int32_t> special_ids = {});
  // From a tokenizer: Tokenizer::token_bytes, special tokens excluded, stop ids = the tokenizer's
  // eos_ids() unless given. vocab_size: the logits width (>= tokenizer.vocab_size(); ids past the
  // tokenizer are never allowed); -1 = tokenizer.vocab_size().
  static std::shared_ptr<const Vocabulary> from_tokenizer(const Tokenizer& tokenizer, int32_t vocab_size = -1,
                                                          std::vector<int32_t> stop_ids = {});

  int32_t size() const;
  int32_t bitmask_words() const { return (size() + 31) / 32; }
  const std::vector<int32_t>& stop_ids() const;
  const std::string& token(int32_t id) const;

  struct Impl;
  const Impl& impl() const { return *impl_; }

 private:
  std::shared_ptr<const Impl> impl_;
};

// Immutable; cheap to copy (shared). Holds the automaton and the token-mask cache.
class CompiledGrammar {
 public:
  const Vocabulary& vocabulary() const;
  int32_t num_states() const;       // automaton nodes
  int32_t num_cached_states() const;  // nodes with a token-mask cache entry
  size_t cache_bytes() const;       // memory of the mask cache
  double compile_seconds() const;

  struct Impl;
  const Impl& impl() const { return *impl_; }
  explicit CompiledGrammar(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}

 private:
  std::shared_ptr<const Impl> impl_;
};

CompiledGrammar compile(const Grammar& grammar, std::shared_ptr<const Vocabulary> vocab);
CompiledGrammar compile_json_schema(std::string_view schema_json, std::shared_ptr<const Vocabulary> vocab,
                                    const JsonSchemaOptions& options = {});
CompiledGrammar compile_json_object(std::shared_ptr<const Vocabulary> vocab, const JsonSchemaOptions& options = {});
CompiledGrammar compile_regex(std::string_view pattern, std::shared_ptr<const Vocabulary> vocab);
CompiledGrammar compile_choice(std::span<const std::string> choices, std::shared_ptr<const Vocabulary> vocab);
CompiledGrammar compile_ebnf(std::string_view text, std::shared_ptr<const Vocabulary> vocab,
                             std::string_view root_rule = "root");

class GrammarMatcher {
 public:
  explicit GrammarMatcher(CompiledGrammar grammar);
  ~GrammarMatcher();
  GrammarMatcher(GrammarMatcher&&) noexcept;
  GrammarMatcher& operator=(GrammarMatcher&&) noexcept;
  GrammarMatcher(const GrammarMatcher&);  // an independent copy at the same state

  // words[vocabulary().bitmask_words()]: bit (id % 32) of words[id / 32] = token id allowed next.
  // Nothing is allowed once terminated but the stop tokens.
  void fill_next_token_bitmask(uint32_t* words);
  // Advances by one token; false (state unchanged) if the grammar forbids it.
  bool accept_token(int32_t id);
  // Advances by raw bytes as one step (counts as one token for rollback); false if forbidden.
  bool accept_string(std::string_view bytes);
  // Drafts: accepts tokens while the grammar allows them; returns how many were accepted.
  int accept_tokens(std::span<const int32_t> ids);
  // Undoes the last n accepted steps (n <= num_accepted()).
  void rollback(int n);
  void reset();  // back to the start state

  bool can_terminate() const;  // the output so far is a complete match (a stop token is allowed)
  bool is_terminated() const;  // a stop token was accepted
  int num_accepted() const;    // steps that rollback can undo
  const CompiledGrammar& grammar() const { return grammar_; }

 private:
  struct Impl;
  CompiledGrammar grammar_;
  std::unique_ptr<Impl> impl_;
};

inline bool bitmask_allows(const uint32_t* words, int32_t id) { return (words[id >> 5] >> (id & 31)) & 1u; }
// Sets logits of disallowed tokens to -infinity. logits.size() may exceed the vocabulary (those
// ids are disallowed) or be smaller (extra mask bits ignored).
void apply_token_bitmask(std::span<float> logits, const uint32_t* words, int32_t vocab_size);

}  // namespace tandem::grammar
