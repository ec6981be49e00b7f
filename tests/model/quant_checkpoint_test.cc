// A whole quantized checkpoint through the loader and the model, without transformers: the bf16
// gemma4-moe fixture rewritten as compressed-tensors int4 (symmetric, group 16; experts as
// per-expert linears, as llm-compressor saves them) must give the same logits as the same fixture
// with every quantized linear replaced by its dequantized f32 values (tandem reads f32 weights as
// stored). Only the summation order differs, so they agree far inside the 1e-4 golden tolerance.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>

#include "fixtures.h"
#include "model/gemma4.h"
#include "util/half.h"

namespace tandem {
namespace {
namespace fs = std::filesystem;
using nlohmann::json;
using testing::OutTensor;

constexpr int64_t kGroup = 16;

bool is_linear(const std::string& name) {
  if (name.rfind("model.language_model.", 0) != 0) return false;
  for (const char* l : {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"})
    if (name.ends_with(std::string(l) + ".weight")) return true;
  return false;
}

std::vector<float> values_of(const TensorInfo& t) {
  std::vector<float> v(t.numel());
  const auto* p = static_cast<const uint16_t*>(t.data);
  for (size_t i = 0; i < v.size(); ++i) v[i] = bf16_to_f32(p[i]);
  return v;
}

// Symmetric int4, group kGroup, bf16 scales max|w| / 7.5 (compressed-tensors' rule): appends the
// packed tensors of module `m` ([N, K] rows of w) to q, and returns the dequantized values.
std::vector<float> quantize(const std::string& m, const float* w, int64_t N, int64_t K, std::vector<OutTensor>& q) {
  const int64_t G = K / kGroup;
  std::vector<int32_t> packed(N * K / 8, 0);
  std::vector<uint16_t> scales(N * G);
  std::vector<float> deq(N * K);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t g = 0; g < G; ++g) {
      float amax = 0;
      for (int64_t k = g * kGroup; k < (g + 1) * kGroup; ++k) amax = std::max(amax, std::abs(w[n * K + k]));
      scales[n * G + g] = f32_to_bf16(std::max(amax / 7.5f, 1e-8f));
      const float s = bf16_to_f32(scales[n * G + g]);
      for (int64_t k = g * kGroup; k < (g + 1) * kGroup; ++k) {
        const int qv = static_cast<int>(std::clamp(std::nearbyint(w[n * K + k] / s), -8.0f, 7.0f));
        packed[(n * K + k) / 8] |= static_cast<int32_t>(static_cast<uint32_t>(qv + 8) << (4 * (k % 8)));
        deq[n * K + k] = static_cast<float>(qv) * s;
      }
    }
  auto bytes = [](const auto& v) { return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(v[0])); };
  q.push_back({m + ".weight_packed", DType::I32, {N, K / 8}, bytes(packed)});
  q.push_back({m + ".weight_scale", DType::BF16, {N, G}, bytes(scales)});
  return deq;
}

OutTensor f32_tensor(const std::string& name, const std::vector<int64_t>& shape, const std::vector<float>& v) {
  return {name, DType::F32, shape, std::string(reinterpret_cast<const char*>(v.data()), v.size() * 4)};
}

std::vector<float> last_logits(const std::string& dir, const std::vector<int32_t>& ids) {
  auto backend = make_cpu_backend(2);
  auto model = Gemma4Model::load(dir, *backend);
  const int32_t T = static_cast<int32_t>(ids.size());
  KvCache kv(model->backend(), model->config(), {T / 16 + 2, T / 16 + 2}, 16);
  BlockTables table;
  EXPECT_TRUE(kv.reserve(table, 0, T));
  ForwardBatch batch;
  for (int32_t i = 0; i < T; ++i) batch.add(ids[i], i, &table, true);
  HostTensor hidden, logits;
  model->forward(batch, kv, &hidden, &logits);
  return std::vector<float>(logits.f32(), logits.f32() + logits.view().numel());
}

TEST(QuantCheckpoint, Int4PerExpertCheckpointMatchesItsDequantizedWeights) {
  const std::string src = testing::fixtures_dir() + "/gemma4-moe";
  const fs::path root = fs::temp_directory_path() / ("tandem-quant-ckpt-" + std::to_string(::getpid()));
  fs::remove_all(root);
  const fs::path qdir = root / "int4", fdir = root / "dequantized";
  fs::create_directories(qdir);
  fs::create_directories(fdir);

  const WeightStore store = WeightStore::open(src + "/model.safetensors");
  std::vector<OutTensor> q, f;
  int linears = 0, experts = 0;
  for (const auto& [name, t] : store.tensors()) {
    const std::string raw(static_cast<const char*>(t.data), t.nbytes);
    if (is_linear(name)) {
      const std::string m = name.substr(0, name.size() - 7);
      f.push_back(f32_tensor(name, t.shape, quantize(m, values_of(t).data(), t.shape[0], t.shape[1], q)));
      ++linears;
    } else if (name.ends_with("experts.gate_up_proj") || name.ends_with("experts.down_proj")) {
      const bool gate_up = name.ends_with("gate_up_proj");
      const std::string dir = name.substr(0, name.rfind('.'));
      const int64_t E = t.shape[0], N = t.shape[1], K = t.shape[2], parts = gate_up ? 2 : 1;
      const std::vector<float> w = values_of(t);
      std::vector<float> deq;
      for (int64_t e = 0; e < E; ++e)
        for (int64_t p = 0; p < parts; ++p) {
          const std::string m = dir + "." + std::to_string(e) + "." + (gate_up ? (p ? "up_proj" : "gate_proj") : "down_proj");
          const auto d = quantize(m, &w[(e * N + p * N / parts) * K], N / parts, K, q);
          deq.insert(deq.end(), d.begin(), d.end());
        }
      f.push_back(f32_tensor(name, t.shape, deq));
      ++experts;
    } else {
      q.push_back({name, t.dtype, t.shape, raw});
      f.push_back({name, t.dtype, t.shape, raw});
    }
  }
  ASSERT_GT(linears, 10);
  ASSERT_GT(experts, 1);
  testing::write_safetensors(qdir / "model.safetensors", q);
  testing::write_safetensors(fdir / "model.safetensors", f);

  json config;
  std::ifstream(src + "/config.json") >> config;
  std::ofstream(fdir / "config.json") << config.dump();
  config["quantization_config"] = json::parse(R"({"quant_method": "compressed-tensors", "format": "pack-quantized",
      "config_groups": {"group_0": {"targets": ["Linear"], "weights": {"num_bits": 4, "type": "int",
        "symmetric": true, "strategy": "group", "group_size": 16}}},
      "ignore": ["lm_head", "re:.*embed.*", "re:.*router.*", "re:.*vision.*"]})");
  std::ofstream(qdir / "config.json") << config.dump();

