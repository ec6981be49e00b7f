#include "model/kv_cache.h"

#include "util/error.h"

namespace tandem {

KvCache::KvCache(const ModelConfig& config, int32_t num_blocks, int32_t block_size)
    : block_size_(block_size), num_blocks_(num_blocks) {
  TANDEM_CHECK(block_size > 0 && num_blocks > 0);
  layers_.resize(config.n_layers);
  for (int i = 0; i < config.n_layers; ++i) {
    const LayerSpec& l = config.layers[i];
    if (!l.owns_kv()) continue;
    const size_t n = static_cast<size_t>(num_blocks) * block_size * l.n_kv_heads * l.head_dim;
    storage_.emplace_back(n, 0.0f);
    float* k = storage_.back().data();
    storage_.emplace_back(n, 0.0f);
    float* v = storage_.back().data();
    layers_[i] = KvLayer{k, v, num_blocks, block_size, l.n_kv_heads, l.head_dim};
    bytes_ += static_cast<int64_t>(2 * n * sizeof(float));
  }
  for (int i = 0; i < config.n_layers; ++i)
    if (config.layers[i].kv_source >= 0) layers_[i] = layers_[config.layers[i].kv_source];
  free_.reserve(num_blocks);
  for (int32_t b = num_blocks - 1; b >= 0; --b) free_.push_back(b);
}

int32_t KvCache::allocate() {
  if (free_.empty()) return -1;
  const int32_t b = free_.back();
  free_.pop_back();
  return b;
}

void KvCache::release(int32_t block) {
  TANDEM_CHECK(block >= 0 && block < num_blocks_);
  free_.push_back(block);
}

bool KvCache::reserve(std::vector<int32_t>& table, int64_t tokens) {
  const int64_t needed = (tokens + block_size_ - 1) / block_size_;
  if (needed <= static_cast<int64_t>(table.size())) return true;
  if (needed - static_cast<int64_t>(table.size()) > static_cast<int64_t>(free_.size())) return false;
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

int32_t kv_blocks_for_bytes(const ModelConfig& config, int64_t bytes, int32_t block_size) {
  const int64_t per_block = config.kv_bytes_per_token(4) * block_size;
  return per_block > 0 ? static_cast<int32_t>(std::max<int64_t>(1, bytes / per_block)) : 1;
}

}  // namespace tandem
