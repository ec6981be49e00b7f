// Byte-level context-free grammars for structured outputs (grammar-constrained decoding), and the
// front ends that produce them: JSON Schema, regex, a list of choices, EBNF/GBNF text.
//
// A Grammar is a set of named rules; a rule's body is an expression over bytes (literal byte
// strings, Unicode character classes encoded as UTF-8, sequences, alternatives, bounded or
// unbounded repetition) and references to rules (recursion allowed, except left recursion).
// compile() in grammar/matcher.h turns it into a pushdown automaton with per-state token masks.
// Front-end errors throw tandem::Error with a message naming what is unsupported; the server
// turns it into a 400.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace tandem::grammar {

class Grammar {
 public:
  enum class Kind : uint8_t { kEmpty, kBytes, kCharClass, kSequence, kChoice, kRuleRef, kRepeat };
  static constexpr int32_t kUnbounded = -1;
  struct Expr {
    Kind kind = Kind::kEmpty;
    std::string bytes;                                  // kBytes
    std::vector<std::pair<uint32_t, uint32_t>> ranges;  // kCharClass: code points, inclusive, sorted
    std::vector<int32_t> children;                      // kSequence, kChoice; kRepeat: one child
    int32_t rule = -1;                                  // kRuleRef
    int32_t min = 0, max = kUnbounded;                  // kRepeat
  };

  // Declares a rule (its body is set later, so rules can reference each other). A name already
  // taken gets a numeric suffix; the actual name is rule_name(id).
  int32_t add_rule(std::string_view name);
  void set_body(int32_t rule, int32_t expr);
  int32_t find_rule(std::string_view name) const;  // -1 if none
  void set_root(int32_t rule) { root_ = rule; }

  int32_t empty();
  int32_t bytes(std::string_view literal);
  // Code point ranges (inclusive); surrogates are dropped. negated: the complement in
  // [0, 0x10FFFF]. Matches the UTF-8 encoding of one code point of the set.
  int32_t char_class(std::vector<std::pair<uint32_t, uint32_t>> ranges, bool negated = false);
  int32_t sequence(std::vector<int32_t> items);
  int32_t choice(std::vector<int32_t> alternatives);
  int32_t ref(int32_t rule);
  int32_t repeat(int32_t expr, int32_t min, int32_t max);  // max kUnbounded: no upper bound
  int32_t star(int32_t expr) { return repeat(expr, 0, kUnbounded); }
  int32_t plus(int32_t expr) { return repeat(expr, 1, kUnbounded); }
  int32_t optional(int32_t expr) { return repeat(expr, 0, 1); }

  int32_t root() const { return root_; }
  int32_t num_rules() const { return static_cast<int32_t>(names_.size()); }
  const std::string& rule_name(int32_t rule) const { return names_[rule]; }
  int32_t rule_body(int32_t rule) const { return bodies_[rule]; }
  const Expr& expr(int32_t id) const { return exprs_[id]; }
  // EBNF-like text, for debugging and error messages.
  std::string to_string() const;

 private:
  int32_t push(Expr e);
  std::vector<Expr> exprs_;
  std::vector<std::string> names_;
  std::vector<int32_t> bodies_;
  int32_t root_ = -1;
};

// ---- front ends ----

// Regular expression, matched against the whole output (anchors at the ends are implied; ^ and $
// are accepted only there). Supported: literals (UTF-8), escapes (\n \t \r \f \v \0 \xHH \uHHHH
// \u{H..} and escaped punctuation), classes [...] with ranges and negation, \d \w \s \D \W \S, .
// (any code point but \n), alternation, groups ( ), (?: ), (?<name> ), quantifiers ? * + {m}
// {m,} {m,n} (a lazy ? suffix is accepted and ignored). Not supported (error): backreferences,
// lookaround, \b \B, inline flags, possessive quantifiers.
Grammar grammar_from_regex(std::string_view pattern);

// Adds the regex as an expression of `g` (for JSON Schema `pattern` / `format`). json_string:
// the expression matches the JSON string *encoding* of text the regex matches (", \ and control
// characters are matched as their escape sequences), for use between the quotes of a string.
int32_t add_regex(Grammar& g, std::string_view pattern, bool json_string);

// Exactly one of the strings.
Grammar grammar_from_choice(std::span<const std::string> choices);

// EBNF / GBNF text as llama.cpp, vLLM (`guided_grammar`) and xgrammar accept it:
//   rule ::= alternatives   with "literals" / 'literals' (escapes \n \t \r \\ \" \' \xHH \uHHHH
//   \UHHHHHHHH), [character classes] (ranges, ^ negation, the same escapes), . (any code point),
//   rule references, ( groups ), postfix ? * + {m} {m,} {m,n} {,n}, | alternation, # comments.
// A rule ends where the next `name ::=` starts. `root_rule` is the start symbol.
Grammar grammar_from_ebnf(std::string_view text, std::string_view root_rule = "root");

struct JsonSchemaOptions {
  // Whitespace between JSON tokens. false (default, like xgrammar's any_whitespace and vLLM's
  // default): any run of [ \t\n\r] is allowed between tokens inside objects and arrays (not
  // before or after the root value). true: no whitespace at all (`{"a":1,"b":[2,3]}`).
  bool compact = false;
};

// JSON Schema (the subset in docs/GRAMMAR.md). Throws tandem::Error naming an unsupported keyword
// and where it is (a JSON pointer into the schema).
Grammar grammar_from_json_schema(std::string_view schema_json, const JsonSchemaOptions& options = {});
Grammar grammar_from_json_schema(const nlohmann::ordered_json& schema, const JsonSchemaOptions& options = {});
// response_format json_object: any JSON object.
Grammar grammar_json_object(const JsonSchemaOptions& options = {});

// Gemma 4 tool calls (tool_choice "required" / a named function), in the syntax of its chat
// template: `<|tool_call>call:NAME{key:value,...}<tool_call|>`, one call (several = false) or one
// or more back to back, NAME one of `tools`, the arguments following that tool's `parameters` (an
// object JSON schema, the subset above) written as the template's format_argument writes them:
// keys bare (or between <|"|> when they have other characters) and in sorted order, strings between
// <|"|> with nothing escaped (never containing <|"|>; with minLength / maxLength, no '<' at all),
// numbers, true / false / null, no whitespace. Only declared properties are written (extra ones are
// never generated). A `pattern` / `format` string is matched as written between the delimiters.
struct ToolCallSchema {
  std::string name;
  nlohmann::ordered_json parameters;
};
Grammar grammar_gemma4_tool_calls(std::span<const ToolCallSchema> tools, bool several);

}  // namespace tandem::grammar
