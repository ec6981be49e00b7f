// Mixture-of-experts ops: moe_route (softmax router + top-k) and moe_experts (the routed FFN).
//
// moe_route: one warp per row. Softmax over E in f32 (expf), then k rounds that each take the next
// element in (probability desc, index asc) order, then renormalise and scale, as the CPU backend
// does. The row's probabilities stay in registers (E / 32 per lane, for E up to 512; past that they
// are recomputed from the logits, the same expression, when needed). Each lane keeps its own best
// element not yet picked as a key (float bits of p, + 1: p >= 0, so they order as unsigned; 0: none),
// and a round is two warp reductions (redux.sync: the largest key, then the lowest index holding it)
// after which only the lane that was picked from looks for its next element. Pick j stays in lane
// j's registers (picks past 32 go through ids/wts, read back by the lane that wrote them) until the
// k picks are renormalised in parallel; with the probabilities in registers the expert scales are
// loaded with the logits too. At decode (E = 128, k = 8) a row is thus one round of loads, two
// reductions for the softmax and 2·k single-instruction reductions, where each of the k rounds used
// to recompute expf over the row and reduce it with a chain of 10 shuffles. The results are the
// same bits: the same expressions in the same order pick the same elements.
//
// The same launch then groups the routed pairs by expert for moe_experts (step 1 below): CTAs of 16
// warps route 16 rows each, and the last CTA to finish (a counter; the only CTA at decode) groups all
// of them. moe_experts issued right after it on the same ids uses that grouping instead of launching
// its own, which takes one dependent kernel out of every MoE layer.
//
// moe_experts runs entirely on the device in four launches (three right after moe_route), with no
// host look at the ids:
//   1. group: one CTA sorts the T·k (row, slot) pairs by expert with a counting sort: the ids staged
//      in shared memory when they fit (at decode the routing warps write them there), else read
//      from global memory; counts by shared-memory atomics (one pass over the pairs), one warp's scan
//      (a run of experts per lane), then a warp per non-empty expert places its pairs with ballots in
//      pair order (stable, deterministic), stopping once it placed its count;
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
// Dynamic shared memory of a grouping: s_start [E + 1], then the pairs' ids when they fit
// (with the kernels' few static bytes, under the 48 KiB a launch gets without opting in).
constexpr int64_t kGroupSmemBytes = 40 * 1024;

struct GroupSmem {
  size_t bytes;
  bool staged;  // the T·k ids are staged in shared memory after s_start
};
GroupSmem group_smem(int64_t P, int64_t E) {
  const bool staged = (E + 1 + P) * static_cast<int64_t>(sizeof(int32_t)) <= kGroupSmemBytes;
  return {static_cast<size_t>(E + 1 + (staged ? P : 0)) * sizeof(int32_t), staged};
}

