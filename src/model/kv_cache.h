// Paged KV cache of one model, in two groups of layers (vLLM's KV cache groups): the full-attention
// layers, which keep every position of a sequence, and the sliding-window layers, which keep only
// the positions a later query can still see. Each group has its own pools — per KV-owning layer, K
// and V of fixed-size blocks [num_blocks, block_size, n_kv_heads, head_dim] in backend memory (F32,
// or BF16 on backends that support it) — and its own block ids. A sequence owns one block table per
// group (BlockTables); position p lives in block table[p / block_size], row p % block_size, of its
// layer's group. A sliding table's blocks that fall wholly behind the window are released and their
// entries set to -1, so a sequence holds full-layer KV per token plus a fixed window of sliding-layer
// KV. The drafter reads the target's layers through the same tables.
//
// Prefix caching: a full block whose tokens are final can be published under a hash of its
// content and everything before it (in both groups, where the sliding group still holds it); a
// later sequence starting with the same tokens takes the blocks (reference-counted) instead of
// recomputing them. Released published blocks stay cached until their pages are needed (least
// recently released first).
#pragma once
#include <cstdint>
#include <list>
#include <span>
#include <unordered_map>
#include <vector>

#include "backend/backend.h"
#include "model/config.h"

namespace tandem {

enum class KvGroup { full, sliding };

// A sequence's pages: entry b of a group's table is the block of positions [b·bs, (b+1)·bs) in that
// group's pools. The sliding table (empty when the cache has no sliding group) is never longer
// than the full one; its entries behind the window are -1.
struct BlockTables {
  std::vector<int32_t> full, sliding;
  std::vector<int32_t>& operator[](KvGroup g) { return g == KvGroup::full ? full : sliding; }
  const std::vector<int32_t>& operator[](KvGroup g) const { return g == KvGroup::full ? full : sliding; }
};

// Blocks of each group.
struct KvBlocks {
  int64_t full = 0, sliding = 0;
};

// How much KV a model keeps per group, and how a budget of bytes splits between the groups: what
// the engine sizes its cache by and what `tandem plan` and serve report.
struct KvSizing {
  int32_t block_size = 16;
  // Positions before a sequence's next query position that the sliding group keeps (0: the model
  // has no sliding group): the target's sliding layers see window − 1 of them, the drafter window
  // (vLLM's convention) or window + 1 (transformers').
  int32_t keep = 0;
  int64_t full_block_bytes = 0, sliding_block_bytes = 0;  // K and V of all of a group's layers, one block

  int64_t bytes(KvBlocks b) const { return b.full * full_block_bytes + b.sliding * sliding_block_bytes; }
  // Sliding blocks that `seqs` running sequences can hold at once: each its kept positions plus a
  // verify block of 1 + k rows (each range rounded out to whole blocks), and between them the
  // prefill chunks of one step (at most step_tokens rows).
  int64_t sliding_working_set(int64_t seqs, int64_t step_tokens, int k) const;
  // Blocks for `seqs` sequences of `positions` positions each: the full group every position; the
  // sliding group as many, but no more than `sliding_cap` (its working set).
  KvBlocks blocks_for(int64_t seqs, int64_t positions, int64_t sliding_cap) const;
  // The split of a budget the engine makes: the sliding group gets its working set `sliding_cap`
  // and the full group the rest, unless the full group would then get fewer blocks than that; then
  // both get the same number (a sequence's sliding blocks are never more than its full ones).
  KvBlocks split(int64_t bytes, int64_t sliding_cap) const;
  // The most positions each of `seqs` sequences may have for blocks_for() to fit in `bytes` (0: none).
  int64_t max_positions(int64_t seqs, int64_t bytes, int64_t sliding_cap) const;
};
KvSizing kv_sizing(const ModelConfig& config, int32_t block_size, DType dtype = DType::F32);

class KvCache {
 public:
  KvCache(Backend& be, const ModelConfig& config, KvBlocks blocks, int32_t block_size, DType dtype = DType::F32);

