// The values of --load-format dummy weights, defined per element so every backend generates the
// same tensor (element i depends only on the seed and i): splitmix64 of (seed, i) → uniform in
// [center - half_width, center + half_width), rounded to bf16 (nearest even).
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define TANDEM_HOST_DEVICE __host__ __device__
#else
#define TANDEM_HOST_DEVICE
#endif

namespace tandem {

TANDEM_HOST_DEVICE inline uint16_t dummy_bf16(uint64_t seed, uint64_t i, float center, float half_width) {
  uint64_t z = seed + (i + 1) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  const float u = static_cast<float>(z >> 40) * (1.0f / 16777216.0f);  // [0, 1), exact in f32
  // One explicit fused multiply-add on both sides (2u - 1 is exact), so compilers cannot round differently.
#if defined(__CUDA_ARCH__)
  const float f = fmaf(half_width, 2.0f * u - 1.0f, center);
#else
  const float f = std::fma(half_width, 2.0f * u - 1.0f, center);
#endif
  uint32_t bits;
  __builtin_memcpy(&bits, &f, 4);
  bits += 0x7FFFu + ((bits >> 16) & 1u);  // round to nearest even (values are finite)
  return static_cast<uint16_t>(bits >> 16);
}

}  // namespace tandem
