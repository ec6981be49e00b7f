// Evaluator for the chat-template Jinja subset, modelled on Jinja2's ImmutableSandboxedEnvironment
// as configured by transformers (loopcontrols, tojson = json.dumps(ensure_ascii=False),
// raise_exception, strftime_now). Python semantics throughout: see jinja_value.h.
#include "tokenizer/jinja_eval.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <ctime>
#include <stdexcept>
#include <unordered_map>

namespace tandem::jinja {
namespace {

struct Scope {
  std::unordered_map<std::string, Value> vars;
  std::shared_ptr<Scope> parent;
};
using ScopePtr = std::shared_ptr<Scope>;

enum class Flow { Normal, Break, Continue };

// Work units (RenderLimits::max_work) of one statement or expression evaluation, and of comparing one
// dict key in a (linear) key search.
constexpr uint64_t kStepCost = 64;
constexpr uint64_t kKeyCost = 8;

// Substring search. std::string::find compares the whole needle at each position: quadratic for
// 'aa…ab' in 'aa…a' (and libstdc++'s boyer_moore_searcher takes quadratic time to set up). That is
// at most 16 compares per position for short needles; long ones go through Knuth-Morris-Pratt.
size_t find_sub(std::string_view hay, std::string_view needle, size_t from = 0) {
  if (needle.size() <= 16 || from > hay.size()) return hay.find(needle, from);
  const size_t m = needle.size();
  if (m > hay.size() - from) return std::string::npos;
  std::vector<size_t> border(m + 1, 0);  // border[i]: longest proper border of needle[0, i)
  for (size_t i = 1, k = 0; i < m; ++i) {
    while (k > 0 && needle[i] != needle[k]) k = border[k];
    if (needle[i] == needle[k]) ++k;
    border[i + 1] = k;
  }
  for (size_t i = from, k = 0; i < hay.size(); ++i) {
    while (k > 0 && hay[i] != needle[k]) k = border[k];
    if (hay[i] == needle[k]) ++k;
    if (k == m) return i + 1 - m;
  }
  return std::string::npos;
}
// Start of the last match: the first match of the reversed needle in the reversed string.
size_t rfind_sub(std::string_view hay, std::string_view needle) {
  if (needle.size() <= 16) return hay.rfind(needle);
  size_t f = find_sub(std::string(hay.rbegin(), hay.rend()), std::string(needle.rbegin(), needle.rend()));
  return f == std::string::npos ? f : hay.size() - f - needle.size();
}

bool holds_reference(const Value& v) {
  switch (v.kind) {
    case Kind::Namespace:
    case Kind::Callable: return true;
    case Kind::List:
      for (const auto& x : *v.list)
        if (holds_reference(x)) return true;
      return false;
    case Kind::Dict:
      for (const auto& kv : v.dict->items)
        if (holds_reference(kv.first) || holds_reference(kv.second)) return true;
      return false;
    default: return false;
  }
}

[[noreturn]] void undefined_error(const Value& u) {
  throw_msg(u.s.empty() ? std::string("value is undefined") : u.s);
}

std::string obj_desc(const Value& v) {
  if (v.kind == Kind::None) return "None";
  return type_name(v) + " object";
}

Value undefined_attr(const Value& obj, const std::string& name) {
  return Value::undefined("'" + obj_desc(obj) + "' has no attribute " + repr(Value::string(name)));
}

// --- string helpers (code-point aware where Python is) ----------------------------------------
char32_t cp_upper(char32_t c) {
  if (c >= 'a' && c <= 'z') return c - 32;
  if ((c >= 0xE0 && c <= 0xFE && c != 0xF7)) return c - 32;
  if (c >= 0x3B1 && c <= 0x3C9 && c != 0x3C2) return c - 32;
  if (c >= 0x430 && c <= 0x44F) return c - 32;
  if (c >= 0x450 && c <= 0x45F) return c - 80;
  return c;
}
char32_t cp_lower(char32_t c) {
  if (c >= 'A' && c <= 'Z') return c + 32;
  if ((c >= 0xC0 && c <= 0xDE && c != 0xD7)) return c + 32;
  if (c >= 0x391 && c <= 0x3A9 && c != 0x3A2) return c + 32;
  if (c >= 0x410 && c <= 0x42F) return c + 32;
  if (c >= 0x400 && c <= 0x40F) return c + 80;
  return c;
}
bool cp_is_upper(char32_t c) { return cp_lower(c) != c; }
bool cp_is_lower(char32_t c) { return cp_upper(c) != c || c == 0xDF; }
bool cp_cased(char32_t c) { return cp_is_upper(c) || cp_is_lower(c); }

std::string str_upper(const std::string& s) {
  std::string out;
  for (char32_t c : utf8_decode(s)) {
    if (c == 0xDF) {
      out += "SS";
      continue;
    }
    utf8_append(out, cp_upper(c));
  }
  return out;
}
std::string str_lower(const std::string& s) {
  std::string out;
  for (char32_t c : utf8_decode(s)) utf8_append(out, cp_lower(c));
  return out;
}
std::string str_capitalize(const std::string& s) {
  std::u32string u = utf8_decode(s);
  for (size_t k = 0; k < u.size(); ++k) u[k] = k == 0 ? cp_upper(u[k]) : cp_lower(u[k]);
  return utf8_encode(u);
}
std::string py_title(const std::string& s) {  // str.title()
  std::u32string u = utf8_decode(s);
  bool prev_cased = false;
  for (auto& c : u) {
    if (cp_cased(c)) {
      c = prev_cased ? cp_lower(c) : cp_upper(c);
      prev_cased = true;
    } else {
      prev_cased = false;
    }
  }
  return utf8_encode(u);
}
std::string jinja_title(const std::string& s) {  // |title: split on [-\s({\[<]+
  std::u32string u = utf8_decode(s);
  auto is_sep = [](char32_t c) { return c == '-' || c == '(' || c == '{' || c == '[' || c == '<' || is_py_space(c); };
  std::u32string out;
  size_t k = 0;
  while (k < u.size()) {
    if (is_sep(u[k])) {
      out.push_back(u[k++]);
      continue;
    }
    size_t start = k;
    while (k < u.size() && !is_sep(u[k])) ++k;
    for (size_t q = start; q < k; ++q) out.push_back(q == start ? cp_upper(u[q]) : cp_lower(u[q]));
  }
  return utf8_encode(out);
}

std::string py_strip(const std::string& s, const Value* chars, bool left, bool right) {
  std::u32string u = utf8_decode(s);
  std::u32string set;
  bool ws = !chars || chars->is_none() || chars->is_undefined();
  if (!ws) {
    if (!chars->is_string()) throw_msg("strip arg must be None or str");
    set = utf8_decode(chars->s);
    std::sort(set.begin(), set.end());  // searched per character stripped: a long set is not n*m work
  }
  auto strip_it = [&](char32_t c) { return ws ? is_py_space(c) : std::binary_search(set.begin(), set.end(), c); };
  size_t b = 0, e = u.size();
  if (left)
    while (b < e && strip_it(u[b])) ++b;
  if (right)
    while (e > b && strip_it(u[e - 1])) --e;
  return utf8_encode(u.substr(b, e - b));
}

// Split and splitlines stop once their parts would weigh more than max_bytes as a list, before a
// 16 MB string of commas becomes 16M strings.
std::vector<std::string> py_split(const std::string& s, const Value& sep, int64_t maxsplit, bool from_right,
                                  size_t max_bytes) {
  std::vector<std::string> parts;
  if (sep.is_none() || sep.is_undefined()) {
    std::u32string u = utf8_decode(s);
    std::vector<std::pair<size_t, size_t>> words;
    size_t k = 0;
    while (k < u.size()) {
      while (k < u.size() && is_py_space(u[k])) ++k;
      if (k >= u.size()) break;
      size_t st = k;
      while (k < u.size() && !is_py_space(u[k])) ++k;
      words.push_back({st, k});
      check_size(words.size() * kItemWeight, max_bytes);
    }
    if (maxsplit < 0 || static_cast<size_t>(maxsplit) + 1 >= words.size()) {
      for (auto& w : words) parts.push_back(utf8_encode(u.substr(w.first, w.second - w.first)));
      return parts;
    }
    size_t m = static_cast<size_t>(maxsplit);
    if (!from_right) {
      for (size_t q = 0; q < m; ++q) parts.push_back(utf8_encode(u.substr(words[q].first, words[q].second - words[q].first)));
      size_t rest = words[m].first, end = u.size();
      while (end > rest && is_py_space(u[end - 1])) --end;
      parts.push_back(utf8_encode(u.substr(rest, end - rest)));
    } else {
      size_t first_kept = words.size() - m;
      size_t beg = 0;
      while (beg < u.size() && is_py_space(u[beg])) ++beg;
      size_t rest_end = words[first_kept - 1].second;
      parts.push_back(utf8_encode(u.substr(beg, rest_end - beg)));
      for (size_t q = first_kept; q < words.size(); ++q)
        parts.push_back(utf8_encode(u.substr(words[q].first, words[q].second - words[q].first)));
    }
    return parts;
  }
  if (!sep.is_string()) throw_msg("must be str or None, not " + type_name(sep));
  if (sep.s.empty()) throw_msg("empty separator");
  // rsplit is the split of the reversed string, reversed back: one forward search either way.
  std::string reversed_s, reversed_sep;
  if (from_right) {
    reversed_s.assign(s.rbegin(), s.rend());
    reversed_sep.assign(sep.s.rbegin(), sep.s.rend());
  }
  const std::string& hay = from_right ? reversed_s : s;
  const std::string& d = from_right ? reversed_sep : sep.s;
  size_t start = 0;
  int64_t n = 0;
  while (maxsplit < 0 || n < maxsplit) {
    size_t f = find_sub(hay, d, start);
    if (f == std::string::npos) break;
    parts.push_back(hay.substr(start, f - start));
    check_size(parts.size() * kItemWeight, max_bytes);
    start = f + d.size();
    ++n;
  }
  parts.push_back(hay.substr(start));
  if (from_right) {
    std::reverse(parts.begin(), parts.end());
    for (auto& p : parts) std::reverse(p.begin(), p.end());
  }
  return parts;
}

std::string html_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&#34;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

// Python str.splitlines()
std::vector<std::string> py_splitlines(const std::string& s, bool keepends, size_t max_bytes) {
  std::u32string u = utf8_decode(s);
  std::vector<std::string> out;
  size_t start = 0, k = 0;
  while (k < u.size()) {
    char32_t c = u[k];
    bool br = c == '\n' || c == '\r' || c == 0x0B || c == 0x0C || c == 0x1C || c == 0x1D || c == 0x1E ||
              c == 0x85 || c == 0x2028 || c == 0x2029;
    if (!br) {
      ++k;
      continue;
    }
    size_t eol = k + 1;
    if (c == '\r' && eol < u.size() && u[eol] == '\n') ++eol;
    out.push_back(utf8_encode(u.substr(start, (keepends ? eol : k) - start)));
    check_size(out.size() * kItemWeight, max_bytes);
    start = k = eol;
  }
  if (start < u.size()) out.push_back(utf8_encode(u.substr(start)));
  return out;
}

// --- argument binding --------------------------------------------------------------------------
const Value* find_arg(const CallArgs& a, size_t idx, const char* name) {
  for (const auto& kv : a.kw)
    if (kv.first == name) return &kv.second;
  if (idx < a.pos.size()) return &a.pos[idx];
  return nullptr;
}
Value arg_or(const CallArgs& a, size_t idx, const char* name, Value def) {
  const Value* v = find_arg(a, idx, name);
  return v ? *v : def;
}
int64_t to_int_arg(const Value& v, const char* what) {
  if (v.kind == Kind::Int) return v.i;
  if (v.kind == Kind::Bool) return v.b;
  throw_msg(std::string("'") + what + "' must be an integer, not " + type_name(v));
}

Value str_list(const std::vector<std::string>& parts) {
  ValueList l;
  l.reserve(parts.size());
  for (const auto& p : parts) l.push_back(Value::string(p));
  return Value::make_list(std::move(l));
}

// --- interpreter -------------------------------------------------------------------------------
class Interp {
 public:
  Interp(const RenderLimits& limits) : lim_(limits) {}

