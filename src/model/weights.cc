#include "model/weights.h"

#include "util/error.h"
#include "util/half.h"

namespace tandem {

Weights Weights::open(const std::string& dir, LoadFormat format) {
  Weights w;
  w.path_ = dir;
  w.format_ = format;
  if (format == LoadFormat::safetensors) w.store_ = std::make_shared<WeightStore>(WeightStore::open(dir));
  return w;
}

const TensorInfo* Weights::info(const std::string& name) const { return store_ ? store_->find(name) : nullptr; }

std::optional<TensorView> Weights::find(const std::string& name, const std::vector<int64_t>& shape) {
  if (format_ == LoadFormat::dummy) {
    // Seeded uniform values in ±0.05 (norm weights and scalars land near 1 so activations stay sane).
    const bool near_one = name.find("norm") != std::string::npos || name.find("scalar") != std::string::npos ||
                          name.find("scale") != std::string::npos;
    auto t = std::make_shared<HostTensor>();
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    t->resize(DType::BF16, {n});
    auto* p = t->view().as<uint16_t>();
    for (int64_t i = 0; i < n; ++i) {
      seed_ = seed_ * 6364136223846793005ull + 1442695040888963407ull;
      const float u = static_cast<float>((seed_ >> 40) & 0xFFFFFF) / 16777216.0f - 0.5f;
      p[i] = f32_to_bf16(near_one ? 1.0f + 0.2f * u : 0.1f * u);
    }
    TensorView v = t->view();
    v.ndim = static_cast<int>(shape.size());
    for (size_t i = 0; i < shape.size(); ++i) v.shape[i] = shape[i];
    owned_.push_back(std::move(t));
    bound_bytes_ += static_cast<int64_t>(v.nbytes());
    return v;
  }
  const TensorInfo* t = store_->find(name);
  if (!t) return std::nullopt;
  const bool scalar_as_one = t->shape.empty() && shape == std::vector<int64_t>{1};
  if (t->shape != shape && !scalar_as_one)
    fail("tensor {} in {} has shape {}, expected {}", name, t->file, t->shape_string(), shape_string(shape));
  if (t->dtype != DType::F32 && t->dtype != DType::BF16 && t->dtype != DType::F16 && t->dtype != DType::F8_E4M3)
    fail("tensor {} in {} has dtype {}, which tandem cannot compute with", name, t->file, dtype_name(t->dtype));
  TensorView v;
  v.dtype = t->dtype;
  v.data = const_cast<void*>(t->data);
  v.ndim = static_cast<int>(shape.size());
  for (size_t i = 0; i < shape.size(); ++i) v.shape[i] = shape[i];
  if (v.ndim == 0) {  // scalars are viewed as [1]
    v.ndim = 1;
    v.shape[0] = 1;
  }
  bound_bytes_ += static_cast<int64_t>(t->nbytes);
  return v;
}

TensorView Weights::get(const std::string& name, const std::vector<int64_t>& shape) {
  if (auto v = find(name, shape)) return *v;
  fail("checkpoint {} has no tensor {} (expected shape {})", path_, name, shape_string(shape));
}

float read_scalar(const TensorView& t) {
  switch (t.dtype) {
    case DType::F32: return *t.as<float>();
    case DType::BF16: return bf16_to_f32(*t.as<uint16_t>());
    case DType::F16: return f16_to_f32(*t.as<uint16_t>());
    case DType::F8_E4M3: return f8e4m3_to_f32(*t.as<uint8_t>());
    default: fail("scalar tensor has non-float dtype {}", dtype_name(t.dtype));
  }
}

}  // namespace tandem
