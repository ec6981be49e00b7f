// libFuzzer target: the tokenizer.json loader on arbitrary bytes. Loading must either succeed or
// throw tandem::Error; a loaded tokenizer must encode and decode without crashing.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "tokenizer/tokenizer.h"
#include "util/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view input(reinterpret_cast<const char*>(data), size);
  // Optional split: bytes after the first NUL are a tokenizer_config.json.
  std::string_view config;
  if (size_t nul = input.find('\0'); nul != std::string_view::npos) {
    config = input.substr(nul + 1);
    input = input.substr(0, nul);
  }
  try {
    tandem::Tokenizer tok = tandem::Tokenizer::from_json(input, config, "fuzz.json");
    for (std::string_view text : {std::string_view("Hello, world! 123 <bos> \xC3\xA9\xF0\x9F\x98\x80"),
                                  std::string_view(" \n\t  x"), std::string_view("")}) {
      auto ids = tok.encode(text, true);
      (void)tok.decode(ids, false);
      (void)tok.decode(ids, true);
    }
    int32_t some[] = {0, 1, 2, 3, -1, tok.vocab_size(), tok.vocab_size() - 1};
    (void)tok.decode(some, false);
    tandem::StreamDecoder sd(tok);
    for (int32_t id : some) (void)sd.push(id);
    (void)sd.flush();
  } catch (const tandem::Error&) {
  }
  return 0;
}
