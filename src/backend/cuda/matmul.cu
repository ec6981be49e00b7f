// matmul y[T,N] = x[T,K] · w[N,K]ᵀ on CUDA cores: f32 activations, weights in their stored dtype
// (F32/BF16/F16/F8_E4M3) widened to f32 in registers, f32 FMA accumulation.
//
// Shape: each warp owns one output column n and an M-tile of 1, 2, 4 or 8 rows of x (the smallest that
// holds T, up to 8), so each weight byte is read once per M-tile; a CTA is 8 warps (8 columns), the
// grid is (N/8) × (T/tile), which at T = 1 is N/8 CTAs — enough to cover every SM for any real layer. Lanes stream the weight row
// with 16-byte loads, 8 chunks per lane in flight. This one kernel family serves every T: the reduction
// order of an output element (see warp_dot in cuda_common.cuh) depends only on K and the weight
// row, never on T or the other rows, which lossless speculative decoding under batching relies on.
// At T = 1 it is bandwidth-bound; at large T it is FFMA-bound (no tensor cores in this pass).
#include "backend/cuda/cuda_common.cuh"

namespace tandem {

using namespace cu;

namespace {

template <int WT, bool VEC, bool XVEC, int MT>
__global__ void __launch_bounds__(kMatmulWarps * 32)
    matmul_kernel(const float* __restrict__ x, int64_t ldx, const void* __restrict__ w, float* __restrict__ y,
                  int64_t ldy, int64_t T, int64_t N, int64_t K) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kMatmulWarps + warp;
  if (n >= N) return;
  const int64_t t0 = static_cast<int64_t>(blockIdx.y) * MT;
  const int nrows = static_cast<int>(T - t0 < MT ? T - t0 : MT);
  const float* xr[MT];
#pragma unroll
  for (int m = 0; m < MT; ++m) xr[m] = x + (t0 + (m < nrows ? m : 0)) * ldx;
  float acc[MT];
#pragma unroll
  for (int m = 0; m < MT; ++m) acc[m] = 0.0f;
  const void* wrow = static_cast<const char*>(w) + n * K * welem_bytes<WT>();
  warp_dot<WT, VEC, XVEC, MT>(wrow, K, xr, nrows, acc, lane);
#pragma unroll
  for (int m = 0; m < MT; ++m) {
    const float s = warp_sum(acc[m]);
    if (lane == m && m < nrows) y[(t0 + m) * ldy + n] = s;
  }
}

}  // namespace

void CudaBackend::launch_matmul(const float* x, int64_t ldx, const void* w, DType wtype, float* y, int64_t ldy,
                                int64_t T, int64_t N, int64_t K) {
  if (T == 0 || N == 0) return;
  if ((T + kMatmulRows - 1) / kMatmulRows > 65535) fail("matmul: {} rows is more than one launch takes", T);
  if ((N + kMatmulWarps - 1) / kMatmulWarps > 0x7FFFFFFF) fail("matmul: {} columns is too many", N);
  const int wt = wtype_of(wtype);
  // The 8-element path needs every weight row aligned for its 16-byte (F8: 8-byte) loads; the choice
  // depends only on the weight, so a given weight always takes the same path whatever the batch.
  const uint64_t walign = wt == kF8 ? 8 : 16;
  const bool vec = K % 8 == 0 && reinterpret_cast<uint64_t>(w) % walign == 0;
  const bool xvec = reinterpret_cast<uint64_t>(x) % 16 == 0 && ldx % 4 == 0;
  const int mt = matmul_tile_rows(T);
  dispatch_matmul(wt, vec, xvec, mt, [&]<int WT, bool V, bool XV, int MT>() {
    const dim3 grid(static_cast<unsigned>((N + kMatmulWarps - 1) / kMatmulWarps), static_cast<unsigned>((T + MT - 1) / MT));
    matmul_kernel<WT, V, XV, MT><<<grid, kMatmulWarps * 32, 0, stream_>>>(x, ldx, w, y, ldy, T, N, K);
  });
  TANDEM_CUDA_LAUNCHED("matmul_kernel");
}

void CudaBackend::matmul(const TensorView& x, const TensorView& w, TensorView& y) {
  const auto [T, N, K] = check_matmul(x, w, y);
  use_device();
  launch_matmul(x.as<float>(), x.stride(), w.data, w.dtype, y.as<float>(), y.stride(), T, N, K);
}

}  // namespace tandem