  std::string render(const Program& prog, const Value& vars) {
    globals_ = std::make_shared<Scope>();
    install_globals();
    auto root = std::make_shared<Scope>();
    root->parent = globals_;
    if (vars.kind == Kind::Dict)
      for (const auto& kv : vars.dict->items)
        if (kv.first.is_string()) root->vars[kv.first.s] = kv.second;
    std::string out;
    out_ = &out;
    // Copies of the caller's variables (messages[1:]) must fit even where those outweigh the output.
    max_value_ = std::max<uint64_t>(lim_.max_output_bytes, weight_of(vars));
    stack_top_ = reinterpret_cast<uintptr_t>(__builtin_frame_address(0));
    exec_body(prog.body, root);
    return out;
  }

 private:
  const RenderLimits& lim_;
  std::string* out_ = nullptr;
  ScopePtr globals_;
  int64_t iterations_ = 0;
  uint64_t work_ = 0;
  uint64_t max_value_ = 0;  // weight_of() limit of any value built
  int macro_depth_ = 0;
  int depth_ = 0;
  uintptr_t stack_top_ = 0;

  struct DepthGuard {
    Interp& in;
    DepthGuard(Interp& i, Pos p) : in(i) {
      in.charge(kStepCost);
      if (in.depth_ + 1 > in.lim_.max_eval_depth)
        throw_at(p, "template recursion too deep (limit " + std::to_string(in.lim_.max_eval_depth) + ")");
      // Frame sizes vary with the build, so the stack in use is checked as well (it grows down).
      if (in.stack_top_ - reinterpret_cast<uintptr_t>(__builtin_frame_address(0)) > in.lim_.max_stack_bytes)
        throw_at(p, "template recursion too deep (over " + std::to_string(in.lim_.max_stack_bytes) +
                        " bytes of stack)");
      ++in.depth_;
    }
    ~DepthGuard() { --in.depth_; }
  };

  // See RenderLimits::max_work. work_ never passes max_work, so it cannot overflow.
  void charge(uint64_t units) {
    if (units > lim_.max_work - work_)
      throw_msg("template exceeded the work limit of " + std::to_string(lim_.max_work) +
                " units (evaluation steps and bytes built or copied)");
    work_ += units;
  }
  void guard_size(uint64_t n) const { check_size(n, max_value_); }
  void write(std::string_view s) {
    if (out_->size() + s.size() > lim_.max_output_bytes)
      throw_msg("rendered output exceeds the limit of " + std::to_string(lim_.max_output_bytes) + " bytes");
    charge(s.size());
    out_->append(s);
  }
  // Inside the interpreter str() and repr() stop at the size limit (see jinja::repr), and == and <
  // pay for the key searches of dict equality.
  std::string to_str(const Value& v) const { return jinja::to_str(v, max_value_); }
  std::string repr(const Value& v) const { return jinja::repr(v, max_value_); }
  bool equals(const Value& a, const Value& b) {
    uint64_t searched = 0;
    bool r = jinja::equals(a, b, &searched);
    charge(kKeyCost * searched);
    return r;
  }
  std::optional<bool> less_than(const Value& a, const Value& b) {
    uint64_t searched = 0;
    auto r = jinja::less_than(a, b, &searched);
    charge(kKeyCost * searched);
    return r;
  }
  // Linear key search in a dict or namespace.
  template <class Key>
  const Value* find_key(const Value& obj, const Key& key) {
    charge(kKeyCost * obj.dict->items.size());
    return obj.dict->find(key);
  }
  void count_iteration() {
    if (++iterations_ > lim_.max_loop_iterations)
      throw_msg("template exceeded the limit of " + std::to_string(lim_.max_loop_iterations) + " loop iterations");
  }

  static Value lookup(const ScopePtr& scope, const std::string& name) {
    for (Scope* s = scope.get(); s; s = s->parent.get()) {
      auto it = s->vars.find(name);
      if (it != s->vars.end()) return it->second;
    }
    return Value::undefined("'" + name + "' is undefined");
  }

  // Captures output of `fn` into a string.
  template <class F>
  std::string capture(F&& fn) {
    std::string buf;
    std::string* saved = out_;
    out_ = &buf;
    try {
      fn();
    } catch (...) {
      out_ = saved;
      throw;
    }
    out_ = saved;
    return buf;
  }

  // ---- statements ----
  Flow exec_body(const Body& body, ScopePtr& scope) {
    for (const auto& st : body) {
      Flow f = exec(*st, scope);
      if (f != Flow::Normal) return f;
    }
    return Flow::Normal;
  }

  Flow exec(const Stmt& st, ScopePtr& scope) {
    DepthGuard g(*this, st.pos);
    try {
      return exec_inner(st, scope);
    } catch (TemplateError& e) {
      if (!e.has_pos) {
        e.pos = st.pos;
        e.has_pos = true;
      }
      throw;
    } catch (const std::exception& ex) {  // e.g. the size limit of str() in {{ x }}
      throw TemplateError{ex.what(), st.pos, true, false};
    }
  }

  Flow exec_inner(const Stmt& st, ScopePtr& scope) {
    switch (st.kind) {
      case StmtKind::Text: write(st.text); return Flow::Normal;
      case StmtKind::Output: {
        Value v = eval(*st.expr, scope);
        write(to_str(v));
        return Flow::Normal;
      }
      case StmtKind::If: {
        for (size_t k = 0; k < st.conds.size(); ++k)
          if (eval(*st.conds[k], scope).truthy()) return exec_body(st.bodies[k], scope);
        return exec_body(st.else_body, scope);
      }
      case StmtKind::For: return exec_for(st, scope);
      case StmtKind::Set: {
        Value v;
        if (st.block_set) {
          ScopePtr& sc = scope;
          std::string text = capture([&] { exec_body(st.body, sc); });
          v = Value::string(std::move(text));
          if (st.expr) v = apply_filter_chain(*st.expr, v, scope);
        } else {
          v = eval(*st.expr, scope);
        }
        if (!st.ns_attr.empty()) {
          Value ns = lookup(scope, st.targets[0]);
          if (ns.kind != Kind::Namespace) throw_at(st.pos, "cannot assign attribute on non-namespace object");
          // Namespaces are the only mutable values; keeping namespaces and callables out of their
          // attributes makes reference cycles (leaks, unbounded recursion) impossible.
          charge(weight_of(v));  // holds_reference() walks v
          if (holds_reference(v)) throw_at(st.pos, "cannot store a namespace or callable in a namespace attribute");
          charge(kKeyCost * ns.dict->items.size());  // set() searches the attributes
          ns.dict->set(Value::string(st.ns_attr), std::move(v));
        } else {
          assign(scope, st.targets, st.unpack, v, st.pos);
        }
        return Flow::Normal;
      }
      case StmtKind::Macro: {
        scope->vars[st.name] = make_macro(st, scope);
        return Flow::Normal;
      }
      case StmtKind::CallBlock: {
        const Expr& call = *st.expr;
        Value callee = eval(*call.a, scope);
        CallArgs args = eval_args(call, scope);
        auto caller = std::make_shared<Callable>();
        caller->name = "caller";
        const Stmt* stp = &st;
        std::weak_ptr<Scope> weak = scope;
        caller->fn = [this, stp, weak](void*, CallArgs& a) -> Value {
          ScopePtr defining = weak.lock();
          if (!defining) throw_msg("caller() called outside of its call block");
          return invoke_macro_body(*stp, defining, a, "caller", Value());
        };
        args.kw.emplace_back("caller", Value::callable(caller));
        write(to_str(call_value(callee, args, call.pos)));
        return Flow::Normal;
      }
      case StmtKind::FilterBlock: {
        std::string text = capture([&] { exec_body(st.body, scope); });
        write(to_str(apply_filter_chain(*st.expr, Value::string(std::move(text)), scope)));
        return Flow::Normal;
      }
      case StmtKind::With: {
        auto inner = std::make_shared<Scope>();
        inner->parent = scope;
        for (size_t k = 0; k < st.targets.size(); ++k) inner->vars[st.targets[k]] = eval(*st.defaults[k], scope);
        return exec_body(st.body, inner);
      }
      case StmtKind::Break: return Flow::Break;
      case StmtKind::Continue: return Flow::Continue;
      case StmtKind::Generation: return exec_body(st.body, scope);
    }
    return Flow::Normal;
  }

  void assign(ScopePtr& scope, const std::vector<std::string>& targets, bool unpack, const Value& v, Pos pos) {
    if (!unpack) {
      scope->vars[targets[0]] = v;
      return;
    }
    ValueList items = iterate(v);
    if (items.size() != targets.size())
      throw_at(pos, (items.size() > targets.size() ? "too many values to unpack (expected "
                                                   : "not enough values to unpack (expected ") +
                        std::to_string(targets.size()) + ", got " + std::to_string(items.size()) + ")");
    for (size_t k = 0; k < targets.size(); ++k) scope->vars[targets[k]] = items[k];
  }

