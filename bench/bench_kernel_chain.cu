// bench_kernel_chain: what one kernel of a chain of dependent kernels costs on this GPU, the floor
// under every per-op launch of a decode step (a 26B-A4B layer has about eleven on its critical path,
// each reading its predecessor's output; docs/PERF.md).
//
// Kernel i of a chain waits for kernel i − 1 (the backend's begin_kernel: griddepcontrol.wait under
// programmatic dependent launch, else stream order), reads the n floats kernel i − 1 wrote (from L2,
// as the ops read a layer's activations), sums them in each CTA, and its CTA 0 writes n floats for
// kernel i + 1. With a byte count, its CTAs also stream that many bytes of a constant buffer between
// them, 16-byte loads, the first four a thread issued before the wait (as the tensor-core matmuls load
// their first weight blocks early), so the step from the floor to a bandwidth-bound kernel shows. A
// chain is recorded once as a CUDA graph and replayed (a chain streams at most 800 MB, so large reads
// make short chains): the median time per kernel, and the streamed bytes per second.
//
//   bench_kernel_chain [--length N] [--floats N]
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "backend/cuda/cuda_common.cuh"

namespace {

using tandem::cu::begin_kernel;

constexpr int kThreads = 256;
constexpr int kEarly = 4;  // 16-byte loads a thread issues before the wait
constexpr int kMaxFloats = 16 * kThreads;  // the most floats a kernel passes to the next
constexpr long long kMaxBytes = 16ll << 20;     // the most a kernel streams
constexpr long long kChainBytes = 800ll << 20;  // the most a chain streams (fewer kernels for large reads)
constexpr long long kRegionBytes = 512ll << 20;  // what the kernels of a chain stream through, ≫ L2

// out[0, n) from in[0, n) (every CTA reads all of in; CTA 0 writes out), streaming `words` 16-byte
// words of w between the CTAs. The sums keep every load live; nothing else depends on them.
__global__ void __launch_bounds__(kThreads) link_kernel(const float* in, float* out, int n, const uint4* __restrict__ w,
                                                        long long words) {
  const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
  long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x;
  uint32_t acc = 0;
  uint4 early[kEarly];
#pragma unroll
  for (int u = 0; u < kEarly; ++u) early[u] = i + u * stride < words ? __ldg(w + i + u * stride) : make_uint4(0, 0, 0, 0);
  begin_kernel();
#pragma unroll
  for (int u = 0; u < kEarly; ++u) acc ^= early[u].x ^ early[u].y ^ early[u].z ^ early[u].w;
  for (i += kEarly * stride; i < words; i += stride) {
    const uint4 v = __ldg(w + i);
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  // The previous kernel's floats, every load issued before the first is used (a thread holds at most
  // kMaxFloats / kThreads of them, as the ops keep a row in registers).
  float v[kMaxFloats / kThreads];
#pragma unroll
  for (int u = 0; u < kMaxFloats / kThreads; ++u) {
    const int j = threadIdx.x + u * kThreads;
    v[u] = j < n ? __ldcg(in + j) : 0.0f;
  }
  float s = 0.0f;
#pragma unroll
  for (int u = 0; u < kMaxFloats / kThreads; ++u) s += v[u];
  __shared__ float partial[kThreads / 32];
  for (int o = 16; o > 0; o /= 2) s += __shfl_xor_sync(0xFFFFFFFFu, s, o);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = s;
  __syncthreads();
  if (blockIdx.x != 0) return;
  float total = 0.0f;
  for (int k = 0; k < kThreads / 32; ++k) total += partial[k];
  // acc == 0x9E3779B9 is as good as never: the write keeps the streamed loads from being dropped.
#pragma unroll
  for (int u = 0; u < kMaxFloats / kThreads; ++u) {
    const int j = threadIdx.x + u * kThreads;
    if (j < n) out[j] = 0.5f * v[u] + (acc == 0x9E3779B9u ? total : 0.0f);
  }
}

// µs a kernel of one chain of `length` kernels of `grid` CTAs streaming `bytes` each, recorded as a graph:
// the median of 20 replays.
double run_chain(int grid, long long bytes, bool pdl, int length, int n, const uint4* w, float* vec[2],
                 cudaStream_t s) {
  const long long words = bytes / 16;
  cudaGraph_t graph;
  TANDEM_CUDA_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
  for (int i = 0; i < length; ++i) {
    cudaLaunchConfig_t cfg{};
    cfg.gridDim = dim3(grid);
    cfg.blockDim = dim3(kThreads);
    cfg.stream = s;
    cudaLaunchAttribute attr{};
    attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr.val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = &attr;
    cfg.numAttrs = pdl ? 1 : 0;
    const float* in = vec[i % 2];
    float* out = vec[(i + 1) % 2];
    // Each kernel streams the next bytes of the region, so that no kernel finds its bytes in L2.
    const uint4* wi = w + (static_cast<long long>(i) * words) % (kRegionBytes / 16 - words + 1);
    TANDEM_CUDA_CHECK(cudaLaunchKernelEx(&cfg, link_kernel, in, out, n, wi, words));
  }
  TANDEM_CUDA_CHECK(cudaStreamEndCapture(s, &graph));
  cudaGraphExec_t exec;
  TANDEM_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  for (int r = 0; r < 3; ++r) TANDEM_CUDA_CHECK(cudaGraphLaunch(exec, s));
  cudaEvent_t a, b;
  TANDEM_CUDA_CHECK(cudaEventCreate(&a));
  TANDEM_CUDA_CHECK(cudaEventCreate(&b));
  const int reps = 20;
  std::vector<float> ms(reps);
  for (int r = 0; r < reps; ++r) {
    TANDEM_CUDA_CHECK(cudaEventRecord(a, s));
    TANDEM_CUDA_CHECK(cudaGraphLaunch(exec, s));
    TANDEM_CUDA_CHECK(cudaEventRecord(b, s));
    TANDEM_CUDA_CHECK(cudaEventSynchronize(b));
    TANDEM_CUDA_CHECK(cudaEventElapsedTime(&ms[r], a, b));
  }
  std::sort(ms.begin(), ms.end());
  TANDEM_CUDA_CHECK(cudaEventDestroy(a));
  TANDEM_CUDA_CHECK(cudaEventDestroy(b));
  TANDEM_CUDA_CHECK(cudaGraphExecDestroy(exec));
  TANDEM_CUDA_CHECK(cudaGraphDestroy(graph));
  return ms[reps / 2] * 1000.0 / length;
}

}  // namespace

int main(int argc, char** argv) try {
  int length = 200, n = 2816;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--length")) length = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--floats")) n = std::atoi(argv[i + 1]);
  }
  if (n < 0 || n > kMaxFloats) {
    std::fprintf(stderr, "--floats must be in [0, %d]\n", kMaxFloats);
    return 2;
  }
  cudaDeviceProp prop{};
  TANDEM_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  const int sms = prop.multiProcessorCount;
  std::printf("%s, %d SMs; chains of %d kernels, each reading the previous kernel's %d floats\n", prop.name, sms,
              length, n);
  cudaStream_t s;
  TANDEM_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  uint4* w = nullptr;
  TANDEM_CUDA_CHECK(cudaMalloc(&w, kRegionBytes));
  TANDEM_CUDA_CHECK(cudaMemset(w, 1, kRegionBytes));
  float* vec[2];
  for (float*& v : vec) {
    TANDEM_CUDA_CHECK(cudaMalloc(&v, n * sizeof(float)));
    TANDEM_CUDA_CHECK(cudaMemset(v, 0, n * sizeof(float)));
  }
  std::printf("| CTAs | bytes a kernel | µs a kernel, graph | µs, graph + PDL | GB/s, graph + PDL |\n|---:|---:|---:|---:|---:|\n");
  for (int grid : {1, sms, 2 * sms, 4 * sms})
    for (long long bytes : {0ll, 256ll << 10, 1ll << 20, 4ll << 20, kMaxBytes}) {
      if (grid == 1 && bytes > 0) continue;  // one CTA streams at a fraction of the GPU's bandwidth
      const int len = bytes ? static_cast<int>(std::min<long long>(length, kChainBytes / bytes)) : length;
      const double plain = run_chain(grid, bytes, false, len, n, w, vec, s);
      const double pdl = run_chain(grid, bytes, true, len, n, w, vec, s);
      std::printf("| %d | %lld | %.2f | %.2f | %.0f |\n", grid, bytes, plain, pdl, bytes / (pdl * 1e3));
    }
  TANDEM_CUDA_CHECK(cudaFree(w));
  for (float* v : vec) TANDEM_CUDA_CHECK(cudaFree(v));
  TANDEM_CUDA_CHECK(cudaStreamDestroy(s));
  return 0;
} catch (const tandem::Error& e) {  // a failed CUDA call (TANDEM_CUDA_CHECK)
  std::fprintf(stderr, "error: %s\n", e.what());
  return 1;
}
