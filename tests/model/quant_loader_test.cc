// The quantized-checkpoint readers (model/quant.h) on hand-made tensors: the formats' packing facts
// (compressed-tensors' published pack_to_int32 vectors, AutoAWQ's nibble order, GPTQ's K packing and
// v1 zeros, act-order permutations), and one clear error naming the tensor or field for bad files.
#include <gtest/gtest.h>

#include <cstring>

#include "fixtures.h"
#include "model/quant.h"
#include "util/half.h"

namespace tandem {
namespace {
namespace fs = std::filesystem;
using nlohmann::json;
using testing::OutTensor;

template <typename T>
OutTensor out(const std::string& name, DType dt, std::vector<int64_t> shape, const std::vector<T>& v) {
  return {name, dt, std::move(shape), std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T))};
}

std::vector<uint16_t> bf16s(const std::vector<float>& v) {
  std::vector<uint16_t> o;
  for (float f : v) o.push_back(f32_to_bf16(f));
  return o;
}

// A store holding `tensors` in a fresh temporary file.
class QuantLoader : public ::testing::Test {
 protected:
  WeightStore store(const std::vector<OutTensor>& tensors) {
    const fs::path path = fs::temp_directory_path() / ("tandem-quant-" + std::to_string(::getpid()) + "-" +
                                                       std::to_string(files_++) + ".safetensors");
    paths_.push_back(path);
    testing::write_safetensors(path, tensors);
    return WeightStore::open(path.string());
  }
  void TearDown() override {
    for (const auto& p : paths_) fs::remove(p);
  }
  static std::string error_of(const std::function<void()>& f) {
    try {
      f();
    } catch (const Error& e) {
      return e.what();
    }
    return "(no error)";
  }

 private:
  int files_ = 0;
  std::vector<fs::path> paths_;
};

QuantConfig ct_int4(int64_t group, bool symmetric = true, const char* actorder = nullptr) {
  json w = {{"num_bits", 4}, {"type", "int"}, {"symmetric", symmetric}, {"strategy", "group"}, {"group_size", group}};
  if (actorder) w["actorder"] = actorder;
  json qc = json::parse(R"({"quant_method": "compressed-tensors", "format": "pack-quantized",
      "config_groups": {"group_0": {"targets": ["Linear"]}}, "ignore": ["lm_head", "re:.*router.*"]})");
  qc["config_groups"]["group_0"]["weights"] = w;
  return parse_quant_config(qc, "config.json");
}

int nibble(const HostQuantWeight& h, int64_t r, int64_t k) { return (h.codes[(r * h.K + k) / 2] >> (4 * (k % 2))) & 15; }

// compressed-tensors tests/test_compressors/test_pack_quant.py (test_pack_to_int32): the rows
// [-8 -7 -6 -5 -4 -3 -2 -1 | 1 2 3 4 -8 -8 -8 -8] and [1 2 3 4 -8 -8 -8 -8 | -8 -7 ... -1] pack to
// [[1985229328, 52137], [52137, 1985229328]].
TEST_F(QuantLoader, CompressedTensorsInt4PublishedVector) {
  const std::vector<int32_t> packed = {1985229328, 52137, 52137, 1985229328};
  const auto s = store({out("m.weight_packed", DType::I32, {2, 2}, packed),
                        out("m.weight_scale", DType::BF16, {2, 2}, bf16s({0.5f, 0.25f, 2.0f, 1.0f})),
                        out("m.weight_shape", DType::I64, {2}, std::vector<int64_t>{2, 16})});
  const HostQuantWeight h = read_quant_linear(s, ct_int4(8), "m", 2, 16);
  EXPECT_EQ(h.code, QuantCode::kU4);
  EXPECT_EQ(h.group, 8);
  EXPECT_TRUE(h.zeros.empty());  // symmetric: the implied zero 8
  const int want[2][16] = {{-8, -7, -6, -5, -4, -3, -2, -1, 1, 2, 3, 4, -8, -8, -8, -8},
                           {1, 2, 3, 4, -8, -8, -8, -8, -8, -7, -6, -5, -4, -3, -2, -1}};
  for (int r = 0; r < 2; ++r)
    for (int k = 0; k < 16; ++k) EXPECT_EQ(nibble(h, r, k) - 8, want[r][k]) << r << "," << k;
  EXPECT_EQ(h.scale_dtype, DType::BF16);
}

