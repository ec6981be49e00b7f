// Paged KV cache ops: kv_write (scatter new K/V rows into their slots, F32 or BF16 with round to
// nearest even) and attention (softmax(q·Kᵀ·scale)·V over each query row's key range).
//
// attention: one CTA of 16 warps per (query row, query head) (a decode step has only n_heads rows of
// work per layer, so each CTA must spread its keys wide). Lane l holds the d/32 consecutive
// elements [l·d/32, (l+1)·d/32) of q, K/V rows and the output accumulator, so a warp reads each
// K/V row with one coalesced sweep. The key range is cut into groups of 4 consecutive keys dealt
// round-robin to the warps; a warp scores its 4 keys at once (4 independent butterfly sums in
// flight), then folds them into its online-softmax state (max, sum, acc) in key order. The warp
// states are merged in warp order through shared memory. Every step of that order depends only on
// the row's own key range, never on T or the other rows (batch invariance), and the f32 expf keeps
// it within rounding of the CPU's two-pass softmax. Device-side inputs are never trusted: a bad
// table index or key range gives a zero row, a block-table entry outside the cache skips its keys.
#include <cmath>

#include "backend/cuda/cuda_common.cuh"

namespace tandem {

using namespace cu;

namespace {

constexpr int kAttnWarps = 16;
constexpr int kKeysPerGroup = 4;
constexpr int kMaxHeadDim = 512;

template <int KVT>  // 0: F32, 1: BF16
__global__ void kv_write_kernel(HeadView k, HeadView v, const int64_t* __restrict__ slots, void* kc, void* vc,
                                int64_t T, int64_t n_kv, int64_t d, int64_t n_slots) {
  const int64_t n = T * n_kv * d;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = i / (n_kv * d), h = (i / d) % n_kv, e = i % d;
    const int64_t slot = slots[t];
    if (slot < 0 || slot >= n_slots) continue;
    const int64_t dst = (slot * n_kv + h) * d + e;
    const float kv = k.head(t, h, d)[e], vv = v.head(t, h, d)[e];
    if constexpr (KVT == 0) {
      static_cast<float*>(kc)[dst] = kv;
      static_cast<float*>(vc)[dst] = vv;
    } else {
      static_cast<uint16_t*>(kc)[dst] = f32_to_bf16_bits(kv);
      static_cast<uint16_t*>(vc)[dst] = f32_to_bf16_bits(vv);
    }
  }
}

// out[0:EPL] = elements [off, off + EPL) of a K or V cache (16-byte aligned base), widened to f32.
template <int EPL, int KVT>
__device__ __forceinline__ void load_part(const void* base, int64_t off, float (&out)[EPL]) {
  if constexpr (KVT == 0) {
    const float* p = static_cast<const float*>(base) + off;
    if constexpr (EPL % 4 == 0) {
#pragma unroll
      for (int i = 0; i < EPL; i += 4) {
        const float4 f = *reinterpret_cast<const float4*>(p + i);
        out[i] = f.x, out[i + 1] = f.y, out[i + 2] = f.z, out[i + 3] = f.w;
      }
    } else if constexpr (EPL % 2 == 0) {
#pragma unroll
      for (int i = 0; i < EPL; i += 2) {
        const float2 f = *reinterpret_cast<const float2*>(p + i);
        out[i] = f.x, out[i + 1] = f.y;
      }
    } else {
#pragma unroll
      for (int i = 0; i < EPL; ++i) out[i] = p[i];
    }
  } else {
    const uint16_t* p = static_cast<const uint16_t*>(base) + off;
    if constexpr (EPL % 8 == 0) {
#pragma unroll
      for (int i = 0; i < EPL; i += 8) {
        const uint4 r = *reinterpret_cast<const uint4*>(p + i);
        const uint32_t u[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          out[i + 2 * j] = __uint_as_float(u[j] << 16);
          out[i + 2 * j + 1] = __uint_as_float(u[j] & 0xFFFF0000u);
        }
      }
    } else if constexpr (EPL % 2 == 0) {
#pragma unroll
      for (int i = 0; i < EPL; i += 2) {
        const uint32_t u = *reinterpret_cast<const uint32_t*>(p + i);
        out[i] = __uint_as_float(u << 16);
        out[i + 1] = __uint_as_float(u & 0xFFFF0000u);
      }
    } else {
#pragma unroll
      for (int i = 0; i < EPL; ++i) out[i] = bf16_bits_to_f32(p[i]);
    }
  }
}

struct AttnArgs {
  HeadView q, out;
  const void* k;
  const void* v;
  const int32_t* ranges;
  int64_t ranges_ld;
  const int32_t* tables;
  int64_t tables_ld, n_tables, max_blocks;
  int64_t n_heads, n_kv, group, num_blocks, bs;
  float scale;
};

template <int EPL, int KVT>
__global__ void __launch_bounds__(kAttnWarps * 32) attention_kernel(AttnArgs a) {
  constexpr int D = 32 * EPL;
  constexpr int KG = kKeysPerGroup;
  __shared__ float s_acc[kAttnWarps][D];
  __shared__ float s_m[kAttnWarps], s_l[kAttnWarps];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t t = blockIdx.x / a.n_heads, h = blockIdx.x % a.n_heads, kvh = h / a.group;

  const int32_t* rr = a.ranges + t * a.ranges_ld;
  const int32_t table = rr[0];
  const int64_t kv_begin = rr[1];
  int64_t kv_end = rr[2];
  if (kv_end > a.max_blocks * a.bs) kv_end = a.max_blocks * a.bs;  // keys past the table's end do not exist
  const bool ok = table >= 0 && table < a.n_tables && kv_begin >= 0 && kv_end > kv_begin;
  const int64_t len = ok ? kv_end - kv_begin : 0;
  const int32_t* bt = a.tables + (ok ? table : 0) * a.tables_ld;

  float q[EPL], acc[EPL];
  const float* qp = a.q.head(t, h, D) + lane * EPL;
#pragma unroll
  for (int i = 0; i < EPL; ++i) q[i] = qp[i], acc[i] = 0.0f;
  float m = -INFINITY, l = 0.0f;
  const int64_t head_off = kvh * D + lane * EPL;

  for (int64_t g0 = static_cast<int64_t>(warp) * KG; g0 < len; g0 += kAttnWarps * KG) {
    int64_t row[KG];  // element offset of the key's (slot, kv head) row part, or -1
    float s[KG];
#pragma unroll
    for (int u = 0; u < KG; ++u) {
      row[u] = -1;
      const int64_t j = g0 + u;
      if (j < len) {
        const int64_t pos = kv_begin + j;
        const int32_t blk = bt[pos / a.bs];
        if (blk >= 0 && blk < a.num_blocks) row[u] = ((blk * a.bs + pos % a.bs) * a.n_kv) * D + head_off;
      }
      float part = 0.0f;
      if (row[u] >= 0) {
        float kf[EPL];
        load_part<EPL, KVT>(a.k, row[u], kf);
#pragma unroll
        for (int i = 0; i < EPL; ++i) part = fmaf(q[i], kf[i], part);
      }
      s[u] = part;
    }
#pragma unroll
    for (int u = 0; u < KG; ++u) s[u] = row[u] >= 0 ? warp_sum(s[u]) * a.scale : -INFINITY;
    float m_new = m;
#pragma unroll
    for (int u = 0; u < KG; ++u) m_new = fmaxf(m_new, s[u]);
    if (m_new == -INFINITY) continue;  // no valid key yet
    const float corr = expf(m - m_new);
    l *= corr;
#pragma unroll
    for (int i = 0; i < EPL; ++i) acc[i] *= corr;
#pragma unroll
    for (int u = 0; u < KG; ++u) {
      if (row[u] < 0) continue;
      const float p = expf(s[u] - m_new);
      l += p;
      float vf[EPL];
      load_part<EPL, KVT>(a.v, row[u], vf);
#pragma unroll
      for (int i = 0; i < EPL; ++i) acc[i] = fmaf(p, vf[i], acc[i]);
    }
    m = m_new;
  }

  if (lane == 0) s_m[warp] = m, s_l[warp] = l;
#pragma unroll
  for (int i = 0; i < EPL; ++i) s_acc[warp][lane * EPL + i] = acc[i];
  __syncthreads();
  float M = -INFINITY;
#pragma unroll
  for (int w = 0; w < kAttnWarps; ++w) M = fmaxf(M, s_m[w]);
  float f[kAttnWarps], L = 0.0f;
#pragma unroll
  for (int w = 0; w < kAttnWarps; ++w) {
    f[w] = s_m[w] == -INFINITY ? 0.0f : expf(s_m[w] - M);
    L = fmaf(s_l[w], f[w], L);
  }
  float* op = a.out.head(t, h, D);
  for (int i = threadIdx.x; i < D; i += blockDim.x) {
    float o = 0.0f;
    if (M != -INFINITY) {
#pragma unroll
      for (int w = 0; w < kAttnWarps; ++w) o = fmaf(s_acc[w][i], f[w], o);
      o = o / L;
    }
    op[i] = o;
  }
}

template <int EPL>
void launch_attention(const AttnArgs& a, bool bf16, int64_t blocks, cudaStream_t stream) {
  if (bf16) attention_kernel<EPL, 1><<<static_cast<unsigned>(blocks), kAttnWarps * 32, 0, stream>>>(a);
  else attention_kernel<EPL, 0><<<static_cast<unsigned>(blocks), kAttnWarps * 32, 0, stream>>>(a);
}

void check_layer(const KvLayer& layer, const char* op) {
  if (layer.n_kv_heads <= 0 || layer.head_dim <= 0 || layer.block_size <= 0 || layer.num_blocks < 0)
    fail("{}: KV layer has no heads, head_dim or block_size", op);
  if (layer.dtype != DType::F32 && layer.dtype != DType::BF16)
    fail("{}: KV dtype {} is not supported by the CUDA backend (F32 or BF16)", op, dtype_name(layer.dtype));
  if (!layer.k || !layer.v) fail("{}: KV layer has no K/V memory", op);
  if (reinterpret_cast<uint64_t>(layer.k) % 16 != 0 || reinterpret_cast<uint64_t>(layer.v) % 16 != 0)
    fail("{}: KV cache memory must be 16-byte aligned", op);
}

}  // namespace

