// Matmuls with AVX512_BF16 dot products (the avx512-bf16 kernel family). Each activation is split
// into two bf16 terms, hi = bf16(x) and lo = bf16(x - hi) (both rounded to nearest even), so hi + lo
// keeps 16 of x's 24 significant bits (|x - hi - lo| <= 2^-17 |x|); vdpbf16ps then multiplies a weight
// that is an exact bf16 value with each term exactly and accumulates in f32.
// - BF16 weights: against the exact f32 kernels this reads each weight once and needs no widening,
//   about 1.5x the throughput when the weights are in cache, with logits within the golden tests'
//   1e-4 of transformers (docs/PERF.md).
// - 4-bit quantized weights (QuantParams, int4 and E2M1): value(code) - zero is an exact bf16 value
//   (an integer of at most 8 significant bits, or an E2M1 value), so the codes are decoded straight
//   to bf16 words by a table lookup, dotted with hi and lo per block of codes, and the block's f32
//   partials are multiplied by their groups' scales: acc += scale · Σ (value - zero) · (hi + lo).
//   8-bit codes stay on the exact avx512 kernels: their decode is cheap there, and with two
//   vdpbf16ps and a scale FMA per 32 weights and row of x this path took about 1.9x their time for
//   4 rows of x (docs/PERF.md). From kDecodedMinRows rows of x (prefill) a tile of weight rows is
//   decoded once and every row of x dotted with it, by the same operations per output as a decode
//   step's (a kernel switched by row count must not change a row's bits): at 64 rows on Zen 4,
//   0.87-0.97x the multiply-add rate of BF16 weights (docs/PERF.md).
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

// The lane sums of v[0..8), each added in the order of _mm512_reduce_add_ps (GCC's: the upper 256
// bits onto the lower, then the upper 128 onto the lower, then lanes {2, 3} onto {0, 1}, then lane 1
// onto lane 0), so every sum has the same bits; the eight reductions share their shuffles and adds
// (15 adds instead of 32, a fraction of the shuffles), which at the short rows of a small model
// (K = 128 or 256: 4 or 8 steps of the k loop per tile) took a large share of a tile's time.
inline __m256 reduce8(const __m512 v[8]) {
  // Lanes 0-7 of f[i]: v[2i]'s upper 256 bits + lower; lanes 8-15: the same of v[2i + 1].
  __m512 f[4];
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i)
    f[i] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0xEE), _mm512_shuffle_f32x4(v[2 * i], v[2 * i + 1], 0x44));
  // Quarter q of g[j]: v[4j + q]'s 128-bit fold (upper 128 of the 256 above + lower).
  __m512 g[2];
#pragma GCC unroll 2
  for (int j = 0; j < 2; ++j)
    g[j] = _mm512_add_ps(_mm512_shuffle_f32x4(f[2 * j], f[2 * j + 1], 0xDD), _mm512_shuffle_f32x4(f[2 * j], f[2 * j + 1], 0x88));
  // Quarter q: {a0 + a2, a1 + a3, b0 + b2, b1 + b3} with a = v[q], b = v[4 + q].
  const __m512 h = _mm512_add_ps(_mm512_shuffle_ps(g[0], g[1], 0x44), _mm512_shuffle_ps(g[0], g[1], 0xEE));
  // Quarter q: {sum v[q], sum v[4 + q], ...}: element 0 plus element 1 of each pair above.
  const __m512 s = _mm512_add_ps(_mm512_shuffle_ps(h, h, 0x88), _mm512_shuffle_ps(h, h, 0xDD));
  return _mm512_castps512_ps256(_mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 0, 0, 0, 0, 0, 0, 0, 0), s));
}

