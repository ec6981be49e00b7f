// Mixture-of-experts ops: moe_route (softmax router + top-k) and moe_experts (the routed FFN).
//
// moe_route: one warp per row. Softmax over E in f32 (expf), then k rounds of a warp argmax that
// take the next element in (probability desc, index asc) order after the previous pick — no
// per-row storage, so any E works — then renormalise and scale, as the CPU backend does. The same
// launch then groups the routed pairs by expert for moe_experts (step 1 below): CTAs of 16 warps
// route 16 rows each, and the last CTA to finish (a counter; the only CTA at decode) groups all of
// them. moe_experts issued right after it on the same ids uses that grouping instead of launching
// its own, which takes one dependent kernel out of every MoE layer.
//
// moe_experts runs entirely on the device in four launches (three right after moe_route), with no
// host look at the ids:
//   1. group: one CTA sorts the T·k (row, slot) pairs by expert with a counting sort (a warp per
//      expert counts and then places its pairs with ballots, in pair order: stable, deterministic);
//   2. gate_up: grid (I/8 column tiles, E); a CTA takes one expert and 8 columns, warps loop over
//      that expert's rows in M-tiles of up to 8 (experts with no rows exit at once), computing the gate
//      and up columns with the matmul's warp_dot and writing gelu_tanh(g)·u;
//   3. down: the same shape over H columns of down[e], writing one output row per pair;
//   4. combine: y[t] = Σ_j w[t,j]·out[pair(t,j)] in j order.
// Every value of a row thus goes through the same reduction order whatever else is in the batch.
#include <climits>

#include "backend/cuda/mma_quant.cuh"
#include "backend/cuda/mma_rows.cuh"
#include "backend/cuda/weight_rows.cuh"

