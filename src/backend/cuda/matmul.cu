// matmul y[T,N] = x[T,K] · w[N,K]ᵀ on CUDA cores: f32 activations, weights in their stored dtype
// (F32/BF16/F16/F8_E4M3) widened to f32 in registers, or quantized (QuantParams) and decoded in
// registers (weight_rows.cuh), f32 FMA accumulation.
//
// Shape: each warp owns Rows::kRows output columns (1 for float weights, 4 for quantized ones) and an
// M-tile of 1, 2, 4 or 8 rows of x (the smallest that holds T, up to 8), so each weight byte is read
// once per M-tile; a CTA is 8 warps, the grid is (N / (8 · kRows)) × (T / tile), which at T = 1 covers
// every SM for any real layer. Lanes stream the weight rows with 16-byte loads. This one kernel family serves every T: the reduction
// order of an output element (see warp_dot in cuda_common.cuh) depends only on K and the weight
// row, never on T or the other rows, which lossless speculative decoding under batching relies on.
// At T = 1 it is bandwidth-bound; at large T it is FFMA-bound (no tensor cores in this pass).
#include <algorithm>

#include "backend/cuda/mma_quant.cuh"
#include "backend/cuda/mma_rows.cuh"
#include "backend/cuda/weight_rows.cuh"

namespace tandem {

using namespace cu;

namespace {

template <class Rows, int MT>
__global__ void __launch_bounds__(kMatmulWarps * 32)
    matmul_kernel(const float* __restrict__ x, int64_t ldx, Rows w, float* __restrict__ y, int64_t ldy, int64_t T,
                  int64_t N) {
  begin_kernel();
  constexpr int R = Rows::kRows;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t n0 = (static_cast<int64_t>(blockIdx.x) * kMatmulWarps + warp) * R;
  if (n0 >= N) return;
  const int64_t t0 = static_cast<int64_t>(blockIdx.y) * MT;
  const int nrows = static_cast<int>(T - t0 < MT ? T - t0 : MT);
  const float* xr[MT];
#pragma unroll
  for (int m = 0; m < MT; ++m) xr[m] = x + (t0 + (m < nrows ? m : 0)) * ldx;
  int64_t rows[R];
#pragma unroll
  for (int i = 0; i < R; ++i) rows[i] = n0 + i < N ? n0 + i : N - 1;  // a tail recomputes the last row
  float acc[R][MT];
#pragma unroll
  for (int i = 0; i < R; ++i)
#pragma unroll
    for (int m = 0; m < MT; ++m) acc[i][m] = 0.0f;
  w.template dot<MT>(rows, xr, nrows, acc, lane);
#pragma unroll
  for (int i = 0; i < R; ++i)
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      const float s = warp_sum(acc[i][m]);
      if (lane == m && m < nrows && n0 + i < N) y[(t0 + m) * ldy + n0 + i] = s;
    }
}

// out[t, c] = gelu_tanh(gate[c] · x[t]) · (up[c] · x[t]): matmul_kernel over two weights of one
// layout, with the same dot products (so the same bits as matmul, matmul, gelu_tanh_mul).
template <class Rows, int MT>
__global__ void __launch_bounds__(kMatmulWarps * 32)
    matmul_glu_kernel(const float* __restrict__ x, int64_t ldx, Rows gate, Rows up, float* __restrict__ out,
                      int64_t ldo, int64_t T, int64_t I) {
  begin_kernel();
  constexpr int R = Rows::kRows;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t n0 = (static_cast<int64_t>(blockIdx.x) * kMatmulWarps + warp) * R;
  if (n0 >= I) return;
  const int64_t t0 = static_cast<int64_t>(blockIdx.y) * MT;
  const int nrows = static_cast<int>(T - t0 < MT ? T - t0 : MT);
  const float* xr[MT];
#pragma unroll
  for (int m = 0; m < MT; ++m) xr[m] = x + (t0 + (m < nrows ? m : 0)) * ldx;
  int64_t rows[R];
#pragma unroll
  for (int i = 0; i < R; ++i) rows[i] = n0 + i < I ? n0 + i : I - 1;
  float g[R][MT], u[R][MT];
#pragma unroll
  for (int i = 0; i < R; ++i)
#pragma unroll
    for (int m = 0; m < MT; ++m) g[i][m] = 0.0f, u[i][m] = 0.0f;
  gate.template dot<MT>(rows, xr, nrows, g, lane);
  up.template dot<MT>(rows, xr, nrows, u, lane);
#pragma unroll
  for (int i = 0; i < R; ++i)
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      const float gs = warp_sum(g[i][m]), us = warp_sum(u[i][m]);
      if (lane == m && m < nrows && n0 + i < I) out[(t0 + m) * ldo + n0 + i] = gelu_tanh(gs) * us;
    }
}

