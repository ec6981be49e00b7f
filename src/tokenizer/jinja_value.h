// Value model of the chat-template (Jinja subset) interpreter: a small dynamically typed value with
// Python semantics, because chat templates are written against Jinja2 running on Python objects
// (str(), repr(), ==, truthiness, json.dumps all follow Python). Dicts keep insertion order.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace tandem::jinja {

struct Value;
struct Callable;
using ValueList = std::vector<Value>;

// Containers nest at most this deep (keeps repr/json/destruction recursion bounded).
constexpr int kMaxNesting = 512;
// Weight of one container item, about the memory a Value takes; see weight_of().
constexpr uint64_t kItemWeight = 128;

enum class Kind { Undefined, None, Bool, Int, Float, String, List, Dict, Namespace, Callable };

// Insertion-ordered mapping (Python dict). Keys are Values (JSON keys are strings).
struct ValueDict {
  std::vector<std::pair<Value, Value>> items;
  const Value* find(const Value& key) const;
  const Value* find(std::string_view key) const;
  void set(const Value& key, Value value);
};

struct Value {
  Kind kind = Kind::Undefined;
  bool b = false;
  bool tuple = false;  // List shown as a Python tuple (dictsort/items pairs)
  uint16_t nest = 0;   // container nesting depth (bounded by kMaxNesting)
  uint64_t weight = 0; // List/Dict/Namespace: see weight_of()
  int64_t i = 0;
  double f = 0;
  std::string s;  // String payload; for Undefined: what was looked up (for error messages)
  std::shared_ptr<ValueList> list;
  std::shared_ptr<ValueDict> dict;  // Dict and Namespace (namespace is mutable, shared)
  std::shared_ptr<Callable> fn;

  Value() = default;
  static Value undefined(std::string hint = {});
  static Value none();
  static Value boolean(bool v);
  static Value integer(int64_t v);
  static Value floating(double v);
  static Value string(std::string v);
  static Value make_list(ValueList v = {}, bool as_tuple = false);
  static Value make_dict(ValueDict d = {});
  static Value make_namespace(ValueDict d = {});
  static Value callable(std::shared_ptr<Callable> c);

  bool is_undefined() const { return kind == Kind::Undefined; }
  bool is_none() const { return kind == Kind::None; }
  bool is_string() const { return kind == Kind::String; }
  bool is_list() const { return kind == Kind::List; }
  bool is_dict() const { return kind == Kind::Dict; }
  bool is_number() const { return kind == Kind::Int || kind == Kind::Float || kind == Kind::Bool; }
  bool truthy() const;
};

struct CallArgs {
  std::vector<Value> pos;
  std::vector<std::pair<std::string, Value>> kw;
};

// Builtin function, bound method or macro. The interpreter passes itself as an opaque pointer.
struct Callable {
  std::string name;
  std::function<Value(void* interp, CallArgs& args)> fn;
};

// Size of a value as a tree, in bytes: string bytes plus kItemWeight per container item, with a
// list that is shared (`{% set x = [x, x] %}`) counted at every place it occurs, as repr, tojson and
// == walk it. Saturates at 2^62. A namespace counts what it held when it was created. The
// interpreter bounds the weight of the values a template builds, so none takes longer than that to
// print or compare.
uint64_t weight_of(const Value& v);

// The size cap of repr, to_json and the values the interpreter builds: throws
// std::runtime_error("value exceeds the limit of <max_bytes> bytes") when n passes max_bytes. The
// interpreter turns it into an error at the expression or statement being evaluated, so every path
// reports the cap in the same words.
void check_size(uint64_t n, size_t max_bytes);

// --- Python semantics --------------------------------------------------------------------------
std::string type_name(const Value& v);        // Python type name: 'str', 'list', 'dict', ...
// str(v) (Undefined -> "") and repr(v); for a container they throw std::runtime_error once the text
// passes max_bytes.
std::string to_str(const Value& v, size_t max_bytes = SIZE_MAX);
std::string repr(const Value& v, size_t max_bytes = SIZE_MAX);
std::string format_float(double v);           // float.__repr__ (shortest round-trip, Python style)
// Python ==. Dict equality searches keys linearly when the two orders differ; `searched` (if given)
// grows by the keys it scanned, for the interpreter's work budget.
bool equals(const Value& a, const Value& b, uint64_t* searched = nullptr);
// Python <; returns nullopt when the types cannot be ordered (TypeError in Python).
std::optional<bool> less_than(const Value& a, const Value& b, uint64_t* searched = nullptr);

struct JsonOptions {
  std::optional<std::string> indent;  // nullopt: single line
  std::string item_sep = ", ";
  std::string key_sep = ": ";
  bool sort_keys = false;
  bool ensure_ascii = false;
  size_t max_bytes = SIZE_MAX;  // throw std::runtime_error once the text passes this
};
// json.dumps; throws std::runtime_error("Object of type X is not JSON serializable").
std::string to_json(const Value& v, const JsonOptions& opts);
// Appends s as the inside of a JSON string literal, as Python's json.dumps writes it: '"', '\\' and the
// control characters escaped; with ensure_ascii every non-ASCII code point as \uXXXX (a surrogate pair
// above U+FFFF), else the UTF-8 bytes as they are, byte by byte, so a character split across two calls
// (a streamed chunk) stays intact.
void append_json_escaped(std::string& out, std::string_view s, bool ensure_ascii);

Value from_json(const nlohmann::json& j);
Value from_json(const nlohmann::ordered_json& j);

// --- UTF-8 helpers (strings are UTF-8; Python indexes by code point) --------------------------
std::u32string utf8_decode(std::string_view s);
std::string utf8_encode(std::u32string_view s);
void utf8_append(std::string& out, char32_t c);
size_t utf8_length(std::string_view s);
// Byte offset of the code point at `index` (as utf8_decode counts them); s.size() past the end.
size_t utf8_offset(std::string_view s, size_t index);
bool is_py_space(char32_t c);

}  // namespace tandem::jinja
