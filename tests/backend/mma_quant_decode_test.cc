// The quantized tensor-core path's register tricks (src/backend/cuda/mma_quant_decode.h), run on the
// host: every code word of every code type decodes to the exact bf16 values of value − zero (each
// pair holding the codes quant_pair_code names), for every zero point, and the quad transpose hands
// lane t word t of every lane's chunk. The same functions run on the GPU (__host__ __device__), so
// this holds the bit tricks without a GPU.
#include <gtest/gtest.h>

#include <cmath>

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

// One lane's side of a stage. Not inlined: g++ 12.2's loop vectorizer (-O2 -march=x86-64-v3)
// miscompiles the selects of the four-lane loops below when it sees them (clang and -O1 do not).
[[gnu::noinline]] void lane_pick(const uint32_t (&w)[4], int t, int m, uint32_t (&s)[2]) {
  cu::quad_pick(w, t, m, s[0], s[1]);
}
[[gnu::noinline]] void lane_put(uint32_t (&w)[4], int t, int m, const uint32_t (&r)[2]) {
  cu::quad_put(w, t, m, r[0], r[1]);
}

// Four lanes whose words are (chunk t, word i) = 16t + i end, after both stages, with lane t holding
// in slot j chunk j's word t: 16j + t.
TEST(MmaQuantDecode, QuadTransposeHandsLaneTWordTOfEveryChunk) {
  uint32_t w[4][4];
  for (int t = 0; t < 4; ++t)
    for (int i = 0; i < 4; ++i) w[t][i] = 16u * t + i;
  for (int m : {2, 1}) {
    uint32_t s[4][2];
    for (int t = 0; t < 4; ++t) lane_pick(w[t], t, m, s[t]);
    for (int t = 0; t < 4; ++t) lane_put(w[t], t, m, s[t ^ m]);  // what __shfl_xor_sync(·, m) delivers
  }
  for (int t = 0; t < 4; ++t)
    for (int j = 0; j < 4; ++j) EXPECT_EQ(w[t][j], 16u * j + t) << "lane " << t << " slot " << j;
}

}  // namespace
}  // namespace tandem::test
