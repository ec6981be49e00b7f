// Per-step integer inputs (token ids, positions, key ranges, block tables, KV slots, output rows)
// are planned on the host into one staging buffer and reach backend memory with a single upload,
// instead of one transfer per array (vLLM's persistent input buffers, FlashInfer's plan step).
#pragma once
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <span>
#include <utility>
#include <vector>

#include "backend/backend.h"

namespace tandem {

class StagedInputs {
 public:
  explicit StagedInputs(Backend& be) : be_(be), device_(be) {}

  void clear() {
    host_.clear();
    entries_.clear();
  }

  // Appends an array of `dims` elements of type T (dtype t) whose backend copy `*view` will be after
  // upload(); returns the host span to fill. Fill it before the next add(): that may move the staging
  // buffer and leave the span dangling.
  template <typename T>
  std::span<T> add(TensorView* view, DType t, std::initializer_list<int64_t> dims) {
    *view = TensorView(t, nullptr, dims);
    const size_t offset = (host_.size() + 15) / 16 * 16;
    host_.resize(offset + view->nbytes());
    entries_.emplace_back(view, offset);
    return {reinterpret_cast<T*>(host_.data() + offset), static_cast<size_t>(view->numel())};
  }

  // One host-to-backend copy of everything added; points each view at its backend copy.
  void upload() {
    if (host_.empty()) return;
    TensorView& dev = device_.resize(DType::U8, {static_cast<int64_t>(host_.size())});
    be_.upload(dev.data, host_.data(), host_.size());
    for (auto& [view, offset] : entries_) view->data = static_cast<char*>(dev.data) + offset;
  }

 private:
  Backend& be_;
  Tensor device_;
  std::vector<uint8_t> host_;
  std::vector<std::pair<TensorView*, size_t>> entries_;
};

}  // namespace tandem
