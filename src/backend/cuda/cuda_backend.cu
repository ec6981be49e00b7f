// The CUDA backend object: device selection, memory (cudaMalloc, async copies on the backend's one
// non-blocking stream), synchronisation accounting, and the data-movement ops (copy, gather_rows,
// fill_dummy). Every op of every file is issued on that one stream with no host synchronisation or
// allocation in the hot path, so a decode step can later be captured into a CUDA graph.
#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <exception>
#include <vector>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/cuda_common.cuh"
#include "backend/dummy_values.h"
#include "util/log.h"

namespace tandem {

using namespace cu;

namespace {

// dst row r = src row ids[r] (raw words of W bytes); rows whose id is outside [0, n_src) are zeroed.
template <typename W>
__global__ void gather_rows_kernel(const char* __restrict__ src, int64_t src_pitch, int64_t n_src,
                                   const int32_t* __restrict__ ids, char* __restrict__ dst, int64_t dst_pitch,
                                   int64_t rows, int64_t words) {
  begin_kernel();
  const int64_t n = rows * words;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / words, c = i % words;
    const int32_t id = ids[r];
    W v{};
    if (id >= 0 && id < n_src) v = reinterpret_cast<const W*>(src + id * src_pitch)[c];
    reinterpret_cast<W*>(dst + r * dst_pitch)[c] = v;
  }
}

__global__ void fill_dummy_kernel(uint16_t* __restrict__ p, int64_t ld, int64_t rows, int64_t cols, uint64_t seed,
                                  float center, float half_width) {
  begin_kernel();
  const int64_t n = rows * cols;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    p[(i / cols) * ld + i % cols] = dummy_bf16(seed, static_cast<uint64_t>(i), center, half_width);
}

}  // namespace

CudaBackend::CudaBackend(int device) : device_(device) {
  TANDEM_CUDA_CHECK(cudaSetDevice(device));
  cudaDeviceProp prop{};
  TANDEM_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  name_ = fmt::format("cuda:{} ({}, sm_{}{}, {} GiB)", device, prop.name, prop.major, prop.minor,
                      static_cast<unsigned long long>(prop.totalGlobalMem >> 30));
  sm_count_ = prop.multiProcessorCount;
  const char* pdl = std::getenv("TANDEM_CUDA_PDL");
  pdl_ = prop.major >= 9 && !(pdl && std::string(pdl) == "0");
  const char* mma = std::getenv("TANDEM_CUDA_MMA");
  mma_ = prop.major >= 8 && !(mma && std::string(mma) == "0");
  const char* wide = std::getenv("TANDEM_CUDA_WIDE");
  wide_ctas_ = !(wide && std::string(wide) == "0");
  half_wide_ctas_ = wide_ctas_ && !(wide && std::string(wide) == "4");
  const char* few = std::getenv("TANDEM_CUDA_FEW_ROWS");
  few_rows_ = !(few && std::string(few) == "0");
  const char* early = std::getenv("TANDEM_CUDA_EARLY");
  early_loads_ = !(early && std::string(early) == "0");
  const char* repeat = std::getenv("TANDEM_CUDA_REPEAT");
  repeat_ = repeat ? repeat : "";
  // Split-K: one or two CTAs per SM by the weight's code (mma_slices), or TANDEM_CUDA_SPLIT_K.
  const char* split = std::getenv("TANDEM_CUDA_SPLIT_K");
  if (split) mma_split_per_sm_ = static_cast<int>(std::clamp(std::strtol(split, nullptr, 10), 0L, 64L));
  TANDEM_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  const char* concurrent = std::getenv("TANDEM_CUDA_CONCURRENT");
  concurrent_ = !(concurrent && std::string(concurrent) == "0");
  const char* cross_pdl = std::getenv("TANDEM_CUDA_CROSS_PDL");
  cross_pdl_ = !(cross_pdl && std::string(cross_pdl) == "0");
  TANDEM_CUDA_CHECK(cudaStreamCreateWithFlags(&side_stream_, cudaStreamNonBlocking));
  TANDEM_CUDA_CHECK(cudaEventCreateWithFlags(&fork_event_, cudaEventDisableTiming));
  TANDEM_CUDA_CHECK(cudaEventCreateWithFlags(&join_event_, cudaEventDisableTiming));
}

