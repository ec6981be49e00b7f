// The op interface every backend implements (CPU and CUDA). Ops work at the level of fused
// transformer steps so the model code reads like the paper and each backend may fuse as it likes.
//
// Memory belongs to the backend: every TensorView an op reads or writes lives in memory the backend
// allocated (or, on the CPU backend, any host memory), including integer inputs such as token ids,
// positions, KV slots, block tables and expert ids. Model code fills them with one upload per step
// and reads results back with download; no host pointer crosses an op, so a CUDA step runs with no
// host round trip between ops.
//
// Backends check shapes and dtypes on the host. Integer inputs in device memory cannot be checked
// there: the CPU backend fails on an id, slot or table entry out of range, the CUDA backend's kernels
// never read or write out of bounds and give zeros for such rows instead. Model code plans valid
// inputs on the host, so neither happens in a correct step.
//
// Conventions: activations are F32; weights are in their stored dtype (F32, BF16, F16, F8_E4M3) and
// are never converted up front; every op accumulates in f32. Linear weights are PyTorch-style
// [out, in], so matmul computes y = x · Wᵀ. Shapes are written beside each argument. Ops on one
// backend run in issue order; download() waits for everything issued before it.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>

#include "backend/communicator.h"
#include "backend/tensor.h"

namespace tandem {

// One layer's paged KV storage: K and V each [num_blocks, block_size, n_kv_heads, head_dim] of
// `dtype` (F32, or BF16 where the backend supports it). A token's slot is
// block_table[pos / block_size] * block_size + pos % block_size.
struct KvLayer {
  void* k = nullptr;
  void* v = nullptr;
  DType dtype = DType::F32;
  int32_t num_blocks = 0;
  int32_t block_size = 0;
  int32_t n_kv_heads = 0;
  int32_t head_dim = 0;
};

// What each query row of an attention op may see: the keys at positions [kv_begin, kv_end) of the
// sequence whose pages are listed in row `table` of block_tables. Causality, sliding windows and the
// drafter's frozen view are all expressed through these ranges, so the op knows no masking rules.
struct AttentionRows {
  TensorView ranges;        // [T, 3] I32: (table, kv_begin, kv_end) per query row
  TensorView block_tables;  // [S, max_blocks] I32: one row per sequence
  // No row's range is longer than this (a sliding window); 0: only the table's width bounds them.
  // Lets a backend size its launch without looking at the ranges.
  int64_t max_keys = 0;
};

// One step of Backend::rms_norms over [R, D] F32 rows: out = RMS(in) · weight, or with `add`
// out += RMS(in) · weight; then, when scale ≠ 1, out *= scale (a separate rounding, as scale() does).
struct RmsNormStep {
  const TensorView* in = nullptr;
  const TensorView* weight = nullptr;  // [D] any float dtype, or nullptr for the weightless norm
  TensorView* out = nullptr;           // may be in itself
  bool add = false;
  float scale = 1.0f;
};

// What Backend::run_recorded keeps between calls for one step shape (a CUDA graph on the CUDA backend).
struct Recording {
  virtual ~Recording() = default;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;  // e.g. "cpu (avx512, 2 threads)", "cuda:0 (NVIDIA H200, sm_90)"
  virtual bool is_host() const = 0;      // true when backend memory is ordinary host memory

  // --- Memory ---
  // Aligned (256 B) memory of this backend; throws tandem::Error naming the size when none is left.
  virtual void* alloc(size_t bytes) = 0;
  virtual void free(void* p) = 0;
  // host → backend memory (ordered with the ops), and backend → host (waits for pending ops).
  virtual void upload(void* dst, const void* host_src, size_t bytes) = 0;
  virtual void download(void* host_dst, const void* src, size_t bytes) = 0;
  // Waits until every issued op has finished (a no-op where ops are synchronous).
  virtual void synchronize() = 0;
  // Bytes of backend memory currently free and in total (0, 0 where unknown).
  virtual void memory_info(size_t* free_bytes, size_t* total_bytes) const = 0;
  // How many times the host has waited for the backend so far (downloads and synchronize()): the
  // debug counter that shows a step makes exactly one such wait.
  virtual uint64_t host_syncs() const = 0;