// Routes one row of E logits l with one warp (lane = this thread's lane): ids[0:k] and wts[0:k],
// and s_ids[0:k] (shared memory) unless null. N > 0: the row's probabilities are held in registers,
// N per lane (E <= 32·N); N == 0: recomputed from l when a lane looks for its next element.
template <int N>
__device__ __forceinline__ void route_row(const float* __restrict__ l, int E, const void* __restrict__ scale,
                                          int scale_wt, int32_t* __restrict__ ids, float* __restrict__ wts, int k,
                                          int32_t* s_ids, int lane) {
  constexpr int R = N > 0 ? N : 1;
  float v[R], sc[R];  // N > 0: element lane + 32·i's logit, then its probability; its scale
  float mx = -INFINITY;
  if constexpr (N > 0) {
#pragma unroll
    for (int i = 0; i < N; ++i) {
      const int e = lane + 32 * i;
      v[i] = e < E ? l[e] : 0.0f;
      if (!scale) sc[i] = 1.0f;
    }
    if (scale) load_any_slots<N>(scale, scale_wt, StridedSlots<N>(lane, 32, E), 1.0f, sc);
#pragma unroll
    for (int i = 0; i < N; ++i)
      if (lane + 32 * i < E) mx = fmaxf(mx, v[i]);
  } else {
    sc[0] = 1.0f;  // unused
    for (int e = lane; e < E; e += 32) mx = fmaxf(mx, l[e]);
  }
  mx = warp_max(mx);
  float sum = 0.0f;
  if constexpr (N > 0) {
#pragma unroll
    for (int i = 0; i < N; ++i)
      if (lane + 32 * i < E) sum += v[i] = expf(v[i] - mx);
  } else {
    for (int e = lane; e < E; e += 32) sum += expf(l[e] - mx);
  }
  sum = warp_sum(sum);
  if constexpr (N > 0) {
#pragma unroll
    for (int i = 0; i < N; ++i) v[i] /= sum;  // p = expf(l - mx) / sum, as recomputed below for N == 0
  }

  // This lane's next element in pick order after (pp, pe): key = bits(p) + 1 (0: none; NaN p, from
  // NaN or infinite logits, is never picked), its index be and scale bs (sc[0] when none: lane 0 then
  // holds the scale of expert 0, the id a row of NaN gets).
  unsigned key = 0;
  int be = INT_MAX;
  float bs = sc[0];
  auto next_after = [&](float pp, int pe) {
    key = 0, be = INT_MAX, bs = sc[0];
    auto consider = [&](float p, int e, float s) {
      const unsigned kp = __float_as_uint(p) + 1u;
      if ((p < pp || (p == pp && e > pe)) && kp > key) key = kp, be = e, bs = s;  // ties: the lower index
    };
    if constexpr (N > 0) {
#pragma unroll
      for (int i = 0; i < N; ++i)
        if (lane + 32 * i < E) consider(v[i], lane + 32 * i, sc[i]);
    } else {
      for (int e = lane; e < E; e += 32) consider(expf(l[e] - mx) / sum, e, 1.0f);
    }
  };
  next_after(INFINITY, -1);

  float top_sum = 0.0f, my_p = 0.0f, my_s = 1.0f;
  int my_e = 0;
  for (int j = 0; j < k; ++j) {
    const unsigned top = __reduce_max_sync(0xFFFFFFFFu, key);
    const unsigned low = __reduce_min_sync(0xFFFFFFFFu, key == top ? static_cast<unsigned>(be) : UINT_MAX);
    const int e = top ? static_cast<int>(low) : 0;  // 0 only when the logits hold NaN; keep ids in range
    const float p = top ? __uint_as_float(top - 1u) : -INFINITY;
    float s = 1.0f;
    if constexpr (N > 0) s = __shfl_sync(0xFFFFFFFFu, bs, e % 32);  // lane e % 32 holds expert e
    top_sum += p;
    if (lane == j % 32) {
      if (j < 32) my_e = e, my_p = p, my_s = s;
      else ids[j] = e, wts[j] = p;
    }
    if (key != 0 && be == e) next_after(p, e);  // this lane's element was picked
  }
  // Renormalise and scale the k picks in parallel, pick j in lane j % 32.
  for (int j = lane; j < k; j += 32) {
    const bool kept = j < 32;
    const int e = kept ? my_e : ids[j];
    const float p = kept ? my_p : wts[j];
    const float s = N > 0 && kept ? my_s : scale ? load_any(scale, scale_wt, e) : 1.0f;
    ids[j] = e, wts[j] = p / top_sum * s;
    if (s_ids) s_ids[j] = e;
  }
}

