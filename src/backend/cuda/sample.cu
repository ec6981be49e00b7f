// sample_rows on the GPU: one 1024-thread CTA per row of logits, so only the token ids leave the
// device. The algorithm is backend/sampling.h's (its per-token helpers are compiled here too); the
// host reference sorts, this kernel never does:
//   - the top-k cut is a radix select on the order key (4 passes of 8-bit count histograms in shared
//     memory), then the ties at the cut key are taken in id order by a block-wide prefix scan;
//   - the top-p cut is the same radix select with each token counting its fixed-point mass instead
//     of 1 (the ties at the cut key all have the same mass, so how many of them the prefix needs is
//     a division);
//   - the draw is a block-wide prefix scan of the kept masses in id order.
// Masses are integers (sampling.h step 4), so the shared-memory atomics add them in any order to
// the same sums: the kernel is deterministic and keeps and draws exactly what the CPU backend does.
// The row is re-read from L2 on every pass (about 17 for a row with top-k and top-p) and e is
// recomputed instead of stored: 262144 floats do not fit in shared memory.
#include "backend/cuda/cuda_common.cuh"
#include "backend/sampling.h"

namespace tandem {

using namespace cu;

namespace {

constexpr int kSampleThreads = 1024;
using u64 = unsigned long long;

struct Row {
  const float* l;
  int64_t V;
  float maxv, inv_t, min_p;
  __device__ uint32_t key(int64_t i) const { return sampling::order_key(l[i]); }
  __device__ float e(int64_t i) const { return sampling::weight_e(l[i], maxv, inv_t); }
};

// A position in the order (larger key first, then lower id): the tokens at or before it.
struct Cut {
  uint32_t key;
  int64_t id;
  __device__ bool keeps(uint32_t k, int64_t i) const { return k > key || (k == key && i <= id); }
};

__device__ float block_max(float v) {
  __shared__ float s[32];
  for (int o = 16; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xFFFFFFFFu, v, o));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, n_warps = blockDim.x / 32;
  __syncthreads();
  if (lane == 0) s[warp] = v;
  __syncthreads();
  v = lane < n_warps ? s[lane] : -INFINITY;
  for (int o = 16; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xFFFFFFFFu, v, o));
  return v;
}

__device__ u64 block_sum(u64 v) {
  __shared__ u64 s[32];
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xFFFFFFFFu, v, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, n_warps = blockDim.x / 32;
  __syncthreads();
  if (lane == 0) s[warp] = v;
  __syncthreads();
  v = lane < n_warps ? s[lane] : 0;
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xFFFFFFFFu, v, o);
  return v;
}

// The sum of v over the threads before this one.
__device__ u64 block_exclusive_scan(u64 v) {
  __shared__ u64 s[32];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, n_warps = blockDim.x / 32;
  u64 inc = v;
  for (int o = 1; o < 32; o *= 2) {
    const u64 n = __shfl_up_sync(0xFFFFFFFFu, inc, o);
    if (lane >= o) inc += n;
  }
  __syncthreads();
  if (lane == 31) s[warp] = inc;
  __syncthreads();
  if (warp == 0) {
    u64 t = lane < n_warps ? s[lane] : 0;
    for (int o = 1; o < 32; o *= 2) {
      const u64 n = __shfl_up_sync(0xFFFFFFFFu, t, o);
      if (lane >= o) t += n;
    }
    if (lane < n_warps) s[lane] = t;
  }
  __syncthreads();
  return (warp > 0 ? s[warp - 1] : 0) + inc - v;
}

// The first index i (in id order) at which Σ_{j <= i} weight(j) exceeds t; -1 when none does. Each
// thread owns a contiguous segment: segment totals, a block scan, then the one thread whose segment
// holds the crossing walks it.
template <typename W>
__device__ int64_t first_exceeding(int64_t V, W weight, u64 t) {
  __shared__ int64_t s_found;
  const int64_t seg = (V + blockDim.x - 1) / blockDim.x;
  const int64_t b = min(V, threadIdx.x * seg), e = min(V, b + seg);
  u64 local = 0;
  for (int64_t i = b; i < e; ++i) local += weight(i);
  if (threadIdx.x == 0) s_found = -1;
  const u64 before = block_exclusive_scan(local);  // its barriers order the s_found write
  if (before <= t && t < before + local) {
    u64 c = before;
    for (int64_t i = b; i < e; ++i) {
      c += weight(i);
      if (c > t) {
        s_found = i;
        break;
      }
    }
  }
  __syncthreads();
  const int64_t found = s_found;
  __syncthreads();  // s_found is reset by the next call
  return found;
}

