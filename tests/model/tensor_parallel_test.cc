// Tensor parallelism on the CPU backend: the model split 2 and 4 ways (TensorParallelGroup: one
// thread and one CPU backend per rank, an in-process communicator between them, rank 0 leading)
// gives the unsharded model's logits on every target fixture, for the prompt and along a greedy
// continuation, and the same greedy tokens, plain and drafted by the MTP drafter (sharded alike).
// Not bit-exact: a rank's o_proj / down_proj adds up its own heads' or columns' products and the
// all-reduce then adds the ranks' partial sums, a different order of the same f32 additions, so the
// logits differ in their last bits. The logits are compared with the CPU's exact-f32 kernels, within
// 1e-5 relative L2 (ten times tighter than the fixtures' tolerance against transformers; the
// reordering gives at most 1.3e-6 here). The avx512-bf16 kernels would add their own rounding of
// each activation to 16 significant bits, which turns those last bits into ~1e-5 differences.
#include <gtest/gtest.h>

#include "fixtures.h"
#include "model/gemma4.h"
#include "model/tensor_parallel_group.h"
#include "spec/speculative_config.h"
#include "util/error.h"

namespace tandem {
namespace {

constexpr double kTolerance = 1e-5;
constexpr int kDecodeSteps = 8;

// A prompt's prefill and kDecodeSteps greedy decode steps, each feeding the previous argmax: the
// logits of every step ([T, V] for the prefill, [1, V] after) and the tokens picked.
struct GreedyRun {
  std::vector<HostTensor> logits;
  std::vector<int32_t> tokens;
};

int32_t argmax_last_row(const HostTensor& logits) {
  const TensorView v = logits.view();
  const float* row = v.as<float>() + (v.rows() - 1) * v.cols();
  return static_cast<int32_t>(std::max_element(row, row + v.cols()) - row);
}

// The model (rank 0 of its group, or the whole model) over a cache sized by its rank_config().
GreedyRun greedy_run(Gemma4Model& model, const std::vector<int32_t>& ids) {
  const int32_t T = static_cast<int32_t>(ids.size());
  const int64_t positions = T + kDecodeSteps + 1, blocks = positions / 16 + 2;
  KvCache kv(model.backend(), model.rank_config(), {blocks, blocks}, 16);
  BlockTables table;
  EXPECT_TRUE(kv.reserve(table, 0, positions));
  GreedyRun run;
  ForwardBatch batch;
  for (int32_t i = 0; i < T; ++i) batch.add(ids[i], i, &table, true);
  for (int step = 0; step <= kDecodeSteps; ++step) {
    if (step > 0) {
      batch.clear();
      batch.add(run.tokens.back(), T + step - 1, &table, true);
    }
    run.logits.emplace_back();
    model.forward(batch, kv, nullptr, &run.logits.back());
    run.tokens.push_back(argmax_last_row(run.logits.back()));
  }
  return run;
}

class TensorParallelTest : public ::testing::TestWithParam<std::string> {};

TEST_P(TensorParallelTest, ShardedLogitsAndGreedyTokensEqualUnsharded) {
  const testing::ExactCpuKernels exact;
  const std::string dir = GetParam();
  const WeightStore golden = WeightStore::open(dir + "/golden.safetensors");
  const auto ids = testing::tensor_values<int32_t>(golden, "ids.0");
  const auto greedy = testing::tensor_values<int32_t>(golden, "greedy.0");
  const ModelConfig c = load_model_config(dir);

  auto backend = make_cpu_backend(1);
  auto model = Gemma4Model::load(c, *backend, LoadFormat::safetensors);
  const GreedyRun unsharded = greedy_run(*model, ids);
  // The unsharded run is right to begin with: its greedy tokens are transformers'.
  const size_t n = std::min(greedy.size(), unsharded.tokens.size());
  ASSERT_EQ(std::vector<int32_t>(unsharded.tokens.begin(), unsharded.tokens.begin() + n),
            std::vector<int32_t>(greedy.begin(), greedy.begin() + n));

  for (int N : {2, 4}) {
    SCOPED_TRACE("tensor-parallel size " + std::to_string(N));
    auto rank0 = make_cpu_backend(1);
    TensorParallelGroup group(*rank0, c, N, 1);
    const GreedyRun sharded = greedy_run(group.rank(0), ids);
    const int64_t V = c.vocab_size;
    ASSERT_EQ(sharded.logits.size(), unsharded.logits.size());
    for (size_t step = 0; step < sharded.logits.size(); ++step) {
      const HostTensor &a = sharded.logits[step], &b = unsharded.logits[step];
      ASSERT_EQ(a.view().numel(), b.view().numel());
      for (int64_t row = 0; row < a.view().rows(); ++row)
        EXPECT_LT(testing::relative_l2(a.f32() + row * V, b.f32() + row * V, V), kTolerance)
            << "step " << step << ", row " << row;
    }
    EXPECT_EQ(sharded.tokens, unsharded.tokens);
    // Each layer all-reduces its attention output and its MLP output (and, on MoE models, its experts').
    const uint64_t per_step = static_cast<uint64_t>(c.n_layers) * (c.moe ? 3 : 2);
    EXPECT_EQ(group.communicator().calls(), per_step * sharded.logits.size());
  }
}

// Through the engine: plain greedy output of the sharded target, and greedy output drafted by the
// sharded MTP drafter (k = 3), equal the unsharded target's plain greedy output.
TEST_P(TensorParallelTest, ShardedEngineGreedyOutputEqualsUnsharded) {
  const std::string dir = GetParam();
  const std::string drafter = dir + "-assistant";
  const WeightStore golden = WeightStore::open(dir + "/golden.safetensors");
  const ModelConfig c = load_model_config(dir);
  EngineConfig config;
  config.max_model_len = 128;
  config.kv_cache_bytes = 4 << 20;
  auto backend = make_cpu_backend(1);
  auto model = Gemma4Model::load(c, *backend, LoadFormat::safetensors);
  Engine unsharded(*model, nullptr, config);
  std::vector<std::vector<int32_t>> prompts, want;
  for (int p = 0; p < 3; ++p) {
    prompts.push_back(testing::tensor_values<int32_t>(golden, "ids." + std::to_string(p)));
    want.push_back(testing::greedy_generate(unsharded, prompts.back(), 24));
  }
  for (int N : {2, 4}) {
    SCOPED_TRACE("tensor-parallel size " + std::to_string(N));
    auto rank0 = make_cpu_backend(1);
    TensorParallelGroup group(*rank0, c, N, 1);
    Engine plain(group.rank(0), nullptr, config);
    EngineConfig spec_config = config;
    spec_config.num_speculative_tokens = 3;
    SpeculativeConfig spec = parse_speculative_config(
        "{\"method\": \"mtp\", \"model\": \"" + drafter + "\", \"num_speculative_tokens\": 3}");
    Engine speculative(group.rank(0), make_proposer(spec, group.rank(0)), spec_config);
    for (size_t p = 0; p < prompts.size(); ++p) {
      SCOPED_TRACE("prompt " + std::to_string(p));
      EXPECT_EQ(testing::greedy_generate(plain, prompts[p], 24), want[p]);
      EXPECT_EQ(testing::greedy_generate(speculative, prompts[p], 24), want[p]);
    }
    EXPECT_GT(speculative.stats().spec.num_accepted_tokens, 0u);  // the drafter drafted something right
  }
}

std::string fixture_name(const ::testing::TestParamInfo<std::string>& info) {
  std::string n = std::filesystem::path(info.param).filename().string();
  for (char& ch : n)
    if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
  return n;
}

INSTANTIATE_TEST_SUITE_P(Fixtures, TensorParallelTest, ::testing::ValuesIn(testing::target_fixtures()), fixture_name);

// The fixtures have 4 query heads: 3 or 8 ranks cannot share them out.
TEST(TensorParallel, RefusesAModelThatDoesNotSplit) {
  const ModelConfig c = load_model_config(testing::fixtures_dir() + "/gemma4-moe");
  auto backend = make_cpu_backend(1);
  for (int N : {3, 8}) {
    try {
      TensorParallelGroup group(*backend, c, N, 1);
      ADD_FAILURE() << "split " << N << " ways";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("num_attention_heads is 4, which does not split across "
                                           "--tensor-parallel-size " + std::to_string(N)),
                std::string::npos)
          << e.what();
    }
  }
}

TEST(TensorParallel, RefusesToSliceQuantizedWeights) {
  const std::string dir = testing::quant_fixtures_dir() + "/ct-int8-channel";
  if (!std::filesystem::exists(dir)) GTEST_SKIP() << dir << " has not been generated";
  auto backend = make_cpu_backend(1);
  try {
    TensorParallelGroup group(*backend, load_model_config(dir), 2, 1);
    ADD_FAILURE() << "loaded a quantized checkpoint's slices";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("tensor parallelism slices unquantized weights only"), std::string::npos)
        << e.what();
  }
}

