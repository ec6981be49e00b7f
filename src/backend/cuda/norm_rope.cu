// Per-token ops around attention: embed (table rows × scale), rms_norms (a chain of row norms, the
// residual adds among them; rms_norm and rms_norm_add are chains of one step), rope, and the fused
// heads ops rms_norm_rope (query heads, in place) and kv_write_normed (new K and V rows normed, K
// rotated, into the paged cache).
//
// rms_norms is one CTA per row, sized so that each thread holds at most PER elements of the row in
// registers: each step's row is read once (or taken from the registers an earlier step left it in),
// reduced across the CTA, scaled and written (in and out may alias). embed and rope are grid-stride
// elementwise kernels over (token, element) and (token, head, pair). Math follows the CPU backend:
// 1/sqrtf (IEEE), angle = float(pos) · inv_freq in f32 then cosf/sinf (the accurate library
// versions, not the __cosf/__sinf intrinsics). Device ids outside the table give a zero row instead
// of a read out of bounds.
//
// The fused heads ops run one CTA per head row with rms_norm's thread count and element layout and
// its reduction (row_sum_squares), and RoPE's pair rotation (rope_rotate), so their values are
// bitwise those of rms_norm, then rope, then a plain copy: a decode layer's six small kernels (two
// RoPEs, three head norms, the KV write) become two.
#include <algorithm>

#include "backend/cuda/cuda_common.cuh"

namespace tandem {

using namespace cu;

namespace {

__global__ void embed_kernel(const int32_t* __restrict__ ids, const void* __restrict__ table, int wt, int64_t ld_table,
                             int64_t V, float scale, Mat y) {
  begin_kernel();
  const int64_t n = y.rows * y.cols;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = i / y.cols, c = i % y.cols;
    const int32_t id = ids[t];
    y.p[t * y.ld + c] = id >= 0 && id < V ? load_any(table, wt, id * ld_table + c) * scale : 0.0f;
  }
}

// Σ v[j]² of a row whose element threadIdx.x + j · blockDim.x each thread holds in v[j] for j < valid
// (the slots after it are past the row's end and not read), in one fixed order: each thread's elements
// in j order, a butterfly within each warp, then the warps in order (through s_part, 32 floats of
// shared memory, 16-byte aligned). Every thread gets the sum.
// The warps' sums are read four at a time (one 16-byte load each): a chain of one shared-memory load
// per warp, each waiting for the one before, cost a CTA of 16 warps hundreds of cycles a reduction.
template <int PER>
__device__ __forceinline__ float row_sum_squares(const float (&v)[PER], int valid, float* s_part) {
  float ss = 0.0f;
#pragma unroll
  for (int j = 0; j < PER; ++j)
    if (j < valid) ss = fmaf(v[j], v[j], ss);
  ss = warp_sum(ss);
  const int warps = blockDim.x / 32;
  if (warps > 1) {
    if (threadIdx.x % 32 == 0) s_part[threadIdx.x / 32] = ss;
    __syncthreads();
    ss = 0.0f;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      if (4 * i >= warps) break;
      const float4 part = reinterpret_cast<const float4*>(s_part)[i];
      const float p[4] = {part.x, part.y, part.z, part.w};
#pragma unroll
      for (int e = 0; e < 4; ++e)
        if (4 * i + e < warps) ss += p[e];
    }
  }
  return ss;
}

// Rotate-half RoPE of the pair (a, b) = (x[i], x[i + half]) by an angle with cosine c and sine s:
// first the new x[i], then the new x[i + half]. One expression for rope and the fused ops (so the
// compiler contracts them into the same FMAs).
__device__ __forceinline__ float rope_rotate(float a, float b, float c, float s, bool second) {
  return second ? b * c + a * s : a * c - b * s;
}

// The most steps one rms_norms launch takes (a longer chain runs as several launches), and the most
// threads of its CTAs: at most 512 leaves a thread the registers for four rows of PER elements (the
// kept row, the step's input, weight and previous output; at 8 elements three more, the next step's
// weights and the rows it reads ahead) without spilling.
constexpr int kMaxNormSteps = 6;
constexpr int kNormThreads = 512;