namespace tandem {

using namespace cu;

namespace {

constexpr int kRouteWarps = 16;  // rows per moe_route CTA; its last CTA groups with all 16 warps
constexpr int kMaxExperts = 8192;

// Routes row t of logits with one warp (lane = this thread's lane): ids[t, 0:k] and wts[t, 0:k].
__device__ __forceinline__ void route_row(const Mat& logits, int64_t t, const void* __restrict__ scale, int scale_wt,
                          int32_t* __restrict__ ids, int64_t ids_ld, float* __restrict__ wts, int64_t w_ld, int k,
                          int lane) {
  const int64_t E = logits.cols;
  const float* l = logits.p + t * logits.ld;
  float mx = -INFINITY;
  for (int64_t e = lane; e < E; e += 32) mx = fmaxf(mx, l[e]);
  mx = warp_max(mx);
  float sum = 0.0f;
  for (int64_t e = lane; e < E; e += 32) sum += expf(l[e] - mx);
  sum = warp_sum(sum);

  float prev_p = INFINITY, top_sum = 0.0f;
  int prev_e = -1;
  for (int j = 0; j < k; ++j) {
    float bp = -INFINITY;
    int be = INT_MAX;
    for (int64_t e = lane; e < E; e += 32) {
      const float p = expf(l[e] - mx) / sum;
      const bool after_prev = p < prev_p || (p == prev_p && e > prev_e);
      if (after_prev && (p > bp || (p == bp && e < be))) bp = p, be = static_cast<int>(e);
    }
#pragma unroll
    for (int o = 16; o > 0; o /= 2) {
      const float op = __shfl_xor_sync(0xFFFFFFFFu, bp, o);
      const int oe = __shfl_xor_sync(0xFFFFFFFFu, be, o);
      if (op > bp || (op == bp && oe < be)) bp = op, be = oe;
    }
    if (be == INT_MAX) be = 0;  // only when the logits hold NaN; keep ids in range
    if (lane == 0) ids[t * ids_ld + j] = be, wts[t * w_ld + j] = bp;
    top_sum += bp;
    prev_p = bp, prev_e = be;
  }
  // Renormalise and scale the k picks in parallel, one lane each (a serial loop would wait for two
  // dependent loads per pick).
  __syncwarp();
  for (int j = lane; j < k; j += 32) {
    const int e = ids[t * ids_ld + j];
    const float s = scale ? load_any(scale, scale_wt, e) : 1.0f;
    wts[t * w_ld + j] = wts[t * w_ld + j] / top_sum * s;
  }
}

// Groups the P pairs (id_of(p): pair p's expert, -1 for p >= P) by expert, with the whole CTA;
// s_start: E ints of shared memory.
template <class IdOf>
__device__ __forceinline__ void group_pairs(IdOf id_of, int64_t P, int E, int32_t* s_start, const MoeGroups& g) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, n_warps = blockDim.x / 32;
  for (int64_t p = threadIdx.x; p < P; p += blockDim.x) g.pos_of_pair[p] = -1;
  for (int e = warp; e < E; e += n_warps) {
    int count = 0;
    for (int64_t base = 0; base < P; base += 32) count += __popc(__ballot_sync(0xFFFFFFFFu, id_of(base + lane) == e));
    if (lane == 0) s_start[e] = count;
  }
  __syncthreads();
  if (warp == 0) {  // exclusive scan of the counts (and of the non-empty experts), 32 experts at a time
    int32_t off = 0, n_active = 0;
    for (int e0 = 0; e0 < E; e0 += 32) {
      const int e = e0 + lane;
      const int32_t c = e < E ? s_start[e] : 0;
      int32_t incl = c;
#pragma unroll
      for (int o = 1; o < 32; o *= 2) {
        const int32_t n = __shfl_up_sync(0xFFFFFFFFu, incl, o);
        if (lane >= o) incl += n;
      }
      const uint32_t nonempty = __ballot_sync(0xFFFFFFFFu, c > 0);
      if (e < E) {
        s_start[e] = off + incl - c, g.offsets[e] = off + incl - c;
        if (c > 0) g.active[n_active + __popc(nonempty & ((1u << lane) - 1u))] = e;
      }
      off += __shfl_sync(0xFFFFFFFFu, incl, 31);
      n_active += __popc(nonempty);
    }
    if (lane == 0) g.offsets[E] = off, g.active[E] = n_active;
  }
  __syncthreads();
  const uint32_t lanes_below = (1u << lane) - 1u;
  for (int e = warp; e < E; e += n_warps) {
    int32_t pos = s_start[e];
    for (int64_t base = 0; base < P; base += 32) {
      const int64_t p = base + lane;
      const bool mine = id_of(p) == e;
      const uint32_t ballot = __ballot_sync(0xFFFFFFFFu, mine);
      if (mine) {
        const int32_t r = pos + __popc(ballot & lanes_below);
        g.sorted[r] = static_cast<int32_t>(p);
        g.pos_of_pair[p] = r;
      }
      pos += __popc(ballot);
    }
  }
}

// moe_route: warp w of CTA b routes row 16·b + w; then the last CTA to finish (counted in *done,
// which it resets for the next launch) groups all T·k pairs into g. Each CTA makes its ids visible
// device-wide before it counts itself done, and the last one reads the others' past its L1.
__global__ void __launch_bounds__(kRouteWarps * 32)
    moe_route_kernel(Mat logits, const void* __restrict__ scale, int scale_wt, int32_t* __restrict__ ids,
                     int64_t ids_ld, float* __restrict__ wts, int64_t w_ld, int k, MoeGroups g,
                     unsigned* __restrict__ done) {
  begin_kernel();
  extern __shared__ int32_t s_start[];  // [E]
  __shared__ bool s_last;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t T = logits.rows, t = static_cast<int64_t>(blockIdx.x) * kRouteWarps + warp;
  if (t < T) route_row(logits, t, scale, scale_wt, ids, ids_ld, wts, w_ld, k, lane);
  const bool alone = gridDim.x == 1;
  if (!alone) {
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) s_last = atomicAdd(done, 1u) == gridDim.x - 1;
    __syncthreads();
    if (!s_last) return;
    __threadfence();
    if (threadIdx.x == 0) *done = 0;
  }
  __syncthreads();
  const int64_t P = T * k;
  group_pairs(
      [&](int64_t p) -> int32_t {
        if (p >= P) return -1;
        const int32_t* id = ids + (p / k) * ids_ld + p % k;
        return alone ? *id : __ldcg(id);
      },
      P, static_cast<int>(logits.cols), s_start, g);
}

