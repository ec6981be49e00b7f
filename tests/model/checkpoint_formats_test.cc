// The same model stored differently must give the same logits: sharded with an index, mixed
// dtypes (F32 / F16-exact / BF16), and the older `moe.*` tensor names for experts.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "fixtures.h"
#include "model/gemma4.h"
#include "model/weights.h"
#include "util/half.h"

namespace tandem {
namespace {
namespace fs = std::filesystem;
using nlohmann::json;

using testing::OutTensor;
using testing::write_safetensors;

// BF16 -> F32 is exact, so a checkpoint with some tensors widened must give the same logits.
OutTensor widen_to_f32(const TensorInfo& t, const std::string& name) {
  OutTensor o{name, DType::F32, t.shape, std::string(t.numel() * 4, '\0')};
  const auto* src = static_cast<const uint16_t*>(t.data);
  auto* dst = reinterpret_cast<float*>(o.bytes.data());
  for (int64_t i = 0; i < t.numel(); ++i) dst[i] = bf16_to_f32(src[i]);
  return o;
}

TEST(CheckpointFormats, ShardedMixedDtypesAndLegacyExpertNames) {
  const std::string src = testing::fixtures_dir() + "/gemma4-moe";
  const fs::path dir = fs::temp_directory_path() / ("tandem-shards-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  fs::copy_file(src + "/config.json", dir / "config.json");
  const WeightStore store = WeightStore::open(src + "/model.safetensors");
  std::vector<OutTensor> shard[2];
  json weight_map = json::object();
  int i = 0, legacy = 0, widened = 0;
  for (const auto& [name, t] : store.tensors()) {
    std::string out_name = name;
    for (const char* from : {".experts.gate_up_proj", ".experts.down_proj", ".router.per_expert_scale"}) {
      const auto at = out_name.find(from);
      if (at == std::string::npos) continue;
      const std::string leaf = std::string(from).substr(std::string(from).rfind('.') + 1);
      out_name = out_name.substr(0, at) + ".moe." + leaf;
      ++legacy;
    }
    const int s = i++ % 2;
    if (s == 0 && t.dtype == DType::BF16) {
      shard[s].push_back(widen_to_f32(t, out_name));
      ++widened;
    } else {
      shard[s].push_back({out_name, t.dtype, t.shape, std::string(static_cast<const char*>(t.data), t.nbytes)});
    }
    weight_map[out_name] = s ? "model-00002-of-00002.safetensors" : "model-00001-of-00002.safetensors";
  }
  ASSERT_GT(legacy, 0);
  ASSERT_GT(widened, 0);
  write_safetensors(dir / "model-00001-of-00002.safetensors", shard[0]);
  write_safetensors(dir / "model-00002-of-00002.safetensors", shard[1]);
  std::ofstream(dir / "model.safetensors.index.json") << json{{"metadata", json::object()}, {"weight_map", weight_map}}.dump();

  auto backend = testing::test_backend(1);
  const testing::ExactCpuKernels exact;  // BF16 and F32 weights then meet x in the same f32 arithmetic
  auto original = Gemma4Model::load(src, *backend);
  auto resharded = Gemma4Model::load(dir.string(), *backend);
  const std::vector<int32_t> ids = {2, 40, 41, 300, 7, 9, 123, 88, 17, 250, 3};
  auto run = [&](Gemma4Model& m) {
    KvCache kv(m.backend(), m.config(), {2, 2}, 16);
    BlockTables table;
    kv.reserve(table, 0, static_cast<int64_t>(ids.size()));
    ForwardBatch batch;
    for (size_t t = 0; t < ids.size(); ++t) batch.add(ids[t], static_cast<int32_t>(t), &table, true);
    HostTensor hidden, logits;
    m.forward(batch, kv, &hidden, &logits);
    return std::vector<float>(logits.f32(), logits.f32() + logits.view().numel());
  };
  const auto a = run(*original), b = run(*resharded);
  ASSERT_EQ(a.size(), b.size());
  // Same values, widened exactly: only the summation order inside kernels may differ by dtype.
  EXPECT_LT(testing::relative_l2(b.data(), a.data(), a.size()), 1e-6);
  fs::remove_all(dir);
}

// Every weight view the loader binds is marked constant (TensorView::constant: a backend may read it
// before the ops issued just before it have finished), views derived from it keep the mark, and
// activations and gathered rows do not have it.
TEST(CheckpointFormats, LoadedWeightsAreMarkedConstant) {
  auto backend = testing::test_backend(2);
  for (const LoadFormat format : {LoadFormat::safetensors, LoadFormat::dummy}) {
    SCOPED_TRACE(format == LoadFormat::dummy ? "dummy" : "safetensors");
    Weights w = Weights::open(testing::fixtures_dir() + "/gemma4-moe", format, *backend);
    const TensorView embed = w.get("model.language_model.embed_tokens.weight", {512, 64});
    EXPECT_TRUE(embed.constant);
    EXPECT_TRUE(embed.reshaped({512 * 64}).constant);
    EXPECT_TRUE(embed.row_slice(3, 9).constant);
  }
  EXPECT_FALSE(TensorView(DType::F32, nullptr, {4, 4}).constant);
}

}  // namespace
}  // namespace tandem