// A measuring build (CUDAFLAGS=-DTANDEM_NORM_STAMPS, docs/GPU.md): thread 0 of each one-row rms_norms
// launch reads the global nanosecond timer when its CTA starts, when the wait returns, after each step's
// reduction and at each step's end, and prints them with its SM for kStampLaunches launches after
// kStampSkip (warm-up; a 26B-A4B decode step has 62), lines starting "NORMSTAMP". A step's time inside the
// chain, which no trace of whole kernels shows (docs/PERF.md, forty-second session).
#ifdef TANDEM_NORM_STAMPS
constexpr unsigned kStampSkip = 620, kStampLaunches = 124;
__device__ unsigned g_norm_stamp_launches;
__device__ __forceinline__ unsigned long long global_ns() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}
__device__ __forceinline__ unsigned sm_id() {
  unsigned v;
  asm volatile("mov.u32 %0, %%smid;" : "=r"(v));
  return v;
}
#define NORM_STAMP(slot)                          \
  do {                                            \
    if (threadIdx.x == 0) s_stamp[slot] = global_ns(); \
  } while (0)
#else
#define NORM_STAMP(slot) \
  do {                   \
  } while (0)
#endif

// One step of rms_norms_kernel (RmsNormStep). in_regs / old_regs: the step's input rows / (add) its
// output's previous values are the rows the kernel kept from an earlier step (keep), in registers,
// not read back from memory. same_sum: the step's input is the rows the step before it normed, left
// unchanged by it (the three norms of a MoE layer's h1), so it reuses that step's scale factor, the
// same value, instead of reducing the row again. ahead: the rows the step reads from memory (in, old)
// are written by no earlier step of the launch, so the step before loads them with its own.
struct NormStepArgs {
  Mat in, out;
  const void* w;  // [D] norm weight of dtype wt, or nullptr
  int wt;
  float scale;
  bool add, in_regs, old_regs, keep, same_sum, ahead;
};
struct NormChainArgs {
  NormStepArgs step[kMaxNormSteps];
  int n;  // steps, 1..kMaxNormSteps
  float eps;
};

// Row r of m, as a pointer the compiler cannot see into (kept_pointer): an element's address is then one
// multiply-add (IMAD.WIDE) from it, where the compiler otherwise folds row and column into one 64-bit
// index and spends four instructions on each element's address. (Its loads and stores name the global
// space, __ldcg / __stcg, since the compiler no longer knows the pointer is global.)
__device__ __forceinline__ float* row_of(const Mat& m, int64_t r) { return kept_pointer(m.p + r * m.ld); }

// The rows a step reads from memory, row r: v = in (unless in_regs), old = out's previous values (add
// and not old_regs); the slots past the row's end hold its last element again, which no sum reads and
// no store writes (they are not zeroed here: that select would make the thread wait for the loads at
// once, and a step loads the next step's rows ahead of their use). Every load is issued before the
// first is used, so a row costs one memory round trip.
template <int PER>
__device__ __forceinline__ void load_step_rows(const NormStepArgs& st, int64_t r, const StridedSlots<PER>& e,
                                               float (&v)[PER], float (&old)[PER]) {
  const bool read_in = !st.in_regs, read_old = st.add && !st.old_regs;
  const float* xr = row_of(st.in, r);
  const float* yr = row_of(st.out, r);
#pragma unroll
  for (int j = 0; j < PER; ++j) {
    if (read_in) v[j] = __ldcg(xr + e.col[j]);
    if (read_old) old[j] = __ldcg(yr + e.col[j]);
  }
}

