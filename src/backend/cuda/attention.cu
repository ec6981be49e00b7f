// Paged attention: softmax(q·Kᵀ·scale)·V over each query row's key range of the KV cache (which
// kv_write_normed, in norm_rope.cu, fills).
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
#include <algorithm>
#include <cmath>

#include "backend/cuda/cuda_common.cuh"

namespace tandem {

using namespace cu;

namespace {

constexpr int kAttnWarps = 16;
constexpr int kKeysPerGroup = 4;
constexpr int kChunkKeys = kAttnWarps * kKeysPerGroup;  // 64: one group of 4 keys per warp
constexpr int kMaxHeadDim = 512;
// Split path while a launch has fewer (row, head) pairs than this per SM (2 CTAs of 512 threads fit
// one SM), and its chunk states fit this workspace.
constexpr int64_t kSplitRowsPerSm = 2;
constexpr size_t kMaxChunkStateBytes = size_t(256) << 20;

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

// A lane's EPL elements of one K or V row as loaded: bf16 values two to a word, still in the cache's
// encoding and widened to f32 only where used, so that a warp's keys' parts can be in flight together
// in half the registers widened copies would take; f32 words for an f32 cache (and a bf16 one with odd
// EPL, widened as loaded).
template <int EPL, int KVT>
struct RawPart {
  static constexpr bool kPairs = KVT == 1 && EPL % 2 == 0;
  static constexpr int kWords = kPairs ? EPL / 2 : EPL;
  uint32_t w[kWords];
  __device__ __forceinline__ float operator[](int i) const {
    if constexpr (kPairs) return __uint_as_float(i % 2 == 0 ? w[i / 2] << 16 : w[i / 2] & 0xFFFF0000u);
    else return __uint_as_float(w[i]);
  }
};

// Issues the loads of elements [off, off + EPL) of a K or V cache (16-byte aligned base) into raw,
// with load_part's access widths, so that widening raw gives load_part's values bit for bit.
template <int EPL, int KVT>
__device__ __forceinline__ void load_raw(const void* base, int64_t off, RawPart<EPL, KVT>& raw) {
  if constexpr (!RawPart<EPL, KVT>::kPairs) {
    float f[EPL];
    load_part<EPL, KVT>(base, off, f);
#pragma unroll
    for (int i = 0; i < EPL; ++i) raw.w[i] = __float_as_uint(f[i]);
  } else {
    const uint16_t* p = static_cast<const uint16_t*>(base) + off;
    if constexpr (EPL % 8 == 0) {
#pragma unroll
      for (int i = 0; i < EPL; i += 8) {
        const uint4 r = *reinterpret_cast<const uint4*>(p + i);
        raw.w[i / 2] = r.x, raw.w[i / 2 + 1] = r.y, raw.w[i / 2 + 2] = r.z, raw.w[i / 2 + 3] = r.w;
      }
    } else {
#pragma unroll
      for (int i = 0; i < EPL; i += 2) raw.w[i / 2] = *reinterpret_cast<const uint32_t*>(p + i);
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
  int64_t max_chunks;  // chunks per row the launch covers (split path: gridDim.y)
  float scale;
  float* chunks;  // split path: per (row, head, chunk) state [m, l, acc[D]]
  unsigned* tickets;  // split path: per (row, head) count of its chunks done (zero between launches)
  int64_t rows;  // query rows of the launch (T)
  bool early;    // split path: the step's inputs and the cache's older keys are read before the wait
};

// The row's usable key range: [kv_begin, kv_begin + len) of block-table row `table`.
struct RowRange {
  int64_t kv_begin, len;
  const int32_t* bt;
};

__device__ __forceinline__ RowRange row_range(const AttnArgs& a, int64_t t) {
  const int32_t* rr = a.ranges + t * a.ranges_ld;
  const int32_t table = rr[0];
  const int64_t kv_begin = rr[1];
  int64_t kv_end = rr[2];
  if (kv_end > a.max_blocks * a.bs) kv_end = a.max_blocks * a.bs;  // keys past the table's end do not exist
  if (kv_end > kv_begin + a.max_chunks * kChunkKeys) kv_end = kv_begin + a.max_chunks * kChunkKeys;
  const bool ok = table >= 0 && table < a.n_tables && kv_begin >= 0 && kv_end > kv_begin;
  return {kv_begin, ok ? kv_end - kv_begin : 0, a.tables + (ok ? table : 0) * a.tables_ld};
}

__device__ __forceinline__ int64_t chunks_of(int64_t len) { return (len + kChunkKeys - 1) / kChunkKeys; }

// Folds the state (mc, lc, ac) of the next chunk into the running state (m, l, acc): the one
// combination step of the canonical order, shared by both paths so that they agree bit for bit.
__device__ __forceinline__ void fold(float& m, float& l, float& acc, float mc, float lc, float ac) {
  const float mn = fmaxf(m, mc);
  const float fa = m == -INFINITY ? 0.0f : expf(m - mn), fc = mc == -INFINITY ? 0.0f : expf(mc - mn);
  acc = fmaf(ac, fc, acc * fa);
  l = fmaf(lc, fc, l * fa);
  m = mn;
}

// Shared memory of one CTA: each warp's state for its 4 keys, then the chunk's merged state.
template <int D>
struct ChunkSmem {
  float acc[kAttnWarps][D];
  float m[kAttnWarps], l[kAttnWarps];
};

// A warp's keys of chunk c of the row (keys 4w .. 4w + 3 of the chunk): each key's element offset in
// the cache (its (slot, kv head) row part for this lane), or -1 where it has none, and the K row parts
// of a batch of G keys (the first batch's, loaded by first_batch).
template <int EPL, int KVT, int G>
struct ChunkKeys {
  int64_t row[kKeysPerGroup];
  RawPart<EPL, KVT> kp[G];
};

// Position in the row's range of key u of warp `warp`'s group in chunk c.
__device__ __forceinline__ int64_t key_pos(const RowRange& r, int64_t c, int warp, int u) {
  return r.kv_begin + c * kChunkKeys + warp * kKeysPerGroup + u;
}

// Loads the K row parts of the first batch's keys at positions in [from, to): chunk_keys loads those
// before fresh_from, and the split kernel the rest after its wait.
template <int EPL, int KVT, int G>
__device__ __forceinline__ void first_batch(const AttnArgs& a, const RowRange& r, int64_t c, int64_t from, int64_t to,
                                            ChunkKeys<EPL, KVT, G>& keys) {
  const int warp = threadIdx.x / 32;
#pragma unroll
  for (int g = 0; g < G; ++g) {
    const int64_t pos = key_pos(r, c, warp, g);
    if (keys.row[g] >= 0 && pos >= from && pos < to) load_raw<EPL, KVT>(a.k, keys.row[g], keys.kp[g]);
  }
}

// Fills keys.row and loads the first batch's K row parts of the keys before position fresh_from.
// Those, the range and the block table may be read before the kernel's wait: the block table and the
// range are the step's inputs, and keys before a row's last `rows` positions were written by earlier
// steps (a step writes at most one key per query row of each sequence, all of them at the end of the
// ranges of that sequence's rows), while the kernel just before may still be writing the step's own.
template <int EPL, int KVT, int G>
__device__ __forceinline__ void chunk_keys(const AttnArgs& a, const RowRange& r, int64_t c, int64_t kvh,
                                           int64_t fresh_from, ChunkKeys<EPL, KVT, G>& keys) {
  constexpr int D = 32 * EPL;
  constexpr int KG = kKeysPerGroup;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t head_off = kvh * D + lane * EPL;
  int64_t pos[KG];
  int32_t blk[KG];
#pragma unroll
  for (int u = 0; u < KG; ++u) {  // all block-table loads first, in flight together
    pos[u] = key_pos(r, c, warp, u);
    blk[u] = pos[u] - r.kv_begin < r.len ? r.bt[pos[u] / a.bs] : -1;
  }
#pragma unroll
  for (int u = 0; u < KG; ++u)
    keys.row[u] =
        blk[u] >= 0 && blk[u] < a.num_blocks ? ((blk[u] * a.bs + pos[u] % a.bs) * a.n_kv) * D + head_off : -1;
  first_batch(a, r, c, INT64_MIN, fresh_from, keys);
}

// The state of chunk c of the row (keys [c·64, c·64 + 64) of its range): warp w scores its keys 4w..4w+3
// of the chunk (`keys`: from chunk_keys and first_batch) with 4 independent butterfly sums in flight, takes
// their softmax state (max, sum, Σ p·v), and the 16 warp states are merged in warp order. On return
// (after a barrier) the chunk's max is *mc, its sum *lc, and thread i's share of Σ p·v is in ac[i] for
// elements i = threadIdx.x + j·blockDim.x.
//
// The warp's loads go in batches of KEYS_IN_FLIGHT keys (1, 2 or 4), each batch's loads issued before
// any of them is used: the four keys' block-table entries and the first batch's K row parts (in `keys`),
// then each later batch's K row parts, then a batch's V row parts (the first batch's before the scores'
// shuffles and expf, which its round trip overlaps).
// A batch thus costs one memory round trip for its keys instead of one per key; a larger batch holds
// more row parts in registers. The arithmetic is the same in every case (same bits).
template <int EPL, int KVT, int KEYS_IN_FLIGHT>
__device__ __forceinline__ void chunk_state(const AttnArgs& a, ChunkKeys<EPL, KVT, KEYS_IN_FLIGHT>& keys,
                                            const float (&q)[EPL], ChunkSmem<32 * EPL>& sm, float& mc, float& lc,
                                            float (&ac)[(32 * EPL + kAttnWarps * 32 - 1) / (kAttnWarps * 32)]) {
  constexpr int D = 32 * EPL;
  constexpr int KG = kKeysPerGroup;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t (&row)[KG] = keys.row;
  using Part = RawPart<EPL, KVT>;
  constexpr int G = KEYS_IN_FLIGHT;
  static_assert(KG % G == 0, "the group's keys go in equal batches");
  float s[KG];
#pragma unroll
  for (int u0 = 0; u0 < KG; u0 += G) {
    Part (&kp)[G] = keys.kp;  // the first batch's were loaded by first_batch
    if (u0 > 0) {
#pragma unroll
      for (int g = 0; g < G; ++g)
        if (row[u0 + g] >= 0) load_raw<EPL, KVT>(a.k, row[u0 + g], kp[g]);
    }
#pragma unroll
    for (int g = 0; g < G; ++g) {
      float part = 0.0f;
      if (row[u0 + g] >= 0) {
#pragma unroll
        for (int i = 0; i < EPL; ++i) part = fmaf(q[i], kp[g][i], part);
      }
      s[u0 + g] = part;
    }
  }
  Part vp[G];
#pragma unroll
  for (int g = 0; g < G; ++g)
    if (row[g] >= 0) load_raw<EPL, KVT>(a.v, row[g], vp[g]);
  float m = -INFINITY;
#pragma unroll
  for (int u = 0; u < KG; ++u) {
    s[u] = row[u] >= 0 ? warp_sum(s[u]) * a.scale : -INFINITY;
    m = fmaxf(m, s[u]);
  }
  float l = 0.0f, acc[EPL];
#pragma unroll
  for (int i = 0; i < EPL; ++i) acc[i] = 0.0f;
#pragma unroll
  for (int u0 = 0; u0 < KG; u0 += G) {
    if (u0 > 0) {
#pragma unroll
      for (int g = 0; g < G; ++g)
        if (row[u0 + g] >= 0) load_raw<EPL, KVT>(a.v, row[u0 + g], vp[g]);
    }
#pragma unroll
    for (int g = 0; g < G; ++g) {
      if (row[u0 + g] < 0) continue;
      const float p = expf(s[u0 + g] - m);
      l += p;
#pragma unroll
      for (int i = 0; i < EPL; ++i) acc[i] = fmaf(p, vp[g][i], acc[i]);
    }
  }
  __syncthreads();  // the previous chunk's readers are done with sm
  if (lane == 0) sm.m[warp] = m, sm.l[warp] = l;
#pragma unroll
  for (int i = 0; i < EPL; ++i) sm.acc[warp][lane * EPL + i] = acc[i];
  __syncthreads();
  float M = -INFINITY;
#pragma unroll
  for (int w = 0; w < kAttnWarps; ++w) M = fmaxf(M, sm.m[w]);
  float f[kAttnWarps], L = 0.0f;
#pragma unroll
  for (int w = 0; w < kAttnWarps; ++w) {
    f[w] = sm.m[w] == -INFINITY ? 0.0f : expf(sm.m[w] - M);
    L = fmaf(sm.l[w], f[w], L);
  }
  mc = M, lc = L;
  constexpr int PER = (D + kAttnWarps * 32 - 1) / (kAttnWarps * 32);
#pragma unroll
  for (int j = 0; j < PER; ++j) {
    const int i = threadIdx.x + j * kAttnWarps * 32;
    float o = 0.0f;
    if (i < D) {
#pragma unroll
      for (int w = 0; w < kAttnWarps; ++w) o = fmaf(sm.acc[w][i], f[w], o);
    }
    ac[j] = o;
  }
}

template <int EPL>
__device__ __forceinline__ void load_q(const AttnArgs& a, int64_t t, int64_t h, float (&q)[EPL]) {
  const float* qp = a.q.head(t, h, 32 * EPL) + (threadIdx.x % 32) * EPL;
#pragma unroll
  for (int i = 0; i < EPL; ++i) q[i] = qp[i];
}

// Writes the row's output acc / l (zeros for a row with no keys).
template <int D, int PER>
__device__ __forceinline__ void write_out(const AttnArgs& a, int64_t t, int64_t h, float l, const float (&acc)[PER]) {
  float* op = a.out.head(t, h, D);
#pragma unroll
  for (int j = 0; j < PER; ++j) {
    const int i = threadIdx.x + j * kAttnWarps * 32;
    if (i < D) op[i] = l > 0.0f ? acc[j] / l : 0.0f;
  }
}

// Whole-row path: one CTA per (row, head) folds its chunks in order. It runs where a launch has at
// least two such CTAs an SM, whose warps hide each other's round trips, so it loads one key at a time:
// batches would cost it registers (ptxas: 64 → 96 at head dim 256 with a bf16 cache), and with them half its CTAs an SM.
template <int EPL, int KVT>
__global__ void __launch_bounds__(kAttnWarps * 32) attention_kernel(AttnArgs a) {
  begin_kernel();
  constexpr int D = 32 * EPL, PER = (D + kAttnWarps * 32 - 1) / (kAttnWarps * 32);
  __shared__ ChunkSmem<D> sm;
  const int64_t t = blockIdx.x / a.n_heads, h = blockIdx.x % a.n_heads;
  const RowRange r = row_range(a, t);
  float q[EPL];
  load_q(a, t, h, q);
  float m = -INFINITY, l = 0.0f, acc[PER];
#pragma unroll
  for (int j = 0; j < PER; ++j) acc[j] = 0.0f;
  for (int64_t c = 0; c < chunks_of(r.len); ++c) {
    float mc, lc, ac[PER];
    ChunkKeys<EPL, KVT, 1> keys;
    chunk_keys(a, r, c, h / a.group, INT64_MAX, keys);
    chunk_state(a, keys, q, sm, mc, lc, ac);
    float mm = m, ll = l;
#pragma unroll
    for (int j = 0; j < PER; ++j) mm = m, ll = l, fold(mm, ll, acc[j], mc, lc, ac[j]);
    m = mm, l = ll;
  }
  write_out<D, PER>(a, t, h, l, acc);
}

// Chunk states combine_chunks loads at once: the loads of a batch are in flight together, so a row of
// n chunks waits ⌈n / kFoldBatch⌉ L2 round trips instead of n (a full layer's row over 32768 keys has
// 512 chunks).
constexpr int kFoldBatch = 8;

// Split path: folds the row's n chunk states in chunk order and writes its output (the CTA that
// finished the row's last chunk; the other chunks' states come from L2, past this SM's L1).
template <int D, int PER>
__device__ __forceinline__ void combine_chunks(const AttnArgs& a, int64_t t, int64_t h, int64_t n) {
  const float* st = a.chunks + (t * a.n_heads + h) * a.max_chunks * (D + 2);
  float m = -INFINITY, l = 0.0f, acc[PER];
#pragma unroll
  for (int j = 0; j < PER; ++j) acc[j] = 0.0f;
  for (int64_t c0 = 0; c0 < n; c0 += kFoldBatch, st += kFoldBatch * (D + 2)) {
    float mcs[kFoldBatch], lcs[kFoldBatch], vs[kFoldBatch][PER];
#pragma unroll
    for (int b = 0; b < kFoldBatch; ++b) {
      const float* sb = st + b * (D + 2);
      const bool in = c0 + b < n;
      mcs[b] = in ? __ldcg(sb) : 0.0f, lcs[b] = in ? __ldcg(sb + 1) : 0.0f;
#pragma unroll
      for (int j = 0; j < PER; ++j) {
        const int i = threadIdx.x + j * kAttnWarps * 32;
        vs[b][j] = in && i < D ? __ldcg(sb + 2 + i) : 0.0f;
      }
    }
#pragma unroll
    for (int b = 0; b < kFoldBatch; ++b) {
      if (c0 + b >= n) break;
      float mm = m, ll = l;
#pragma unroll
      for (int j = 0; j < PER; ++j) mm = m, ll = l, fold(mm, ll, acc[j], mcs[b], lcs[b], vs[b][j]);
      m = mm, l = ll;
    }
  }
  write_out<D, PER>(a, t, h, l, acc);
}

// Keys a split-path warp loads together (chunk_state): all four where a key's row part is at most 4
// words (bf16 rows of up to 256 elements), fewer for longer parts, so that the kernel keeps within the
// 64 registers a thread that let two of its CTAs share an SM (ptxas, sm_90: 50 at head dim 256 and 64
// at 512 with a bf16 cache).
template <int EPL, int KVT>
constexpr int kChunkKeysInFlight = RawPart<EPL, KVT>::kWords <= 4   ? kKeysPerGroup
                                   : RawPart<EPL, KVT>::kWords <= 8 ? kKeysPerGroup / 2
                                                                    : 1;

// Split path: one CTA per (row, head, chunk) (flash-decoding: a decode step has only n_heads rows of
// work per layer). A row of one chunk writes its output; a longer row's chunks leave their states,
// and the last of them to finish (a ticket per (row, head), counted with atomicAdd and reset for the
// next launch) folds them all: no second launch.
//
// With a.early the CTA reads its row's range, block table and older keys before the wait (chunk_keys), so
// that only q and the step's own keys wait for the kernels before it.
template <int EPL, int KVT>
__global__ void __launch_bounds__(kAttnWarps * 32) attention_chunk_kernel(AttnArgs a) {
  if (!a.early) begin_kernel();
  constexpr int D = 32 * EPL, PER = (D + kAttnWarps * 32 - 1) / (kAttnWarps * 32);
  __shared__ ChunkSmem<D> sm;
  const int64_t t = blockIdx.x / a.n_heads, h = blockIdx.x % a.n_heads, c = blockIdx.y;
  const RowRange r = row_range(a, t);
  const int64_t n = chunks_of(r.len);
  if (c >= (n > 0 ? n : 1)) return a.early ? begin_kernel() : void();  // a CTA without keys still waits
  // Keys from fresh_from on may be the step's own (chunk_keys); without a.early, all are read after the wait.
  const int64_t fresh_from = a.early ? r.kv_begin + r.len - a.rows : INT64_MAX;
  ChunkKeys<EPL, KVT, kChunkKeysInFlight<EPL, KVT>> keys;
  if (n > 0) chunk_keys(a, r, c, h / a.group, fresh_from, keys);
  if (a.early) begin_kernel();
  if (n > 0) first_batch(a, r, c, fresh_from, INT64_MAX, keys);
  float q[EPL];
  load_q(a, t, h, q);
  float mc = -INFINITY, lc = 0.0f, ac[PER];
  if (n > 0) chunk_state(a, keys, q, sm, mc, lc, ac);
  if (n <= 1) {  // the whole row: fold into the empty state, as the whole-row path does
    float m = -INFINITY, l = 0.0f, acc[PER];
#pragma unroll
    for (int j = 0; j < PER; ++j) {
      acc[j] = 0.0f, m = -INFINITY, l = 0.0f;
      if (n > 0) fold(m, l, acc[j], mc, lc, ac[j]);
    }
    write_out<D, PER>(a, t, h, l, acc);
    return;
  }
  float* st = a.chunks + ((t * a.n_heads + h) * a.max_chunks + c) * (D + 2);
  if (threadIdx.x == 0) st[0] = mc, st[1] = lc;
#pragma unroll
  for (int j = 0; j < PER; ++j) {
    const int i = threadIdx.x + j * kAttnWarps * 32;
    if (i < D) st[2 + i] = ac[j];
  }
  // Publish this chunk's state, then take the row's ticket.
  if (last_cta_of(a.tickets + blockIdx.x, static_cast<unsigned>(n))) combine_chunks<D, PER>(a, t, h, n);
}

template <int EPL>
void launch_attention(CudaBackend& be, const AttnArgs& a, bool bf16, int64_t rows, bool split) {
  constexpr int threads = kAttnWarps * 32;
  if (!split) {
    if (bf16)
      be.launch("attention_kernel", attention_kernel<EPL, 1>, static_cast<unsigned>(rows), threads, 0, a);
    else
      be.launch("attention_kernel", attention_kernel<EPL, 0>, static_cast<unsigned>(rows), threads, 0, a);
    return;
  }
  const dim3 grid(static_cast<unsigned>(rows), static_cast<unsigned>(a.max_chunks));
  if (bf16)
    be.launch("attention_chunk_kernel", attention_chunk_kernel<EPL, 1>, grid, threads, 0, a);
  else
    be.launch("attention_chunk_kernel", attention_chunk_kernel<EPL, 0>, grid, threads, 0, a);
}

}  // namespace

void CudaBackend::attention(const TensorView& q, const KvLayer& layer, const AttentionRows& rows, float scale,
                            TensorView& out) {
  check_2d(rows.ranges, DType::I32, "attention ranges");
  if (rows.ranges.cols() != 3) fail("attention: ranges must be [T, 3] (table, kv_begin, kv_end)");
  const int64_t T = rows.ranges.rows(), n_kv = layer.n_kv_heads, d = layer.head_dim;
  if (T == 0) return;
  check_2d(rows.block_tables, DType::I32, "attention block_tables");
  check_kv_layer(layer, "attention");
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
  // A launch covers the chunks of the longest range the rows may have: the table's width, or the
  // caller's bound (a sliding window).
  const int64_t table_keys = a.max_blocks * a.bs,
                max_keys = rows.max_keys > 0 ? std::min<int64_t>(rows.max_keys, table_keys) : table_keys;
  a.max_chunks = std::max<int64_t>(1, (max_keys + kChunkKeys - 1) / kChunkKeys);
  const bool bf16 = layer.dtype == DType::BF16;
  const int64_t blocks = T * n_heads;
  const size_t state_bytes = static_cast<size_t>(blocks * a.max_chunks * (d + 2)) * sizeof(float);
  const bool split = blocks < kSplitRowsPerSm * sm_count_ && state_bytes <= kMaxChunkStateBytes &&
                     a.max_chunks <= 65535;
  a.chunks = nullptr;
  a.tickets = nullptr;
  a.rows = T;
  a.early = split && early_loads_;
  if (split && a.max_chunks > 1) {
    OpScratch& sc = scratch();
    ensure(sc.attn_chunks, state_bytes);
    a.chunks = static_cast<float*>(sc.attn_chunks.data());
    if (sc.attn_tickets.bytes() < blocks * sizeof(unsigned)) {  // new tickets start at zero
      ensure(sc.attn_tickets, blocks * sizeof(unsigned));
      TANDEM_CUDA_CHECK(cudaMemsetAsync(sc.attn_tickets.data(), 0, sc.attn_tickets.bytes(), op_stream()));
    }
    a.tickets = static_cast<unsigned*>(sc.attn_tickets.data());
  }
  switch (d / 32) {
#define TANDEM_ATTN_CASE(E)                             \
  case E:                                               \
    launch_attention<E>(*this, a, bf16, blocks, split); \
    break;
    TANDEM_ATTN_CASE(1) TANDEM_ATTN_CASE(2) TANDEM_ATTN_CASE(3) TANDEM_ATTN_CASE(4)
    TANDEM_ATTN_CASE(5) TANDEM_ATTN_CASE(6) TANDEM_ATTN_CASE(7) TANDEM_ATTN_CASE(8)
    TANDEM_ATTN_CASE(9) TANDEM_ATTN_CASE(10) TANDEM_ATTN_CASE(11) TANDEM_ATTN_CASE(12)
    TANDEM_ATTN_CASE(13) TANDEM_ATTN_CASE(14) TANDEM_ATTN_CASE(15) TANDEM_ATTN_CASE(16)
#undef TANDEM_ATTN_CASE
  }
}

}  // namespace tandem
