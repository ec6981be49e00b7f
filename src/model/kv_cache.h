// Paged KV cache of one model: per KV-owning layer, K and V pools of fixed-size blocks
// [num_blocks, block_size, n_kv_heads, head_dim] (F32). Sequences own lists of block ids (their
// block table); position p of a sequence lives in block table[p / block_size], row p % block_size.
// One table serves every layer, so the drafter reads the target's layers through the same table.
#pragma once
#include <cstdint>
#include <vector>

#include "backend/backend.h"
#include "model/config.h"

namespace tandem {

class KvCache {
 public:
  KvCache(const ModelConfig& config, int32_t num_blocks, int32_t block_size);

  int32_t block_size() const { return block_size_; }
  int32_t num_blocks() const { return num_blocks_; }
  int32_t free_blocks() const { return static_cast<int32_t>(free_.size()); }
  int64_t bytes() const { return bytes_; }

  // Storage of layer `layer` (for a KV-shared layer: of the layer it reads).
  const KvLayer& layer(int layer) const { return layers_[layer]; }

  // Block allocation. allocate() returns -1 when the pool is exhausted.
  int32_t allocate();
  void release(int32_t block);

  // Grows `table` so it covers `tokens` positions; false (table unchanged) if blocks ran out.
  bool reserve(std::vector<int32_t>& table, int64_t tokens);
  // Releases every block of `table` and clears it.
  void release_all(std::vector<int32_t>& table);
  // Releases the blocks past the first `tokens` positions.
  void truncate(std::vector<int32_t>& table, int64_t tokens);

  int64_t slot(const std::vector<int32_t>& table, int32_t position) const {
    return static_cast<int64_t>(table[position / block_size_]) * block_size_ + position % block_size_;
  }

 private:
  int32_t block_size_;
  int32_t num_blocks_;
  int64_t bytes_ = 0;
  std::vector<std::vector<float>> storage_;  // K then V per owning layer
  std::vector<KvLayer> layers_;
  std::vector<int32_t> free_;
};

// Blocks a KV cache of `bytes` can hold for this model.
int32_t kv_blocks_for_bytes(const ModelConfig& config, int64_t bytes, int32_t block_size);

}  // namespace tandem
