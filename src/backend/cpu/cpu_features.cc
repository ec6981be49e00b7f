#include "backend/cpu/cpu_features.h"

#include <cstdlib>
#include <optional>

#include "util/error.h"

namespace tandem {
namespace {

std::optional<CpuIsa> g_forced;

bool cpu_has_avx512() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl");
}

bool cpu_has_bf16() { return cpu_has_avx512() && __builtin_cpu_supports("avx512bf16"); }

CpuIsa parse_isa(std::string_view name) {
  if (name == "avx2") return CpuIsa::kAvx2;
  if (name == "avx512") {
    if (!cpu_has_avx512()) fail("CPU ISA 'avx512' requested but this CPU lacks AVX-512 F/BW/VL");
    return CpuIsa::kAvx512;
  }
  if (name == "avx512-bf16") {
    if (!cpu_has_bf16()) fail("CPU ISA 'avx512-bf16' requested but this CPU lacks AVX512_BF16");
    return CpuIsa::kAvx512Bf16;
  }
  fail("unknown CPU ISA '{}' (expected 'avx2', 'avx512' or 'avx512-bf16')", name);
}

}  // namespace

std::string_view cpu_isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::kAvx512: return "avx512";
    case CpuIsa::kAvx512Bf16: return "avx512-bf16";
    default: return "avx2";
  }
}

CpuIsa cpu_best_isa() {
  return cpu_has_bf16() ? CpuIsa::kAvx512Bf16 : cpu_has_avx512() ? CpuIsa::kAvx512 : CpuIsa::kAvx2;
}

bool cpu_has_avx512_bf16() { return cpu_has_bf16(); }

CpuIsa cpu_isa() {
  if (g_forced) return *g_forced;
  static const CpuIsa from_env = [] {
    const char* env = std::getenv("TANDEM_CPU_ISA");
    return env && *env ? parse_isa(env) : cpu_best_isa();
  }();
  return from_env;
}

void cpu_force_isa(std::string_view name) {
  if (name.empty()) g_forced.reset();
  else g_forced = parse_isa(name);
}

}  // namespace tandem
