// Every target fixture against transformers (tests/fixtures/*/golden.safetensors, made by
// tools/make_fixtures.py): prefill logits of every position, then teacher-forced decode steps
// along transformers' greedy continuation, each within 1e-4 relative L2 (f32 compute on bf16
// weights), with the CPU's default kernels and with its exact-f32 ones; and the engine's own greedy
// continuation must equal transformers' token for token.
// The quantized fixtures (tests/fixtures/quant/*) run the same checks against transformers on
// their dequantized weights.
#include <gtest/gtest.h>

#include "engine/engine.h"
#include "fixtures.h"
#include "model/gemma4.h"

namespace tandem {
namespace {

constexpr double kTolerance = 1e-4;

class GoldenTest : public ::testing::TestWithParam<std::string> {};

void check_logits(const std::string& dir) {
  auto backend = testing::test_backend(2);
  auto model = Gemma4Model::load(dir, *backend);
  const WeightStore golden = WeightStore::open(dir + "/golden.safetensors");
  const int64_t V = model->config().vocab_size;
  for (int p = 0; golden.find("ids." + std::to_string(p)); ++p) {
    SCOPED_TRACE("prompt " + std::to_string(p));
    const auto ids = testing::tensor_values<int32_t>(golden, "ids." + std::to_string(p));
    const auto prefill = testing::tensor_values<float>(golden, "prefill_logits." + std::to_string(p));
    const auto greedy = testing::tensor_values<int32_t>(golden, "greedy." + std::to_string(p));
    const auto decode = testing::tensor_values<float>(golden, "decode_logits." + std::to_string(p));
    const int32_t T = static_cast<int32_t>(ids.size());
    ASSERT_EQ(prefill.size(), static_cast<size_t>(T * V));

    const int64_t blocks = (T + static_cast<int64_t>(greedy.size()) + 16) / 16 + 1;
    KvCache kv(model->backend(), model->config(), {blocks, blocks}, 16);
    BlockTables table;
    ASSERT_TRUE(kv.reserve(table, 0, T + static_cast<int64_t>(greedy.size()) + 1));
    ForwardBatch batch;
    for (int32_t i = 0; i < T; ++i) batch.add(ids[i], i, &table, true);
    HostTensor hidden, logits;
    model->forward(batch, kv, &hidden, &logits);
    for (int32_t i = 0; i < T; ++i)
      EXPECT_LT(testing::relative_l2(logits.f32() + i * V, prefill.data() + i * V, V), kTolerance) << "position " << i;

    // Decode step j feeds greedy[j-1] (step 0's logits are the last prefill row).
    for (size_t j = 1; j < greedy.size(); ++j) {
      batch.clear();
      batch.add(greedy[j - 1], T + static_cast<int32_t>(j) - 1, &table, true);
      model->forward(batch, kv, &hidden, &logits);
      EXPECT_LT(testing::relative_l2(logits.f32(), decode.data() + j * V, V), kTolerance) << "decode step " << j;
    }
  }
}

TEST_P(GoldenTest, PrefillAndDecodeLogitsMatchTransformers) { check_logits(GetParam()); }

TEST_P(GoldenTest, PrefillAndDecodeLogitsMatchTransformersExactKernels) {
  const testing::ExactCpuKernels exact;
  check_logits(GetParam());
}

TEST_P(GoldenTest, GreedyContinuationMatchesTransformers) {
  auto backend = testing::test_backend(2);
  auto model = Gemma4Model::load(GetParam(), *backend);
  const WeightStore golden = WeightStore::open(GetParam() + "/golden.safetensors");
  EngineConfig config;
  config.max_model_len = 256;
  config.kv_cache_bytes = 8 << 20;
  Engine engine(*model, nullptr, config);
  for (int p = 0; golden.find("ids." + std::to_string(p)); ++p) {
    const auto ids = testing::tensor_values<int32_t>(golden, "ids." + std::to_string(p));
    const auto greedy = testing::tensor_values<int32_t>(golden, "greedy." + std::to_string(p));
    EXPECT_EQ(testing::greedy_generate(engine, ids, static_cast<int>(greedy.size())), greedy) << "prompt " << p;
  }
}

std::string fixture_name(const ::testing::TestParamInfo<std::string>& info) {
  std::string n = std::filesystem::path(info.param).filename().string();
  for (char& ch : n)
    if (!isalnum(static_cast<unsigned char>(ch))) ch = '_';
  return n;
}

INSTANTIATE_TEST_SUITE_P(Fixtures, GoldenTest, ::testing::ValuesIn(testing::target_fixtures()),
                         fixture_name);
INSTANTIATE_TEST_SUITE_P(QuantFixtures, GoldenTest, ::testing::ValuesIn(testing::quant_fixtures()),
                         fixture_name);
GTEST_ALLOW_UNINSTANTIATED_PARAMETERIZED_TEST(GoldenTest);

TEST(Fixtures, AreCommitted) { EXPECT_GE(testing::target_fixtures().size(), 2u); }

TEST(Fixtures, QuantizedAreGenerated) {
  if (testing::quant_fixtures().empty())
    GTEST_SKIP() << testing::quant_fixtures_dir()
                 << " has no fixtures yet: run tools/make_quant_fixtures.py --out tests/fixtures/quant";
}

}  // namespace
}  // namespace tandem
