// Private to the CUDA backend: the CudaBackend class (its ops are defined across the .cu files of
// this directory, one file per op family), CUDA error checking, host-side argument checks shared by
// the ops, and the device helpers several kernels share: dtype decoding and the warp dot product
// whose fixed per-element reduction order makes matmul and moe_experts batch-invariant.
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <utility>

#include "backend/backend.h"
#include "backend/op_checks.h"
#include "util/error.h"

namespace tandem {
namespace cu {

// --- Error checking ---------------------------------------------------------------------------

inline void check_cuda(cudaError_t e, const char* call, const char* file, int line) {
  if (e != cudaSuccess) {
    cudaGetLastError();  // clear a non-sticky error so the backend stays usable
    fail("CUDA error {} ({}) in {} at {}:{}", cudaGetErrorName(e), cudaGetErrorString(e), call, file, line);
  }
}

}  // namespace cu

#define TANDEM_CUDA_CHECK(call) ::tandem::cu::check_cuda((call), #call, __FILE__, __LINE__)

namespace cu {

// --- Host-side argument checks (the same rules as the CPU backend) ------------------------------

// (shared with the CPU backend: backend/op_checks.h)
using ::tandem::check_2d;
using ::tandem::check_f32_2d;
using ::tandem::check_heads;
using ::tandem::check_same_shape;
using ::tandem::is_float_dtype;

// Largest power of two <= 16 dividing every argument (for choosing a vector width).
inline int common_alignment(std::initializer_list<uint64_t> values) {
  int a = 16;
  for (uint64_t v : values)
    while (a > 1 && v % a != 0) a /= 2;
  return a;
}

// --- Views passed to kernels ------------------------------------------------------------------

// A 2-D f32 view [rows, cols] with a row stride.
struct Mat {
  float* p;
  int64_t ld, rows, cols;
};
inline Mat mat(const TensorView& v) { return {static_cast<float*>(v.data), v.stride(), v.rows(), v.cols()}; }

// T tokens of n_heads·d floats seen as [T, n_heads·d] (possibly strided) or [T, n_heads, d] /
// [T·n_heads, d]: the device version of the CPU backend's head_ptr().
struct HeadView {
  float* p;
  int64_t ld, cols, rows_per_token;
  __device__ float* head(int64_t t, int64_t h, int64_t d) const {
    const int64_t idx = h * d;
    return p + (t * rows_per_token + idx / cols) * ld + idx % cols;
  }
};
inline HeadView head_view(const TensorView& v, int64_t T) {
  return {static_cast<float*>(v.data), v.stride(), v.cols(), v.rows() / T};
}

// --- Device dtype decoding --------------------------------------------------------------------

enum WType : int { kF32 = 0, kBF16 = 1, kF16 = 2, kF8 = 3 };

inline int wtype_of(DType t) {
  switch (t) {
    case DType::F32: return kF32;
    case DType::BF16: return kBF16;
    case DType::F16: return kF16;
    case DType::F8_E4M3: return kF8;
    default: fail("tensor dtype {} is not a float type", dtype_name(t));
  }
}

// Bytes of one element of WType wt.
__host__ __device__ constexpr int wtype_bytes(int wt) { return wt == kF32 ? 4 : wt == kF8 ? 1 : 2; }

__device__ __forceinline__ float bf16_bits_to_f32(uint32_t h) { return __uint_as_float(h << 16); }
__device__ __forceinline__ float f16_bits_to_f32(uint16_t h) { return __half2float(__ushort_as_half(h)); }
// OCP FP8 E4M3, exactly as util/half.h (finite only; 0x7F / 0xFF are NaN).
__device__ __forceinline__ float f8_bits_to_f32(uint32_t b) {
  const uint32_t sign = (b & 0x80u) << 24, exp = (b >> 3) & 0xFu, mant = b & 0x7u;
  float v = exp == 0 ? static_cast<float>(mant) * 0.001953125f  // mant · 2^-9, exact
                     : __uint_as_float(((exp + 120u) << 23) | (mant << 20));
  if (exp == 0xF && mant == 0x7) v = __uint_as_float(0x7FC00000u);
  return __uint_as_float(__float_as_uint(v) | sign);
}

// Round to nearest even, NaN kept quiet: the same bits as util/half.h's f32_to_bf16.
__device__ __forceinline__ uint16_t f32_to_bf16_bits(float f) {
  uint32_t u = __float_as_uint(f);
  if (f != f) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7FFFu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

// Element i of an array of WType WT as its raw bits (the f32's, or the 16- or 8-bit code zero-extended),
// and such bits as f32; load_elem is the two in a row.
template <int WT>
__device__ __forceinline__ uint32_t load_elem_bits(const void* p, int64_t i) {
  if constexpr (WT == kF32) return static_cast<const uint32_t*>(p)[i];
  else if constexpr (WT == kBF16 || WT == kF16) return static_cast<const uint16_t*>(p)[i];
  else return static_cast<const uint8_t*>(p)[i];
}
template <int WT>
__device__ __forceinline__ float elem_bits_to_f32(uint32_t b) {
  if constexpr (WT == kF32) return __uint_as_float(b);
  else if constexpr (WT == kBF16) return bf16_bits_to_f32(b);
  else if constexpr (WT == kF16) return f16_bits_to_f32(static_cast<uint16_t>(b));
  else return f8_bits_to_f32(b);
}
template <int WT>
__device__ __forceinline__ float load_elem(const void* p, int64_t i) {
  return elem_bits_to_f32<WT>(load_elem_bits<WT>(p, i));
}

// f.template operator()<WT>() for runtime WType wt: one branch (uniform across a launch) for a whole
// loop of elements instead of one an element.
template <class F>
__device__ __forceinline__ void with_wtype(int wt, F&& f) {
  switch (wt) {
    case kF32: f.template operator()<kF32>(); break;
    case kBF16: f.template operator()<kBF16>(); break;
    case kF16: f.template operator()<kF16>(); break;
    default: f.template operator()<kF8>(); break;
  }
}

// Runtime-dtype element load for the small ops (norm weights, embeddings, expert scales).
__device__ __forceinline__ float load_any(const void* p, int wt, int64_t i) {
  float v;
  with_wtype(wt, [&]<int WT>() { v = load_elem<WT>(p, i); });
  return v;
}

// A thread's PER elements of an array of n >= 1: indices i0 + j · stride (stride > 0) for j < PER.
// col[j] is that index, or n − 1 for the slots past the end, so every load can be unconditional (all
// PER in flight together, no branch an element), and the slots before the end are the first `valid`.
// Computed once where a kernel reads several arrays of that shape: an element's address is then one
// multiply-add. Indices fit an int (a row, a norm weight, a per-expert array; not a whole tensor).
template <int PER>
struct StridedSlots {
  unsigned col[PER];
  int valid;
  __device__ StridedSlots(unsigned i0, unsigned stride, int n) : valid(0) {
#pragma unroll
    for (int j = 0; j < PER; ++j) {
      const int i = static_cast<int>(i0 + j * stride);
      col[j] = static_cast<unsigned>(i < n ? i : n - 1);
      valid += i < n;
    }
  }
};

// The raw bits (load_elem_bits) of elements s.col[j] of a runtime-dtype array, all in flight together.
// Nothing reads them until slots_bits_to_f32 does, so the thread waits for them only there: loads issued
// a step ahead of their use overlap that step. (Converting inside the dtype's branch, right after the
// loads, makes the thread wait for them at once; so does any instruction that reads them, a padding
// select included.)
template <int PER>
__device__ __forceinline__ void load_slots_bits(const void* p, int wt, const StridedSlots<PER>& s, uint32_t (&b)[PER]) {
  with_wtype(wt, [&]<int WT>() {
#pragma unroll
    for (int j = 0; j < PER; ++j) b[j] = load_elem_bits<WT>(p, s.col[j]);
  });
}

// v[j] = bits b[j] of dtype wt as f32, or `pad` in the slots past the end.
template <int PER>
__device__ __forceinline__ void slots_bits_to_f32(int wt, const StridedSlots<PER>& s, const uint32_t (&b)[PER],
                                                  float pad, float (&v)[PER]) {
  with_wtype(wt, [&]<int WT>() {
#pragma unroll
    for (int j = 0; j < PER; ++j) v[j] = j < s.valid ? elem_bits_to_f32<WT>(b[j]) : pad;
  });
}

// v[j] = element s.col[j] of a runtime-dtype array as f32, or `pad` in the slots past the end, for
// values wanted at once: every load unconditional and in flight together. (load_any per element
// converts inside its switch's case, so each load waits out its memory latency before the next one
// issues: a norm kernel's weight row cost PER latencies in a row that way.)
template <int PER>
__device__ __forceinline__ void load_any_slots(const void* p, int wt, const StridedSlots<PER>& s, float pad,
                                               float (&v)[PER]) {
  uint32_t b[PER];
  load_slots_bits<PER>(p, wt, s, b);
  slots_bits_to_f32<PER>(wt, s, b, pad, v);
}

// Two elements ia and ib of quantized weights' scales (F32, BF16 or F16: QuantParams), or zeros when
// !in (indices of a weight with under 2^32 scales: mma_quant_fit): one branch on the width for both
// instead of load_any's switch for each, which the quantized tensor-core kernels paid in every block
// they load.
__device__ __forceinline__ void load_scale_pair(const void* p, int wt, uint32_t ia, uint32_t ib, bool in, float& a,
                                                float& b) {
  if (!in) {
    a = b = 0.0f;
  } else if (wt == kF32) {
    a = __ldg(static_cast<const float*>(p) + ia), b = __ldg(static_cast<const float*>(p) + ib);
  } else {
    const auto* h = static_cast<const unsigned short*>(p);
    const uint16_t ua = __ldg(h + ia), ub = __ldg(h + ib);
    a = wt == kBF16 ? bf16_bits_to_f32(ua) : f16_bits_to_f32(ua);
    b = wt == kBF16 ? bf16_bits_to_f32(ub) : f16_bits_to_f32(ub);
  }
}

// Eight consecutive weights loaded with 16-byte (F32: two, F8: one 8-byte) loads, decoded later so
// several chunks can be in flight at once.
template <int WT>
struct Raw8;
template <>
struct Raw8<kF32> {
  float4 a, b;
  __device__ void load(const void* w, int64_t chunk) {
    const float4* p = static_cast<const float4*>(w) + 2 * chunk;
    a = __ldg(p), b = __ldg(p + 1);
  }
  __device__ void decode(float (&f)[8]) const {
    f[0] = a.x, f[1] = a.y, f[2] = a.z, f[3] = a.w, f[4] = b.x, f[5] = b.y, f[6] = b.z, f[7] = b.w;
  }
};
template <>
struct Raw8<kBF16> {
  uint4 r;
  __device__ void load(const void* w, int64_t chunk) { r = __ldg(static_cast<const uint4*>(w) + chunk); }
  __device__ void decode(float (&f)[8]) const {
    const uint32_t u[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      f[2 * i] = __uint_as_float(u[i] << 16);
      f[2 * i + 1] = __uint_as_float(u[i] & 0xFFFF0000u);
    }
  }
};
template <>
struct Raw8<kF16> {
  uint4 r;
  __device__ void load(const void* w, int64_t chunk) { r = __ldg(static_cast<const uint4*>(w) + chunk); }
  __device__ void decode(float (&f)[8]) const {
    const uint32_t u[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      f[2 * i] = f16_bits_to_f32(static_cast<uint16_t>(u[i] & 0xFFFFu));
      f[2 * i + 1] = f16_bits_to_f32(static_cast<uint16_t>(u[i] >> 16));
    }
  }
};
template <>
struct Raw8<kF8> {
  uint2 r;
  __device__ void load(const void* w, int64_t chunk) { r = __ldg(static_cast<const uint2*>(w) + chunk); }
  __device__ void decode(float (&f)[8]) const {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      f[i] = f8_bits_to_f32((r.x >> (8 * i)) & 0xFFu);
      f[4 + i] = f8_bits_to_f32((r.y >> (8 * i)) & 0xFFu);
    }
  }
};

template <bool XVEC>
__device__ __forceinline__ void load_x8(const float* p, float (&v)[8]) {
  if constexpr (XVEC) {
    const float4 a = *reinterpret_cast<const float4*>(p), b = *reinterpret_cast<const float4*>(p + 4);
    v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
  } else {
#pragma unroll
    for (int j = 0; j < 8; ++j) v[j] = p[j];
  }
}

// --- The batch-invariant warp dot product -------------------------------------------------------
//
// acc[m] = lane's partial of x_m · w for m < nrows, where w is one weight row of K elements. The
// order of the f32 FMAs of lane l is fixed by K and the path alone:
//   VEC  (K % 8 == 0, w 16-byte aligned): chunks c = l, l + 32, l + 64, ... of 8 elements, each
//        chunk's elements in order;
//   else (scalar):                        elements k = l, l + 32, l + 64, ... in order.
// It never depends on nrows, on the other rows, or on how x is loaded (XVEC only picks 16-byte x
// loads when every x row is 16-byte aligned). warp_sum() then reduces the lanes in a fixed
// butterfly, so an output element is bit-identical however the rows are batched.
template <int WT, bool VEC, bool XVEC, int MT>
__device__ __forceinline__ void warp_dot(const void* __restrict__ w, int64_t K, const float* const (&xr)[MT],
                                         int nrows, float (&acc)[MT], int lane) {
  constexpr int U = 8;  // chunks in flight per lane
  if constexpr (VEC) {
    // Every pass issues all of its (predicated) loads before the first use, the last partial pass
    // included: K = 704 (an expert's down projection) is one memory round trip per lane, not three.
    // Chunks are still consumed in the order c, c + 32, c + 64, ...
    const int64_t K8 = K / 8;
    for (int64_t c = lane; c < K8; c += 32 * U) {
      Raw8<WT> r[U];
#pragma unroll
      for (int u = 0; u < U; ++u)
        if (c + 32 * u < K8) r[u].load(w, c + 32 * u);
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (c + 32 * u < K8) {
          float wf[8];
          r[u].decode(wf);
#pragma unroll
          for (int m = 0; m < MT; ++m) {
            if (m < nrows) {
              float xv[8];
              load_x8<XVEC>(xr[m] + (c + 32 * u) * 8, xv);
#pragma unroll
              for (int j = 0; j < 8; ++j) acc[m] = fmaf(xv[j], wf[j], acc[m]);
            }
          }
        }
      }
    }
  } else {
    int64_t k = lane;
    for (; k + 32 * (U - 1) < K; k += 32 * U) {
      float wv[U];
#pragma unroll
      for (int u = 0; u < U; ++u) wv[u] = load_elem<WT>(w, k + 32 * u);
#pragma unroll
      for (int u = 0; u < U; ++u) {
#pragma unroll
        for (int m = 0; m < MT; ++m)
          if (m < nrows) acc[m] = fmaf(xr[m][k + 32 * u], wv[u], acc[m]);
      }
    }
    for (; k < K; k += 32) {
      const float wv = load_elem<WT>(w, k);
#pragma unroll
      for (int m = 0; m < MT; ++m)
        if (m < nrows) acc[m] = fmaf(xr[m][k], wv, acc[m]);
    }
  }
}

// Butterfly sum over the 32 lanes; every lane ends with the same, order-fixed result.
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xFFFFFFFFu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xFFFFFFFFu, v, o));
  return v;
}