// dst[r, k] = x[r, k]: x rows packed at a 16-byte aligned stride, for the tensor-core kernels' float4
// loads when a view's rows are not (mma_x_rows).
__global__ void pack_rows_kernel(const float* __restrict__ x, int64_t ldx, int64_t rows, int64_t K,
                                 float* __restrict__ dst) {
  begin_kernel();
  const int64_t n = rows * K;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dst[i] = x[(i / K) * ldx + i % K];
}

// y[T, N] = x · wᵀ on the tensor cores for weight rows W (MmaBf16Rows or MmaQuantRows, mma_rows.cuh /
// mma_quant.cuh), x rows 16-byte aligned (mma_x_rows): a CTA per 16 columns, TILES tiles of 8 rows
// and K slice (grid: column tiles × row tiles × split.slices). kGlu: y = gelu_tanh(x · wᵀ) · (x · upᵀ)
// with the same sums (the same bits as two such matmuls and gelu_tanh_mul). kPair: the first half of
// the column tiles write y = x · wᵀ, the second half y2 = x · upᵀ (two projections of one x, each the
// same bits as its own launch). X: how the x values are split (XSplit, mma_rows.cuh); with kOneRow T is 1,
// and every lane takes that row.
// VPW > 1 (quantized rows, TILES 1): a CTA takes VPW tiles of 16 columns, each warp VPW virtual warps of
// one (mma_quant.cuh). early: w and up are model constants, so their first loads may come before the
// wait for the previous kernel (partial's early). x is the previous kernel's output, so it is not
// __restrict__: a const __restrict__ parameter is read through the read-only path (ld.global.nc), which
// promises that the data does not change while the kernel runs, so its loads may be scheduled ahead of
// the wait. (With early loads and x __restrict__, the 8-bit golden tests' decode steps on CUDA diverged.)
enum class MmaEpilogue { kPlain, kGlu, kPair };
template <class W, int TILES, MmaEpilogue EPI, XSplit X, int VPW = 1>
__global__ void __launch_bounds__(kMmaWarps * 32, (kMmaMinCtas<EPI == MmaEpilogue::kGlu ? 2 : 1, X>))
    matmul_mma_kernel(const float* x, int64_t ldx, W w, W up, int64_t K, float* __restrict__ y,
                      int64_t ldy, float* __restrict__ y2, int64_t ldy2, int64_t T, int64_t N, MmaSplit split,
                      bool early) {
  if (!early) begin_kernel();
  constexpr bool GLU = EPI == MmaEpilogue::kGlu;
  constexpr int NT = GLU ? 2 : 1;
  __shared__ MmaReduceSmem<NT, TILES, VPW> sm;
  constexpr int kStash = W::template stash_words<NT, X>();
  __shared__ __align__(16) uint32_t stash[kMmaWarps][kStash > 0 ? kStash : 1];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4;
  const bool second = EPI == MmaEpilogue::kPair && blockIdx.x >= gridDim.x / 2;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x - (second ? gridDim.x / 2 : 0)) * kMmaRows * VPW;
  const int64_t nw = VPW == 1 ? n0 : n0 + warp / (kMmaWarps / VPW) * kMmaRows;  // the warp's row tile
  const int64_t t0 = static_cast<int64_t>(blockIdx.y) * TILES * kMmaTile;
  const int64_t na = nw + g < N ? nw + g : N - 1, nb = nw + g + 8 < N ? nw + g + 8 : N - 1;  // tails recompute
  W sets[NT];
  sets[0] = second ? up : w;
  if constexpr (GLU) sets[NT - 1] = up;
  float* const out = second ? y2 : y;
  const int64_t ld_out = second ? ldy2 : ldy;
  int64_t rows[NT][2];
