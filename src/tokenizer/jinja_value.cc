#include "tokenizer/jinja_value.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <stdexcept>

namespace tandem::jinja {

// --- ValueDict ---------------------------------------------------------------------------------
const Value* ValueDict::find(const Value& key) const {
  for (const auto& kv : items)
    if (equals(kv.first, key)) return &kv.second;
  return nullptr;
}

const Value* ValueDict::find(std::string_view key) const {
  for (const auto& kv : items)
    if (kv.first.kind == Kind::String && kv.first.s == key) return &kv.second;
  return nullptr;
}

void ValueDict::set(const Value& key, Value value) {
  for (auto& kv : items)
    if (equals(kv.first, key)) {
      kv.second = std::move(value);
      return;
    }
  items.emplace_back(key, std::move(value));
}

// --- constructors ------------------------------------------------------------------------------
Value Value::undefined(std::string hint) {
  Value v;
  v.s = std::move(hint);
  return v;
}
Value Value::none() {
  Value v;
  v.kind = Kind::None;
  return v;
}
Value Value::boolean(bool x) {
  Value v;
  v.kind = Kind::Bool;
  v.b = x;
  return v;
}
Value Value::integer(int64_t x) {
  Value v;
  v.kind = Kind::Int;
  v.i = x;
  return v;
}
Value Value::floating(double x) {
  Value v;
  v.kind = Kind::Float;
  v.f = x;
  return v;
}
Value Value::string(std::string x) {
  Value v;
  v.kind = Kind::String;
  v.s = std::move(x);
  return v;
}
static uint64_t add_weight(uint64_t a, uint64_t b) { return std::min<uint64_t>(a + b, uint64_t{1} << 62); }

uint64_t weight_of(const Value& v) {
  switch (v.kind) {
    case Kind::String: return v.s.size();
    case Kind::List:
    case Kind::Dict:
    case Kind::Namespace: return v.weight;
    default: return 0;
  }
}

void check_size(uint64_t n, size_t max_bytes) {
  if (n > max_bytes) throw std::runtime_error("value exceeds the limit of " + std::to_string(max_bytes) + " bytes");
}

// Nesting depth and weight of a container with these items.
static void add_item(int& nest, uint64_t& weight, const Value& x) {
  nest = std::max<int>(nest, x.nest);
  weight = add_weight(weight, add_weight(kItemWeight, weight_of(x)));
}
static uint16_t checked_nest(int n) {
  if (n + 1 > kMaxNesting) throw std::runtime_error("value nested too deeply");
  return static_cast<uint16_t>(n + 1);
}
static void set_dict_shape(Value& v, const ValueDict& d) {
  int n = 0;
  for (const auto& kv : d.items) {
    add_item(n, v.weight, kv.first);
    add_item(n, v.weight, kv.second);
  }
  v.nest = checked_nest(n);
}

Value Value::make_list(ValueList x, bool as_tuple) {
  Value v;
  int n = 0;
  for (const auto& item : x) add_item(n, v.weight, item);
  v.nest = checked_nest(n);
  v.kind = Kind::List;
  v.tuple = as_tuple;
  v.list = std::make_shared<ValueList>(std::move(x));
  return v;
}
Value Value::make_dict(ValueDict d) {
  Value v;
  set_dict_shape(v, d);
  v.kind = Kind::Dict;
  v.dict = std::make_shared<ValueDict>(std::move(d));
  return v;
}
Value Value::make_namespace(ValueDict d) {
  Value v;
  set_dict_shape(v, d);
  v.kind = Kind::Namespace;
  v.dict = std::make_shared<ValueDict>(std::move(d));
  return v;
}
Value Value::callable(std::shared_ptr<Callable> c) {
  Value v;
  v.kind = Kind::Callable;
  v.fn = std::move(c);
  return v;
}

bool Value::truthy() const {
  switch (kind) {
    case Kind::Undefined:
    case Kind::None: return false;
    case Kind::Bool: return b;
    case Kind::Int: return i != 0;
    case Kind::Float: return f != 0.0;
    case Kind::String: return !s.empty();
    case Kind::List: return !list->empty();
    case Kind::Dict: return !dict->items.empty();
    case Kind::Namespace:
    case Kind::Callable: return true;
  }
  return false;
}

// --- UTF-8 -------------------------------------------------------------------------------------
// Decodes the code point at s[i] into cp and returns the bytes it takes. An invalid or truncated
// sequence stands for its first byte alone, so every byte string decodes and the code point
// indices of utf8_decode and utf8_offset agree on it.
static size_t utf8_decode_at(std::string_view s, size_t i, char32_t& cp) {
  unsigned char c = static_cast<unsigned char>(s[i]);
  cp = c;
  if (c < 0x80) return 1;
  int n = (c >> 5) == 6 ? 1 : (c >> 4) == 14 ? 2 : (c >> 3) == 30 ? 3 : -1;
  if (n < 0 || i + static_cast<size_t>(n) >= s.size()) return 1;
  char32_t decoded = c & (0x3F >> n);
  for (int k = 1; k <= n; ++k) {
    unsigned char cc = static_cast<unsigned char>(s[i + k]);
    if ((cc & 0xC0) != 0x80) return 1;
    decoded = (decoded << 6) | (cc & 0x3F);
  }
  cp = decoded;
  return static_cast<size_t>(n) + 1;
}

std::u32string utf8_decode(std::string_view s) {
  std::u32string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    char32_t cp;
    i += utf8_decode_at(s, i, cp);
    out.push_back(cp);
  }
  return out;
}