// moe_experts' own grouping (ids it was not handed by the moe_route just before it): one CTA.
__global__ void moe_group_kernel(const int32_t* __restrict__ ids, int64_t ids_ld, int k, int64_t T, int E,
                                 MoeGroups g) {
  begin_kernel();
  extern __shared__ int32_t s_start[];  // [E]
  const int64_t P = T * k;
  group_pairs([&](int64_t p) { return p < P ? ids[(p / k) * ids_ld + p % k] : -1; }, P, E, s_start, g);
}

// Output columns of moe_gate_up_kernel per warp: a gate row and an up row each.
__host__ __device__ constexpr int gate_up_columns_per_warp(int rows_per_dot) { return rows_per_dot >= 2 ? rows_per_dot / 2 : 1; }

// act[pos, c] = gelu_tanh(gate[e][c] · x[row(pos)]) · (up[e][c] · x[row(pos)]) for the rows of expert e
// (gate_up: rows of the stacked [E, 2I, H] weight, gate rows before up rows).
// x rows are those of the routed tokens (x[sorted[pos] / k]), or with k == 0 one per pair (x[pos]:
// gathered through an act-order permutation).
template <class Rows, int MT>
__global__ void __launch_bounds__(kMatmulWarps * 32)
    moe_gate_up_kernel(const float* __restrict__ x, int64_t ldx, Rows gate_up, int64_t I, int k,
                       const int32_t* __restrict__ offsets, const int32_t* __restrict__ sorted,
                       const int32_t* __restrict__ active, int E, float* __restrict__ act) {
  begin_kernel();
  constexpr int R = Rows::kRows, C = gate_up_columns_per_warp(R);
  if (static_cast<int>(blockIdx.y) >= active[E]) return;
  const int e = active[blockIdx.y];
  const int32_t begin = offsets[e], end = offsets[e + 1];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t c0 = (static_cast<int64_t>(blockIdx.x) * kMatmulWarps + warp) * C;
  if (begin >= end || c0 >= I) return;
  // With R >= 2 rows per dot, one dot takes the gate rows of C columns and their up rows together
  // (every x value loaded serves both); with R = 1, a dot each.
  int64_t rows[2 * C];
#pragma unroll
  for (int i = 0; i < C; ++i) {
    rows[i] = static_cast<int64_t>(e) * 2 * I + (c0 + i < I ? c0 + i : I - 1);  // a tail recomputes the last column
    rows[C + i] = rows[i] + I;
  }
  for (int32_t r0 = begin; r0 < end; r0 += MT) {
    const int nrows = end - r0 < MT ? end - r0 : MT;
    const float* xr[MT];
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      const int32_t pos = r0 + (m < nrows ? m : 0);
      xr[m] = x + (k ? sorted[pos] / k : pos) * ldx;
    }
    float acc[2 * C][MT];
#pragma unroll
    for (int i = 0; i < 2 * C; ++i)
#pragma unroll
      for (int m = 0; m < MT; ++m) acc[i][m] = 0.0f;
    if constexpr (R == 2 * C) {
      gate_up.template dot<MT>(rows, xr, nrows, acc, lane);
    } else {
      static_assert(R == 1 && C == 1);
      gate_up.template dot<MT>(reinterpret_cast<const int64_t(&)[1]>(rows[0]), xr, nrows,
                               reinterpret_cast<float(&)[1][MT]>(acc[0]), lane);
      gate_up.template dot<MT>(reinterpret_cast<const int64_t(&)[1]>(rows[1]), xr, nrows,
                               reinterpret_cast<float(&)[1][MT]>(acc[1]), lane);
    }
#pragma unroll
    for (int i = 0; i < C; ++i)
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        const float gs = warp_sum(acc[i][m]), us = warp_sum(acc[C + i][m]);
        if (lane == m && m < nrows && c0 + i < I) act[(r0 + m) * I + c0 + i] = gelu_tanh(gs) * us;
      }
  }
}

