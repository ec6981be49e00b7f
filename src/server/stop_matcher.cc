#include "server/stop_matcher.h"

#include <algorithm>

namespace tandem::server {

StopMatcher::Result StopMatcher::push(const std::string& text) {
  Result r;
  if (stopped_) return r;
  held_ += text;
  if (stops_.empty()) {
    r.text.swap(held_);
    return r;
  }
  // Earliest occurrence of any stop string (ties: the longest).
  size_t best = std::string::npos, best_len = 0;
  for (size_t i = 0; i < stops_.size(); ++i) {
    size_t pos = held_.find(stops_[i]);
    if (pos == std::string::npos) continue;
    if (pos < best || (pos == best && stops_[i].size() > best_len)) {
      best = pos, best_len = stops_[i].size(), r.matched = static_cast<int>(i);
    }
  }
  if (r.matched >= 0) {
    r.text = held_.substr(0, best);
    held_.clear();
    stopped_ = true;
    return r;
  }
  // Hold back the longest suffix that is a proper prefix of some stop string.
  size_t keep = 0;
  for (const auto& s : stops_) keep = std::max(keep, partial_suffix(held_, s));
  r.text = held_.substr(0, held_.size() - keep);
  held_.erase(0, held_.size() - keep);
  return r;
}

StopMatcher::Result StopMatcher::push(const std::string& text, bool check) {
  if (check || stopped_) return push(text);
  Result r;
  held_ += text;
  r.text.swap(held_);
  return r;
}

std::string StopMatcher::flush() {
  std::string out;
  if (!stopped_) out.swap(held_);
  held_.clear();
  return out;
}

}  // namespace tandem::server
