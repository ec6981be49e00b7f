#include "bench/step.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <set>

#include "backend/op_profiler.h"
#include "model/byte_model.h"
#include "model/gemma4.h"
#include "model/gemma4_assistant.h"
#include "model/kv_cache.h"
#include "model/tensor_parallel_group.h"
#include "spec/speculative_config.h"
#include "util/error.h"

namespace tandem::bench {
namespace {

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

template <typename F>
double median_ms(int reps, F&& fn) {
  fn();  // warm-up
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    const double t0 = now();
    fn();
    t.push_back((now() - t0) * 1e3);
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// Device-to-device copy bandwidth (bytes read + written per second) over a buffer several times the
// GPU's L2 (or a CPU's last-level cache).
double copy_bandwidth(Backend& be) {
  const int64_t n = be.is_host() ? (256ll << 20) : (2ll << 30);
  Tensor a(be), b(be);
  TensorView& src = a.resize(DType::U8, {1, n});
  TensorView& dst = b.resize(DType::U8, {1, n});
  const double ms = median_ms(10, [&] {
    be.copy(src, dst);
    be.synchronize();
  });
  return 2.0 * static_cast<double>(n) / (ms * 1e-3) / 1e9;
}

}  // namespace

StepReport run_step_bench(const StepOptions& o) {
  auto be = make_backend(o.device, o.threads);
  be->set_recording(!o.enforce_eager);
  std::map<std::string, OpTime> op_times;
  if (o.profile_ops) be = make_op_profiler(std::move(be), &op_times);
  StepReport report;
  report.backend = be->name();
  report.model = o.model;
  report.quantization = o.quantization.describe();
  const DType kv_dtype = o.kv_dtype == "bf16" || (o.kv_dtype == "auto" && !be->is_host()) ? DType::BF16 : DType::F32;
  if (o.kv_dtype != "auto" && o.kv_dtype != "bf16" && o.kv_dtype != "f32")
    fail("--kv-cache-dtype must be auto, bf16 or f32, got \"{}\"", o.kv_dtype);
  TensorParallelGroup group(*be, load_model_config(o.model), o.tensor_parallel_size, o.threads, o.format,
                           o.quantization);
  Gemma4Model& target = group.rank(0);
  const ModelConfig& c = target.config();
  std::unique_ptr<Gemma4Assistant> drafter;
  if (!o.speculative_config.empty()) {
    SpeculativeConfig spec = parse_speculative_config(o.speculative_config);
    if (spec.model.empty()) fail("bench step: --speculative-config needs a drafter \"model\"");
    drafter = Gemma4Assistant::load(spec.model, target, o.format, spec.quantization);
    drafter->position_convention = spec.draft_position;
    report.drafter = spec.model;
  }
  report.copy_gbps = copy_bandwidth(*be);

  // Prefill `context` tokens per sequence once; every timed step then reads that context.
  const int max_tokens = *std::max_element(o.tokens.begin(), o.tokens.end());
  const int32_t block = 16, per_seq = (o.context + max_tokens + block) / block + 1;
  const int64_t blocks = static_cast<int64_t>(per_seq) * o.batch;
  KvCache kv(*be, target.rank_config(), {blocks, blocks}, block, kv_dtype);
  std::vector<BlockTables> tables(o.batch);
  ForwardBatch batch;
  for (int s = 0; s < o.batch; ++s) {
    TANDEM_CHECK(kv.reserve(tables[s], 0, o.context + max_tokens));
    for (int i = 0; i < o.context; ++i) batch.add((i * 7919 + 13 * s + 1) % c.vocab_size, i, &tables[s], i == o.context - 1);
  }
  if (o.context > 0) target.run(batch, kv, false);

  Tensor greedy(*be);
  for (int n : o.tokens) {
    if (n < 1) fail("--tokens: {} is not a positive token count", n);
    batch.clear();
    for (int s = 0; s < o.batch; ++s)
      for (int i = 0; i < n; ++i) batch.add((i * 31 + 5 * s + 7) % c.vocab_size, o.context + i, &tables[s], true);
    // Which experts the rows were routed to (measured once, outside the timing).
    std::vector<std::vector<int32_t>> routing;
    target.record_routing(&routing);
    target.run(batch, kv, true);
    target.record_routing(nullptr);
    std::vector<int> experts(c.n_layers, 0);
    for (size_t i = 0; i < routing.size(); ++i)
      experts[i] = static_cast<int>(std::set<int32_t>(routing[i].begin(), routing[i].end()).size());
    StepRow row;
    row.what = "target";
    row.tokens = n;
    // A step as the engine runs it: forward, greedy argmax of every row, one download.
    op_times.clear();
    row.median_ms = median_ms(o.reps, [&] {
      const ForwardOutput out = target.run(batch, kv, true);
      TensorView& ids = greedy.resize(DType::I32, {out.logits.rows()});
      be->argmax_rows(out.logits, nullptr, ids);
      to_host(*be, ids);
    });
    if (o.profile_ops && report.op_profile.empty()) {
      const double runs = o.reps + 1;  // the warm-up run is profiled too
      for (const auto& [op, t] : op_times) report.op_profile.push_back({op, {t.seconds * 1e3 / runs, t.calls / runs}});
      std::sort(report.op_profile.begin(), report.op_profile.end(),
                [](const auto& a, const auto& b) { return a.second.first > b.second.first; });
    }
    row.weight_bytes = static_cast<double>(target.step_weight_bytes(experts));
    row.kv_bytes = kv_read_bytes(target.rank_config(), o.batch, o.context + n, n - 1, kv_dtype);
    double sum = 0;
    for (int e : experts) sum += e;
    row.experts_per_layer = c.moe ? sum / c.n_layers : 0;
    report.rows.push_back(row);
  }

  if (drafter) {
    const ModelConfig& dc = drafter->config();
    std::vector<AssistantRow> rows;
    for (int s = 0; s < o.batch; ++s) rows.push_back({o.context, &tables[s]});
    Tensor tokens(*be), state(*be), spare(*be), drafts(*be);
    std::vector<int32_t> ids(o.batch, 17);
    upload_to(*be, ids.data(), tokens.resize(DType::I32, {o.batch}));
    TensorView& h = state.resize(DType::BF16, {o.batch, dc.backbone_hidden * 2});
    be->fill_dummy(h, 7, 0.0f, 1.0f);  // any finite state: bf16 noise read as f32 pairs is not used
    state.resize(DType::F32, {o.batch, dc.backbone_hidden});
    spare.resize(DType::F32, {o.batch, dc.backbone_hidden});
    drafts.resize(DType::I32, {1, o.batch});
    StepRow row;
    row.what = "drafter";
    row.tokens = 1;
    // A round of one drafter step as the engine runs it (its metadata upload included) and the
    // download of its drafts.
    row.median_ms = median_ms(o.reps, [&] {
      drafter->begin_round(rows, kv);
      drafter->draft(tokens, state.view(), spare.view(), drafts.view());
      to_host(*be, drafts);
    });
    row.weight_bytes = static_cast<double>(drafter->step_weight_bytes());
    // Its layers read the target's last sliding and full layers' KV (rank 0's KV heads).
    row.kv_bytes = kv_read_bytes(shard_config(dc, o.tensor_parallel_size), o.batch, o.context, 0, kv_dtype);
    report.rows.push_back(row);
  }
  return report;
}

nlohmann::json StepReport::to_json() const {
  nlohmann::json j{{"backend", backend},
                   {"model", model},
                   {"drafter", drafter},
                   {"quantization", quantization},
                   {"copy_gbps", copy_gbps}};
  for (const StepRow& r : rows) {
    const double bytes = r.weight_bytes + r.kv_bytes;
    j["steps"].push_back({{"what", r.what},
                          {"tokens", r.tokens},
                          {"median_ms", r.median_ms},
                          {"weight_bytes", r.weight_bytes},
                          {"kv_bytes", r.kv_bytes},
                          {"experts_per_layer", r.experts_per_layer},
                          {"achieved_gbps", bytes / (r.median_ms * 1e-3) / 1e9},
                          {"fraction_of_copy_bandwidth", bytes / (r.median_ms * 1e-3) / 1e9 / copy_gbps}});
  }
  return j;
}

std::string StepReport::to_table() const {
  std::string out = fmt::format("backend {}; copy bandwidth {:.0f} GB/s (read + write)\n", backend, copy_gbps);
  if (quantization != "none") out += fmt::format("quantized at load: {}\n", quantization);
  if (!op_profile.empty()) {
    double total = 0;
    for (const auto& [op, t] : op_profile) total += t.first;
    out += fmt::format("per-op wall time of one step of the first setting, each op waited for ({:.3f} ms in all):\n", total);
    out += "| op | ms per step | calls per step | share |\n|---|---:|---:|---:|\n";
    for (const auto& [op, t] : op_profile)
      out += fmt::format("| {} | {:.3f} | {:.0f} | {:.1f}% |\n", op, t.first, t.second, 100.0 * t.first / total);
  }
  out += "| step | tokens/seq | median ms | vs decode | experts/layer | weights GB | KV GB | roofline ms | of copy bw |\n";
  out += "|---|---:|---:|---:|---:|---:|---:|---:|---:|\n";
  double decode_ms = 0;
  for (const StepRow& r : rows)
    if (r.what == "target" && r.tokens == 1) decode_ms = r.median_ms;
  for (const StepRow& r : rows) {
    const double bytes = r.weight_bytes + r.kv_bytes, roofline_ms = bytes / (copy_gbps * 1e9) * 1e3;
    out += fmt::format("| {} | {} | {:.3f} | {} | {} | {:.3f} | {:.4f} | {:.3f} | {:.0f}% |\n", r.what, r.tokens,
                       r.median_ms, decode_ms > 0 ? fmt::format("{:.2f}x", r.median_ms / decode_ms) : "-",
                       r.experts_per_layer > 0 ? fmt::format("{:.1f}", r.experts_per_layer) : "-",
                       r.weight_bytes / 1e9, r.kv_bytes / 1e9, roofline_ms, 100.0 * roofline_ms / r.median_ms);
  }
  return out;
}

}  // namespace tandem::bench
