// The CPU backend: every op of backend.h on f32 activations, parallelised over a persistent thread
// pool. Matmuls go to the ISA-specific kernels of matmul_*.cc; the other ops are memory- or
// latency-bound and use baseline AVX2 (the binary's minimum ISA) directly.
//
// A CpuBackend is used by one caller thread at a time (it owns scratch buffers).
#include <immintrin.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

#include "backend/backend.h"
#include "backend/cpu/cpu_features.h"
#include "backend/dummy_values.h"
#include "backend/op_checks.h"
#include "backend/sampling.h"
#include "backend/cpu/matmul.h"
#include "backend/cpu/thread_pool.h"
#include "backend/cpu/vec_math.h"
#include "util/half.h"

namespace tandem {
namespace {

using cpu::MatmulArgs;

// Element count below which an elementwise op runs on the caller alone: a pool round trip costs
// about a microsecond while the workers poll (thread_pool.h), about what 16K elements take on one core.
constexpr int64_t kSerialElems = 16 * 1024;
// Matmuls and attention below this many multiply-adds (~10 us on one core) run on the caller alone:
// splitting them saves less than the few microseconds two pool round trips cost on a virtual machine.
constexpr int64_t kSerialMacs = 1 << 18;
// Smallest share of a matmul's weights one task reads (unless a thread would then get fewer than two).
// Smaller tasks stream below the bandwidth by more than their dispatch (a few hundred nanoseconds, an
// atomic shared between cores) explains: in 32 KiB tasks, int4 rows of 704 codes (a 26B-A4B expert's down
// projection) streamed about 80 % of what 256 KiB tasks do from DRAM on two threads (docs/PERF.md, CPU GEMV).
constexpr int64_t kMinTaskWeightBytes = 256 * 1024;
// ... for one row of x; with T rows a byte takes more work (the kernels are bound by their multiplies from
// about 4 rows on), so a task needs 1 / min(T, kTaskBytesRowsOfX) of it to run as long.
constexpr int64_t kTaskBytesRowsOfX = 4;
// Rows of x per task of a prefill-sized matmul (for_row_tasks): at least the minimum, so the weights
// stream past enough rows, and at most the maximum, so those rows of x stay in L2 (64 rows of 2048
// split values, 512 KiB) while the weights stream past them, as for_tiles' chunks of rows.
constexpr int64_t kRowTaskMinRows = 32, kRowTaskMaxRows = 64;
// Tasks per thread a product must make (of at least kRowTaskMinRows rows) to be split by rows of x.
constexpr int64_t kRowTasksPerThread = 2;

float load_f32(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::F32: return static_cast<const float*>(p)[i];
    case DType::BF16: return bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
    case DType::F16: return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
    case DType::F8_E4M3: return cpu::kF8E4M3ToF32[static_cast<const uint8_t*>(p)[i]];
    default: fail("tensor dtype {} is not a float type", dtype_name(t));
  }
}

// dst[0:n] = src[0:n] (any float dtype) converted to f32.
void convert_row(const void* src, DType t, int64_t n, float* dst) {
  if (t == DType::F32) {
    std::copy_n(static_cast<const float*>(src), n, dst);
    return;
  }
  for (int64_t i = 0; i < n; ++i) dst[i] = load_f32(src, t, i);
}

// Elements [i, i + 8) of a float vector of dtype t (F32, BF16 or F16) as f32.
__m256 load8_f32(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::BF16: {
      const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(p) + i));
      return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    }
    case DType::F16:
      return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(p) + i)));
    default: return _mm256_loadu_ps(static_cast<const float*>(p) + i);
  }
}

float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

float dot(const float* a, const float* b, int64_t n) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
  }
  for (; i + 8 <= n; i += 8) acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
  float s = hsum(_mm256_add_ps(acc0, acc1));
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

// 8 bf16 at p as f32.
__m256 load8_bf16(const uint16_t* p) {
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16));
}

// y[0:n] += alpha · x[0:n]
void axpy_row(float alpha, const float* x, float* y, int64_t n) {
  const __m256 va = _mm256_set1_ps(alpha);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; ++i) y[i] += alpha * x[i];
}

__m256 load8(const float* p) { return _mm256_loadu_ps(p); }
__m256 load8(const uint16_t* p) { return load8_bf16(p); }
float to_f32(float v) { return v; }
float to_f32(uint16_t v) { return bf16_to_f32(v); }

// s[i] = q · key_i over n elements, for 8 keys (f32 or bf16 rows) at once: q is loaded once for all
// of them and the 8 sums are reduced together. Attention computes every score through this, so a
// score does not depend on which keys share its group of 8.
template <typename KT>
void dot8(const float* q, const KT* const* keys, int64_t n, float* s) {
  __m256 acc[8];
  for (__m256& a : acc) a = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= n; k += 8) {
    const __m256 qv = _mm256_loadu_ps(q + k);
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) acc[i] = _mm256_fmadd_ps(qv, load8(keys[i] + k), acc[i]);
  }
  const __m256 u0 = _mm256_hadd_ps(_mm256_hadd_ps(acc[0], acc[1]), _mm256_hadd_ps(acc[2], acc[3]));
  const __m256 u1 = _mm256_hadd_ps(_mm256_hadd_ps(acc[4], acc[5]), _mm256_hadd_ps(acc[6], acc[7]));
  _mm256_storeu_ps(s, _mm256_add_ps(_mm256_permute2f128_ps(u0, u1, 0x20), _mm256_permute2f128_ps(u0, u1, 0x31)));
  for (; k < n; ++k)
    for (int i = 0; i < 8; ++i) s[i] += q[k] * to_f32(keys[i][k]);
}

// GCC 12 flags the deliberately undefined source operand inside its own AVX-512 widening intrinsics.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
// 16 f32, or 16 bf16 as f32, at p.
__attribute__((target("avx512f"))) inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
__attribute__((target("avx512f"))) inline __m512 load16(const uint16_t* p) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
}

// o[h][c:c+64] = Σ_j p[h][j] · v_j[c:c+64] for the H query heads h, v_j the value row at vcache +
// offsets[j], summed in key order from zero: per output element the same FMA chain as attention's
// 8-wide loop, so the same bits, while each load of a value row serves all H heads. TAIL8: columns
// [c+64, c+72) too, in the same pass (a head dim of 64·n + 8, such as the vision tower's 72, would
// otherwise walk the keys again for its last 8 columns with one FMA chain).
template <int H, bool TAIL8, typename VT>
__attribute__((target("avx512f"))) void values64_avx512(const float* const* p, float* const* o, const VT* vcache,
                                                         const int64_t* offsets, int64_t len, int64_t c) {
  __m512 acc[H][4];
  __m256 tail[H];
  for (int h = 0; h < H; ++h) {
    for (int i = 0; i < 4; ++i) acc[h][i] = _mm512_setzero_ps();
    tail[h] = _mm256_setzero_ps();
  }
  for (int64_t j = 0; j < len; ++j) {
    const VT* v = vcache + offsets[j] + c;
    const __m512 v0 = load16(v), v1 = load16(v + 16), v2 = load16(v + 32), v3 = load16(v + 48);
    __m256 v4;
    if constexpr (TAIL8) v4 = load8(v + 64);
#pragma GCC unroll 4
    for (int h = 0; h < H; ++h) {
      const __m512 pj = _mm512_set1_ps(p[h][j]);
      acc[h][0] = _mm512_fmadd_ps(pj, v0, acc[h][0]);
      acc[h][1] = _mm512_fmadd_ps(pj, v1, acc[h][1]);
      acc[h][2] = _mm512_fmadd_ps(pj, v2, acc[h][2]);
      acc[h][3] = _mm512_fmadd_ps(pj, v3, acc[h][3]);
      if constexpr (TAIL8) tail[h] = _mm256_fmadd_ps(_mm512_castps512_ps256(pj), v4, tail[h]);
    }
  }
  for (int h = 0; h < H; ++h) {
    for (int i = 0; i < 4; ++i) _mm512_storeu_ps(o[h] + c + 16 * i, acc[h][i]);
    if constexpr (TAIL8) _mm256_storeu_ps(o[h] + c + 64, tail[h]);
  }
}
#pragma GCC diagnostic pop

