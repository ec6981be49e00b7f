// Private to the CUDA backend: quantized weight rows (QuantParams, backend/tensor.h) times f32
// activations on the tensor cores, the path matmul, matmul_gelu_glu and moe_experts take for the
// quantized weights mma_quant_fit accepts (the others keep weight_rows.cuh's QuantRows).
//
// It is mma_rows.cuh's scheme with codes instead of bf16 weights: the MMA's A operand is 16 weight
// rows, its B operand a tile of 8 x rows read as f32 and split exactly into three bf16 parts in
// registers (split_x8), mma.sync m16n8k16 with f32 accumulators, K split between the CTA's kMmaWarps
// warps (and a split's CTAs) and their partials added in warp order (mma_finish). What differs:
//
// Codes. A row's codes are read in 16-byte chunks (32 four-bit or 16 eight-bit codes). Warp w takes
// blocks of 4 chunks, w, w + kMmaWarps, ... (of its CTA's slice), and in a block lane (g = lane / 4, t = lane % 4) loads
// chunk t of weight rows g and g + 8. Decoding in registers (mma_quant_decode.h) turns each code into
// value − zero exactly in bf16, so the MMA multiplies exact weights with exact x parts.
//
// Scale groups. An MMA sums over the 16 k of its step, which come from all four lanes t of a quad, and
// all of them must share one scale. So the quad first transposes its words (quad_pick / quad_put, two
// __shfl_xor_sync stages): lane t then holds word t of each of the block's chunks, and chunk j's MMA
// steps take word t of chunk j in lane t: every step lies in one chunk, and a chunk in one group
// (mma_quant_fit: the group is a multiple of the chunk). Each chunk's steps accumulate into fresh f32
// accumulators p, and then c += scale · p per weight row (one f32 FMA per accumulator): the result is
// an f32 dot product of the dequantized weights, differing from the CPU's (which forms value · scale
// per element) by f32 rounding only. Each lane loads the scale (and zero) of its own chunk, once per
// row and block, and the quad passes them round with __shfl_sync.
//
// k labels. Lane t's word t of chunk j holds the codes n = W · t + {0 .. W − 1} of the chunk (W codes
// per word: 8 four-bit, 4 eight-bit), i.e. k0 = j_chunk · C + W · t onwards, and decode_word makes
// pair i of codes c(i, 0), c(i, 1) (quant_pair_code: k0 + 2i + {0, 1}, or for four-bit integer codes
// k0 + i + {0, 4}). MMA step s (four-bit: s = 0, 1; eight-bit: s = 0) gives fragment k labels 2t, 2t +
// 1 to pair 2s's codes and labels 2t + 8, 2t + 9 to pair 2s + 1's, for rows g (a0, a2) and g + 8 (a1,
// a3) alike, and the B fragment of lane (g, t) reads x row g's parts at the same codes: b0 and b1 are
// words 2s and 2s + 1 of the x values at k0 split in the same pairing (split_x8, OneRowX). The labels
// of a step depend on t alone, never on g, as the MMA needs (A's row g and B's column g' meet at the
// same label in lanes (g, t) and (g', t)), and over the four lanes they cover distinct k.
//
// Batch invariance: as in mma_rows.cuh, an output's sums run over the same blocks, chunks, steps and
// parts in the same order whatever the other rows of its tile are, and the path is chosen by the
// weight alone.
#pragma once
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
  int64_t G;              // groups per row
  int scale_wt;           // WType of the scales
  int chunks_per_group;   // group / (codes per 16-byte chunk)
  int group_shift;        // log2(chunks_per_group) where that is a power of two (a shift, not a division), else -1
};

template <QuantCode CODE>
constexpr int kQuantChunkCodes = 128 / quant_code_bits(CODE);
template <QuantCode CODE>
constexpr uint32_t kQuantDefaultZero = static_cast<uint32_t>(quant_default_zero(CODE));

