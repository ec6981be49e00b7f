// Regex front end: a recursive-descent parser that builds Grammar expressions directly.
#include <fmt/format.h>

#include "grammar/grammar.h"
#include "grammar/text_util.h"
#include "util/error.h"

namespace tandem::grammar {
namespace {

using detail::Ranges;

const Ranges kDigit = {{'0', '9'}};
const Ranges kWord = {{'0', '9'}, {'A', 'Z'}, {'_', '_'}, {'a', 'z'}};
const Ranges kSpace = {{'\t', '\r'}, {' ', ' '}, {0xA0, 0xA0}, {0x1680, 0x1680}, {0x2000, 0x200A},
                       {0x2028, 0x2029}, {0x202F, 0x202F}, {0x205F, 0x205F}, {0x3000, 0x3000}, {0xFEFF, 0xFEFF}};

// The JSON string escape of a character that may not appear raw in a JSON string.
std::string json_escape(uint32_t c) {
  switch (c) {
    case '"': return "\\\"";
    case '\\': return "\\\\";
    case '\b': return "\\b";
    case '\f': return "\\f";
    case '\n': return "\\n";
    case '\r': return "\\r";
    case '\t': return "\\t";
    default: return fmt::format("\\u{:04x}", c);
  }
}
bool json_special(uint32_t c) { return c < 0x20 || c == '"' || c == '\\'; }

class RegexParser {
 public:
  RegexParser(Grammar& g, std::string_view p, bool json) : g_(g), p_(p), json_(json) {}

  int32_t parse() {
    if (!p_.empty() && p_[0] == '^') ++i_;
    int32_t e = alternation();
    if (i_ < p_.size()) error(p_[i_] == ')' ? "unbalanced ')'" : "unexpected character");
    return e;
  }

 private:
  [[noreturn]] void error(std::string_view what) const {
    fail("regex: {} at offset {} in '{}'", what, i_, std::string(p_));
  }
  bool at_end() const { return i_ >= p_.size(); }
  char peek() const { return p_[i_]; }

  int32_t alternation() {
    std::vector<int32_t> alts{sequence()};
    while (!at_end() && peek() == '|') {
      ++i_;
      alts.push_back(sequence());
    }
    return g_.choice(std::move(alts));
  }

  int32_t sequence() {
    std::vector<int32_t> items;
    while (!at_end() && peek() != '|' && peek() != ')') {
      if (peek() == '$') {
        if (i_ + 1 == p_.size()) {
          ++i_;
          break;
        }
        error("'$' is only supported at the end of the pattern");
      }
      items.push_back(quantified());
    }
    return g_.sequence(std::move(items));
  }

  // Parses {m}, {m,}, {m,n} at i_ (which is at '{'); false (i_ unchanged) if it is not one.
  bool bounds(int32_t& lo, int32_t& hi) {
    size_t j = i_ + 1;
    auto number = [&](int32_t& v) {
      size_t s = j;
      int64_t x = 0;
      while (j < p_.size() && p_[j] >= '0' && p_[j] <= '9') x = std::min<int64_t>(x * 10 + (p_[j++] - '0'), 1 << 20);
      v = static_cast<int32_t>(x);
      return j > s;
    };
    if (!number(lo)) return false;
    hi = lo;
    if (j < p_.size() && p_[j] == ',') {
      ++j;
      if (!number(hi)) hi = Grammar::kUnbounded;
    }
    if (j >= p_.size() || p_[j] != '}') return false;
    i_ = j + 1;
    return true;
  }

  int32_t quantified() {
    int32_t e = atom();
    while (!at_end()) {
      int32_t lo, hi;
      char c = peek();
      if (c == '*') lo = 0, hi = Grammar::kUnbounded, ++i_;
      else if (c == '+') lo = 1, hi = Grammar::kUnbounded, ++i_;
      else if (c == '?') lo = 0, hi = 1, ++i_;
      else if (c == '{' && bounds(lo, hi)) {
        if (hi != Grammar::kUnbounded && hi < lo) error("repetition {m,n} with n < m");
        if (lo > 10000 || hi > 10000) error("repetition count above 10000");
      } else break;
      if (!at_end() && peek() == '?') ++i_;  // lazy: same language
      else if (!at_end() && peek() == '+') error("possessive quantifiers are not supported");
      e = g_.repeat(e, lo, hi);
    }
    return e;
  }

  int32_t set_expr(Ranges ranges, bool negated) {
    Ranges r = detail::normalize_ranges(std::move(ranges), negated);
    if (!json_) return g_.char_class(std::move(r));
    static const Ranges kAllowed = {{0x20, 0x21}, {0x23, 0x5B}, {0x5D, 0x10FFFF}};
    Ranges safe;
    std::vector<int32_t> alts;
    for (auto [lo, hi] : r) {
      for (uint32_t c = lo; c <= std::min<uint32_t>(hi, 0x5C); ++c)
        if (json_special(c)) alts.push_back(g_.bytes(json_escape(c)));
      for (auto [alo, ahi] : kAllowed) {
        uint32_t a = std::max(lo, alo), b = std::min(hi, ahi);
        if (a <= b) safe.push_back({a, b});
      }
    }
    if (!safe.empty()) alts.insert(alts.begin(), g_.char_class(std::move(safe)));
    return g_.choice(std::move(alts));
  }