// The steps of rms_norms, one CTA per row: step s computes out = RMS(in) · w (+ out with add), then
// · scale, each a separate rounding (__fmul_rn / __fadd_rn: never contracted into an FMA, as on the
// CPU). Every step's element i is handled by the same thread, so a step reads what an earlier one
// wrote without a barrier; the reductions alternate between two s_part buffers, since a reduction's
// barrier is the only one between its writes and the previous reduction's reads.
//
// A decode step's chain is one CTA on one SM, whose time is the path its warps run, not bytes: the
// steps are a rolled loop over the chain's arguments, not unrolled per step (a launch runs its code
// once, so each instruction has to be fetched when first reached: the unrolled chain of six steps,
// 5688 SASS instructions, cost 11–13 µs a launch, a quarter to a third of its warp samples "no
// instruction"; docs/PERF.md), and a step's loads are branch-free (load_step_rows, StridedSlots). At 8
// elements a thread the step before loads each step's weights and, when ahead, its rows, ahead of its
// own stores, which for all the compiler knows may alias them (a layer-end chain's second and third
// steps read the experts' output and the residual: their round trips overlap the first step's); the
// first step's weights before the wait (model constants that no kernel writes during a step). No
// instruction reads those loads before the step they are for (weights stay raw bits until after that
// step's reduction; rows are not padded), so they arrive while the step that loads them reduces and
// stores: converting or padding them where they were loaded made each step wait for the next one's
// data before its own reduction (docs/PERF.md, forty-third session). At 16
// and 64 a step's extra rows would spill, so a step loads its own. The first CTA asks L2 for every
// step's weights before the wait.
template <int PER>
__global__ void __launch_bounds__(kNormThreads) rms_norms_kernel(const __grid_constant__ NormChainArgs a) {
  constexpr bool kAhead = PER == 8;
  const int64_t r = blockIdx.x;
  const int D = static_cast<int>(a.step[0].in.cols);  // at most 64 · kNormThreads (launch_rms_norms)
#ifdef TANDEM_NORM_STAMPS
  __shared__ unsigned long long s_stamp[2 + 2 * kMaxNormSteps];
#endif
  NORM_STAMP(0);
  const StridedSlots<PER> e(threadIdx.x, blockDim.x, D);  // the thread's elements of a row
  uint32_t w_cur[PER] = {};  // the step's norm weights as raw bits (load_slots_bits), converted after its reduction
  if (kAhead && a.step[0].w) load_slots_bits<PER>(a.step[0].w, a.step[0].wt, e, w_cur);
  if (blockIdx.x == 0)
    for (int s = kAhead ? 1 : 0; s < a.n; ++s)
      if (a.step[s].w) prefetch_l2(a.step[s].w, D * wtype_bytes(a.step[s].wt), threadIdx.x, blockDim.x);
  begin_kernel();
  NORM_STAMP(1);
  __shared__ __align__(16) float s_part[2][32];
  float kept[PER] = {}, v_next[PER] = {}, old_next[PER] = {}, inv = 0.0f;
  int reductions = 0;
#pragma unroll 1
  for (int s = 0; s < a.n; ++s) {
    const NormStepArgs& st = a.step[s];
    float v[PER], old[PER];
    uint32_t w_next[PER] = {};
    if (kAhead && s > 0 && st.ahead) {
#pragma unroll
      for (int j = 0; j < PER; ++j) v[j] = v_next[j], old[j] = old_next[j];
    } else {
      load_step_rows<PER>(st, r, e, v, old);
    }
#pragma unroll
    for (int j = 0; j < PER; ++j) {
      if (st.in_regs) v[j] = kept[j];
      if (st.old_regs) old[j] = kept[j];
    }
    if constexpr (kAhead) {
      if (s + 1 < a.n) {
        const NormStepArgs& next = a.step[s + 1];
        if (next.w) load_slots_bits<PER>(next.w, next.wt, e, w_next);
        if (next.ahead) load_step_rows<PER>(next, r, e, v_next, old_next);
      }
    } else if (st.w) {
      load_slots_bits<PER>(st.w, st.wt, e, w_cur);
    }
    if (!st.same_sum)
      inv = 1.0f / sqrtf(row_sum_squares<PER>(v, e.valid, s_part[reductions++ % 2]) / static_cast<float>(D) + a.eps);
    NORM_STAMP(2 + 2 * s);
    float w[PER];
    if (st.w) slots_bits_to_f32<PER>(st.wt, e, w_cur, 1.0f, w);
    float* yr = row_of(st.out, r);
#pragma unroll
    for (int j = 0; j < PER; ++j) {
      float y = __fmul_rn(v[j], inv);
      if (st.w) y = __fmul_rn(y, w[j]);
      if (st.add) y = __fadd_rn(old[j], y);
      if (st.scale != 1.0f) y = __fmul_rn(y, st.scale);
      if (j < e.valid) __stcg(yr + e.col[j], y);
      if (st.keep) kept[j] = y;
    }
    // After the stores: the move waits for the next step's weights, which have had this step's
    // reduction and stores to arrive.
    if constexpr (kAhead)
#pragma unroll
      for (int j = 0; j < PER; ++j) w_cur[j] = w_next[j];
    NORM_STAMP(3 + 2 * s);
  }
#ifdef TANDEM_NORM_STAMPS
  if (threadIdx.x == 0 && gridDim.x == 1) {
    const unsigned k = atomicAdd(&g_norm_stamp_launches, 1u) - kStampSkip;
    unsigned long long step_ns[2 * kMaxNormSteps] = {};  // after the wait: each step's reduction, end
    for (int i = 0; i < 2 * a.n; ++i) step_ns[i] = s_stamp[2 + i] - s_stamp[1];
    if (k < kStampLaunches)
      printf("NORMSTAMP %u steps=%d sm=%u start=%llu wait=%llu | %llu %llu | %llu %llu | %llu %llu | %llu %llu | %llu %llu"
             " | %llu %llu\n", k + kStampSkip, a.n, sm_id(), s_stamp[0], s_stamp[1] - s_stamp[0],
             step_ns[0], step_ns[1], step_ns[2], step_ns[3], step_ns[4], step_ns[5], step_ns[6], step_ns[7], step_ns[8],
             step_ns[9], step_ns[10], step_ns[11]);
  }
#endif
}

