// The speculative-decoding sweep: for each k, `warmup` unmeasured requests, then `iterations`
// measured ones (the same prompt, greedy by default, ignore_eos so every request generates
// max_tokens), with the speculative counters read before and after the measured ones.
// In-process (one engine, per-request k) or against an OpenAI-compatible HTTP endpoint.
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "bench/progress.h"
#include "bench/report.h"
#include "model/online_quant.h"

namespace tandem::bench {

struct SweepOptions {
  std::vector<int> ks = {0, 1, 2, 3};
  std::vector<std::string> labels;  // empty, or one per k (default: setting_label(k))
  int iterations = 5;
  int warmup = 1;
  int max_tokens = 200;
  float temperature = 0.0f;
  int64_t seed = 42;  // < 0: none
  bool ignore_eos = true;
  bool interleave = false;  // round-robin the settings per iteration instead of one setting after another
};

struct InProcessTarget {
  std::string model_dir;
  std::string draft_dir;   // needed when some k > 0 (unless method is ngram)
  std::string method;      // "" (draft_model, upgraded to mtp for an assistant drafter), mtp, draft_model, ngram
  int threads = 0;
  std::string device = "auto";  // cpu, cuda, cuda:N or auto
  bool enforce_eager = false;   // no CUDA graphs
  OnlineQuant quantization;     // --quantization of the target
  std::vector<int32_t> prompt_ids;
};

// One model load, one engine with k = max(ks); each request carries its own k.
std::vector<SettingResult> run_inprocess_sweep(const SweepOptions& options, const InProcessTarget& target,
                                               Progress& progress, nlohmann::json* meta = nullptr);

struct EndpointTarget {
  std::string url;    // http://HOST:PORT (a trailing /v1 is accepted)
  std::string model;  // the "model" field of requests
  std::string api_key;
  nlohmann::json prompt;       // a string or an array of token ids
  bool per_request_k = true;   // send {"speculative": {"num_speculative_tokens": k}}
  bool send_ignore_eos = true;
  double timeout_seconds = 600;
};

// Splits "http://host:port[/v1]" into the client base ("http://host:port") and path prefix.
struct EndpointUrl {
  std::string base;    // scheme://host:port
  std::string prefix;  // "" or e.g. "/v1" stripped; requests go to base + "/v1/..."
};
EndpointUrl parse_endpoint_url(const std::string& url);

// Reads the vLLM speculative counters (and tandem's draft/verify seconds when present) from a
// /metrics text. Counters that are absent read as 0, times as NaN; positions are 0-based labels.
SpecCounters spec_counters_from_metrics(const std::string& metrics_text);

std::vector<SettingResult> run_endpoint_sweep(const SweepOptions& options, const EndpointTarget& target,
                                              Progress& progress, nlohmann::json* meta = nullptr);

}  // namespace tandem::bench