  int32_t literal(uint32_t c) {
    if (json_ && json_special(c)) return g_.bytes(json_escape(c));
    std::string s;
    detail::append_utf8(s, c);
    return g_.bytes(s);
  }

  uint32_t hex(size_t n) {
    uint32_t v = 0;
    for (size_t k = 0; k < n; ++k) {
      if (at_end() || !isxdigit(static_cast<unsigned char>(peek()))) error("bad hexadecimal escape");
      char c = p_[i_++];
      v = v * 16 + (c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10);
    }
    return v;
  }

  // After a backslash: a code point (returns true, sets cp) or a class (returns false, sets cls).
  bool escape(uint32_t& cp, Ranges& cls, bool in_class) {
    if (at_end()) error("trailing backslash");
    char c = p_[i_++];
    switch (c) {
      case 'd': cls = kDigit; return false;
      case 'D': cls = detail::normalize_ranges(kDigit, true); return false;
      case 'w': cls = kWord; return false;
      case 'W': cls = detail::normalize_ranges(kWord, true); return false;
      case 's': cls = kSpace; return false;
      case 'S': cls = detail::normalize_ranges(kSpace, true); return false;
      case 'n': cp = '\n'; return true;
      case 't': cp = '\t'; return true;
      case 'r': cp = '\r'; return true;
      case 'f': cp = '\f'; return true;
      case 'v': cp = '\v'; return true;
      case '0': cp = 0; return true;
      case 'x': cp = hex(2); return true;
      case 'u':
        if (!at_end() && peek() == '{') {
          ++i_;
          cp = 0;
          size_t n = 0;
          while (!at_end() && peek() != '}') cp = cp * 16 + hex(1), ++n;
          if (at_end() || n == 0 || n > 6 || cp > 0x10FFFF) error("bad \\u{...} escape");
          ++i_;
          return true;
        }
        cp = hex(4);
        return true;
      case 'b':
        if (in_class) {
          cp = '\b';
          return true;
        }
        error("word boundaries (\\b) are not supported");
      default:
        if (c >= '1' && c <= '9') error("backreferences are not supported");
        if (std::isalnum(static_cast<unsigned char>(c))) error(fmt::format("unsupported escape '\\{}'", c));
        cp = static_cast<unsigned char>(c);
        return true;
    }
  }

  uint32_t next_cp() { return detail::decode_utf8(p_, i_); }

  int32_t char_class() {
    ++i_;  // '['
    bool negated = false;
    if (!at_end() && peek() == '^') negated = true, ++i_;
    Ranges ranges;
    bool first = true;
    while (true) {
      if (at_end()) error("unterminated character class");
      if (peek() == ']' && !first) {
        ++i_;
        break;
      }
      first = false;
      uint32_t lo;
      Ranges cls;
      if (peek() == '\\') {
        ++i_;
        if (!escape(lo, cls, true)) {
          ranges.insert(ranges.end(), cls.begin(), cls.end());
          continue;
        }
      } else {
        lo = next_cp();
      }
      uint32_t hi = lo;
      if (i_ + 1 < p_.size() && peek() == '-' && p_[i_ + 1] != ']') {
        ++i_;
        if (peek() == '\\') {
          ++i_;
          if (!escape(hi, cls, true)) error("a class escape cannot end a range");
        } else {
          hi = next_cp();
        }
        if (hi < lo) error("character range out of order");
      }
      ranges.push_back({lo, hi});
    }
    return set_expr(std::move(ranges), negated);
  }

  int32_t atom() {
    char c = peek();
    switch (c) {
      case '(': {
        ++i_;
        if (!at_end() && peek() == '?') {
          if (p_.substr(i_, 2) == "?:") {
            i_ += 2;
          } else if ((p_.substr(i_, 2) == "?<" && p_.substr(i_, 3) != "?<=" && p_.substr(i_, 3) != "?<!") ||
                     p_.substr(i_, 3) == "?P<") {
            size_t close = p_.find('>', i_);
            if (close == std::string_view::npos) error("unterminated group name");
            i_ = close + 1;
          } else {
            error("lookaround and inline flags are not supported");
          }
        }
        int32_t e = alternation();
        if (at_end() || peek() != ')') error("missing ')'");
        ++i_;
        return e;
      }
      case '[': return char_class();
      case '.': ++i_; return set_expr({{'\n', '\n'}}, true);
      case '\\': {
        ++i_;
        uint32_t cp;
        Ranges cls;
        if (escape(cp, cls, false)) return literal(cp);
        return set_expr(std::move(cls), false);
      }
      case '*':
      case '+':
      case '?': error("nothing to repeat");
      case '^': error("'^' is only supported at the start of the pattern");
      default: return literal(next_cp());
    }
  }

  Grammar& g_;
  std::string_view p_;
  bool json_;
  size_t i_ = 0;
};

}  // namespace

int32_t add_regex(Grammar& g, std::string_view pattern, bool json_string) {
  return RegexParser(g, pattern, json_string).parse();
}

Grammar grammar_from_regex(std::string_view pattern) {
  Grammar g;
  int32_t root = g.add_rule("root");
  g.set_body(root, add_regex(g, pattern, false));
  g.set_root(root);
  return g;
}

}  // namespace tandem::grammar