__global__ void rope_kernel(HeadView x, const int32_t* __restrict__ positions, const float* __restrict__ inv_freq,
                            int64_t T, int64_t n_heads, int64_t half) {
  begin_kernel();
  const int64_t n = T * n_heads * half, d = 2 * half;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = i / (n_heads * half), h = (i / half) % n_heads, j = i % half;
    const float angle = static_cast<float>(positions[t]) * inv_freq[j];
    const float c = cosf(angle), s = sinf(angle);
    float* v = x.head(t, h, d);
    const float a = v[j], b = v[j + half];
    v[j] = rope_rotate(a, b, c, s, false);
    v[j + half] = rope_rotate(a, b, c, s, true);
  }
}

// Elements per thread of the fused heads kernels (rms_norm's PER for rows of up to 8192).
constexpr int kHeadPer = 8;

// The rows of one norm_rope_kernel launch: T tokens of n_heads head rows of d elements.
struct NormRopeArgs {
  HeadView src;            // rows normed with w and rotated: q (rms_norm_rope) or k (kv_write_normed)
  HeadView v;              // kv_write_normed: the rows normed without a weight (V; may be src)
  int64_t n_heads, d;
  const void* w;           // [d] norm weight of the src rows, dtype wt
  int wt;
  float eps;
  const int32_t* positions;  // [T]
  const float* inv_freq;     // [d / 2]
  const int64_t* slots;      // kv_write_normed: [T] cache slot of each token (of n_slots)
  int64_t n_slots;
  void *kc, *vc;             // kv_write_normed: K and V cache memory
};

