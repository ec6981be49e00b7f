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

// One CTA's share of y[T, N] = x · wᵀ on the tensor cores for weight rows W (MmaBf16Rows or
// MmaQuantRows, mma_rows.cuh / mma_quant.cuh), x rows 16-byte aligned (mma_x_rows): the 16 · VPW
// columns from column tile at.col() · VPW on, the TILES tiles of 8 x rows from row tile at.row_tile()
// on, and K slice at.slice() of the split, whose tickets and partial sums know the CTA's output as
// at.tile() (read from the CTA's index where used: values held across the K loop cost registers). GLU: y =
// gelu_tanh(x · wᵀ) · (x · upᵀ) with the same sums (the same bits as two such matmuls and
// gelu_tanh_mul). ONE_ROW: T is 1, and every lane takes that row (OneRowX, mma_rows.cuh). VPW > 1
// (quantized rows, TILES 1): the CTA takes VPW tiles of 16 columns, each warp VPW virtual warps of one
// (mma_quant.cuh). early: w and up are model constants, so their first loads may come before the wait
// for the previous kernel (partial's early). x is the previous kernel's output, so it is not
// __restrict__: a const __restrict__ parameter is read through the read-only path (ld.global.nc), which
// promises that the data does not change while the kernel runs, so its loads may be scheduled ahead of
// the wait. (With early loads and x __restrict__, the 8-bit golden tests' decode steps on CUDA diverged.)
template <class W, int TILES, bool GLU, bool ONE_ROW, int VPW, class At>
__device__ __forceinline__ void mma_cta(const float* x, int64_t ldx, const W& w, const W& up, int64_t K,
                                        float* __restrict__ y, int64_t ldy, int64_t T, int64_t N,
                                        const MmaSplit& split, const At& at, bool early) {
  if (!early) begin_kernel();
  constexpr int NT = GLU ? 2 : 1;
  __shared__ MmaReduceSmem<NT, TILES, VPW> sm;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4;
  const int64_t n0 = at.col() * kMmaRows * VPW;
  const int64_t nw = VPW == 1 ? n0 : n0 + warp / (kMmaWarps / VPW) * kMmaRows;  // the warp's row tile
  const int64_t t0 = at.row_tile() * TILES * kMmaTile;
  const int64_t na = nw + g < N ? nw + g : N - 1, nb = nw + g + 8 < N ? nw + g + 8 : N - 1;  // tails recompute
  W sets[NT];
  sets[0] = w;
  if constexpr (GLU) sets[NT - 1] = up;
  int64_t rows[NT][2];
#pragma unroll
  for (int j = 0; j < NT; ++j) rows[j][0] = na, rows[j][1] = nb;
  const float* xr[TILES];
#pragma unroll
  for (int i = 0; i < TILES; ++i) {
    const int64_t r = t0 + i * kMmaTile + (ONE_ROW ? 0 : g);
    xr[i] = r < T ? x + r * ldx : nullptr;
  }
  const int64_t blocks = W::blocks(K);  // slice s sums blocks [blocks · s / slices, blocks · (s + 1) / slices)
  const int slice = at.slice();
  float c[VPW * TILES][NT][4] = {};
  W::template partial<NT, TILES, ONE_ROW, VPW>(sets, rows, K, xr, blocks * slice / split.slices,
                                               blocks * (slice + 1) / split.slices, warp, lane, c, early);
  mma_finish<NT, TILES, VPW>(c, sm, warp, lane, split, at.tile(), slice, [&](int i, int x_row, int w_row, const float (&s)[NT]) {
    const int64_t tr = t0 + i * kMmaTile + x_row, nc = n0 + w_row;
    if (tr < T && nc < N) y[tr * ldy + nc] = GLU ? gelu_tanh(s[0]) * s[NT - 1] : s[0];
  });
}