CudaBackend::~CudaBackend() {
  cudaSetDevice(device_);
  cudaStreamSynchronize(stream_);
  cudaStreamSynchronize(side_stream_);
  for (OpScratch& sc : scratch_) sc = OpScratch{};
  cudaEventDestroy(fork_event_);
  cudaEventDestroy(join_event_);
  cudaStreamDestroy(side_stream_);
  cudaStreamDestroy(stream_);
}

void CudaBackend::use_device() const {
  int cur = -1;
  TANDEM_CUDA_CHECK(cudaGetDevice(&cur));
  if (cur != device_) TANDEM_CUDA_CHECK(cudaSetDevice(device_));
}

void CudaBackend::ensure(Buffer& b, size_t bytes) {
  if (b.bytes() >= bytes) return;
  // cudaFree (in reset) waits for the device, so work still reading the old buffer finishes first.
  b.reset();
  b = Buffer(*this, (bytes + 255) / 256 * 256);
}

void* CudaBackend::alloc(size_t bytes) {
  use_device();
  ++memory_epoch_, ++issued_;
  void* p = nullptr;
  const cudaError_t e = cudaMalloc(&p, bytes ? bytes : 1);
  if (e != cudaSuccess) {
    cudaGetLastError();
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    fail("out of GPU memory allocating {:.1f} MiB ({:.1f} MiB free of {:.1f} MiB) on {}: {}",
         bytes / 1048576.0, free_b / 1048576.0, total_b / 1048576.0, name_, cudaGetErrorString(e));
  }
  return p;
}

void CudaBackend::free(void* p) {
  if (!p) return;
  use_device();
  if (capturing_) fail("free() while recording a CUDA graph (a step changed its buffers without a warm-up run)");
  ++memory_epoch_, ++issued_;
  TANDEM_CUDA_CHECK(cudaFree(p));
}

void CudaBackend::upload(void* dst, const void* host_src, size_t bytes) {
  if (bytes == 0) return;
  use_device();
  if (capturing_) fail("upload() inside a recorded step: a step's inputs are uploaded before it runs");
  TANDEM_CUDA_CHECK(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, stream_));
  ++issued_;
}

void CudaBackend::download(void* host_dst, const void* src, size_t bytes) {
  use_device();
  if (capturing_) fail("download() inside a recorded step: a recorded step may not wait for the host");
  if (bytes) TANDEM_CUDA_CHECK(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, stream_));
  TANDEM_CUDA_CHECK(cudaStreamSynchronize(stream_));
  ++host_syncs_;
}

void CudaBackend::synchronize() {
  use_device();
  if (capturing_) fail("synchronize() inside a recorded step: a recorded step may not wait for the host");
  TANDEM_CUDA_CHECK(cudaStreamSynchronize(stream_));
  ++host_syncs_;
}