// One CTA per head row: blockIdx.x = t · n_heads + h; blockIdx.y = 0 the src row (RMS with w, then
// RoPE), 1 the v row (RMS without weight). KVT -1 writes the src row back in place (the query
// heads), 0 / 1 write both rows to an F32 / BF16 cache at the token's slot (a slot outside the
// cache writes nothing). The normed row passes through shared memory to meet each element's RoPE
// partner, so any d works (d <= 8 · blockDim.x, so a thread has at most 4 pairs).
template <int KVT>
__global__ void __launch_bounds__(1024) norm_rope_kernel(NormRopeArgs a) {
  constexpr int kPairs = kHeadPer / 2;  // RoPE pairs per thread: p = threadIdx.x + m · blockDim.x
  __shared__ __align__(16) float s_part[32];
  extern __shared__ float s_row[];  // [d]
  const int64_t t = blockIdx.x / a.n_heads, h = blockIdx.x % a.n_heads, d = a.d, half = d / 2;
  const bool k_row = blockIdx.y == 0;
  // The norm weight and inverse frequencies first: model constants that no kernel writes during a
  // step, so their loads may be in flight while the previous kernel finishes (begin_kernel()).
  float ww[kHeadPer], freq[kPairs];  // ww: read for the src rows only
  if (k_row)
    load_any_slots<kHeadPer>(a.w, a.wt, StridedSlots<kHeadPer>(threadIdx.x, blockDim.x, static_cast<int>(d)), 1.0f,
                             ww);
#pragma unroll
  for (int m = 0; m < kPairs; ++m) {
    const int64_t p = threadIdx.x + m * static_cast<int64_t>(blockDim.x);
    freq[m] = k_row && p < half ? a.inv_freq[p] : 0.0f;
  }
  begin_kernel();
  int64_t slot = 0;
  if constexpr (KVT >= 0) {
    slot = a.slots[t];
    if (slot < 0 || slot >= a.n_slots) return;  // the whole CTA, before any barrier
  }
  const float pos = static_cast<float>(a.positions[t]);
  const float* xr = (k_row ? a.src : a.v).head(t, h, d);
  float v[kHeadPer];
#pragma unroll
  for (int j = 0; j < kHeadPer; ++j) {
    const int64_t i = threadIdx.x + j * static_cast<int64_t>(blockDim.x);
    v[j] = i < d ? xr[i] : 0.0f;
  }
  const float inv = 1.0f / sqrtf(row_sum_squares<kHeadPer>(v, kHeadPer, s_part) / static_cast<float>(d) + a.eps);
#pragma unroll
  for (int j = 0; j < kHeadPer; ++j) v[j] = k_row ? v[j] * inv * ww[j] : v[j] * inv;
  // Element i of the row's output: the head itself (in place: every thread read its elements before
  // the reduction's barrier or the one below), or the cache row at the token's slot.
  float* const yr = KVT < 0 ? a.src.head(t, h, d) : nullptr;
  void* const cache = k_row ? a.kc : a.vc;
  const int64_t dst = (slot * a.n_heads + h) * d;
  auto store = [&](int64_t i, float value) {
    if constexpr (KVT < 0) yr[i] = value;
    else if constexpr (KVT == 0) static_cast<float*>(cache)[dst + i] = value;
    else static_cast<uint16_t*>(cache)[dst + i] = f32_to_bf16_bits(value);
  };
  if (!k_row) {
#pragma unroll
    for (int j = 0; j < kHeadPer; ++j) {
      const int64_t i = threadIdx.x + j * static_cast<int64_t>(blockDim.x);
      if (i < d) store(i, v[j]);
    }
    return;
  }
  // RoPE: the normed row through shared memory, then each pair rotated (one cosf and sinf) by one thread.
#pragma unroll
  for (int j = 0; j < kHeadPer; ++j) {
    const int64_t i = threadIdx.x + j * static_cast<int64_t>(blockDim.x);
    if (i < d) s_row[i] = v[j];
  }
  __syncthreads();
#pragma unroll
  for (int m = 0; m < kPairs; ++m) {
    const int64_t p = threadIdx.x + m * static_cast<int64_t>(blockDim.x);
    if (p < half) {
      const float angle = pos * freq[m];
      const float c = cosf(angle), sn = sinf(angle), x0 = s_row[p], x1 = s_row[p + half];
      store(p, rope_rotate(x0, x1, c, sn, false));
      store(p + half, rope_rotate(x0, x1, c, sn, true));
    }
  }
}

