// EBNF / GBNF front end (the grammar text llama.cpp, xgrammar and vLLM's guided_grammar accept).
#include <fmt/format.h>

#include <map>

#include "grammar/grammar.h"
#include "grammar/text_util.h"
#include "util/error.h"

namespace tandem::grammar {
namespace {

using detail::Ranges;

class EbnfParser {
 public:
  EbnfParser(Grammar& g, std::string_view text) : g_(g), t_(text) {}

  void parse(std::string_view root_name) {
    skip();
    if (at_end()) fail("grammar: the grammar text is empty");
    while (!at_end()) {
      std::string name = identifier();
      if (name.empty()) error("expected a rule name");
      skip();
      if (t_.substr(i_, 3) != "::=") error(fmt::format("expected '::=' after rule name '{}'", name));
      i_ += 3;
      int32_t rule = rule_id(name);
      if (defined_.count(rule)) error(fmt::format("rule '{}' is defined twice", name));
      defined_[rule] = true;
      g_.set_body(rule, alternatives(0));
      skip();
    }
    for (const auto& [name, id] : ids_) {
      if (!defined_.count(id)) fail("grammar: rule '{}' is used but never defined", name);
    }
    auto it = ids_.find(std::string(root_name));
    if (it == ids_.end()) fail("grammar: no rule named '{}' (the start rule)", std::string(root_name));
    g_.set_root(it->second);
  }

 private:
  [[noreturn]] void error(std::string_view what) const {
    size_t line = 1, col = 1;
    for (size_t k = 0; k < i_ && k < t_.size(); ++k) {
      if (t_[k] == '\n') ++line, col = 1;
      else ++col;
    }
    fail("grammar: {} at line {} column {}", what, line, col);
  }
  bool at_end() const { return i_ >= t_.size(); }
  char peek() const { return t_[i_]; }

  void skip() {
    while (!at_end()) {
      char c = peek();
      if (c == '#') {
        while (!at_end() && peek() != '\n') ++i_;
      } else if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
        ++i_;
      } else {
        break;
      }
    }
  }
  static bool name_char(char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.';
  }
  std::string identifier() {
    size_t s = i_;
    while (!at_end() && name_char(peek())) ++i_;
    return std::string(t_.substr(s, i_ - s));
  }
  // Whether a `name ::=` starts at i_ (the next rule).
  bool rule_start() {
    size_t save = i_;
    std::string name = identifier();
    skip();
    bool yes = !name.empty() && t_.substr(i_, 3) == "::=";
    i_ = save;
    return yes;
  }
  int32_t rule_id(const std::string& name) {
    auto it = ids_.find(name);
    if (it != ids_.end()) return it->second;
    int32_t id = g_.add_rule(name);
    ids_[name] = id;
    return id;
  }

  int32_t alternatives(int depth) {
    std::vector<int32_t> alts{sequence(depth)};
    while (!at_end() && peek() == '|') {
      ++i_;
      alts.push_back(sequence(depth));
    }
    return g_.choice(std::move(alts));
  }

  int32_t sequence(int depth) {
    std::vector<int32_t> items;
    while (true) {
      skip();
      if (at_end() || peek() == '|' || peek() == ')') break;
      if (depth == 0 && rule_start()) break;
      items.push_back(postfix(element(depth)));
    }
    return g_.sequence(std::move(items));
  }