// y[t·ldy + r] = Σ_k w[r·K + k] · (hi + lo)[t][k] for r < R, t < TT. Every output has two
// accumulators, one per term, added at the end: the same operations for any R and TT, so a row's
// result never depends on which rows of x were batched with it.
template <int R, int TT, bool kFar = false>
inline void tile(const uint16_t* w, int64_t K, const uint16_t* xs, int64_t ldxs, float* y, int64_t ldy) {
  const int64_t ahead = prefetch_distance<kFar>(2 * R * K);
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
      prefetch_weight_line<kFar>(reinterpret_cast<const char*>(w + r * K + k) + ahead);
      const __m512bh wv = (__m512bh)_mm512_loadu_si512(w + r * K + k);
#pragma GCC unroll 16
      for (int t = 0; t < TT; ++t) {
        acc_hi[r][t] = _mm512_dpbf16_ps(acc_hi[r][t], wv, xh[t]);
        acc_lo[r][t] = _mm512_dpbf16_ps(acc_lo[r][t], wv, xl[t]);
      }
    }
  }
  if constexpr (R == 4 && TT == 2) {
    if (k == K) {  // no tail: the eight sums at once (reduce8), bit for bit what the loop below gives
      __m512 v[8];
#pragma GCC unroll 8
      for (int t = 0; t < TT; ++t)
#pragma GCC unroll 8
        for (int r = 0; r < R; ++r) v[t * R + r] = _mm512_add_ps(acc_hi[r][t], acc_lo[r][t]);
      const __m256 sums = reduce8(v);
      _mm_storeu_ps(y, _mm256_castps256_ps128(sums));
      _mm_storeu_ps(y + ldy, _mm256_extractf128_ps(sums, 1));
      return;
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
    case 1:
      // A decode step's weight rows longer than the near fetch take the far one (matmul.h).
      if constexpr (R == 1)
        if (takes_far_fetch(2 * a.K)) return tile<1, 1, true>(w, a.K, xs, a.ldxs, y, a.ldy);
      tile_fit<R, 1>(w, a.K, xs, a.ldxs, y, a.ldy);
      break;
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

// --- 4-bit quantized weights. The kernel walks each row in blocks of 128 codes (64 bytes), the last
// one loaded under a mask (x is zero past K, see split_x_bf16_quant). The 64 bytes, read as 32 words,
// hold elements 4j..4j+3 in the four nibbles of word j; the word and the word shifted right by 4, 8
// and 12 index a table of value(c) - zero (vpermw, which reads the low 5 bits: the table's two
// 16-word halves are equal, so bit 4 does not matter), giving four vectors of bf16 weights, the
// elements 4j + s for s = 0..3. x is packed to match: per block of 128 elements, those with index
// ≡ 0 (mod 4), then ≡ 1, ≡ 2, ≡ 3. One table per block (a group with zeros covers whole blocks:
// quant_uses_bf16). The four vectors are dotted with x's hi terms into one f32 partial and with its lo
// terms into another (lane i sums elements 8i..8i+7), and each partial is added to its accumulator
// times the scale of each lane's group: two FMA chains per output, and the sequence of operations of
// an output depends only on its weight row and its row of x.

constexpr int64_t kBlockBytes = 64, kBlockCodes = kQuantBf16Block;

// Rows of x per tile of R weight rows: two accumulators per output, at most kMaxQuantAcc.
constexpr int kMaxQuantAcc = 8;

// The scales of row `row` as f32, n_groups of them, then zeros up to the next multiple of 16 and 16
// more (read by the lane pattern of the last block): out holds scale_stride(n_groups) floats. Masked
// loads, so that rows of a few groups (short rows, per-channel scales) cost one vector each.
inline int64_t scale_stride(int64_t n_groups) { return (n_groups + 15) / 16 * 16 + 16; }
inline void row_scales(const QuantParams& q, int64_t row, int64_t n_groups, float* out) {
  const int64_t base = row * n_groups;
  int64_t g = 0;
  for (; g < n_groups; g += 16) {
    const __mmask16 m = n_groups - g >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << (n_groups - g)) - 1);
    __m512 v;
    switch (q.scales.dtype) {
      case DType::BF16:
        v = _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(q.scales.data) + base + g)), 16));
        break;
      case DType::F16:
        v = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, static_cast<const uint16_t*>(q.scales.data) + base + g));
        break;
      default: v = _mm512_maskz_loadu_ps(m, static_cast<const float*>(q.scales.data) + base + g); break;
    }
    _mm512_storeu_ps(out + g, v);
  }
  _mm512_storeu_ps(out + g, _mm512_setzero_ps());
}

inline __m512bh load_bh(const uint16_t* p) { return (__m512bh)_mm512_loadu_si512(p); }

// value(c) - zero for c < 16, in both 16-word halves, as bf16 (4-bit codes).
template <QuantCode C>
inline __m512i nibble_table(float zero) {
  const __m512 v = C == QuantCode::kU4 ? _mm512_setr_ps(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15)
                                       : _mm512_loadu_ps(kE2M1ToF32.data());
  const __m512 d = _mm512_sub_ps(v, _mm512_set1_ps(zero));
  return (__m512i)_mm512_cvtne2ps_pbh(d, d);
}

