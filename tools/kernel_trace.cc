// Kernel trace: a CUDA injection library that records when every kernel ran on the GPU, the kernels of
// replayed CUDA graphs included, with CUPTI's activity API, and writes them as CSV when the program
// exits, for tools/kernel_trace.py. It answers what Nsight Compute cannot (it runs each kernel alone) and
// what Nsight Systems would (it is not on the GPU machine): how long each kernel of a graph-replayed
// step takes in place, with programmatic dependent launch overlapping its start with its predecessor.
//
//   CUDA_INJECTION64_PATH=$BUILD/libtandem_kernel_trace.so KERNEL_TRACE_FILE=trace.csv
//   $BUILD/tandem bench step ... --device cuda   (both variables in this command's environment)
//
// (tools/gpu-check.sh trace does this; docs/GPU.md.) The CUDA driver loads the library at cuInit and calls
// InitializeInjection. Concurrent-kernel records do not serialize kernels, unlike CUPTI's plain kernel
// records. Timestamps are the GPU's, in ns. The library is not linked into tandem.
#include <cupti.h>
#include <cxxabi.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <vector>

namespace {

struct KernelRun {
  uint64_t start, end;  // ns
  uint32_t stream, graph, correlation;  // correlation: the launching API call's (kept for reference)
  uint64_t graph_node;
  int32_t grid[3], block;
  std::string name;  // mangled
};

constexpr size_t kBufferBytes = size_t{8} << 20;
std::mutex g_mutex;
std::vector<KernelRun>* g_runs = nullptr;  // never freed: written by the exit handler

const char* result_string(CUptiResult r) {
  const char* s = "unknown CUPTI error";
  cuptiGetResultString(r, &s);
  return s;
}

void CUPTIAPI buffer_requested(uint8_t** buffer, size_t* size, size_t* max_records) {
  *buffer = static_cast<uint8_t*>(std::aligned_alloc(8, kBufferBytes));
  *size = *buffer ? kBufferBytes : 0;
  *max_records = 0;  // as many as fit
}

void CUPTIAPI buffer_completed(CUcontext context, uint32_t stream, uint8_t* buffer, size_t, size_t valid) {
  {
    std::lock_guard lock(g_mutex);
    CUpti_Activity* record = nullptr;
    while (cuptiActivityGetNextRecord(buffer, valid, &record) == CUPTI_SUCCESS) {
      if (record->kind != CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) continue;
      // Later CUPTI versions add fields at the end of the record, so the fields read here stay in place.
      const auto* k = reinterpret_cast<const CUpti_ActivityKernel10*>(record);
      g_runs->push_back({k->start, k->end, k->streamId, k->graphId, k->correlationId, k->graphNodeId,
                         {k->gridX, k->gridY, k->gridZ}, k->blockX, k->name ? k->name : "?"});
    }
    size_t dropped = 0;
    if (cuptiActivityGetNumDroppedRecords(context, stream, &dropped) == CUPTI_SUCCESS && dropped > 0)
      std::fprintf(stderr, "kernel_trace: CUPTI dropped %zu records\n", dropped);
  }
  std::free(buffer);
}

std::string demangled(const std::string& name) {
  int status = 0;
  char* d = abi::__cxa_demangle(name.c_str(), nullptr, nullptr, &status);
  std::string out = status == 0 && d ? d : name;
  std::free(d);
  for (char& c : out)
    if (c == '"') c = '\'';  // the name is one quoted CSV field
  return out;
}

void write_trace() {
  cuptiActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED);
  const char* path = std::getenv("KERNEL_TRACE_FILE");
  if (!path || !*path) path = "kernel_trace.csv";
  std::FILE* f = std::fopen(path, "w");
  if (!f) {
    std::perror("kernel_trace: cannot write KERNEL_TRACE_FILE");
    return;
  }
  std::lock_guard lock(g_mutex);
  std::fprintf(f, "start_ns,end_ns,stream,graph,graph_node,correlation,grid_x,grid_y,grid_z,block,name\n");
  for (const KernelRun& k : *g_runs)
    std::fprintf(f, "%llu,%llu,%u,%u,%llu,%u,%d,%d,%d,%d,\"%s\"\n", static_cast<unsigned long long>(k.start),
                 static_cast<unsigned long long>(k.end), k.stream, k.graph,
                 static_cast<unsigned long long>(k.graph_node), k.correlation, k.grid[0], k.grid[1], k.grid[2],
                 k.block, demangled(k.name).c_str());
  std::fclose(f);
  std::fprintf(stderr, "kernel_trace: %zu kernel runs written to %s\n", g_runs->size(), path);
}

}  // namespace

// Called by the CUDA driver at cuInit (CUDA_INJECTION64_PATH); nonzero: the library is ready.
extern "C" int InitializeInjection() {
  g_runs = new std::vector<KernelRun>;
  g_runs->reserve(size_t{1} << 20);
  CUptiResult r = cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed);
  if (r == CUPTI_SUCCESS) r = cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL);
  if (r != CUPTI_SUCCESS) {
    std::fprintf(stderr, "kernel_trace: CUPTI refused the kernel records: %s\n", result_string(r));
    return 0;
  }
  // Flushed and written at exit, as CUPTI's own injection sample does.
  std::atexit(write_trace);
  return 1;
}
