// Tool calls in model output → OpenAI `tool_calls` (vLLM's --tool-call-parser), whole and streamed.
//
// Gemma 4 (`gemma4`), as its chat template renders an assistant message's tool_calls:
//
//   <|tool_call>call:get_weather{city:<|"|>Paris<|"|>,days:3}<tool_call|><|tool_call>call:...<tool_call|>
//
// One `<|tool_call>call:NAME{...}<tool_call|>` per call, back to back (parallel calls). Arguments
// are the template's format_argument(): keys bare (or wrapped in <|"|>), strings between <|"|>
// delimiters with no escaping inside (quotes, braces, commas, backslashes and newlines are literal),
// true / false, numbers, None (null), {k:v,...} and [v,...]. They become a JSON object text as
// vLLM writes it (json.dumps: ", " and ": " separators, non-ASCII kept, keys in output order).
// A string value cannot contain the delimiter <|"|> itself (the template has no escape for it).
//
// Text outside the calls is content. A call whose head (`<|tool_call>call:NAME{`) is malformed
// stays content in both modes. In a whole-output parse a call whose arguments are malformed or
// unterminated stays content too (raw text); a streaming parse has already announced the call, so it
// closes the arguments as valid JSON at that point and continues with the rest as content.
#pragma once
#include <nlohmann/json.hpp>

#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace tandem::server {

struct ToolCall {
  std::string id;         // chatcmpl-tool-<32 hex>, as vLLM's make_tool_call_id()
  std::string name;
  std::string arguments;  // a JSON object as text
  nlohmann::json to_json() const;  // {"id", "type": "function", "function": {"name", "arguments"}}
};

// One entry of a streamed `delta.tool_calls`: a call's first entry carries id, type and name (with
// arguments ""), the following ones argument fragments. Concatenated fragments = the arguments.
struct ToolCallDelta {
  int index = 0;
  std::string id, name;  // set on the first entry of a call only
  std::string arguments;
  bool first() const { return !id.empty(); }
  nlohmann::json to_json() const;
};

struct ToolParseResult {
  std::string content;  // everything outside the calls
  std::vector<ToolCall> tool_calls;
};

std::string make_tool_call_id();

// An incremental parser of one choice's output text. push() takes text deltas split anywhere (even
// inside a marker or a UTF-8 character) and appends what is decided to `out`; finish() flushes.
class ToolCallParser {
 public:
  struct Output {
    std::string content;
    std::vector<ToolCallDelta> calls;
  };
  virtual ~ToolCallParser() = default;
  virtual void push(std::string_view text, Output& out) = 0;
  virtual void finish(Output& out) = 0;
  // vLLM's finish_reason for this output given the engine's ("stop", "length", ...).
  virtual std::string finish_reason(const std::string& engine_reason) const = 0;
};

// --tool-call-parser names.
const std::vector<std::string>& tool_call_parser_names();
bool is_tool_call_parser(const std::string& name);

// The parser for tool_choice "auto": `name` is a --tool-call-parser name. `streaming`: see above.
// Throws tandem::Error for an unknown name.
std::unique_ptr<ToolCallParser> make_tool_call_parser(const std::string& name, bool streaming);

// Output handling of tool_choice {"type":"function","function":{"name":NAME}} (required = false)
// and "required": constrained decoding makes the output Gemma 4 tool calls (one call of NAME, or
// one or more calls; see grammar_gemma4_tool_calls), read as the gemma4 parser reads them.
// finish_reason as vLLM's: the engine's for a named function; "tool_calls" for "required" when the
// output stopped with calls.
std::unique_ptr<ToolCallParser> make_forced_tool_output(bool required, bool streaming);

// Whole-output parse with `parser` (a fresh one): the calls and the remaining content.
ToolParseResult parse_tool_output(ToolCallParser& parser, std::string_view text);

// json.dumps(value, ensure_ascii=False) with Python's default separators.
std::string python_json_dumps(const nlohmann::ordered_json& value);

}  // namespace tandem::server
