// Tensor parallelism as vLLM does it (docs/DESIGN.md, "Tensor parallelism"): each of N ranks holds
// 1/N of every attention and MLP projection and runs the same forward on its slice; the row-parallel
// projections (o_proj, down_proj, the experts' down) leave partial sums that Backend::all_reduce
// makes whole, so the residual stream, the norms, the router and the head stay replicated.
#pragma once
#include "model/config.h"
#include "model/weights.h"

namespace tandem {

// Rank `rank` of a tensor-parallel group of `size` ranks (the unsharded model: rank 0 of 1).
struct Shard {
  int rank = 0, size = 1;

  // The rank's slice along dim `dim` of a weight: dim 0 of a column-parallel [out, in] weight (its
  // heads or columns), the `in` dim of a row-parallel one; `blocks` as Split has it.
  Split along(int dim, int64_t blocks = 1) const { return {dim, rank, size, blocks}; }
  // The slice of a [n_kv · d, in] K or V projection that this rank's query heads read: n_kv / size
  // heads; where size exceeds n_kv (a multiple of it), one head shared by size / n_kv ranks, each
  // holding a copy of it (and of its cache).
  Split kv_heads(int n_kv) const {
    if (size <= n_kv) return along(0);
    return {0, rank / (size / n_kv), n_kv, 1};
  }
};

// The shapes one rank of a group of `size` computes with: n_heads / size query heads, each layer's
// n_kv_heads / size KV heads (one where size exceeds them), each layer's intermediate / size and
// moe_intermediate / size columns; everything else as c. size 1: c. Throws tandem::Error naming the
// shape that does not split: query heads or a width that size does not divide, KV heads that
// neither divide size nor are divided by it.
ModelConfig shard_config(const ModelConfig& c, int size);

}  // namespace tandem
