// Which SIMD kernel family the CPU backend runs. The binary's baseline is x86-64-v3 (AVX2 + FMA +
// F16C); AVX-512 kernels live in their own translation unit compiled for avx512f/bw/vl and are only
// called when the CPU reports those features at run time.
#pragma once
#include <string_view>

namespace tandem {

enum class CpuIsa {
  kAvx2,        // baseline: 8-lane f32 FMA, F16C
  kAvx512,      // 16-lane f32 FMA (avx512f + avx512bw + avx512vl)
  kAvx512Bf16,  // kAvx512, with BF16-weight and 4-bit quantized matmuls on vdpbf16ps over activations
                // split into two bf16 terms (avx512_bf16; matmul_avx512bf16.cc says how close to exact
                // that is)
};

std::string_view cpu_isa_name(CpuIsa isa);

// The best ISA this CPU supports.
CpuIsa cpu_best_isa();

// Whether the CPU has AVX512_BF16 (vdpbf16ps).
bool cpu_has_avx512_bf16();

// The ISA the kernels use now: the forced one if set, else $TANDEM_CPU_ISA ("avx2", "avx512" or
// "avx512-bf16") if set, else cpu_best_isa(). "avx2" and "avx512" compute every product exactly in f32.
CpuIsa cpu_isa();

// Forces the kernel family ("avx2", "avx512", "avx512-bf16"), or back to automatic with "". Fails
// with an Error if the CPU lacks the ISA or the name is unknown. Meant for tests and benchmarks; not
// thread-safe with concurrent backend calls.
void cpu_force_isa(std::string_view name);

}  // namespace tandem
