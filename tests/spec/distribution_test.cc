// Speculative sampling keeps the target distribution exactly. Statistical tests with fixed seeds;
// the bound: Pearson's chi-square over cells with expected count >= 5 (the rest lumped into one
// cell) must stay below its 1 - 1e-4 quantile (Wilson–Hilferty approximation), so a correct
// implementation fails with probability 1e-4 per check, and the seeds are fixed anyway.
#include <gtest/gtest.h>

#include <cmath>
#include <map>

#include "../model/fixtures.h"
#include "engine/engine.h"
#include "engine/sampler.h"
#include "grammar/matcher.h"
#include "spec/speculative_config.h"

namespace tandem {
namespace {

double chi_square_quantile_1e4(int df) {
  const double z = 3.719;  // standard normal 1 - 1e-4 quantile
  const double a = 2.0 / (9.0 * df);
  return df * std::pow(1 - a + z * std::sqrt(a), 3);
}

// Pearson chi-square of observed counts against expected probabilities (both keyed by cell).
template <typename Key>
void expect_fits(const std::map<Key, int>& observed, const std::map<Key, double>& expected, int n) {
  double chi2 = 0, lumped_expected = 0, lumped_observed = 0;
  int cells = 0;
  for (const auto& [key, p] : expected) {
    const double e = p * n;
    const auto it = observed.find(key);
    const double o = it == observed.end() ? 0 : it->second;
    if (e >= 5) {
      chi2 += (o - e) * (o - e) / e;
      ++cells;
    } else {
      lumped_expected += e, lumped_observed += o;
    }
  }
  for (const auto& [key, o] : observed)
    if (!expected.count(key)) lumped_observed += o;  // outcomes the target says are (near) impossible
  if (lumped_expected > 0) {
    chi2 += (lumped_observed - lumped_expected) * (lumped_observed - lumped_expected) / std::max(lumped_expected, 1.0);
    ++cells;
  }
  ASSERT_GE(cells, 3);
  EXPECT_LT(chi2, chi_square_quantile_1e4(cells - 1)) << "cells " << cells;
}

TEST(VerifyDraft, EmittedTokenFollowsTheTargetDistribution) {
  const std::vector<float> target = {0.30f, 0.25f, 0.15f, 0.10f, 0.08f, 0.06f, 0.04f, 0.02f};
  std::vector<float> logits;
  for (float p : target) logits.push_back(std::log(p));
  for (int32_t draft : {0, 3, 7}) {  // a likely, a middling and an unlikely draft
    Sampler sampler(SamplingParams{}, 1234 + draft);
    std::map<int32_t, int> observed;
    const int n = 100000;
    int accepted = 0;
    for (int i = 0; i < n; ++i) {
      const int32_t token = sampler.sample(logits, {}, draft, sampler.uniforms());
      ++observed[token];
      accepted += token == draft;
    }
    std::map<int32_t, double> expected;
    for (size_t t = 0; t < target.size(); ++t) expected[static_cast<int32_t>(t)] = target[t];
    SCOPED_TRACE("draft " + std::to_string(draft));
    expect_fits(observed, expected, n);
    // And the acceptance rate is the draft's target probability.
    EXPECT_NEAR(static_cast<double>(accepted) / n, target[draft], 5 * std::sqrt(target[draft] / n));
  }
}

// End to end through the engine: (t1, t2) of a 3-token generation with k = 1 (t2 always goes
// through verification, unless a grammar cuts the draft) against the exact joint distribution
// computed from the target. With `constrained`, under a grammar over a made-up vocabulary (token t
// spells the letter 'a' + t % 8; the output must match [a-d][a-g]+): the joint is then that of the
// masked rows, drafts the grammar forbids are cut, and the others are verified against masked rows.
void check_engine_joint(float temperature, float top_p, bool constrained = false) {
  const std::string dir = testing::fixtures_dir() + "/";
  auto backend = testing::test_backend(1);
  auto target = Gemma4Model::load(dir + "gemma4-moe", *backend);
  const WeightStore golden = WeightStore::open(dir + "gemma4-moe/golden.safetensors");
  const auto prompt = testing::tensor_values<int32_t>(golden, "ids.1");
  const int V = target->config().vocab_size;
  SamplingParams params;
  params.temperature = temperature;
  params.top_p = top_p;
  if (constrained) {
    std::vector<std::string> letters(V);
    for (int t = 0; t < V; ++t) letters[t] = std::string(1, static_cast<char>('a' + t % 8));
    auto vocab = std::make_shared<const grammar::Vocabulary>(std::move(letters), target->config().eos_ids);
    params.grammar = grammar::compile_regex("[a-d][a-g]+", vocab);
  }
  // The mask after `output` (null without a grammar).
  std::vector<uint32_t> mask;
  auto mask_after = [&](const std::vector<int32_t>& output) -> const uint32_t* {
    if (!constrained) return nullptr;
    grammar::GrammarMatcher m(*params.grammar);
    for (int32_t t : output) EXPECT_TRUE(m.accept_token(t));
    mask.assign(params.grammar->vocabulary().bitmask_words(), 0);
    m.fill_next_token_bitmask(mask.data());
    return mask.data();
  };

  // Exact joint: p(t1) from the prompt, p(t2 | t1) from prompt + t1.
  auto next_distribution = [&](const std::vector<int32_t>& ids, const std::vector<int32_t>& output) {
    KvCache kv(target->backend(), target->config(), {4, 4}, 16);
    BlockTables table;
    kv.reserve(table, 0, static_cast<int64_t>(ids.size()));
    ForwardBatch batch;
    for (size_t i = 0; i < ids.size(); ++i) batch.add(ids[i], static_cast<int32_t>(i), &table, i + 1 == ids.size());
    HostTensor hidden, logits;
    target->forward(batch, kv, &hidden, &logits);
    Sampler s(params, 0);
    std::vector<float> probs;
    s.distribution(std::span<const float>(logits.f32(), V), {}, probs, mask_after(output));
    return probs;
  };
  std::map<std::pair<int32_t, int32_t>, double> expected;
  const auto p1 = next_distribution(prompt, {});
  for (int32_t t1 = 0; t1 < V; ++t1) {
    if (p1[t1] < 1e-4) continue;
    auto ids = prompt;
    ids.push_back(t1);
    const auto p2 = next_distribution(ids, {t1});
    for (int32_t t2 = 0; t2 < V; ++t2)
      if (p1[t1] * p2[t2] > 1e-6) expected[{t1, t2}] = p1[t1] * p2[t2];
  }

  SpeculativeConfig spec =
      parse_speculative_config("{\"model\": \"" + dir + "gemma4-moe-assistant\", \"num_speculative_tokens\": 1}");
  EngineConfig config;
  config.max_model_len = 64;
  config.kv_cache_bytes = 4 << 20;
  config.num_speculative_tokens = 1;
  Engine engine(*target, make_proposer(spec, *target), config);
  std::map<std::pair<int32_t, int32_t>, int> observed;
  const int n = 3000;
  for (int i = 0; i < n; ++i) {
    Request r;
    r.prompt = prompt;
    r.max_tokens = 3;
    r.ignore_eos = true;
    r.sampling = params;
    r.sampling.seed = 1000 + i;
    std::vector<int32_t> out;
    engine.submit(r, [&](const RequestOutput& o) { out.insert(out.end(), o.tokens.begin(), o.tokens.end()); });
    engine.run_until_idle();
    ASSERT_EQ(out.size(), 3u);
    ++observed[{out[0], out[1]}];
  }
  const SpecStats st = engine.stats().spec;
  if (constrained) {  // some drafts are cut by the grammar, the others verified
    EXPECT_GT(st.num_drafts, static_cast<uint64_t>(n / 10));
    EXPECT_LT(st.num_drafts, static_cast<uint64_t>(n));
  } else {
    EXPECT_EQ(st.num_drafts, static_cast<uint64_t>(n));
  }
  expect_fits(observed, expected, n);
}

TEST(SpeculativeSampling, MatchesTargetAtTemperatureOne) { check_engine_joint(1.0f, 1.0f); }
TEST(SpeculativeSampling, MatchesTargetWithTopP) { check_engine_joint(1.0f, 0.95f); }
TEST(SpeculativeSampling, MatchesTheMaskedTargetUnderAGrammar) { check_engine_joint(1.0f, 1.0f, true); }

}  // namespace
}  // namespace tandem
