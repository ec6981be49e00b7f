// KvCache: the full and sliding groups, release behind the window, reserve / truncate, prefix hits
// and block accounting; the split of a budget between the groups.
#include <gtest/gtest.h>

#include "fixtures.h"
#include "model/kv_cache.h"

namespace tandem {
namespace {

// gemma4-moe: 4 sliding layers (2 KV heads × 32), 2 full layers (1 KV head × 64), window 8.
ModelConfig moe_config() { return load_model_config(testing::fixtures_dir() + "/gemma4-moe"); }

int32_t held(const KvCache& kv, KvGroup g) { return kv.num_blocks(g) - kv.free_blocks(g); }

TEST(KvSizing, GroupsAndSplit) {
  const ModelConfig c = moe_config();
  const KvSizing s = kv_sizing(c, 4, DType::F32);
  EXPECT_EQ(s.keep, 9);  // window + 1: what the drafter's widest view (transformers') reads back
  EXPECT_EQ(s.full_block_bytes, 2 * (2 * 1 * 64 * 4) * 4);
  EXPECT_EQ(s.sliding_block_bytes, 4 * (2 * 2 * 32 * 4) * 4);
  // Per sequence: ceil(10 / 4) + ceil((k + 1) / 4) + 2 blocks; plus a step's prefill rows.
  EXPECT_EQ(s.sliding_working_set(3, 64, 3), 3 * (3 + 1 + 2) + 16);
  // A budget larger than the working set gives the sliding group exactly that and the rest to full.
  const int64_t cap = 20, budget = 1000 * s.full_block_bytes + cap * s.sliding_block_bytes;
  const KvBlocks big = s.split(budget, cap);
  EXPECT_EQ(big.sliding, cap);
  EXPECT_EQ(big.full, 1000);
  // A small one: both groups the same number of blocks.
  const KvBlocks small = s.split(10 * (s.full_block_bytes + s.sliding_block_bytes), cap);
  EXPECT_EQ(small.full, 10);
  EXPECT_EQ(small.sliding, 10);
  // blocks_for: every position on full layers, the sliding group no more than its cap.
  const KvBlocks two = s.blocks_for(2, 101, cap);
  EXPECT_EQ(two.full, 2 * 26);
  EXPECT_EQ(two.sliding, cap);
  EXPECT_EQ(s.max_positions(2, s.bytes(two), cap), 104);
  // Without sliding layers there is one group.
  ModelConfig all_full = c;
  for (LayerSpec& l : all_full.layers) l.type = LayerType::full;
  const KvSizing f = kv_sizing(all_full, 4, DType::F32);
  EXPECT_EQ(f.keep, 0);
  EXPECT_EQ(f.sliding_block_bytes, 0);
  EXPECT_EQ(f.split(7 * f.full_block_bytes, cap).full, 7);
  EXPECT_EQ(f.split(7 * f.full_block_bytes, cap).sliding, 0);
}

TEST(KvCache, SlidingGroupKeepsOnlyTheWindow) {
  auto be = make_cpu_backend(1);
  const ModelConfig c = moe_config();
  KvCache kv(*be, c, {64, 8}, 4);
  ASSERT_TRUE(kv.has_sliding());
  EXPECT_EQ(kv.layer(0).num_blocks, 8);   // layer 0 is sliding: the sliding group's pools
  EXPECT_EQ(kv.layer(5).num_blocks, 64);  // layer 5 is full
  BlockTables t;
  // A 13-row prefill chunk, then decode one position at a time to 200.
  ASSERT_TRUE(kv.reserve(t, 0, 13 + 1));
  kv.release_behind(t, 13);
  for (int64_t p = 13; p < 200; ++p) {
    ASSERT_TRUE(kv.reserve(t, p, p + 1)) << p;
    kv.truncate(t, p + 2);
    kv.release_behind(t, p + 1);
    // Every position a later query (or the drafter) may read is held; nothing before it is.
    const int64_t next = p + 1;
    EXPECT_EQ(static_cast<int64_t>(t.full.size()), (next + 3) / 4);
    for (int64_t b = 0; b < static_cast<int64_t>(t.sliding.size()); ++b)
      EXPECT_EQ(t.sliding[b] >= 0, (b + 1) * 4 > next - kv.keep()) << "block " << b << " at " << next;
    EXPECT_LE(held(kv, KvGroup::sliding), (kv.keep() + 1 + 3) / 4 + 1);
    EXPECT_EQ(held(kv, KvGroup::full), static_cast<int32_t>(t.full.size()));
  }
  // The sliding pool (8 blocks) holds a 200-position sequence; the full one holds every position.
  EXPECT_GE(held(kv, KvGroup::sliding), 3);
  kv.release_all(t);
  EXPECT_TRUE(t.full.empty() && t.sliding.empty());
  EXPECT_EQ(held(kv, KvGroup::sliding), 0);
  EXPECT_EQ(held(kv, KvGroup::full), 0);
  EXPECT_EQ(kv.usage(), 0.0);
}

TEST(KvCache, ReserveIsAllOrNothingAndTruncateRollsBack) {
  auto be = make_cpu_backend(1);
  KvCache kv(*be, moe_config(), {64, 4}, 4);
  BlockTables a, b;
  ASSERT_TRUE(kv.reserve(a, 0, 16));  // 4 blocks of each group
  EXPECT_EQ(kv.free_blocks(KvGroup::sliding), 0);
  const int32_t full_free = kv.free_blocks(KvGroup::full);
  EXPECT_FALSE(kv.reserve(b, 0, 4));  // the sliding group is out: neither table grows
  EXPECT_TRUE(b.full.empty() && b.sliding.empty());
  EXPECT_EQ(kv.free_blocks(KvGroup::full), full_free);
  // A verify block past position 16 needs a 5th sliding block, but the window lets block 0 go first.
  ASSERT_TRUE(kv.reserve(a, 16, 20));
  EXPECT_EQ(a.sliding[0], -1);
  EXPECT_EQ(a.full.size(), 5u);
  // Rejected drafts: back to 17 positions (the block of position 16 stays), in both groups.
  kv.truncate(a, 17);
  EXPECT_EQ(a.full.size(), 5u);
  kv.truncate(a, 16);
  EXPECT_EQ(a.full.size(), 4u);
  EXPECT_EQ(a.sliding.size(), 4u);
  EXPECT_EQ(kv.free_blocks(KvGroup::sliding), 1);
  // reserve_full: a whole prompt's full-layer pages, the sliding table untouched.
  ASSERT_TRUE(kv.reserve_full(b, 40));
  EXPECT_EQ(b.full.size(), 10u);
  EXPECT_TRUE(b.sliding.empty());
  ASSERT_TRUE(kv.reserve(b, 0, 4));
  EXPECT_EQ(b.sliding.size(), 1u);
  EXPECT_EQ(kv.slot(b, KvGroup::sliding, 3), static_cast<int64_t>(b.sliding[0]) * 4 + 3);
  EXPECT_EQ(kv.slot(b, KvGroup::full, 37), static_cast<int64_t>(b.full[9]) * 4 + 1);
}

TEST(KvCache, PrefixHitNeedsTheSlidingBlocksOfTheWindow) {
  auto be = make_cpu_backend(1);
  KvCache kv(*be, moe_config(), {64, 8}, 4);
  const std::vector<uint64_t> hashes = {101, 102, 103, 104, 105, 106, 107, 108, 109, 110};
  // Sequence A: 40 positions, publishing each block as it completes, releasing behind the window.
  BlockTables a;
  for (int64_t p = 0; p < 40; p += 4) {
    ASSERT_TRUE(kv.reserve(a, p, p + 4));
    kv.publish(a, p / 4, hashes[p / 4]);
    kv.release_behind(a, p + 4);
  }
  EXPECT_EQ(a.sliding[6], -1);  // first kept block at 40: (40 − 9) / 4 = 7
  EXPECT_GE(a.sliding[7], 0);
  // B starts with the same 10 blocks while A still runs: every full block, the sliding blocks of the
  // window before position 40, shared with A.
  BlockTables b;
  EXPECT_EQ(kv.lookup(hashes, b), 10);
  EXPECT_EQ(b.full, a.full);
  for (int i = 0; i < 7; ++i) EXPECT_EQ(b.sliding[i], -1);
  for (int i = 7; i < 10; ++i) EXPECT_EQ(b.sliding[i], a.sliding[i]);
  kv.release_all(b);
  kv.release_all(a);
  EXPECT_EQ(kv.usage(), 0.0);  // cached blocks are not in use

  // A short sequence whose window covers it all: C publishes 3 blocks, then finishes (its last
  // block is released first, so it is the first cached block to be evicted).
  KvCache small(*be, moe_config(), {64, 4}, 4);
  BlockTables cseq;
  ASSERT_TRUE(small.reserve(cseq, 0, 12));
  for (int i = 0; i < 3; ++i) small.publish(cseq, i, hashes[i]);
  small.release_all(cseq);
  BlockTables d;
  EXPECT_EQ(small.lookup(std::span(hashes).first(3), d), 3);  // everything cached
  small.release_all(d);
  // Another sequence takes 2 sliding blocks: the free one and the oldest cached (C's block 2).
  BlockTables other;
  ASSERT_TRUE(small.reserve(other, 0, 8));
  // A hit of 3 blocks would need C's sliding blocks 0..2; block 2 is gone, so the hit stops at 2
  // (positions 0..7, whose window is blocks 0 and 1) although the full group still has 3.
  BlockTables e;
  EXPECT_EQ(small.lookup(std::span(hashes).first(3), e), 2);
  EXPECT_EQ(e.full.size(), 2u);
  EXPECT_EQ(e.sliding.size(), 2u);
  EXPECT_GE(e.sliding[0], 0);
  small.release_all(e);
  small.release_all(other);
}

TEST(KvCache, WithoutSlidingLayersOneGroupServesAll) {
  auto be = make_cpu_backend(1);
  ModelConfig c = moe_config();
  for (LayerSpec& l : c.layers) l.type = LayerType::full;
  KvCache kv(*be, c, {16, 0}, 4);
  EXPECT_FALSE(kv.has_sliding());
  EXPECT_EQ(kv.group(LayerType::sliding), KvGroup::full);
  BlockTables t;
  ASSERT_TRUE(kv.reserve(t, 60, 64));
  EXPECT_EQ(t.full.size(), 16u);
  EXPECT_TRUE(t.sliding.empty());
  kv.release_behind(t, 64);  // nothing to release
  EXPECT_EQ(kv.free_blocks(KvGroup::full), 0);
}

}  // namespace
}  // namespace tandem