namespace {

// One captured step: its instantiated graph and the memory layout it was captured in.
struct CudaRecording final : Recording {
  cudaGraphExec_t exec = nullptr;
  uint64_t epoch = ~0ull;  // memory epoch of the last direct run or capture
  ~CudaRecording() override {
    if (exec) cudaGraphExecDestroy(exec);
  }
};

// A captured step's ordinary edges between two kernels made programmatic. Within one stream a
// launch() is captured with a programmatic edge from the kernel before it, so it may start while that
// kernel ends and wait in begin_kernel(); a fork or join of concurrently() is an event between the two
// streams, captured as an ordinary edge, and the kernel after it is launched only once the kernel
// before it has completed. Every kernel of the backend begins with begin_kernel(), whose wait covers
// all of its programmatic predecessors, so across the streams the same early launch is as safe.
// Edges from or to other nodes (copies, memsets) stay ordinary.
cudaError_t programmatic_joins(cudaGraph_t graph) {
  size_t n = 0;
  cudaError_t e = cudaGraphGetEdges(graph, nullptr, nullptr, nullptr, &n);
  if (e == cudaErrorLossyQuery) e = cudaSuccess;  // some edges are programmatic already: n is set
  if (e != cudaSuccess || n == 0) return e;
  std::vector<cudaGraphNode_t> from(n), to(n);
  std::vector<cudaGraphEdgeData> data(n);
  if ((e = cudaGraphGetEdges(graph, from.data(), to.data(), data.data(), &n)) != cudaSuccess) return e;
  auto kernel = [](cudaGraphNode_t node) {
    cudaGraphNodeType type{};
    return cudaGraphNodeGetType(node, &type) == cudaSuccess && type == cudaGraphNodeTypeKernel;
  };
  std::vector<cudaGraphNode_t> join_from, join_to;
  for (size_t i = 0; i < n; ++i)
    if (data[i].type == cudaGraphDependencyTypeDefault && data[i].from_port == 0 && kernel(from[i]) && kernel(to[i]))
      join_from.push_back(from[i]), join_to.push_back(to[i]);
  if (join_from.empty()) return cudaSuccess;
  const std::vector<cudaGraphEdgeData> ordinary(join_from.size());  // zeroed: the default edge
  cudaGraphEdgeData programmatic{};
  programmatic.from_port = cudaGraphKernelNodePortProgrammatic;
  programmatic.type = cudaGraphDependencyTypeProgrammatic;
  const std::vector<cudaGraphEdgeData> early(join_from.size(), programmatic);
  e = cudaGraphRemoveDependencies(graph, join_from.data(), join_to.data(), ordinary.data(), join_from.size());
  if (e == cudaSuccess)
    e = cudaGraphAddDependencies(graph, join_from.data(), join_to.data(), early.data(), join_from.size());
  return e;
}

}  // namespace

void CudaBackend::run_recorded(std::unique_ptr<Recording>& recording, const std::function<void()>& issue) {
  if (!recording_on_ || capturing_) return issue();
  use_device();
  if (!recording) recording = std::make_unique<CudaRecording>();
  auto& r = static_cast<CudaRecording&>(*recording);
  if (r.exec && r.epoch == memory_epoch_) {
    TANDEM_CUDA_CHECK(cudaGraphLaunch(r.exec, stream_));
    ++issued_;
    return;
  }
  if (r.exec) TANDEM_CUDA_CHECK(cudaGraphExecDestroy(r.exec)), r.exec = nullptr;
  if (r.epoch != memory_epoch_) {
    // First run in this memory layout: issue directly, so any scratch the step needs grows now.
    issue();
    r.epoch = memory_epoch_;
    return;
  }
  // Same layout as the last direct run: capture. Nothing is executed while capturing, so the graph is
  // launched at the end (or, if capturing failed, the step is issued directly).
  TANDEM_CUDA_CHECK(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeThreadLocal));
  capturing_ = true;
  cudaGraph_t graph = nullptr;
  try {
    issue();
  } catch (...) {
    capturing_ = false;
    cudaStreamEndCapture(stream_, &graph);
    if (graph) cudaGraphDestroy(graph);
    cudaGetLastError();
    throw;
  }
  capturing_ = false;
  cudaError_t e = cudaStreamEndCapture(stream_, &graph);
  const bool joins = e == cudaSuccess && pdl_ && cross_pdl_ && concurrent_;
  if (joins) e = programmatic_joins(graph);
  if (e == cudaSuccess) e = cudaGraphInstantiate(&r.exec, graph, 0);
  if (e != cudaSuccess && joins) {  // the next capture keeps the ordinary edges
    log::warn("a CUDA graph with programmatic joins failed ({}); recording ordinary joins", cudaGetErrorString(e));
    cross_pdl_ = false;
  }
  if (graph) cudaGraphDestroy(graph);
  if (e != cudaSuccess || r.epoch != memory_epoch_) {  // e.g. an allocation while capturing
    cudaGetLastError();
    if (r.exec) cudaGraphExecDestroy(r.exec), r.exec = nullptr;
    r.epoch = memory_epoch_;
    issue();
    return;
  }
  TANDEM_CUDA_CHECK(cudaGraphLaunch(r.exec, stream_));
  ++issued_;
}

