// Property test: random schemas from the supported subset, random sampling among the allowed
// tokens of a byte-level vocabulary until the stop token; every finished output must parse as
// JSON and validate against its schema (a small validator for the subset below). Also checks,
// on the way, that a state is never stuck (some token is always allowed) and, for a sample of
// steps, that the mask equals brute force.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <regex>

#include "helpers.h"

namespace tandem::grammar {
namespace {

using namespace testing;
using json = nlohmann::json;
using ojson = nlohmann::ordered_json;

std::shared_ptr<const Vocabulary> sampling_vocab() {
  std::vector<std::string> t;
  // Byte-level: every printable ASCII byte, \t \n \r, and enough high bytes to spell é, 日 and
  // other characters (lead and continuation bytes), so no state is stranded by the vocabulary.
  for (int b = 0x20; b < 0x7F; ++b) t.push_back(std::string(1, static_cast<char>(b)));
  for (int b : {0x80, 0x97, 0x98, 0x9F, 0xA5, 0xA9, 0xBF, 0xC2, 0xC3, 0xE0, 0xE6, 0xED, 0xF0})
    t.push_back(std::string(1, static_cast<char>(b)));
  for (const char* s : {"true", "false", "null", "\":", "\",", "{\"", "\"}", "}]", "[]", "{}", "\\n", "\\\"", "\\u00e9",
                        "é", "日", "\xC3", "\xA9", "ab", "12", "0.5", "e5", "E-2", "\"a\"", "\"b\":", ", ", "cat",
                        "dog", "-0", "T", "Z", "@", "ex", ":00", "2024-", "\t", "\r"})
    t.push_back(s);
  t.push_back("<eos>");
  int32_t eos = static_cast<int32_t>(t.size()) - 1;
  return std::make_shared<const Vocabulary>(std::move(t), std::vector<int32_t>{eos});
}

// ---- random schemas ----

class SchemaGen {
 public:
  explicit SchemaGen(uint32_t seed) : rng_(seed) {}

  ojson root() {
    ojson defs = ojson::object();
    const int n = pick(3);  // definitions first, so they never refer to each other
    for (int i = 0; i < n; ++i) defs["D" + std::to_string(i)] = schema(1);
    n_defs_ = n;
    ojson s = schema(3);
    if (!s.is_object()) s = ojson::object();
    if (n_defs_) s["$defs"] = defs;
    return s;
  }

