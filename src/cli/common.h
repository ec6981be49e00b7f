// Helpers shared by the CLI subcommands.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "model/gemma4_assistant.h"
#include "model/weights.h"

namespace tandem::cli {

// The bundled default model and its drafter (models/ in the source tree, or $TANDEM_MODELS_DIR).
std::string bundled_model_dir();
std::string bundled_drafter_dir();

// "2,17,99" -> {2, 17, 99}; throws tandem::Error on anything else.
std::vector<int32_t> parse_ids(const std::string& text);

// "safetensors" | "dummy"; "vllm" | "hf".
LoadFormat parse_load_format(const std::string& name);
DraftPosition parse_draft_position(const std::string& name);

// A CPU backend with `threads` threads (0: all cores), logged once.
std::unique_ptr<Backend> make_backend(int threads);

}  // namespace tandem::cli
