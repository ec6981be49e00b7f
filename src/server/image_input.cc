#include "server/image_input.h"

#include <filesystem>
#include <fstream>
#include <iterator>

#include "engine/image_prompt.h"
#include "server/api_error.h"
#include "util/error.h"

namespace tandem::server {

std::vector<uint8_t> base64_decode(std::string_view text) {
  auto value = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+' || c == '-') return 62;
    if (c == '/' || c == '_') return 63;
    return -1;
  };
  while (!text.empty() && text.back() == '=') text.remove_suffix(1);
  if (text.size() % 4 == 1) throw bad_request("the image's base64 data has an impossible length", "messages");
  std::vector<uint8_t> out;
  out.reserve(text.size() * 3 / 4);
  uint32_t acc = 0;
  int bits = 0;
  for (char c : text) {
    const int v = value(c);
    if (v < 0) throw bad_request("the image's base64 data has a character outside the base64 alphabet", "messages");
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<uint8_t>(acc >> bits));
    }
  }
  return out;
}

std::vector<uint8_t> image_url_bytes(const std::string& url, const ImageOptions& o) {
  if (url.rfind("data:", 0) == 0) {
    const size_t comma = url.find(',');
    if (comma == std::string::npos) throw bad_request("the data: URL of an image has no ',' before its data", "messages");
    const std::string_view meta(url.data() + 5, comma - 5);
    if (meta.size() < 7 || meta.substr(meta.size() - 7) != ";base64")
      throw bad_request("image data: URLs must be base64 (data:image/png;base64,...)", "messages");
    const std::string_view media = meta.substr(0, meta.size() - 7);
    if (!media.empty() && media.rfind("image/", 0) != 0)
      throw bad_request(fmt::format("the data: URL's media type '{}' is not an image type", media), "messages");
    return base64_decode(std::string_view(url).substr(comma + 1));
  }
  if (url.rfind("file://", 0) == 0) {
    if (o.allowed_local_media_path.empty())
      throw bad_request("file:// image URLs are refused: the server was not started with --allowed-local-media-path",
                        "messages");
    namespace fs = std::filesystem;
    std::error_code ec;
    const fs::path root = fs::canonical(o.allowed_local_media_path, ec);
    const fs::path file = fs::weakly_canonical(fs::path(url.substr(7)), ec);
    const auto [r, f] = std::mismatch(root.begin(), root.end(), file.begin(), file.end());
    if (ec || r != root.end())
      throw bad_request(fmt::format("file:// image URLs must name a file inside --allowed-local-media-path {}",
                                    o.allowed_local_media_path), "messages");
    std::ifstream in(file, std::ios::binary);
    if (!in || fs::is_directory(file)) throw bad_request(fmt::format("cannot read the image file {}", file.string()), "messages");
    return std::vector<uint8_t>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  }
  if (url.rfind("http://", 0) == 0 || url.rfind("https://", 0) == 0)
    throw bad_request("this server does not fetch images from http(s) URLs; send the image inline as a data: URL "
                      "(data:image/jpeg;base64,...)", "messages");
  throw bad_request("an image URL must be a data: URL (data:image/png;base64,...) or, with "
                    "--allowed-local-media-path, a file:// URL", "messages");
}

std::shared_ptr<const vision::PatchImage> prepare_request_image(const std::vector<uint8_t>& bytes, size_t index,
                                                                const ImageOptions& o) {
  try {
    return prepare_image(*o.model, bytes, o.soft_tokens, o.decode);
  } catch (const Error& e) {
    throw bad_request(fmt::format("image {}: {}", index, e.what()), "messages");
  }
}

}  // namespace tandem::server
