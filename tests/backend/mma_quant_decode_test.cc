// The quantized tensor-core path's register tricks (src/backend/cuda/mma_quant_decode.h), run on the
// host: every code word of every code type decodes to the exact bf16 values of value − zero (each
// pair holding the codes quant_pair_code names), for every zero point, and the block layout puts
// lane t's words side by side. The same functions run on the GPU (__host__ __device__), so this holds
// the bit tricks without a GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "backend/cpu/matmul.h"
#include "backend/cuda/mma_quant_decode.h"
#include "util/half.h"

namespace tandem::test {
namespace {

using cu::decode_word;
using cu::kQuantWordPairs;
using cu::quant_zero_key;

// The value of code j of word w (LSB first), as the CPU reference decodes it, minus zero z.
template <QuantCode CODE>
double reference(uint32_t w, int j, int z) {
  if constexpr (quant_code_bits(CODE) == 4) {
    const uint32_t n = (w >> (4 * j)) & 15;
    return CODE == QuantCode::kU4 ? static_cast<double>(n) - z : cpu::kE2M1ToF32[n];
  } else {
    const uint8_t b = static_cast<uint8_t>(w >> (8 * j));
    if (CODE == QuantCode::kU8) return static_cast<double>(b) - z;
    if ((b & 0x7F) == 0x7F) return b & 0x80 ? -480.0 : 480.0;  // the NaN codes, as the kernels read them
    return f8e4m3_to_f32(b);
  }
}

template <QuantCode CODE>
void check_word(uint32_t w, int z) {
  uint32_t pair[kQuantWordPairs<CODE>];
  decode_word<CODE>(w, quant_zero_key<CODE>(static_cast<uint32_t>(z)), pair);
  for (int i = 0; i < kQuantWordPairs<CODE>; ++i)
    for (int h = 0; h < 2; ++h) {
      const float got = bf16_to_f32(static_cast<uint16_t>(pair[i] >> (16 * h)));
      const int code = cu::quant_pair_code<CODE>(i, h);
      ASSERT_EQ(got, reference<CODE>(w, code, z))
          << "code type " << static_cast<int>(CODE) << " word " << std::hex << w << std::dec << " zero " << z
          << " code " << code;
    }
}

TEST(MmaQuantDecode, FourBitIntegerCodesEveryNibbleAndZero) {
  for (int z = 0; z < 16; ++z)
    for (uint32_t n = 0; n < 16; ++n)
      for (int pos = 0; pos < 8; ++pos) {
        // n at one position, its complement elsewhere: neighbours must not leak into a code.
        const uint32_t rest = (~n & 15u) * 0x11111111u;
        check_word<QuantCode::kU4>((rest & ~(15u << (4 * pos))) | (n << (4 * pos)), z);
      }
  check_word<QuantCode::kU4>(0x76543210u, 8);
  check_word<QuantCode::kU4>(0xFEDCBA98u, 8);
}

TEST(MmaQuantDecode, EightBitIntegerCodesEveryByteAndZero) {
  for (int z = 0; z < 256; z += 5)
    for (uint32_t b = 0; b < 256; ++b) {
      check_word<QuantCode::kU8>(b | (b ^ 0xFFu) << 8 | ((b * 7) & 0xFF) << 16 | (255 - b) << 24, z);
      check_word<QuantCode::kU8>((b << 24) | (b << 8), z);
    }
  check_word<QuantCode::kU8>(0x00FF00FFu, 255);
  check_word<QuantCode::kU8>(0xFF00FF00u, 0);
}

TEST(MmaQuantDecode, FloatCodesEveryValue) {
  for (uint32_t n = 0; n < 16; ++n)
    for (int pos = 0; pos < 8; ++pos)
      check_word<QuantCode::kE2M1>((0x9u * 0x11111111u & ~(15u << (4 * pos))) | (n << (4 * pos)), 0);
  for (uint32_t b = 0; b < 256; ++b)
    for (int pos = 0; pos < 4; ++pos) check_word<QuantCode::kF8E4M3>((0x38u * 0x01010101u & ~(255u << (8 * pos))) | (b << (8 * pos)), 0);
}

// In a block of nc chunks laid out by quant_block_slot, every word has one slot, and lane t's nc
// slots t · nc .. t · nc + nc − 1 hold word t of chunks 0 .. nc − 1 in chunk order.
TEST(MmaQuantDecode, BlockLayoutPutsLaneTWordTOfEveryChunkSideBySide) {
  for (int nc = 1; nc <= 4; ++nc) {
    std::vector<int> slot_of(4 * nc, -1);
    for (int jc = 0; jc < nc; ++jc)
      for (int w = 0; w < 4; ++w) {
        const int s = cu::quant_block_slot(jc, w, nc);
        ASSERT_TRUE(s >= 0 && s < 4 * nc && slot_of[s] < 0) << "nc " << nc << " chunk " << jc << " word " << w;
        slot_of[s] = 4 * jc + w;  // the word's place in the row as the checkpoint packs it
      }
    for (int t = 0; t < 4; ++t)
      for (int jc = 0; jc < nc; ++jc) EXPECT_EQ(slot_of[t * nc + jc], 4 * jc + t) << "nc " << nc << " lane " << t;
  }
}

// quant_divide against integer division for divisors of every kind (powers of two, 1, odd, a channel-wise
// group of a row's chunks, the largest) at dividends around each multiple of the divisor and up to 2^31 − 1.
TEST(MmaQuantDecode, DivisionByAMultiplyAndAShiftIsExact) {
  std::vector<uint32_t> divisors;
  for (uint32_t d = 1; d <= 300; ++d) divisors.push_back(d);
  for (uint32_t d : {352u, 704u, 1023u, 1025u, 65535u, 65536u, 65537u, 1000003u, 0x3FFFFFFFu, 0x40000000u,
                     0x40000001u, 0x7FFFFFFEu, 0x7FFFFFFFu})
    divisors.push_back(d);
  constexpr uint32_t kMax = 0x7FFFFFFFu;
  for (const uint32_t d : divisors) {
    const cu::QuantDivisor q = cu::quant_divisor(d);
    auto check = [&](uint64_t n) {
      if (n > kMax) return;
      ASSERT_EQ(cu::quant_divide(static_cast<uint32_t>(n), q), n / d) << n << " / " << d;
    };
    for (uint64_t n = 0; n < 4096; ++n) check(n);
    for (uint64_t k = 1; k <= kMax / d + 1; k = k < 64 ? k + 1 : k * 3 / 2)  // around multiples of d
      for (int64_t e = -2; e <= 2; ++e) check(k * d + e);
    for (uint64_t n = kMax - 4096; n <= kMax; ++n) check(n);
  }
}

}  // namespace
}  // namespace tandem::test
