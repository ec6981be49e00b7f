// Non-owning views of tensors and an owning host buffer. Row-major; the last dim is contiguous.
#pragma once
#include <array>
#include <cstdint>
#include <cstdlib>
#include <initializer_list>
#include <memory>

#include "util/dtype.h"
#include "util/error.h"

namespace tandem {

struct TensorView {
  DType dtype = DType::F32;
  void* data = nullptr;
  std::array<int64_t, 4> shape{0, 0, 0, 0};
  int ndim = 0;
  // Elements between consecutive rows of the 2-D view [rows(), cols()]; 0 means dense (= cols()).
  // Lets ops read e.g. the gate half of a fused [T, 2I] gate_up activation without a copy.
  int64_t row_stride = 0;

  TensorView() = default;
  TensorView(DType t, void* p, std::initializer_list<int64_t> dims) : dtype(t), data(p) {
    TANDEM_CHECK(dims.size() >= 1 && dims.size() <= 4);
    for (int64_t d : dims) shape[ndim++] = d;
  }

  int64_t dim(int i) const { return shape[i < 0 ? ndim + i : i]; }
  int64_t cols() const { return shape[ndim - 1]; }
  int64_t rows() const {
    int64_t r = 1;
    for (int i = 0; i + 1 < ndim; ++i) r *= shape[i];
    return r;
  }
  int64_t numel() const { return rows() * cols(); }
  int64_t stride() const { return row_stride ? row_stride : cols(); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype); }

  template <typename T>
  T* as() const { return static_cast<T*>(data); }
  // Row r of the 2-D view, honouring row_stride.
  template <typename T>
  T* row(int64_t r) const { return static_cast<T*>(data) + r * stride(); }

  // Same data seen with another shape (must be dense and have the same element count).
  TensorView reshaped(std::initializer_list<int64_t> dims) const {
    TensorView v(dtype, data, dims);
    TANDEM_CHECK(row_stride == 0 && v.numel() == numel());
    return v;
  }
  // Rows [begin, end) of the 2-D view.
  TensorView row_slice(int64_t begin, int64_t end) const {
    TensorView v = *this;
    v.data = static_cast<char*>(data) + begin * stride() * dtype_size(dtype);
    v.shape = {end - begin, cols(), 0, 0};
    v.ndim = 2;
    return v;
  }
};

// Owning, 64-byte aligned host memory holding one f32 (or other dtype) tensor.
class HostTensor {
 public:
  HostTensor() = default;
  HostTensor(DType t, std::initializer_list<int64_t> dims) { resize(t, dims); }

  void resize(DType t, std::initializer_list<int64_t> dims) {
    TensorView v(t, nullptr, dims);
    const size_t bytes = (v.nbytes() + 63) / 64 * 64;
    if (bytes > capacity_) {
      mem_.reset(static_cast<char*>(std::aligned_alloc(64, bytes ? bytes : 64)));
      if (!mem_) fail("out of host memory allocating {} bytes", bytes);
      capacity_ = bytes;
    }
    v.data = mem_.get();
    view_ = v;
  }

  const TensorView& view() const { return view_; }
  TensorView& view() { return view_; }
  operator const TensorView&() const { return view_; }
  float* f32() const { return view_.as<float>(); }

 private:
  struct Free {
    void operator()(char* p) const { std::free(p); }
  };
  std::unique_ptr<char, Free> mem_;
  size_t capacity_ = 0;
  TensorView view_;
};

}  // namespace tandem
