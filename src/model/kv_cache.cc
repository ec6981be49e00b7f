#include "model/kv_cache.h"

#include "util/error.h"

namespace tandem {

KvCache::KvCache(Backend& be, const ModelConfig& config, int32_t num_blocks, int32_t block_size, DType dtype)
    : block_size_(block_size), num_blocks_(num_blocks) {
  TANDEM_CHECK(block_size > 0 && num_blocks > 0);
  layers_.resize(config.n_layers);
  for (int i = 0; i < config.n_layers; ++i) {
    const LayerSpec& l = config.layers[i];
    if (!l.owns_kv()) continue;
    // Contents start undefined: a position is always written before any row's key range covers it.
    const size_t bytes = static_cast<size_t>(num_blocks) * block_size * l.n_kv_heads * l.head_dim * dtype_size(dtype);
    storage_.emplace_back(be, bytes);
    void* k = storage_.back().data();
    storage_.emplace_back(be, bytes);
    void* v = storage_.back().data();
    layers_[i] = KvLayer{k, v, dtype, num_blocks, block_size, l.n_kv_heads, l.head_dim};
    bytes_ += static_cast<int64_t>(2 * bytes);
  }
  for (int i = 0; i < config.n_layers; ++i)
    if (config.layers[i].kv_source >= 0) layers_[i] = layers_[config.layers[i].kv_source];
  free_.reserve(num_blocks);
  for (int32_t b = num_blocks - 1; b >= 0; --b) free_.push_back(b);
  refs_.assign(num_blocks, 0);
  hash_.assign(num_blocks, 0);
  lru_pos_.resize(num_blocks);
}

int32_t KvCache::allocate() {
  int32_t b;
  if (!free_.empty()) {
    b = free_.back();
    free_.pop_back();
  } else if (!lru_.empty()) {  // evict the oldest cached block
    b = lru_.front();
    lru_.pop_front();
    index_.erase(hash_[b]);
    hash_[b] = 0;
  } else {
    return -1;
  }
  refs_[b] = 1;
  return b;
}

void KvCache::release(int32_t block) {
  TANDEM_CHECK(block >= 0 && block < num_blocks_ && refs_[block] > 0);
  if (--refs_[block] > 0) return;
  if (hash_[block]) {
    lru_pos_[block] = lru_.insert(lru_.end(), block);
  } else {
    free_.push_back(block);
  }
}

void KvCache::publish(int32_t block, uint64_t hash) {
  TANDEM_CHECK(block >= 0 && block < num_blocks_ && refs_[block] > 0 && hash != 0);
  if (hash_[block] || index_.count(hash)) return;  // already published (or an identical block is)
  hash_[block] = hash;
  index_[hash] = block;
}

int32_t KvCache::lookup(uint64_t hash) {
  auto it = index_.find(hash);
  if (it == index_.end()) return -1;
  const int32_t b = it->second;
  if (refs_[b]++ == 0) lru_.erase(lru_pos_[b]);
  return b;
}

uint64_t block_hash(uint64_t parent, std::span<const int32_t> tokens, uint64_t extra) {
  // splitmix64 over the parent hash and each token; never 0 (0 means "not published").
  auto mix = [](uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
  };
  uint64_t h = mix(parent ^ 0x5DEECE66Dull);
  for (int32_t t : tokens) h = mix(h ^ static_cast<uint32_t>(t));
  if (extra) h = mix(h ^ extra);
  return h ? h : 1;
}

bool KvCache::reserve(std::vector<int32_t>& table, int64_t tokens) {
  const int64_t needed = (tokens + block_size_ - 1) / block_size_;
  if (needed <= static_cast<int64_t>(table.size())) return true;
  if (needed - static_cast<int64_t>(table.size()) > free_blocks()) return false;
  while (static_cast<int64_t>(table.size()) < needed) table.push_back(allocate());
  return true;
}

void KvCache::release_all(std::vector<int32_t>& table) {
  for (int32_t b : table) release(b);
  table.clear();
}

void KvCache::truncate(std::vector<int32_t>& table, int64_t tokens) {
  const int64_t keep = (tokens + block_size_ - 1) / block_size_;
  while (static_cast<int64_t>(table.size()) > keep) {
    release(table.back());
    table.pop_back();
  }
}

int32_t kv_blocks_for_bytes(const ModelConfig& config, int64_t bytes, int32_t block_size, DType dtype) {
  const int64_t per_block = config.kv_bytes_per_token(static_cast<int>(dtype_size(dtype))) * block_size;
  return per_block > 0 ? static_cast<int32_t>(std::max<int64_t>(1, bytes / per_block)) : 1;
}

}  // namespace tandem
