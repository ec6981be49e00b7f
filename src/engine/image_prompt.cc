#include "engine/image_prompt.h"

#include "util/error.h"

namespace tandem {

void expand_image_placeholders(const ModelConfig& c, std::span<const int32_t> ids,
                               const std::vector<std::shared_ptr<const vision::PatchImage>>& images, Request& r) {
  size_t placeholders = 0;
  for (int32_t t : ids) placeholders += t == c.image_token_id;
  if (placeholders != images.size())
    fail("the prompt holds {} image placeholder token{} ({}) but {} image{} given", placeholders,
         placeholders == 1 ? "" : "s", c.image_token_id, images.size(), images.size() == 1 ? " was" : "s were");
  r.prompt.clear();
  r.images.clear();
  size_t next = 0;
  for (int32_t t : ids) {
    if (t != c.image_token_id) {
      r.prompt.push_back(t);
      continue;
    }
    const auto& image = images[next++];
    r.prompt.push_back(c.boi_id);
    r.images.push_back({static_cast<int32_t>(r.prompt.size()), image});
    r.prompt.insert(r.prompt.end(), image->soft_tokens(), c.image_token_id);
    r.prompt.push_back(c.eoi_id);
  }
}

int image_soft_token_budget(const ModelConfig& c, int requested) {
  if (!c.takes_images()) fail("{} takes no images (no vision tower, or its image tokens lie outside the vocabulary)", c.dir);
  const int budget = requested ? requested : c.vision->default_soft_tokens;
  if (!vision::is_soft_token_budget(budget))
    fail("max_soft_tokens must be one of 70, 140, 280, 560, 1120 (the Gemma 4 processor's budgets), got {}", budget);
  return budget;
}

std::shared_ptr<const vision::PatchImage> prepare_image(const ModelConfig& c, std::span<const uint8_t> bytes, int budget,
                                                        const vision::DecodeLimits& limits) {
  if (!c.takes_images()) fail("{} takes no images (no vision tower, or its image tokens lie outside the vocabulary)", c.dir);
  const vision::RgbImage rgb = vision::decode_image(bytes, limits);
  return std::make_shared<const vision::PatchImage>(
      vision::preprocess_image(rgb, c.vision->patch_size, c.vision->pooling_kernel, budget));
}

}  // namespace tandem