// Groups the P pairs (id_of(p): pair p's expert, -1 for p >= P; ids outside [0, E) are left out,
// pos_of_pair -1) by expert, with the whole CTA. Before it: s_start (E + 1 ints of shared memory)
// zeroed, the ids readable through id_of, and a barrier.
template <class IdOf>
__device__ __forceinline__ void group_pairs(IdOf id_of, int64_t P, int E, int32_t* s_start, const MoeGroups& g) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, n_warps = blockDim.x / 32;
  for (int64_t p = threadIdx.x; p < P; p += blockDim.x) {
    g.pos_of_pair[p] = -1;
    const int32_t e = id_of(p);
    if (static_cast<uint32_t>(e) < static_cast<uint32_t>(E)) atomicAdd(&s_start[e], 1);  // counts: order-free
  }
  __syncthreads();
  if (warp == 0) {  // exclusive scans of the counts and of the non-empty experts; lane l takes a run of experts
    const int per = (E + 31) / 32, e0 = min(lane * per, E), e1 = min(e0 + per, E);
    int32_t n = 0, a = 0;
    for (int e = e0; e < e1; ++e) n += s_start[e], a += s_start[e] > 0;
    int32_t n_incl = n, a_incl = a;
#pragma unroll
    for (int o = 1; o < 32; o *= 2) {
      const int32_t nn = __shfl_up_sync(0xFFFFFFFFu, n_incl, o), na = __shfl_up_sync(0xFFFFFFFFu, a_incl, o);
      if (lane >= o) n_incl += nn, a_incl += na;
    }
    int32_t off = n_incl - n, act = a_incl - a;
    for (int e = e0; e < e1; ++e) {
      const int32_t c = s_start[e];
      s_start[e] = off, g.offsets[e] = off;
      if (c > 0) g.active[act++] = e;
      off += c;
    }
    if (lane == 31) s_start[E] = off, g.offsets[E] = off, g.active[E] = act;  // the totals
  }
  __syncthreads();
  // Warp w places experts w, w + n_warps, ...: 32 of them at a time, skipping the empty ones.
  const uint32_t lanes_below = (1u << lane) - 1u;
  for (int e0 = warp; e0 < E; e0 += 32 * n_warps) {
    const int el = e0 + lane * n_warps;
    uint32_t todo = __ballot_sync(0xFFFFFFFFu, el < E && s_start[el + 1] > s_start[el]);
    while (todo) {
      const int e = e0 + (__ffs(todo) - 1) * n_warps;
      todo &= todo - 1;
      int32_t pos = s_start[e];
      const int32_t end = s_start[e + 1];
      for (int64_t base = 0; pos < end && base < P; base += 32) {
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
}

// moe_route: warp w of CTA b routes row 16·b + w; then the last CTA to finish (counted in *done,
// which it resets for the next launch) groups all T·k pairs into g. Each CTA makes its ids visible
// device-wide before it counts itself done, and the last one reads the others' past its L1. With
// `staged` (group_smem) the grouping reads the ids from shared memory: written there by the routing
// warps when the launch is one CTA, else copied there once by the last CTA.
// (Minimum 1 CTA per SM: at most 128 of them, for 2048 rows, and aiming at 3 had ptxas spill.)
template <int N>
__global__ void __launch_bounds__(kRouteWarps * 32, 1)
    moe_route_kernel(Mat logits, const void* __restrict__ scale, int scale_wt, int32_t* __restrict__ ids,
                     int64_t ids_ld, float* __restrict__ wts, int64_t w_ld, int k, bool staged, MoeGroups g,
                     unsigned* __restrict__ done) {
  extern __shared__ int32_t s_group[];  // s_start [E + 1], then with `staged` the ids of the T·k pairs
  const int E = static_cast<int>(logits.cols);
  int32_t* s_start = s_group;
  int32_t* s_ids = staged ? s_group + E + 1 : nullptr;
  for (int e = threadIdx.x; e <= E; e += blockDim.x) s_start[e] = 0;  // shared memory: before the wait
  begin_kernel();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t T = logits.rows, t = static_cast<int64_t>(blockIdx.x) * kRouteWarps + warp;
  const bool alone = gridDim.x == 1;
  if (t < T)
    route_row<N>(logits.p + t * logits.ld, E, scale, scale_wt, ids + t * ids_ld, wts + t * w_ld, k,
                 alone && staged ? s_ids + t * k : nullptr, lane);
  const int64_t P = T * k;
  if (!alone) {
    if (!last_cta_of(done, gridDim.x)) return;
    if (staged)
      for (int64_t p = threadIdx.x; p < P; p += blockDim.x) s_ids[p] = __ldcg(ids + (p / k) * ids_ld + p % k);
  }
  __syncthreads();
  group_pairs(
      [&](int64_t p) -> int32_t {
        if (p >= P) return -1;
        if (staged) return s_ids[p];
        const int32_t* id = ids + (p / k) * ids_ld + p % k;
        return alone ? *id : __ldcg(id);
      },
      P, E, s_start, g);
}

// moe_experts' own grouping (ids it was not handed by the moe_route just before it): one CTA,
// shared memory as group_smem says.
__global__ void moe_group_kernel(const int32_t* __restrict__ ids, int64_t ids_ld, int k, int64_t T, int E,
                                 bool staged, MoeGroups g) {
  extern __shared__ int32_t s_group[];  // s_start [E + 1], then with `staged` the ids of the T·k pairs
  int32_t* s_start = s_group;
  int32_t* s_ids = s_group + E + 1;
  for (int e = threadIdx.x; e <= E; e += blockDim.x) s_start[e] = 0;
  begin_kernel();
  const int64_t P = T * k;
  if (staged)
    for (int64_t p = threadIdx.x; p < P; p += blockDim.x) s_ids[p] = ids[(p / k) * ids_ld + p % k];
  __syncthreads();
  group_pairs(
      [&](int64_t p) -> int32_t {
        if (p >= P) return -1;
        return staged ? s_ids[p] : ids[(p / k) * ids_ld + p % k];
      },
      P, E, s_start, g);
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
// X: how the x values are split (XSplit, mma_rows.cuh). kOneRow (a one-token step, whose k experts are
// distinct when routed): a row at a time, taken by every lane; an expert listed twice for the token
// costs a second pass. In a step of a few rows (TILES 1: verify), an expert with only one of them (most
// of them, at k = 8 of 128) takes that path too: a third of the MMAs and x split once per warp, not per
// lane, with the same sums as a tile's, so the same bits (the launches take kOneRow and kLanes only:
// an expert's tile of several rows is rare in a verify step). VPW > 1 (quantized rows, TILES 1): a CTA
// takes VPW tiles of 16 columns, each warp VPW virtual warps of one.
//
// early (the down projection of a one-tile step over quantized weights): the grouping (offsets, active)
// is the routing's, two or more kernels back, which has completed when this kernel's CTAs start (the
// gate_up kernel between lets them launch only after its own wait); so the CTA reads it (from L2, past
// its SM's L1) and its expert's first weight blocks before waiting for the gate_up kernel, whose output
// x is (partial's early). x is then read through an opaque copy of its pointer, not the read-only path
// of a const __restrict__ parameter (read_after_wait).
template <class W, int TILES, bool DOWN, XSplit X, int VPW>
__device__ __forceinline__ void moe_mma(const float* __restrict__ x, int64_t ldx, W w, int64_t K, int64_t N, int k,
                                        const int32_t* __restrict__ offsets, const int32_t* __restrict__ sorted,
                                        const int32_t* __restrict__ active, int E, float* __restrict__ y, bool early) {
  // Only one-tile steps over quantized rows (decode, verify): elsewhere the flag is the constant false, so
  // gate_up, prefill and bf16 kernels keep their registers (a runtime flag took the bf16 down kernel of a
  // decode step from 62 to 72, three CTAs an SM instead of four).
  early = DOWN && TILES == 1 && !std::is_same_v<W, MmaBf16Rows> && early;
  if (!early) begin_kernel();
  const float* const xs = early ? read_after_wait(x) : x;
  constexpr int NT = DOWN ? 1 : 2;
  __shared__ MmaReduceSmem<NT, TILES, VPW> sm;
  // The warps' x stash, shared by the one-row passes and those of the step's split.
  constexpr int kOneRowStash = W::template stash_words<NT, XSplit::kOneRow>();
  constexpr int kSplitStash = W::template stash_words<NT, X>();
  constexpr int kStash = TILES > 1 ? 0 : kOneRowStash > kSplitStash ? kOneRowStash : kSplitStash;
  __shared__ __align__(16) uint32_t stash[kMmaWarps][kStash > 0 ? kStash : 1];
  // A CTA without rows still waits, so that every kernel completes after the one before it.
  // The grouping: read from L2 before the wait (early), else through the read-only path.
  auto grouping = [&](const int32_t* p) { return early ? __ldcg(p) : *p; };
  if (static_cast<int>(blockIdx.y) >= grouping(active + E)) return early ? begin_kernel() : void();
  const int e = grouping(active + blockIdx.y);
  const int32_t begin = grouping(offsets + e), end = grouping(offsets + e + 1);
  if (begin >= end) return early ? begin_kernel() : void();
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kMmaRows * VPW;
  const int64_t nw = VPW == 1 ? n0 : n0 + warp / (kMmaWarps / VPW) * kMmaRows;  // the warp's row tile
  const int64_t na = nw + g < N ? nw + g : N - 1, nb = nw + g + 8 < N ? nw + g + 8 : N - 1;  // tails recompute
  const int64_t first_row = static_cast<int64_t>(e) * NT * N;  // gate_up: [E, 2I, H]; down: [E, H, I]
  W sets[NT];
  int64_t rows[NT][2];
#pragma unroll
  for (int j = 0; j < NT; ++j) sets[j] = w, rows[j][0] = first_row + j * N + na, rows[j][1] = first_row + j * N + nb;
  // The expert's rows from r0 on: a tile of them, or with ONE only row r0. The first pass waits for the
  // previous kernel after its first weight loads (early).
  auto pass = [&]<XSplit P>(int32_t r0) {
    constexpr bool ONE = P == XSplit::kOneRow;
    const float* xr[TILES];
#pragma unroll
    for (int i = 0; i < TILES; ++i) {
      const int32_t pos = r0 + i * kMmaTile + (ONE ? 0 : g);
      xr[i] = pos < end ? xs + (k ? sorted[pos] / k : pos) * ldx : nullptr;
    }
    float c[VPW * TILES][NT][4] = {};
    W::template partial<NT, TILES, P, VPW>(sets, rows, K, xr, 0, W::blocks(K), warp, lane, c, stash[warp], early);
    early = false;
    mma_finish<NT, TILES, VPW>(c, sm, warp, lane, MmaSplit{}, 0, 0, [&](int i, int x_row, int w_row, const float (&s)[NT]) {
      const int64_t pos = r0 + i * kMmaTile + x_row, nc = n0 + w_row;
      if (pos < end && nc < N && !(ONE && x_row > 0)) y[pos * N + nc] = DOWN ? s[0] : gelu_tanh(s[0]) * s[NT - 1];
    });
  };
  if constexpr (TILES == 1 && X != XSplit::kOneRow) {
    if (end - begin == 1) return pass.template operator()<XSplit::kOneRow>(begin);
  }
  for (int32_t r0 = begin; r0 < end; r0 += X == XSplit::kOneRow ? 1 : TILES * kMmaTile) pass.template operator()<X>(r0);
}

#define TANDEM_MOE_MMA_PARAMS                                                                                     \
  const float *__restrict__ x, int64_t ldx, W w, int64_t K, int64_t N, int k, const int32_t *__restrict__ offsets, \
      const int32_t *__restrict__ sorted, const int32_t *__restrict__ active, int E, float *__restrict__ y, bool early
template <class W, int TILES, bool DOWN, XSplit X, int VPW = 1>
__global__ void __launch_bounds__(kMmaWarps * 32) moe_mma_kernel(TANDEM_MOE_MMA_PARAMS) {
  moe_mma<W, TILES, DOWN, X, VPW>(x, ldx, w, K, N, k, offsets, sorted, active, E, y, early);
}
// The same kernel with its registers bounded for three CTAs an SM (ptxas spills what does not fit). launch_moe_mma
// takes it for the one-token gate_up over int4 codes in narrow CTAs: its 116 registers held it to two CTAs an SM, so at
// the 26B-A4B's decode with_mma_width counted its 352 CTAs as two waves of two rounds of loads and took the wide CTAs'
// one wave of three; at three an SM (80 registers; 64 bytes spilled with zero points, 8 without: MmaQuantRows<kU4,
// false>) it is one wave of two, and the W4A16 decode step 1.3 % shorter on an H100 (docs/PERF.md, forty-fifth
// session). Offered for every narrow launch over quantized rows it measured slower: the W4A16 T = 3 step 5 % (the int4
// verify kernels, kLanes, spill there: about 700 bytes of spill loads in their code) and the FP8 decode 0.9 %.
// A separate kernel, since a second __launch_bounds__ argument of 1 changes the registers ptxas gives the
// other instantiations (the FP8 one-token gate_up's 80 → 100).
template <class W, int TILES, bool DOWN, XSplit X, int VPW = 1>
__global__ void __launch_bounds__(kMmaWarps * 32, 3) moe_mma_kernel_three_ctas(TANDEM_MOE_MMA_PARAMS) {
  moe_mma<W, TILES, DOWN, X, VPW>(x, ldx, w, K, N, k, offsets, sorted, active, E, y, early);
}
#undef TANDEM_MOE_MMA_PARAMS

// The narrow (VPW 1) one-tile kernel launch_moe_mma takes: moe_mma_kernel_three_ctas for the one-token
// gate_up over int4 codes, moe_mma_kernel elsewhere.
template <class W, bool DOWN, XSplit X>
constexpr auto narrow_moe_mma_kernel() {
  constexpr bool kInt4 =
      std::is_same_v<W, MmaQuantRows<QuantCode::kU4, true>> || std::is_same_v<W, MmaQuantRows<QuantCode::kU4, false>>;
  if constexpr (kInt4 && !DOWN && X == XSplit::kOneRow)
    return moe_mma_kernel_three_ctas<W, 1, DOWN, X, 1>;
  else
    return moe_mma_kernel<W, 1, DOWN, X, 1>;
}

// Launches moe_mma_kernel over the active experts (grid rows) for w (mma_rows_fit or mma_quant_fit),
// x rows of K at stride ldx (16-byte aligned: mma_x_rows); T bounds an expert's rows.
template <bool DOWN>
void launch_moe_mma(CudaBackend& be, const float* x, int64_t ldx, const TensorView& w, int64_t K, int64_t N, int xk,
                    int64_t T, const int32_t* offsets, const int32_t* sorted, const int32_t* active, int E,
                    unsigned active_rows, float* dst) {
  const int64_t n_tiles = (N + kMmaRows - 1) / kMmaRows;
  const dim3 grid(static_cast<unsigned>(n_tiles), active_rows);
  // The down projection's quantized weights and grouping may be read before the wait (moe_mma_kernel's
  // early; quantized weights are constants: Backend::prepare_quant).
  const bool early = DOWN && be.early_loads();
  // The launches' name (errors, TANDEM_CUDA_REPEAT) tells the two projections apart.
  constexpr const char* kName = DOWN ? "moe_mma_kernel (down)" : "moe_mma_kernel (gate_up)";
  with_mma_rows(w, nullptr, K, [&]<class W>(const W& rows) {
    with_mma_tiles<W>(T, [&]<int TILES>() {  // an expert has at most T rows
      if constexpr (TILES == 1) {
        // One x tile (decode, verify): a CTA per VPW row tiles (with_mma_width); one token takes the
        // kOneRow kernels. The gate_up launch of a step of several tokens takes a CTA per row tile: on an
        // H100 its wide CTAs, which the rounds of loads favour there, made the W4A16 26B-A4B T = 3 step
        // 2 % slower (docs/PERF.md, thirty-first session), while a one-token step's are 1.5 % faster.
        auto tile = [&]<XSplit X>() {
          constexpr int NT = DOWN ? 1 : 2;
          constexpr auto wide = moe_mma_kernel<W, 1, DOWN, X, kMmaWideVpw<W, NT>>;
          const bool wide_ctas = be.wide_ctas() && (DOWN || X == XSplit::kOneRow);
          // No VPW 2 instantiations: measure the matmuls' first.
          with_mma_width<W, NT, narrow_moe_mma_kernel<W, DOWN, X>(), wide>(
              wide_ctas, false, n_tiles, active_rows, W::blocks(K), be.sm_count(), [&]<int VPW, auto KERNEL>() {
                const dim3 g(static_cast<unsigned>((n_tiles + VPW - 1) / VPW), active_rows);
                be.launch(kName, KERNEL, g, kMmaWarps * 32, 0, x, ldx, rows, K, N, xk, offsets, sorted, active, E,
                          dst, early);
              });
        };
        if (T == 1) tile.template operator()<XSplit::kOneRow>();
        else tile.template operator()<XSplit::kLanes>();
      } else {
        be.launch(kName, moe_mma_kernel<W, TILES, DOWN, XSplit::kLanes>, grid, kMmaWarps * 32, 0, x, ldx, rows, K, N, xk,
                  offsets, sorted, active, E, dst, early);
      }
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
  const GroupSmem smem = group_smem(T * k, E);
  auto route = [&]<int N>() {  // N probabilities per lane in registers (route_row); 0: recomputed
    launch("moe_route_kernel", moe_route_kernel<N>, grid, kRouteWarps * 32, smem.bytes, mat(logits),
           per_expert_scale ? per_expert_scale->data : nullptr,
           per_expert_scale ? wtype_of(per_expert_scale->dtype) : 0, ids.as<int32_t>(), ids.stride(),
           weights.as<float>(), weights.stride(), static_cast<int>(k), smem.staged, g,
           static_cast<unsigned*>(sc.moe_done.data()));
  };
  if (E <= 32 * 4) route.template operator()<4>();
  else if (E <= 32 * 16) route.template operator()<16>();
  else route.template operator()<0>();
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

  if (!grouped) {
    const GroupSmem smem = group_smem(P, E);
    launch("moe_group_kernel", moe_group_kernel, 1, 1024, smem.bytes, ids.as<int32_t>(), ids.stride(),
           static_cast<int>(k), T, static_cast<int>(E), smem.staged, g);
  }

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
    if (mma_takes(gate_up, H)) {
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
    if (mma_takes(down, I)) {
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
