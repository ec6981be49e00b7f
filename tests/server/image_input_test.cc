// Images in chat requests: image_url sources (data:, file:// under --allowed-local-media-path,
// http(s) refused), base64, bad image data (empty, not an image, truncated, zero-sized, too large),
// and — with the vision fixture (tests/fixtures/vision) — whole chat requests: placeholder
// expansion, the per-prompt limit, audio / video parts, literal image tokens, misplaced images.
// Every failure must be a 400 whose message says what is wrong.
#include "server/image_input.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "fakes.h"
#include "server/adapters.h"
#include "server/api_error.h"
#include "server/protocol.h"
#include "vision/image_decode.h"

namespace tandem::server {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using testing::bad_request_message;

std::string source_dir() { return TANDEM_SOURCE_DIR; }

std::vector<uint8_t> file_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

std::string base64(const std::vector<uint8_t>& b) {
  static const char* k = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  for (size_t i = 0; i < b.size(); i += 3) {
    const uint32_t v = (b[i] << 16) | (i + 1 < b.size() ? b[i + 1] << 8 : 0) | (i + 2 < b.size() ? b[i + 2] : 0);
    out += k[(v >> 18) & 63], out += k[(v >> 12) & 63];
    out += i + 1 < b.size() ? k[(v >> 6) & 63] : '=';
    out += i + 2 < b.size() ? k[v & 63] : '=';
  }
  return out;
}

std::string decode_error(const std::vector<uint8_t>& bytes, vision::DecodeLimits limits = {}) {
  try {
    vision::decode_image(bytes, limits);
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "decoded";
  return {};
}

uint32_t crc32(const uint8_t* p, size_t n) {
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < n; ++i) {
    c ^= p[i];
    for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
  }
  return ~c;
}

// A PNG signature and IHDR chunk (correct CRC) claiming width × height, with no image data after.
std::vector<uint8_t> png_header(uint32_t width, uint32_t height) {
  std::vector<uint8_t> b = {0x89, 'P', 'N', 'G', 0x0D, 0x0A, 0x1A, 0x0A, 0, 0, 0, 13, 'I', 'H', 'D', 'R'};
  for (uint32_t v : {width, height})
    for (int s = 24; s >= 0; s -= 8) b.push_back(static_cast<uint8_t>(v >> s));
  for (uint8_t v : {8, 2, 0, 0, 0}) b.push_back(v);  // 8-bit RGB, no interlace
  const uint32_t crc = crc32(b.data() + 12, 17);
  for (int s = 24; s >= 0; s -= 8) b.push_back(static_cast<uint8_t>(crc >> s));
  return b;
}

TEST(ImageInput, Base64StandardAndUrlSafe) {
  const std::vector<uint8_t> bytes = {0, 1, 2, 250, 251, 252, 253, 254, 255, 'x'};
  EXPECT_EQ(base64_decode(base64(bytes)), bytes);
  std::string url_safe = base64(bytes);
  for (char& c : url_safe) c = c == '+' ? '-' : c == '/' ? '_' : c;
  EXPECT_EQ(base64_decode(url_safe), bytes);
  EXPECT_NE(bad_request_message([] { base64_decode("aGVsbG8*"); }).find("base64 alphabet"), std::string::npos);
  EXPECT_NE(bad_request_message([] { base64_decode("a"); }).find("impossible length"), std::string::npos);
}

TEST(ImageInput, UrlSourcesAsVllm) {
  ImageOptions o;
  const std::vector<uint8_t> png = file_bytes(source_dir() + "/docs/webui-chat.png");
  EXPECT_EQ(image_url_bytes("data:image/png;base64," + base64(png), o), png);
  EXPECT_NE(bad_request_message([&] { image_url_bytes("https://example.com/cat.png", o); }).find("does not fetch"),
            std::string::npos);
  EXPECT_NE(bad_request_message([&] { image_url_bytes("http://127.0.0.1/cat.png", o); }).find("data: URL"),
            std::string::npos);
  EXPECT_NE(bad_request_message([&] { image_url_bytes("data:image/png,rawbytes", o); }).find("must be base64"),
            std::string::npos);
  EXPECT_NE(bad_request_message([&] { image_url_bytes("data:text/plain;base64,aGk=", o); }).find("not an image type"),
            std::string::npos);
  EXPECT_NE(bad_request_message([&] { image_url_bytes("ftp://x/y.png", o); }).find("data: URL"), std::string::npos);
  const std::string docs = source_dir() + "/docs";
  EXPECT_NE(bad_request_message([&] {
              image_url_bytes("file://" + docs + "/webui-chat.png", o);
            }).find("--allowed-local-media-path"),
            std::string::npos);
  o.allowed_local_media_path = docs;
  EXPECT_EQ(image_url_bytes("file://" + docs + "/webui-chat.png", o), png);
  EXPECT_NE(bad_request_message([&] { image_url_bytes("file://" + docs + "/../README.md", o); }).find("inside"),
            std::string::npos);
  EXPECT_NE(bad_request_message([&] { image_url_bytes("file:///etc/passwd", o); }).find("inside"), std::string::npos);
  EXPECT_NE(bad_request_message([&] { image_url_bytes("file://" + docs + "/no-such.png", o); }).find("cannot read"),
            std::string::npos);
}

TEST(ImageInput, BadImageDataIsRefusedWithAReason) {
  const std::vector<uint8_t> png = file_bytes(source_dir() + "/docs/webui-chat.png");
  ASSERT_GT(png.size(), 1000u);
  EXPECT_NE(decode_error({}).find("empty"), std::string::npos);
  const std::string text = "GET / HTTP/1.1\r\n";
  EXPECT_NE(decode_error(std::vector<uint8_t>(text.begin(), text.end())).find("not a JPEG, PNG, GIF or WebP"),
            std::string::npos);
  EXPECT_NE(decode_error(std::vector<uint8_t>(png.begin(), png.begin() + png.size() / 2)).find("truncated"),
            std::string::npos);
  EXPECT_NE(decode_error(png_header(0, 10)).find("PNG"), std::string::npos);
  EXPECT_NE(decode_error(png_header(100000, 100000)).find("more than the limit"), std::string::npos);
  vision::DecodeLimits small;
  small.max_pixels = 1000;
  EXPECT_NE(decode_error(png, small).find("1280x1004"), std::string::npos);
  const vision::RgbImage ok = vision::decode_image(png);  // the whole file decodes
  EXPECT_EQ(ok.width, 1280);
  EXPECT_EQ(ok.height, 1004);
}

// --- Whole chat requests on the vision fixture -------------------------------------------------

class ChatImages : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = source_dir() + "/tests/fixtures/vision/gemma4-vision";
    if (!fs::exists(dir_ + "/tokenizer.json"))
      GTEST_SKIP() << "tests/fixtures/vision has not been generated (tools/make_vision_fixtures.py)";
    config_ = load_model_config(dir_);
    codec_ = std::make_unique<TokenizerCodec>(Tokenizer::load(dir_));
    limits_.max_model_len = 4096;
    limits_.images.model = &config_;
    limits_.images.soft_tokens = 70;
    for (const auto& e : fs::directory_iterator(dir_ + "/../images"))
      if (e.path().filename().string().rfind("b_", 0) == 0) jpeg_ = file_bytes(e.path().string());
  }
  ParsedRequest chat(const json& body) { return parse_chat_request(body, *codec_, {"m"}, limits_); }
  json image_part() const {
    return {{"type", "image_url"}, {"image_url", {{"url", "data:image/jpeg;base64," + base64(jpeg_)}}}};
  }
  json user(json parts) const { return {{"messages", {{{"role", "user"}, {"content", parts}}}}}; }

  std::string dir_;
  ModelConfig config_;
  std::unique_ptr<TokenizerCodec> codec_;
  Limits limits_;
  std::vector<uint8_t> jpeg_;
};

