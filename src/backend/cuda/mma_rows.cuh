// Private to the CUDA backend: bf16 weight rows times f32 activations on the tensor cores
// (mma.sync m16n8k16, f32 accumulation), the path matmul, matmul_gelu_glu and moe_experts take for
// bf16 weights whose rows are 16-byte aligned with K a multiple of 8 (mma_rows_fit).
//
// Why: the CUDA-core kernels (weight_rows.cuh) cost one FMA per weight per row of x, so a verify
// block of 5 rows costs 1.4× a decode step and a prefill chunk is FMA-bound. One MMA multiplies 16
// weight rows with a tile of 8 x rows over 16 k: up to 8 rows of x cost what one costs.
//
// Precision: the tensor cores take bf16 operands. The weights are bf16 already; each f32 x value is
// split into three bf16 parts and each step runs three MMAs into the same f32 accumulators. Products
// of bf16 values are exact, so the result is an f32 dot product in another summation order than the
// CUDA-core kernels', not a bf16 one. Each lane splits the f32 x values it loads in registers
// (split_x8; in a one-row step the warp splits them once and shares the parts: OneRowX), so the kernels
// read x as f32 rows and no op needs a separate splitting pass. Truncating
// instead of rounding makes the split exact: hi holds x's top 8 significant bits, mid the next 8 of
// what is left, lo the rest (at most 8 bits), so x = hi + mid + lo exactly for every finite x whose
// parts stay normal.
//
// Layout: the MMA's A operand is 16 weight rows, its B operand 8 x rows (tokens), so a decode or
// verify step of up to 8 rows is one pass. A CTA of kMmaWarps warps owns 16 weight rows of NT row sets
// (1 for a matmul, 2 for a gate and an up set) and TILES tiles of 8 x rows. K is cut into blocks of
// 32; warp w takes blocks w, w + kMmaWarps, ... (split-K inside the CTA; a matmul with few weight
// rows also splits K between CTAs, cu::MmaSplit), and in a block lane (g = lane / 4, t = lane % 4) loads the 16-byte chunk [8t, 8t + 8)
// of weight rows g and g + 8 and the same 8 f32 values of x row g. The sum over k is order-free, so k is
// relabelled to fit the fragments: MMA step s ∈ {0, 1} of a block takes chunk elements 8t + 4s +
// {0, 1} as the fragment's k = 2t, 2t + 1 and 8t + 4s + {2, 3} as k = 2t + 8, 2t + 9 (each chunk's
// words 2s and 2s + 1), for the weights and the x parts alike. The warps' partial sums are then added
// in warp order through shared memory, and a split's slices in slice order (mma_finish).
//
// Streaming: at decode sizes the kernels are a read of the weights, and three things decide how
// close to the copy bandwidth they come (the kernel alone in a microbenchmark on the H200,
// 2026-12-02, 31B shapes at T = 1: 2.1–2.6 TB/s before, 3.1–3.8 TB/s after; docs/PERF.md): every
// load of U blocks (weights and x) is issued before the first MMA; the weight loads ask L2 for the
// whole 256-byte segment around them (`ld.global.nc.L2::256B`: the 64-byte pieces a warp reads of 16
// rows become full DRAM bursts, and the CTA's other warps find the rest in L2); and x is split in
// registers instead of read as three bf16 parts that a kernel of its own wrote.
//
// Batch invariance: an output element's sums run over the same blocks, steps and parts in the same
// order whatever the other rows of the tile are (an MMA computes each column of its tile on its own),
// and the path is chosen by the weight alone, so a row's result never depends on the batch.
#pragma once
#include "backend/cuda/cuda_common.cuh"

