// The op interface every backend implements (CPU now, CUDA next). Ops work at the level of fused
// transformer steps so the model code reads like the paper and each backend may fuse as it likes.
//
// Conventions: activations are F32; weights are in their stored dtype (F32, BF16, F16, F8_E4M3) and
// are never converted up front; every op accumulates in f32. Linear weights are PyTorch-style
// [out, in], so matmul computes y = x · Wᵀ. Shapes are written beside each argument.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "backend/tensor.h"

namespace tandem {

// One layer's paged KV storage: K and V each [num_blocks, block_size, n_kv_heads, head_dim], F32.
// A token's slot is block_table[pos / block_size] * block_size + pos % block_size.
struct KvLayer {
  float* k = nullptr;
  float* v = nullptr;
  int32_t num_blocks = 0;
  int32_t block_size = 0;
  int32_t n_kv_heads = 0;
  int32_t head_dim = 0;
};

// What one query row of an attention op may see: the keys at positions [kv_begin, kv_end) of the
// sequence whose pages are listed in block_table. Causality, sliding windows and the drafter's
// frozen view are all expressed through this range, so the op itself knows no masking rules.
struct AttentionRow {
  const int32_t* block_table = nullptr;
  int32_t kv_begin = 0;
  int32_t kv_end = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;  // e.g. "cpu (avx512-bf16, 2 threads)"

  // y[T,N] = x[T,K] · w[N,K]ᵀ.   w: F32/BF16/F16/F8_E4M3, x and y: F32 (y may have a row stride).
  virtual void matmul(const TensorView& x, const TensorView& w, TensorView& y) = 0;

  // y[T,H] = table[ids[t], :] · scale   (table [V,H] in any float dtype).
  virtual void embed(std::span<const int32_t> ids, const TensorView& table, float scale,
                     TensorView& y) = 0;

  // Row-wise RMSNorm over the last dim D: y = x · (mean(x²) + eps)^-½ · w.  x, y [R,D] (may alias);
  // weight [D] in any float dtype, or nullptr for the weightless norm (w ≡ 1).
  virtual void rms_norm(const TensorView& x, const TensorView* weight, float eps, TensorView& y) = 0;

  // In-place rotate-half RoPE on x [T, n_heads, d]: pairs (i, i + d/2) rotated by positions[t] ·
  // inv_freq[i], i < d/2 (inv_freq [d/2] F32; zeros leave a pair unrotated, as proportional RoPE does).
  virtual void rope(TensorView& x, std::span<const int32_t> positions,
                    std::span<const float> inv_freq) = 0;

  // out[R,I] = gelu_tanh(gate[R,I]) ⊙ up[R,I]   (gate/up may be strided halves of one tensor).
  virtual void gelu_tanh_mul(const TensorView& gate, const TensorView& up, TensorView& out) = 0;

  // y = a + b elementwise (any may alias).      y += alpha · x.      x *= s.
  virtual void add(const TensorView& a, const TensorView& b, TensorView& y) = 0;
  virtual void axpy(float alpha, const TensorView& x, TensorView& y) = 0;
  virtual void scale(TensorView& x, float s) = 0;

  // x = cap · tanh(x / cap), in place.
  virtual void softcap(TensorView& x, float cap) = 0;

  // Writes k, v [T, n_kv, d] into the layer's cache at slots[t].
  virtual void kv_write(const TensorView& k, const TensorView& v, const KvLayer& layer,
                        std::span<const int64_t> slots) = 0;

  // out[T, n_heads·d] = softmax(q·Kᵀ · scale) · V per query row t and head h, over the keys that
  // rows[t] allows; query head h reads KV head h / (n_heads / n_kv). q [T, n_heads, d].
  virtual void attention(const TensorView& q, const KvLayer& layer, std::span<const AttentionRow> rows,
                         float scale, TensorView& out) = 0;

  // Router: per row of logits [T,E], softmax over all E, take the top-k, renormalise them to sum 1,
  // then multiply by per_expert_scale[e] (F32/BF16, or nullptr). Ties break toward the lower index.
  // Writes expert ids [T,k] and weights [T,k].
  virtual void moe_route(const TensorView& logits, int k, const TensorView* per_expert_scale,
                         int32_t* expert_ids, float* expert_weights) = 0;

  // y[T,H] = Σ_j w[t,j] · down[e] · (gelu_tanh(g) ⊙ u), [g | u] = gate_up[e] · x[t], e = ids[t,j].
  // gate_up [E, 2I, H] (gate rows first), down [E, H, I]; both any weight dtype.
  virtual void moe_experts(const TensorView& x, const int32_t* expert_ids, const float* expert_weights,
                           int k, const TensorView& gate_up, const TensorView& down, TensorView& y) = 0;
};

// threads <= 0: one per available core.
std::unique_ptr<Backend> make_cpu_backend(int threads = 0);

}  // namespace tandem
