// Private to the CUDA backend: quantized weight rows (QuantParams, backend/tensor.h) times f32
// activations on the tensor cores, the path matmul, matmul_gelu_glu and moe_experts take for the
// quantized weights mma_quant_fit accepts (the others keep weight_rows.cuh's QuantRows).
//
// It is mma_rows.cuh's scheme with codes instead of bf16 weights: the MMA's A operand is 16 weight
// rows, its B operand a tile of 8 x rows read as f32 and split exactly into three bf16 parts in
// registers (split_x8), mma.sync m16n8k16 with f32 accumulators, K split between the CTA's kMmaWarps
// warps (and a split's CTAs) and their partials added in warp order (mma_finish). What differs:
//
// Codes and scale groups. A row's codes are 16-byte chunks (32 four-bit or 16 eight-bit codes) in
// blocks of 4 chunks; warp w takes blocks w, w + kMmaWarps, ... (of its CTA's slice). An MMA sums over
// the 16 k of its step, which come from all four lanes t of a quad, and all of them must share one
// scale, so a step must lie in one chunk (and a chunk lies in one group: mma_quant_fit). Chunk j's MMA
// steps therefore take word t of chunk j in lane t, and the backend stores each block so that lane t's
// words (word t of each of the block's chunks) lie side by side: it rewrites a weight's codes once
// after loading (CudaBackend::prepare_quant, the slots of mma_quant_decode.h's quant_block_slot), and
// lane (g = lane / 4, t = lane % 4) reads its words of weight rows g and g + 8 with one 16-byte load
// each. Decoding in registers (mma_quant_decode.h) turns each code into value − zero exactly in bf16,
// so the MMA multiplies exact weights with exact x parts. Each lane loads the scale (and zero) of
// chunk t of the block, once per row, and the quad passes them round with __shfl_sync.
//
// Sums. Each chunk's steps accumulate one f32 sum per x part (hi, mid, lo) from zero, and then c +=
// scale · ((hi + mid) + lo) per weight row and x row (one f32 FMA per accumulator): the result is an
// f32 dot product of the dequantized weights, differing from the CPU's (which forms value · scale per
// element) by f32 rounding only. With several x rows, x row r is column r of a tile and each part
// takes its own MMA; with one (ONE_ROW: decode, the drafter), column g takes part g % 3 of that row, so
// one MMA per step forms all three part sums (columns 0 and 1 in lane t = 0, column 2 in lane t = 1,
// which passes it over): a third of the MMAs, and the same sums in the same order.
//
// k labels. Lane t's word t of chunk j holds the codes n = W · t + {0 .. W − 1} of the chunk (W codes
// per word: 8 four-bit, 4 eight-bit), i.e. k0 = j_chunk · C + W · t onwards, and decode_word makes
// pair i of codes c(i, 0), c(i, 1) (quant_pair_code: k0 + 2i + {0, 1}, or for four-bit integer codes
// k0 + i + {0, 4}). MMA step s (four-bit: s = 0, 1; eight-bit: s = 0) gives fragment k labels 2t, 2t +
// 1 to pair 2s's codes and labels 2t + 8, 2t + 9 to pair 2s + 1's, for rows g (a0, a2) and g + 8 (a1,
// a3) alike, and the B fragment of lane (g, t) reads x's parts at the same codes: b0 and b1 are
// words 2s and 2s + 1 of the x values at k0 split in the same pairing (split_x8, WarpSplitX). The labels
// of a step depend on t alone, never on g, as the MMA needs (A's row g and B's column g' meet at the
// same label in lanes (g, t) and (g', t)), and over the four lanes they cover distinct k.
//
// Batch invariance: as in mma_rows.cuh, an output's sums run over the same blocks, chunks, steps and
// parts in the same order whatever the other rows of its tile are (an MMA computes each column on its
// own, whichever column it is), and the path is chosen by the weight alone.
#pragma once
#include <algorithm>
#include <bit>
#include <type_traits>

#include "backend/cuda/mma_quant_decode.h"
#include "backend/cuda/mma_rows.cuh"

