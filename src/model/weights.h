// Binds checkpoint tensors to TensorViews with shape checks. Either the mmapped safetensors of a
// checkpoint, or (--load-format dummy) seeded random bf16 tensors of the right shapes, for
// benchmarking configurations that have no checkpoint.
#pragma once
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "backend/tensor.h"
#include "io/safetensors.h"

namespace tandem {

enum class LoadFormat { safetensors, dummy };

class Weights {
 public:
  static Weights open(const std::string& dir, LoadFormat format);

  // The tensor `name` with exactly `shape`; throws tandem::Error naming the file and tensor if it is
  // missing or has another shape.
  TensorView get(const std::string& name, const std::vector<int64_t>& shape);
  // As get(), but returns nullopt when absent (optional tensors such as lm_head.weight).
  std::optional<TensorView> find(const std::string& name, const std::vector<int64_t>& shape);
  // Any shape; for tensors whose shape is read from the checkpoint (e.g. layer_scalar [1]).
  const TensorInfo* info(const std::string& name) const;
  bool dummy() const { return format_ == LoadFormat::dummy; }
  const std::string& path() const { return path_; }
  // Total bytes of weights bound so far.
  int64_t bound_bytes() const { return bound_bytes_; }

 private:
  std::string path_;
  LoadFormat format_ = LoadFormat::safetensors;
  std::shared_ptr<WeightStore> store_;
  std::vector<std::shared_ptr<HostTensor>> owned_;  // dummy tensors
  uint64_t seed_ = 0x9E3779B97F4A7C15ull;
  int64_t bound_bytes_ = 0;
};

// A scalar stored as a one-element tensor of any float dtype (layer_scalar).
float read_scalar(const TensorView& t);

}  // namespace tandem
