// The CUDA backend against the CPU backend, op by op: fresh random inputs in odd shapes, strided
// views and every weight dtype; the GPU run gets uploaded copies with its outputs poisoned (NaN
// bytes) so unwritten elements show. Float outputs must agree to a relative L2 error of 1e-5 (1e-2
// for a BF16 KV cache, against the CPU on the bf16-rounded K/V); integer and byte outputs exactly.
// The batch-invariance tests check that matmul, attention and moe_experts give a row bit-identical
// results alone or inside batches of any size. Every test skips without a CUDA GPU, and this file
// uses only the backend interface, so it builds without CUDA too.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

#include "backend/dummy_values.h"
#include "backend_test_util.h"

namespace tandem::test {
namespace {

#define REQUIRE_CUDA() \
  if (!cuda_available()) GTEST_SKIP() << "no CUDA GPU"

// A host tensor: raw bytes of a (possibly strided) 2-D view; the gaps between rows hold garbage.
struct HT {
  DType dtype = DType::F32;
  std::array<int64_t, 4> shape{0, 0, 0, 0};
  int ndim = 0;
  int64_t row_stride = 0;
  std::vector<uint8_t> bytes;

  TensorView view() const {
    TensorView v;
    v.dtype = dtype, v.data = const_cast<uint8_t*>(bytes.data()), v.shape = shape, v.ndim = ndim;
    v.row_stride = row_stride;
    return v;
  }
  int64_t rows() const { return view().rows(); }
  int64_t cols() const { return view().cols(); }
  int64_t stride() const { return view().stride(); }
  template <typename T>
  T& at(int64_t r, int64_t c) {
    return reinterpret_cast<T*>(bytes.data())[r * stride() + c];
  }
  template <typename T>
  T at(int64_t r, int64_t c) const {
    return reinterpret_cast<const T*>(bytes.data())[r * stride() + c];
  }
};

HT make_ht(DType t, std::initializer_list<int64_t> dims, int64_t row_stride = 0) {
  HT h;
  h.dtype = t;
  for (int64_t d : dims) h.shape[h.ndim++] = d;
  h.row_stride = row_stride;
  const int64_t rows = h.rows(), cols = h.cols();
  const int64_t elems = rows * cols == 0 ? 0 : (rows - 1) * h.stride() + cols;
  h.bytes.assign(elems * dtype_size(t), 0xCD);
  return h;
}

// F32 normals into every element of the view.
HT rand_f32(std::initializer_list<int64_t> dims, int64_t row_stride, Rng& rng, float sd = 1.0f) {
  HT h = make_ht(DType::F32, dims, row_stride);
  for (int64_t r = 0; r < h.rows(); ++r)
    for (int64_t c = 0; c < h.cols(); ++c) h.at<float>(r, c) = rng.normal(sd);
  return h;
}

// A dense tensor of dtype-rounded random values (weights).
HT rand_stored(DType t, std::initializer_list<int64_t> dims, Rng& rng, float sd = 1.0f) {
  HT h = make_ht(t, dims);
  Stored s = make_stored(t, h.rows() * h.cols(), rng, sd);
  h.bytes = s.bytes;
  return h;
}

HT ints(DType t, std::initializer_list<int64_t> dims, const std::vector<int64_t>& values) {
  HT h = make_ht(t, dims);
  EXPECT_EQ(static_cast<int64_t>(values.size()), h.rows() * h.cols());
  for (size_t i = 0; i < values.size(); ++i) {
    if (t == DType::I32) reinterpret_cast<int32_t*>(h.bytes.data())[i] = static_cast<int32_t>(values[i]);
    else reinterpret_cast<int64_t*>(h.bytes.data())[i] = values[i];
  }
  return h;
}

// Uploaded copies on the GPU; the buffers live as long as this object (declare it after the backend).
class Dev {
 public:
  explicit Dev(Backend& be) : be_(be) {}
  TensorView up(const HT& h) {
    TensorView v = h.view();
    v.data = buffer(h.bytes.size());
    be_.upload(v.data, h.bytes.data(), h.bytes.size());
    return v;
  }
  // Same shape as h, every byte 0xFF (NaN for floats, -1 for integers).
  TensorView poisoned(const HT& h) {
    std::vector<uint8_t> ff(h.bytes.size(), 0xFF);
    TensorView v = h.view();
    v.data = buffer(ff.size());
    be_.upload(v.data, ff.data(), ff.size());
    return v;
  }
  // The GPU tensor v (laid out as `like`) back on the host.
  HT down(const TensorView& v, const HT& like) {
    HT h = like;
    be_.download(h.bytes.data(), v.data, h.bytes.size());
    return h;
  }
  void* buffer(size_t bytes) {
    bufs_.emplace_back(be_, std::max<size_t>(bytes, 256));
    return bufs_.back().data();
  }

