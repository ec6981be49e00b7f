// Paged KV cache of one model: per KV-owning layer, K and V pools of fixed-size blocks
// [num_blocks, block_size, n_kv_heads, head_dim] in backend memory (F32, or BF16 on backends that
// support it). Sequences own lists of block ids (their
// block table); position p of a sequence lives in block table[p / block_size], row p % block_size.
// One table serves every layer, so the drafter reads the target's layers through the same table.
//
// Prefix caching: a full block whose tokens are final can be published under a hash of its
// content and everything before it; a later sequence starting with the same tokens takes the
// block (reference-counted) instead of recomputing it. Released published blocks stay cached
// until their pages are needed (least recently released first).
#pragma once
#include <cstdint>
#include <list>
#include <span>
#include <unordered_map>
#include <vector>

#include "backend/backend.h"
#include "model/config.h"

namespace tandem {

class KvCache {
 public:
  KvCache(Backend& be, const ModelConfig& config, int32_t num_blocks, int32_t block_size,
          DType dtype = DType::F32);

  int32_t block_size() const { return block_size_; }
  int32_t num_blocks() const { return num_blocks_; }
  // Blocks not referenced by any sequence (free or merely cached).
  int32_t free_blocks() const { return static_cast<int32_t>(free_.size() + lru_.size()); }
  int64_t bytes() const { return bytes_; }

  // Storage of layer `layer` (for a KV-shared layer: of the layer it reads).
  const KvLayer& layer(int layer) const { return layers_[layer]; }

  // Block allocation. allocate() returns -1 when the pool is exhausted; it evicts the least
  // recently released cached block when no free one is left. release() drops one reference.
  int32_t allocate();
  void release(int32_t block);

  // Prefix cache: publish a full block under `hash`; look one up (taking a reference), or -1.
  void publish(int32_t block, uint64_t hash);
  int32_t lookup(uint64_t hash);

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
  std::vector<Buffer> storage_;  // K then V per owning layer
  std::vector<KvLayer> layers_;
  std::vector<int32_t> free_;
  std::vector<int32_t> refs_;
  std::vector<uint64_t> hash_;  // 0: not published
  std::unordered_map<uint64_t, int32_t> index_;
  std::list<int32_t> lru_;  // published blocks with no references, oldest first
  std::vector<std::list<int32_t>::iterator> lru_pos_;
};

// Chain hash of one block of tokens following the block with hash `parent` (0 for the first).
// `extra` (0: none) folds in what the tokens do not say: the content of images whose placeholder
// tokens fall in the block, so blocks of different images never share a hash.
uint64_t block_hash(uint64_t parent, std::span<const int32_t> tokens, uint64_t extra = 0);

// Blocks a KV cache of `bytes` can hold for this model with elements of `dtype`.
int32_t kv_blocks_for_bytes(const ModelConfig& config, int64_t bytes, int32_t block_size,
                            DType dtype = DType::F32);

}  // namespace tandem