TEST_F(ChatImages, ImagePartsExpandToTheProcessorsPlaceholders) {
  const ParsedRequest r = chat(user({{{"type", "text"}, {"text", "What is this?"}}, image_part(), image_part()}));
  ASSERT_EQ(r.prompts.size(), 1u);
  const PromptInput& p = r.prompts[0];
  ASSERT_EQ(p.images.size(), 2u);
  for (const ImageInput& im : p.images) {
    EXPECT_EQ(p.tokens[im.offset - 1], config_.boi_id);
    EXPECT_EQ(p.tokens[im.end()], config_.eoi_id);
    for (int32_t i = im.offset; i < im.end(); ++i) ASSERT_EQ(p.tokens[i], config_.image_token_id);
    EXPECT_LE(im.image->soft_tokens(), 70);
  }
  EXPECT_EQ(p.images[0].image->hash, p.images[1].image->hash);  // the same pixels
  const Request engine_request = r.engine_request(0);
  EXPECT_EQ(engine_request.images.size(), 2u);
  EXPECT_EQ(engine_request.prompt, p.tokens);
}

TEST_F(ChatImages, RefusalsSayWhy) {
  limits_.images.max_images = 1;
  EXPECT_NE(bad_request_message([&] {
              chat(user({image_part(), image_part()}));
            }).find("at most 1 image"),
            std::string::npos);
  EXPECT_NE(bad_request_message([&] {
              chat(user({{{"type", "input_audio"}, {"input_audio", {{"data", "AAAA"}, {"format", "wav"}}}}}));
            }).find("audio input is not supported"),
            std::string::npos);
  EXPECT_NE(bad_request_message([&] {
              chat(user({{{"type", "video_url"}, {"video_url", {{"url", "data:video/mp4;base64,AAAA"}}}}}));
            }).find("video input is not supported"),
            std::string::npos);
  EXPECT_NE(bad_request_message([&] {
              chat(user({{{"type", "text"}, {"text", "look: <|image|>"}}}));
            }).find("placeholders"),
            std::string::npos);
  EXPECT_NE(bad_request_message([&] {
              chat({{"messages",
                     {{{"role", "system"}, {"content", {image_part()}}}, {{"role", "user"}, {"content", "hi"}}}}});
            }).find("'system' message"),
            std::string::npos);
  EXPECT_NE(bad_request_message([&] {
              chat(user({{{"type", "image_url"}, {"image_url", {{"url", "data:image/png;base64,AAAAAAAA"}}}}}));
            }).find("image 0"),
            std::string::npos);
  limits_.images.model = nullptr;  // a model without a tower (or images turned off)
  EXPECT_NE(bad_request_message([&] { chat(user({image_part()})); }).find("does not take images"), std::string::npos);
  json body = user({image_part()});
  limits_.images.model = &config_;
  body["truncate_prompt_tokens"] = 10;
  EXPECT_NE(bad_request_message([&] { chat(body); }).find("truncate_prompt_tokens"), std::string::npos);
}

TEST_F(ChatImages, HundredImagesAreAClearError) {
  std::vector<json> parts(100, image_part());
  const std::string e = bad_request_message([&] { chat(user(parts)); });
  EXPECT_TRUE(e.find("maximum context length") != std::string::npos || e.find("at most") != std::string::npos) << e;
}

}  // namespace
}  // namespace tandem::server
