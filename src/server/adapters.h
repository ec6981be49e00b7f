// The real implementations of the server's interfaces: an Engine running on its own thread and
// a Hugging Face tokenizer with the model's chat template.
#pragma once
#include <memory>
#include <optional>
#include <string>

#include "server/service.h"
#include "server/structured_output.h"
#include "tokenizer/chat_template.h"
#include "tokenizer/tokenizer.h"

namespace tandem::server {

class EngineService : public InferenceService {
 public:
  explicit EngineService(Engine& engine) : engine_(engine) {}
  uint64_t submit(Request request, OutputCallback callback) override {
    return engine_.submit(std::move(request), std::move(callback));
  }
  void abort(uint64_t id) override { engine_.abort(id); }
  EngineStats stats() const override { return engine_.stats(); }
  int max_model_len() const override { return engine_.config().max_model_len; }
  int num_speculative_tokens() const override { return engine_.config().num_speculative_tokens; }

 private:
  Engine& engine_;
};

class TokenizerCodec : public TextCodec {
 public:
  // `chat_template_source`: empty → the tokenizer's own template (may be none).
  explicit TokenizerCodec(Tokenizer tokenizer, std::string chat_template_source = {});

  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens) const override {
    return tokenizer_.encode(text, add_special_tokens);
  }
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens) const override {
    return tokenizer_.decode(ids, skip_special_tokens);
  }
  std::unique_ptr<IncrementalDecoder> stream_decoder(bool skip_special_tokens) const override;
  std::optional<int32_t> token_id(std::string_view token) const override { return tokenizer_.token_id(token); }
  std::vector<int32_t> eos_ids() const override { return model_eos_.empty() ? tokenizer_.eos_ids() : model_eos_; }
  int32_t vocab_size() const override { return tokenizer_.vocab_size(); }
  bool has_chat_template() const override { return template_.has_value(); }
  std::string render_chat(const nlohmann::json& variables) const override;
  std::string bos_token() const override { return tokenizer_.bos_token(); }
  std::string eos_token() const override { return tokenizer_.eos_token(); }
  std::string chat_template_source() const override { return template_ ? template_->source() : std::string(); }
  GrammarCompiler* grammar_compiler() const override { return grammar_.get(); }
  // The served model: its logits width and EOS ids (its config's eos_token_id, where the engine
  // stops; Gemma 4's include <turn|>, which the tokenizer files may not name). eos_ids() reports
  // them from then on, and structured outputs are turned on: grammars over that vocabulary with
  // those stop tokens (building the vocabulary tries takes well under a second for 262k tokens).
  void set_model(int32_t logits_width, std::vector<int32_t> eos_ids);

  const Tokenizer& tokenizer() const { return tokenizer_; }

 private:
  Tokenizer tokenizer_;
  std::optional<ChatTemplate> template_;
  std::vector<int32_t> model_eos_;
  std::unique_ptr<GrammarCompiler> grammar_;
};

}  // namespace tandem::server