// What every row of a weight shares, worked out once per tile of rows (short rows are common: the
// bundled model's are 128 bytes, two blocks).
struct QuantRows {
  explicit QuantRows(const MatmulArgs& a)
      : q(*a.q), K(a.K), G(q.group), n_groups(q.groups(K)), Kp((K + kBlockCodes - 1) / kBlockCodes * kBlockCodes),
        blocks(Kp / kBlockCodes), row_bytes(K / 2), tail_bytes(row_bytes - (blocks - 1) * kBlockBytes),
        tail_mask(tail_bytes >= 64 ? ~__mmask64{0} : (__mmask64{1} << tail_bytes) - 1),
        g_shift(G >= K ? 62 : std::countr_zero(static_cast<uint64_t>(G))), lane_groups(G < kBlockCodes && G < K),
        lane_group(_mm512_srlv_epi32(_mm512_slli_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), 3),
                                     _mm512_set1_epi32(std::min(g_shift, 31)))),
        lane_group_high_words(_mm512_slli_epi32(lane_group, 16)),
        lane_group_words(_mm512_cvtepi32_epi16(lane_group)),
        block_groups(lane_groups ? kBlockCodes >> g_shift : 1),
        scale_row_bytes(n_groups * static_cast<int64_t>(dtype_size(q.scales.dtype))),
        far_ahead(prefetch_distance<true>(2 * row_bytes)),
        rows_ahead{(kPrefetchBytes + row_bytes - 1) / row_bytes, (far_ahead + row_bytes - 1) / row_bytes},
        lds(scale_stride(n_groups)) {}
  const QuantParams& q;
  const int64_t K, G, n_groups, Kp, blocks, row_bytes;
  const int64_t tail_bytes;  // of the last block, 1..64
  const __mmask64 tail_mask;
  // The group of element k is k >> g_shift (G is a power of two or covers the row: quant_uses_bf16),
  // a shift instead of a division per block.
  const int g_shift;
  // Lanes of a block in different groups (groups of 16 to 64): lane i's group is lane_group[i] groups
  // after the block's first (8i / G).
  const bool lane_groups;
  const __m512i lane_group;
  // lane_group as word indices (stored_block_scales): in the high word of each 32-bit lane (a bf16 scale
  // there is its f32), and one word a lane (16 f16 scales for vcvtph2ps).
  const __m512i lane_group_high_words;
  const __m256i lane_group_words;
  const int64_t block_groups;  // groups a full block spans (lane_groups), else 1
  const int64_t scale_row_bytes;
  const int64_t far_ahead;      // the far fetch's distance for row pairs (matmul.h)
  const int64_t rows_ahead[2];  // weight rows in kPrefetchBytes, far_ahead of codes
  const int64_t lds;
};

// The scale of each lane's group in a block whose first code is in group g (s: the row's scales as
// row_scales gives them). With several groups a block, the load is the very vector of 16 scales that
// row_scales stored and that holds the block's groups, and each lane picks its group's from it: a load
// at s + g spans two of those stores, which a load can take from the store buffer only when it matches
// one (L2-resident, one thread, Zen 5: 1-4 % faster at one row of x, docs/PERF.md). A block's groups lie
// in one such vector: there are 128 / G of them, G a power of two from 16 up, starting at a multiple of
// 128 / G.
inline __m512 block_scales(const QuantRows& L, const float* s, int64_t g) {
  if (!L.lane_groups) return _mm512_set1_ps(s[g]);
  const __m512i lanes = _mm512_add_epi32(L.lane_group, _mm512_set1_epi32(static_cast<int>(g & 15)));
  return _mm512_permutexvar_ps(lanes, _mm512_loadu_ps(s + (g & ~int64_t{15})));
}

