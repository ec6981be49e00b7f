// Shared helpers for the backend-op tests: seeded random tensors in every weight dtype, together with
// the exact values the stored bits decode to, so references can be computed in float64.
#pragma once
#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "backend/cpu/cpu_features.h"
#include "util/half.h"

namespace tandem::test {

class Rng {
 public:
  explicit Rng(uint64_t seed) : gen_(seed) {}
  float normal(float stddev = 1.0f) { return std::normal_distribution<float>(0.0f, stddev)(gen_); }
  float uniform(float lo, float hi) { return std::uniform_real_distribution<float>(lo, hi)(gen_); }
  int64_t index(int64_t n) { return std::uniform_int_distribution<int64_t>(0, n - 1)(gen_); }
  std::vector<float> normals(int64_t n, float stddev = 1.0f) {
    std::vector<float> v(n);
    for (float& f : v) f = normal(stddev);
    return v;
  }
  std::mt19937_64& gen() { return gen_; }

 private:
  std::mt19937_64 gen_;
};

// A tensor stored in some float dtype plus the exact f64 values of its elements.
struct Stored {
  DType dtype = DType::F32;
  std::vector<uint8_t> bytes;
  std::vector<double> values;
  TensorView view(std::initializer_list<int64_t> dims) { return TensorView(dtype, bytes.data(), dims); }
};

// n normal(0, stddev) values rounded to dtype (F8 values are drawn from its finite codes instead).
inline Stored make_stored(DType dtype, int64_t n, Rng& rng, float stddev = 1.0f) {
  Stored s;
  s.dtype = dtype;
  s.bytes.resize(n * dtype_size(dtype));
  s.values.resize(n);
  for (int64_t i = 0; i < n; ++i) {
    const float f = rng.normal(stddev);
    switch (dtype) {
      case DType::F32:
        std::memcpy(&s.bytes[i * 4], &f, 4);
        s.values[i] = f;
        break;
      case DType::BF16: {
        const uint16_t h = f32_to_bf16(f);
        std::memcpy(&s.bytes[i * 2], &h, 2);
        s.values[i] = bf16_to_f32(h);
        break;
      }
      case DType::F16: {
        const uint16_t h = _cvtss_sh(f, 0);
        std::memcpy(&s.bytes[i * 2], &h, 2);
        s.values[i] = f16_to_f32(h);
        break;
      }
      case DType::F8_E4M3: {
        uint8_t b;
        do b = static_cast<uint8_t>(rng.index(256));
        while ((b & 0x7F) == 0x7F || ((b >> 3) & 0xF) > 8);  // no NaN; |v| <= 2^2 keeps sums tame
        s.bytes[i] = b;
        s.values[i] = f8e4m3_to_f32(b);
        break;
      }
      default: std::abort();
    }
  }
  return s;
}

inline constexpr DType kWeightDtypes[] = {DType::F32, DType::BF16, DType::F16, DType::F8_E4M3};

// The kernel families this CPU can run; tests loop over all of them.
inline std::vector<std::string> available_isas() {
  std::vector<std::string> isas{"avx2"};
  if (cpu_best_isa() != CpuIsa::kAvx2) isas.push_back("avx512");
  if (cpu_has_avx512_bf16()) isas.push_back("avx512-bf16");
  return isas;
}

// Forces a kernel family for the scope of a test.
class ForceIsa {
 public:
  explicit ForceIsa(const std::string& isa) { cpu_force_isa(isa); }
  ~ForceIsa() { cpu_force_isa(""); }
};

// The CPU backend's exact kernels (every product in f32) for the scope of a test that uses the CPU as
// the reference for another backend: the best exact family, "avx512" where the default would be the
// approximate "avx512-bf16".
class ExactCpuKernels {
 public:
  ExactCpuKernels() : force_(cpu_best_isa() == CpuIsa::kAvx2 ? "avx2" : "avx512") {}

 private:
  ForceIsa force_;
};

}  // namespace tandem::test
