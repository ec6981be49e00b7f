// Per-token ops around attention: embed (table rows × scale), rms_norm (and rms_norm_add, the
// residual form) and rope.
//
// rms_norm is one CTA per row, sized so that each thread holds at most PER elements of the row in
// registers: the row is read once, with every load issued before the first use (a loop that summed
// as it loaded would wait one memory latency per element a thread owns), reduced across the CTA,
// scaled and written (x and y may alias). embed and rope
// are grid-stride elementwise kernels over (token, element) and (token, head, pair). Math follows
// the CPU backend: 1/sqrtf (IEEE), angle = float(pos) · inv_freq in f32 then cosf/sinf (the
// accurate library versions, not the __cosf/__sinf intrinsics). Device ids outside the table give
// a zero row instead of a read out of bounds.
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

// y = RMS(x) · w, or with ADD y += RMS(x) · w (rms_norm_add).
template <int PER, bool ADD>
__global__ void __launch_bounds__(1024) rms_norm_kernel(Mat x, const void* w, int wt, float eps, Mat y) {
  begin_kernel();
  __shared__ float s_part[32];
  const int64_t r = blockIdx.x, D = x.cols;
  const float* xr = x.p + r * x.ld;
  float* yr = y.p + r * y.ld;
  float v[PER], ww[PER];
#pragma unroll
  for (int j = 0; j < PER; ++j) {
    const int64_t i = threadIdx.x + j * static_cast<int64_t>(blockDim.x);
    v[j] = i < D ? xr[i] : 0.0f;
    ww[j] = w && i < D ? load_any(w, wt, i) : 1.0f;
  }
  float ss = 0.0f;
#pragma unroll
  for (int j = 0; j < PER; ++j) ss = fmaf(v[j], v[j], ss);
  ss = warp_sum(ss);
  const int warps = blockDim.x / 32;
  if (warps > 1) {
    if (threadIdx.x % 32 == 0) s_part[threadIdx.x / 32] = ss;
    __syncthreads();
    ss = 0.0f;
    for (int i = 0; i < warps; ++i) ss += s_part[i];
  }
  const float inv = 1.0f / sqrtf(ss / static_cast<float>(D) + eps);
#pragma unroll
  for (int j = 0; j < PER; ++j) {
    const int64_t i = threadIdx.x + j * static_cast<int64_t>(blockDim.x);
    if (i < D) {
      const float n = w ? v[j] * inv * ww[j] : v[j] * inv;
      yr[i] = ADD ? yr[i] + n : n;
    }
  }
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
    v[j] = a * c - b * s;
    v[j + half] = b * c + a * s;
  }
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
  launch_rms_norm(x, weight, eps, y, "rms_norm", /*add=*/false);
}

void CudaBackend::rms_norm_add(const TensorView& y, const TensorView* weight, float eps, TensorView& x) {
  launch_rms_norm(y, weight, eps, x, "rms_norm_add", /*add=*/true);
}

void CudaBackend::launch_rms_norm(const TensorView& in, const TensorView* weight, float eps, TensorView& out,
                                  const char* op, bool add) {
  check_f32_2d(in, "rms_norm input");
  check_f32_2d(out, "rms_norm output");
  check_same_shape(in, out, op);
  const int64_t D = in.cols();
  if (weight) {
    if (!is_float_dtype(weight->dtype) || weight->numel() != D) fail("{}: weight must be a float tensor of {} elements", op, D);
    if (weight->rows() != 1 && weight->stride() != weight->cols()) fail("{}: weight must be dense", op);
  }
  if (in.rows() == 0 || D == 0) return;
  if (in.rows() > 0x7FFFFFFF) fail("{}: {} rows is too many for one launch", op, in.rows());
  // Threads per row: a multiple of 32 giving each at most 8 elements (32 beyond 8192 columns).
  const int per = D <= 8 * 1024 ? 8 : 32;
  if (D > per * 1024) fail("{}: rows of {} elements are longer than the CUDA backend's {}", op, D, 32 * 1024);
  const unsigned threads = static_cast<unsigned>(std::max<int64_t>(32, (D + per * 32 - 1) / (per * 32) * 32));
  use_device();
  const void* wp = weight ? weight->data : nullptr;
  const int wt = weight ? wtype_of(weight->dtype) : 0;
  const unsigned rows = static_cast<unsigned>(in.rows());
  auto go = [&]<int PER, bool ADD>() {
    launch("rms_norm_kernel", rms_norm_kernel<PER, ADD>, rows, threads, 0, mat(in), wp, wt, eps, mat(out));
  };
  if (per == 8) add ? go.template operator()<8, true>() : go.template operator()<8, false>();
  else add ? go.template operator()<32, true>() : go.template operator()<32, false>();
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

}  // namespace tandem
