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

struct QuantParams;

struct TensorView {
  DType dtype = DType::F32;
  void* data = nullptr;
  std::array<int64_t, 4> shape{0, 0, 0, 0};
  int ndim = 0;
  // Elements between consecutive rows of the 2-D view [rows(), cols()]; 0 means dense (= cols()).
  // Lets ops read e.g. the gate half of a fused [T, 2I] gate_up activation without a copy.
  int64_t row_stride = 0;
  // Set on quantized weights only: then dtype is U8, data holds the packed codes, shape is the
  // logical [N, K] (or [E, N, K]) and *quant says how codes decode (see QuantParams).
  const QuantParams* quant = nullptr;
  // Set on a loaded model's weights (model/weights.h): their data is complete when the view is made
  // and no kernel writes it afterwards, so a backend may read it before the ops issued just before
  // have finished (the CUDA matmuls' early weight loads). Rows gathered at run time are not constant.
  bool constant = false;

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
  size_t nbytes() const;  // of the stored data (packed codes for a quantized weight)

  template <typename T>
  T* as() const { return static_cast<T*>(data); }
  // Row r of the 2-D view, honouring row_stride.
  template <typename T>
  T* row(int64_t r) const { return static_cast<T*>(data) + r * stride(); }

  // Same data seen with another shape (must be dense and have the same element count).
  TensorView reshaped(std::initializer_list<int64_t> dims) const {
    TensorView v(dtype, data, dims);
    TANDEM_CHECK(row_stride == 0 && v.numel() == numel());
    v.constant = constant;
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

// How the codes of a quantized weight decode to values. Every supported checkpoint format is
// rewritten at load into one of these (docs/DESIGN.md, "Quantized weights"), so one kernel family
// per backend serves them all.
enum class QuantCode : uint8_t {
  kU4,      // unsigned 4-bit integers, two per byte: element 2j in the low nibble of byte j
  kU8,      // unsigned 8-bit integers
  kE2M1,    // FP4 E2M1 (NVFP4), packed as kU4: bit 3 the sign, bits 0-2 index {0, .5, 1, 1.5, 2, 3, 4, 6}
  kF8E4M3,  // OCP FP8 E4M3 codes, one per byte
};

constexpr int quant_code_bits(QuantCode c) { return c == QuantCode::kU4 || c == QuantCode::kE2M1 ? 4 : 8; }
// The zero point a weight without a zeros tensor uses: the midpoint of the unsigned integer codes
// (symmetric quantization), 0 for the float codes.
constexpr int quant_default_zero(QuantCode c) {
  return c == QuantCode::kU4 ? 8 : c == QuantCode::kU8 ? 128 : 0;
}

// A quantized weight W [rows, K] (rows = N, or E·N for stacked experts) is
//   W[r, j] = (value(code[r, j]) - zero[r, g]) · scale[r, g],   g = j / group,
// multiplied with x[k_perm[j]] (or x[j] without a permutation). Rows are packed densely, K·bits/8
// bytes each (K even for 4-bit codes). The last group of a row may be shorter than `group`.
struct QuantParams {
  QuantCode code = QuantCode::kU4;
  int64_t group = 0;   // consecutive elements of a row that share one scale and zero
  TensorView scales;   // [rows, ceil(K / group)] F32, BF16 or F16
  TensorView zeros;    // [rows, ceil(K / group)] U8, or absent (ndim 0): quant_default_zero(code)
  TensorView k_perm;   // [K] (one per expert: [E, K]) I32, or absent (ndim 0): the identity

  int64_t groups(int64_t K) const { return (K + group - 1) / group; }
};

inline size_t TensorView::nbytes() const {
  const size_t n = static_cast<size_t>(numel());
  if (quant) return quant_code_bits(quant->code) == 4 ? n / 2 : n;
  return n * dtype_size(dtype);
}

// Bytes a weight occupies in memory: its data, and for a quantized weight also its scales, zeros
// and permutation (what reading it once costs).
inline size_t stored_bytes(const TensorView& t) {
  auto part = [](const TensorView& v) { return v.ndim ? v.nbytes() : size_t{0}; };  // ndim 0: absent
  size_t b = t.nbytes();
  if (t.quant) b += part(t.quant->scales) + part(t.quant->zeros) + part(t.quant->k_perm);
  return b;
}

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