size_t utf8_offset(std::string_view s, size_t index) {
  size_t i = 0;
  for (char32_t cp; index > 0 && i < s.size(); --index) i += utf8_decode_at(s, i, cp);
  return i;
}

void utf8_append(std::string& out, char32_t c) {
  if (c < 0x80) {
    out.push_back(static_cast<char>(c));
  } else if (c < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (c >> 6)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (c >> 12)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | ((c >> 18) & 0x07)));
    out.push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  }
}

std::string utf8_encode(std::u32string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t c : s) utf8_append(out, c);
  return out;
}

size_t utf8_length(std::string_view s) {
  for (unsigned char c : s)
    if (c >= 0x80) return utf8_decode(s).size();
  return s.size();
}

bool is_py_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
         c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 ||
         c == 0x202F || c == 0x205F || c == 0x3000;
}

// --- Python str / repr -------------------------------------------------------------------------
std::string type_name(const Value& v) {
  switch (v.kind) {
    case Kind::Undefined: return "Undefined";
    case Kind::None: return "NoneType";
    case Kind::Bool: return "bool";
    case Kind::Int: return "int";
    case Kind::Float: return "float";
    case Kind::String: return "str";
    case Kind::List: return v.tuple ? "tuple" : "list";
    case Kind::Dict: return "dict";
    case Kind::Namespace: return "Namespace";
    case Kind::Callable: return "function";
  }
  return "object";
}

std::string format_float(double v) {
  if (std::isnan(v)) return "nan";
  if (std::isinf(v)) return v > 0 ? "inf" : "-inf";
  if (v == 0) return std::signbit(v) ? "-0.0" : "0.0";
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::scientific);
  std::string sci(buf, res.ptr);
  // sci = [-]d[.ddd]e[+-]XX
  bool neg = sci[0] == '-';
  if (neg) sci.erase(0, 1);
  size_t epos = sci.find('e');
  std::string mant = sci.substr(0, epos);
  int exp = std::stoi(sci.substr(epos + 1));
  std::string digits;
  for (char c : mant)
    if (c != '.') digits.push_back(c);
  while (digits.size() > 1 && digits.back() == '0') digits.pop_back();
  std::string out = neg ? "-" : "";
  if (exp >= -4 && exp < 16) {
    if (exp < 0) {
      out += "0.";
      out.append(static_cast<size_t>(-exp - 1), '0');
      out += digits;
    } else {
      size_t int_len = static_cast<size_t>(exp) + 1;
      if (digits.size() <= int_len) {
        out += digits;
        out.append(int_len - digits.size(), '0');
        out += ".0";
      } else {
        out += digits.substr(0, int_len);
        out += '.';
        out += digits.substr(int_len);
      }
    }
  } else {
    out += digits.substr(0, 1);
    if (digits.size() > 1) {
      out += '.';
      out += digits.substr(1);
    }
    char eb[16];
    std::snprintf(eb, sizeof eb, "e%c%02d", exp < 0 ? '-' : '+', exp < 0 ? -exp : exp);
    out += eb;
  }
  return out;
}

