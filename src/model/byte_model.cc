#include "model/byte_model.h"

#include <algorithm>
#include <cmath>

namespace tandem {

double expected_experts(int num_experts, int top_k, int rows) {
  if (num_experts <= 0) return 0;
  const double unused = std::pow(1.0 - static_cast<double>(top_k) / num_experts, rows);
  return num_experts * (1.0 - unused);
}

double kv_read_bytes(const ModelConfig& c, int batch, int context_keys, int window_extra, DType kv_dtype) {
  double bytes = 0;
  for (const LayerSpec& l : c.layers) {
    const int keys = l.type == LayerType::full ? context_keys : std::min(context_keys, c.sliding_window + window_extra);
    bytes += 2.0 * keys * l.n_kv_heads * l.head_dim * dtype_size(kv_dtype);
  }
  return bytes * batch;
}

SpeculationEstimate estimate_speculation(int k, double acceptance, double decode_bytes, double verify_bytes,
                                         double draft_bytes) {
  SpeculationEstimate e;
  e.tokens_per_round = 1.0 + k * acceptance;
  e.round_bytes = verify_bytes + k * draft_bytes;
  e.speedup = e.round_bytes > 0 ? e.tokens_per_round * decode_bytes / e.round_bytes : 0;
  return e;
}

}  // namespace tandem