#pragma unroll
  for (int j = 0; j < NT; ++j) rows[j][0] = na, rows[j][1] = nb;
  const float* xr[TILES];
#pragma unroll
  for (int i = 0; i < TILES; ++i) {
    const int64_t r = t0 + i * kMmaTile + (X == XSplit::kOneRow ? 0 : g);
    xr[i] = r < T ? x + r * ldx : nullptr;
  }
  const int slice = static_cast<int>(blockIdx.z);
  const int64_t blocks = W::blocks(K);  // slice s sums blocks [blocks · s / slices, blocks · (s + 1) / slices)
  float c[VPW * TILES][NT][4] = {};
  W::template partial<NT, TILES, X, VPW>(sets, rows, K, xr, blocks * slice / split.slices,
                                         blocks * (slice + 1) / split.slices, warp, lane, c, stash[warp], early);
  const int64_t tile = static_cast<int64_t>(blockIdx.y) * gridDim.x + blockIdx.x;
  mma_finish<NT, TILES, VPW>(c, sm, warp, lane, split, tile, slice, [&](int i, int x_row, int w_row, const float (&s)[NT]) {
    const int64_t tr = t0 + i * kMmaTile + x_row, nc = n0 + w_row;
    if (tr < T && nc < N) out[tr * ld_out + nc] = GLU ? gelu_tanh(s[0]) * s[NT - 1] : s[0];
  });
}

// dst[t, j] = x[t, perm[j]]: x in an act-order quantized weight's column order.
__global__ void permute_cols_kernel(const float* __restrict__ x, int64_t ldx, const int32_t* __restrict__ perm,
                                    int64_t T, int64_t K, float* __restrict__ dst) {
  begin_kernel();
  const int64_t n = T * K;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = i / K, j = i % K;
    dst[i] = x[t * ldx + perm[j]];
  }
}

// Rewrites the codes of rows [rows, n_chunks 16-byte chunks] in place into the block layout of the
// quantized tensor-core path (mma_quant.cuh; word w of chunk jc of a block of nc chunks moves to slot
// quant_block_slot(jc, w, nc)): one thread per block.
__global__ void quant_block_layout_kernel(uint32_t* __restrict__ codes, int64_t rows, int64_t n_chunks) {
  begin_kernel();
  const int64_t per_row = (n_chunks + 3) / 4, n = rows * per_row;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t kb = i % per_row;
    const int nc = static_cast<int>(n_chunks - 4 * kb < 4 ? n_chunks - 4 * kb : 4);
    uint32_t* block = codes + ((i / per_row) * n_chunks + 4 * kb) * 4;
    uint32_t v[16];
#pragma unroll
    for (int q = 0; q < 16; ++q) v[q] = q < 4 * nc ? block[q] : 0u;
#pragma unroll
    for (int jc = 0; jc < 4; ++jc)
#pragma unroll
      for (int w = 0; w < 4; ++w)
        if (jc < nc) block[quant_block_slot(jc, w, nc)] = v[4 * jc + w];
  }
}

}  // namespace

bool CudaBackend::mma_takes(const TensorView& w, int64_t K) const {
  return mma_ && (mma_rows_fit(w, K) || mma_quant_fit(w, K));
}

void CudaBackend::prepare_quant(const TensorView& w) {
  const int64_t K = w.cols();
  if (!w.quant || !mma_takes(w, K)) return;  // the CUDA-core kernels read the packed order
  use_device();
  const int64_t n_chunks = K / (128 / quant_code_bits(w.quant->code));
  const int64_t rows = w.rows();
  if (rows > 0)
    launch("quant_block_layout_kernel", quant_block_layout_kernel, grid_for(rows * ((n_chunks + 3) / 4)), 256, 0,
           static_cast<uint32_t*>(w.data), rows, n_chunks);
  // The matmul kernels read quantized weights before they wait for the kernel before them (early): the
  // rewrite must be complete before any of them is launched.
  synchronize();
}