namespace tandem {
namespace cu {

// A quantized weight as the kernels read it (rows of K codes; its k_perm, if any, the caller has
// applied to x).
struct MmaQuantWeight {
  const uint8_t* codes;   // [rows, K · bits / 8]
  const void* scales;     // [rows, G] of scale_wt
  const uint8_t* zeros;   // [rows, G], or null: the code's default zero
  uint32_t G;             // groups per row (a scale's index, row · G + group, fits 32 bits: mma_quant_fit)
  int scale_wt;           // WType of the scales
  QuantDivisor chunks_per_group;  // group / (codes per 16-byte chunk), as a multiply and a shift
};

template <QuantCode CODE>
constexpr int kQuantChunkCodes = 128 / quant_code_bits(CODE);
template <QuantCode CODE>
constexpr uint32_t kQuantDefaultZero = static_cast<uint32_t>(quant_default_zero(CODE));

// Whether quantized weight w (rows of K elements) takes the tensor-core path: its rows are whole
// 16-byte chunks (K a multiple of 32 four-bit or 16 eight-bit codes, codes 16-byte aligned), every
// chunk lies in one scale group (the group a multiple of the chunk; a channel-wise group of K is), and
// float codes carry no zeros (and a row has under 2^30 chunks and the weight under 2^32 scales: the
// kernels index them in 32 bits). A choice by the weight alone, so a weight gives the same bits at any
// batch size.
inline bool mma_quant_fit(const TensorView& w, int64_t K) {
  if (!w.quant) return false;
  const QuantParams& q = *w.quant;
  const int64_t chunk = 128 / quant_code_bits(q.code);
  const bool float_code = q.code == QuantCode::kE2M1 || q.code == QuantCode::kF8E4M3;
  return K > 0 && K % chunk == 0 && K / chunk <= 0x3FFFFFFF && q.group > 0 && q.group % chunk == 0 &&
         q.group / chunk <= 0x7FFFFFFF && q.scales.numel() <= 0xFFFFFFFF &&
         !(float_code && q.zeros.data) && reinterpret_cast<uint64_t>(w.data) % 16 == 0;
}

// Whether gate and up can share one fused kernel: both fit, one code type, and no act-order
// permutation (the fused kernel reads one x).
inline bool mma_quant_glu_fit(const TensorView& gate, const TensorView& up, int64_t K) {
  return mma_quant_fit(gate, K) && mma_quant_fit(up, K) && gate.quant->code == up.quant->code &&
         !gate.quant->k_perm.data && !up.quant->k_perm.data;
}

inline MmaQuantWeight mma_quant_weight(const TensorView& w, int64_t K) {
  const QuantParams& q = *w.quant;
  return {static_cast<const uint8_t*>(w.data), q.scales.data, static_cast<const uint8_t*>(q.zeros.data),
          static_cast<uint32_t>(q.groups(K)), wtype_of(q.scales.dtype),
          quant_divisor(static_cast<uint32_t>(q.group / (128 / quant_code_bits(q.code))))};
}


// Calls f.template operator()<CODE>() for w's code type.
template <class F>
void with_quant_code(QuantCode code, F&& f) {
  switch (code) {
    case QuantCode::kU4: f.template operator()<QuantCode::kU4>(); break;
    case QuantCode::kU8: f.template operator()<QuantCode::kU8>(); break;
    case QuantCode::kE2M1: f.template operator()<QuantCode::kE2M1>(); break;
    case QuantCode::kF8E4M3: f.template operator()<QuantCode::kF8E4M3>(); break;
  }
}

// Lane t's words of the block of nc chunks that starts `word` words into a row of codes (quant_block_slot):
// word t of chunks 0 .. nc − 1, zeros for the others (a block past the end: nc = 0). A whole block is
// one 16-byte load. Offsets within a row are 32-bit (mma_quant_fit), so each address is one multiply-add.
__device__ __forceinline__ uint4 load_quant_block(const uint32_t* row, uint32_t word, int nc, int t) {
  if (nc == 4) return load_weight_chunk(reinterpret_cast<const uint4*>(row + (word + 4u * t)));
  uint4 v = make_uint4(0, 0, 0, 0);
  const uint32_t lane_word = word + static_cast<uint32_t>(nc * t);
  if (nc > 0) v.x = __ldg(row + lane_word);
  if (nc > 1) v.y = __ldg(row + (lane_word + 1u));
  if (nc > 2) v.z = __ldg(row + (lane_word + 2u));
  return v;
}

// Quantized weight rows (mma_quant_fit) as the tensor-core kernels read them: MmaBf16Rows'
// counterpart (mma_rows.cuh), for code type CODE. ZEROS false: integer codes without zero points (every
// code has the default zero: symmetric int4 checkpoints), so a block loads, shuffles and branches on no
// zeros; true: w.zeros is read where it is not null (with_mma_rows chooses).
template <QuantCode CODE, bool ZEROS = true>
struct MmaQuantRows {
  MmaQuantWeight w;
  static constexpr int kMidTiles = 4;  // with_mma_tiles: no 16-row tiles (compile time)

