// Private to the CUDA backend: the weight rows the matmul and MoE kernels multiply with. A kernel
// owns output columns and an M-tile of x rows; it asks its Rows object for lane partials of
// x_m · W[r] and reduces them with warp_sum(). Two kinds of rows:
//   FloatRows  F32 / BF16 / F16 / F8_E4M3 weights, widened to f32 in registers (warp_dot);
//   QuantRows  the canonical quantized form (QuantParams, backend/tensor.h): packed int4 / int8 /
//              E2M1 / E4M3 codes with a scale (and zero) per group of a row. An act-order
//              permutation is not theirs: the ops gather x through it first (permute_cols).
// dispatch_weight_rows() picks the Rows type and the M-tile height for a weight and a step; every
// instantiation of a kernel is one (Rows, tile) pair, so the kernels themselves are written once.
#pragma once
#include "backend/cuda/cuda_common.cuh"

namespace tandem {
namespace cu {

// Rows types provide kRows (weight rows a warp computes together, reusing each x value it loads
// for all of them) and dot<MT>(r[kRows], xr[MT], nrows, acc[kRows][MT], lane), which adds lane
// partials of x_m · W[r_i] to acc[i][m].

template <int WT, bool VEC, bool XVEC>
struct FloatRows {
  static constexpr int kRows = 1;  // a 16-bit weight row already streams 2 bytes per x element
  const void* w;
  int64_t K;

  // The same rows of another weight of the same layout (same_rows_layout).
  FloatRows rebound(const TensorView& other) const { return {other.data, K}; }

  template <int MT>
  __device__ __forceinline__ void dot(const int64_t (&r)[kRows], const float* const (&xr)[MT], int nrows,
                                      float (&acc)[kRows][MT], int lane) const {
    warp_dot<WT, VEC, XVEC, MT>(static_cast<const char*>(w) + r[0] * K * wtype_bytes(WT), K, xr, nrows, acc[0], lane);
  }
};

// --- Quantized rows ------------------------------------------------------------------------------
//
// W[r, j] = (value(code[r, j]) − zero[r, g]) · scale[r, g], g = j / group (QuantParams). The lane
// partial is formed per span of 8 codes as
//     p = Σ_j x[j] · (value_j − zero)      (exact small integers for int codes: no rounding in the weight)
//     acc += scale · p
// so a weight costs one decode and one FMA per row of the M-tile, and a scale one FMA per span; the
// f32 result differs from the CPU kernels' (which form value · s − zero · s per element) by f32
// rounding only. The order of a lane's FMAs depends on K, the group and the path alone, never on the
// rows of x, so results stay batch-invariant.
//
// Paths (chosen per weight, so a weight always takes the same one):
//   vec:    K a multiple of one 16-byte chunk of codes (32 four-bit / 16 eight-bit codes) and group a
//           multiple of 8; lane l takes chunks l, l + 32, ... of kRows rows at once (kRows 16-byte
//           loads in flight), and each 8 x values it loads serve all kRows rows (one row per
//           warp would load 64 bytes of x per 4 bytes of int4 codes: the first version of this
//           kernel was L1-bound at a tenth of the memory bandwidth);
//   scalar: anything else; lane l takes elements l, l + 32, ...

enum QCode : int { kQU4 = 0, kQU8 = 1, kQE2M1 = 2, kQF8 = 3 };  // QuantCode's order
static_assert(static_cast<int>(QuantCode::kU4) == kQU4 && static_cast<int>(QuantCode::kU8) == kQU8 &&
              static_cast<int>(QuantCode::kE2M1) == kQE2M1 && static_cast<int>(QuantCode::kF8E4M3) == kQF8);

template <int CODE>
__host__ __device__ constexpr int qcode_bits() {
  return CODE == kQU4 || CODE == kQE2M1 ? 4 : 8;
}

// 2^23 + b for a byte b in [0, 255]: its float bits are 0x4B0000bb, so subtracting 2^23 + zero
// gives b − zero exactly, in one byte permute and one add (no int → float conversion).
__device__ __forceinline__ float magic_byte(uint32_t word, int byte) {
  return __uint_as_float(__byte_perm(word, 0x4B000000u, 0x7440u + byte));
}

// E4M3 bits s eeee mmm moved to f32 bits 31 and 26..20 read as 2^(e − 127) · 1.mmm (or the f32
// subnormal m · 2^-129); times 2^120 that is the E4M3 value exactly (util/half.h's decoding for the
// finite codes; the NaN codes, which quantizers never write, read ±480 as on the CPU).
__device__ __forceinline__ float e4m3_value(uint32_t b) {
  return __uint_as_float(((b & 0x80u) << 24) | ((b & 0x7Fu) << 20)) * 0x1p120f;
}
// E2M1 bits s ee m likewise: f32 bits 31 and 24..22, times 2^126.
__device__ __forceinline__ float e2m1_value(uint32_t n) {
  return __uint_as_float(((n & 8u) << 28) | ((n & 7u) << 22)) * 0x1p126f;
}

// The 8 codes of a span (one 32-bit word of 4-bit codes, two words of 8-bit codes) as value − zero
// (`offset` = 2^23 + zero for the integer codes; the float codes have no zero).
template <int CODE>
__device__ __forceinline__ void decode_span(const uint32_t* words, float offset, float (&v)[8]) {
  if constexpr (CODE == kQU4) {
    const uint32_t lo = words[0] & 0x0F0F0F0Fu, hi = (words[0] >> 4) & 0x0F0F0F0Fu;  // codes 0,2,4,6 / 1,3,5,7
#pragma unroll
    for (int b = 0; b < 4; ++b) v[2 * b] = magic_byte(lo, b) - offset, v[2 * b + 1] = magic_byte(hi, b) - offset;
  } else if constexpr (CODE == kQU8) {
#pragma unroll
    for (int b = 0; b < 8; ++b) v[b] = magic_byte(words[b / 4], b % 4) - offset;
  } else if constexpr (CODE == kQE2M1) {
#pragma unroll
    for (int j = 0; j < 8; ++j) v[j] = e2m1_value(words[0] >> (4 * j));
  } else {
#pragma unroll
    for (int j = 0; j < 8; ++j) v[j] = e4m3_value(words[j / 4] >> (8 * (j % 4)));
  }
}

// Code j of a packed row as value − zero (the scalar path).
template <int CODE>
__device__ __forceinline__ float code_minus_zero(const uint8_t* row, int64_t j, float zero) {
  if constexpr (CODE == kQU4) return static_cast<float>((row[j / 2] >> (4 * (j % 2))) & 15) - zero;
  else if constexpr (CODE == kQU8) return static_cast<float>(row[j]) - zero;
  else if constexpr (CODE == kQE2M1) return e2m1_value(row[j / 2] >> (4 * (j % 2)));
  else return e4m3_value(row[j]);
}

// Word i (constant after unrolling) of a 16-byte chunk.
__device__ __forceinline__ uint32_t chunk_word(const uint4& c, int i) {
  return i == 0 ? c.x : i == 1 ? c.y : i == 2 ? c.z : c.w;
}

template <int CODE, bool XVEC>
struct QuantRows {
  static constexpr int kRows = 4;
  const uint8_t* codes;    // [rows, K · bits / 8]
  const void* scales;      // [rows, G] of scale_wt
  const uint8_t* zeros;    // [rows, G], or null: default_zero
  int64_t K, group, G;
  int scale_wt, group_shift;  // group_shift >= 0: group is 2^group_shift
  float default_zero;
  bool vec;
  bool chunk_groups;  // group is a multiple of a chunk: one scale (and zero) per chunk, loaded once