  ValueList iterate(const Value& v) {
    charge(weight_of(v));
    switch (v.kind) {
      case Kind::Undefined: return {};
      case Kind::List: return *v.list;
      case Kind::Dict: {
        ValueList keys;
        keys.reserve(v.dict->items.size());
        for (const auto& kv : v.dict->items) keys.push_back(kv.first);
        return keys;
      }
      case Kind::String: {
        std::u32string u = utf8_decode(v.s);
        guard_size(u.size() * kItemWeight);  // a list of 16M one-character strings would take GBs
        charge(u.size() * kItemWeight);
        ValueList chars;
        for (char32_t c : u) {
          std::string s;
          utf8_append(s, c);
          chars.push_back(Value::string(std::move(s)));
        }
        return chars;
      }
      default: throw_msg("'" + type_name(v) + "' object is not iterable");
    }
  }

  Flow exec_for(const Stmt& st, ScopePtr& scope) {
    Value seq = eval(*st.expr, scope);
    ValueList items = iterate(seq);
    auto loop_scope = std::make_shared<Scope>();
    loop_scope->parent = scope;
    if (st.cond) {
      ValueList kept;
      for (auto& item : items) {
        count_iteration();
        assign(loop_scope, st.targets, st.unpack, item, st.pos);
        if (eval(*st.cond, loop_scope).truthy()) kept.push_back(item);
      }
      items = std::move(kept);
    }
    const size_t n = items.size();
    for (size_t k = 0; k < n; ++k) {
      count_iteration();
      // Jinja gives every iteration a fresh scope: a `set` in the body does not carry over.
      loop_scope = std::make_shared<Scope>();
      loop_scope->parent = scope;
      assign(loop_scope, st.targets, st.unpack, items[k], st.pos);
      ValueDict loop;
      auto I = [](size_t x) { return Value::integer(static_cast<int64_t>(x)); };
      loop.items.reserve(12);
      loop.items.emplace_back(Value::string("index"), I(k + 1));
      loop.items.emplace_back(Value::string("index0"), I(k));
      loop.items.emplace_back(Value::string("revindex"), I(n - k));
      loop.items.emplace_back(Value::string("revindex0"), I(n - k - 1));
      loop.items.emplace_back(Value::string("first"), Value::boolean(k == 0));
      loop.items.emplace_back(Value::string("last"), Value::boolean(k + 1 == n));
      loop.items.emplace_back(Value::string("length"), I(n));
      loop.items.emplace_back(Value::string("depth"), I(1));
      loop.items.emplace_back(Value::string("depth0"), I(0));
      if (k > 0) loop.items.emplace_back(Value::string("previtem"), items[k - 1]);
      if (k + 1 < n) loop.items.emplace_back(Value::string("nextitem"), items[k + 1]);
      auto cycle = std::make_shared<Callable>();
      cycle->name = "cycle";
      cycle->fn = [k](void*, CallArgs& a) -> Value {
        if (a.pos.empty()) throw_msg("no items for cycling given");
        return a.pos[k % a.pos.size()];
      };
      loop.items.emplace_back(Value::string("cycle"), Value::callable(cycle));
      loop_scope->vars["loop"] = Value::make_dict(std::move(loop));
      Flow f = exec_body(st.body, loop_scope);
      if (f == Flow::Break) break;
    }
    if (n == 0) return exec_body(st.else_body, loop_scope);
    return Flow::Normal;
  }

  Value make_macro(const Stmt& st, const ScopePtr& defining) {
    auto c = std::make_shared<Callable>();
    c->name = st.name;
    const Stmt* stp = &st;
    std::weak_ptr<Scope> weak = defining;
    // The macro lives in `defining`; capture it weakly to avoid a reference cycle.
    c->fn = [this, stp, weak](void*, CallArgs& a) -> Value {
      ScopePtr def = weak.lock();
      if (!def) throw_msg("macro '" + stp->name + "' called outside of its scope");
      return invoke_macro_body(*stp, def, a, stp->name, Value());
    };
    return Value::callable(c);
  }

  Value invoke_macro_body(const Stmt& st, const ScopePtr& defining, CallArgs& a, const std::string& name,
                          Value) {
    if (macro_depth_ >= lim_.max_macro_depth)
      throw_msg("macro recursion too deep (limit " + std::to_string(lim_.max_macro_depth) + ")");
    struct MacroGuard {
      int& d;
      explicit MacroGuard(int& x) : d(x) { ++d; }
      ~MacroGuard() { --d; }
    } mg(macro_depth_);
    auto sc = std::make_shared<Scope>();
    sc->parent = defining;
    if (a.pos.size() > st.targets.size())
      throw_msg("macro '" + name + "' takes not more than " + std::to_string(st.targets.size()) +
                " argument(s)");
    std::vector<bool> bound(st.targets.size(), false);
    charge(kKeyCost * a.kw.size() * st.targets.size());  // each keyword searches the parameters
    for (size_t k = 0; k < a.pos.size(); ++k) {
      sc->vars[st.targets[k]] = a.pos[k];
      bound[k] = true;
    }
    for (auto& kv : a.kw) {
      auto it = std::find(st.targets.begin(), st.targets.end(), kv.first);
      if (it == st.targets.end()) {
        if (kv.first == "caller") {
          sc->vars["caller"] = kv.second;
          continue;
        }
        throw_msg("macro '" + name + "' takes no keyword argument '" + kv.first + "'");
      }
      size_t idx = static_cast<size_t>(it - st.targets.begin());
      if (bound[idx]) throw_msg("macro '" + name + "' got multiple values for argument '" + kv.first + "'");
      sc->vars[kv.first] = kv.second;
      bound[idx] = true;
    }
    for (size_t k = 0; k < st.targets.size(); ++k) {
      if (bound[k]) continue;
      if (k < st.defaults.size() && st.defaults[k])
        sc->vars[st.targets[k]] = eval(*st.defaults[k], sc);
      else
        sc->vars[st.targets[k]] = Value::undefined("parameter '" + st.targets[k] + "' was not provided");
    }
    std::string text = capture([&] { exec_body(st.body, sc); });
    return Value::string(std::move(text));
  }

  // ---- expressions ----
  Value eval(const Expr& e, const ScopePtr& scope) {
    DepthGuard g(*this, e.pos);
    try {
      Value r = eval_inner(e, scope);
      account(e.kind, r);
      return r;
    } catch (TemplateError& err) {
      if (!err.has_pos) {
        err.pos = e.pos;
        err.has_pos = true;
      }
      throw;
    } catch (const std::exception& ex) {
      throw TemplateError{ex.what(), e.pos, true, false};
    }
  }

  // Charges an expression's result and bounds the values a template builds. A string is copied
  // wherever it goes, so every string result costs its size. Lists and dicts are shared: only the
  // expressions that build them pay, and only those are held to the size limit (the caller's
  // variables may be larger); name, attribute and item lookups pass them on for free.
  void account(ExprKind kind, const Value& r) {
    const bool built = kind != ExprKind::Literal && kind != ExprKind::Name && kind != ExprKind::GetAttr &&
                       kind != ExprKind::GetItem && kind != ExprKind::And && kind != ExprKind::Or &&
                       kind != ExprKind::Cond;
    if (!built && !r.is_string()) return;
    charge(weight_of(r));
    if (built) guard_size(weight_of(r));
  }

  CallArgs eval_args(const Expr& e, const ScopePtr& scope) {
    CallArgs a;
    for (const auto& x : e.items) a.pos.push_back(eval(*x, scope));
    for (const auto& kv : e.kwargs) a.kw.emplace_back(kv.first, eval(*kv.second, scope));
    return a;
  }

  Value eval_inner(const Expr& e, const ScopePtr& scope) {
    switch (e.kind) {
      case ExprKind::Literal: return e.value;
      case ExprKind::Name: return lookup(scope, e.name);
      case ExprKind::List:
      case ExprKind::Tuple: {
        ValueList l;
        for (const auto& x : e.items) l.push_back(eval(*x, scope));
        return Value::make_list(std::move(l), e.kind == ExprKind::Tuple);
      }
      case ExprKind::Dict: {
        ValueDict d;
        for (size_t k = 0; k + 1 < e.items.size(); k += 2) {
          Value key = eval(*e.items[k], scope);
          if (key.kind == Kind::List && !key.tuple) throw_msg("unhashable type: 'list'");
          if (key.kind == Kind::Dict) throw_msg("unhashable type: 'dict'");
          charge(kKeyCost * d.items.size());  // set() searches the keys: quadratic
          d.set(key, eval(*e.items[k + 1], scope));
        }
        return Value::make_dict(std::move(d));
      }
      case ExprKind::GetAttr: return get_attr(eval(*e.a, scope), e.name);
      case ExprKind::GetItem: return get_item(eval(*e.a, scope), eval(*e.b, scope));
      case ExprKind::Slice: {
        Value obj = eval(*e.a, scope);
        Value start = e.b ? eval(*e.b, scope) : Value::none();
        Value stop = e.c ? eval(*e.c, scope) : Value::none();
        Value step = e.d ? eval(*e.d, scope) : Value::none();
        return slice(obj, start, stop, step);
      }
      case ExprKind::Call: {
        Value callee = eval(*e.a, scope);
        CallArgs a = eval_args(e, scope);
        return call_value(callee, a, e.pos);
      }
      case ExprKind::Filter: {
        Value base = e.a ? eval(*e.a, scope) : Value::undefined();
        CallArgs a = eval_args(e, scope);
        return apply_filter(e.name, base, a, scope);
      }
      case ExprKind::Test: {
        Value base = eval(*e.a, scope);
        CallArgs a = eval_args(e, scope);
        bool r = apply_test(e.name, base, a, scope);
        return Value::boolean(e.negated ? !r : r);
      }
      case ExprKind::Neg:
      case ExprKind::Pos: {
        Value v = eval(*e.a, scope);
        if (v.is_undefined()) undefined_error(v);
        if (v.kind == Kind::Bool) v = Value::integer(v.b);
        if (v.kind == Kind::Int) {
          if (e.kind == ExprKind::Neg && v.i == INT64_MIN) throw_msg("integer overflow");
          return e.kind == ExprKind::Neg ? Value::integer(-v.i) : v;
        }
        if (v.kind == Kind::Float) return e.kind == ExprKind::Neg ? Value::floating(-v.f) : v;
        throw_msg(std::string("bad operand type for unary ") + (e.kind == ExprKind::Neg ? "-" : "+") + ": '" +
                  type_name(v) + "'");
      }
      case ExprKind::Not: return Value::boolean(!eval(*e.a, scope).truthy());
      case ExprKind::And: {
        Value l = eval(*e.a, scope);
        return l.truthy() ? eval(*e.b, scope) : l;
      }
      case ExprKind::Or: {
        Value l = eval(*e.a, scope);
        return l.truthy() ? l : eval(*e.b, scope);
      }
      case ExprKind::Binary: return binary(e.name, eval(*e.a, scope), eval(*e.b, scope));
      case ExprKind::Compare: {
        Value left = eval(*e.items[0], scope);
        for (size_t k = 0; k < e.ops.size(); ++k) {
          Value right = eval(*e.items[k + 1], scope);
          if (!compare(e.ops[k], left, right)) return Value::boolean(false);
          left = std::move(right);
        }
        return Value::boolean(true);
      }
      case ExprKind::Cond: {
        if (eval(*e.a, scope).truthy()) return eval(*e.b, scope);
        if (e.c) return eval(*e.c, scope);
        return Value::undefined("the inline if-expression evaluated to false and no else section was defined");
      }
    }
    return Value();
  }

