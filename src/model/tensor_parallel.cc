#include "model/tensor_parallel.h"

#include "util/error.h"

namespace tandem {

ModelConfig shard_config(const ModelConfig& c, int size) {
  if (size < 1) fail("--tensor-parallel-size must be at least 1, got {}", size);
  if (size == 1) return c;
  auto refuse = [&](const std::string& what, int n) {
    fail("{}: {} is {}, which does not split across --tensor-parallel-size {}", c.dir, what, n, size);
  };
  if (c.n_heads % size) refuse("num_attention_heads", c.n_heads);
  if (c.moe && c.moe_intermediate % size) refuse("moe_intermediate_size", c.moe_intermediate);
  ModelConfig s = c;
  s.n_heads = c.n_heads / size;
  if (c.moe) s.moe_intermediate = c.moe_intermediate / size;
  for (size_t i = 0; i < c.layers.size(); ++i) {
    const LayerSpec& l = c.layers[i];
    const std::string where = fmt::format("layer {}'s ", i);
    if (l.n_kv_heads % size && size % l.n_kv_heads) refuse(where + "key/value head count", l.n_kv_heads);
    if (l.intermediate % size) refuse(where + "intermediate size", l.intermediate);
    s.layers[i].n_kv_heads = std::max(1, l.n_kv_heads / size);
    s.layers[i].intermediate = l.intermediate / size;
  }
  return s;
}

}  // namespace tandem