std::pair<const float*, int64_t> CudaBackend::mma_x_rows(const float* x, int64_t ldx, int64_t rows, int64_t K) {
  if (reinterpret_cast<uint64_t>(x) % 16 == 0 && ldx % 4 == 0) return {x, ldx};
  Buffer& buf = scratch().mma_x;
  ensure(buf, std::max<int64_t>(rows * K, 1) * sizeof(float));
  auto* packed = static_cast<float*>(buf.data());
  if (rows * K > 0) launch("pack_rows_kernel", pack_rows_kernel, grid_for(rows * K), 256, 0, x, ldx, rows, K, packed);
  return {packed, K};  // K % 8 == 0 (mma_rows_fit)
}

int CudaBackend::mma_slices(int64_t N, int64_t blocks, int code_bits) const {
  const int64_t tiles = (N + kMmaRows - 1) / kMmaRows;
  const int per_sm = mma_split_per_sm_ >= 0 ? mma_split_per_sm_ : code_bits == 8 ? 2 : 1;
  const int64_t ctas = int64_t{per_sm} * sm_count();
  return static_cast<int>(std::max<int64_t>(1, std::min({ctas / tiles, blocks / kMmaWarps, int64_t{kMmaMaxSlices}})));
}

MmaSplit CudaBackend::mma_split(int64_t tiles, int slices, int64_t floats) {
  MmaSplit split;
  split.slices = slices;
  if (slices == 1) return split;
  OpScratch& sc = scratch();
  ensure(sc.mma_partials, tiles * slices * floats * sizeof(float));
  if (sc.mma_tickets.bytes() < tiles * sizeof(unsigned)) {  // new tickets start at zero
    ensure(sc.mma_tickets, tiles * sizeof(unsigned));
    TANDEM_CUDA_CHECK(cudaMemsetAsync(sc.mma_tickets.data(), 0, sc.mma_tickets.bytes(), op_stream()));
  }
  split.partials = static_cast<float*>(sc.mma_partials.data());
  split.tickets = static_cast<unsigned*>(sc.mma_tickets.data());
  return split;
}

