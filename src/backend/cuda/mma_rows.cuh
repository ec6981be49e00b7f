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
// (split_x8; in a one-row step the warp splits them once and shares the parts: WarpSplitX, which
// quantized rows use for a few rows too), so the kernels read x as f32 rows and no op needs a separate
// splitting pass. Truncating instead of rounding makes the split exact: hi holds x's top 8 significant
// bits, mid the next 8 of what is left, lo the rest (at most 8 bits), so x = hi + mid + lo exactly for
// every finite x whose parts stay normal.
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
#include <type_traits>

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

// A step of one x row (decode) or a few (verify, small batches): its x parts split once per warp
// instead of once per lane.
//
// With several x rows, lane (g, t) loads and splits the values of x row g its MMA fragments take, so
// each 16-byte chunk of a block costs every lane a split, and in a step of T < 8 rows the lanes of
// rows T .. 7 split zeros. With one row, the eight lanes g of a quad position t would all split the
// same values, and at decode sizes that splitting was most of a quantized kernel's instructions (a
// 16-byte chunk of four-bit codes needs 32 x values split). So the warp's 32 lanes split the x values
// of the blocks it is about to use between them, ROWS rows of them (ROWS 1: every lane's x is the
// step's row; else lane g's x is row g's, null from row `rows` on), store the parts in the warp's
// shared memory, and each lane reads back the words of its fragments: with one row the same in every
// lane g (the MMA's other 7 columns repeat column 0, whose sums are what they would be with zero
// columns: an MMA computes each column on its own), with several row g's. The parts are the same bits
// whoever splits them, so a row's result is the same as in a batch.
//
// Values: U blocks of VB values each, block q's value o at index q · VB + o. Block q is x's block
// kb0 + kMmaWarps · q (x position (kb0 + kMmaWarps · q) · VB + o), or for a warp that stands for VPW
// virtual warps (mma_quant.cuh) kb0 + q % VPW + kMmaWarps · (q / VPW). The lanes take units of 4 values
// (row r's indices 4 o .. + 3 as unit r · kRowUnits + o, unit i in lane i % 32), or with NIBBLE_PAIRS of
// 8 (split_x8's pairing), and store word i of part p of row r (values 2i and 2i + 1, or the NIBBLE_PAIRS
// pair of that place) at words[r][p][i].
template <int U, int VB, bool NIBBLE_PAIRS = false, int VPW = 1, int ROWS = 1>
struct WarpSplitX {
  static constexpr int kUnit = NIBBLE_PAIRS ? 8 : 4, kValues = U * VB, kRowUnits = kValues / kUnit;
  static constexpr int kUnits = ROWS * kRowUnits / 32;  // per lane
  static_assert(ROWS * kRowUnits % 32 == 0, "whole units per lane");
  static_assert(VB % kUnit == 0, "whole units per block");
  using Words = uint32_t[ROWS][kMmaParts][kValues / 2];
  float4 v[kUnits][kUnit / 4];
  int rows;  // of the step (at most ROWS): the units of rows past it are neither loaded nor split

