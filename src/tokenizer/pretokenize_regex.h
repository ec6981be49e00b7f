// Hand-coded matchers for the pre-tokenizer regexes found in real tokenizer.json files, so no
// regex engine is needed. Each reproduces Oniguruma's leftmost-first (ordered alternation,
// greedy, backtracking) semantics for its pattern.
#pragma once
#include <cstddef>
#include <optional>
#include <string_view>

namespace tandem {

enum class RegexKind {
  kGpt2,    // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
  kLlama3,  // (?i:'s|...)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
  kQwen2,   // as kLlama3 with \p{N} (single digits)
};

// Recognises a known pattern (exact text after JSON decoding); nullopt for anything else.
std::optional<RegexKind> recognise_regex(std::string_view pattern);

// Length in bytes of the match starting exactly at s[pos], or 0 if the pattern does not match
// there. `s` must be valid UTF-8 and pos a character boundary.
size_t match_regex_at(RegexKind kind, std::string_view s, size_t pos);

}  // namespace tandem
