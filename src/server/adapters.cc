#include "server/adapters.h"

namespace tandem::server {
namespace {

class StreamDecoderAdapter : public IncrementalDecoder {
 public:
  StreamDecoderAdapter(const Tokenizer& t, bool skip) : decoder_(t, skip) {}
  std::string push(int32_t id) override { return decoder_.push(id); }
  std::string flush() override { return decoder_.flush(); }

 private:
  StreamDecoder decoder_;
};

}  // namespace

TokenizerCodec::TokenizerCodec(Tokenizer tokenizer, std::string source) : tokenizer_(std::move(tokenizer)) {
  if (source.empty()) source = tokenizer_.chat_template();
  if (!source.empty()) template_ = ChatTemplate::parse(std::move(source));
}

std::unique_ptr<IncrementalDecoder> TokenizerCodec::stream_decoder(bool skip_special_tokens) const {
  return std::make_unique<StreamDecoderAdapter>(tokenizer_, skip_special_tokens);
}

void TokenizerCodec::set_model(int32_t logits_width, std::vector<int32_t> eos_ids) {
  model_eos_ = eos_ids;
  grammar_ = GrammarCompiler::from_tokenizer(tokenizer_, logits_width, std::move(eos_ids));
}

std::string TokenizerCodec::render_chat(const nlohmann::json& variables) const {
  if (!template_) fail("this model has no chat template");
  nlohmann::json vars = variables;
  // transformers passes these as None when absent.
  if (!vars.contains("tools")) vars["tools"] = nullptr;
  if (!vars.contains("documents")) vars["documents"] = nullptr;
  return template_->render(vars);
}

}  // namespace tandem::server
