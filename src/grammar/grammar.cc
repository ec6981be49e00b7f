#include "grammar/grammar.h"

#include <fmt/format.h>

#include <algorithm>

#include "grammar/text_util.h"

#include "util/error.h"

namespace tandem::grammar {

int32_t Grammar::push(Expr e) {
  exprs_.push_back(std::move(e));
  return static_cast<int32_t>(exprs_.size()) - 1;
}

int32_t Grammar::add_rule(std::string_view name) {
  std::string n(name.empty() ? "rule" : name);
  if (find_rule(n) >= 0) {
    for (int i = 1;; ++i) {
      std::string c = fmt::format("{}_{}", n, i);
      if (find_rule(c) < 0) {
        n = c;
        break;
      }
    }
  }
  names_.push_back(std::move(n));
  bodies_.push_back(-1);
  return static_cast<int32_t>(names_.size()) - 1;
}

void Grammar::set_body(int32_t rule, int32_t expr) { bodies_.at(rule) = expr; }

int32_t Grammar::find_rule(std::string_view name) const {
  for (size_t i = 0; i < names_.size(); ++i)
    if (names_[i] == name) return static_cast<int32_t>(i);
  return -1;
}

int32_t Grammar::empty() { return push(Expr{}); }

int32_t Grammar::bytes(std::string_view literal) {
  if (literal.empty()) return empty();
  Expr e;
  e.kind = Kind::kBytes;
  e.bytes = std::string(literal);
  return push(std::move(e));
}

int32_t Grammar::char_class(std::vector<std::pair<uint32_t, uint32_t>> ranges, bool negated) {
  for (auto& r : ranges) r.second = std::min<uint32_t>(r.second, 0x10FFFF);
  auto merged = detail::normalize_ranges(std::move(ranges), negated);
  // Drop surrogates: they have no UTF-8 encoding.
  std::vector<std::pair<uint32_t, uint32_t>> out;
  for (auto [lo, hi] : merged) {
    if (hi < 0xD800 || lo > 0xDFFF) {
      out.push_back({lo, hi});
      continue;
    }
    if (lo < 0xD800) out.push_back({lo, 0xD7FF});
    if (hi > 0xDFFF) out.push_back({0xE000, hi});
  }
  Expr e;
  e.kind = Kind::kCharClass;
  e.ranges = std::move(out);
  return push(std::move(e));
}

int32_t Grammar::sequence(std::vector<int32_t> items) {
  if (items.size() == 1) return items[0];
  if (items.empty()) return empty();
  Expr e;
  e.kind = Kind::kSequence;
  e.children = std::move(items);
  return push(std::move(e));
}

int32_t Grammar::choice(std::vector<int32_t> alternatives) {
  if (alternatives.size() == 1) return alternatives[0];
  Expr e;
  e.kind = Kind::kChoice;
  e.children = std::move(alternatives);  // empty: matches nothing
  return push(std::move(e));
}

int32_t Grammar::ref(int32_t rule) {
  TANDEM_CHECK(rule >= 0 && rule < num_rules());
  Expr e;
  e.kind = Kind::kRuleRef;
  e.rule = rule;
  return push(std::move(e));
}

int32_t Grammar::repeat(int32_t expr, int32_t min, int32_t max) {
  if (min < 0 || (max != kUnbounded && max < min)) fail("grammar: invalid repetition {{{},{}}}", min, max);
  if (min == 1 && max == 1) return expr;
  Expr e;
  e.kind = Kind::kRepeat;
  e.children = {expr};
  e.min = min;
  e.max = max;
  return push(std::move(e));
}

namespace {
std::string show_cp(uint32_t c) {
  if (c == '\\' || c == ']' || c == '-' || c == '^') return fmt::format("\\{}", static_cast<char>(c));
  if (c >= 0x20 && c < 0x7F) return std::string(1, static_cast<char>(c));
  return c <= 0xFF ? fmt::format("\\x{:02x}", c) : fmt::format("\\U{:08x}", c);
}
}  // namespace

std::string Grammar::to_string() const {
  std::string out;
  auto show = [&](auto&& self, int32_t id) -> std::string {
    const Expr& e = exprs_[id];
    switch (e.kind) {
      case Kind::kEmpty: return "\"\"";
      case Kind::kBytes: {
        std::string s = "\"";
        for (unsigned char c : e.bytes) {
          if (c == '"' || c == '\\') s += '\\', s += static_cast<char>(c);
          else if (c >= 0x20 && c < 0x7F) s += static_cast<char>(c);
          else s += fmt::format("\\x{:02x}", c);
        }
        return s + "\"";
      }
      case Kind::kCharClass: {
        std::string s = "[";
        for (auto [lo, hi] : e.ranges) s += lo == hi ? show_cp(lo) : show_cp(lo) + "-" + show_cp(hi);
        return s + "]";
      }
      case Kind::kSequence:
      case Kind::kChoice: {
        std::string s = "(";
        for (size_t i = 0; i < e.children.size(); ++i) {
          if (i) s += e.kind == Kind::kChoice ? " | " : " ";
          s += self(self, e.children[i]);
        }
        return s + ")";
      }
      case Kind::kRuleRef: return names_[e.rule];
      case Kind::kRepeat: {
        std::string s = self(self, e.children[0]);
        if (e.max == kUnbounded) return s + fmt::format("{{{},}}", e.min);
        return s + fmt::format("{{{},{}}}", e.min, e.max);
      }
    }
    return "";
  };
  for (int32_t r = 0; r < num_rules(); ++r) {
    out += names_[r] + " ::= " + (bodies_[r] < 0 ? std::string("<undefined>") : show(show, bodies_[r])) + "\n";
  }
  return out;
}

Grammar grammar_from_choice(std::span<const std::string> choices) {
  if (choices.empty()) fail("choice: the list of choices is empty");
  Grammar g;
  int32_t root = g.add_rule("root");
  std::vector<int32_t> alts;
  for (const auto& c : choices) alts.push_back(g.bytes(c));
  g.set_body(root, g.choice(std::move(alts)));
  g.set_root(root);
  return g;
}

}  // namespace tandem::grammar
