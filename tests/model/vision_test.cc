// Images against transformers (tests/fixtures/vision, made by tools/make_vision_fixtures.py):
// decoding and the image processor pixel for pixel, the vision tower's features, the LM's logits on
// prompts with one and two images (bidirectional image blocks included) within 1e-4 relative L2,
// the attention visibility transformers' mask gives, greedy continuations token for token, and
// speculative greedy after an image equal to plain greedy. Then the engine's handling of images:
// chunked prefill never splits an image block, an image larger than a step is refused, and prefix
// caching tells images apart by their pixels.
#include <gtest/gtest.h>

#include <filesystem>

#include "engine/engine.h"
#include "engine/image_prompt.h"
#include "fixtures.h"
#include "model/gemma4.h"
#include "model/gemma4_vision.h"
#include "spec/speculative_config.h"
#include "vision/image_decode.h"
#include "vision/image_preprocess.h"

namespace tandem {
namespace {

namespace fs = std::filesystem;
constexpr double kTolerance = 1e-4;

std::string vision_dir() { return testing::fixtures_dir() + "/vision"; }

#define REQUIRE_VISION_FIXTURES()                                 \
  if (!fs::exists(vision_dir() + "/preproc.safetensors"))        \
  GTEST_SKIP() << "tests/fixtures/vision has not been generated " \
                  "(python3 tools/make_vision_fixtures.py --out tests/fixtures/vision)"

// The fixture image whose file name starts with "<letter>_".
std::string image_path(char letter) {
  for (const auto& e : fs::directory_iterator(vision_dir() + "/images"))
    if (e.path().filename().string().rfind(std::string(1, letter) + "_", 0) == 0) return e.path().string();
  ADD_FAILURE() << "no fixture image " << letter;
  return {};
}

std::vector<uint8_t> file_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

vision::RgbImage decode(char letter) { return vision::decode_image(file_bytes(image_path(letter))); }

std::vector<char> letters(const WeightStore& g, const std::string& prefix) {
  std::vector<char> out;
  for (const auto& [name, t] : g.tensors())
    if (name.rfind(prefix, 0) == 0 && name.size() == prefix.size() + 1) out.push_back(name.back());
  std::sort(out.begin(), out.end());
  return out;
}

// --- The image processor -----------------------------------------------------------------------

TEST(VisionPreprocess, DecodedPixelsAreWhatTheProcessorSaw) {
  REQUIRE_VISION_FIXTURES();
  const WeightStore g = WeightStore::open(vision_dir() + "/preproc.safetensors");
  const auto names = letters(g, "src.");
  ASSERT_GE(names.size(), 8u);
  for (char x : names) {
    SCOPED_TRACE(std::string("image ") + x);
    const TensorInfo& t = g.get(std::string("src.") + x);
    const vision::RgbImage img = decode(x);
    ASSERT_EQ(t.shape, (std::vector<int64_t>{img.height, img.width, 3}));
    const auto want = testing::tensor_values<uint8_t>(g, std::string("src.") + x);
    EXPECT_EQ(img.rgb, want);
  }
}

TEST(VisionPreprocess, SoftTokenCountsForEveryBudget) {
  REQUIRE_VISION_FIXTURES();
  const WeightStore g = WeightStore::open(vision_dir() + "/preproc.safetensors");
  const auto budgets = testing::tensor_values<int32_t>(g, "budgets");
  for (char x : letters(g, "ntok.")) {
    const vision::RgbImage img = decode(x);
    const auto want = testing::tensor_values<int32_t>(g, std::string("ntok.") + x);
    for (size_t i = 0; i < budgets.size(); ++i)
      EXPECT_EQ(vision::resize_target(img.height, img.width, 16, 3, budgets[i]).soft_tokens(16, 3), want[i])
          << "image " << x << " budget " << budgets[i];
  }
}

TEST(VisionPreprocess, ResizedPatchesMatchTransformers) {
  REQUIRE_VISION_FIXTURES();
  const WeightStore g = WeightStore::open(vision_dir() + "/preproc.safetensors");
  for (char x : letters(g, "src.")) {
    const vision::RgbImage img = decode(x);
    for (int b : {70, 280}) {
      const std::string k = std::string("pix.") + x + ".b" + std::to_string(b);
      SCOPED_TRACE(k);
      const auto hw = testing::tensor_values<int32_t>(g, k + ".hw");
      const vision::ResizeTarget t = vision::resize_target(img.height, img.width, 16, 3, b);
      ASSERT_EQ(t.height, hw[0]);
      ASSERT_EQ(t.width, hw[1]);
      const vision::RgbImage r =
          t.height == img.height && t.width == img.width ? img : vision::resize_bicubic_antialias(img, t.height, t.width);
      std::vector<int32_t> rows(static_cast<size_t>(r.height) * 3, 0), cols(static_cast<size_t>(r.width) * 3, 0);
      for (int y = 0; y < r.height; ++y)
        for (int xx = 0; xx < r.width; ++xx)
          for (int c = 0; c < 3; ++c) {
            const int v = r.rgb[(static_cast<size_t>(y) * r.width + xx) * 3 + c];
            rows[y * 3 + c] += v, cols[xx * 3 + c] += v;
          }
      EXPECT_EQ(rows, testing::tensor_values<int32_t>(g, k + ".rowsum"));
      EXPECT_EQ(cols, testing::tensor_values<int32_t>(g, k + ".colsum"));
      auto crop = [&](int y0, int x0, const std::string& name) {
        const TensorInfo& ti = g.get(k + name);
        const int n = static_cast<int>(ti.shape[0]);
        std::vector<uint8_t> got;
        for (int y = 0; y < n; ++y)
          for (int xx = 0; xx < n; ++xx)
            for (int c = 0; c < 3; ++c) got.push_back(r.rgb[(static_cast<size_t>(y0 + y) * r.width + x0 + xx) * 3 + c]);
        EXPECT_EQ(got, testing::tensor_values<uint8_t>(g, k + name)) << name;
      };
      crop(0, 0, ".crop_tl");
      const auto at = testing::tensor_values<int32_t>(g, k + ".crop_c_at");
      crop(at[0], at[1], ".crop_c");
      // Patches (order, rescale bits) and positions.
      const vision::PatchImage p = vision::preprocess_image(img, 16, 3, b);
      const auto n = testing::tensor_values<int32_t>(g, k + ".n_patches");
      ASSERT_EQ(p.num_patches(), n[0]);
      const auto head = testing::tensor_values<float>(g, k + ".head");
      const auto tail = testing::tensor_values<float>(g, k + ".tail");
      const size_t pp = 16 * 16 * 3;
      EXPECT_TRUE(std::equal(head.begin(), head.end(), p.pixels.begin())) << "first 4 patches";
      EXPECT_TRUE(std::equal(tail.begin(), tail.end(), p.pixels.begin() + (p.num_patches() - 1) * pp)) << "last patch";
      const auto pos = testing::tensor_values<int32_t>(g, k + ".pos_head");
      for (int i = 0; i < 4; ++i) {
        EXPECT_EQ(pos[2 * i], i % p.grid_w);
        EXPECT_EQ(pos[2 * i + 1], i / p.grid_w);
      }
    }
  }
}

TEST(VisionPreprocess, PlaceholderExpansionMatchesTheProcessor) {
  REQUIRE_VISION_FIXTURES();
  const WeightStore g = WeightStore::open(vision_dir() + "/preproc.safetensors");
  if (!g.find("proc.text_ids")) GTEST_SKIP() << "the fixture script could not run Gemma4Processor (see summary.json)";
  const ModelConfig c = load_model_config(vision_dir() + "/gemma4-vision");
  const auto text_ids = testing::tensor_values<int32_t>(g, "proc.text_ids");
  for (int b : {70, 280}) {
    std::vector<std::shared_ptr<const vision::PatchImage>> images;
    for (char x : {'a', 'b'})
      images.push_back(std::make_shared<const vision::PatchImage>(vision::preprocess_image(decode(x), 16, 3, b)));
    Request r;
    expand_image_placeholders(c, text_ids, images, r);
    EXPECT_EQ(r.prompt, testing::tensor_values<int32_t>(g, "proc.ids.b" + std::to_string(b)));
    std::vector<int32_t> mm;
    for (int32_t t : r.prompt) mm.push_back(t == c.image_token_id);
    EXPECT_EQ(mm, testing::tensor_values<int32_t>(g, "proc.mm.b" + std::to_string(b)));
  }
}

// --- The tower and the language model --------------------------------------------------------

class VisionGolden : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    REQUIRE_VISION_FIXTURES();
    dir_ = vision_dir() + "/" + GetParam();
    backend_ = testing::test_backend(2);
    model_ = Gemma4Model::load(dir_, *backend_);
    vision_ = Gemma4Vision::load(model_->config(), *backend_);
    golden_ = std::make_unique<WeightStore>(WeightStore::open(dir_ + "/golden_vision.safetensors"));
  }
  std::shared_ptr<const vision::PatchImage> image(char x, int budget) {
    return std::make_shared<const vision::PatchImage>(vision::preprocess_image(decode(x), 16, 3, budget));
  }
  // Prompt p's request: its ids expanded around its images (checked against the golden's expansion).
  Request prompt(const std::string& p) {
    const auto ids = testing::tensor_values<int32_t>(*golden_, "ids." + p);
    const int budget = testing::tensor_values<int32_t>(*golden_, "budget." + p)[0];
    std::vector<std::shared_ptr<const vision::PatchImage>> images;
    for (int32_t x : testing::tensor_values<int32_t>(*golden_, "images." + p)) images.push_back(image(static_cast<char>(x), budget));
    Request r;
    expand_image_placeholders(model_->config(), ids, images, r);
    EXPECT_EQ(r.prompt, testing::tensor_values<int32_t>(*golden_, "ids_expanded." + p));
    return r;
  }
  std::vector<std::string> prompts() const { return {"one", "two", "big"}; }

