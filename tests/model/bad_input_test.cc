// Broken checkpoints: each gives one clear error line naming the file and the tensor or field,
// a non-zero exit (not a crash), through the real `tandem logits` command.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "fixtures.h"

namespace tandem {
namespace {
namespace fs = std::filesystem;
using nlohmann::json;

class BadInput : public ::testing::Test {
 protected:
  void SetUp() override {
    src_ = testing::fixtures_dir() + "/gemma4-moe";
    ASSERT_TRUE(fs::exists(src_)) << "fixture missing: " << src_;
    dir_ = fs::temp_directory_path() / ("tandem-bad-" + std::to_string(::getpid()) + "-" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    fs::copy_file(src_ + "/config.json", dir_ / "config.json");
    fs::copy_file(src_ + "/model.safetensors", dir_ / "model.safetensors");
  }
  void TearDown() override { fs::remove_all(dir_); }

  // Runs tandem logits on the broken copy; expects exit 1 and one "error:" line containing all of `needles`.
  void expect_error(std::initializer_list<std::string> needles) {
    std::string out;
    const int code = testing::run_command(std::string(TANDEM_BINARY) + " logits --model " + dir_.string() +
                                              " --ids 2,5,7",
                                          &out);
    EXPECT_EQ(code, 1) << out;
    size_t error_lines = 0;
    std::string line, error_line;
    std::istringstream lines(out);
    while (std::getline(lines, line))
      if (line.rfind("error:", 0) == 0) ++error_lines, error_line = line;
    EXPECT_EQ(error_lines, 1u) << out;
    for (const auto& n : needles) EXPECT_NE(error_line.find(n), std::string::npos) << "missing '" << n << "' in: " << out;
  }

  // Rewrites model.safetensors with `edit` applied to its header and `tail` after it, inside the header's
  // length (tensor data kept as is).
  void edit_header(const std::function<void(json&)>& edit, const std::string& tail = "") {
    const fs::path file = dir_ / "model.safetensors";
    std::ifstream in(file, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    uint64_t n = 0;
    std::memcpy(&n, bytes.data(), 8);
    json header = json::parse(bytes.substr(8, n));
    const std::string data = bytes.substr(8 + n);
    edit(header);
    std::string h = header.dump() + tail;
    const uint64_t m = h.size();
    std::ofstream out(file, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(&m), 8);
    out << h << data;
  }

  std::string src_;
  fs::path dir_;
};

TEST_F(BadInput, TruncatedSafetensors) {
  fs::resize_file(dir_ / "model.safetensors", fs::file_size(dir_ / "model.safetensors") / 2);
  expect_error({"model.safetensors", "truncated"});
}

TEST_F(BadInput, HeaderWithANulByte) {
  // nlohmann ends its input at a NUL: the bytes after it were never read and the header accepted.
  edit_header([](json&) {}, std::string("\0garbage", 8));
  expect_error({"model.safetensors", "malformed safetensors header", "NUL byte"});
}

TEST_F(BadInput, ShardIndexWithANulByte) {
  // The index of a sharded checkpoint is read whole and refused, not read up to the NUL.
  const std::string index = json{{"weight_map", json::object()}}.dump();
  std::ofstream(dir_ / "model.safetensors.index.json", std::ios::binary) << index << std::string("\0garbage", 8);
  expect_error({"model.safetensors.index.json", "malformed JSON", "NUL byte"});
}

TEST_F(BadInput, ShardIndexWithoutAWeightMap) {
  std::ofstream(dir_ / "model.safetensors.index.json") << json{{"metadata", json::object()}}.dump();
  expect_error({"model.safetensors.index.json", "malformed index"});
}

TEST_F(BadInput, HeaderOffsetsPastTheEnd) {
  std::string victim;
  edit_header([&](json& h) {
    for (auto& [name, t] : h.items())
      if (name != "__metadata__") {
        victim = name;
        t["data_offsets"][1] = t["data_offsets"][1].get<uint64_t>() + (1u << 30);
        break;
      }
  });
  expect_error({"model.safetensors", victim});
}

TEST_F(BadInput, MissingTensor) {
  const std::string name = "model.language_model.layers.1.self_attn.q_proj.weight";
  edit_header([&](json& h) {
    ASSERT_TRUE(h.contains(name));
    h.erase(name);
  });
  expect_error({name, dir_.string()});
}

TEST_F(BadInput, TensorWithWrongShape) {
  const std::string name = "model.language_model.layers.0.mlp.down_proj.weight";
  edit_header([&](json& h) {
    ASSERT_TRUE(h.contains(name));
    auto shape = h[name]["shape"];
    h[name]["shape"] = json::array({shape[1], shape[0]});  // same bytes, transposed shape
  });
  expect_error({name, "model.safetensors", "expected"});
}

TEST_F(BadInput, UnknownModelType) {
  json c = json::parse(std::ifstream(dir_ / "config.json"));
  c["model_type"] = "llama_next";
  std::ofstream(dir_ / "config.json", std::ios::trunc) << c.dump();
  expect_error({"config.json", "model_type", "llama_next"});
}

TEST_F(BadInput, MalformedConfig) {
  std::string text;
  {
    std::ifstream in(dir_ / "config.json");
    text.assign((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  }
  std::ofstream(dir_ / "config.json", std::ios::trunc) << text.substr(0, text.size() / 2);
  expect_error({"config.json", "malformed JSON"});
}

TEST_F(BadInput, MissingConfigField) {
  json c = json::parse(std::ifstream(dir_ / "config.json"));
  c["text_config"].erase("hidden_size");
  std::ofstream(dir_ / "config.json", std::ios::trunc) << c.dump();
  expect_error({"config.json", "hidden_size"});
}

TEST_F(BadInput, TokenIdOutsideVocabulary) {
  std::string out;
  const int code = testing::run_command(std::string(TANDEM_BINARY) + " logits --model " + src_ + " --ids 2,99999999", &out);
  EXPECT_EQ(code, 1) << out;
  EXPECT_NE(out.find("outside the vocabulary"), std::string::npos) << out;
}

}  // namespace
}  // namespace tandem
