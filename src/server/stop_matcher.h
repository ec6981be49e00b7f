// Stop strings over streamed text: text that could still turn into a stop string is held back
// until it either completes one (the output is cut before it) or can no longer match.
#pragma once
#include <string>
#include <vector>

namespace tandem::server {

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