static bool repr_printable(char32_t c) {
  if (c < 0x20 || c == 0x7F) return false;
  if (c >= 0x80 && c <= 0xA0) return false;
  if (c == 0xAD || (c >= 0x200B && c <= 0x200F) || (c >= 0x2028 && c <= 0x202E) ||
      (c >= 0x2060 && c <= 0x206F) || c == 0xFEFF || (c >= 0xD800 && c <= 0xDFFF))
    return false;
  if (c >= 0x2000 && c <= 0x200A) return false;  // separators other than ' ' are not printable
  if (c == 0x1680 || c == 0x202F || c == 0x205F || c == 0x3000) return false;
  return true;
}

static std::string repr_string(const std::string& s) {
  bool has_single = s.find('\'') != std::string::npos;
  bool has_double = s.find('"') != std::string::npos;
  char q = (has_single && !has_double) ? '"' : '\'';
  std::string out(1, q);
  for (char32_t c : utf8_decode(s)) {
    if (c == static_cast<char32_t>(q) || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (!repr_printable(c)) {
      char buf[16];
      if (c < 0x100)
        std::snprintf(buf, sizeof buf, "\\x%02x", static_cast<unsigned>(c));
      else if (c < 0x10000)
        std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(c));
      else
        std::snprintf(buf, sizeof buf, "\\U%08x", static_cast<unsigned>(c));
      out += buf;
    } else {
      utf8_append(out, c);
    }
  }
  out += q;
  return out;
}

// Appends repr(v) to out. The size check runs per item, so a list holding a namespace many times
// (the one value whose weight can grow after it is stored) stops at max_bytes, not at its full size.
static void repr_into(std::string& out, const Value& v, size_t max_bytes) {
  switch (v.kind) {
    case Kind::String: out += repr_string(v.s); break;
    case Kind::Undefined: out += "Undefined"; break;
    case Kind::List: {
      out += v.tuple ? "(" : "[";
      for (size_t k = 0; k < v.list->size(); ++k) {
        if (k) out += ", ";
        repr_into(out, (*v.list)[k], max_bytes);
      }
      if (v.tuple && v.list->size() == 1) out += ",";
      out += v.tuple ? ")" : "]";
      break;
    }
    case Kind::Dict:
    case Kind::Namespace: {
      out += v.kind == Kind::Dict ? "{" : "<Namespace {";
      bool first = true;
      for (const auto& kv : v.dict->items) {
        if (!first) out += ", ";
        first = false;
        repr_into(out, kv.first, max_bytes);
        out += ": ";
        repr_into(out, kv.second, max_bytes);
      }
      out += v.kind == Kind::Dict ? "}" : "}>";
      break;
    }
    default: out += to_str(v); break;
  }
  check_size(out.size(), max_bytes);
}

std::string repr(const Value& v, size_t max_bytes) {
  std::string out;
  repr_into(out, v, max_bytes);
  return out;
}

std::string to_str(const Value& v, size_t max_bytes) {
  switch (v.kind) {
    case Kind::Undefined: return "";
    case Kind::None: return "None";
    case Kind::Bool: return v.b ? "True" : "False";
    case Kind::Int: return std::to_string(v.i);
    case Kind::Float: return format_float(v.f);
    case Kind::String: return v.s;
    case Kind::Callable: return "<function " + (v.fn ? v.fn->name : std::string("?")) + ">";
    default: return repr(v, max_bytes);
  }
}

// --- comparisons -------------------------------------------------------------------------------
static double as_double(const Value& v) {
  return v.kind == Kind::Float ? v.f : v.kind == Kind::Int ? static_cast<double>(v.i) : (v.b ? 1.0 : 0.0);
}
static int64_t as_int(const Value& v) { return v.kind == Kind::Int ? v.i : (v.b ? 1 : 0); }

