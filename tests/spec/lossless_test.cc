// Speculative decoding must be lossless: greedy output with any proposer and any k equals plain
// greedy output, including prompts longer than the sliding window and long generations that
// wrap the window many times. Also checks the counters' invariants.
#include <gtest/gtest.h>

#include <numeric>

#include "../model/fixtures.h"
#include "engine/engine.h"
#include "spec/speculative_config.h"

namespace tandem {
namespace {

struct Case {
  std::string target;
  std::string spec_json;  // with %K% for k
  std::string quantization = "none";  // the target's --quantization (plain and speculative alike)
  bool quantize_lm_head = false;
};

class Lossless : public ::testing::TestWithParam<Case> {};

TEST_P(Lossless, GreedyOutputEqualsPlainForEveryK) {
  const std::string dir = testing::fixtures_dir() + "/";
  auto backend = testing::test_backend(2);
  auto target = Gemma4Model::load(dir + GetParam().target, *backend, LoadFormat::safetensors,
                                  parse_online_quant(GetParam().quantization, GetParam().quantize_lm_head, "quantization"));
  const WeightStore golden = WeightStore::open(dir + GetParam().target + "/golden.safetensors");
  EngineConfig plain_config;
  plain_config.max_model_len = 128;
  plain_config.kv_cache_bytes = 4 << 20;
  Engine plain(*target, nullptr, plain_config);
  for (int k = 1; k <= 5; ++k) {
    std::string json = GetParam().spec_json;
    json.replace(json.find("%K%"), 3, std::to_string(k));
    if (auto at = json.find("%DIR%"); at != std::string::npos) json.replace(at, 5, dir);
    SpeculativeConfig spec = parse_speculative_config(json);
    EngineConfig config = plain_config;
    config.num_speculative_tokens = k;
    Engine engine(*target, make_proposer(spec, *target), config);
    for (int p = 0; p < 3; ++p) {
      SCOPED_TRACE("k=" + std::to_string(k) + " prompt " + std::to_string(p));
      const auto prompt = testing::tensor_values<int32_t>(golden, "ids." + std::to_string(p));
      const int n = p == 2 ? 60 : 24;  // 21 + 60 tokens: the 8-token window wraps ten times
      const auto want = testing::greedy_generate(plain, prompt, n);
      EXPECT_EQ(testing::greedy_generate(engine, prompt, n), want);
    }
    const SpecStats s = engine.stats().spec;
    EXPECT_GT(s.num_drafts, 0u);
    EXPECT_LE(s.num_accepted_tokens, s.num_draft_tokens);
    EXPECT_LE(s.num_draft_tokens, s.num_drafts * k);
    ASSERT_EQ(s.accepted_per_position.size(), static_cast<size_t>(k));
    for (int i = 1; i < k; ++i) EXPECT_LE(s.accepted_per_position[i], s.accepted_per_position[i - 1]);
    EXPECT_EQ(std::accumulate(s.accepted_per_position.begin(), s.accepted_per_position.end(), uint64_t{0}),
              s.num_accepted_tokens);
    if (spec.method != "ngram") {
      EXPECT_LE(s.accepted_per_position[0], s.num_drafts);
    }
  }
}

const Case kCases[] = {
    {"gemma4-moe", "{\"model\": \"%DIR%gemma4-moe-assistant\", \"num_speculative_tokens\": %K%}"},
    {"gemma4-e2b", "{\"method\": \"mtp\", \"model\": \"%DIR%gemma4-e2b-assistant\", \"num_speculative_tokens\": %K%}"},
    {"gemma4-moe", "{\"method\": \"mtp\", \"model\": \"%DIR%gemma4-moe-assistant\", \"num_speculative_tokens\": %K%, "
                   "\"draft_position\": \"hf\"}"},
    {"gemma4-moe", "{\"method\": \"draft_model\", \"model\": \"%DIR%gemma4-e2b\", \"num_speculative_tokens\": %K%}"},
    {"gemma4-e2b", "{\"method\": \"ngram\", \"prompt_lookup_min\": 1, \"prompt_lookup_max\": 3, "
                   "\"num_speculative_tokens\": %K%}"},
    // Quantized at load: an int4 target with an int4 head copy, drafted by an int8 drafter with an
    // int8 head; the target's verify still decides, so greedy output equals the int4 target's own.
    {"gemma4-moe",
     "{\"model\": \"%DIR%gemma4-moe-assistant\", \"num_speculative_tokens\": %K%, \"quantization\": \"int8\", "
     "\"quantize_lm_head\": true}",
     "int4", true},
    {"gemma4-moe", "{\"method\": \"draft_model\", \"model\": \"%DIR%gemma4-e2b\", \"num_speculative_tokens\": %K%, "
                   "\"quantization\": \"fp8\"}",
     "fp8", false},
};
const char* const kCaseNames[] = {"mtp_dense",        "mtp_centroid",          "mtp_hf_position", "draft_model", "ngram",
                                  "mtp_int4_target", "draft_model_fp8_target"};

INSTANTIATE_TEST_SUITE_P(Proposers, Lossless, ::testing::ValuesIn(kCases),
                         [](const auto& info) { return std::string(kCaseNames[info.index]); });

// Each round's trace adds up to the counters: totals equal the sum over rounds.
TEST(SpecCounters, TotalsEqualTheSumOverRounds) {
  const std::string dir = testing::fixtures_dir() + "/";
  auto backend = testing::test_backend(2);
  auto target = Gemma4Model::load(dir + "gemma4-moe", *backend);
  SpeculativeConfig spec =
      parse_speculative_config("{\"model\": \"" + dir + "gemma4-moe-assistant\", \"num_speculative_tokens\": 3}");
  EngineConfig config;
  config.max_model_len = 128;
  config.kv_cache_bytes = 4 << 20;
  config.num_speculative_tokens = 3;
  Engine engine(*target, make_proposer(spec, *target), config);
  uint64_t rounds = 0, drafted = 0, accepted = 0;
  std::vector<uint64_t> per_position(3, 0);
  engine.spec_trace = [&](uint64_t, const std::vector<int32_t>& d, int a) {
    ++rounds, drafted += d.size(), accepted += a;
    ASSERT_LE(a, static_cast<int>(d.size()));
    for (int i = 0; i < a; ++i) ++per_position[i];
  };
  const WeightStore golden = WeightStore::open(dir + "gemma4-moe/golden.safetensors");
  for (int p = 0; p < 3; ++p) testing::greedy_generate(engine, testing::tensor_values<int32_t>(golden, "ids." + std::to_string(p)), 30);
  const SpecStats s = engine.stats().spec;
  EXPECT_EQ(s.num_drafts, rounds);
  EXPECT_EQ(s.num_draft_tokens, drafted);
  EXPECT_EQ(s.num_accepted_tokens, accepted);
  EXPECT_EQ(s.accepted_per_position, per_position);
  EXPECT_GT(s.draft_seconds, 0.0);
  EXPECT_GT(s.verify_seconds, 0.0);
}

}  // namespace
}  // namespace tandem
