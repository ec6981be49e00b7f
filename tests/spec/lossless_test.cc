// Speculative decoding must be lossless: greedy output with any proposer and any k equals plain
// greedy output, including prompts longer than the sliding window and long generations that
// wrap the window many times. Also checks the counters' invariants.
#include <gtest/gtest.h>

#include <map>
#include <numeric>

#include "../model/fixtures.h"
#include "engine/engine.h"
#include "model/gemma4_assistant.h"
#include "spec/mtp_proposer.h"
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
    // A published-format int4 checkpoint (compressed-tensors W4A16 g32, bf16 tied head) with the bf16
    // MTP drafter, as stored and with an int8 copy of its head (--quantize-lm-head alone).
    {"quant/ct-int4-sym-g32", "{\"model\": \"%DIR%gemma4-moe-assistant\", \"num_speculative_tokens\": %K%}"},
    {"quant/ct-int4-sym-g32", "{\"model\": \"%DIR%gemma4-moe-assistant\", \"num_speculative_tokens\": %K%}", "none",
     true},
};
const char* const kCaseNames[] = {"mtp_dense",        "mtp_centroid",          "mtp_hf_position", "draft_model", "ngram",
                                  "mtp_int4_target", "draft_model_fp8_target", "mtp_ct_int4_target",
                                  "mtp_ct_int4_target_head_copy"};

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

// The reference for device drafts: the same proposer with its drafts brought to the host right after
// propose() and cut there (the path a grammar's check_drafts takes), so the verify batch and the
// acceptance see host drafts.
class HostDrafts : public Proposer {
 public:
  HostDrafts(std::unique_ptr<Proposer> inner, Backend& be) : inner_(std::move(inner)), be_(be) {}
  std::string method() const override { return inner_->method(); }
  void propose(std::span<DraftRequest> requests, const KvCache& target_kv) override {
    inner_->propose(requests, target_kv);
    const DeviceDrafts* device = inner_->device_drafts();
    ASSERT_NE(device, nullptr);
    const HostTensor ids = to_host(be_, device->ids);
    for (DraftRequest& r : requests) {
      if (r.device_count) r.drafts = host_drafts(*device, ids.view().as<int32_t>(), r.device_index, r.device_count);
      r.device_count = 0;
    }
  }

 private:
  std::unique_ptr<Proposer> inner_;
  Backend& be_;
};

// MTP drafts stay in backend memory and reach the host with the verify result; a round whose drafts
// contain a stop id is cut there on the host exactly as when the drafts come to the host first: the
// same outputs, rounds, counters and (seeded, host-sampled) tokens, and greedy still equals plain.
TEST(DeviceDrafts, CutAtAStopIdAsOnTheHost) {
  const std::string dir = testing::fixtures_dir() + "/";
  auto backend = testing::test_backend(2);
  auto target = Gemma4Model::load(dir + "gemma4-moe", *backend);
  const WeightStore golden = WeightStore::open(dir + "gemma4-moe/golden.safetensors");
  constexpr int k = 4;
  EngineConfig config;
  config.max_model_len = 128;
  config.kv_cache_bytes = 4 << 20;
  config.num_speculative_tokens = k;
  auto mtp = [&](std::vector<int> stop_ids) {
    return std::make_unique<MtpProposer>(Gemma4Assistant::load(dir + "gemma4-moe-assistant", *target),
                                         std::move(stop_ids));
  };
  struct Round {
    uint64_t seq;
    std::vector<int32_t> drafts;
    int accepted;
    bool operator==(const Round&) const = default;
  };
  struct Run {
    std::vector<std::vector<int32_t>> outputs;
    std::vector<Round> rounds;
    SpecStats stats;
  };
  auto run = [&](std::unique_ptr<Proposer> proposer, bool sampled) {
    Engine engine(*target, std::move(proposer), config);
    Run r;
    engine.spec_trace = [&](uint64_t seq, const std::vector<int32_t>& d, int a) { r.rounds.push_back({seq, d, a}); };
    std::vector<Request> requests;
    for (int p = 0; p < 3; ++p) {
      Request q;
      q.prompt = testing::tensor_values<int32_t>(golden, "ids." + std::to_string(p));
      q.max_tokens = 30;
      q.ignore_eos = true;
      q.sampling.temperature = sampled ? 1.0f : 0.0f;
      q.sampling.seed = 7 + p;
      if (sampled) q.sampling.top_logprobs = 0;  // sampled on the host, from the logits
      requests.push_back(q);
    }
    r.outputs.resize(requests.size());
    for (size_t i = 0; i < requests.size(); ++i)
      engine.submit(requests[i], [&r, i](const RequestOutput& o) {
        r.outputs[i].insert(r.outputs[i].end(), o.tokens.begin(), o.tokens.end());
      });
    engine.run_until_idle();
    r.stats = engine.stats().spec;
    return r;
  };
  // The token drafted most often before a round's last draft: as a stop id it cuts rounds short.
  std::map<int32_t, int> early;
  for (const Round& round : run(mtp({}), false).rounds)
    for (size_t i = 0; i + 1 < round.drafts.size(); ++i) ++early[round.drafts[i]];
  ASSERT_FALSE(early.empty());
  const int32_t stop =
      std::max_element(early.begin(), early.end(), [](auto& a, auto& b) { return a.second < b.second; })->first;

  EngineConfig plain_config = config;
  plain_config.num_speculative_tokens = 0;
  Engine plain(*target, nullptr, plain_config);
  for (const bool sampled : {false, true}) {
    SCOPED_TRACE(sampled ? "sampled" : "greedy");
    const Run device = run(mtp({stop}), sampled);
    const Run host = run(std::make_unique<HostDrafts>(mtp({stop}), *backend), sampled);
    EXPECT_EQ(device.outputs, host.outputs);
    EXPECT_EQ(device.rounds, host.rounds);
    EXPECT_EQ(device.stats.num_drafts, host.stats.num_drafts);
    EXPECT_EQ(device.stats.num_draft_tokens, host.stats.num_draft_tokens);
    EXPECT_EQ(device.stats.num_accepted_tokens, host.stats.num_accepted_tokens);
    EXPECT_EQ(device.stats.accepted_per_position, host.stats.accepted_per_position);
    int cut = 0;  // rounds that end at the stop id before drafting k
    for (const Round& round : device.rounds) {
      const auto at = std::find(round.drafts.begin(), round.drafts.end(), stop);
      EXPECT_TRUE(at == round.drafts.end() || at + 1 == round.drafts.end());
      cut += at != round.drafts.end() && round.drafts.size() < static_cast<size_t>(k);
    }
    EXPECT_GT(cut, 0);
    if (!sampled) {
      for (int p = 0; p < 3; ++p) {
        const auto prompt = testing::tensor_values<int32_t>(golden, "ids." + std::to_string(p));
        EXPECT_EQ(device.outputs[p], testing::greedy_generate(plain, prompt, 30));
      }
    }
  }
}

}  // namespace
}  // namespace tandem
