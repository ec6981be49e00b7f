// tandem plan: the arithmetic of what fits, through the real command.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "fixtures.h"
#include "model/byte_model.h"
#include "model/gemma4.h"
#include "model/gemma4_assistant.h"

namespace tandem {
namespace {

nlohmann::json plan(const std::string& args) {
  std::string out;
  // In a subshell whose stderr (the load log) is dropped: run_command takes both streams.
  const std::string cmd = std::string(TANDEM_BINARY) + " plan " + testing::fixtures_dir() + "/gemma4-moe --json " + args;
  EXPECT_EQ(testing::run_command("(" + cmd + " 2>/dev/null)", &out), 0) << out;
  return nlohmann::json::parse(out);
}

TEST(Plan, CountsWeightsAndKvAndSaysWhatFits) {
  // gemma4-moe: sliding layers 2 KV heads × 32, full layers 1 × 64 (K=V), window 8. Per token (f32):
  // full layers 2 × 2·1·64·4 = 1024 bytes for every position; sliding layers 4 × 2·2·32·4 = 2048
  // bytes for the positions they keep. In blocks of 16 (16 KiB and 32 KiB): a sequence of 100 (+1
  // verify position) takes 7 full blocks and, on sliding layers, its working set of ceil(10 / 16) +
  // ceil(1 / 16) + 2 = 4 blocks.
  const auto small = plan("--max-model-len 100 --max-num-seqs 4 --memory 16MiB");
  EXPECT_EQ(small["kv_bytes_per_token"], 1024);
  EXPECT_EQ(small["kv_sliding_bytes_per_token"], 2048);
  EXPECT_EQ(small["kv_sliding_positions_kept"], 9);
  EXPECT_EQ(small["kv_sliding_bytes_per_sequence"], 4 * 16 * 2048);
  EXPECT_EQ(small["kv_bytes_per_sequence"], 7 * 16 * 1024 + 4 * 16 * 2048);
  // 4 such sequences are shorter than the sliding working set of 4 sequences (4 · 4 blocks + 2048 / 16
  // for a step), so their sliding layers keep every position: 28 blocks of each group.
  EXPECT_EQ(small["kv_bytes_needed"], 28 * 16 * (1024 + 2048));
  EXPECT_GT(small["weights_bytes"].get<int64_t>(), 0);
  EXPECT_TRUE(small["fits"]);
  // On the CPU no step activations are counted (serve sizes the CPU's KV cache on its own terms).
  EXPECT_EQ(small["activation_bytes"], 0);
  EXPECT_EQ(small["bytes_left"].get<int64_t>(), (16 << 20) - small["needed_bytes"].get<int64_t>());
  // The text says what the rest would hold, a length no longer than the model's own (1024 here).
  std::string text;
  EXPECT_EQ(testing::run_command(std::string(TANDEM_BINARY) + " plan " + testing::fixtures_dir() +
                                     "/gemma4-moe --max-model-len 100 --memory 1GiB 2>/dev/null",
                                 &text),
            0);
  EXPECT_NE(text.find("--max-model-len 1024 (the model's max_position_embeddings) for 64 sequences"), std::string::npos)
      << text;
  const auto big = plan("--max-model-len 4096 --max-num-seqs 256 --memory 16MiB");
  EXPECT_FALSE(big["fits"]);
  // 4097 positions: 257 full blocks per sequence; 4 sliding blocks per sequence + 128 for a step.
  const int64_t for_kv = (16 << 20) - big["weights_bytes"].get<int64_t>();
  const int64_t per_sequence = 257 * 16 * 1024 + 4 * 16 * 2048, step = 128 * 16 * 2048;
  EXPECT_EQ(big["sequences_that_fit"], for_kv >= step ? (for_kv - step) / per_sequence : 0);
  // An MTP drafter adds its weights but no KV (it reads the target's); k adds verify positions.
  const auto spec = plan("--max-model-len 100 --memory 16MiB --speculative-config '{\"model\": \"" +
                         testing::fixtures_dir() + "/gemma4-moe-assistant\", \"num_speculative_tokens\": 3}'");
  EXPECT_EQ(spec["speculative_method"], "mtp");
  EXPECT_EQ(spec["kv_bytes_per_token"], 1024);
  EXPECT_EQ(spec["kv_bytes_per_sequence"], 7 * 16 * 1024 + 4 * 16 * 2048);  // 104 positions: still 7 blocks
  const auto spec_long = plan("--max-model-len 109 --memory 16MiB --speculative-config '{\"model\": \"" +
                              testing::fixtures_dir() + "/gemma4-moe-assistant\", \"num_speculative_tokens\": 3}'");
  EXPECT_EQ(spec_long["kv_bytes_per_sequence"], 8 * 16 * 1024 + 4 * 16 * 2048);  // 113 positions: 8 blocks
  EXPECT_GT(spec["drafter_weights_bytes"].get<int64_t>(), 0);
}

TEST(Plan, LoadsTheTargetAndTheDrafterOnce) {
  // The weights' bytes and the byte model read the same loads without data, so each model's online
  // quantization and the assistant's layer mapping are logged once.
  const std::string fixtures = testing::fixtures_dir();
  auto log_of = [&](const std::string& drafter) {
    const std::string cmd = std::string(TANDEM_BINARY) + " plan " + fixtures + "/gemma4-moe --memory 1GiB -q int8 " +
                            "--speculative-config '{\"model\": \"" + fixtures + "/" + drafter +
                            "\", \"num_speculative_tokens\": 2, \"quantization\": \"int4\"}'";
    std::string out;
    EXPECT_EQ(testing::run_command(cmd, &out), 0) << out;
    return out;
  };
  auto count = [](const std::string& text, const std::string& line) {
    int n = 0;
    for (size_t at = text.find(line); at != std::string::npos; at = text.find(line, at + 1)) ++n;
    return n;
  };
  const std::string mtp = log_of("gemma4-moe-assistant");
  EXPECT_EQ(count(mtp, "gemma4-moe: quantizing at load, online int8"), 1) << mtp;
  EXPECT_EQ(count(mtp, "gemma4-moe-assistant: quantizing at load, online int4"), 1) << mtp;
  EXPECT_EQ(count(mtp, "drafter layer 0 (sliding) reads target layer"), 1) << mtp;
  // A draft model (here the target's own checkpoint) is a model of its own, loaded once too.
  const std::string draft_model = log_of("gemma4-moe");
  EXPECT_EQ(count(draft_model, "gemma4-moe: quantizing at load, online int8"), 1) << draft_model;
  EXPECT_EQ(count(draft_model, "gemma4-moe: quantizing at load, online int4"), 1) << draft_model;
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
  // bf16 KV on the GPU: 5 full (K=V) layers × 4 KiB per token for every position; 25 sliding layers ×
  // 8 KiB per position for the last 1025 positions of each sequence: 68 blocks of 16 (1025 + 1 kept
  // positions in 65, a verify block in 1, 2 for block boundaries), 212.5 MiB.
  EXPECT_EQ(moe["kv_bytes_per_token"], 5 * 4096);
  EXPECT_EQ(moe["kv_sliding_bytes_per_token"], 25 * 8192);
  EXPECT_EQ(moe["kv_sliding_positions_kept"], 1025);
  EXPECT_EQ(moe["kv_sliding_bytes_per_sequence"], 68 * 16 * 25 * 8192);
  EXPECT_FALSE(moe["fits"]);  // 47 GiB of bf16 weights on a 24 GiB card
  // No sequence count or length helps then, and the text says so instead of suggesting zeros.
  std::string text;
  EXPECT_EQ(testing::run_command(std::string(TANDEM_BINARY) + " plan " + std::string(TANDEM_SOURCE_DIR) +
                                     "/bench/configs/gemma4-26b-a4b --device cuda --memory 24GiB 2>/dev/null",
                                 &text),
            0);
  EXPECT_NE(text.find("to fit         no sequence fits: the weights take 48128.4 MiB, more than the budget"),
            std::string::npos)
      << text;
  // FP8-Dynamic (E4M3 linears with per-channel bf16 scales, the embedding / head and router bf16):
  // about half the bf16 bytes.
  const double fp8 = plan_config("gemma4-26b-a4b-fp8", "--device cuda")["weights_bytes"].get<int64_t>();
  EXPECT_GT(fp8, 0.45 * moe["weights_bytes"].get<double>());
  EXPECT_LT(fp8, 0.55 * moe["weights_bytes"].get<double>());
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
  // On a GPU serve keeps a step's activations out of the KV cache, and so does the plan: a 2048-row step
  // (per row 4 · (8 · 2816 + 3 · 16 · 512 + 2 · (2 · 704 · 8 + 128)) bytes) with the logits of 4 × 3 rows
  // (twice, target and drafter, 262144 f32 each), plus 512 MiB of workspace.
  EXPECT_EQ(p["activation_bytes"].get<int64_t>(),
            4 * (2048ll * (8 * 2816 + 3 * 16 * 512 + 2 * (2 * 704 * 8 + 128)) + 2 * 12ll * 262144) + (512ll << 20));
  EXPECT_EQ(p["needed_bytes"].get<int64_t>(), weights + p["drafter_weights_bytes"].get<int64_t>() +
                                                  p["activation_bytes"].get<int64_t>() +
                                                  p["kv_bytes_needed"].get<int64_t>());
  // What is left goes to the KV cache: more sequences of this length, or longer ones.
  EXPECT_EQ(p["bytes_left"].get<int64_t>(), (24ll << 30) - p["needed_bytes"].get<int64_t>());
  EXPECT_GT(p["sequences_that_fit"].get<int64_t>(), 4);
  EXPECT_GT(p["max_model_len_that_fits"].get<int64_t>(), 8192);
}

TEST(Plan, PredictsStepBytesAndSpeedupsFromTheByteModel) {
  // The byte model of a loaded model (what bench step sets beside its times) and plan's, from the same
  // shapes without data, agree: a decode row touches top_k experts a layer, so plan's decode bytes are
  // the loaded fixture's step bytes with 2 of 8 experts in every layer, plus the KV of --context 40 + 1
  // keys (f32 on the CPU).
  const std::string fixtures = testing::fixtures_dir();
  const auto p = plan("--device cpu --memory 1GiB --context 40 --bandwidth 100 --acceptance 0.75,0.5 "
                      "--speculative-config '{\"model\": \"" + fixtures + "/gemma4-moe-assistant\", "
                      "\"num_speculative_tokens\": 2}'");
  const auto& b = p["byte_model"];
  auto backend = make_cpu_backend(1);
  auto model = Gemma4Model::load(fixtures + "/gemma4-moe", *backend);
  const ModelConfig& c = model->config();
  const double kv = kv_read_bytes(c, 1, 41, 0, DType::F32);
  EXPECT_DOUBLE_EQ(b["decode_bytes"].get<double>(),
                   static_cast<double>(model->step_weight_bytes(std::vector<int>(c.n_layers, c.top_k_experts))) + kv);
  EXPECT_DOUBLE_EQ(b["decode_experts_per_layer"].get<double>(), 2.0);
  auto assistant = Gemma4Assistant::load(fixtures + "/gemma4-moe-assistant", *model);
  EXPECT_DOUBLE_EQ(b["draft_bytes"].get<double>(),
                   static_cast<double>(assistant->step_weight_bytes()) +
                       kv_read_bytes(assistant->config(), 1, 40, 0, DType::F32));
  // The roofline at --bandwidth 100 GB/s.
  EXPECT_DOUBLE_EQ(b["decode_ms"].get<double>(), b["decode_bytes"].get<double>() / 100e9 * 1e3);
  // k = 1 and 2 at 75 % and 50 %: verify blocks of 2 and 3 rows touch 8 · (1 − (6/8)^rows) experts a layer
  // (3.5 and 4.625); 1 + k · a tokens a round; the speedup is tokens × decode bytes / round bytes.
  const auto& rounds = b["speculation"];
  ASSERT_EQ(rounds.size(), 2u);
  const double decode = b["decode_bytes"].get<double>(), draft = b["draft_bytes"].get<double>();
  const double acceptance[2] = {0.75, 0.5}, experts[2] = {3.5, 4.625};
  for (int k = 1; k <= 2; ++k) {
    const auto& r = rounds[k - 1];
    EXPECT_EQ(r["k"], k);
    EXPECT_DOUBLE_EQ(r["verify_experts_per_layer"].get<double>(), experts[k - 1]);
    const double verify = r["verify_bytes"].get<double>();
    EXPECT_GT(verify, decode);
    EXPECT_DOUBLE_EQ(r["tokens_per_round"].get<double>(), 1 + k * acceptance[k - 1]);
    EXPECT_DOUBLE_EQ(r["speedup"].get<double>(), (1 + k * acceptance[k - 1]) * decode / (verify + k * draft));
  }
  // Without rates: the config's k and the acceptance at which its round pays for itself.
  const auto q = plan("--memory 1GiB --speculative-config '{\"model\": \"" + fixtures +
                      "/gemma4-moe-assistant\", \"num_speculative_tokens\": 2}'");
  const auto& only = q["byte_model"]["speculation"];
  ASSERT_EQ(only.size(), 1u);
  EXPECT_EQ(only[0]["k"], 2);
  EXPECT_DOUBLE_EQ(only[0]["break_even_acceptance"].get<double>(),
                   (only[0]["round_bytes"].get<double>() / q["byte_model"]["decode_bytes"].get<double>() - 1) / 2);
  // Rates need a drafter to pay for.
  std::string out;
  EXPECT_NE(testing::run_command(std::string(TANDEM_BINARY) + " plan " + fixtures + "/gemma4-moe --acceptance 0.5 2>&1", &out),
            0);
  EXPECT_NE(out.find("--acceptance needs --speculative-config"), std::string::npos) << out;
}

}  // namespace
}  // namespace tandem