__device__ __forceinline__ float gelu_tanh(float x) {
  const float kAlpha = 0.7978845608028654f;  // √(2/π)
  return 0.5f * x * (1.0f + tanhf(kAlpha * (x + 0.044715f * x * x * x)));
}

// --- Programmatic dependent launch ----------------------------------------------------------------
//
// On sm_90+ every kernel of this backend is launched with programmatic stream serialization
// (CudaBackend::launch), so its CTAs may be scheduled while the previous kernel's last CTAs still
// run, instead of after a full drain and a fresh launch: a decode step is ~900 kernels, most of them
// a few microseconds long. Every such kernel must call begin_kernel() in every thread before it
// reads or writes anything the previous kernels may touch: it waits until the previous kernel has
// completed and its writes are visible, then lets the next kernel launch. Because every kernel
// waits, completion stays ordered (kernel n + 1 never overtakes kernel n − 1); so only the kernel just
// before (at a join of concurrently()'s streams, the last kernel of each branch: programmatic_joins) may
// still be writing when a kernel starts, and loads of model constants that no step's
// kernel writes (norm weights, RoPE frequencies: norm_rope_kernel; a matmul's first weight blocks:
// the tensor-core partials' early) may be issued before the wait, overlapping that kernel's tail. A
// kernel that loads before its wait reads the previous kernel's output through ordinary loads, not the
// read-only path of a const __restrict__ parameter, whose loads may be scheduled ahead of the wait (with
// it, the 8-bit golden tests diverged on CUDA: matmul_mma_kernel). Kernels launched with <<<>>> are ordinary
// stream-ordered launches and need nothing. Measured on the H200: −2 % on a 26B-A4B decode step, −0.6 %
// on the 31B's (asking L2 for the weight rows before the wait cost more than it saved; loading a warp's
// first weight blocks before it saves a round trip per matmul: docs/PERF.md).
__device__ __forceinline__ void begin_kernel() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Whether this CTA is the last of the `n` CTAs that count themselves on *ticket (a launch's CTAs that
// each leave part of a result, the last of which finishes it: split-K slices, attention chunks, the
// routing's rows, argmax chunks). Every thread of the CTA calls it after its writes, which it makes
// visible device-wide before the CTA counts itself; the last CTA resets the ticket for the next launch
// and then reads the others' writes past its L1 (__ldcg). Synchronises the CTA.
__device__ __forceinline__ bool last_cta_of(unsigned* ticket, unsigned n) {
  __shared__ bool last;
  __threadfence();
  __syncthreads();
  if (threadIdx.x == 0) {
    last = atomicAdd(ticket, 1u) == n - 1;
    if (last) *ticket = 0;  // every CTA has counted itself
  }
  __syncthreads();
  if (last) __threadfence();
  return last;
}

// p as a value the compiler cannot see into. It keeps the pointer itself in registers where it would
// otherwise rebuild it before every use from a kernel parameter and an offset (a few 64-bit
// instructions a load), and an element's address is one multiply-add from it.
template <typename T>
__device__ __forceinline__ T* kept_pointer(T* p) {
  asm("" : "+l"(p));
  return p;
}

// p as a pointer the compiler knows nothing about: loads through it are ordinary ones, never the
// read-only path it infers for a const __restrict__ kernel parameter, whose loads may be scheduled
// ahead of griddepcontrol.wait. For a kernel that reads its predecessor's output after loading
// constants before the wait (moe_mma_kernel's early) without changing the code of its other
// instantiations.
template <typename T>
__device__ __forceinline__ const T* read_after_wait(const T* p) {
  return kept_pointer(p);
}

// Asks L2 for the `bytes` bytes at p, one 128-byte line per thread in turn (thread of threads), without
// waiting for them: a later load of them meets L2 instead of DRAM.
__device__ __forceinline__ void prefetch_l2(const void* p, int64_t bytes, int thread, int threads) {
  const char* c = static_cast<const char*>(p);
  for (int64_t o = int64_t{thread} * 128; o < bytes; o += int64_t{threads} * 128)
    asm volatile("prefetch.global.L2 [%0];" ::"l"(c + o));
}

// A KV layer the kernels can use: heads, F32 or BF16 memory, 16-byte aligned (kv_write_normed, attention).
inline void check_kv_layer(const KvLayer& layer, const char* op) {
  if (layer.n_kv_heads <= 0 || layer.head_dim <= 0 || layer.block_size <= 0 || layer.num_blocks < 0)
    fail("{}: KV layer has no heads, head_dim or block_size", op);
  if (layer.dtype != DType::F32 && layer.dtype != DType::BF16)
    fail("{}: KV dtype {} is not supported by the CUDA backend (F32 or BF16)", op, dtype_name(layer.dtype));
  if (!layer.k || !layer.v) fail("{}: KV layer has no K/V memory", op);
  if (reinterpret_cast<uint64_t>(layer.k) % 16 != 0 || reinterpret_cast<uint64_t>(layer.v) % 16 != 0)
    fail("{}: KV cache memory must be 16-byte aligned", op);
}

// Grid size for a grid-stride loop of n items with 256-thread blocks (at least one block).
inline unsigned grid_for(int64_t n) {
  const int64_t blocks = (n + 255) / 256;
  return static_cast<unsigned>(blocks < 65536 ? (blocks > 0 ? blocks : 1) : 65536);
}

// Rows per M-tile of the matmul kernels (at most) and warps (= output columns) per CTA.
constexpr int kMatmulRows = 8;
constexpr int kMatmulWarps = 8;

// M-tile height for steps of at most `rows` rows per weight: the smallest of 1, 2, 4, 8 that holds
// them. A decode step's tile of 1 keeps a warp's registers (and so the CTAs an SM holds, and the loads
// in flight) far above an 8-row tile's; warp_dot's order makes every height give the same bits.
inline int matmul_tile_rows(int64_t rows) { return rows <= 1 ? 1 : rows <= 2 ? 2 : rows <= 4 ? 4 : kMatmulRows; }

// Split-K over CTAs: a matmul whose weight has few 16-row tiles for the GPU's SMs (a decode step's
// [2816, 4096] projection has 176) cuts each row's K blocks between `slices` CTAs, so that enough
// weight bytes are in flight to reach the copy bandwidth (one CTA per tile leaves most SMs with one
// CTA, which waits a memory latency per U blocks). Each CTA's sums go to `partials` (per tile, slice
// and output); the CTA that finishes a tile's last slice (a ticket per tile, counted with atomicAdd)
// adds the slices' sums in slice order and writes the outputs, then resets the ticket for the next
// launch (mma_finish, mma_rows.cuh). The slice count is a function of the weight's shape alone
// (CudaBackend::mma_slices), so an output's sums run in one order whatever the batch, as the unsplit
// kernels' do.
constexpr int kMmaMaxSlices = 16;
// The most partial-sum scratch one split launch uses: longer batches run as several launches.
constexpr int64_t kMmaSplitScratchBytes = int64_t{16} << 20;

struct MmaSplit {
  int slices = 1;
  float* partials = nullptr;   // [tiles, slices, TILES · 128, NT]
  unsigned* tickets = nullptr;  // [tiles], zero between launches
};

// moe_experts' grouping of the routed (row, slot) pairs by expert (moe.cu): offsets[e] = first
// position of expert e in the sorted order (offsets[E] = pairs routed), sorted[pos] = pair index
// t·k + j, pos_of_pair[pair] = pos (-1 for ids outside [0, E)), and active[0..n) the experts that
// got rows, in index order, with n = active[E]: the expert kernels run one CTA row per active
// expert (at most T·k of them) instead of one per expert, most of them idle.
struct MoeGroups {
  int32_t *offsets, *sorted, *pos_of_pair, *active;
};

}  // namespace cu