  int32_t postfix(int32_t e) {
    while (!at_end()) {
      char c = peek();
      if (c == '*') ++i_, e = g_.star(e);
      else if (c == '+') ++i_, e = g_.plus(e);
      else if (c == '?') ++i_, e = g_.optional(e);
      else if (c == '{') {
        ++i_;
        auto number = [&](int32_t& v) {
          skip();
          size_t s = i_;
          int64_t x = 0;
          while (!at_end() && std::isdigit(static_cast<unsigned char>(peek()))) x = std::min<int64_t>(x * 10 + (t_[i_++] - '0'), 1 << 20);
          v = static_cast<int32_t>(x);
          skip();
          return i_ > s;
        };
        int32_t lo = 0, hi;
        bool has_lo = number(lo);
        if (!at_end() && peek() == ',') {
          ++i_;
          if (!number(hi)) hi = Grammar::kUnbounded;
        } else {
          if (!has_lo) error("expected a repetition count");
          hi = lo;
        }
        if (at_end() || peek() != '}') error("expected '}' closing a repetition");
        ++i_;
        if (hi != Grammar::kUnbounded && hi < lo) error("repetition {m,n} with n < m");
        if (lo > 10000 || hi > 10000) error("repetition count above 10000");
        e = g_.repeat(e, lo, hi);
      } else {
        break;
      }
    }
    return e;
  }

  uint32_t hex(int n) {
    uint32_t v = 0;
    for (int k = 0; k < n; ++k) {
      if (at_end() || !std::isxdigit(static_cast<unsigned char>(peek()))) error("bad hexadecimal escape");
      char c = t_[i_++];
      v = v * 16 + (c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10);
    }
    return v;
  }
  // One (possibly escaped) code point of a literal or class.
  uint32_t character() {
    if (peek() != '\\') return detail::decode_utf8(t_, i_);
    ++i_;
    if (at_end()) error("trailing backslash");
    char c = t_[i_++];
    switch (c) {
      case 'n': return '\n';
      case 't': return '\t';
      case 'r': return '\r';
      case 'f': return '\f';
      case 'v': return '\v';
      case 'b': return '\b';
      case '0': return 0;
      case 'x': return hex(2);
      case 'u': return hex(4);
      case 'U': return hex(8);
      case '\\': case '"': case '\'': case '[': case ']': case '-': case '^': case '/': case '.': case '*':
      case '+': case '?': case '(': case ')': case '{': case '}': case '|': case ' ':
        return static_cast<unsigned char>(c);
      default: error(fmt::format("unknown escape '\\{}'", c));
    }
  }

  int32_t element(int depth) {
    char c = peek();
    if (c == '"' || c == '\'') {
      ++i_;
      std::string bytes;
      while (true) {
        if (at_end() || peek() == '\n') error("unterminated string literal");
        if (peek() == c) {
          ++i_;
          break;
        }
        uint32_t cp = character();
        if (cp > 0x10FFFF) error("code point out of range");
        detail::append_utf8(bytes, cp);
      }
      return g_.bytes(bytes);
    }
    if (c == '[') {
      ++i_;
      bool negated = false;
      if (!at_end() && peek() == '^') negated = true, ++i_;
      Ranges ranges;
      while (true) {
        if (at_end()) error("unterminated character class");
        if (peek() == ']') {
          ++i_;
          break;
        }
        uint32_t lo = character(), hi = lo;
        if (i_ + 1 < t_.size() && peek() == '-' && t_[i_ + 1] != ']') {
          ++i_;
          hi = character();
          if (hi < lo) error("character range out of order");
        }
        ranges.push_back({lo, hi});
      }
      return g_.char_class(std::move(ranges), negated);
    }
    if (c == '.') {
      ++i_;
      return g_.char_class({{0, 0x10FFFF}});
    }
    if (c == '(') {
      ++i_;
      skip();
      if (!at_end() && peek() == '=') error("lookahead assertions are not supported");
      int32_t e = alternatives(depth + 1);
      skip();
      if (at_end() || peek() != ')') error("missing ')'");
      ++i_;
      return e;
    }
    std::string name = identifier();
    if (name.empty()) error(fmt::format("unexpected character '{}'", c));
    return g_.ref(rule_id(name));
  }

  Grammar& g_;
  std::string_view t_;
  size_t i_ = 0;
  std::map<std::string, int32_t> ids_;
  std::map<int32_t, bool> defined_;
};

}  // namespace

Grammar grammar_from_ebnf(std::string_view text, std::string_view root_rule) {
  Grammar g;
  EbnfParser(g, text).parse(root_rule);
  return g;
}

}  // namespace tandem::grammar
