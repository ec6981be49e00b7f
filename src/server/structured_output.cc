#include "server/structured_output.h"

#include <fmt/format.h>

#include <algorithm>

#include "server/api_error.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"
#include "util/json_parse.h"

namespace tandem::server {
namespace {

using json = nlohmann::ordered_json;  // a schema's property order is the generation order

bool present(const json& j, const char* key) {
  auto it = j.find(key);
  return it != j.end() && !it->is_null();
}

bool flag(const json& j, const char* key, const std::string& where) {
  if (!present(j, key)) return false;
  if (!j[key].is_boolean()) throw bad_request(fmt::format("'{}.{}' must be a boolean", where, key), where);
  return j[key].get<bool>();
}

// A JSON schema given as an object (or boolean) or as JSON text, as vLLM's `json` accepts it.
std::string schema_text(const json& v, const std::string& field) {
  if (v.is_object() || v.is_boolean()) return v.dump();
  if (v.is_string()) return v.get<std::string>();
  throw bad_request(fmt::format("'{}' must be a JSON schema (an object or a JSON string)", field), field);
}

std::string choice_text(const json& v, const std::string& field) {
  if (!v.is_array() || v.empty())
    throw bad_request(fmt::format("'{}' must be a non-empty list of strings", field), field);
  for (const auto& c : v)
    if (!c.is_string()) throw bad_request(fmt::format("'{}' must be a non-empty list of strings", field), field);
  return v.dump();
}

std::string string_field(const json& v, const std::string& field) {
  if (!v.is_string() || v.get_ref<const std::string&>().empty())
    throw bad_request(fmt::format("'{}' must be a non-empty string", field), field);
  return v.get<std::string>();
}

// structured_outputs.disable_additional_properties (vLLM): objects without additionalProperties
// get "additionalProperties": false.
void close_objects(json& schema) {
  if (schema.is_array()) {
    for (auto& v : schema) close_objects(v);
    return;
  }
  if (!schema.is_object()) return;
  if ((schema.value("type", json()) == "object" || schema.contains("properties")) && !schema.contains("additionalProperties"))
    schema["additionalProperties"] = false;
  for (auto& [k, v] : schema.items()) close_objects(v);
}

GrammarSpec spec(GrammarSpec::Kind kind, std::string text, std::string field) {
  GrammarSpec s;
  s.kind = kind, s.text = std::move(text), s.field = std::move(field);
  return s;
}

}  // namespace

std::optional<GrammarSpec> parse_structured_output(const json& body) {
  std::vector<GrammarSpec> found;
  using Kind = GrammarSpec::Kind;

  if (present(body, "response_format")) {
    const json& rf = body["response_format"];
    if (!rf.is_object() || (rf.contains("type") && !rf["type"].is_string()))
      throw bad_request("'response_format' must be an object such as {\"type\": \"json_object\"}", "response_format");
    const std::string type = rf.value("type", "text");
    if (type == "json_object") {
      found.push_back(spec(Kind::json_object, "", "response_format"));
    } else if (type == "json_schema") {
      const json* js = present(rf, "json_schema") ? &rf["json_schema"] : nullptr;
      if (!js || !js->is_object())
        throw bad_request("'response_format.json_schema' must be an object with a 'schema'", "response_format");
      if (present(*js, "strict") && !(*js)["strict"].is_boolean())
        throw bad_request("'response_format.json_schema.strict' must be a boolean", "response_format");
      if (!present(*js, "schema"))
        throw bad_request("'response_format.json_schema.schema' is required", "response_format");
      found.push_back(spec(Kind::json_schema, schema_text((*js)["schema"], "response_format"), "response_format"));
    } else if (type == "structural_tag") {
      throw bad_request("'response_format' of type 'structural_tag' is not supported", "response_format");
    } else if (type != "text") {
      throw bad_request(fmt::format("'response_format.type' must be 'text', 'json_object' or 'json_schema', got '{}'",
                                    type),
                        "response_format");
    }
  }

  if (present(body, "structured_outputs")) {
    const json& so = body["structured_outputs"];
    const std::string where = "structured_outputs";
    if (!so.is_object()) throw bad_request("'structured_outputs' must be an object", where);
    static const std::vector<std::string> known = {"json", "regex", "choice", "grammar", "json_object",
                                                   "structural_tag", "whitespace_pattern", "disable_any_whitespace",
                                                   "disable_additional_properties", "disable_fallback", "backend"};
    for (const auto& [k, v] : so.items())
      if (std::find(known.begin(), known.end(), k) == known.end())
        throw bad_request(fmt::format("'structured_outputs.{}' is not a structured outputs option", k), where);
    if (present(so, "structural_tag")) throw bad_request("'structured_outputs.structural_tag' is not supported", where);
    if (present(so, "whitespace_pattern"))
      throw bad_request("'structured_outputs.whitespace_pattern' is not supported (JSON whitespace is [ \\t\\n\\r]*, "
                        "or none with disable_any_whitespace)", where);
    std::vector<GrammarSpec> here;
    if (present(so, "json")) {
      std::string text = schema_text(so["json"], where + ".json");
      if (flag(so, "disable_additional_properties", where)) {
        json schema;
        try {
          schema = parse_json(text);
        } catch (const json::exception& e) {
          throw bad_request(fmt::format("'structured_outputs.json' is not valid JSON: {}", e.what()), where + ".json");
        }
        close_objects(schema);
        text = schema.dump();
      }
      here.push_back(spec(Kind::json_schema, std::move(text), where + ".json"));
    }
    if (present(so, "regex")) here.push_back(spec(Kind::regex, string_field(so["regex"], where + ".regex"), where + ".regex"));
    if (present(so, "choice")) here.push_back(spec(Kind::choice, choice_text(so["choice"], where + ".choice"), where + ".choice"));
    if (present(so, "grammar"))
      here.push_back(spec(Kind::ebnf, string_field(so["grammar"], where + ".grammar"), where + ".grammar"));
    if (flag(so, "json_object", where)) here.push_back(spec(Kind::json_object, "", where + ".json_object"));
    if (here.size() > 1)
      throw bad_request("You can only use one kind of structured outputs constraint but multiple are specified "
                        "in 'structured_outputs'", where);
    const bool compact = flag(so, "disable_any_whitespace", where);
    for (auto& s : here) s.compact = compact, found.push_back(std::move(s));
  }

  // The older spellings (vLLM before structured_outputs).
  if (present(body, "guided_whitespace_pattern"))
    throw bad_request("'guided_whitespace_pattern' is not supported (JSON whitespace is [ \\t\\n\\r]*)",
                      "guided_whitespace_pattern");
  if (present(body, "guided_decoding_backend") && !body["guided_decoding_backend"].is_string())
    throw bad_request("'guided_decoding_backend' must be a string", "guided_decoding_backend");
  if (present(body, "guided_json"))
    found.push_back(spec(Kind::json_schema, schema_text(body["guided_json"], "guided_json"), "guided_json"));
  if (present(body, "guided_regex"))
    found.push_back(spec(Kind::regex, string_field(body["guided_regex"], "guided_regex"), "guided_regex"));
  if (present(body, "guided_choice"))
    found.push_back(spec(Kind::choice, choice_text(body["guided_choice"], "guided_choice"), "guided_choice"));
  if (present(body, "guided_grammar"))
    found.push_back(spec(Kind::ebnf, string_field(body["guided_grammar"], "guided_grammar"), "guided_grammar"));

  if (found.empty()) return std::nullopt;
  if (found.size() > 1)
    throw bad_request(fmt::format("only one structured output constraint per request: '{}' and '{}' are both set",
                                  found[0].field, found[1].field),
                      found[1].field);
  return std::move(found[0]);
}

GrammarCompiler::GrammarCompiler(std::vector<std::string> token_bytes, std::vector<int32_t> stop_ids,
                                 std::vector<int32_t> special_ids, std::vector<int32_t> tool_markers, size_t capacity)
    : capacity_(std::max<size_t>(capacity, 1)) {
  std::vector<int32_t> tool_special;
  for (int32_t id : special_ids)
    if (std::find(tool_markers.begin(), tool_markers.end(), id) == tool_markers.end()) tool_special.push_back(id);
  tool_vocab_ = std::make_shared<grammar::Vocabulary>(token_bytes, stop_ids, std::move(tool_special));
  vocab_ = std::make_shared<grammar::Vocabulary>(std::move(token_bytes), std::move(stop_ids), std::move(special_ids));
}

std::unique_ptr<GrammarCompiler> GrammarCompiler::from_tokenizer(const Tokenizer& tokenizer, int32_t logits_width,
                                                                 std::vector<int32_t> stop_ids) {
  const int32_t n = tokenizer.vocab_size();
  if (logits_width < n) fail("structured outputs: the model's vocabulary ({}) is smaller than the tokenizer's ({})", logits_width, n);
  std::vector<std::string> bytes(logits_width);  // ids past the tokenizer stay "" (never allowed)
  std::vector<int32_t> special, markers;
  for (int32_t id = 0; id < n; ++id) {
    bytes[id] = tokenizer.token_bytes(id);
    if (tokenizer.is_special(id)) special.push_back(id);
  }
  for (const char* m : {"<|tool_call>", "<tool_call|>", "<|\"|>"})
    if (auto id = tokenizer.token_id(m)) markers.push_back(*id);
  return std::make_unique<GrammarCompiler>(std::move(bytes), std::move(stop_ids), std::move(special), std::move(markers));
}

grammar::CompiledGrammar GrammarCompiler::compile(const GrammarSpec& spec) {
  using Kind = GrammarSpec::Kind;
  const std::string key = fmt::format("{}|{}|{}|{}", static_cast<int>(spec.kind), spec.compact, spec.several, spec.text);
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (auto it = index_.find(key); it != index_.end()) {
      lru_.splice(lru_.begin(), lru_, it->second);
      return it->second->second;
    }
  }
  // Compiled outside the lock: a slow schema does not hold up requests with cached ones.
  const grammar::JsonSchemaOptions options{.compact = spec.compact};
  std::optional<grammar::CompiledGrammar> g;
  try {
    switch (spec.kind) {
      case Kind::json_schema: g = grammar::compile_json_schema(spec.text, vocab_, options); break;
      case Kind::json_object: g = grammar::compile_json_object(vocab_, options); break;
      case Kind::regex: g = grammar::compile_regex(spec.text, vocab_); break;
      case Kind::choice: g = grammar::compile_choice(json::parse(spec.text).get<std::vector<std::string>>(), vocab_); break;
      case Kind::ebnf: g = grammar::compile_ebnf(spec.text, vocab_); break;
      case Kind::tool_calls: {
        std::vector<grammar::ToolCallSchema> tools;
        for (const auto& t : json::parse(spec.text)) tools.push_back({t["name"], t["parameters"]});
        g = grammar::compile(grammar::grammar_gemma4_tool_calls(tools, spec.several), tool_vocab_);
        break;
      }
    }
  } catch (const std::exception& e) {
    throw bad_request(fmt::format("'{}': {}", spec.field, e.what()), spec.field);
  }
  std::lock_guard<std::mutex> lock(mutex_);
  if (!index_.count(key)) {
    lru_.emplace_front(key, *g);
    index_[key] = lru_.begin();
    if (lru_.size() > capacity_) {
      index_.erase(lru_.back().first);
      lru_.pop_back();
    }
  }
  return *g;
}

size_t GrammarCompiler::cached() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return lru_.size();
}

}  // namespace tandem::server
