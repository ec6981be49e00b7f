#include "server/reasoning_parser.h"

#include <fmt/ranges.h>

#include "server/stop_matcher.h"
#include "util/error.h"

namespace tandem::server {
namespace {

constexpr std::string_view kOpen = "<|channel>";
constexpr std::string_view kClose = "<channel|>";
constexpr std::string_view kLabel = "thought\n";

class Gemma4ReasoningParser final : public ReasoningParser {
 public:
  void push(std::string_view text, std::string& reasoning, std::string& content) override {
    buf_.append(text);
    for (;;) {
      if (state_ == State::Before) {
        size_t at = buf_.find(kOpen);
        if (at == std::string::npos) {
          size_t keep = partial_suffix(buf_, kOpen);
          content.append(buf_, 0, buf_.size() - keep);
          buf_.erase(0, buf_.size() - keep);
          return;
        }
        content.append(buf_, 0, at);
        buf_.erase(0, at + kOpen.size());
        state_ = State::Label;
        saw_ = true;
      } else if (state_ == State::Label) {
        size_t n = std::min(buf_.size(), kLabel.size());
        if (buf_.compare(0, n, kLabel, 0, n) != 0) {
          state_ = State::Inside;  // no label: all of it is reasoning
        } else if (n == kLabel.size()) {
          buf_.erase(0, n);
          state_ = State::Inside;
        } else {
          return;
        }
      } else if (state_ == State::Inside) {
        size_t at = buf_.find(kClose);
        if (at == std::string::npos) {
          size_t keep = partial_suffix(buf_, kClose);
          reasoning.append(buf_, 0, buf_.size() - keep);
          buf_.erase(0, buf_.size() - keep);
          return;
        }
        reasoning.append(buf_, 0, at);
        buf_.erase(0, at + kClose.size());
        state_ = State::After;
      } else {
        content += buf_;
        buf_.clear();
        return;
      }
    }
  }

  void finish(std::string& reasoning, std::string& content) override {
    if (state_ == State::Before || state_ == State::After) content += buf_;
    else reasoning += buf_;
    buf_.clear();
  }

  bool saw_reasoning() const override { return saw_; }

 private:
  enum class State { Before, Label, Inside, After };
  State state_ = State::Before;
  std::string buf_;
  bool saw_ = false;
};

}  // namespace

const std::vector<std::string>& reasoning_parser_names() {
  static const std::vector<std::string> names = {"gemma4"};
  return names;
}

bool is_reasoning_parser(const std::string& name) {
  for (const auto& n : reasoning_parser_names())
    if (n == name) return true;
  return false;
}

std::unique_ptr<ReasoningParser> make_reasoning_parser(const std::string& name) {
  if (name == "gemma4") return std::make_unique<Gemma4ReasoningParser>();
  fail("invalid reasoning parser: {} (chose from {{ {} }})", name, fmt::join(reasoning_parser_names(), ", "));
}

std::string reasoning_end_marker(const std::string& name) {
  if (name == "gemma4") return std::string(kClose);
  fail("invalid reasoning parser: {}", name);
}

bool prompt_ends_reasoning(const std::string& name, std::string_view prompt) {
  if (name != "gemma4") fail("invalid reasoning parser: {}", name);
  // The model's turn starts at the last <|turn>; a channel already closed in it (the template's
  // empty channel when thinking is off) leaves no reasoning to the output.
  const size_t turn = prompt.rfind("<|turn>");
  return prompt.find(kClose, turn == std::string_view::npos ? 0 : turn) != std::string_view::npos;
}

ReasoningSplit split_reasoning(ReasoningParser& parser, std::string_view text) {
  std::string reasoning, content;
  parser.push(text, reasoning, content);
  parser.finish(reasoning, content);
  ReasoningSplit r;
  if (parser.saw_reasoning()) r.reasoning = std::move(reasoning);
  r.content = std::move(content);
  return r;
}

}  // namespace tandem::server
