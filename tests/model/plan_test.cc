// tandem plan: the arithmetic of what fits, through the real command.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "fixtures.h"

namespace tandem {
namespace {

nlohmann::json plan(const std::string& args) {
  std::string out;
  const std::string cmd = std::string(TANDEM_BINARY) + " plan " + testing::fixtures_dir() + "/gemma4-moe --json " + args;
  EXPECT_EQ(testing::run_command(cmd + " 2>/dev/null", &out), 0) << out;
  return nlohmann::json::parse(out);
}

TEST(Plan, CountsWeightsAndKvAndSaysWhatFits) {
  // gemma4-moe: sliding layers 2 KV heads × 32, full layers 1 × 64 (K=V): per token (f32)
  // 4 × 2·2·32·4 + 2 × 2·1·64·4 = 2048 + 1024 bytes.
  const auto small = plan("--max-model-len 100 --max-num-seqs 4 --memory 16MiB");
  EXPECT_EQ(small["kv_bytes_per_token"], 3072);
  EXPECT_EQ(small["kv_bytes_per_sequence"], 3072 * 101);
  EXPECT_GT(small["weights_bytes"].get<int64_t>(), 0);
  EXPECT_TRUE(small["fits"]);
  const auto big = plan("--max-model-len 4096 --max-num-seqs 256 --memory 16MiB");
  EXPECT_FALSE(big["fits"]);
  const int64_t for_kv = (16 << 20) - big["weights_bytes"].get<int64_t>();
  EXPECT_EQ(big["sequences_that_fit"], for_kv / (3072 * 4097));
  EXPECT_LE(big["sequences_that_fit"].get<int64_t>() * 3072 * 4097, for_kv);
  // An MTP drafter adds its weights but no KV (it reads the target's); k adds verify positions.
  const auto spec = plan("--max-model-len 100 --memory 16MiB --speculative-config '{\"model\": \"" +
                         testing::fixtures_dir() + "/gemma4-moe-assistant\", \"num_speculative_tokens\": 3}'");
  EXPECT_EQ(spec["speculative_method"], "mtp");
  EXPECT_EQ(spec["kv_bytes_per_token"], 3072);
  EXPECT_EQ(spec["kv_bytes_per_sequence"], 3072 * 104);
  EXPECT_GT(spec["drafter_weights_bytes"].get<int64_t>(), 0);
}

TEST(Plan, WorksFromConfigJsonAlone) {
  // No safetensors: the weights are what the loader's shapes take in bf16, which for the published
  // geometries is exactly 2 bytes × the parameter counts in shared/research/gemma4-target.md §6.2.
  auto plan_config = [](const std::string& dir, const std::string& args) {
    std::string out;
    const std::string cmd = std::string(TANDEM_BINARY) + " plan " + std::string(TANDEM_SOURCE_DIR) + "/bench/configs/" +
                            dir + " --json " + args + " 2>/dev/null";
    EXPECT_EQ(testing::run_command(cmd, &out), 0) << out;
    return nlohmann::json::parse(out);
  };
  const auto moe = plan_config("gemma4-26b-a4b", "--device cuda --memory 24GiB --max-model-len 8192 --max-num-seqs 4");
  EXPECT_EQ(moe["weights_bytes"].get<int64_t>(), 2 * 25'233'141'790ll);
  // bf16 KV on the GPU: 25 sliding layers × 8 KiB + 5 full (K=V) layers × 4 KiB per token (sliding
  // layers still keep every position).
  EXPECT_EQ(moe["kv_bytes_per_token"], 25 * 8192 + 5 * 4096);
  EXPECT_FALSE(moe["fits"]);  // 47 GiB of bf16 weights on a 24 GiB card
  EXPECT_EQ(plan_config("gemma4-31b", "")["weights_bytes"].get<int64_t>(), 2 * 30'697'345'340ll);
}

TEST(Plan, CountsPackedBytesOfAnInt4Checkpoint) {
  // The report's case: int4 (compressed-tensors W4A16, group 32, bf16 scales) 26B-A4B + bf16
  // assistant, k = 2, on a 24 GiB card. Quantized linears take 4 + 16/32 bits per weight; the
  // embedding / head (1.48 GB), router and norms stay bf16: about 15.3 GB in all
  // (shared/research/quant-formats.md §5.2).
  std::string out;
  const std::string configs = std::string(TANDEM_SOURCE_DIR) + "/bench/configs/";
  const std::string cmd = std::string(TANDEM_BINARY) + " plan " + configs + "gemma4-26b-a4b-w4a16 --json --device cuda " +
                          "--memory 24GiB --max-model-len 8192 --max-num-seqs 4 --speculative-config '{\"model\": \"" +
                          configs + "gemma4-26b-a4b-assistant\", \"num_speculative_tokens\": 2}' 2>/dev/null";
  ASSERT_EQ(testing::run_command(cmd, &out), 0) << out;
  const auto p = nlohmann::json::parse(out.substr(out.find("\n{") + 1));  // after the drafter's load log
  const int64_t weights = p["weights_bytes"].get<int64_t>();
  EXPECT_GT(weights, 15'000'000'000ll);
  EXPECT_LT(weights, 15'600'000'000ll);
  EXPECT_TRUE(p["fits"]) << out;
}

}  // namespace
}  // namespace tandem
