// Helpers shared by the CLI subcommands.
#pragma once
#include <cstdint>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "model/gemma4_assistant.h"
#include "model/weights.h"
#include "util/error.h"

namespace CLI {
class App;
}
namespace tandem {
class Gemma4Model;
}

namespace tandem::cli {

// The bundled default model and its drafter (models/ in the source tree, or $TANDEM_MODELS_DIR).
std::string bundled_model_dir();
std::string bundled_drafter_dir();

// "2,17,99" -> {2, 17, 99}; throws tandem::Error on anything else.
std::vector<int32_t> parse_ids(const std::string& text);

// --quantization none|int4|int8|fp8 and --quantize-lm-head, shared by every command that loads a
// model: a bf16 checkpoint's linears quantized at load (docs/DESIGN.md, "Online quantization").
struct QuantizationOptions {
  std::string method = "none";
  bool lm_head = false;
  void add_to(CLI::App& app);
  OnlineQuant parse() const;
};

// "safetensors" | "dummy"; "vllm" | "hf".
LoadFormat parse_load_format(const std::string& name);
DraftPosition parse_draft_position(const std::string& name);

// The --jsonl input of tokenize / detokenize / chat-template: calls fn(value, line_number) for each
// non-blank stdin line parsed as Json (nlohmann::json, or ordered_json to keep key order); a line that
// is not JSON fails naming its number.
template <typename Json = nlohmann::json, typename F>
void for_each_stdin_json(F&& fn) {
  std::string line;
  size_t lineno = 0;
  while (std::getline(std::cin, line)) {
    ++lineno;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    Json value;
    try {
      value = Json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      fail("stdin line {}: not valid JSON ({})", lineno, e.what());
    }
    fn(value, lineno);
  }
}

// "123", "512MiB", "2GiB", "1.5G", "4096K" -> bytes; errors name `flag`.
int64_t parse_bytes(const std::string& flag, const std::string& text);
// MemAvailable of /proc/meminfo (0 if unknown).
int64_t mem_available_bytes();

// Backend memory the activations of a step of `tokens` rows with `outputs` output rows take (the
// model's scratch, logits and the drafter's, and 512 MiB for the backend's own workspaces): what serve
// keeps out of the KV cache on a GPU, and what `tandem plan --device cuda` counts.
int64_t activation_bytes(const ModelConfig& c, int64_t tokens, int64_t outputs);
// The output rows of the largest step serve sizes for: up to max_num_seqs verify blocks of k + 1 rows,
// at most max_num_batched_tokens.
int64_t step_logit_rows(int64_t max_num_batched_tokens, int64_t max_num_seqs, int k);
// Backend memory the vision tower needs besides its weights: the activations of encoding one image
// of `soft_tokens` (pool² · soft_tokens patches; q, k, v, attention, MLP and residual buffers, the
// heads padded to a multiple of 32 for the CUDA kernel) and the encoder cache (a step's rows of
// features).
int64_t vision_activation_bytes(const ModelConfig& c, int64_t soft_tokens, int64_t step_tokens);

// The bytes of a file; throws tandem::Error naming it when it cannot be read.
std::vector<uint8_t> read_file_bytes(const std::string& path);

// --image-attention: which layer types let a row inside an image block see the rest of the block.
// "auto" keeps the model's (transformers') choice; "sliding", "full", "all" or "none" override it.
inline constexpr const char* kImageAttentionHelp =
    "Layer types whose image-block rows see their whole block: auto (as transformers: sliding layers when "
    "use_bidirectional_attention is \"vision\"), sliding, full, all or none";
void apply_image_attention(const std::string& mode, Gemma4Model& model);

// --kv-cache-dtype: "auto" (bf16 on GPUs; f32 on the CPU, where bf16 keys and values move logits by up
// to 1e-2 relative L2 from transformers, see docs/PERF.md), "bf16" or "f32".
DType parse_kv_cache_dtype(const std::string& text, const Backend& backend);

// The backend flags of the commands that run a model: --device and --threads always, and those of the
// `flags` a command has a use for (engine steps: all of them).
struct BackendOptions {
  std::string device = "auto";
  int threads = 0;
  bool enforce_eager = false;
  std::string kv_cache_dtype = "auto";
  int tensor_parallel_size = 1;
  enum Flags : unsigned { kEager = 1, kKvCacheDtype = 2, kTensorParallel = 4, kSteps = 7 };
  void add_to(CLI::App& app, unsigned flags);
  // The backend for --device (cpu, cuda, cuda:N, auto) with `threads` CPU threads (0: all cores), logged.
  std::unique_ptr<Backend> make_backend() const;
};

}  // namespace tandem::cli
