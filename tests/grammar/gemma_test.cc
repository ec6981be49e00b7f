// Real vocabularies: Gemma 3, 262k tokens (byte fallback, whitespace-run tokens, tokens spanning
// JSON punctuation), and Qwen 3 (byte-level BPE). Uses the tokenizer fixtures of
// tests/tokenizer/fetch_tokenizers.sh (npm); skipped when they are not available offline.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>

#include "helpers.h"
#include "tokenizer/tokenizer.h"

namespace tandem::grammar {
namespace {

namespace fs = std::filesystem;
using namespace testing;

std::optional<Tokenizer> load_fixture(const std::string& name) {
  const fs::path source = TANDEM_SOURCE_DIR;
  const char* env = std::getenv("TANDEM_TOKENIZER_CACHE");
  const fs::path cache = env ? fs::path(env) : source / ".cache" / "tokenizers";
  if (!fs::exists(cache / name / "tokenizer.json")) {
    std::string cmd = "bash '" + (source / "tests/tokenizer/fetch_tokenizers.sh").string() + "' '" + cache.string() +
                      "' >/dev/null 2>&1";
    if (std::system(cmd.c_str()) != 0 || !fs::exists(cache / name / "tokenizer.json")) return std::nullopt;
  }
  return Tokenizer::load((cache / name).string());
}

const Tokenizer* gemma() {
  static std::optional<Tokenizer> tok = load_fixture("gemma3");
  return tok ? &*tok : nullptr;
}

std::shared_ptr<const Vocabulary> gemma_vocab() {
  static std::shared_ptr<const Vocabulary> v = gemma() ? Vocabulary::from_tokenizer(*gemma()) : nullptr;
  return v;
}

#define REQUIRE_GEMMA()                                                              \
  if (!gemma()) GTEST_SKIP() << "Gemma 3 tokenizer not available (tests/tokenizer/fetch_tokenizers.sh)"

const char* kSchema = R"({"type":"object","properties":{
  "name":{"enum":["get_weather","search"]},
  "args":{"type":"object","properties":{"city":{"type":"string","maxLength":12},"days":{"type":"integer"},
     "tags":{"type":"array","items":{"type":"string","maxLength":6},"maxItems":3}},"required":["city"],
     "additionalProperties":false}},
  "required":["name","args"],"additionalProperties":false})";

TEST(Gemma, VocabularyBytes) {
  REQUIRE_GEMMA();
  const auto& v = *gemma_vocab();
  EXPECT_EQ(v.size(), gemma()->vocab_size());
  EXPECT_EQ(v.token(*gemma()->token_id("<0x0A>")), "\n");  // byte fallback
  EXPECT_EQ(v.token(*gemma()->token_id("▁▁")), "  ");       // added whitespace run
  EXPECT_EQ(v.token(*gemma()->token_id("▁{\"")), " {\"");
  EXPECT_EQ(v.token(gemma()->bos_id()), "");  // special: no bytes, never allowed
}

TEST(Gemma, CanonicalEncodingIsAllowedAndMasksMatchBruteForce) {
  REQUIRE_GEMMA();
  auto g = compile_json_schema(kSchema, gemma_vocab());
  const std::string doc = R"({"name": "search", "args": {"city": "Zürich \"ZH\"", "days": 12, "tags": ["a b", "日本"]}})";
  auto ids = gemma()->encode(doc, false);
  GrammarMatcher m(g);
  const int32_t V = gemma_vocab()->size();
  for (size_t i = 0; i < ids.size(); ++i) {
    auto fast = fast_mask(m);
    ASSERT_TRUE(bitmask_allows(fast.data(), ids[i])) << "token " << i << " '" << gemma()->token_text(ids[i]) << "'";
    if (i % 4 == 0) {
      ASSERT_EQ(allowed_ids(fast, V), allowed_ids(brute_mask(m), V)) << "at token " << i;
    }
    ASSERT_TRUE(m.accept_token(ids[i]));
  }
  EXPECT_TRUE(m.can_terminate());
  auto fast = fast_mask(m);
  EXPECT_EQ(allowed_ids(fast, V), gemma_vocab()->stop_ids());
}

// A byte-level BPE vocabulary (Qwen 3): tokens are bytes mapped to code points, some hold part of
// a UTF-8 character.
TEST(Qwen3, ByteLevelVocabularyWalksCanonicalEncoding) {
  static std::optional<Tokenizer> qwen = load_fixture("qwen3");
  if (!qwen) GTEST_SKIP() << "Qwen 3 tokenizer not available (tests/tokenizer/fetch_tokenizers.sh)";
  auto vocab = Vocabulary::from_tokenizer(*qwen);
  EXPECT_EQ(vocab->token(*qwen->token_id("Ġthe")), " the");
  EXPECT_EQ(vocab->token(*qwen->token_id("Ċ")), "\n");
  auto g = compile_json_schema(kSchema, vocab);
  const std::string doc = "{\"name\":\"get_weather\",\"args\":{\"city\":\"東京 🗼\",\"tags\":[\"ü\"]}}";
  auto ids = qwen->encode(doc, false);
  GrammarMatcher m(g);
  std::vector<uint32_t> w(vocab->bitmask_words());
  for (size_t i = 0; i < ids.size(); ++i) {
    m.fill_next_token_bitmask(w.data());
    ASSERT_TRUE(bitmask_allows(w.data(), ids[i])) << "token " << i << " '" << qwen->token_text(ids[i]) << "'";
    ASSERT_TRUE(m.accept_token(ids[i]));
  }
  EXPECT_TRUE(m.can_terminate());
}

TEST(Gemma, SampledOutputsAreValid) {
  REQUIRE_GEMMA();
  auto g = compile_json_schema(kSchema, gemma_vocab());
  const int32_t V = gemma_vocab()->size();
  std::vector<uint32_t> w(gemma_vocab()->bitmask_words());
  int finished = 0;
  for (uint32_t seed = 0; seed < 6; ++seed) {
    std::mt19937 rng(seed);
    GrammarMatcher m(g);
    std::string out;
    for (int step = 0; step < 300 && !m.is_terminated(); ++step) {
      m.fill_next_token_bitmask(w.data());
      auto ids = allowed_ids(w, V);
      ASSERT_FALSE(ids.empty());
      int32_t id = ids[rng() % ids.size()];
      ASSERT_TRUE(m.accept_token(id));
      if (!m.is_terminated()) out += gemma_vocab()->token(id);
    }
    if (!m.is_terminated()) continue;
    ++finished;
    auto j = nlohmann::json::parse(out);
    EXPECT_TRUE(j["name"] == "search" || j["name"] == "get_weather") << out;
    EXPECT_TRUE(j["args"]["city"].is_string()) << out;
    EXPECT_LE(j["args"].value("tags", nlohmann::json::array()).size(), 3u) << out;
  }
  EXPECT_GT(finished, 0);
}

}  // namespace
}  // namespace tandem::grammar
