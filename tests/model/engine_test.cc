// Engine behaviour: batch invariance (a request's greedy output and logprobs do not depend on what
// else is in the batch), chunked prefill, stop rules, aborts, KV accounting, validation.
#include <gtest/gtest.h>

#include "engine/engine.h"
#include "fixtures.h"
#include "spec/speculative_config.h"

namespace tandem {
namespace {

struct Result {
  std::vector<int32_t> tokens;
  std::vector<float> logprobs;
  FinishReason reason = FinishReason::none;
};

Request greedy_request(std::vector<int32_t> prompt, int n) {
  Request r;
  r.prompt = std::move(prompt);
  r.max_tokens = n;
  r.ignore_eos = true;
  r.sampling.temperature = 0;
  r.sampling.top_logprobs = 2;
  return r;
}

std::vector<Result> run_all(Engine& engine, const std::vector<Request>& requests) {
  std::vector<Result> results(requests.size());
  for (size_t i = 0; i < requests.size(); ++i)
    engine.submit(requests[i], [&results, i](const RequestOutput& o) {
      results[i].tokens.insert(results[i].tokens.end(), o.tokens.begin(), o.tokens.end());
      results[i].logprobs.insert(results[i].logprobs.end(), o.logprobs.begin(), o.logprobs.end());
      if (o.finished) results[i].reason = o.finish_reason;
    });
  engine.run_until_idle();
  return results;
}

// The gemma4-moe fixture's MTP drafter at k = 3 for `target`; sets config.num_speculative_tokens to match.
std::unique_ptr<Proposer> moe_mtp_proposer(Gemma4Model& target, EngineConfig& config) {
  SpeculativeConfig spec = parse_speculative_config(
      "{\"model\": \"" + testing::fixtures_dir() + "/gemma4-moe-assistant\", \"num_speculative_tokens\": 3}");
  config.num_speculative_tokens = 3;
  return make_proposer(spec, target);
}

std::vector<Request> mixed_requests() {
  std::vector<Request> requests;
  for (int i = 0; i < 12; ++i) {
    std::vector<int32_t> prompt = {2};
    for (int j = 0; j < 3 + 5 * i; ++j) prompt.push_back((j * 37 + i * 11) % 500 + 5);
    requests.push_back(greedy_request(prompt, 10 + 3 * i));
  }
  return requests;
}

class BatchInvariance : public ::testing::TestWithParam<bool> {};

TEST_P(BatchInvariance, OutputsDoNotDependOnTheBatch) {
  const bool speculative = GetParam();
  const std::string dir = testing::fixtures_dir() + "/";
  auto backend = testing::test_backend(2);
  auto target = Gemma4Model::load(dir + "gemma4-moe", *backend);
  auto make_engine = [&](int max_batched_tokens) {
    EngineConfig config;
    config.max_model_len = 128;
    config.kv_cache_bytes = 8 << 20;
    config.max_num_batched_tokens = max_batched_tokens;
    std::unique_ptr<Proposer> proposer = speculative ? moe_mtp_proposer(*target, config) : nullptr;
    return std::make_unique<Engine>(*target, std::move(proposer), config);
  };
  const auto requests = mixed_requests();
  std::vector<Result> alone;
  for (const auto& r : requests) {
    auto engine = make_engine(2048);
    alone.push_back(run_all(*engine, {r})[0]);
  }
  // All together, and all together with small chunks (prefills split across steps and mixed
  // with other sequences' decode and verify rows).
  for (int budget : {2048, 7}) {
    SCOPED_TRACE("max_num_batched_tokens " + std::to_string(budget));
    auto engine = make_engine(budget);
    const auto together = run_all(*engine, requests);
    for (size_t i = 0; i < requests.size(); ++i) {
      EXPECT_EQ(together[i].tokens, alone[i].tokens) << "request " << i;
      EXPECT_EQ(together[i].logprobs, alone[i].logprobs) << "request " << i;  // bitwise
      EXPECT_EQ(together[i].reason, FinishReason::length);
    }
    const EngineStats s = engine->stats();
    EXPECT_EQ(s.num_running, 0);
    EXPECT_EQ(s.kv_usage, 0.0);
  }
}

INSTANTIATE_TEST_SUITE_P(Modes, BatchInvariance, ::testing::Values(false, true),
                         [](const auto& info) { return std::string(info.param ? "speculative" : "plain"); });

TEST(Engine, StopsAtStopTokensAndEos) {
  auto backend = testing::test_backend(1);
  auto target = Gemma4Model::load(testing::fixtures_dir() + "/gemma4-moe", *backend);
  EngineConfig config;
  config.max_model_len = 128;
  config.kv_cache_bytes = 4 << 20;
  Engine engine(*target, nullptr, config);
  auto r = greedy_request({2, 9, 17, 33}, 20);
  const auto free_run = run_all(engine, {r})[0];
  ASSERT_EQ(free_run.tokens.size(), 20u);
  r.stop_token_ids = {free_run.tokens[5]};
  const auto stopped = run_all(engine, {r})[0];
  const size_t first = std::find(free_run.tokens.begin(), free_run.tokens.end(), free_run.tokens[5]) - free_run.tokens.begin();
  EXPECT_EQ(stopped.tokens, std::vector<int32_t>(free_run.tokens.begin(), free_run.tokens.begin() + first + 1));
  EXPECT_EQ(stopped.reason, FinishReason::stop);
}

TEST(Engine, AbortFreesKvAndValidatesRequests) {
  auto backend = testing::test_backend(1);
  auto target = Gemma4Model::load(testing::fixtures_dir() + "/gemma4-moe", *backend);
  EngineConfig config;
  config.max_model_len = 64;
  config.kv_cache_bytes = 4 << 20;
  Engine engine(*target, nullptr, config);
  FinishReason reason = FinishReason::none;
  int outputs = 0;
  uint64_t id = 0;
  id = engine.submit(greedy_request({2, 5, 6}, 50), [&](const RequestOutput& o) {
    if (++outputs == 3) engine.abort(id);  // abort from inside the callback, mid-generation
    if (o.finished) reason = o.finish_reason;
  });
  engine.run_until_idle();
  EXPECT_EQ(reason, FinishReason::abort);
  EXPECT_LT(outputs, 10);
  EXPECT_EQ(engine.stats().kv_usage, 0.0);
  EXPECT_THROW(engine.submit(greedy_request({2, 5}, 100), [](const RequestOutput&) {}), Error);  // > max_model_len
  EXPECT_THROW(engine.submit(greedy_request({}, 4), [](const RequestOutput&) {}), Error);
  EXPECT_THROW(engine.submit(greedy_request({2, 512}, 4), [](const RequestOutput&) {}), Error);  // outside vocab
}

}  // namespace
}  // namespace tandem