// block_scales for row `row` read from the stored scales, not from row_scales' buffer: the block's groups (at
// most 8: G is a power of two from 16 up) loaded under a mask that stops at the row's last group, each lane's
// picked and widened (bf16 and f16 to f32 exactly: the same values as the buffer's). A block in one group
// (!lane_groups) is the same path: block_groups is 1 and every lane's lane_group 0, a broadcast. One row of x
// (tile_quant at TT = 1) takes it: there the buffer's conversion and its store-to-load round trip took about
// 15 % of a 704-code row's time, and reading the stored scales made 2816 × 704 8 % faster; at 4 rows of x it
// was 11 % slower (Zen 4, one thread, cache-resident; docs/PERF.md).
__attribute__((always_inline)) inline __m512 stored_block_scales(const QuantRows& L, int64_t row, int64_t g) {
  const int64_t i = row * L.n_groups + g;
  const void* scales = L.q.scales.data;
  const DType dt = L.q.scales.dtype;
  const __mmask8 m = static_cast<__mmask8>((1u << std::min(L.block_groups, L.n_groups - g)) - 1);
  switch (dt) {
    case DType::BF16: {
      const __m128i v = _mm_maskz_loadu_epi16(m, static_cast<const uint16_t*>(scales) + i);
      return _mm512_castsi512_ps(
          _mm512_maskz_permutexvar_epi16(0xAAAAAAAAu, L.lane_group_high_words, _mm512_castsi128_si512(v)));
    }
    case DType::F16: {
      const __m128i v = _mm_maskz_loadu_epi16(m, static_cast<const uint16_t*>(scales) + i);
      return _mm512_cvtph_ps(_mm256_permutexvar_epi16(L.lane_group_words, _mm256_castsi128_si256(v)));
    }
    default:
      return _mm512_permutexvar_ps(L.lane_group,
                                   _mm512_castps256_ps512(_mm256_maskz_loadu_ps(m, static_cast<const float*>(scales) + i)));
  }
}

// The 64 code bytes of a block (wd) as its four vectors of bf16 weights, value(code) - zero through
// the table of its group.
inline void decode_codes(__m512i wd, __m512i table, __m512bh w[4]) {
  w[0] = (__m512bh)_mm512_permutexvar_epi16(wd, table);
  w[1] = (__m512bh)_mm512_permutexvar_epi16(_mm512_srli_epi16(wd, 4), table);
  w[2] = (__m512bh)_mm512_permutexvar_epi16(_mm512_srli_epi16(wd, 8), table);
  w[3] = (__m512bh)_mm512_permutexvar_epi16(_mm512_srli_epi16(wd, 12), table);
}

// The 64 code bytes at p, the last block's under its mask.
inline __m512i load_codes(const QuantRows& L, const uint8_t* p, bool tail) {
  return tail ? _mm512_maskz_loadu_epi8(L.tail_mask, p) : _mm512_loadu_si512(p);
}

// A block's 128 products with one row of x (its hi terms at xh, lo terms at xl) for each of R weight
// rows (w[r]: row r's block, decoded) as 16 lane partials each: the one sequence of vdpbf16ps every
// output goes through, on either path below. Two chains of four per row (the block's first and second
// halves), added at the end: one chain of eight waited out eight vdpbf16ps latencies a block, which the
// other chains of a tile did not fully hide (Zen 5, one thread: 2816 × 704 int4 at 4 rows of x 4.6 →
// 5.3 GB/s, docs/PERF.md). Each x vector is loaded once for all R rows and is dead after them: with
// the rows as the outer loop, the compiler kept a whole tile's x vectors live across the rows (32 at
// 4 rows of x) and spilled them to the stack.
template <int R>
inline void block_dots(const __m512bh (*w)[4], const uint16_t* xh, const uint16_t* xl, __m512 (&out)[R]) {
  __m512 a[R], b[R];
  auto step = [&](__m512* c, int i, const uint16_t* x, bool first) __attribute__((always_inline)) {
    const __m512bh xv = load_bh(x);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) c[r] = _mm512_dpbf16_ps(first ? _mm512_setzero_ps() : c[r], w[r][i], xv);
  };
  step(a, 0, xh, true), step(b, 2, xh + 64, true);
  step(a, 0, xl, false), step(b, 2, xl + 64, false);
  step(a, 1, xh + 32, false), step(b, 3, xh + 96, false);
  step(a, 1, xl + 32, false), step(b, 3, xl + 96, false);
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) out[r] = _mm512_add_ps(a[r], b[r]);
}