  Value call_value(const Value& callee, CallArgs& a, Pos pos) {
    if (callee.kind == Kind::Callable) {
      Value r = callee.fn->fn(this, a);
      return r;
    }
    if (callee.is_undefined()) undefined_error(callee);
    throw_at(pos, "'" + type_name(callee) + "' object is not callable");
  }

  // ---- attribute / item access (Jinja sandbox getattr / getitem) ----
  Value method(const Value& self, const std::string& name) {
    auto c = std::make_shared<Callable>();
    c->name = name;
    Value obj = self;
    c->fn = [this, obj, name](void*, CallArgs& a) -> Value { return call_method(obj, name, a); };
    return Value::callable(c);
  }

  static bool is_dict_method(const std::string& n) {
    return n == "items" || n == "keys" || n == "values" || n == "get" || n == "copy" || n == "update" ||
           n == "pop" || n == "popitem" || n == "clear" || n == "setdefault";
  }

  static bool is_str_method(const std::string& n) {
    static const char* names[] = {"split", "rsplit", "splitlines", "strip", "lstrip", "rstrip", "startswith",
                                  "endswith", "replace", "upper", "lower", "title", "capitalize", "find",
                                  "rfind", "index", "count", "join", "isdigit", "isalpha", "isalnum",
                                  "isspace", "islower", "isupper", "format", "swapcase", "zfill"};
    for (const char* x : names)
      if (n == x) return true;
    return false;
  }

  Value get_attr(const Value& obj, const std::string& name) {
    switch (obj.kind) {
      case Kind::Undefined: undefined_error(obj);
      case Kind::Dict: {
        if (name == "items" || name == "keys" || name == "values" || name == "get" || name == "copy")
          return method(obj, name);
        if (name == "update" || name == "pop" || name == "popitem" || name == "clear" || name == "setdefault")
          return Value::undefined("access to attribute '" + name + "' of 'dict' object is unsafe.");
        if (const Value* v = find_key(obj, name)) return *v;
        return undefined_attr(obj, name);
      }
      case Kind::Namespace: {
        if (const Value* v = find_key(obj, name)) return *v;
        return undefined_attr(obj, name);
      }
      case Kind::String:
        if (is_str_method(name)) return method(obj, name);
        return undefined_attr(obj, name);
      case Kind::List:
        if (name == "index" || name == "count") return method(obj, name);
        if (!obj.tuple && (name == "append" || name == "extend" || name == "insert" || name == "pop" ||
                           name == "remove" || name == "sort" || name == "reverse" || name == "clear"))
          return Value::undefined("access to attribute '" + name + "' of 'list' object is unsafe.");
        return undefined_attr(obj, name);
      default: return undefined_attr(obj, name);
    }
  }

  Value get_item(const Value& obj, const Value& key) {
    switch (obj.kind) {
      case Kind::Undefined: undefined_error(obj);
      case Kind::Dict: {
        if (const Value* v = find_key(obj, key)) return *v;
        if (key.is_string()) {
          Value m = get_attr(obj, key.s);
          if (m.kind == Kind::Callable) return m;
          return undefined_attr(obj, key.s);
        }
        return Value::undefined(obj_desc(obj) + " has no element " + repr(key));
      }
      case Kind::Namespace:
        if (key.is_string()) return get_attr(obj, key.s);
        return Value::undefined("'Namespace object' has no attribute " + repr(key));
      case Kind::List:
      case Kind::String: {
        if (key.kind == Kind::Int || key.kind == Kind::Bool) {
          int64_t idx = key.kind == Kind::Int ? key.i : key.b;
          if (obj.kind == Kind::List) {
            int64_t n = static_cast<int64_t>(obj.list->size());
            int64_t k = idx < 0 ? idx + n : idx;
            if (k < 0 || k >= n) return Value::undefined(obj_desc(obj) + " has no element " + std::to_string(idx));
            return (*obj.list)[static_cast<size_t>(k)];
          }
          charge(obj.s.size());
          std::u32string u = utf8_decode(obj.s);
          int64_t n = static_cast<int64_t>(u.size());
          int64_t k = idx < 0 ? idx + n : idx;
          if (k < 0 || k >= n) return Value::undefined(obj_desc(obj) + " has no element " + std::to_string(idx));
          std::string s;
          utf8_append(s, u[static_cast<size_t>(k)]);
          return Value::string(std::move(s));
        }
        if (key.is_string()) return get_attr(obj, key.s);
        return Value::undefined(obj_desc(obj) + " has no element " + repr(key));
      }
      default:
        if (key.is_string()) return get_attr(obj, key.s);
        return Value::undefined(obj_desc(obj) + " has no element " + repr(key));
    }
  }

  static int64_t slice_index(const Value& v) {
    if (v.kind == Kind::Int) return v.i;
    if (v.kind == Kind::Bool) return v.b;
    throw_msg("slice indices must be integers or None");
  }

  Value slice(const Value& obj, const Value& start_v, const Value& stop_v, const Value& step_v) {
    if (obj.is_undefined()) undefined_error(obj);
    charge(weight_of(obj));
    int64_t step = step_v.is_none() ? 1 : slice_index(step_v);
    if (step == 0) throw_msg("slice step cannot be zero");
    if (step == INT64_MIN) step = -INT64_MAX;
    std::u32string u;
    int64_t len;
    if (obj.kind == Kind::List) {
      len = static_cast<int64_t>(obj.list->size());
    } else if (obj.kind == Kind::String) {
      u = utf8_decode(obj.s);
      len = static_cast<int64_t>(u.size());
    } else {
      throw_msg("'" + type_name(obj) + "' object is not subscriptable");
    }
    auto adjust = [&](const Value& v, bool is_start) -> int64_t {
      if (v.is_none()) return is_start ? (step < 0 ? len - 1 : 0) : (step < 0 ? -1 : len);
      int64_t x = slice_index(v);
      if (x < 0) {
        x = x < -len ? -1 - len + len : x + len;  // avoid overflow for very negative values
        if (x < 0) x = step < 0 ? -1 : 0;
      } else if (x >= len) {
        x = step < 0 ? len - 1 : len;
      }
      return x;
    };
    int64_t start = adjust(start_v, true), stop = adjust(stop_v, false);
    if (obj.kind == Kind::List) {
      ValueList out;
      if (step > 0)
        for (int64_t k = start; k < stop; k += step) out.push_back((*obj.list)[static_cast<size_t>(k)]);
      else
        for (int64_t k = start; k > stop; k += step) out.push_back((*obj.list)[static_cast<size_t>(k)]);
      return Value::make_list(std::move(out), obj.tuple);
    }
    std::u32string out;
    if (step > 0)
      for (int64_t k = start; k < stop; k += step) out.push_back(u[static_cast<size_t>(k)]);
    else
      for (int64_t k = start; k > stop; k += step) out.push_back(u[static_cast<size_t>(k)]);
    return Value::string(utf8_encode(out));
  }

  // ---- operators ----
  static double num(const Value& v) {
    return v.kind == Kind::Float ? v.f : v.kind == Kind::Int ? static_cast<double>(v.i) : (v.b ? 1.0 : 0.0);
  }
  static int64_t inum(const Value& v) { return v.kind == Kind::Int ? v.i : (v.b ? 1 : 0); }

  [[noreturn]] static void bad_operands(const std::string& op, const Value& a, const Value& b) {
    throw_msg("unsupported operand type(s) for " + op + ": '" + type_name(a) + "' and '" + type_name(b) + "'");
  }

  Value repeat(const Value& seq, int64_t n) {
    const uint64_t w = weight_of(seq);
    if (n < 0 || w == 0) n = 0;  // '' * 10**15 is '', without 10**15 empty appends
    if (n > 0 && static_cast<uint64_t>(n) > max_value_ / w) guard_size(UINT64_MAX);
    if (seq.is_string()) {
      std::string out;
      out.reserve(static_cast<size_t>(n) * seq.s.size());
      for (int64_t k = 0; k < n; ++k) out += seq.s;
      return Value::string(std::move(out));
    }
    ValueList out;
    for (int64_t k = 0; k < n; ++k) out.insert(out.end(), seq.list->begin(), seq.list->end());
    return Value::make_list(std::move(out), seq.tuple);
  }

