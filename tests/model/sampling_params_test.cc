// vLLM's extra sampling parameters in the sampler (logit_bias, allowed_token_ids, min_tokens,
// repetition_penalty) and in the engine (min_tokens stop rule, prompt logprobs, preemption count).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "engine/engine.h"
#include "engine/sampler.h"
#include "fixtures.h"

namespace tandem {
namespace {

TEST(SamplerParams, LogitBiasAllowedIdsAndMinTokens) {
  const std::vector<float> logits = {1.0f, 3.0f, 2.0f, -1.0f};
  SamplingParams p;
  p.temperature = 0;
  p.logit_bias = {{3, 10.0f}};
  Sampler biased(p, 0);
  EXPECT_EQ(biased.argmax(logits, {}), 3);

  SamplingParams a;
  a.temperature = 0;
  a.allowed_token_ids = {0, 2};
  Sampler allowed(a, 0);
  EXPECT_EQ(allowed.argmax(logits, {}), 2);
  std::vector<float> probs;
  a.temperature = 1;
  Sampler allowed_t(a, 0);
  allowed_t.distribution(logits, {}, probs);
  EXPECT_EQ(probs[1], 0.0f);
  EXPECT_EQ(probs[3], 0.0f);
  EXPECT_NEAR(probs[0] + probs[2], 1.0, 1e-6);

  SamplingParams m;
  m.temperature = 0;
  m.min_tokens = 2;
  m.min_tokens_stop_ids = {1};  // token 1 (the argmax) stands for EOS
  Sampler min_tokens(m, 0);
  const std::vector<int32_t> one = {0}, two = {0, 0};
  EXPECT_EQ(min_tokens.argmax(logits, one), 2);  // 1 output token < 2: EOS masked
  EXPECT_EQ(min_tokens.argmax(logits, two), 1);  // 2 output tokens: allowed again
}

// The host Sampler and the CPU backend's sample_rows op are one algorithm (backend/sampling.h): for
// the same logits, parameters, uniforms and draft they give the same token, over parameter
// combinations (temperature incl. tiny, top_k 0 / 1 / V, top_p 1 / tiny, min_p) and tied logits.
TEST(SamplerParams, HostSamplerAndCpuSampleRowsGiveTheSameTokens) {
  auto be = make_cpu_backend(2);
  std::mt19937_64 gen(21);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  const int V = 2000;
  int rows = 0, accepted = 0;
  for (float t : {1e-7f, 0.5f, 1.0f, 1.6f})
    for (int k : {0, 1, 7, 64, V - 1, V})
      for (float tp : {1.0f, 0.9f, 1e-6f})
        for (float mp : {0.0f, 0.1f}) {
          SamplingParams p;
          p.temperature = t, p.top_k = k, p.top_p = tp, p.min_p = mp;
          Sampler sampler(p, 1000 + rows);
          std::vector<float> logits(V);
          for (float& l : logits) l = std::round(normal(gen) * 4.0f) / 4.0f;  // ties
          const int32_t argmax = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
          for (int32_t draft : {-1, argmax, static_cast<int32_t>(gen() % V)}) {
            const auto u = sampler.uniforms();
            const int32_t host = sampler.sample(logits, {}, draft, u);
            const sampling::RowParams rp = sampler.row_params();
            float params[4] = {rp.temperature, rp.top_k, rp.top_p, rp.min_p}, uniforms[2] = {u[0], u[1]};
            int32_t d = draft, out = -7;
            TensorView lv(DType::F32, logits.data(), {1, V}), pv(DType::F32, params, {1, 4}),
                uv(DType::F32, uniforms, {1, 2}), dv(DType::I32, &d, {1}), ov(DType::I32, &out, {1});
            be->sample_rows(lv, pv, uv, dv, ov);
            EXPECT_EQ(out, host) << "t=" << t << " k=" << k << " top_p=" << tp << " min_p=" << mp << " draft=" << draft;
            ++rows, accepted += draft >= 0 && host == draft;
          }
        }
  EXPECT_EQ(rows, 432);
  EXPECT_GT(accepted, rows / 6);  // the argmax drafts are accepted often
}

TEST(SamplerParams, RepetitionPenaltyDividesPositiveAndMultipliesNegativeLogits) {
  const std::vector<float> logits = {2.0f, 1.9f, -1.0f, -1.2f};
  SamplingParams p;
  p.temperature = 0;
  p.repetition_penalty = 2.0f;
  const std::vector<int32_t> prompt = {0, 2};
  Sampler s(p, 0, prompt);
  std::vector<float> adjusted;
  const std::vector<int32_t> output = {3};
  s.penalize(logits, output, adjusted);
  EXPECT_FLOAT_EQ(adjusted[0], 1.0f);   // prompt token, positive: divided
  EXPECT_FLOAT_EQ(adjusted[1], 1.9f);   // unseen
  EXPECT_FLOAT_EQ(adjusted[2], -2.0f);  // prompt token, negative: multiplied
  EXPECT_FLOAT_EQ(adjusted[3], -2.4f);  // output token
  EXPECT_EQ(s.argmax(logits, output), 1);
}

TEST(EngineParams, MinTokensAndPromptLogprobs) {
  auto backend = testing::test_backend(1);
  auto target = Gemma4Model::load(testing::fixtures_dir() + "/gemma4-moe", *backend);
  EngineConfig config;
  config.max_model_len = 128;
  config.kv_cache_bytes = 4 << 20;
  config.enable_prefix_caching = true;
  Engine engine(*target, nullptr, config);
  auto run = [&](Request r) {
    std::vector<RequestOutput> outs;
    engine.submit(std::move(r), [&](const RequestOutput& o) { outs.push_back(o); });
    engine.run_until_idle();
    return outs;
  };
  Request base;
  base.prompt = {2, 9, 17, 33, 40, 41, 42, 43, 50, 51, 52, 53, 60, 61, 62, 63, 70, 71, 72};
  base.max_tokens = 12;
  base.sampling.temperature = 0;
  base.ignore_eos = true;
  std::vector<int32_t> free_run;
  for (const auto& o : run(base)) free_run.insert(free_run.end(), o.tokens.begin(), o.tokens.end());
  ASSERT_EQ(free_run.size(), 12u);

  // A stop token id that appears at output position 2 does not stop before min_tokens: the
  // token is masked instead, so the output diverges there and runs on.
  Request stop = base;
  stop.stop_token_ids = {free_run[2]};
  stop.sampling.min_tokens = 5;
  std::vector<int32_t> got;
  FinishReason reason = FinishReason::none;
  for (const auto& o : run(stop)) {
    got.insert(got.end(), o.tokens.begin(), o.tokens.end());
    if (o.finished) reason = o.finish_reason;
  }
  ASSERT_GE(got.size(), 5u);
  for (size_t i = 0; i < 5; ++i) EXPECT_NE(got[i], free_run[2]) << i;
  if (reason == FinishReason::stop) {
    EXPECT_EQ(got.back(), free_run[2]);
  }

  // Prompt logprobs: token p+1's logprob equals the logprob of that token forced as the first
  // output after prompt[0..p] (allowed_token_ids), computed by an ordinary request. The prompt was
  // cached above; prompt-logprob requests must not read the prefix cache.
  Request plp = base;
  plp.max_tokens = 1;
  plp.prompt_logprobs = 3;
  auto outs = run(plp);
  ASSERT_FALSE(outs.empty());
  const auto& lp = outs.front().prompt_logprobs;
  ASSERT_EQ(lp.size(), base.prompt.size() - 1);
  for (size_t p = 0; p + 1 < base.prompt.size(); p += 6) {
    Request forced;
    forced.prompt.assign(base.prompt.begin(), base.prompt.begin() + p + 1);
    forced.max_tokens = 1;
    forced.sampling.temperature = 0;
    forced.sampling.top_logprobs = 3;
    forced.sampling.allowed_token_ids = {base.prompt[p + 1]};
    auto f = run(forced);
    ASSERT_EQ(f.front().tokens.size(), 1u);
    EXPECT_EQ(lp[p].token, base.prompt[p + 1]);
    EXPECT_NEAR(lp[p].logprob, f.front().logprobs[0], 1e-5) << p;
    ASSERT_EQ(lp[p].top.size(), 3u);
    EXPECT_EQ(lp[p].top[0].token, f.front().top_logprobs[0][0].token);
    EXPECT_GE(lp[p].rank, 1);
  }
}

// Plain greedy steps take the argmax on the backend; every parameter that changes the greedy
// choice (logit_bias, allowed_token_ids, repetition / presence penalties, min_tokens) must go
// through the host sampler instead. The same request with top_logprobs (always on the host) is the
// reference, alone and batched with a plain greedy request (which then also runs on the host).
TEST(EngineParams, GreedyWithLogitsProcessingMatchesTheHostSampler) {
  auto backend = testing::test_backend(1);
  auto target = Gemma4Model::load(testing::fixtures_dir() + "/gemma4-moe", *backend);
  EngineConfig config;
  config.max_model_len = 128;
  config.kv_cache_bytes = 8 << 20;
  Engine engine(*target, nullptr, config);
  auto run = [&](std::vector<Request> rs) {
    std::vector<std::vector<int32_t>> outs(rs.size());
    for (size_t i = 0; i < rs.size(); ++i)
      engine.submit(std::move(rs[i]), [&outs, i](const RequestOutput& o) {
        outs[i].insert(outs[i].end(), o.tokens.begin(), o.tokens.end());
      });
    engine.run_until_idle();
    return outs;
  };
  Request base;
  base.prompt = {2, 9, 17, 33, 40, 41, 42, 43};
  base.max_tokens = 10;
  base.sampling.temperature = 0;
  base.ignore_eos = true;
  const std::vector<int32_t> plain = run({base})[0];
  ASSERT_EQ(plain.size(), 10u);
  const int32_t other = plain[0] == 7 ? 8 : 7;  // a token the plain run does not start with

  std::vector<std::pair<std::string, Request>> cases;
  Request bias = base;
  bias.sampling.logit_bias = {{other, 100.0f}};
  cases.emplace_back("logit_bias", bias);
  Request allowed = base;
  allowed.sampling.allowed_token_ids = {other};
  cases.emplace_back("allowed_token_ids", allowed);
  Request repetition = base;
  repetition.sampling.repetition_penalty = 1.8f;
  cases.emplace_back("repetition_penalty", repetition);
  Request presence = base;
  presence.sampling.presence_penalty = 1.5f;
  cases.emplace_back("presence_penalty", presence);
  Request min_tokens = base;
  min_tokens.ignore_eos = false;
  min_tokens.stop_token_ids = {plain[0]};  // masked while fewer than min_tokens tokens exist
  min_tokens.sampling.min_tokens = 3;
  cases.emplace_back("min_tokens", min_tokens);

  for (const auto& [name, r] : cases) {
    SCOPED_TRACE(name);
    Request host = r;
    host.sampling.top_logprobs = 0;
    const std::vector<int32_t> want = run({host})[0];
    EXPECT_EQ(run({r})[0], want);
    const auto together = run({r, base});
    EXPECT_EQ(together[0], want);
    EXPECT_EQ(together[1], plain);
    if (name == "logit_bias" || name == "allowed_token_ids") {
      EXPECT_EQ(want.front(), other);
    }
    if (name == "min_tokens") {
      ASSERT_FALSE(want.empty());
      EXPECT_NE(want.front(), plain[0]);
    }
  }
}

TEST(EngineParams, PreemptionUnderKvPressureIsCountedAndLossless) {
  auto backend = testing::test_backend(1);
  auto target = Gemma4Model::load(testing::fixtures_dir() + "/gemma4-moe", *backend);
  EngineConfig config;
  config.max_model_len = 64;
  config.block_size = 16;
  // Room for five blocks: one full-length sequence, not four growing ones.
  config.kv_cache_bytes = target->config().kv_bytes_per_token(4) * 16 * 5;
  auto make = [&](int i) {
    Request r;
    r.prompt = {2, 9 + i, 17, 33};
    r.max_tokens = 40;
    r.ignore_eos = true;
    r.sampling.temperature = 0;
    return r;
  };
  std::vector<std::vector<int32_t>> alone(4), together(4);
  {
    Engine engine(*target, nullptr, config);
    for (int i = 0; i < 4; ++i) {
      engine.submit(make(i), [&, i](const RequestOutput& o) { alone[i].insert(alone[i].end(), o.tokens.begin(), o.tokens.end()); });
      engine.run_until_idle();
    }
    EXPECT_EQ(engine.stats().num_preemptions, 0u);
  }
  Engine engine(*target, nullptr, config);
  for (int i = 0; i < 4; ++i)
    engine.submit(make(i), [&, i](const RequestOutput& o) { together[i].insert(together[i].end(), o.tokens.begin(), o.tokens.end()); });
  engine.run_until_idle();
  EXPECT_GT(engine.stats().num_preemptions, 0u);
  EXPECT_EQ(together, alone);
  EXPECT_GT(engine.stats().iteration_tokens.count, 0u);
}

}  // namespace
}  // namespace tandem
