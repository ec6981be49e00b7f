// libFuzzer target: parse + render arbitrary template text against a fixed small conversation.
// Any tandem::Error (syntax error, runtime error, limit) is fine; crashes, sanitizer reports,
// hangs and leaks are bugs.
#include <cstddef>
#include <cstdint>
#include <string>

#include "tokenizer/chat_template.h"

namespace {

const nlohmann::ordered_json& variables() {
  static const nlohmann::ordered_json v = nlohmann::ordered_json::parse(R"({
    "messages": [
      {"role": "system", "content": "  Be brief.  "},
      {"role": "user", "content": [{"type": "text", "text": "Hi é😀"}, {"type": "image"}]},
      {"role": "assistant", "content": "<|channel>thought\nx<channel|>Hello", "tool_calls": [
        {"type": "function", "function": {"name": "f", "arguments": {"a": 1, "b": [1.5, null, true], "c": {"d": "e"}}}}]},
      {"role": "tool", "tool_responses": [{"name": "f", "response": {"ok": true}}], "content": "42"}
    ],
    "tools": [{"type": "function", "function": {"name": "f", "description": "d",
      "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}}}],
    "add_generation_prompt": true, "enable_thinking": false, "bos_token": "<bos>", "eos_token": "<eos>"
  })");
  return v;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > 8192) return 0;
  std::string source(reinterpret_cast<const char*>(data), size);
  try {
    auto tmpl = tandem::ChatTemplate::parse(source);
    tandem::ChatTemplateLimits limits;
    limits.max_loop_iterations = 20000;
    limits.max_output_bytes = 1 << 20;
    limits.max_work = 1 << 24;  // well under a second per input even under ASan
    tmpl.set_limits(limits);
    tmpl.render(variables());
  } catch (const tandem::Error&) {
  }
  return 0;
}