  std::string dir_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<Gemma4Model> model_;
  std::unique_ptr<Gemma4Vision> vision_;
  std::unique_ptr<WeightStore> golden_;
};

TEST_P(VisionGolden, FeaturesMatchTransformers) {
  int checked = 0;
  for (const auto& [name, t] : golden_->tensors()) {
    if (name.rfind("feat.", 0) != 0) continue;
    SCOPED_TRACE(name);
    const char x = name[5];
    const int budget = std::stoi(name.substr(name.rfind(".b") + 2));
    const auto img = image(x, budget);
    Tensor f(*backend_);
    TensorView& fv = f.resize(DType::F32, {img->soft_tokens(), model_->config().hidden});
    vision_->encode(*img, fv);
    const HostTensor got = to_host(*backend_, fv);
    const auto want = testing::tensor_values<float>(*golden_, name);
    ASSERT_EQ(static_cast<size_t>(fv.numel()), want.size());
    EXPECT_LT(testing::relative_l2(got.f32(), want.data(), want.size()), kTolerance);
    const std::string tower = "tower." + name.substr(5);
    if (golden_->find(tower)) {
      const HostTensor t2 = to_host(*backend_, vision_->tower_output());
      const auto want2 = testing::tensor_values<float>(*golden_, tower);
      ASSERT_EQ(static_cast<size_t>(vision_->tower_output().numel()), want2.size());
      EXPECT_LT(testing::relative_l2(t2.f32(), want2.data(), want2.size()), kTolerance) << tower;
    }
    ++checked;
  }
  EXPECT_GE(checked, 9);
}

