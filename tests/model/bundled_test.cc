// The bundled default model (models/tandem-code-demo, trained with tools/train_bundled.py) against
// transformers' logits and greedy output recorded when it was trained, and its drafter: greedy
// speculative output must equal plain output.
#include <gtest/gtest.h>

#include "engine/engine.h"
#include "fixtures.h"
#include "spec/speculative_config.h"

namespace tandem {
namespace {

const std::string kModel = std::string(TANDEM_SOURCE_DIR) + "/models/tandem-code-demo";
const std::string kDrafter = std::string(TANDEM_SOURCE_DIR) + "/models/tandem-code-demo-assistant";

TEST(BundledModel, MatchesTransformers) {
  auto backend = testing::test_backend(2);
  auto model = Gemma4Model::load(kModel, *backend);
  const WeightStore golden = WeightStore::open(kModel + "/golden.safetensors");
  const int64_t V = model->config().vocab_size;
  EngineConfig config;
  config.max_model_len = 512;
  config.kv_cache_bytes = 16 << 20;
  Engine engine(*model, nullptr, config);
  for (int p = 0; golden.find("ids." + std::to_string(p)); ++p) {
    SCOPED_TRACE("prompt " + std::to_string(p));
    const std::string i = std::to_string(p);
    const auto ids = testing::tensor_values<int32_t>(golden, "ids." + i);
    const auto positions = testing::tensor_values<int32_t>(golden, "prefill_pos." + i);
    const auto prefill = testing::tensor_values<float>(golden, "prefill_logits." + i);
    const auto greedy = testing::tensor_values<int32_t>(golden, "greedy." + i);
    const auto decode = testing::tensor_values<float>(golden, "decode_logits." + i);
    const int32_t T = static_cast<int32_t>(ids.size());
    const int64_t blocks = (T + 64) / 16 + 2;
    KvCache kv(model->backend(), model->config(), {blocks, blocks}, 16);
    BlockTables table;
    ASSERT_TRUE(kv.reserve(table, 0, T + 16));
    ForwardBatch batch;
    for (int32_t t = 0; t < T; ++t)
      batch.add(ids[t], t, &table, std::find(positions.begin(), positions.end(), t) != positions.end());
    HostTensor hidden, logits;
    model->forward(batch, kv, &hidden, &logits);
    for (size_t j = 0; j < positions.size(); ++j)
      EXPECT_LT(testing::relative_l2(logits.f32() + j * V, prefill.data() + j * V, V), 1e-4) << "position " << positions[j];
    const int64_t steps = static_cast<int64_t>(decode.size() / V);
    for (int64_t j = 1; j < steps; ++j) {
      batch.clear();
      batch.add(greedy[j - 1], T + static_cast<int32_t>(j) - 1, &table, true);
      model->forward(batch, kv, &hidden, &logits);
      EXPECT_LT(testing::relative_l2(logits.f32(), decode.data() + j * V, V), 1e-4) << "decode step " << j;
    }
    EXPECT_EQ(testing::greedy_generate(engine, ids, static_cast<int>(greedy.size())), greedy);
  }
}

TEST(BundledModel, SpeculativeGreedyEqualsPlain) {
  auto backend = testing::test_backend(2);
  auto model = Gemma4Model::load(kModel, *backend);
  const WeightStore golden = WeightStore::open(kModel + "/golden.safetensors");
  EngineConfig config;
  config.max_model_len = 512;
  config.kv_cache_bytes = 16 << 20;
  config.num_speculative_tokens = 3;
  SpeculativeConfig spec = parse_speculative_config("{\"model\": \"" + kDrafter + "\", \"num_speculative_tokens\": 3}");
  Engine engine(*model, make_proposer(spec, *model), config);
  EXPECT_EQ(spec.method, "mtp");
  for (int p = 0; golden.find("ids." + std::to_string(p)); ++p) {
    const auto ids = testing::tensor_values<int32_t>(golden, "ids." + std::to_string(p));
    const auto greedy = testing::tensor_values<int32_t>(golden, "greedy." + std::to_string(p));
    EXPECT_EQ(testing::greedy_generate(engine, ids, static_cast<int>(greedy.size())), greedy) << "prompt " << p;
  }
  const SpecStats s = engine.stats().spec;
  EXPECT_GT(s.num_accepted_tokens, 0u);  // a trained drafter: real acceptance, not ~0
}

}  // namespace
}  // namespace tandem
