#include "bench/latency.h"

#include <fmt/format.h>
#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <mutex>
#include <thread>

#include "bench/stats.h"
#include "bench/sweep.h"
#include "util/error.h"

namespace tandem::bench {
namespace {

using Clock = std::chrono::steady_clock;

struct RequestSample {
  bool ok = false;
  std::string error;
  double ttft = 0, e2e = 0;
  int tokens = 0;
  std::vector<double> chunk_times;
};

}  // namespace

Percentiles percentiles(const std::vector<double>& v) {
  return {percentile(v, 50), percentile(v, 90), percentile(v, 99)};
}

void SseParser::feed(const char* data, size_t n, double t, StreamTrace& trace) {
  buffer_.append(data, n);
  for (;;) {
    const size_t nl = buffer_.find('\n');
    if (nl == std::string::npos) break;
    std::string line = buffer_.substr(0, nl);
    buffer_.erase(0, nl + 1);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.rfind("data:", 0) != 0) continue;  // blank separators, comments, event:/id: fields
    std::string payload = line.substr(5);
    if (!payload.empty() && payload.front() == ' ') payload.erase(0, 1);
    if (payload == "[DONE]") {
      done_ = true;
      continue;
    }
    nlohmann::json j = nlohmann::json::parse(payload, nullptr, false);
    if (j.is_discarded() || !j.is_object()) continue;
    if (j.contains("error")) {
      error = j["error"].is_object() && j["error"].contains("message") ? j["error"]["message"].dump() : j["error"].dump();
      continue;
    }
    if (j.contains("choices") && j["choices"].is_array()) {
      for (const auto& c : j["choices"]) {
        if (c.contains("text") && c["text"].is_string() && !c["text"].get<std::string>().empty()) {
          trace.chunk_times.push_back(t);
          break;
        }
      }
    }
    if (j.contains("usage") && j["usage"].is_object() && j["usage"].contains("completion_tokens") &&
        j["usage"]["completion_tokens"].is_number_integer())
      trace.completion_tokens = j["usage"]["completion_tokens"].get<int>();
  }
}