  // --- Recorded steps (CUDA graphs) ---
  // Runs `issue` (a function that issues ops), or replays the ops it issued in an earlier call with the
  // same `recording`. The caller keeps one recording per step shape: a replay is right only when
  // `issue` would issue the same ops with the same host-side arguments (shapes, scalars, views) and
  // reads its inputs from backend memory. The backend re-records after any alloc() or free(), so a
  // tensor that grew is seen at its new address; the first call after such a change runs `issue`
  // directly (letting scratch grow), the next one records. Ops inside must not wait for the host
  // (download(), synchronize()). The CPU backend, and any backend with recording off, just runs `issue`.
  virtual void run_recorded(std::unique_ptr<Recording>& recording, const std::function<void()>& issue) {
    (void)recording;
    issue();
  }
  // Turns recording on or off (vLLM's --enforce-eager turns it off); on by default where supported.
  virtual void set_recording(bool on) { (void)on; }

  // --- Concurrency ---
  // Issues the ops of `a`, then those of `b`, where neither reads what the other writes (both may read
  // what earlier ops wrote): a backend may run the two at the same time (CUDA: `a` on a second stream
  // forked from the first and joined back, recorded graphs included), so that small ops of one overlap
  // the other's. Ops issued after it see both results. Neither may call all_reduce, download or
  // synchronize. The CPU backend runs a, then b.
  virtual void concurrently(const std::function<void()>& a, const std::function<void()>& b) {
    a();
    b();
  }

  // --- Data movement ---
  // dst = src for 2-D views of one dtype (either may have a row stride).
  virtual void copy(const TensorView& src, TensorView& dst) = 0;
  // dst[r, :] = src[ids[r], :]   src [N, C] any dtype, ids [R] I32, dst [R, C] of src's dtype.
  virtual void gather_rows(const TensorView& src, const TensorView& ids, TensorView& dst) = 0;
  // Fills a BF16 tensor with seeded values center ± half_width, the same on every backend
  // (element i depends only on seed and i): the weights of --load-format dummy.
  virtual void fill_dummy(TensorView& t, uint64_t seed, float center, float half_width) = 0;
  // Called once on each quantized weight whose codes, scales and zeros are in this backend's memory,
  // before any op reads it: a backend may rewrite the codes in place into the order its kernels read
  // (the CUDA backend's tensor-core path: mma_quant.cuh). Afterwards only this backend's ops read them,
  // and nothing writes them: a backend may treat them as constants (the CUDA matmuls load them before
  // waiting for the previous kernel).
  virtual void prepare_quant(const TensorView& w) { (void)w; }

  // --- Layers ---
  // y[T,N] = x[T,K] · w[N,K]ᵀ.   w: F32/BF16/F16/F8_E4M3, x and y: F32 (y may have a row stride).
  virtual void matmul(const TensorView& x, const TensorView& w, TensorView& y) = 0;

  // The GeGLU MLP's first half: out[T,I] = gelu_tanh(x · gateᵀ) ⊙ (x · upᵀ), gate and up [I,K] of
  // any weight dtype (quantized too). The same values as matmul, matmul and gelu_tanh_mul, in one op.
  virtual void matmul_gelu_glu(const TensorView& x, const TensorView& gate, const TensorView& up, TensorView& out) = 0;

  // y1[T,N1] = x · w1ᵀ and y2[T,N2] = x · w2ᵀ: two projections of one x (a layer's K and V). The same
  // values as the two matmuls, which is what this default issues; a backend may run them as one launch.
  virtual void matmul_pair(const TensorView& x, const TensorView& w1, TensorView& y1, const TensorView& w2,
                           TensorView& y2) {
    matmul(x, w1, y1);
    matmul(x, w2, y2);
  }

  // y[T,H] = table[ids[t], :] · scale   (ids [T] I32, table [V,H] in any float dtype).
  virtual void embed(const TensorView& ids, const TensorView& table, float scale, TensorView& y) = 0;

  // Row-wise RMSNorm over the last dim D: y = x · (mean(x²) + eps)^-½ · w.  x, y [R,D] (may alias);
  // weight [D] in any float dtype, or nullptr for the weightless norm (w ≡ 1).
  virtual void rms_norm(const TensorView& x, const TensorView* weight, float eps, TensorView& y) = 0;
  // The sandwich norm's residual step: x += y · (mean(y²) + eps)^-½ · w, row-wise (y, x [R,D]; y is
  // not written). One op instead of rms_norm + add: a decode step has three per layer.
  virtual void rms_norm_add(const TensorView& y, const TensorView* weight, float eps, TensorView& x) = 0;