bool equals(const Value& a, const Value& b, uint64_t* searched) {
  if (a.is_number() && b.is_number()) {
    if (a.kind == Kind::Float || b.kind == Kind::Float) return as_double(a) == as_double(b);
    return as_int(a) == as_int(b);
  }
  if (a.kind != b.kind) return false;
  switch (a.kind) {
    case Kind::Undefined:
    case Kind::None: return true;
    case Kind::String: return a.s == b.s;
    case Kind::List: {
      if (a.tuple != b.tuple || a.list->size() != b.list->size()) return false;
      if (a.list == b.list) return true;  // the same list: Python, too, compares items by identity first
      for (size_t k = 0; k < a.list->size(); ++k)
        if (!equals((*a.list)[k], (*b.list)[k], searched)) return false;
      return true;
    }
    case Kind::Dict: {
      if (a.dict->items.size() != b.dict->items.size()) return false;
      if (a.dict == b.dict) return true;
      for (size_t k = 0; k < a.dict->items.size(); ++k) {
        const auto& kv = a.dict->items[k];
        const auto& same_place = b.dict->items[k];  // dicts built alike keep one order: no search
        const Value* other = &same_place.second;
        if (!equals(same_place.first, kv.first)) {
          if (searched) *searched += b.dict->items.size();
          other = b.dict->find(kv.first);
        }
        if (!other || !equals(kv.second, *other, searched)) return false;
      }
      return true;
    }
    case Kind::Namespace: return a.dict == b.dict;
    case Kind::Callable: return a.fn == b.fn;
    default: return false;
  }
}

std::optional<bool> less_than(const Value& a, const Value& b, uint64_t* searched) {
  if (a.is_number() && b.is_number()) {
    if (a.kind == Kind::Float || b.kind == Kind::Float) return as_double(a) < as_double(b);
    return as_int(a) < as_int(b);
  }
  if (a.kind == Kind::String && b.kind == Kind::String) return a.s < b.s;  // UTF-8 order == code point order
  if (a.kind == Kind::List && b.kind == Kind::List && a.tuple == b.tuple) {
    size_t n = std::min(a.list->size(), b.list->size());
    for (size_t k = 0; k < n; ++k) {
      const Value& x = (*a.list)[k];
      const Value& y = (*b.list)[k];
      if (equals(x, y, searched)) continue;
      return less_than(x, y, searched);
    }
    return a.list->size() < b.list->size();
  }
  return std::nullopt;
}

// --- json.dumps --------------------------------------------------------------------------------
void append_json_escaped(std::string& out, std::string_view s, bool ensure_ascii) {
  auto escape = [&](char32_t c) {
    switch (c) {
      case '"': out += "\\\""; return true;
      case '\\': out += "\\\\"; return true;
      case '\n': out += "\\n"; return true;
      case '\r': out += "\\r"; return true;
      case '\t': out += "\\t"; return true;
      case '\b': out += "\\b"; return true;
      case '\f': out += "\\f"; return true;
      default: break;
    }
    char buf[16];
    if (c >= 0x10000) {  // only with ensure_ascii: the byte path below never passes non-ASCII here
      const char32_t v = c - 0x10000;
      std::snprintf(buf, sizeof buf, "\\u%04x\\u%04x", static_cast<unsigned>(0xD800 | (v >> 10)),
                    static_cast<unsigned>(0xDC00 | (v & 0x3FF)));
    } else if (c < 0x20 || (ensure_ascii && c > 0x7E)) {
      std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(c));
    } else {
      return false;
    }
    out += buf;
    return true;
  };
  if (ensure_ascii) {
    for (char32_t c : utf8_decode(s))
      if (!escape(c)) out += static_cast<char>(c);
    return;
  }
  for (unsigned char c : s)  // quotes, backslash and control characters are single bytes in UTF-8
    if (c >= 0x80 || !escape(c)) out += static_cast<char>(c);
}

static void json_string(std::string& out, const std::string& s, bool ensure_ascii) {
  out += '"';
  append_json_escaped(out, s, ensure_ascii);
  out += '"';
}

static std::string json_float(double f) {
  if (std::isnan(f)) return "NaN";
  if (std::isinf(f)) return f > 0 ? "Infinity" : "-Infinity";
  return format_float(f);
}