  __device__ __forceinline__ int64_t group_of(int64_t k) const { return group_shift >= 0 ? k >> group_shift : k / group; }
  __device__ __forceinline__ float zero_at(int64_t i) const {
    return zeros ? static_cast<float>(__ldg(zeros + i)) : default_zero;
  }

  template <int MT>
  __device__ __forceinline__ void dot(const int64_t (&r)[kRows], const float* const (&xr)[MT], int nrows,
                                      float (&acc)[kRows][MT], int lane) const {
    constexpr int kBits = qcode_bits<CODE>();
    constexpr int kCodesPerChunk = 128 / kBits;  // 16 bytes
    constexpr int kSpans = kCodesPerChunk / 8;   // 8-code spans per chunk
    constexpr int kWordsPerSpan = kBits == 4 ? 1 : 2;
    const int64_t row_bytes = K * kBits / 8;
    if (!vec) {
#pragma unroll
      for (int i = 0; i < kRows; ++i) {
        const uint8_t* row = codes + r[i] * row_bytes;
        for (int64_t k = lane; k < K; k += 32) {
          const int64_t g = r[i] * G + group_of(k);
          const float w = code_minus_zero<CODE>(row, k, zero_at(g)) * load_any(scales, scale_wt, g);
#pragma unroll
          for (int m = 0; m < MT; ++m)
            if (m < nrows) acc[i][m] = fmaf(xr[m][k], w, acc[i][m]);
        }
      }
      return;
    }
    const int64_t n_chunks = K / kCodesPerChunk;
    for (int64_t c = lane; c < n_chunks; c += 32) {
      uint4 raw[kRows];
#pragma unroll
      for (int i = 0; i < kRows; ++i) raw[i] = __ldg(reinterpret_cast<const uint4*>(codes + r[i] * row_bytes) + c);
      float scale[kRows], offset[kRows];
#pragma unroll
      for (int s = 0; s < kSpans; ++s) {
        const int64_t k0 = c * kCodesPerChunk + 8 * s;
        if (s == 0 || !chunk_groups) {
          const int64_t g = group_of(k0);
#pragma unroll
          for (int i = 0; i < kRows; ++i) {
            scale[i] = load_any(scales, scale_wt, r[i] * G + g);
            offset[i] = 0x1p23f + zero_at(r[i] * G + g);
          }
        }
        float v[kRows][8];
#pragma unroll
        for (int i = 0; i < kRows; ++i) {
          uint32_t words[kWordsPerSpan];
#pragma unroll
          for (int t = 0; t < kWordsPerSpan; ++t) words[t] = chunk_word(raw[i], s * kWordsPerSpan + t);
          decode_span<CODE>(words, offset[i], v[i]);
        }
#pragma unroll
        for (int m = 0; m < MT; ++m) {
          if (m < nrows) {
            float xv[8];
            load_x8<XVEC>(xr[m] + k0, xv);
#pragma unroll
            for (int i = 0; i < kRows; ++i) {
              float p = 0.0f;
#pragma unroll
              for (int j = 0; j < 8; ++j) p = fmaf(xv[j], v[i][j], p);
              acc[i][m] = fmaf(scale[i], p, acc[i][m]);
            }
          }
        }
      }
    }
  }
};

// --- Dispatch ------------------------------------------------------------------------------------

// Whether float weight b's rows can be read with a's FloatRows rebound to b (FloatRows::rebound): the
// same dtype, width and load path (alignment). Quantized weights never are: two QuantRows dots in one
// kernel need more registers than the quantized kernels are tuned for.
inline bool same_rows_layout(const TensorView& a, const TensorView& b) {
  return !a.quant && !b.quant && a.dtype == b.dtype && a.ndim == b.ndim && a.cols() == b.cols() &&
         (reinterpret_cast<uint64_t>(a.data) % 16 == 0) == (reinterpret_cast<uint64_t>(b.data) % 16 == 0);
}

// Calls f.template operator()<MT>(rows) with the Rows object for weight w (row length K; a quantized
// weight's parameters from w.quant, whose k_perm the caller has applied to x) and the tile height mt
// (matmul_tile_rows). x_aligned: every x row the kernel reads
// is 16-byte aligned (16-byte x loads); the unaligned paths are compiled with the full tile only:
// they serve odd shapes, not the hot loop.
template <typename F>
void dispatch_weight_rows(const TensorView& w, int64_t K, bool x_aligned, int mt, F&& f) {
  // Every tile height for the aligned-x rows, the full tile only for the others (a compile-time
  // choice: each instantiation is a kernel compiled for every architecture).
  auto tiles = [&]<bool AllTiles>(const auto& rows) {
    if constexpr (AllTiles) {
      switch (mt) {
        case 1: f.template operator()<1>(rows); return;
        case 2: f.template operator()<2>(rows); return;
        case 4: f.template operator()<4>(rows); return;
        default: break;
      }
    }
    f.template operator()<kMatmulRows>(rows);
  };
  if (w.quant) {
    const QuantParams& q = *w.quant;
    const int bits = quant_code_bits(q.code);
    const int64_t chunk = 128 / bits;
    const bool vec = K % chunk == 0 && q.group % 8 == 0 && reinterpret_cast<uint64_t>(w.data) % 16 == 0;
    int shift = -1;
    for (int s = 0; s < 62; ++s)
      if (int64_t{1} << s == q.group) shift = s;
    auto run = [&]<int CODE>() {
      auto make = [&]<bool XV>() {
        return QuantRows<CODE, XV>{static_cast<const uint8_t*>(w.data), q.scales.data,
                                   static_cast<const uint8_t*>(q.zeros.data), K, q.group, q.groups(K),
                                   wtype_of(q.scales.dtype), shift, static_cast<float>(quant_default_zero(q.code)), vec,
                                   q.group % chunk == 0};
      };
      if (x_aligned) tiles.template operator()<true>(make.template operator()<true>());
      else tiles.template operator()<false>(make.template operator()<false>());
    };
    switch (q.code) {
      case QuantCode::kU4: run.template operator()<kQU4>(); break;
      case QuantCode::kU8: run.template operator()<kQU8>(); break;
      case QuantCode::kE2M1: run.template operator()<kQE2M1>(); break;
      case QuantCode::kF8E4M3: run.template operator()<kQF8>(); break;
    }
    return;
  }
  const int wt = wtype_of(w.dtype);
  // The 8-element path needs every weight row aligned for its 16-byte (F8: 8-byte) loads; the choice
  // depends only on the weight, so a given weight always takes the same path whatever the batch.
  const bool vec = K % 8 == 0 && reinterpret_cast<uint64_t>(w.data) % (wt == kF8 ? 8 : 16) == 0;
  auto paths = [&]<int WT>() {
    if (vec && x_aligned) tiles.template operator()<true>(FloatRows<WT, true, true>{w.data, K});
    else if (vec) tiles.template operator()<false>(FloatRows<WT, true, false>{w.data, K});
    else tiles.template operator()<false>(FloatRows<WT, false, false>{w.data, K});
  };
  switch (wt) {
    case kF32: paths.template operator()<kF32>(); break;
    case kBF16: paths.template operator()<kBF16>(); break;
    case kF16: paths.template operator()<kF16>(); break;
    default: paths.template operator()<kF8>(); break;
  }
}

}  // namespace cu
}  // namespace tandem
