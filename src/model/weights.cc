#include "model/weights.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstring>

#include "util/error.h"
#include "util/half.h"
#include "util/log.h"

namespace tandem {
namespace {

TensorView view_of(DType dtype, void* data, const std::vector<int64_t>& shape) {
  TensorView v(dtype, data, {1});
  v.ndim = static_cast<int>(shape.size());
  for (size_t i = 0; i < shape.size(); ++i) v.shape[i] = shape[i];
  return v;
}

// A split tensor as [outer, blocks, parts, run]: each of its outer × blocks runs of `run` elements is
// contiguous in the whole tensor. Fails where the dim does not divide.
struct SliceRuns {
  int64_t outer = 1, blocks = 1, parts = 1, run = 1;
};
SliceRuns slice_runs(const std::string& name, const std::vector<int64_t>& shape, const Split& s) {
  TANDEM_CHECK(s.dim >= 0 && static_cast<size_t>(s.dim) < shape.size() && s.index >= 0 && s.index < s.parts);
  const int64_t D = shape[s.dim];
  if (D % (s.blocks * s.parts) != 0)
    fail("tensor {} (shape {}) cannot be split {} ways along dim {}", name, shape_string(shape), s.parts * s.blocks,
         s.dim);
  SliceRuns r{1, s.blocks, s.parts, D / s.blocks / s.parts};
  for (int i = 0; i < s.dim; ++i) r.outer *= shape[i];
  for (size_t i = static_cast<size_t>(s.dim) + 1; i < shape.size(); ++i) r.run *= shape[i];
  return r;
}

std::vector<int64_t> sliced_shape(const std::string& name, std::vector<int64_t> shape, const Split& s) {
  if (s.whole()) return shape;
  slice_runs(name, shape, s);  // checks that it divides
  shape[s.dim] /= s.parts;
  return shape;
}

}  // namespace

Weights Weights::open(const std::string& dir, LoadFormat format, Backend& be, const QuantConfig& quant,
                      const OnlineQuant& online) {
  if (online.active() && quant.quantized())
    fail("{} is already quantized ({}); --quantization quantizes bf16 / f16 / f32 checkpoints only (drop it, or "
         "use the unquantized checkpoint)",
         dir, quant.describe());
  if (online.any()) log::info("{}: quantizing at load, {}", dir, online.describe());
  Weights w;
  w.be_ = &be;
  w.quant_ = quant;
  w.online_ = online;
  w.path_ = dir;
  w.format_ = format;
  if (format == LoadFormat::safetensors) w.store_ = std::make_shared<WeightStore>(WeightStore::open(dir));
  return w;
}

const TensorInfo* Weights::info(const std::string& name) const { return store_ ? store_->find(name) : nullptr; }

TensorView Weights::upload_slice(const void* full, DType dtype, const std::vector<int64_t>& shape, const Split& split) {
  const SliceRuns r = slice_runs("", shape, split);
  const size_t run_bytes = static_cast<size_t>(r.run) * dtype_size(dtype);
  std::vector<uint8_t> host(static_cast<size_t>(r.outer * r.blocks) * run_bytes);
  const auto* src = static_cast<const uint8_t*>(full);
  for (int64_t o = 0, i = 0; o < r.outer; ++o)
    for (int64_t b = 0; b < r.blocks; ++b, ++i)
      std::memcpy(host.data() + i * run_bytes,
                  src + static_cast<size_t>((o * r.blocks + b) * r.parts + split.index) * run_bytes, run_bytes);
  auto buffer = std::make_shared<Buffer>(*be_, host.size());
  be_->upload(buffer->data(), host.data(), host.size());
  TensorView v = view_of(dtype, buffer->data(), sliced_shape("", shape, split));
  owned_.push_back(std::move(buffer));
  return v;
}

void Weights::check_unquantized_split(const std::string& module, const Split& split) const {
  if (!split.whole() && (online_.quantizes(module) || quant_.quantizes(module)))
    fail("{}: tensor parallelism slices unquantized weights only for now, and {} is quantized ({}); run it with "
         "--tensor-parallel-size 1",
         path_, module, online_.quantizes(module) ? online_.describe() : quant_.describe());
}

std::optional<TensorView> Weights::find(const std::string& name, const std::vector<int64_t>& shape,
                                        const Split& split) {
  std::optional<TensorView> v = bind_tensor(name, shape, split);
  if (v) v->constant = true;
  return v;
}

std::optional<TensorView> Weights::bind_tensor(const std::string& name, const std::vector<int64_t>& shape,
                                               const Split& split) {
  if (format_ == LoadFormat::meta) {  // bf16, as published checkpoints store these weights
    TensorView v = view_of(DType::BF16, nullptr, sliced_shape(name, shape, split));
    bound_bytes_ += static_cast<int64_t>(v.nbytes());
    return v;
  }
  if (format_ == LoadFormat::dummy) {  // a rank's slice of the very tensor an unsplit load generates
    auto [v, buffer] = generate_dummy(name, shape);
    if (!split.whole()) {
      std::vector<uint8_t> host(v.nbytes());
      be_->download(host.data(), v.data, host.size());
      v = upload_slice(host.data(), v.dtype, shape, split);
    } else {
      owned_.push_back(std::move(buffer));
    }
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
  if (!split.whole()) {
    const SliceRuns r = slice_runs(name, shape, split);
    TensorView v;
    if (be_->is_host() && r.outer * r.blocks == 1) {  // one run: the slice is read in place
      v = view_of(t->dtype, const_cast<uint8_t*>(static_cast<const uint8_t*>(t->data)) +
                                static_cast<size_t>(split.index * r.run) * dtype_size(t->dtype),
                  sliced_shape(name, shape, split));
    } else {
      v = upload_slice(t->data, t->dtype, shape, split);
    }
    bound_bytes_ += static_cast<int64_t>(v.nbytes());
    return v;
  }
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
  if (!be_->is_host()) {  // one upload at load; the mmapped bytes are not touched again
    auto buffer = std::make_shared<Buffer>(*be_, t->nbytes);
    be_->upload(buffer->data(), t->data, t->nbytes);
    v.data = buffer->data();
    owned_.push_back(std::move(buffer));
  } else {
    // The host backend computes straight from the mapped file: read the pages in now, at load, rather
    // than have the first forward pass fault them in one by one. Best effort (Linux >= 5.14).
    static const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
    const uintptr_t begin = reinterpret_cast<uintptr_t>(t->data) & ~(page - 1);
    madvise(reinterpret_cast<void*>(begin), reinterpret_cast<uintptr_t>(t->data) + t->nbytes - begin, MADV_POPULATE_READ);
  }
  return v;
}

std::pair<TensorView, std::shared_ptr<Buffer>> Weights::generate_dummy(const std::string& name,
                                                                      const std::vector<int64_t>& shape) {
  // Seeded uniform values in ±0.05 (norm weights and scalars land near 1 so activations stay sane),
  // generated by the backend in its own memory.
  const bool near_one = name.find("norm") != std::string::npos || name.find("scalar") != std::string::npos ||
                        name.find("scale") != std::string::npos;
  TensorView v(DType::BF16, nullptr, {1});
  v.ndim = static_cast<int>(shape.size());
  for (size_t i = 0; i < shape.size(); ++i) v.shape[i] = shape[i];
  auto buffer = std::make_shared<Buffer>(*be_, v.nbytes());
  v.data = buffer->data();
  be_->fill_dummy(v, next_seed(), near_one ? 1.0f : 0.0f, near_one ? 0.1f : 0.05f);
  be_->synchronize();  // a constant view's data is complete when it is bound (TensorView::constant)
  return {v, std::move(buffer)};
}

uint64_t Weights::next_seed() {
  seed_ = seed_ * 6364136223846793005ull + 1442695040888963407ull;
  return seed_;
}

TensorView Weights::bind_quant(const HostQuantWeight& h, std::initializer_list<int64_t> shape) {
  auto q = std::make_shared<QuantParams>();
  q->code = h.code;
  q->group = h.group;
  const int64_t G = (h.K + h.group - 1) / h.group;
  // One buffer per part, uploaded once (on the CPU backend simply copied: the canonical form is a
  // rewrite of the checkpoint's tensors, so it cannot stay in the mmapped file).
  auto place = [&](const void* src, size_t bytes) -> void* {
    if (bytes == 0) return nullptr;
    auto buffer = std::make_shared<Buffer>(*be_, bytes);
    be_->upload(buffer->data(), src, bytes);
    void* p = buffer->data();
    owned_.push_back(std::move(buffer));
    return p;
  };
  q->scales = TensorView(h.scale_dtype, place(h.scales.data(), h.scales.size()), {h.rows, G});
  if (!h.zeros.empty()) q->zeros = TensorView(DType::U8, place(h.zeros.data(), h.zeros.size()), {h.rows, G});
  if (!h.k_perm.empty())
    q->k_perm = TensorView(DType::I32, place(h.k_perm.data(), h.k_perm.size() * 4),
                           {static_cast<int64_t>(h.k_perm.size()) / h.K, h.K});
  TensorView v(DType::U8, place(h.codes.data(), h.codes.size()), shape);
  v.quant = q.get();
  be_->prepare_quant(v);
  quant_params_.push_back(std::move(q));
  bound_bytes_ += static_cast<int64_t>(h.bytes());
  return v;
}

// Shapes only (tandem plan): the view a loaded weight of the config's format would have, without
// data, so its bytes are counted like a loaded one's.
TensorView Weights::meta_quant(std::initializer_list<int64_t> shape, QuantCode code, int64_t group,
                               DType scale_dtype, bool zeros, bool k_perm) {
  TensorView v(DType::U8, nullptr, shape);
  const int64_t rows = v.rows(), K = v.cols();
  auto q = std::make_shared<QuantParams>();
  q->code = code;
  q->group = group;
  const int64_t G = q->groups(K);
  q->scales = TensorView(scale_dtype, nullptr, {rows, G});
  if (zeros) q->zeros = TensorView(DType::U8, nullptr, {rows, G});
  if (k_perm) q->k_perm = TensorView(DType::I32, nullptr, {v.ndim == 3 ? v.dim(0) : 1, K});
  v.quant = q.get();
  quant_params_.push_back(std::move(q));
  bound_bytes_ += static_cast<int64_t>(stored_bytes(v));
  return v;
}

TensorView Weights::meta_quant(std::initializer_list<int64_t> shape) {
  const int64_t K = *(shape.end() - 1);
  // Scales as the readers keep them: f32 for NVFP4 (FP8 scale / global scale), else 16-bit as
  // stored (bf16 for compressed-tensors, f16 for AutoAWQ / GPTQ).
  const bool zeros = quant_.method == QuantConfig::Method::awq || quant_.method == QuantConfig::Method::gptq ||
                     (quant_.method == QuantConfig::Method::ct_int && !quant_.symmetric);
  return meta_quant(shape, quant_.code(),
                    quant_.method == QuantConfig::Method::ct_fp8 || quant_.group == 0 ? K : quant_.group,
                    quant_.method == QuantConfig::Method::ct_nvfp4 ? DType::F32 : DType::BF16, zeros, quant_.actorder);
}

TensorView Weights::meta_online(const OnlineQuant& q, std::initializer_list<int64_t> shape) {
  return meta_quant(shape, q.code(), q.group_for(*(shape.end() - 1)), DType::BF16, false, false);
}

TensorView Weights::quantize_tensor(const OnlineQuant& q, const std::string& name, std::initializer_list<int64_t> shape) {
  if (format_ == LoadFormat::meta) return meta_online(q, shape);
  const std::vector<int64_t> dims(shape);
  const int64_t K = dims.back(), rows = TensorView(DType::U8, nullptr, shape).rows();
  if (format_ == LoadFormat::dummy) {  // generated in backend memory, read back, dropped once quantized
    auto [v, buffer] = generate_dummy(name, dims);
    std::vector<uint8_t> host(v.nbytes());
    be_->download(host.data(), v.data, host.size());
    return bind_quant(quantize_weight(q, v.dtype, host.data(), rows, K, name), shape);
  }
  const TensorInfo* t = store_->find(name);
  if (!t) fail("checkpoint {} has no tensor {} (expected shape {})", path_, name, shape_string(dims));
  if (t->shape != dims)
    fail("tensor {} in {} has shape {}, expected {}", name, t->file, t->shape_string(), shape_string(dims));
  TensorView v = bind_quant(quantize_weight(q, t->dtype, t->data, rows, K, name), shape);
  // The bf16 bytes are not read again: let their pages go rather than keep the model mapped twice
  // (file-backed and unmodified, so this only drops this process's copies).
  static const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(t->data) + page - 1) & ~(page - 1),
                  end = (reinterpret_cast<uintptr_t>(t->data) + t->nbytes) & ~(page - 1);
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
  return v;
}

TensorView Weights::quantized_copy(const std::string& name, const TensorView& bound) {
  TANDEM_CHECK(online_.quantizes("lm_head") && bound.ndim == 2 && !bound.quant);
  const OnlineQuant q = online_.for_module("lm_head");
  const int64_t N = bound.dim(0), K = bound.dim(1);
  if (format_ == LoadFormat::meta) return meta_online(q, {N, K});
  std::vector<uint8_t> host;
  const void* data = nullptr;
  if (const TensorInfo* t = store_ ? store_->find(name) : nullptr) {
    data = t->data;  // the mapped file (on a GPU the table was uploaded; the file still has it)
  } else {
    host.resize(bound.nbytes());
    be_->download(host.data(), bound.data, host.size());
    data = host.data();
  }
  return bind_quant(quantize_weight(q, bound.dtype, data, N, K, name), {N, K});
}

TensorView Weights::linear(const std::string& module, int64_t N, int64_t K, const Split& split) {
  check_unquantized_split(module, split);
  if (!split.whole()) return get(module + ".weight", {N, K}, split);
  if (online_.quantizes(module)) {
    if (quant_.quantizes(module))  // the head: --quantize-lm-head on a checkpoint whose head is quantized
      fail("{}: {} is quantized in the checkpoint already ({}); drop --quantize-lm-head", path_, module,
           quant_.describe());
    return quantize_tensor(online_.for_module(module), module + ".weight", {N, K});
  }
  if (!quant_.quantizes(module)) return get(module + ".weight", {N, K});
  if (format_ == LoadFormat::meta) return meta_quant({N, K});
  if (format_ == LoadFormat::dummy) return bind_quant(dummy_quant_weight(quant_, N, K, next_seed()), {N, K});
  if (!has_quant_linear(*store_, quant_, module))
    fail("checkpoint {} has no tensor {} ({}; the module {} is not in its ignore list)", path_,
         quant_key_tensor(quant_, module), quant_.describe(), module);
  return bind_quant(read_quant_linear(*store_, quant_, module, N, K), {N, K});
}

std::optional<TensorView> Weights::find_experts(const std::string& dir, const std::string& fused,
                                                const std::vector<std::string>& parts, int64_t E, int64_t N,
                                                int64_t K, const Split& split) {
  const std::string first = dir + ".0." + parts.front();
  check_unquantized_split(first, split);
  if (!split.whole()) return find(dir + "." + fused, {E, N, K}, split);
  if (online_.quantizes(first)) {
    if (format_ == LoadFormat::safetensors && !store_->find(dir + "." + fused)) return std::nullopt;
    return quantize_tensor(online_.for_module(first), dir + "." + fused, {E, N, K});
  }
  if (!quant_.quantizes(first)) return find(dir + "." + fused, {E, N, K});
  if (format_ == LoadFormat::meta) return meta_quant({E, N, K});
  if (format_ == LoadFormat::dummy) return bind_quant(dummy_quant_weight(quant_, E * N, K, next_seed()), {E, N, K});
  if (has_quant_linear(*store_, quant_, dir + "." + fused, /*fused=*/true))
    return bind_quant(read_quant_linear(*store_, quant_, dir + "." + fused, N, K, E, /*fused=*/true), {E, N, K});
  if (!has_quant_linear(*store_, quant_, first)) return std::nullopt;
  const int64_t part_rows = N / static_cast<int64_t>(parts.size());
  HostQuantWeight all;
  for (int64_t e = 0; e < E; ++e) {
    HostQuantWeight expert;
    for (const std::string& part : parts) {
      const std::string module = dir + "." + std::to_string(e) + "." + part;
      HostQuantWeight w = read_quant_linear(*store_, quant_, module, part_rows, K);
      if (expert.rows == 0) {
        expert = std::move(w);
        continue;
      }
      // The parts of one expert share its input, so they must share a column permutation too.
      if (w.k_perm != expert.k_perm)
        fail("{}: its act-order permutation differs from {}'s, so they cannot be fused", module,
             dir + "." + std::to_string(e) + "." + parts.front());
      std::vector<int32_t> perm = std::move(expert.k_perm);
      expert.k_perm.clear();
      w.k_perm.clear();
      expert.append_rows(w, module);
      expert.k_perm = std::move(perm);
    }
    all.append_rows(expert, dir + "." + std::to_string(e));
  }
  return bind_quant(all, {E, N, K});
}

TensorView Weights::get(const std::string& name, const std::vector<int64_t>& shape, const Split& split) {
  if (auto v = find(name, shape, split)) return *v;
  fail("checkpoint {} has no tensor {} (expected shape {})", path_, name, shape_string(shape));
}

float Weights::read_scalar(const TensorView& t) const {
  if (format_ == LoadFormat::meta) return 1.0f;
  uint8_t bytes[4] = {};
  be_->download(bytes, t.data, dtype_size(t.dtype));
  float f32;
  uint16_t u16;
  std::memcpy(&f32, bytes, 4);
  std::memcpy(&u16, bytes, 2);
  switch (t.dtype) {
    case DType::F32: return f32;
    case DType::BF16: return bf16_to_f32(u16);
    case DType::F16: return f16_to_f32(u16);
    case DType::F8_E4M3: return f8e4m3_to_f32(bytes[0]);
    default: fail("scalar tensor has non-float dtype {}", dtype_name(t.dtype));
  }
}

}  // namespace tandem
