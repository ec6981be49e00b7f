// Every speculative round of tandem's engine against transformers' drafter module running the
// intended algorithm (golden_spec `clean.{vllm,hf}.k{k}.{i}`: hidden of the last committed
// position, KV of committed positions only), for both query-position conventions: same drafts
// and same accepted count in every round, and the same final output as plain greedy decoding.
#include <gtest/gtest.h>

#include <fstream>

#include "../model/fixtures.h"
#include "engine/engine.h"
#include "spec/speculative_config.h"

namespace tandem {
namespace {

struct Round {
  std::vector<int32_t> drafts;
  int accepted;
};

class TraceParity : public ::testing::TestWithParam<std::string> {};

TEST_P(TraceParity, EveryRoundMatchesTransformers) {
  const std::string dir = testing::fixtures_dir() + "/";
  const std::string drafter_dir = dir + GetParam();
  std::string target_name;
  std::ifstream(drafter_dir + "/target.txt") >> target_name;
  auto backend = testing::test_backend(2);
  auto target = Gemma4Model::load(dir + target_name, *backend);
  const WeightStore golden = WeightStore::open(drafter_dir + "/golden_spec.safetensors");
  int checked = 0;
  for (const std::string convention : {"vllm", "hf"}) {
    for (int k : {1, 3}) {
      SpeculativeConfig spec = parse_speculative_config("{\"method\": \"mtp\", \"model\": \"" + drafter_dir +
                                                        "\", \"num_speculative_tokens\": " + std::to_string(k) +
                                                        ", \"draft_position\": \"" + convention + "\"}");
      EngineConfig config;
      config.max_model_len = 128;
      config.kv_cache_bytes = 4 << 20;
      config.num_speculative_tokens = k;
      Engine engine(*target, make_proposer(spec, *target), config);
      for (int p = 0; p < 3; ++p) {
        const std::string pre = "clean." + convention + ".k" + std::to_string(k) + "." + std::to_string(p);
        if (!golden.find(pre + ".drafts")) continue;
        SCOPED_TRACE(pre);
        std::vector<Round> ours;
        engine.spec_trace = [&](uint64_t, const std::vector<int32_t>& d, int a) { ours.push_back({d, a}); };
        Request r;
        r.prompt = testing::tensor_values<int32_t>(golden, "ids." + std::to_string(p));
        r.max_tokens = 24;
        r.ignore_eos = true;
        r.sampling.temperature = 0;
        std::vector<int32_t> out;
        engine.submit(r, [&](const RequestOutput& o) { out.insert(out.end(), o.tokens.begin(), o.tokens.end()); });
        engine.run_until_idle();
        EXPECT_EQ(out, testing::tensor_values<int32_t>(golden, "greedy." + std::to_string(p)));

        const auto num = testing::tensor_values<int32_t>(golden, pre + ".num_drafts");
        const auto drafts = testing::tensor_values<int32_t>(golden, pre + ".drafts");
        const auto accepted = testing::tensor_values<int32_t>(golden, pre + ".accepted");
        std::vector<Round> theirs;
        for (size_t i = 0; i < num.size(); ++i)
          if (num[i] > 0)
            theirs.push_back({std::vector<int32_t>(drafts.begin() + i * k, drafts.begin() + i * k + num[i]), accepted[i]});
        ASSERT_EQ(ours.size(), theirs.size());
        for (size_t i = 0; i < ours.size(); ++i) {
          EXPECT_EQ(ours[i].drafts, theirs[i].drafts) << "round " << i;
          EXPECT_EQ(ours[i].accepted, theirs[i].accepted) << "round " << i;
        }
        ++checked;
      }
    }
  }
  EXPECT_EQ(checked, 12);
}

INSTANTIATE_TEST_SUITE_P(Fixtures, TraceParity, ::testing::Values("gemma4-moe-assistant", "gemma4-e2b-assistant"),
                         [](const auto& info) {
                           return info.param == "gemma4-moe-assistant" ? std::string("dense_head")
                                                                        : std::string("centroid_head");
                         });

}  // namespace
}  // namespace tandem
