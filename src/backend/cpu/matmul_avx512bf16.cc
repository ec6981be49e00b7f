// Matmuls with AVX512_BF16 dot products (the avx512-bf16 kernel family). Each activation is split
// into two bf16 terms, hi = bf16(x) and lo = bf16(x - hi) (both rounded to nearest even), so hi + lo
// keeps 16 of x's 24 significant bits (|x - hi - lo| <= 2^-17 |x|); vdpbf16ps then multiplies a weight
// that is an exact bf16 value with each term exactly and accumulates in f32.
// - BF16 weights: against the exact f32 kernels this reads each weight once and needs no widening,
//   about 1.5x the throughput when the weights are in cache, with logits within the golden tests'
//   1e-4 of transformers (docs/PERF.md).
// - Quantized weights (QuantParams): value(code) - zero is an exact bf16 value for every code type
//   (an integer of at most 8 significant bits, an E2M1 value, or an E4M3 value), so the codes are
//   decoded straight to bf16 words, dotted with hi and lo per block of codes, and the block's f32
//   partial is multiplied by its group's scale: acc += scale · Σ (value - zero) · (hi + lo).
//
// Like matmul_avx512.cc, every header comes before the target pragma and everything after it has
// internal linkage or runs only when cpu_isa() is kAvx512Bf16.
#include <immintrin.h>

#include <algorithm>
#include <bit>
#include <cstring>
#include <vector>

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


// Writes bf16(v) to hi[0..16) and bf16(v - hi) to lo[0..16).
inline void split16(__m512 v, uint16_t* hi, uint16_t* lo) {
  const __m256i h = (__m256i)_mm512_cvtneps_pbh(v);
  const __m512 hf = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(hi), h);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(lo), (__m256i)_mm512_cvtneps_pbh(_mm512_sub_ps(v, hf)));
}

// --- Quantized weights. The kernel walks each row in blocks of 32 bytes of codes (quant_bf16_block:
// 64 4-bit or 32 8-bit codes), the last one loaded under a mask (x is zero past K, see
// split_x_bf16_quant), and decodes a block to bf16 words:
// - 4-bit codes: the bytes zero-extended to 32 words; their low nibbles (elements 2j: vector A) and
//   high nibbles (elements 2j + 1: vector B) index a 32-word table of value(c) - zero (vpermw). Words
//   16..31 of A and B hold elements 32..63, whose group may differ from that of elements 0..31 when
//   the group is 32, so their indices get bit 4 set and the table's upper half is that group's.
// - 8-bit integers: widened to 32-bit, minus the zero, converted to f32 and then to bf16 (exact).
// - E4M3: the sign-extended byte shifted left by 7 and masked is the f16 pattern of the value · 2^-8
//   (normal and subnormal codes alike, which bf16 has no room for), converted to f32 and then to bf16;
//   the 2^8 goes into the scale.
// A block's words are dotted with x's hi and lo terms into one f32 partial p (lane i sums elements
// 4i..4i+3 of a 4-bit block, 2i and 2i + 1 of an 8-bit one), and acc += p · scale with the scale of
// each lane's group. Two accumulators per output, alternating by block, keep the FMA latency off the
// critical path; the sequence of operations of an output depends only on its weight row and its row
// of x.

constexpr int64_t kQuantBlockBytes = 32;

template <QuantCode C>
constexpr int64_t block_codes() { return kQuantBlockBytes * 8 / quant_code_bits(C); }

// Rows of x per tile of R weight rows: two accumulators per output, at most kMaxQuantAcc.
constexpr int kMaxQuantAcc = 8;

// The E4M3 decode's factor (see above), 1 for the other codes.
template <QuantCode C>
constexpr float scale_factor() { return C == QuantCode::kF8E4M3 ? 256.0f : 1.0f; }