// A row's last block when it holds at most 64 codes (K ≡ 1..64 mod 128: an expert's down rows at K =
// 704, a dense down's at 2112), against one row of x: block_dots<1> on 256-bit vectors. Its codes fill
// words 0..15 of the block, so every weight vector and x vector is zero in its upper half and
// block_dots' lanes 8..15 sum +0 (each chain starts from +0, and +0 + ±0 is +0); lanes 0..7 go through
// the same vdpbf16ps in the same order on 256-bit vectors, so the result has the same bits, at half the
// cost on a core that runs 512-bit vectors as two halves (Zen 4).
inline __m512 half_block_dot(const QuantRows& L, const uint8_t* p, __m512i table, const uint16_t* xh,
                             const uint16_t* xl) {
  const __m256i wd = _mm256_maskz_loadu_epi8(static_cast<__mmask32>(L.tail_mask), p);
  const __m256i t = _mm512_castsi512_si256(table);  // vpermw on 16 words reads the code's 4 bits
  const __m256bh w0 = (__m256bh)_mm256_permutexvar_epi16(wd, t);
  const __m256bh w1 = (__m256bh)_mm256_permutexvar_epi16(_mm256_srli_epi16(wd, 4), t);
  const __m256bh w2 = (__m256bh)_mm256_permutexvar_epi16(_mm256_srli_epi16(wd, 8), t);
  const __m256bh w3 = (__m256bh)_mm256_permutexvar_epi16(_mm256_srli_epi16(wd, 12), t);
  auto x = [](const uint16_t* q) { return (__m256bh)_mm256_loadu_si256(reinterpret_cast<const __m256i*>(q)); };
  __m256 a = _mm256_dpbf16_ps(_mm256_setzero_ps(), w0, x(xh));
  __m256 b = _mm256_dpbf16_ps(_mm256_setzero_ps(), w2, x(xh + 64));
  a = _mm256_dpbf16_ps(a, w0, x(xl)), b = _mm256_dpbf16_ps(b, w2, x(xl + 64));
  a = _mm256_dpbf16_ps(a, w1, x(xh + 32)), b = _mm256_dpbf16_ps(b, w3, x(xh + 96));
  a = _mm256_dpbf16_ps(a, w1, x(xl + 32)), b = _mm256_dpbf16_ps(b, w3, x(xl + 96));
  return _mm512_zextps256_ps512(_mm256_add_ps(a, b));
}

// The table of value(c) - zero of group g of a row (its zeros, or none).
template <QuantCode C>
inline __m512i group_table(const uint8_t* zeros, int64_t g) {
  return nibble_table<C>(zeros ? zeros[g] : quant_default_zero(C));
}

// The zeros of row `row` (nullptr without zeros).
inline const uint8_t* row_zeros(const QuantRows& L, int64_t row) {
  const uint8_t* zeros = static_cast<const uint8_t*>(L.q.zeros.data);
  return zeros ? zeros + row * L.n_groups : nullptr;
}

