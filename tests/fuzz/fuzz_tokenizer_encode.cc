// libFuzzer target: encode + decode of arbitrary bytes with small tokenizers built here, covering
// the Gemma-style (Replace normaliser, byte fallback), byte-level (Llama 3 / Qwen 2 regexes, NFC)
// and Metaspace pipelines, with added tokens using lstrip / rstrip / single_word.
// Invariants checked (abort on violation):
//   * byte-level tokenizers without a lossy normaliser round-trip: decode(encode(x)) == valid(x);
//   * StreamDecoder's concatenated output equals decode() of the same ids;
//   * every streamed chunk is valid UTF-8.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"

namespace {
using json = nlohmann::json;

std::string byte_symbol(int b) {
  static int map[256];
  static bool init = false;
  if (!init) {
    int n = 0;
    for (int i = 0; i < 256; ++i) {
      bool printable = (i >= '!' && i <= '~') || (i >= 0xA1 && i <= 0xAC) || (i >= 0xAE && i <= 0xFF);
      map[i] = printable ? i : 256 + n++;
    }
    init = true;
  }
  std::string s;
  tandem::unicode::append_utf8(s, map[b]);
  return s;
}

json added(int id, const char* content, bool special, bool lstrip = false, bool rstrip = false, bool single = false,
           bool normalized = false) {
  return {{"id", id},         {"content", content}, {"single_word", single}, {"lstrip", lstrip},
          {"rstrip", rstrip}, {"normalized", normalized}, {"special", special}};
}

json byte_level(const char* regex, bool nfc) {
  json j;
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[byte_symbol(b)] = b;
  // Merges over common letters so that BPE actually merges.
  const char* pairs[][2] = {{"t", "h"}, {"h", "e"}, {"th", "e"}, {"\xC4\xA0", "t"}, {"\xC4\xA0t", "he"}, {"i", "n"},
                            {"a", "n"}, {"an", "d"}, {"e", "r"},        {"o", "n"},             {"\xC4\xA0", "a"}};
  json merges = json::array();
  int id = 256;
  for (auto& p : pairs) {
    std::string joined = std::string(p[0]) + p[1];
    if (!vocab.contains(joined)) vocab[joined] = id++;
    merges.push_back(json::array({p[0], p[1]}));
  }
  j["model"] = {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}, {"unk_token", nullptr},
                {"byte_fallback", false}, {"fuse_unk", false}, {"ignore_merges", true}};
  j["added_tokens"] = json::array({added(id, "<|end|>", true), added(id + 1, "<x>", false, true, true),
                                   added(id + 2, "word", false, false, false, true)});
  j["normalizer"] = nfc ? json{{"type", "NFC"}} : json();
  j["pre_tokenizer"] = {{"type", "Sequence"},
                        {"pretokenizers",
                         json::array({{{"type", "Split"}, {"pattern", {{"Regex", regex}}}, {"behavior", "Isolated"}},
                                      {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}})}};
  j["decoder"] = {{"type", "ByteLevel"}};
  j["post_processor"] = {{"type", "ByteLevel"}};
  return j;
}

