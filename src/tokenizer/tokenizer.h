// Hugging Face `tokenizer.json` tokenizers (BPE, byte-fallback or byte-level), producing the same
// ids as the HF `tokenizers` library. Supports the pipeline pieces used by Gemma, Llama 3 and
// Qwen 2/3 (see docs in tokenizer.cc); anything else fails at load time with a clear error.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace tandem {

class Tokenizer {
 public:
  // `path` is a tokenizer.json file or a directory containing one. tokenizer_config.json,
  // chat_template.jinja and generation_config.json next to it are read when present.
  // Throws tandem::Error naming the file and what is wrong.
  static Tokenizer load(const std::string& path);
  // Same, from the text of a tokenizer.json (config_json may be empty). `name` is used in errors.
  static Tokenizer from_json(std::string_view tokenizer_json, std::string_view config_json = {},
                             const std::string& name = "tokenizer.json");

  // Invalid UTF-8 in `text` is replaced by U+FFFD (per maximal invalid subpart) before encoding.
  std::vector<int32_t> encode(std::string_view text, bool add_special_tokens = true) const;
  // Ids outside the vocabulary are ignored, as HF does.
  std::string decode(std::span<const int32_t> ids, bool skip_special_tokens = false) const;

  std::string token_text(int32_t id) const;  // "" for an unknown id
  // The raw bytes token `id` contributes in the middle of a decoded text: byte-fallback tokens
  // are their byte, byte-level tokens their bytes, the Metaspace / Replace characters are
  // spaces; no UTF-8 validation (a token may hold part of a character). Special tokens: their
  // content. Start-of-text decoder steps (Strip, Metaspace's first-token rule) are not applied.
  // "" for an unknown id. Used by grammar-constrained decoding (src/grammar).
  std::string token_bytes(int32_t id) const;
  int32_t vocab_size() const;                // 1 + the largest id (model vocab and added tokens)
  std::optional<int32_t> token_id(std::string_view token) const;
  int32_t bos_id() const;                    // -1 if unknown
  std::vector<int32_t> eos_ids() const;      // eos_token, then generation_config eos ids; may be empty
  bool is_special(int32_t id) const;
  const std::string& chat_template() const;  // chat_template.jinja or tokenizer_config.json; "" if none
  std::string bos_token() const;
  std::string eos_token() const;
  bool add_bos_token() const;                // whether encode(add_special_tokens=true) prepends BOS

  struct Impl;

 private:
  std::shared_ptr<const Impl> impl_;
};

// Streaming detokenizer: feed ids one at a time; returns the newly completed text, never half a
// UTF-8 character. The concatenation of all push() results and flush() equals
// tokenizer.decode(all ids, skip_special).
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& tokenizer, bool skip_special = true);
  std::string push(int32_t id);
  std::string flush();  // emits whatever is held back (e.g. a trailing invalid byte as U+FFFD)

 private:
  std::string decode_window() const;
  const Tokenizer* tokenizer_;
  bool skip_special_;
  // Decodes always start with anchor_ (the ids up to the first emitted text), so decoders that
  // treat the first token specially (Metaspace, Strip) see the same first token as a full decode.
  std::vector<int32_t> anchor_;
  std::vector<int32_t> window_;  // ids since the last clean boundary
  size_t prefix_ids_ = 0;        // window_[0, prefix_ids_) decode to prefix_
  std::string prefix_;           // text of the window already emitted
};

}  // namespace tandem
