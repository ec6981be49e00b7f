// Row-wise selection over f32 scores: argmax_rows (greedy sampling over the vocabulary, optionally
// through a label map) and topk_rows (k <= 64 candidates for tree drafting).
//
// Both reduce (value, label) pairs under the strict order "larger value, then lower label" — a
// total order, so the winner does not depend on the scan or reduction order. NaNs never win.
//
// argmax_rows: a row is cut into chunks of kArgmaxChunk columns, one 256-thread CTA each (a
// 262144-column row is 64 CTAs streaming 16 KB each with every load in flight at once, not one SM
// streaming 1 MB); each CTA writes its chunk's best, and the last CTA of the row to finish (a
// per-row counter it resets for the next launch) reduces those and writes the row's result.
// topk_rows: one 1024-thread CTA per row runs k scans, each taking the best element that comes
// after the previous pick in that order (no scratch storage; the row stays in L2 between passes).
// A thread scans its strided share of its columns with 16-byte loads, several in flight.
#include <climits>

#include "backend/cuda/cuda_common.cuh"

namespace tandem {

using namespace cu;

namespace {

constexpr int kSelectThreads = 1024;

__device__ __forceinline__ bool better(float v, int l, float bv, int bl) { return v > bv || (v == bv && l < bl); }

// Reduces every thread's (v, l) to the CTA's best; all threads get the result.
__device__ void block_best(float& v, int& l) {
  __shared__ float s_v[32];
  __shared__ int s_l[32];
#pragma unroll
  for (int o = 16; o > 0; o /= 2) {
    const float ov = __shfl_xor_sync(0xFFFFFFFFu, v, o);
    const int ol = __shfl_xor_sync(0xFFFFFFFFu, l, o);
    if (better(ov, ol, v, l)) v = ov, l = ol;
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, n_warps = blockDim.x / 32;
  __syncthreads();  // s_v / s_l may still be read by a previous call
  if (lane == 0) s_v[warp] = v, s_l[warp] = l;
  __syncthreads();
  v = lane < n_warps ? s_v[lane] : -INFINITY;
  l = lane < n_warps ? s_l[lane] : INT_MAX;
#pragma unroll
  for (int o = 16; o > 0; o /= 2) {
    const float ov = __shfl_xor_sync(0xFFFFFFFFu, v, o);
    const int ol = __shfl_xor_sync(0xFFFFFFFFu, l, o);
    if (better(ov, ol, v, l)) v = ov, l = ol;
  }
}

// Calls f(value, column) for every column j in [c0, c1) of row xr, each exactly once (c0 a
// multiple of 4, so VEC's 16-byte loads stay aligned).
template <bool VEC, typename F>
__device__ __forceinline__ void scan_row(const float* xr, int64_t c0, int64_t c1, F&& f) {
  int64_t tail = c0;
  if constexpr (VEC) {
    const int64_t q1 = c1 / 4;
    const float4* p = reinterpret_cast<const float4*>(xr);
#pragma unroll 4
    for (int64_t c = c0 / 4 + threadIdx.x; c < q1; c += blockDim.x) {
      const float4 q = p[c];
      f(q.x, 4 * c), f(q.y, 4 * c + 1), f(q.z, 4 * c + 2), f(q.w, 4 * c + 3);
    }
    tail = q1 * 4;
  }
#pragma unroll 4
  for (int64_t j = tail + threadIdx.x; j < c1; j += blockDim.x) f(xr[j], j);
}

constexpr int kArgmaxThreads = 256;
constexpr int64_t kArgmaxChunk = 4096;  // columns per CTA: 4 float4 loads per thread, all in flight

// CTA blockIdx.x = r · chunks + c scans chunk c of row r. With several chunks, each writes its best
// to part_v / part_l [R, chunks] and counts itself done in done[r]; the last reduces the row.
template <bool VEC>
__global__ void __launch_bounds__(kArgmaxThreads)
    argmax_kernel(Mat x, const int32_t* __restrict__ labels, int64_t lab_ld, int32_t* __restrict__ out, int chunks,
                  float* __restrict__ part_v, int* __restrict__ part_l, unsigned* __restrict__ done) {
  begin_kernel();
  const int64_t r = blockIdx.x / chunks, c = blockIdx.x % chunks;
  const float* xr = x.p + r * x.ld;
  const int32_t* lr = labels ? labels + r * lab_ld : nullptr;
  float bv = -INFINITY;
  int bl = INT_MAX;
  const int64_t c1 = (c + 1) * kArgmaxChunk < x.cols ? (c + 1) * kArgmaxChunk : x.cols;
  scan_row<VEC>(xr, c * kArgmaxChunk, c1, [&](float v, int64_t j) {
    const int l = lr ? lr[j] : static_cast<int>(j);
    if (better(v, l, bv, bl)) bv = v, bl = l;
  });
  block_best(bv, bl);
  if (chunks > 1) {
    float* pv = part_v + r * chunks;
    int* pl = part_l + r * chunks;
    if (threadIdx.x == 0) pv[c] = bv, pl[c] = bl;
    if (!last_cta_of(done + r, static_cast<unsigned>(chunks))) return;
    bv = -INFINITY, bl = INT_MAX;
    for (int i = threadIdx.x; i < chunks; i += blockDim.x) {
      const float v = __ldcg(pv + i);  // past L1: other CTAs wrote them
      const int l = __ldcg(pl + i);
      if (better(v, l, bv, bl)) bv = v, bl = l;
    }
    block_best(bv, bl);
  }
  if (threadIdx.x == 0) out[r] = bl != INT_MAX ? bl : (lr ? lr[0] : 0);  // INT_MAX only for an all-NaN row
}

template <bool VEC>
__global__ void __launch_bounds__(kSelectThreads)
    topk_kernel(Mat x, int k, int32_t* __restrict__ out, int64_t out_ld) {
  begin_kernel();
  const int64_t r = blockIdx.x;
  const float* xr = x.p + r * x.ld;
  float pv = INFINITY;
  int pl = -1;
  for (int i = 0; i < k; ++i) {
    float bv = -INFINITY;
    int bl = INT_MAX;
    scan_row<VEC>(xr, 0, x.cols, [&](float v, int64_t j) {
      const int l = static_cast<int>(j);
      if (better(pv, pl, v, l) && better(v, l, bv, bl)) bv = v, bl = l;
    });
    block_best(bv, bl);
    if (bl == INT_MAX) bl = 0;  // fewer than k non-NaN values
    if (threadIdx.x == 0) out[r * out_ld + i] = bl;
    pv = bv, pl = bl;
  }
}

}  // namespace

void CudaBackend::argmax_rows(const TensorView& x, const TensorView* labels, TensorView& out) {
  check_f32_2d(x, "argmax_rows x");
  check_2d(out, DType::I32, "argmax_rows out");
  const int64_t R = x.rows(), N = x.cols();
  if (out.numel() != R || (out.rows() != 1 && out.stride() != out.cols()))
    fail("argmax_rows: out must be {} dense I32 values, got [{}, {}]", R, out.rows(), out.cols());
  if (labels) {
    check_2d(*labels, DType::I32, "argmax_rows labels");
    if (labels->rows() != R || labels->cols() != N)
      fail("argmax_rows: labels are [{}, {}], expected [{}, {}]", labels->rows(), labels->cols(), R, N);
  }
  if (R == 0) return;
  if (N == 0) fail("argmax_rows: rows are empty");
  if (N > INT_MAX || R > 0x7FFFFFFF) fail("argmax_rows: [{}, {}] is too large", R, N);
  const int64_t chunks = (N + kArgmaxChunk - 1) / kArgmaxChunk;
  if (R * chunks > 0x7FFFFFFF) fail("argmax_rows: [{}, {}] is too large", R, N);
  use_device();
  float* part_v = nullptr;
  int* part_l = nullptr;
  unsigned* done = nullptr;
  if (chunks > 1) {  // per-chunk bests, then the per-row counters (zeroed when they grow)
    OpScratch& sc = scratch();
    ensure(sc.argmax_parts, R * chunks * (sizeof(float) + sizeof(int)));
    part_v = static_cast<float*>(sc.argmax_parts.data());
    part_l = reinterpret_cast<int*>(part_v + R * chunks);
    if (sc.argmax_done.bytes() < R * sizeof(unsigned)) {
      ensure(sc.argmax_done, R * sizeof(unsigned));
      TANDEM_CUDA_CHECK(cudaMemsetAsync(sc.argmax_done.data(), 0, sc.argmax_done.bytes(), op_stream()));
    }
    done = static_cast<unsigned*>(sc.argmax_done.data());
  }
  const bool vec = reinterpret_cast<uint64_t>(x.data) % 16 == 0 && x.stride() % 4 == 0;
  const int32_t* lp = labels ? labels->as<int32_t>() : nullptr;
  const int64_t lld = labels ? labels->stride() : 0;
  const unsigned grid = static_cast<unsigned>(R * chunks);
  if (vec)
    launch("argmax_kernel", argmax_kernel<true>, grid, kArgmaxThreads, 0, mat(x), lp, lld, out.as<int32_t>(),
           static_cast<int>(chunks), part_v, part_l, done);
  else
    launch("argmax_kernel", argmax_kernel<false>, grid, kArgmaxThreads, 0, mat(x), lp, lld, out.as<int32_t>(),
           static_cast<int>(chunks), part_v, part_l, done);
}

void CudaBackend::topk_rows(const TensorView& x, TensorView& out) {
  check_f32_2d(x, "topk_rows x");
  check_2d(out, DType::I32, "topk_rows out");
  const int64_t R = x.rows(), N = x.cols(), k = out.cols();
  if (out.rows() != R) fail("topk_rows: out has {} rows, x has {}", out.rows(), R);
  if (k < 1 || k > 64 || k > N) fail("topk_rows: k = {} must be in [1, min(64, {})]", k, N);
  if (R == 0) return;
  if (N > INT_MAX || R > 0x7FFFFFFF) fail("topk_rows: [{}, {}] is too large", R, N);
  use_device();
  const bool vec = reinterpret_cast<uint64_t>(x.data) % 16 == 0 && x.stride() % 4 == 0;
  if (vec)
    launch("topk_kernel", topk_kernel<true>, static_cast<unsigned>(R), kSelectThreads, 0, mat(x), static_cast<int>(k),
           out.as<int32_t>(), out.stride());
  else
    launch("topk_kernel", topk_kernel<false>, static_cast<unsigned>(R), kSelectThreads, 0, mat(x), static_cast<int>(k),
           out.as<int32_t>(), out.stride());
}

}  // namespace tandem