// The scales of row `row` as f32 times scale_factor, n_groups of them, then 16 zeros (read by the
// lane pattern of the last block).
template <QuantCode C>
inline void row_scales(const QuantParams& q, int64_t row, int64_t n_groups, float* out) {
  const int64_t base = row * n_groups;
  const __m512 f = _mm512_set1_ps(scale_factor<C>());
  int64_t g = 0;
  switch (q.scales.dtype) {
    case DType::BF16: {
      const uint16_t* s = static_cast<const uint16_t*>(q.scales.data) + base;
      for (; g + 16 <= n_groups; g += 16) {
        const __m512i u = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + g)));
        _mm512_storeu_ps(out + g, _mm512_mul_ps(_mm512_castsi512_ps(_mm512_slli_epi32(u, 16)), f));
      }
      for (; g < n_groups; ++g) out[g] = bf16_to_f32(s[g]) * scale_factor<C>();
      break;
    }
    case DType::F16: {
      const uint16_t* s = static_cast<const uint16_t*>(q.scales.data) + base;
      for (; g + 16 <= n_groups; g += 16)
        _mm512_storeu_ps(out + g, _mm512_mul_ps(_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + g))), f));
      for (; g < n_groups; ++g) out[g] = f16_to_f32(s[g]) * scale_factor<C>();
      break;
    }
    default: {
      const float* s = static_cast<const float*>(q.scales.data) + base;
      for (; g + 16 <= n_groups; g += 16) _mm512_storeu_ps(out + g, _mm512_mul_ps(_mm512_loadu_ps(s + g), f));
      for (; g < n_groups; ++g) out[g] = s[g] * scale_factor<C>();
      break;
    }
  }
  std::fill(out + n_groups, out + n_groups + 16, 0.0f);
}

// value(c) - zlo for c < 16 in words 0..15, value(c) - zhi in words 16..31, as bf16 (4-bit codes).
template <QuantCode C>
inline __m512i nibble_table(float zlo, float zhi) {
  const __m512 v = C == QuantCode::kU4 ? _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
                                       : _mm512_loadu_ps(kE2M1ToF32.data());
  return (__m512i)_mm512_cvtne2ps_pbh(_mm512_sub_ps(v, _mm512_set1_ps(zhi)), _mm512_sub_ps(v, _mm512_set1_ps(zlo)));
}

