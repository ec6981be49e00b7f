// matmul y[T,N] = x[T,K] · w[N,K]ᵀ on CUDA cores: f32 activations, weights in their stored dtype
// (F32/BF16/F16/F8_E4M3) widened to f32 in registers, f32 FMA accumulation.
//
// Shape: each warp owns one output column n and loops over an M-tile of up to 8 rows of x, so each
// weight byte is read once per M-tile; a CTA is 8 warps (8 columns), the grid is (N/8) × (T/8), which
// at T = 1 is N/8 CTAs — enough to cover every SM for any real layer. Lanes stream the weight row
// with 16-byte loads, 8 chunks per lane in flight. This one kernel family serves every T: the reduction
// order of an output element (see warp_dot in cuda_common.cuh) depends only on K and the weight
// row, never on T or the other rows, which lossless speculative decoding under batching relies on.
// At T = 1 it is bandwidth-bound; at large T it is FFMA-bound (no tensor cores in this pass).
#include "backend/cuda/cuda_common.cuh"

namespace tandem {

using namespace cu;

namespace {

template <int WT, bool VEC, bool XVEC>
__global__ void __launch_bounds__(kMatmulWarps * 32)
    matmul_kernel(const float* __restrict__ x, int64_t ldx, const void* __restrict__ w, float* __restrict__ y,
                  int64_t ldy, int64_t T, int64_t N, int64_t K) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t n = static_cast<int64_t>(blockIdx.x) * kMatmulWarps + warp;
  if (n >= N) return;
  const int64_t t0 = static_cast<int64_t>(blockIdx.y) * kMatmulRows;
  const int nrows = static_cast<int>(T - t0 < kMatmulRows ? T - t0 : kMatmulRows);
  const float* xr[kMatmulRows];
#pragma unroll
  for (int m = 0; m < kMatmulRows; ++m) xr[m] = x + (t0 + (m < nrows ? m : 0)) * ldx;
  float acc[kMatmulRows];
#pragma unroll
  for (int m = 0; m < kMatmulRows; ++m) acc[m] = 0.0f;
  const void* wrow = static_cast<const char*>(w) + n * K * welem_bytes<WT>();
  warp_dot<WT, VEC, XVEC, kMatmulRows>(wrow, K, xr, nrows, acc, lane);
#pragma unroll
  for (int m = 0; m < kMatmulRows; ++m) {
    const float s = warp_sum(acc[m]);
    if (lane == m && m < nrows) y[(t0 + m) * ldy + n] = s;
  }
}

template <int WT>
void launch(const float* x, int64_t ldx, const void* w, float* y, int64_t ldy, int64_t T, int64_t N, int64_t K,
            bool vec, bool xvec, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((N + kMatmulWarps - 1) / kMatmulWarps),
                  static_cast<unsigned>((T + kMatmulRows - 1) / kMatmulRows));
  const int threads = kMatmulWarps * 32;
  if (vec && xvec) matmul_kernel<WT, true, true><<<grid, threads, 0, stream>>>(x, ldx, w, y, ldy, T, N, K);
  else if (vec) matmul_kernel<WT, true, false><<<grid, threads, 0, stream>>>(x, ldx, w, y, ldy, T, N, K);
  else matmul_kernel<WT, false, false><<<grid, threads, 0, stream>>>(x, ldx, w, y, ldy, T, N, K);
  TANDEM_CUDA_LAUNCHED("matmul_kernel");
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
  switch (wt) {
    case kF32: launch<kF32>(x, ldx, w, y, ldy, T, N, K, vec, xvec, stream_); break;
    case kBF16: launch<kBF16>(x, ldx, w, y, ldy, T, N, K, vec, xvec, stream_); break;
    case kF16: launch<kF16>(x, ldx, w, y, ldy, T, N, K, vec, xvec, stream_); break;
    default: launch<kF8>(x, ldx, w, y, ldy, T, N, K, vec, xvec, stream_); break;
  }
}

void CudaBackend::matmul(const TensorView& x, const TensorView& w, TensorView& y) {
  const auto [T, N, K] = check_matmul(x, w, y);
  use_device();
  launch_matmul(x.as<float>(), x.stride(), w.data, w.dtype, y.as<float>(), y.stride(), T, N, K);
}

}  // namespace tandem
