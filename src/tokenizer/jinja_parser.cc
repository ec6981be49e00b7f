// Lexer and parser for the chat-template Jinja subset. Whitespace handling follows Jinja2's lexer
// with transformers' settings: trim_blocks=True (first newline after a block/comment tag is
// dropped), lstrip_blocks=True (spaces/tabs before a block/comment tag at line start are dropped),
// keep_trailing_newline=False (one trailing newline of the source is dropped), '-' / '+' markers.
#include <algorithm>
#include <cstring>
#include <set>

#include "tokenizer/jinja_ast.h"

namespace tandem::jinja {
namespace {

enum class Tok { Text, VarBegin, VarEnd, BlockBegin, BlockEnd, Name, String, Int, Float, Op, End };

struct Token {
  Tok type;
  std::string text;  // Text data, name, decoded string, operator
  int64_t ival = 0;
  double fval = 0;
  Pos pos;
};

bool is_ws(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'; }
bool is_name_start(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
bool is_name_char(char c) { return is_name_start(c) || (c >= '0' && c <= '9'); }
bool is_digit(char c) { return c >= '0' && c <= '9'; }

class Lexer {
 public:
  explicit Lexer(const std::string& source) {
    // Normalize newlines to \n and drop one trailing newline (keep_trailing_newline=False).
    src_.reserve(source.size());
    for (size_t i = 0; i < source.size(); ++i) {
      if (source[i] == '\r') {
        src_ += '\n';
        if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
      } else {
        src_ += source[i];
      }
    }
    if (!src_.empty() && src_.back() == '\n') src_.pop_back();
    line_starts_.push_back(0);
    for (size_t i = 0; i < src_.size(); ++i)
      if (src_[i] == '\n') line_starts_.push_back(i + 1);
  }

  std::vector<Token> run() {
    size_t pos = 0;
    bool line_starting = true;
    const size_t n = src_.size();
    while (pos < n) {
      size_t start = find_tag(pos);
      if (start == std::string::npos) {
        emit_text(src_.substr(pos), pos);
        break;
      }
      std::string text = src_.substr(pos, start - pos);
      char kind = src_[start + 1];
      char sign = start + 2 < n ? src_[start + 2] : '\0';
      if (sign != '-' && sign != '+') sign = '\0';
      size_t raw_end = 0;
      bool raw = kind == '%' && match_raw_begin(start, raw_end);
      // Whitespace control on the text before the tag.
      if (sign == '-') {
        size_t e = text.size();
        while (e > 0 && is_ws(text[e - 1])) --e;
        text.resize(e);
      } else if (sign != '+' && kind != '{') {
        size_t nl = text.rfind('\n');
        size_t l_pos = nl == std::string::npos ? 0 : nl + 1;
        if (l_pos > 0 || line_starting) {
          bool all_ws = l_pos < text.size();
          for (size_t k = l_pos; k < text.size() && all_ws; ++k) all_ws = is_ws(text[k]);
          if (all_ws) text.resize(l_pos);
        }
      }
      emit_text(text, pos);
      if (raw) {
        pos = lex_raw(raw_end, line_starting);
        continue;
      }
      size_t body = start + 2 + (sign ? 1 : 0);
      if (kind == '#') {
        pos = lex_comment(start, body, line_starting);
      } else {
        pos = lex_tag(start, body, kind == '%', line_starting);
      }
    }
    tokens_.push_back({Tok::End, "", 0, 0, pos_of(src_.size())});
    return std::move(tokens_);
  }

  Pos pos_of(size_t off) const {
    auto it = std::upper_bound(line_starts_.begin(), line_starts_.end(), off);
    size_t line = static_cast<size_t>(it - line_starts_.begin());
    size_t col = off - line_starts_[line - 1] + 1;
    return {static_cast<int>(line), static_cast<int>(col)};
  }

 private:
  std::string src_;
  std::vector<size_t> line_starts_;
  std::vector<Token> tokens_;

  size_t find_tag(size_t from) const {
    for (size_t i = from; i + 1 < src_.size(); ++i)
      if (src_[i] == '{' && (src_[i + 1] == '{' || src_[i + 1] == '%' || src_[i + 1] == '#')) return i;
    return std::string::npos;
  }

  void emit_text(const std::string& text, size_t off) {
    if (!text.empty()) tokens_.push_back({Tok::Text, text, 0, 0, pos_of(off)});
  }

  // {%[-+]?\s*raw\s*(-%}\s*|%})  -- sets `after` to the offset after the match.
  bool match_raw_begin(size_t start, size_t& after) const {
    size_t i = start + 2;
    if (i < src_.size() && (src_[i] == '-' || src_[i] == '+')) ++i;
    while (i < src_.size() && is_ws(src_[i])) ++i;
    if (src_.compare(i, 3, "raw") != 0) return false;
    i += 3;
    if (i < src_.size() && is_name_char(src_[i])) return false;
    while (i < src_.size() && is_ws(src_[i])) ++i;
    if (src_.compare(i, 3, "-%}") == 0) {
      i += 3;
      while (i < src_.size() && is_ws(src_[i])) ++i;
    } else if (src_.compare(i, 2, "%}") == 0) {
      i += 2;
    } else {
      return false;
    }
    after = i;
    return true;
  }

  size_t lex_raw(size_t from, bool& line_starting) {
    line_starting = from > 0 && src_[from - 1] == '\n';
    for (size_t i = from; i + 1 < src_.size(); ++i) {
      if (src_[i] != '{' || src_[i + 1] != '%') continue;
      size_t j = i + 2;
      char sign = '\0';
      if (j < src_.size() && (src_[j] == '-' || src_[j] == '+')) sign = src_[j++];
      while (j < src_.size() && is_ws(src_[j])) ++j;
      if (src_.compare(j, 6, "endraw") != 0) continue;
      j += 6;
      while (j < src_.size() && is_ws(src_[j])) ++j;
      size_t end;
      if (src_.compare(j, 3, "+%}") == 0) {
        end = j + 3;
      } else if (src_.compare(j, 3, "-%}") == 0) {
        end = j + 3;
        while (end < src_.size() && is_ws(src_[end])) ++end;
      } else if (src_.compare(j, 2, "%}") == 0) {
        end = j + 2;
        if (end < src_.size() && src_[end] == '\n') ++end;
      } else {
        continue;
      }
      std::string text = src_.substr(from, i - from);
      if (sign == '-') {
        size_t e = text.size();
        while (e > 0 && is_ws(text[e - 1])) --e;
        text.resize(e);
      } else if (sign != '+') {
        size_t nl = text.rfind('\n');
        size_t l_pos = nl == std::string::npos ? 0 : nl + 1;
        if (l_pos > 0 || line_starting) {
          bool all_ws = l_pos < text.size();
          for (size_t k = l_pos; k < text.size() && all_ws; ++k) all_ws = is_ws(text[k]);
          if (all_ws) text.resize(l_pos);
        }
      }
      emit_text(text, from);
      line_starting = src_[end - 1] == '\n';
      return end;
    }
    throw_at(pos_of(from), "missing end of raw directive");
  }

  size_t lex_comment(size_t start, size_t body, bool& line_starting) {
    size_t h = src_.find("#}", body);
    if (h == std::string::npos) throw_at(pos_of(start), "missing end of comment tag");
    size_t end;
    if (h > body && src_[h - 1] == '-') {
      end = h + 2;
      while (end < src_.size() && is_ws(src_[end])) ++end;
    } else if (h > body && src_[h - 1] == '+') {
      end = h + 2;
    } else {
      end = h + 2;
      if (end < src_.size() && src_[end] == '\n') ++end;
    }
    line_starting = src_[end - 1] == '\n';
    return end;
  }

  size_t lex_tag(size_t start, size_t i, bool block, bool& line_starting) {
    tokens_.push_back({block ? Tok::BlockBegin : Tok::VarBegin, "", 0, 0, pos_of(start)});
    std::vector<char> balance;
    const size_t n = src_.size();
    while (true) {
      while (i < n && is_ws(src_[i])) ++i;
      if (i >= n) throw_at(pos_of(start), block ? "unexpected end of template, missing '%}'"
                                                : "unexpected end of template, missing '}}'");
      if (balance.empty()) {
        if (block) {
          if (src_.compare(i, 3, "-%}") == 0) {
            tokens_.push_back({Tok::BlockEnd, "", 0, 0, pos_of(i)});
            i += 3;
            while (i < n && is_ws(src_[i])) ++i;
            line_starting = src_[i - 1] == '\n';
            return i;
          }
          if (src_.compare(i, 3, "+%}") == 0) {
            tokens_.push_back({Tok::BlockEnd, "", 0, 0, pos_of(i)});
            line_starting = false;
            return i + 3;
          }
          if (src_.compare(i, 2, "%}") == 0) {
            tokens_.push_back({Tok::BlockEnd, "", 0, 0, pos_of(i)});
            i += 2;
            if (i < n && src_[i] == '\n') ++i;
            line_starting = src_[i - 1] == '\n';
            return i;
          }
        } else {
          if (src_.compare(i, 3, "-}}") == 0) {
            tokens_.push_back({Tok::VarEnd, "", 0, 0, pos_of(i)});
            i += 3;
            while (i < n && is_ws(src_[i])) ++i;
            line_starting = src_[i - 1] == '\n';
            return i;
          }
          if (src_.compare(i, 2, "}}") == 0) {
            tokens_.push_back({Tok::VarEnd, "", 0, 0, pos_of(i)});
            line_starting = false;
            return i + 2;
          }
        }
      }
      Pos p = pos_of(i);
      char c = src_[i];
      if (is_name_start(c)) {
        size_t j = i;
        while (j < n && is_name_char(src_[j])) ++j;
        tokens_.push_back({Tok::Name, src_.substr(i, j - i), 0, 0, p});
        i = j;
      } else if (is_digit(c)) {
        i = lex_number(i, p);
      } else if (c == '\'' || c == '"') {
        i = lex_string(i, p);
      } else {
        static const char* ops2[] = {"//", "**", "==", "!=", "<=", ">="};
        std::string op;
        for (const char* o : ops2)
          if (src_.compare(i, 2, o) == 0) op = o;
        if (op.empty()) {
          if (!std::strchr("+-*/%~<>=()[]{},.:|;", c) || c == '\0')
            throw_at(p, std::string("unexpected char '") + c + "'");
          op = std::string(1, c);
        }
        if (op == "(" || op == "[" || op == "{") {
          balance.push_back(op[0]);
        } else if (op == ")" || op == "]" || op == "}") {
          char want = op == ")" ? '(' : op == "]" ? '[' : '{';
          if (balance.empty() || balance.back() != want) throw_at(p, "unexpected '" + op + "'");
          balance.pop_back();
        }
        tokens_.push_back({Tok::Op, op, 0, 0, p});
        i += op.size();
      }
    }
  }

  size_t lex_number(size_t i, Pos p) {
    const size_t n = src_.size();
    auto digits = [&](size_t j) {
      // (\d+_)*\d+
      size_t k = j;
      while (k < n && (is_digit(src_[k]) || (src_[k] == '_' && k + 1 < n && is_digit(src_[k + 1]) && k > j)))
        ++k;
      return k;
    };
    size_t j = digits(i);
    bool after_dot = !tokens_.empty() && tokens_.back().type == Tok::Op && tokens_.back().text == ".";
    bool is_float = false;
    size_t k = j;
    if (!after_dot) {
      if (k + 1 < n && src_[k] == '.' && is_digit(src_[k + 1])) {
        k = digits(k + 1);
        is_float = true;
      }
      if (k < n && (src_[k] == 'e' || src_[k] == 'E')) {
        size_t e = k + 1;
        if (e < n && (src_[e] == '+' || src_[e] == '-')) ++e;
        if (e < n && is_digit(src_[e])) {
          k = digits(e);
          is_float = true;
        }
      }
    }
    std::string text;
    for (size_t q = i; q < (is_float ? k : j); ++q)
      if (src_[q] != '_') text += src_[q];
    Token t{is_float ? Tok::Float : Tok::Int, text, 0, 0, p};
    if (is_float) {
      t.fval = std::strtod(text.c_str(), nullptr);
    } else {
      errno = 0;
      unsigned long long v = std::strtoull(text.c_str(), nullptr, 10);
      if (errno == ERANGE || v > static_cast<unsigned long long>(INT64_MAX))
        throw_at(p, "integer literal too large");
      t.ival = static_cast<int64_t>(v);
    }
    tokens_.push_back(std::move(t));
    return is_float ? k : j;
  }

  static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  }

  size_t lex_string(size_t i, Pos p) {
    const char q = src_[i];
    const size_t n = src_.size();
    size_t j = i + 1;
    while (j < n && src_[j] != q) j += src_[j] == '\\' ? 2 : 1;
    if (j >= n) throw_at(p, std::string("unexpected char '") + q + "'");
    // Decode like Python's 'unicode_escape' (what Jinja2 applies to string literals).
    std::string out;
    for (size_t k = i + 1; k < j; ++k) {
      char c = src_[k];
      if (c != '\\') {
        out += c;
        continue;
      }
      char e = src_[++k];
      switch (e) {
        case '\n': break;
        case '\\': out += '\\'; break;
        case '\'': out += '\''; break;
        case '"': out += '"'; break;
        case 'a': out += '\a'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'v': out += '\v'; break;
        case 'x':
        case 'u':
        case 'U': {
          int len = e == 'x' ? 2 : e == 'u' ? 4 : 8;
          uint32_t cp = 0;
          for (int d = 0; d < len; ++d) {
            int h = k + 1 < j ? hexval(src_[k + 1]) : -1;
            if (h < 0) throw_at(p, std::string("invalid \\") + e + " escape in string literal");
            cp = cp * 16 + static_cast<uint32_t>(h);
            ++k;
          }
          if (cp > 0x10FFFF) throw_at(p, "invalid unicode escape in string literal");
          utf8_append(out, cp);
          break;
        }
        default:
          if (e >= '0' && e <= '7') {
            uint32_t cp = static_cast<uint32_t>(e - '0');
            for (int d = 0; d < 2 && k + 1 < j && src_[k + 1] >= '0' && src_[k + 1] <= '7'; ++d)
              cp = cp * 8 + static_cast<uint32_t>(src_[++k] - '0');
            utf8_append(out, cp);
          } else {
            out += '\\';
            out += e;
          }
      }
    }
    tokens_.push_back({Tok::String, out, 0, 0, p});
    return j + 1;
  }
};

// ------------------------------------------------------------------------------------------------
class Parser {
 public:
  Parser(std::vector<Token> tokens, const ParseLimits& limits) : t_(std::move(tokens)), limits_(limits) {}

  std::unique_ptr<Program> run() {
    auto prog = std::make_unique<Program>();
    std::string end_tag;
    prog->body = parse_body({}, end_tag);
    if (cur().type != Tok::End) fail_here("unexpected token");
    return prog;
  }

 private:
  std::vector<Token> t_;
  size_t i_ = 0;
  ParseLimits limits_;
  int nesting_ = 0;
  int loop_depth_ = 0;

  struct Nest {
    Parser& p;
    Nest(Parser& parser, Pos pos) : p(parser) {
      if (++p.nesting_ > p.limits_.max_nesting) throw_at(pos, "template nesting too deep");
    }
    ~Nest() { --p.nesting_; }
  };

  const Token& cur() const { return t_[i_]; }
  const Token& peek(size_t k = 1) const { return t_[std::min(i_ + k, t_.size() - 1)]; }
  void advance() {
    if (i_ + 1 < t_.size()) ++i_;
  }
  [[noreturn]] void fail_here(const std::string& msg) const {
    const Token& t = cur();
    std::string what;
    switch (t.type) {
      case Tok::End: what = "end of template"; break;
      case Tok::BlockEnd: what = "end of statement block"; break;
      case Tok::VarEnd: what = "end of print statement"; break;
      case Tok::Text: what = "template data"; break;
      case Tok::String: what = "string"; break;
      case Tok::Int:
      case Tok::Float: what = "number '" + t.text + "'"; break;
      default: what = "'" + t.text + "'";
    }
    throw_at(t.pos, msg + " (found " + what + ")");
  }
  bool is_op(const char* op) const { return cur().type == Tok::Op && cur().text == op; }
  bool is_name(const char* name) const { return cur().type == Tok::Name && cur().text == name; }
  void expect_op(const char* op) {
    if (!is_op(op)) fail_here(std::string("expected '") + op + "'");
    advance();
  }
  void expect_block_end() {
    if (cur().type != Tok::BlockEnd) fail_here("expected end of statement block");
    advance();
  }
  std::string expect_name() {
    if (cur().type != Tok::Name) fail_here("expected a name");
    std::string s = cur().text;
    advance();
    return s;
  }

  ExprPtr mk(ExprKind k, Pos p) {
    auto e = std::make_unique<Expr>();
    e->kind = k;
    e->pos = p;
    return e;
  }
  // Recomputes the height after children were attached and enforces the limit.
  ExprPtr fin(ExprPtr e) {
    int d = 0;
    for (Expr* c : {e->a.get(), e->b.get(), e->c.get(), e->d.get()})
      if (c) d = std::max(d, c->depth);
    for (auto& c : e->items)
      if (c) d = std::max(d, c->depth);
    for (auto& kv : e->kwargs)
      if (kv.second) d = std::max(d, kv.second->depth);
    e->depth = d + 1;
    if (e->depth > limits_.max_expr_depth) throw_at(e->pos, "expression nested too deeply");
    return e;
  }

  // ---- statements ----
  Body parse_body(const std::set<std::string>& end_tags, std::string& found_end) {
    Body body;
    while (true) {
      const Token& t = cur();
      if (t.type == Tok::End) {
        if (!end_tags.empty()) {
          std::string list;
          for (const auto& e : end_tags) list += (list.empty() ? "'" : " or '") + e + "'";
          throw_at(t.pos, "unexpected end of template, expected " + list);
        }
        return body;
      }
      if (t.type == Tok::Text) {
        auto s = std::make_unique<Stmt>();
        s->kind = StmtKind::Text;
        s->pos = t.pos;
        s->text = t.text;
        body.push_back(std::move(s));
        advance();
      } else if (t.type == Tok::VarBegin) {
        auto s = std::make_unique<Stmt>();
        s->kind = StmtKind::Output;
        s->pos = t.pos;
        advance();
        s->expr = parse_tuple();
        if (cur().type != Tok::VarEnd) fail_here("expected end of print statement");
        advance();
        body.push_back(std::move(s));
      } else if (t.type == Tok::BlockBegin) {
        const Token& name = peek();
        if (name.type == Tok::Name && end_tags.count(name.text)) {
          found_end = name.text;
          advance();
          advance();
          return body;
        }
        advance();
        body.push_back(parse_statement());
      } else {
        fail_here("unexpected token");
      }
    }
  }

  StmtPtr parse_statement() {
    const Token& t = cur();
    Pos pos = t.pos;
    if (t.type != Tok::Name) fail_here("expected a tag name");
    Nest nest(*this, pos);
    std::string tag = t.text;
    advance();
    auto s = std::make_unique<Stmt>();
    s->pos = pos;
    std::string end;
    if (tag == "if") {
      s->kind = StmtKind::If;
      s->conds.push_back(parse_tuple());
      expect_block_end();
      while (true) {
        s->bodies.push_back(parse_body({"elif", "else", "endif"}, end));
        if (end == "elif") {
          s->conds.push_back(parse_tuple());
          expect_block_end();
          continue;
        }
        if (end == "else") {
          expect_block_end();
          s->else_body = parse_body({"endif"}, end);
        }
        expect_block_end();
        break;
      }
    } else if (tag == "for") {
      s->kind = StmtKind::For;
      parse_targets(*s);
      if (!is_name("in")) fail_here("expected 'in'");
      advance();
      s->expr = parse_tuple(/*with_condexpr=*/false);
      if (is_name("if")) {
        advance();
        s->cond = parse_expression();
      }
      if (is_name("recursive")) throw_at(cur().pos, "recursive for loops are not supported");
      expect_block_end();
      ++loop_depth_;
      s->body = parse_body({"else", "endfor"}, end);
      --loop_depth_;
      if (end == "else") {
        expect_block_end();
        s->else_body = parse_body({"endfor"}, end);
      }
      expect_block_end();
    } else if (tag == "set") {
      s->kind = StmtKind::Set;
      std::string first = expect_name();
      if (is_op(".")) {
        advance();
        s->targets.push_back(first);
        s->ns_attr = expect_name();
      } else {
        s->targets.push_back(first);
        while (is_op(",")) {
          advance();
          if (cur().type != Tok::Name) break;
          s->targets.push_back(expect_name());
          s->unpack = true;
        }
        if (s->targets.size() > 1) s->unpack = true;
      }
      if (is_op("=")) {
        advance();
        s->expr = parse_tuple();
        expect_block_end();
      } else {
        if (!s->ns_attr.empty() || s->unpack) fail_here("expected '='");
        s->block_set = true;
        if (is_op("|")) s->expr = parse_filter_chain(nullptr);
        expect_block_end();
        s->body = parse_body({"endset"}, end);
        expect_block_end();
      }
    } else if (tag == "macro") {
      s->kind = StmtKind::Macro;
      s->name = expect_name();
      expect_op("(");
      while (!is_op(")")) {
        s->targets.push_back(expect_name());
        if (is_op("=")) {
          advance();
          s->defaults.push_back(parse_expression());
        } else {
          s->defaults.push_back(nullptr);
        }
        if (!is_op(",")) break;
        advance();
      }
      expect_op(")");
      expect_block_end();
      int saved = loop_depth_;
      loop_depth_ = 0;
      s->body = parse_body({"endmacro"}, end);
      loop_depth_ = saved;
      expect_block_end();
    } else if (tag == "call") {
      s->kind = StmtKind::CallBlock;
      if (is_op("(")) {
        advance();
        while (!is_op(")")) {
          s->targets.push_back(expect_name());
          if (is_op("=")) {
            advance();
            s->defaults.push_back(parse_expression());
          } else {
            s->defaults.push_back(nullptr);
          }
          if (!is_op(",")) break;
          advance();
        }
        expect_op(")");
      }
      s->expr = parse_expression();
      if (s->expr->kind != ExprKind::Call) throw_at(pos, "expected a macro call after 'call'");
      expect_block_end();
      int saved = loop_depth_;
      loop_depth_ = 0;
      s->body = parse_body({"endcall"}, end);
      loop_depth_ = saved;
      expect_block_end();
    } else if (tag == "filter") {
      s->kind = StmtKind::FilterBlock;
      s->expr = parse_filter_chain(nullptr, /*leading_pipe=*/false);
      expect_block_end();
      s->body = parse_body({"endfilter"}, end);
      expect_block_end();
    } else if (tag == "with") {
      s->kind = StmtKind::With;
      while (cur().type != Tok::BlockEnd) {
        if (!s->targets.empty()) expect_op(",");
        s->targets.push_back(expect_name());
        expect_op("=");
        s->defaults.push_back(parse_expression());
      }
      expect_block_end();
      s->body = parse_body({"endwith"}, end);
      expect_block_end();
    } else if (tag == "break" || tag == "continue") {
      if (loop_depth_ == 0) throw_at(pos, "'" + tag + "' outside of a loop");
      s->kind = tag == "break" ? StmtKind::Break : StmtKind::Continue;
      expect_block_end();
    } else if (tag == "generation") {
      s->kind = StmtKind::Generation;
      expect_block_end();
      s->body = parse_body({"endgeneration"}, end);
      expect_block_end();
    } else {
      throw_at(pos, "unknown tag '" + tag + "'");
    }
    return s;
  }

  void parse_targets(Stmt& s) {
    bool paren = is_op("(");
    if (paren) advance();
    s.targets.push_back(expect_name());
    while (is_op(",")) {
      advance();
      if (cur().type != Tok::Name) break;
      s.targets.push_back(expect_name());
      s.unpack = true;
    }
    if (s.targets.size() > 1) s.unpack = true;
    if (paren) expect_op(")");
  }

  // ---- expressions ----
  ExprPtr parse_tuple(bool with_condexpr = true) {
    Pos p = cur().pos;
    ExprPtr first = with_condexpr ? parse_expression() : parse_or();
    if (!is_op(",")) return first;
    auto tup = mk(ExprKind::Tuple, p);
    tup->items.push_back(std::move(first));
    while (is_op(",")) {
      advance();
      if (cur().type == Tok::BlockEnd || cur().type == Tok::VarEnd || is_op(")") || is_name("in") ||
          is_name("if"))
        break;
      tup->items.push_back(with_condexpr ? parse_expression() : parse_or());
    }
    return fin(std::move(tup));
  }

  ExprPtr parse_expression() {
    Nest nest(*this, cur().pos);
    ExprPtr e = parse_or();
    while (is_name("if")) {
      Pos p = cur().pos;
      advance();
      auto c = mk(ExprKind::Cond, p);
      c->a = parse_or();  // condition
      c->b = std::move(e);
      if (is_name("else")) {
        advance();
        c->c = parse_expression();
      }
      e = fin(std::move(c));
    }
    return e;
  }

  ExprPtr parse_or() {
    ExprPtr e = parse_and();
    while (is_name("or")) {
      Pos p = cur().pos;
      advance();
      auto n = mk(ExprKind::Or, p);
      n->a = std::move(e);
      n->b = parse_and();
      e = fin(std::move(n));
    }
    return e;
  }

  ExprPtr parse_and() {
    ExprPtr e = parse_not();
    while (is_name("and")) {
      Pos p = cur().pos;
      advance();
      auto n = mk(ExprKind::And, p);
      n->a = std::move(e);
      n->b = parse_not();
      e = fin(std::move(n));
    }
    return e;
  }

  ExprPtr parse_not() {
    if (is_name("not")) {
      Nest nest(*this, cur().pos);
      auto n = mk(ExprKind::Not, cur().pos);
      advance();
      n->a = parse_not();
      return fin(std::move(n));
    }
    return parse_compare();
  }

  ExprPtr parse_compare() {
    Pos p = cur().pos;
    ExprPtr e = parse_math1();
    ExprPtr cmp;
    while (true) {
      std::string op;
      if (cur().type == Tok::Op &&
          (cur().text == "==" || cur().text == "!=" || cur().text == "<" || cur().text == "<=" ||
           cur().text == ">" || cur().text == ">=")) {
        op = cur().text;
        advance();
      } else if (is_name("in")) {
        op = "in";
        advance();
      } else if (is_name("not") && peek().type == Tok::Name && peek().text == "in") {
        op = "notin";
        advance();
        advance();
      } else {
        break;
      }
      if (!cmp) {
        cmp = mk(ExprKind::Compare, p);
        cmp->items.push_back(std::move(e));
      }
      cmp->ops.push_back(op);
      cmp->items.push_back(parse_math1());
    }
    return cmp ? fin(std::move(cmp)) : std::move(e);
  }

  ExprPtr binary(ExprPtr l, const std::string& op, Pos p, ExprPtr r) {
    auto n = mk(ExprKind::Binary, p);
    n->name = op;
    n->a = std::move(l);
    n->b = std::move(r);
    return fin(std::move(n));
  }

  ExprPtr parse_math1() {
    ExprPtr e = parse_concat();
    while (is_op("+") || is_op("-")) {
      std::string op = cur().text;
      Pos p = cur().pos;
      advance();
      e = binary(std::move(e), op, p, parse_concat());
    }
    return e;
  }

  ExprPtr parse_concat() {
    ExprPtr e = parse_math2();
    while (is_op("~")) {
      Pos p = cur().pos;
      advance();
      e = binary(std::move(e), "~", p, parse_math2());
    }
    return e;
  }

  ExprPtr parse_math2() {
    ExprPtr e = parse_pow();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      std::string op = cur().text;
      Pos p = cur().pos;
      advance();
      e = binary(std::move(e), op, p, parse_pow());
    }
    return e;
  }

  ExprPtr parse_pow() {
    ExprPtr e = parse_unary();
    while (is_op("**")) {
      Pos p = cur().pos;
      advance();
      e = binary(std::move(e), "**", p, parse_unary());
    }
    return e;
  }

  ExprPtr parse_unary(bool with_filter = true) {
    Nest nest(*this, cur().pos);
    ExprPtr e;
    if (is_op("-") || is_op("+")) {
      auto n = mk(is_op("-") ? ExprKind::Neg : ExprKind::Pos, cur().pos);
      advance();
      n->a = parse_unary(false);
      e = fin(std::move(n));
    } else {
      e = parse_primary();
    }
    e = parse_postfix(std::move(e));
    if (with_filter) e = parse_filter_expr(std::move(e));
    return e;
  }

  ExprPtr parse_primary() {
    const Token& t = cur();
    Pos p = t.pos;
    if (t.type == Tok::Name) {
      auto e = mk(ExprKind::Literal, p);
      if (t.text == "true" || t.text == "True") {
        e->value = Value::boolean(true);
      } else if (t.text == "false" || t.text == "False") {
        e->value = Value::boolean(false);
      } else if (t.text == "none" || t.text == "None") {
        e->value = Value::none();
      } else {
        e->kind = ExprKind::Name;
        e->name = t.text;
      }
      advance();
      return fin(std::move(e));
    }
    if (t.type == Tok::String) {
      std::string s;
      while (cur().type == Tok::String) {
        s += cur().text;
        advance();
      }
      auto e = mk(ExprKind::Literal, p);
      e->value = Value::string(std::move(s));
      return fin(std::move(e));
    }
    if (t.type == Tok::Int || t.type == Tok::Float) {
      auto e = mk(ExprKind::Literal, p);
      e->value = t.type == Tok::Int ? Value::integer(t.ival) : Value::floating(t.fval);
      advance();
      return fin(std::move(e));
    }
    if (is_op("(")) {
      advance();
      if (is_op(")")) {
        advance();
        return fin(mk(ExprKind::Tuple, p));
      }
      ExprPtr first = parse_expression();
      if (is_op(")")) {
        advance();
        return first;
      }
      auto tup = mk(ExprKind::Tuple, p);
      tup->items.push_back(std::move(first));
      while (is_op(",")) {
        advance();
        if (is_op(")")) break;
        tup->items.push_back(parse_expression());
      }
      expect_op(")");
      return fin(std::move(tup));
    }
    if (is_op("[")) {
      advance();
      auto l = mk(ExprKind::List, p);
      while (!is_op("]")) {
        l->items.push_back(parse_expression());
        if (!is_op(",")) break;
        advance();
      }
      expect_op("]");
      return fin(std::move(l));
    }
    if (is_op("{")) {
      advance();
      auto d = mk(ExprKind::Dict, p);
      while (!is_op("}")) {
        d->items.push_back(parse_expression());
        expect_op(":");
        d->items.push_back(parse_expression());
        if (!is_op(",")) break;
        advance();
      }
      expect_op("}");
      return fin(std::move(d));
    }
    fail_here("unexpected token in expression");
  }

  ExprPtr parse_postfix(ExprPtr e) {
    while (true) {
      if (is_op(".")) {
        Pos p = cur().pos;
        advance();
        if (cur().type == Tok::Name) {
          auto n = mk(ExprKind::GetAttr, p);
          n->name = cur().text;
          n->a = std::move(e);
          advance();
          e = fin(std::move(n));
        } else if (cur().type == Tok::Int) {
          auto n = mk(ExprKind::GetItem, p);
          n->a = std::move(e);
          n->b = mk(ExprKind::Literal, cur().pos);
          n->b->value = Value::integer(cur().ival);
          advance();
          e = fin(std::move(n));
        } else {
          fail_here("expected an attribute name after '.'");
        }
      } else if (is_op("[")) {
        Pos p = cur().pos;
        advance();
        e = parse_subscript(std::move(e), p);
      } else if (is_op("(")) {
        e = parse_call(std::move(e));
      } else {
        return e;
      }
    }
  }

  ExprPtr parse_subscript(ExprPtr obj, Pos p) {
    ExprPtr start, stop, step;
    bool slice = false;
    if (!is_op(":")) start = parse_expression();
    if (is_op(":")) {
      slice = true;
      advance();
      if (!is_op("]") && !is_op(":")) stop = parse_expression();
      if (is_op(":")) {
        advance();
        if (!is_op("]")) step = parse_expression();
      }
    }
    expect_op("]");
    auto n = mk(slice ? ExprKind::Slice : ExprKind::GetItem, p);
    n->a = std::move(obj);
    n->b = std::move(start);
    n->c = std::move(stop);
    n->d = std::move(step);
    return fin(std::move(n));
  }

  void parse_call_args(Expr& n) {
    expect_op("(");
    while (!is_op(")")) {
      if (is_op("*") || is_op("**")) fail_here("*args / **kwargs in calls are not supported");
      if (cur().type == Tok::Name && peek().type == Tok::Op && peek().text == "=") {
        std::string key = cur().text;
        advance();
        advance();
        n.kwargs.emplace_back(key, parse_expression());
      } else {
        if (!n.kwargs.empty()) fail_here("positional argument after keyword argument");
        n.items.push_back(parse_expression());
      }
      if (!is_op(",")) break;
      advance();
    }
    expect_op(")");
  }

  ExprPtr parse_call(ExprPtr callee) {
    auto n = mk(ExprKind::Call, cur().pos);
    n->a = std::move(callee);
    parse_call_args(*n);
    return fin(std::move(n));
  }

  std::string dotted_name() {
    std::string name = expect_name();
    while (is_op(".")) {
      advance();
      name += "." + expect_name();
    }
    return name;
  }

  // '|' name [args] ('|' name [args])*   (base may be null for filter blocks)
  ExprPtr parse_filter_chain(ExprPtr base, bool leading_pipe = true) {
    bool first = true;
    while (first ? (!leading_pipe || is_op("|")) : is_op("|")) {
      if (leading_pipe || !first) advance();
      first = false;
      Pos p = cur().pos;
      auto f = mk(ExprKind::Filter, p);
      f->name = dotted_name();
      f->a = std::move(base);
      if (is_op("(")) parse_call_args(*f);
      base = fin(std::move(f));
    }
    return base;
  }

  ExprPtr parse_filter_expr(ExprPtr e) {
    while (true) {
      if (is_op("|")) {
        advance();
        Pos p = cur().pos;
        auto f = mk(ExprKind::Filter, p);
        f->name = dotted_name();
        f->a = std::move(e);
        if (is_op("(")) parse_call_args(*f);
        e = fin(std::move(f));
      } else if (is_name("is")) {
        Pos p = cur().pos;
        advance();
        auto t = mk(ExprKind::Test, p);
        if (is_name("not")) {
          t->negated = true;
          advance();
        }
        t->name = dotted_name();
        t->a = std::move(e);
        if (is_op("(")) {
          parse_call_args(*t);
        } else if ((cur().type == Tok::Name || cur().type == Tok::String || cur().type == Tok::Int ||
                    cur().type == Tok::Float || is_op("[") || is_op("{")) &&
                   !is_name("else") && !is_name("or") && !is_name("and")) {
          if (is_name("is")) fail_here("cannot chain multiple tests with 'is'");
          ExprPtr arg = parse_primary();
          t->items.push_back(parse_postfix(std::move(arg)));
        }
        e = fin(std::move(t));
      } else if (is_op("(")) {
        e = parse_call(std::move(e));
      } else {
        return e;
      }
    }
  }
};

}  // namespace

std::unique_ptr<Program> parse_template(const std::string& source, const ParseLimits& limits) {
  Lexer lexer(source);
  std::vector<Token> tokens = lexer.run();
  Parser parser(std::move(tokens), limits);
  return parser.run();
}

}  // namespace tandem::jinja
