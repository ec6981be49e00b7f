// Elementwise f32 ops on 2-D views with row strides: gelu_tanh_mul, add, axpy, scale, softcap, clamp,
// standardize.
//
// One grid-stride kernel per op over rows × cols (a view's rows may be strided halves of one
// tensor, so no op assumes density). They are memory-bound; nothing cleverer is worth it. Inputs
// and outputs may alias element-for-element (each element is read and written by one thread), so no
// pointer is __restrict__. Math as on the CPU: tanhf (not an intrinsic), fmaf for axpy.
#include "backend/cuda/cuda_common.cuh"

namespace tandem {

using namespace cu;

namespace {

template <typename F>
__device__ __forceinline__ void for_each_elem(int64_t rows, int64_t cols, F&& f) {
  const int64_t n = rows * cols;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    f(i / cols, i % cols);
}

__global__ void gelu_tanh_mul_kernel(Mat g, Mat u, Mat o) {
  begin_kernel();
  for_each_elem(o.rows, o.cols, [&](int64_t r, int64_t c) {
    o.p[r * o.ld + c] = gelu_tanh(g.p[r * g.ld + c]) * u.p[r * u.ld + c];
  });
}

__global__ void add_kernel(Mat a, Mat b, Mat y) {
  begin_kernel();
  for_each_elem(y.rows, y.cols, [&](int64_t r, int64_t c) { y.p[r * y.ld + c] = a.p[r * a.ld + c] + b.p[r * b.ld + c]; });
}

__global__ void axpy_kernel(float alpha, Mat x, Mat y) {
  begin_kernel();
  for_each_elem(y.rows, y.cols, [&](int64_t r, int64_t c) {
    float* py = y.p + r * y.ld + c;
    *py = fmaf(alpha, x.p[r * x.ld + c], *py);
  });
}

__global__ void scale_kernel(Mat x, float s) {
  begin_kernel();
  for_each_elem(x.rows, x.cols, [&](int64_t r, int64_t c) { x.p[r * x.ld + c] *= s; });
}

__global__ void softcap_kernel(Mat x, float cap, float inv) {
  begin_kernel();
  for_each_elem(x.rows, x.cols, [&](int64_t r, int64_t c) {
    float* p = x.p + r * x.ld + c;
    *p = cap * tanhf(*p * inv);
  });
}

__global__ void clamp_kernel(Mat x, float lo, float hi) {
  begin_kernel();
  for_each_elem(x.rows, x.cols, [&](int64_t r, int64_t c) {
    float* p = x.p + r * x.ld + c;
    *p = fminf(fmaxf(*p, lo), hi);
  });
}

__global__ void standardize_kernel(Mat x, const void* bias, const void* scale, int wt_bias, int wt_scale, Mat y) {
  begin_kernel();
  for_each_elem(y.rows, y.cols, [&](int64_t r, int64_t c) {
    y.p[r * y.ld + c] = (x.p[r * x.ld + c] - load_any(bias, wt_bias, c)) * load_any(scale, wt_scale, c);
  });
}

}  // namespace

void CudaBackend::gelu_tanh_mul(const TensorView& gate, const TensorView& up, TensorView& out) {
  check_f32_2d(gate, "gelu_tanh_mul gate");
  check_f32_2d(up, "gelu_tanh_mul up");
  check_f32_2d(out, "gelu_tanh_mul out");
  check_same_shape(gate, up, "gelu_tanh_mul");
  check_same_shape(gate, out, "gelu_tanh_mul");
  if (out.numel() == 0) return;
  use_device();
  launch("gelu_tanh_mul_kernel", gelu_tanh_mul_kernel, grid_for(out.numel()), 256, 0, mat(gate), mat(up), mat(out));
}

void CudaBackend::add(const TensorView& a, const TensorView& b, TensorView& y) {
  check_f32_2d(a, "add a");
  check_f32_2d(b, "add b");
  check_f32_2d(y, "add y");
  check_same_shape(a, y, "add");
  check_same_shape(b, y, "add");
  if (y.numel() == 0) return;
  use_device();
  launch("add_kernel", add_kernel, grid_for(y.numel()), 256, 0, mat(a), mat(b), mat(y));
}

void CudaBackend::axpy(float alpha, const TensorView& x, TensorView& y) {
  check_f32_2d(x, "axpy x");
  check_f32_2d(y, "axpy y");
  check_same_shape(x, y, "axpy");
  if (y.numel() == 0) return;
  use_device();
  launch("axpy_kernel", axpy_kernel, grid_for(y.numel()), 256, 0, alpha, mat(x), mat(y));
}

void CudaBackend::scale(TensorView& x, float s) {
  check_f32_2d(x, "scale x");
  if (x.numel() == 0) return;
  use_device();
  launch("scale_kernel", scale_kernel, grid_for(x.numel()), 256, 0, mat(x), s);
}

void CudaBackend::softcap(TensorView& x, float cap) {
  check_f32_2d(x, "softcap x");
  if (!(cap > 0)) fail("softcap: cap must be positive, got {}", cap);
  if (x.numel() == 0) return;
  use_device();
  launch("softcap_kernel", softcap_kernel, grid_for(x.numel()), 256, 0, mat(x), cap, 1.0f / cap);
}

void CudaBackend::clamp(TensorView& x, float lo, float hi) {
  check_f32_2d(x, "clamp x");
  if (!(lo <= hi)) fail("clamp: bounds [{}, {}] are empty", lo, hi);
  if (x.numel() == 0) return;
  use_device();
  launch("clamp_kernel", clamp_kernel, grid_for(x.numel()), 256, 0, mat(x), lo, hi);
}

void CudaBackend::standardize(const TensorView& x, const TensorView& bias, const TensorView& scale, TensorView& y) {
  check_f32_2d(x, "standardize x");
  check_f32_2d(y, "standardize y");
  check_same_shape(x, y, "standardize");
  for (const TensorView* t : {&bias, &scale})
    if (!is_float_dtype(t->dtype) || t->numel() != x.cols())
      fail("standardize: bias and scale must be float tensors of {} elements", x.cols());
  if (y.numel() == 0) return;
  use_device();
  launch("standardize_kernel", standardize_kernel, grid_for(y.numel()), 256, 0, mat(x), bias.data, scale.data,
         wtype_of(bias.dtype), wtype_of(scale.dtype), mat(y));
}

}  // namespace tandem
