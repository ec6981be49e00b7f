#include "server/metrics.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

namespace tandem::server {

void Histogram::observe(double v) {
  size_t i = std::lower_bound(bounds_.begin(), bounds_.end(), v) - bounds_.begin();
  counts_[i] += 1;
  sum_ += v;
  count_ += 1;
}

std::string Exposition::format_value(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (v == std::floor(v) && std::fabs(v) < 1e15) return fmt::format("{}", static_cast<int64_t>(v));
  return fmt::format("{}", v);
}

std::string Exposition::format_labels(const Labels& labels) {
  if (labels.empty()) return {};
  std::string s = "{";
  for (size_t i = 0; i < labels.size(); ++i) {
    if (i) s += ',';
    s += labels[i].first;
    s += "=\"";
    for (char c : labels[i].second) {
      if (c == '\\') s += "\\\\";
      else if (c == '"') s += "\\\"";
      else if (c == '\n') s += "\\n";
      else s += c;
    }
    s += '"';
  }
  return s + "}";
}

void Exposition::header(const std::string& name, const std::string& help, const char* type) {
  out_ += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
}

void Exposition::counter(const std::string& name, const std::string& help,
                         const std::vector<std::pair<Labels, double>>& samples) {
  header(name, help, "counter");
  for (const auto& [labels, v] : samples) out_ += name + format_labels(labels) + " " + format_value(v) + "\n";
}

void Exposition::gauge(const std::string& name, const std::string& help,
                       const std::vector<std::pair<Labels, double>>& samples) {
  header(name, help, "gauge");
  for (const auto& [labels, v] : samples) out_ += name + format_labels(labels) + " " + format_value(v) + "\n";
}

void Exposition::histogram(const std::string& name, const std::string& help, const Labels& labels,
                           const Histogram& h) {
  header(name, help, "histogram");
  uint64_t cumulative = 0;
  for (size_t i = 0; i <= h.bounds().size(); ++i) {
    cumulative += h.counts()[i];
    Labels l = labels;
    l.emplace_back("le", i < h.bounds().size() ? format_value(h.bounds()[i]) : "+Inf");
    out_ += name + "_bucket" + format_labels(l) + " " + format_value(static_cast<double>(cumulative)) + "\n";
  }
  out_ += name + "_sum" + format_labels(labels) + " " + format_value(h.sum()) + "\n";
  out_ += name + "_count" + format_labels(labels) + " " + format_value(static_cast<double>(h.count())) + "\n";
}

void Exposition::histogram(const std::string& name, const std::string& help, const Labels& labels,
                           const StatHistogram& sh) {
  header(name, help, "histogram");
  uint64_t cumulative = 0;
  for (size_t i = 0; i <= sh.bounds.size(); ++i) {
    cumulative += i < sh.counts.size() ? sh.counts[i] : 0;
    Labels l = labels;
    l.emplace_back("le", i < sh.bounds.size() ? format_value(sh.bounds[i]) : "+Inf");
    out_ += name + "_bucket" + format_labels(l) + " " + format_value(static_cast<double>(cumulative)) + "\n";
  }
  out_ += name + "_sum" + format_labels(labels) + " " + format_value(sh.sum) + "\n";
  out_ += name + "_count" + format_labels(labels) + " " + format_value(static_cast<double>(sh.count)) + "\n";
}

namespace {
// vLLM's build_1_2_5_buckets: 1, 2, 5, 10, 20, 50, ... up to `max`.
std::vector<double> buckets_1_2_5(double max) {
  std::vector<double> b;
  for (double e = 1; b.empty() || b.back() < max; e *= 10)
    for (double m : {1.0, 2.0, 5.0})
      if (m * e <= max) b.push_back(m * e);
      else return b;
  return b;
}
}  // namespace

ServerMetrics::ServerMetrics()
    : ttft_({0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
             10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0}),
      itl_({0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
            20.0, 40.0, 80.0}),
      tpot_(itl_.bounds()),
      e2e_({0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
            240.0, 480.0, 960.0, 1920.0, 7680.0}),
      queue_(e2e_.bounds()), prefill_(e2e_.bounds()), decode_(e2e_.bounds()), inference_(e2e_.bounds()),
      prompt_tokens_(buckets_1_2_5(8192)), generation_tokens_(buckets_1_2_5(8192)) {
  for (const char* r : {"stop", "length", "abort"}) finished_[r] = 0;
}

void ServerMetrics::observe_ttft(double s) {
  std::lock_guard<std::mutex> lock(mutex_);
  ttft_.observe(s);
}

void ServerMetrics::observe_itl(double s) {
  std::lock_guard<std::mutex> lock(mutex_);
  itl_.observe(s);
}

void ServerMetrics::observe_finished(const std::string& reason, double e2e, double tpot, int completion_tokens) {
  std::lock_guard<std::mutex> lock(mutex_);
  finished_[reason] += 1;
  e2e_.observe(e2e);
  if (completion_tokens > 1) tpot_.observe(tpot);
}

void ServerMetrics::observe_request(double queue, double prefill, double decode, double inference,
                                    int prompt_tokens, int generation_tokens) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (queue >= 0) queue_.observe(queue);
  if (prefill >= 0) prefill_.observe(prefill);
  if (decode >= 0) decode_.observe(decode);
  if (inference >= 0) inference_.observe(inference);
  prompt_tokens_.observe(prompt_tokens);
  generation_tokens_.observe(generation_tokens);
}