// Threads per row of rms_norms_kernel (PER 8, 16 or 64 elements a thread) and norm_rope_kernel (8): a
// multiple of 32 giving each at most PER elements.
unsigned row_threads(int64_t D, int per) {
  return static_cast<unsigned>(std::max<int64_t>(32, (D + per * 32 - 1) / (per * 32) * 32));
}

}  // namespace

void CudaBackend::embed(const TensorView& ids, const TensorView& table, float scale, TensorView& y) {
  check_f32_2d(y, "embed y");
  check_2d(ids, DType::I32, "embed ids");
  if (!is_float_dtype(table.dtype) || table.ndim != 2) fail("embed: table must be a 2-D float tensor");
  const int64_t T = ids.numel(), V = table.dim(0), H = table.dim(1);
  if (ids.rows() != 1 && ids.stride() != ids.cols()) fail("embed: ids must be dense");
  if (y.rows() != T || y.cols() != H) fail("embed: y is [{}, {}], expected [{}, {}]", y.rows(), y.cols(), T, H);
  if (T == 0 || H == 0) return;
  use_device();
  launch("embed_kernel", embed_kernel, grid_for(T * H), 256, 0, ids.as<int32_t>(), table.data, wtype_of(table.dtype),
         table.stride(), V, scale, mat(y));
}

void CudaBackend::rms_norm(const TensorView& x, const TensorView* weight, float eps, TensorView& y) {
  const RmsNormStep step{&x, weight, &y};
  launch_rms_norms({&step, 1}, eps, "rms_norm");
}

void CudaBackend::rms_norm_add(const TensorView& y, const TensorView* weight, float eps, TensorView& x) {
  const RmsNormStep step{&y, weight, &x, /*add=*/true};
  launch_rms_norms({&step, 1}, eps, "rms_norm_add");
}

void CudaBackend::rms_norms(std::span<const RmsNormStep> steps, float eps) { launch_rms_norms(steps, eps, "rms_norms"); }