TEST_P(VisionGolden, PromptLogitsMatchTransformers) {
  const int64_t V = model_->config().vocab_size;
  for (const std::string& p : prompts()) {
    SCOPED_TRACE("prompt " + p);
    const Request r = prompt(p);
    const int32_t T = static_cast<int32_t>(r.prompt.size());
    KvCache kv(model_->backend(), model_->config(), {T / 16 + 2, T / 16 + 2}, 16);
    BlockTables table;
    ASSERT_TRUE(kv.reserve(table, 0, T));
    ForwardBatch batch;
    for (int32_t i = 0; i < T; ++i) {
      int32_t block_end = 0;
      for (const ImageInput& im : r.images)
        if (i >= im.offset && i < im.end()) block_end = im.end();
      batch.add(r.prompt[i], i, &table, true, block_end);
    }
    std::vector<Tensor> features;
    for (const ImageInput& im : r.images) {
      features.emplace_back(*backend_);
      TensorView& f = features.back().resize(DType::F32, {im.image->soft_tokens(), model_->config().hidden});
      vision_->encode(*im.image, f);
      batch.embeds.push_back({im.offset, f});
    }
    HostTensor hidden, logits;
    model_->forward(batch, kv, &hidden, &logits);
    const auto rows = testing::tensor_values<int32_t>(*golden_, "rows." + p);
    const auto want = testing::tensor_values<float>(*golden_, "logits." + p);
    ASSERT_EQ(want.size(), rows.size() * V);
    for (size_t i = 0; i < rows.size(); ++i)
      EXPECT_LT(testing::relative_l2(logits.f32() + rows[i] * V, want.data() + i * V, V), kTolerance)
          << "position " << rows[i];
  }
}

