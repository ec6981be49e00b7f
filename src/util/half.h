// bf16 / f16 / f8-e4m3 <-> f32 scalar conversions (g++ 12 has no std::bfloat16_t; stored as uint16_t).
#pragma once
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>

namespace tandem {

inline float bf16_to_f32(uint16_t h) { return std::bit_cast<float>(static_cast<uint32_t>(h) << 16); }

// Round to nearest even, as torch does when casting to bfloat16.
inline uint16_t f32_to_bf16(float f) {
  uint32_t u = std::bit_cast<uint32_t>(f);
  if (std::isnan(f)) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7FFF + ((u >> 16) & 1);
  return static_cast<uint16_t>(u >> 16);
}

inline float round_to_bf16(float f) { return bf16_to_f32(f32_to_bf16(f)); }

inline float f16_to_f32(uint16_t h) {
  const uint32_t sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1F, mant = h & 0x3FF;
  if (exp == 0) {  // zero / subnormal
    const float v = std::ldexp(static_cast<float>(mant), -24);
    return sign ? -v : v;
  }
  if (exp == 31) return std::bit_cast<float>(sign | 0x7F800000u | (mant << 13));
  return std::bit_cast<float>(sign | ((exp + 112) << 23) | (mant << 13));
}

// OCP FP8 E4M3 (finite only; 0x7F / 0xFF are NaN).
inline float f8e4m3_to_f32(uint8_t b) {
  const int sign = b >> 7, exp = (b >> 3) & 0xF, mant = b & 0x7;
  float v;
  if (exp == 0xF && mant == 0x7) return NAN;
  if (exp == 0) v = std::ldexp(static_cast<float>(mant), -9);
  else v = std::ldexp(1.0f + mant / 8.0f, exp - 7);
  return sign ? -v : v;
}

// f32 -> OCP FP8 E4M3, round to nearest even, saturating at ±448 (torch's float8_e4m3fn cast of a
// clamped value; E4M3 has no infinity). NaN stays NaN (0x7F).
inline uint8_t f32_to_f8e4m3(float f) {
  if (std::isnan(f)) return 0x7F;
  const uint8_t sign = std::signbit(f) ? 0x80 : 0;
  const float a = std::fabs(f);
  if (a >= 448.0f) return sign | 0x7E;
  if (a == 0.0f) return sign;
  int e;
  std::frexp(a, &e);  // a = m · 2^e, m in [0.5, 1): the leading bit is 2^(e-1)
  const int exp = std::max(e - 1, -6);  // below 2^-6: subnormals, spaced 2^-9
  const int q = static_cast<int>(std::nearbyint(std::ldexp(a, 3 - exp)));  // 8..16 (normal), 0..8 (subnormal)
  if (exp == -6 && q < 8) return sign | static_cast<uint8_t>(q);
  // q == 16 carries into the next binade; below 448 that never passes exponent 15, mantissa 6.
  const int biased = exp + 7 + (q >> 4), mant = q == 16 ? 0 : q - 8;
  return sign | static_cast<uint8_t>(biased << 3 | mant);
}

}  // namespace tandem