// out[pos, n] = down[e][n] · act[pos] for the rows of expert e (down: rows of the stacked [E, H, I] weight).
template <class Rows, int MT>
__global__ void __launch_bounds__(kMatmulWarps * 32)
    moe_down_kernel(const float* __restrict__ act, Rows down, int64_t I, int64_t H, const int32_t* __restrict__ offsets,
                    const int32_t* __restrict__ active, int E, float* __restrict__ out) {
  begin_kernel();
  constexpr int R = Rows::kRows;
  if (static_cast<int>(blockIdx.y) >= active[E]) return;
  const int e = active[blockIdx.y];
  const int32_t begin = offsets[e], end = offsets[e + 1];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t n0 = (static_cast<int64_t>(blockIdx.x) * kMatmulWarps + warp) * R;
  if (begin >= end || n0 >= H) return;
  int64_t w_rows[R];
#pragma unroll
  for (int i = 0; i < R; ++i) w_rows[i] = static_cast<int64_t>(e) * H + (n0 + i < H ? n0 + i : H - 1);
  for (int32_t r0 = begin; r0 < end; r0 += MT) {
    const int nrows = end - r0 < MT ? end - r0 : MT;
    const float* xr[MT];
#pragma unroll
    for (int m = 0; m < MT; ++m) xr[m] = act + static_cast<int64_t>(r0 + (m < nrows ? m : 0)) * I;
    float acc[R][MT];
#pragma unroll
    for (int i = 0; i < R; ++i)
#pragma unroll
      for (int m = 0; m < MT; ++m) acc[i][m] = 0.0f;
    down.template dot<MT>(w_rows, xr, nrows, acc, lane);
#pragma unroll
    for (int i = 0; i < R; ++i)
#pragma unroll
      for (int m = 0; m < MT; ++m) {
        const float s = warp_sum(acc[i][m]);
        if (lane == m && m < nrows && n0 + i < H) out[static_cast<int64_t>(r0 + m) * H + n0 + i] = s;
      }
  }
}

// The two kernels above on the tensor cores for weight rows W (MmaBf16Rows or MmaQuantRows,
// mma_rows.cuh / mma_quant.cuh), x rows 16-byte aligned (mma_x_rows): a CTA takes one expert and 16
// columns (gate_up: 16 gate rows and their 16 up rows), and that expert's rows in tiles of 8.
// gate_up (DOWN false): act[pos, c] = gelu_tanh(gate[e][c] · x[row(pos)]) · (up[e][c] · x[row(pos)]);
// down (DOWN true): out[pos, n] = down[e][n] · act[pos] (x = act, k = 0, N = H rows per expert).
template <class W, int TILES, bool DOWN>
__global__ void __launch_bounds__(kMmaWarps * 32)
    moe_mma_kernel(const float* __restrict__ x, int64_t ldx, W w, int64_t K, int64_t N, int k,
                   const int32_t* __restrict__ offsets, const int32_t* __restrict__ sorted,
                   const int32_t* __restrict__ active, int E, float* __restrict__ y) {
  begin_kernel();
  constexpr int NT = DOWN ? 1 : 2;
  __shared__ MmaReduceSmem<NT, TILES> sm;
  if (static_cast<int>(blockIdx.y) >= active[E]) return;
  const int e = active[blockIdx.y];
  const int32_t begin = offsets[e], end = offsets[e + 1];
  if (begin >= end) return;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kMmaRows;
  const int64_t na = n0 + g < N ? n0 + g : N - 1, nb = n0 + g + 8 < N ? n0 + g + 8 : N - 1;  // tails recompute
  const int64_t first_row = static_cast<int64_t>(e) * NT * N;  // gate_up: [E, 2I, H]; down: [E, H, I]
  W sets[NT];
  int64_t rows[NT][2];
#pragma unroll
  for (int j = 0; j < NT; ++j) sets[j] = w, rows[j][0] = first_row + j * N + na, rows[j][1] = first_row + j * N + nb;
  for (int32_t r0 = begin; r0 < end; r0 += TILES * kMmaTile) {
    const float* xr[TILES];
#pragma unroll
    for (int i = 0; i < TILES; ++i) {
      const int32_t pos = r0 + i * kMmaTile + g;
      xr[i] = pos < end ? x + (k ? sorted[pos] / k : pos) * ldx : nullptr;
    }
    float c[TILES][NT][4];
    W::template partial<NT, TILES>(sets, rows, K, xr, 0, W::blocks(K), warp, lane, c);
    mma_finish<NT, TILES>(c, sm, warp, lane, MmaSplit{}, 0, 0, [&](int i, int x_row, int w_row, const float (&s)[NT]) {
      const int64_t pos = r0 + i * kMmaTile + x_row, nc = n0 + w_row;
      if (pos < end && nc < N) y[pos * N + nc] = DOWN ? s[0] : gelu_tanh(s[0]) * s[NT - 1];
    });
  }
}