  // 64-byte blocks of a row of K codes (4 chunks of 16 bytes): the unit warps take turns over.
  __host__ __device__ static int64_t blocks(int64_t K) { return (K / kQuantChunkCodes<CODE> + 3) / 4; }

  // Blocks a warp loads before the first is used: 8 chunks of 16 bytes per lane at decode (TILES = 1),
  // 2 or 4 for prefill tiles, which reuse each weight for 32 x rows and need the registers. The most
  // virtual warps a one-row warp may stand for (partial's VPW).
  __host__ __device__ static constexpr int load_depth(int NT, int TILES) { return TILES >= 4 ? 1 : NT >= 2 ? 2 : 4; }

  // Words of a warp's x stash for partial<NT, 1, X> (stash_words_of: kFewRows stashes a block at a time).
  template <int NT, XSplit X>
  __host__ __device__ static constexpr int stash_words() {
    return stash_words_of(X, load_depth(NT, 1) * 4 * kQuantChunkCodes<CODE>, 4 * kQuantChunkCodes<CODE>);
  }

  // Adds this warp's partial sums over its K blocks to c[i][j], which the caller zeroes (the MMA
  // accumulator fragment: weight rows g and g + 8 of set j, x rows 2t and 2t + 1 of tile i). sets[j]:
  // set j's weight; row[j][0] / row[j][1]: the weight rows this lane's g and g + 8 stand for; x[i]: x
  // row g of tile i as f32 (16-byte aligned), or null past the step's rows (reads as zeros). The CTA
  // sums K blocks [kb_begin, kb_end) (all, or its slice of a split), warp w blocks kb_begin + w, +
  // kMmaWarps, ...: which blocks a warp sums, in which order, depends on K and the slice alone.
  // X (XSplit, mma_rows.cuh): kOneRow (TILES 1): x[0] is the step's only x row in every lane; kFewRows
  // (TILES 1): the tile has at most kFewRows rows, and the warp splits each block's x values of all of
  // them at once.
  //
  // stash: the warp's stash_words<NT, X>() words of shared memory (16-byte aligned; unused with kLanes).
  //
  // early: the kernel has not called begin_kernel() yet; partial calls it once the warp's first blocks
  // of weights, scales and zeros are in flight, before it reads x, and in any case before it returns.
  // A quantized weight is a model constant that no step's kernel writes (prepare_quant waits for its
  // rewrite), so its first loads may overlap the previous kernel's tail.
  //
  // VPW > 1 (TILES 1 only): the warp stands for VPW of its row tile's kMmaWarps virtual warps, v0 =
  // (warp % (kMmaWarps / VPW)) · VPW onwards, and keeps each one's sums apart in c[v − v0]: virtual
  // warp v takes the blocks warp v would, in the same order, so after mma_finish adds the virtual
  // warps in order an output has the same bits as with VPW 1. It loads as many blocks at once as a
  // VPW 1 warp (U0 below), VPW neighbouring blocks at a time, so a CTA covers VPW row tiles and a
  // step with few weight rows per SM needs VPW times fewer CTAs for the same blocks in flight.
  template <int NT, int TILES, XSplit X = XSplit::kLanes, int VPW = 1>
  __device__ __forceinline__ static void partial(const MmaQuantRows (&sets)[NT], const int64_t (&row)[NT][2],
                                                 int64_t K, const float* const (&x)[TILES], int64_t kb_begin, int64_t kb_end,
                                                 int warp, int lane, float (&c)[VPW * TILES][NT][4],
                                                 uint32_t* stash, bool early = false) {
    constexpr int C = kQuantChunkCodes<CODE>;
    constexpr int WC = kQuantWordCodes<CODE>;          // codes per word: a lane's share of a chunk
    constexpr int STEPS = WC / 4;                      // MMA steps per chunk (4 codes of a row per lane each)
    constexpr bool kInt = CODE == QuantCode::kU4 || CODE == QuantCode::kU8;
    constexpr bool kZeros = kInt && ZEROS;  // zero points may be read (w.zeros, where not null)
    constexpr uint32_t kDefaultZero = kQuantDefaultZero<CODE>;
    // U0 blocks loaded before the first is used (load_depth); with VPW virtual warps U0 / VPW blocks of
    // each: block u of an iteration is virtual warp v0 + u % VPW's (u / VPW)-th of the iteration.
    constexpr int U0 = load_depth(NT, TILES), U = U0 / VPW;
    constexpr bool ONE_ROW = X == XSplit::kOneRow, kFew = X == XSplit::kFewRows;
    static_assert(X == XSplit::kLanes || TILES == 1);
    static_assert(VPW == 1 || (TILES == 1 && U0 % VPW == 0 && kMmaWarps % VPW == 0));
    constexpr bool kNibblePairs = CODE == QuantCode::kU4;  // decode_word's pair order (quant_pair_code)
    using X1 = WarpSplitX<ONE_ROW ? U0 : 4, 4 * C, kNibblePairs, VPW>;  // a block is 4 chunks of C codes
    // A few rows: one block's values of each at a time (every block of an iteration would take four
    // times the shared memory), split and stashed before its chunks are summed.
    using XF = WarpSplitX<1, 4 * C, kNibblePairs, 1, kFewRows>;
    static_assert(4 * stash_words<NT, X>() >=
                  (ONE_ROW ? sizeof(typename X1::Words) : kFew ? sizeof(typename XF::Words) : 0));
    auto& one_row_x = *reinterpret_cast<typename X1::Words*>(stash);
    auto& few_x = *reinterpret_cast<typename XF::Words*>(stash);
    const int few_rows = kFew ? tile_rows(x[0]) : 0;
    const int t = lane % 4, g = lane / 4, quad = lane & ~3;
    // Chunk and block numbers within a row fit an int (mma_quant_fit): 32-bit index arithmetic.
    const int n_chunks = static_cast<int>(K / C);
    const int kb_first = static_cast<int>(kb_begin), kb_last = static_cast<int>(kb_end);
    const int ch_end = kb_last * 4 < n_chunks ? kb_last * 4 : n_chunks;
    MmaQuantWeight w[NT];
#pragma unroll
    for (int j = 0; j < NT; ++j) w[j] = sets[j].w;
    // Each row's codes (kept as pointers: kept_pointer) and the index of its first scale (and zero
    // point), computed once: a block's addresses are then 32-bit offsets from them (mma_quant_fit), one
    // multiply-add each, where 64-bit row and group arithmetic in every block took about a fifth of a
    // decode iteration's instructions (docs/PERF.md, forty-fourth session).
    const uint32_t* ca[NT];
    const uint32_t* cb[NT];
    uint32_t ga[NT], gb[NT];
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      ca[j] = kept_pointer(reinterpret_cast<const uint32_t*>(w[j].codes) + row[j][0] * n_chunks * 4);  // 4 words a chunk
      cb[j] = kept_pointer(reinterpret_cast<const uint32_t*>(w[j].codes) + row[j][1] * n_chunks * 4);
      ga[j] = static_cast<uint32_t>(row[j][0]) * w[j].G;
      gb[j] = static_cast<uint32_t>(row[j][1]) * w[j].G;
    }
    const int v0 = VPW == 1 ? warp : warp % (kMmaWarps / VPW) * VPW;  // (VPW 1: the warp itself)
    for (int kb0 = kb_first + v0; kb0 < kb_last; kb0 += kMmaWarps * U) {
      uint4 ra[U0][NT], rb[U0][NT];
      float sa[U0][NT], sb[U0][NT];
      uint32_t za[U0][NT], zb[U0][NT];
      int nc[U0];  // chunks of block u (0 past the slice)
#pragma unroll
      for (int u = 0; u < U0; ++u) {
        const int kb = kb0 + u % VPW + kMmaWarps * (u / VPW);
        const int ch = kb * 4 + t;  // the chunk whose scales (and zeros) this lane loads
        const bool in = ch < ch_end;
        nc[u] = kb < kb_last ? (n_chunks - 4 * kb < 4 ? n_chunks - 4 * kb : 4) : 0;
#pragma unroll
        for (int j = 0; j < NT; ++j) {
          const uint32_t gj = quant_divide(static_cast<uint32_t>(ch), w[j].chunks_per_group);
          const uint32_t word = 16u * static_cast<uint32_t>(kb);  // words before block kb in a row
          ra[u][j] = load_quant_block(ca[j], word, nc[u], t);
          rb[u][j] = load_quant_block(cb[j], word, nc[u], t);
          load_scale_pair(w[j].scales, w[j].scale_wt, ga[j] + gj, gb[j] + gj, in, sa[u][j], sb[u][j]);
          if constexpr (kZeros) {
            za[u][j] = w[j].zeros && in ? __ldg(w[j].zeros + (ga[j] + gj)) : kDefaultZero;
            zb[u][j] = w[j].zeros && in ? __ldg(w[j].zeros + (gb[j] + gj)) : kDefaultZero;
          }
        }
      }
      if (early) begin_kernel(), early = false;  // x is the previous kernel's output
      X1 x1;
      if constexpr (ONE_ROW) {
        x1.load(x[0], 1, kb0, int64_t{ch_end} * C, lane);
        x1.stash(one_row_x, lane);
        __syncwarp();
      }
#pragma unroll
      for (int u = 0; u < U0; ++u) {
        if (nc[u] == 0) break;  // past the slice (so are the blocks after it): the same for the whole warp
        const int kb = kb0 + u % VPW + kMmaWarps * (u / VPW);
        if constexpr (kFew) {
          XF xf;
          xf.load(x[0], few_rows, kb, int64_t{ch_end} * C, lane);
          __syncwarp();  // every lane has read the previous block's parts
          xf.stash(few_x, lane);
          __syncwarp();
        }
#pragma unroll
        for (int jc = 0; jc < 4; ++jc) {
          if (jc >= nc[u]) break;  // past the row's last chunk
          const int ch = kb * 4 + jc;
          // Chunk ch's scales and zeros come from lane jc of the quad, which loaded them.
          float s_a[NT], s_b[NT];
          uint32_t da[NT][2 * STEPS], db[NT][2 * STEPS];
#pragma unroll
          for (int j = 0; j < NT; ++j) {
            s_a[j] = __shfl_sync(0xFFFFFFFFu, sa[u][j], quad | jc);
            s_b[j] = __shfl_sync(0xFFFFFFFFu, sb[u][j], quad | jc);
            uint32_t ka = 0, kbz = 0;
            if constexpr (kInt) {
              const uint32_t kDefaultKey = quant_zero_key<CODE>(kDefaultZero);  // folded at compile time
              ka = kbz = kDefaultKey;  // every chunk has the default zero, unless the weight has zeros
              if constexpr (kZeros) {
                if (w[j].zeros) {
                  ka = quant_zero_key<CODE>(__shfl_sync(0xFFFFFFFFu, za[u][j], quad | jc));
                  kbz = quant_zero_key<CODE>(__shfl_sync(0xFFFFFFFFu, zb[u][j], quad | jc));
                }
              }
            }
            decode_word<CODE>(word_of(ra[u][j], jc), ka, da[j]);  // word t of chunk ch (the block layout)
            decode_word<CODE>(word_of(rb[u][j], jc), kbz, db[j]);
          }
          const int64_t k0 = int64_t{ch} * C + WC * t;
          if constexpr (ONE_ROW) {
            // Column g of the MMA takes part g % 3 of the row's x values jc · C + WC · t .. + 4 · STEPS
            // − 1 of block u, so one MMA per step forms all three parts' sums: lane t = 0 gets columns 0
            // (hi) and 1 (mid), lane t = 1 column 2 (lo), and the other columns are never read.
            uint32_t xw[2 * STEPS];
            const uint32_t* xp = &one_row_x[0][g % kMmaParts][(u * 4 * C + jc * C + WC * t) / 2];
            if constexpr (STEPS == 2) {
              const uint4 v = *reinterpret_cast<const uint4*>(xp);
              xw[0] = v.x, xw[1] = v.y, xw[2] = v.z, xw[3] = v.w;
            } else {
              const uint2 v = *reinterpret_cast<const uint2*>(xp);
              xw[0] = v.x, xw[1] = v.y;
            }
#pragma unroll
            for (int j = 0; j < NT; ++j) {
              float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
              for (int s = 0; s < STEPS; ++s)
                mma_bf16(acc, da[j][2 * s], db[j][2 * s], da[j][2 * s + 1], db[j][2 * s + 1], xw[2 * s],
                         xw[2 * s + 1]);
              const float lo_a = __shfl_down_sync(0xFFFFFFFFu, acc[0], 1);
              const float lo_b = __shfl_down_sync(0xFFFFFFFFu, acc[2], 1);
              float (&cv)[NT][4] = c[u % VPW];  // block u's virtual warp (VPW 1: the warp's own sums)
              cv[j][0] = fmaf(s_a[j], (acc[0] + acc[1]) + lo_a, cv[j][0]);  // row g, x row 0 (lane t = 0)
              cv[j][2] = fmaf(s_b[j], (acc[2] + acc[3]) + lo_b, cv[j][2]);  // row g + 8
            }
          } else {
#pragma unroll
            for (int i = 0; i < TILES; ++i) {
              // x row g at codes k0 .. k0 + 4 · STEPS − 1, split into its three bf16 parts (zeros past
              // the step's rows): from the warp's stash, or by this lane
              uint4 part[kMmaParts];
              if constexpr (kFew) {
                const int w0 = (jc * C + WC * t) / 2;
#pragma unroll
                for (int p = 0; p < kMmaParts; ++p) {
                  part[p] = make_uint4(0, 0, 0, 0);
                  if (g >= few_rows) continue;
                  if constexpr (STEPS == 2) {
                    part[p] = *reinterpret_cast<const uint4*>(&few_x[g][p][w0]);
                  } else {
                    const uint2 v = *reinterpret_cast<const uint2*>(&few_x[g][p][w0]);
                    part[p].x = v.x, part[p].y = v.y;
                  }
                }
              } else {
                const float4* xr = reinterpret_cast<const float4*>(x[i] + k0);
                const float4 zero_f4 = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
                split_x8<kNibblePairs>(x[i] ? xr[0] : zero_f4, STEPS == 2 && x[i] ? xr[1] : zero_f4, part);
              }
#pragma unroll
              for (int j = 0; j < NT; ++j) {
                float acc[kMmaParts][4] = {};
#pragma unroll
                for (int s = 0; s < STEPS; ++s)
#pragma unroll
                  for (int p = 0; p < kMmaParts; ++p)
                    mma_bf16(acc[p], da[j][2 * s], db[j][2 * s], da[j][2 * s + 1], db[j][2 * s + 1],
                             word_of(part[p], 2 * s), word_of(part[p], 2 * s + 1));
                const float sr[4] = {s_a[j], s_a[j], s_b[j], s_b[j]};  // rows g (x rows 2t, 2t + 1), g + 8
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                  float& ce = c[u % VPW * TILES + i][j][e];  // block u's virtual warp (VPW 1: c[i])
                  ce = fmaf(sr[e], (acc[0][e] + acc[1][e]) + acc[2][e], ce);
                }
              }
            }
          }
        }
      }
      if constexpr (ONE_ROW) __syncwarp();  // every lane has read the parts before the next stash
    }
    if (early) begin_kernel();  // a warp without blocks
  }
};