// dst[0:n] = src[0:n] rounded to bf16 (nearest even, as torch casts).
void round_row_bf16(const float* src, uint16_t* dst, int64_t n) {
  for (int64_t i = 0; i < n; ++i) dst[i] = f32_to_bf16(src[i]);
}

// out[i] = gelu_tanh(g[i]) · u[i] for i < n.
void gelu_tanh_mul_row(const float* g, const float* u, float* out, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(out + i, _mm256_mul_ps(cpu::gelu_tanh_avx2(_mm256_loadu_ps(g + i)), _mm256_loadu_ps(u + i)));
  if (i < n) {  // tail through a padded vector so every element takes the same formula
    float gt[8] = {}, ut[8] = {}, ot[8];
    std::copy(g + i, g + n, gt);
    std::copy(u + i, u + n, ut);
    gelu_tanh_mul_row(gt, ut, ot, 8);
    std::copy(ot, ot + (n - i), out + i);
  }
}

// s[i] = e^(s[i] - shift) for i < n; returns Σ s[i].
float exp_shifted_sum(float* s, int64_t n, float shift) {
  const __m256 vshift = _mm256_set1_ps(shift);
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 e = cpu::exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(s + i), vshift));
    _mm256_storeu_ps(s + i, e);
    acc = _mm256_add_ps(acc, e);
  }
  float sum = hsum(acc);
  if (i < n) {
    float tail[8];
    std::fill_n(tail, 8, -INFINITY);  // e^(-inf - shift) clamps to ~1e-38; only n - i lanes are kept
    std::copy(s + i, s + n, tail);
    _mm256_storeu_ps(tail, cpu::exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(tail), vshift)));
    for (int64_t j = 0; j < n - i; ++j) sum += s[i + j] = tail[j];
  }
  return sum;
}

// Pointer to the d floats of head h of token t in a view holding T tokens of n_heads·d floats,
// seen either as [T, n_heads·d] (possibly strided) or as [T, n_heads, d] / [T·n_heads, d].
float* head_ptr(const TensorView& v, int64_t T, int64_t t, int64_t h, int64_t d) {
  const int64_t rows_per_token = v.rows() / T, idx = h * d;
  return v.row<float>(t * rows_per_token + idx / v.cols()) + idx % v.cols();
}

// A [n] (or [n, 1]) integer tensor of dtype t, as a host pointer.
template <typename I>
const I* check_ints(const TensorView& v, DType t, int64_t n, const char* what) {
  if (v.dtype != t) fail("{} must be {}, got {}", what, dtype_name(t), dtype_name(v.dtype));
  if (v.numel() != n) fail("{} has {} elements, expected {}", what, v.numel(), n);
  if (n > 0 && !v.data) fail("{} has no data", what);
  return static_cast<const I*>(v.data);
}

// y[0:D] = x · (mean(x²) + eps)^-½ · w (w nullptr: weightless; F32, BF16 or F16), or with add
// y += that; y may be x. The one RMSNorm of rms_norm, rms_norm_add and the fused ops.
void rms_norm_row(const float* xr, const void* w, DType wt, float eps, int64_t D, bool add, float* yr) {
  const float inv = 1.0f / std::sqrt(dot(xr, xr, D) / static_cast<float>(D) + eps);
  // y = (x · inv) · w, rounded as the scalar expression would be (then + y with add).
  const __m256 vinv = _mm256_set1_ps(inv);
  int64_t i = 0;
  for (; i + 8 <= D; i += 8) {
    const __m256 v = _mm256_mul_ps(_mm256_loadu_ps(xr + i), vinv);
    const __m256 n = w ? _mm256_mul_ps(v, load8_f32(w, wt, i)) : v;
    _mm256_storeu_ps(yr + i, add ? _mm256_add_ps(_mm256_loadu_ps(yr + i), n) : n);
  }
  for (; i < D; ++i) {
    const float n = w ? xr[i] * inv * load_f32(w, wt, i) : xr[i] * inv;
    yr[i] = add ? yr[i] + n : n;
  }
}

