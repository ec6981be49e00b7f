// A Backend that forwards every call to another and, for each op, waits for it to finish and adds
// the wall time to a per-op total: where a step's time goes, launch latency included (`tandem bench
// step --profile-ops`). The waits make the whole step slower; compare ops with each other, not with
// unprofiled step times.
#pragma once
#include <map>
#include <memory>
#include <string>

#include "backend/backend.h"

namespace tandem {

struct OpTime {
  double seconds = 0;
  uint64_t calls = 0;
};

std::unique_ptr<Backend> make_op_profiler(std::unique_ptr<Backend> inner, std::map<std::string, OpTime>* times);

}  // namespace tandem
