// Host-side argument checks shared by every backend: the same shapes, dtypes and strides are
// accepted or refused, with the same messages, whichever backend runs the op.
#pragma once
#include <cstdint>

#include "backend/tensor.h"
#include "util/error.h"

namespace tandem {

inline bool is_float_dtype(DType t) {
  return t == DType::F32 || t == DType::BF16 || t == DType::F16 || t == DType::F8_E4M3;
}

// A 2-D view of dtype `want` with data (unless empty) and a row stride no shorter than a row.
inline void check_2d(const TensorView& v, DType want, const char* what) {
  if (v.dtype != want) fail("{} must be {}, got {}", what, dtype_name(want), dtype_name(v.dtype));
  if (v.ndim < 1 || (v.data == nullptr && v.numel() > 0)) fail("{} is empty or has no data", what);
  if (v.row_stride != 0 && v.row_stride < v.cols()) fail("{} has row_stride {} < cols {}", what, v.row_stride, v.cols());
}
inline void check_f32_2d(const TensorView& v, const char* what) { check_2d(v, DType::F32, what); }

inline void check_same_shape(const TensorView& a, const TensorView& b, const char* op) {
  if (a.rows() != b.rows() || a.cols() != b.cols())
    fail("{}: shape mismatch [{}, {}] vs [{}, {}]", op, a.rows(), a.cols(), b.rows(), b.cols());
}

// v holds T tokens of n_heads heads of d floats, as [T, n_heads·d] (possibly strided) or [T, n_heads, d].
inline void check_heads(const TensorView& v, int64_t T, int64_t n_heads, int64_t d, const char* what) {
  check_f32_2d(v, what);
  if (v.numel() != T * n_heads * d || v.rows() % T != 0 || v.cols() % d != 0)
    fail("{} has shape [{}, {}], expected {} tokens × {} heads × {}", what, v.rows(), v.cols(), T, n_heads, d);
}

// A quantized weight of logical shape [.., N, K] (2-D, or 3-D stacked experts): its scales, zeros
// and permutation have the shapes QuantParams documents.
inline void check_quant_weight(const TensorView& w, const char* what) {
  const QuantParams& q = *w.quant;
  if (w.dtype != DType::U8 || w.row_stride != 0 || (w.ndim != 2 && w.ndim != 3))
    fail("{}: a quantized weight must be dense U8 codes of 2 or 3 dims", what);
  const int64_t rows = w.rows(), K = w.cols();
  if (q.group <= 0) fail("{}: quantization group {} must be positive", what, q.group);
  if (quant_code_bits(q.code) == 4 && (K % 2 != 0 || q.group % 2 != 0))
    fail("{}: 4-bit codes need an even K and group, got K = {}, group = {}", what, K, q.group);
  const int64_t G = q.groups(K);
  const DType st = q.scales.dtype;
  if ((st != DType::F32 && st != DType::BF16 && st != DType::F16) || q.scales.numel() != rows * G)
    fail("{}: scales must be F32/BF16/F16 with {} x {} elements", what, rows, G);
  if (q.zeros.data && (q.zeros.dtype != DType::U8 || q.zeros.numel() != rows * G))
    fail("{}: zeros must be U8 with {} x {} elements", what, rows, G);
  const int64_t perms = w.ndim == 3 ? w.dim(0) : 1;
  if (q.k_perm.data && (q.k_perm.dtype != DType::I32 || q.k_perm.numel() != perms * K))
    fail("{}: k_perm must be I32 with {} x {} elements", what, perms, K);
}

// sample_rows: logits [R,V] F32, params [R,4] F32, uniforms [R,2] F32 (rows may be strided), drafts
// and out R dense I32 values. Returns R.
inline int64_t check_sample_rows(const TensorView& logits, const TensorView& params, const TensorView& uniforms,
                                 const TensorView& drafts, const TensorView& out) {
  check_f32_2d(logits, "sample_rows logits");
  check_f32_2d(params, "sample_rows params");
  check_f32_2d(uniforms, "sample_rows uniforms");
  const int64_t R = logits.rows(), V = logits.cols();
  if (params.rows() != R || params.cols() != 4) fail("sample_rows: params are [{}, {}], expected [{}, 4]", params.rows(), params.cols(), R);
  if (uniforms.rows() != R || uniforms.cols() != 2)
    fail("sample_rows: uniforms are [{}, {}], expected [{}, 2]", uniforms.rows(), uniforms.cols(), R);
  for (const TensorView* v : {&drafts, &out}) {
    const char* what = v == &out ? "sample_rows out" : "sample_rows drafts";
    check_2d(*v, DType::I32, what);
    if (v->numel() != R || (v->rows() != 1 && v->stride() != v->cols()))
      fail("{} must be {} dense I32 values, got [{}, {}]", what, R, v->rows(), v->cols());
  }
  if (R > 0 && (V < 1 || V >= (int64_t{1} << 23))) fail("sample_rows: the vocabulary size {} is not in [1, 2^23)", V);
  return R;
}

struct MatmulDims {
  int64_t T, N, K;
};
// y[T,N] = x[T,K] · w[N,K]ᵀ: x, y F32 (strided), w a dense 2-D float tensor or a quantized one.
inline MatmulDims check_matmul(const TensorView& x, const TensorView& w, const TensorView& y) {
  check_f32_2d(x, "matmul x");
  check_f32_2d(y, "matmul y");
  if (w.quant) {
    check_quant_weight(w, "matmul");
  } else if (!is_float_dtype(w.dtype)) {
    fail("matmul: weight dtype {} is not supported", dtype_name(w.dtype));
  }
  if (w.ndim != 2 || w.row_stride != 0) fail("matmul: weight must be a dense 2-D [N, K] tensor");
  const int64_t T = x.rows(), K = x.cols(), N = w.dim(0);
  if (w.dim(1) != K) fail("matmul: x [{}, {}] does not match weight [{}, {}]", T, K, N, w.dim(1));
  if (y.rows() != T || y.cols() != N) fail("matmul: y is [{}, {}], expected [{}, {}]", y.rows(), y.cols(), T, N);
  return {T, N, K};
}

// Attention's q and out for T rows over KV heads of dimension d: returns the number of query heads.
// moe_experts' arguments, the same rules on every backend: x and y F32 [T, H], ids I32 and weights F32
// [T, k], gate_up [E, 2I, H] and down [E, H, I] dense 3-D tensors, float or quantized.
struct MoeDims {
  int64_t T, H, E, I, k;
};
inline MoeDims check_moe_experts(const TensorView& x, const TensorView& ids, const TensorView& weights,
                                 const TensorView& gate_up, const TensorView& down, const TensorView& y) {
  check_f32_2d(x, "moe_experts x");
  check_f32_2d(y, "moe_experts y");
  check_same_shape(x, y, "moe_experts");
  check_2d(ids, DType::I32, "moe_experts ids");
  check_f32_2d(weights, "moe_experts weights");
  if (gate_up.ndim != 3 || down.ndim != 3 || gate_up.row_stride || down.row_stride)
    fail("moe_experts: gate_up and down must be dense 3-D tensors");
  for (const TensorView* w : {&gate_up, &down}) {
    if (w->quant) check_quant_weight(*w, "moe_experts");
    else if (!is_float_dtype(w->dtype)) fail("moe_experts: expert weights must be float or quantized");
  }
  const int64_t T = x.rows(), H = x.cols(), E = gate_up.dim(0), I2 = gate_up.dim(1), k = ids.cols();
  if (gate_up.dim(2) != H || I2 % 2 != 0 || down.dim(0) != E || down.dim(1) != H || down.dim(2) != I2 / 2)
    fail("moe_experts: gate_up [{}, {}, {}] and down [{}, {}, {}] do not fit H = {}", E, I2, gate_up.dim(2),
         down.dim(0), down.dim(1), down.dim(2), H);
  if (ids.rows() != T || weights.rows() != T || weights.cols() != k)
    fail("moe_experts: ids [{}, {}] and weights [{}, {}] must both be [{}, k]", ids.rows(), ids.cols(),
         weights.rows(), weights.cols(), T);
  return {T, H, E, I2 / 2, k};
}

inline int64_t check_attention_heads(const TensorView& q, const TensorView& out, int64_t T, int64_t n_kv, int64_t d) {
  check_f32_2d(q, "attention q");
  if (q.numel() % (T * d) != 0) fail("attention: q of {} elements is not {} rows × heads × {}", q.numel(), T, d);
  const int64_t n_heads = q.numel() / (T * d);
  if (n_heads % n_kv != 0) fail("attention: {} query heads are not a multiple of {} KV heads", n_heads, n_kv);
  check_heads(q, T, n_heads, d, "attention q");
  check_heads(out, T, n_heads, d, "attention out");
  return n_heads;
}

}  // namespace tandem