  // The steps in order, over views of one shape [R, D], each pair of them either the same view or not
  // overlapping: the same values as issuing rms_norm / rms_norm_add and scale step by step, which is
  // what this default does. A backend may run the chain in one pass (CUDA: one launch, a row's values
  // kept in registers from step to step): a sandwich-norm layer's residual add and the norms that
  // read its result, a dozen small kernels a decode layer, become two.
  virtual void rms_norms(std::span<const RmsNormStep> steps, float eps);

  // In-place rotate-half RoPE on x [T, n_heads, d]: pairs (i, i + d/2) rotated by positions[t] ·
  // inv_freq[i], i < d/2 (positions [T] I32, inv_freq [d/2] F32; zeros leave a pair unrotated, as
  // proportional RoPE does).
  virtual void rope(TensorView& x, const TensorView& positions, const TensorView& inv_freq) = 0;
  // Attention's query heads: x [T, n_heads, d] ← rope(RMS(x) · weight) head by head, in place (weight
  // [d] any float dtype; positions and inv_freq as rope's). The same values as rms_norm over the
  // [T·n_heads, d] rows followed by rope, in one op (a decode step has one per layer).
  virtual void rms_norm_rope(TensorView& x, const TensorView& weight, float eps, const TensorView& positions,
                             const TensorView& inv_freq) = 0;

  // out[R,I] = gelu_tanh(gate[R,I]) ⊙ up[R,I]   (gate/up may be strided halves of one tensor).
  virtual void gelu_tanh_mul(const TensorView& gate, const TensorView& up, TensorView& out) = 0;

  // y = a + b elementwise (any may alias).      y += alpha · x.      x *= s.
  virtual void add(const TensorView& a, const TensorView& b, TensorView& y) = 0;
  virtual void axpy(float alpha, const TensorView& x, TensorView& y) = 0;
  virtual void scale(TensorView& x, float s) = 0;

  // x = cap · tanh(x / cap), in place.
  virtual void softcap(TensorView& x, float cap) = 0;

  // x = min(max(x, lo), hi), in place (the vision tower's clipped linears; ±inf bounds pass x through).
  virtual void clamp(TensorView& x, float lo, float hi) = 0;

  // y[r, i] = (x[r, i] − bias[i]) · scale[i]   x, y [R, D] F32 (may alias); bias, scale [D] any float
  // dtype (the vision tower's standardize).
  virtual void standardize(const TensorView& x, const TensorView& bias, const TensorView& scale, TensorView& y) = 0;

  // Writes a layer's new keys and values into its cache at slots[t] (slots [T] I64), normed from
  // the raw projections k, v [T, n_kv, d]: K = rope(RMS(k) · k_norm) (k_norm [d] any float dtype;
  // positions and inv_freq as rope's), V = RMS(v) without a weight. v may be k itself (K=V layers,
  // whose V is the raw K projection's weightless norm); neither is written. The same values as
  // rms_norm and rope into scratch and a plain copy (rounded to nearest even in a BF16 cache), in one op.
  virtual void kv_write_normed(const TensorView& k, const TensorView& v, const TensorView& k_norm, float eps,
                               const TensorView& positions, const TensorView& inv_freq, const KvLayer& layer,
                               const TensorView& slots) = 0;

  // out[T, n_heads·d] = softmax(q·Kᵀ · scale) · V per query row t and head h, over the keys that
  // rows allows row t; query head h reads KV head h / (n_heads / n_kv). q [T, n_heads, d].
  virtual void attention(const TensorView& q, const KvLayer& layer, const AttentionRows& rows, float scale,
                         TensorView& out) = 0;

  // Router: per row of logits [T,E], softmax over all E, take the top-k (k = ids.cols()),
  // renormalise them to sum 1, then multiply by per_expert_scale[e] (F32/BF16, or nullptr). Ties
  // break toward the lower index. Writes expert ids [T,k] I32 and weights [T,k] F32.
  virtual void moe_route(const TensorView& logits, const TensorView* per_expert_scale, TensorView& ids,
                         TensorView& weights) = 0;

  // y[T,H] = Σ_j w[t,j] · down[e] · (gelu_tanh(g) ⊙ u), [g | u] = gate_up[e] · x[t], e = ids[t,j].
  // gate_up [E, 2I, H] (gate rows first), down [E, H, I]; both any weight dtype. ids [T,k] I32,
  // weights [T,k] F32 as moe_route writes them.
  virtual void moe_experts(const TensorView& x, const TensorView& ids, const TensorView& weights,
                           const TensorView& gate_up, const TensorView& down, TensorView& y) = 0;