TEST_P(VisionGolden, AttentionVisibilityMatchesTransformersMask) {
  const ModelConfig& c = model_->config();
  const auto bidir = testing::tensor_values<int32_t>(*golden_, "bidir.layers");
  ASSERT_EQ(static_cast<int>(bidir.size()), c.n_layers);
  for (int l = 0; l < c.n_layers; ++l) {
    const bool full = c.layers[l].type == LayerType::full;
    EXPECT_EQ(bidir[l] != 0, full ? c.image_bidirectional_full : c.image_bidirectional_sliding)
        << "layer " << l << " (" << layer_type_name(c.layers[l].type) << ")";
  }
  // Row i sees key j exactly when transformers' eager attention gives it a non-zero weight.
  const Request r = prompt("one");
  const int32_t T = static_cast<int32_t>(r.prompt.size());
  for (int l = 0; l < c.n_layers; ++l) {
    const bool full = c.layers[l].type == LayerType::full;
    const auto want = testing::tensor_values<uint8_t>(*golden_, "visible.one.layer" + std::to_string(l));
    ASSERT_EQ(want.size(), static_cast<size_t>(T) * T);
    int mismatches = 0;
    for (int32_t i = 0; i < T; ++i) {
      int32_t block_end = 0;
      for (const ImageInput& im : r.images)
        if (i >= im.offset && i < im.end()) block_end = im.end();
      const KeyRange k = key_range(i, full ? 0 : c.sliding_window, block_end,
                                   full ? c.image_bidirectional_full : c.image_bidirectional_sliding);
      for (int32_t j = 0; j < T; ++j) mismatches += (j >= k.begin && j < k.end) != (want[i * T + j] != 0);
    }
    EXPECT_EQ(mismatches, 0) << "layer " << l;
  }
}

Request with_sampling(Request r, int n) {
  r.max_tokens = n;
  r.ignore_eos = true;
  r.sampling.temperature = 0;
  return r;
}

std::vector<int32_t> run(Engine& engine, const Request& r) {
  std::vector<int32_t> out;
  std::string error;
  engine.submit(r, [&](const RequestOutput& o) {
    out.insert(out.end(), o.tokens.begin(), o.tokens.end());
    if (o.finish_reason == FinishReason::error) error = o.error;
  });
  engine.run_until_idle();
  EXPECT_EQ(error, "");
  return out;
}

TEST_P(VisionGolden, GreedyContinuationMatchesTransformers) {
  EngineConfig config;
  config.max_model_len = 512;
  config.kv_cache_bytes = 16 << 20;
  Engine engine(*model_, nullptr, config);
  engine.set_vision(vision_.get());
  for (const std::string& p : prompts()) {
    const auto greedy = testing::tensor_values<int32_t>(*golden_, "greedy." + p);
    EXPECT_EQ(run(engine, with_sampling(prompt(p), static_cast<int>(greedy.size()))), greedy) << "prompt " << p;
  }
}

INSTANTIATE_TEST_SUITE_P(Fixtures, VisionGolden, ::testing::Values("gemma4-vision", "gemma4-vision-e"),
                         [](const auto& info) { return info.param == "gemma4-vision" ? std::string("large") : std::string("e"); });

// --- The engine --------------------------------------------------------------------------------

class VisionEngine : public VisionGolden {};