namespace tandem {
namespace {

TEST(PrefixCaching, ReusesBlocksAndKeepsOutputsIdentical) {
  auto backend = testing::test_backend(1);
  auto target = Gemma4Model::load(testing::fixtures_dir() + "/gemma4-moe", *backend);
  EngineConfig config;
  config.max_model_len = 128;
  config.kv_cache_bytes = 1 << 20;  // small, so cached blocks get evicted and reused too
  config.block_size = 4;
  Engine plain(*target, nullptr, config);
  config.enable_prefix_caching = true;
  Engine cached(*target, nullptr, config);
  std::vector<int32_t> prefix = {2};
  for (int i = 0; i < 40; ++i) prefix.push_back((i * 13 + 7) % 500 + 5);
  std::vector<Request> requests;
  for (int i = 0; i < 6; ++i) {
    auto p = prefix;
    for (int j = 0; j <= i; ++j) p.push_back(100 + i * 10 + j);
    requests.push_back(greedy_request(p, 12));
  }
  requests.push_back(greedy_request(prefix, 12));  // exactly the shared prefix
  for (const auto& r : requests) {
    EXPECT_EQ(run_all(cached, {r})[0].tokens, run_all(plain, {r})[0].tokens);
    EXPECT_EQ(run_all(cached, {r})[0].logprobs, run_all(plain, {r})[0].logprobs);  // a full hit too
  }
  const EngineStats s = cached.stats();
  EXPECT_GT(s.prefix_cache_hits, 0u);
  EXPECT_LE(s.prefix_cache_hits, s.prefix_cache_queries);
  EXPECT_EQ(s.kv_usage, 0.0);  // cached blocks are not "in use"
  // Concurrent requests sharing blocks.
  const auto together = run_all(cached, requests);
  for (size_t i = 0; i < requests.size(); ++i) EXPECT_EQ(together[i].tokens, run_all(plain, {requests[i]})[0].tokens);
}

// Greedy decoding straight through the model over a cache that keeps every position (the tables are
// reserved from position 0, so nothing is released): the path without a sliding group.
std::vector<int32_t> greedy_keeping_everything(Gemma4Model& m, const std::vector<int32_t>& prompt, int n) {
  const int64_t total = static_cast<int64_t>(prompt.size()) + n, blocks = (total + 3) / 4;
  KvCache kv(m.backend(), m.config(), {blocks, blocks}, 4);
  BlockTables t;
  EXPECT_TRUE(kv.reserve(t, 0, total));
  ForwardBatch batch;
  for (size_t i = 0; i < prompt.size(); ++i) batch.add(prompt[i], static_cast<int32_t>(i), &t, i + 1 == prompt.size());
  std::vector<int32_t> out;
  for (int j = 0; j < n; ++j) {
    HostTensor logits;
    m.forward(batch, kv, nullptr, &logits);
    const float* row = logits.f32();
    out.push_back(static_cast<int32_t>(std::max_element(row, row + m.config().vocab_size) - row));
    batch.clear();
    batch.add(out.back(), static_cast<int32_t>(prompt.size()) + j, &t, true);
  }
  return out;
}

// A sequence many windows long holds only the window's sliding blocks (+ the block of its next
// position), and its output is what keeping every position gives, with and without speculation.
TEST(Engine, SlidingLayersKeepOnlyTheWindow) {
  const std::string dir = testing::fixtures_dir() + "/";
  auto backend = testing::test_backend(1);
  auto target = Gemma4Model::load(dir + "gemma4-moe", *backend);  // window 8
  std::vector<int32_t> prompt = {2};
  for (int i = 0; i < 29; ++i) prompt.push_back((i * 37 + 11) % 500 + 5);
  const int n = 70;
  const std::vector<int32_t> expected = greedy_keeping_everything(*target, prompt, n);
  for (const bool speculative : {false, true}) {
    SCOPED_TRACE(speculative ? "mtp k=3" : "plain");
    EngineConfig config;
    config.max_model_len = 128;
    config.max_num_seqs = 2;
    config.max_num_batched_tokens = 64;
    config.block_size = 4;
    config.kv_cache_bytes = 8 << 20;
    std::unique_ptr<Proposer> proposer = speculative ? moe_mtp_proposer(*target, config) : nullptr;
    Engine engine(*target, std::move(proposer), config);
    const KvCache& kv = engine.kv_cache();
    // The sliding group got its working set: per sequence ceil(10 / 4) + ceil((k + 1) / 4) + 2 blocks, + 64 / 4.
    EXPECT_EQ(kv.num_blocks(KvGroup::sliding), 2 * (3 + 1 + 2) + 16);
    std::vector<int32_t> tokens;
    int most_held = 0;
    engine.submit(greedy_request(prompt, n), [&](const RequestOutput& o) {
      tokens.insert(tokens.end(), o.tokens.begin(), o.tokens.end());
      most_held = std::max(most_held, kv.num_blocks(KvGroup::sliding) - kv.free_blocks(KvGroup::sliding));
    });
    engine.run_until_idle();
    EXPECT_EQ(tokens, expected);
    // The 9 positions kept before the next one and that one's block: at most ceil(10 / 4) + 1 blocks.
    EXPECT_LE(most_held, 4);
    EXPECT_GE(most_held, 3);
    if (speculative) {
      EXPECT_GT(engine.stats().spec.num_accepted_tokens, 0u);
    }
  }
}

// The host waits for the backend once per plain greedy step (the download of the sampled ids) and
// once more per speculative step (the download of the round's drafts); nothing inside the forward or
// the drafter's k steps waits.
TEST(Engine, HostWaitsOncePerStepWithOrWithoutDrafts) {
  const std::string dir = testing::fixtures_dir() + "/";
  auto backend = testing::test_backend(1);
  auto target = Gemma4Model::load(dir + "gemma4-moe", *backend);
  Request r = greedy_request({2, 17, 99, 5, 8, 41}, 20);
  r.sampling.top_logprobs = -1;  // plain greedy: the argmax stays on the backend
  for (const std::string method : {"none", "mtp", "draft_model"}) {
    SCOPED_TRACE(method);
    EngineConfig config;
    config.max_model_len = 128;
    config.kv_cache_bytes = 8 << 20;
    std::unique_ptr<Proposer> proposer;
    if (method == "mtp") proposer = moe_mtp_proposer(*target, config);
    if (method == "draft_model") {
      SpeculativeConfig spec = parse_speculative_config("{\"method\": \"draft_model\", \"model\": \"" + dir +
                                                        "gemma4-e2b\", \"num_speculative_tokens\": 3}");
      config.num_speculative_tokens = 3;
      proposer = make_proposer(spec, *target);
    }
    Engine engine(*target, std::move(proposer), config);
    const uint64_t before = backend->host_syncs();
    const auto out = run_all(engine, {r});
    const EngineStats s = engine.stats();
    ASSERT_EQ(out[0].tokens.size(), 20u);
    // One prefill step samples the first token; a round emits its accepted drafts + 1; steps without
    // a round (no room left for drafts) emit one token each. A round's drafts stay in backend memory
    // and come back with the verify's sampled ids: one wait per step, with or without drafting.
    const uint64_t rounds = s.spec.num_drafts, plain_steps = 20 - 1 - rounds - s.spec.num_accepted_tokens;
    const uint64_t steps = 1 + rounds + plain_steps;
    if (method != "none") {
      EXPECT_GT(rounds, 0u);
    }
    EXPECT_EQ(backend->host_syncs() - before, steps);
  }
}

}  // namespace
}  // namespace tandem