 private:
  Backend& be_;
  std::vector<Buffer> bufs_;
};

// ‖got − want‖ / ‖want‖ over the f32 elements of the view (infinite when got has a NaN).
double rel_l2(const HT& got, const HT& want) {
  double num = 0, den = 0;
  for (int64_t r = 0; r < want.rows(); ++r) {
    for (int64_t c = 0; c < want.cols(); ++c) {
      const double g = got.at<float>(r, c), w = want.at<float>(r, c);
      if (!std::isfinite(g)) return INFINITY;
      num += (g - w) * (g - w), den += w * w;
    }
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

// Whether the elements of the two views are byte-identical (gaps ignored).
::testing::AssertionResult same_elements(const HT& got, const HT& want) {
  const size_t es = dtype_size(want.dtype), row_bytes = want.cols() * es;
  for (int64_t r = 0; r < want.rows(); ++r) {
    const uint8_t* g = got.bytes.data() + r * got.stride() * es;
    const uint8_t* w = want.bytes.data() + r * want.stride() * es;
    if (std::memcmp(g, w, row_bytes) != 0) {
      for (size_t i = 0; i < row_bytes; ++i)
        if (g[i] != w[i])
          return ::testing::AssertionFailure() << "first difference at row " << r << ", byte " << i << " ("
                                               << int(g[i]) << " vs " << int(w[i]) << ")";
    }
  }
  return ::testing::AssertionSuccess();
}

// Rows [r0, r0 + n) of a in rows [s0, s0 + n) of b, bitwise.
bool same_rows(const HT& a, int64_t r0, const HT& b, int64_t s0, int64_t n) {
  const size_t es = dtype_size(a.dtype), row_bytes = a.cols() * es;
  for (int64_t i = 0; i < n; ++i)
    if (std::memcmp(a.bytes.data() + (r0 + i) * a.stride() * es, b.bytes.data() + (s0 + i) * b.stride() * es,
                    row_bytes) != 0)
      return false;
  return true;
}

struct Backends {
  ExactCpuKernels exact;  // the reference computes every product in f32
  std::unique_ptr<Backend> cpu = make_cpu_backend(2);
  std::unique_ptr<Backend> gpu = make_backend("cuda");
};

// --- Basics -------------------------------------------------------------------------------------

TEST(CudaOps, BasicsNameMemoryAndSyncCounting) {
  REQUIRE_CUDA();
  Backends b;
  EXPECT_EQ(b.gpu->name().rfind("cuda:", 0), 0u) << b.gpu->name();
  EXPECT_FALSE(b.gpu->is_host());
  size_t free_b = 0, total_b = 0;
  b.gpu->memory_info(&free_b, &total_b);
  EXPECT_GT(total_b, 0u);
  EXPECT_LE(free_b, total_b);
  Buffer buf(*b.gpu, 1000);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(buf.data()) % 256, 0u);
  std::vector<uint8_t> src(1000), dst(1000);
  std::iota(src.begin(), src.end(), 0);
  const uint64_t before = b.gpu->host_syncs();
  b.gpu->upload(buf.data(), src.data(), src.size());
  b.gpu->download(dst.data(), buf.data(), dst.size());
  EXPECT_EQ(b.gpu->host_syncs(), before + 1);
  b.gpu->synchronize();
  EXPECT_EQ(b.gpu->host_syncs(), before + 2);
  EXPECT_EQ(src, dst);
  try {
    Buffer huge(*b.gpu, size_t(1) << 50);
    FAIL() << "allocating 1 PiB succeeded";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("out of GPU memory"), std::string::npos) << e.what();
  }
}

// --- Recorded steps (CUDA graphs) ---------------------------------------------------------------

// A recorded step runs directly once, is captured the next time, then replays without calling its
// issue function, reading new inputs each time; an allocation makes it run directly and record again.
TEST(CudaOps, RecordedStepsReplayNewInputsAndReRecordAfterAlloc) {
  REQUIRE_CUDA();
  Backends b;
  Backend& be = *b.gpu;
  Tensor x(be), y(be);
  TensorView& xv = x.resize(DType::F32, {3, 100});
  TensorView& yv = y.resize(DType::F32, {3, 100});
  std::unique_ptr<Recording> rec;
  int issued = 0;
  auto issue = [&] {
    ++issued;
    be.add(xv, xv, yv);
    be.scale(yv, 3.0f);  // y = 6x
  };
  std::vector<float> in(300), out(300);
  auto step = [&](int round) {
    for (int i = 0; i < 300; ++i) in[i] = static_cast<float>(i * (round + 1) % 17) - 8.0f;
    upload_to(be, in.data(), xv);
    be.run_recorded(rec, issue);
    be.download(out.data(), yv.data, out.size() * sizeof(float));
    for (int i = 0; i < 300; ++i) ASSERT_EQ(out[i], 6.0f * in[i]) << "round " << round << " element " << i;
  };
  const int expected_issued[] = {1, 2, 2, 2, 3, 4, 4};
  for (int round = 0; round < 7; ++round) {
    if (round == 4) {
      Buffer moved(be, 1024);  // an alloc + free: buffers may have moved
    }
    step(round);
    EXPECT_EQ(issued, expected_issued[round]) << "round " << round;
  }
  be.set_recording(false);
  step(7);
  EXPECT_EQ(issued, 5);
}

// A step that waits for the host cannot be recorded: a clear error, and the backend stays usable.
TEST(CudaOps, RecordedStepMayNotWaitForTheHost) {
  REQUIRE_CUDA();
  Backends b;
  Backend& be = *b.gpu;
  Tensor x(be);
  TensorView& xv = x.resize(DType::F32, {1, 8});
  std::vector<float> host(8, 1.0f);
  upload_to(be, host.data(), xv);
  std::unique_ptr<Recording> rec;
  auto issue = [&] {
    be.scale(xv, 2.0f);
    be.download(host.data(), xv.data, sizeof(float) * 8);
  };
  be.run_recorded(rec, issue);  // the direct run may wait
  EXPECT_EQ(host[0], 2.0f);
  try {
    be.run_recorded(rec, issue);
    FAIL() << "a download inside a recording was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("inside a recorded step"), std::string::npos) << e.what();
  }
  be.scale(xv, 2.0f);
  be.download(host.data(), xv.data, sizeof(float) * 8);
  EXPECT_EQ(host[0], 4.0f);  // the failed capture executed nothing
}

// --- Matmul -------------------------------------------------------------------------------------

TEST(CudaOps, MatmulAllDtypesAndShapes) {
  REQUIRE_CUDA();
  Backends b;
  Rng rng(101);
  const std::pair<int64_t, int64_t> kns[] = {{704, 517}, {2112, 131}, {1000, 77}, {37, 45}};
  for (DType wt : kWeightDtypes) {
    for (auto [K, N] : kns) {
      const HT w = rand_stored(wt, {N, K}, rng, 0.5f);
      for (int64_t T : {1, 3, 5, 17, 64}) {
        SCOPED_TRACE(::testing::Message() << dtype_name(wt) << " T=" << T << " K=" << K << " N=" << N);
        const HT x = rand_f32({T, K}, T % 2 ? K + 5 : 0, rng);
        HT y = make_ht(DType::F32, {T, N}, T > 1 ? N + 3 : 0);
        TensorView yc = y.view();
        b.cpu->matmul(x.view(), w.view(), yc);
        Dev d(*b.gpu);
        TensorView yd = d.poisoned(y);
        b.gpu->matmul(d.up(x), d.up(w), yd);
        EXPECT_LT(rel_l2(d.down(yd, y), y), 1e-5);
      }
    }
  }
}

// The fused GeGLU against the CPU, and bit-identical to the CUDA backend's own three-op composition.
TEST(CudaOps, MatmulGeluGlu) {
  REQUIRE_CUDA();
  Backends b;
  Rng rng(104);
  const std::pair<int64_t, int64_t> kis[] = {{2816, 2112}, {704, 517}, {37, 45}};
  for (DType wt : kWeightDtypes) {
    for (auto [K, I] : kis) {
      const HT g = rand_stored(wt, {I, K}, rng, 0.5f), u = rand_stored(wt, {I, K}, rng, 0.5f);
      for (int64_t T : {1, 3, 9}) {
        SCOPED_TRACE(::testing::Message() << dtype_name(wt) << " T=" << T << " K=" << K << " I=" << I);
        const HT x = rand_f32({T, K}, T == 3 ? K + 1 : 0, rng, 0.1f);
        HT y = make_ht(DType::F32, {T, I});
        TensorView yc = y.view();
        b.cpu->matmul_gelu_glu(x.view(), g.view(), u.view(), yc);
        Dev d(*b.gpu);
        const TensorView xd = d.up(x), gd = d.up(g), ud = d.up(u);
        TensorView yd = d.poisoned(y), gate = d.poisoned(y), up = d.poisoned(y);
        b.gpu->matmul_gelu_glu(xd, gd, ud, yd);
        const HT got = d.down(yd, y);
        EXPECT_LT(rel_l2(got, y), 1e-5);
        b.gpu->matmul(xd, gd, gate);
        b.gpu->matmul(xd, ud, up);
        b.gpu->gelu_tanh_mul(gate, up, gate);
        EXPECT_TRUE(same_elements(got, d.down(gate, y)));
      }
    }
  }
}

// matmul_pair: bit-identical to two matmuls, one launch (bf16 weights of one shape, strided outputs,
// decode to prefill rows) or two (shapes that differ, an F32 weight).
TEST(CudaOps, MatmulPairIsItsTwoMatmuls) {
  REQUIRE_CUDA();
  Backends b;
  Rng rng(105);
  struct Case { int64_t N1, N2, K; DType dtype; };
  const Case cases[] = {{256, 256, 2816, DType::BF16}, {37, 37, 520, DType::BF16}, {64, 48, 256, DType::BF16},
                        {40, 40, 96, DType::F32}};
  for (const Case& c : cases) {
    for (int64_t T : {1, 3, 9, 40, 300}) {
      SCOPED_TRACE(::testing::Message() << "N=" << c.N1 << "," << c.N2 << " K=" << c.K << " T=" << T);
      const HT x = rand_f32({T, c.K}, 0, rng), w1 = rand_stored(c.dtype, {c.N1, c.K}, rng, 0.5f),
               w2 = rand_stored(c.dtype, {c.N2, c.K}, rng, 0.5f);
      Dev d(*b.gpu);
      const TensorView xd = d.up(x), w1d = d.up(w1), w2d = d.up(w2);
      HT y1 = make_ht(DType::F32, {T, c.N1}, c.N1 + 3), y2 = make_ht(DType::F32, {T, c.N2});
      TensorView p1 = d.poisoned(y1), p2 = d.poisoned(y2), r1 = d.poisoned(y1), r2 = d.poisoned(y2);
      b.gpu->matmul_pair(xd, w1d, p1, w2d, p2);
      b.gpu->matmul(xd, w1d, r1);
      b.gpu->matmul(xd, w2d, r2);
      EXPECT_TRUE(same_elements(d.down(p1, y1), d.down(r1, y1)));
      EXPECT_TRUE(same_elements(d.down(p2, y2), d.down(r2, y2)));
    }
  }
}

TEST(CudaOps, MatmulIsBatchInvariant) {
  REQUIRE_CUDA();
  Backends b;
  Rng rng(102);
  const int64_t T = 64;
  const std::pair<int64_t, int64_t> kns[] = {{704, 517}, {1000, 77}, {2112, 40}};
  for (DType wt : kWeightDtypes) {
    for (auto [K, N] : kns) {
      SCOPED_TRACE(::testing::Message() << dtype_name(wt) << " K=" << K << " N=" << N);
      const HT x = rand_f32({T, K}, 0, rng), w = rand_stored(wt, {N, K}, rng, 0.5f);
      Dev d(*b.gpu);
      const TensorView xd = d.up(x), wd = d.up(w);
      // Each row alone; odd rows from a copy 4 bytes off 16-byte alignment (the scalar x loads).
      HT alone = make_ht(DType::F32, {T, N});
      TensorView ad = d.poisoned(alone);
      for (int64_t r = 0; r < T; ++r) {
        TensorView yr = ad.row_slice(r, r + 1);
        if (r % 2 == 0) {
          b.gpu->matmul(xd.row_slice(r, r + 1), wd, yr);
        } else {
          HT xo = make_ht(DType::F32, {1, K + 1});
          std::memcpy(xo.bytes.data() + 4, x.bytes.data() + r * K * 4, K * 4);
          TensorView xv = d.up(xo);
          TensorView xr(DType::F32, static_cast<float*>(xv.data) + 1, {1, K});
          b.gpu->matmul(xr, wd, yr);
        }
      }
      alone = d.down(ad, alone);
      for (int64_t n : {1, 2, 3, 4, 5, 9, 17, 33, 64}) {
        const int64_t s = (n * 7) % (T - n + 1);
        HT y = make_ht(DType::F32, {n, N});
        TensorView yd = d.poisoned(y);
        b.gpu->matmul(xd.row_slice(s, s + n), wd, yd);
        y = d.down(yd, y);
        EXPECT_TRUE(same_rows(y, 0, alone, s, n)) << "batch of " << n << " rows starting at " << s;
      }
    }
  }
}

// A prefill-sized batch through a split tensor-core matmul (cu::MmaSplit): 33 row tiles of K = 2112 split K,
// and the partial sums of 2100 rows are more than one launch's scratch, so the batch runs as several
// launches; every row must still get the bits it gets alone.
TEST(CudaOps, MatmulLongSplitBatchIsBatchInvariant) {
  REQUIRE_CUDA();
  Backends b;
  Rng rng(103);
  const int64_t T = 2100, K = 2112, N = 517;
  const HT x = rand_f32({T, K}, 0, rng), w = rand_stored(DType::BF16, {N, K}, rng, 0.5f);
  Dev d(*b.gpu);
  const TensorView xd = d.up(x), wd = d.up(w);
  HT y = make_ht(DType::F32, {T, N});
  TensorView yd = d.poisoned(y);
  b.gpu->matmul(xd, wd, yd);
  y = d.down(yd, y);
  for (int64_t r : {int64_t{0}, int64_t{1}, int64_t{991}, int64_t{992}, int64_t{1023}, int64_t{1024}, int64_t{1500},
                    int64_t{2047}, int64_t{2048}, int64_t{2099}}) {
    HT alone = make_ht(DType::F32, {1, N});
    TensorView ad = d.poisoned(alone);
    b.gpu->matmul(xd.row_slice(r, r + 1), wd, ad);
    alone = d.down(ad, alone);
    EXPECT_TRUE(same_rows(alone, 0, y, r, 1)) << "row " << r;
  }
}

// --- Attention ----------------------------------------------------------------------------------

struct AttnCase {
  int64_t d, n_kv, n_heads, bs;
};

// A paged cache with random contents and scrambled block tables, in F32 (CPU) and `dtype` (GPU).
struct PagedCache {
  int64_t num_blocks = 0, S = 3, max_blocks = 0;
  HT k32, v32;    // F32 values the CPU sees (bf16-rounded when dtype is BF16)
  HT kg, vg;      // what the GPU cache holds
  HT tables;      // [S, max_blocks] I32
  PagedCache(const AttnCase& c, DType dtype, int64_t max_blocks_, Rng& rng) : max_blocks(max_blocks_) {
    num_blocks = S * max_blocks + 5;
    const int64_t n = num_blocks * c.bs * c.n_kv * c.d;
    k32 = rand_f32({n}, 0, rng), v32 = rand_f32({n}, 0, rng);
    if (dtype == DType::BF16) {
      kg = make_ht(DType::BF16, {n}), vg = make_ht(DType::BF16, {n});
      for (int64_t i = 0; i < n; ++i) {
        kg.at<uint16_t>(0, i) = f32_to_bf16(k32.at<float>(0, i));
        vg.at<uint16_t>(0, i) = f32_to_bf16(v32.at<float>(0, i));
        k32.at<float>(0, i) = bf16_to_f32(kg.at<uint16_t>(0, i));
        v32.at<float>(0, i) = bf16_to_f32(vg.at<uint16_t>(0, i));
      }
    } else {
      kg = k32, vg = v32;
    }
    std::vector<int64_t> perm(num_blocks);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng.gen());
    perm.resize(S * max_blocks);
    tables = ints(DType::I32, {S, max_blocks}, perm);
  }
  KvLayer layer(const AttnCase& c, DType dtype, void* k, void* v) const {
    KvLayer l;
    l.k = k, l.v = v, l.dtype = dtype;
    l.num_blocks = static_cast<int32_t>(num_blocks), l.block_size = static_cast<int32_t>(c.bs);
    l.n_kv_heads = static_cast<int32_t>(c.n_kv), l.head_dim = static_cast<int32_t>(c.d);
    return l;
  }
};

// Per-row (table, kv_begin, kv_end): empty ranges, whole sequences and random windows.
HT random_ranges(int64_t T, int64_t S, int64_t max_len, Rng& rng) {
  std::vector<int64_t> v;
  for (int64_t t = 0; t < T; ++t) {
    const int64_t table = rng.index(S);
    int64_t b0, e0;
    switch (t % 5) {
      case 0: b0 = e0 = rng.index(max_len); break;        // empty
      case 1: b0 = 0, e0 = max_len; break;                // the longest range
      case 2: b0 = 0, e0 = 1 + rng.index(max_len); break;  // causal prefix
      default:
        b0 = rng.index(max_len);
        e0 = b0 + 1 + rng.index(max_len - b0);
    }
    v.insert(v.end(), {table, b0, e0});
  }
  return ints(DType::I32, {T, 3}, v);
}

TEST(CudaOps, AttentionPagedGqaHeadDimsAndKvDtypes) {
  REQUIRE_CUDA();
  Backends b;
  Rng rng(201);
  const AttnCase cases[] = {{32, 2, 8, 16}, {256, 1, 4, 8}, {512, 2, 2, 16}, {64, 4, 12, 8}, {96, 1, 2, 16}};
  for (DType kvt : {DType::F32, DType::BF16}) {
    for (const AttnCase& c : cases) {
      const int64_t max_blocks = 300 / c.bs + 1;
      PagedCache cache(c, kvt, max_blocks, rng);
      for (int64_t T : {1, 3, 5, 17, 64}) {
        SCOPED_TRACE(::testing::Message() << dtype_name(kvt) << " d=" << c.d << " kv=" << c.n_kv << " heads="
                                          << c.n_heads << " bs=" << c.bs << " T=" << T);
        const int64_t W = c.n_heads * c.d;
        const HT q = rand_f32({T, W}, T % 2 ? W + 7 : 0, rng);
        const HT ranges = random_ranges(T, cache.S, max_blocks * c.bs, rng);
        HT out = T % 2 ? make_ht(DType::F32, {T, c.n_heads, c.d}) : make_ht(DType::F32, {T, W}, W + 3);
        TensorView oc = out.view();
        const float scale = 1.0f / std::sqrt(static_cast<float>(c.d));
        b.cpu->attention(q.view(),
                         cache.layer(c, DType::F32, cache.k32.bytes.data(), cache.v32.bytes.data()),
                         AttentionRows{ranges.view(), cache.tables.view()}, scale, oc);
        Dev d(*b.gpu);
        const TensorView kd = d.up(cache.kg), vd = d.up(cache.vg);
        TensorView od = d.poisoned(out);
        b.gpu->attention(d.up(q), cache.layer(c, kvt, kd.data, vd.data),
                         AttentionRows{d.up(ranges), d.up(cache.tables)}, scale, od);
        EXPECT_LT(rel_l2(d.down(od, out), out), kvt == DType::F32 ? 1e-5 : 1e-2);
      }
    }
  }
}

TEST(CudaOps, AttentionIsBatchInvariant) {
  REQUIRE_CUDA();
  Backends b;
  Rng rng(202);
  const AttnCase c{128, 2, 8, 16};
  const int64_t T = 64, W = c.n_heads * c.d;
  // Rows of up to 10 and up to 25 chunks of 64 keys: a split row's last CTA folds its chunk states
  // in batches (kFoldBatch in attention.cu), here one to four of them, the last one partial.
  for (const auto& [kvt, max_blocks] : {std::pair{DType::F32, 40}, std::pair{DType::BF16, 40}, std::pair{DType::BF16, 100}}) {
    SCOPED_TRACE(::testing::Message() << dtype_name(kvt) << " keys up to " << max_blocks * c.bs);
    PagedCache cache(c, kvt, max_blocks, rng);
    const HT q = rand_f32({T, W}, 0, rng);
    const HT ranges = random_ranges(T, cache.S, max_blocks * c.bs, rng);
    Dev d(*b.gpu);
    const TensorView kd = d.up(cache.kg), vd = d.up(cache.vg), qd = d.up(q), rd = d.up(ranges),
                     td = d.up(cache.tables);
    const KvLayer layer = cache.layer(c, kvt, kd.data, vd.data);
    HT alone = make_ht(DType::F32, {T, W});
    TensorView ad = d.poisoned(alone);
    for (int64_t r = 0; r < T; ++r) {
      TensorView o = ad.row_slice(r, r + 1);
      b.gpu->attention(qd.row_slice(r, r + 1), layer, AttentionRows{rd.row_slice(r, r + 1), td}, 0.1f, o);
    }
    alone = d.down(ad, alone);
    for (int64_t n : {1, 2, 3, 5, 9, 17, 33, 64}) {
      const int64_t s = (n * 5) % (T - n + 1);
      HT y = make_ht(DType::F32, {n, W});
      TensorView yd = d.poisoned(y);
      b.gpu->attention(qd.row_slice(s, s + n), layer, AttentionRows{rd.row_slice(s, s + n), td}, 0.1f, yd);
      y = d.down(yd, y);
      EXPECT_TRUE(same_rows(y, 0, alone, s, n)) << "batch of " << n << " rows starting at " << s;
    }
  }
}

// x [T, W] (any view) copied into a dense [T, W] tensor.
HT dense_rows(const HT& x, int64_t T, int64_t W) {
  HT h = make_ht(DType::F32, {T, W});
  const TensorView v = x.view();
  for (int64_t t = 0; t < T; ++t) std::memcpy(&h.at<float>(t, 0), v.as<float>() + t * x.stride() * (x.rows() / T), W * 4);
  return h;
}

// The fused heads ops against the CPU backend, and bitwise against the CUDA backend's own rms_norm
// and rope (then a plain copy into the cache, bf16-rounded for BF16): odd head counts, head_dim 256
// (a sliding layer's shape) and 512 (a full K=V layer's), caches of different block sizes,
// scattered slots and positions.
TEST(CudaOps, RmsNormRopeAndKvWriteNormed) {
  REQUIRE_CUDA();
  Backends b;
  Rng rng(203);
  struct Case {
    AttnCase attn;  // d, n_kv, n_heads, block size
    bool k_eq_v;
  };
  const Case cases[] = {{{256, 3, 5, 16}, false}, {{512, 1, 3, 8}, true}, {{256, 5, 5, 4}, true}, {{64, 2, 7, 16}, false}};
  for (const Case& cs : cases) {
    const AttnCase& c = cs.attn;
    for (DType kvt : {DType::F32, DType::BF16}) {
      for (int64_t T : {1, 3, 17}) {
        SCOPED_TRACE(::testing::Message() << dtype_name(kvt) << " d=" << c.d << " kv=" << c.n_kv << " heads="
                                          << c.n_heads << " k_eq_v=" << cs.k_eq_v << " T=" << T);
        const int64_t d = c.d, half = d / 2, Wq = c.n_heads * d, W = c.n_kv * d;
        PagedCache cache(c, kvt, 4, rng);
        const int64_t n_slots = cache.num_blocks * c.bs;
        std::vector<int64_t> slots(n_slots), pos(T);
        std::iota(slots.begin(), slots.end(), 0);
        std::shuffle(slots.begin(), slots.end(), rng.gen());
        slots.resize(T);
        for (auto& p : pos) p = rng.index(100000);
        const HT sl = ints(DType::I64, {T}, slots), positions = ints(DType::I32, {T}, pos);
        HT inv = make_ht(DType::F32, {half});
        for (int64_t i = 0; i < half; ++i)
          inv.at<float>(0, i) = i % 7 == 3 ? 0.0f : std::pow(10000.0f, -2.0f * i / d);  // zeros: unrotated pairs
        const HT qn = rand_stored(DType::BF16, {d}, rng), kn = rand_stored(DType::BF16, {d}, rng);
        const HT q = T % 2 ? rand_f32({T, Wq}, Wq + 5, rng, 2.0f) : rand_f32({T, c.n_heads, d}, 0, rng, 2.0f);
        const HT k = rand_f32({T, W}, W + 3, rng, 2.0f), v = rand_f32({T, c.n_kv, d}, 0, rng, 2.0f);
        const HT& vin = cs.k_eq_v ? k : v;
        Dev dev(*b.gpu);
        const TensorView pd = dev.up(positions), fd = dev.up(inv), qnd = dev.up(qn), knd = dev.up(kn);
        auto rows = [](const TensorView& t, int64_t n, int64_t w) { return TensorView(DType::F32, t.data, {n, w}); };

        // Query heads: against the CPU, and the GPU's rms_norm over [T·heads, d] rows then rope.
        TensorView qd = dev.up(q);
        b.gpu->rms_norm_rope(qd, qnd, 1e-6f, pd, fd);
        const HT q_got = dense_rows(dev.down(qd, q), T, Wq);
        HT q_cpu = q;
        TensorView qc = q_cpu.view();
        b.cpu->rms_norm_rope(qc, qn.view(), 1e-6f, positions.view(), inv.view());
        EXPECT_LT(rel_l2(q_got, dense_rows(q_cpu, T, Wq)), 1e-5);
        HT q_ref = dense_rows(q, T, Wq);
        TensorView qr = dev.up(q_ref), qr_rows = rows(qr, T * c.n_heads, d), qr_heads = rows(qr, T, Wq);
        b.gpu->rms_norm(qr_rows, &qnd, 1e-6f, qr_rows);
        b.gpu->rope(qr_heads, pd, fd);
        EXPECT_TRUE(same_elements(q_got, dev.down(qr, q_ref)));

        // K and V into the cache.
        const TensorView kd = dev.up(k), vd = cs.k_eq_v ? kd : dev.up(v);
        const TensorView kcd = dev.up(cache.kg), vcd = dev.up(cache.vg);
        b.gpu->kv_write_normed(kd, vd, knd, 1e-6f, pd, fd, cache.layer(c, kvt, kcd.data, vcd.data), dev.up(sl));
        const HT kc_got = dev.down(kcd, cache.kg), vc_got = dev.down(vcd, cache.vg);
        EXPECT_TRUE(same_elements(dev.down(kd, k), k));  // inputs untouched
        HT k_ref = dense_rows(k, T, W), v_ref = dense_rows(vin, T, W);
        TensorView kr = dev.up(k_ref), vr = dev.up(v_ref), kr_rows = rows(kr, T * c.n_kv, d),
                   vr_rows = rows(vr, T * c.n_kv, d), kr_heads = rows(kr, T, W);
        b.gpu->rms_norm(vr_rows, nullptr, 1e-6f, vr_rows);
        b.gpu->rms_norm(kr_rows, &knd, 1e-6f, kr_rows);
        b.gpu->rope(kr_heads, pd, fd);
        k_ref = dev.down(kr, k_ref), v_ref = dev.down(vr, v_ref);
        HT kc_want = cache.kg, vc_want = cache.vg;
        for (int64_t t = 0; t < T; ++t) {
          for (int64_t i = 0; i < W; ++i) {
            const int64_t dst = slots[t] * W + i;
            if (kvt == DType::F32) {
              kc_want.at<float>(0, dst) = k_ref.at<float>(t, i), vc_want.at<float>(0, dst) = v_ref.at<float>(t, i);
            } else {
              kc_want.at<uint16_t>(0, dst) = f32_to_bf16(k_ref.at<float>(t, i));
              vc_want.at<uint16_t>(0, dst) = f32_to_bf16(v_ref.at<float>(t, i));
            }
          }
        }
        EXPECT_TRUE(same_elements(kc_got, kc_want));
        EXPECT_TRUE(same_elements(vc_got, vc_want));

        // The CPU backend's cache rows, within rounding (a bf16 rounding may flip where the f32s differ).
        HT kc_cpu = cache.kg, vc_cpu = cache.vg;
        b.cpu->kv_write_normed(k.view(), vin.view(), kn.view(), 1e-6f, positions.view(), inv.view(),
                               cache.layer(c, kvt, kc_cpu.bytes.data(), vc_cpu.bytes.data()), sl.view());
        auto slot_rows = [&](const HT& cache_ht) {
          HT h = make_ht(DType::F32, {T, W});
          for (int64_t t = 0; t < T; ++t)
            for (int64_t i = 0; i < W; ++i)
              h.at<float>(t, i) = kvt == DType::F32 ? cache_ht.at<float>(0, slots[t] * W + i)
                                                    : bf16_to_f32(cache_ht.at<uint16_t>(0, slots[t] * W + i));
          return h;
        };
        const double tol = kvt == DType::F32 ? 1e-5 : 1e-2;
        EXPECT_LT(rel_l2(slot_rows(kc_got), slot_rows(kc_cpu)), tol);
        EXPECT_LT(rel_l2(slot_rows(vc_got), slot_rows(vc_cpu)), tol);
      }
    }
  }
}

// --- MoE ----------------------------------------------------------------------------------------

TEST(CudaOps, MoeRoute) {
  REQUIRE_CUDA();
  Backends b;
  Rng rng(301);
  struct Case {
    int64_t T, E, k;
    bool ties;
  };
  // Probabilities in registers (E <= 128, E <= 512) or recomputed (E > 512); k past a warp's 32 lanes;
  // one CTA (T <= 16) or several; the grouping's ids in shared memory or, past its budget, global
  // (T·k = 12000 over 64 experts, 16384 over 1024).
  const Case cases[] = {{1, 16, 4, false},    {5, 16, 4, false},    {17, 16, 4, true},     {64, 16, 4, false},
                        {9, 128, 8, false},   {3, 40, 3, true},     {33, 16, 16, true},    {1, 128, 8, false},
                        {4, 128, 8, true},    {1, 128, 1, false},   {2, 128, 128, true},   {300, 128, 8, false},
                        {1, 129, 8, true},    {3, 300, 40, true},   {1, 512, 512, false},  {17, 513, 8, true},
                        {17, 2000, 64, false}, {300, 64, 40, false}, {16, 1024, 1024, false}};
  for (const Case& c : cases) {
    for (int sc = 0; sc < 3; ++sc) {  // no scale, F32, BF16
      SCOPED_TRACE(::testing::Message() << "T=" << c.T << " E=" << c.E << " k=" << c.k << " scale=" << sc
                                        << " ties=" << c.ties);
      HT logits = rand_f32({c.T, c.E}, c.T % 2 ? c.E + 1 : 0, rng, 2.0f);
      if (c.ties)  // few distinct values: many equal probabilities, broken toward the lower index
        for (int64_t t = 0; t < c.T; ++t)
          for (int64_t e = 0; e < c.E; ++e) logits.at<float>(t, e) = std::round(logits.at<float>(t, e));
      HT scale = sc == 0 ? HT{} : rand_stored(sc == 1 ? DType::F32 : DType::BF16, {c.E}, rng);
      for (int64_t e = 0; e < c.E && sc; ++e) {  // positive scales
        if (sc == 1) scale.at<float>(0, e) = std::abs(scale.at<float>(0, e)) + 0.5f;
        else scale.at<uint16_t>(0, e) = f32_to_bf16(std::abs(bf16_to_f32(scale.at<uint16_t>(0, e))) + 0.5f);
      }
      HT ids = make_ht(DType::I32, {c.T, c.k}), w = make_ht(DType::F32, {c.T, c.k});
      TensorView ic = ids.view(), wc = w.view();
      const TensorView sv = scale.view();
      b.cpu->moe_route(logits.view(), sc ? &sv : nullptr, ic, wc);
      Dev d(*b.gpu);
      TensorView id = d.poisoned(ids), wd = d.poisoned(w);
      const TensorView sd = sc ? d.up(scale) : TensorView{};
      b.gpu->moe_route(d.up(logits), sc ? &sd : nullptr, id, wd);
      EXPECT_TRUE(same_elements(d.down(id, ids), ids));
      EXPECT_LT(rel_l2(d.down(wd, w), w), 1e-5);
    }
  }
  // A row with NaN logits has no order to follow; its ids still name experts.
  for (const int64_t E : {16, 300, 600}) {
    SCOPED_TRACE(::testing::Message() << "NaN row, E=" << E);
    HT logits = rand_f32({3, E}, 0, rng, 2.0f);
    logits.at<float>(1, E / 2) = std::nanf("");
    HT ids = make_ht(DType::I32, {3, 4}), w = make_ht(DType::F32, {3, 4});
    Dev d(*b.gpu);
    TensorView id = d.poisoned(ids), wd = d.poisoned(w);
    b.gpu->moe_route(d.up(logits), nullptr, id, wd);
    ids = d.down(id, ids);
    for (int64_t t = 0; t < 3; ++t)
      for (int64_t j = 0; j < 4; ++j) {
        EXPECT_GE(ids.at<int32_t>(t, j), 0);
        EXPECT_LT(ids.at<int32_t>(t, j), E);
      }
  }
}

// ids [T, k]: distinct experts per row; even rows draw from the first 6 experts so rows share them.
HT random_expert_ids(int64_t T, int64_t E, int64_t k, Rng& rng) {
  std::vector<int64_t> v;
  for (int64_t t = 0; t < T; ++t) {
    std::vector<int64_t> pool(t % 2 == 0 ? std::min<int64_t>(6, E) : E);
    std::iota(pool.begin(), pool.end(), 0);
    std::shuffle(pool.begin(), pool.end(), rng.gen());
    v.insert(v.end(), pool.begin(), pool.begin() + k);
  }
  return ints(DType::I32, {T, k}, v);
}

HT random_route_weights(int64_t T, int64_t k, Rng& rng) {
  HT w = make_ht(DType::F32, {T, k});
  for (int64_t t = 0; t < T; ++t)
    for (int64_t j = 0; j < k; ++j) w.at<float>(t, j) = rng.uniform(0.05f, 1.0f);
  return w;
}

// moe_experts on the CPU into y, then on the GPU into a poisoned copy of y's layout: the relative L2
// distance of the GPU's result from the CPU's.
double moe_experts_gpu_vs_cpu(Backends& b, const HT& x, const HT& ids, const HT& w, const HT& gu, const HT& dn,
                              HT& y) {
  TensorView yc = y.view();
  b.cpu->moe_experts(x.view(), ids.view(), w.view(), gu.view(), dn.view(), yc);
  Dev d(*b.gpu);
  TensorView yd = d.poisoned(y);
  b.gpu->moe_experts(d.up(x), d.up(ids), d.up(w), d.up(gu), d.up(dn), yd);
  return rel_l2(d.down(yd, y), y);
}

TEST(CudaOps, MoeExperts) {
  REQUIRE_CUDA();
  Backends b;
  Rng rng(302);
  const int64_t E = 16, k = 4;
  const std::pair<int64_t, int64_t> his[] = {{64, 48}, {37, 45}, {96, 40}};
  const std::pair<DType, DType> dts[] = {{DType::F32, DType::F32},
                                         {DType::BF16, DType::BF16},
                                         {DType::F16, DType::F16},
                                         {DType::F8_E4M3, DType::F8_E4M3},
                                         {DType::BF16, DType::F8_E4M3}};
  for (auto [gt, dt] : dts) {
    for (auto [H, I] : his) {
      const HT gu = rand_stored(gt, {E, 2 * I, H}, rng, 0.3f), dn = rand_stored(dt, {E, H, I}, rng, 0.3f);
      for (int64_t T : {1, 3, 17, 64}) {
        SCOPED_TRACE(::testing::Message() << dtype_name(gt) << "/" << dtype_name(dt) << " H=" << H << " I=" << I
                                          << " T=" << T);
        const HT x = rand_f32({T, H}, T % 2 ? H + 3 : 0, rng);
        const HT ids = random_expert_ids(T, E, k, rng), w = random_route_weights(T, k, rng);
        HT y = make_ht(DType::F32, {T, H}, T > 1 ? H + 1 : 0);
        EXPECT_LT(moe_experts_gpu_vs_cpu(b, x, ids, w, gu, dn, y), 1e-5);
      }
    }
  }
}

// A one-token step takes the kernels' one-row path (OneRowX), a row of an expert at a time: an expert
// listed twice for the token must count twice, as on the CPU.
TEST(CudaOps, MoeExpertsOneTokenWithARepeatedExpert) {
  REQUIRE_CUDA();
  Backends b;
  Rng rng(304);
  const int64_t E = 8, k = 4, H = 64, I = 48;
  for (DType wt : {DType::BF16, DType::F32}) {
    SCOPED_TRACE(dtype_name(wt));
    const HT gu = rand_stored(wt, {E, 2 * I, H}, rng, 0.3f), dn = rand_stored(wt, {E, H, I}, rng, 0.3f);
    const HT x = rand_f32({1, H}, 0, rng), ids = ints(DType::I32, {1, k}, {5, 2, 5, 5});
    const HT w = random_route_weights(1, k, rng);
    HT y = make_ht(DType::F32, {1, H});
    EXPECT_LT(moe_experts_gpu_vs_cpu(b, x, ids, w, gu, dn, y), 1e-5);
  }
}

// moe_experts right after moe_route uses the grouping the route's launch made (one CTA at decode, the
// last of several CTAs beyond 16 rows): the same bits as moe_experts grouping a copy of the ids
// itself, and the CPU's values. Ids rewritten between the two (an upload) are grouped afresh.
TEST(CudaOps, MoeRouteThenExpertsSharesTheGrouping) {
  REQUIRE_CUDA();
  Backends b;
  Rng rng(304);
  const int64_t H = 64, I = 48;
  // {64, 40} at T = 300: 12000 pairs, grouped from global memory (past the shared-memory budget).
  for (auto [E, k] : {std::pair<int64_t, int64_t>{16, 4}, {128, 8}, {40, 3}, {300, 8}, {64, 40}}) {
    const HT gu = rand_stored(DType::BF16, {E, 2 * I, H}, rng, 0.3f), dn = rand_stored(DType::BF16, {E, H, I}, rng, 0.3f);
    const HT scale = rand_stored(DType::F32, {E}, rng);
    for (int64_t T : {1, 3, 8, 16, 17, 33, 300}) {
      SCOPED_TRACE(::testing::Message() << "E=" << E << " k=" << k << " T=" << T);
      const HT logits = rand_f32({T, E}, 0, rng, 2.0f), x = rand_f32({T, H}, 0, rng);
      HT ids = make_ht(DType::I32, {T, k}), w = make_ht(DType::F32, {T, k}), y = make_ht(DType::F32, {T, H});
      TensorView ic = ids.view(), wc = w.view(), yc = y.view();
      const TensorView sv = scale.view();
      b.cpu->moe_route(logits.view(), &sv, ic, wc);
      b.cpu->moe_experts(x.view(), ic, wc, gu.view(), dn.view(), yc);
      Dev d(*b.gpu);
      const TensorView xd = d.up(x), gud = d.up(gu), dnd = d.up(dn), ld = d.up(logits), sd = d.up(scale);
      TensorView id = d.poisoned(ids), wd = d.poisoned(w), yd = d.poisoned(y), y2d = d.poisoned(y);
      b.gpu->moe_route(ld, &sd, id, wd);
      b.gpu->moe_experts(xd, id, wd, gud, dnd, yd);
      const HT got = d.down(yd, y), got_ids = d.down(id, ids);
      EXPECT_LT(rel_l2(got, y), 1e-5);
      b.gpu->moe_experts(xd, d.up(got_ids), d.up(d.down(wd, w)), gud, dnd, y2d);
      EXPECT_TRUE(same_elements(got, d.down(y2d, y)));

      // Route, overwrite the ids, then the experts: they follow the new ids.
      std::vector<int64_t> other_ids;
      for (int64_t t = 0; t < T; ++t) {
        std::vector<int64_t> pool(E);
        std::iota(pool.begin(), pool.end(), 0);
        std::shuffle(pool.begin(), pool.end(), rng.gen());
        other_ids.insert(other_ids.end(), pool.begin(), pool.begin() + k);
      }
      const HT other = ints(DType::I32, {T, k}, other_ids);
      b.gpu->moe_route(ld, &sd, id, wd);
      b.gpu->upload(id.data, other.bytes.data(), other.bytes.size());
      b.gpu->moe_experts(xd, id, wd, gud, dnd, yd);
      HT want = make_ht(DType::F32, {T, H});
      TensorView wantv = want.view();
      b.cpu->moe_experts(x.view(), other.view(), d.down(wd, w).view(), gu.view(), dn.view(), wantv);
      EXPECT_LT(rel_l2(d.down(yd, y), want), 1e-5);
    }
  }
}

TEST(CudaOps, MoeExpertsIsBatchInvariant) {
  REQUIRE_CUDA();
  Backends b;
  Rng rng(303);
  const int64_t E = 16, k = 4, T = 64, H = 64, I = 48;
  for (DType wt : {DType::BF16, DType::F8_E4M3, DType::F32}) {
    SCOPED_TRACE(dtype_name(wt));
    const HT gu = rand_stored(wt, {E, 2 * I, H}, rng, 0.3f), dn = rand_stored(wt, {E, H, I}, rng, 0.3f);
    const HT x = rand_f32({T, H}, 0, rng), ids = random_expert_ids(T, E, k, rng), w = random_route_weights(T, k, rng);
    Dev d(*b.gpu);
    const TensorView xd = d.up(x), id = d.up(ids), wd = d.up(w), gud = d.up(gu), dnd = d.up(dn);
    HT alone = make_ht(DType::F32, {T, H});
    TensorView ad = d.poisoned(alone);
    for (int64_t r = 0; r < T; ++r) {
      TensorView o = ad.row_slice(r, r + 1);
      b.gpu->moe_experts(xd.row_slice(r, r + 1), id.row_slice(r, r + 1), wd.row_slice(r, r + 1), gud, dnd, o);
    }
    alone = d.down(ad, alone);
    for (int64_t n : {1, 2, 3, 5, 9, 17, 33, 64}) {
      const int64_t s = (n * 3) % (T - n + 1);
      HT y = make_ht(DType::F32, {n, H});
      TensorView yd = d.poisoned(y);
      b.gpu->moe_experts(xd.row_slice(s, s + n), id.row_slice(s, s + n), wd.row_slice(s, s + n), gud, dnd, yd);
      y = d.down(yd, y);
      EXPECT_TRUE(same_rows(y, 0, alone, s, n)) << "batch of " << n << " rows starting at " << s;
    }
  }
}

// --- Per-token ops ------------------------------------------------------------------------------

TEST(CudaOps, Embed) {
  REQUIRE_CUDA();
  Backends b;
  Rng rng(401);
  const int64_t V = 1000;
  for (DType tt : kWeightDtypes) {
    for (int64_t H : {64, 37}) {
      const HT table = rand_stored(tt, {V, H}, rng);
      for (int64_t T : {1, 17}) {
        SCOPED_TRACE(::testing::Message() << dtype_name(tt) << " H=" << H << " T=" << T);
        std::vector<int64_t> idv(T);
        for (auto& i : idv) i = rng.index(V);
        idv[0] = V - 1;
        const HT ids = ints(DType::I32, {T}, idv);
        HT y = make_ht(DType::F32, {T, H}, H + 2);
        TensorView yc = y.view();
        b.cpu->embed(ids.view(), table.view(), 0.75f, yc);
        Dev d(*b.gpu);
        TensorView yd = d.poisoned(y);
        b.gpu->embed(d.up(ids), d.up(table), 0.75f, yd);
        EXPECT_LT(rel_l2(d.down(yd, y), y), 1e-6);
      }
    }
  }
}

TEST(CudaOps, RmsNorm) {
  REQUIRE_CUDA();
  Backends b;
  Rng rng(402);
  const std::pair<int64_t, int64_t> shapes[] = {{1, 2816}, {3, 1000}, {17, 37}, {64, 256}};
  for (auto [R, D] : shapes) {
    for (int wi = 0; wi <= 4; ++wi) {  // none, then each weight dtype
      for (bool in_place : {false, true}) {
        SCOPED_TRACE(::testing::Message() << "R=" << R << " D=" << D << " weight=" << wi << " in_place=" << in_place);
        const HT x = rand_f32({R, D}, D + 3, rng, 2.0f);
        const HT w = wi ? rand_stored(kWeightDtypes[wi - 1], {D}, rng) : HT{};
        const TensorView wv = w.view();
        HT y = in_place ? x : make_ht(DType::F32, {R, D});
        TensorView yc = y.view();
        b.cpu->rms_norm(in_place ? y.view() : x.view(), wi ? &wv : nullptr, 1e-6f, yc);
        Dev d(*b.gpu);
        const TensorView wd = wi ? d.up(w) : TensorView{};
        TensorView xd = d.up(x);
        TensorView yd = in_place ? xd : d.poisoned(y);
        b.gpu->rms_norm(xd, wi ? &wd : nullptr, 1e-6f, yd);
        EXPECT_LT(rel_l2(d.down(yd, y), y), 1e-5);
      }
    }
  }
}

TEST(CudaOps, RmsNormAdd) {
  REQUIRE_CUDA();
  Backends b;
  Rng rng(403);
  const std::pair<int64_t, int64_t> shapes[] = {{1, 2816}, {3, 1000}, {17, 37}, {2, 10000}};
  for (auto [R, D] : shapes) {
    for (int wi = 0; wi <= 4; ++wi) {  // none, then each weight dtype
      SCOPED_TRACE(::testing::Message() << "R=" << R << " D=" << D << " weight=" << wi);
      const HT y = rand_f32({R, D}, D + 3, rng, 2.0f);
      HT x = rand_f32({R, D}, R > 1 ? D + 1 : 0, rng);
      const HT w = wi ? rand_stored(kWeightDtypes[wi - 1], {D}, rng) : HT{};
      const TensorView wv = w.view();
      Dev d(*b.gpu);
      const TensorView wd = wi ? d.up(w) : TensorView{};
      TensorView xd = d.up(x);
      TensorView xc = x.view();
      b.cpu->rms_norm_add(y.view(), wi ? &wv : nullptr, 1e-6f, xc);
      b.gpu->rms_norm_add(d.up(y), wi ? &wd : nullptr, 1e-6f, xd);
      EXPECT_LT(rel_l2(d.down(xd, x), x), 1e-5);
    }
  }
}

// rms_norms: a chain in one launch (rows kept in registers from step to step) gives bitwise the
// values of its steps as separate launches (the base Backend::rms_norms), and the CPU's within
// rounding: the sandwich layer's two chains, one longer than a launch takes, and views that overlap
// without being the same (run step by step).
TEST(CudaOps, RmsNormsChain) {
  REQUIRE_CUDA();
  Backends b;
  Rng rng(404);
  // Views (by index): 0 x (strided), 1 a, 2 f, 3 m, 4..6 outputs, 7 and 8 rows 1.. and 0.. of one buffer.
  struct S { int in, w, out; bool add; float scale; };
  const std::vector<std::vector<S>> chains = {
      {{1, 0, 0, true, 1}, {0, 1, 4, false, 1}, {0, 2, 5, false, 0.37f}, {0, 3, 6, false, 1}},
      {{2, 0, 2, false, 1}, {3, 1, 2, true, 1}, {2, 2, 0, true, 1.25f}, {0, -1, 4, false, 1}},
      {{1, 0, 0, true, 1}, {0, 1, 4, false, 1}, {0, 2, 5, false, 0.5f}, {5, 3, 5, false, 1},
       {4, -1, 6, true, 1}, {6, 1, 0, true, 2}, {0, 2, 1, false, 1}, {1, 3, 0, true, 1}},
      {{0, 0, 7, false, 1}, {8, 1, 4, false, 1}, {7, 2, 0, true, 1}},
  };
  const std::pair<int64_t, int64_t> shapes[] = {{1, 2816}, {3, 5376}, {5, 37}, {2, 10000}, {4, 300}};
  for (auto [R, D] : shapes) {
    for (size_t ci = 0; ci < chains.size(); ++ci) {
      for (int wi = 1; wi <= 4; ++wi) {  // each weight dtype
        SCOPED_TRACE(::testing::Message() << "R=" << R << " D=" << D << " chain=" << ci << " weight=" << wi);
        std::vector<HT> host = {rand_f32({R, D}, D + 5, rng), rand_f32({R, D}, 0, rng, 2.0f),
                                rand_f32({R, D}, 0, rng), rand_f32({R, D}, 0, rng, 0.5f),
                                rand_f32({R, D}, 0, rng), rand_f32({R, D}, 0, rng), rand_f32({R, D}, 0, rng)};
        const HT shared = rand_f32({R + 1, D}, 0, rng);
        std::vector<HT> w;
        for (int i = 0; i < 4; ++i) w.push_back(rand_stored(kWeightDtypes[wi - 1], {D}, rng));
        // Views 7 and 8 over `shared`: rows 1..R and rows 0..R-1.
        auto run = [&](Backend& be, std::vector<TensorView> v, const std::vector<TensorView>& wv, bool split) {
          TensorView rows_from_1 = v[7];
          rows_from_1.shape[0] = R, rows_from_1.data = static_cast<float*>(v[7].data) + D;
          TensorView rows_from_0 = v[7];
          rows_from_0.shape[0] = R;
          v[7] = rows_from_1, v.push_back(rows_from_0);
          std::vector<RmsNormStep> steps;
          for (const S& st : chains[ci]) steps.push_back({&v[st.in], st.w >= 0 ? &wv[st.w] : nullptr, &v[st.out], st.add, st.scale});
          if (split) be.Backend::rms_norms(steps, 1e-6f);
          else be.rms_norms(steps, 1e-6f);
          return v;
        };
        std::vector<HT> cpu = host;
        cpu.push_back(shared);
        std::vector<TensorView> cv, wc;
        for (HT& h : cpu) cv.push_back(h.view());
        for (HT& h : w) wc.push_back(h.view());
        run(*b.cpu, cv, wc, false);
        std::vector<HT> got[2];
        for (bool split : {false, true}) {
          Dev d(*b.gpu);
          std::vector<TensorView> dv, wd;
          for (const HT& h : host) dv.push_back(d.up(h));
          dv.push_back(d.up(shared));
          for (const HT& h : w) wd.push_back(d.up(h));
          run(*b.gpu, dv, wd, split);
          for (size_t i = 0; i < cpu.size(); ++i) got[split].push_back(d.down(dv[i], cpu[i]));
        }
        for (size_t i = 0; i < cpu.size(); ++i) {
          SCOPED_TRACE(::testing::Message() << "view " << i);
          EXPECT_LT(rel_l2(got[0][i], cpu[i]), 1e-5);
          EXPECT_TRUE(same_elements(got[0][i], got[1][i]));
        }
      }
    }
  }
}

TEST(CudaOps, Rope) {
  REQUIRE_CUDA();
  Backends b;
  Rng rng(403);
  const std::pair<int64_t, int64_t> hds[] = {{4, 32}, {2, 256}, {3, 64}, {8, 512}};
  for (auto [n_heads, d] : hds) {
    for (int64_t T : {1, 5, 17}) {
      SCOPED_TRACE(::testing::Message() << "heads=" << n_heads << " d=" << d << " T=" << T);
      const int64_t W = n_heads * d, half = d / 2;
      HT x = T % 2 ? rand_f32({T, W}, W + 5, rng) : rand_f32({T, n_heads, d}, 0, rng);
      std::vector<int64_t> pos(T);
      for (auto& p : pos) p = rng.index(100000);
      pos[0] = 0;
      const HT positions = ints(DType::I32, {T}, pos);
      HT inv = make_ht(DType::F32, {half});
      for (int64_t i = 0; i < half; ++i)
        inv.at<float>(0, i) = i % 7 == 3 ? 0.0f : std::pow(10000.0f, -2.0f * i / d);  // zeros: unrotated pairs
      Dev dev(*b.gpu);
      TensorView xd = dev.up(x);
      b.gpu->rope(xd, dev.up(positions), dev.up(inv));
      TensorView xc = x.view();
      b.cpu->rope(xc, positions.view(), inv.view());
      EXPECT_LT(rel_l2(dev.down(xd, x), x), 1e-5);
    }
  }
}

TEST(CudaOps, GeluTanhMulOnStridedHalves) {
  REQUIRE_CUDA();
  Backends b;
  Rng rng(404);
  for (int64_t R : {1, 7}) {
    for (int64_t I : {37, 1024}) {
      SCOPED_TRACE(::testing::Message() << "R=" << R << " I=" << I);
      const HT gu = rand_f32({R, 2 * I}, 2 * I + 3, rng, 2.0f);
      auto half = [&](const TensorView& v, int64_t off) {
        TensorView h(DType::F32, static_cast<float*>(v.data) + off, {R, I});
        h.row_stride = v.stride();
        return h;
      };
      HT out = make_ht(DType::F32, {R, I}, I + 1);
      TensorView oc = out.view();
      b.cpu->gelu_tanh_mul(half(gu.view(), 0), half(gu.view(), I), oc);
      Dev d(*b.gpu);
      const TensorView gud = d.up(gu);
      TensorView od = d.poisoned(out);
      b.gpu->gelu_tanh_mul(half(gud, 0), half(gud, I), od);
      EXPECT_LT(rel_l2(d.down(od, out), out), 1e-5);
    }
  }
}

TEST(CudaOps, AddAxpyScaleSoftcapStridedAndAliased) {
  REQUIRE_CUDA();
  Backends b;
  Rng rng(405);
  const int64_t R = 5, C = 333;
  const HT a = rand_f32({R, C}, C + 3, rng), x = rand_f32({R, C}, 0, rng, 20.0f);
  {  // add into a third tensor, then into its first operand
    HT y = make_ht(DType::F32, {R, C}, C + 7);
    TensorView yc = y.view();
    b.cpu->add(a.view(), x.view(), yc);
    Dev d(*b.gpu);
    const TensorView ad = d.up(a), xd = d.up(x);
    TensorView yd = d.poisoned(y);
    b.gpu->add(ad, xd, yd);
    EXPECT_LT(rel_l2(d.down(yd, y), y), 1e-6);
    TensorView alias = ad;
    b.gpu->add(ad, xd, alias);
    EXPECT_LT(rel_l2(d.down(ad, a), y), 1e-6);
  }
  auto check_inplace = [&](const char* what, auto&& op) {
    SCOPED_TRACE(what);
    HT y = a;
    TensorView yc = y.view();
    op(*b.cpu, x.view(), yc);
    Dev d(*b.gpu);
    TensorView yd = d.up(a);
    op(*b.gpu, d.up(x), yd);
    EXPECT_LT(rel_l2(d.down(yd, a), y), 1e-6);
  };
  check_inplace("axpy", [](Backend& be, const TensorView& xv, TensorView& yv) { be.axpy(-0.37f, xv, yv); });
  check_inplace("scale", [](Backend& be, const TensorView&, TensorView& yv) { be.scale(yv, 1.7f); });
  check_inplace("softcap", [](Backend& be, const TensorView& xv, TensorView& yv) {
    be.axpy(1.0f, xv, yv);  // values well past the cap
    be.softcap(yv, 15.0f);
  });
}

TEST(CudaOps, ClampAndStandardize) {
  REQUIRE_CUDA();
  Backends b;
  Rng rng(406);
  const int64_t R = 6, C = 1152;
  const HT x = rand_f32({R, C}, C + 3, rng, 3.0f);
  for (auto [lo, hi] : {std::pair{-1.0f, 0.5f}, std::pair{-INFINITY, INFINITY}}) {
    HT y = x;
    TensorView yc = y.view();
    b.cpu->clamp(yc, lo, hi);
    Dev d(*b.gpu);
    TensorView yd = d.up(x);
    b.gpu->clamp(yd, lo, hi);
    EXPECT_TRUE(same_elements(d.down(yd, x), y));  // min/max are exact
  }
  for (int wi = 0; wi < 3; ++wi) {
    SCOPED_TRACE(::testing::Message() << "weight dtype " << dtype_name(kWeightDtypes[wi]));
    const HT bias = rand_stored(kWeightDtypes[wi], {C}, rng), scale = rand_stored(kWeightDtypes[wi], {C}, rng);
    HT y = make_ht(DType::F32, {R, C});
    TensorView yc = y.view();
    b.cpu->standardize(x.view(), bias.view(), scale.view(), yc);
    Dev d(*b.gpu);
    const TensorView bd = d.up(bias), sd = d.up(scale);
    TensorView yd = d.poisoned(y);
    b.gpu->standardize(d.up(x), bd, sd, yd);
    EXPECT_TRUE(same_elements(d.down(yd, y), y));  // one subtraction and one product per element
    TensorView xd = d.up(x);
    b.gpu->standardize(xd, bd, sd, xd);  // in place
    EXPECT_LT(rel_l2(d.down(xd, x), y), 1e-7);
  }
}

// --- Data movement ------------------------------------------------------------------------------

TEST(CudaOps, CopyAnyDtypeStrided) {
  REQUIRE_CUDA();
  Backends b;
  Rng rng(501);
  for (DType t : {DType::F32, DType::BF16, DType::I32, DType::U8, DType::I64}) {
    SCOPED_TRACE(dtype_name(t));
    const int64_t R = 9, C = 77;
    HT src = make_ht(t, {R, C}, C + 3);
    for (auto& byte : src.bytes) byte = static_cast<uint8_t>(rng.index(256));
    HT dst = make_ht(t, {R, C}, C + 5);
    Dev d(*b.gpu);
    TensorView dd = d.poisoned(dst);
    b.gpu->copy(d.up(src), dd);
    EXPECT_TRUE(same_elements(d.down(dd, dst), src));
  }
}

TEST(CudaOps, GatherRows) {
  REQUIRE_CUDA();
  Backends b;
  Rng rng(502);
  const std::pair<DType, int64_t> cases[] = {{DType::F32, 33}, {DType::BF16, 64}, {DType::U8, 7}, {DType::I64, 5}};
  for (auto [t, C] : cases) {
    SCOPED_TRACE(dtype_name(t));
    const int64_t N = 50, R = 20;
    HT src = make_ht(t, {N, C}, t == DType::U8 ? C + 2 : 0);
    for (auto& byte : src.bytes) byte = static_cast<uint8_t>(rng.index(256));
    std::vector<int64_t> idv(R);
    for (auto& i : idv) i = rng.index(N);
    idv[1] = idv[0];  // repeats
    const HT ids = ints(DType::I32, {R}, idv);
    HT want = make_ht(t, {R, C});
    TensorView wc = want.view();
    b.cpu->gather_rows(src.view(), ids.view(), wc);
    Dev d(*b.gpu);
    TensorView dd = d.poisoned(want);
    b.gpu->gather_rows(d.up(src), d.up(ids), dd);
    EXPECT_TRUE(same_elements(d.down(dd, want), want));
  }
}

TEST(CudaOps, FillDummyMatchesCpuBytes) {
  REQUIRE_CUDA();
  Backends b;
  for (int64_t stride : {0, 1003}) {
    HT t = make_ht(DType::BF16, {7, 1000}, stride);
    TensorView tc = t.view();
    b.cpu->fill_dummy(tc, 1234, 0.01f, 0.05f);
    for (int64_t i = 0; i < 7 * 1000; i += 997)
      EXPECT_EQ(t.at<uint16_t>(i / 1000, i % 1000), dummy_bf16(1234, i, 0.01f, 0.05f));
    Dev d(*b.gpu);
    TensorView td = d.poisoned(t);
    b.gpu->fill_dummy(td, 1234, 0.01f, 0.05f);
    EXPECT_TRUE(same_elements(d.down(td, t), t));
  }
}

// --- Selection ----------------------------------------------------------------------------------

// Normals rounded to quarters: plenty of exact ties.
HT tied_scores(int64_t R, int64_t N, int64_t stride, Rng& rng) {
  HT x = make_ht(DType::F32, {R, N}, stride);
  for (int64_t r = 0; r < R; ++r)
    for (int64_t c = 0; c < N; ++c) x.at<float>(r, c) = std::round(rng.normal(2.0f) * 4.0f) / 4.0f;
  return x;
}

TEST(CudaOps, ArgmaxRows) {
  REQUIRE_CUDA();
  Backends b;
  Rng rng(601);
  // One chunk of 4096 columns and several (a CTA each, the row's last one reducing them), with the
  // row's maximum planted in three chunks so the tie is settled across CTAs.
  const std::pair<int64_t, int64_t> shapes[] = {{1, 262144}, {3, 1000}, {17, 37}, {2, 262147}, {5, 8193}, {40, 12293}};
  for (auto [R, N] : shapes) {
    for (bool with_labels : {false, true}) {
      SCOPED_TRACE(::testing::Message() << "R=" << R << " N=" << N << " labels=" << with_labels);
      HT x = tied_scores(R, N, N % 2 ? N + 1 : 0, rng);
      for (int64_t r = 0; r < R && N > 4096; ++r)
        for (int64_t c : {N - 1 - r, N / 2 + r, 4097 + r}) x.at<float>(r, c) = 1000.0f;
      HT labels = make_ht(DType::I32, {R, N});
      for (int64_t r = 0; r < R; ++r)
        for (int64_t c = 0; c < N; ++c) labels.at<int32_t>(r, c) = static_cast<int32_t>(rng.index(1000000));
      const TensorView lv = labels.view();
      HT out = make_ht(DType::I32, {R});
      TensorView oc = out.view();
      b.cpu->argmax_rows(x.view(), with_labels ? &lv : nullptr, oc);
      Dev d(*b.gpu);
      const TensorView ld = d.up(labels);
      TensorView od = d.poisoned(out);
      b.gpu->argmax_rows(d.up(x), with_labels ? &ld : nullptr, od);
      EXPECT_TRUE(same_elements(d.down(od, out), out));
    }
  }
}

TEST(CudaOps, TopkRows) {
  REQUIRE_CUDA();
  Backends b;
  Rng rng(602);
  struct Case {
    int64_t R, N, k;
  };
  for (const Case& c : {Case{1, 262144, 64}, Case{3, 1000, 8}, Case{5, 64, 64}, Case{2, 37, 1}, Case{17, 4097, 10}}) {
    SCOPED_TRACE(::testing::Message() << "R=" << c.R << " N=" << c.N << " k=" << c.k);
    const HT x = tied_scores(c.R, c.N, c.N % 2 ? c.N + 3 : 0, rng);
    HT out = make_ht(DType::I32, {c.R, c.k});
    TensorView oc = out.view();
    b.cpu->topk_rows(x.view(), oc);
    Dev d(*b.gpu);
    TensorView od = d.poisoned(out);
    b.gpu->topk_rows(d.up(x), od);
    EXPECT_TRUE(same_elements(d.down(od, out), out));
  }
}

// Exactly the CPU backend's tokens: both compute e with the same float operations
// (sampling::exp_nonpositive) and every mass and sum in integers (backend/sampling.h), so no
// uniform is "near a boundary" for one backend only. Rows of Gemma 4's vocabulary and odd sizes,
// tied logits, greedy, tiny temperatures, top-k from 1 to past V, top-p from 1 down to tiny, min-p,
// drafts (none, the argmax, random, out of range on the GPU side only) and params / uniforms as
// strided column slices of one buffer (as the engine uploads them).
TEST(CudaOps, SampleRowsMatchesCpuTokens) {
  REQUIRE_CUDA();
  Backends b;
  Rng rng(603);
  for (const int64_t V : {int64_t{262144}, int64_t{1000}, int64_t{37}, int64_t{4097}}) {
    std::vector<std::array<float, 4>> grid;
    for (float t : {0.0f, 1e-7f, 0.6f, 1.0f, 1.5f})
      for (float k : {0.0f, 1.0f, 3.0f, 64.0f, static_cast<float>(V - 1), static_cast<float>(V)})
        for (float tp : {1.0f, 0.95f, 0.3f, 1e-6f})
          for (float mp : {0.0f, 0.05f}) grid.push_back({t, k, tp, mp});
    // Big rows: a sample of the grid (each row is 1 MB); small rows: all of it.
    const int64_t R = V > 10000 ? 48 : static_cast<int64_t>(grid.size());
    SCOPED_TRACE(::testing::Message() << "V=" << V << " R=" << R);
    const HT x = tied_scores(R, V, V % 2 ? V + 1 : 0, rng);
    HT in = make_ht(DType::F32, {R, 6});
    HT drafts = make_ht(DType::I32, {R});
    for (int64_t r = 0; r < R; ++r) {
      const auto& g = grid[V > 10000 ? rng.index(static_cast<int64_t>(grid.size())) : r];
      for (int c = 0; c < 4; ++c) in.at<float>(r, c) = g[c];
      for (int c = 4; c < 6; ++c) in.at<float>(r, c) = static_cast<float>(rng.gen()() >> 40) * 0x1p-24f;
      int32_t argmax = 0;
      for (int64_t j = 1; j < V; ++j)
        if (x.at<float>(r, j) > x.at<float>(r, argmax)) argmax = static_cast<int32_t>(j);
      drafts.at<int32_t>(0, r) = r % 3 == 0 ? -1 : r % 3 == 1 ? argmax : static_cast<int32_t>(rng.index(V));
    }
    auto column_views = [](const TensorView& all, TensorView& params, TensorView& uniforms) {
      params = TensorView(DType::F32, all.data, {all.rows(), 4});
      uniforms = TensorView(DType::F32, static_cast<float*>(all.data) + 4, {all.rows(), 2});
      params.row_stride = uniforms.row_stride = 6;
    };
    HT out = make_ht(DType::I32, {R});
    TensorView oc = out.view(), pc, uc;
    column_views(in.view(), pc, uc);
    b.cpu->sample_rows(x.view(), pc, uc, drafts.view(), oc);
    Dev d(*b.gpu);
    TensorView od = d.poisoned(out), pd, ud;
    column_views(d.up(in), pd, ud);
    b.gpu->sample_rows(d.up(x), pd, ud, d.up(drafts), od);
    const HT got = d.down(od, out);
    for (int64_t r = 0; r < R; ++r)
      EXPECT_EQ(got.at<int32_t>(0, r), out.at<int32_t>(0, r))
          << "row " << r << ": t=" << in.at<float>(r, 0) << " k=" << in.at<float>(r, 1) << " p=" << in.at<float>(r, 2)
          << " min_p=" << in.at<float>(r, 3) << " draft=" << drafts.at<int32_t>(0, r);
    // Out-of-range drafts on the device count as none (the CPU backend refuses them).
    HT bad = drafts;
    for (int64_t r = 0; r < R; ++r) bad.at<int32_t>(0, r) = r % 2 ? static_cast<int32_t>(V) : -5;
    HT none = drafts;
    for (int64_t r = 0; r < R; ++r) none.at<int32_t>(0, r) = -1;
    TensorView on = none.view();
    HT want = out;
    TensorView ow = want.view();
    b.cpu->sample_rows(x.view(), pc, uc, on, ow);
    b.gpu->sample_rows(d.up(x), pd, ud, d.up(bad), od);
    EXPECT_TRUE(same_elements(d.down(od, out), want));
  }
}

// --- Device-side values out of range are skipped, never read or written out of bounds ----------

TEST(CudaOps, BadDeviceIndicesAreHarmless) {
  REQUIRE_CUDA();
  Backends b;
  Rng rng(701);
  Dev d(*b.gpu);
  {  // embed: ids outside the table give zero rows
    const HT table = rand_stored(DType::BF16, {10, 16}, rng);
    const HT ids = ints(DType::I32, {3}, {-1, 10, 2});
    HT y = make_ht(DType::F32, {3, 16});
    TensorView yd = d.poisoned(y);
    b.gpu->embed(d.up(ids), d.up(table), 1.0f, yd);
    y = d.down(yd, y);
    for (int64_t c = 0; c < 16; ++c) {
      EXPECT_EQ(y.at<float>(0, c), 0.0f);
      EXPECT_EQ(y.at<float>(1, c), 0.0f);
    }
    EXPECT_EQ(y.at<float>(2, 3), bf16_to_f32(table.at<uint16_t>(2, 3)));
  }
  {  // attention: a table index or block entry outside the cache
    const AttnCase c{32, 1, 2, 8};
    PagedCache cache(c, DType::F32, 4, rng);
    cache.tables.at<int32_t>(0, 1) = 1 << 30;
    const HT ranges = ints(DType::I32, {3, 3}, {7, 0, 10, 0, 0, 32, -1, 5, 3});
    const HT q = rand_f32({3, 64}, 0, rng);
    HT out = make_ht(DType::F32, {3, 64});
    const TensorView kd = d.up(cache.kg), vd = d.up(cache.vg);
    TensorView od = d.poisoned(out);
    b.gpu->attention(d.up(q), cache.layer(c, DType::F32, kd.data, vd.data),
                     AttentionRows{d.up(ranges), d.up(cache.tables)}, 0.2f, od);
    out = d.down(od, out);
    for (int64_t i = 0; i < 64; ++i) {
      EXPECT_EQ(out.at<float>(0, i), 0.0f);
      EXPECT_TRUE(std::isfinite(out.at<float>(1, i)));
      EXPECT_EQ(out.at<float>(2, i), 0.0f);
    }
  }
  {  // kv_write_normed: a slot outside the cache is skipped; moe_experts: an expert outside [0, E) adds nothing
    const AttnCase c{32, 1, 1, 8};
    PagedCache cache(c, DType::F32, 2, rng);
    const HT k = rand_f32({1, 32}, 0, rng), norm = rand_stored(DType::F32, {32}, rng);
    const TensorView kd = d.up(cache.kg), vd = d.up(cache.vg), kk = d.up(k);
    b.gpu->kv_write_normed(kk, kk, d.up(norm), 1e-6f, d.up(ints(DType::I32, {1}, {5})), d.up(rand_f32({16}, 0, rng)),
                           cache.layer(c, DType::F32, kd.data, vd.data), d.up(ints(DType::I64, {1}, {1 << 20})));
    EXPECT_TRUE(same_elements(d.down(kd, cache.kg), cache.kg));
    EXPECT_TRUE(same_elements(d.down(vd, cache.vg), cache.vg));

    const int64_t E = 4, H = 16, I = 8;
    const HT gu = rand_stored(DType::BF16, {E, 2 * I, H}, rng), dn = rand_stored(DType::BF16, {E, H, I}, rng);
    const HT x = rand_f32({2, H}, 0, rng), ids = ints(DType::I32, {2, 2}, {-3, 99, 1, 7});
    const HT w = random_route_weights(2, 2, rng);
    HT y = make_ht(DType::F32, {2, H});
    TensorView yd = d.poisoned(y);
    b.gpu->moe_experts(d.up(x), d.up(ids), d.up(w), d.up(gu), d.up(dn), yd);
    y = d.down(yd, y);
    for (int64_t c2 = 0; c2 < H; ++c2) EXPECT_EQ(y.at<float>(0, c2), 0.0f);
    for (int64_t c2 = 0; c2 < H; ++c2) EXPECT_TRUE(std::isfinite(y.at<float>(1, c2)));
  }
  b.gpu->synchronize();  // and the stream is still healthy
}

}  // namespace
}  // namespace tandem::test
