// Thinking text in model output → `reasoning_content` / `reasoning` (vLLM's --reasoning-parser),
// whole and streamed.
//
// Gemma 4 (`gemma4`): its chat template turns thinking on with <|think|> in the system turn
// (enable_thinking); the model then opens a channel, names it and closes it before the answer:
//
//   <|channel>thought\nStep 1: ...<channel|>The answer is 4.
//
// With thinking off the template ends the prompt with an empty channel
// (`<|channel>thought\n<channel|>`), so the output has none. The reasoning is the channel's text
// without its "thought\n" label; text before the channel and after it is content. An unclosed channel
// (output cut short) is all reasoning. Only the first channel of an output is parsed.
#pragma once
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace tandem::server {

class ReasoningParser {
 public:
  virtual ~ReasoningParser() = default;
  // Text deltas split anywhere (inside a marker too); appends what is decided.
  virtual void push(std::string_view text, std::string& reasoning, std::string& content) = 0;
  virtual void finish(std::string& reasoning, std::string& content) = 0;
  // Whether the output opened a reasoning channel.
  virtual bool saw_reasoning() const = 0;
};

// --reasoning-parser names.
const std::vector<std::string>& reasoning_parser_names();
bool is_reasoning_parser(const std::string& name);
// Throws tandem::Error for an unknown name.
std::unique_ptr<ReasoningParser> make_reasoning_parser(const std::string& name);

// Structured outputs under a reasoning parser constrain only what follows the reasoning (as vLLM
// does): the special token that ends it, and whether the rendered `prompt` has ended it already
// (then the whole output is constrained). Throw tandem::Error for an unknown name.
std::string reasoning_end_marker(const std::string& name);
bool prompt_ends_reasoning(const std::string& name, std::string_view prompt);

struct ReasoningSplit {
  std::optional<std::string> reasoning;  // none when the output has no channel
  std::string content;
};
// Whole-output split with `parser` (a fresh one).
ReasoningSplit split_reasoning(ReasoningParser& parser, std::string_view text);

}  // namespace tandem::server