void CudaBackend::concurrently(const std::function<void()>& a, const std::function<void()>& b) {
  if (lane_ || !concurrent_) {  // nested (the side stream runs both), or turned off
    a();
    b();
    return;
  }
  use_device();
  // Fork: the side stream starts after everything issued so far (in a capture, the event makes it part
  // of the graph). Join: the main stream's later ops wait for the side's, also when a branch throws.
  TANDEM_CUDA_CHECK(cudaEventRecord(fork_event_, stream_));
  TANDEM_CUDA_CHECK(cudaStreamWaitEvent(side_stream_, fork_event_, 0));
  std::exception_ptr error;
  lane_ = 1;
  try {
    a();
  } catch (...) {
    error = std::current_exception();
  }
  lane_ = 0;
  TANDEM_CUDA_CHECK(cudaEventRecord(join_event_, side_stream_));
  if (!error) try {
      b();
    } catch (...) {
      error = std::current_exception();
    }
  TANDEM_CUDA_CHECK(cudaStreamWaitEvent(stream_, join_event_, 0));
  if (error) std::rethrow_exception(error);
}

void CudaBackend::memory_info(size_t* free_bytes, size_t* total_bytes) const {
  use_device();
  *free_bytes = 0, *total_bytes = 0;
  TANDEM_CUDA_CHECK(cudaMemGetInfo(free_bytes, total_bytes));
}

void CudaBackend::copy(const TensorView& src, TensorView& dst) {
  if (src.dtype != dst.dtype) fail("copy: dtype mismatch {} vs {}", dtype_name(src.dtype), dtype_name(dst.dtype));
  check_2d(src, src.dtype, "copy src");
  check_2d(dst, dst.dtype, "copy dst");
  check_same_shape(src, dst, "copy");
  if (src.numel() == 0) return;
  use_device();
  const size_t es = dtype_size(src.dtype);
  TANDEM_CUDA_CHECK(cudaMemcpy2DAsync(dst.data, dst.stride() * es, src.data, src.stride() * es, src.cols() * es,
                                      src.rows(), cudaMemcpyDeviceToDevice, stream_));
  ++issued_;
}

void CudaBackend::gather_rows(const TensorView& src, const TensorView& ids, TensorView& dst) {
  check_2d(src, src.dtype, "gather_rows src");
  check_2d(ids, DType::I32, "gather_rows ids");
  check_2d(dst, src.dtype, "gather_rows dst");
  const int64_t R = ids.numel();
  if (dst.rows() != R || dst.cols() != src.cols())
    fail("gather_rows: dst is [{}, {}], expected [{}, {}]", dst.rows(), dst.cols(), R, src.cols());
  if (ids.rows() != 1 && ids.row_stride != 0 && ids.row_stride != ids.cols()) fail("gather_rows: ids must be dense");
  if (R == 0 || src.cols() == 0) return;
  use_device();
  const size_t es = dtype_size(src.dtype);
  const uint64_t row_bytes = src.cols() * es, sp = src.stride() * es, dp = dst.stride() * es;
  const int a = common_alignment({row_bytes, sp, dp, reinterpret_cast<uint64_t>(src.data),
                                  reinterpret_cast<uint64_t>(dst.data)});
  const int64_t words = row_bytes / a;
  const unsigned grid = grid_for(R * words);
  auto go = [&](auto word) {
    using W = decltype(word);
    launch("gather_rows_kernel", gather_rows_kernel<W>, grid, 256, 0, static_cast<const char*>(src.data), sp,
           src.rows(), ids.as<int32_t>(), static_cast<char*>(dst.data), dp, R, words);
  };
  switch (a) {
    case 16: go(uint4{}); break;
    case 8: go(uint2{}); break;
    case 4: go(uint32_t{}); break;
    case 2: go(uint16_t{}); break;
    default: go(uint8_t{}); break;
  }
}

void CudaBackend::fill_dummy(TensorView& t, uint64_t seed, float center, float half_width) {
  check_2d(t, DType::BF16, "fill_dummy tensor");
  if (t.numel() == 0) return;
  use_device();
  launch("fill_dummy_kernel", fill_dummy_kernel, grid_for(t.numel()), 256, 0, t.as<uint16_t>(), t.stride(), t.rows(),
         t.cols(), seed, center, half_width);
}

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

std::unique_ptr<Backend> make_cuda_backend(int device) {
  const int n = cuda_device_count();
  if (device < 0 || device >= n)
    fail("CUDA device {} is not there ({} CUDA device{} visible)", device, n, n == 1 ? "" : "s");
  return std::make_unique<CudaBackend>(device);
}

}  // namespace tandem
