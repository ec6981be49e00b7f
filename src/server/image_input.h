// Images of chat requests (OpenAI "image_url" content parts), as vLLM takes them: data: URLs with
// base64 payloads; file:// URLs only inside --allowed-local-media-path; http(s) URLs are refused
// (this server fetches nothing). Every failure is an ApiError 400 whose message says what is wrong.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model/config.h"
#include "vision/image_decode.h"
#include "vision/image_preprocess.h"

namespace tandem::server {

struct ImageOptions {
  const ModelConfig* model = nullptr;  // the served model when it takes images; null: images are refused
  int max_images = 999;                // --limit-mm-per-prompt '{"image": N}' (vLLM's default 999)
  int soft_tokens = 280;               // --mm-processor-kwargs '{"max_soft_tokens": N}'
  std::string allowed_local_media_path;  // empty: file:// URLs are refused
  vision::DecodeLimits decode;
};

// The encoded bytes behind an image_url (data: or file://).
std::vector<uint8_t> image_url_bytes(const std::string& url, const ImageOptions& options);

// Standard or URL-safe base64 (padding optional, no other characters); nullopt-like failure throws.
std::vector<uint8_t> base64_decode(std::string_view text);

// Bytes → the model's preprocessed image; decode errors become 400s naming the image's index.
std::shared_ptr<const vision::PatchImage> prepare_request_image(const std::vector<uint8_t>& bytes, size_t index,
                                                                const ImageOptions& options);

}  // namespace tandem::server