void CudaBackend::kv_write(const TensorView& k, const TensorView& v, const KvLayer& layer, const TensorView& slots) {
  check_2d(slots, DType::I64, "kv_write slots");
  if (slots.rows() != 1 && slots.stride() != slots.cols()) fail("kv_write: slots must be dense");
  const int64_t T = slots.numel(), n_kv = layer.n_kv_heads, d = layer.head_dim;
  if (T == 0) return;
  check_layer(layer, "kv_write");
  check_heads(k, T, n_kv, d, "kv_write k");
  check_heads(v, T, n_kv, d, "kv_write v");
  use_device();
  const int64_t n = T * n_kv * d, n_slots = static_cast<int64_t>(layer.num_blocks) * layer.block_size;
  const unsigned grid = static_cast<unsigned>(std::min<int64_t>((n + 255) / 256, 65536));
  if (layer.dtype == DType::F32)
    kv_write_kernel<0><<<grid, 256, 0, stream_>>>(head_view(k, T), head_view(v, T), slots.as<int64_t>(), layer.k,
                                                  layer.v, T, n_kv, d, n_slots);
  else
    kv_write_kernel<1><<<grid, 256, 0, stream_>>>(head_view(k, T), head_view(v, T), slots.as<int64_t>(), layer.k,
                                                  layer.v, T, n_kv, d, n_slots);
  TANDEM_CUDA_LAUNCHED("kv_write_kernel");
}

