// Quantized checkpoints: the `quantization_config` of a config.json, and the readers that rewrite
// each supported format's tensors of one linear layer into the canonical form the backends run
// (QuantParams in backend/tensor.h; why this form: docs/DESIGN.md, "Quantized weights").
//
// Supported (anything else is refused with an error naming the field):
//   compressed-tensors pack-quantized   int4 / int8 weights, symmetric (bias 2^(bits-1)) or with packed
//                                       zero points, strategy group or channel, actorder group
//   compressed-tensors float-quantized  FP8 E4M3 weights, per-channel or per-tensor scales (W8A16)
//   compressed-tensors nvfp4-pack-quantized  FP4 E2M1 weights, FP8 group-16 scales, global divisor (W4A16)
//   AutoAWQ gemm (quant_method awq)      qweight [K, N/8] interleaved, qzeros, scales
//   GPTQ (quant_method gptq)             qweight [K/8, N], qzeros (v1: stored zero - 1), scales, g_idx
#pragma once
#include <cstdint>
#include <optional>
#include <regex>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "backend/tensor.h"
#include "io/safetensors.h"

namespace tandem {

struct QuantConfig {
  enum class Method { none, ct_int, ct_fp8, ct_nvfp4, awq, gptq };
  Method method = Method::none;
  int bits = 0;             // 4 or 8
  int64_t group = 0;        // elements per scale along K; 0: one scale per output channel (or tensor)
  bool symmetric = true;    // no zero points stored
  bool actorder = false;    // CT actorder "group" / GPTQ desc_act: a g_idx tensor per linear
  bool gptq_v2 = false;     // GPTQ checkpoint_format gptq_v2: zeros stored as is (v1 stores zero - 1)
  // Modules that stay unquantized: names (exact; AWQ / GPTQ: name parts) or "re:" regexes (matched
  // from the start), the regexes compiled once at parse (quantizes runs once per module at load).
  struct Ignored {
    std::string entry;               // as listed
    std::optional<std::regex> regex;  // of a "re:" entry
  };
  std::vector<Ignored> ignore;

  bool quantized() const { return method != Method::none; }
  // Whether linear module `module` (e.g. "model.language_model.layers.0.mlp.down_proj") is stored
  // quantized, i.e. not named by the ignore list.
  bool quantizes(const std::string& module) const;
  // "compressed-tensors pack-quantized int4 symmetric group 32", for inspect / plan / errors.
  std::string describe() const;
  // The canonical code type weights of this format are rewritten to.
  QuantCode code() const;
};

// Parses config.json's quantization_config (`file` names config.json in errors).
QuantConfig parse_quant_config(const nlohmann::json& qc, const std::string& file);

// One quantized weight in canonical form on the host, ready to upload: rows × K codes (packed per
// QuantParams), scales and zeros [rows, ceil(K / group)], and an optional permutation of K per
// block of `rows_per_perm` rows.
struct HostQuantWeight {
  QuantCode code = QuantCode::kU4;
  int64_t rows = 0, K = 0, group = 0;
  std::vector<uint8_t> codes;
  DType scale_dtype = DType::F32;
  std::vector<uint8_t> scales;  // bytes of scale_dtype
  std::vector<uint8_t> zeros;   // empty: QuantCode's default zero
  std::vector<int32_t> k_perm;  // empty: identity; else rows / rows_per_perm blocks of K entries

  size_t bytes() const { return codes.size() + scales.size() + zeros.size() + k_perm.size() * 4; }
  // Appends `next` (same code, K, group, scale dtype and zero presence) below this weight's rows:
  // how gate and up, and the experts, are stacked into one fused weight.
  void append_rows(const HostQuantWeight& next, const std::string& what);
};

// Reads the quantized linear `module` ([N, K] logical; e.g. "...layers.0.self_attn.q_proj", whose
// compressed-tensors tensors are module + ".weight_packed" etc.) in config's format. fused: `module`
// is a 3-D parameter [experts, N, K] (e.g. "...experts.gate_up_proj") whose tensors are named
// module + "_packed", "_scale", ... Throws tandem::Error naming the tensor on a missing tensor, a
// wrong shape or dtype, or a group that does not divide K.
HostQuantWeight read_quant_linear(const WeightStore& store, const QuantConfig& config, const std::string& module,
                                  int64_t N, int64_t K, int64_t experts = 1, bool fused = false);

// The tensor whose presence says the store holds `module` in the config's quantized spelling (e.g.
// module + ".weight_packed"; "" where the format has no such spelling, as 3-D experts in AWQ / GPTQ).
std::string quant_key_tensor(const QuantConfig& config, const std::string& module, bool fused = false);
// Whether the store holds that tensor.
bool has_quant_linear(const WeightStore& store, const QuantConfig& config, const std::string& module,
                      bool fused = false);

// Seeded canonical weights of config's format for --load-format dummy: codes uniform over their
// range, scales such that values stay within about ±0.05 like the bf16 dummy weights.
HostQuantWeight dummy_quant_weight(const QuantConfig& config, int64_t rows, int64_t K, uint64_t seed);

}  // namespace tandem