void ServerMetrics::set_max_model_len(int max_model_len) {
  std::lock_guard<std::mutex> lock(mutex_);
  prompt_tokens_ = Histogram(buckets_1_2_5(std::max(max_model_len, 1)));
  generation_tokens_ = Histogram(buckets_1_2_5(std::max(max_model_len, 1)));
}

std::string ServerMetrics::render(const EngineStats& st, const std::string& model_name, int k) const {
  const Labels m = {{"model_name", model_name}};
  auto one = [&](double v) { return std::vector<std::pair<Labels, double>>{{m, v}}; };
  Exposition e;
  e.gauge("vllm:num_requests_running", "Number of requests in model execution batches.", one(st.num_running));
  e.gauge("vllm:num_requests_waiting", "Number of requests waiting to be processed.", one(st.num_waiting));
  e.gauge("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", one(st.kv_usage));
  e.gauge("vllm:gpu_cache_usage_perc", "KV-cache usage (vLLM V0 name; same value as vllm:kv_cache_usage_perc).",
          one(st.kv_usage));
  e.counter("vllm:num_preemptions_total", "Cumulative number of preemptions from the engine.",
            one(double(st.num_preemptions)));
  e.counter("vllm:prompt_tokens_total", "Number of prefill tokens processed.", one(double(st.prompt_tokens)));
  e.counter("vllm:generation_tokens_total", "Number of generation tokens processed.",
            one(double(st.generation_tokens)));
  e.counter("vllm:prefix_cache_queries_total",
            "Prefix cache queries, in terms of number of queried tokens.", one(double(st.prefix_cache_queries)));
  e.counter("vllm:prefix_cache_hits_total", "Prefix cache hits, in terms of number of cached tokens.",
            one(double(st.prefix_cache_hits)));

  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<std::pair<Labels, double>> finished;
  for (const auto& [reason, n] : finished_) {
    Labels l = m;
    l.emplace_back("finished_reason", reason);
    finished.emplace_back(l, double(n));
  }
  e.counter("vllm:request_success_total", "Count of successfully processed requests.", finished);

  e.counter("vllm:spec_decode_num_drafts_total", "Number of spec decoding drafts.", one(double(st.spec.num_drafts)));
  e.counter("vllm:spec_decode_num_draft_tokens_total", "Number of draft tokens.",
            one(double(st.spec.num_draft_tokens)));
  e.counter("vllm:spec_decode_num_accepted_tokens_total", "Number of accepted tokens.",
            one(double(st.spec.num_accepted_tokens)));
  std::vector<std::pair<Labels, double>> per_pos;
  size_t positions = std::max(st.spec.accepted_per_position.size(), static_cast<size_t>(std::max(k, 0)));
  for (size_t i = 0; i < positions; ++i) {
    Labels l = m;
    l.emplace_back("position", std::to_string(i));
    double v = i < st.spec.accepted_per_position.size() ? double(st.spec.accepted_per_position[i]) : 0.0;
    per_pos.emplace_back(l, v);
  }
  e.counter("vllm:spec_decode_num_accepted_tokens_per_pos_total", "Accepted tokens per draft position.",
            per_pos);
  e.counter("tandem:spec_decode_draft_seconds_total", "Seconds spent drafting (proposer).",
            one(st.spec.draft_seconds));
  e.counter("tandem:spec_decode_verify_seconds_total", "Seconds spent in target steps that verified drafts.",
            one(st.spec.verify_seconds));

  e.histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.", m, ttft_);
  e.histogram("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", m, itl_);
  e.histogram("vllm:time_per_output_token_seconds",
              "Histogram of time per output token in seconds (per request mean).", m, tpot_);
  e.histogram("vllm:e2e_request_latency_seconds", "Histogram of end to end request latency in seconds.", m, e2e_);
  e.histogram("vllm:request_queue_time_seconds", "Histogram of time spent in WAITING phase for request.", m, queue_);
  e.histogram("vllm:request_inference_time_seconds", "Histogram of time spent in RUNNING phase for request.", m,
              inference_);
  e.histogram("vllm:request_prefill_time_seconds", "Histogram of time spent in PREFILL phase for request.", m,
              prefill_);
  e.histogram("vllm:request_decode_time_seconds", "Histogram of time spent in DECODE phase for request.", m, decode_);
  e.histogram("vllm:request_prompt_tokens", "Number of prefill tokens processed.", m, prompt_tokens_);
  e.histogram("vllm:request_generation_tokens", "Number of generation tokens processed.", m, generation_tokens_);
  e.histogram("vllm:iteration_tokens_total", "Histogram of number of tokens per engine_step.", m,
              st.iteration_tokens);
  return e.text();
}

}  // namespace tandem::server
