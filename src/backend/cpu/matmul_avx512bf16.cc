// BF16-weight matmul with AVX512_BF16 dot products (the avx512-bf16 kernel family). Each activation
// is split into two bf16 terms, hi = bf16(x) and lo = bf16(x - hi) (both rounded to nearest even), so
// hi + lo keeps 16 of x's 24 significant bits (|x - hi - lo| <= 2^-17 |x|); vdpbf16ps then multiplies
// the bf16 weights with each term exactly and accumulates in f32. Against the exact f32 kernels this
// reads each weight once and needs no widening, about 1.5x the throughput when the weights are in
// cache, with logits within the golden tests' 1e-4 of transformers (docs/PERF.md).
//
// Like matmul_avx512.cc, every header comes before the target pragma and everything after it has
// internal linkage or runs only when cpu_isa() is kAvx512Bf16.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "backend/cpu/matmul.h"
#include "util/half.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512bf16")
// GCC 12 flags the deliberately undefined source operand inside its own AVX-512 widening intrinsics.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace tandem::cpu {
namespace {

constexpr int kLanes = 16;           // f32 accumulator lanes; one load holds 2 · kLanes bf16
constexpr int kMaxAcc = 16;          // accumulators next to the operands in 32 zmm registers
constexpr int kPrefetchBytes = 2048;  // as the exact kernels (matmul_kernels.h)

// y[t·ldy + r] = Σ_k w[r·K + k] · (hi + lo)[t][k] for r < R, t < TT. Every output has two
// accumulators, one per term, added at the end: the same operations for any R and TT, so a row's
// result never depends on which rows of x were batched with it.
template <int R, int TT>
inline void tile(const uint16_t* w, int64_t K, const uint16_t* xs, int64_t ldxs, float* y, int64_t ldy) {
  __m512 acc_hi[R][TT], acc_lo[R][TT];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int t = 0; t < TT; ++t) acc_hi[r][t] = acc_lo[r][t] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 2 * kLanes <= K; k += 2 * kLanes) {
    __m512bh xh[TT], xl[TT];
#pragma GCC unroll 16
    for (int t = 0; t < TT; ++t) {
      xh[t] = (__m512bh)_mm512_loadu_si512(xs + t * ldxs + k);
      xl[t] = (__m512bh)_mm512_loadu_si512(xs + t * ldxs + K + k);
    }
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      _mm_prefetch(reinterpret_cast<const char*>(w + r * K + k) + kPrefetchBytes, _MM_HINT_T0);
      const __m512bh wv = (__m512bh)_mm512_loadu_si512(w + r * K + k);
#pragma GCC unroll 16
      for (int t = 0; t < TT; ++t) {
        acc_hi[r][t] = _mm512_dpbf16_ps(acc_hi[r][t], wv, xh[t]);
        acc_lo[r][t] = _mm512_dpbf16_ps(acc_lo[r][t], wv, xl[t]);
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int t = 0; t < TT; ++t) {
      float s = _mm512_reduce_add_ps(_mm512_add_ps(acc_hi[r][t], acc_lo[r][t]));
      for (int64_t kk = k; kk < K; ++kk)
        s += bf16_to_f32(w[r * K + kk]) * (bf16_to_f32(xs[t * ldxs + kk]) + bf16_to_f32(xs[t * ldxs + K + kk]));
      y[t * ldy + r] = s;
    }
  }
}

// tile over TT rows of x, split until the 2 · R · TT accumulators fit in registers.
template <int R, int TT>
inline void tile_fit(const uint16_t* w, int64_t K, const uint16_t* xs, int64_t ldxs, float* y, int64_t ldy) {
  if constexpr (TT > 1 && 2 * R * TT > kMaxAcc) {
    constexpr int kHead = TT / 2;
    tile_fit<R, kHead>(w, K, xs, ldxs, y, ldy);
    tile_fit<R, TT - kHead>(w, K, xs + kHead * ldxs, ldxs, y + kHead * ldy, ldy);
  } else {
    tile<R, TT>(w, K, xs, ldxs, y, ldy);
  }
}

// R weight rows against x rows [t0, t1), in groups of up to 4 rows of x.
template <int R>
void rows_block(const uint16_t* w, const MatmulArgs& a, int64_t n, int64_t t0, int64_t t1) {
  int64_t t = t0;
  for (; t + 4 <= t1; t += 4) tile_fit<R, 4>(w, a.K, a.xs + t * a.ldxs, a.ldxs, a.y + t * a.ldy + n, a.ldy);
  const uint16_t* xs = a.xs + t * a.ldxs;
  float* y = a.y + t * a.ldy + n;
  switch (t1 - t) {
    case 3: tile_fit<R, 3>(w, a.K, xs, a.ldxs, y, a.ldy); break;
    case 2: tile_fit<R, 2>(w, a.K, xs, a.ldxs, y, a.ldy); break;
    case 1: tile_fit<R, 1>(w, a.K, xs, a.ldxs, y, a.ldy); break;
    default: break;
  }
}

}  // namespace

void split_x_bf16(const float* x, int64_t ldx, int64_t T, int64_t K, uint16_t* out) {
  for (int64_t t = 0; t < T; ++t) {
    const float* src = x + t * ldx;
    uint16_t* hi = out + t * 2 * K;
    uint16_t* lo = hi + K;
    int64_t k = 0;
    for (; k + kLanes <= K; k += kLanes) {
      const __m512 v = _mm512_loadu_ps(src + k);
      const __m256i h = (__m256i)_mm512_cvtneps_pbh(v);
      const __m512 hf = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(hi + k), h);
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(lo + k), (__m256i)_mm512_cvtneps_pbh(_mm512_sub_ps(v, hf)));
    }
    for (; k < K; ++k) {
      hi[k] = f32_to_bf16(src[k]);
      lo[k] = f32_to_bf16(src[k] - bf16_to_f32(hi[k]));
    }
  }
}

// As matmul_tile: a decode step (one row of x) walks the weight rows one after another; more rows
// of x share each group of 4 weight rows from L1 (four rows of dot products in flight also hide the
// latency of vdpbf16ps, which bounds a single row at T = 2..4).
void matmul_tile_avx512_bf16(const MatmulArgs& a, int64_t n0, int64_t n1, int64_t t0, int64_t t1) {
  const uint16_t* w = static_cast<const uint16_t*>(a.w);
  int64_t n = n0;
  if (t1 - t0 > 1)
    for (; n + 4 <= n1; n += 4) rows_block<4>(w + n * a.K, a, n, t0, t1);
  for (; n < n1; ++n) rows_block<1>(w + n * a.K, a, n, t0, t1);
}

}  // namespace tandem::cpu

#pragma GCC pop_options