  Value binary(const std::string& op, const Value& a, const Value& b) {
    if (op == "~") {
      std::string s = to_str(a);
      s += to_str(b);
      guard_size(s.size());
      return Value::string(std::move(s));
    }
    if (a.is_undefined()) undefined_error(a);
    if (b.is_undefined()) undefined_error(b);
    const bool both_num = a.is_number() && b.is_number();
    const bool any_float = a.kind == Kind::Float || b.kind == Kind::Float;
    if (op == "+") {
      if (both_num) {
        if (any_float) return Value::floating(num(a) + num(b));
        int64_t r;
        if (__builtin_add_overflow(inum(a), inum(b), &r)) throw_msg("integer overflow");
        return Value::integer(r);
      }
      if (a.is_string() && b.is_string()) {
        guard_size(a.s.size() + b.s.size());
        return Value::string(a.s + b.s);
      }
      if (a.is_list() && b.is_list() && a.tuple == b.tuple) {
        guard_size(weight_of(a) + weight_of(b));
        ValueList l = *a.list;
        l.insert(l.end(), b.list->begin(), b.list->end());
        return Value::make_list(std::move(l), a.tuple);
      }
      if (a.is_string() || b.is_string())
        throw_msg("can only concatenate " + type_name(a) + " (not \"" + type_name(b) + "\") to " + type_name(a));
      bad_operands(op, a, b);
    }
    if (op == "-") {
      if (!both_num) bad_operands(op, a, b);
      if (any_float) return Value::floating(num(a) - num(b));
      int64_t r;
      if (__builtin_sub_overflow(inum(a), inum(b), &r)) throw_msg("integer overflow");
      return Value::integer(r);
    }
    if (op == "*") {
      if (both_num) {
        if (any_float) return Value::floating(num(a) * num(b));
        int64_t r;
        if (__builtin_mul_overflow(inum(a), inum(b), &r)) throw_msg("integer overflow");
        return Value::integer(r);
      }
      if ((a.is_string() || a.is_list()) && (b.kind == Kind::Int || b.kind == Kind::Bool)) return repeat(a, inum(b));
      if ((b.is_string() || b.is_list()) && (a.kind == Kind::Int || a.kind == Kind::Bool)) return repeat(b, inum(a));
      bad_operands(op, a, b);
    }
    if (op == "/") {
      if (!both_num) bad_operands(op, a, b);
      if (num(b) == 0) throw_msg("division by zero");
      return Value::floating(num(a) / num(b));
    }
    if (op == "//" || op == "%") {
      if (!both_num) {
        if (op == "%" && a.is_string()) throw_msg("printf-style '%' string formatting is not supported");
        bad_operands(op, a, b);
      }
      if (num(b) == 0) throw_msg(op == "//" ? "integer division or modulo by zero" : "modulo by zero");
      if (!any_float) {
        int64_t x = inum(a), y = inum(b);
        if (x == INT64_MIN && y == -1) throw_msg("integer overflow");
        int64_t q = x / y, r = x % y;
        if (r != 0 && ((r < 0) != (y < 0))) {
          q -= 1;
          r += y;
        }
        return Value::integer(op == "//" ? q : r);
      }
      double x = num(a), y = num(b);
      double m = std::fmod(x, y);
      if (m != 0 && ((m < 0) != (y < 0))) m += y;
      if (op == "%") return Value::floating(m);
      return Value::floating(std::floor((x - m) / y + 0.5) == (x - m) / y ? (x - m) / y : std::floor(x / y));
    }
    if (op == "**") {
      if (!both_num) bad_operands("** or pow()", a, b);
      if (!any_float && inum(b) >= 0) {
        int64_t base = inum(a), e = inum(b), r = 1;
        while (e > 0) {
          if (e & 1)
            if (__builtin_mul_overflow(r, base, &r)) throw_msg("integer overflow");
          e >>= 1;
          if (e > 0 && __builtin_mul_overflow(base, base, &base)) throw_msg("integer overflow");
        }
        return Value::integer(r);
      }
      if (num(a) == 0 && num(b) < 0) throw_msg("0.0 cannot be raised to a negative power");
      return Value::floating(std::pow(num(a), num(b)));
    }
    throw_msg("unknown operator " + op);
  }

  bool contains(const Value& container, const Value& item) {
    if (container.kind != Kind::Dict) charge(weight_of(container));
    switch (container.kind) {
      case Kind::Undefined: return false;
      case Kind::String:
        if (!item.is_string()) {
          if (item.is_undefined()) undefined_error(item);
          throw_msg("'in <string>' requires string as left operand, not " + type_name(item));
        }
        return find_sub(container.s, item.s) != std::string::npos;
      case Kind::List:
        for (const auto& x : *container.list)
          if (equals(x, item)) return true;
        return false;
      case Kind::Dict: return find_key(container, item) != nullptr;
      default: throw_msg("argument of type '" + type_name(container) + "' is not iterable");
    }
  }

  bool compare(const std::string& op, const Value& a, const Value& b) {
    if (op != "in" && op != "notin") charge(std::min(weight_of(a), weight_of(b)));
    if (op == "==") return equals(a, b);
    if (op == "!=") return !equals(a, b);
    if (op == "in") return contains(b, a);
    if (op == "notin") return !contains(b, a);
    if (a.is_undefined()) undefined_error(a);
    if (b.is_undefined()) undefined_error(b);
    std::optional<bool> r;
    if (op == "<") r = less_than(a, b);
    else if (op == ">") r = less_than(b, a);
    else if (op == "<=") {
      auto x = less_than(b, a);
      if (x) r = !*x;
    } else if (op == ">=") {
      auto x = less_than(a, b);
      if (x) r = !*x;
    }
    if (!r) throw_msg("'" + op + "' not supported between instances of '" + type_name(a) + "' and '" + type_name(b) + "'");
    return *r;
  }

  // ---- methods on str / dict / list ----
  // Python's optional start and end arguments (a.pos[1], a.pos[2]) of the search methods over len
  // items: a negative one counts from the end (floored at 0), end is capped at len, start may pass it.
  // None stands for no bound where none_ok (the str methods; list.index takes integers only).
  static std::pair<int64_t, int64_t> search_bounds(const CallArgs& a, int64_t len, const std::string& name,
                                                   bool none_ok) {
    if (a.pos.size() > 3) throw_msg(name + " expected at most 3 arguments, got " + std::to_string(a.pos.size()));
    auto bound = [&](size_t idx, int64_t absent) {
      if (idx >= a.pos.size() || (none_ok && a.pos[idx].is_none())) return absent;
      const int64_t x = slice_index(a.pos[idx]);
      return x < 0 ? std::max<int64_t>(x + len, 0) : x;
    };
    return {bound(1, 0), std::min(bound(2, len), len)};
  }

  // The part of s that find, rfind, index, count, startswith and endswith search: s[start:end] for
  // their optional start and end arguments (code points, clamped like slice bounds), and start, to
  // turn positions in it back into positions in s. nullopt where start lies past end (or past the
  // string): Python finds nothing there, not even ''.
  struct SearchRange {
    std::string_view text;
    int64_t start = 0;
  };
  static std::optional<SearchRange> search_range(std::string_view s, const CallArgs& a, const std::string& name) {
    if (a.pos.size() < 2) return SearchRange{s, 0};  // the whole string: no code points to count
    const auto [start, end] = search_bounds(a, static_cast<int64_t>(utf8_length(s)), name, /*none_ok=*/true);
    if (start > end) return std::nullopt;
    const size_t from = utf8_offset(s, static_cast<size_t>(start));
    return SearchRange{s.substr(from, utf8_offset(s, static_cast<size_t>(end)) - from), start};
  }

  Value call_method(const Value& obj, const std::string& name, CallArgs& a) {
    if (obj.kind == Kind::Dict) {
      if (name == "items") {
        ValueList l;
        for (const auto& kv : obj.dict->items) l.push_back(Value::make_list({kv.first, kv.second}, true));
        return Value::make_list(std::move(l));
      }
      if (name == "keys" || name == "values") {
        ValueList l;
        for (const auto& kv : obj.dict->items) l.push_back(name == "keys" ? kv.first : kv.second);
        return Value::make_list(std::move(l));
      }
      if (name == "get") {
        if (a.pos.empty()) throw_msg("get expected at least 1 argument, got 0");
        const Value* v = find_key(obj, a.pos[0]);
        return v ? *v : (a.pos.size() > 1 ? a.pos[1] : Value::none());
      }
      if (name == "copy") return Value::make_dict(*obj.dict);
    }
    charge(weight_of(obj));  // list.count/index and every str method walk the whole value
    if (obj.kind == Kind::List) {
      const std::vector<Value>& items = *obj.list;
      if (name == "count") {
        if (a.pos.size() != 1) throw_msg("count() takes exactly one argument (" + std::to_string(a.pos.size()) + " given)");
        int64_t n = 0;
        for (const auto& x : items) n += equals(x, a.pos[0]);
        return Value::integer(n);
      }
      // index(x[, start[, end]])
      if (a.pos.empty()) throw_msg("index expected at least 1 argument, got 0");
      const auto [start, end] = search_bounds(a, static_cast<int64_t>(items.size()), "index", /*none_ok=*/false);
      for (int64_t k = start; k < end; ++k)
        if (equals(items[static_cast<size_t>(k)], a.pos[0])) return Value::integer(k);
      throw_msg(repr(a.pos[0]) + " is not in list");
    }
    // str methods
    const std::string& s = obj.s;
    if (name == "split" || name == "rsplit") {
      Value sep = arg_or(a, 0, "sep", Value::none());
      int64_t maxsplit = to_int_arg(arg_or(a, 1, "maxsplit", Value::integer(-1)), "maxsplit");
      return str_list(py_split(s, sep, maxsplit, name == "rsplit", max_value_));
    }
    if (name == "splitlines")
      return str_list(py_splitlines(s, arg_or(a, 0, "keepends", Value::boolean(false)).truthy(), max_value_));
    if (name == "strip" || name == "lstrip" || name == "rstrip") {
      const Value* chars = find_arg(a, 0, "chars");
      return Value::string(py_strip(s, chars, name != "rstrip", name != "lstrip"));
    }
    if (name == "startswith" || name == "endswith") {
      if (a.pos.empty()) throw_msg(name + " takes at least 1 argument (0 given)");
      const Value& p = a.pos[0];
      const auto range = search_range(s, a, name);
      auto test = [&](std::string_view x) {
        return range && (name == "startswith" ? range->text.starts_with(x) : range->text.ends_with(x));
      };
      if (p.is_string()) return Value::boolean(test(p.s));
      if (p.kind == Kind::List && p.tuple) {
        for (const auto& x : *p.list) {
          if (!x.is_string()) throw_msg("tuple for " + name + " must only contain str, not " + type_name(x));
          if (test(x.s)) return Value::boolean(true);
        }
        return Value::boolean(false);
      }
      throw_msg(name + " first arg must be str or a tuple of str, not " + type_name(p));
    }
    if (name == "replace") {
      if (a.pos.size() < 2) throw_msg("replace expected at least 2 arguments");
      if (!a.pos[0].is_string() || !a.pos[1].is_string()) throw_msg("replace() arguments must be str");
      int64_t count = a.pos.size() > 2 ? to_int_arg(a.pos[2], "count") : -1;
      return Value::string(replace(s, a.pos[0].s, a.pos[1].s, count));
    }
    if (name == "upper") return Value::string(str_upper(s));
    if (name == "lower") return Value::string(str_lower(s));
    if (name == "title") return Value::string(py_title(s));
    if (name == "capitalize") return Value::string(str_capitalize(s));
    if (name == "swapcase") {
      std::string out;
      for (char32_t c : utf8_decode(s)) utf8_append(out, cp_is_upper(c) ? cp_lower(c) : cp_upper(c));
      return Value::string(out);
    }
    if (name == "find" || name == "rfind" || name == "index" || name == "count") {
      if (a.pos.empty() || !a.pos[0].is_string()) throw_msg(name + "() argument must be str");
      const std::string& sub = a.pos[0].s;
      const auto range = search_range(s, a, name);
      if (name == "count") {
        if (!range) return Value::integer(0);
        const std::string_view text = range->text;
        if (sub.empty()) return Value::integer(static_cast<int64_t>(utf8_length(text) + 1));
        int64_t n = 0;
        for (size_t p = find_sub(text, sub); p != std::string::npos; p = find_sub(text, sub, p + sub.size())) ++n;
        return Value::integer(n);
      }
      size_t p = std::string::npos;
      if (range) p = name == "rfind" ? rfind_sub(range->text, sub) : find_sub(range->text, sub);
      if (p == std::string::npos) {
        if (name == "index") throw_msg("substring not found");
        return Value::integer(-1);
      }
      return Value::integer(range->start + static_cast<int64_t>(utf8_length(range->text.substr(0, p))));
    }
    if (name == "join") {
      if (a.pos.empty()) throw_msg("join() takes exactly one argument (0 given)");
      std::string out;
      bool first = true;
      for (const auto& x : iterate(a.pos[0])) {
        if (!x.is_string()) throw_msg("sequence item: expected str instance, " + type_name(x) + " found");
        if (!first) out += s;
        first = false;
        out += x.s;
        guard_size(out.size());
      }
      return Value::string(out);
    }
    if (name == "zfill") {
      int64_t w = a.pos.empty() ? 0 : to_int_arg(a.pos[0], "width");
      int64_t n = static_cast<int64_t>(utf8_length(s));
      if (w <= n) return obj;
      guard_size(static_cast<size_t>(w));
      std::string pad(static_cast<size_t>(w - n), '0');
      if (!s.empty() && (s[0] == '-' || s[0] == '+')) return Value::string(s.substr(0, 1) + pad + s.substr(1));
      return Value::string(pad + s);
    }
    if (name == "format") return Value::string(str_format(s, a));
    // is* predicates
    std::u32string u = utf8_decode(s);
    if (u.empty()) return Value::boolean(false);
    auto all = [&](auto pred) {
      for (char32_t c : u)
        if (!pred(c)) return Value::boolean(false);
      return Value::boolean(true);
    };
    auto alpha = [](char32_t c) { return (c < 0x80 && std::isalpha(static_cast<int>(c))) || (c >= 0x80 && cp_cased(c)); };
    auto digit = [](char32_t c) { return c >= '0' && c <= '9'; };
    if (name == "isdigit") return all(digit);
    if (name == "isalpha") return all(alpha);
    if (name == "isalnum") return all([&](char32_t c) { return alpha(c) || digit(c); });
    if (name == "isspace") return all(is_py_space);
    if (name == "islower" || name == "isupper") {
      bool any_cased = false;
      for (char32_t c : u) {
        if (!cp_cased(c)) continue;
        any_cased = true;
        if (name == "islower" ? cp_is_upper(c) : (cp_is_lower(c))) return Value::boolean(false);
      }
      return Value::boolean(any_cased);
    }
    throw_msg("'" + type_name(obj) + "' object has no method '" + name + "'");
  }