// Whether quantized weight w (rows of K elements) takes the tensor-core path: its rows are whole
// 16-byte chunks (K a multiple of 32 four-bit or 16 eight-bit codes, codes 16-byte aligned), every
// chunk lies in one scale group (the group a multiple of the chunk; a channel-wise group of K is), and
// float codes carry no zeros. A choice by the weight alone, so a weight gives the same bits at any
// batch size.
inline bool mma_quant_fit(const TensorView& w, int64_t K) {
  if (!w.quant) return false;
  const QuantParams& q = *w.quant;
  const int64_t chunk = 128 / quant_code_bits(q.code);
  const bool float_code = q.code == QuantCode::kE2M1 || q.code == QuantCode::kF8E4M3;
  return K > 0 && K % chunk == 0 && K / chunk <= 0x7FFFFFFF && q.group > 0 && q.group % chunk == 0 &&
         q.group / chunk <= 0x7FFFFFFF &&
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
  const int chunks = static_cast<int>(q.group / (128 / quant_code_bits(q.code)));
  const int shift = (chunks & (chunks - 1)) == 0 ? std::countr_zero(static_cast<unsigned>(chunks)) : -1;
  return {static_cast<const uint8_t*>(w.data), q.scales.data, static_cast<const uint8_t*>(q.zeros.data), q.groups(K),
          wtype_of(q.scales.dtype), chunks, shift};
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

// Quantized weight rows (mma_quant_fit) as the tensor-core kernels read them: MmaBf16Rows'
// counterpart (mma_rows.cuh), for code type CODE.
template <QuantCode CODE>
struct MmaQuantRows {
  MmaQuantWeight w;
  static constexpr int kMidTiles = 4;  // with_mma_tiles: no 16-row tiles (compile time)

  // 64-byte blocks of a row of K codes (4 chunks of 16 bytes): the unit warps take turns over.
  __host__ __device__ static int64_t blocks(int64_t K) { return (K / kQuantChunkCodes<CODE> + 3) / 4; }

  // Adds this warp's partial sums over its K blocks to c[i][j], which the caller zeroes (the MMA
  // accumulator fragment: weight rows g and g + 8 of set j, x rows 2t and 2t + 1 of tile i). sets[j]:
  // set j's weight; row[j][0] / row[j][1]: the weight rows this lane's g and g + 8 stand for; x[i]: x
  // row g of tile i as f32 (16-byte aligned), or null past the step's rows (reads as zeros). The CTA
  // sums K blocks [kb_begin, kb_end) (all, or its slice of a split), warp w blocks kb_begin + w, +
  // kMmaWarps, ...: which blocks a warp sums, in which order, depends on K and the slice alone.
  // ONE_ROW (TILES 1): x[0] is the step's only x row in every lane (OneRowX, mma_rows.cuh).
  template <int NT, int TILES, bool ONE_ROW = false>
  __device__ __forceinline__ static void partial(const MmaQuantRows (&sets)[NT], const int64_t (&row)[NT][2],
                                                 int64_t K, const float* const (&x)[TILES], int64_t kb_begin, int64_t kb_end,
                                                 int warp, int lane, float (&c)[TILES][NT][4]) {
    constexpr int C = kQuantChunkCodes<CODE>;
    constexpr int WC = kQuantWordCodes<CODE>;          // codes per word: a lane's share of a chunk
    constexpr int STEPS = WC / 4;                      // MMA steps per chunk (4 codes of a row per lane each)
    constexpr bool kInt = CODE == QuantCode::kU4 || CODE == QuantCode::kU8;
    constexpr uint32_t kDefaultZero = kQuantDefaultZero<CODE>;
    // Blocks whose chunks are loaded before the first is used: 8 chunks of 16 bytes per lane at decode
    // (TILES = 1), 2 or 4 for prefill tiles, which reuse each weight for 32 x rows and need the registers.
    constexpr int U = TILES >= 4 ? 1 : NT >= 2 ? 2 : 4;
    static_assert(!ONE_ROW || TILES == 1);
    constexpr bool kNibblePairs = CODE == QuantCode::kU4;  // decode_word's pair order (quant_pair_code)
    using X1 = OneRowX<ONE_ROW ? U : 4, 4 * C, kNibblePairs>;  // a block is 4 chunks of C codes
    __shared__ __align__(16) typename X1::Words one_row_x[ONE_ROW ? kMmaWarps : 1];
    const int t = lane % 4, quad = lane & ~3;
    const int64_t n_chunks = K / C, ch_end = kb_end * 4 < n_chunks ? kb_end * 4 : n_chunks;
    MmaQuantWeight w[NT];
#pragma unroll
    for (int j = 0; j < NT; ++j) w[j] = sets[j].w;
    const uint4 zero4 = make_uint4(0, 0, 0, 0);
    const uint4* ca[NT];
    const uint4* cb[NT];
#pragma unroll
    for (int j = 0; j < NT; ++j) {
      ca[j] = reinterpret_cast<const uint4*>(w[j].codes) + row[j][0] * n_chunks;  // 16-byte chunks per row
      cb[j] = reinterpret_cast<const uint4*>(w[j].codes) + row[j][1] * n_chunks;
    }
    for (int64_t kb0 = kb_begin + warp; kb0 < kb_end; kb0 += kMmaWarps * U) {
      uint4 ra[U][NT], rb[U][NT];
      float sa[U][NT], sb[U][NT];
      uint32_t za[U][NT], zb[U][NT];
      X1 x1;
      if constexpr (ONE_ROW) x1.load(x[0], kb0, ch_end * C, lane);
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int64_t ch = (kb0 + kMmaWarps * u) * 4 + t;
        const bool in = ch < ch_end;
#pragma unroll
        for (int j = 0; j < NT; ++j) {
          const uint32_t ch32 = static_cast<uint32_t>(ch);
          const int64_t gj = !in                    ? 0
                             : w[j].group_shift >= 0 ? ch32 >> w[j].group_shift
                                                     : ch32 / static_cast<uint32_t>(w[j].chunks_per_group);
          ra[u][j] = in ? load_weight_chunk(ca[j] + ch) : zero4;
          rb[u][j] = in ? load_weight_chunk(cb[j] + ch) : zero4;
          sa[u][j] = in ? load_any(w[j].scales, w[j].scale_wt, row[j][0] * w[j].G + gj) : 0.0f;
          sb[u][j] = in ? load_any(w[j].scales, w[j].scale_wt, row[j][1] * w[j].G + gj) : 0.0f;
          if constexpr (kInt) {
            za[u][j] = w[j].zeros && in ? __ldg(w[j].zeros + row[j][0] * w[j].G + gj) : kDefaultZero;
            zb[u][j] = w[j].zeros && in ? __ldg(w[j].zeros + row[j][1] * w[j].G + gj) : kDefaultZero;
          }
        }
      }
      if constexpr (ONE_ROW) {
        x1.stash(one_row_x[warp], lane);
        __syncwarp();
      }
#pragma unroll
      for (int u = 0; u < U; ++u) {
        const int64_t kb = kb0 + kMmaWarps * u;
        if (kb >= kb_end) break;  // the same for the whole warp
        // The quad transpose: lane t's words become word t of chunks 4kb .. 4kb + 3.
        uint32_t va[NT][4], vb[NT][4];
#pragma unroll
        for (int j = 0; j < NT; ++j) {
          va[j][0] = ra[u][j].x, va[j][1] = ra[u][j].y, va[j][2] = ra[u][j].z, va[j][3] = ra[u][j].w;
          vb[j][0] = rb[u][j].x, vb[j][1] = rb[u][j].y, vb[j][2] = rb[u][j].z, vb[j][3] = rb[u][j].w;
#pragma unroll
          for (int m = 2; m >= 1; m /= 2) {
            uint32_t s0, s1;
            quad_pick(va[j], t, m, s0, s1);
            quad_put(va[j], t, m, __shfl_xor_sync(0xFFFFFFFFu, s0, m), __shfl_xor_sync(0xFFFFFFFFu, s1, m));
            quad_pick(vb[j], t, m, s0, s1);
            quad_put(vb[j], t, m, __shfl_xor_sync(0xFFFFFFFFu, s0, m), __shfl_xor_sync(0xFFFFFFFFu, s1, m));
          }
        }
#pragma unroll
        for (int jc = 0; jc < 4; ++jc) {
          const int64_t ch = kb * 4 + jc;
          if (ch >= n_chunks) break;  // the same for the whole warp
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
              if (w[j].zeros) {  // else every chunk has the default zero
                ka = quant_zero_key<CODE>(__shfl_sync(0xFFFFFFFFu, za[u][j], quad | jc));
                kbz = quant_zero_key<CODE>(__shfl_sync(0xFFFFFFFFu, zb[u][j], quad | jc));
              } else {
                ka = kbz = kDefaultKey;
              }
            }
            decode_word<CODE>(va[j][jc], ka, da[j]);
            decode_word<CODE>(vb[j][jc], kbz, db[j]);
          }
          const int64_t k0 = ch * C + WC * t;
#pragma unroll
          for (int i = 0; i < TILES; ++i) {
            uint32_t xw[kMmaParts][2 * STEPS];
            if constexpr (ONE_ROW) {  // the parts of block u's values jc · C + WC · t .. + 4 · STEPS − 1
              const int word = (u * 4 * C + jc * C + WC * t) / 2;
#pragma unroll
              for (int p = 0; p < kMmaParts; ++p) {
                if constexpr (STEPS == 2) {
                  const uint4 v = *reinterpret_cast<const uint4*>(&one_row_x[warp][p][word]);
                  xw[p][0] = v.x, xw[p][1] = v.y, xw[p][2] = v.z, xw[p][3] = v.w;
                } else {
                  const uint2 v = *reinterpret_cast<const uint2*>(&one_row_x[warp][p][word]);
                  xw[p][0] = v.x, xw[p][1] = v.y;
                }
              }
            } else {  // x row g at codes k0 .. k0 + 4 · STEPS − 1, split into its three bf16 parts
              const float4* xr = reinterpret_cast<const float4*>(x[i] + k0);
              const float4 zero_f4 = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
              uint4 part[kMmaParts];
              split_x8<kNibblePairs>(x[i] ? xr[0] : zero_f4, STEPS == 2 && x[i] ? xr[1] : zero_f4, part);
#pragma unroll
              for (int p = 0; p < kMmaParts; ++p) {
                xw[p][0] = part[p].x, xw[p][1] = part[p].y;
                if constexpr (STEPS == 2) xw[p][2] = part[p].z, xw[p][3] = part[p].w;
              }
            }
#pragma unroll
            for (int j = 0; j < NT; ++j) {
              float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
              for (int s = 0; s < STEPS; ++s)
#pragma unroll
                for (int p = 0; p < kMmaParts; ++p)
                  mma_bf16(acc, da[j][2 * s], db[j][2 * s], da[j][2 * s + 1], db[j][2 * s + 1], xw[p][2 * s],
                           xw[p][2 * s + 1]);
              c[i][j][0] = fmaf(s_a[j], acc[0], c[i][j][0]);  // rows g: x rows 2t, 2t + 1
              c[i][j][1] = fmaf(s_a[j], acc[1], c[i][j][1]);
              c[i][j][2] = fmaf(s_b[j], acc[2], c[i][j][2]);  // rows g + 8
              c[i][j][3] = fmaf(s_b[j], acc[3], c[i][j][3]);
            }
          }
        }
      }
      if constexpr (ONE_ROW) __syncwarp();  // every lane has read the parts before the next stash
    }
  }
};

// Weight w (mma_rows_fit or mma_quant_fit) as the tensor-core kernels' weight rows W.
template <class W>
W mma_rows_of(const TensorView& w, int64_t K) {
  if constexpr (std::is_same_v<W, MmaBf16Rows>) return {w.as<uint16_t>()};
  else return {mma_quant_weight(w, K)};
}

// Calls f(rows) with w (mma_rows_fit or mma_quant_fit) as the tensor-core kernels' weight rows:
// MmaBf16Rows or MmaQuantRows of its code.
template <class F>
void with_mma_rows(const TensorView& w, int64_t K, F&& f) {
  if (!w.quant) return f(mma_rows_of<MmaBf16Rows>(w, K));
  with_quant_code(w.quant->code, [&]<QuantCode CODE>() { f(mma_rows_of<MmaQuantRows<CODE>>(w, K)); });
}

}  // namespace cu
}  // namespace tandem