// y[T, N] = x · wᵀ (GLU: the GeGLU of w and up) on the tensor cores: mma_cta for every CTA of a grid of
// column CTAs × x row tiles × split.slices.
template <class W, int TILES, bool GLU, bool ONE_ROW, int VPW = 1>
__global__ void __launch_bounds__(kMmaWarps * 32)
    matmul_mma_kernel(const float* x, int64_t ldx, W w, W up, int64_t K, float* __restrict__ y, int64_t ldy,
                      int64_t T, int64_t N, MmaSplit split, bool early) {
  struct At {  // the grid: column CTAs × x row tiles × slices
    __device__ int64_t col() const { return blockIdx.x; }
    __device__ int64_t row_tile() const { return blockIdx.y; }
    __device__ int slice() const { return static_cast<int>(blockIdx.z); }
    __device__ int64_t tile() const { return static_cast<int64_t>(blockIdx.y) * gridDim.x + blockIdx.x; }
  };
  mma_cta<W, TILES, GLU, ONE_ROW, VPW>(x, ldx, w, up, K, y, ldy, T, N, split, At{}, early);
}

// The projections of one matmul_group_kernel launch: part p's CTAs are [first_cta, first_cta + its
// column CTAs × slices), the parts in order.
constexpr int kMmaMaxGroup = 3;
template <class W>
struct MmaGroup {
  struct Part {
    W w;
    float* y;
    int64_t ldy, N;
    int first_cta;
    MmaSplit split;
  } part[kMmaMaxGroup];
  int n;
};

