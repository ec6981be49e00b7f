// Stop strings over streamed text: text that could still turn into a stop string is held back
// until it either completes one (the output is cut before it) or can no longer match.
#pragma once
#include <algorithm>
#include <string>
#include <string_view>
#include <vector>

namespace tandem::server {

// Length of the longest suffix of `text` that is a proper prefix of `marker`: how much streamed text
// must be held back because the next chunk could complete `marker` (stop strings, and the reasoning
// and tool-call parsers' delimiters).
inline size_t partial_suffix(std::string_view text, std::string_view marker) {
  for (size_t n = std::min(text.size(), marker.empty() ? 0 : marker.size() - 1); n > 0; --n)
    if (text.substr(text.size() - n) == marker.substr(0, n)) return n;
  return 0;
}

class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {}

  struct Result {
    std::string text;    // safe to emit now
    int matched = -1;    // index of the stop string found (text ends right before it), or -1
  };
  // Appends newly decoded text. After a match, further pushes return nothing.
  Result push(const std::string& text);
  // With check == false (before min_tokens are generated, as vLLM) the text is not matched: what
  // is held back and the new text are released as they are.
  Result push(const std::string& text, bool check);
  // End of generation: whatever is held back can no longer be a stop string.
  std::string flush();

  bool stopped() const { return stopped_; }
  const std::string& held() const { return held_; }

 private:
  std::vector<std::string> stops_;
  std::string held_;
  bool stopped_ = false;
};

// Server-Sent Events framing: "data: <payload>\n\n".
inline std::string sse_event(const std::string& payload) { return "data: " + payload + "\n\n"; }
inline std::string sse_done() { return "data: [DONE]\n\n"; }

}  // namespace tandem::server