  // Loads this lane's values of the warp's U blocks from the rows' x (16-byte aligned); zeros at x
  // positions k_end and beyond (a multiple of the unit: a unit lies wholly before or after it).
  __device__ __forceinline__ void load(const float* x, int n_rows, int64_t kb0, int64_t k_end, int lane) {
    rows = n_rows;
#pragma unroll
    for (int f = 0; f < kUnits; ++f) {
      if (32 * f >= rows * kRowUnits) break;  // the same in every lane
      const int i = 32 * f + lane, r = ROWS == 1 ? 0 : i / kRowUnits, o = kUnit * (i % kRowUnits), q = o / VB;
      // Row r's x is lane 4r's (every lane's with one row).
      const float* xr = ROWS == 1 ? x
                                  : reinterpret_cast<const float*>(__shfl_sync(
                                        0xFFFFFFFFu, reinterpret_cast<unsigned long long>(x), 4 * (r < rows ? r : 0)));
      const int64_t k = (kb0 + q % VPW + kMmaWarps * (q / VPW)) * VB + o % VB;
#pragma unroll
      for (int h = 0; h < kUnit / 4; ++h)
        v[f][h] = r < rows && k < k_end ? *reinterpret_cast<const float4*>(xr + k + 4 * h)
                                        : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
  }
  // Splits them and stores their parts' words in the warp's `words`; the caller then __syncwarp()s
  // before reading, and again before the next store.
  __device__ __forceinline__ void stash(Words& words, int lane) const {
#pragma unroll
    for (int f = 0; f < kUnits; ++f) {
      if (32 * f >= rows * kRowUnits) break;
      const int i = 32 * f + lane, r = ROWS == 1 ? 0 : i / kRowUnits, w0 = kUnit / 2 * (i % kRowUnits);
      if constexpr (NIBBLE_PAIRS) {
        uint4 part[kMmaParts];
        split_x8<true>(v[f][0], v[f][1], part);
#pragma unroll
        for (int p = 0; p < kMmaParts; ++p) *reinterpret_cast<uint4*>(&words[r][p][w0]) = part[p];
      } else {
        uint2 part[kMmaParts];
        split_x4(v[f][0], part);
#pragma unroll
        for (int p = 0; p < kMmaParts; ++p) *reinterpret_cast<uint2*>(&words[r][p][w0]) = part[p];
      }
    }
  }
};

// How the kernels split the x values of a tile into their parts (partial's X): each lane its own row's
// (kLanes: any tile), the warp once for the step's only row, which every lane takes (kOneRow), or, for
// quantized rows (mma_quant.cuh), the warp once for a tile of at most kFewRows rows (kFewRows: lane g's
// row g, null from the step's last row on). The two warp splits share its work between the lanes
// (WarpSplitX); the bits are the same.
enum class XSplit { kLanes, kOneRow, kFewRows };

// The most rows of a kFewRows tile: 3 KB of shared memory a warp for 128 values of each.
constexpr int kFewRows = 4;

// The split for a one-tile step of `rows` x rows (at most 8); `few`: kFewRows may be taken.
inline XSplit x_split_of(int64_t rows, bool few) {
  return rows == 1 ? XSplit::kOneRow : few && rows <= kFewRows ? XSplit::kFewRows : XSplit::kLanes;
}

// The x rows of a kFewRows tile (lane g's x: row g, null from the step's last row on), in every lane.
__device__ __forceinline__ int tile_rows(const float* x) {
  return __popc(__ballot_sync(0xFFFFFFFFu, x != nullptr)) / 4;
}

// Words of shared memory a warp of a one-tile partial with split X stashes x parts in (WarpSplitX): with
// kOneRow the `iteration` x values a warp loads at once, with kFewRows `few` values of each of kFewRows
// rows. A kernel declares them (stash_words of its weight rows) and hands each warp its own.
__host__ __device__ constexpr int stash_words_of(XSplit x, int iteration, int few) {
  return x == XSplit::kOneRow ? kMmaParts * iteration / 2 : x == XSplit::kFewRows ? kFewRows * kMmaParts * few / 2 : 0;
}

// Calls f.template operator()<X>() with x_split_of(rows, FEW && few); without FEW, kFewRows is never
// instantiated.
template <bool FEW, class F>
void with_x_split(int64_t rows, bool few, F&& f) {
  switch (x_split_of(rows, FEW && few)) {
    case XSplit::kOneRow: return f.template operator()<XSplit::kOneRow>();
    case XSplit::kFewRows:
      if constexpr (FEW) return f.template operator()<XSplit::kFewRows>();
      break;
    case XSplit::kLanes: return f.template operator()<XSplit::kLanes>();
  }
}

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

