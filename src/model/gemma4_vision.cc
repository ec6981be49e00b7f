#include "model/gemma4_vision.h"

#include <cmath>

#include "model/step_inputs.h"
#include "util/error.h"

namespace tandem {

Gemma4Vision::Gemma4Vision(const ModelConfig& c, Backend& be)
    : vc_(*c.vision), text_hidden_(c.hidden), be_(be), inputs_(be), patches_(be), h_(be), normed_(be),
      clipped_in_(be), q_(be), k_(be), v_(be), attn_(be), proj_(be), gate_(be), up_(be), pe_(be), pooled_(be),
      tmp_(be), q_att_(be), k_cache_(be), v_cache_(be), attn_att_(be), inv_freq_(be) {}

VisionLinear Gemma4Vision::bind_linear(Weights& w, const std::string& module, int64_t out, int64_t in) {
  VisionLinear l;
  l.w = w.get(module + ".linear.weight", {out, in});
  // Clip bounds are scalar buffers of the checkpoint; generated weights (dummy / meta) have none
  // worth using, so benchmarks run the unclipped arithmetic.
  if (vc_.clipped_linears && !w.dummy()) {
    auto bound = [&](const char* name) { return w.read_scalar(w.get(module + "." + name, {1})); };
    l.clipped = true;
    l.in_lo = bound("input_min"), l.in_hi = bound("input_max");
    l.out_lo = bound("output_min"), l.out_hi = bound("output_max");
  }
  return l;
}

std::unique_ptr<Gemma4Vision> Gemma4Vision::load(const ModelConfig& c, Backend& backend, LoadFormat format) {
  if (!c.vision) fail("{} has no vision_config: this model takes no images", c.dir);
  if (!c.takes_images())
    fail("{}: the image marker token ids (boi {}, eoi {}, image {}) lie outside the vocabulary of {}: this model "
         "takes no images", c.dir, c.boi_id, c.eoi_id, c.image_token_id, c.vocab_size);
  // Every Gemma 4 tower has as many KV heads as heads; the 2-D RoPE plan below relies on it.
  if (c.vision->n_kv_heads != c.vision->n_heads)
    fail("{}: a vision tower with {} KV heads for {} heads is not supported", c.dir, c.vision->n_kv_heads,
         c.vision->n_heads);
  std::unique_ptr<Gemma4Vision> m(new Gemma4Vision(c, backend));
  const VisionConfig& v = m->vc_;
  m->weights_ = Weights::open(c.dir, format, backend);
  Weights& w = m->weights_;
  const std::string p = "model.vision_tower.";
  const int64_t Hv = v.hidden, d = v.head_dim, nh = v.n_heads, nkv = v.n_kv_heads, I = v.intermediate,
                P = v.position_embedding_size;
  m->input_proj_ = w.get(p + "patch_embedder.input_proj.weight", {Hv, 3LL * v.patch_size * v.patch_size});
  // [2, P, Hv]: table 0 is indexed by a patch's x, table 1 by its y.
  const TensorView table = w.get(p + "patch_embedder.position_embedding_table", {2, P, Hv});
  m->pos_x_ = TensorView(table.dtype, table.data, {P, Hv});
  m->pos_y_ = TensorView(table.dtype, table.data ? static_cast<char*>(table.data) + P * Hv * dtype_size(table.dtype) : nullptr,
                         {P, Hv});
  for (int j = 0; j < v.n_layers; ++j) {
    const std::string l = p + "encoder.layers." + std::to_string(j) + ".";
    VisionLayerWeights lw;
    lw.input_norm = w.get(l + "input_layernorm.weight", {Hv});
    lw.post_attention_norm = w.get(l + "post_attention_layernorm.weight", {Hv});
    lw.pre_ffn_norm = w.get(l + "pre_feedforward_layernorm.weight", {Hv});
    lw.post_ffn_norm = w.get(l + "post_feedforward_layernorm.weight", {Hv});
    lw.q_norm = w.get(l + "self_attn.q_norm.weight", {d});
    lw.k_norm = w.get(l + "self_attn.k_norm.weight", {d});
    lw.q = m->bind_linear(w, l + "self_attn.q_proj", nh * d, Hv);
    lw.k = m->bind_linear(w, l + "self_attn.k_proj", nkv * d, Hv);
    lw.v = m->bind_linear(w, l + "self_attn.v_proj", nkv * d, Hv);
    lw.o = m->bind_linear(w, l + "self_attn.o_proj", Hv, nh * d);
    lw.gate = m->bind_linear(w, l + "mlp.gate_proj", I, Hv);
    lw.up = m->bind_linear(w, l + "mlp.up_proj", I, Hv);
    lw.down = m->bind_linear(w, l + "mlp.down_proj", Hv, I);
    m->layers_.push_back(lw);
  }
  if (v.standardize) {
    m->std_bias_ = w.get(p + "std_bias", {Hv});
    m->std_scale_ = w.get(p + "std_scale", {Hv});
  }
  m->projection_ = w.get("model.embed_vision.embedding_projection.weight", {c.hidden, Hv});
  // The CUDA attention kernel takes head dims that are multiples of 32 (72 on 26B/31B): there the
  // heads are zero-padded, which leaves every score and output column unchanged.
  m->head_dim_att_ = backend.is_host() || d % 32 == 0 ? static_cast<int>(d) : static_cast<int>((d + 31) / 32 * 32);
  // Per-axis RoPE: each half of a head (d/2 wide) rotates NeoX-style with θ^(-2i/(d/2)).
  if (format != LoadFormat::meta) upload_floats(m->inv_freq_, rope_inv_freq(RopeSpec{"default", v.rope_theta, 1.0, 1.0},
                                                                           static_cast<int>(d / 2)));
  int64_t params = m->input_proj_.numel() + 2 * P * Hv + m->projection_.numel();
  for (const VisionLayerWeights& lw : m->layers_) {
    for (const TensorView* t : {&lw.input_norm, &lw.post_attention_norm, &lw.pre_ffn_norm, &lw.post_ffn_norm,
                                &lw.q_norm, &lw.k_norm})
      params += t->numel();
    for (const VisionLinear* l : {&lw.q, &lw.k, &lw.v, &lw.o, &lw.gate, &lw.up, &lw.down}) params += l->w.numel();
  }
  if (v.standardize) params += 2 * Hv;
  m->parameters_ = params;
  m->weight_bytes_ = w.bound_bytes();
  return m;
}

void Gemma4Vision::linear(const TensorView& x, const VisionLinear& l, TensorView& y) {
  if (!l.clipped) return be_.matmul(x, l.w, y);
  TensorView& xc = clipped_in_.resize(DType::F32, {x.rows(), x.cols()});
  be_.copy(x, xc);
  be_.clamp(xc, l.in_lo, l.in_hi);
  be_.matmul(xc, l.w, y);
  be_.clamp(y, l.out_lo, l.out_hi);
}

void Gemma4Vision::encode(const vision::PatchImage& image, TensorView& features) {
  const VisionConfig& v = vc_;
  const int64_t n = image.num_patches(), pp = 3LL * v.patch_size * v.patch_size, Hv = v.hidden;
  const int64_t nh = v.n_heads, k = v.pooling_kernel, N = n / (k * k);
  if (image.patch != v.patch_size || image.pool != v.pooling_kernel)
    fail("the image was cut into {}-pixel patches pooled {}x{}, the tower takes {} pooled {}x{}", image.patch,
         image.pool, image.pool, v.patch_size, v.pooling_kernel, v.pooling_kernel);
  if (image.grid_w > v.position_embedding_size || image.grid_h > v.position_embedding_size)
    fail("the image is {}x{} patches, more than the {} positions per axis of the vision tower", image.grid_w,
         image.grid_h, v.position_embedding_size);
  if (n == 0 || image.grid_w % k || image.grid_h % k) fail("the image's patch grid does not pool {}x{}", k, k);
  if (features.rows() != N || features.cols() != text_hidden_ || features.dtype != DType::F32)
    fail("vision features must be [{}, {}] F32", N, text_hidden_);

  // Inputs: pixels mapped to [-1, 1] as the patch embedder does (2 · (x − ½) in f32), and the
  // integer plans: patch positions, RoPE positions per head half, key ranges, pooling rows.
  std::vector<float> x(image.pixels.size());
  for (size_t i = 0; i < x.size(); ++i) x[i] = 2.0f * (image.pixels[i] - 0.5f);
  TensorView& px = patches_.resize(DType::F32, {n, pp});
  upload_to(be_, x.data(), px);
  inputs_.clear();
  std::span<int32_t> xs = inputs_.add<int32_t>(&pos_ids_x_, DType::I32, {n});
  for (int64_t i = 0; i < n; ++i) xs[i] = static_cast<int32_t>(i % image.grid_w);
  std::span<int32_t> ys = inputs_.add<int32_t>(&pos_ids_y_, DType::I32, {n});
  for (int64_t i = 0; i < n; ++i) ys[i] = static_cast<int32_t>(i / image.grid_w);
  // q and k viewed as rows of half heads: row (t · nh + h) · 2 + a rotates by x (a = 0) or y (a = 1).
  std::span<int32_t> rp = inputs_.add<int32_t>(&rope_pos_, DType::I32, {n * nh * 2});
  for (int64_t t = 0; t < n; ++t)
    for (int64_t h = 0; h < nh; ++h) {
      rp[(t * nh + h) * 2] = static_cast<int32_t>(t % image.grid_w);
      rp[(t * nh + h) * 2 + 1] = static_cast<int32_t>(t / image.grid_w);
    }
  std::span<int32_t> ranges = inputs_.add<int32_t>(&ranges_, DType::I32, {n, 3});
  for (int64_t t = 0; t < n; ++t) ranges[3 * t] = 0, ranges[3 * t + 1] = 0, ranges[3 * t + 2] = static_cast<int32_t>(n);
  inputs_.add<int32_t>(&tables_, DType::I32, {1, 1})[0] = 0;
  pool_ids_.assign(k * k, TensorView());
  const int64_t gw = image.grid_w / k;
  for (int64_t dy = 0; dy < k; ++dy)
    for (int64_t dx = 0; dx < k; ++dx) {
      std::span<int32_t> ids = inputs_.add<int32_t>(&pool_ids_[dy * k + dx], DType::I32, {N});
      for (int64_t o = 0; o < N; ++o)
        ids[o] = static_cast<int32_t>(((o / gw) * k + dy) * image.grid_w + (o % gw) * k + dx);
    }
  inputs_.upload();

  // Patch embedding + learned 2-D positions.
  TensorView& h = h_.resize(DType::F32, {n, Hv});  // [n, Hv] residual stream
  be_.matmul(px, input_proj_, h);
  TensorView& pe = pe_.resize(DType::F32, {n, Hv});
  TensorView& tmp = tmp_.resize(DType::F32, {n, Hv});
  be_.embed(pos_ids_x_, pos_x_, 1.0f, pe);
  be_.embed(pos_ids_y_, pos_y_, 1.0f, tmp);
  be_.add(pe, tmp, pe);
  be_.add(h, pe, h);

  for (const VisionLayerWeights& w : layers_) layer(w, n);

  // k×k average pooling by position, × √Hv, standardize.
  TensorView& pooled = pooled_.resize(DType::F32, {N, Hv});
  TensorView part = tmp.row_slice(0, N);
  const float weight = 1.0f / static_cast<float>(k * k);
  be_.gather_rows(h, pool_ids_[0], pooled);
  be_.scale(pooled, weight);
  for (int64_t o = 1; o < k * k; ++o) {
    be_.gather_rows(h, pool_ids_[o], part);
    be_.axpy(weight, part, pooled);
  }
  be_.scale(pooled, static_cast<float>(std::sqrt(static_cast<double>(Hv))));
  if (v.standardize) be_.standardize(pooled, std_bias_, std_scale_, pooled);

  // Projector: weightless RMSNorm, then into the text model's width.
  TensorView normed = normed_.resize(DType::F32, {N, Hv});
  be_.rms_norm(pooled, nullptr, static_cast<float>(v.rms_eps), normed);
  be_.matmul(normed, projection_, features);
}

void Gemma4Vision::layer(const VisionLayerWeights& w, int64_t n) {
  const VisionConfig& v = vc_;
  const int64_t Hv = v.hidden, d = v.head_dim, nh = v.n_heads, nkv = v.n_kv_heads, dp = head_dim_att_;
  const float eps = static_cast<float>(v.rms_eps);
  TensorView& h = h_.view();

  // Attention: h += RMS(o(attn(q, k, v)); post_attention_norm), all patches seeing all patches.
  TensorView& normed = normed_.resize(DType::F32, {n, Hv});
  be_.rms_norm(h, &w.input_norm, eps, normed);
  TensorView& q = q_.resize(DType::F32, {n, nh * d});
  TensorView& k = k_.resize(DType::F32, {n, nkv * d});
  TensorView& vv = v_.resize(DType::F32, {n, nkv * d});
  linear(normed, w.q, q);
  linear(normed, w.k, k);
  linear(normed, w.v, vv);
  TensorView q_heads = q.reshaped({n * nh, d}), k_heads = k.reshaped({n * nkv, d}), v_heads = vv.reshaped({n * nkv, d});
  be_.rms_norm(q_heads, &w.q_norm, eps, q_heads);
  be_.rms_norm(k_heads, &w.k_norm, eps, k_heads);
  be_.rms_norm(v_heads, nullptr, eps, v_heads);
  // 2-D RoPE: every half head is a rotate-half RoPE "head" of width d/2 with its own position.
  TensorView q_halves = q.reshaped({n * nh * 2, 1, d / 2}), k_halves = k.reshaped({n * nkv * 2, 1, d / 2});
  be_.rope(q_halves, rope_pos_, inv_freq_.view());
  be_.rope(k_halves, rope_pos_, inv_freq_.view());

  TensorView& attn = attn_.resize(DType::F32, {n, nh * d});
  AttentionRows rows{ranges_, tables_, 0};
  KvLayer kv;
  kv.dtype = DType::F32, kv.num_blocks = 1, kv.block_size = static_cast<int32_t>(n);
  kv.n_kv_heads = static_cast<int32_t>(nkv), kv.head_dim = static_cast<int32_t>(dp);
  if (dp == d) {  // K and V as computed are already one block of n rows
    kv.k = k.data, kv.v = vv.data;
    be_.attention(q.reshaped({n, nh, d}), kv, rows, /*scale=*/1.0f, attn);
  } else {
    // Zero-padded copies (the pad columns are zeroed once per allocation and never written).
    auto padded = [&](Tensor& t, int slot, int64_t r) -> TensorView& {
      TensorView& view = t.resize(DType::F32, {r, dp});
      if (zeroed_[slot] != view.data || zeroed_bytes_[slot] < view.nbytes()) {
        const std::vector<float> zeros(static_cast<size_t>(view.numel()), 0.0f);
        upload_to(be_, zeros.data(), view);
        zeroed_[slot] = view.data, zeroed_bytes_[slot] = view.nbytes();
      }
      return view;
    };
    auto into = [&](const TensorView& src, TensorView& dst, int64_t r) {
      TensorView cols = dst;
      cols.shape = {r, d, 0, 0}, cols.ndim = 2, cols.row_stride = dp;
      be_.copy(src, cols);
    };
    TensorView& qa = padded(q_att_, 0, n * nh);
    TensorView& ka = padded(k_cache_, 1, n * nkv);
    TensorView& va = padded(v_cache_, 2, n * nkv);
    into(q_heads, qa, n * nh);
    into(k_heads, ka, n * nkv);
    into(v_heads, va, n * nkv);
    kv.k = ka.data, kv.v = va.data;
    TensorView& out = attn_att_.resize(DType::F32, {n, nh * dp});
    be_.attention(qa.reshaped({n, nh, dp}), kv, rows, /*scale=*/1.0f, out);
    TensorView out_cols(DType::F32, out.data, {n * nh, d});
    out_cols.row_stride = dp;
    TensorView attn_heads = attn.reshaped({n * nh, d});
    be_.copy(out_cols, attn_heads);
  }
  TensorView& o = proj_.resize(DType::F32, {n, Hv});
  linear(attn, w.o, o);
  be_.rms_norm(o, &w.post_attention_norm, eps, o);
  be_.add(h, o, h);

  // MLP: h += RMS(down(gelu(gate(x)) ⊙ up(x)); post_ffn_norm), x = RMS(h; pre_ffn_norm).
  be_.rms_norm(h, &w.pre_ffn_norm, eps, normed);
  TensorView& g = gate_.resize(DType::F32, {n, v.intermediate});
  TensorView& u = up_.resize(DType::F32, {n, v.intermediate});
  linear(normed, w.gate, g);
  linear(normed, w.up, u);
  be_.gelu_tanh_mul(g, u, g);
  linear(g, w.down, o);
  be_.rms_norm(o, &w.post_ffn_norm, eps, o);
  be_.add(h, o, h);
}

}  // namespace tandem
