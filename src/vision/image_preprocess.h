// The Gemma 4 image processor (transformers' Gemma4ImageProcessor, the torchvision backend that
// AutoProcessor picks): an aspect-preserving resize to a patch budget, rescaling to [0, 1], and
// patches in row-major order. Everything a served image goes through before the vision tower.
#pragma once
#include <cstdint>
#include <vector>

#include "vision/image_decode.h"

namespace tandem::vision {

// The soft-token budgets the processor accepts (max_soft_tokens); 280 is its default.
inline constexpr int kSoftTokenBudgets[] = {70, 140, 280, 560, 1120};
bool is_soft_token_budget(int n);

// get_aspect_ratio_preserving_size: the largest size (both sides multiples of patch · pool) with at
// most pool² · budget patches, aspect kept (an extreme aspect puts one side at patch · pool).
struct ResizeTarget {
  int height = 0, width = 0;
  int soft_tokens(int patch, int pool) const { return (height / patch) * (width / patch) / (pool * pool); }
};
ResizeTarget resize_target(int height, int width, int patch, int pool, int budget);

// torch.nn.functional.interpolate(mode="bicubic", antialias=True) on a uint8 image, as torchvision's
// resize runs it on the CPU: separable (horizontal pass, then vertical, through a uint8 image),
// Keys cubic a = -0.5, per-axis int16 weights with their own precision, int32 accumulation,
// rounding and clamping to [0, 255] after each pass.
RgbImage resize_bicubic_antialias(const RgbImage& in, int out_height, int out_width);

// One image ready for the vision tower.
struct PatchImage {
  int patch = 0, pool = 0;
  int grid_w = 0, grid_h = 0;  // patches across and down
  // [grid_h · grid_w, patch · patch · 3]: patch (gy, gx) row-major; inside a patch (py, px, channel);
  // each value f32(pixel) · f32(1/255), as the processor's rescale computes it.
  std::vector<float> pixels;
  uint64_t hash = 0;  // of the resized pixels and the geometry: equal images share KV and features
  int num_patches() const { return grid_w * grid_h; }
  int soft_tokens() const { return num_patches() / (pool * pool); }
};

// Resize (if the target differs from the image's size), rescale and patchify. `budget` must be one
// of kSoftTokenBudgets; throws tandem::Error otherwise or when the image cannot be resized.
PatchImage preprocess_image(const RgbImage& image, int patch, int pool, int budget);

}  // namespace tandem::vision
