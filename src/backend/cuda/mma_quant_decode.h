// Private to the CUDA backend: the register-level pieces of the quantized tensor-core path
// (mma_quant.cuh) that need no GPU, written once for the device and the host so that a plain C++
// unit test (tests/backend/mma_quant_decode_test.cc) checks the bit tricks on every code.
//
//   decode_word   one 32-bit word of a row's packed codes (8 four-bit or 4 eight-bit codes) to the
//                 bf16 pairs the MMA's A fragment takes: pair i holds codes quant_pair_code(i, 0)
//                 (low half) and quant_pair_code(i, 1) (high half) as value − zero. Every such value is exact in bf16: integer codes
//                 minus their zero are integers of magnitude at most 15 (4-bit) or 255 (8-bit, 8
//                 significant bits, bf16 has 8), E2M1 and E4M3 values have at most 2 and 4
//                 significant bits within bf16's exponent range. So a pair is just the top halves of
//                 exact f32 values, or built in bf16 directly, with no rounding anywhere.
//   quant_block_slot  where a block of a row's chunks keeps each word, so that each lane of an MMA
//                     quad loads its fragments' words with one load (mma_quant.cuh says why).
//   quant_divide  a chunk's scale group: division by a launch's constant as a multiply and a shift.
#pragma once
#include <bit>
#include <cstdint>
#include <cstring>

#include "backend/tensor.h"

#if defined(__CUDACC__)
#define TANDEM_QHD __host__ __device__ __forceinline__
#else
#define TANDEM_QHD inline
#endif
#if defined(__CUDA_ARCH__)
#define TANDEM_QUNROLL _Pragma("unroll")
#else
#define TANDEM_QUNROLL  // host code (the unit test) needs no unroll hint
#endif

namespace tandem {
namespace cu {

// The code (of the word's codes, LSB first) that half h (0: low, 1: high) of decode_word's pair i
// holds: codes i and i + 4 for four-bit integer codes, whose nibbles i and i + 4 sit 16 bits apart
// (one shift and one lop3 make a pair; the MMA's k labels are free, and x is paired the same way:
// mma_rows.cuh, split_x8), codes 2i and 2i + 1 for the others.
template <QuantCode CODE>
constexpr int quant_pair_code(int i, int h) {
  return CODE == QuantCode::kU4 ? i + 4 * h : 2 * i + h;
}

// (a & 0x000F000F) | c: the low nibble of each half, or-ed into c, in one lop3 (with c an immediate
// the compiler emits two logic instructions).
TANDEM_QHD uint32_t low_nibbles_or(uint32_t a, uint32_t c) {
#if defined(__CUDA_ARCH__)
  uint32_t d;
  asm("lop3.b32 %0, %1, 0x000F000F, %2, 0xEA;" : "=r"(d) : "r"(a), "r"(c));  // 0xEA: (a & b) | c
  return d;
#else
  return (a & 0x000F000Fu) | c;
#endif
}

// Codes per 32-bit word and bf16 pairs decode_word produces from one.
template <QuantCode CODE>
constexpr int kQuantWordCodes = quant_code_bits(CODE) == 4 ? 8 : 4;
template <QuantCode CODE>
constexpr int kQuantWordPairs = kQuantWordCodes<CODE> / 2;

// PTX prmt: result byte n is byte s[4n + 2 .. 4n] of the 8 bytes {b, a} (a the low word), or with
// bit 4n + 3 of s set that byte's sign bit copied into all 8 bits (prmt's default mode; CUDA's
// __byte_perm documents only the byte number, so the device path says prmt itself).
TANDEM_QHD uint32_t qperm(uint32_t a, uint32_t b, uint32_t s) {
#if defined(__CUDA_ARCH__)
  uint32_t d;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(s));
  return d;
#else
  const uint64_t v = (static_cast<uint64_t>(b) << 32) | a;
  uint32_t r = 0;
  for (int n = 0; n < 4; ++n) {
    const uint32_t sel = (s >> (4 * n)) & 15, byte = static_cast<uint32_t>(v >> (8 * (sel & 7))) & 0xFF;
    r |= (sel & 8 ? (byte & 0x80 ? 0xFFu : 0u) : byte) << (8 * n);
  }
  return r;
#endif
}

TANDEM_QHD float qfloat(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}
TANDEM_QHD uint32_t qbits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}

// Two exact f32 values as one bf16 pair (lo in the low half): their top halves.
TANDEM_QHD uint32_t bf16_pair_of_exact(float lo, float hi) { return qperm(qbits(lo), qbits(hi), 0x7632); }

