// Evaluator of the chat-template Jinja subset: walks the AST from jinja_parser.cc over Values.
#pragma once
#include <cstdint>
#include <string>

#include "tokenizer/jinja_ast.h"

namespace tandem::jinja {

// Templates come with downloaded models (tokenizer_config.json), so a hostile one must end with a
// clear error, quickly and in bounded memory. max_work bounds time and memory together: counting
// every evaluation step and every byte built or copied also bounds exponential macro recursion,
// loops over costly bodies and big values kept alive in many variables.
struct RenderLimits {
  int64_t max_loop_iterations = 1'000'000;  // all loop iterations of one render together
  int max_macro_depth = 100;                // nested macro calls
  int max_eval_depth = 1000;                // nested statement/expression evaluations
  size_t max_stack_bytes = 4u << 20;        // native stack those take: 1000 levels need ~1 MB in a
                                            // release build, over 8 MB under ASan
  size_t max_output_bytes = 16u << 20;      // rendered text; also any single value built (weight_of()),
                                            // or the variables' weight if that is larger
  // Work units of one render, about bytes: 64 per statement or expression evaluated; each string
  // built or copied counts its size and each list or dict its weight_of(), also when an operation
  // walks one (iterate, compare, search, sort). Gemma 4 with 20 tools and a 1.2 MB conversation
  // takes ~32M units (30 ms); the default stops hostile templates within about a second.
  uint64_t max_work = uint64_t{1} << 28;
};

// Renders `program` with `variables` (a Dict) as the template context. Throws TemplateError.
std::string render_program(const Program& program, const Value& variables, const RenderLimits& limits);

}  // namespace tandem::jinja