std::vector<LatencyLevel> run_latency(const LatencyOptions& o, Progress& progress) {
  if (o.concurrency.empty()) fail("--concurrency: give at least one level");
  for (int c : o.concurrency)
    if (c < 1 || c > 4096) fail("--concurrency: {} is outside 1..4096", c);
  if (o.duration_seconds <= 0) fail("--duration must be positive");
  if (o.max_requests < 1) fail("--max-requests must be at least 1");
  const EndpointUrl url = parse_endpoint_url(o.url);
  httplib::Headers headers;
  if (!o.api_key.empty()) headers.emplace("Authorization", "Bearer " + o.api_key);
  nlohmann::json body = {{"model", o.model},
                         {"prompt", o.prompt},
                         {"max_tokens", o.max_tokens},
                         {"temperature", o.temperature},
                         {"stream", true},
                         {"stream_options", {{"include_usage", true}}}};
  if (o.seed >= 0) body["seed"] = o.seed;
  if (o.ignore_eos) body["ignore_eos"] = true;
  if (o.num_speculative_tokens >= 0) body["speculative"] = {{"num_speculative_tokens", o.num_speculative_tokens}};
  const std::string body_text = body.dump();
  const time_t timeout = static_cast<time_t>(o.timeout_seconds);

  std::vector<LatencyLevel> levels;
  for (int conc : o.concurrency) {
    std::mutex mu;
    std::vector<RequestSample> samples;
    std::atomic<int> started{0};
    const Clock::time_point start = Clock::now();
    const Clock::time_point deadline = start + std::chrono::duration_cast<Clock::duration>(
                                                   std::chrono::duration<double>(o.duration_seconds));
    std::atomic<Clock::rep> last_end{start.time_since_epoch().count()};
    auto worker = [&] {
      httplib::Client cli(url.base);
      cli.set_read_timeout(timeout, 0);
      cli.set_write_timeout(timeout, 0);
      cli.set_connection_timeout(10, 0);
      cli.set_keep_alive(true);
      while (Clock::now() < deadline && started.fetch_add(1) < o.max_requests) {
        RequestSample s;
        StreamTrace trace;
        SseParser parser;
        std::string raw;
        httplib::Request req;
        req.method = "POST";
        req.path = url.prefix + "/v1/completions";
        req.headers = headers;
        req.headers.emplace("Content-Type", "application/json");
        req.headers.emplace("Accept", "text/event-stream");
        req.body = body_text;
        const Clock::time_point t0 = Clock::now();
        req.content_receiver = [&](const char* d, size_t n, uint64_t, uint64_t) {
          const double t = std::chrono::duration<double>(Clock::now() - t0).count();
          if (raw.size() < 512) raw.append(d, std::min<size_t>(n, 512 - raw.size()));
          parser.feed(d, n, t, trace);
          return true;
        };
        auto res = cli.send(req);
        const Clock::time_point t1 = Clock::now();
        s.e2e = std::chrono::duration<double>(t1 - t0).count();
        if (!res) {
          s.error = httplib::to_string(res.error());
        } else if (res->status != 200) {
          s.error = fmt::format("HTTP {}: {}", res->status, raw);
        } else if (!parser.error.empty()) {
          s.error = parser.error;
        } else if (trace.chunk_times.empty()) {
          s.error = "the stream carried no text";
        } else {
          s.ok = true;
          s.ttft = trace.chunk_times.front();
          s.tokens = trace.completion_tokens >= 0 ? trace.completion_tokens : static_cast<int>(trace.chunk_times.size());
          s.chunk_times = std::move(trace.chunk_times);
        }
        Clock::rep end = t1.time_since_epoch().count(), prev = last_end.load();
        while (end > prev && !last_end.compare_exchange_weak(prev, end)) {
        }
        std::lock_guard<std::mutex> lock(mu);
        const std::string what =
            s.ok ? fmt::format("c={} request {}: ttft {:.0f} ms, {} tokens", conc, samples.size() + 1, s.ttft * 1e3, s.tokens)
                 : fmt::format("c={} request {}: error {}", conc, samples.size() + 1, s.error);
        samples.push_back(std::move(s));
        progress.step(what);
      }
    };
    std::vector<std::thread> threads;
    for (int i = 0; i < conc; ++i) threads.emplace_back(worker);
    for (auto& th : threads) th.join();

    LatencyLevel L;
    L.concurrency = conc;
    L.elapsed_seconds = std::chrono::duration<double>(Clock::time_point(Clock::duration(last_end.load())) - start).count();
    std::vector<double> ttft, itl, tpot, e2e, rtps;
    for (const auto& s : samples) {
      if (!s.ok) {
        ++L.errors;
        if (L.first_error.empty()) L.first_error = s.error;
        continue;
      }
      ++L.requests;
      L.completion_tokens += s.tokens;
      ttft.push_back(s.ttft * 1e3);
      e2e.push_back(s.e2e * 1e3);
      for (size_t i = 1; i < s.chunk_times.size(); ++i) itl.push_back((s.chunk_times[i] - s.chunk_times[i - 1]) * 1e3);
      if (s.tokens > 1) tpot.push_back((s.e2e - s.ttft) * 1e3 / (s.tokens - 1));
      if (s.e2e > 0) rtps.push_back(s.tokens / s.e2e);
    }
    if (L.elapsed_seconds > 0) {
      L.throughput_tok_s = L.completion_tokens / L.elapsed_seconds;
      L.request_rate = L.requests / L.elapsed_seconds;
    }
    L.ttft_ms = percentiles(ttft), L.itl_ms = percentiles(itl), L.tpot_ms = percentiles(tpot);
    L.e2e_ms = percentiles(e2e), L.request_tok_s = percentiles(rtps);
    progress.note(fmt::format("concurrency {}: {} requests ({} errors) in {:.1f} s, {:.1f} tok/s", conc, L.requests,
                              L.errors, L.elapsed_seconds, L.throughput_tok_s));
    if (L.errors) progress.note(fmt::format("  first error: {}", L.first_error));
    levels.push_back(std::move(L));
  }
  return levels;
}

