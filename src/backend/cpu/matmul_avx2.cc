// AVX2 + FMA + F16C matmul kernels (the binary's baseline ISA, so no target pragma is needed).
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "backend/cpu/matmul.h"
#include "util/half.h"

namespace tandem::cpu {
namespace {

struct V {
  using F = __m256;
  static constexpr int kLanes = 8;
  static constexpr int kMaxAcc = 8;  // 16 ymm registers: 8 accumulators + weights + x
  static F zero() { return _mm256_setzero_ps(); }
  static F fma(F a, F b, F c) { return _mm256_fmadd_ps(a, b, c); }
  static F add(F a, F b) { return _mm256_add_ps(a, b); }
  static float sum(F v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
  }
  static F load(const float* p) { return _mm256_loadu_ps(p); }
  static F load(const bf16_t* p) {  // bf16 is the top half of an f32: widen and shift
    const __m256i u = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm256_castsi256_ps(_mm256_slli_epi32(u, 16));
  }
  static void load_bf16_pairs(const bf16_t* p, F& even, F& odd) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    even = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));  // low half of each 32-bit lane
    odd = _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32(static_cast<int>(0xFFFF0000u))));
  }
  static F load(const f16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static F load(const f8e4m3_t* p) {
    const __m256i idx = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
    return _mm256_i32gather_ps(kF8E4M3ToF32.data(), idx, 4);
  }
  using I = __m256i;
  static F set1(float v) { return _mm256_set1_ps(v); }
  static I nibbles(const uint8_t* p) {  // 4 bytes -> 8 codes, low nibble first
    int32_t word;
    std::memcpy(&word, p, 4);
    const __m128i b = _mm_cvtsi32_si128(word), m = _mm_set1_epi8(0x0F);
    const __m128i lo = _mm_and_si128(b, m), hi = _mm_and_si128(_mm_srli_epi16(b, 4), m);
    return _mm256_cvtepu8_epi32(_mm_unpacklo_epi8(lo, hi));
  }
  static I bytes(const uint8_t* p) { return _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))); }
  static F cvt(I v) { return _mm256_cvtepi32_ps(v); }
  static I and_(I v, int m) { return _mm256_and_si256(v, _mm256_set1_epi32(m)); }
  static I shl(I v, int n) { return _mm256_slli_epi32(v, n); }
  static I shr(I v, int n) { return _mm256_srli_epi32(v, n); }
  static void store(float* p, F v) { _mm256_storeu_ps(p, v); }
  static I or_(I a, I b) { return _mm256_or_si256(a, b); }
  static F as_float(I v) { return _mm256_castsi256_ps(v); }
  static F mul(F a, F b) { return _mm256_mul_ps(a, b); }
  struct Table {
    F lo, hi;  // entries 0..7 and 8..15
  };
  static Table scaled_table(const float* values, float s, float zs) {
    return {fma(load(values), set1(s), set1(zs)), fma(load(values + 8), set1(s), set1(zs))};
  }
  // table[idx & 15]: each half permuted by the index's low 3 bits, bit 3 (moved to the sign) picks the half.
  static F lut(I idx, const Table& table) {
    const F lo = _mm256_permutevar8x32_ps(table.lo, idx), hi = _mm256_permutevar8x32_ps(table.hi, idx);
    return _mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
  }
  static F lut16(I idx, const float* table) { return lut(idx, Table{load(table), load(table + 8)}); }
};

#include "backend/cpu/matmul_kernels.h"

}  // namespace

void matmul_tile_avx2(const MatmulArgs& a, int64_t n0, int64_t n1, int64_t t0, int64_t t1) {
  matmul_tile_any(a, n0, n1, t0, t1);
}

}  // namespace tandem::cpu