// --- The backend ------------------------------------------------------------------------------

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(int device);
  ~CudaBackend() override;

  std::string name() const override { return name_; }
  bool is_host() const override { return false; }

  void* alloc(size_t bytes) override;
  void free(void* p) override;
  void upload(void* dst, const void* host_src, size_t bytes) override;
  void download(void* host_dst, const void* src, size_t bytes) override;
  void synchronize() override;
  void memory_info(size_t* free_bytes, size_t* total_bytes) const override;
  uint64_t host_syncs() const override { return host_syncs_; }
  void run_recorded(std::unique_ptr<Recording>& recording, const std::function<void()>& issue) override;
  void set_recording(bool on) override { recording_on_ = on; }
  void concurrently(const std::function<void()>& a, const std::function<void()>& b) override;

  void copy(const TensorView& src, TensorView& dst) override;
  void gather_rows(const TensorView& src, const TensorView& ids, TensorView& dst) override;
  void fill_dummy(TensorView& t, uint64_t seed, float center, float half_width) override;
  void prepare_quant(const TensorView& w) override;

  void matmul(const TensorView& x, const TensorView& w, TensorView& y) override;
  void matmul_gelu_glu(const TensorView& x, const TensorView& gate, const TensorView& up, TensorView& out) override;
  void matmul_pair(const TensorView& x, const TensorView& w1, TensorView& y1, const TensorView& w2,
                   TensorView& y2) override;
  void embed(const TensorView& ids, const TensorView& table, float scale, TensorView& y) override;
  void rms_norm(const TensorView& x, const TensorView* weight, float eps, TensorView& y) override;
  void rms_norm_add(const TensorView& y, const TensorView* weight, float eps, TensorView& x) override;
  void rms_norms(std::span<const RmsNormStep> steps, float eps) override;
  void rope(TensorView& x, const TensorView& positions, const TensorView& inv_freq) override;
  void rms_norm_rope(TensorView& x, const TensorView& weight, float eps, const TensorView& positions,
                     const TensorView& inv_freq) override;
  void gelu_tanh_mul(const TensorView& gate, const TensorView& up, TensorView& out) override;
  void add(const TensorView& a, const TensorView& b, TensorView& y) override;
  void axpy(float alpha, const TensorView& x, TensorView& y) override;
  void scale(TensorView& x, float s) override;
  void softcap(TensorView& x, float cap) override;
  void clamp(TensorView& x, float lo, float hi) override;
  void standardize(const TensorView& x, const TensorView& bias, const TensorView& scale, TensorView& y) override;
  void kv_write_normed(const TensorView& k, const TensorView& v, const TensorView& k_norm, float eps,
                       const TensorView& positions, const TensorView& inv_freq, const KvLayer& layer,
                       const TensorView& slots) override;
  void attention(const TensorView& q, const KvLayer& layer, const AttentionRows& rows, float scale,
                 TensorView& out) override;
  void moe_route(const TensorView& logits, const TensorView* per_expert_scale, TensorView& ids,
                 TensorView& weights) override;
  void moe_experts(const TensorView& x, const TensorView& ids, const TensorView& weights, const TensorView& gate_up,
                   const TensorView& down, TensorView& y) override;
  void set_communicator(Communicator* comm) override;
  void all_reduce(TensorView& x) override;
  void argmax_rows(const TensorView& x, const TensorView* labels, TensorView& out) override;
  void topk_rows(const TensorView& x, TensorView& out) override;
  void sample_rows(const TensorView& logits, const TensorView& params, const TensorView& uniforms,
                   const TensorView& drafts, TensorView& out) override;

  cudaStream_t stream() const { return stream_; }
  int sm_count() const { return static_cast<int>(sm_count_); }  // the GPU's multiprocessors
  // Whether quantized launches of one x tile may take wide CTAs (with_mma_width; TANDEM_CUDA_WIDE=0
  // turns them off, for measuring: the bits are the same either way), and the matmuls' CTAs of half
  // that width too (TANDEM_CUDA_WIDE=4: only the full width, the rule before them).
  bool wide_ctas() const { return wide_ctas_; }
  bool half_wide_ctas() const { return half_wide_ctas_; }
  // Whether the tensor-core matmuls over quantized weights in a step of 2 .. kFewRows rows have the warp
  // split x for all of its rows at once (XSplit::kFewRows; TANDEM_CUDA_FEW_ROWS=0: each lane its own,
  // for measuring: the bits are the same either way).
  bool few_rows() const { return few_rows_; }
  // Whether the tensor-core matmuls over constant weights load their first blocks before they wait for
  // the previous kernel (partial's early; TANDEM_CUDA_EARLY=0 turns it off, for measuring).
  bool early_loads() const { return early_loads_; }

  // Launches kernel<<<grid, block, smem>>>(args...) on this backend's stream, as a programmatic
  // dependent launch where the GPU supports it (begin_kernel(); TANDEM_CUDA_PDL=0 turns it off, for
  // measuring). Launch configuration errors show here, naming `what`, not at the next sync.
  template <typename... Params, typename... Args>
  void launch(const char* what, void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, Args&&... args) {
    cudaLaunchAttribute attr{};
    attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr.val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t config{};
    config.gridDim = grid, config.blockDim = block, config.dynamicSmemBytes = smem, config.stream = op_stream();
    config.attrs = &attr, config.numAttrs = pdl_ ? 1 : 0;
    ++issued_;
    if (!repeat_.empty() && repeat_ == what)
      cu::check_cuda(cudaLaunchKernelEx(&config, kernel, args...), what, __FILE__, __LINE__);
    cu::check_cuda(cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...), what, __FILE__, __LINE__);
  }

 private:
  // Makes this backend's GPU current on the calling thread (cheap when it already is).
  void use_device() const;
  // x [rows, K] (row stride ldx) as the tensor-core kernels read it (mma_rows.cuh): rows of f32 at a
  // 16-byte aligned address and stride; x itself when it is, else a packed copy in the op scratch. Returns
  // the rows and their stride.
  std::pair<const float*, int64_t> mma_x_rows(const float* x, int64_t ldx, int64_t rows, int64_t K);
  // matmul, matmul_gelu_glu (up non-null) and matmul_pair (up and y2 non-null: y2 = x · upᵀ) on the
  // tensor cores: x [T, K] (row stride ldx) times w [N, K], bf16 (mma_rows_fit) or quantized
  // (mma_quant_fit; up of the same code).
  void launch_matmul_mma(const float* x, int64_t ldx, const TensorView& w, const TensorView* up, int64_t K,
                         TensorView& y, int64_t T, int64_t N, TensorView* y2 = nullptr);
  // K slices of a tensor-core matmul over N weight rows of `blocks` K blocks each, of codes of
  // `code_bits` bits (16: bf16) (cu::MmaSplit): as many as the weight's row tiles fit in one CTA an SM,
  // two for 8-bit codes (TANDEM_CUDA_SPLIT_K: that many CTAs an SM), at most one per kMmaWarps blocks
  // (every warp has a block) and kMmaMaxSlices. A function of the weight's shape, its code and the GPU
  // alone, never of the batch or the op, for batch invariance. One CTA an SM, not the two (quantized)
  // to four (bf16) the one-row kernels hold: on the H100 (thirtieth session, docs/PERF.md) filling their
  // occupancy made 26B-A4B decode and verify steps 3–9 % slower; FP8 weights, whose decode is the
  // cheapest per byte, ran their decode step 3–4 % faster at two (thirty-third session; int8 codes,
  // decoded about as cheaply, take the same rule unmeasured).
  int mma_slices(int64_t N, int64_t blocks, int code_bits) const;
  // The split of a launch of `tiles` output tiles into `slices` (its scratch grown: `floats` partial
  // sums per tile and slice, a zeroed ticket per tile).
  cu::MmaSplit mma_split(int64_t tiles, int slices, int64_t floats);
  // rms_norms, and rms_norm / rms_norm_add as chains of one step (op: the name errors give).
  void launch_rms_norms(std::span<const RmsNormStep> steps, float eps, const char* op);
  // The stream ops are issued to: the main one, or inside concurrently()'s first branch the side one.
  cudaStream_t op_stream() const { return lane_ ? side_stream_ : stream_; }
  // moe_experts' grouping scratch for P pairs over E experts, grown as needed.
  cu::MoeGroups moe_groups(int64_t P, int64_t E);
  // Grows a scratch buffer to at least `bytes`. Only reallocates when the size increases, so a step
  // run once at its largest size never allocates again (and can then be captured in a CUDA graph).
  void ensure(Buffer& b, size_t bytes);

  int device_ = 0;
  cudaStream_t stream_ = nullptr;
  std::string name_;
  uint64_t host_syncs_ = 0;
  // CUDA graphs: recordings are valid for one memory layout, which every alloc() / free() changes.
  bool recording_on_ = true;
  bool capturing_ = false;
  uint64_t memory_epoch_ = 0;
  // Scratch of the ops, one set per stream (concurrently() runs ops on two at once).
  struct OpScratch {
    // moe_experts: offsets [E+1], pairs sorted by expert [T·k], position of each pair in that order
    // [T·k], activations [T·k, I], expert outputs [T·k, H].
    Buffer moe_offsets, moe_sorted, moe_pos, moe_act, moe_out;
    // x gathered into an act-order quantized weight's column order (matmul: [T, K]; moe_experts: one
    // row per routed pair).
    Buffer permuted_x;
    // x rows packed for the tensor-core kernels when a view's rows are not 16-byte aligned.
    Buffer mma_x;
    // matmul_gelu_glu's up projection when it cannot fuse.
    Buffer glu_up;
    // Split-K tensor-core matmuls: the slices' partial sums and the tiles' tickets (cu::MmaSplit).
    Buffer mma_partials, mma_tickets;
    // attention's split path: per (row, head, chunk) softmax states, and each (row, head)'s ticket
    // (zero between launches).
    Buffer attn_chunks, attn_tickets;
    // moe_route's last-CTA counter (zero between launches).
    Buffer moe_done;
    // argmax_rows: each chunk's best value and label [R, chunks], and each row's last-CTA counter
    // (zero between launches).
    Buffer argmax_parts, argmax_done;
    // The ids moe_route last grouped (into moe_offsets / moe_sorted / moe_pos) with issued_ just after
    // its launch. A moe_experts on the same ids with issued_ unchanged (nothing issued since, so
    // nothing can have written them) uses that grouping instead of launching its own.
    struct Routed {
      const void* ids = nullptr;
      int64_t ld = 0, T = 0, k = 0, E = 0;
      uint64_t issued = ~uint64_t{0};
    } routed;
  };
  OpScratch scratch_[2];
  // Kernels, graphs, copies, uploads, allocations and frees issued so far (on either stream).
  uint64_t issued_ = 0;
  int lane_ = 0;  // 1 while concurrently() issues its first branch
  bool concurrent_ = true;  // concurrently() on two streams (TANDEM_CUDA_CONCURRENT=0: one, for measuring)
  // A recorded step's forks and joins as programmatic edges (programmatic_joins in cuda_backend.cu;
  // TANDEM_CUDA_CROSS_PDL=0 keeps them ordinary edges, for measuring).
  bool cross_pdl_ = true;
  OpScratch& scratch() { return scratch_[lane_]; }
  cudaStream_t side_stream_ = nullptr;
  cudaEvent_t fork_event_ = nullptr, join_event_ = nullptr;
  int64_t sm_count_ = 0;
  bool pdl_ = false;  // programmatic dependent launch (sm_90+)
  bool mma_ = false;  // bf16 and quantized weights on the tensor cores (sm_80+; TANDEM_CUDA_MMA=0 turns it off, for measuring)
  bool wide_ctas_ = true;
  bool half_wide_ctas_ = true;
  bool few_rows_ = true;     // few_rows()
  bool early_loads_ = true;  // early_loads()
  // TANDEM_CUDA_REPEAT: the name (launch's `what`) of a kernel issued twice in a row wherever it is
  // issued, or empty. For measuring what a kernel costs inside a recorded step (the step's time grows
  // by it); the outputs of a kernel that reads what it writes (a residual add) then differ.
  std::string repeat_;
  // The CTAs per SM a split tensor-core matmul may have (mma_slices): −1, by the weight's code, or
  // TANDEM_CUDA_SPLIT_K for measuring (0 turns the split off).
  int mma_split_per_sm_ = -1;
  // Whether a weight takes the tensor-core kernels: a choice by the weight alone (batch invariance).
  bool mma_takes(const TensorView& w, int64_t K) const;
};

}  // namespace tandem