void CudaBackend::launch_matmul_mma(const float* x, int64_t ldx, const TensorView& w, const TensorView* up, int64_t K,
                                    TensorView& y, int64_t T, int64_t N, TensorView* y2) {
  const auto [xa, lda] = mma_x_rows(x, ldx, T, K);
  // Quantized weights are model constants (Backend::prepare_quant), bf16 ones where the view says so
  // (TensorView::constant; not the drafter's candidate rows, which the previous kernel gathers): only
  // constants are loaded before the wait.
  auto constant = [](const TensorView& t) { return t.quant || t.constant; };
  const bool early = early_loads_ && constant(w) && (!up || constant(*up));
  const MmaEpilogue epi = !up ? MmaEpilogue::kPlain : y2 ? MmaEpilogue::kPair : MmaEpilogue::kGlu;
  with_mma_rows(w, up, K, [&]<class W>(const W& rows) {
    const W up_rows = up ? mma_rows_of<W>(*up, K) : rows;
    with_mma_tiles<W>(T, [&]<int TILES>() {
      const int64_t per_cta = int64_t{TILES} * kMmaTile, n_tiles = (N + kMmaRows - 1) / kMmaRows;
      const int64_t w_tiles = epi == MmaEpilogue::kPair ? 2 * n_tiles : n_tiles;  // column tiles of the launch
      const int64_t t_tiles = (T + per_cta - 1) / per_cta;
      // Every launch of a weight, whatever T and whichever op (a pair, the GeGLU), takes its slices
      // (mma_slices), so its sums are in the same order everywhere.
      const int slices = mma_slices(N, W::blocks(K), w.quant ? quant_code_bits(w.quant->code) : 16);
      const int64_t floats = TILES * 128 * (epi == MmaEpilogue::kGlu ? 2 : 1);  // partial sums per tile and slice
      // A split's partial sums grow with the rows (a long prompt's prefill): launches over at most
      // kMmaSplitScratchBytes of them, one after the other. A row's sums are the same in any launch.
      const int64_t per_launch = std::min<int64_t>(
          65535, slices == 1 ? t_tiles
                             : std::max<int64_t>(1, kMmaSplitScratchBytes / (w_tiles * slices * floats * 4)));
      for (int64_t tt0 = 0; tt0 < t_tiles; tt0 += per_launch) {
        const int64_t tt = std::min(per_launch, t_tiles - tt0), r0 = tt0 * per_cta;
        const int64_t n_rows = std::min(T - r0, tt * per_cta);
        const float* xr = xa + r0 * lda;
        float* yr = y.as<float>() + r0 * y.stride();
        float* y2r = y2 ? y2->as<float>() + r0 * y2->stride() : nullptr;
        const int64_t ld2 = y2 ? y2->stride() : 0;
        auto go = [&]<MmaEpilogue EPI>() {
          if constexpr (TILES == 1) {
            // One x tile (decode, verify): a CTA per VPW row tiles (with_mma_width), with the column
            // CTAs, split and kernel of that VPW, and the kernels of its x split (x_split_of).
            // The few-row split only for quantized rows: with bf16 ones it measured slower (mma_rows.cuh).
            with_x_split<!std::is_same_v<W, MmaBf16Rows>>(n_rows, few_rows_, [&]<XSplit X>() {
              constexpr int NT = EPI == MmaEpilogue::kGlu ? 2 : 1;
              const int64_t slice_blocks = (W::blocks(K) + slices - 1) / slices;
              constexpr int kWide = kMmaWideVpw<W, NT>;
              constexpr auto narrow = matmul_mma_kernel<W, 1, EPI, X, 1>;
              constexpr auto wide = matmul_mma_kernel<W, 1, EPI, X, kWide>;
              constexpr auto half = matmul_mma_kernel<W, 1, EPI, X, (kWide > 2 ? 2 : kWide)>;
              with_mma_width<W, NT, narrow, wide, half>(
                  wide_ctas_, half_wide_ctas_, n_tiles, slices * (w_tiles / n_tiles), slice_blocks, sm_count(),
                  [&]<int VPW, auto KERNEL>() {
                    const int64_t col_ctas = (n_tiles + VPW - 1) / VPW * (w_tiles / n_tiles);
                    const MmaSplit s = mma_split(col_ctas, slices, VPW * floats);
                    launch("matmul_mma_kernel", KERNEL,
                           dim3(static_cast<unsigned>(col_ctas), 1, static_cast<unsigned>(slices)), kMmaWarps * 32, 0,
                           xr, lda, rows, up_rows, K, yr, y.stride(), y2r, ld2, n_rows, N, s, early);
                  });
            });
          } else {
            const MmaSplit split = mma_split(w_tiles * tt, slices, floats);
            const dim3 grid(static_cast<unsigned>(w_tiles), static_cast<unsigned>(tt), static_cast<unsigned>(slices));
            launch("matmul_mma_kernel", matmul_mma_kernel<W, TILES, EPI, XSplit::kLanes>, grid, kMmaWarps * 32, 0, xr, lda, rows,
                   up_rows, K, yr, y.stride(), y2r, ld2, n_rows, N, split, early);
          }
        };
        if (epi == MmaEpilogue::kGlu) go.template operator()<MmaEpilogue::kGlu>();
        else if (epi == MmaEpilogue::kPair) go.template operator()<MmaEpilogue::kPair>();
        else go.template operator()<MmaEpilogue::kPlain>();
      }
    });
  });
}