// y_p[T, N_p] = x · w_pᵀ for the parts of g, one x tile (T at most 8): CTA b is part p's (b −
// first_cta) / slices-th column CTA, K slice (b − first_cta) % slices, each part with its own split as
// its own matmul_mma_kernel launch would take it (the same bits).
template <class W, bool ONE_ROW, int VPW>
__global__ void __launch_bounds__(kMmaWarps * 32)
    matmul_group_kernel(const float* x, int64_t ldx, const __grid_constant__ MmaGroup<W> g, int64_t K, int64_t T,
                        bool early) {
  int p = 0;
#pragma unroll
  for (int i = 1; i < kMmaMaxGroup; ++i)
    if (i < g.n && static_cast<int>(blockIdx.x) >= g.part[i].first_cta) p = i;
  const typename MmaGroup<W>::Part& part = g.part[p];
  struct At {  // part p's CTAs: column CTAs × slices, the slices of a column CTA together
    int first, slices;
    __device__ int local() const { return static_cast<int>(blockIdx.x) - first; }
    __device__ int64_t col() const { return local() / slices; }
    __device__ int64_t row_tile() const { return 0; }
    __device__ int slice() const { return local() % slices; }
    __device__ int64_t tile() const { return col(); }
  };
  mma_cta<W, 1, false, ONE_ROW, VPW>(x, ldx, part.w, part.w, K, part.y, part.ldy, T, part.N, part.split,
                                     At{part.first_cta, part.split.slices}, early);
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

// Whether weight w is a model constant, whose first blocks a matmul may load before its wait for the
// previous kernel (early): quantized weights are (Backend::prepare_quant), bf16 ones where the view says
// so (TensorView::constant; not the drafter's candidate rows, which the previous kernel gathers).
bool model_constant(const TensorView& w) { return w.quant || w.constant; }

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

int CudaBackend::mma_slices(int64_t N, int64_t blocks, int per_sm) const {
  const int64_t tiles = (N + kMmaRows - 1) / kMmaRows;
  const int64_t ctas = int64_t{mma_split_per_sm_ >= 0 ? mma_split_per_sm_ : per_sm} * sm_count();
  return static_cast<int>(std::max<int64_t>(1, std::min({ctas / tiles, blocks / kMmaWarps, int64_t{kMmaMaxSlices}})));
}

MmaSplit CudaBackend::mma_split(int64_t tiles, int slices, int64_t floats) {
  const MmaSplitShape shape{tiles, slices, floats};
  MmaSplit split;
  mma_splits({&shape, 1}, {&split, 1});
  return split;
}

void CudaBackend::mma_splits(std::span<const MmaSplitShape> shapes, std::span<MmaSplit> splits) {
  int64_t floats = 0, tickets = 0;
  for (const MmaSplitShape& sh : shapes)
    if (sh.slices > 1) floats += sh.tiles * sh.slices * sh.floats, tickets += sh.tiles;
  OpScratch& sc = scratch();
  if (tickets > 0) {
    ensure(sc.mma_partials, floats * sizeof(float));
    if (sc.mma_tickets.bytes() < tickets * sizeof(unsigned)) {  // new tickets start at zero
      ensure(sc.mma_tickets, tickets * sizeof(unsigned));
      TANDEM_CUDA_CHECK(cudaMemsetAsync(sc.mma_tickets.data(), 0, sc.mma_tickets.bytes(), op_stream()));
    }
  }
  float* partials = static_cast<float*>(sc.mma_partials.data());
  unsigned* ticket = static_cast<unsigned*>(sc.mma_tickets.data());
  for (size_t i = 0; i < shapes.size(); ++i) {
    const MmaSplitShape& sh = shapes[i];
    splits[i] = MmaSplit{};
    splits[i].slices = sh.slices;
    if (sh.slices == 1) continue;
    splits[i].partials = partials, splits[i].tickets = ticket;
    partials += sh.tiles * sh.slices * sh.floats, ticket += sh.tiles;
  }
}

template <class W>
int CudaBackend::mma_weight_slices(int64_t N, int64_t K) const {
  return mma_slices(N, W::blocks(K), mma_ctas_per_sm<matmul_mma_kernel<W, 1, false, true, 1>>());
}

void CudaBackend::launch_matmul_mma(const float* x, int64_t ldx, const TensorView& w, const TensorView* up, int64_t K,
                                    TensorView& y, int64_t T, int64_t N) {
  const auto [xa, lda] = mma_x_rows(x, ldx, T, K);
  const bool early = early_loads_ && model_constant(w) && (!up || model_constant(*up));
  with_mma_rows(w, K, [&]<class W>(const W& rows) {
    const W up_rows = up ? mma_rows_of<W>(*up, K) : rows;
    with_mma_tiles<W>(T, [&]<int TILES>() {
      const int64_t per_cta = int64_t{TILES} * kMmaTile, n_tiles = (N + kMmaRows - 1) / kMmaRows;
      const int64_t t_tiles = (T + per_cta - 1) / per_cta;
      const int slices = mma_weight_slices<W>(N, K);
      const int64_t floats = TILES * 128 * (up ? 2 : 1);  // partial sums per tile and slice
      // A split's partial sums grow with the rows (a long prompt's prefill): launches over at most
      // kMmaSplitScratchBytes of them, one after the other. A row's sums are the same in any launch.
      const int64_t per_launch = std::min<int64_t>(
          65535, slices == 1 ? t_tiles
                             : std::max<int64_t>(1, kMmaSplitScratchBytes / (n_tiles * slices * floats * 4)));
      for (int64_t tt0 = 0; tt0 < t_tiles; tt0 += per_launch) {
        const int64_t tt = std::min(per_launch, t_tiles - tt0), r0 = tt0 * per_cta;
        const int64_t n_rows = std::min(T - r0, tt * per_cta);
        const float* xr = xa + r0 * lda;
        float* yr = y.as<float>() + r0 * y.stride();
        auto go = [&]<bool GLU>() {
          if constexpr (TILES == 1) {
            // One x tile (decode, verify): a CTA per VPW row tiles (with_mma_width), with the column
            // CTAs, split and kernel of that VPW; one row takes the ONE_ROW kernels.
            auto tile = [&]<bool ONE>() {
              constexpr int NT = GLU ? 2 : 1;
              const int64_t slice_blocks = (W::blocks(K) + slices - 1) / slices;
              constexpr int kWide = kMmaWideVpw<W, NT>;
              constexpr auto narrow = matmul_mma_kernel<W, 1, GLU, ONE, 1>;
              constexpr auto wide = matmul_mma_kernel<W, 1, GLU, ONE, kWide>;
              constexpr auto half = matmul_mma_kernel<W, 1, GLU, ONE, (kWide > 2 ? 2 : kWide)>;
              const MmaWidthPart part{n_tiles, slices, slice_blocks};
              with_mma_width<W, NT, narrow, wide, half>(
                  wide_ctas_, half_wide_ctas_, {&part, 1}, sm_count(), [&]<int VPW, auto KERNEL>() {
                    const int64_t col_ctas = (n_tiles + VPW - 1) / VPW;
                    const MmaSplit s = mma_split(col_ctas, slices, VPW * floats);
                    launch("matmul_mma_kernel", KERNEL,
                           dim3(static_cast<unsigned>(col_ctas), 1, static_cast<unsigned>(slices)), kMmaWarps * 32, 0,
                           xr, lda, rows, up_rows, K, yr, y.stride(), n_rows, N, s, early);
                  });
            };
            if (n_rows == 1) tile.template operator()<true>();
            else tile.template operator()<false>();
          } else {
            const MmaSplit split = mma_split(n_tiles * tt, slices, floats);
            const dim3 grid(static_cast<unsigned>(n_tiles), static_cast<unsigned>(tt), static_cast<unsigned>(slices));
            launch("matmul_mma_kernel", matmul_mma_kernel<W, TILES, GLU, false>, grid, kMmaWarps * 32, 0, xr, lda,
                   rows, up_rows, K, yr, y.stride(), n_rows, N, split, early);
          }
        };
        if (up) go.template operator()<true>();
        else go.template operator()<false>();
      }
    });
  });
}

void CudaBackend::launch_matmul_group(const TensorView& x, std::span<const Projection> ps) {
  const int64_t T = x.rows(), K = x.cols();
  const auto [xa, lda] = mma_x_rows(x.as<float>(), x.stride(), T, K);
  bool early = early_loads_;
  for (const Projection& p : ps) early = early && model_constant(*p.w);
  with_mma_rows(*ps[0].w, K, [&]<class W>(const W&) {
    const int n = static_cast<int>(ps.size());
    MmaWidthPart parts[kMmaMaxGroup];  // each weight's row tiles, slices and a slice's K blocks
    for (int i = 0; i < n; ++i) {
      const int slices = mma_weight_slices<W>(ps[i].w->rows(), K);
      parts[i] = {(ps[i].w->rows() + kMmaRows - 1) / kMmaRows, slices, (W::blocks(K) + slices - 1) / slices};
    }
    auto group = [&]<bool ONE>() {
      constexpr int kWide = kMmaWideVpw<W, 1>;
      constexpr auto narrow = matmul_group_kernel<W, ONE, 1>;
      constexpr auto wide = matmul_group_kernel<W, ONE, kWide>;
      constexpr auto half = matmul_group_kernel<W, ONE, (kWide > 2 ? 2 : kWide)>;
      const std::span<const MmaWidthPart> width_parts(parts, static_cast<size_t>(n));
      with_mma_width<W, 1, narrow, wide, half>(wide_ctas_, half_wide_ctas_, width_parts, sm_count(), [&]<int VPW, auto KERNEL>() {
        MmaGroup<W> g{};
        g.n = n;
        MmaSplitShape shapes[kMmaMaxGroup];
        MmaSplit splits[kMmaMaxGroup];
        int ctas = 0;
        for (int i = 0; i < n; ++i) {
          const int slices = static_cast<int>(parts[i].other);
          const int64_t col_ctas = (parts[i].col_tiles + VPW - 1) / VPW;
          shapes[i] = {col_ctas, slices, int64_t{VPW} * 128};
          g.part[i].w = mma_rows_of<W>(*ps[i].w, K);
          g.part[i].y = ps[i].y->as<float>();
          g.part[i].ldy = ps[i].y->stride();
          g.part[i].N = ps[i].w->rows();
          g.part[i].first_cta = ctas;
          ctas += static_cast<int>(col_ctas * slices);
        }
        mma_splits({shapes, static_cast<size_t>(n)}, {splits, static_cast<size_t>(n)});
        for (int i = 0; i < n; ++i) g.part[i].split = splits[i];
        launch("matmul_group_kernel", KERNEL, static_cast<unsigned>(ctas), kMmaWarps * 32, 0, xa, lda, g, K, T, early);
      });
    };
    if (T == 1) group.template operator()<true>();
    else group.template operator()<false>();
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

void CudaBackend::matmuls(const TensorView& x, std::span<const Projection> ps) {
  const int64_t T = x.rows(), K = x.cols();
  // One launch where the weights take one tensor-core kernel with one x (mma_same_kind: no act-order
  // permutation) and x is one tile (decode, verify); otherwise the matmuls, with the same sums.
  bool one_launch =
      mma_ && group_launches_ && ps.size() >= 2 && ps.size() <= static_cast<size_t>(kMmaMaxGroup) && T <= kMmaTile;
  for (const Projection& p : ps) {
    if (!p.w || !p.y) fail("matmuls: a projection has no weight or no output");
    const MatmulDims dims = check_matmul(x, *p.w, *p.y);
    one_launch = one_launch && dims.N > 0 && mma_same_kind(*ps[0].w, *p.w, K);
  }
  if (!one_launch) {
    for (const Projection& p : ps) matmul(x, *p.w, *p.y);
    return;
  }
  use_device();
  if (T == 0) return;
  launch_matmul_group(x, ps);
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