  const std::vector<int32_t> ids = {2, 17, 301, 44, 9, 250, 77, 5, 18, 400, 123};
  const std::vector<float> lq = last_logits(qdir.string(), ids), lf = last_logits(fdir.string(), ids);
  ASSERT_EQ(lq.size(), lf.size());
  EXPECT_LT(testing::relative_l2(lq.data(), lf.data(), lf.size()), 1e-5);

  // A quantized module whose packed codes are missing: the error names the tensor it looked for.
  const fs::path mdir = root / "missing";
  fs::create_directories(mdir);
  const std::string missing = "model.language_model.layers.0.self_attn.q_proj.weight_packed";
  std::vector<OutTensor> m;
  for (const OutTensor& t : q)
    if (t.name != missing) m.push_back(t);
  ASSERT_EQ(m.size() + 1, q.size());
  testing::write_safetensors(mdir / "model.safetensors", m);
  std::ofstream(mdir / "config.json") << config.dump();
  try {
    auto backend = make_cpu_backend(1);
    Gemma4Model::load(mdir.string(), *backend);
    ADD_FAILURE() << "loaded a checkpoint without " << missing;
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("has no tensor " + missing), std::string::npos) << e.what();
  }
  fs::remove_all(root);
}

}  // namespace
}  // namespace tandem