// y[t·ldy + r] = Σ_j W[n + r, j] · x[t][j] for r < R, t < TT; xs as split_x_bf16_quant writes it.
template <QuantCode C, int R, int TT>
inline void tile_quant(const MatmulArgs& a, int64_t n, const uint16_t* xs, float* y) {
  constexpr bool kNibbles = quant_code_bits(C) == 4;
  constexpr int64_t kCodes = block_codes<C>();
  const QuantParams& q = *a.q;
  const int64_t K = a.K, G = q.group, n_groups = q.groups(K);
  const int64_t Kp = (K + kCodes - 1) / kCodes * kCodes, blocks = Kp / kCodes;
  const int64_t row_bytes = K * quant_code_bits(C) / 8;
  const int64_t tail_bytes = row_bytes - (blocks - 1) * kQuantBlockBytes;  // of the last block, 1..32
  const __mmask32 tail_mask = static_cast<__mmask32>((uint64_t{1} << tail_bytes) - 1);
  const uint8_t* w = static_cast<const uint8_t*>(a.w) + n * row_bytes;
  const uint8_t* zeros = static_cast<const uint8_t*>(q.zeros.data);
  // The group of element k is k >> g_shift (G is a power of two or covers the row: quant_uses_bf16),
  // a shift instead of a division per block.
  const int g_shift = G >= K ? 62 : std::countr_zero(static_cast<uint64_t>(G));
  // Lanes of a block in different groups (4-bit codes, groups of 16 or 32): lane i's group is
  // 4i / G blocks after the block's first.
  const bool lane_groups = kNibbles && G < kCodes && G < K;
  const __m512i lane_group = _mm512_srlv_epi32(_mm512_slli_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), 2),
                                               _mm512_set1_epi32(g_shift));
  // The scales are a second stream, a few lines per row that the weight rows' prefetch does not
  // cover: fetch those of a row about kPrefetchBytes of codes ahead.
  {
    const int64_t scale_row_bytes = n_groups * static_cast<int64_t>(dtype_size(q.scales.dtype));
    const int64_t ahead = R + (kPrefetchBytes + row_bytes - 1) / row_bytes;
    const uintptr_t p = reinterpret_cast<uintptr_t>(q.scales.data) + (n + ahead) * scale_row_bytes;
    for (int64_t b = 0; b < R * scale_row_bytes; b += 64) _mm_prefetch(reinterpret_cast<const char*>(p + b), _MM_HINT_T0);
  }
  thread_local std::vector<float> scale_buf;
  const int64_t lds = n_groups + 16;
  scale_buf.resize(R * lds);
  for (int r = 0; r < R; ++r) row_scales<C>(q, n + r, n_groups, scale_buf.data() + r * lds);
  auto zero_of = [&](int r, int64_t g) -> int {
    return zeros ? zeros[(n + r) * n_groups + std::min(g, n_groups - 1)] : quant_default_zero(C);
  };
  __m512i table[R];
  int64_t table_group[R];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) table[r] = nibble_table<C>(zero_of(r, 0), zero_of(r, 0)), table_group[r] = 0;
  const __m512i upper_words = _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(16), 1);
  __m512 acc[R][TT][2];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int t = 0; t < TT; ++t) acc[r][t][0] = acc[r][t][1] = _mm512_setzero_ps();

  auto block = [&](int64_t u, bool tail, int parity) __attribute__((always_inline)) {
    const int64_t k = u * kCodes;
    __m512 sv[R];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const float* s = scale_buf.data() + r * lds;
      sv[r] = lane_groups ? _mm512_permutexvar_ps(lane_group, _mm512_loadu_ps(s + (k >> g_shift)))
                          : _mm512_set1_ps(s[k >> g_shift]);
    }
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const uint8_t* wr = w + r * row_bytes + u * kQuantBlockBytes;
      _mm_prefetch(reinterpret_cast<const char*>(wr) + kPrefetchBytes, _MM_HINT_T0);
      const __m256i b = tail ? _mm256_maskz_loadu_epi8(tail_mask, wr) : _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wr));
      if constexpr (kNibbles) {
        if (zeros && G < K) {  // the block's two halves' groups
          const int64_t g = k >> g_shift;
          if (g != table_group[r] || G == 32) {
            table[r] = nibble_table<C>(zero_of(r, g), zero_of(r, (k + 32) >> g_shift));
            table_group[r] = g;
          }
        }
        const __m512i wd = _mm512_cvtepu8_epi16(b);
        const __m512i ia = _mm512_ternarylogic_epi32(wd, _mm512_set1_epi16(0x0F), upper_words, 0xEA);  // (wd & 15) | upper
        const __m512i ib = _mm512_or_si512(_mm512_srli_epi16(wd, 4), upper_words);
        const __m512bh wa = (__m512bh)_mm512_permutexvar_epi16(ia, table[r]);
        const __m512bh wb = (__m512bh)_mm512_permutexvar_epi16(ib, table[r]);
#pragma GCC unroll 16
        for (int t = 0; t < TT; ++t) {
          const uint16_t* xh = xs + t * a.ldxs + k;
          const uint16_t* xl = xh + Kp;
          __m512 p = _mm512_dpbf16_ps(_mm512_setzero_ps(), wa, (__m512bh)_mm512_loadu_si512(xh));
          p = _mm512_dpbf16_ps(p, wa, (__m512bh)_mm512_loadu_si512(xl));
          p = _mm512_dpbf16_ps(p, wb, (__m512bh)_mm512_loadu_si512(xh + 32));
          p = _mm512_dpbf16_ps(p, wb, (__m512bh)_mm512_loadu_si512(xl + 32));
          acc[r][t][parity] = _mm512_fmadd_ps(p, sv[r], acc[r][t][parity]);
        }
      } else {
        __m512bh wv;
        if constexpr (C == QuantCode::kU8) {
          const __m512i z = _mm512_set1_epi32(zero_of(r, k >> g_shift));
          const __m512i lo = _mm512_sub_epi32(_mm512_cvtepu8_epi32(_mm256_castsi256_si128(b)), z);
          const __m512i hi = _mm512_sub_epi32(_mm512_cvtepu8_epi32(_mm256_extracti128_si256(b, 1)), z);
          wv = _mm512_cvtne2ps_pbh(_mm512_cvtepi32_ps(hi), _mm512_cvtepi32_ps(lo));
        } else {  // E4M3
          const __m512i h = _mm512_and_si512(_mm512_slli_epi16(_mm512_cvtepi8_epi16(b), 7), _mm512_set1_epi16(static_cast<short>(0xBF80)));
          wv = _mm512_cvtne2ps_pbh(_mm512_cvtph_ps(_mm512_extracti64x4_epi64(h, 1)), _mm512_cvtph_ps(_mm512_castsi512_si256(h)));
        }
#pragma GCC unroll 16
        for (int t = 0; t < TT; ++t) {
          const uint16_t* xh = xs + t * a.ldxs + k;
          __m512 p = _mm512_dpbf16_ps(_mm512_setzero_ps(), wv, (__m512bh)_mm512_loadu_si512(xh));
          p = _mm512_dpbf16_ps(p, wv, (__m512bh)_mm512_loadu_si512(xh + Kp));
          acc[r][t][parity] = _mm512_fmadd_ps(p, sv[r], acc[r][t][parity]);
        }
      }
    }
  };
  // Literal parities and tail flags, so that the accumulators stay in registers.
  int64_t u = 0;
  for (; u + 2 < blocks; u += 2) block(u, false, 0), block(u + 1, false, 1);
  if (u + 1 < blocks) block(u++, false, 0);
  const bool tail = tail_bytes < kQuantBlockBytes;
  if (u % 2 == 0) {
    tail ? block(u, true, 0) : block(u, false, 0);
  } else {
    tail ? block(u, true, 1) : block(u, false, 1);
  }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < TT; ++t) y[t * a.ldy + r] = _mm512_reduce_add_ps(_mm512_add_ps(acc[r][t][0], acc[r][t][1]));
}