namespace tandem {
namespace cu {

constexpr int kMmaWarps = 8;  // warps of a CTA, splitting K between them
constexpr int kMmaRows = 16;  // weight rows of a row tile (per row set): a CTA has one, or VPW (mma_quant.cuh)
constexpr int kMmaTile = 8;   // x rows per MMA tile
constexpr int kMmaParts = 3;  // bf16 parts of an x value

// Whether weight w (rows of K elements) takes the tensor-core path: a choice made by the weight
// alone, so that a given weight gives the same bits for any batch.
inline bool mma_rows_fit(const TensorView& w, int64_t K) {
  return !w.quant && w.dtype == DType::BF16 && K % 8 == 0 && reinterpret_cast<uint64_t>(w.data) % 16 == 0;
}

// Tiles of 8 x rows per CTA for a step whose weights see at most `rows` x rows: one weight pass for a
// decode or verify step, 32 rows per weight pass for prefill, and for weight rows W whose kMidTiles is
// 2, 16 rows in between. Calls f.template operator()<TILES>().
template <class W, class F>
void with_mma_tiles(int64_t rows, F&& f) {
  if (rows <= kMmaTile) f.template operator()<1>();
  else if (rows <= W::kMidTiles * kMmaTile) f.template operator()<W::kMidTiles>();
  else f.template operator()<4>();
}

// The three bf16 parts (0: hi, 1: mid, 2: lo; see the head of this file) of the f32 x values a and b,
// as one word per part: a in the low half, b in the high half, as a bf16 row holds two neighbours.
__device__ __forceinline__ void split_pair(float a, float b, uint32_t (&word)[kMmaParts]) {
#pragma unroll
  for (int p = 0; p < kMmaParts; ++p) {
    const uint32_t ua = __float_as_uint(a), ub = __float_as_uint(b);
    word[p] = (ua >> 16) | (ub & 0xFFFF0000u);
    a -= __uint_as_float(ua & 0xFFFF0000u);  // exact: the bits below the part
    b -= __uint_as_float(ub & 0xFFFF0000u);
  }
}

// 4 consecutive x values as 2 words per part: word q holds values 2q and 2q + 1.
__device__ __forceinline__ void split_x4(const float4& v4, uint2 (&part)[kMmaParts]) {
  uint32_t w0[kMmaParts], w1[kMmaParts];
  split_pair(v4.x, v4.y, w0);
  split_pair(v4.z, v4.w, w1);
#pragma unroll
  for (int p = 0; p < kMmaParts; ++p) part[p] = make_uint2(w0[p], w1[p]);
}

// 8 consecutive x values (lo4 then hi4) as the 16-byte chunks the MMA fragments take: 4 words per
// part, word q holding values 2q and 2q + 1, or with NIBBLE_PAIRS values q and q + 4 (the order in
// which four-bit integer codes decode: mma_quant_decode.h, quant_pair_code).
template <bool NIBBLE_PAIRS = false>
__device__ __forceinline__ void split_x8(const float4& lo4, const float4& hi4, uint4 (&part)[kMmaParts]) {
  const float v[8] = {lo4.x, lo4.y, lo4.z, lo4.w, hi4.x, hi4.y, hi4.z, hi4.w};
  uint32_t w[4][kMmaParts];
#pragma unroll
  for (int q = 0; q < 4; ++q) split_pair(NIBBLE_PAIRS ? v[q] : v[2 * q], NIBBLE_PAIRS ? v[q + 4] : v[2 * q + 1], w[q]);
#pragma unroll
  for (int p = 0; p < kMmaParts; ++p) part[p] = make_uint4(w[0][p], w[1][p], w[2][p], w[3][p]);
}

// A step of one x row (decode): its x parts split once per warp instead of once per lane.
//
// With several x rows, lane (g, t) loads and splits the values of x row g its MMA fragments take.
// With one row, the eight lanes g of a quad position t would all split the same values, and at
// decode sizes that splitting was most of a quantized kernel's instructions (a 16-byte chunk of
// four-bit codes needs 32 x values split). So the warp's 32 lanes split the x values of the U
// blocks it loads at once between them, store the parts in the warp's shared memory, and each lane
// reads back the words of its fragments, the same in every lane g: the MMA's other 7 columns repeat
// column 0, whose sums are what they would be with zero columns (an MMA computes each column on its
// own). The parts are the same bits whoever splits them, so a row's result is the same as in a batch.
//
// Values: U blocks of VB values each, block q's value o at index q · VB + o. Block q is x's block
// kb0 + kMmaWarps · q (x position (kb0 + kMmaWarps · q) · VB + o), or for a warp that stands for VPW
// virtual warps (mma_quant.cuh) kb0 + q % VPW + kMmaWarps · (q / VPW). A lane takes units of 4 values
// (indices 4 (32 f + L) .. + 3 for lane L), or with NIBBLE_PAIRS of 8 (split_x8's pairing), and stores
// word i of part p (values 2i and 2i + 1, or the NIBBLE_PAIRS pair of that place) at words[p][i].
template <int U, int VB, bool NIBBLE_PAIRS = false, int VPW = 1>
struct OneRowX {
  static constexpr int kUnit = NIBBLE_PAIRS ? 8 : 4, kValues = U * VB, kUnits = kValues / (32 * kUnit);
  static_assert(kValues % (32 * kUnit) == 0 && VB % kUnit == 0, "whole units per lane");
  using Words = uint32_t[kMmaParts][kValues / 2];
  float4 v[kUnits][kUnit / 4];

