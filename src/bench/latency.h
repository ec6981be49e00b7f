// tandem bench latency: streaming /v1/completions at several concurrency levels against an
// OpenAI-compatible server; TTFT, inter-chunk latency, time per output token and throughput
// percentiles per level. Each level is bounded in time (no request starts after `duration`) and in
// request count; requests in flight at the deadline finish (they are bounded by max_tokens).
#pragma once
#include <nlohmann/json.hpp>

#include <string>
#include <vector>

#include "bench/progress.h"

namespace tandem::bench {

struct LatencyOptions {
  std::string url, model, api_key;
  nlohmann::json prompt;  // a string or an array of token ids
  std::vector<int> concurrency = {1, 4, 16, 64};
  double duration_seconds = 30;
  int max_requests = 1000;  // per level
  int max_tokens = 128;
  float temperature = 0.0f;
  int64_t seed = -1;
  int num_speculative_tokens = -1;  // -1: do not send the per-request field
  bool ignore_eos = true;
  double timeout_seconds = 300;
};

struct Percentiles {
  double p50 = 0, p90 = 0, p99 = 0;
};
Percentiles percentiles(const std::vector<double>& v);

struct LatencyLevel {
  int concurrency = 0;
  int requests = 0, errors = 0;
  std::string first_error;
  double elapsed_seconds = 0;
  long long completion_tokens = 0;
  double throughput_tok_s = 0;    // all completion tokens / elapsed
  double request_rate = 0;        // completed requests / elapsed
  Percentiles ttft_ms;            // request sent -> first chunk with text
  Percentiles itl_ms;             // gaps between successive text chunks (a chunk may carry several tokens)
  Percentiles tpot_ms;            // (e2e - ttft) / (tokens - 1), per request
  Percentiles e2e_ms;             // whole request
  Percentiles request_tok_s;      // tokens / e2e, per request
};

// What one streamed response looked like; parse_sse_completion fills it from the raw SSE body.
struct StreamTrace {
  std::vector<double> chunk_times;  // seconds since the request was sent, for chunks with text
  int completion_tokens = -1;       // from the final usage, when the server sent one
};

// Incremental SSE parser for /v1/completions streams: feed() bytes as they arrive with the time;
// calls on_event for every "data:" payload that is JSON (not "[DONE]").
class SseParser {
 public:
  void feed(const char* data, size_t n, double t, StreamTrace& trace);
  bool done() const { return done_; }
  std::string error;  // an "error" object the server streamed, if any

 private:
  std::string buffer_;
  bool done_ = false;
};

std::vector<LatencyLevel> run_latency(const LatencyOptions& options, Progress& progress);
std::string format_latency_table(const std::vector<LatencyLevel>& levels);
std::string latency_csv(const std::vector<LatencyLevel>& levels);
nlohmann::json latency_json(const LatencyOptions& options, const std::vector<LatencyLevel>& levels);

}  // namespace tandem::bench