// y[t·ldy + r] = Σ_j W[n + r, j] · x[t][j] for r < R, t < TT; xs as split_x_bf16_quant writes it.
template <QuantCode C, int R, int TT>
inline void tile_quant(const MatmulArgs& a, const QuantRows& L, int64_t n, const uint16_t* xs, float* y) {
  const QuantParams& q = L.q;
  const int64_t Kp = L.Kp, row_bytes = L.row_bytes, n_groups = L.n_groups, lds = L.lds;
  const uint8_t* w = static_cast<const uint8_t*>(a.w) + n * row_bytes;
  constexpr bool kFar = R > 1 && TT == 1;  // the far fetch for row pairs at one row of x (matmul.h)
  const int64_t ahead = kFar ? L.far_ahead : kPrefetchBytes;
  // The scales are a second stream, a few lines per row that the weight rows' prefetch does not
  // cover: fetch those of a row about as far ahead as the codes.
  const uintptr_t scales_ahead = reinterpret_cast<uintptr_t>(q.scales.data) + (n + R + L.rows_ahead[kFar]) * L.scale_row_bytes;
  for (int64_t b = 0; b < R * L.scale_row_bytes; b += 64) prefetch_weight_line<kFar>(reinterpret_cast<const char*>(scales_ahead + b));
  thread_local std::vector<float> scale_buf;  // several rows of x: block_scales from row_scales' f32
  if constexpr (TT > 1) {
    if (static_cast<int64_t>(scale_buf.size()) < R * lds) scale_buf.resize(R * lds);
    for (int r = 0; r < R; ++r) row_scales(q, n + r, n_groups, scale_buf.data() + r * lds);
  }
  const uint8_t* zeros = static_cast<const uint8_t*>(q.zeros.data);
  __m512i table[R];
  int64_t table_group[R];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) table[r] = group_table<C>(row_zeros(L, n + r), 0), table_group[r] = 0;
  __m512 acc[R][TT];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int t = 0; t < TT; ++t) acc[r][t] = _mm512_setzero_ps();

  // Block u of the tile's rows; tail: the row's last, partial block; HALF: a tail of at most 64 codes
  // at one row of x (half_block_dot).
  auto block = [&]<bool HALF = false>(int64_t u, bool tail) __attribute__((always_inline)) {
    const int64_t k = u * kBlockCodes, g = k >> L.g_shift;
    __m512 sv[R];
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      if constexpr (TT == 1) sv[r] = stored_block_scales(L, n + r, g);
      else sv[r] = block_scales(L, scale_buf.data() + r * lds, g);
    }
    __m512bh wv[R][4];
    // Row r's block (its far line fetched, its group's table current).
    auto row_block = [&](int r) __attribute__((always_inline)) {
      const uint8_t* wr = w + r * row_bytes + u * kBlockBytes;
      prefetch_weight_line<kFar>(wr + ahead);
      if (zeros && g != table_group[r]) table[r] = group_table<C>(row_zeros(L, n + r), g), table_group[r] = g;
      return wr;
    };
    auto decode_row = [&](int r) __attribute__((always_inline)) {
      const uint8_t* wr = row_block(r);  // before table[r] is read: row_block may replace it
      decode_codes(load_codes(L, wr, tail), table[r], wv[r]);
    };
    if constexpr (TT == 1) {
      // One row of x: each weight row's dots right after its decode (the rows' chains interleaved by
      // block_dots<R> ran 10-20 % slower at 2816 × 2816 on Zen 5).
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) {
        __m512 dot[1];
        if constexpr (HALF) {
          const uint8_t* wr = row_block(r);
          dot[0] = half_block_dot(L, wr, table[r], xs + k, xs + k + Kp);
        } else {
          decode_row(r);
          block_dots<1>(wv + r, xs + k, xs + k + Kp, dot);
        }
        acc[r][0] = _mm512_fmadd_ps(dot[0], sv[r], acc[r][0]);
      }
    } else {
      // Several: every weight row decoded, then each row of x against all of them, its vectors loaded
      // once (Zen 5, 4 rows of x: 1.3-1.6x the rate of the rows-outer order, which spilled them).
#pragma GCC unroll 16
      for (int r = 0; r < R; ++r) decode_row(r);
#pragma GCC unroll 16
      for (int t = 0; t < TT; ++t) {
        const uint16_t* xh = xs + t * a.ldxs + k;
        __m512 dot[R];
        block_dots<R>(wv, xh, xh + Kp, dot);
#pragma GCC unroll 16
        for (int r = 0; r < R; ++r) acc[r][t] = _mm512_fmadd_ps(dot[r], sv[r], acc[r][t]);
      }
    }
  };
  int64_t u = 0;
  for (; u + 1 < L.blocks; ++u) block(u, false);
  if constexpr (TT == 1) {
    if (L.tail_bytes <= kBlockBytes / 2) block.template operator()<true>(u, true);
    else block(u, L.tail_bytes < kBlockBytes);
  } else {
    block(u, L.tail_bytes < kBlockBytes);
  }
  for (int r = 0; r < R; ++r)
    for (int t = 0; t < TT; ++t) y[t * a.ldy + r] = _mm512_reduce_add_ps(acc[r][t]);
}

template <QuantCode C, int R, int TT>
inline void tile_quant_fit(const MatmulArgs& a, const QuantRows& L, int64_t n, const uint16_t* xs, float* y) {
  if constexpr (TT > 1 && R * TT > kMaxQuantAcc) {
    constexpr int kHead = TT / 2;
    tile_quant_fit<C, R, kHead>(a, L, n, xs, y);
    tile_quant_fit<C, R, TT - kHead>(a, L, n, xs + kHead * a.ldxs, y + kHead * a.ldy);
  } else {
    tile_quant<C, R, TT>(a, L, n, xs, y);
  }
}

template <QuantCode C, int R>
void rows_block_quant(const MatmulArgs& a, const QuantRows& L, int64_t n, int64_t t0, int64_t t1) {
  int64_t t = t0;
  for (; t + 4 <= t1; t += 4) tile_quant_fit<C, R, 4>(a, L, n, a.xs + t * a.ldxs, a.y + t * a.ldy + n);
  const uint16_t* xs = a.xs + t * a.ldxs;
  float* y = a.y + t * a.ldy + n;
  switch (t1 - t) {
    case 3: tile_quant_fit<C, R, 3>(a, L, n, xs, y); break;
    case 2: tile_quant_fit<C, R, 2>(a, L, n, xs, y); break;
    case 1: tile_quant_fit<C, R, 1>(a, L, n, xs, y); break;
    default: break;
  }
}

