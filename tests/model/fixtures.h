// Shared helpers for tests that use the committed transformers fixtures (tests/fixtures/).
#pragma once
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "backend/cpu/cpu_features.h"
#include "engine/engine.h"
#include "io/safetensors.h"

namespace tandem::testing {

inline std::string fixtures_dir() { return std::string(TANDEM_SOURCE_DIR) + "/tests/fixtures"; }

// The backend model-level tests run on: TANDEM_TEST_DEVICE (cpu, cuda, cuda:N), default cpu, so the
// same golden, losslessness and engine tests run on the GPU through tools/gpu-check.sh.
inline std::string test_device() {
  const char* d = std::getenv("TANDEM_TEST_DEVICE");
  return d && *d ? d : "cpu";
}
inline std::unique_ptr<Backend> test_backend(int threads = 2) { return make_backend(test_device(), threads); }
inline bool testing_on_gpu() { return test_device() != "cpu"; }

// For its lifetime, the CPU backend computes every product exactly in f32 (the AVX-512 or AVX2
// kernels, not avx512-bf16's split activations): for tests whose claim is f32 exactness.
class ExactCpuKernels {
 public:
  ExactCpuKernels() { cpu_force_isa(cpu_best_isa() == CpuIsa::kAvx2 ? "avx2" : "avx512"); }
  ~ExactCpuKernels() { cpu_force_isa(""); }
  ExactCpuKernels(const ExactCpuKernels&) = delete;
  ExactCpuKernels& operator=(const ExactCpuKernels&) = delete;
};

// Target fixtures: directories with a golden.safetensors whose config is not an assistant.
inline std::vector<std::string> target_fixtures() {
  std::vector<std::string> out;
  if (!std::filesystem::exists(fixtures_dir())) return out;
  for (auto& e : std::filesystem::directory_iterator(fixtures_dir()))
    if (std::filesystem::exists(e.path() / "golden.safetensors") &&
        e.path().filename().string().find("assistant") == std::string::npos)
      out.push_back(e.path().string());
  std::sort(out.begin(), out.end());
  return out;
}

// Quantized target fixtures (tests/fixtures/quant/*, made by tools/make_quant_fixtures.py): empty
// when that directory has not been generated yet.
inline std::string quant_fixtures_dir() { return fixtures_dir() + "/quant"; }
inline std::vector<std::string> quant_fixtures() {
  std::vector<std::string> out;
  if (!std::filesystem::exists(quant_fixtures_dir())) return out;
  for (auto& e : std::filesystem::directory_iterator(quant_fixtures_dir()))
    if (std::filesystem::exists(e.path() / "golden.safetensors")) out.push_back(e.path().string());
  std::sort(out.begin(), out.end());
  return out;
}

template <typename T>
std::vector<T> tensor_values(const WeightStore& store, const std::string& name) {
  const TensorInfo& t = store.get(name);
  const T* p = static_cast<const T*>(t.data);
  return std::vector<T>(p, p + t.numel());
}

// ||a - b|| / ||b||
inline double relative_l2(const float* a, const float* b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    num += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    den += static_cast<double>(b[i]) * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

// Greedy generation of n tokens (EOS ignored) through the engine; k: per-request speculative
// tokens (-1: the engine's setting).
inline std::vector<int32_t> greedy_generate(Engine& engine, const std::vector<int32_t>& prompt, int n, int k = -1) {
  Request r;
  r.prompt = prompt;
  r.max_tokens = n;
  r.ignore_eos = true;
  r.sampling.temperature = 0;
  r.num_speculative_tokens = k;
  std::vector<int32_t> out;
  engine.submit(r, [&](const RequestOutput& o) { out.insert(out.end(), o.tokens.begin(), o.tokens.end()); });
  engine.run_until_idle();
  return out;
}

// A tensor to write into a test checkpoint.
struct OutTensor {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::string bytes;
};

inline void write_safetensors(const std::filesystem::path& path, const std::vector<OutTensor>& tensors) {
  nlohmann::json header = nlohmann::json::object();
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    header[t.name] = {{"dtype", std::string(dtype_name(t.dtype))}, {"shape", t.shape}, {"data_offsets", {offset, offset + t.bytes.size()}}};
    offset += t.bytes.size();
  }
  const std::string h = header.dump();
  const uint64_t n = h.size();
  std::ofstream out(path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(&n), 8);
  out << h;
  for (const auto& t : tensors) out << t.bytes;
}

// Runs a shell command, returning its exit status and stdout+stderr.
inline int run_command(const std::string& cmd, std::string* output) {
  FILE* f = popen((cmd + " 2>&1").c_str(), "r");
  if (!f) return -1;
  char buf[4096];
  size_t n;
  output->clear();
  while ((n = fread(buf, 1, sizeof buf, f)) > 0) output->append(buf, n);
  const int status = pclose(f);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

}  // namespace tandem::testing
