// CPU GEMV vs memory bandwidth: measures this machine's read bandwidth with a multi-threaded
// sum-reduce over 1 GiB (best of N), then the matmul of the CPU backend for decode-sized row counts
// with BF16 weights and quantized ones (int4 and int8 group 32 with bf16 scales, as compressed-tensors
// W4A16 / W8A16 checkpoints store them; FP8 E4M3 with per-channel scales; FP4 E2M1 group 16 with f32
// scales, as tandem stores NVFP4), and prints weight GB/s (codes and scales) as a share of that bandwidth. A decode step is one pass over all weights, so this share is
// the decode speed relative to the hardware limit. The last column, multiply-adds per second, is the
// figure for many rows of x (--rows 64: a prefill task's rows), where arithmetic bounds the product.
//
//   bench_gemv [--threads N] [--quick] [--only bf16|int4|int8|fp8|fp4] [--rows 1,2,4,8] [--shape NxK]
//              [--isa avx2|avx512|avx512-bf16] [--cache-resident]
//
// Weights are cycled through enough copies to total >= 1 GiB, so each call reads from DRAM rather
// than from the (large, on server parts) last-level cache, as it does in a real decode step.
// --cache-resident cycles two copies instead: with a shape that fits the cache (e.g. 256x1024) the
// figure is the kernel's compute rate, the ceiling its DRAM rate cannot pass.
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "backend/cpu/cpu_features.h"
#include "backend/cpu/thread_pool.h"
#include "backend/tensor.h"
#include "util/half.h"

