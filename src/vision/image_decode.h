// Image files to RGB pixels, as the Hugging Face Gemma 4 processor sees them: JPEG (libjpeg-turbo),
// PNG (libpng), GIF (giflib, first frame) and WebP (libwebp, first frame of an animation), decoded
// with the libraries' default settings (what Pillow uses), then converted to RGB as transformers 5.17's
// convert_to_rgb does (Pillow's convert("RGB")): an alpha channel or a transparent colour is dropped,
// not composited; grey is replicated. EXIF orientation is not applied (neither Pillow nor transformers do).
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace tandem::vision {

struct RgbImage {
  int width = 0, height = 0;
  std::vector<uint8_t> rgb;  // [height][width][3]
};

struct DecodeLimits {
  // Larger images are refused before their pixels are decoded (Pillow's decompression-bomb
  // threshold, 89 478 485 pixels, by default).
  int64_t max_pixels = 89478485;
};

// Which decoders this build has ("jpeg", "png", "gif", "webp"): each is optional at build time.
std::vector<std::string> image_formats();

// Decodes an encoded image (format sniffed from its first bytes). Throws tandem::Error with a
// message meant for the client on anything it cannot use: empty or unknown data, a format this
// build has no decoder for, truncated or corrupt data, a zero-sized or too large image.
RgbImage decode_image(std::span<const uint8_t> bytes, const DecodeLimits& limits = {});

}  // namespace tandem::vision