void CudaBackend::matmul(const TensorView& x, const TensorView& w, TensorView& y) {
  const auto [T, N, K] = check_matmul(x, w, y);
  use_device();
  if (T == 0 || N == 0) return;
  if ((T + kMatmulRows - 1) / kMatmulRows > 65535) fail("matmul: {} rows is more than one launch takes", T);
  if ((N + kMatmulWarps - 1) / kMatmulWarps > 0x7FFFFFFF) fail("matmul: {} columns is too many", N);
  const float* xp = x.as<float>();
  int64_t ldx = x.stride();
  if (w.quant && w.quant->k_perm.data) {  // act order: gather x into the weight's column order first
    Buffer& buf = scratch().permuted_x;
    ensure(buf, T * K * sizeof(float));
    auto* px = static_cast<float*>(buf.data());
    launch("permute_cols_kernel", permute_cols_kernel, grid_for(T * K), 256, 0, xp, ldx,
           w.quant->k_perm.as<int32_t>(), T, K, px);
    xp = px, ldx = K;
  }
  if (mma_takes(w, K)) {
    launch_matmul_mma(xp, ldx, w, nullptr, K, y, T, N);
    return;
  }
  const bool x_aligned = reinterpret_cast<uint64_t>(xp) % 16 == 0 && ldx % 4 == 0;
  dispatch_weight_rows(w, K, x_aligned, matmul_tile_rows(T), [&]<int MT>(const auto& rows) {
    using Rows = std::decay_t<decltype(rows)>;
    const int64_t per_cta = kMatmulWarps * Rows::kRows;
    const dim3 grid(static_cast<unsigned>((N + per_cta - 1) / per_cta), static_cast<unsigned>((T + MT - 1) / MT));
    launch("matmul_kernel", matmul_kernel<Rows, MT>, grid, kMatmulWarps * 32, 0, xp, ldx, rows, y.as<float>(),
           y.stride(), T, N);
  });
}

}  // namespace tandem

namespace tandem {

void CudaBackend::matmul_pair(const TensorView& x, const TensorView& w1, TensorView& y1, const TensorView& w2,
                              TensorView& y2) {
  const auto [T, N, K] = check_matmul(x, w1, y1);
  const auto [T2, N2, K2] = check_matmul(x, w2, y2);
  // One launch where both weights take one tensor-core kernel with one x (no act-order permutation)
  // and one column count (so one split); otherwise the two matmuls.
  const bool bf16_pair = mma_rows_fit(w1, K) && mma_rows_fit(w2, K);
  if (!mma_ || N != N2 || !(bf16_pair || mma_quant_glu_fit(w1, w2, K))) {
    matmul(x, w1, y1);
    matmul(x, w2, y2);
    return;
  }
  use_device();
  if (T == 0 || N == 0) return;
  launch_matmul_mma(x.as<float>(), x.stride(), w1, &w2, K, y1, T, N, &y2);
}

void CudaBackend::matmul_gelu_glu(const TensorView& x, const TensorView& gate, const TensorView& up, TensorView& out) {
  const auto [T, I, K] = check_matmul(x, gate, out);
  check_matmul(x, up, out);
  use_device();
  if (T == 0 || I == 0) return;
  if (mma_ && mma_quant_glu_fit(gate, up, K)) {
    launch_matmul_mma(x.as<float>(), x.stride(), gate, &up, K, out, T, I);
    return;
  }
  if (!same_rows_layout(gate, up)) {  // quantized, or two different layouts: the three ops
    Buffer& buf = scratch().glu_up;
    ensure(buf, T * I * sizeof(float));
    TensorView u(DType::F32, buf.data(), {T, I});
    matmul(x, gate, out);
    matmul(x, up, u);
    gelu_tanh_mul(out, u, out);
    return;
  }
  if (mma_ && mma_rows_fit(gate, K)) {  // up has gate's layout (same_rows_layout)
    launch_matmul_mma(x.as<float>(), x.stride(), gate, &up, K, out, T, I);
    return;
  }
  const bool x_aligned = reinterpret_cast<uint64_t>(x.data) % 16 == 0 && x.stride() % 4 == 0;
  dispatch_weight_rows(gate, K, x_aligned, matmul_tile_rows(T), [&]<int MT>(const auto& rows) {
    using Rows = std::decay_t<decltype(rows)>;
    const int64_t per_cta = kMatmulWarps * Rows::kRows;
    const dim3 grid(static_cast<unsigned>((I + per_cta - 1) / per_cta), static_cast<unsigned>((T + MT - 1) / MT));
    if constexpr (requires { rows.rebound(up); })  // FloatRows: same_rows_layout held
      launch("matmul_glu_kernel", matmul_glu_kernel<Rows, MT>, grid, kMatmulWarps * 32, 0, x.as<float>(), x.stride(),
             rows, rows.rebound(up), out.as<float>(), out.stride(), T, I);
  });
}

}  // namespace tandem
