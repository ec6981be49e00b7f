#include "backend/op_profiler.h"

#include <chrono>

namespace tandem {
namespace {

class OpProfiler final : public Backend {
 public:
  OpProfiler(std::unique_ptr<Backend> inner, std::map<std::string, OpTime>* times)
      : be_(std::move(inner)), times_(times) {}

  std::string name() const override { return be_->name() + " (profiling ops)"; }
  bool is_host() const override { return be_->is_host(); }
  void* alloc(size_t bytes) override { return be_->alloc(bytes); }
  void free(void* p) override { be_->free(p); }
  void upload(void* dst, const void* src, size_t bytes) override { timed("upload", [&] { be_->upload(dst, src, bytes); }); }
  void download(void* dst, const void* src, size_t bytes) override {
    timed("download", [&] { be_->download(dst, src, bytes); });
  }
  void synchronize() override { be_->synchronize(); }
  void memory_info(size_t* f, size_t* t) const override { be_->memory_info(f, t); }
  uint64_t host_syncs() const override { return be_->host_syncs(); }

  void copy(const TensorView& s, TensorView& d) override { timed("copy", [&] { be_->copy(s, d); }); }
  void gather_rows(const TensorView& s, const TensorView& i, TensorView& d) override {
    timed("gather_rows", [&] { be_->gather_rows(s, i, d); });
  }
  void fill_dummy(TensorView& t, uint64_t seed, float c, float h) override { be_->fill_dummy(t, seed, c, h); }
  void matmul(const TensorView& x, const TensorView& w, TensorView& y) override {
    // Split by weight shape: the head, the experts and the projections behave differently.
    timed(fmt::format("matmul [{}, {}] x {} rows", w.dim(0), w.dim(1), x.rows()), [&] { be_->matmul(x, w, y); });
  }
  void matmul_pair(const TensorView& x, const TensorView& w1, TensorView& y1, const TensorView& w2,
                   TensorView& y2) override {
    timed(fmt::format("matmul_pair 2 x [{}, {}] x {} rows", w1.dim(0), w1.dim(1), x.rows()),
          [&] { be_->matmul_pair(x, w1, y1, w2, y2); });
  }
  void matmul_gelu_glu(const TensorView& x, const TensorView& g, const TensorView& u, TensorView& o) override {
    timed(fmt::format("matmul_gelu_glu [{}, {}] x {} rows", g.dim(0), g.dim(1), x.rows()),
          [&] { be_->matmul_gelu_glu(x, g, u, o); });
  }
  void embed(const TensorView& ids, const TensorView& t, float s, TensorView& y) override {
    timed("embed", [&] { be_->embed(ids, t, s, y); });
  }
  void rms_norm(const TensorView& x, const TensorView* w, float eps, TensorView& y) override {
    timed("rms_norm", [&] { be_->rms_norm(x, w, eps, y); });
  }
  void rms_norm_add(const TensorView& y, const TensorView* w, float eps, TensorView& x) override {
    timed("rms_norm_add", [&] { be_->rms_norm_add(y, w, eps, x); });
  }
  void rope(TensorView& x, const TensorView& p, const TensorView& f) override { timed("rope", [&] { be_->rope(x, p, f); }); }
  void rms_norms(std::span<const RmsNormStep> steps, float eps) override {
    timed("rms_norms", [&] { be_->rms_norms(steps, eps); });
  }
  void rms_norm_rope(TensorView& x, const TensorView& w, float eps, const TensorView& p, const TensorView& f) override {
    timed("rms_norm_rope", [&] { be_->rms_norm_rope(x, w, eps, p, f); });
  }
  void gelu_tanh_mul(const TensorView& g, const TensorView& u, TensorView& o) override {
    timed("gelu_tanh_mul", [&] { be_->gelu_tanh_mul(g, u, o); });
  }
  void add(const TensorView& a, const TensorView& b, TensorView& y) override { timed("add", [&] { be_->add(a, b, y); }); }
  void axpy(float a, const TensorView& x, TensorView& y) override { timed("axpy", [&] { be_->axpy(a, x, y); }); }
  void scale(TensorView& x, float s) override { timed("scale", [&] { be_->scale(x, s); }); }
  void softcap(TensorView& x, float c) override { timed("softcap", [&] { be_->softcap(x, c); }); }
  void clamp(TensorView& x, float lo, float hi) override { timed("clamp", [&] { be_->clamp(x, lo, hi); }); }
  void standardize(const TensorView& x, const TensorView& b, const TensorView& s, TensorView& y) override {
    timed("standardize", [&] { be_->standardize(x, b, s, y); });
  }
  void kv_write_normed(const TensorView& k, const TensorView& v, const TensorView& n, float eps, const TensorView& p,
                       const TensorView& f, const KvLayer& l, const TensorView& s) override {
    timed("kv_write_normed", [&] { be_->kv_write_normed(k, v, n, eps, p, f, l, s); });
  }
  void attention(const TensorView& q, const KvLayer& l, const AttentionRows& r, float s, TensorView& o) override {
    timed(fmt::format("attention d={}", l.head_dim), [&] { be_->attention(q, l, r, s, o); });
  }
  void moe_route(const TensorView& l, const TensorView* s, TensorView& i, TensorView& w) override {
    timed("moe_route", [&] { be_->moe_route(l, s, i, w); });
  }
  void moe_experts(const TensorView& x, const TensorView& i, const TensorView& w, const TensorView& gu,
                   const TensorView& d, TensorView& y) override {
    timed("moe_experts", [&] { be_->moe_experts(x, i, w, gu, d, y); });
  }
  void set_communicator(Communicator* comm) override { be_->set_communicator(comm); }
  void all_reduce(TensorView& x) override { timed("all_reduce", [&] { be_->all_reduce(x); }); }
  void argmax_rows(const TensorView& x, const TensorView* l, TensorView& o) override {
    timed("argmax_rows", [&] { be_->argmax_rows(x, l, o); });
  }
  void topk_rows(const TensorView& x, TensorView& o) override { timed("topk_rows", [&] { be_->topk_rows(x, o); }); }
  void sample_rows(const TensorView& l, const TensorView& p, const TensorView& u, const TensorView& d,
                   TensorView& o) override {
    timed("sample_rows", [&] { be_->sample_rows(l, p, u, d, o); });
  }

 private:
  template <typename F>
  void timed(const std::string& op, F&& f) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    be_->synchronize();
    OpTime& t = (*times_)[op];
    t.seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ++t.calls;
  }

  std::unique_ptr<Backend> be_;
  std::map<std::string, OpTime>* times_;
};

}  // namespace

std::unique_ptr<Backend> make_op_profiler(std::unique_ptr<Backend> inner, std::map<std::string, OpTime>* times) {
  return std::make_unique<OpProfiler>(std::move(inner), times);
}

}  // namespace tandem
