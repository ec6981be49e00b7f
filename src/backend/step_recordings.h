// A caller's recorded steps (Backend::run_recorded), one per step shape: vLLM's CUDA graphs per
// batch-size bucket. The key lists everything host-side that shapes the step's ops (row counts, table
// widths, flags); inputs that change between steps live in backend memory at stable addresses.
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <vector>

#include "backend/backend.h"

namespace tandem {

class StepRecordings {
 public:
  // Steps with more rows than this run directly: large prefill chunks take long enough that launch
  // latency does not matter, and their shapes rarely repeat.
  static constexpr int64_t kMaxRows = 512;

  // Runs `issue` through the recording of `key`, or directly when rows > kMaxRows or !record.
  void run(Backend& be, std::vector<int64_t> key, int64_t rows, bool record, const std::function<void()>& issue) {
    if (!record || rows > kMaxRows) return issue();
    be.run_recorded(by_key_[std::move(key)], issue);
  }

 private:
  std::map<std::vector<int64_t>, std::unique_ptr<Recording>> by_key_;
};

}  // namespace tandem