namespace tandem {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

struct Aligned {
  void operator()(void* p) const { std::free(p); }
};
std::unique_ptr<char, Aligned> alloc(size_t bytes) {
  return std::unique_ptr<char, Aligned>(static_cast<char*>(std::aligned_alloc(64, (bytes + 63) / 64 * 64)));
}

// Best-of-reps read bandwidth in GB/s: every thread sums its share of `bytes` with AVX2 loads.
double read_bandwidth(ThreadPool& pool, size_t bytes, int reps) {
  auto buf = alloc(bytes);
  const size_t n = bytes / sizeof(float);
  float* f = reinterpret_cast<float*>(buf.get());
  pool.parallel_for(64, [&](int64_t c) {  // first touch spreads pages; values are irrelevant
    std::fill(f + n / 64 * c, f + n / 64 * (c + 1), 1.0f);
  });
  const int64_t chunks = pool.size() * 16;
  std::vector<float> partial(chunks);
  double best = 0;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = Clock::now();
    pool.parallel_for(chunks, [&](int64_t c) {
      const float* p = f + n / chunks * c;
      __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
      for (size_t i = 0; i < n / chunks; i += 32) {
        a0 = _mm256_add_ps(a0, _mm256_load_ps(p + i));
        a1 = _mm256_add_ps(a1, _mm256_load_ps(p + i + 8));
        a2 = _mm256_add_ps(a2, _mm256_load_ps(p + i + 16));
        a3 = _mm256_add_ps(a3, _mm256_load_ps(p + i + 24));
      }
      float out[8];
      _mm256_storeu_ps(out, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
      partial[c] = out[0];
    });
    best = std::max(best, bytes / seconds_since(t0) / 1e9);
  }
  if (partial[0] < 0) std::puts("");  // keep the sums alive
  return best;
}

struct Shape {
  const char* what;
  int64_t N, K;
};

enum class Kind { bf16, int4_g32, int8_g32, fp8_channel, fp4_g16 };
const char* kind_name(Kind k) {
  switch (k) {
    case Kind::bf16: return "bf16";
    case Kind::int4_g32: return "int4 g32";
    case Kind::int8_g32: return "int8 g32";
    case Kind::fp4_g16: return "fp4 g16";
    default: return "fp8 channel";
  }
}
const char* kind_flag(Kind k) {
  switch (k) {
    case Kind::bf16: return "bf16";
    case Kind::int4_g32: return "int4";
    case Kind::int8_g32: return "int8";
    case Kind::fp4_g16: return "fp4";
    default: return "fp8";
  }
}

// Weights [N, K] of one kind, cycled through enough copies to total >= 1 GiB. A quantized copy is
// its codes followed by its scales (bf16; f32 for FP4).
struct WeightSet {
  WeightSet(const Shape& s, Kind k, bool cache_resident) : shape(s), kind(k) {
    const bool nibbles = k == Kind::int4_g32 || k == Kind::fp4_g16;
    code_bytes = k == Kind::bf16 ? s.N * s.K * 2 : nibbles ? s.N * s.K / 2 : s.N * s.K;
    const int64_t group = k == Kind::fp8_channel ? s.K : k == Kind::fp4_g16 ? 16 : 32;
    const int64_t groups = k == Kind::bf16 ? 0 : s.N * (s.K / group);
    const DType scale_dtype = k == Kind::fp4_g16 ? DType::F32 : DType::BF16;
    bytes = code_bytes + groups * dtype_size(scale_dtype);
    copies = cache_resident ? 2 : static_cast<int>(std::max<size_t>(2, ((size_t{1} << 30) + bytes - 1) / bytes));
    mem = alloc(bytes * copies);
    uint64_t* p = reinterpret_cast<uint64_t*>(mem.get());
    // Small values in every kind (four bf16 values; int4 codes 0..8; FP8 codes below 2; f32 scales
    // about 1.6e-7): the data do not matter for the speed, only that they are finite.
    const uint64_t pattern = k == Kind::bf16 ? 0x3C003C803D003D80ull : 0x3430343034303430ull;
    for (size_t i = 0; i < bytes * copies / 8; ++i) p[i] = pattern;
    params.resize(copies);
    for (int c = 0; c < copies && k != Kind::bf16; ++c) {
      QuantParams& q = params[c];
      q.code = k == Kind::int4_g32  ? QuantCode::kU4
               : k == Kind::int8_g32 ? QuantCode::kU8
               : k == Kind::fp4_g16  ? QuantCode::kE2M1
                                     : QuantCode::kF8E4M3;
      q.group = group;
      q.scales = TensorView(scale_dtype, mem.get() + bytes * c + code_bytes, {s.N, groups / s.N});
    }
  }
  TensorView view(int c) const {
    if (kind == Kind::bf16) return TensorView(DType::BF16, mem.get() + bytes * c, {shape.N, shape.K});
    TensorView v(DType::U8, mem.get() + bytes * c, {shape.N, shape.K});
    v.quant = &params[c];
    return v;
  }
  Shape shape;
  Kind kind;
  size_t code_bytes, bytes;
  int copies;
  std::unique_ptr<char, Aligned> mem;
  std::vector<QuantParams> params;
};

// Best over passes (each pass one call per copy) of weight bytes / time, for T rows of x.
double gemv_gbps(Backend& be, const WeightSet& w, int64_t T, double seconds_budget) {
  // x 64-byte aligned, as the engine's activations are (HostTensor): the exact kernels read x in
  // place, and vector loads that straddle cache lines would make the figures depend on the heap.
  auto xmem = alloc(T * w.shape.K * sizeof(float));
  float* x = reinterpret_cast<float*>(xmem.get());
  std::fill(x, x + T * w.shape.K, 0.5f);
  std::vector<float> y(T * w.shape.N);
  TensorView xv(DType::F32, x, {T, w.shape.K}), yv(DType::F32, y.data(), {T, w.shape.N});
  for (int c = 0; c < w.copies; ++c) be.matmul(xv, w.view(c), yv);  // warm-up
  double best = 0;
  const auto start = Clock::now();
  while (seconds_since(start) < seconds_budget) {
    const auto t0 = Clock::now();
    for (int c = 0; c < w.copies; ++c) be.matmul(xv, w.view(c), yv);
    best = std::max(best, w.bytes * w.copies / seconds_since(t0) / 1e9);
  }
  return best;
}

int run(int argc, char** argv) {
  int threads = 0;
  bool quick = false, cache_resident = false;
  std::string only, only_isa;
  std::vector<int64_t> rows{1, 2, 4, 8};
  std::vector<Shape> shapes{
      {"2816x2816 (square)", 2816, 2816},
      {"8192x1024 (drafter q_proj)", 8192, 1024},
      {"262144x1024 (drafter head)", 262144, 1024},
  };
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--threads") && i + 1 < argc) {
      threads = std::atoi(argv[++i]);
    } else if (!std::strcmp(argv[i], "--quick")) {
      quick = true;
    } else if (!std::strcmp(argv[i], "--cache-resident")) {
      cache_resident = true;
    } else if (!std::strcmp(argv[i], "--isa") && i + 1 < argc) {
      only_isa = argv[++i];
    } else if (!std::strcmp(argv[i], "--only") && i + 1 < argc) {
      only = argv[++i];
    } else if (!std::strcmp(argv[i], "--rows") && i + 1 < argc) {
      rows.clear();
      for (const char* p = argv[++i]; *p; p += *p == ',') rows.push_back(std::strtol(p, const_cast<char**>(&p), 10));
    } else if (!std::strcmp(argv[i], "--shape") && i + 1 < argc) {
      long n = 0, k = 0;
      if (std::sscanf(argv[++i], "%ldx%ld", &n, &k) != 2 || n <= 0 || k <= 0) {
        std::fprintf(stderr, "--shape wants NxK, e.g. 2048x768\n");
        return 2;
      }
      shapes = {{argv[i], n, k}};
    } else {
      std::fprintf(stderr, "unknown argument %s\n", argv[i]);
      return 2;
    }
  }
  auto be = make_cpu_backend(threads);
  const int pool_threads = threads > 0 ? threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  ThreadPool pool(pool_threads);
  const double bw = read_bandwidth(pool, size_t{1} << 30, quick ? 3 : 10);
  std::printf("backend: %s\n", be->name().c_str());
  std::printf("read bandwidth (1 GiB sum-reduce, %d threads, best of %d): %.1f GB/s\n\n", pool_threads,
              quick ? 3 : 10, bw);
  std::printf("%-12s %-28s %-11s %3s %9s %8s %9s\n", "weights", "[N x K]", "isa", "T", "GB/s", "% bw", "GMAC/s");
  for (Kind kind : {Kind::bf16, Kind::int4_g32, Kind::int8_g32, Kind::fp8_channel, Kind::fp4_g16})
  for (const Shape& s : shapes) {
    if (!only.empty() && only != kind_flag(kind)) continue;
    const WeightSet w(s, kind, cache_resident);
    std::vector<std::string> isas{"avx2"};
    if (cpu_best_isa() != CpuIsa::kAvx2) isas.push_back("avx512");
    if (cpu_has_avx512_bf16()) isas.push_back("avx512-bf16");
    for (const std::string& isa : isas) {
      if (!only_isa.empty() && isa != only_isa) continue;
      cpu_force_isa(isa);
      for (int64_t T : rows) {
        const double gbps = gemv_gbps(*be, w, T, quick ? 0.3 : 1.5);
        // Multiply-adds per second: weights streamed per second times the rows of x (what bounds
        // a prefill-sized product, where the weights come from cache).
        const double gmacs = gbps * static_cast<double>(s.N * s.K) / static_cast<double>(w.bytes) * T;
        std::printf("%-12s %-28s %-11s %3ld %9.1f %7.0f%% %9.1f\n", kind_name(kind), s.what, isa.c_str(),
                    static_cast<long>(T), gbps, 100 * gbps / bw, gmacs);
        std::fflush(stdout);
      }
    }
  }
  cpu_force_isa("");
  return 0;
}

}  // namespace
}  // namespace tandem

int main(int argc, char** argv) { return tandem::run(argc, argv); }
