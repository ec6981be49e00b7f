// Random JSON schemas from the supported subset (docs/GRAMMAR.md) and a small validator for that
// subset, shared by the grammar property test and the engine's constrained-decoding tests.
#pragma once
#include <nlohmann/json.hpp>

#include <cmath>
#include <map>
#include <random>
#include <regex>
#include <string>

namespace tandem::grammar::testing {

using json = nlohmann::json;
using ojson = nlohmann::ordered_json;

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

inline size_t code_points(const std::string& s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

inline const std::map<std::string, std::string> kFormats = {
    {"date", R"(\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01]))"},
    {"time", R"(([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d+)?(Z|[+-]([01]\d|2[0-3]):[0-5]\d))"},
    {"date-time", R"(\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])T([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d+)?(Z|[+-]([01]\d|2[0-3]):[0-5]\d))"},
    {"uuid", R"([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})"},
    {"email", R"([^@\s]+@[^@\s]+\.[^@\s]+)"},
    {"ipv4", R"((\d{1,3}\.){3}\d{1,3})"},
};

inline bool validate(const json& v, const ojson& s, const ojson& root, std::string& why);

inline bool type_ok(const json& v, const std::string& t) {
  if (t == "null") return v.is_null();
  if (t == "boolean") return v.is_boolean();
  if (t == "string") return v.is_string();
  if (t == "number") return v.is_number();
  if (t == "integer") return v.is_number_integer() || (v.is_number_float() && std::floor(v.get<double>()) == v.get<double>());
  if (t == "array") return v.is_array();
  if (t == "object") return v.is_object();
  return false;
}

inline bool validate(const json& v, const ojson& s, const ojson& root, std::string& why) {
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

}  // namespace tandem::grammar::testing
