// Prompts with images: each image's single placeholder (the chat template's <|image|>, or one
// image_token_id per image in a token-id prompt) expands as the Hugging Face processor expands it,
// to <|image> + N × <|image|> + <image|> with N the image's soft tokens.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "engine/request.h"
#include "model/config.h"

namespace tandem {

// Expands the image_token_id placeholders of `ids` (exactly one per image, in order) into the
// request's prompt and its images. Throws tandem::Error when the counts differ.
void expand_image_placeholders(const ModelConfig& config, std::span<const int32_t> ids,
                               const std::vector<std::shared_ptr<const vision::PatchImage>>& images, Request& request);

// The soft-token budget a server or CLI asked for, checked (0: the model's default).
int image_soft_token_budget(const ModelConfig& config, int requested);

// Decodes and preprocesses an encoded image for this model at `budget` soft tokens.
std::shared_ptr<const vision::PatchImage> prepare_image(const ModelConfig& config, std::span<const uint8_t> bytes,
                                                        int budget, const vision::DecodeLimits& limits = {});

}  // namespace tandem