TEST(TensorParallel, RefusesTheDraftModelProposer) {
  const std::string dir = testing::fixtures_dir() + "/";
  auto backend = make_cpu_backend(1);
  TensorParallelGroup group(*backend, load_model_config(dir + "gemma4-moe"), 2, 1);
  SpeculativeConfig spec = parse_speculative_config("{\"method\": \"draft_model\", \"model\": \"" + dir +
                                                    "gemma4-e2b\", \"num_speculative_tokens\": 2}");
  EXPECT_THROW(make_proposer(spec, group.rank(0)), Error);
}

// --load-format dummy: a rank's slice is the slice of the tensor an unsharded load generates, so a
// sharded dummy model computes what the unsharded one does.
TEST(TensorParallel, DummyWeightsShardLikeTheCheckpoint) {
  const testing::ExactCpuKernels exact;
  const ModelConfig c = load_model_config(testing::fixtures_dir() + "/gemma4-moe");
  auto backend = make_cpu_backend(1);
  auto model = Gemma4Model::load(c, *backend, LoadFormat::dummy);
  auto rank0 = make_cpu_backend(1);
  TensorParallelGroup group(*rank0, c, 2, 1, LoadFormat::dummy);
  const std::vector<int32_t> ids{2, 17, 99, 301, 5};
  const GreedyRun unsharded = greedy_run(*model, ids), sharded = greedy_run(group.rank(0), ids);
  const int64_t V = c.vocab_size;
  for (int64_t row = 0; row < static_cast<int64_t>(ids.size()); ++row)
    EXPECT_LT(testing::relative_l2(sharded.logits[0].f32() + row * V, unsharded.logits[0].f32() + row * V, V),
              kTolerance);
  EXPECT_EQ(sharded.tokens, unsharded.tokens);
}

}  // namespace
}  // namespace tandem
