// `tandem bench step`: the cost of one target forward of n query tokens per sequence over a cached
// context (n = 1: a decode step; n = 1 + k: a verify block), and of one drafter step, each next to
// the bytes it must read (the byte model) and the copy bandwidth measured in the same run.
#pragma once
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "model/weights.h"

namespace tandem::bench {

struct StepOptions {
  std::string model;               // target checkpoint directory (or a config-only directory with dummy)
  std::string speculative_config;  // optional drafter: {"model": DIR, ...}
  LoadFormat format = LoadFormat::safetensors;
  OnlineQuant quantization;  // --quantization of the target (the drafter's: its speculative config's)
  std::string device = "auto";
  bool enforce_eager = false;  // no CUDA graphs
  std::string kv_dtype = "auto";  // auto: bf16 on GPUs, f32 on the CPU
  int threads = 0;
  // Ranks (the CPU backend: threads of this process, each of `threads` threads); bytes are rank 0's.
  int tensor_parallel_size = 1;
  std::vector<int> tokens = {1, 2, 3, 4, 5};
  int batch = 1;
  int context = 512;
  int reps = 20;
  bool profile_ops = false;  // per-op wall times of the first setting (each op waited for)
};

struct StepRow {
  std::string what;     // "target" or "drafter"
  int tokens = 0;       // query tokens per sequence
  double median_ms = 0;
  double weight_bytes = 0, kv_bytes = 0;
  double experts_per_layer = 0;  // mean union of routed experts per MoE layer
};

struct StepReport {
  std::string backend, model, drafter;
  std::string quantization = "none";  // --quantization of the target, as loaded
  double copy_gbps = 0;  // device-to-device copy: bytes read + written per second
  std::vector<StepRow> rows;
  std::vector<std::pair<std::string, std::pair<double, double>>> op_profile;  // op -> (ms, calls) per step
  nlohmann::json to_json() const;
  std::string to_table() const;
};

StepReport run_step_bench(const StepOptions& options);

}  // namespace tandem::bench