// The virtual warps per warp (partial's VPW) a launch of one x tile (at most 8 rows) over weight rows
// W with NT row sets may use besides 1: the quantized rows' load depth; bf16 rows take 1 only.
template <class W, int NT>
constexpr int kMmaWideVpw = 1;
template <QuantCode CODE, bool ZEROS, int NT>
constexpr int kMmaWideVpw<MmaQuantRows<CODE, ZEROS>, NT> = MmaQuantRows<CODE, ZEROS>::load_depth(NT, 1);

// CTAs of KERNEL (kMmaWarps warps, no dynamic shared memory) that one SM holds at once; asked once.
template <auto KERNEL>
int mma_ctas_per_sm() {
  static const int n = [] {
    int ctas = 0;
    TANDEM_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&ctas, KERNEL, kMmaWarps * 32, 0));
    return std::max(ctas, 1);
  }();
  return n;
}

// The rounds of loads the warps of a launch of one x tile (decode, verify) wait for with `vpw` virtual
// warps per warp (a CTA per `vpw` row tiles): their loop's iterations (a virtual warp has ⌈blocks /
// kMmaWarps⌉ of a slice's `blocks` K blocks, and a warp loads `depth` blocks at once, depth / vpw of each
// virtual warp: kMmaWideVpw is the load depth) times the waves of CTAs (`col_tiles` row tiles per slice,
// `other` slices and experts; `per_sm` CTAs an SM holds, of `sms`). At decode sizes a layer's weight is a
// few waves of short CTAs, each a DRAM latency long; wider CTAs keep as many blocks in flight a warp and
// cover the same weight in fewer waves, at more decode work a warp. The bits are the same at any vpw.
inline int64_t mma_width_rounds(int64_t col_tiles, int64_t other, int64_t blocks, int depth, int vpw, int per_sm,
                                int sms) {
  const int64_t ctas = (col_tiles + vpw - 1) / vpw * other, resident = int64_t{per_sm} * sms;
  const int64_t per_warp = (blocks + kMmaWarps - 1) / kMmaWarps, per_iteration = depth / vpw;
  return (ctas + resident - 1) / resident * ((per_warp + per_iteration - 1) / per_iteration);
}