// Launches moe_mma_kernel over the active experts (grid rows) for w (mma_rows_fit or mma_quant_fit),
// x rows of K at stride ldx (16-byte aligned: mma_x_rows); T bounds an expert's rows.
template <bool DOWN>
void launch_moe_mma(CudaBackend& be, const float* x, int64_t ldx, const TensorView& w, int64_t K, int64_t N, int xk,
                    int64_t T, const int32_t* offsets, const int32_t* sorted, const int32_t* active, int E,
                    unsigned active_rows, float* dst) {
  const dim3 grid(static_cast<unsigned>((N + kMmaRows - 1) / kMmaRows), active_rows);
  with_mma_rows(w, K, [&]<class W>(const W& rows) {
    with_mma_tiles<W>(T, [&]<int TILES>() {  // an expert has at most T rows
      be.launch("moe_mma_kernel", moe_mma_kernel<W, TILES, DOWN>, grid, kMmaWarps * 32, 0, x, ldx, rows, K, N, xk,
                offsets, sorted, active, E, dst);
    });
  });
}

// dst[pos, j] = src[row(pos), perm[e, j]] for the pairs of each active expert e, with row(pos) =
// sorted[pos] / k (the routed token) or, with k == 0, pos: a row in expert e's act-order column order.
__global__ void moe_permute_kernel(const float* __restrict__ src, int64_t ld, int k, const int32_t* __restrict__ perm,
                                   int64_t K, const int32_t* __restrict__ offsets, const int32_t* __restrict__ sorted,
                                   const int32_t* __restrict__ active, int E, float* __restrict__ dst) {
  begin_kernel();
  if (static_cast<int>(blockIdx.y) >= active[E]) return;
  const int e = active[blockIdx.y];
  const int32_t begin = offsets[e], end = offsets[e + 1];
  const int32_t* pe = perm + static_cast<int64_t>(e) * K;
  for (int32_t pos = begin; pos < end; ++pos) {
    const float* s = src + (k ? sorted[pos] / k : pos) * ld;
    for (int64_t j = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; j < K;
         j += static_cast<int64_t>(gridDim.x) * blockDim.x)
      dst[static_cast<int64_t>(pos) * K + j] = s[pe[j]];
  }
}

__global__ void moe_combine_kernel(const float* __restrict__ out, const int32_t* __restrict__ pos_of_pair,
                                   const float* __restrict__ wts, int64_t w_ld, int k, Mat y) {
  begin_kernel();
  const int64_t n_all = y.rows * y.cols;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n_all;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = i / y.cols, n = i % y.cols;
    float acc = 0.0f;
    for (int j = 0; j < k; ++j) {
      const int32_t pos = pos_of_pair[t * k + j];
      if (pos >= 0) acc = fmaf(wts[t * w_ld + j], out[static_cast<int64_t>(pos) * y.cols + n], acc);
    }
    y.p[t * y.ld + n] = acc;
  }
}

}  // namespace

// The grouping scratch for T·k pairs over E experts (moe_route and moe_experts).
MoeGroups CudaBackend::moe_groups(int64_t P, int64_t E) {
  OpScratch& sc = scratch();
  ensure(sc.moe_offsets, 2 * (E + 1) * sizeof(int32_t));  // offsets, then the active experts
  ensure(sc.moe_sorted, std::max<int64_t>(P, 1) * sizeof(int32_t));
  ensure(sc.moe_pos, std::max<int64_t>(P, 1) * sizeof(int32_t));
  auto* offsets = static_cast<int32_t*>(sc.moe_offsets.data());
  return {offsets, static_cast<int32_t*>(sc.moe_sorted.data()), static_cast<int32_t*>(sc.moe_pos.data()),
          offsets + E + 1};
}