// Walks the order over the tokens with in_set(i, key), adding weight(i), and returns the key at which
// the running total first reaches target (1 <= target <= the set's total); *above gets the total of
// the set's tokens with larger keys. A radix select: one 8-bit digit of the key per pass.
template <typename In, typename W>
__device__ uint32_t select_key(const Row& row, In in_set, W weight, u64 target, u64* above_out) {
  __shared__ u64 hist[256];
  __shared__ uint32_t s_digit;
  __shared__ u64 s_above;
  uint32_t prefix = 0, mask = 0;
  u64 above = 0;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int b = threadIdx.x; b < 256; b += blockDim.x) hist[b] = 0;
    __syncthreads();
    for (int64_t i = threadIdx.x; i < row.V; i += blockDim.x) {
      const uint32_t k = row.key(i);
      if ((k & mask) == prefix && in_set(i, k)) {
        const u64 w = weight(i);
        if (w) atomicAdd(&hist[(k >> shift) & 0xFFu], w);
      }
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      u64 a = above;
      int d = 255;
      for (; d > 0; --d) {
        if (a + hist[d] >= target) break;
        a += hist[d];
      }
      s_digit = static_cast<uint32_t>(d), s_above = a;
    }
    __syncthreads();
    prefix |= s_digit << shift;
    mask |= 0xFFu << shift;
    above = s_above;
    __syncthreads();  // hist and s_* are rewritten by the next pass
  }
  *above_out = above;
  return prefix;
}

__global__ void __launch_bounds__(kSampleThreads)
    sample_kernel(Mat logits, const float* __restrict__ params, int64_t p_ld, const float* __restrict__ uniforms,
                  int64_t u_ld, const int32_t* __restrict__ drafts, int32_t* __restrict__ out) {
  begin_kernel();
  const int64_t r = blockIdx.x, V = logits.cols;
  const float* pr = params + r * p_ld;
  const sampling::RowParams p{pr[0], pr[1], pr[2], pr[3]};
  Row row{logits.p + r * logits.ld, V, -INFINITY, sampling::inverse_temperature(p.temperature),
          sampling::min_p_threshold(p.min_p)};
  float m = -INFINITY;
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x) m = fmaxf(m, row.l[i]);
  row.maxv = block_max(m);

  Cut cut{0u, V - 1};  // every token
  const int64_t K = sampling::keep_k(p, V);
  if (K < V) {
    u64 above;
    const uint32_t kk = select_key(
        row, [](int64_t, uint32_t) { return true; }, [](int64_t) -> u64 { return 1; }, static_cast<u64>(K), &above);
    const u64 j = static_cast<u64>(K) - above;  // how many of the tokens with key kk, lowest ids first
    cut = {kk, first_exceeding(V, [&](int64_t i) -> u64 { return row.key(i) == kk; }, j - 1)};
  }
  if (p.top_p < 1.0f) {
    u64 local = 0;
    for (int64_t i = threadIdx.x; i < V; i += blockDim.x)
      if (cut.keeps(row.key(i), i)) local += sampling::mass(row.e(i));
    const u64 target = sampling::top_p_target(block_sum(local), p.top_p);
    u64 above;
    const Cut k_cut = cut;
    const uint32_t kp = select_key(
        row, [&](int64_t i, uint32_t k) { return k_cut.keeps(k, i); },
        [&](int64_t i) -> u64 { return sampling::mass(row.e(i)); }, target, &above);
    // Every token with key kp has the same mass w_eq (> 0, or the prefix would not reach target there).
    const u64 w_eq = sampling::mass(sampling::weight_e(sampling::key_logit(kp), row.maxv, row.inv_t));
    const u64 j = w_eq ? (target - above + w_eq - 1) / w_eq : 1;
    cut = {kp, first_exceeding(V, [&](int64_t i) -> u64 { const uint32_t k = row.key(i); return k == kp && k_cut.keeps(k, i); },
                               j - 1)};
  }
  auto kept = [&](int64_t i) -> u64 {
    if (!cut.keeps(row.key(i), i)) return 0;
    const float e = row.e(i);
    return e >= row.min_p ? sampling::mass(e) : 0;
  };
  u64 local = 0;
  for (int64_t i = threadIdx.x; i < V; i += blockDim.x) local += kept(i);
  u64 total = block_sum(local);

  const float* u = uniforms + r * u_ld;
  const int32_t d = drafts[r];
  int64_t excluded = -1;
  if (d >= 0 && d < V) {  // a draft out of range counts as none (sampling.h: the CPU backend refuses it)
    const u64 wd = kept(d);
    if (wd > sampling::scaled(sampling::uniform_bits(u[0]), total)) {
      if (threadIdx.x == 0) out[r] = d;
      return;
    }
    total -= wd, excluded = d;
  }
  const u64 t = sampling::scaled(sampling::uniform_bits(u[1]), total);
  const int64_t token = first_exceeding(V, [&](int64_t i) -> u64 { return i == excluded ? 0 : kept(i); }, t);
  if (threadIdx.x == 0) out[r] = token >= 0 ? static_cast<int32_t>(token) : 0;  // -1 only for non-finite rows
}

}  // namespace

void CudaBackend::sample_rows(const TensorView& logits, const TensorView& params, const TensorView& uniforms,
                              const TensorView& drafts, TensorView& out) {
  const int64_t R = check_sample_rows(logits, params, uniforms, drafts, out);
  if (R == 0) return;
  if (R > 0x7FFFFFFF) fail("sample_rows: {} rows are too many", R);
  use_device();
  launch("sample_kernel", sample_kernel, static_cast<unsigned>(R), kSampleThreads, 0, mat(logits), params.as<float>(),
         params.stride(), uniforms.as<float>(), uniforms.stride(), drafts.as<int32_t>(), out.as<int32_t>());
}

}  // namespace tandem
