#include "model/quant.h"

#include <algorithm>
#include <cstring>
#include <regex>

#include "util/error.h"
#include "util/half.h"

namespace tandem {

using nlohmann::json;

// ---------------------------------------------------------------------------------------------
// quantization_config

namespace {

// quantization_config.<path>, for error messages.
[[noreturn]] void refuse(const std::string& file, const std::string& field, const std::string& why) {
  fail("{}: quantization_config.{} {}", file, field, why);
}

template <typename T>
T field(const json& j, const char* key, const std::string& path, const std::string& file, T fallback) {
  if (!j.contains(key) || j[key].is_null()) return fallback;
  try {
    return j[key].get<T>();
  } catch (const json::exception&) {
    refuse(file, path + key, "has the wrong type");
  }
}

// The list of modules that stay unquantized (key: "ignore" or "modules_to_not_convert"), each "re:"
// entry compiled here, so that a malformed pattern is refused naming the field.
std::vector<QuantConfig::Ignored> ignore_list(const json& qc, const char* key, const std::string& file) {
  std::vector<QuantConfig::Ignored> list;
  for (std::string& entry : field<std::vector<std::string>>(qc, key, "", file, {})) {
    std::optional<std::regex> regex;
    if (entry.rfind("re:", 0) == 0) {
      try {
        regex.emplace(entry.substr(3));
      } catch (const std::regex_error& e) {
        refuse(file, key, "entry \"" + entry + "\" is not a valid regular expression (" + e.what() + ")");
      }
    }
    list.push_back({std::move(entry), std::move(regex)});
  }
  return list;
}

// compressed-tensors: one config group targeting Linear with weight args and no activation
// quantization we would have to honour (dynamic FP8 / FP4 activations are run as A16: the
// activation scales only matter for W8A8 / W4A4 kernels).
void parse_compressed_tensors(const json& qc, const std::string& file, QuantConfig& c) {
  if (qc.contains("transform_config") && !qc["transform_config"].is_null() && !qc["transform_config"].empty())
    refuse(file, "transform_config", "(online Hadamard / rotation transforms) is not supported");
  if (qc.contains("sparsity_config") && !qc["sparsity_config"].is_null() && !qc["sparsity_config"].empty())
    refuse(file, "sparsity_config", "is not supported");
  if (qc.contains("kv_cache_scheme") && !qc["kv_cache_scheme"].is_null())
    refuse(file, "kv_cache_scheme", "(quantized KV cache scales) is not supported");
  const std::string format = field<std::string>(qc, "format", "", file, "");
  if (!qc.contains("config_groups") || !qc["config_groups"].is_object() || qc["config_groups"].size() != 1)
    refuse(file, "config_groups", "must hold exactly one scheme (mixed schemes are not supported)");
  const auto& [gname, group] = *qc["config_groups"].items().begin();
  const std::string gpath = "config_groups." + gname + ".";
  const std::string gformat = field<std::string>(group, "format", gpath, file, format);
  const auto targets = field<std::vector<std::string>>(group, "targets", gpath, file, {});
  if (targets != std::vector<std::string>{"Linear"}) refuse(file, gpath + "targets", "must be [\"Linear\"]");
  if (!group.contains("weights") || !group["weights"].is_object()) refuse(file, gpath + "weights", "is missing");
  if (group.contains("output_activations") && !group["output_activations"].is_null())
    refuse(file, gpath + "output_activations", "is not supported");
  const json& w = group["weights"];
  const std::string wpath = gpath + "weights.";
  c.bits = field<int>(w, "num_bits", wpath, file, 0);
  const std::string type = field<std::string>(w, "type", wpath, file, "int");
  const std::string strategy = field<std::string>(w, "strategy", wpath, file, "");
  c.symmetric = field<bool>(w, "symmetric", wpath, file, true);
  const int64_t group_size = field<int64_t>(w, "group_size", wpath, file, 0);
  if (field<bool>(w, "dynamic", wpath, file, false)) refuse(file, wpath + "dynamic", "must be false for weights");
  if (w.contains("block_structure") && !w["block_structure"].is_null())
    refuse(file, wpath + "block_structure", "(block-wise scales) is not supported");
  const std::string actorder = w.contains("actorder") && w["actorder"].is_string() ? w["actorder"].get<std::string>() : "";
  if (!actorder.empty() && actorder != "group")
    refuse(file, wpath + "actorder", "\"" + actorder + "\" is not supported (null or \"group\")");

  if (gformat == "pack-quantized") {
    if (type != "int" || (c.bits != 4 && c.bits != 8))
      refuse(file, wpath + "num_bits", "must be 4 or 8 with type int for pack-quantized");
    c.method = QuantConfig::Method::ct_int;
    if (strategy == "group") {
      if (group_size <= 0) refuse(file, wpath + "group_size", "must be positive for strategy group");
      c.group = group_size;
    } else if (strategy != "channel") {
      refuse(file, wpath + "strategy", "\"" + strategy + "\" is not supported (group, channel)");
    }
    c.actorder = actorder == "group";
    if (c.actorder && strategy != "group") refuse(file, wpath + "actorder", "needs strategy group");
  } else if (gformat == "float-quantized" || gformat == "naive-quantized") {
    if (type != "float" || c.bits != 8) refuse(file, wpath + "type", "must be float with num_bits 8 (FP8 E4M3)");
    if (strategy != "channel" && strategy != "tensor")
      refuse(file, wpath + "strategy", "\"" + strategy + "\" is not supported for FP8 (channel, tensor)");
    if (!c.symmetric) refuse(file, wpath + "symmetric", "must be true for FP8");
    c.method = QuantConfig::Method::ct_fp8;
  } else if (gformat == "nvfp4-pack-quantized") {
    if (type != "float" || c.bits != 4 || strategy != "tensor_group" || group_size != 16)
      refuse(file, wpath + "strategy", "must be tensor_group with float num_bits 4 and group_size 16 for NVFP4");
    c.method = QuantConfig::Method::ct_nvfp4;
    c.group = 16;
  } else {
    refuse(file, gpath + "format", "\"" + gformat + "\" is not supported (pack-quantized, float-quantized, "
                                    "nvfp4-pack-quantized)");
  }
  c.ignore = ignore_list(qc, "ignore", file);
}

}  // namespace

QuantConfig parse_quant_config(const json& qc, const std::string& file) {
  if (!qc.is_object()) fail("{}: quantization_config must be an object", file);
  QuantConfig c;
  const std::string method = field<std::string>(qc, "quant_method", "", file, "");
  if (method == "compressed-tensors") {
    parse_compressed_tensors(qc, file, c);
  } else if (method == "awq") {
    c.method = QuantConfig::Method::awq;
    c.bits = field<int>(qc, "bits", "", file, field<int>(qc, "w_bit", "", file, 0));
    c.group = field<int64_t>(qc, "group_size", "", file, field<int64_t>(qc, "q_group_size", "", file, 0));
    const std::string version = field<std::string>(qc, "version", "", file, "gemm");
    if (c.bits != 4) refuse(file, "bits", "must be 4 for AutoAWQ");
    if (c.group <= 0) refuse(file, "group_size", "must be positive for AutoAWQ");
    if (version != "gemm" && version != "GEMM") refuse(file, "version", "\"" + version + "\" is not supported (gemm)");
    if (!field<bool>(qc, "zero_point", "", file, true)) refuse(file, "zero_point", "false is not supported");
    c.symmetric = false;
    c.ignore = ignore_list(qc, "modules_to_not_convert", file);
  } else if (method == "gptq") {
    c.method = QuantConfig::Method::gptq;
    c.bits = field<int>(qc, "bits", "", file, 0);
    c.group = field<int64_t>(qc, "group_size", "", file, 0);
    if (c.bits != 4 && c.bits != 8) refuse(file, "bits", "must be 4 or 8 for GPTQ");
    if (c.group == -1) c.group = 0;  // per channel
    if (c.group < 0) refuse(file, "group_size", "must be positive or -1");
    c.actorder = field<bool>(qc, "desc_act", "", file, false);
    c.symmetric = field<bool>(qc, "sym", "", file, true);
    const std::string fmt_ = field<std::string>(qc, "checkpoint_format", "", file, "gptq");
    if (fmt_ != "gptq" && fmt_ != "gptq_v2")
      refuse(file, "checkpoint_format", "\"" + fmt_ + "\" is not supported (gptq, gptq_v2)");
    c.gptq_v2 = fmt_ == "gptq_v2";
    if (qc.contains("dynamic") && !qc["dynamic"].is_null() && !qc["dynamic"].empty())
      refuse(file, "dynamic", "(per-module overrides) is not supported");
    if (field<bool>(qc, "lm_head", "", file, false)) refuse(file, "lm_head", "true is not supported");
    c.ignore = ignore_list(qc, "modules_to_not_convert", file);
  } else {
    refuse(file, "quant_method", "\"" + method + "\" is not supported (compressed-tensors, awq, gptq)");
  }
  return c;
}

bool QuantConfig::quantizes(const std::string& module) const {
  if (!quantized()) return false;
  for (const Ignored& ig : ignore) {
    if (ig.regex) {
      if (std::regex_search(module, *ig.regex, std::regex_constants::match_continuous)) return false;
    } else if (method == Method::awq || method == Method::gptq) {
      // AutoAWQ / GPTQ list module name parts ("lm_head", "vision_tower"), matched as substrings.
      if (module.find(ig.entry) != std::string::npos) return false;
    } else if (module == ig.entry) {
      return false;
    }
  }
  return true;
}

QuantCode QuantConfig::code() const {
  switch (method) {
    case Method::ct_fp8: return QuantCode::kF8E4M3;
    case Method::ct_nvfp4: return QuantCode::kE2M1;
    default: return bits == 4 ? QuantCode::kU4 : QuantCode::kU8;
  }
}

std::string QuantConfig::describe() const {
  const std::string g = group ? fmt::format("group {}", group) : "per channel";
  switch (method) {
    case Method::none: return "none";
    case Method::ct_int:
      return fmt::format("compressed-tensors pack-quantized int{} {} {}{}", bits, symmetric ? "symmetric" : "asymmetric",
                         g, actorder ? " actorder" : "");
    case Method::ct_fp8: return "compressed-tensors float-quantized fp8 e4m3 (W8A16)";
    case Method::ct_nvfp4: return "compressed-tensors nvfp4-pack-quantized (W4A16)";
    case Method::awq: return fmt::format("awq gemm int4 {}", g);
    case Method::gptq:
      return fmt::format("gptq{} int{} {} {}{}", gptq_v2 ? " v2" : "", bits, symmetric ? "symmetric" : "asymmetric", g,
                         actorder ? " desc_act" : "");
  }
  return "?";
}

// ---------------------------------------------------------------------------------------------
// Readers

namespace {

// The tensor `name` with exactly `shape` and one of `dtypes`.
const TensorInfo& tensor(const WeightStore& store, const std::string& name, const std::vector<int64_t>& shape,
                         std::initializer_list<DType> dtypes) {
  const TensorInfo* t = store.find(name);
  if (!t) fail("quantized checkpoint {} has no tensor {} (expected shape {})", store.path(), name, shape_string(shape));
  const bool scalar_as_one = t->shape.empty() && shape == std::vector<int64_t>{1};
  if (t->shape != shape && !scalar_as_one)
    fail("tensor {} in {} has shape {}, expected {}", name, t->file, t->shape_string(), shape_string(shape));
  if (std::find(dtypes.begin(), dtypes.end(), t->dtype) == dtypes.end())
    fail("tensor {} in {} has dtype {}, which this quantization format does not use", name, t->file,
         dtype_name(t->dtype));
  return *t;
}

std::vector<int64_t> with_lead(int64_t experts, std::vector<int64_t> shape) {
  if (experts > 1) shape.insert(shape.begin(), experts);
  return shape;
}

void check_group(const std::string& name, int64_t K, int64_t group) {
  if (group <= 0 || K % group != 0)
    fail("{}: quantization group size {} does not divide K = {}", name, group, K);
}

uint32_t word(const TensorInfo& t, int64_t i) {
  uint32_t w;
  std::memcpy(&w, static_cast<const char*>(t.data) + 4 * i, 4);
  return w;
}

// Copies a scale tensor's bytes (F32 / BF16 / F16 kept as stored: exact, and bf16 halves the bytes).
void take_scales(HostQuantWeight& h, const TensorInfo& s) {
  h.scale_dtype = s.dtype;
  const auto* p = static_cast<const uint8_t*>(s.data);
  h.scales.assign(p, p + s.nbytes);
}

// Transposes scales stored [G, N] (AutoAWQ / GPTQ) into [N, G].
void take_scales_transposed(HostQuantWeight& h, const TensorInfo& s, int64_t G, int64_t N) {
  h.scale_dtype = s.dtype;
  const size_t es = dtype_size(s.dtype);
  h.scales.resize(G * N * es);
  const auto* p = static_cast<const uint8_t*>(s.data);
  for (int64_t g = 0; g < G; ++g)
    for (int64_t n = 0; n < N; ++n) std::memcpy(&h.scales[(n * G + g) * es], p + (g * N + n) * es, es);
}

// Turns per-column group indices g_idx [K] (per expert block of `rows` rows) into the canonical
// permutation: columns sorted by group (stably), which is exact when every group then covers
// exactly the columns [g·G, (g+1)·G) of the permuted row. The codes are permuted to match.
void apply_g_idx(HostQuantWeight& h, const int32_t* g_idx, int64_t blocks, const std::string& name) {
  const int64_t K = h.K, rows_per_block = h.rows / blocks, bits = quant_code_bits(h.code);
  const int64_t row_bytes = K * bits / 8;
  std::vector<uint8_t> codes(h.codes.size());
  h.k_perm.resize(blocks * K);
  for (int64_t b = 0; b < blocks; ++b) {
    const int32_t* gi = g_idx + b * K;
    int32_t* perm = &h.k_perm[b * K];
    for (int64_t k = 0; k < K; ++k) perm[k] = static_cast<int32_t>(k);
    std::stable_sort(perm, perm + K, [&](int32_t a, int32_t c) { return gi[a] < gi[c]; });
    for (int64_t j = 0; j < K; ++j)
      if (gi[perm[j]] != j / h.group)
        fail("{}: g_idx does not give every group exactly {} columns (column {} is in group {})", name, h.group,
             perm[j], gi[perm[j]]);
    for (int64_t r = b * rows_per_block; r < (b + 1) * rows_per_block; ++r) {
      const uint8_t* src = &h.codes[r * row_bytes];
      uint8_t* dst = &codes[r * row_bytes];
      for (int64_t j = 0; j < K; ++j) {
        const int64_t k = perm[j];
        if (bits == 8) {
          dst[j] = src[k];
        } else {
          const uint8_t u = (src[k / 2] >> (4 * (k % 2))) & 15;
          dst[j / 2] = static_cast<uint8_t>(j % 2 ? (dst[j / 2] | (u << 4)) : u);
        }
      }
    }
  }
  h.codes = std::move(codes);
}

// compressed-tensors pack-quantized: weight_packed I32 [.., N, K·bits/32] holds the codes q + 2^(bits-1)
// LSB first, which as little-endian bytes is exactly the canonical packing; weight_zero_point I32
// [.., ceil(N·bits/32), G] packs the (offset) zeros along N.
HostQuantWeight read_ct_int(const WeightStore& store, const QuantConfig& c, const std::string& p, int64_t N,
                            int64_t K, int64_t E) {
  HostQuantWeight h;
  h.code = c.code();
  h.rows = E * N, h.K = K;
  h.group = c.group ? c.group : K;
  const int per_word = 32 / c.bits;
  if (K % per_word != 0) fail("{}_packed: K = {} is not a multiple of {}", p, K, per_word);
  check_group(p + "_scale", K, h.group);
  const int64_t G = K / h.group;
  const TensorInfo& packed = tensor(store, p + "_packed", with_lead(E, {N, K / per_word}), {DType::I32});
  const auto* bytes = static_cast<const uint8_t*>(packed.data);
  h.codes.assign(bytes, bytes + packed.nbytes);
  if (const TensorInfo* shape = store.find(p + "_shape")) {
    std::vector<int64_t> want = with_lead(E, {N, K}), got(shape->numel());
    if (shape->dtype == DType::I64) std::memcpy(got.data(), shape->data, got.size() * 8);
    else if (shape->dtype == DType::I32)
      for (size_t i = 0; i < got.size(); ++i) got[i] = static_cast<int64_t>(static_cast<int32_t>(word(*shape, i)));
    if (got != want) fail("tensor {}_shape in {} says {}, expected {}", p, shape->file, shape_string(got),
                          shape_string(want));
  }
  take_scales(h, tensor(store, p + "_scale", with_lead(E, {N, G}), {DType::BF16, DType::F16, DType::F32}));
  if (!c.symmetric) {
    const int64_t zn = (N + per_word - 1) / per_word;
    const TensorInfo& zp = tensor(store, p + "_zero_point", with_lead(E, {zn, G}), {DType::I32});
    const uint32_t mask = (1u << c.bits) - 1;
    h.zeros.resize(E * N * G);
    for (int64_t e = 0; e < E; ++e)
      for (int64_t n = 0; n < N; ++n)
        for (int64_t g = 0; g < G; ++g)
          h.zeros[(e * N + n) * G + g] = static_cast<uint8_t>(
              (word(zp, (e * zn + n / per_word) * G + g) >> (c.bits * (n % per_word))) & mask);
  }
  if (c.actorder) {
    const TensorInfo& gi = tensor(store, p + "_g_idx", with_lead(E, {K}), {DType::I32});
    apply_g_idx(h, static_cast<const int32_t*>(gi.data), E, p + "_g_idx");
  }
  return h;
}

// compressed-tensors float-quantized: weight F8_E4M3 [.., N, K], weight_scale [.., N, 1] (channel) or
// [1] (tensor, widened to one per row).
HostQuantWeight read_ct_fp8(const WeightStore& store, const std::string& p, int64_t N, int64_t K, int64_t E) {
  HostQuantWeight h;
  h.code = QuantCode::kF8E4M3;
  h.rows = E * N, h.K = K, h.group = K;
  const TensorInfo& w = tensor(store, p, with_lead(E, {N, K}), {DType::F8_E4M3});
  const auto* bytes = static_cast<const uint8_t*>(w.data);
  h.codes.assign(bytes, bytes + w.nbytes);
  const std::string sname = p + "_scale";
  const TensorInfo* s = store.find(sname);
  if (s && s->numel() == 1) {  // per tensor
    const TensorInfo& t = tensor(store, sname, s->shape.empty() ? std::vector<int64_t>{1} : s->shape,
                                 {DType::BF16, DType::F16, DType::F32});
    h.scale_dtype = t.dtype;
    const size_t es = dtype_size(t.dtype);
    h.scales.resize(h.rows * es);
    for (int64_t r = 0; r < h.rows; ++r) std::memcpy(&h.scales[r * es], t.data, es);
  } else {
    take_scales(h, tensor(store, sname, with_lead(E, {N, 1}), {DType::BF16, DType::F16, DType::F32}));
  }
  return h;
}

// compressed-tensors nvfp4-pack-quantized: weight_packed U8 [.., N, K/2] (element 2j in the low nibble),
// weight_scale F8_E4M3 [.., N, K/16], weight_global_scale F32 [.., 1] dividing every scale.
HostQuantWeight read_ct_nvfp4(const WeightStore& store, const std::string& p, int64_t N, int64_t K,
                              int64_t E) {
  HostQuantWeight h;
  h.code = QuantCode::kE2M1;
  h.rows = E * N, h.K = K, h.group = 16;
  check_group(p + "_scale", K, 16);
  const TensorInfo& packed = tensor(store, p + "_packed", with_lead(E, {N, K / 2}), {DType::U8});
  const auto* bytes = static_cast<const uint8_t*>(packed.data);
  h.codes.assign(bytes, bytes + packed.nbytes);
  const TensorInfo& s = tensor(store, p + "_scale", with_lead(E, {N, K / 16}), {DType::F8_E4M3});
  const TensorInfo& gs = tensor(store, p + "_global_scale", with_lead(E, {1}), {DType::F32});
  h.scale_dtype = DType::F32;
  h.scales.resize(h.rows * (K / 16) * 4);
  const auto* sc = static_cast<const uint8_t*>(s.data);
  for (int64_t e = 0; e < E; ++e) {
    float global;
    std::memcpy(&global, static_cast<const char*>(gs.data) + 4 * e, 4);
    if (!(global > 0)) fail("tensor {}_global_scale in {} is {}, not positive", p, gs.file, global);
    for (int64_t i = e * N * (K / 16); i < (e + 1) * N * (K / 16); ++i) {
      const float v = f8e4m3_to_f32(sc[i]) / global;
      std::memcpy(&h.scales[i * 4], &v, 4);
    }
  }
  return h;
}

// AutoAWQ gemm: qweight I32 [K, N/8] packs 8 output columns per word in the order 0 2 4 6 1 3 5 7
// (column 8c + order[i] in nibble i); qzeros I32 [K/G, N/8] likewise; scales F16 [K/G, N].
HostQuantWeight read_awq(const WeightStore& store, const QuantConfig& c, const std::string& m, int64_t N, int64_t K) {
  static constexpr int kSlot[8] = {0, 4, 1, 5, 2, 6, 3, 7};  // column % 8 -> nibble
  HostQuantWeight h;
  h.code = QuantCode::kU4;
  h.rows = N, h.K = K, h.group = c.group;
  if (N % 8 != 0) fail("{}.qweight: N = {} is not a multiple of 8", m, N);
  check_group(m + ".scales", K, c.group);
  const int64_t G = K / c.group;
  const TensorInfo& qw = tensor(store, m + ".qweight", {K, N / 8}, {DType::I32});
  const TensorInfo& qz = tensor(store, m + ".qzeros", {G, N / 8}, {DType::I32});
  take_scales_transposed(h, tensor(store, m + ".scales", {G, N}, {DType::F16, DType::BF16, DType::F32}), G, N);
  h.codes.assign(N * K / 2, 0);
  for (int64_t k = 0; k < K; ++k)
    for (int64_t n = 0; n < N; ++n) {
      const uint8_t u = (word(qw, k * (N / 8) + n / 8) >> (4 * kSlot[n % 8])) & 15;
      h.codes[(n * K + k) / 2] |= static_cast<uint8_t>(u << (4 * (k % 2)));
    }
  h.zeros.resize(N * G);
  for (int64_t g = 0; g < G; ++g)
    for (int64_t n = 0; n < N; ++n) h.zeros[n * G + g] = (word(qz, g * (N / 8) + n / 8) >> (4 * kSlot[n % 8])) & 15;
  return h;
}

// GPTQ: qweight I32 [K·bits/32, N] packs consecutive K rows LSB first; qzeros I32 [G, N·bits/32] packs
// along N; scales [G, N]; g_idx I32 [K]. v1 checkpoints store zero - 1.
HostQuantWeight read_gptq(const WeightStore& store, const QuantConfig& c, const std::string& m, int64_t N, int64_t K) {
  HostQuantWeight h;
  h.code = c.code();
  h.rows = N, h.K = K, h.group = c.group ? c.group : K;
  const int per_word = 32 / c.bits;
  const uint32_t mask = (1u << c.bits) - 1;
  if (K % per_word != 0 || N % per_word != 0)
    fail("{}.qweight: K = {} and N = {} must be multiples of {}", m, K, N, per_word);
  check_group(m + ".scales", K, h.group);
  const int64_t G = K / h.group;
  const TensorInfo& qw = tensor(store, m + ".qweight", {K / per_word, N}, {DType::I32});
  const TensorInfo& qz = tensor(store, m + ".qzeros", {G, N / per_word}, {DType::I32});
  take_scales_transposed(h, tensor(store, m + ".scales", {G, N}, {DType::F16, DType::BF16, DType::F32}), G, N);
  h.codes.assign(N * K * c.bits / 8, 0);
  for (int64_t k = 0; k < K; ++k)
    for (int64_t n = 0; n < N; ++n) {
      const uint32_t u = (word(qw, (k / per_word) * N + n) >> (c.bits * (k % per_word))) & mask;
      if (c.bits == 8) h.codes[n * K + k] = static_cast<uint8_t>(u);
      else h.codes[(n * K + k) / 2] |= static_cast<uint8_t>(u << (4 * (k % 2)));
    }
  h.zeros.resize(N * G);
  for (int64_t g = 0; g < G; ++g)
    for (int64_t n = 0; n < N; ++n) {
      const uint32_t z = ((word(qz, g * (N / per_word) + n / per_word) >> (c.bits * (n % per_word))) & mask) +
                         (c.gptq_v2 ? 0 : 1);
      if (z > 255) fail("{}.qzeros: zero point {} does not fit 8 bits", m, z);
      h.zeros[n * G + g] = static_cast<uint8_t>(z);
    }
  // g_idx: with desc_act an arbitrary grouping (permuted into contiguous groups); without it the
  // plain k / group, which needs nothing.
  if (store.find(m + ".g_idx")) {
    const TensorInfo& t = tensor(store, m + ".g_idx", {K}, {DType::I32});
    const auto* g = static_cast<const int32_t*>(t.data);
    bool identity = true;
    for (int64_t k = 0; k < K && identity; ++k) identity = g[k] == k / h.group;
    if (!identity) apply_g_idx(h, g, 1, m + ".g_idx");
  } else if (c.actorder) {
    fail("quantized checkpoint {} has no tensor {}.g_idx (desc_act is true)", store.path(), m);
  }
  return h;
}

}  // namespace

// compressed-tensors names a Linear's tensors "<module>.weight_packed", ...; tandem reads a fused
// 3-D parameter P the same way with P in place of "<module>.weight": P_packed, P_scale, ... (and,
// for FP8, P itself holding the codes).
static std::string ct_prefix(const std::string& m, bool fused) { return fused ? m : m + ".weight"; }

std::string quant_key_tensor(const QuantConfig& c, const std::string& m, bool fused) {
  const std::string p = ct_prefix(m, fused);
  switch (c.method) {
    case QuantConfig::Method::none: return "";
    case QuantConfig::Method::ct_fp8: return p + "_scale";  // the codes share the bf16 name "weight"
    case QuantConfig::Method::ct_int:
    case QuantConfig::Method::ct_nvfp4: return p + "_packed";
    case QuantConfig::Method::awq:
    case QuantConfig::Method::gptq: return fused ? "" : m + ".qweight";
  }
  return "";
}

bool has_quant_linear(const WeightStore& store, const QuantConfig& c, const std::string& m, bool fused) {
  const std::string key = quant_key_tensor(c, m, fused);
  return !key.empty() && store.find(key) != nullptr;
}

HostQuantWeight read_quant_linear(const WeightStore& store, const QuantConfig& c, const std::string& m, int64_t N,
                                  int64_t K, int64_t experts, bool fused) {
  const std::string p = ct_prefix(m, fused);
  switch (c.method) {
    case QuantConfig::Method::ct_int: return read_ct_int(store, c, p, N, K, experts);
    case QuantConfig::Method::ct_fp8: return read_ct_fp8(store, p, N, K, experts);
    case QuantConfig::Method::ct_nvfp4: return read_ct_nvfp4(store, p, N, K, experts);
    case QuantConfig::Method::awq:
    case QuantConfig::Method::gptq:
      if (fused) fail("{}: fused 3-D experts are not a {} layout", m, c.describe());
      return c.method == QuantConfig::Method::awq ? read_awq(store, c, m, N, K) : read_gptq(store, c, m, N, K);
    case QuantConfig::Method::none: break;
  }
  fail("{}: the checkpoint is not quantized", m);
}

void HostQuantWeight::append_rows(const HostQuantWeight& next, const std::string& what) {
  if (rows == 0) {
    *this = next;
    return;
  }
  if (next.code != code || next.K != K || next.group != group || next.scale_dtype != scale_dtype ||
      next.zeros.empty() != zeros.empty() || next.k_perm.empty() != k_perm.empty())
    fail("{}: its quantization parameters differ from the weights it is fused with", what);
  rows += next.rows;
  codes.insert(codes.end(), next.codes.begin(), next.codes.end());
  scales.insert(scales.end(), next.scales.begin(), next.scales.end());
  zeros.insert(zeros.end(), next.zeros.begin(), next.zeros.end());
  k_perm.insert(k_perm.end(), next.k_perm.begin(), next.k_perm.end());
}

HostQuantWeight dummy_quant_weight(const QuantConfig& c, int64_t rows, int64_t K, uint64_t seed) {
  HostQuantWeight h;
  h.code = c.code();
  h.rows = rows, h.K = K;
  h.group = c.method == QuantConfig::Method::ct_fp8 ? K : (c.group ? c.group : K);
  check_group("dummy quantized weight", K, h.group);
  h.codes.resize(rows * K * quant_code_bits(h.code) / 8);
  uint64_t s = seed;
  for (size_t i = 0; i < h.codes.size(); i += 8) {  // splitmix64, 8 codes bytes per draw
    s += 0x9E3779B97F4A7C15ull;
    uint64_t z = s;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    std::memcpy(&h.codes[i], &z, std::min<size_t>(8, h.codes.size() - i));
  }
  if (h.code == QuantCode::kF8E4M3)
    for (uint8_t& b : h.codes) b &= 0xB7;  // exponent <= 6: |value| < 2, no NaN
  // Largest |value - zero|: 8 (int4), 128 (int8), 6 (E2M1), 2 (the masked FP8 codes).
  const float span = h.code == QuantCode::kU4 ? 8.f : h.code == QuantCode::kU8 ? 128.f : h.code == QuantCode::kE2M1 ? 6.f : 2.f;
  const float scale = 0.05f / span;
  const int64_t n = rows * (K / h.group);
  h.scale_dtype = DType::BF16;
  h.scales.resize(n * 2);
  const uint16_t b = f32_to_bf16(scale);
  for (int64_t i = 0; i < n; ++i) std::memcpy(&h.scales[i * 2], &b, 2);
  return h;
}

}  // namespace tandem