void CudaBackend::moe_route(const TensorView& logits, const TensorView* per_expert_scale, TensorView& ids,
                            TensorView& weights) {
  check_f32_2d(logits, "moe_route logits");
  check_2d(ids, DType::I32, "moe_route ids");
  check_f32_2d(weights, "moe_route weights");
  const int64_t T = logits.rows(), E = logits.cols(), k = ids.cols();
  if (k <= 0 || k > E) fail("moe_route: k = {} must be in [1, {}]", k, E);
  if (E > kMaxExperts) fail("moe_route: {} experts is more than the CUDA backend supports ({})", E, kMaxExperts);
  if (ids.rows() != T || weights.rows() != T || weights.cols() != k)
    fail("moe_route: ids [{}, {}] and weights [{}, {}] must both be [{}, {}]", ids.rows(), ids.cols(),
         weights.rows(), weights.cols(), T, k);
  if (T * k > 0x7FFFFFFF / 2) fail("moe_route: {} rows × {} experts is too many", T, k);
  if (per_expert_scale && (per_expert_scale->numel() != E || !is_float_dtype(per_expert_scale->dtype)))
    fail("moe_route: per_expert_scale must be a float tensor of {} elements", E);
  if (per_expert_scale && per_expert_scale->rows() != 1 && per_expert_scale->stride() != per_expert_scale->cols())
    fail("moe_route: per_expert_scale must be dense");
  if (T == 0) return;
  use_device();
  const MoeGroups g = moe_groups(T * k, E);
  OpScratch& sc = scratch();
  if (!sc.moe_done.data()) {  // the last-CTA counter starts at zero; each launch leaves it there
    ensure(sc.moe_done, sizeof(unsigned));
    TANDEM_CUDA_CHECK(cudaMemsetAsync(sc.moe_done.data(), 0, sizeof(unsigned), op_stream()));
  }
  const unsigned grid = static_cast<unsigned>((T + kRouteWarps - 1) / kRouteWarps);
  launch("moe_route_kernel", moe_route_kernel, grid, kRouteWarps * 32, E * sizeof(int32_t), mat(logits),
         per_expert_scale ? per_expert_scale->data : nullptr, per_expert_scale ? wtype_of(per_expert_scale->dtype) : 0,
         ids.as<int32_t>(), ids.stride(), weights.as<float>(), weights.stride(), static_cast<int>(k), g,
         static_cast<unsigned*>(sc.moe_done.data()));
  sc.routed = {ids.data, ids.stride(), T, k, E, issued_};
}