std::string format_latency_table(const std::vector<LatencyLevel>& levels) {
  auto p = [](const Percentiles& x, int digits) {
    return fmt::format("{:.{}f}/{:.{}f}/{:.{}f}", x.p50, digits, x.p90, digits, x.p99, digits);
  };
  std::vector<std::vector<std::string>> rows = {{"conc", "requests", "errors", "tok/s", "req/s",
                                                 "TTFT ms p50/p90/p99", "ITL ms p50/p90/p99", "TPOT ms p50/p90/p99",
                                                 "req tok/s p50/p90/p99"}};
  for (const auto& L : levels)
    rows.push_back({std::to_string(L.concurrency), std::to_string(L.requests), std::to_string(L.errors),
                    fmt::format("{:.1f}", L.throughput_tok_s), fmt::format("{:.2f}", L.request_rate), p(L.ttft_ms, 1),
                    p(L.itl_ms, 2), p(L.tpot_ms, 2), p(L.request_tok_s, 1)});
  std::vector<size_t> w(rows[0].size(), 0);
  for (const auto& r : rows)
    for (size_t c = 0; c < r.size(); ++c) w[c] = std::max(w[c], r[c].size());
  std::string out;
  for (const auto& r : rows) {
    for (size_t c = 0; c < r.size(); ++c) out += (c ? "  " : "") + fmt::format("{:>{}}", r[c], w[c]);
    out += "\n";
  }
  return out;
}

std::string latency_csv(const std::vector<LatencyLevel>& levels) {
  std::string out =
      "concurrency,requests,errors,elapsed_seconds,completion_tokens,throughput_tok_s,request_rate,"
      "ttft_ms_p50,ttft_ms_p90,ttft_ms_p99,itl_ms_p50,itl_ms_p90,itl_ms_p99,tpot_ms_p50,tpot_ms_p90,tpot_ms_p99,"
      "e2e_ms_p50,e2e_ms_p90,e2e_ms_p99,request_tok_s_p50,request_tok_s_p90,request_tok_s_p99\n";
  auto p = [](const Percentiles& x) { return fmt::format("{},{},{}", x.p50, x.p90, x.p99); };
  for (const auto& L : levels)
    out += fmt::format("{},{},{},{},{},{},{},{},{},{},{},{}\n", L.concurrency, L.requests, L.errors, L.elapsed_seconds,
                       L.completion_tokens, L.throughput_tok_s, L.request_rate, p(L.ttft_ms), p(L.itl_ms),
                       p(L.tpot_ms), p(L.e2e_ms), p(L.request_tok_s));
  // NaN percentiles (no samples) print as "nan"; make them empty cells.
  std::string clean;
  for (size_t i = 0; i < out.size();) {
    if (out.compare(i, 3, "nan") == 0) i += 3;
    else clean += out[i++];
  }
  return clean;
}

nlohmann::json latency_json(const LatencyOptions& o, const std::vector<LatencyLevel>& levels) {
  auto p = [](const Percentiles& x) {
    auto n = [](double v) -> nlohmann::json { return std::isnan(v) ? nlohmann::json(nullptr) : nlohmann::json(v); };
    return nlohmann::json{{"p50", n(x.p50)}, {"p90", n(x.p90)}, {"p99", n(x.p99)}};
  };
  nlohmann::json arr = nlohmann::json::array();
  for (const auto& L : levels)
    arr.push_back({{"concurrency", L.concurrency}, {"requests", L.requests}, {"errors", L.errors},
                   {"first_error", L.first_error}, {"elapsed_seconds", L.elapsed_seconds},
                   {"completion_tokens", L.completion_tokens}, {"throughput_tok_s", L.throughput_tok_s},
                   {"request_rate", L.request_rate}, {"ttft_ms", p(L.ttft_ms)}, {"itl_ms", p(L.itl_ms)},
                   {"tpot_ms", p(L.tpot_ms)}, {"e2e_ms", p(L.e2e_ms)}, {"request_tok_s", p(L.request_tok_s)}});
  return {{"meta",
           {{"endpoint", o.url}, {"model", o.model}, {"duration_seconds", o.duration_seconds},
            {"max_requests", o.max_requests}, {"max_tokens", o.max_tokens}, {"temperature", o.temperature},
            {"num_speculative_tokens", o.num_speculative_tokens}}},
          {"levels", arr}};
}

}  // namespace tandem::bench
