#include "model/online_quant.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <thread>
#include <vector>

#include "util/error.h"
#include "util/half.h"

namespace tandem {

bool OnlineQuant::quantizes(const std::string& module) const {
  if (module == "lm_head") return lm_head;
  return active() && module.find("layers.") != std::string::npos && module.find(".router.") == std::string::npos;
}

OnlineQuant OnlineQuant::head() const {
  OnlineQuant h = *this;
  if (!h.active()) h.method = Method::int8;
  return h;
}

QuantCode OnlineQuant::code() const {
  return method == Method::int4 ? QuantCode::kU4 : method == Method::int8 ? QuantCode::kU8 : QuantCode::kF8E4M3;
}

std::string OnlineQuant::describe() const {
  if (!any()) return "none";
  const std::string covers = !active() ? ", lm_head only" : lm_head ? ", lm_head quantized" : ", lm_head as stored";
  switch (head().method) {  // the layers' method, or the head's where only the head is quantized
    case Method::int4: return fmt::format("online int4 symmetric group {}{}", group, covers);
    case Method::int8: return fmt::format("online int8 symmetric group {}{}", group, covers);
    case Method::fp8: return "online fp8 e4m3 per channel (W8A16)" + covers;
    case Method::none: break;
  }
  return "?";
}

OnlineQuant parse_online_quant(const std::string& name, bool lm_head, const std::string& flag) {
  OnlineQuant q;
  if (name == "int4") q.method = OnlineQuant::Method::int4;
  else if (name == "int8") q.method = OnlineQuant::Method::int8;
  else if (name == "fp8") q.method = OnlineQuant::Method::fp8;
  else if (name != "none" && !name.empty()) fail("{} must be none, int4, int8 or fp8, got \"{}\"", flag, name);
  q.lm_head = lm_head;
  return q;
}

namespace {

// Row r of W as f32.
void load_row(DType dtype, const void* data, int64_t r, int64_t K, float* out) {
  switch (dtype) {
    case DType::F32: std::memcpy(out, static_cast<const float*>(data) + r * K, K * 4); return;
    case DType::BF16: {
      const uint16_t* p = static_cast<const uint16_t*>(data) + r * K;
      for (int64_t k = 0; k < K; ++k) out[k] = bf16_to_f32(p[k]);
      return;
    }
    case DType::F16: {
      const uint16_t* p = static_cast<const uint16_t*>(data) + r * K;
      for (int64_t k = 0; k < K; ++k) out[k] = f16_to_f32(p[k]);
      return;
    }
    default: break;
  }
  TANDEM_CHECK(false);
}

// One row: codes (packed per QuantCode) and one bf16 scale per group.
void quantize_row(const OnlineQuant& q, const float* w, int64_t K, int64_t group, uint8_t* codes, uint8_t* scales) {
  const bool fp8 = q.method == OnlineQuant::Method::fp8, int4 = q.method == OnlineQuant::Method::int4;
  const float qmax = fp8 ? 448.f : int4 ? 7.f : 127.f, qmin = int4 ? -8.f : -128.f;
  const int zero = quant_default_zero(q.code());
  for (int64_t g0 = 0, g = 0; g0 < K; g0 += group, ++g) {
    const int64_t g1 = std::min(K, g0 + group);
    float amax = 0;
    for (int64_t k = g0; k < g1; ++k) amax = std::max(amax, std::fabs(w[k]));
    const uint16_t scale = f32_to_bf16(amax / qmax);
    std::memcpy(scales + 2 * g, &scale, 2);
    const float s = bf16_to_f32(scale);
    for (int64_t k = g0; k < g1; ++k) {
      const float v = s > 0 ? w[k] / s : 0.f;
      if (fp8) {
        codes[k] = f32_to_f8e4m3(v);
      } else {
        const int u = static_cast<int>(std::clamp(std::nearbyint(v), qmin, qmax)) + zero;
        if (int4) codes[k / 2] = static_cast<uint8_t>(k % 2 ? (codes[k / 2] & 0x0F) | (u << 4) : u);
        else codes[k] = static_cast<uint8_t>(u);
      }
    }
  }
}

}  // namespace

HostQuantWeight quantize_weight(const OnlineQuant& q, DType dtype, const void* data, int64_t rows, int64_t K,
                                const std::string& name) {
  TANDEM_CHECK(q.active());
  if (dtype != DType::BF16 && dtype != DType::F16 && dtype != DType::F32)
    fail("{} has dtype {}; --quantization takes bf16, f16 or f32 weights", name, dtype_name(dtype));
  HostQuantWeight h;
  h.code = q.code();
  h.rows = rows, h.K = K, h.group = q.group_for(K);
  if (h.group <= 0) fail("{}: quantization group size must be positive, got {}", name, h.group);
  const int bits = quant_code_bits(h.code);
  if (bits == 4 && K % 2 != 0) fail("{}: K = {} is odd; int4 codes pack two per byte", name, K);
  const int64_t G = (K + h.group - 1) / h.group, row_bytes = K * bits / 8;
  h.codes.assign(rows * row_bytes, 0);
  h.scale_dtype = DType::BF16;
  h.scales.resize(rows * G * 2);
  // Rows are independent: split them over the host's cores (the result does not depend on the split).
  const int64_t threads = std::clamp<int64_t>(std::thread::hardware_concurrency(), 1, std::max<int64_t>(1, rows / 64));
  auto work = [&](int64_t r0, int64_t r1) {
    std::vector<float> row(K);
    for (int64_t r = r0; r < r1; ++r) {
      load_row(dtype, data, r, K, row.data());
      quantize_row(q, row.data(), K, h.group, &h.codes[r * row_bytes], &h.scales[r * G * 2]);
    }
  };
  const int64_t per = (rows + threads - 1) / threads;
  {
    std::vector<std::jthread> pool;  // joined at the end of this block, before h is returned
    for (int64_t t = 1; t < threads; ++t)
      if (t * per < rows) pool.emplace_back(work, t * per, std::min(rows, (t + 1) * per));
    work(0, std::min(rows, per));
  }
  return h;
}

}  // namespace tandem