// --- Many rows of x (prefill, verify blocks of several sequences): a tile of weight rows is decoded
// once into its bf16 vectors and lane scales, and every row of x is dotted with those, instead of
// decoding the tile again for every four rows of x (a load, three shifts and four vpermw per block and
// weight row, against eight vdpbf16ps per block and row of x). Each output goes through the very
// operations of tile_quant (block_dots, then one FMA by its scales, block after block; its accumulator
// waits in memory between chunks of blocks), so its bits do not depend on which path its batch took.

// Plain words, stored and loaded with unaligned moves (the buffer is 64-byte aligned by hand).
struct DecodedBlock {
  uint16_t w[4][32];
  float s[16];
};

// Rows of x from which the decoded path is taken; each row of x is dotted with all kDecodedRows
// (matmul.h) decoded weight rows, one load of x for them all.
constexpr int64_t kDecodedMinRows = 16;

// Blocks [u0, u1) of rows [n, n + R) of the weight, decoded: out[r · (u1 - u0) + u - u0] is block u
// of row n + r.
template <QuantCode C>
void decode_rows(const MatmulArgs& a, const QuantRows& L, int64_t n, int R, int64_t u0, int64_t u1, DecodedBlock* out) {
  thread_local std::vector<float> scale_buf;
  if (static_cast<int64_t>(scale_buf.size()) < L.lds) scale_buf.resize(L.lds);
  for (int r = 0; r < R; ++r) {
    const uint8_t* wr = static_cast<const uint8_t*>(a.w) + (n + r) * L.row_bytes;
    row_scales(L.q, n + r, L.n_groups, scale_buf.data());
    const uint8_t* zeros = row_zeros(L, n + r);
    int64_t table_group = (u0 * kBlockCodes) >> L.g_shift;
    __m512i table = group_table<C>(zeros, table_group);
    DecodedBlock* d = out + r * (u1 - u0) - u0;
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t g = (u * kBlockCodes) >> L.g_shift;
      if (zeros && g != table_group) table = group_table<C>(zeros, g), table_group = g;
      __m512bh wv[4];
      decode_codes(load_codes(L, wr + u * kBlockBytes, u + 1 == L.blocks && L.tail_bytes < kBlockBytes), table, wv);
      for (int i = 0; i < 4; ++i) _mm512_storeu_si512(d[u].w[i], (__m512i)wv[i]);
      _mm512_storeu_ps(d[u].s, block_scales(L, scale_buf.data(), g));
    }
  }
}

// One row of x (xh: its hi terms at the chunk's first block) against R decoded rows of `blocks`
// blocks: acc (R vectors) carried in from the previous chunk unless first, and stored for the next
// chunk unless last, when the sums go to y[0..R).
template <int R>
inline void row_decoded(const DecodedBlock* d, int64_t blocks, const uint16_t* xh, int64_t Kp, float* acc, bool first,
                        bool last, float* y) {
  __m512 sum[R];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) sum[r] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(acc + 16 * r);
  for (int64_t u = 0; u < blocks; ++u, xh += kBlockCodes) {
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const DecodedBlock& b = d[r * blocks + u];
      const __m512bh wv[1][4] = {{load_bh(b.w[0]), load_bh(b.w[1]), load_bh(b.w[2]), load_bh(b.w[3])}};
      __m512 dot[1];
      block_dots<1>(wv, xh, xh + Kp, dot);
      sum[r] = _mm512_fmadd_ps(dot[0], _mm512_loadu_ps(b.s), sum[r]);
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
    if (last) y[r] = _mm512_reduce_add_ps(sum[r]);
    else _mm512_storeu_ps(acc + 16 * r, sum[r]);
  }
}

// Rows [n, n + R) of the weight against rows [t0, t1) of x, a chunk of blocks at a time.
template <QuantCode C, int R>
void rows_decoded(const MatmulArgs& a, const QuantRows& L, int64_t n, int64_t t0, int64_t t1, DecodedBlock* d,
                  float* acc) {
  const int64_t chunk = std::max<int64_t>(1, kDecodedChunkBytes / (R * static_cast<int64_t>(sizeof(DecodedBlock))));
  for (int64_t u0 = 0; u0 < L.blocks; u0 += chunk) {
    const int64_t u1 = std::min(L.blocks, u0 + chunk);
    decode_rows<C>(a, L, n, R, u0, u1, d);
    for (int64_t t = t0; t < t1; ++t)
      row_decoded<R>(d, u1 - u0, a.xs + t * a.ldxs + u0 * kBlockCodes, L.Kp, acc + (t - t0) * 16 * R, u0 == 0,
                     u1 == L.blocks, a.y + t * a.ldy + n);
  }
}