static void json_dump(std::string& out, const Value& v, const JsonOptions& o, int level) {
  check_size(out.size(), o.max_bytes);  // separators and indents written so far
  auto newline = [&](int lvl) {
    out += '\n';
    for (int k = 0; k < lvl; ++k) {
      out += *o.indent;
      check_size(out.size(), o.max_bytes);
    }
  };
  switch (v.kind) {
    case Kind::None: out += "null"; return;
    case Kind::Bool: out += v.b ? "true" : "false"; return;
    case Kind::Int: out += std::to_string(v.i); return;
    case Kind::Float: out += json_float(v.f); return;
    case Kind::String:
      json_string(out, v.s, o.ensure_ascii);
      check_size(out.size(), o.max_bytes);
      return;
    case Kind::List: {
      if (v.list->empty()) {
        out += "[]";
        return;
      }
      out += '[';
      bool first = true;
      for (const auto& x : *v.list) {
        if (!first) out += o.item_sep;
        first = false;
        if (o.indent) newline(level + 1);
        json_dump(out, x, o, level + 1);
      }
      if (o.indent) newline(level);
      out += ']';
      return;
    }
    case Kind::Dict: {
      if (v.dict->items.empty()) {
        out += "{}";
        return;
      }
      std::vector<const std::pair<Value, Value>*> items;
      for (const auto& kv : v.dict->items) items.push_back(&kv);
      auto key_str = [](const Value& k) -> std::string {
        switch (k.kind) {
          case Kind::String: return k.s;
          case Kind::Int: return std::to_string(k.i);
          case Kind::Float: return json_float(k.f);
          case Kind::Bool: return k.b ? "true" : "false";
          case Kind::None: return "null";
          default: throw std::runtime_error("keys must be str, int, float, bool or None, not " + type_name(k));
        }
      };
      if (o.sort_keys) {
        for (const auto* kv : items)
          if (kv->first.kind != Kind::String)
            throw std::runtime_error("'<' not supported between instances of non-str keys");
        std::stable_sort(items.begin(), items.end(),
                         [](const auto* a, const auto* b) { return a->first.s < b->first.s; });
      }
      out += '{';
      bool first = true;
      for (const auto* kv : items) {
        if (!first) out += o.item_sep;
        first = false;
        if (o.indent) newline(level + 1);
        json_string(out, key_str(kv->first), o.ensure_ascii);
        out += o.key_sep;
        json_dump(out, kv->second, o, level + 1);
      }
      if (o.indent) newline(level);
      out += '}';
      return;
    }
    default: throw std::runtime_error("Object of type " + type_name(v) + " is not JSON serializable");
  }
}

std::string to_json(const Value& v, const JsonOptions& opts) {
  std::string out;
  json_dump(out, v, opts, 0);
  return out;
}

// --- from JSON ---------------------------------------------------------------------------------
template <class J>
static Value from_json_impl(const J& j, int depth = 0) {
  if (depth >= kMaxNesting) throw std::runtime_error("JSON input nested too deeply");
  switch (j.type()) {
    case nlohmann::json::value_t::null: return Value::none();
    case nlohmann::json::value_t::boolean: return Value::boolean(j.template get<bool>());
    case nlohmann::json::value_t::number_integer: return Value::integer(j.template get<int64_t>());
    case nlohmann::json::value_t::number_unsigned: {
      uint64_t u = j.template get<uint64_t>();
      if (u > static_cast<uint64_t>(INT64_MAX)) return Value::floating(static_cast<double>(u));
      return Value::integer(static_cast<int64_t>(u));
    }
    case nlohmann::json::value_t::number_float: return Value::floating(j.template get<double>());
    case nlohmann::json::value_t::string: return Value::string(j.template get<std::string>());
    case nlohmann::json::value_t::array: {
      ValueList l;
      l.reserve(j.size());
      for (const auto& x : j) l.push_back(from_json_impl(x, depth + 1));
      return Value::make_list(std::move(l));
    }
    case nlohmann::json::value_t::object: {
      ValueDict d;
      d.items.reserve(j.size());
      for (auto it = j.begin(); it != j.end(); ++it)
        d.items.emplace_back(Value::string(it.key()), from_json_impl(it.value(), depth + 1));
      return Value::make_dict(std::move(d));
    }
    default: return Value::none();
  }
}

Value from_json(const nlohmann::json& j) { return from_json_impl(j); }
Value from_json(const nlohmann::ordered_json& j) { return from_json_impl(j); }

}  // namespace tandem::jinja
