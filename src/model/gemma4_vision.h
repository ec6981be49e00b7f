// Gemma 4's vision tower (model.vision_tower.*) and its projector into the text model
// (model.embed_vision.*): one preprocessed image in, one row per soft token out, in the text
// model's width, ready to replace the embeddings of the image's <|image|> placeholders.
//
//   patches [n, p²·3] in [0, 1] ──2(x−½)── input_proj ──+ pos_x[x] + pos_y[y]──▶ h [n, Hv]
//   27 × encoder layer (26B/31B; sandwich norms, q/k norms, weightless v norm, 2-D RoPE θ 100 —
//        x on the first half of each head, y on the second — attention over all n patches, GeGLU)
//   k×k average pooling by patch position ──× √Hv──▶ [n/k², Hv] ──standardize (26B/31B)──▶
//   RMS0 ──embedding_projection──▶ features [n/k², H]
// The E models' variant clamps the input and output of every tower linear to per-linear bounds.
#pragma once
#include <memory>
#include <vector>

#include "backend/backend.h"
#include "backend/staged_inputs.h"
#include "model/config.h"
#include "model/weights.h"
#include "vision/image_preprocess.h"

namespace tandem {

// A linear of the tower, and (E models) the clamp bounds of its input and output.
struct VisionLinear {
  TensorView w;  // [out, in]
  bool clipped = false;
  float in_lo = 0, in_hi = 0, out_lo = 0, out_hi = 0;
};

struct VisionLayerWeights {
  TensorView input_norm, post_attention_norm, pre_ffn_norm, post_ffn_norm, q_norm, k_norm;
  VisionLinear q, k, v, o, gate, up, down;
};

class Gemma4Vision {
 public:
  // The tower of a gemma4 checkpoint with a vision_config (its safetensors, or dummy / meta weights).
  static std::unique_ptr<Gemma4Vision> load(const ModelConfig& config, Backend& backend,
                                            LoadFormat format = LoadFormat::safetensors);

  const VisionConfig& config() const { return vc_; }
  // features [N, H] (backend memory, F32; N = image.soft_tokens(), H the text model's hidden size).
  void encode(const vision::PatchImage& image, TensorView& features);
  // The tower's last output before the projector, [N, Hv] (tests compare it with transformers).
  const TensorView& tower_output() const { return pooled_.view(); }

  int64_t parameter_count() const { return parameters_; }
  int64_t weight_bytes() const { return weight_bytes_; }

 private:
  Gemma4Vision(const ModelConfig& c, Backend& be);
  VisionLinear bind_linear(Weights& w, const std::string& module, int64_t out, int64_t in);
  // y = clamp(clamp(x) · Wᵀ); x is copied before its clamp (it feeds other linears too).
  void linear(const TensorView& x, const VisionLinear& l, TensorView& y);
  void layer(const VisionLayerWeights& w, int64_t n);

  VisionConfig vc_;
  int text_hidden_;
  Backend& be_;
  Weights weights_;
  TensorView input_proj_, pos_x_, pos_y_, std_bias_, std_scale_, projection_;
  std::vector<VisionLayerWeights> layers_;
  int64_t parameters_ = 0, weight_bytes_ = 0;
  int head_dim_att_ = 0;  // head dim the attention runs with (padded to a multiple of 32 off the host)

  StagedInputs inputs_;
  TensorView pos_ids_x_, pos_ids_y_, rope_pos_, ranges_, tables_;
  std::vector<TensorView> pool_ids_;  // [k²] × [N] I32: the patch of each pooled token at offset (dy, dx)
  Tensor patches_, h_, normed_, clipped_in_, q_, k_, v_, attn_, proj_, gate_, up_, pe_, pooled_, tmp_;
  Tensor q_att_, k_cache_, v_cache_, attn_att_, inv_freq_;
  // Padded attention buffers whose pad columns are known to be zero (address, bytes zeroed).
  void* zeroed_[3] = {nullptr, nullptr, nullptr};
  size_t zeroed_bytes_[3] = {0, 0, 0};
};

}  // namespace tandem