  // --- Tensor parallelism ---
  // This rank's communicator (nullptr, the default: a single rank). The backend does not own it.
  // Throws tandem::Error where the backend cannot all-reduce over it.
  virtual void set_communicator(Communicator* comm) = 0;
  // x[R, C] F32 (contiguous) ← the sum of every rank's x, in rank order (the same bits on every rank):
  // the partial outputs of a row-parallel projection made whole. The identity on a single rank.
  virtual void all_reduce(TensorView& x) = 0;

  // --- Selection ---
  // out[r] = labels[r, j*] where j* = argmax_j x[r, j] (x [R,N] F32; labels [R,N] I32, or nullptr
  // for labels[r, j] = j). Ties go to the lowest label.
  virtual void argmax_rows(const TensorView& x, const TensorView* labels, TensorView& out) = 0;
  // out[r, :] = the k = out.cols() column indices of the largest x[r, :], largest first; ties
  // toward the lower index.   x [R,N] F32, out [R,k] I32.
  virtual void topk_rows(const TensorView& x, TensorView& out) = 0;
  // Samples one token per row of logits [R,V] F32 as backend/sampling.h defines it (temperature,
  // top-k, top-p, min-p, then the draw or the acceptance test of a draft), so only token ids leave
  // the backend. params [R,4] F32 (sampling::RowParams: temperature, top_k, top_p, min_p; temperature
  // <= 0 is greedy), uniforms [R,2] F32 in [0, 1), multiples of 2^-24, drawn by the caller from each
  // request's own RNG; drafts [R] I32 (-1: none). out [R] I32: the draft itself when accepted, else
  // a token drawn from the distribution with the draft removed. V < 2^23. The CPU and CUDA backends
  // give the same tokens for the same inputs.
  virtual void sample_rows(const TensorView& logits, const TensorView& params, const TensorView& uniforms,
                           const TensorView& drafts, TensorView& out) = 0;
};

// threads <= 0: one per available core.
std::unique_ptr<Backend> make_cpu_backend(int threads = 0);

// "cpu", "cuda" or "cuda:N"; "auto" is cuda when this build has CUDA and a GPU is present, else cpu.
// threads: CPU worker threads (0: all cores). Throws tandem::Error for a device that is not there.
std::unique_ptr<Backend> make_backend(const std::string& device, int threads = 0);
// Whether this build has the CUDA backend and sees at least one GPU.
bool cuda_available();

// An owning allocation of backend memory (move-only).
class Buffer {
 public:
  Buffer() = default;
  Buffer(Backend& be, size_t bytes) : be_(&be), bytes_(bytes), p_(bytes ? be.alloc(bytes) : nullptr) {}
  Buffer(Buffer&& o) noexcept { *this = std::move(o); }
  Buffer& operator=(Buffer&& o) noexcept {
    if (this != &o) {
      reset();
      be_ = o.be_, bytes_ = o.bytes_, p_ = o.p_;
      o.p_ = nullptr, o.bytes_ = 0;
    }
    return *this;
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() { reset(); }

  void* data() const { return p_; }
  size_t bytes() const { return bytes_; }
  void reset() {
    if (p_) be_->free(p_);
    p_ = nullptr, bytes_ = 0;
  }

 private:
  Backend* be_ = nullptr;
  size_t bytes_ = 0;
  void* p_ = nullptr;
};

// A tensor in backend memory that grows on demand (scratch activations, per-step inputs). Its
// address changes only when it grows, so a workspace sized once for the largest step is stable.
class Tensor {
 public:
  explicit Tensor(Backend& be) : be_(&be) {}

  // Views `dims` of dtype t, reallocating (contents lost) only when more bytes are needed.
  TensorView& resize(DType t, std::initializer_list<int64_t> dims) {
    TensorView v(t, nullptr, dims);
    if (v.nbytes() > buf_.bytes()) buf_ = Buffer(*be_, (v.nbytes() + 255) / 256 * 256);
    v.data = buf_.data();
    view_ = v;
    return view_;
  }
  const TensorView& view() const { return view_; }
  TensorView& view() { return view_; }
  operator const TensorView&() const { return view_; }
  Backend& backend() const { return *be_; }

 private:
  Backend* be_;
  Buffer buf_;
  TensorView view_;
};

// Copies of a backend tensor's rows to host memory and of host data to a backend tensor.
HostTensor to_host(Backend& be, const TensorView& t);
void upload_to(Backend& be, const void* host, TensorView& dst);

}  // namespace tandem