  std::string str_format(const std::string& fmt, const CallArgs& a) {
    std::string out;
    size_t auto_idx = 0;
    for (size_t k = 0; k < fmt.size(); ++k) {
      char c = fmt[k];
      if (c == '{') {
        if (k + 1 < fmt.size() && fmt[k + 1] == '{') {
          out += '{';
          ++k;
          continue;
        }
        size_t close = fmt.find('}', k);
        if (close == std::string::npos) throw_msg("Single '{' encountered in format string");
        std::string field = fmt.substr(k + 1, close - k - 1);
        if (field.find_first_of(":!") != std::string::npos) throw_msg("format specs are not supported in str.format");
        const Value* v = nullptr;
        if (field.empty()) {
          if (auto_idx >= a.pos.size()) throw_msg("Replacement index " + std::to_string(auto_idx) + " out of range");
          v = &a.pos[auto_idx++];
        } else if (std::all_of(field.begin(), field.end(), [](char ch) { return ch >= '0' && ch <= '9'; })) {
          size_t idx = std::stoul(field);
          if (idx >= a.pos.size()) throw_msg("Replacement index " + field + " out of range");
          v = &a.pos[idx];
        } else {
          for (const auto& kv : a.kw)
            if (kv.first == field) v = &kv.second;
          if (!v) throw_msg("KeyError: '" + field + "'");
        }
        out += to_str(*v);
        guard_size(out.size());
        k = close;
      } else if (c == '}') {
        if (k + 1 < fmt.size() && fmt[k + 1] == '}') ++k;
        else throw_msg("Single '}' encountered in format string");
        out += '}';
      } else {
        out += c;
      }
    }
    return out;
  }

  std::string replace(const std::string& s, const std::string& from, const std::string& to, int64_t count) {
    std::string out;
    if (from.empty()) {
      std::u32string u = utf8_decode(s);
      int64_t n = 0;
      for (size_t k = 0; k <= u.size(); ++k) {
        if (count < 0 || n < count) {
          out += to;
          ++n;
        }
        if (k < u.size()) utf8_append(out, u[k]);
        guard_size(out.size());
      }
      return out;
    }
    size_t pos = 0;
    int64_t n = 0;
    while (count < 0 || n < count) {
      size_t f = find_sub(s, from, pos);
      if (f == std::string::npos) break;
      out.append(s, pos, f - pos);
      out += to;
      guard_size(out.size());
      pos = f + from.size();
      ++n;
    }
    out.append(s, pos, std::string::npos);
    guard_size(out.size());
    return out;
  }

  // ---- globals ----
  void add_global(const std::string& name, std::function<Value(CallArgs&)> fn) {
    auto c = std::make_shared<Callable>();
    c->name = name;
    c->fn = [fn](void*, CallArgs& a) { return fn(a); };
    globals_->vars[name] = Value::callable(c);
  }

  void install_globals() {
    add_global("raise_exception", [this](CallArgs& a) -> Value {
      std::string msg = a.pos.empty() ? std::string() : to_str(a.pos[0]);
      throw TemplateError{msg, {}, false, true};
    });
    add_global("strftime_now", [](CallArgs& a) -> Value {
      if (a.pos.empty() || !a.pos[0].is_string()) throw_msg("strftime_now() expects a format string");
      std::time_t t = std::time(nullptr);
      std::tm tm{};
      localtime_r(&t, &tm);
      char buf[512];
      size_t n = std::strftime(buf, sizeof buf, a.pos[0].s.c_str(), &tm);
      return Value::string(std::string(buf, n));
    });
    add_global("range", [](CallArgs& a) -> Value {
      int64_t start = 0, stop, step = 1;
      if (a.pos.empty() || a.pos.size() > 3) throw_msg("range expected 1 to 3 arguments");
      if (a.pos.size() == 1) {
        stop = to_int_arg(a.pos[0], "stop");
      } else {
        start = to_int_arg(a.pos[0], "start");
        stop = to_int_arg(a.pos[1], "stop");
        if (a.pos.size() == 3) step = to_int_arg(a.pos[2], "step");
      }
      if (step == 0) throw_msg("range() arg 3 must not be zero");
      double count = std::ceil((static_cast<double>(stop) - static_cast<double>(start)) / static_cast<double>(step));
      if (count > 100000)
        throw_msg("Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000).");
      ValueList l;
      l.reserve(count > 0 ? static_cast<size_t>(count) : 0);
      // Stop when k + step overflows: near INT64_MAX it wrapped around and the loop never ended.
      for (int64_t k = start; step > 0 ? k < stop : k > stop;) {
        l.push_back(Value::integer(k));
        if (__builtin_add_overflow(k, step, &k)) break;
      }
      return Value::make_list(std::move(l));
    });
    auto dict_from = [this](CallArgs& a) {
      ValueDict d;
      if (!a.pos.empty()) {
        if (a.pos.size() > 1) throw_msg("expected at most 1 positional argument");
        const Value& src = a.pos[0];
        if (src.kind == Kind::Dict || src.kind == Kind::Namespace) {
          d = *src.dict;
        } else if (src.kind == Kind::List) {
          for (const auto& p : *src.list) {
            if (p.kind != Kind::List || p.list->size() != 2) throw_msg("dictionary update sequence element has wrong length");
            charge(kKeyCost * d.items.size());  // set() searches the keys: quadratic
            d.set((*p.list)[0], (*p.list)[1]);
          }
        } else {
          throw_msg("'" + type_name(src) + "' object is not iterable");
        }
      }
      for (auto& kv : a.kw) d.set(Value::string(kv.first), kv.second);
      return d;
    };
    add_global("dict", [dict_from](CallArgs& a) { return Value::make_dict(dict_from(a)); });
    add_global("namespace", [dict_from](CallArgs& a) { return Value::make_namespace(dict_from(a)); });
  }

  // ---- filters ----
  Value apply_filter_chain(const Expr& f, const Value& base, const ScopePtr& scope) {
    Value v = f.a ? apply_filter_chain(*f.a, base, scope) : base;
    CallArgs a = eval_args(f, scope);
    return apply_filter(f.name, v, a, scope);
  }

  // Jinja make_attrgetter: "a.b.0" walks getitem for each part.
  Value attr_path(const Value& item, const std::string& path) {
    Value cur = item;
    size_t start = 0;
    while (true) {
      size_t dot = path.find('.', start);
      std::string part = path.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
      bool numeric = !part.empty() && std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; });
      if (numeric && part.size() < 18)
        cur = get_item(cur, Value::integer(std::stoll(part)));
      else
        cur = get_item(cur, Value::string(part));
      if (dot == std::string::npos) break;
      start = dot + 1;
    }
    return cur;
  }

  Value sort_key(const Value& v, bool case_sensitive) {
    if (!case_sensitive && v.is_string()) return Value::string(str_lower(v.s));
    return v;
  }

