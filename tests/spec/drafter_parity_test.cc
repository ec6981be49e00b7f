// The assistant drafter's forward against transformers' module (golden_spec.safetensors `draft.*`):
// the same target state (our own target forward of the prompt), one and two draft steps, with the
// query at p (transformers) and at p-1 (vLLM, tandem's default).
#include <gtest/gtest.h>

#include "../model/fixtures.h"
#include "model/gemma4_assistant.h"

namespace tandem {
namespace {

struct Pair {
  std::string target, drafter;
};

class DrafterParity : public ::testing::TestWithParam<Pair> {};

// One drafter step for one row from host values (bonus or previous draft, its B-wide state):
// the post-projection state, the full logits and the greedy token, back on the host.
int32_t draft_step(Gemma4Assistant& drafter, const KvCache& kv, int32_t token, const float* hidden,
                   int32_t committed, const BlockTables& table, HostTensor& post, HostTensor& logits) {
  Backend& be = drafter.backend();
  const int64_t B = drafter.config().backbone_hidden;
  const AssistantRow row{committed, &table};
  drafter.begin_round(std::span(&row, 1), kv);
  Tensor tokens(be), state(be), next(be), drafts(be);
  upload_to(be, &token, tokens.resize(DType::I32, {1}));
  upload_to(be, hidden, state.resize(DType::F32, {1, B}));
  drafter.step(tokens, state, next.resize(DType::F32, {1, B}), drafts.resize(DType::I32, {1}), &logits);
  post = to_host(be, next);
  return to_host(be, drafts).view().as<int32_t>()[0];
}

// Runs the target over `ids` and two drafter steps from (bonus, final-normed hidden at T-1), and
// compares with transformers' records under `record` (e.g. "draft.pos_p").
void check_steps(Gemma4Model& target, Gemma4Assistant& drafter, const WeightStore& golden, const std::string& set,
                 const std::vector<std::pair<DraftPosition, std::string>>& variants) {
  const auto ids = testing::tensor_values<int32_t>(golden, set + ".ids");
  const int32_t bonus = testing::tensor_values<int32_t>(golden, set + ".bonus")[0];
  const int32_t T = static_cast<int32_t>(ids.size());
  const int64_t V = target.config().vocab_size, B = target.config().hidden;
  KvCache kv(target.backend(), target.config(), {4, 4}, 16);
  BlockTables table;
  ASSERT_TRUE(kv.reserve(table, 0, T + 1));
  ForwardBatch batch;
  for (int32_t i = 0; i < T; ++i) batch.add(ids[i], i, &table, i == T - 1);
  HostTensor hidden;
  target.forward(batch, kv, &hidden, nullptr);
  EXPECT_LT(testing::relative_l2(hidden.f32(), testing::tensor_values<float>(golden, set + ".hidden").data(), B), 1e-4);
  for (const auto& [convention, name] : variants) {
    SCOPED_TRACE(set + "." + name);
    drafter.position_convention = convention;
    const std::string pre = set + "." + name;
    HostTensor post, logits;
    const int32_t token = draft_step(drafter, kv, bonus, hidden.f32(), T, table, post, logits);
    EXPECT_LT(testing::relative_l2(logits.f32(), testing::tensor_values<float>(golden, pre + ".logits").data(), V), 1e-4);
    EXPECT_LT(testing::relative_l2(post.f32(), testing::tensor_values<float>(golden, pre + ".post").data(), B), 1e-4);
    EXPECT_EQ(token, testing::tensor_values<int32_t>(golden, pre + ".token")[0]);
    // Step 2: the drafter's own token and projected state, same position and KV view.
    HostTensor post2, logits2;
    const int32_t token2 = draft_step(drafter, kv, token, post.f32(), T, table, post2, logits2);
    EXPECT_LT(testing::relative_l2(logits2.f32(), testing::tensor_values<float>(golden, pre + ".step2.logits").data(), V),
              1e-4);
    EXPECT_LT(testing::relative_l2(post2.f32(), testing::tensor_values<float>(golden, pre + ".step2.post").data(), B), 1e-4);
    EXPECT_EQ(token2, testing::tensor_values<int32_t>(golden, pre + ".step2.token")[0]);
  }
}

TEST_P(DrafterParity, StepsMatchTransformers) {
  const std::string dir = testing::fixtures_dir() + "/";
  auto backend = testing::test_backend(2);
  auto target = Gemma4Model::load(dir + GetParam().target, *backend);
  auto drafter = Gemma4Assistant::load(dir + GetParam().drafter, *target);
  const WeightStore golden = WeightStore::open(dir + GetParam().drafter + "/golden_spec.safetensors");
  // Short prompt (inside the window): query at p (transformers) and at p-1 (vLLM).
  check_steps(*target, *drafter, golden, "draft", {{DraftPosition::hf, "pos_p"}, {DraftPosition::vllm, "pos_pm1"}});
  // Prompt 2.6x the window: the sliding layers' visible keys differ between conventions (W+1 vs W).
  check_steps(*target, *drafter, golden, "draft_long", {{DraftPosition::hf, "pos_p"}, {DraftPosition::vllm, "vllm"}});
}

INSTANTIATE_TEST_SUITE_P(Fixtures, DrafterParity,
                         ::testing::Values(Pair{"gemma4-moe", "gemma4-moe-assistant"},
                                           Pair{"gemma4-e2b", "gemma4-e2b-assistant"}),
                         [](const auto& info) {
                           return info.param.target == "gemma4-moe" ? std::string("dense_head") : std::string("centroid_head");
                         });

TEST(DrafterLoad, LogsLayerMappingAndRejectsMismatchedTarget) {
  const std::string dir = testing::fixtures_dir() + "/";
  auto backend = testing::test_backend(1);
  auto moe = Gemma4Model::load(dir + "gemma4-moe", *backend);
  auto drafter = Gemma4Assistant::load(dir + "gemma4-moe-assistant", *moe);
  EXPECT_EQ(drafter->target_layer(0), 4);  // last sliding layer of S,S,F,S,S,F
  EXPECT_EQ(drafter->target_layer(3), 5);  // last full layer
  // The e2b drafter was made for a target of width 80; the moe target is 64 wide.
  try {
    Gemma4Assistant::load(dir + "gemma4-e2b-assistant", *moe);
    FAIL() << "a drafter for another target loaded";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("gemma4-e2b-assistant"), std::string::npos) << msg;
    EXPECT_NE(msg.find("gemma4-moe"), std::string::npos) << msg;
    EXPECT_NE(msg.find("backbone_hidden_size"), std::string::npos) << msg;
    EXPECT_NE(msg.find("80"), std::string::npos) << msg;
  }
}

}  // namespace
}  // namespace tandem
