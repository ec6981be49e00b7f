#include "bench/sweep.h"

#include <fmt/format.h>
#include <httplib.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <limits>

#include "backend/backend.h"
#include "bench/prometheus.h"
#include "engine/engine.h"
#include "model/gemma4.h"
#include "spec/speculative_config.h"
#include "util/error.h"

namespace tandem::bench {
namespace {

using Clock = std::chrono::steady_clock;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

void check_options(const SweepOptions& o) {
  if (o.ks.empty()) fail("--num-speculative-tokens: give at least one setting");
  for (int k : o.ks)
    if (k < 0 || k > kMaxSpeculativeTokens)
      fail("--num-speculative-tokens: {} is outside 0..{}", k, kMaxSpeculativeTokens);
  if (!o.labels.empty() && o.labels.size() != o.ks.size())
    fail("--label: give one label per setting ({} labels for {} settings)", o.labels.size(), o.ks.size());
  if (o.iterations < 1) fail("--iterations must be at least 1");
  if (o.warmup < 0) fail("--warmup must be at least 0");
  if (o.max_tokens < 1) fail("--max-tokens must be at least 1");
}

std::string label_of(const SweepOptions& o, size_t i) {
  return o.labels.empty() ? setting_label(o.ks[i]) : o.labels[i];
}

SpecCounters counters_of(const SpecStats& s) {
  SpecCounters c;
  c.num_drafts = static_cast<double>(s.num_drafts);
  c.num_draft_tokens = static_cast<double>(s.num_draft_tokens);
  c.num_accepted_tokens = static_cast<double>(s.num_accepted_tokens);
  for (uint64_t v : s.accepted_per_position) c.accepted_per_position.push_back(static_cast<double>(v));
  c.draft_seconds = s.draft_seconds;
  c.verify_seconds = s.verify_seconds;
  return c;
}

std::string step_text(const std::string& label, bool warm, int i, int n, const Iteration& it) {
  return fmt::format("{} {} {}/{}: {} tokens, {:.1f} tok/s", label, warm ? "warm-up" : "iter", i + 1, n,
                     it.completion_tokens, it.tokens_per_second());
}

// Runs the sweep with `run_one(k) -> Iteration` and `counters() -> SpecCounters` (cumulative).
// Sequential (the report's order): all of a setting's requests, then the next setting, with the
// counters read around its measured requests. Interleaved: warm-ups first, then round-robin over
// the settings per iteration, with the counters read around every measured request, so that a
// drifting machine load affects every setting alike.
template <class RunOne, class Counters>
std::vector<SettingResult> drive(const SweepOptions& o, Progress& progress, RunOne&& run_one, Counters&& counters) {
  std::vector<SettingResult> results(o.ks.size());
  for (size_t s = 0; s < o.ks.size(); ++s) results[s].k = o.ks[s], results[s].label = label_of(o, s);
  if (!o.interleave) {
    for (auto& res : results) {
      for (int w = 0; w < o.warmup; ++w) progress.step(step_text(res.label, true, w, o.warmup, run_one(res.k)));
      const SpecCounters before = counters();
      for (int i = 0; i < o.iterations; ++i) {
        res.iterations.push_back(run_one(res.k));
        progress.step(step_text(res.label, false, i, o.iterations, res.iterations.back()));
      }
      res.spec = counters().minus(before);
    }
    return results;
  }
  for (auto& res : results)
    for (int w = 0; w < o.warmup; ++w) progress.step(step_text(res.label, true, w, o.warmup, run_one(res.k)));
  for (int i = 0; i < o.iterations; ++i) {
    for (auto& res : results) {
      const SpecCounters before = counters();
      res.iterations.push_back(run_one(res.k));
      const SpecCounters d = counters().minus(before);
      progress.step(step_text(res.label, false, i, o.iterations, res.iterations.back()));
      res.spec = i == 0 ? d : res.spec.plus(d);
    }
  }
  return results;
}

}  // namespace

std::vector<SettingResult> run_inprocess_sweep(const SweepOptions& o, const InProcessTarget& t, Progress& progress,
                                               nlohmann::json* meta) {
  check_options(o);
  if (t.prompt_ids.empty()) fail("the prompt is empty");
  const int kmax = *std::max_element(o.ks.begin(), o.ks.end());
  auto backend = make_backend(t.device, t.threads);
  backend->set_recording(!t.enforce_eager);
  auto target = Gemma4Model::load(t.model_dir, *backend, LoadFormat::safetensors, t.quantization);
  std::unique_ptr<Proposer> proposer;
  std::string method = "none";
  if (kmax > 0) {
    SpeculativeConfig spec;
    if (t.method == "ngram") {
      spec.method = "ngram", spec.prompt_lookup_min = 1, spec.prompt_lookup_max = 4;
    } else {
      if (t.draft_dir.empty()) fail("--draft: a drafter directory is needed for k > 0");
      if (!std::filesystem::is_directory(t.draft_dir)) fail("--draft: drafter directory {} does not exist", t.draft_dir);
      spec.method = t.method.empty() ? "draft_model" : t.method;
      spec.model = t.draft_dir;
    }
    spec.num_speculative_tokens = kmax;
    proposer = make_proposer(spec, *target);
    method = spec.method;
  }
  EngineConfig config;
  config.max_num_seqs = 1;
  config.num_speculative_tokens = kmax;
  config.max_model_len = static_cast<int>(t.prompt_ids.size()) + o.max_tokens + 1;
  config.max_num_batched_tokens = std::max(512, config.max_model_len);
  config.kv_cache_bytes = target->config().kv_bytes_per_token(4) * (config.max_model_len + kmax + 64);
  Engine engine(*target, std::move(proposer), config);

  auto run_one = [&](int k) {
    Request r;
    r.prompt = t.prompt_ids;
    r.max_tokens = o.max_tokens;
    r.ignore_eos = o.ignore_eos;
    r.num_speculative_tokens = k;
    r.sampling.temperature = o.temperature;
    if (o.seed >= 0) r.sampling.seed = static_cast<uint64_t>(o.seed);
    Iteration it;
    std::string error;
    Clock::time_point t_end;
    const Clock::time_point t0 = Clock::now();
    engine.submit(std::move(r), [&](const RequestOutput& out) {
      if (out.finished) {
        t_end = Clock::now();
        it.completion_tokens = out.completion_tokens;
        if (out.finish_reason == FinishReason::error) error = out.error;
      }
    });
    engine.run_until_idle();
    if (!error.empty()) fail("request failed: {}", error);
    it.seconds = std::chrono::duration<double>(t_end - t0).count();
    return it;
  };

  auto results = drive(o, progress, run_one, [&] { return counters_of(engine.stats().spec); });
  if (meta) {
    (*meta)["mode"] = "in-process";
    (*meta)["model"] = t.model_dir;
    (*meta)["draft"] = kmax > 0 ? t.draft_dir : "";
    (*meta)["method"] = method;
    (*meta)["backend"] = backend->name();
    (*meta)["prompt_tokens"] = t.prompt_ids.size();
  }
  return results;
}

EndpointUrl parse_endpoint_url(const std::string& url) {
  std::string u = url;
  while (!u.empty() && u.back() == '/') u.pop_back();
  if (u.rfind("http://", 0) != 0 && u.rfind("https://", 0) != 0) u = "http://" + u;
  const size_t scheme_end = u.find("://") + 3;
  const size_t slash = u.find('/', scheme_end);
  EndpointUrl e;
  e.base = slash == std::string::npos ? u : u.substr(0, slash);
  std::string path = slash == std::string::npos ? "" : u.substr(slash);
  if (path.size() >= 3 && path.compare(path.size() - 3, 3, "/v1") == 0) path.resize(path.size() - 3);
  e.prefix = path;
  if (e.base.size() <= scheme_end) fail("--endpoint {}: no host", url);
  return e;
}

SpecCounters spec_counters_from_metrics(const std::string& text) {
  const PromSnapshot m = PromSnapshot::parse(text);
  SpecCounters c;
  c.num_drafts = m.sum("vllm:spec_decode_num_drafts_total");
  c.num_draft_tokens = m.sum("vllm:spec_decode_num_draft_tokens_total");
  c.num_accepted_tokens = m.sum("vllm:spec_decode_num_accepted_tokens_total");
  for (const auto& [pos, v] : m.sum_by("vllm:spec_decode_num_accepted_tokens_per_pos_total", "position")) {
    int p = -1;
    try {
      p = std::stoi(pos);
    } catch (const std::exception&) {
      continue;
    }
    if (p < 0 || p > 1024) continue;
    if (c.accepted_per_position.size() <= static_cast<size_t>(p)) c.accepted_per_position.resize(p + 1, 0.0);
    c.accepted_per_position[p] += v;
  }
  c.draft_seconds = m.has("tandem:spec_decode_draft_seconds_total") ? m.sum("tandem:spec_decode_draft_seconds_total") : kNaN;
  c.verify_seconds =
      m.has("tandem:spec_decode_verify_seconds_total") ? m.sum("tandem:spec_decode_verify_seconds_total") : kNaN;
  return c;
}

std::vector<SettingResult> run_endpoint_sweep(const SweepOptions& o, const EndpointTarget& t, Progress& progress,
                                              nlohmann::json* meta) {
  check_options(o);
  const EndpointUrl url = parse_endpoint_url(t.url);
  httplib::Client cli(url.base);
  const time_t secs = static_cast<time_t>(t.timeout_seconds);
  cli.set_read_timeout(secs, 0);
  cli.set_write_timeout(secs, 0);
  cli.set_connection_timeout(10, 0);
  httplib::Headers headers;
  if (!t.api_key.empty()) headers.emplace("Authorization", "Bearer " + t.api_key);

  bool metrics_ok = true;
  auto scrape = [&]() -> SpecCounters {
    auto res = cli.Get((url.prefix + "/metrics").c_str(), headers);
    if (!res || res->status != 200) {
      if (metrics_ok)
        progress.note(fmt::format("warning: {}/metrics is not readable ({}): no acceptance figures", url.base,
                                  res ? fmt::format("HTTP {}", res->status) : httplib::to_string(res.error())));
      metrics_ok = false;
      SpecCounters none;
      none.num_drafts = none.num_draft_tokens = none.num_accepted_tokens = kNaN;
      none.draft_seconds = none.verify_seconds = kNaN;
      return none;
    }
    return spec_counters_from_metrics(res->body);
  };

  auto run_one = [&](int k) {
    nlohmann::json body = {{"model", t.model}, {"prompt", t.prompt}, {"max_tokens", o.max_tokens},
                           {"temperature", o.temperature}, {"stream", false}};
    if (o.seed >= 0) body["seed"] = o.seed;
    if (t.send_ignore_eos && o.ignore_eos) body["ignore_eos"] = true;
    if (t.per_request_k) body["speculative"] = {{"num_speculative_tokens", k}};
    const Clock::time_point t0 = Clock::now();
    auto res = cli.Post((url.prefix + "/v1/completions").c_str(), headers, body.dump(), "application/json");
    const double seconds = std::chrono::duration<double>(Clock::now() - t0).count();
    if (!res) fail("POST {}/v1/completions failed: {}", url.base, httplib::to_string(res.error()));
    if (res->status != 200)
      fail("POST {}/v1/completions: HTTP {}: {}", url.base, res->status, res->body.substr(0, 500));
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(res->body);
    } catch (const std::exception&) {
      fail("POST {}/v1/completions: the response is not JSON: {}", url.base, res->body.substr(0, 200));
    }
    if (!j.contains("usage") || !j["usage"].contains("completion_tokens") ||
        !j["usage"]["completion_tokens"].is_number_integer())
      fail("POST {}/v1/completions: the response has no usage.completion_tokens", url.base);
    Iteration it;
    it.completion_tokens = j["usage"]["completion_tokens"].get<int>();
    it.seconds = seconds;
    return it;
  };

  auto results = drive(o, progress, run_one, scrape);
  if (meta) {
    (*meta)["mode"] = "endpoint";
    (*meta)["endpoint"] = url.base + url.prefix;
    (*meta)["model"] = t.model;
    (*meta)["per_request_k"] = t.per_request_k;
    (*meta)["metrics"] = metrics_ok;
  }
  return results;
}

}  // namespace tandem::bench