  // Loads this lane's values of the warp's U blocks from x (16-byte aligned); zeros at x positions
  // k_end and beyond (a multiple of the unit: a unit lies wholly before or after it).
  __device__ __forceinline__ void load(const float* x, int64_t kb0, int64_t k_end, int lane) {
#pragma unroll
    for (int f = 0; f < kUnits; ++f) {
      const int i = kUnit * (32 * f + lane), q = i / VB;
      const int64_t k = (kb0 + q % VPW + kMmaWarps * (q / VPW)) * VB + i % VB;
#pragma unroll
      for (int h = 0; h < kUnit / 4; ++h)
        v[f][h] = k < k_end ? *reinterpret_cast<const float4*>(x + k + 4 * h) : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
  }
  // Splits them and stores their parts' words in the warp's `words`; the caller then __syncwarp()s
  // before reading, and again before the next store.
  __device__ __forceinline__ void stash(Words& words, int lane) const {
#pragma unroll
    for (int f = 0; f < kUnits; ++f) {
      const int w0 = kUnit / 2 * (32 * f + lane);
      if constexpr (NIBBLE_PAIRS) {
        uint4 part[kMmaParts];
        split_x8<true>(v[f][0], v[f][1], part);
#pragma unroll
        for (int p = 0; p < kMmaParts; ++p) *reinterpret_cast<uint4*>(&words[p][w0]) = part[p];
      } else {
        uint2 part[kMmaParts];
        split_x4(v[f][0], part);
#pragma unroll
        for (int p = 0; p < kMmaParts; ++p) *reinterpret_cast<uint2*>(&words[p][w0]) = part[p];
      }
    }
  }
};

// A 16-byte chunk of a weight row, read once (no L1 allocation) with L2 asked for the 256-byte
// segment around it: the CTA's other warps read the rest of it next.
__device__ __forceinline__ uint4 load_weight_chunk(const uint4* p) {
  uint4 v;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
#else
  v = __ldg(p);
#endif
  return v;
}

__device__ __forceinline__ void mma_bf16(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                         uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#endif
}

__device__ __forceinline__ uint32_t word_of(const uint4& v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

// bf16 weight rows (mma_rows_fit) as the tensor-core kernels read them: row r is K bf16 values at
// rows + r · K. One of the two weight sources of the kernels (the other: MmaQuantRows, mma_quant.cuh).
struct MmaBf16Rows {
  const uint16_t* rows;
  static constexpr int kMidTiles = 2;  // with_mma_tiles

  // 64-byte blocks of a row of K elements (32 bf16 values): the unit warps take turns over.
  __host__ __device__ static int64_t blocks(int64_t K) { return (K / 8 + 3) / 4; }

  // Adds this warp's partial sums over its K blocks to c[i][j], which the caller zeroes (the MMA
  // accumulator fragment: weight rows g and g + 8 of set j, x rows 2t and 2t + 1 of tile i). w[j]: set
  // j's weight; row[j][0] / row[j][1]: the weight rows lane g's g and g + 8 stand for; x[i]: x row g of
  // tile i as f32 (16-byte aligned), or null past the step's rows (reads as zeros). The CTA sums K
  // blocks [kb_begin, kb_end) (all of them, or its slice of a split: cu::MmaSplit); warp w takes blocks
  // kb_begin + w, + kMmaWarps, ..., the weight and x chunks of U blocks loaded before the first is used.
  // Which blocks a warp sums, in which order, depends on K and the slice alone. ONE_ROW (TILES 1): x[0]
  // is the step's only x row in every lane (OneRowX). (VPW: virtual warps per warp, which only the
  // quantized rows implement so far: mma_quant.cuh.) early: the kernel has not called begin_kernel()
  // yet, and the weights are constants no kernel writes (the caller knows: a loaded model's weights,
  // not rows gathered by the previous kernel); partial calls it once the warp's first weight chunks
  // are in flight, before it reads x, and in any case before it returns.
  template <int NT, int TILES, bool ONE_ROW = false, int VPW = 1>
  __device__ __forceinline__ static void partial(const MmaBf16Rows (&w)[NT], const int64_t (&row)[NT][2], int64_t K,
                                                 const float* const (&x)[TILES], int64_t kb_begin, int64_t kb_end,
                                                 int warp, int lane, float (&c)[VPW * TILES][NT][4],
                                                 bool early = false) {
    static_assert(!ONE_ROW || TILES == 1);
    static_assert(VPW == 1);
    constexpr int U = NT * TILES >= 8 ? 2 : 4;  // blocks whose chunks are loaded before the first is used
    using X1 = OneRowX<ONE_ROW ? U : 4, 32>;
    __shared__ __align__(16) typename X1::Words one_row_x[ONE_ROW ? kMmaWarps : 1];
    const int t = lane % 4;
    const int64_t n_chunks = K / 8, ch_end = kb_end * 4 < n_chunks ? kb_end * 4 : n_chunks;
    const uint4 zero = make_uint4(0, 0, 0, 0);
    const float4 zero4 = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    const uint4 *wa[NT], *wb[NT];
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      wa[j] = reinterpret_cast<const uint4*>(w[j].rows + row[j][0] * K);
      wb[j] = reinterpret_cast<const uint4*>(w[j].rows + row[j][1] * K);
    }
    for (int64_t kb0 = kb_begin + warp; kb0 < kb_end; kb0 += kMmaWarps * U) {
      uint4 a[U][NT], b[U][NT];
      float4 xl[U][TILES], xh[U][TILES];  // x values 8t .. 8t + 3 and 8t + 4 .. 8t + 7 of the block
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int64_t ch = (kb0 + kMmaWarps * u) * 4 + t;
        const bool in = ch < ch_end;
#pragma unroll
        for (int j = 0; j < NT; ++j) {
          a[u][j] = in ? load_weight_chunk(wa[j] + ch) : zero;
          b[u][j] = in ? load_weight_chunk(wb[j] + ch) : zero;
        }
      }
      if (early) begin_kernel(), early = false;  // x is the previous kernel's output
      X1 x1;
      if constexpr (ONE_ROW) x1.load(x[0], kb0, ch_end * 8, lane);
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int64_t ch = (kb0 + kMmaWarps * u) * 4 + t;
        const bool in = ch < ch_end;
#pragma unroll
        for (int i = 0; i < TILES && !ONE_ROW; ++i) {
          const float4* xr = reinterpret_cast<const float4*>(x[i]);
          xl[u][i] = in && xr ? xr[2 * ch] : zero4;
          xh[u][i] = in && xr ? xr[2 * ch + 1] : zero4;
        }
      }
      if constexpr (ONE_ROW) {
        x1.stash(one_row_x[warp], lane);
        __syncwarp();
      }
      // Blocks past the end multiply zeros: no branch, so the compiler keeps every load in flight.
#pragma unroll
      for (int u = 0; u < U; ++u) {
#pragma unroll
        for (int i = 0; i < TILES; ++i) {
          uint4 xv[kMmaParts];
          if constexpr (ONE_ROW) {  // values 32u + 8t .. + 7
#pragma unroll
            for (int p = 0; p < kMmaParts; ++p) xv[p] = *reinterpret_cast<const uint4*>(&one_row_x[warp][p][16 * u + 4 * t]);
          } else {
            split_x8(xl[u][i], xh[u][i], xv);
          }
#pragma unroll
          for (int s = 0; s < 2; ++s)
#pragma unroll
            for (int j = 0; j < NT; ++j)
#pragma unroll
              for (int p = 0; p < kMmaParts; ++p)
                mma_bf16(c[i][j], word_of(a[u][j], 2 * s), word_of(b[u][j], 2 * s), word_of(a[u][j], 2 * s + 1),
                         word_of(b[u][j], 2 * s + 1), word_of(xv[p], 2 * s), word_of(xv[p], 2 * s + 1));
        }
      }
      if constexpr (ONE_ROW) __syncwarp();  // every lane has read the parts before the next stash
    }
    if (early) begin_kernel();  // a warp without blocks
  }
};

// Shared memory for mma_finish: every (virtual) warp's fragments, per row tile of the CTA.
template <int NT, int TILES, int VPW = 1>
struct MmaReduceSmem {
  float v[VPW][kMmaWarps][TILES][NT][32][4];
};

// Output idx ∈ [0, TILES · 128) of a CTA: tile idx / 128, and in it the x row and the weight row
// (within the 16) of accumulator register idx % 4 of lane idx / 4 % 32.
struct MmaOut {
  int tile, x_row, w_row;
};
__device__ __forceinline__ MmaOut mma_out_of(int idx) {
  const int l = idx / 4 % 32, r = idx % 4;
  return {idx / 128, 2 * (l % 4) + (r & 1), l / 4 + (r >= 2 ? 8 : 0)};
}

// Adds the CTA's warps' partials c in warp order and, with a split, the slices' sums in slice order,
// and calls out(tile, x_row, w_row, sums[NT]) for each of the TILES · 8 x rows and 16 · VPW weight rows
// of the CTA's tile (sums[j] of row set j) — in the CTA that completes the tile. `tile` numbers the
// CTA's output tile among the launch's, `slice` is its K slice. Every thread of the CTA must call
// it; it synchronises the CTA before and after. VPW > 1 (partial's virtual warps): the CTA holds VPW
// row tiles of 16 weight rows, warp w the virtual warps v0 .. v0 + VPW − 1 of tile w / (kMmaWarps /
// VPW) in c[0 .. VPW − 1], and each tile's kMmaWarps virtual warps are added in order, as warps are.
template <int NT, int TILES, int VPW = 1, class Out>
__device__ __forceinline__ void mma_finish(const float (&c)[VPW * TILES][NT][4], MmaReduceSmem<NT, TILES, VPW>& sm,
                                           int warp, int lane, const MmaSplit& split, int64_t tile, int slice,
                                           Out&& out) {
  constexpr int kTileOut = TILES * 128, kOut = VPW * kTileOut;  // a CTA's outputs per row set
  // The warp's row tile and first virtual warp (VPW 1: tile 0, the warp itself).
  const int rt = VPW == 1 ? 0 : warp / (kMmaWarps / VPW), v0 = VPW == 1 ? warp : warp % (kMmaWarps / VPW) * VPW;
#pragma unroll
  for (int dv = 0; dv < VPW; ++dv)
#pragma unroll
    for (int i = 0; i < TILES; ++i)
#pragma unroll
      for (int j = 0; j < NT; ++j)
#pragma unroll
        for (int r = 0; r < 4; ++r) sm.v[rt][v0 + dv][i][j][lane][r] = c[dv * TILES + i][j][r];
  __syncthreads();
  float* const part = split.slices > 1 ? split.partials + tile * split.slices * kOut * NT : nullptr;
  // Output idx of the CTA: row tile idx / kTileOut, and idx % kTileOut within it (mma_out_of; with one
  // row tile, spelt so that the compiler sees the 0 and idx it is).
  auto tile_of = [](int idx) { return VPW == 1 ? 0 : idx / kTileOut; };
  auto in_tile = [](int idx) { return VPW == 1 ? idx : idx % kTileOut; };
  auto emit = [&](int idx, const float (&sums)[NT]) {
    const MmaOut o = mma_out_of(in_tile(idx));
    out(o.tile, o.x_row, tile_of(idx) * kMmaRows + o.w_row, sums);
  };
  for (int idx = threadIdx.x; idx < kOut; idx += kMmaWarps * 32) {
    const int t = tile_of(idx), i = in_tile(idx) / 128, l = idx / 4 % 32, r = idx % 4;
    float sums[NT];
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      float s = 0.0f;
#pragma unroll
      for (int v = 0; v < kMmaWarps; ++v) s += sm.v[t][v][i][j][l][r];
      sums[j] = s;
    }
    if (split.slices == 1) {
      emit(idx, sums);
    } else {
#pragma unroll
      for (int j = 0; j < NT; ++j) part[(int64_t{slice} * kOut + idx) * NT + j] = sums[j];
    }
  }
  if (split.slices == 1) {
    __syncthreads();
    return;
  }
  // Publish this slice's sums, then take a ticket; the last of the tile's slices adds them all.
  if (!last_cta_of(split.tickets + tile, static_cast<unsigned>(split.slices))) return;
  for (int idx = threadIdx.x; idx < kOut; idx += kMmaWarps * 32) {
    float sums[NT];
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      float s = 0.0f;
      for (int sl = 0; sl < split.slices; ++sl) s += __ldcg(part + (int64_t{sl} * kOut + idx) * NT + j);
      sums[j] = s;
    }
    emit(idx, sums);
  }
  __syncthreads();
}

}  // namespace cu
}  // namespace tandem
