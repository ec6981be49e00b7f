// Online quantization (--quantization int4|int8|fp8): the linears of a bf16 / f16 / f32 checkpoint
// rewritten at load, on the host, into the canonical quantized form the pre-quantized formats are
// read into (HostQuantWeight / QuantParams), so the same kernels run them.
//
//   int4, int8  symmetric, one scale per `group` (128) consecutive elements of a row along K:
//               scale = bf16(max|w| / 7) (int4) or bf16(max|w| / 127) (int8),
//               code = clamp(round_half_even(w / scale), -8, 7) + 8  (int8: -128..127, + 128);
//               the last group of a row is shorter when group does not divide K.
//   fp8         OCP E4M3, one scale per output channel: scale = bf16(max|w| / 448),
//               code = e4m3(w / scale) (round to nearest even, saturating), computed as W8A16.
// A group (row) whose values are all zero gets scale 0 and the zero code.
#pragma once
#include <cstdint>
#include <string>

#include "model/quant.h"

namespace tandem {

struct OnlineQuant {
  enum class Method { none, int4, int8, fp8 };
  Method method = Method::none;
  // Elements per scale along K for int4 / int8. 128: llm-compressor's W4A16 / W8A16 default (and
  // GPTQ's and AutoAWQ's), one bf16 scale per 64 bytes of int4 codes (3 % more bytes where group 32
  // costs 12.5 %), and a multiple of 32 so the CPU's packed int4 kernels apply.
  int64_t group = 128;
  // Give the head matmul a quantized copy of the head (--quantize-lm-head), in `method`, or in int8
  // when method is none: a checkpoint quantized already (whose tied head published checkpoints keep
  // in bf16, ~45 % of a 26B-A4B int4 decode step's bytes), or a bf16 one whose layers stay bf16.
  bool lm_head = false;

  // Whether the decoder layers' linears are quantized.
  bool active() const { return method != Method::none; }
  // Whether anything is: the layers' linears or the head.
  bool any() const { return active() || lm_head; }
  // Whether linear `module` is quantized: every linear of a decoder layer ("...layers.N....") except
  // the MoE router when active(), and "lm_head" when lm_head is set. Norms, embeddings and the
  // model-level projections stay as stored.
  bool quantizes(const std::string& module) const;
  // How the head is quantized (lm_head set): method, or int8 when method is none.
  OnlineQuant head() const;
  // How module `module` (quantizes(module)) is quantized: head() for "lm_head", else this.
  OnlineQuant for_module(const std::string& module) const { return module == "lm_head" ? head() : *this; }
  QuantCode code() const;
  int64_t group_for(int64_t K) const { return method == Method::fp8 ? K : group; }
  // "int4 symmetric group 128, lm_head quantized", for logs, inspect and plan.
  std::string describe() const;
};

// "none" | "int4" | "int8" | "fp8" (vLLM's spellings) -> OnlineQuant; errors name `flag`.
OnlineQuant parse_online_quant(const std::string& name, bool lm_head, const std::string& flag);

// Quantizes W [rows, K] (row-major, dtype BF16, F16 or F32, host memory) as q specifies.
// Deterministic: the result depends on the values only.
HostQuantWeight quantize_weight(const OnlineQuant& q, DType dtype, const void* data, int64_t rows, int64_t K,
                                const std::string& name);

}  // namespace tandem