  void sort_values(ValueList& items, const std::function<Value(const Value&)>& key, bool reverse) {
    std::vector<std::pair<Value, size_t>> keyed;
    keyed.reserve(items.size());
    uint64_t key_weight = 0;
    for (size_t k = 0; k < items.size(); ++k) {
      keyed.emplace_back(key(items[k]), k);
      key_weight += kKeyCost + weight_of(keyed.back().first);
    }
    charge(key_weight * std::bit_width(items.size()));  // each key takes part in ~log2(n) comparisons
    auto lt = [this](const Value& x, const Value& y) {
      auto r = less_than(x, y);
      if (!r) throw_msg("'<' not supported between instances of '" + type_name(x) + "' and '" + type_name(y) + "'");
      return *r;
    };
    std::stable_sort(keyed.begin(), keyed.end(), [&](const auto& x, const auto& y) {
      return reverse ? lt(y.first, x.first) : lt(x.first, y.first);
    });
    ValueList out;
    out.reserve(items.size());
    for (auto& kv : keyed) out.push_back(items[kv.second]);
    items = std::move(out);
  }

  bool test_by_name(const std::string& test, const Value& v, CallArgs& a, const ScopePtr& scope) {
    return apply_test(test, v, a, scope);
  }

  Value select_like(const std::string& fname, const Value& seq, CallArgs& a, const ScopePtr& scope) {
    bool by_attr = fname == "selectattr" || fname == "rejectattr";
    bool reject = fname == "reject" || fname == "rejectattr";
    size_t off = 0;
    std::string attr;
    if (by_attr) {
      if (a.pos.empty() || !a.pos[0].is_string()) throw_msg(fname + " requires an attribute name");
      attr = a.pos[0].s;
      off = 1;
    }
    std::string test;
    CallArgs targs;
    if (a.pos.size() > off) {
      if (!a.pos[off].is_string()) throw_msg(fname + ": test name must be a string");
      test = a.pos[off].s;
      targs.pos.assign(a.pos.begin() + static_cast<long>(off) + 1, a.pos.end());
      targs.kw = a.kw;
    }
    ValueList out;
    for (const auto& item : iterate(seq)) {
      Value v = by_attr ? attr_path(item, attr) : item;
      bool r = test.empty() ? v.truthy() : test_by_name(test, v, targs, scope);
      if (r != reject) out.push_back(item);
    }
    return Value::make_list(std::move(out));
  }

  Value apply_filter(const std::string& name, const Value& v, CallArgs& a, const ScopePtr& scope) {
    if (v.is_string()) charge(v.s.size());  // string filters walk the string; list ones use iterate()
    Value r = apply_filter_inner(name, v, a, scope);
    if (r.is_string()) guard_size(r.s.size());
    return r;
  }

  Value apply_filter_inner(const std::string& name, const Value& v, CallArgs& a, const ScopePtr& scope) {
    if (name == "default" || name == "d") {
      Value def = arg_or(a, 0, "default_value", Value::string(""));
      bool boolean = arg_or(a, 1, "boolean", Value::boolean(false)).truthy();
      if (v.is_undefined() || (boolean && !v.truthy())) return def;
      return v;
    }
    if (name == "length" || name == "count") {
      switch (v.kind) {
        case Kind::Undefined: return Value::integer(0);
        case Kind::String: return Value::integer(static_cast<int64_t>(utf8_length(v.s)));
        case Kind::List: return Value::integer(static_cast<int64_t>(v.list->size()));
        case Kind::Dict: return Value::integer(static_cast<int64_t>(v.dict->items.size()));
        default: throw_msg("object of type '" + type_name(v) + "' has no len()");
      }
    }
    if (name == "string") return Value::string(to_str(v));
    if (name == "safe") return v;
    if (name == "e" || name == "escape" || name == "forceescape") return Value::string(html_escape(to_str(v)));
    if (name == "upper") return Value::string(str_upper(to_str(v)));
    if (name == "lower") return Value::string(str_lower(to_str(v)));
    if (name == "capitalize") return Value::string(str_capitalize(to_str(v)));
    if (name == "title") return Value::string(jinja_title(to_str(v)));
    if (name == "trim") {
      const Value* chars = find_arg(a, 0, "chars");
      return Value::string(py_strip(to_str(v), chars, true, true));
    }
    if (name == "replace") {
      if (a.pos.size() < 2) throw_msg("replace filter expects 2 arguments");
      int64_t count = to_int_arg(arg_or(a, 2, "count", Value::integer(-1)), "count");
      if (count == 0 && find_arg(a, 2, "count") && find_arg(a, 2, "count")->is_none()) count = -1;
      return Value::string(replace(to_str(v), to_str(a.pos[0]), to_str(a.pos[1]), count));
    }
    if (name == "tojson") {
      JsonOptions o;
      Value indent = arg_or(a, 0, "indent", Value::none());
      if (indent.kind == Kind::Int || indent.kind == Kind::Bool) {
        o.indent = std::string(static_cast<size_t>(std::max<int64_t>(0, std::min<int64_t>(indent.kind == Kind::Int ? indent.i : indent.b, 1 << 16))), ' ');
      } else if (indent.is_string()) {
        o.indent = indent.s;
      } else if (!indent.is_none()) {
        throw_msg("tojson: indent must be an integer or string");
      }
      if (o.indent) o.item_sep = ",";
      Value seps = arg_or(a, 99, "separators", Value::none());
      if (seps.kind == Kind::List && seps.list->size() == 2 && (*seps.list)[0].is_string() && (*seps.list)[1].is_string()) {
        o.item_sep = (*seps.list)[0].s;
        o.key_sep = (*seps.list)[1].s;
      }
      o.sort_keys = arg_or(a, 99, "sort_keys", Value::boolean(false)).truthy();
      o.ensure_ascii = arg_or(a, 99, "ensure_ascii", Value::boolean(false)).truthy();
      o.max_bytes = max_value_;
      std::string s = to_json(v, o);
      return Value::string(std::move(s));
    }
    if (name == "first" || name == "last") {
      ValueList items = iterate(v);
      if (items.empty()) return Value::undefined(std::string("No ") + name + " item, sequence was empty.");
      return name == "first" ? items.front() : items.back();
    }
    if (name == "list") return Value::make_list(iterate(v));
    if (name == "items") {
      if (v.is_undefined()) return Value::make_list();
      if (v.kind != Kind::Dict) throw_msg("Can only get item pairs from a mapping.");
      ValueList l;
      for (const auto& kv : v.dict->items) l.push_back(Value::make_list({kv.first, kv.second}, true));
      return Value::make_list(std::move(l));
    }
    if (name == "join") {
      std::string sep = to_str(arg_or(a, 0, "d", Value::string("")));
      Value attr = arg_or(a, 1, "attribute", Value::none());
      std::string out;
      bool first = true;
      for (const auto& x : iterate(v)) {
        if (!first) out += sep;
        first = false;
        out += to_str(attr.is_none() ? x : attr_path(x, to_str(attr)));
        guard_size(out.size());
      }
      return Value::string(std::move(out));
    }
    if (name == "int") {
      Value def = arg_or(a, 0, "default", Value::integer(0));
      switch (v.kind) {
        case Kind::Int: return v;
        case Kind::Bool: return Value::integer(v.b);
        case Kind::Float:
          if (std::isnan(v.f) || std::isinf(v.f) || std::fabs(v.f) > 9.2e18) return def;
          return Value::integer(static_cast<int64_t>(v.f));
        case Kind::String: {
          std::string s = py_strip(v.s, nullptr, true, true);
          std::string digits;
          for (char c : s)
            if (c != '_') digits += c;
          char* end = nullptr;
          errno = 0;
          long long x = std::strtoll(digits.c_str(), &end, 10);
          if (!digits.empty() && end && *end == '\0' && errno == 0) return Value::integer(x);
          double d = std::strtod(s.c_str(), &end);
          if (!s.empty() && end && *end == '\0' && std::isfinite(d) && std::fabs(d) < 9.2e18)
            return Value::integer(static_cast<int64_t>(d));
          return def;
        }
        default: return def;
      }
    }
    if (name == "float") {
      Value def = arg_or(a, 0, "default", Value::floating(0.0));
      switch (v.kind) {
        case Kind::Int: return Value::floating(static_cast<double>(v.i));
        case Kind::Bool: return Value::floating(v.b ? 1.0 : 0.0);
        case Kind::Float: return v;
        case Kind::String: {
          std::string s = py_strip(v.s, nullptr, true, true);
          char* end = nullptr;
          double d = std::strtod(s.c_str(), &end);
          if (!s.empty() && end && *end == '\0') return Value::floating(d);
          return def;
        }
        default: return def;
      }
    }
    if (name == "abs") {
      if (v.kind == Kind::Int) {
        if (v.i == INT64_MIN) throw_msg("integer overflow");
        return Value::integer(v.i < 0 ? -v.i : v.i);
      }
      if (v.kind == Kind::Bool) return Value::integer(v.b);
      if (v.kind == Kind::Float) return Value::floating(std::fabs(v.f));
      throw_msg("bad operand type for abs(): '" + type_name(v) + "'");
    }
    if (name == "round") {
      int64_t precision = to_int_arg(arg_or(a, 0, "precision", Value::integer(0)), "precision");
      std::string method = to_str(arg_or(a, 1, "method", Value::string("common")));
      if (!v.is_number()) throw_msg("round: value must be a number");
      double x = num(v);
      precision = std::clamp<int64_t>(precision, -300, 300);
      double m = std::pow(10.0, static_cast<double>(precision));
      double r;
      if (method == "common") {
        // Python round(): correctly rounded, ties to even; round(int, n) stays an int for n >= 0.
        if (v.kind != Kind::Float && precision >= 0) return Value::integer(inum(v));
        if (!std::isfinite(x)) return Value::floating(x);
        if (precision >= 0) {
          char buf[400];
          std::snprintf(buf, sizeof buf, "%.*f", static_cast<int>(precision), x);
          r = std::strtod(buf, nullptr);
        } else {
          r = std::nearbyint(x / std::pow(10.0, static_cast<double>(-precision))) * std::pow(10.0, static_cast<double>(-precision));
        }
        if (v.kind != Kind::Float) return Value::integer(static_cast<int64_t>(r));
        return Value::floating(r);
      }
      if (method == "ceil") r = std::ceil(x * m) / m;
      else if (method == "floor") r = std::floor(x * m) / m;
      else throw_msg("method must be common, ceil or floor");
      return Value::floating(r);
    }
    if (name == "reverse") {
      if (v.is_string()) {
        std::u32string u = utf8_decode(v.s);
        std::reverse(u.begin(), u.end());
        return Value::string(utf8_encode(u));
      }
      ValueList l = iterate(v);
      std::reverse(l.begin(), l.end());
      return Value::make_list(std::move(l));
    }
    if (name == "dictsort") {
      if (v.kind != Kind::Dict) throw_msg("You can only sort by either \"key\" or \"value\"");
      bool cs = arg_or(a, 0, "case_sensitive", Value::boolean(false)).truthy();
      std::string by = to_str(arg_or(a, 1, "by", Value::string("key")));
      bool rev = arg_or(a, 2, "reverse", Value::boolean(false)).truthy();
      if (by != "key" && by != "value") throw_msg("You can only sort by either \"key\" or \"value\"");
      ValueList l;
      for (const auto& kv : v.dict->items) l.push_back(Value::make_list({kv.first, kv.second}, true));
      size_t idx = by == "key" ? 0 : 1;
      sort_values(l, [&](const Value& p) { return sort_key((*p.list)[idx], cs); }, rev);
      return Value::make_list(std::move(l));
    }
    if (name == "sort") {
      bool rev = arg_or(a, 0, "reverse", Value::boolean(false)).truthy();
      bool cs = arg_or(a, 1, "case_sensitive", Value::boolean(false)).truthy();
      Value attr = arg_or(a, 2, "attribute", Value::none());
      ValueList l = iterate(v);
      sort_values(l, [&](const Value& x) { return sort_key(attr.is_none() ? x : attr_path(x, to_str(attr)), cs); }, rev);
      return Value::make_list(std::move(l));
    }
    if (name == "unique") {
      bool cs = arg_or(a, 0, "case_sensitive", Value::boolean(false)).truthy();
      Value attr = arg_or(a, 1, "attribute", Value::none());
      ValueList out, seen;
      uint64_t seen_weight = 0;
      for (const auto& x : iterate(v)) {
        Value key = sort_key(attr.is_none() ? x : attr_path(x, to_str(attr)), cs);
        charge(seen_weight);  // compared with every key kept so far: quadratic
        bool dup = false;
        for (const auto& s : seen)
          if (equals(s, key)) {
            dup = true;
            break;
          }
        if (dup) continue;
        seen_weight += kKeyCost + weight_of(key);
        seen.push_back(key);
        out.push_back(x);
      }
      return Value::make_list(std::move(out));
    }
    if (name == "min" || name == "max") {
      bool cs = arg_or(a, 0, "case_sensitive", Value::boolean(false)).truthy();
      Value attr = arg_or(a, 1, "attribute", Value::none());
      ValueList l = iterate(v);
      if (l.empty()) return Value::undefined("No aggregated item, sequence was empty.");
      sort_values(l, [&](const Value& x) { return sort_key(attr.is_none() ? x : attr_path(x, to_str(attr)), cs); }, false);
      return name == "min" ? l.front() : l.back();
    }
    if (name == "sum") {
      Value attr = arg_or(a, 0, "attribute", Value::none());
      Value total = arg_or(a, 1, "start", Value::integer(0));
      for (const auto& x : iterate(v)) {
        total = binary("+", total, attr.is_none() ? x : attr_path(x, to_str(attr)));
        charge(weight_of(total));  // summing strings or lists copies the total each time
      }
      return total;
    }
    if (name == "map") {
      ValueList out;
      const Value* attr = find_arg(a, 99, "attribute");
      if (attr) {
        Value def = arg_or(a, 99, "default", Value::undefined());
        for (const auto& x : iterate(v)) {
          Value r = attr_path(x, to_str(*attr));
          out.push_back(r.is_undefined() && !def.is_undefined() ? def : r);
        }
        return Value::make_list(std::move(out));
      }
      if (a.pos.empty() || !a.pos[0].is_string()) throw_msg("map requires a filter name");
      std::string fname = a.pos[0].s;
      CallArgs fa;
      fa.pos.assign(a.pos.begin() + 1, a.pos.end());
      fa.kw = a.kw;
      uint64_t args_weight = 0;  // a filter may copy its arguments (replace does), once per item
      for (const auto& x : fa.pos) args_weight += weight_of(x);
      for (const auto& kv : fa.kw) args_weight += weight_of(kv.second);
      for (const auto& x : iterate(v)) {
        charge(args_weight);
        out.push_back(apply_filter(fname, x, fa, scope));
      }
      return Value::make_list(std::move(out));
    }
    if (name == "select" || name == "reject" || name == "selectattr" || name == "rejectattr")
      return select_like(name, v, a, scope);
    if (name == "attr") {
      if (a.pos.empty()) throw_msg("attr filter requires a name");
      std::string attr = to_str(a.pos[0]);
      if (v.kind == Kind::Dict && find_key(v, attr) && !is_dict_method(attr)) return undefined_attr(v, attr);
      return get_attr(v, attr);
    }
    if (name == "indent") {
      Value width = arg_or(a, 0, "width", Value::integer(4));
      bool first = arg_or(a, 1, "first", Value::boolean(false)).truthy();
      bool blank = arg_or(a, 2, "blank", Value::boolean(false)).truthy();
      std::string ind = width.is_string() ? width.s : std::string(static_cast<size_t>(std::clamp<int64_t>(to_int_arg(width, "width"), 0, 1 << 16)), ' ');
      std::string s = to_str(v) + "\n";
      std::vector<std::string> lines = py_splitlines(s, false, max_value_);
      std::string rv;
      if (blank) {
        for (size_t k = 0; k < lines.size(); ++k) {
          if (k) rv += "\n" + ind;
          rv += lines[k];
          guard_size(rv.size());
        }
      } else {
        rv = lines.empty() ? std::string() : lines[0];
        for (size_t k = 1; k < lines.size(); ++k) {
          rv += "\n";
          if (!lines[k].empty()) rv += ind;
          rv += lines[k];
          guard_size(rv.size());
        }
      }
      if (first) rv = ind + rv;
      return Value::string(rv);
    }
    if (name == "center") {
      int64_t width = to_int_arg(arg_or(a, 0, "width", Value::integer(80)), "width");
      std::string s = to_str(v);
      int64_t n = static_cast<int64_t>(utf8_length(s));
      if (width <= n) return Value::string(s);
      guard_size(static_cast<size_t>(width));
      int64_t pad = width - n, left = pad / 2 + (pad & width & 1);
      return Value::string(std::string(static_cast<size_t>(left), ' ') + s + std::string(static_cast<size_t>(pad - left), ' '));
    }
    if (name == "wordcount")
      return Value::integer(static_cast<int64_t>(py_split(to_str(v), Value::none(), -1, false, max_value_).size()));
    throw_msg("unknown filter '" + name + "'");
  }

