// AVX-512 (F/BW/VL) matmul kernels. Every header is included before the target pragma so that no
// inline function shared with other translation units gets compiled with AVX-512 instructions;
// everything after the pragma has internal linkage and only runs when cpu_isa() says kAvx512.
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "backend/cpu/matmul.h"
#include "util/half.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl")
// GCC 12 flags the deliberately undefined source operand inside its own AVX-512 widening intrinsics.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace tandem::cpu {
namespace {

struct V {
  using F = __m512;
  static constexpr int kLanes = 16;
  static constexpr int kMaxAcc = 16;  // 32 zmm registers: 16 accumulators + weights + x
  static F zero() { return _mm512_setzero_ps(); }
  static F fma(F a, F b, F c) { return _mm512_fmadd_ps(a, b, c); }
  static F add(F a, F b) { return _mm512_add_ps(a, b); }
  static float sum(F v) { return _mm512_reduce_add_ps(v); }
  static F load(const float* p) { return _mm512_loadu_ps(p); }
  static F load(const bf16_t* p) {  // bf16 is the top half of an f32: widen and shift
    const __m512i u = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return _mm512_castsi512_ps(_mm512_slli_epi32(u, 16));
  }
  static void load_bf16_pairs(const bf16_t* p, F& even, F& odd) {
    const __m512i v = _mm512_loadu_si512(p);
    even = _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));  // low half of each 32-bit lane
    odd = _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32(static_cast<int>(0xFFFF0000u))));
  }
  static F load(const f16_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static F load(const f8e4m3_t* p) {
    const __m512i idx = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return _mm512_i32gather_ps(idx, kF8E4M3ToF32.data(), 4);
  }
  using I = __m512i;
  static F set1(float v) { return _mm512_set1_ps(v); }
  static I nibbles(const uint8_t* p) {  // 8 bytes -> 16 codes, low nibble first
    const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)), m = _mm_set1_epi8(0x0F);
    const __m128i lo = _mm_and_si128(b, m), hi = _mm_and_si128(_mm_srli_epi16(b, 4), m);
    return _mm512_cvtepu8_epi32(_mm_unpacklo_epi8(lo, hi));
  }
  static I bytes(const uint8_t* p) { return _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static F cvt(I v) { return _mm512_cvtepi32_ps(v); }
  static I and_(I v, int m) { return _mm512_and_si512(v, _mm512_set1_epi32(m)); }
  static I shl(I v, int n) { return _mm512_slli_epi32(v, n); }
  static I shr(I v, int n) { return _mm512_srli_epi32(v, n); }
  static void store(float* p, F v) { _mm512_storeu_ps(p, v); }
  using Table = F;
  static Table scaled_table(const float* values, float s, float zs) { return fma(load(values), set1(s), set1(zs)); }
  static F lut(I idx, const Table& table) { return _mm512_permutexvar_ps(idx, table); }
  static I or_(I a, I b) { return _mm512_or_si512(a, b); }
  static F as_float(I v) { return _mm512_castsi512_ps(v); }
  static F mul(F a, F b) { return _mm512_mul_ps(a, b); }
  static F lut16(I idx, const float* table) { return _mm512_permutexvar_ps(idx, _mm512_loadu_ps(table)); }
};

#include "backend/cpu/matmul_kernels.h"

}  // namespace

void matmul_tile_avx512(const MatmulArgs& a, int64_t n0, int64_t n1, int64_t t0, int64_t t1) {
  matmul_tile_any(a, n0, n1, t0, t1);
}

}  // namespace tandem::cpu

#pragma GCC pop_options
