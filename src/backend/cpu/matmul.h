// Matmul kernels of the CPU backend, one family per ISA (matmul_avx2.cc, matmul_avx512.cc). The
// backend splits y into tiles and hands each tile to the kernel of the active ISA.
#pragma once
#include <xmmintrin.h>

#include <array>
#include <cstdint>
#include <limits>

#include "backend/tensor.h"
#include "util/dtype.h"

namespace tandem::cpu {

// Distinct element types for the weight formats so kernels can overload on them (bf16 and f16 are
// both 16-bit patterns).
struct bf16_t { uint16_t bits; };
struct f16_t { uint16_t bits; };
struct f8e4m3_t { uint8_t bits; };

// OCP FP8 E4M3 -> f32 for all 256 codes; the kernels gather from it. (0x7F and 0xFF are NaN.)
constexpr std::array<float, 256> make_f8e4m3_table() {
  std::array<float, 256> t{};
  for (int b = 0; b < 256; ++b) {
    const int exp = (b >> 3) & 0xF, mant = b & 7;
    float v;
    if (exp == 0xF && mant == 7) {
      v = std::numeric_limits<float>::quiet_NaN();
    } else {
      // value = (exp ? 8 + mant : mant) / 8 · 2^(max(exp,1) - 7); every step is exact in f32.
      v = static_cast<float>(exp ? 8 + mant : mant) / 8.0f;
      for (int e = exp ? exp : 1; e < 7; ++e) v /= 2.0f;
      for (int e = 7; e < exp; ++e) v *= 2.0f;
    }
    t[b] = (b & 0x80) ? -v : v;
  }
  return t;
}
inline constexpr std::array<float, 256> kF8E4M3ToF32 = make_f8e4m3_table();

// FP4 E2M1 -> f32 for the 16 codes (bit 3 is the sign).
inline constexpr std::array<float, 16> kE2M1ToF32 = {0.0f,  0.5f,  1.0f,  1.5f,  2.0f,  3.0f,  4.0f,  6.0f,
                                                     -0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f};

// How far ahead the kernels fetch the weight bytes they will read, and into which cache. Lines are
// fetched far enough ahead to be in flight before the loads need them, whatever the out-of-order window
// covers; runs past a row's end land in the next rows, which are read next anyway: the near fetch,
// kPrefetchBytes into L1. A tile that walks R weight rows in step reads, after a row's end, row + R,
// R·row_bytes further on, so the near fetch reaches the later rows of the next tile only a few blocks
// before they are read once a tile is longer than kPrefetchBytes. Quantized tiles of several weight rows
// against one row of x (a decode step, bound by memory) therefore take the far fetch into L2,
// prefetch_distance ahead (at least one tile): always in the avx512-bf16 int4 kernel (row pairs), and
// where the tile is longer than kPrefetchBytes in the exact kernels (four rows), whose slower 4-bit paths
// lost up to 12 % with it on shorter tiles. On Zen 4 this took 8-bit decode GEMVs from 7-9 to 15 GB/s at
// one thread (docs/PERF.md, "CPU GEMV vs memory bandwidth"). A BF16 decode step, one weight row at a
// time, takes the far fetch too where a row is longer than kPrefetchBytes (one thread, rows of 2816: 21
// to 25 GB/s on the avx512-bf16 kernel, 19 to 24 on the exact AVX-512 one, 25 to 27 on AVX2). Quantized
// rows walked one at a time (AVX2's 8-bit codes) keep the near fetch: the far one was 5-6 % slower on
// rows of 2816 bytes. F32 / F16 / F8 weights keep the near fetch (not measured with the far one).
inline constexpr int kPrefetchBytes = 2048;
inline constexpr int64_t kDecodePrefetchBytes = 8192;
// Whether a tile whose rows, walked in step at one row of x, span tile_bytes takes the far fetch.
inline bool takes_far_fetch(int64_t tile_bytes) { return tile_bytes > kPrefetchBytes; }
// How far past its reads a tile of tile_bytes fetches: kPrefetchBytes, or for the far fetch
// kDecodePrefetchBytes and at least one tile.
template <bool kFar>
inline int64_t prefetch_distance(int64_t tile_bytes) {
  if constexpr (!kFar) return kPrefetchBytes;
  return tile_bytes > kDecodePrefetchBytes ? tile_bytes : kDecodePrefetchBytes;
}
// Fetches the line at p, into L2 for the far fetch and L1 for the near one.
template <bool kFar>
inline void prefetch_weight_line(const void* p) {
  if constexpr (kFar) _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T1);
  else _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T0);
}

// Quantized products of many rows of x (both kernel families' decoded paths, from their own
// kDecodedMinRows rows): kDecodedRows weight rows are decoded at a time, a chunk of K of at most
// kDecodedChunkBytes decoded bytes at a time, so that the chunk stays in L1 (32 KiB on Zen 4) next to
// a row of x's chunk while every row of x passes. Two rows were slower, eight and chunks of 8 or 24
// KiB no faster (docs/PERF.md, "CPU GEMV vs memory bandwidth").
inline constexpr int kDecodedRows = 4;
inline constexpr int64_t kDecodedChunkBytes = 16 * 1024;

