// A reader for the Prometheus text exposition format (what /metrics returns): enough to take
// counter deltas from vLLM, llama.cpp or tandem servers.
#pragma once
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace tandem::bench {

struct PromSample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};

// Parses every sample line; skips comments (# HELP / # TYPE) and blank lines. Malformed lines are
// skipped too (a benchmark must not fail on a metric it does not read); `bad_lines` counts them.
std::vector<PromSample> parse_prometheus(std::string_view text, int* bad_lines = nullptr);

class PromSnapshot {
 public:
  PromSnapshot() = default;
  explicit PromSnapshot(std::vector<PromSample> samples) : samples_(std::move(samples)) {}
  static PromSnapshot parse(std::string_view text) { return PromSnapshot(parse_prometheus(text)); }

  bool has(std::string_view name) const;
  // Sum of `name` over all its label sets (0 when absent).
  double sum(std::string_view name) const;
  // Sum of `name` grouped by the value of `label` (samples without that label are ignored).
  std::map<std::string, double> sum_by(std::string_view name, std::string_view label) const;
  const std::vector<PromSample>& samples() const { return samples_; }

 private:
  std::vector<PromSample> samples_;
};

}  // namespace tandem::bench