template <QuantCode C, int R, int TT>
inline void tile_quant_fit(const MatmulArgs& a, int64_t n, const uint16_t* xs, float* y) {
  if constexpr (TT > 1 && 2 * R * TT > kMaxQuantAcc) {
    constexpr int kHead = TT / 2;
    tile_quant_fit<C, R, kHead>(a, n, xs, y);
    tile_quant_fit<C, R, TT - kHead>(a, n, xs + kHead * a.ldxs, y + kHead * a.ldy);
  } else {
    tile_quant<C, R, TT>(a, n, xs, y);
  }
}

template <QuantCode C, int R>
void rows_block_quant(const MatmulArgs& a, int64_t n, int64_t t0, int64_t t1) {
  int64_t t = t0;
  for (; t + 4 <= t1; t += 4) tile_quant_fit<C, R, 4>(a, n, a.xs + t * a.ldxs, a.y + t * a.ldy + n);
  const uint16_t* xs = a.xs + t * a.ldxs;
  float* y = a.y + t * a.ldy + n;
  switch (t1 - t) {
    case 3: tile_quant_fit<C, R, 3>(a, n, xs, y); break;
    case 2: tile_quant_fit<C, R, 2>(a, n, xs, y); break;
    case 1: tile_quant_fit<C, R, 1>(a, n, xs, y); break;
    default: break;
  }
}

// A decode step walks the weight rows one after another; more rows of x share each pair of weight
// rows from L1.
template <QuantCode C>
void matmul_tile_quant(const MatmulArgs& a, int64_t n0, int64_t n1, int64_t t0, int64_t t1) {
  int64_t n = n0;
  if (t1 - t0 > 1)
    for (; n + 2 <= n1; n += 2) rows_block_quant<C, 2>(a, n, t0, t1);
  for (; n < n1; ++n) rows_block_quant<C, 1>(a, n, t0, t1);
}

}  // namespace

void split_x_bf16(const float* x, int64_t ldx, int64_t T, int64_t K, uint16_t* out) {
  for (int64_t t = 0; t < T; ++t) {
    const float* src = x + t * ldx;
    uint16_t* hi = out + t * 2 * K;
    uint16_t* lo = hi + K;
    int64_t k = 0;
    for (; k + kLanes <= K; k += kLanes) split16(_mm512_loadu_ps(src + k), hi + k, lo + k);
    for (; k < K; ++k) {
      hi[k] = f32_to_bf16(src[k]);
      lo[k] = f32_to_bf16(src[k] - bf16_to_f32(hi[k]));
    }
  }
}