  // Blocks whose chunks a warp loads before the first is used.
  __host__ __device__ static constexpr int load_blocks(int NT, int TILES) { return NT * TILES >= 8 ? 2 : 4; }

  // Words of a warp's x stash for partial<NT, 1, X> (stash_words_of; no kFewRows split for bf16 rows).
  template <int NT, XSplit X>
  __host__ __device__ static constexpr int stash_words() {
    return stash_words_of(X, 32 * load_blocks(NT, 1), 0);
  }

  // Adds this warp's partial sums over its K blocks to c[i][j], which the caller zeroes (the MMA
  // accumulator fragment: weight rows g and g + 8 of set j, x rows 2t and 2t + 1 of tile i). w[j]: set
  // j's weight; row[j][0] / row[j][1]: the weight rows lane g's g and g + 8 stand for; x[i]: x row g of
  // tile i as f32 (16-byte aligned), or null past the step's rows (reads as zeros). The CTA sums K
  // blocks [kb_begin, kb_end) (all of them, or its slice of a split: cu::MmaSplit); warp w takes blocks
  // kb_begin + w, + kMmaWarps, ..., the weight and x chunks of U blocks loaded before the first is used.
  // Which blocks a warp sums, in which order, depends on K and the slice alone. X (XSplit): kOneRow
  // (TILES 1): x[0] is the step's only x row in every lane; not kFewRows, whose kernels measured 1–2 %
  // slower than the per-lane split with bf16 rows (docs/PERF.md, thirty-seventh session). (VPW: virtual
  // warps per warp, which only the quantized rows implement so far: mma_quant.cuh.) stash: the warp's
  // stash_words<NT, X>() words of shared memory (16-byte aligned; unused with kLanes). early: the kernel
  // has not called begin_kernel() yet, and the weights are constants no kernel writes (the caller knows:
  // a loaded model's weights, not rows gathered by the previous kernel); partial calls it once the warp's
  // first weight chunks are in flight, before it reads x, and in any case before it returns.
  template <int NT, int TILES, XSplit X = XSplit::kLanes, int VPW = 1>
  __device__ __forceinline__ static void partial(const MmaBf16Rows (&w)[NT], const int64_t (&row)[NT][2], int64_t K,
                                                 const float* const (&x)[TILES], int64_t kb_begin, int64_t kb_end,
                                                 int warp, int lane, float (&c)[VPW * TILES][NT][4],
                                                 uint32_t* stash, bool early = false) {
    constexpr bool ONE_ROW = X == XSplit::kOneRow;
    static_assert(X == XSplit::kLanes || (ONE_ROW && TILES == 1));
    static_assert(VPW == 1);
    constexpr int U = load_blocks(NT, TILES);
    using X1 = WarpSplitX<ONE_ROW ? U : 4, 32>;
    static_assert(4 * stash_words<NT, X>() >= (ONE_ROW ? sizeof(typename X1::Words) : 0));
    auto& one_row_x = *reinterpret_cast<typename X1::Words*>(stash);
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
      if constexpr (ONE_ROW) x1.load(x[0], 1, kb0, ch_end * 8, lane);
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
        x1.stash(one_row_x, lane);
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
            for (int p = 0; p < kMmaParts; ++p)
              xv[p] = *reinterpret_cast<const uint4*>(&one_row_x[0][p][16 * u + 4 * t]);
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

// The CTAs an SM a one-tile kernel with NT row sets and split X is asked to fit (its __launch_bounds__
// minimum; 0: none, ptxas's own choice, as for every other kernel). A kFewRows kernel (quantized rows)
// holds its stash's registers besides; left alone, ptxas gave some of those of one row set up to 165
// registers on sm_90 (one CTA an SM, where the kLanes kernels get two), and at two CTAs their
// gate-and-up kernels spilled, so only the one-set kernels are asked for two.
template <int NT, XSplit X>
constexpr int kMmaMinCtas = X == XSplit::kFewRows && NT == 1 ? 2 : 0;

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