// Zero points pack along N: zero of row n, group g is nibble n % 8 of word [n / 8, g].
TEST_F(QuantLoader, CompressedTensorsAsymmetricZeros) {
  std::vector<int32_t> packed(9 * 1, 0x76543210), zp(2 * 2);
  for (int g = 0; g < 2; ++g)
    for (int n = 0; n < 9; ++n) zp[(n / 8) * 2 + g] |= ((n + g) % 16) << (4 * (n % 8));
  const auto s = store({out("m.weight_packed", DType::I32, {9, 1}, packed),
                        out("m.weight_scale", DType::F32, {9, 2}, std::vector<float>(18, 1.0f)),
                        out("m.weight_zero_point", DType::I32, {2, 2}, zp)});
  const HostQuantWeight h = read_quant_linear(s, ct_int4(4, false), "m", 9, 8);
  ASSERT_EQ(h.zeros.size(), 18u);
  for (int n = 0; n < 9; ++n)
    for (int g = 0; g < 2; ++g) EXPECT_EQ(h.zeros[n * 2 + g], (n + g) % 16);
}

// actorder group: columns are sorted by g_idx (stably) and the codes permuted to match.
TEST_F(QuantLoader, ActOrderBecomesAColumnPermutation) {
  // K = 8, group 4: g_idx = [1 0 1 0 0 1 1 0]; word nibbles 0..7 = the column index.
  const auto s = store({out("m.weight_packed", DType::I32, {1, 1}, std::vector<int32_t>{0x76543210}),
                        out("m.weight_scale", DType::F32, {1, 2}, std::vector<float>{1, 1}),
                        out("m.weight_g_idx", DType::I32, {8}, std::vector<int32_t>{1, 0, 1, 0, 0, 1, 1, 0})});
  const HostQuantWeight h = read_quant_linear(s, ct_int4(4, true, "group"), "m", 1, 8);
  const std::vector<int32_t> perm = {1, 3, 4, 7, 0, 2, 5, 6};
  EXPECT_EQ(h.k_perm, perm);
  for (int j = 0; j < 8; ++j) EXPECT_EQ(nibble(h, 0, j), perm[j]);
  // A g_idx that cannot be regrouped into groups of 4 is refused, naming the tensor.
  const auto bad = store({out("m.weight_packed", DType::I32, {1, 1}, std::vector<int32_t>{0}),
                          out("m.weight_scale", DType::F32, {1, 2}, std::vector<float>{1, 1}),
                          out("m.weight_g_idx", DType::I32, {8}, std::vector<int32_t>{0, 0, 0, 0, 0, 1, 1, 1})});
  EXPECT_NE(error_of([&] { read_quant_linear(bad, ct_int4(4, true, "group"), "m", 1, 8); }).find("m.weight_g_idx"),
            std::string::npos);
}

// AutoAWQ gemm: nibble i of a qweight word holds column 8c + [0 2 4 6 1 3 5 7][i].
TEST_F(QuantLoader, AutoAwqInterleavedNibbles) {
  const json qc = {{"quant_method", "awq"}, {"bits", 4}, {"group_size", 2}, {"zero_point", true}, {"version", "gemm"}};
  const QuantConfig c = parse_quant_config(qc, "config.json");
  // K = 2 rows, N = 8: row k's word has nibble i = i + k.
  const std::vector<int32_t> qweight = {0x76543210, static_cast<int32_t>(0x87654321)};
  const auto s = store({out("m.qweight", DType::I32, {2, 1}, qweight),
                        out("m.qzeros", DType::I32, {1, 1}, std::vector<int32_t>{0x76543210}),
                        out("m.scales", DType::F16, {1, 8}, std::vector<uint16_t>(8, 0x3C00))});
  const HostQuantWeight h = read_quant_linear(s, c, "m", 8, 2);
  const int order[8] = {0, 2, 4, 6, 1, 3, 5, 7};
  for (int i = 0; i < 8; ++i) {
    const int n = order[i];
    EXPECT_EQ(nibble(h, n, 0), i) << n;
    EXPECT_EQ(nibble(h, n, 1), i + 1) << n;
    EXPECT_EQ(h.zeros[n], i) << n;
  }
}