json gemma_like() {
  json vocab = json::object();
  int id = 0;
  for (const char* t : {"<pad>", "<eos>", "<bos>", "<unk>"}) vocab[t] = id++;
  for (int b = 0; b < 256; ++b) {
    char code[8];
    std::snprintf(code, sizeof code, "<0x%02X>", b);
    vocab[code] = id++;
  }
  for (const char* t : {"a", "b", "c", "\xE2\x96\x81", "ab", "\xE2\x96\x81" "a", "abc"}) vocab[t] = id++;
  json j;
  j["model"] = {{"type", "BPE"}, {"vocab", vocab}, {"unk_token", "<unk>"}, {"byte_fallback", true}, {"fuse_unk", true},
                {"merges", json::array({json::array({"a", "b"}), json::array({"\xE2\x96\x81", "a"}),
                                        json::array({"ab", "c"})})}};
  j["added_tokens"] = json::array({added(0, "<pad>", true), added(1, "<eos>", true), added(2, "<bos>", true),
                                   added(3, "<unk>", true), added(id, "\n", false), added(id + 1, "\xE2\x96\x81\xE2\x96\x81", false),
                                   added(id + 2, "abc", false, false, false, false, true)});
  j["normalizer"] = {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "\xE2\x96\x81"}};
  j["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"String", " "}}}, {"behavior", "MergedWithPrevious"}};
  j["post_processor"] = {{"type", "TemplateProcessing"},
                         {"single", json::array({{{"SpecialToken", {{"id", "<bos>"}, {"type_id", 0}}}},
                                                 {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})},
                         {"special_tokens", {{"<bos>", {{"id", "<bos>"}, {"ids", {2}}, {"tokens", {"<bos>"}}}}}}};
  j["decoder"] = {{"type", "Sequence"},
                  {"decoders", json::array({{{"type", "Replace"}, {"pattern", {{"String", "\xE2\x96\x81"}}}, {"content", " "}},
                                            {{"type", "ByteFallback"}}, {{"type", "Fuse"}}})}};
  return j;
}

json metaspace_like() {
  json j = gemma_like();
  j["normalizer"] = {{"type", "Sequence"}, {"normalizers", json::array({{{"type", "NFKC"}}, {{"type", "Prepend"}, {"prepend", "x"}}})}};
  j["pre_tokenizer"] = {{"type", "Sequence"},
                        {"pretokenizers", json::array({{{"type", "Metaspace"}, {"replacement", "\xE2\x96\x81"},
                                                        {"prepend_scheme", "first"}, {"split", true}},
                                                       {{"type", "Digits"}, {"individual_digits", false}}})}};
  j["decoder"] = {{"type", "Sequence"},
                  {"decoders", json::array({{{"type", "Metaspace"}, {"replacement", "\xE2\x96\x81"}, {"prepend_scheme", "first"}},
                                            {{"type", "ByteFallback"}}, {{"type", "Fuse"}},
                                            {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 1}}})}};
  return j;
}

const char* kLlama3 =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const char* kQwen2 =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const char* kGpt2 = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

struct Case {
  tandem::Tokenizer tok;
  bool lossless;  // decode(encode(x)) must reproduce x (after UTF-8 repair)
};

std::vector<Case>& cases() {
  static std::vector<Case> c = [] {
    std::vector<Case> v;
    v.push_back({tandem::Tokenizer::from_json(byte_level(kLlama3, false).dump()), true});
    v.push_back({tandem::Tokenizer::from_json(byte_level(kQwen2, true).dump()), false});
    v.push_back({tandem::Tokenizer::from_json(byte_level(kGpt2, false).dump()), true});
    v.push_back({tandem::Tokenizer::from_json(gemma_like().dump()), false});
    v.push_back({tandem::Tokenizer::from_json(metaspace_like().dump()), false});
    return v;
  }();
  return c;
}

void check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "invariant violated: %s\n", what);
    std::abort();
  }
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  auto& all = cases();
  const Case& c = all[data[0] % all.size()];
  std::string_view text(reinterpret_cast<const char*>(data) + 1, size - 1);
  for (bool special : {false, true}) {
    std::vector<int32_t> ids = c.tok.encode(text, special);
    std::string decoded = c.tok.decode(ids, false);
    check(tandem::unicode::is_valid_utf8(decoded), "decode output is valid UTF-8");
    if (c.lossless && !special) check(decoded == tandem::unicode::to_valid_utf8(text), "byte-level round trip");
    for (bool skip : {false, true}) {
      tandem::StreamDecoder sd(c.tok, skip);
      std::string streamed;
      for (int32_t id : ids) {
        std::string piece = sd.push(id);
        check(tandem::unicode::is_valid_utf8(piece), "streamed chunk is valid UTF-8");
        streamed += piece;
      }
      streamed += sd.flush();
      check(streamed == c.tok.decode(ids, skip), "stream == decode");
    }
  }
  return 0;
}
