#include "model/kv_cache.h"

#include <algorithm>
#include <climits>

#include "util/error.h"

namespace tandem {
namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Whether the model's sliding layers form their own group (a window to keep, and layers keeping KV).
bool has_sliding_group(const ModelConfig& c) {
  if (c.sliding_window <= 0) return false;
  return std::any_of(c.layers.begin(), c.layers.end(),
                     [](const LayerSpec& l) { return l.type == LayerType::sliding && l.owns_kv(); });
}

int64_t token_bytes(const LayerSpec& l, DType dtype) {
  return 2 * static_cast<int64_t>(l.n_kv_heads) * l.head_dim * static_cast<int64_t>(dtype_size(dtype));
}

}  // namespace

KvSizing kv_sizing(const ModelConfig& c, int32_t block_size, DType dtype) {
  TANDEM_CHECK(block_size > 0);
  KvSizing s;
  s.block_size = block_size;
  const bool sliding = has_sliding_group(c);
  s.keep = sliding ? c.sliding_window + 1 : 0;
  for (const LayerSpec& l : c.layers) {
    if (!l.owns_kv()) continue;
    (sliding && l.type == LayerType::sliding ? s.sliding_block_bytes : s.full_block_bytes) +=
        token_bytes(l, dtype) * block_size;
  }
  return s;
}

int64_t KvSizing::sliding_working_set(int64_t seqs, int64_t step_tokens, int k) const {
  if (keep == 0) return 0;
  // After a step a sequence holds [next − keep, next + 1); during one it adds the rows it writes.
  return seqs * (ceil_div(keep + 1, block_size) + ceil_div(k + 1, block_size) + 2) + ceil_div(step_tokens, block_size);
}

KvBlocks KvSizing::blocks_for(int64_t seqs, int64_t positions, int64_t sliding_cap) const {
  KvBlocks b;
  b.full = seqs * ceil_div(positions, block_size);
  b.sliding = keep == 0 ? 0 : std::min(b.full, sliding_cap);
  return b;
}

KvBlocks KvSizing::split(int64_t budget, int64_t sliding_cap) const {
  if (keep == 0) return {full_block_bytes > 0 ? budget / full_block_bytes : 0, 0};
  const int64_t both = full_block_bytes + sliding_block_bytes;
  if (full_block_bytes > 0 && sliding_cap <= budget / both)
    return {(budget - sliding_cap * sliding_block_bytes) / full_block_bytes, sliding_cap};
  return {budget / both, budget / both};
}

int64_t KvSizing::max_positions(int64_t seqs, int64_t budget, int64_t sliding_cap) const {
  if (seqs <= 0 || budget <= 0) return 0;
  // bytes(blocks_for()) grows with the positions; no more than this many full blocks can fit.
  int64_t lo = 0, hi = block_size * (budget / (seqs * std::max<int64_t>(1, full_block_bytes)) + 1);
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo + 1) / 2;
    if (bytes(blocks_for(seqs, mid, sliding_cap)) <= budget) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

void KvCache::Pool::init(int32_t n) {
  num_blocks = n;
  free.reserve(n);
  for (int32_t b = n - 1; b >= 0; --b) free.push_back(b);
  refs.assign(n, 0);
  hash.assign(n, 0);
  lru_pos.resize(n);
}

int32_t KvCache::Pool::allocate() {
  int32_t b;
  if (!free.empty()) {
    b = free.back();
    free.pop_back();
  } else if (!lru.empty()) {  // evict the oldest cached block
    b = lru.front();
    lru.pop_front();
    index.erase(hash[b]);
    hash[b] = 0;
  } else {
    return -1;
  }
  refs[b] = 1;
  return b;
}

void KvCache::Pool::release(int32_t block) {
  TANDEM_CHECK(block >= 0 && block < num_blocks && refs[block] > 0);
  if (--refs[block] > 0) return;
  if (hash[block]) {
    lru_pos[block] = lru.insert(lru.end(), block);
  } else {
    free.push_back(block);
  }
}

void KvCache::Pool::publish(int32_t block, uint64_t h) {
  TANDEM_CHECK(block >= 0 && block < num_blocks && refs[block] > 0 && h != 0);
  if (hash[block] || index.count(h)) return;  // already published (or an identical block is)
  hash[block] = h;
  index[h] = block;
}

int32_t KvCache::Pool::take(uint64_t h) {
  const int32_t b = index.at(h);
  if (refs[b]++ == 0) lru.erase(lru_pos[b]);
  return b;
}

