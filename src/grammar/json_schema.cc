// JSON Schema front end. Primitive values (strings, numbers, literals) are inlined into the rule
// of the object or array that holds them, so most token masks are decided inside one rule (few
// context-dependent tokens); objects, arrays, $refs and bounded-length strings become rules,
// memoized by their schema text.
//
// The same converter writes values in Gemma 4's tool-call argument syntax (Syntax::kGemma4), for
// tool_choice "required" / named: see grammar_gemma4_tool_calls in grammar.h.
#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <functional>
#include <map>
#include <set>

#include "grammar/grammar.h"
#include "grammar/text_util.h"
#include "util/error.h"
#include "util/json_parse.h"

namespace tandem::grammar {
namespace {

using ojson = nlohmann::ordered_json;

// Keywords without effect on generation: annotations, and numeric bounds (documented as not enforced).
const std::set<std::string> kIgnored = {
    "title", "description", "$schema", "$id", "$comment", "default", "examples", "deprecated", "readOnly",
    "writeOnly", "$defs", "definitions", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"};
const std::set<std::string> kHandled = {"type", "properties", "required", "additionalProperties", "enum", "const",
                                        "items", "minItems", "maxItems", "anyOf", "oneOf", "$ref", "minLength",
                                        "maxLength", "pattern", "format"};

const std::map<std::string, std::string> kFormats = {
    {"date", R"(\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01]))"},
    {"time", R"(([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d+)?(Z|[+-]([01]\d|2[0-3]):[0-5]\d))"},
    {"date-time",
     R"(\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])T([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d+)?(Z|[+-]([01]\d|2[0-3]):[0-5]\d))"},
    {"uuid", R"([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})"},
    {"email", R"([A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(\.[A-Za-z0-9\-]+)+)"},
    {"ipv4", R"(((25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d))"},
};

// Gemma 4's string delimiter (a special token; the grammar matches its text).
constexpr std::string_view kGemmaQuote = "<|\"|>";

// A key Gemma 4's chat template writes bare and its tool-call parser reads back as written.
bool gemma_bare_key(std::string_view key) {
  if (key.empty()) return false;
  for (unsigned char c : key)
    if (!(std::isalnum(c) || c == '_' || c == '-' || c == '.' || c >= 0x80)) return false;
  return true;
}

class SchemaConverter {
 public:
  enum class Syntax { kJson, kGemma4 };
  SchemaConverter(const ojson& root, const JsonSchemaOptions& o, Syntax syntax = Syntax::kJson)
      : root_(&root), compact_(o.compact || syntax == Syntax::kGemma4), gemma_(syntax == Syntax::kGemma4) {}

  Grammar run() {
    int32_t r = g_.add_rule("root");
    g_.set_body(r, value(*root_, "#"));
    g_.set_root(r);
    return std::move(g_);
  }
  Grammar any_object() {
    int32_t r = g_.add_rule("root");
    g_.set_body(r, g_.ref(any_object_rule()));
    g_.set_root(r);
    return std::move(g_);
  }
  // Gemma 4 tool calls: each `<|tool_call>call:NAME{arguments}<tool_call|>`, the arguments an
  // object of the tool's parameter schema (its own root for $ref).
  Grammar tool_calls(std::span<const ToolCallSchema> tools, bool several) {
    std::vector<int32_t> calls;
    for (const auto& t : tools) {
      if (t.name.empty() || !std::all_of(t.name.begin(), t.name.end(), [](char c) {
            return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.' ||
                   static_cast<unsigned char>(c) >= 0x80;
          }))
        fail("tool name '{}' cannot be written in a Gemma 4 tool call (letters, digits, '_', '-', '.' only)", t.name);
      if (!t.parameters.is_object() || (t.parameters.contains("type") && t.parameters["type"] != "object"))
        fail("json_schema: the parameters of tool '{}' must be an object schema (\"type\": \"object\")", t.name);
      root_ = &t.parameters;
      refs_.clear(), memo_.clear();  // both depend on the root a $ref resolves against
      ojson params = t.parameters;  // untyped: still an object
      params["type"] = "object";
      const int32_t args = value(params, "#");
      calls.push_back(g_.sequence({lit("<|tool_call>call:" + t.name), args, lit("<tool_call|>")}));
    }
    int32_t call = g_.add_rule("call");
    g_.set_body(call, g_.choice(std::move(calls)));
    int32_t r = g_.add_rule("root");
    g_.set_body(r, several ? g_.plus(g_.ref(call)) : g_.ref(call));
    g_.set_root(r);
    return std::move(g_);
  }

 private:
  [[noreturn]] static void error(const std::string& path, const std::string& what) {
    fail("json_schema: {} (at {})", what, path);
  }

  int32_t ws() {
    if (compact_) return g_.empty();
    return g_.star(g_.char_class({{' ', ' '}, {'\t', '\t'}, {'\n', '\n'}, {'\r', '\r'}}));
  }
  int32_t lit(std::string_view s) { return g_.bytes(s); }

  // One character of a JSON string body: unescaped code point or escape (no surrogate \u
  // escapes, so every body is valid JSON and each character is one code point).
  int32_t string_char() {
    if (char_ >= 0) return char_;
    int32_t hex = g_.char_class({{'0', '9'}, {'a', 'f'}, {'A', 'F'}});
    int32_t u = g_.sequence({lit("u"), g_.choice({g_.sequence({g_.char_class({{'0', '9'}, {'a', 'c'}, {'A', 'C'}, {'e', 'f'}, {'E', 'F'}}), hex, hex, hex}),
                                                  g_.sequence({g_.char_class({{'d', 'd'}, {'D', 'D'}}), g_.char_class({{'0', '7'}}), hex, hex})})});
    int32_t esc = g_.sequence({lit("\\"), g_.choice({g_.char_class({{'"', '"'}, {'\\', '\\'}, {'/', '/'}, {'b', 'b'}, {'f', 'f'}, {'n', 'n'}, {'r', 'r'}, {'t', 't'}}), u})});
    char_ = g_.choice({g_.char_class({{0x20, 0x21}, {0x23, 0x5B}, {0x5D, 0x10FFFF}}), esc});
    return char_;
  }
  int32_t string(int32_t min = 0, int32_t max = Grammar::kUnbounded) {
    if (gemma_) {
      // Between <|"|> delimiters with nothing escaped, so the text must not contain the
      // delimiter. Bounded lengths count code points of a class without '<' (simple to count).
      const bool free = min == 0 && max == Grammar::kUnbounded;
      return g_.sequence({lit(kGemmaQuote), free ? g_.ref(gemma_text_rule()) : g_.repeat(g_.char_class({{'<', '<'}}, true), min, max),
                          lit(kGemmaQuote)});
    }
    return g_.sequence({lit("\""), g_.repeat(string_char(), min, max), lit("\"")});
  }
  // Any text without the substring <|"|>: the states of a matcher for it (how much of the
  // delimiter the text ends with), each a rule that may end or read one more character.
  int32_t gemma_text_rule() {
    if (gemma_text_ >= 0) return gemma_text_;
    std::vector<int32_t> state(5);
    for (auto& r : state) r = g_.add_rule("text");
    gemma_text_ = state[0];
    const std::string_view d = kGemmaQuote;
    for (size_t k = 0; k < state.size(); ++k) {
      // After k matched bytes of the delimiter: '<' restarts it (state 1), its next byte advances
      // (the last one is forbidden), anything else goes back to state 0.
      std::vector<int32_t> alts{g_.empty(), g_.sequence({lit("<"), g_.ref(state[1])})};
      detail::Ranges other = {{'<', '<'}};
      if (k > 0) {
        other.push_back({static_cast<uint8_t>(d[k]), static_cast<uint8_t>(d[k])});
        std::sort(other.begin(), other.end());
        if (k + 1 < d.size()) alts.push_back(g_.sequence({lit(d.substr(k, 1)), g_.ref(state[k + 1])}));
      }
      alts.push_back(g_.sequence({g_.char_class(other, true), g_.ref(state[0])}));
      g_.set_body(state[k], g_.choice(std::move(alts)));
    }
    return gemma_text_;
  }
  // A JSON value written as Gemma 4's template writes it (format_argument): strings delimited,
  // keys bare (sorted, as its dictsort), no whitespace.
  std::string literal(const ojson& v, const std::string& path) {
    if (!gemma_) return v.dump();
    if (v.is_string()) {
      const std::string& t = v.get_ref<const std::string&>();
      if (t.find(kGemmaQuote) != std::string::npos) error(path, "a string containing <|\"|> cannot be written in a Gemma 4 tool call");
      return fmt::format("{}{}{}", kGemmaQuote, t, kGemmaQuote);
    }
    if (v.is_array()) {
      std::string out = "[";
      for (size_t i = 0; i < v.size(); ++i) out += (i ? "," : "") + literal(v[i], path);
      return out + "]";
    }
    if (v.is_object()) {
      std::vector<std::string> keys;
      for (auto it = v.begin(); it != v.end(); ++it) keys.push_back(it.key());
      std::sort(keys.begin(), keys.end());
      std::string out = "{";
      for (size_t i = 0; i < keys.size(); ++i) out += (i ? "," : "") + key_text(keys[i], path) + ":" + literal(v[keys[i]], path);
      return out + "}";
    }
    return v.dump();
  }
  // An object key as written before its ':'.
  std::string key_text(const std::string& name, const std::string& path) {
    if (!gemma_) return ojson(name).dump();
    if (gemma_bare_key(name)) return name;
    return literal(ojson(name), path);
  }
  int32_t number() {
    return add_regex(g_, R"(-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?)", false);
  }
  int32_t integer() { return add_regex(g_, R"(-?(0|[1-9][0-9]*))", false); }

  int32_t any_value_rule() {
    if (any_value_ >= 0) return any_value_;
    any_value_ = g_.add_rule("value");
    int32_t arr = g_.add_rule("array");
    int32_t v = g_.ref(any_value_);
    g_.set_body(arr, g_.sequence({lit("["), ws(), g_.optional(g_.sequence({v, g_.star(g_.sequence({ws(), lit(","), ws(), v}))})), ws(), lit("]")}));
    g_.set_body(any_value_, g_.choice({g_.ref(any_object_rule()), g_.ref(arr), string(), number(), lit("true"), lit("false"), lit("null")}));
    return any_value_;
  }
  int32_t any_object_rule() {
    if (any_object_ >= 0) return any_object_;
    any_object_ = g_.add_rule("object");
    // Gemma 4: bare keys of the characters its template writes bare.
    int32_t key = gemma_ ? g_.plus(g_.char_class({{'0', '9'}, {'A', 'Z'}, {'a', 'z'}, {'_', '_'}, {'-', '.'}})) : string();
    int32_t member = g_.sequence({key, ws(), lit(":"), ws(), g_.ref(any_value_rule())});
    g_.set_body(any_object_, g_.sequence({lit("{"), ws(), g_.optional(g_.sequence({member, g_.star(g_.sequence({ws(), lit(","), ws(), member}))})), ws(), lit("}")}));
    return any_object_;
  }

  const ojson& resolve(const std::string& ref, const std::string& path) {
    if (ref.empty() || ref[0] != '#') error(path, fmt::format("$ref '{}' is not supported (only local references '#/...')", ref));
    try {
      return root_->at(ojson::json_pointer(ref.substr(1)));
    } catch (const std::exception&) {
      error(path, fmt::format("$ref '{}' does not resolve", ref));
    }
  }

  static int32_t count(const ojson& s, const char* key, const std::string& path) {
    if (!s.contains(key)) return -1;
    const ojson& v = s[key];
    if (!v.is_number_integer() || v.get<int64_t>() < 0) error(path, fmt::format("'{}' must be a non-negative integer", key));
    if (v.get<int64_t>() > 10000) error(path, fmt::format("'{}' above 10000 is not supported", key));
    return static_cast<int32_t>(v.get<int64_t>());
  }

  // Wraps `body` in a rule memoized under `key`.
  int32_t memo_rule(const std::string& key, const std::string& name, const std::function<int32_t()>& body) {
    auto it = memo_.find(key);
    if (it != memo_.end()) return g_.ref(it->second);
    int32_t r = g_.add_rule(name);
    memo_[key] = r;
    g_.set_body(r, body());
    return g_.ref(r);
  }

  int32_t value(const ojson& s, const std::string& path) {
    if (s.is_boolean()) {
      if (!s.get<bool>()) error(path, "schema 'false' matches nothing");
      return g_.ref(any_value_rule());
    }
    if (!s.is_object()) error(path, "a schema must be an object or a boolean");
    for (auto it = s.begin(); it != s.end(); ++it) {
      if (!kIgnored.count(it.key()) && !kHandled.count(it.key()))
        error(path, fmt::format("unsupported JSON Schema keyword '{}'", it.key()));
    }
    if (s.contains("$ref")) {
      for (auto it = s.begin(); it != s.end(); ++it)
        if (kHandled.count(it.key()) && it.key() != "$ref") error(path, fmt::format("'{}' next to '$ref' is not supported", it.key()));
      if (!s["$ref"].is_string()) error(path, "'$ref' must be a string");
      std::string ref = s["$ref"].get<std::string>();
      auto it = refs_.find(ref);
      if (it != refs_.end()) return g_.ref(it->second);
      const ojson& target = resolve(ref, path);
      std::string name = ref.substr(ref.rfind('/') + 1);
      int32_t r = g_.add_rule(name.empty() ? "ref" : name);
      refs_[ref] = r;
      g_.set_body(r, value(target, ref));
      return g_.ref(r);
    }
    for (const char* key : {"anyOf", "oneOf"}) {
      if (!s.contains(key)) continue;
      for (auto it = s.begin(); it != s.end(); ++it)
        if (kHandled.count(it.key()) && it.key() != key) error(path, fmt::format("'{}' next to '{}' is not supported", it.key(), key));
      const ojson& list = s[key];
      if (!list.is_array() || list.empty()) error(path, fmt::format("'{}' must be a non-empty array", key));
      std::vector<int32_t> alts;
      for (size_t i = 0; i < list.size(); ++i) alts.push_back(value(list[i], fmt::format("{}/{}/{}", path, key, i)));
      return g_.choice(std::move(alts));
    }
    if (s.contains("const")) return lit(literal(s["const"], path));
    if (s.contains("enum")) {
      const ojson& list = s["enum"];
      if (!list.is_array() || list.empty()) error(path, "'enum' must be a non-empty array");
      std::vector<int32_t> alts;
      for (const auto& v : list) alts.push_back(lit(literal(v, path)));
      return g_.choice(std::move(alts));
    }
    std::vector<std::string> types;
    if (!s.contains("type")) {
      // Untyped: infer from the keywords present, else any value.
      if (s.contains("properties") || s.contains("additionalProperties") || s.contains("required")) types = {"object"};
      else if (s.contains("items") || s.contains("minItems") || s.contains("maxItems")) types = {"array"};
      else if (s.contains("pattern") || s.contains("format") || s.contains("minLength") || s.contains("maxLength")) types = {"string"};
      else return g_.ref(any_value_rule());
    } else if (s["type"].is_string()) {
      types = {s["type"].get<std::string>()};
    } else if (s["type"].is_array() && !s["type"].empty()) {
      for (const auto& t : s["type"]) {
        if (!t.is_string()) error(path, "'type' entries must be strings");
        types.push_back(t.get<std::string>());
      }
    } else {
      error(path, "'type' must be a string or a non-empty array of strings");
    }
    std::vector<int32_t> alts;
    for (const auto& t : types) alts.push_back(typed(s, t, path));
    return g_.choice(std::move(alts));
  }

  int32_t typed(const ojson& s, const std::string& type, const std::string& path) {
    if (type == "null") return lit("null");
    if (type == "boolean") return g_.choice({lit("true"), lit("false")});
    if (type == "integer") return integer();
    if (type == "number") return number();
    if (type == "string") return string_schema(s, path);
    if (type == "array") return memo_rule("array|" + s.dump(), "array", [&] { return array_schema(s, path); });
    if (type == "object") return memo_rule("object|" + s.dump(), "object", [&] { return object_schema(s, path); });
    error(path, fmt::format("unknown type '{}'", type));
  }

  int32_t string_schema(const ojson& s, const std::string& path) {
    int32_t min = count(s, "minLength", path), max = count(s, "maxLength", path);
    if (s.contains("pattern") || s.contains("format")) {
      if (min >= 0 || max >= 0) error(path, "'minLength'/'maxLength' together with 'pattern' or 'format' is not supported");
      if (s.contains("pattern") && s.contains("format")) error(path, "'pattern' together with 'format' is not supported");
      std::string re;
      if (s.contains("pattern")) {
        if (!s["pattern"].is_string()) error(path, "'pattern' must be a string");
        re = s["pattern"].get<std::string>();
        // JSON Schema patterns search; the generated string matches it whole, which also matches.
      } else {
        if (!s["format"].is_string()) error(path, "'format' must be a string");
        auto f = kFormats.find(s["format"].get<std::string>());
        if (f == kFormats.end()) error(path, fmt::format("unsupported string format '{}'", s["format"].get<std::string>()));
        re = f->second;
      }
      try {
        if (gemma_)  // the text as it is between the delimiters (nothing escaped)
          return memo_rule("pattern|" + re, "string", [&] { return g_.sequence({lit(kGemmaQuote), add_regex(g_, re, false), lit(kGemmaQuote)}); });
        return memo_rule("pattern|" + re, "string", [&] { return g_.sequence({lit("\""), add_regex(g_, re, true), lit("\"")}); });
      } catch (const Error& e) {
        error(path, fmt::format("pattern: {}", e.what()));
      }
    }
    if (min < 0 && max < 0) return string();
    if (max >= 0 && min > max) error(path, "'minLength' is larger than 'maxLength'");
    return memo_rule(fmt::format("string|{}|{}", min, max), "string", [&] { return string(std::max(min, 0), max); });
  }

  int32_t array_schema(const ojson& s, const std::string& path) {
    int32_t min = std::max(count(s, "minItems", path), 0), max = count(s, "maxItems", path);
    if (max >= 0 && min > max) error(path, "'minItems' is larger than 'maxItems'");
    if (max == 0) return g_.sequence({lit("["), ws(), lit("]")});
    int32_t item;
    if (!s.contains("items")) {
      item = g_.ref(any_value_rule());
    } else if (s["items"].is_array()) {
      error(path, "'items' as an array (tuple validation) is not supported");
    } else {
      item = value(s["items"], path + "/items");
      if (g_.expr(item).kind != Grammar::Kind::kRuleRef && (min > 2 || max > 2)) {
        int32_t r = g_.add_rule("item");
        g_.set_body(r, item);
        item = g_.ref(r);
      }
    }
    int32_t more = g_.sequence({ws(), lit(","), ws(), item});
    int32_t rest_max = max < 0 ? Grammar::kUnbounded : max - 1;
    int32_t items = g_.sequence({item, g_.repeat(more, std::max(min - 1, 0), rest_max)});
    if (min == 0) items = g_.optional(items);
    return g_.sequence({lit("["), ws(), items, ws(), lit("]")});
  }

  int32_t object_schema(const ojson& s, const std::string& path) {
    struct Prop {
      std::string name;
      int32_t member;
      bool required;
    };
    std::set<std::string> required;
    if (s.contains("required")) {
      if (!s["required"].is_array()) error(path, "'required' must be an array");
      for (const auto& r : s["required"]) {
        if (!r.is_string()) error(path, "'required' entries must be strings");
        required.insert(r.get<std::string>());
      }
    }
    auto member = [&](const std::string& name, int32_t v) {
      return g_.sequence({lit(key_text(name, path)), ws(), lit(":"), ws(), v});
    };
    std::vector<Prop> props;
    std::set<std::string> names;
    if (s.contains("properties")) {
      if (!s["properties"].is_object()) error(path, "'properties' must be an object");
      for (auto it = s["properties"].begin(); it != s["properties"].end(); ++it) {
        names.insert(it.key());
        props.push_back({it.key(), member(it.key(), value(it.value(), path + "/properties/" + it.key())), required.count(it.key()) > 0});
      }
    }
    for (const auto& r : required) {
      if (!names.count(r)) {  // required but not described: any value
        names.insert(r);
        props.push_back({r, member(r, g_.ref(any_value_rule())), true});
      }
    }
    // Gemma 4 (dictsort in its template): members in key order.
    if (gemma_) std::stable_sort(props.begin(), props.end(), [](const Prop& a, const Prop& b) { return a.name < b.name; });
    int32_t extra = -1;  // an additional member: a key not among `names`, then a value
    const ojson* ap = s.contains("additionalProperties") ? &s["additionalProperties"] : nullptr;
    // Gemma 4: only the declared properties are written (valid whatever additionalProperties says).
    if (!gemma_ && (!ap || !ap->is_boolean() || ap->get<bool>())) {
      int32_t v = (!ap || ap->is_boolean()) ? g_.ref(any_value_rule()) : value(*ap, path + "/additionalProperties");
      extra = g_.sequence({other_key(names), ws(), lit(":"), ws(), v});
    }

    const int n = static_cast<int>(props.size());
    int32_t sep = g_.sequence({ws(), lit(","), ws()});
    bool all_required = true;
    for (const auto& p : props) all_required &= p.required;
    int32_t body;
    if (all_required && extra < 0) {
      std::vector<int32_t> seq;
      for (int i = 0; i < n; ++i) {
        if (i) seq.push_back(sep);
        seq.push_back(props[i].member);
      }
      body = g_.sequence(std::move(seq));
    } else {
      // rest[i]: members i.. after at least one member was written (each prefixed by ',');
      // first[i]: members i.. when none was written yet. Properties keep the schema's order.
      std::vector<int32_t> rest(n + 1), first(n + 1);
      for (int i = 0; i <= n; ++i) rest[i] = g_.add_rule("members"), first[i] = g_.add_rule("members");
      int32_t extras = extra >= 0 ? g_.star(g_.sequence({sep, extra})) : g_.empty();
      g_.set_body(rest[n], extras);
      g_.set_body(first[n], extra >= 0 ? g_.optional(g_.sequence({extra, extras})) : g_.empty());
      for (int i = n - 1; i >= 0; --i) {
        std::vector<int32_t> ra{g_.sequence({sep, props[i].member, g_.ref(rest[i + 1])})};
        std::vector<int32_t> fa{g_.sequence({props[i].member, g_.ref(rest[i + 1])})};
        if (!props[i].required) ra.push_back(g_.ref(rest[i + 1])), fa.push_back(g_.ref(first[i + 1]));
        g_.set_body(rest[i], g_.choice(std::move(ra)));
        g_.set_body(first[i], g_.choice(std::move(fa)));
      }
      body = g_.ref(first[0]);
    }
    return g_.sequence({lit("{"), ws(), body, ws(), lit("}")});
  }

  // A JSON string key that is none of `names`, written without escapes (so a declared name cannot
  // come back escaped). A trie over the names' code points: at each node the key may close
  // (unless a name ends there), follow a name, or leave the trie with any other character.
  int32_t other_key(const std::set<std::string>& names) {
    using Ranges = std::vector<std::pair<uint32_t, uint32_t>>;
    const Ranges plain = {{0x20, 0x21}, {0x23, 0x5B}, {0x5D, 0x10FFFF}};
    if (names.empty()) return g_.sequence({lit("\""), g_.star(g_.char_class(plain)), lit("\"")});
    std::string key = "otherkey|";
    for (const auto& n : names) key += ojson(n).dump() + ",";
    auto it = memo_.find(key);
    if (it != memo_.end()) return g_.ref(it->second);
    int32_t rule = g_.add_rule("other_key");
    memo_[key] = rule;
    std::vector<std::vector<uint32_t>> cps;
    for (const auto& n : names) {
      std::vector<uint32_t> v;
      for (size_t i = 0; i < n.size();) v.push_back(detail::decode_utf8(n, i));
      cps.push_back(std::move(v));
    }
    int32_t free_tail = g_.sequence({g_.star(g_.char_class(plain)), lit("\"")});
    std::function<int32_t(const std::vector<uint32_t>&)> node = [&](const std::vector<uint32_t>& prefix) -> int32_t {
      std::set<uint32_t> next;
      bool complete = false;
      for (const auto& n : cps) {
        if (n.size() < prefix.size() || !std::equal(prefix.begin(), prefix.end(), n.begin())) continue;
        if (n.size() == prefix.size()) complete = true;
        else next.insert(n[prefix.size()]);
      }
      std::vector<int32_t> alts;
      if (!complete) alts.push_back(lit("\""));
      for (uint32_t c : next) {
        std::vector<uint32_t> p = prefix;
        p.push_back(c);
        std::string one;
        detail::append_utf8(one, c);
        std::string enc = ojson(one).dump();
        alts.push_back(g_.sequence({lit(enc.substr(1, enc.size() - 2)), node(p)}));
      }
      // others = plain minus `next`
      Ranges minus;
      for (auto [lo, hi] : plain) {
        uint32_t s = lo;
        for (uint32_t c : next) {
          if (c < s || c > hi) continue;
          if (c > s) minus.push_back({s, c - 1});
          s = c + 1;
        }
        if (s <= hi) minus.push_back({s, hi});
      }
      alts.push_back(g_.sequence({g_.char_class(std::move(minus)), free_tail}));
      return g_.choice(std::move(alts));
    };
    g_.set_body(rule, g_.sequence({lit("\""), node({})}));
    return g_.ref(rule);
  }

  const ojson* root_;
  bool compact_, gemma_;
  Grammar g_;
  int32_t char_ = -1, any_value_ = -1, any_object_ = -1, gemma_text_ = -1;
  std::map<std::string, int32_t> refs_, memo_;
};

}  // namespace

Grammar grammar_from_json_schema(const nlohmann::ordered_json& schema, const JsonSchemaOptions& options) {
  return SchemaConverter(schema, options).run();
}

Grammar grammar_from_json_schema(std::string_view schema_json, const JsonSchemaOptions& options) {
  nlohmann::ordered_json schema;
  try {
    schema = parse_json<nlohmann::ordered_json>(schema_json);
  } catch (const nlohmann::json::exception& e) {
    fail("json_schema: the schema is not valid JSON: {}", e.what());
  }
  return grammar_from_json_schema(schema, options);
}

Grammar grammar_gemma4_tool_calls(std::span<const ToolCallSchema> tools, bool several) {
  if (tools.empty()) fail("grammar_gemma4_tool_calls: no tools");
  static const nlohmann::ordered_json kEmpty = nlohmann::ordered_json::object();
  return SchemaConverter(kEmpty, {}, SchemaConverter::Syntax::kGemma4).tool_calls(tools, several);
}

Grammar grammar_json_object(const JsonSchemaOptions& options) {
  static const nlohmann::ordered_json kEmpty = nlohmann::ordered_json::object();
  return SchemaConverter(kEmpty, options).any_object();
}

}  // namespace tandem::grammar
