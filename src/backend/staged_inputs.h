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

// Ids planned on the host except some entries that only backend memory holds (drafts a proposer left
// there for the verify step): out [n] I32 = combined[index[i]], where combined [n + N] I32 holds the n
// staged host entries followed by room for `device` [N] I32, which is written there first (through
// `map` [V, 1] I32, as map[device], when given). Two ops and no host wait, so a recorded step can
// include them.
inline void merge_device_ids(Backend& be, const TensorView& combined, const TensorView& device, const TensorView* map,
                             const TensorView& index, TensorView& out) {
  const int64_t n = out.numel(), N = device.numel();
  TensorView tail(DType::I32, combined.as<int32_t>() + n, {N, 1});
  if (map) {
    be.gather_rows(*map, device.reshaped({N}), tail);
  } else {
    TensorView flat = tail.reshaped({1, N});
    be.copy(device.reshaped({1, N}), flat);
  }
  TensorView dst = out.reshaped({n, 1});
  be.gather_rows(combined.reshaped({n + N, 1}), index, dst);
}

}  // namespace tandem
