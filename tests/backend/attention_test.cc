// Paged attention against a float64 reference: several block sizes, GQA ratios, head dims 32/256/512,
// scrambled block tables, empty, partial and long key ranges. Error bound per output element:
// 1e-5 · max|v| (softmax weights sum to one, so the output is a convex mix of v values).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <span>

#include "backend_test_util.h"

namespace tandem::test {
namespace {

// A query row as the tests describe it: a pointer into a host block table and a key range.
struct AttentionRow {
  const int32_t* block_table = nullptr;
  int32_t kv_begin = 0, kv_end = 0;
};

// Runs the backend's attention on host rows: each row gets its own row of a flat block table holding
// the blocks its range touches (-1 past them).
void attend(Backend& be, const TensorView& q, const KvLayer& layer, std::span<const AttentionRow> rows, float scale,
            TensorView& out) {
  const int64_t T = rows.size();
  int64_t max_blocks = 1;
  for (const AttentionRow& r : rows)
    if (r.kv_end > r.kv_begin) max_blocks = std::max<int64_t>(max_blocks, (r.kv_end - 1) / layer.block_size + 1);
  std::vector<int32_t> ranges(3 * T), tables(T * max_blocks, -1);
  for (int64_t t = 0; t < T; ++t) {
    ranges[3 * t] = static_cast<int32_t>(t);
    ranges[3 * t + 1] = rows[t].kv_begin;
    ranges[3 * t + 2] = rows[t].kv_end;
    if (rows[t].kv_end > rows[t].kv_begin)
      std::copy_n(rows[t].block_table, (rows[t].kv_end - 1) / layer.block_size + 1, &tables[t * max_blocks]);
  }
  const AttentionRows view{TensorView(DType::I32, ranges.data(), {T, 3}),
                           TensorView(DType::I32, tables.data(), {T, max_blocks})};
  be.attention(q, layer, view, scale, out);
}

// A cache of random K/V. k and v hold the values as the op sees them (bf16-rounded for a BF16 cache,
// whose elements are in k16 / v16).
struct Paged {
  std::vector<float> k, v;
  std::vector<uint16_t> k16, v16;
  KvLayer layer;
};

Paged make_cache(int32_t num_blocks, int32_t block_size, int32_t n_kv, int32_t d, Rng& rng,
                 DType dtype = DType::F32) {
  Paged p;
  const int64_t n = static_cast<int64_t>(num_blocks) * block_size * n_kv * d;
  p.k = rng.normals(n);
  p.v = rng.normals(n);
  p.layer = {p.k.data(), p.v.data(), dtype, num_blocks, block_size, n_kv, d};
  if (dtype == DType::BF16) {
    for (std::vector<float>* f : {&p.k, &p.v}) {
      std::vector<uint16_t>& h = f == &p.k ? p.k16 : p.v16;
      for (float& x : *f) {
        h.push_back(f32_to_bf16(x));
        x = bf16_to_f32(h.back());
      }
    }
    p.layer.k = p.k16.data();
    p.layer.v = p.v16.data();
  }
  return p;
}

// out[t, h·d : (h+1)·d] in float64.
std::vector<double> reference(const std::vector<float>& q, const Paged& p, std::span<const AttentionRow> rows,
                              int64_t n_heads, float scale) {
  const KvLayer& L = p.layer;
  const int64_t d = L.head_dim, T = rows.size(), group = n_heads / L.n_kv_heads;
  std::vector<double> out(T * n_heads * d, 0.0);
  for (int64_t t = 0; t < T; ++t) {
    const AttentionRow& r = rows[t];
    for (int64_t h = 0; h < n_heads; ++h) {
      const int64_t kvh = h / group, len = r.kv_end - r.kv_begin;
      if (len == 0) continue;
      std::vector<double> s(len);
      for (int64_t j = 0; j < len; ++j) {
        const int64_t pos = r.kv_begin + j;
        const int64_t slot = static_cast<int64_t>(r.block_table[pos / L.block_size]) * L.block_size + pos % L.block_size;
        double dot = 0;
        for (int64_t i = 0; i < d; ++i) dot += static_cast<double>(q[(t * n_heads + h) * d + i]) * p.k[(slot * L.n_kv_heads + kvh) * d + i];
        s[j] = dot * scale;
      }
      const double mx = *std::max_element(s.begin(), s.end());
      double sum = 0;
      for (double& x : s) sum += x = std::exp(x - mx);
      for (int64_t j = 0; j < len; ++j) {
        const int64_t pos = r.kv_begin + j;
        const int64_t slot = static_cast<int64_t>(r.block_table[pos / L.block_size]) * L.block_size + pos % L.block_size;
        for (int64_t i = 0; i < d; ++i) out[(t * n_heads + h) * d + i] += s[j] / sum * p.v[(slot * L.n_kv_heads + kvh) * d + i];
      }
    }
  }
  return out;
}

struct Config {
  int32_t block_size, n_kv, d;
  int64_t n_heads;
};

void check_attention(const Config& c, Rng& rng, DType dtype) {
  auto be = make_cpu_backend(2);
  const int32_t max_len = 300, blocks_per_seq = (max_len + c.block_size - 1) / c.block_size;
  const int32_t num_blocks = 2 * blocks_per_seq;  // two sequences share the pool
  Paged p = make_cache(num_blocks, c.block_size, c.n_kv, c.d, rng, dtype);
  // Sequences get scrambled, interleaved pages so a slot computed from the wrong block would show.
  std::vector<int32_t> perm(num_blocks);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng.gen());
  const int32_t* table_a = perm.data();
  const int32_t* table_b = perm.data() + blocks_per_seq;
  std::vector<AttentionRow> rows = {
      {table_a, 0, 1},         {table_a, 0, 0},   {table_b, 5, 5},        {table_a, 3, 17},
      {table_b, 0, max_len},   {table_a, 100, 228}, {table_b, max_len - 1, max_len},
  };
  const int64_t T = rows.size();
  std::vector<float> q = rng.normals(T * c.n_heads * c.d);
  std::vector<float> out(T * c.n_heads * c.d, 7.0f);
  TensorView qv(DType::F32, q.data(), {T, c.n_heads, c.d});
  TensorView ov(DType::F32, out.data(), {T, c.n_heads * c.d});
  const float scale = 1.0f / std::sqrt(static_cast<float>(c.d));
  attend(*be, qv, p.layer, rows, scale, ov);
  const std::vector<double> ref = reference(q, p, rows, c.n_heads, scale);
  const double vmax = std::abs(*std::max_element(p.v.begin(), p.v.end(), [](float a, float b) { return std::abs(a) < std::abs(b); }));
  for (size_t i = 0; i < out.size(); ++i)
    ASSERT_NEAR(out[i], ref[i], 1e-5 * vmax) << dtype_name(dtype) << " block_size=" << c.block_size << " n_kv=" << c.n_kv << " d=" << c.d
                                             << " heads=" << c.n_heads << " row " << i / (c.n_heads * c.d);
}

TEST(Attention, BlockSizesGqaRatiosHeadDims) {
  Rng rng(10);
  const Config configs[] = {
      {1, 1, 32, 1},  {16, 2, 32, 4}, {16, 1, 256, 8}, {32, 4, 256, 4},
      {7, 2, 512, 8}, {64, 1, 512, 2}, {16, 8, 32, 8},
      // Head dims with a tail past the 64-column blocks: 8 columns at a time, then one by one.
      {16, 1, 72, 4}, {8, 2, 40, 4}, {16, 1, 70, 2},
  };
  for (DType dtype : {DType::F32, DType::BF16})
    for (const Config& c : configs) check_attention(c, rng, dtype);
}

// A query row's output is the same bits whether it is attended alone or with other rows (greedy
// losslessness under batching rests on this), for both cache dtypes and grouped query heads.
TEST(Attention, RowResultIndependentOfBatch) {
  auto be = make_cpu_backend(2);
  Rng rng(15);
  for (DType dtype : {DType::F32, DType::BF16}) {
    const int32_t n_kv = 2, d = 64, block_size = 16, n_heads = 8;
    Paged p = make_cache(40, block_size, n_kv, d, rng, dtype);
    std::vector<int32_t> table(40);
    std::iota(table.begin(), table.end(), 0);
    std::vector<AttentionRow> rows;
    // Rows that attend the same keys share a task (up to 32 of them): 35 such rows, then two.
    for (int32_t end : {3, 40}) rows.push_back({table.data(), 0, end});
    for (int i = 0; i < 35; ++i) rows.push_back({table.data(), 0, 200});
    for (int i = 0; i < 2; ++i) rows.push_back({table.data(), 0, 640});
    const int64_t T = rows.size();
    std::vector<float> q = rng.normals(T * n_heads * d), all(T * n_heads * d), one(n_heads * d);
    TensorView qv(DType::F32, q.data(), {T, n_heads, d}), av(DType::F32, all.data(), {T, n_heads * d});
    attend(*be, qv, p.layer, rows, 0.125f, av);
    for (int64_t t = 0; t < T; ++t) {
      TensorView q1(DType::F32, &q[t * n_heads * d], {1, n_heads, d}), o1(DType::F32, one.data(), {1, n_heads * d});
      attend(*be, q1, p.layer, std::span(&rows[t], 1), 0.125f, o1);
      ASSERT_TRUE(std::equal(one.begin(), one.end(), &all[t * n_heads * d])) << dtype_name(dtype) << " row " << t;
    }
  }
}

// With AVX-512 the values are summed for several query heads at once, 16 columns per register, and
// without it head by head, 8 per register: the same FMA chain per output element, so the same bits.
TEST(Attention, SameBitsOnEveryIsa) {
  if (cpu_best_isa() == CpuIsa::kAvx2) GTEST_SKIP() << "CPU has no AVX-512";
  auto be = make_cpu_backend(2);
  Rng rng(16);
  const Config configs[] = {{16, 1, 64, 5}, {16, 2, 128, 6}, {8, 1, 96, 4}, {16, 2, 64, 2}, {16, 1, 256, 9},
                            {16, 1, 72, 4}, {8, 1, 36, 2}, {16, 1, 70, 2}};
  for (DType dtype : {DType::F32, DType::BF16})
    for (const Config& c : configs) {
      Paged p = make_cache(20, c.block_size, c.n_kv, c.d, rng, dtype);
      std::vector<int32_t> table(20);
      std::iota(table.begin(), table.end(), 0);
      std::vector<AttentionRow> rows;
      for (int32_t end : {1, 9, 77, 160}) rows.push_back({table.data(), 0, end});
      const int64_t T = rows.size(), width = c.n_heads * c.d;
      std::vector<float> q = rng.normals(T * width), narrow(T * width), wide(T * width);
      TensorView qv(DType::F32, q.data(), {T, c.n_heads, c.d});
      TensorView nv(DType::F32, narrow.data(), {T, width}), wv(DType::F32, wide.data(), {T, width});
      {
        ForceIsa force("avx2");
        attend(*be, qv, p.layer, rows, 0.125f, nv);
      }
      {
        ForceIsa force("avx512");
        attend(*be, qv, p.layer, rows, 0.125f, wv);
      }
      EXPECT_EQ(narrow, wide) << dtype_name(dtype) << " n_kv=" << c.n_kv << " d=" << c.d << " heads=" << c.n_heads;
    }
}

TEST(Attention, EmptyRangeGivesZeros) {
  auto be = make_cpu_backend(2);
  Rng rng(11);
  Paged p = make_cache(2, 4, 1, 32, rng);
  const int32_t table[] = {1, 0};
  const AttentionRow rows[] = {{table, 3, 3}, {nullptr, 0, 0}};
  std::vector<float> q = rng.normals(2 * 2 * 32), out(2 * 2 * 32, 1.0f);
  TensorView qv(DType::F32, q.data(), {2, 2, 32}), ov(DType::F32, out.data(), {2, 64});
  attend(*be, qv, p.layer, rows, 0.1f, ov);
  for (float o : out) EXPECT_EQ(o, 0.0f);
}

TEST(Attention, RejectsBlockTableEntriesOutsideTheCache) {
  auto be = make_cpu_backend(1);
  Rng rng(15);
  Paged p = make_cache(2, 4, 1, 32, rng);
  const int32_t table[] = {1, 2};  // block 2 does not exist
  const AttentionRow rows[] = {{table, 0, 8}};
  std::vector<float> q = rng.normals(32), out(32);
  TensorView qv(DType::F32, q.data(), {1, 1, 32}), ov(DType::F32, out.data(), {1, 32});
  EXPECT_THROW(attend(*be, qv, p.layer, rows, 1.0f, ov), Error);
  const AttentionRow first_block_only[] = {{table, 0, 4}};  // never touches block 2: fine
  EXPECT_NO_THROW(attend(*be, qv, p.layer, first_block_only, 1.0f, ov));
}

TEST(Attention, LargeScoresStayFinite) {
  // Scores around 1e4 would overflow exp() without max subtraction.
  auto be = make_cpu_backend(1);
  Rng rng(12);
  Paged p = make_cache(4, 16, 1, 32, rng);
  for (float& k : p.k) k *= 100.0f;
  const int32_t table[] = {2, 0, 3, 1};
  const AttentionRow rows[] = {{table, 0, 64}};
  std::vector<float> q = rng.normals(32, 30.0f), out(32);
  TensorView qv(DType::F32, q.data(), {1, 1, 32}), ov(DType::F32, out.data(), {1, 32});
  attend(*be, qv, p.layer, rows, 1.0f, ov);
  const std::vector<double> ref = reference(q, p, rows, 1, 1.0f);
  for (int i = 0; i < 32; ++i) {
    ASSERT_TRUE(std::isfinite(out[i]));
    ASSERT_NEAR(out[i], ref[i], 1e-3);  // scores ~1e4 carry f32 rounding of ~1e-3 into the softmax
  }
}

TEST(Attention, StridedQueryAndOutput) {
  // q read from a fused [T, q|k|v] projection, out written into a wider buffer.
  auto be = make_cpu_backend(2);
  Rng rng(13);
  const int64_t T = 3, H = 4, d = 32;
  Paged p = make_cache(4, 8, 2, d, rng);
  const int32_t table[] = {3, 1, 0, 2};
  const AttentionRow rows[] = {{table, 0, 5}, {table, 2, 30}, {table, 0, 32}};
  std::vector<float> qkv = rng.normals(T * 200), out(T * 150, -1.0f);
  TensorView qv(DType::F32, qkv.data(), {T, H * d});
  qv.row_stride = 200;
  TensorView ov(DType::F32, out.data(), {T, H * d});
  ov.row_stride = 150;
  attend(*be, qv, p.layer, rows, 0.2f, ov);
  std::vector<float> q_dense(T * H * d);
  for (int64_t t = 0; t < T; ++t) std::copy_n(&qkv[t * 200], H * d, &q_dense[t * H * d]);
  const std::vector<double> ref = reference(q_dense, p, rows, H, 0.2f);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t i = 0; i < H * d; ++i) ASSERT_NEAR(out[t * 150 + i], ref[t * H * d + i], 1e-5 * 5);
    for (int64_t i = H * d; i < 150; ++i) ASSERT_EQ(out[t * 150 + i], -1.0f);
  }
}

}  // namespace
}  // namespace tandem::test
