// The byte model (docs/PERF.md): at batch 1 a step is a read of the bytes it touches, so
// its time is bytes / bandwidth. `tandem bench step` sets it beside measured times (with the experts
// the rows were really routed to); `tandem plan` predicts decode speed and speculative speedups from
// it (with the experts uniform routing would give).
#pragma once
#include "backend/tensor.h"
#include "model/config.h"

namespace tandem {

// Mean number of distinct experts `rows` rows route to in a layer of num_experts when each row takes
// top_k of them uniformly and independently: E · (1 − (1 − k / E)^rows). (26B-A4B: 8.0, 15.5, 22.5,
// 29.1, 35.3 for 1 to 5 rows.)
double expected_experts(int num_experts, int top_k, int rows);

// KV bytes a step of `batch` sequences reads: per layer, the keys of each sequence (context_keys on
// full layers; on sliding ones the window plus window_extra, the step's other rows) × K and V. For an
// MTP assistant's step, its config with window_extra 0: its layers read the target's KV of their type.
double kv_read_bytes(const ModelConfig& c, int batch, int context_keys, int window_extra, DType kv_dtype);

// What speculation with k drafts a round yields at a draft acceptance rate (accepted / drafted, vLLM's
// metric): tokens a round, 1 + k · acceptance; and the speedup over plain decoding when every step
// takes its bytes' time: tokens a round × decode bytes / (verify bytes of k + 1 rows + k × draft bytes).
struct SpeculationEstimate {
  double tokens_per_round = 0, round_bytes = 0, speedup = 0;
};
SpeculationEstimate estimate_speculation(int k, double acceptance, double decode_bytes, double verify_bytes,
                                         double draft_bytes);

}  // namespace tandem
