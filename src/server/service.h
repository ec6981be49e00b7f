// What the HTTP server needs from the rest of tandem, as two small interfaces: the engine side
// (submit / abort / stats) and the text side (tokenizer + chat template). The real implementations
// wrap Engine and Tokenizer (adapters.h); tests plug in fakes, so the whole HTTP layer can be
// exercised without a model.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "engine/engine.h"
#include "engine/request.h"

namespace tandem::server {

class GrammarCompiler;

class InferenceService {
 public:
  virtual ~InferenceService() = default;
  // Thread-safe. Throws tandem::Error for a request that can never run.
  virtual uint64_t submit(Request request, OutputCallback callback) = 0;
  virtual void abort(uint64_t id) = 0;
  virtual EngineStats stats() const = 0;
  virtual int max_model_len() const = 0;
  virtual int num_speculative_tokens() const = 0;  // configured k; 0 when speculation is off
};

// Incremental detokenizer: push() returns newly completed text (never half a UTF-8 character).
class IncrementalDecoder {
 public:
  virtual ~IncrementalDecoder() = default;
  virtual std::string push(int32_t id) = 0;
  virtual std::string flush() = 0;
};

class TextCodec {
 public:
  virtual ~TextCodec() = default;
  virtual std::vector<int32_t> encode(std::string_view text, bool add_special_tokens) const = 0;
  virtual std::string decode(std::span<const int32_t> ids, bool skip_special_tokens) const = 0;
  virtual std::unique_ptr<IncrementalDecoder> stream_decoder(bool skip_special_tokens) const = 0;
  virtual std::optional<int32_t> token_id(std::string_view token) const = 0;
  virtual std::vector<int32_t> eos_ids() const = 0;
  virtual int32_t vocab_size() const = 0;
  virtual bool has_chat_template() const = 0;
  // Renders the chat template with these variables (messages, add_generation_prompt, bos_token,
  // ...). Throws tandem::Error when the template fails (e.g. raise_exception in the template).
  virtual std::string render_chat(const nlohmann::json& variables) const = 0;
  virtual std::string bos_token() const = 0;
  virtual std::string eos_token() const = 0;
  // The chat template's source, when known: request handling reads from it how the template takes
  // tool results (a `tool_responses` list on a message, as Gemma 4's does).
  virtual std::string chat_template_source() const { return {}; }
  // Structured outputs: compiles output constraints over the model's vocabulary (server/
  // structured_output.h); null when the server has none, and constrained requests are refused.
  virtual GrammarCompiler* grammar_compiler() const { return nullptr; }
};

}  // namespace tandem::server