// GPTQ: qweight [K/8, N] packs 8 consecutive K rows per word; v1 zeros are stored minus one.
TEST_F(QuantLoader, GptqPacksAlongKAndStoresZeroMinusOne) {
  const json qc = {{"quant_method", "gptq"}, {"bits", 4}, {"group_size", 8}, {"desc_act", false}, {"sym", true}};
  const QuantConfig c = parse_quant_config(qc, "config.json");
  const auto s = store({out("m.qweight", DType::I32, {1, 8}, std::vector<int32_t>(8, 0x76543210)),
                        out("m.qzeros", DType::I32, {1, 1}, std::vector<int32_t>{0x77777777}),
                        out("m.scales", DType::F16, {1, 8}, std::vector<uint16_t>(8, 0x3C00)),
                        out("m.g_idx", DType::I32, {8}, std::vector<int32_t>(8, 0))});
  const HostQuantWeight h = read_quant_linear(s, c, "m", 8, 8);
  for (int n = 0; n < 8; ++n) {
    for (int k = 0; k < 8; ++k) EXPECT_EQ(nibble(h, n, k), k);
    EXPECT_EQ(h.zeros[n], 8);
  }
  EXPECT_TRUE(h.k_perm.empty());  // g_idx = k / group needs no permutation
}

TEST_F(QuantLoader, BadFilesNameTheTensor) {
  const QuantConfig c = ct_int4(8);
  const auto missing_scale = store({out("m.weight_packed", DType::I32, {2, 2}, std::vector<int32_t>(4))});
  EXPECT_NE(error_of([&] { read_quant_linear(missing_scale, c, "m", 2, 16); }).find("m.weight_scale"),
            std::string::npos);
  const auto wrong_shape = store({out("m.weight_packed", DType::I32, {2, 3}, std::vector<int32_t>(6)),
                                  out("m.weight_scale", DType::BF16, {2, 2}, bf16s({1, 1, 1, 1}))});
  const std::string e = error_of([&] { read_quant_linear(wrong_shape, c, "m", 2, 16); });
  EXPECT_NE(e.find("m.weight_packed"), std::string::npos) << e;
  EXPECT_NE(e.find("[2, 3]"), std::string::npos) << e;
  const auto ok = store({out("m.weight_packed", DType::I32, {2, 3}, std::vector<int32_t>(6)),
                         out("m.weight_scale", DType::BF16, {2, 2}, bf16s({1, 1, 1, 1}))});
  const std::string g = error_of([&] { read_quant_linear(ok, ct_int4(16), "m", 2, 24); });
  EXPECT_NE(g.find("does not divide K = 24"), std::string::npos) << g;
  EXPECT_NE(g.find("m.weight_scale"), std::string::npos) << g;
}

TEST_F(QuantLoader, UnsupportedConfigsNameTheField) {
  auto refusal = [](const json& qc) {
    try {
      parse_quant_config(qc, "config.json");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("(accepted)");
  };
  EXPECT_NE(refusal({{"quant_method", "bitsandbytes"}}).find("quantization_config.quant_method"), std::string::npos);
  json ct = json::parse(R"({"quant_method": "compressed-tensors", "format": "pack-quantized",
      "config_groups": {"group_0": {"targets": ["Linear"],
        "weights": {"num_bits": 4, "type": "int", "strategy": "group", "group_size": 32}}}})");
  EXPECT_EQ(refusal(ct), "(accepted)");
  json rot = ct;
  rot["transform_config"] = {{"config_groups", {{"u", {{"type", "hadamard"}}}}}};
  EXPECT_NE(refusal(rot).find("quantization_config.transform_config"), std::string::npos);
  json fmt = ct;
  fmt["format"] = "marlin-24";
  fmt["config_groups"]["group_0"].erase("format");
  EXPECT_NE(refusal(fmt).find("format \"marlin-24\""), std::string::npos) << refusal(fmt);
  json block = ct;
  block["config_groups"]["group_0"]["weights"]["block_structure"] = {128, 128};
  EXPECT_NE(refusal(block).find("block_structure"), std::string::npos);
  json bad_regex = ct;
  bad_regex["ignore"] = {"lm_head", "re:[unclosed"};
  EXPECT_NE(refusal(bad_regex).find("quantization_config.ignore entry \"re:[unclosed\""), std::string::npos)
      << refusal(bad_regex);
}

TEST_F(QuantLoader, IgnoreListExactNamesAndPrefixAnchoredRegexes) {
  const QuantConfig c = ct_int4(32);
  EXPECT_FALSE(c.quantizes("lm_head"));
  EXPECT_TRUE(c.quantizes("model.lm_head"));  // exact names only
  EXPECT_FALSE(c.quantizes("model.layers.0.router.proj"));
  EXPECT_TRUE(c.quantizes("model.layers.0.mlp.down_proj"));
  EXPECT_FALSE(QuantConfig{}.quantizes("model.layers.0.mlp.down_proj"));
}

}  // namespace
}  // namespace tandem