bool quant_uses_bf16(const QuantParams& q, int64_t K) {
  const int64_t G = q.group;
  const bool zeros = q.zeros.data != nullptr;
  // For the float codes value - zero need not be a bf16 value; no format stores zeros for them.
  if (zeros && (q.code == QuantCode::kE2M1 || q.code == QuantCode::kF8E4M3)) return false;
  if (G >= K) return true;
  if (!std::has_single_bit(static_cast<uint64_t>(G))) return false;
  if (quant_code_bits(q.code) == 8) return G >= 32;  // whole blocks per group
  return G >= 32 || (G == 16 && !zeros);  // whole blocks per group, or lanes per group
}

int64_t quant_bf16_block(QuantCode code) { return quant_code_bits(code) == 4 ? 64 : 32; }

void split_x_bf16_quant(const float* x, int64_t ldx, int64_t T, int64_t K, QuantCode code, uint16_t* out) {
  const int64_t B = quant_bf16_block(code), Kp = (K + B - 1) / B * B;
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
  for (int64_t t = 0; t < T; ++t) {
    const float* src = x + t * ldx;
    uint16_t* hi = out + t * 2 * Kp;
    uint16_t* lo = hi + Kp;
    for (int64_t k = 0; k < Kp; k += B) {
      alignas(64) float last[64];
      const float* p = src + k;
      if (k + B > K) {  // the last block: zeros past K
        std::fill(last, last + 64, 0.0f);
        std::copy(src + k, src + K, last);
        p = last;
      }
      if (B == 64) {  // even-indexed elements, then odd-indexed (the 4-bit decode's order)
        const __m512 v0 = _mm512_loadu_ps(p), v1 = _mm512_loadu_ps(p + 16), v2 = _mm512_loadu_ps(p + 32),
                     v3 = _mm512_loadu_ps(p + 48);
        split16(_mm512_permutex2var_ps(v0, even, v1), hi + k, lo + k);
        split16(_mm512_permutex2var_ps(v2, even, v3), hi + k + 16, lo + k + 16);
        split16(_mm512_permutex2var_ps(v0, odd, v1), hi + k + 32, lo + k + 32);
        split16(_mm512_permutex2var_ps(v2, odd, v3), hi + k + 48, lo + k + 48);
      } else {
        split16(_mm512_loadu_ps(p), hi + k, lo + k);
        split16(_mm512_loadu_ps(p + 16), hi + k + 16, lo + k + 16);
      }
    }
  }
}

// As matmul_tile: a decode step (one row of x) walks the weight rows one after another; more rows
// of x share each group of 4 weight rows from L1 (four rows of dot products in flight also hide the
// latency of vdpbf16ps, which bounds a single row at T = 2..4).
void matmul_tile_avx512_bf16(const MatmulArgs& a, int64_t n0, int64_t n1, int64_t t0, int64_t t1) {
  if (a.q) {
    switch (a.q->code) {
      case QuantCode::kU4: return matmul_tile_quant<QuantCode::kU4>(a, n0, n1, t0, t1);
      case QuantCode::kU8: return matmul_tile_quant<QuantCode::kU8>(a, n0, n1, t0, t1);
      case QuantCode::kE2M1: return matmul_tile_quant<QuantCode::kE2M1>(a, n0, n1, t0, t1);
      case QuantCode::kF8E4M3: return matmul_tile_quant<QuantCode::kF8E4M3>(a, n0, n1, t0, t1);
    }
  }
  const uint16_t* w = static_cast<const uint16_t*>(a.w);
  int64_t n = n0;
  if (t1 - t0 > 1)
    for (; n + 4 <= n1; n += 4) rows_block<4>(w + n * a.K, a, n, t0, t1);
  for (; n < n1; ++n) rows_block<1>(w + n * a.K, a, n, t0, t1);
}

}  // namespace tandem::cpu

#pragma GCC pop_options
