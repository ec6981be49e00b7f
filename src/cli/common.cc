#include "cli/common.h"

#include <CLI/CLI.hpp>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "model/gemma4.h"
#include "util/error.h"
#include "util/log.h"

namespace tandem::cli {

static std::string models_root() {
  if (const char* env = std::getenv("TANDEM_MODELS_DIR")) return env;
  return (std::filesystem::path(TANDEM_SOURCE_DIR) / "models").string();
}

std::string bundled_model_dir() {
  const std::string dir = (std::filesystem::path(models_root()) / "tandem-code-demo").string();
  if (!std::filesystem::is_directory(dir))
    fail("no model given and the bundled default model is missing at {} (set TANDEM_MODELS_DIR or pass a model directory)",
         dir);
  return dir;
}

std::string bundled_drafter_dir() {
  return (std::filesystem::path(models_root()) / "tandem-code-demo-assistant").string();
}

std::vector<int32_t> parse_ids(const std::string& text) {
  std::vector<int32_t> ids;
  size_t i = 0;
  while (i < text.size()) {
    size_t end = text.find(',', i);
    if (end == std::string::npos) end = text.size();
    const std::string part = text.substr(i, end - i);
    try {
      size_t used = 0;
      const long v = std::stol(part, &used);
      if (used != part.size() || v < 0 || v > INT32_MAX) throw std::invalid_argument(part);
      ids.push_back(static_cast<int32_t>(v));
    } catch (const std::exception&) {
      fail("--ids: \"{}\" is not a token id (expected comma-separated non-negative integers)", part);
    }
    i = end + 1;
  }
  if (ids.empty()) fail("--ids is empty");
  return ids;
}

void QuantizationOptions::add_to(CLI::App& app) {
  app.add_option("--quantization,-q", method,
                 "Quantize a bf16 checkpoint's decoder-layer linears and MoE experts at load: none (as stored), "
                 "int4 or int8 (symmetric, group 128), fp8 (E4M3, per channel); refused for a quantized checkpoint")
      ->capture_default_str();
  app.add_flag("--quantize-lm-head", lm_head,
               "Give the head matmul a quantized copy of the (tied) head, in --quantization's format, or without "
               "one in int8 (symmetric, group 128), e.g. for a checkpoint quantized already; the embedding lookup "
               "keeps the bf16 table");
}

void BackendOptions::add_to(CLI::App& app, unsigned flags) {
  app.add_option("--device", device, "cpu, cuda, cuda:N or auto (cuda when a GPU is present)");
  app.add_option("--threads", threads, "CPU threads (0: all cores)")->check(CLI::NonNegativeNumber);
  if (flags & kEager)
    app.add_flag("--enforce-eager", enforce_eager, "Issue every op of every step instead of replaying recorded CUDA graphs");
  if (flags & kKvCacheDtype)
    app.add_option("--kv-cache-dtype", kv_cache_dtype, "auto (bf16 on GPUs, f32 on the CPU), bf16 or f32");
  if (flags & kTensorParallel)
    app.add_option("--tensor-parallel-size", tensor_parallel_size,
                   "Ranks to split the model across (vLLM's tensor parallelism); the CPU backend runs them as threads "
                   "of this process, each with --threads threads")
        ->check(CLI::PositiveNumber);
}

OnlineQuant QuantizationOptions::parse() const { return parse_online_quant(method, lm_head, "--quantization"); }

LoadFormat parse_load_format(const std::string& name) {
  if (name == "safetensors" || name == "auto") return LoadFormat::safetensors;
  if (name == "dummy") return LoadFormat::dummy;
  fail("--load-format must be safetensors or dummy, got \"{}\"", name);
}

DraftPosition parse_draft_position(const std::string& name) {
  if (name == "vllm") return DraftPosition::vllm;
  if (name == "hf") return DraftPosition::hf;
  fail("--draft-position must be vllm or hf, got \"{}\"", name);
}

// "123", "512MiB", "2GiB", "1.5G", "4096K" → bytes.
int64_t parse_bytes(const std::string& flag, const std::string& text) {
  size_t used = 0;
  double v = 0;
  try {
    v = std::stod(text, &used);
  } catch (const std::exception&) {
    fail("{}: \"{}\" is not a size (e.g. 536870912, 512MiB, 2GiB)", flag, text);
  }
  std::string unit = text.substr(used);
  for (auto& ch : unit) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  double mult = 1;
  if (unit.empty() || unit == "b") mult = 1;
  else if (unit == "k" || unit == "kb" || unit == "kib") mult = 1024.0;
  else if (unit == "m" || unit == "mb" || unit == "mib") mult = 1024.0 * 1024;
  else if (unit == "g" || unit == "gb" || unit == "gib") mult = 1024.0 * 1024 * 1024;
  else fail("{}: unknown unit \"{}\" in \"{}\" (use B, KiB, MiB or GiB)", flag, unit, text);
  if (!(v > 0) || !std::isfinite(v)) fail("{} must be positive, got \"{}\"", flag, text);
  return static_cast<int64_t>(v * mult);
}

int64_t mem_available_bytes() {
  std::ifstream f("/proc/meminfo");
  std::string key;
  int64_t kb = 0;
  std::string unit;
  while (f >> key >> kb >> unit)
    if (key == "MemAvailable:") return kb * 1024;
  return 0;
}

int64_t activation_bytes(const ModelConfig& c, int64_t tokens, int64_t outputs) {
  int64_t widest = 0;
  for (const LayerSpec& l : c.layers)
    widest = std::max<int64_t>(widest, std::max<int64_t>(2 * l.intermediate, int64_t{c.n_heads} * l.head_dim));
  const int64_t moe = c.moe ? 2 * int64_t{c.moe_intermediate} * c.top_k_experts + c.num_experts : 0;
  const int64_t per_row = 8 * int64_t{c.hidden} + 3 * widest + 2 * moe;
  return 4 * (tokens * per_row + 2 * outputs * int64_t{c.vocab_size}) + (512ll << 20);
}

int64_t step_logit_rows(int64_t max_num_batched_tokens, int64_t max_num_seqs, int k) {
  return std::min(max_num_batched_tokens, max_num_seqs * (k + 1));
}

int64_t vision_activation_bytes(const ModelConfig& c, int64_t soft_tokens, int64_t step_tokens) {
  const VisionConfig& v = *c.vision;
  const int64_t n = soft_tokens * v.pooling_kernel * v.pooling_kernel, padded = (v.head_dim + 31) / 32 * 32;
  const int64_t per_patch = 3LL * v.patch_size * v.patch_size + 9LL * v.hidden + 3LL * v.n_heads * v.head_dim +
                            4LL * v.n_heads * padded + 2LL * v.intermediate;
  return 4 * (n * per_patch + step_tokens * c.hidden);
}

DType parse_kv_cache_dtype(const std::string& text, const Backend& backend) {
  if (text == "auto") return backend.is_host() ? DType::F32 : DType::BF16;
  if (text == "bf16") return DType::BF16;
  if (text == "f32") return DType::F32;
  fail("--kv-cache-dtype must be auto, bf16 or f32, got \"{}\"", text);
}

std::unique_ptr<Backend> BackendOptions::make_backend() const {
  auto be = tandem::make_backend(device, threads);
  be->set_recording(!enforce_eager);
  log::info("backend: {}", be->name());
  return be;
}

std::vector<uint8_t> read_file_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail("cannot read {}", path);
  std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (f.bad()) fail("error reading {}", path);
  return bytes;
}

void apply_image_attention(const std::string& mode, Gemma4Model& model) {
  if (mode == "auto") return;
  if (mode != "sliding" && mode != "full" && mode != "all" && mode != "none")
    fail("--image-attention must be auto, sliding, full, all or none, got \"{}\"", mode);
  model.set_image_attention(mode == "sliding" || mode == "all", mode == "full" || mode == "all");
}

}  // namespace tandem::cli