KvCache::KvCache(Backend& be, const ModelConfig& config, KvBlocks blocks, int32_t block_size, DType dtype)
    : block_size_(block_size), dtype_(dtype) {
  const KvSizing sizing = kv_sizing(config, block_size, dtype);
  keep_ = sizing.keep;
  full_block_bytes_ = sizing.full_block_bytes, sliding_block_bytes_ = sizing.sliding_block_bytes;
  TANDEM_CHECK(blocks.full > 0 && blocks.full <= INT32_MAX);
  TANDEM_CHECK(!has_sliding() || (blocks.sliding > 0 && blocks.sliding <= INT32_MAX));
  full_.init(static_cast<int32_t>(blocks.full));
  if (has_sliding()) sliding_.init(static_cast<int32_t>(blocks.sliding));
  layers_.resize(config.n_layers);
  for (int i = 0; i < config.n_layers; ++i) {
    const LayerSpec& l = config.layers[i];
    if (!l.owns_kv()) continue;
    const int32_t n = pool(group(l.type)).num_blocks;
    // Contents start undefined: a position is always written before any row's key range covers it.
    const size_t bytes = static_cast<size_t>(n) * block_size * l.n_kv_heads * l.head_dim * dtype_size(dtype);
    storage_.emplace_back(be, bytes);
    void* k = storage_.back().data();
    storage_.emplace_back(be, bytes);
    void* v = storage_.back().data();
    layers_[i] = KvLayer{k, v, dtype, n, block_size, l.n_kv_heads, l.head_dim};
    bytes_ += static_cast<int64_t>(2 * bytes);
  }
  for (int i = 0; i < config.n_layers; ++i) {
    const int src = config.layers[i].kv_source;
    if (src < 0) continue;
    // A KV-shared layer reads through its own type's table, so its source must be in that group.
    TANDEM_CHECK(group(config.layers[src].type) == group(config.layers[i].type));
    layers_[i] = layers_[src];
  }
}

double KvCache::usage() const {
  const int64_t held = static_cast<int64_t>(full_.num_blocks - full_.free_blocks()) * full_block_bytes_ +
                       static_cast<int64_t>(sliding_.num_blocks - sliding_.free_blocks()) * sliding_block_bytes_;
  const int64_t total = static_cast<int64_t>(full_.num_blocks) * full_block_bytes_ +
                        static_cast<int64_t>(sliding_.num_blocks) * sliding_block_bytes_;
  return total > 0 ? static_cast<double>(held) / static_cast<double>(total) : 0.0;
}

bool KvCache::reserve(BlockTables& t, int64_t begin, int64_t end) {
  TANDEM_CHECK(begin >= 0 && begin <= end);
  const int64_t needed = ceil_div(end, block_size_);
  const int64_t full_missing = std::max<int64_t>(0, needed - static_cast<int64_t>(t.full.size()));
  if (full_missing > full_.free_blocks()) return false;
  if (has_sliding()) {
    release_behind(t, begin);
    const int64_t first = first_kept_block(begin);
    std::vector<int32_t>& s = t.sliding;
    int64_t missing = 0;
    for (int64_t b = first; b < needed; ++b) {
      // Kept entries are held: a block is released only once no later query can reach it.
      TANDEM_CHECK(b >= static_cast<int64_t>(s.size()) || s[b] >= 0);
      missing += b >= static_cast<int64_t>(s.size());
    }
    if (missing > sliding_.free_blocks()) return false;
    while (static_cast<int64_t>(s.size()) < needed)
      s.push_back(static_cast<int64_t>(s.size()) < first ? -1 : sliding_.allocate());
  }
  return reserve_full(t, end);
}

bool KvCache::reserve_full(BlockTables& t, int64_t end) {
  const int64_t needed = ceil_div(end, block_size_);
  std::vector<int32_t>& f = t.full;
  if (needed <= static_cast<int64_t>(f.size())) return true;
  if (needed - static_cast<int64_t>(f.size()) > full_.free_blocks()) return false;
  while (static_cast<int64_t>(f.size()) < needed) f.push_back(full_.allocate());
  return true;
}

void KvCache::release_behind(BlockTables& t, int64_t next) {
  if (!has_sliding()) return;
  const int64_t first = std::min<int64_t>(first_kept_block(next), static_cast<int64_t>(t.sliding.size()));
  for (int64_t b = 0; b < first; ++b)
    if (t.sliding[b] >= 0) sliding_.release(t.sliding[b]), t.sliding[b] = -1;
}

void KvCache::truncate(BlockTables& t, int64_t tokens) {
  const size_t keep_blocks = static_cast<size_t>(ceil_div(tokens, block_size_));
  for (KvGroup g : {KvGroup::full, KvGroup::sliding}) {
    std::vector<int32_t>& table = t[g];
    while (table.size() > keep_blocks) {
      if (table.back() >= 0) pool(g).release(table.back());
      table.pop_back();
    }
  }
}

void KvCache::release_all(BlockTables& t) { truncate(t, 0); }

void KvCache::publish(const BlockTables& t, int64_t b, uint64_t hash) {
  full_.publish(t.full[b], hash);
  if (b < static_cast<int64_t>(t.sliding.size()) && t.sliding[b] >= 0) sliding_.publish(t.sliding[b], hash);
}

int64_t KvCache::lookup(std::span<const uint64_t> hashes, BlockTables& t) {
  TANDEM_CHECK(t.full.empty() && t.sliding.empty());
  int64_t m = 0;
  while (m < static_cast<int64_t>(hashes.size()) && full_.cached(hashes[m])) ++m;
  // The sliding group must still have the blocks kept before the hit's end; else a shorter hit.
  auto sliding_hit = [&](int64_t n) {
    for (int64_t b = first_kept_block(n * block_size_); b < n; ++b)
      if (!sliding_.cached(hashes[b])) return false;
    return true;
  };
  if (has_sliding())
    while (m > 0 && !sliding_hit(m)) --m;
  for (int64_t b = 0; b < m; ++b) t.full.push_back(full_.take(hashes[b]));
  if (has_sliding())
    for (int64_t b = 0; b < m; ++b) t.sliding.push_back(b < first_kept_block(m * block_size_) ? -1 : sliding_.take(hashes[b]));
  return m;
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

}  // namespace tandem