// a · b + c on bf16 pairs, for operands whose results are exact in bf16 (fma.rn.bf16x2, which keeps
// subnormal operands: PTX has no flush-to-zero for bf16).
TANDEM_QHD uint32_t bf16x2_fma_exact(uint32_t a, uint32_t b, uint32_t c) {
#if defined(__CUDA_ARCH__)
  uint32_t d;
  asm("fma.rn.bf16x2 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  return d;
#else
  auto lo = [](uint32_t u) { return qfloat(u << 16); };
  auto hi = [](uint32_t u) { return qfloat(u & 0xFFFF0000u); };
  return bf16_pair_of_exact(lo(a) * lo(b) + lo(c), hi(a) * hi(b) + hi(c));
#endif
}

// a + b on bf16 pairs, for operands whose sums are exact in bf16 (a · 1 + b).
TANDEM_QHD uint32_t bf16x2_add_exact(uint32_t a, uint32_t b) { return bf16x2_fma_exact(a, 0x3F803F80u, b); }

// What decode_word takes away, for zero point z (the integer codes; the float codes have none): for
// 4-bit codes the bf16 pair (−(128 + z), −(128 + z)), which it adds, for 8-bit ones the f32 bits of
// 2^23 + z, which it subtracts. A constant for the default zero, one or and one multiply for another.
template <QuantCode CODE>
TANDEM_QHD uint32_t quant_zero_key(uint32_t z) {
  if constexpr (CODE == QuantCode::kU4) return (0xC300u | z) * 0x10001u;
  else if constexpr (CODE == QuantCode::kU8) return qbits(8388608.0f + static_cast<float>(z));
  else return 0;
}

template <QuantCode CODE>
TANDEM_QHD void decode_word(uint32_t w, uint32_t zero_key, uint32_t (&pair)[kQuantWordPairs<CODE>]) {
  if constexpr (CODE == QuantCode::kU4) {
    // Nibbles i and i + 4 of w are the low nibbles of the halves of w >> 4i; or-ed into bf16 0x4300
    // (128, whose last mantissa bit is 1) that is 128 + code per half; plus −(128 + z), exact.
    const uint32_t magic = 0x43004300u;
TANDEM_QUNROLL
    for (int i = 0; i < 4; ++i) pair[i] = bf16x2_add_exact(low_nibbles_or(w >> (4 * i), magic), zero_key);
  } else if constexpr (CODE == QuantCode::kU8) {
    // Byte b into f32 0x4B0000bb = 2^23 + b, minus 2^23 + z: b − z exactly.
    const float off = qfloat(zero_key);
TANDEM_QUNROLL
    for (int i = 0; i < 2; ++i) {
      const float lo = qfloat(qperm(w, 0x4B000000u, 0x7440u + 2 * i)) - off;
      const float hi = qfloat(qperm(w, 0x4B000000u, 0x7440u + 2 * i + 1)) - off;
      pair[i] = bf16_pair_of_exact(lo, hi);
    }
  } else if constexpr (CODE == QuantCode::kE2M1) {
    // s ee m → f32 bits 31 and 24..22, read as 2^(e − 127) · 1.m (or the subnormal m · 2^-127);
    // times 2^126 that is the E2M1 value.
    float v[8];
TANDEM_QUNROLL
    for (int j = 0; j < 8; ++j) {
      const uint32_t n = w >> (4 * j);
      v[j] = qfloat(((n & 8u) << 28) | ((n & 7u) << 22)) * 0x1p126f;
    }
TANDEM_QUNROLL
    for (int i = 0; i < 4; ++i) pair[i] = bf16_pair_of_exact(v[2 * i], v[2 * i + 1]);
  } else {
    // Bytes 2i and 2i + 1 (s eeee mmm) each into the low byte of a half, its sign copied into the
    // high byte (one prmt); shifted left 4 and masked, a half is s 0000 eeee mmm 0000: the bf16 of
    // 2^(e − 127) · 1.mmm (or the subnormal 0.mmm · 2^-126), and times 2^120 the E4M3 value, exact
    // (fma with −0, which keeps a zero's sign). The NaN codes, which quantizers never write, read ±480
    // as in weight_rows.cuh's e4m3_value and on the CPU.
TANDEM_QUNROLL
    for (int i = 0; i < 2; ++i) {
      const uint32_t h = qperm(w, 0, i == 0 ? 0x9180u : 0xB3A2u);
      pair[i] = bf16x2_fma_exact((h << 4) & 0x87F087F0u, 0x7B807B80u, 0x80008000u);
    }
  }
}

// Division by a divisor d (1 <= d < 2^31) fixed for a launch, as a multiply and a shift with no branch
// on d: n / d == (n · mul) >> shift for every n < 2^31 (quant_divide). For d = 2^p, (1, p); else, with
// l = ⌈log2 d⌉, mul = ⌈2^(31 + l) / d⌉ (under 2^32, since 2^(l − 1) < d) and shift 31 + l: the round-up
// method of Granlund and Montgomery for 31-bit dividends. The quantized kernels find a chunk's scale
// group with it, which a group of any size (a channel-wise group of K chunks too) needs.
struct QuantDivisor {
  uint32_t mul;
  int shift;
};

inline QuantDivisor quant_divisor(uint32_t d) {
  if ((d & (d - 1)) == 0) return {1u, std::countr_zero(d)};
  const int l = 32 - std::countl_zero(d - 1);
  return {static_cast<uint32_t>(((uint64_t{1} << (31 + l)) + d - 1) / d), 31 + l};
}

TANDEM_QHD uint32_t quant_divide(uint32_t n, QuantDivisor d) {
  return static_cast<uint32_t>((static_cast<uint64_t>(n) * d.mul) >> d.shift);
}

// The block layout (CudaBackend::prepare_quant): a row's codes come in blocks of 4 chunks of 16
// bytes (the last block of a row may hold nc < 4), and an MMA step needs lane t of a quad to hold
// word t of one chunk. So within each block, word w of chunk jc is stored at word slot
// quant_block_slot(jc, w, nc) = nc · w + jc of the block: lane t's words, word t of chunks 0 .. nc − 1,
// lie side by side (one 16-byte load in a whole block), and a row keeps its length.
TANDEM_QHD int quant_block_slot(int jc, int w, int nc) { return nc * w + jc; }

}  // namespace cu
}  // namespace tandem
