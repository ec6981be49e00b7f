// AST of the chat-template (Jinja subset) language, produced by jinja_parser.cc and walked by
// jinja_eval.cc. Every node carries the template line/column it came from, for error messages.
#pragma once
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "tokenizer/jinja_value.h"

namespace tandem::jinja {

struct Pos {
  int line = 1;
  int col = 1;
};

// Error raised while parsing or rendering; the position is filled in by the innermost node that
// knows it. ChatTemplate turns it into tandem::Error("chat template line L, column C: ...").
struct TemplateError {
  std::string message;
  Pos pos;
  bool has_pos = false;
  bool raised = false;  // from raise_exception(): message passes through unchanged
};

[[noreturn]] inline void throw_at(Pos p, std::string msg) {
  throw TemplateError{std::move(msg), p, true, false};
}
[[noreturn]] inline void throw_msg(std::string msg) { throw TemplateError{std::move(msg), {}, false, false}; }

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

enum class ExprKind {
  Literal,   // value
  Name,      // name
  List,      // items
  Tuple,     // items
  Dict,      // items (key, value pairs flattened: k0, v0, k1, v1, ...)
  GetAttr,   // a.name
  GetItem,   // a[b]
  Slice,     // a[b:c:d] (b/c/d may be null)
  Call,      // a(args, kwargs)
  Filter,    // a | name(args, kwargs)   (a null for {% filter %} blocks)
  Test,      // a is [not] name(args)
  Neg,       // -a
  Pos,       // +a
  Not,       // not a
  And,       // a and b
  Or,        // a or b
  Binary,    // a op b: + - * / // % ** ~
  Compare,   // a op b op c ... (ops in `ops`)
  Cond,      // b if a else c  (c may be null)
};

struct Expr {
  ExprKind kind;
  Pos pos;
  int depth = 1;               // height of this subtree (bounded by ParseLimits)
  Value value;                 // Literal
  std::string name;            // Name, GetAttr, Filter, Test, Binary op
  std::vector<std::string> ops;  // Compare operators: == != < <= > >= in notin
  bool negated = false;        // Test
  ExprPtr a, b, c, d;
  std::vector<ExprPtr> items;  // List/Tuple/Dict items; Call/Filter/Test positional args
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
};

struct Stmt;
using StmtPtr = std::unique_ptr<Stmt>;
using Body = std::vector<StmtPtr>;

enum class StmtKind {
  Text,       // text
  Output,     // {{ expr }}
  If,         // conds[i] -> bodies[i]; else_body
  For,        // targets in iter [if cond] body else else_body
  Set,        // targets = expr | ns.attr = expr | block set (body)
  Macro,      // name(params=defaults) body
  CallBlock,  // {% call macro(args) %} body {% endcall %}  (caller())
  FilterBlock,
  With,       // with a = x, b = y: body
  Break,
  Continue,
  Generation, // transformers' {% generation %}: renders its body
};

struct Stmt {
  StmtKind kind;
  Pos pos;
  std::string text;
  ExprPtr expr;                       // Output, For iter, Set value, CallBlock call, FilterBlock filter
  ExprPtr cond;                       // For filter
  std::vector<ExprPtr> conds;         // If
  std::vector<Body> bodies;           // If
  Body body, else_body;
  std::vector<std::string> targets;   // For / Set / With names; Macro params
  std::string ns_attr;                // Set: targets[0].ns_attr = expr
  std::vector<ExprPtr> defaults;      // Macro defaults (null = none), With values
  std::string name;                   // Macro name
  bool block_set = false;
  bool unpack = false;                // For/Set: target was a tuple
};

struct Program {
  Body body;
};

struct ParseLimits {
  int max_nesting = 64;      // nested blocks, parentheses, unary operators
  int max_expr_depth = 256;  // height of one expression tree (long operator chains)
};

// Parses template source with transformers' environment settings (trim_blocks, lstrip_blocks,
// keep_trailing_newline=False). Throws TemplateError with a position.
std::unique_ptr<Program> parse_template(const std::string& source, const ParseLimits& limits);

}  // namespace tandem::jinja