// y[T,N] = x[T,K] · w[N,K]ᵀ with row strides ldx, ldy (w is dense). For BF16 weights x must be
// packed with pack_x_even_odd for the kernel family's block (kBf16BlockAvx2 / kBf16BlockAvx512), or,
// for matmul_tile_avx512_bf16, given as xs (split_x_bf16's rows, ldxs apart) instead of x.
// With q set, w holds the packed codes of a quantized weight (wtype is then ignored) whose scales
// and zeros q describes; x must already be permuted by q->k_perm (the kernels ignore it).
struct MatmulArgs {
  const float* x;
  int64_t ldx;
  const void* w;
  DType wtype;
  float* y;
  int64_t ldy;
  int64_t T, N, K;
  const QuantParams* q = nullptr;
  const uint16_t* xs = nullptr;
  int64_t ldxs = 0;
};

// Elements per packed block of x for BF16 weights: two vectors' worth of f32 lanes.
inline constexpr int64_t kBf16BlockAvx2 = 16;
inline constexpr int64_t kBf16BlockAvx512 = 32;

// out[T, K] (dense) = x[T, K] (row stride ldx) with each whole block of `block` elements reordered to
// its even-indexed elements followed by its odd-indexed ones; the K % block tail is copied as is.
// This matches how the BF16 kernels split one load of bf16 pairs into two f32 vectors.
inline void pack_x_even_odd(const float* x, int64_t ldx, int64_t T, int64_t K, int64_t block, float* out) {
  for (int64_t t = 0; t < T; ++t) {
    const float* src = x + t * ldx;
    float* dst = out + t * K;
    int64_t k = 0;
    for (; k + block <= K; k += block)
      for (int64_t i = 0; i < block / 2; ++i) {
        dst[k + i] = src[k + 2 * i];
        dst[k + block / 2 + i] = src[k + 2 * i + 1];
      }
    for (; k < K; ++k) dst[k] = src[k];
  }
}

// Whether the quantized kernels with `lanes` f32 lanes (8: AVX2, 16: AVX-512) take their even/odd
// path for q and K (4-bit codes, groups and rows of whole blocks of 2·lanes codes); x must then be
// packed with pack_x_even_odd for the family's block (2·lanes: kBf16BlockAvx2 / kBf16BlockAvx512), as
// for BF16 weights.
inline bool quant_uses_table(const QuantParams& q, int64_t K, int lanes) {
  return quant_code_bits(q.code) == 4 && (lanes == 8 || lanes == 16) && q.group % (2 * lanes) == 0 &&
         K % (2 * lanes) == 0;
}

// Computes y[t0:t1, n0:n1]. Each weight row is read once from memory and reused for all rows t of
// the tile from cache, so verifying k+1 tokens costs about one decode step's weight traffic.
void matmul_tile_avx2(const MatmulArgs& a, int64_t n0, int64_t n1, int64_t t0, int64_t t1);
void matmul_tile_avx512(const MatmulArgs& a, int64_t n0, int64_t n1, int64_t t0, int64_t t1);

// The avx512-bf16 family, for BF16 and (quant_uses_bf16) 4-bit quantized weights (matmul_avx512bf16.cc);
// for BF16 weights split_x_bf16 prepares x: out row t (2·K bf16) =
// hi[K] then lo[K] with hi = bf16(x), lo = bf16(x - hi), both rounded to nearest even; the tile
// reads a.xs instead of a.x.
void split_x_bf16(const float* x, int64_t ldx, int64_t T, int64_t K, uint16_t* out);
void matmul_tile_avx512_bf16(const MatmulArgs& a, int64_t n0, int64_t n1, int64_t t0, int64_t t1);

// Whether matmul_tile_avx512_bf16 takes quantized weights q with rows of K codes: 4-bit codes (int4
// without or with zeros, E2M1 without), when one group covers the row or the group is a power of two
// covering whole blocks of kQuantBf16Block codes (with zeros) or whole lanes of 8 codes (groups of 16
// or more, without zeros). Other weights, 8-bit codes among them, go to the exact avx512 kernels.
bool quant_uses_bf16(const QuantParams& q, int64_t K);
// Codes per block of the quantized avx512-bf16 kernel.
inline constexpr int64_t kQuantBf16Block = 128;
// split_x_bf16 for quant_uses_bf16 weights: row t (2·Kp bf16, Kp = K rounded up to kQuantBf16Block)
// = hi[Kp] then lo[Kp], zero past K, each block of 128 elements holding those with index ≡ 0 (mod 4),
// then ≡ 1, ≡ 2 and ≡ 3 (the order the kernel decodes a block's nibbles in).
void split_x_bf16_quant(const float* x, int64_t ldx, int64_t T, int64_t K, uint16_t* out);

}  // namespace tandem::cpu