void CudaBackend::attention(const TensorView& q, const KvLayer& layer, const AttentionRows& rows, float scale,
                            TensorView& out) {
  check_2d(rows.ranges, DType::I32, "attention ranges");
  if (rows.ranges.cols() != 3) fail("attention: ranges must be [T, 3] (table, kv_begin, kv_end)");
  const int64_t T = rows.ranges.rows(), n_kv = layer.n_kv_heads, d = layer.head_dim;
  if (T == 0) return;
  check_2d(rows.block_tables, DType::I32, "attention block_tables");
  check_layer(layer, "attention");
  if (d % 32 != 0 || d > kMaxHeadDim)
    fail("attention: head_dim {} is not supported by the CUDA backend (a multiple of 32 up to {})", d, kMaxHeadDim);
  const int64_t n_heads = check_attention_heads(q, out, T, n_kv, d);
  if (T * n_heads > 0x7FFFFFFF) fail("attention: {} rows × {} heads is too many for one launch", T, n_heads);
  use_device();
  AttnArgs a;
  a.q = head_view(q, T);
  a.out = head_view(out, T);
  a.k = layer.k;
  a.v = layer.v;
  a.ranges = rows.ranges.as<int32_t>();
  a.ranges_ld = rows.ranges.stride();
  a.tables = rows.block_tables.as<int32_t>();
  a.tables_ld = rows.block_tables.stride();
  a.n_tables = rows.block_tables.numel() == 0 ? 0 : rows.block_tables.rows();
  a.max_blocks = rows.block_tables.cols();
  a.n_heads = n_heads;
  a.n_kv = n_kv;
  a.group = n_heads / n_kv;
  a.num_blocks = layer.num_blocks;
  a.bs = layer.block_size;
  a.scale = scale;
  const bool bf16 = layer.dtype == DType::BF16;
  const int64_t blocks = T * n_heads;
  switch (d / 32) {
#define TANDEM_ATTN_CASE(E) \
  case E: launch_attention<E>(a, bf16, blocks, stream_); break;
    TANDEM_ATTN_CASE(1) TANDEM_ATTN_CASE(2) TANDEM_ATTN_CASE(3) TANDEM_ATTN_CASE(4)
    TANDEM_ATTN_CASE(5) TANDEM_ATTN_CASE(6) TANDEM_ATTN_CASE(7) TANDEM_ATTN_CASE(8)
    TANDEM_ATTN_CASE(9) TANDEM_ATTN_CASE(10) TANDEM_ATTN_CASE(11) TANDEM_ATTN_CASE(12)
    TANDEM_ATTN_CASE(13) TANDEM_ATTN_CASE(14) TANDEM_ATTN_CASE(15) TANDEM_ATTN_CASE(16)
#undef TANDEM_ATTN_CASE
  }
  TANDEM_CUDA_LAUNCHED("attention_kernel");
}

}  // namespace tandem