TEST_P(VisionEngine, SpeculativeGreedyAfterAnImageEqualsPlain) {
  const std::string drafter = testing::fixtures_dir() + "/gemma4-moe-assistant";
  for (int k : {1, 3}) {
    EngineConfig config;
    config.max_model_len = 512;
    config.kv_cache_bytes = 16 << 20;
    config.num_speculative_tokens = k;
    SpeculativeConfig spec =
        parse_speculative_config(fmt::format(R"({{"model": "{}", "num_speculative_tokens": {}}})", drafter, k));
    Engine engine(*model_, make_proposer(spec, *model_), config);
    engine.set_vision(vision_.get());
    for (const std::string& p : prompts()) {
      const auto greedy = testing::tensor_values<int32_t>(*golden_, "greedy." + p);
      EXPECT_EQ(run(engine, with_sampling(prompt(p), static_cast<int>(greedy.size()))), greedy)
          << "k=" << k << " prompt " << p;
    }
    const SpecStats s = engine.stats().spec;
    EXPECT_GT(s.num_drafts, 0u);
    RecordProperty("k" + std::to_string(k) + "_drafted", static_cast<int>(s.num_draft_tokens));
    RecordProperty("k" + std::to_string(k) + "_accepted", static_cast<int>(s.num_accepted_tokens));
    std::printf("[ mtp k=%d after images ] accepted %llu of %llu drafted tokens (%.1f%%)\n", k,
                static_cast<unsigned long long>(s.num_accepted_tokens), static_cast<unsigned long long>(s.num_draft_tokens),
                s.num_draft_tokens ? 100.0 * s.num_accepted_tokens / s.num_draft_tokens : 0.0);
  }
}

TEST_P(VisionEngine, ChunkedPrefillNeverSplitsAnImageBlock) {
  // A step budget barely larger than the image: the chunk before the image stops at its start, the
  // image goes whole into the next step. (The model refuses a batch holding part of a block.)
  const Request r = prompt("one");
  const int n_image = r.images[0].image->soft_tokens();
  for (int budget : {n_image, n_image + 3}) {
    EngineConfig config;
    config.max_model_len = 512;
    config.kv_cache_bytes = 16 << 20;
    config.max_num_batched_tokens = budget;
    Engine engine(*model_, nullptr, config);
    engine.set_vision(vision_.get());
    const auto greedy = testing::tensor_values<int32_t>(*golden_, "greedy.one");
    EXPECT_EQ(run(engine, with_sampling(r, static_cast<int>(greedy.size()))), greedy) << "budget " << budget;
  }
  EngineConfig small;
  small.max_model_len = 512;
  small.kv_cache_bytes = 16 << 20;
  small.max_num_batched_tokens = n_image - 1;
  Engine engine(*model_, nullptr, small);
  engine.set_vision(vision_.get());
  try {
    engine.submit(with_sampling(r, 4), [](const RequestOutput&) {});
    FAIL() << "an image larger than a step was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("max-num-batched-tokens"), std::string::npos) << e.what();
  }
}

TEST_P(VisionEngine, PrefixCacheAndEncoderCacheTellImagesApartByPixels) {
  EngineConfig config;
  config.max_model_len = 512;
  config.kv_cache_bytes = 16 << 20;
  config.enable_prefix_caching = true;
  Engine engine(*model_, nullptr, config);
  engine.set_vision(vision_.get());
  const Request r = prompt("one");
  const auto greedy = testing::tensor_values<int32_t>(*golden_, "greedy.one");
  EXPECT_EQ(run(engine, with_sampling(r, 24)), greedy);
  const EngineStats s1 = engine.stats();
  EXPECT_EQ(run(engine, with_sampling(r, 24)), greedy);  // the same image again: reused, same output
  const EngineStats s2 = engine.stats();
  EXPECT_GT(s2.prefix_cache_hits, s1.prefix_cache_hits);
  EXPECT_EQ(s2.mm_images_encoded, s1.mm_images_encoded);  // nothing re-encoded
  // The same geometry with other pixels: the same token ids, so only the blocks before the image
  // may come from the cache, and the output must be what an uncached run gives.
  vision::PatchImage other = *r.images[0].image;
  for (float& v : other.pixels) v = 1.0f - v;
  other.hash ^= 0x5555;
  Request r2 = r;
  r2.images[0].image = std::make_shared<const vision::PatchImage>(other);
  const auto cached = run(engine, with_sampling(r2, 24));
  const EngineStats s3 = engine.stats();
  EXPECT_LE(s3.prefix_cache_hits - s2.prefix_cache_hits, static_cast<uint64_t>(r2.images[0].offset / 16 * 16));
  EngineConfig fresh_config = config;
  fresh_config.enable_prefix_caching = false;
  Engine fresh(*model_, nullptr, fresh_config);
  fresh.set_vision(vision_.get());
  EXPECT_EQ(cached, run(fresh, with_sampling(r2, 24)));
}

INSTANTIATE_TEST_SUITE_P(Fixtures, VisionEngine, ::testing::Values("gemma4-vision"),
                         [](const auto&) { return std::string("large"); });

}  // namespace
}  // namespace tandem