void CudaBackend::moe_experts(const TensorView& x, const TensorView& ids, const TensorView& weights,
                              const TensorView& gate_up, const TensorView& down, TensorView& y) {
  const MoeDims dims = check_moe_experts(x, ids, weights, gate_up, down, y);
  const int64_t T = dims.T, H = dims.H, E = dims.E, I = dims.I, k = dims.k;
  if (E <= 0 || E > kMaxExperts)
    fail("moe_experts: {} experts is outside what the CUDA backend supports (1..{})", E, kMaxExperts);
  if (T * k > 0x7FFFFFFF / 2) fail("moe_experts: {} rows × {} experts is too many", T, k);
  if (T == 0 || H == 0) return;
  use_device();
  const int64_t P = T * k;
  // The moe_route issued just before, with nothing between, grouped exactly these ids already.
  const OpScratch::Routed& r = scratch().routed;
  const bool grouped = r.issued == issued_ && r.ids == ids.data && r.ld == ids.stride() && r.T == T && r.k == k && r.E == E;
  // Scratch grows only when a larger step arrives (see ensure()); steady-state steps allocate nothing.
  OpScratch& sc = scratch();
  const MoeGroups g = moe_groups(P, E);
  ensure(sc.moe_act, std::max<int64_t>(P * I, 1) * sizeof(float));
  ensure(sc.moe_out, std::max<int64_t>(P * H, 1) * sizeof(float));
  int32_t *offsets = g.offsets, *active = g.active, *sorted = g.sorted, *pos = g.pos_of_pair;
  const unsigned active_rows = static_cast<unsigned>(std::min<int64_t>(E, P));  // experts that can have rows
  auto* act = static_cast<float*>(sc.moe_act.data());
  auto* out = static_cast<float*>(sc.moe_out.data());

  if (!grouped)
    launch("moe_group_kernel", moe_group_kernel, 1, 1024, E * sizeof(int32_t), ids.as<int32_t>(), ids.stride(),
           static_cast<int>(k), T, static_cast<int>(E), g);

  if (P > 0 && I > 0) {
    // An expert has at most T rows (a row picks it once), which bounds the tile height.
    const int mt = matmul_tile_rows(T);
    const unsigned perm_blocks = 4;  // column blocks of 256 per active expert in moe_permute_kernel
    const int32_t* gu_perm = gate_up.quant ? gate_up.quant->k_perm.as<int32_t>() : nullptr;
    const int32_t* dn_perm = down.quant ? down.quant->k_perm.as<int32_t>() : nullptr;
    if (gu_perm || dn_perm) ensure(sc.permuted_x, P * std::max(H, I) * sizeof(float));
    auto* px = static_cast<float*>(sc.permuted_x.data());

    const float* xp = x.as<float>();
    int64_t ldx = x.stride();
    int x_k = static_cast<int>(k);  // x rows are the routed tokens' rows
    if (gu_perm) {
      launch("moe_permute_kernel", moe_permute_kernel, dim3(perm_blocks, active_rows), 256, 0, xp, ldx, x_k, gu_perm, H,
             offsets, sorted, active, static_cast<int>(E), px);
      xp = px, ldx = H, x_k = 0;  // now one row per pair
    }
    const bool gu_xvec = reinterpret_cast<uint64_t>(xp) % 16 == 0 && ldx % 4 == 0;
    // Columns per CTA: 8 warps of Rows::kRows each.
    auto grid_over = [&](int64_t cols, int rows_per_warp) {
      const int64_t per_cta = kMatmulWarps * rows_per_warp;
      return dim3(static_cast<unsigned>((cols + per_cta - 1) / per_cta), active_rows);
    };
    if (mma_ && (mma_rows_fit(gate_up, H) || mma_quant_fit(gate_up, H))) {
      const auto [xa, lda] = mma_x_rows(xp, ldx, x_k ? T : P, H);
      launch_moe_mma<false>(*this, xa, lda, gate_up, H, I, x_k, T, offsets, sorted, active, static_cast<int>(E),
                            active_rows, act);
    } else {
      dispatch_weight_rows(gate_up, H, gu_xvec, mt, [&]<int MT>(const auto& rows) {
        using Rows = std::decay_t<decltype(rows)>;
        launch("moe_gate_up_kernel", moe_gate_up_kernel<Rows, MT>, grid_over(I, gate_up_columns_per_warp(Rows::kRows)),
               kMatmulWarps * 32, 0, xp, ldx, rows, I, x_k, offsets, sorted, active, static_cast<int>(E), act);
      });
    }

    const float* ap = act;
    if (dn_perm) {
      launch("moe_permute_kernel", moe_permute_kernel, dim3(perm_blocks, active_rows), 256, 0, act, I, 0, dn_perm, I,
             offsets, sorted, active, static_cast<int>(E), px);
      ap = px;
    }
    const bool dn_xvec = I % 4 == 0;  // act rows are I floats from a 256-byte aligned buffer
    if (mma_ && (mma_rows_fit(down, I) || mma_quant_fit(down, I))) {
      const auto [xa, lda] = mma_x_rows(ap, I, P, I);
      launch_moe_mma<true>(*this, xa, lda, down, I, H, 0, T, offsets, sorted, active, static_cast<int>(E),
                           active_rows, out);
    } else {
      dispatch_weight_rows(down, I, dn_xvec, mt, [&]<int MT>(const auto& rows) {
        using Rows = std::decay_t<decltype(rows)>;
        launch("moe_down_kernel", moe_down_kernel<Rows, MT>, grid_over(H, Rows::kRows), kMatmulWarps * 32, 0, ap, rows,
               I, H, offsets, active, static_cast<int>(E), out);
      });
    }
  } else if (P > 0) {  // I == 0: every expert outputs zeros
    TANDEM_CUDA_CHECK(cudaMemsetAsync(out, 0, P * H * sizeof(float), op_stream()));
  }

  launch("moe_combine_kernel", moe_combine_kernel, grid_for(T * H), 256, 0, out, pos, weights.as<float>(),
         weights.stride(), static_cast<int>(k), mat(y));
}

}  // namespace tandem