// Rotate-half RoPE of one head v[0:2·half]: pairs (i, i + half) rotated by (c[i], s[i]).
void rope_row(float* v, const float* c, const float* s, int64_t half) {
  for (int64_t i = 0; i < half; ++i) {
    const float a = v[i], b = v[i + half];
    v[i] = a * c[i] - b * s[i];
    v[i + half] = b * c[i] + a * s[i];
  }
}

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(int threads) : pool_(threads) {}

  std::string name() const override {
    const CpuIsa isa = cpu_isa();
    return fmt::format("cpu ({}{}, {} threads)", cpu_isa_name(isa),
                       isa != CpuIsa::kAvx512Bf16 && cpu_has_avx512_bf16() ? ", cpu has avx512-bf16" : "",
                       pool_.size());
  }
  bool is_host() const override { return true; }

  void* alloc(size_t bytes) override {
    const size_t size = (std::max<size_t>(bytes, 1) + 255) / 256 * 256;
    void* p = std::aligned_alloc(256, size);
    if (!p) fail("out of host memory allocating {} MiB", bytes >> 20);
    // Fault the whole pages of the block in now, in one call, rather than one trap per 4 KiB page at
    // first touch (a fresh process's first prefill touched thousands of pages of scratch and KV
    // cache that way). Best effort (Linux >= 5.14); the contents are unchanged.
    static const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
    const uintptr_t begin = (reinterpret_cast<uintptr_t>(p) + page - 1) & ~(page - 1);
    const uintptr_t end = (reinterpret_cast<uintptr_t>(p) + size) & ~(page - 1);
    if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_POPULATE_WRITE);
    return p;
  }
  void free(void* p) override { std::free(p); }
  void upload(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  void download(void* dst, const void* src, size_t bytes) override {
    std::memcpy(dst, src, bytes);
    ++host_syncs_;
  }
  void synchronize() override { ++host_syncs_; }
  void memory_info(size_t* free_bytes, size_t* total_bytes) const override { *free_bytes = *total_bytes = 0; }
  uint64_t host_syncs() const override { return host_syncs_; }

  void copy(const TensorView& src, TensorView& dst) override {
    if (src.dtype != dst.dtype || src.rows() != dst.rows() || src.cols() != dst.cols())
      fail("copy: {} [{}, {}] into {} [{}, {}]", dtype_name(src.dtype), src.rows(), src.cols(), dtype_name(dst.dtype),
           dst.rows(), dst.cols());
    const size_t row_bytes = src.cols() * dtype_size(src.dtype);
    for (int64_t r = 0; r < src.rows(); ++r) std::memmove(dst.row<char>(0) + r * dst.stride() * dtype_size(dst.dtype),
                                                          src.row<char>(0) + r * src.stride() * dtype_size(src.dtype),
                                                          row_bytes);
  }

  void gather_rows(const TensorView& src, const TensorView& ids, TensorView& dst) override {
    const int64_t R = dst.rows(), N = src.rows(), C = src.cols();
    const int32_t* id = check_ints<int32_t>(ids, DType::I32, R, "gather_rows ids");
    if (dst.dtype != src.dtype || dst.cols() != C)
      fail("gather_rows: {} [{}, {}] from {} [{}, {}]", dtype_name(dst.dtype), R, dst.cols(), dtype_name(src.dtype), N, C);
    const size_t es = dtype_size(src.dtype), row_bytes = C * es;
    for (int64_t r = 0; r < R; ++r) {
      if (id[r] < 0 || id[r] >= N) fail("gather_rows: row id {} is outside [0, {})", id[r], N);
      std::memcpy(dst.row<char>(0) + r * dst.stride() * es, src.row<char>(0) + id[r] * src.stride() * es, row_bytes);
    }
  }

  void fill_dummy(TensorView& t, uint64_t seed, float center, float half_width) override {
    if (t.dtype != DType::BF16) fail("fill_dummy: needs a BF16 tensor, got {}", dtype_name(t.dtype));
    // Element (r, c) of the 2-D view is logical element r·cols + c, whatever the row stride.
    const int64_t cols = t.cols();
    for_rows(t.rows(), cols, [&](int64_t r) {
      uint16_t* p = t.row<uint16_t>(r);
      for (int64_t c = 0; c < cols; ++c) p[c] = dummy_bf16(seed, r * cols + c, center, half_width);
    });
  }

  void set_communicator(Communicator* comm) override { comm_ = comm; }

  void all_reduce(TensorView& x) override {
    check_f32_2d(x, "all_reduce x");
    if (x.stride() != x.cols()) fail("all_reduce: x must be contiguous (row stride {}, {} columns)", x.stride(), x.cols());
    if (comm_ && comm_->size() > 1) comm_->all_reduce_sum(x.as<float>(), static_cast<size_t>(x.numel()));
  }

  void argmax_rows(const TensorView& x, const TensorView* labels, TensorView& out) override {
    check_f32_2d(x, "argmax_rows x");
    const int64_t R = x.rows(), N = x.cols();
    const int32_t* lab = labels ? check_ints<int32_t>(*labels, DType::I32, R * N, "argmax_rows labels") : nullptr;
    int32_t* o = const_cast<int32_t*>(check_ints<int32_t>(out, DType::I32, R, "argmax_rows out"));
    for (int64_t r = 0; r < R; ++r) {
      const float* v = x.row<float>(r);
      auto label = [&](int64_t j) { return lab ? lab[r * N + j] : static_cast<int32_t>(j); };
      int64_t best = 0;
      for (int64_t j = 1; j < N; ++j)
        if (v[j] > v[best] || (v[j] == v[best] && label(j) < label(best))) best = j;
      o[r] = label(best);
    }
  }

  void topk_rows(const TensorView& x, TensorView& out) override {
    check_f32_2d(x, "topk_rows x");
    const int64_t R = x.rows(), N = x.cols(), k = out.cols();
    if (k < 1 || k > N) fail("topk_rows: k = {} must be in [1, {}]", k, N);
    int32_t* o = const_cast<int32_t*>(check_ints<int32_t>(out, DType::I32, R * k, "topk_rows out"));
    std::vector<int32_t> order(N);
    for (int64_t r = 0; r < R; ++r) {
      const float* v = x.row<float>(r);
      std::iota(order.begin(), order.end(), 0);
      std::partial_sort(order.begin(), order.begin() + k, order.end(),
                        [&](int32_t a, int32_t b) { return v[a] > v[b] || (v[a] == v[b] && a < b); });
      std::copy_n(order.begin(), k, o + r * k);
    }
  }

  // Row by row through the host reference of backend/sampling.cc (the host Sampler runs the same code).
  void sample_rows(const TensorView& logits, const TensorView& params, const TensorView& uniforms,
                   const TensorView& drafts, TensorView& out) override {
    const int64_t R = check_sample_rows(logits, params, uniforms, drafts, out), V = logits.cols();
    const int32_t* d = drafts.as<int32_t>();
    int32_t* o = out.as<int32_t>();
    for (int64_t r = 0; r < R; ++r)
      if (d[r] < -1 || d[r] >= V) fail("sample_rows: draft {} is outside [-1, {})", d[r], V);
    for_rows(R, V, [&](int64_t r) {
      const float* p = params.row<float>(r);
      const sampling::RowParams rp{p[0], p[1], p[2], p[3]};
      sampling::Scratch scratch;
      o[r] = sampling::sample_row(std::span<const float>(logits.row<float>(r), V), rp, uniforms.row<float>(r),
                                  d[r] < 0 ? -1 : d[r], scratch);
    });
  }

  void matmul(const TensorView& x, const TensorView& w, TensorView& y) override {
    const auto [T, N, K] = check_matmul(x, w, y);
    run_matmul({x.as<float>(), x.stride(), w.data, w.dtype, y.as<float>(), y.stride(), T, N, K, w.quant});
  }

  void embed(const TensorView& id_view, const TensorView& table, float scale, TensorView& y) override {
    check_f32_2d(y, "embed y");
    if (!is_float_dtype(table.dtype) || table.ndim != 2) fail("embed: table must be a 2-D float tensor");
    const int64_t V = table.dim(0), H = table.dim(1), T = y.rows();
    const int32_t* ids = check_ints<int32_t>(id_view, DType::I32, T, "embed ids");
    if (y.cols() != H) fail("embed: y is [{}, {}], expected [{}, {}]", y.rows(), y.cols(), T, H);
    for (int64_t t = 0; t < T; ++t)
      if (ids[t] < 0 || ids[t] >= V) fail("embed: token id {} is outside the vocabulary [0, {})", ids[t], V);
    const size_t row_bytes = H * dtype_size(table.dtype);
    for_rows(T, H, [&](int64_t t) {
      float* dst = y.row<float>(t);
      convert_row(static_cast<const char*>(table.data) + ids[t] * row_bytes, table.dtype, H, dst);
      for (int64_t i = 0; i < H; ++i) dst[i] *= scale;
    });
  }

  // One parallel job: each tile computes its columns of gate and up and applies GeGLU to them, instead
  // of three ops with a pool round trip each. Per element the same arithmetic as the composition.
  void matmul_gelu_glu(const TensorView& x, const TensorView& gate, const TensorView& up, TensorView& out) override {
    check_f32_2d(out, "matmul_gelu_glu out");
    glu_up_.resize(DType::F32, {out.rows(), out.cols()});
    TensorView u = glu_up_.view();
    const auto [T, N, K] = check_matmul(x, gate, out);
    check_matmul(x, up, u);
    if (T == 0 || N == 0) return;
    MatmulArgs ag{x.as<float>(), x.stride(), gate.data, gate.dtype, out.as<float>(), out.stride(), T, N, K, gate.quant};
    MatmulArgs au{x.as<float>(), x.stride(), up.data, up.dtype, u.as<float>(), u.stride(), T, N, K, up.quant};
    // Whether x is prepared the same way for both weights (prepare_matmul depends only on these).
    const bool same_format =
        gate.dtype == up.dtype && !gate.quant == !up.quant &&
        (!gate.quant || (gate.quant->code == up.quant->code && gate.quant->group == up.quant->group &&
                         !gate.quant->zeros.data == !up.quant->zeros.data && !gate.quant->k_perm.data &&
                         !up.quant->k_perm.data));
    if (!same_format) {  // run them one after the other
      run_matmul(ag);
      run_matmul(au);
      gelu_tanh_mul(out, u, out);
      return;
    }
    // Gate and up tiles over x prepared once for both weights, then GeGLU on the tile's outputs.
    auto gate_up = [&](TileFn tile, MatmulArgs& g, MatmulArgs& v, int64_t n0, int64_t n1, int64_t t0, int64_t t1) {
      v.x = g.x, v.ldx = g.ldx, v.xs = g.xs, v.ldxs = g.ldxs;
      tile(g, n0, n1, t0, t1);
      tile(v, n0, n1, t0, t1);
      for (int64_t t = t0; t < t1; ++t) {
        float* o = g.y + t * g.ldy;
        gelu_tanh_mul_row(o + n0, v.y + t * v.ldy + n0, o + n0, n1 - n0);
      }
    };
    if (for_row_tasks(T, 2 * N * K * T, [&](int64_t t0, int64_t t1) {
          MatmulArgs g = rows_of(ag, t0, t1), v = rows_of(au, t0, t1);
          const TileFn tile = prepare_matmul(g);
          gate_up(tile, g, v, 0, N, 0, t1 - t0);
        }))
      return;
    const TileFn tile = prepare_matmul(ag);
    for_tiles(T, N, 2 * weight_row_bytes(ag), 2 * N * K * T, [&](int64_t n0, int64_t n1, int64_t t0, int64_t t1) {
      MatmulArgs v = au;
      gate_up(tile, ag, v, n0, n1, t0, t1);
    });
  }

  void rms_norm(const TensorView& x, const TensorView* weight, float eps, TensorView& y) override {
    rms_norm_rows(x, weight, eps, y, "rms_norm", /*add=*/false);
  }

  void rms_norm_add(const TensorView& y, const TensorView* weight, float eps, TensorView& x) override {
    rms_norm_rows(y, weight, eps, x, "rms_norm_add", /*add=*/true);
  }

  // out = RMS(in) · w, or with add out += RMS(in) · w.
  void rms_norm_rows(const TensorView& in, const TensorView* weight, float eps, TensorView& out, const char* op,
                     bool add) {
    check_f32_2d(in, "rms_norm input");
    check_f32_2d(out, "rms_norm output");
    check_same_shape(in, out, op);
    const int64_t D = in.cols();
    const auto [w, wt] = norm_weight(weight, D, op);
    for_rows(in.rows(), D, [&](int64_t r) { rms_norm_row(in.row<float>(r), w, wt, eps, D, add, out.row<float>(r)); });
  }

  void rope(TensorView& x, const TensorView& pos_view, const TensorView& freq_view) override {
    const auto [T, half] = rope_angles(pos_view, freq_view, "rope");
    if (T == 0) return;
    const int64_t d = 2 * half, n_heads = rope_heads(x, T, half, "rope");
    for_rows(T * n_heads, d, [&](int64_t th) {
      const int64_t t = th / n_heads;
      rope_row(head_ptr(x, T, t, th % n_heads, d), &rope_cos_[t * half], &rope_sin_[t * half], half);
    });
  }

  // Head by head, rms_norm_row then rope_row: the arithmetic of rms_norm and rope, in one pass.
  void rms_norm_rope(TensorView& x, const TensorView& weight, float eps, const TensorView& pos_view,
                     const TensorView& freq_view) override {
    const auto [T, half] = rope_angles(pos_view, freq_view, "rms_norm_rope");
    if (T == 0) return;
    const int64_t d = 2 * half, n_heads = rope_heads(x, T, half, "rms_norm_rope");
    const auto [w, wt] = norm_weight(&weight, d, "rms_norm_rope");
    for_rows(T * n_heads, d, [&](int64_t th) {
      const int64_t t = th / n_heads;
      float* v = head_ptr(x, T, t, th % n_heads, d);
      rms_norm_row(v, w, wt, eps, d, /*add=*/false, v);
      rope_row(v, &rope_cos_[t * half], &rope_sin_[t * half], half);
    });
  }

  void gelu_tanh_mul(const TensorView& gate, const TensorView& up, TensorView& out) override {
    check_f32_2d(gate, "gelu_tanh_mul gate");
    check_f32_2d(up, "gelu_tanh_mul up");
    check_f32_2d(out, "gelu_tanh_mul out");
    check_same_shape(gate, up, "gelu_tanh_mul");
    check_same_shape(gate, out, "gelu_tanh_mul");
    for_chunks(out.rows(), out.cols(), [&](int64_t r, int64_t c0, int64_t c1) {
      const float* g = gate.row<float>(r);
      const float* u = up.row<float>(r);
      float* o = out.row<float>(r);
      gelu_tanh_mul_row(g + c0, u + c0, o + c0, c1 - c0);
    });
  }

  void add(const TensorView& a, const TensorView& b, TensorView& y) override {
    check_f32_2d(a, "add a");
    check_f32_2d(b, "add b");
    check_f32_2d(y, "add y");
    check_same_shape(a, y, "add");
    check_same_shape(b, y, "add");
    for_chunks(y.rows(), y.cols(), [&](int64_t r, int64_t c0, int64_t c1) {
      const float* pa = a.row<float>(r);
      const float* pb = b.row<float>(r);
      float* py = y.row<float>(r);
      for (int64_t i = c0; i < c1; ++i) py[i] = pa[i] + pb[i];
    });
  }

  void axpy(float alpha, const TensorView& x, TensorView& y) override {
    check_f32_2d(x, "axpy x");
    check_f32_2d(y, "axpy y");
    check_same_shape(x, y, "axpy");
    for_chunks(y.rows(), y.cols(), [&](int64_t r, int64_t c0, int64_t c1) {
      axpy_row(alpha, x.row<float>(r) + c0, y.row<float>(r) + c0, c1 - c0);
    });
  }

  void scale(TensorView& x, float s) override {
    check_f32_2d(x, "scale x");
    for_chunks(x.rows(), x.cols(), [&](int64_t r, int64_t c0, int64_t c1) {
      float* p = x.row<float>(r);
      for (int64_t i = c0; i < c1; ++i) p[i] *= s;
    });
  }

  void softcap(TensorView& x, float cap) override {
    check_f32_2d(x, "softcap x");
    if (!(cap > 0)) fail("softcap: cap must be positive, got {}", cap);
    const float inv = 1.0f / cap;
    for_chunks(x.rows(), x.cols(), [&](int64_t r, int64_t c0, int64_t c1) {
      float* p = x.row<float>(r);
      const __m256 vinv = _mm256_set1_ps(inv), vcap = _mm256_set1_ps(cap);
      int64_t i = c0;
      for (; i + 8 <= c1; i += 8)
        _mm256_storeu_ps(p + i, _mm256_mul_ps(vcap, cpu::tanh_avx2(_mm256_mul_ps(_mm256_loadu_ps(p + i), vinv))));
      if (i < c1) {  // tail through a padded vector so every element takes the same formula
        float t[8] = {};
        std::copy(p + i, p + c1, t);
        _mm256_storeu_ps(t, _mm256_mul_ps(vcap, cpu::tanh_avx2(_mm256_mul_ps(_mm256_loadu_ps(t), vinv))));
        std::copy(t, t + (c1 - i), p + i);
      }
    });
  }

  void clamp(TensorView& x, float lo, float hi) override {
    check_f32_2d(x, "clamp x");
    if (!(lo <= hi)) fail("clamp: bounds [{}, {}] are empty", lo, hi);
    for_chunks(x.rows(), x.cols(), [&](int64_t r, int64_t c0, int64_t c1) {
      float* p = x.row<float>(r);
      for (int64_t i = c0; i < c1; ++i) p[i] = std::min(std::max(p[i], lo), hi);
    });
  }

  void standardize(const TensorView& x, const TensorView& bias, const TensorView& scale, TensorView& y) override {
    check_f32_2d(x, "standardize x");
    check_f32_2d(y, "standardize y");
    check_same_shape(x, y, "standardize");
    const int64_t D = x.cols();
    for (const TensorView* t : {&bias, &scale})
      if (!is_float_dtype(t->dtype) || t->numel() != D)
        fail("standardize: bias and scale must be float tensors of {} elements", D);
    std_bias_.resize(D);
    std_scale_.resize(D);
    convert_row(bias.data, bias.dtype, D, std_bias_.data());
    convert_row(scale.data, scale.dtype, D, std_scale_.data());
    for_rows(x.rows(), D, [&](int64_t r) {
      const float* xr = x.row<float>(r);
      float* yr = y.row<float>(r);
      for (int64_t i = 0; i < D; ++i) yr[i] = (xr[i] - std_bias_[i]) * std_scale_[i];
    });
  }

  // Head by head into a scratch row: K through rms_norm_row and rope_row, V through rms_norm_row,
  // then stored as a plain write would (rounded to nearest even for a BF16 cache).
  void kv_write_normed(const TensorView& k, const TensorView& v, const TensorView& k_norm, float eps,
                       const TensorView& pos_view, const TensorView& freq_view, const KvLayer& layer,
                       const TensorView& slot_view) override {
    const int64_t T = slot_view.numel(), n_kv = layer.n_kv_heads, d = layer.head_dim, half = d / 2;
    if (T == 0) return;
    const int64_t* slots = check_ints<int64_t>(slot_view, DType::I64, T, "kv_write_normed slots");
    check_kv_dtype(layer, "kv_write_normed");
    check_heads(k, T, n_kv, d, "kv_write_normed k");
    check_heads(v, T, n_kv, d, "kv_write_normed v");
    if (pos_view.numel() != T) fail("kv_write_normed: {} positions for {} slots", pos_view.numel(), T);
    if (freq_view.numel() != half || d % 2 != 0)
      fail("kv_write_normed: inv_freq has {} elements, head_dim {} needs {}", freq_view.numel(), d, half);
    rope_angles(pos_view, freq_view, "kv_write_normed");
    const auto [w, wt] = norm_weight(&k_norm, d, "kv_write_normed");
    const int64_t n_slots = static_cast<int64_t>(layer.num_blocks) * layer.block_size;
    for (int64_t t = 0; t < T; ++t)
      if (slots[t] < 0 || slots[t] >= n_slots)
        fail("kv_write_normed: slot {} is outside the cache's {} slots", slots[t], n_slots);
    for_rows(T * n_kv, 2 * d, [&](int64_t th) {
      const int64_t t = th / n_kv, h = th % n_kv, dst = (slots[t] * n_kv + h) * d;
      thread_local std::vector<float> row;
      row.resize(d);
      auto store = [&](void* cache) {
        if (layer.dtype == DType::BF16) round_row_bf16(row.data(), static_cast<uint16_t*>(cache) + dst, d);
        else std::copy_n(row.data(), d, static_cast<float*>(cache) + dst);
      };
      rms_norm_row(head_ptr(k, T, t, h, d), w, wt, eps, d, /*add=*/false, row.data());
      rope_row(row.data(), &rope_cos_[t * half], &rope_sin_[t * half], half);
      store(layer.k);
      rms_norm_row(head_ptr(v, T, t, h, d), nullptr, DType::F32, eps, d, /*add=*/false, row.data());
      store(layer.v);
    });
  }

  void attention(const TensorView& q, const KvLayer& layer, const AttentionRows& rows, float scale,
                 TensorView& out) override {
    const int64_t T = rows.ranges.rows(), n_kv = layer.n_kv_heads, d = layer.head_dim;
    if (T == 0) return;
    if (n_kv <= 0 || d <= 0 || layer.block_size <= 0) fail("attention: KV layer has no heads, head_dim or block_size");
    check_kv_dtype(layer, "attention");
    const int32_t* ranges = check_ints<int32_t>(rows.ranges, DType::I32, T * 3, "attention ranges");
    const int64_t S = rows.block_tables.rows(), max_blocks = rows.block_tables.cols();
    const int32_t* tables = check_ints<int32_t>(rows.block_tables, DType::I32, S * max_blocks, "attention block_tables");
    struct Row {
      const int32_t* block_table;
      int32_t kv_begin, kv_end;
    };
    std::vector<Row> row_list(T);
    const int64_t n_heads = check_attention_heads(q, out, T, n_kv, d);
    const int64_t bs = layer.block_size;
    for (int64_t t = 0; t < T; ++t) {
      const int32_t seq = ranges[3 * t];
      Row& row = row_list[t];
      row = {nullptr, ranges[3 * t + 1], ranges[3 * t + 2]};
      if (row.kv_begin < 0 || row.kv_end < row.kv_begin) fail("attention: bad key range [{}, {})", row.kv_begin, row.kv_end);
      if (rows.max_keys > 0 && row.kv_end - row.kv_begin > rows.max_keys)
        fail("attention: key range [{}, {}) is longer than the step's bound of {} keys", row.kv_begin, row.kv_end,
             rows.max_keys);
      if (row.kv_end == row.kv_begin) continue;
      if (seq < 0 || seq >= S) fail("attention: row {} names block table {} of {}", t, seq, S);
      if ((row.kv_end - 1) / bs >= max_blocks)
        fail("attention: key range [{}, {}) runs past the {} blocks of a block table row", row.kv_begin, row.kv_end, max_blocks);
      row.block_table = tables + seq * max_blocks;
      for (int64_t b = row.kv_begin / bs; b <= (row.kv_end - 1) / bs; ++b)
        if (row.block_table[b] < 0 || row.block_table[b] >= layer.num_blocks)
          fail("attention: block table entry {} = {} is outside the cache's {} blocks", b, row.block_table[b],
               layer.num_blocks);
    }
    const int64_t group = n_heads / n_kv;
    const bool avx512 = cpu_isa() != CpuIsa::kAvx2;
    int64_t keys = 0;
    for (const Row& row : row_list) keys += row.kv_end - row.kv_begin;
    // One task per (rows, KV head): the query heads that share a KV head read each key and value row
    // once between them, and so do consecutive query rows that attend the same keys (the same block
    // table row and range: a vision tower's patches), up to kRowsPerTask of them (32: on the vision
    // tower 2.3-2.5x faster than 4 at 2394 patches, level with 64). Per query head the arithmetic is the
    // same whatever the group size or the rows batched together (dot8, softmax, then the values in
    // key order).
    constexpr int64_t kRowsPerTask = 32;
    std::vector<int64_t> task_rows{0};  // task i: query rows [task_rows[i], task_rows[i + 1])
    for (int64_t t = 1; t < T; ++t) {
      const Row &a = row_list[t - 1], &b = row_list[t];
      const bool same = a.block_table == b.block_table && a.kv_begin == b.kv_begin && a.kv_end == b.kv_end;
      if (!same || t - task_rows.back() >= kRowsPerTask) task_rows.push_back(t);
    }
    task_rows.push_back(T);
    const int64_t n_tasks = static_cast<int64_t>(task_rows.size()) - 1;
    auto attend_kv_head = [&](const auto* kcache, const auto* vcache, int64_t task) {
      const int64_t t0 = task_rows[task / n_kv], t1 = task_rows[task / n_kv + 1], kvh = task % n_kv;
      const Row& row = row_list[t0];
      const int64_t len = row.kv_end - row.kv_begin;
      const int64_t pairs = (t1 - t0) * group;  // (query row, query head) pairs, row-major
      if (len == 0) {
        for (int64_t t = t0; t < t1; ++t)
          for (int64_t g = 0; g < group; ++g) std::fill_n(head_ptr(out, T, t, kvh * group + g, d), d, 0.0f);
        return;
      }
      thread_local std::vector<float> scratch;
      thread_local std::vector<float*> heads;  // [pairs] query heads, then [pairs] output heads
      thread_local std::vector<int64_t> offsets;  // of each key's (and value's) row in the cache
      scratch.resize(pairs * (len + 8));
      float* scores = scratch.data();  // [pairs, len + 7]: one row per query head
      const int64_t ld = len + 7;
      heads.resize(2 * pairs);
      for (int64_t t = t0; t < t1; ++t)
        for (int64_t g = 0; g < group; ++g) {
          heads[(t - t0) * group + g] = head_ptr(q, T, t, kvh * group + g, d);
          heads[pairs + (t - t0) * group + g] = head_ptr(out, T, t, kvh * group + g, d);
        }
      // Rows of KV head kvh in key order, walked a cache block at a time.
      offsets.resize(len);
      for (int64_t pos = row.kv_begin; pos < row.kv_end;) {
        const int64_t block_end = std::min<int64_t>(row.kv_end, (pos / bs + 1) * bs);
        const int64_t base = static_cast<int64_t>(row.block_table[pos / bs]) * bs - pos / bs * bs;
        for (; pos < block_end; ++pos) offsets[pos - row.kv_begin] = ((base + pos) * n_kv + kvh) * d;
      }
      // Scores, 8 keys at a time (a last partial group repeats key 0; its extra scores are dropped).
      for (int64_t j0 = 0; j0 < len; j0 += 8) {
        decltype(kcache) keys[8];
        for (int i = 0; i < 8; ++i) keys[i] = kcache + offsets[j0 + i < len ? j0 + i : 0];
        for (int64_t g = 0; g < pairs; ++g) {
          float* sg = scores + g * ld + j0;
          dot8(heads[g], keys, d, sg);
          for (int i = 0; i < 8; ++i) sg[i] *= scale;
        }
      }
      // Softmax weights, then out = Σ_j p_j · v_j in key order, 64 output columns in registers at a time:
      // with AVX-512 for up to 4 (row, head) pairs from each load of a value row (values64_avx512), else
      // pair by pair; one FMA chain per output element either way, so the same bits.
      for (int64_t g = 0; g < pairs; ++g) {
        float* p = scores + g * ld;
        const float inv = 1.0f / exp_shifted_sum(p, len, *std::max_element(p, p + len));
        for (int64_t j = 0; j < len; ++j) p[j] *= inv;
      }
      const int64_t d64 = d / 64 * 64;
      const bool tail8 = avx512 && d64 > 0 && d - d64 >= 8;  // the last 64-column pass takes 8 more
      if (avx512) {
        thread_local std::vector<const float*> probs;  // [pairs] softmax rows
        probs.resize(pairs);
        for (int64_t g = 0; g < pairs; ++g) probs[g] = scores + g * ld;
        for (int64_t g = 0; g < pairs; g += 4)
          for (int64_t c = 0; c < d64; c += 64) {
            const float* const* pg = &probs[g];
            float* const* og = &heads[pairs + g];
            auto values = [&]<int H>() {
              if (tail8 && c + 64 == d64) values64_avx512<H, true>(pg, og, vcache, offsets.data(), len, c);
              else values64_avx512<H, false>(pg, og, vcache, offsets.data(), len, c);
            };
            switch (std::min<int64_t>(4, pairs - g)) {
              case 1: values.template operator()<1>(); break;
              case 2: values.template operator()<2>(); break;
              case 3: values.template operator()<3>(); break;
              default: values.template operator()<4>(); break;
            }
          }
      }
      for (int64_t g = 0; g < pairs; ++g) {
        const float* p = scores + g * ld;
        float* o = heads[pairs + g];
        int64_t c = avx512 ? d64 + (tail8 ? 8 : 0) : 0;
        for (; c + 64 <= d; c += 64) {
          __m256 acc[8];
          for (__m256& a : acc) a = _mm256_setzero_ps();
          for (int64_t j = 0; j < len; ++j) {
            const __m256 pj = _mm256_set1_ps(p[j]);
            const auto* v = vcache + offsets[j] + c;
#pragma GCC unroll 8
            for (int i = 0; i < 8; ++i) acc[i] = _mm256_fmadd_ps(pj, load8(v + 8 * i), acc[i]);
          }
          for (int i = 0; i < 8; ++i) _mm256_storeu_ps(o + c + 8 * i, acc[i]);
        }
        // Head dims that are not a multiple of 64 (the vision tower's 72): 8 columns at a time, then
        // column by column; each element the same FMA chain in key order as above.
        for (; c + 8 <= d; c += 8) {
          __m256 acc = _mm256_setzero_ps();
          for (int64_t j = 0; j < len; ++j) acc = _mm256_fmadd_ps(_mm256_set1_ps(p[j]), load8(vcache + offsets[j] + c), acc);
          _mm256_storeu_ps(o + c, acc);
        }
        for (; c < d; ++c) {
          float acc = 0.0f;
          for (int64_t j = 0; j < len; ++j) acc = std::fma(p[j], to_f32(vcache[offsets[j] + c]), acc);
          o[c] = acc;
        }
      }
    };
    auto kv_head = [&](int64_t task) {
      if (layer.dtype == DType::BF16)
        attend_kv_head(static_cast<const uint16_t*>(layer.k), static_cast<const uint16_t*>(layer.v), task);
      else
        attend_kv_head(static_cast<const float*>(layer.k), static_cast<const float*>(layer.v), task);
    };
    // Short contexts (decode over a few hundred keys) run on the caller; see kSerialMacs.
    if (keys * n_heads * d * 2 < kSerialMacs) {
      for (int64_t task = 0; task < n_tasks * n_kv; ++task) kv_head(task);
      return;
    }
    pool_.parallel_for(n_tasks * n_kv, kv_head);
  }

  void moe_route(const TensorView& logits, const TensorView* per_expert_scale, TensorView& ids,
                 TensorView& weights) override {
    check_f32_2d(logits, "moe_route logits");
    const int64_t T = logits.rows(), E = logits.cols(), k = ids.cols();
    if (k <= 0 || k > E) fail("moe_route: k = {} must be in [1, {}]", k, E);
    int32_t* expert_ids = const_cast<int32_t*>(check_ints<int32_t>(ids, DType::I32, T * k, "moe_route ids"));
    if (weights.dtype != DType::F32 || weights.numel() != T * k) fail("moe_route: weights must be F32 [{}, {}]", T, k);
    float* expert_weights = weights.as<float>();
    if (per_expert_scale && (per_expert_scale->numel() != E || !is_float_dtype(per_expert_scale->dtype)))
      fail("moe_route: per_expert_scale must be a float tensor of {} elements", E);
    std::vector<float> p(E);
    std::vector<int32_t> order(E);
    for (int64_t t = 0; t < T; ++t) {
      const float* l = logits.row<float>(t);
      const float mx = *std::max_element(l, l + E);
      float sum = 0;
      for (int64_t e = 0; e < E; ++e) sum += p[e] = std::exp(l[e] - mx);
      for (int64_t e = 0; e < E; ++e) p[e] /= sum;
      std::iota(order.begin(), order.end(), 0);
      std::partial_sort(order.begin(), order.begin() + k, order.end(),
                        [&](int32_t a, int32_t b) { return p[a] > p[b] || (p[a] == p[b] && a < b); });
      float top_sum = 0;
      for (int j = 0; j < k; ++j) top_sum += p[order[j]];
      for (int j = 0; j < k; ++j) {
        const int32_t e = order[j];
        expert_ids[t * k + j] = e;
        expert_weights[t * k + j] =
            p[e] / top_sum * (per_expert_scale ? load_f32(per_expert_scale->data, per_expert_scale->dtype, e) : 1.0f);
      }
    }
  }

  void moe_experts(const TensorView& x, const TensorView& ids, const TensorView& weights, const TensorView& gate_up,
                   const TensorView& down, TensorView& y) override {
    const MoeDims dims = check_moe_experts(x, ids, weights, gate_up, down, y);
    const int64_t T = dims.T, H = dims.H, E = dims.E, I = dims.I, k = dims.k;
    const int64_t I2 = 2 * I;
    // Read as flat [T·k] arrays below.
    if (ids.stride() != k || weights.stride() != k) fail("moe_experts: ids and weights must be dense [{}, {}]", T, k);
    const int32_t* expert_ids = ids.as<int32_t>();
    const float* expert_weights = weights.as<float>();
    for (int64_t i = 0; i < T * k; ++i)
      if (expert_ids[i] < 0 || expert_ids[i] >= E) fail("moe_experts: expert id {} outside [0, {})", expert_ids[i], E);
    for (int64_t t = 0; t < T; ++t) std::fill_n(y.row<float>(t), H, 0.0f);

    // Group the (row, slot) pairs by expert so each expert's weights stream from memory once per
    // chunk of at most kRowTaskMaxRows of its rows (prefill routes hundreds of rows to an expert, and
    // whole experts, of uneven sizes, balanced badly between threads).
    std::vector<std::vector<int64_t>> routed(E);
    for (int64_t i = 0; i < T * k; ++i) routed[expert_ids[i]].push_back(i);
    struct Chunk {
      int64_t e, j0, j1, out;  // expert, its routed pairs [j0, j1), first row of their output in moe_out_
    };
    std::vector<Chunk> chunks;
    int64_t rows = 0;
    for (int64_t e = 0; e < E; ++e)
      for (int64_t j0 = 0, n = static_cast<int64_t>(routed[e].size()); j0 < n; j0 += kRowTaskMaxRows) {
        const int64_t j1 = std::min(n, j0 + kRowTaskMaxRows);
        chunks.push_back({e, j0, j1, rows});
        rows += j1 - j0;
      }
    moe_out_.resize(rows * H);
    const size_t gu_bytes = gate_up.nbytes() / E, dn_bytes = down.nbytes() / E;
    // Chunk c's rows through gate_up, GeGLU and down into its part of moe_out_.
    auto expert = [&](int64_t c) {
      const Chunk& ch = chunks[c];
      const int64_t e = ch.e, n = ch.j1 - ch.j0;
      const int64_t* pairs = routed[e].data() + ch.j0;
      thread_local std::vector<float> xs, gu, act;
      xs.resize(n * H);
      gu.resize(n * I2);
      act.resize(n * I);
      for (int64_t j = 0; j < n; ++j) std::copy_n(x.row<float>(pairs[j] / k), H, &xs[j * H]);
      QuantParams gu_q, dn_q;  // expert e's slice of a stacked quantized weight
      run_matmul({xs.data(), H, static_cast<const char*>(gate_up.data) + e * gu_bytes, gate_up.dtype, gu.data(), I2, n,
                  I2, H, expert_quant(gate_up, e, gu_q)});
      for (int64_t j = 0; j < n; ++j) gelu_tanh_mul_row(&gu[j * I2], &gu[j * I2 + I], &act[j * I], I);
      run_matmul({act.data(), I, static_cast<const char*>(down.data) + e * dn_bytes, down.dtype, &moe_out_[ch.out * H], H,
                  n, H, I, expert_quant(down, e, dn_q)});
    };
    // With a chunk for every thread, one task per chunk (its matmuls then run on that thread) is one
    // pool round trip instead of two per chunk; otherwise the chunks' matmuls are split.
    const int64_t macs = rows * (I2 * H + H * I);
    if (static_cast<int64_t>(chunks.size()) >= pool_.size() && macs >= kSerialMacs) {
      pool_.parallel_for(static_cast<int64_t>(chunks.size()), expert);
    } else {
      for (int64_t c = 0; c < static_cast<int64_t>(chunks.size()); ++c) expert(c);
    }
    // Weighted sum in expert order, the same whichever path computed the experts.
    for (const Chunk& ch : chunks)
      for (int64_t j = ch.j0; j < ch.j1; ++j) {
        const int64_t pair = routed[ch.e][j];
        axpy_row(expert_weights[pair], &moe_out_[(ch.out + j - ch.j0) * H], y.row<float>(pair / k), H);
      }
  }

 private:
  static void check_kv_dtype(const KvLayer& layer, const char* op) {
    if (layer.dtype != DType::F32 && layer.dtype != DType::BF16)
      fail("{}: the CPU backend keeps its KV cache in F32 or BF16, not {}", op, dtype_name(layer.dtype));
  }

  // A norm weight of D elements as rms_norm_row reads it: F32, BF16 and F16 in place, others
  // converted to F32 once (into norm_weight_); {nullptr, F32} without a weight.
  std::pair<const void*, DType> norm_weight(const TensorView* weight, int64_t D, const char* op) {
    if (!weight) return {nullptr, DType::F32};
    if (!is_float_dtype(weight->dtype) || weight->numel() != D) fail("{}: weight must be a float tensor of {} elements", op, D);
    if (weight->dtype == DType::F32 || weight->dtype == DType::BF16 || weight->dtype == DType::F16)
      return {weight->data, weight->dtype};
    norm_weight_.resize(D);
    convert_row(weight->data, weight->dtype, D, norm_weight_.data());
    return {norm_weight_.data(), DType::F32};
  }

  // The heads of x as a RoPE op (`op`: rope, rms_norm_rope) takes it: F32 [T, heads, 2·half], each
  // head's elements contiguous. Returns the head count.
  static int64_t rope_heads(const TensorView& x, int64_t T, int64_t half, const char* op) {
    const int64_t d = 2 * half;
    const std::string name = std::string(op) + " x";
    check_f32_2d(x, name.c_str());
    if (half == 0 || x.numel() % (T * d) != 0)
      fail("{}: x of {} elements is not {} tokens × heads × {}", op, x.numel(), T, d);
    const int64_t n_heads = x.numel() / (T * d);
    check_heads(x, T, n_heads, d, name.c_str());
    return n_heads;
  }

  // RoPE's angles for positions [T] I32 and inv_freq [half] F32 into rope_cos_ / rope_sin_ [T, half],
  // as PyTorch computes them: float(pos) · inv_freq in f32, then cos and sin in f32. Returns {T, half}.
  std::pair<int64_t, int64_t> rope_angles(const TensorView& pos_view, const TensorView& freq_view, const char* op) {
    const int64_t T = pos_view.numel(), half = freq_view.numel();
    if (T == 0) return {0, half};
    const int32_t* positions = check_ints<int32_t>(pos_view, DType::I32, T, "rope positions");
    if (freq_view.dtype != DType::F32) fail("{}: inv_freq must be F32", op);
    const float* inv_freq = freq_view.as<float>();
    rope_cos_.resize(T * half);
    rope_sin_.resize(T * half);
    // Token by token in parallel: for a prefill the angles cost more than the rotations.
    for_rows(T, 8 * half, [&](int64_t t) {
      for (int64_t i = 0; i < half; ++i) {
        const float angle = static_cast<float>(positions[t]) * inv_freq[i];
        rope_cos_[t * half + i] = std::cos(angle);
        rope_sin_[t * half + i] = std::sin(angle);
      }
    });
    return {T, half};
  }

  // Expert e's part of the stacked weight w [E, N, K] as a 2-D quantized weight in `out`, or nullptr
  // when w is not quantized.
  static const QuantParams* expert_quant(const TensorView& w, int64_t e, QuantParams& out) {
    if (!w.quant) return nullptr;
    const QuantParams& q = *w.quant;
    const int64_t rows = w.dim(1), groups = q.groups(w.dim(2));
    out = q;
    auto slice = [&](TensorView& v, int64_t per_expert) {
      if (v.data) v.data = static_cast<char*>(v.data) + e * per_expert * dtype_size(v.dtype);
    };
    slice(out.scales, rows * groups);
    slice(out.zeros, rows * groups);
    slice(out.k_perm, w.dim(2));
    return &out;
  }

  using TileFn = void (*)(const MatmulArgs&, int64_t, int64_t, int64_t, int64_t);

  // p rounded up to a multiple of 64 bytes (the scratch vectors below hold 64 spare bytes). A kernel's
  // vector loads of x then stay within one cache line each where the row length allows it: loads that
  // straddle two lines halved the int4 kernel's streaming speed (docs/PERF.md).
  template <typename T>
  static T* align64(T* p) {
    return reinterpret_cast<T*>((reinterpret_cast<uintptr_t>(p) + 63) & ~uintptr_t{63});
  }

  // Chooses the kernel family for a and rewrites x as that family wants it (permuted for act-order
  // weights, packed even/odd, or split into two bf16 terms), in this thread's scratch: moe_experts runs
  // matmuls on several pool threads at once. The returned args stay valid until the thread's next call.
  static TileFn prepare_matmul(MatmulArgs& a) {
    const CpuIsa isa = cpu_isa();
    const bool avx512 = isa != CpuIsa::kAvx2;
    TileFn tile = avx512 ? cpu::matmul_tile_avx512 : cpu::matmul_tile_avx2;
    thread_local struct {
      std::vector<float> x_packed;   // x reordered for the exact BF16 kernels
      std::vector<uint16_t> x_split;  // x as two bf16 terms for the avx512-bf16 kernels
      std::vector<float> x_perm;     // x permuted for act-order quantized weights
    } scratch;
    if (a.q && a.q->k_perm.data) {  // act-order weights: column j multiplies x[k_perm[j]]
      const int32_t* perm = a.q->k_perm.as<int32_t>();
      for (int64_t j = 0; j < a.K; ++j)
        if (perm[j] < 0 || perm[j] >= a.K) fail("matmul: k_perm entry {} is outside [0, {})", perm[j], a.K);
      std::vector<float>& x_perm = scratch.x_perm;
      x_perm.resize(a.T * a.K);
      for (int64_t t = 0; t < a.T; ++t)
        for (int64_t j = 0; j < a.K; ++j) x_perm[t * a.K + j] = a.x[t * a.ldx + perm[j]];
      a.x = x_perm.data();
      a.ldx = a.K;
    }
    const bool bf16_quant = a.q && isa == CpuIsa::kAvx512Bf16 && cpu::quant_uses_bf16(*a.q, a.K);
    if (bf16_quant || (a.wtype == DType::BF16 && !a.q && isa == CpuIsa::kAvx512Bf16)) {
      // x as its two bf16 terms; quantized rows in whole blocks of codes (split_x_bf16_quant's layout).
      const int64_t block = bf16_quant ? cpu::kQuantBf16Block : 1;
      const int64_t Kp = (a.K + block - 1) / block * block;
      scratch.x_split.resize(a.T * 2 * Kp + 32);
      uint16_t* xs = align64(scratch.x_split.data());
      (bf16_quant ? cpu::split_x_bf16_quant : cpu::split_x_bf16)(a.x, a.ldx, a.T, a.K, xs);
      a.xs = xs;
      a.ldxs = 2 * Kp;
      tile = cpu::matmul_tile_avx512_bf16;
    } else if ((a.wtype == DType::BF16 && !a.q) || (a.q && cpu::quant_uses_table(*a.q, a.K, avx512 ? 16 : 8))) {
      // T·K floats, negligible next to the N·K weights.
      scratch.x_packed.resize(a.T * a.K + 16);
      float* xp = align64(scratch.x_packed.data());
      cpu::pack_x_even_odd(a.x, a.ldx, a.T, a.K, avx512 ? cpu::kBf16BlockAvx512 : cpu::kBf16BlockAvx2, xp);
      a.x = xp;
      a.ldx = a.K;
    }
    return tile;
  }

  // a restricted to rows [t0, t1) of x and y.
  static MatmulArgs rows_of(const MatmulArgs& a, int64_t t0, int64_t t1) {
    MatmulArgs r = a;
    r.x += t0 * a.ldx;
    r.y += t0 * a.ldy;
    r.T = t1 - t0;
    return r;
  }

  // A prefill-sized product (kRowTasksPerThread tasks of at least kRowTaskMinRows rows of x per
  // thread) runs as fn(t0, t1) over tasks of whole rows of x, every task preparing its own rows of x
  // and computing all N outputs of them; returns false, running nothing, for smaller products
  // (for_tiles). Tiles over N, as before, had every thread read all rows of x that the caller had
  // prepared alone (a serial pass), and write y in tiles whose edges share cache lines. The kernels
  // compute an output the same way whatever its tile, so the results are those of for_tiles.
  template <typename F>
  bool for_row_tasks(int64_t T, int64_t macs, F&& fn) {
    const int64_t min_tasks = kRowTasksPerThread * pool_.size();
    if (macs < kSerialMacs || T < kRowTaskMinRows * min_tasks) return false;
    const int64_t rows = std::min(kRowTaskMaxRows, T / min_tasks), tasks = (T + rows - 1) / rows;
    pool_.parallel_for(tasks, [&](int64_t i) { fn(i * rows, std::min(T, (i + 1) * rows)); });
    return true;
  }

  // Runs fn(n0, n1, t0, t1) over tiles of an [T, N] output whose rows of weights are row_bytes long.
  // Columns in blocks of a multiple of 4 (the kernel's row group), about 8 blocks per thread so the
  // dynamic scheduling evens out, but each reading at least its share of kMinTaskWeightBytes while every
  // thread still gets two blocks, and at most 512 rows; rows of x in chunks of 64 so prefill has tasks
  // and a chunk of x stays in cache while the weight block streams past it. Small products (under
  // kSerialMacs) run on the caller. Each output's operations are the same in any block (blocks start at
  // multiples of 4), so results depend neither on the path taken nor on the blocks' size.
  template <typename F>
  void for_tiles(int64_t T, int64_t N, int64_t row_bytes, int64_t macs, F&& fn) {
    const int64_t threads = pool_.size();
    auto rows4 = [](int64_t rows) { return (rows + 3) / 4 * 4; };
    const int64_t per_thread = (N + 8 * threads - 1) / (8 * threads), two_each = (N + 2 * threads - 1) / (2 * threads);
    const int64_t min_bytes = kMinTaskWeightBytes / std::clamp<int64_t>(T, 1, kTaskBytesRowsOfX);
    const int64_t min_rows = std::min(rows4(min_bytes / std::max<int64_t>(row_bytes, 1)), rows4(two_each));
    const int64_t nb = std::min<int64_t>(512, std::max({rows4(per_thread), min_rows, int64_t{4}}));
    const int64_t tb = 64;
    const int64_t n_blocks = (N + nb - 1) / nb, t_blocks = (T + tb - 1) / tb;
    auto run_tile = [&](int64_t i) {
      const int64_t n0 = (i % n_blocks) * nb, t0 = (i / n_blocks) * tb;
      fn(n0, std::min(N, n0 + nb), t0, std::min(T, t0 + tb));
    };
    if (macs < kSerialMacs) {
      for (int64_t i = 0; i < n_blocks * t_blocks; ++i) run_tile(i);
      return;
    }
    pool_.parallel_for(n_blocks * t_blocks, run_tile);
  }

  static int64_t weight_row_bytes(const MatmulArgs& a) {
    return a.K * (a.q ? quant_code_bits(a.q->code) : 8 * static_cast<int64_t>(dtype_size(a.wtype))) / 8;
  }

  void run_matmul(MatmulArgs a) {
    if (a.T == 0 || a.N == 0) return;
    if (for_row_tasks(a.T, a.N * a.K * a.T, [&](int64_t t0, int64_t t1) {
          MatmulArgs r = rows_of(a, t0, t1);
          const TileFn tile = prepare_matmul(r);
          tile(r, 0, r.N, 0, r.T);
        }))
      return;
    const TileFn tile = prepare_matmul(a);
    for_tiles(a.T, a.N, weight_row_bytes(a), a.N * a.K * a.T,
              [&](int64_t n0, int64_t n1, int64_t t0, int64_t t1) { tile(a, n0, n1, t0, t1); });
  }

  // fn(r) for each row, in parallel when the work is large enough, in tasks of whole rows holding at
  // least kSerialElems / 2 elements: each task is claimed through one atomic that the cores share, so a
  // task of one short row would cost more to hand out than to run.
  template <typename F>
  void for_rows(int64_t rows, int64_t cols, F&& fn) {
    if (rows * cols < kSerialElems || rows == 1) {
      for (int64_t r = 0; r < rows; ++r) fn(r);
      return;
    }
    const int64_t per_task = std::max<int64_t>(1, kSerialElems / 2 / std::max<int64_t>(cols, 1));
    pool_.parallel_for((rows + per_task - 1) / per_task, [&](int64_t i) {
      for (int64_t r = i * per_task; r < std::min(rows, (i + 1) * per_task); ++r) fn(r);
    });
  }

  // fn(r, c0, c1) over column chunks of each row, so a single long row (logits) is split too.
  template <typename F>
  void for_chunks(int64_t rows, int64_t cols, F&& fn) {
    if (rows * cols < kSerialElems) {
      for (int64_t r = 0; r < rows; ++r) fn(r, 0, cols);
      return;
    }
    const int64_t chunk = std::max<int64_t>(kSerialElems / 2, 1), per_row = (cols + chunk - 1) / chunk;
    pool_.parallel_for(rows * per_row, [&](int64_t i) {
      const int64_t r = i / per_row, c0 = (i % per_row) * chunk;
      fn(r, c0, std::min(cols, c0 + chunk));
    });
  }

  ThreadPool pool_;
  Communicator* comm_ = nullptr;
  uint64_t host_syncs_ = 0;
  HostTensor glu_up_;  // matmul_gelu_glu's up projection
  std::vector<float> norm_weight_, rope_cos_, rope_sin_, std_bias_, std_scale_;
  std::vector<float> moe_out_;  // the routed experts' outputs, expert after expert
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(int threads) {
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  return std::make_unique<CpuBackend>(threads);
}

}  // namespace tandem