template <QuantCode C>
void matmul_decoded(const MatmulArgs& a, const QuantRows& L, int64_t n0, int64_t n1, int64_t t0, int64_t t1) {
  thread_local std::vector<uint8_t> raw;
  const int64_t chunk_bytes = std::max<int64_t>(kDecodedChunkBytes, kDecodedRows * sizeof(DecodedBlock));
  raw.resize(chunk_bytes + (t1 - t0) * kDecodedRows * 64 + 64);
  uint8_t* base = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(raw.data()) + 63) & ~uintptr_t{63});
  DecodedBlock* d = reinterpret_cast<DecodedBlock*>(base);
  float* acc = reinterpret_cast<float*>(base + chunk_bytes);
  int64_t n = n0;
  for (; n + kDecodedRows <= n1; n += kDecodedRows) rows_decoded<C, kDecodedRows>(a, L, n, t0, t1, d, acc);
  for (; n < n1; ++n) rows_decoded<C, 1>(a, L, n, t0, t1, d, acc);
}

// Weight rows in pairs: the rows of x share each pair from L1, and a decode step (one row of x) reads
// each x vector once for both rows and has two independent chains of vdpbf16ps in flight (Zen 4, one
// thread, cache-resident: 1.14-1.19x the rate of one row at a time). An output's operations are the
// same in either tile.
template <QuantCode C>
void matmul_tile_quant(const MatmulArgs& a, int64_t n0, int64_t n1, int64_t t0, int64_t t1) {
  const QuantRows L(a);
  if (t1 - t0 >= kDecodedMinRows) return matmul_decoded<C>(a, L, n0, n1, t0, t1);
  int64_t n = n0;
  for (; n + 2 <= n1; n += 2) rows_block_quant<C, 2>(a, L, n, t0, t1);
  for (; n < n1; ++n) rows_block_quant<C, 1>(a, L, n, t0, t1);
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
  if (quant_code_bits(q.code) != 4) return false;
  if (G >= K) return true;
  if (!std::has_single_bit(static_cast<uint64_t>(G))) return false;
  return zeros ? G >= kBlockCodes : G >= 16;  // whole blocks per group, or whole lanes (8 codes) per group
}

void split_x_bf16_quant(const float* x, int64_t ldx, int64_t T, int64_t K, uint16_t* out) {
  const int64_t Kp = (K + kBlockCodes - 1) / kBlockCodes * kBlockCodes;
  for (int64_t t = 0; t < T; ++t) {
    const float* src = x + t * ldx;
    uint16_t* hi = out + t * 2 * Kp;
    uint16_t* lo = hi + Kp;
    for (int64_t k = 0; k < Kp; k += kBlockCodes) {
      alignas(64) float block[kBlockCodes];  // index ≡ 0, 1, 2, 3 (mod 4): the decode's order
      const int64_t n = std::min(kBlockCodes, K - k);
      for (int64_t i = 0; i < kBlockCodes; ++i) block[(i % 4) * 32 + i / 4] = i < n ? src[k + i] : 0.0f;
      for (int64_t i = 0; i < kBlockCodes; i += kLanes) split16(_mm512_load_ps(block + i), hi + k + i, lo + k + i);
    }
  }
}

// As matmul_tile: a decode step (one row of x) walks the weight rows one after another; more rows
// of x share each group of 4 weight rows from L1 (four rows of dot products in flight also hide the
// latency of vdpbf16ps, which bounds a single row at T = 2..4).
void matmul_tile_avx512_bf16(const MatmulArgs& a, int64_t n0, int64_t n1, int64_t t0, int64_t t1) {
  if (a.q)  // quant_uses_bf16: 4-bit codes only
    return a.q->code == QuantCode::kU4 ? matmul_tile_quant<QuantCode::kU4>(a, n0, n1, t0, t1)
                                       : matmul_tile_quant<QuantCode::kE2M1>(a, n0, n1, t0, t1);
  const uint16_t* w = static_cast<const uint16_t*>(a.w);
  int64_t n = n0;
  if (t1 - t0 > 1)
    for (; n + 4 <= n1; n += 4) rows_block<4>(w + n * a.K, a, n, t0, t1);
  for (; n < n1; ++n) rows_block<1>(w + n * a.K, a, n, t0, t1);
}

}  // namespace tandem::cpu

#pragma GCC pop_options