  int32_t block_size() const { return block_size_; }
  DType dtype() const { return dtype_; }
  bool has_sliding() const { return keep_ > 0; }
  int32_t keep() const { return keep_; }  // as KvSizing::keep
  // The group whose tables layers of type t read (full when the model has no sliding group).
  KvGroup group(LayerType t) const { return t == LayerType::sliding && has_sliding() ? KvGroup::sliding : KvGroup::full; }
  int32_t num_blocks(KvGroup g) const { return pool(g).num_blocks; }
  // Blocks not referenced by any sequence (free or merely cached).
  int32_t free_blocks(KvGroup g) const { return pool(g).free_blocks(); }
  int64_t bytes() const { return bytes_; }
  // Fraction of the cache's bytes held by sequences.
  double usage() const;

  // Storage of layer `layer` (for a KV-shared layer: of the layer it reads).
  const KvLayer& layer(int layer) const { return layers_[layer]; }

  // Makes the tables cover a step that writes positions [begin, end): the full table every position
  // below `end`, the sliding table the positions from `keep` before `begin` (first releasing what
  // lies behind that). False (tables unchanged) if either group ran out of blocks.
  bool reserve(BlockTables& t, int64_t begin, int64_t end);
  // Grows only the full table to cover `end` positions (a prompt's full-layer pages, held from
  // admission so that its prefill never waits for them); false (unchanged) if blocks ran out.
  bool reserve_full(BlockTables& t, int64_t end);
  // Releases the sliding blocks wholly before the positions kept for a next query at `next`.
  void release_behind(BlockTables& t, int64_t next);
  // Releases the blocks past the first `tokens` positions.
  void truncate(BlockTables& t, int64_t tokens);
  // Releases every block and clears the tables.
  void release_all(BlockTables& t);

  // Prefix cache. publish: block b of both groups (the sliding one only while held) under `hash`.
  void publish(const BlockTables& t, int64_t b, uint64_t hash);
  // Takes the longest prefix of `hashes` (the chain hashes of a prompt's leading blocks) whose full
  // blocks are all cached and whose sliding blocks are cached for the positions kept before its
  // end; fills the empty tables t with them and returns how many blocks that is.
  int64_t lookup(std::span<const uint64_t> hashes, BlockTables& t);

  int64_t slot(const BlockTables& t, KvGroup g, int32_t position) const {
    return static_cast<int64_t>(t[g][position / block_size_]) * block_size_ + position % block_size_;
  }

 private:
  // One group's block ids: free list, references and the published (cached) blocks.
  struct Pool {
    int32_t num_blocks = 0;
    std::vector<int32_t> free;
    std::vector<int32_t> refs;
    std::vector<uint64_t> hash;  // 0: not published
    std::unordered_map<uint64_t, int32_t> index;
    std::list<int32_t> lru;  // published blocks with no references, oldest first
    std::vector<std::list<int32_t>::iterator> lru_pos;

    void init(int32_t n);
    int32_t free_blocks() const { return static_cast<int32_t>(free.size() + lru.size()); }
    // -1 when exhausted; evicts the least recently released cached block when no free one is left.
    int32_t allocate();
    void release(int32_t block);
    void publish(int32_t block, uint64_t h);
    bool cached(uint64_t h) const { return index.count(h) > 0; }
    int32_t take(uint64_t h);  // the cached block of h, with a reference
  };
  Pool& pool(KvGroup g) { return g == KvGroup::full ? full_ : sliding_; }
  const Pool& pool(KvGroup g) const { return g == KvGroup::full ? full_ : sliding_; }
  // First sliding block a query at `next` may read (through the drafter's widest view).
  int64_t first_kept_block(int64_t next) const { return std::max<int64_t>(0, next - keep_) / block_size_; }

  int32_t block_size_;
  DType dtype_;
  int32_t keep_ = 0;
  int64_t bytes_ = 0, full_block_bytes_ = 0, sliding_block_bytes_ = 0;
  std::vector<Buffer> storage_;  // K then V per owning layer
  std::vector<KvLayer> layers_;
  Pool full_, sliding_;
};

// Chain hash of one block of tokens following the block with hash `parent` (0 for the first).
// `extra` (0: none) folds in what the tokens do not say: the content of images whose placeholder
// tokens fall in the block, so blocks of different images never share a hash.
uint64_t block_hash(uint64_t parent, std::span<const int32_t> tokens, uint64_t extra = 0);

}  // namespace tandem