// Calls f.template operator()<VPW, KERNEL>() for a launch of one x tile over weight rows W with NT row
// sets, with the instantiation of one kernel template whose width waits for the fewest rounds
// (mma_width_rounds): NARROW (VPW 1), WIDE (VPW = kMmaWideVpw, where `wide`: CudaBackend::wide_ctas) or
// HALF (VPW 2, between the two, where `half` too and the caller passes it: CudaBackend::half_wide_ctas).
// Ties go to WIDE, then NARROW (HALF is taken only where it waits for fewer rounds than both).
template <class W, int NT, auto NARROW, auto WIDE, auto HALF = nullptr, class F>
void with_mma_width(bool wide, bool half, int64_t col_tiles, int64_t other, int64_t blocks, int sms, F&& f) {
  constexpr int kWide = kMmaWideVpw<W, NT>;
  constexpr bool kHasHalf = !std::is_same_v<decltype(HALF), std::nullptr_t> && kWide > 2;
  auto rounds = [&](int vpw, int per_sm) { return mma_width_rounds(col_tiles, other, blocks, kWide, vpw, per_sm, sms); };
  const int64_t r_narrow = rounds(1, mma_ctas_per_sm<NARROW>());
  const int64_t r_wide = wide && kWide > 1 ? rounds(kWide, mma_ctas_per_sm<WIDE>()) : r_narrow;
  if constexpr (kHasHalf) {
    if (wide && half && rounds(2, mma_ctas_per_sm<HALF>()) < std::min(r_narrow, r_wide))
      return f.template operator()<2, HALF>();
  }
  if (r_wide < r_narrow) f.template operator()<kWide, WIDE>();
  else f.template operator()<1, NARROW>();
}