void CudaBackend::launch_rms_norms(std::span<const RmsNormStep> steps, float eps, const char* op) {
  if (steps.empty()) return;
  for (const RmsNormStep& st : steps)
    if (!st.in || !st.out) fail("{}: a step has no input or no output", op);
  const TensorView& first = *steps[0].in;
  for (const RmsNormStep& st : steps) {
    check_f32_2d(*st.in, "rms_norm input");
    check_f32_2d(*st.out, "rms_norm output");
    check_same_shape(*st.in, *st.out, op);
    check_same_shape(first, *st.in, op);
    if (const TensorView* w = st.weight) {
      if (!is_float_dtype(w->dtype) || w->numel() != first.cols())
        fail("{}: weight must be a float tensor of {} elements", op, first.cols());
      if (w->rows() != 1 && w->stride() != w->cols()) fail("{}: weight must be dense", op);
    }
  }
  const int64_t R = first.rows(), D = first.cols();
  if (R == 0 || D == 0) return;
  if (R > 0x7FFFFFFF) fail("{}: {} rows is too many for one launch", op, R);
  // At most 8 elements a thread (16 beyond 4096 columns, 64 beyond 8192).
  const int per = D <= 8 * kNormThreads ? 8 : D <= 16 * kNormThreads ? 16 : 64;
  if (D > per * kNormThreads) fail("{}: rows of {} elements are longer than the CUDA backend's {}", op, D, 64 * kNormThreads);
  // Views of one chain are the same view or apart; otherwise each step is a launch of its own, in order.
  auto same = [](const TensorView* a, const TensorView* b) { return a->data == b->data && a->stride() == b->stride(); };
  auto apart = [&](const TensorView* a, const TensorView* b) {
    const auto* pa = static_cast<const char*>(a->data);
    const auto* pb = static_cast<const char*>(b->data);
    const int64_t extent = ((R - 1) * a->stride() + D) * 4, extent_b = ((R - 1) * b->stride() + D) * 4;
    return pa + extent <= pb || pb + extent_b <= pa;
  };
  std::vector<const TensorView*> views;
  for (const RmsNormStep& st : steps) views.push_back(st.in), views.push_back(st.out);
  bool chained = true;
  for (size_t i = 0; i < views.size(); ++i)
    for (size_t j = 0; j < i; ++j) chained = chained && (same(views[i], views[j]) || apart(views[i], views[j]));
  const size_t per_launch = chained ? kMaxNormSteps : 1;
  use_device();
  for (size_t begin = 0; begin < steps.size(); begin += per_launch) {
    NormChainArgs a{};
    a.n = static_cast<int>(std::min(per_launch, steps.size() - begin));
    a.eps = eps;
    const TensorView* kept = nullptr;  // the view whose rows the kernel holds after the steps so far
    for (int s = 0; s < a.n; ++s) {
      const RmsNormStep& st = steps[begin + s];
      NormStepArgs& k = a.step[s];
      k.in = mat(*st.in), k.out = mat(*st.out);
      k.w = st.weight ? st.weight->data : nullptr;
      k.wt = st.weight ? wtype_of(st.weight->dtype) : 0;
      k.scale = st.scale, k.add = st.add;
      k.in_regs = kept && same(kept, st.in);
      k.old_regs = st.add && kept && same(kept, st.out);
      k.same_sum = s > 0 && k.in_regs && a.step[s - 1].in_regs && !a.step[s - 1].keep;
      // Rows read from memory that no earlier step writes: the step before may load them.
      bool written = false;
      for (int t = 0; t < s; ++t) {
        const TensorView* out = steps[begin + t].out;
        written = written || (!k.in_regs && same(out, st.in)) || (st.add && !k.old_regs && same(out, st.out));
      }
      k.ahead = s > 0 && !written;
      // Keep the output when it is the residual (add, in place) or replaces the kept rows; a norm
      // into another view leaves the kept rows (apart from it) as they are.
      k.keep = st.add || same(st.in, st.out) || (kept && same(kept, st.out));
      if (k.keep) kept = st.out;
    }
    const unsigned threads = row_threads(D, per), rows = static_cast<unsigned>(R);
    if (per == 8) launch("rms_norms_kernel", rms_norms_kernel<8>, rows, threads, 0, a);
    else if (per == 16) launch("rms_norms_kernel", rms_norms_kernel<16>, rows, threads, 0, a);
    else launch("rms_norms_kernel", rms_norms_kernel<64>, rows, threads, 0, a);
  }
}

void CudaBackend::rope(TensorView& x, const TensorView& positions, const TensorView& inv_freq) {
  check_2d(positions, DType::I32, "rope positions");
  check_f32_2d(inv_freq, "rope inv_freq");
  if (positions.rows() != 1 && positions.stride() != positions.cols()) fail("rope: positions must be dense");
  if (inv_freq.rows() != 1 && inv_freq.stride() != inv_freq.cols()) fail("rope: inv_freq must be dense");
  const int64_t T = positions.numel(), half = inv_freq.numel(), d = 2 * half;
  if (T == 0) return;
  check_f32_2d(x, "rope x");
  if (half == 0 || x.numel() % (T * d) != 0) fail("rope: x of {} elements is not {} tokens × heads × {}", x.numel(), T, d);
  const int64_t n_heads = x.numel() / (T * d);
  check_heads(x, T, n_heads, d, "rope x");
  use_device();
  launch("rope_kernel", rope_kernel, grid_for(T * n_heads * half), 256, 0, head_view(x, T), positions.as<int32_t>(),
         inv_freq.as<float>(), T, n_heads, half);
}

// The rope arguments of the fused heads ops: positions [T] I32 and inv_freq [d / 2] F32, dense.
void check_head_rope(const TensorView& positions, const TensorView& inv_freq, int64_t T, int64_t d, const char* op) {
  check_2d(positions, DType::I32, "positions");
  check_f32_2d(inv_freq, "inv_freq");
  if (positions.numel() != T || (positions.rows() != 1 && positions.stride() != positions.cols()))
    fail("{}: positions must be {} dense I32 values", op, T);
  if (d % 2 != 0 || inv_freq.numel() != d / 2 || (inv_freq.rows() != 1 && inv_freq.stride() != inv_freq.cols()))
    fail("{}: inv_freq must be {} dense F32 values for head_dim {}", op, d / 2, d);
  if (d > kHeadPer * 1024) fail("{}: head_dim {} is longer than the CUDA backend's {}", op, d, kHeadPer * 1024);
}

