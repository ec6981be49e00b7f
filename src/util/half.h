// bf16 / f16 / f8-e4m3 <-> f32 scalar conversions (g++ 12 has no std::bfloat16_t; stored as uint16_t).
#pragma once
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

}  // namespace tandem