  // ---- tests ----
  bool apply_test(const std::string& name, const Value& v, CallArgs& a, const ScopePtr& scope) {
    auto arg0 = [&]() -> const Value& {
      if (a.pos.empty()) throw_msg("test '" + name + "' requires an argument");
      return a.pos[0];
    };
    if (name == "defined") return !v.is_undefined();
    if (name == "undefined") return v.is_undefined();
    if (name == "none") return v.is_none();
    if (name == "boolean") return v.kind == Kind::Bool;
    if (name == "false") return v.kind == Kind::Bool && !v.b;
    if (name == "true") return v.kind == Kind::Bool && v.b;
    if (name == "integer") return v.kind == Kind::Int;
    if (name == "float") return v.kind == Kind::Float;
    if (name == "number") return v.is_number();
    if (name == "string") return v.is_string();
    if (name == "mapping") return v.kind == Kind::Dict;
    if (name == "sequence") return v.kind == Kind::List || v.kind == Kind::String || v.kind == Kind::Dict;
    if (name == "iterable") return v.kind == Kind::List || v.kind == Kind::String || v.kind == Kind::Dict || v.is_undefined();
    if (name == "callable") return v.kind == Kind::Callable;
    if (name == "escaped") return false;
    if (name == "lower") return v.is_string() && str_lower(v.s) == v.s;
    if (name == "upper") return v.is_string() && str_upper(v.s) == v.s;
    if (name == "odd" || name == "even") {
      if (v.kind != Kind::Int && v.kind != Kind::Bool) throw_msg("test '" + name + "' requires an integer");
      int64_t x = inum(v);
      return name == "odd" ? (x % 2 != 0) : (x % 2 == 0);
    }
    if (name == "divisibleby") {
      const Value& d = arg0();
      Value r = binary("%", v, d);
      return !r.truthy();
    }
    if (name == "eq" || name == "equalto" || name == "==") return equals(v, arg0());
    if (name == "ne" || name == "!=") return !equals(v, arg0());
    if (name == "lt" || name == "lessthan" || name == "<") return compare("<", v, arg0());
    if (name == "le" || name == "<=") return compare("<=", v, arg0());
    if (name == "gt" || name == "greaterthan" || name == ">") return compare(">", v, arg0());
    if (name == "ge" || name == ">=") return compare(">=", v, arg0());
    if (name == "in") return contains(arg0(), v);
    if (name == "sameas") {
      const Value& o = arg0();
      if (v.kind != o.kind) return false;
      switch (v.kind) {
        case Kind::List: return v.list == o.list;
        case Kind::Dict:
        case Kind::Namespace: return v.dict == o.dict;
        case Kind::Callable: return v.fn == o.fn;
        default: return equals(v, o);
      }
    }
    if (name == "filter" || name == "test") {
      static const char* filters[] = {"default", "d", "length", "count", "string", "safe", "e", "escape",
                                      "forceescape", "upper", "lower", "capitalize", "title", "trim",
                                      "replace", "tojson", "first", "last", "list", "items", "join", "int",
                                      "float", "abs", "round", "reverse", "dictsort", "sort", "unique",
                                      "min", "max", "sum", "map", "select", "reject", "selectattr",
                                      "rejectattr", "attr", "indent", "center", "wordcount"};
      static const char* tests[] = {"defined", "undefined", "none", "boolean", "false", "true", "integer",
                                    "float", "number", "string", "mapping", "sequence", "iterable",
                                    "callable", "escaped", "lower", "upper", "odd", "even", "divisibleby",
                                    "eq", "equalto", "ne", "lt", "le", "gt", "ge", "in", "sameas", "filter",
                                    "test", "lessthan", "greaterthan", "==", "!=", "<", "<=", ">", ">="};
      const Value& n = arg0();
      if (!n.is_string()) return false;
      if (name == "filter") {
        for (const char* f : filters)
          if (n.s == f) return true;
      } else {
        for (const char* t : tests)
          if (n.s == t) return true;
      }
      return false;
    }
    throw_msg("unknown test '" + name + "'");
  }
};

}  // namespace

std::string render_program(const Program& program, const Value& variables, const RenderLimits& limits) {
  Interp interp(limits);
  return interp.render(program, variables);
}

}  // namespace tandem::jinja