void check_norm_weight(const TensorView& w, int64_t d, const char* op) {
  if (!is_float_dtype(w.dtype) || w.numel() != d || (w.rows() != 1 && w.stride() != w.cols()))
    fail("{}: the norm weight must be a dense float tensor of {} elements", op, d);
}

void CudaBackend::rms_norm_rope(TensorView& x, const TensorView& weight, float eps, const TensorView& positions,
                                const TensorView& inv_freq) {
  const int64_t T = positions.numel(), d = 2 * inv_freq.numel();
  if (T == 0) return;
  check_head_rope(positions, inv_freq, T, d, "rms_norm_rope");
  check_f32_2d(x, "rms_norm_rope x");
  if (d == 0 || x.numel() % (T * d) != 0) fail("rms_norm_rope: x of {} elements is not {} tokens × heads × {}", x.numel(), T, d);
  const int64_t n_heads = x.numel() / (T * d);
  check_heads(x, T, n_heads, d, "rms_norm_rope x");
  check_norm_weight(weight, d, "rms_norm_rope");
  if (T * n_heads > 0x7FFFFFFF) fail("rms_norm_rope: {} head rows are too many for one launch", T * n_heads);
  use_device();
  NormRopeArgs a{};
  a.src = a.v = head_view(x, T);
  a.n_heads = n_heads, a.d = d;
  a.w = weight.data, a.wt = wtype_of(weight.dtype), a.eps = eps;
  a.positions = positions.as<int32_t>(), a.inv_freq = inv_freq.as<float>();
  launch("norm_rope_kernel", norm_rope_kernel<-1>, static_cast<unsigned>(T * n_heads), row_threads(d, kHeadPer),
         d * sizeof(float), a);
}

void CudaBackend::kv_write_normed(const TensorView& k, const TensorView& v, const TensorView& k_norm, float eps,
                                  const TensorView& positions, const TensorView& inv_freq, const KvLayer& layer,
                                  const TensorView& slots) {
  check_2d(slots, DType::I64, "kv_write_normed slots");
  if (slots.rows() != 1 && slots.stride() != slots.cols()) fail("kv_write_normed: slots must be dense");
  const int64_t T = slots.numel(), n_kv = layer.n_kv_heads, d = layer.head_dim;
  if (T == 0) return;
  check_kv_layer(layer, "kv_write_normed");
  check_head_rope(positions, inv_freq, T, d, "kv_write_normed");
  check_heads(k, T, n_kv, d, "kv_write_normed k");
  check_heads(v, T, n_kv, d, "kv_write_normed v");
  check_norm_weight(k_norm, d, "kv_write_normed");
  if (T * n_kv > 0x7FFFFFFF) fail("kv_write_normed: {} head rows are too many for one launch", T * n_kv);
  use_device();
  NormRopeArgs a{};
  a.src = head_view(k, T), a.v = head_view(v, T);
  a.n_heads = n_kv, a.d = d;
  a.w = k_norm.data, a.wt = wtype_of(k_norm.dtype), a.eps = eps;
  a.positions = positions.as<int32_t>(), a.inv_freq = inv_freq.as<float>();
  a.slots = slots.as<int64_t>(), a.n_slots = static_cast<int64_t>(layer.num_blocks) * layer.block_size;
  a.kc = layer.k, a.vc = layer.v;
  const dim3 grid(static_cast<unsigned>(T * n_kv), 2);  // y: the K row, the V row
  if (layer.dtype == DType::F32)
    launch("norm_rope_kernel", norm_rope_kernel<0>, grid, row_threads(d, kHeadPer), d * sizeof(float), a);
  else
    launch("norm_rope_kernel", norm_rope_kernel<1>, grid, row_threads(d, kHeadPer), d * sizeof(float), a);
}

}  // namespace tandem
