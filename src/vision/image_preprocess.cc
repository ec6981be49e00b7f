#include "vision/image_preprocess.h"

#include <algorithm>
#include <cmath>

#include "util/error.h"

namespace tandem::vision {
namespace {

// Keys' cubic convolution with a = -0.5 (PyTorch's aa_filter for bicubic with antialias, which
// follows Pillow), evaluated in double exactly as PyTorch writes the two pieces.
double cubic_filter(double x) {
  constexpr double a = -0.5;
  x = std::abs(x);
  if (x < 1.0) return ((a + 2) * x - (a + 3)) * x * x + 1;
  if (x < 2.0) return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a;
  return 0.0;
}

// One axis of the resize: for output index i, inputs [start[i], start[i] + size[i]) with int16
// weights w[i · ksize + j] of `precision` fractional bits (PyTorch's
// _compute_index_ranges_int16_weights for antialias=True, align_corners=False, no scale factor).
struct AxisWeights {
  int ksize = 0;
  int precision = 0;
  std::vector<int> start, size;
  std::vector<int16_t> w;
};

AxisWeights axis_weights(int in, int out) {
  const double scale = static_cast<double>(in) / out;
  const double support = scale >= 1.0 ? 2.0 * scale : 2.0;  // interp_size 4 · 0.5 (· scale when shrinking)
  AxisWeights a;
  a.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  const double invscale = scale >= 1.0 ? 1.0 / scale : 1.0;
  std::vector<double> wf(static_cast<size_t>(out) * a.ksize, 0.0);
  a.start.resize(out);
  a.size.resize(out);
  double wt_max = 0.0;
  for (int i = 0; i < out; ++i) {
    const double center = scale * (i + 0.5);
    const int64_t xmin = std::max(static_cast<int64_t>(center - support + 0.5), int64_t{0});
    int64_t xsize = std::min(static_cast<int64_t>(center + support + 0.5), static_cast<int64_t>(in)) - xmin;
    xsize = std::clamp(xsize, int64_t{0}, static_cast<int64_t>(a.ksize));
    double* w = &wf[static_cast<size_t>(i) * a.ksize];
    double total = 0.0;
    for (int64_t j = 0; j < xsize; ++j) {
      w[j] = cubic_filter((j + xmin - center + 0.5) * invscale);
      total += w[j];
    }
    if (total != 0.0)
      for (int64_t j = 0; j < xsize; ++j) {
        w[j] /= total;
        wt_max = std::max(wt_max, w[j]);
      }
    a.start[i] = static_cast<int>(xmin);
    a.size[i] = static_cast<int>(xsize);
  }
  // As many fractional bits as keep the largest weight below 2^15.
  for (a.precision = 0; a.precision < 22; ++a.precision) {
    const int next = static_cast<int>(0.5 + wt_max * (1 << (a.precision + 1)));
    if (next >= (1 << 15)) break;
  }
  a.w.resize(wf.size());
  for (size_t k = 0; k < wf.size(); ++k) {
    const double v = wf[k] * (1 << a.precision);
    a.w[k] = static_cast<int16_t>(v < 0 ? static_cast<int>(-0.5 + v) : static_cast<int>(0.5 + v));
  }
  return a;
}

uint8_t round_shift_clamp(int32_t acc, int precision) {
  const int32_t v = acc >> precision;  // arithmetic shift, as PyTorch's kernels
  return static_cast<uint8_t>(std::clamp(v, 0, 255));
}

}  // namespace

bool is_soft_token_budget(int n) { return std::ranges::find(kSoftTokenBudgets, n) != std::end(kSoftTokenBudgets); }

ResizeTarget resize_target(int height, int width, int patch, int pool, int budget) {
  if (height <= 0 || width <= 0) fail("cannot resize a {}x{} image", width, height);
  // Python arithmetic of get_aspect_ratio_preserving_size: float division and sqrt in double.
  const int64_t max_patches = static_cast<int64_t>(budget) * pool * pool;
  const double target_px = static_cast<double>(max_patches * patch * patch);
  const double factor = std::sqrt(target_px / (static_cast<double>(height) * width));
  const int side = patch * pool;
  int64_t h = static_cast<int64_t>(std::floor(factor * height / side)) * side;
  int64_t w = static_cast<int64_t>(std::floor(factor * width / side)) * side;
  if (h == 0 && w == 0) fail("cannot resize a {}x{} image to a multiple of {} pixels", width, height, side);
  const int64_t max_side = (max_patches / (pool * pool)) * side;
  if (h == 0) {
    h = side;
    w = std::min(static_cast<int64_t>(std::floor(static_cast<double>(width) / height)) * side, max_side);
  } else if (w == 0) {
    w = side;
    h = std::min(static_cast<int64_t>(std::floor(static_cast<double>(height) / width)) * side, max_side);
  }
  if (static_cast<double>(h * w) > target_px)
    fail("resizing a {}x{} image to {}x{} would exceed {} patches", width, height, w, h, max_patches);
  return {static_cast<int>(h), static_cast<int>(w)};
}

RgbImage resize_bicubic_antialias(const RgbImage& in, int out_height, int out_width) {
  RgbImage cur = in;
  if (out_width != cur.width) {  // horizontal pass (skipped when the width does not change)
    const AxisWeights a = axis_weights(cur.width, out_width);
    RgbImage next;
    next.width = out_width, next.height = cur.height;
    next.rgb.resize(static_cast<size_t>(out_width) * cur.height * 3);
    for (int y = 0; y < cur.height; ++y) {
      const uint8_t* src = &cur.rgb[static_cast<size_t>(y) * cur.width * 3];
      uint8_t* dst = &next.rgb[static_cast<size_t>(y) * out_width * 3];
      for (int x = 0; x < out_width; ++x) {
        const int16_t* w = &a.w[static_cast<size_t>(x) * a.ksize];
        for (int c = 0; c < 3; ++c) {
          int32_t acc = a.precision ? 1 << (a.precision - 1) : 0;
          for (int j = 0; j < a.size[x]; ++j) acc += src[(a.start[x] + j) * 3 + c] * w[j];
          dst[x * 3 + c] = round_shift_clamp(acc, a.precision);
        }
      }
    }
    cur = std::move(next);
  }
  if (out_height != cur.height) {  // vertical pass, over the horizontally resized uint8 image
    const AxisWeights a = axis_weights(cur.height, out_height);
    RgbImage next;
    next.width = cur.width, next.height = out_height;
    next.rgb.resize(static_cast<size_t>(cur.width) * out_height * 3);
    const size_t row = static_cast<size_t>(cur.width) * 3;
    for (int y = 0; y < out_height; ++y) {
      const int16_t* w = &a.w[static_cast<size_t>(y) * a.ksize];
      uint8_t* dst = &next.rgb[y * row];
      for (size_t i = 0; i < row; ++i) {
        int32_t acc = a.precision ? 1 << (a.precision - 1) : 0;
        for (int j = 0; j < a.size[y]; ++j) acc += cur.rgb[(a.start[y] + j) * row + i] * w[j];
        dst[i] = round_shift_clamp(acc, a.precision);
      }
    }
    cur = std::move(next);
  }
  return cur;
}

PatchImage preprocess_image(const RgbImage& image, int patch, int pool, int budget) {
  if (!is_soft_token_budget(budget))
    fail("max_soft_tokens must be one of 70, 140, 280, 560, 1120 (the Gemma 4 processor's budgets), got {}", budget);
  const ResizeTarget t = resize_target(image.height, image.width, patch, pool, budget);
  const RgbImage resized = t.height == image.height && t.width == image.width
                               ? image
                               : resize_bicubic_antialias(image, t.height, t.width);
  PatchImage p;
  p.patch = patch, p.pool = pool;
  p.grid_w = t.width / patch, p.grid_h = t.height / patch;
  const int per_patch = patch * patch * 3;
  p.pixels.resize(static_cast<size_t>(p.num_patches()) * per_patch);
  const float rescale = static_cast<float>(1.0 / 255.0);  // Python's 1/255, applied in f32
  for (int gy = 0; gy < p.grid_h; ++gy)
    for (int gx = 0; gx < p.grid_w; ++gx) {
      float* out = &p.pixels[(static_cast<size_t>(gy) * p.grid_w + gx) * per_patch];
      for (int py = 0; py < patch; ++py) {
        const uint8_t* src = &resized.rgb[((static_cast<size_t>(gy) * patch + py) * resized.width + gx * patch) * 3];
        for (int i = 0; i < patch * 3; ++i) out[py * patch * 3 + i] = static_cast<float>(src[i]) * rescale;
      }
    }
  // FNV-1a over the geometry and the resized pixels.
  uint64_t h = 0xcbf29ce484222325ull;
  auto mix = [&](uint64_t v) { h = (h ^ v) * 0x100000001b3ull; };
  for (int v : {patch, pool, p.grid_w, p.grid_h}) mix(static_cast<uint64_t>(v));
  for (uint8_t b : resized.rgb) mix(b);
  p.hash = h;
  return p;
}

}  // namespace tandem::vision
