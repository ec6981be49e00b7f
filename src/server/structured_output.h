// Structured outputs for requests: vLLM's spellings of an output constraint (response_format,
// structured_outputs, the older guided_* fields, and tool_choice "required" / named) → a grammar
// compiled over the model's vocabulary (src/grammar), cached by the constraint's text.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "grammar/matcher.h"

namespace tandem {
class Tokenizer;
}

namespace tandem::server {

// One output constraint of a request.
struct GrammarSpec {
  enum class Kind { json_schema, json_object, regex, choice, ebnf, tool_calls };
  Kind kind = Kind::json_schema;
  // json_schema: the schema as JSON text; regex / ebnf: the text; choice: a JSON array of the
  // strings; tool_calls: a JSON array of {"name", "parameters"}; json_object: "".
  std::string text;
  bool compact = false;  // JSON without whitespace (structured_outputs.disable_any_whitespace)
  bool several = false;  // tool_calls: one or more calls (tool_choice "required") or exactly one
  std::string field;     // the request field it came from; errors name it
};

// The constraint a completions or chat body asks for in response_format, structured_outputs or
// guided_json / guided_regex / guided_choice / guided_grammar; none when it asks for none.
// Throws ApiError (400) for a malformed one, for several at once, and for options tandem does not
// implement (a whitespace pattern, structural tags).
std::optional<GrammarSpec> parse_structured_output(const nlohmann::ordered_json& body);

// Compiles constraints over one model's vocabulary and keeps the last `capacity` compiled
// grammars (identical constraints are common: a client sends the same schema again and again).
// Thread-safe.
class GrammarCompiler {
 public:
  // token_bytes / stop_ids / special_ids as grammar::Vocabulary takes them. `tool_markers`: the
  // special tokens Gemma 4's tool calls are written with (<|tool_call>, <tool_call|>, <|"|>);
  // tool-call grammars match them by their text, every other grammar never allows a special token.
  GrammarCompiler(std::vector<std::string> token_bytes, std::vector<int32_t> stop_ids,
                  std::vector<int32_t> special_ids, std::vector<int32_t> tool_markers, size_t capacity = 64);
  // `logits_width`: the model's vocabulary size; `stop_ids`: the model's EOS ids.
  static std::unique_ptr<GrammarCompiler> from_tokenizer(const Tokenizer& tokenizer, int32_t logits_width,
                                                         std::vector<int32_t> stop_ids);

  // Throws ApiError (400, naming spec.field) when the constraint does not compile.
  grammar::CompiledGrammar compile(const GrammarSpec& spec);
  size_t cached() const;

 private:
  std::shared_ptr<const grammar::Vocabulary> vocab_, tool_vocab_;
  size_t capacity_;
  mutable std::mutex mutex_;
  std::list<std::pair<std::string, grammar::CompiledGrammar>> lru_;  // most recent first
  std::unordered_map<std::string, decltype(lru_)::iterator> index_;
};

}  // namespace tandem::server