 private:
  int pick(int n) { return static_cast<int>(rng_() % n); }
  bool coin(int percent = 50) { return pick(100) < percent; }
  std::string name() {
    static const char* names[] = {"a", "b", "ab", "abc", "x", "xy", "é", "k\"q", "type", "name"};
    return names[pick(10)];
  }
  ojson literal(int depth) {
    switch (pick(depth > 0 ? 6 : 5)) {
      case 0: return "s" + std::to_string(pick(5));
      case 1: return pick(200) - 100;
      case 2: return nullptr;
      case 3: return coin();
      case 4: return "q\"\\é";
      default: return ojson{{"k", literal(depth - 1)}, {"l", ojson::array({1, literal(depth - 1)})}};
    }
  }
  ojson schema(int depth) {
    int kind = pick(depth > 0 ? 14 : 9);
    switch (kind) {
      case 0: {
        ojson s{{"type", "string"}};
        if (coin(30)) s["minLength"] = pick(3);
        if (coin(30)) s["maxLength"] = s.value("minLength", 0) + pick(4);
        return s;
      }
      case 1: {
        static const char* patterns[] = {"^[a-c]{1,3}$", "x+y?", "(ab|cd)*e", "[0-9]{2}-[a-f]+", "\\d+\\.\\d",
                                         "^\"q\"\\\\$", "[^a-z]{2}"};
        return {{"type", "string"}, {"pattern", patterns[pick(7)]}};
      }
      case 2: {
        static const char* formats[] = {"date", "time", "date-time", "uuid", "email", "ipv4"};
        return {{"type", "string"}, {"format", formats[pick(6)]}};
      }
      case 3: return {{"type", coin() ? "integer" : "number"}, {"minimum", 0}};  // not enforced
      case 4: return {{"type", coin() ? "boolean" : "null"}};
      case 5: {
        ojson e = ojson::array();
        for (int i = 0, n = 1 + pick(4); i < n; ++i) e.push_back(literal(1));
        return {{"enum", e}};
      }
      case 6: return {{"const", literal(2)}};
      case 7: return {{"type", ojson::array({"string", "null"})}, {"maxLength", 4}};
      case 8:
        if (n_defs_) return {{"$ref", "#/$defs/D" + std::to_string(pick(n_defs_))}};
        return {{"type", "integer"}};
      case 9:
      case 10: {
        ojson s{{"type", "object"}};
        ojson props = ojson::object();
        ojson req = ojson::array();
        for (int i = 0, n = pick(4); i < n; ++i) {
          std::string k = name();
          if (props.contains(k)) continue;
          props[k] = schema(depth - 1);
          if (coin(60)) req.push_back(k);
        }
        s["properties"] = props;
        if (!req.empty()) s["required"] = req;
        int ap = pick(4);
        if (ap == 0) s["additionalProperties"] = false;
        if (ap == 1) s["additionalProperties"] = true;
        if (ap == 2) s["additionalProperties"] = schema(0);
        return s;
      }
      case 11: {
        ojson s{{"type", "array"}, {"items", schema(depth - 1)}};
        if (coin(40)) s["minItems"] = pick(3);
        if (coin(40)) s["maxItems"] = s.value("minItems", 0) + pick(3);
        return s;
      }
      case 12: {
        ojson a = ojson::array();
        for (int i = 0, n = 2 + pick(2); i < n; ++i) a.push_back(schema(depth - 1));
        return {{coin(70) ? "anyOf" : "oneOf", a}};
      }
      default: return coin() ? ojson(true) : ojson::object();  // any value
    }
  }
  std::mt19937 rng_;
  int n_defs_ = 0;
};

// ---- validator for the subset (oneOf is checked as anyOf, like generation; numeric bounds are
// not enforced) ----

size_t code_points(const std::string& s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

const std::map<std::string, std::string> kFormats = {
    {"date", R"(\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01]))"},
    {"time", R"(([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d+)?(Z|[+-]([01]\d|2[0-3]):[0-5]\d))"},
    {"date-time", R"(\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])T([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d+)?(Z|[+-]([01]\d|2[0-3]):[0-5]\d))"},
    {"uuid", R"([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})"},
    {"email", R"([^@\s]+@[^@\s]+\.[^@\s]+)"},
    {"ipv4", R"((\d{1,3}\.){3}\d{1,3})"},
};

bool validate(const json& v, const ojson& s, const ojson& root, std::string& why);

bool type_ok(const json& v, const std::string& t) {
  if (t == "null") return v.is_null();
  if (t == "boolean") return v.is_boolean();
  if (t == "string") return v.is_string();
  if (t == "number") return v.is_number();
  if (t == "integer") return v.is_number_integer() || (v.is_number_float() && std::floor(v.get<double>()) == v.get<double>());
  if (t == "array") return v.is_array();
  if (t == "object") return v.is_object();
  return false;
}

bool validate(const json& v, const ojson& s, const ojson& root, std::string& why) {
  auto bad = [&](const std::string& w) {
    why = w + " | value " + v.dump() + " | schema " + s.dump();
    return false;
  };
  if (s.is_boolean()) return s.get<bool>() || bad("false schema");
  if (s.contains("$ref")) return validate(v, root.at(ojson::json_pointer(s["$ref"].get<std::string>().substr(1))), root, why);
  for (const char* k : {"anyOf", "oneOf"}) {
    if (!s.contains(k)) continue;
    for (const auto& b : s[k]) {
      std::string w;
      if (validate(v, b, root, w)) return true;
    }
    return bad(std::string("no branch of ") + k);
  }
  if (s.contains("const") && json::parse(s["const"].dump()) != v) return bad("const");
  if (s.contains("enum")) {
    bool any = false;
    for (const auto& e : s["enum"]) any |= json::parse(e.dump()) == v;
    if (!any) return bad("enum");
  }
  if (s.contains("type")) {
    bool ok = false;
    if (s["type"].is_string()) ok = type_ok(v, s["type"]);
    else
      for (const auto& t : s["type"]) ok |= type_ok(v, t);
    if (!ok) return bad("type");
  }
  if (v.is_string()) {
    const std::string str = v.get<std::string>();
    if (s.contains("minLength") && code_points(str) < s["minLength"].get<size_t>()) return bad("minLength");
    if (s.contains("maxLength") && code_points(str) > s["maxLength"].get<size_t>()) return bad("maxLength");
    if (s.contains("pattern") && !std::regex_search(str, std::regex(s["pattern"].get<std::string>()))) return bad("pattern");
    if (s.contains("format") && !std::regex_match(str, std::regex(kFormats.at(s["format"].get<std::string>())))) return bad("format");
  }
  if (v.is_array()) {
    if (s.contains("minItems") && v.size() < s["minItems"].get<size_t>()) return bad("minItems");
    if (s.contains("maxItems") && v.size() > s["maxItems"].get<size_t>()) return bad("maxItems");
    if (s.contains("items"))
      for (const auto& x : v)
        if (!validate(x, s["items"], root, why)) return false;
  }
  if (v.is_object()) {
    if (s.contains("required"))
      for (const auto& r : s["required"])
        if (!v.contains(r.get<std::string>())) return bad("required " + r.get<std::string>());
    for (auto it = v.begin(); it != v.end(); ++it) {
      if (s.contains("properties") && s["properties"].contains(it.key())) {
        if (!validate(it.value(), s["properties"][it.key()], root, why)) return false;
      } else if (s.contains("additionalProperties")) {
        const ojson& ap = s["additionalProperties"];
        if (ap.is_boolean() && !ap.get<bool>()) return bad("additional property " + it.key());
        if (!validate(it.value(), ap, root, why)) return false;
      }
    }
  }
  return true;
}

TEST(Property, RandomSchemasSampleValidJson) {
  auto vocab = sampling_vocab();
  const int32_t V = vocab->size();
  const int kSchemas = 400, kSeeds = 4, kCap = 6000;
  int finished = 0, total = 0, overflow = 0, brute_checks = 0;
  size_t total_bytes = 0;
  for (int si = 0; si < kSchemas; ++si) {
    ojson schema = SchemaGen(1000 + si).root();
    JsonSchemaOptions opt;
    opt.compact = si % 3 == 0;
    std::optional<CompiledGrammar> compiled;
    try {
      compiled.emplace(compile_json_schema(schema.dump(), vocab, opt));
    } catch (const std::exception& e) {
      FAIL() << e.what() << "\nschema: " << schema.dump();
    }
    const CompiledGrammar& g = *compiled;
    for (int seed = 0; seed < kSeeds; ++seed) {
      ++total;
      std::mt19937 rng(seed * 7919 + si);
      GrammarMatcher m(g);
      std::string out;
      std::vector<uint32_t> w(vocab->bitmask_words());
      for (int step = 0; step < kCap && !m.is_terminated(); ++step) {
        m.fill_next_token_bitmask(w.data());
        if (seed == 0 && step < 25) {
          ++brute_checks;
          ASSERT_EQ(allowed_ids(w, V), allowed_ids(brute_mask(m), V)) << schema.dump() << "\nafter: " << out;
        }
        auto ids = allowed_ids(w, V);
        ASSERT_FALSE(ids.empty()) << "stuck: " << schema.dump() << "\nafter: " << out;
        int32_t id = ids[rng() % ids.size()];
        ASSERT_TRUE(m.accept_token(id));
        if (!m.is_terminated()) out += vocab->token(id);
      }
      if (!m.is_terminated()) continue;
      ++finished;
      total_bytes += out.size();
      if (std::getenv("GRAMMAR_PROPERTY_VERBOSE")) std::cout << schema.dump() << "\n  -> " << out << "\n";
      json value;
      try {
        value = json::parse(out);
      } catch (const json::out_of_range& e) {  // 1e999: valid JSON, not representable as double
        ++overflow;
        continue;
      } catch (const json::exception& e) {
        FAIL() << "not JSON: " << e.what() << "\nschema: " << schema.dump() << "\noutput: " << out;
      }
      std::string why;
      EXPECT_TRUE(validate(value, schema, schema, why)) << why << "\nschema: " << schema.dump() << "\noutput: " << out;
    }
  }
  std::cout << "property: " << finished << "/" << total << " finished within " << kCap << " tokens, " << overflow
            << " number overflows, " << total_bytes / std::max(finished, 1) << " bytes on average, " << brute_checks << " masks checked by brute force\n";
  EXPECT_GT(finished, total * 7 / 10);
}

}  // namespace
}  // namespace tandem::grammar