// Weight w (mma_rows_fit or mma_quant_fit) as the tensor-core kernels' weight rows W.
template <class W>
W mma_rows_of(const TensorView& w, int64_t K) {
  if constexpr (std::is_same_v<W, MmaBf16Rows>) return {w.as<uint16_t>()};
  else return {mma_quant_weight(w, K)};
}

// Calls f(rows) with w (mma_rows_fit or mma_quant_fit) as the tensor-core kernels' weight rows: MmaBf16Rows or
// MmaQuantRows of its code; int4 codes without zero points, in w and in `other` (a second weight the kernel reads as
// the same type: a pair's second weight, GeGLU's up), as MmaQuantRows<kU4, false>: without the zero loads, shuffles and
// branches the int4 gate_up and down kernels hold fewer registers (ptxas: the bounded one-token gate_up spills 8 bytes,
// not 64) and the 26B-A4B W4A16 decode step is 1.2 % faster on an H100, T = 3 2.3 % (docs/PERF.md, forty-sixth
// session). Only int4, the symmetric checkpoints' code: each further code type would add a set of kernels to compile.
template <class F>
void with_mma_rows(const TensorView& w, const TensorView* other, int64_t K, F&& f) {
  if (!w.quant) return f(mma_rows_of<MmaBf16Rows>(w, K));
  const bool zeros = w.quant->zeros.data || (other && other->quant && other->quant->zeros.data);
  if (w.quant->code == QuantCode::kU4 && !zeros)
    return f(mma_rows_of<MmaQuantRows<QuantCode::kU4, false>>(w, K));
  with_quant_code(w.quant->code, [&]<QuantCode CODE>() { f(mma_rows_of<MmaQuantRows<CODE>>(w, K)); });
}

}  // namespace cu
}  // namespace tandem
