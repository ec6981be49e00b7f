// Evaluator of the chat-template Jinja subset: walks the AST from jinja_parser.cc over Values.
#pragma once
#include <cstdint>
#include <string>

#include "tokenizer/jinja_ast.h"

namespace tandem::jinja {

struct RenderLimits {
  int64_t max_loop_iterations = 1'000'000;  // all loop iterations of one render together
  int max_macro_depth = 100;                // nested macro calls
  int max_eval_depth = 1000;                // nested statement/expression evaluations
  size_t max_output_bytes = 16u << 20;      // rendered text, and any single string or list built
};

// Renders `program` with `variables` (a Dict) as the template context. Throws TemplateError.
std::string render_program(const Program& program, const Value& variables, const RenderLimits& limits);

}  // namespace tandem::jinja
