// Prometheus text exposition (format 0.0.4) with vLLM's metric names, so dashboards and sweep
// scripts written for vLLM read tandem unchanged. Engine counters come from Engine::stats();
// latency histograms are measured in the server from output-callback times.
#pragma once
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "engine/engine.h"

namespace tandem::server {

using Labels = std::vector<std::pair<std::string, std::string>>;

class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)), counts_(bounds_.size() + 1) {}
  void observe(double v);
  const std::vector<double>& bounds() const { return bounds_; }
  const std::vector<uint64_t>& counts() const { return counts_; }  // per bucket, last = +Inf
  double sum() const { return sum_; }
  uint64_t count() const { return count_; }

 private:
  std::vector<double> bounds_;
  std::vector<uint64_t> counts_;
  double sum_ = 0;
  uint64_t count_ = 0;
};

// Builds the exposition text one metric family at a time.
class Exposition {
 public:
  void counter(const std::string& name, const std::string& help,
               const std::vector<std::pair<Labels, double>>& samples);
  void gauge(const std::string& name, const std::string& help,
             const std::vector<std::pair<Labels, double>>& samples);
  void histogram(const std::string& name, const std::string& help, const Labels& labels,
                 const Histogram& h);
  void histogram(const std::string& name, const std::string& help, const Labels& labels,
                 const StatHistogram& h);
  const std::string& text() const { return out_; }

  static std::string format_value(double v);
  static std::string format_labels(const Labels& labels);

 private:
  void header(const std::string& name, const std::string& help, const char* type);
  std::string out_;
};

class ServerMetrics {
 public:
  ServerMetrics();
  void observe_ttft(double seconds);
  void observe_itl(double seconds);
  // A finished request (one choice): e2e latency, time per output token and why it ended.
  void observe_finished(const std::string& reason, double e2e_seconds, double tpot_seconds,
                        int completion_tokens);
  // vLLM's per-request phase times (queued → scheduled → first token → last token) and sizes.
  // A negative time is not observed (the phase never happened).
  void observe_request(double queue_seconds, double prefill_seconds, double decode_seconds,
                       double inference_seconds, int prompt_tokens, int generation_tokens);
  // Token-count histogram buckets follow the context length (1, 2, 5, 10, ... ≤ max_model_len).
  void set_max_model_len(int max_model_len);
  std::string render(const EngineStats& stats, const std::string& model_name,
                     int num_speculative_tokens) const;

 private:
  mutable std::mutex mutex_;
  Histogram ttft_, itl_, tpot_, e2e_;
  Histogram queue_, prefill_, decode_, inference_, prompt_tokens_, generation_tokens_;
  std::map<std::string, uint64_t> finished_;
};

}  // namespace tandem::server
