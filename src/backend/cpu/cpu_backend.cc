// The CPU backend: every op of backend.h on f32 activations, parallelised over a persistent thread
// pool. Matmuls go to the ISA-specific kernels of matmul_*.cc; the other ops are memory- or
// latency-bound and use baseline AVX2 (the binary's minimum ISA) directly.
//
// A CpuBackend is used by one caller thread at a time (it owns scratch buffers).
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

#include "backend/backend.h"
#include "backend/cpu/cpu_features.h"
#include "backend/dummy_values.h"
#include "backend/op_checks.h"
#include "backend/cpu/matmul.h"
#include "backend/cpu/thread_pool.h"
#include "backend/cpu/vec_math.h"
#include "util/half.h"

namespace tandem {
namespace {

using cpu::MatmulArgs;

// Element count below which an elementwise op runs on the caller alone: waking the pool costs
// a few microseconds, about what 16K elements take on one core.
constexpr int64_t kSerialElems = 16 * 1024;
// Matmuls below this many multiply-adds (~20-50 us of work) are not worth a thread-pool round trip.
constexpr int64_t kSerialMacs = 1 << 19;

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

// y[0:n] += alpha · x[0:n]
void axpy_row(float alpha, const float* x, float* y, int64_t n) {
  const __m256 va = _mm256_set1_ps(alpha);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
  for (; i < n; ++i) y[i] += alpha * x[i];
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

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(int threads) : pool_(threads) {}

  std::string name() const override {
    return fmt::format("cpu ({}{}, {} threads)", cpu_isa_name(cpu_isa()),
                       cpu_has_avx512_bf16() ? ", cpu has avx512-bf16" : "", pool_.size());
  }
  bool is_host() const override { return true; }

  void* alloc(size_t bytes) override {
    void* p = std::aligned_alloc(256, (std::max<size_t>(bytes, 1) + 255) / 256 * 256);
    if (!p) fail("out of host memory allocating {} MiB", bytes >> 20);
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

  void matmul(const TensorView& x, const TensorView& w, TensorView& y) override {
    const auto [T, N, K] = check_matmul(x, w, y, /*quant_ok=*/true);
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

  void rms_norm(const TensorView& x, const TensorView* weight, float eps, TensorView& y) override {
    check_f32_2d(x, "rms_norm x");
    check_f32_2d(y, "rms_norm y");
    check_same_shape(x, y, "rms_norm");
    const int64_t D = x.cols();
    const float* w = nullptr;
    if (weight) {
      if (!is_float_dtype(weight->dtype) || weight->numel() != D)
        fail("rms_norm: weight must be a float tensor of {} elements", D);
      norm_weight_.resize(D);
      convert_row(weight->data, weight->dtype, D, norm_weight_.data());
      w = norm_weight_.data();
    }
    for_rows(x.rows(), D, [&](int64_t r) {
      const float* xr = x.row<float>(r);
      float* yr = y.row<float>(r);
      const float inv = 1.0f / std::sqrt(dot(xr, xr, D) / static_cast<float>(D) + eps);
      for (int64_t i = 0; i < D; ++i) yr[i] = w ? xr[i] * inv * w[i] : xr[i] * inv;
    });
  }

  void rope(TensorView& x, const TensorView& pos_view, const TensorView& freq_view) override {
    const int64_t T = pos_view.numel(), half = freq_view.numel(), d = 2 * half;
    if (T == 0) return;
    const int32_t* positions = check_ints<int32_t>(pos_view, DType::I32, T, "rope positions");
    if (freq_view.dtype != DType::F32) fail("rope: inv_freq must be F32");
    const float* inv_freq = freq_view.as<float>();
    check_f32_2d(x, "rope x");
    if (half == 0 || x.numel() % (T * d) != 0) fail("rope: x of {} elements is not {} tokens × heads × {}", x.numel(), T, d);
    const int64_t n_heads = x.numel() / (T * d);
    check_heads(x, T, n_heads, d, "rope x");
    // Angles as PyTorch computes them: freqs = float(pos) · inv_freq in f32, then cos/sin in f32.
    rope_cos_.resize(T * half);
    rope_sin_.resize(T * half);
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t i = 0; i < half; ++i) {
        const float angle = static_cast<float>(positions[t]) * inv_freq[i];
        rope_cos_[t * half + i] = std::cos(angle);
        rope_sin_[t * half + i] = std::sin(angle);
      }
    }
    for_rows(T * n_heads, d, [&](int64_t th) {
      const int64_t t = th / n_heads;
      float* v = head_ptr(x, T, t, th % n_heads, d);
      const float* c = &rope_cos_[t * half];
      const float* s = &rope_sin_[t * half];
      for (int64_t i = 0; i < half; ++i) {
        const float a = v[i], b = v[i + half];
        v[i] = a * c[i] - b * s[i];
        v[i + half] = b * c[i] + a * s[i];
      }
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
      for (int64_t i = c0; i < c1; ++i) p[i] = cap * std::tanh(p[i] * inv);
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

  void kv_write(const TensorView& k, const TensorView& v, const KvLayer& layer, const TensorView& slot_view) override {
    const int64_t T = slot_view.numel(), n_kv = layer.n_kv_heads, d = layer.head_dim;
    if (T == 0) return;
    const int64_t* slots = check_ints<int64_t>(slot_view, DType::I64, T, "kv_write slots");
    if (layer.dtype != DType::F32) fail("kv_write: the CPU backend keeps its KV cache in F32, not {}", dtype_name(layer.dtype));
    check_heads(k, T, n_kv, d, "kv_write k");
    check_heads(v, T, n_kv, d, "kv_write v");
    const int64_t n_slots = static_cast<int64_t>(layer.num_blocks) * layer.block_size;
    for (int64_t t = 0; t < T; ++t)
      if (slots[t] < 0 || slots[t] >= n_slots) fail("kv_write: slot {} is outside the cache's {} slots", slots[t], n_slots);
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t h = 0; h < n_kv; ++h) {
        const int64_t dst = (slots[t] * n_kv + h) * d;
        std::copy_n(head_ptr(k, T, t, h, d), d, static_cast<float*>(layer.k) + dst);
        std::copy_n(head_ptr(v, T, t, h, d), d, static_cast<float*>(layer.v) + dst);
      }
    }
  }

  void attention(const TensorView& q, const KvLayer& layer, const AttentionRows& rows, float scale,
                 TensorView& out) override {
    const int64_t T = rows.ranges.rows(), n_kv = layer.n_kv_heads, d = layer.head_dim;
    if (T == 0) return;
    if (n_kv <= 0 || d <= 0 || layer.block_size <= 0) fail("attention: KV layer has no heads, head_dim or block_size");
    if (layer.dtype != DType::F32) fail("attention: the CPU backend keeps its KV cache in F32, not {}", dtype_name(layer.dtype));
    const int32_t* ranges = check_ints<int32_t>(rows.ranges, DType::I32, T * 3, "attention ranges");
    const int64_t S = rows.block_tables.rows(), max_blocks = rows.block_tables.cols();
    const int32_t* tables = check_ints<int32_t>(rows.block_tables, DType::I32, S * max_blocks, "attention block_tables");
    const float* kcache = static_cast<const float*>(layer.k);
    const float* vcache = static_cast<const float*>(layer.v);
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
    int64_t keys = 0;
    for (const Row& row : row_list) keys += row.kv_end - row.kv_begin;
    auto head = [&](int64_t th) {
      const int64_t t = th / n_heads, h = th % n_heads, kvh = h / group;
      const Row& row = row_list[t];
      const float* qv = head_ptr(q, T, t, h, d);
      float* o = head_ptr(out, T, t, h, d);
      std::fill_n(o, d, 0.0f);
      const int64_t len = row.kv_end - row.kv_begin;
      if (len == 0) return;
      thread_local std::vector<float> scores;
      scores.resize(len);
      auto slot_of = [&](int64_t pos) { return static_cast<int64_t>(row.block_table[pos / bs]) * bs + pos % bs; };
      float max_score = -INFINITY;
      for (int64_t j = 0; j < len; ++j) {
        const float* kp = kcache + (slot_of(row.kv_begin + j) * n_kv + kvh) * d;
        scores[j] = dot(qv, kp, d) * scale;
        max_score = std::max(max_score, scores[j]);
      }
      const float inv = 1.0f / exp_shifted_sum(scores.data(), len, max_score);
      for (int64_t j = 0; j < len; ++j)
        axpy_row(scores[j] * inv, vcache + (slot_of(row.kv_begin + j) * n_kv + kvh) * d, o, d);
    };
    // Short contexts (decode over a few hundred keys) run on the caller; see kSerialMacs.
    if (keys * n_heads * d * 2 < kSerialMacs) {
      for (int64_t th = 0; th < T * n_heads; ++th) head(th);
      return;
    }
    pool_.parallel_for(T * n_heads, head);
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
    check_f32_2d(x, "moe_experts x");
    const int64_t k = ids.cols();
    const int32_t* expert_ids = check_ints<int32_t>(ids, DType::I32, x.rows() * k, "moe_experts ids");
    if (weights.dtype != DType::F32 || weights.numel() != x.rows() * k)
      fail("moe_experts: weights must be F32 [{}, {}]", x.rows(), k);
    const float* expert_weights = weights.as<float>();
    check_f32_2d(y, "moe_experts y");
    check_same_shape(x, y, "moe_experts");
    if (gate_up.ndim != 3 || down.ndim != 3 || gate_up.row_stride || down.row_stride)
      fail("moe_experts: gate_up and down must be dense 3-D tensors");
    for (const TensorView* w : {&gate_up, &down}) {
      if (w->quant) check_quant_weight(*w, "moe_experts");
      else if (!is_float_dtype(w->dtype)) fail("moe_experts: expert weights must be float or quantized");
    }
    const int64_t T = x.rows(), H = x.cols(), E = gate_up.dim(0), I2 = gate_up.dim(1), I = I2 / 2;
    if (gate_up.dim(2) != H || I2 % 2 != 0 || down.dim(0) != E || down.dim(1) != H || down.dim(2) != I)
      fail("moe_experts: gate_up [{}, {}, {}] and down [{}, {}, {}] do not fit H = {}", E, I2, gate_up.dim(2),
           down.dim(0), down.dim(1), down.dim(2), H);
    for (int64_t i = 0; i < T * k; ++i)
      if (expert_ids[i] < 0 || expert_ids[i] >= E) fail("moe_experts: expert id {} outside [0, {})", expert_ids[i], E);
    for (int64_t t = 0; t < T; ++t) std::fill_n(y.row<float>(t), H, 0.0f);

    // Group the (row, slot) pairs by expert so each expert's weights stream from memory once.
    std::vector<std::vector<int64_t>> routed(E);
    for (int64_t i = 0; i < T * k; ++i) routed[expert_ids[i]].push_back(i);
    const size_t gu_bytes = gate_up.nbytes() / E, dn_bytes = down.nbytes() / E;
    for (int64_t e = 0; e < E; ++e) {
      const std::vector<int64_t>& pairs = routed[e];
      const int64_t n = pairs.size();
      if (n == 0) continue;
      moe_x_.resize(n * H);
      moe_gu_.resize(n * I2);
      moe_act_.resize(n * I);
      moe_out_.resize(n * H);
      for (int64_t j = 0; j < n; ++j) std::copy_n(x.row<float>(pairs[j] / k), H, &moe_x_[j * H]);
      QuantParams gu_q, dn_q;  // expert e's slice of a stacked quantized weight
      run_matmul({moe_x_.data(), H, static_cast<const char*>(gate_up.data) + e * gu_bytes, gate_up.dtype,
                  moe_gu_.data(), I2, n, I2, H, expert_quant(gate_up, e, gu_q)});
      for (int64_t j = 0; j < n; ++j) gelu_tanh_mul_row(&moe_gu_[j * I2], &moe_gu_[j * I2 + I], &moe_act_[j * I], I);
      run_matmul({moe_act_.data(), I, static_cast<const char*>(down.data) + e * dn_bytes, down.dtype,
                  moe_out_.data(), H, n, H, I, expert_quant(down, e, dn_q)});
      for (int64_t j = 0; j < n; ++j) axpy_row(expert_weights[pairs[j]], &moe_out_[j * H], y.row<float>(pairs[j] / k), H);
    }
  }

 private:
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

  void run_matmul(MatmulArgs a) {
    if (a.T == 0 || a.N == 0) return;
    const bool avx512 = cpu_isa() == CpuIsa::kAvx512;
    auto* tile = avx512 ? cpu::matmul_tile_avx512 : cpu::matmul_tile_avx2;
    if (a.q && a.q->k_perm.data) {  // act-order weights: column j multiplies x[k_perm[j]]
      const int32_t* perm = a.q->k_perm.as<int32_t>();
      for (int64_t j = 0; j < a.K; ++j)
        if (perm[j] < 0 || perm[j] >= a.K) fail("matmul: k_perm entry {} is outside [0, {})", perm[j], a.K);
      x_perm_.resize(a.T * a.K);
      for (int64_t t = 0; t < a.T; ++t)
        for (int64_t j = 0; j < a.K; ++j) x_perm_[t * a.K + j] = a.x[t * a.ldx + perm[j]];
      a.x = x_perm_.data();
      a.ldx = a.K;
    } else if (a.wtype == DType::BF16 && !a.q) {  // T·K floats, negligible next to the N·K weights
      x_packed_.resize(a.T * a.K);
      cpu::pack_x_even_odd(a.x, a.ldx, a.T, a.K, avx512 ? cpu::kBf16BlockAvx512 : cpu::kBf16BlockAvx2,
                           x_packed_.data());
      a.x = x_packed_.data();
      a.ldx = a.K;
    }
    // Columns in blocks of a multiple of 4 (the kernel's row group), about 8 blocks per thread so the
    // dynamic scheduling evens out; rows of x in chunks of 64 so prefill has tasks and a chunk of x
    // stays in cache while the weight block streams past it.
    const int64_t per_thread = (a.N + 8 * pool_.size() - 1) / (8 * pool_.size());
    const int64_t nb = std::clamp<int64_t>((per_thread + 3) / 4 * 4, 16, 512);
    const int64_t tb = 64;
    const int64_t n_blocks = (a.N + nb - 1) / nb, t_blocks = (a.T + tb - 1) / tb;
    auto run_tile = [&](int64_t i) {
      const int64_t n0 = (i % n_blocks) * nb, t0 = (i / n_blocks) * tb;
      tile(a, n0, std::min(a.N, n0 + nb), t0, std::min(a.T, t0 + tb));
    };
    // Small products (a few tens of microseconds) run on the caller: waking the pool costs more
    // than it saves. Same tiles either way, so results do not depend on the path taken.
    if (a.N * a.K * a.T < kSerialMacs) {
      for (int64_t i = 0; i < n_blocks * t_blocks; ++i) run_tile(i);
      return;
    }
    pool_.parallel_for(n_blocks * t_blocks, run_tile);
  }

  // fn(r) for each row, in parallel when the work is large enough.
  template <typename F>
  void for_rows(int64_t rows, int64_t cols, F&& fn) {
    if (rows * cols < kSerialElems || rows == 1) {
      for (int64_t r = 0; r < rows; ++r) fn(r);
      return;
    }
    pool_.parallel_for(rows, fn);
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
  uint64_t host_syncs_ = 0;
  std::vector<float> x_packed_;  // x reordered for the BF16 kernels
  std::vector<float> x_perm_;    // x permuted for act-order quantized weights
  std::vector<float> norm_weight_, rope_cos_, rope_sin_, std_bias_, std_scale_;
  std::vector<float> moe_x_, moe_gu_, moe_act_, moe_out_;  // per-expert gathered rows and activations
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(int threads) {
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  return std::make_unique<CpuBackend>(threads);
}

}  // namespace tandem
