// Endpoint sweep and latency benchmark against a fake OpenAI-compatible server on loopback: the
// request bodies, counter deltas from /metrics, and streaming measurements.
#include <gtest/gtest.h>
#include <httplib.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <mutex>
#include <thread>

#include "bench/latency.h"
#include "bench/sweep.h"
#include "util/error.h"

namespace tandem::bench {
namespace {

using nlohmann::json;

// Every completion with k > 0 adds 4 drafts of k tokens; position i accepts max(0, 3 - i) of them.
class FakeServer {
 public:
  explicit FakeServer(bool with_metrics = true, int delay_ms = 0) : delay_ms_(delay_ms) {
    server_.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) {
      json body = json::parse(req.body);
      int k = 0;
      if (body.contains("speculative")) k = body["speculative"]["num_speculative_tokens"].get<int>();
      const int n = body.value("max_tokens", 16);
      {
        std::lock_guard<std::mutex> lock(mu_);
        bodies_.push_back(body);
        if (k > 0) {
          drafts_ += 4;
          draft_tokens_ += 4 * k;
          if (per_pos_.size() < static_cast<size_t>(k)) per_pos_.resize(k, 0);
          for (int i = 0; i < k; ++i) per_pos_[i] += std::max(0, 3 - i), accepted_ += std::max(0, 3 - i);
        }
      }
      if (delay_ms_) std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms_));
      if (!body.value("stream", false)) {
        res.set_content(json{{"id", "c"},
                             {"object", "text_completion"},
                             {"choices", {{{"index", 0}, {"text", std::string(n, 'x')}, {"finish_reason", "length"}}}},
                             {"usage", {{"prompt_tokens", 3}, {"completion_tokens", n}, {"total_tokens", n + 3}}}}
                            .dump(),
                        "application/json");
        return;
      }
      res.set_chunked_content_provider("text/event-stream", [n](size_t, httplib::DataSink& sink) {
        for (int i = 0; i < n; ++i) {
          const std::string ev =
              "data: " + json{{"choices", {{{"index", 0}, {"text", "y"}, {"finish_reason", nullptr}}}}}.dump() + "\n\n";
          sink.write(ev.data(), ev.size());
        }
        const std::string usage =
            "data: " + json{{"choices", json::array()}, {"usage", {{"completion_tokens", n}}}}.dump() + "\n\ndata: [DONE]\n\n";
        sink.write(usage.data(), usage.size());
        sink.done();
        return true;
      });
    });
    if (with_metrics)
      server_.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
        std::lock_guard<std::mutex> lock(mu_);
        std::string m = "# TYPE vllm:spec_decode_num_drafts_total counter\n";
        for (int e = 0; e < 2; ++e) {  // a second, idle label set must not change the sums
          const double f = e == 0 ? 1 : 0;
          m += "vllm:spec_decode_num_drafts_total{engine=\"" + std::to_string(e) + "\"} " + std::to_string(f * drafts_) + "\n";
          m += "vllm:spec_decode_num_draft_tokens_total{engine=\"" + std::to_string(e) + "\"} " +
               std::to_string(f * draft_tokens_) + "\n";
          m += "vllm:spec_decode_num_accepted_tokens_total{engine=\"" + std::to_string(e) + "\"} " +
               std::to_string(f * accepted_) + "\n";
          for (size_t i = 0; i < per_pos_.size(); ++i)
            m += "vllm:spec_decode_num_accepted_tokens_per_pos_total{engine=\"" + std::to_string(e) + "\",position=\"" +
                 std::to_string(i) + "\"} " + std::to_string(f * per_pos_[i]) + "\n";
        }
        res.set_content(m, "text/plain; version=0.0.4");
      });
    server_.Get("/v1/models", [](const httplib::Request&, httplib::Response& res) {
      res.set_content(R"({"object":"list","data":[{"id":"fake-model","object":"model"}]})", "application/json");
    });
    port_ = server_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    while (!server_.is_running()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ~FakeServer() {
    server_.stop();
    thread_.join();
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  std::vector<json> bodies() {
    std::lock_guard<std::mutex> lock(mu_);
    return bodies_;
  }

 private:
  httplib::Server server_;
  int port_ = 0;
  int delay_ms_ = 0;
  std::thread thread_;
  std::mutex mu_;
  std::vector<json> bodies_;
  long drafts_ = 0, draft_tokens_ = 0, accepted_ = 0;
  std::vector<long> per_pos_;
};

TEST(EndpointSweep, CountersFromMetricDeltasAndRequestBodies) {
  FakeServer server;
  SweepOptions o;
  o.ks = {0, 1, 2, 3};
  o.iterations = 2;
  o.warmup = 1;
  o.max_tokens = 16;
  EndpointTarget t;
  t.url = server.url() + "/v1";
  t.model = "fake-model";
  t.prompt = "def f():";
  Progress progress(0, false, true);
  json meta;
  const auto results = run_endpoint_sweep(o, t, progress, &meta);
  EXPECT_EQ(meta["metrics"], true);
  ASSERT_EQ(results.size(), 4u);
  const auto bodies = server.bodies();
  ASSERT_EQ(bodies.size(), 12u);  // (1 warm-up + 2) × 4
  for (size_t i = 0; i < bodies.size(); ++i) {
    const json& b = bodies[i];
    EXPECT_EQ(b["model"], "fake-model");
    EXPECT_EQ(b["prompt"], "def f():");
    EXPECT_EQ(b["max_tokens"], 16);
    EXPECT_EQ(b["temperature"], 0.0);
    EXPECT_EQ(b["seed"], 42);
    EXPECT_EQ(b["ignore_eos"], true);
    EXPECT_EQ(b["stream"], false);
    EXPECT_EQ(b["speculative"]["num_speculative_tokens"], o.ks[i / 3]);
  }
  for (const auto& r : results) {
    ASSERT_EQ(r.iterations.size(), 2u);
    for (const auto& it : r.iterations) {
      EXPECT_EQ(it.completion_tokens, 16);
      EXPECT_GT(it.seconds, 0);
    }
  }
  // Deltas cover the measured requests only (the warm-up is before the first scrape).
  EXPECT_EQ(results[0].spec.num_drafts, 0);
  EXPECT_EQ(results[2].spec.num_drafts, 8);
  EXPECT_EQ(results[2].spec.num_draft_tokens, 16);
  EXPECT_EQ(results[2].spec.num_accepted_tokens, 10);
  const auto rows = summarize(results);
  EXPECT_EQ(rows[0].speedup, 1.0);
  EXPECT_TRUE(std::isnan(rows[0].acceptance_rate));
  EXPECT_DOUBLE_EQ(rows[1].acceptance_rate, 6.0 / 8);
  EXPECT_DOUBLE_EQ(rows[2].acceptance_rate, 10.0 / 16);
  EXPECT_DOUBLE_EQ(rows[3].acceptance_rate, 12.0 / 24);
  EXPECT_DOUBLE_EQ(rows[3].mean_acceptance_length, 1 + 12.0 / 8);
  EXPECT_EQ(rows[3].accept_per_position, (std::vector<double>{0.75, 0.5, 0.25}));
  EXPECT_TRUE(std::isnan(rows[3].draft_share));  // this server does not export drafting time
}

TEST(EndpointSweep, InterleavedOrderGivesTheSameCounters) {
  FakeServer server;
  SweepOptions o;
  o.ks = {0, 1, 3};
  o.iterations = 3;
  o.warmup = 1;
  o.max_tokens = 4;
  o.interleave = true;
  EndpointTarget t;
  t.url = server.url();
  t.model = "fake-model";
  t.prompt = "x";
  Progress progress(0, false, true);
  const auto results = run_endpoint_sweep(o, t, progress);
  const auto bodies = server.bodies();
  ASSERT_EQ(bodies.size(), 12u);  // warm-ups 0,1,3 then (0,1,3) × 3
  for (size_t i = 0; i < bodies.size(); ++i)
    EXPECT_EQ(bodies[i]["speculative"]["num_speculative_tokens"], o.ks[i % 3]) << i;
  ASSERT_EQ(results.size(), 3u);
  EXPECT_EQ(results[0].spec.num_drafts, 0);
  EXPECT_EQ(results[1].spec.num_drafts, 12);
  EXPECT_EQ(results[1].spec.num_accepted_tokens, 9);
  EXPECT_EQ(results[2].spec.num_drafts, 12);
  EXPECT_EQ(results[2].spec.num_draft_tokens, 36);
  EXPECT_EQ(results[2].spec.accepted_per_position, (std::vector<double>{9, 6, 3}));
  for (const auto& r : results) EXPECT_EQ(r.iterations.size(), 3u);
}

TEST(EndpointSweep, SettingsFromRestartsSendNoPerRequestK) {
  FakeServer server;
  SweepOptions o;
  o.ks = {2};
  o.labels = {"restart-k2"};
  o.iterations = 1;
  o.warmup = 0;
  o.max_tokens = 4;
  o.seed = -1;
  EndpointTarget t;
  t.url = server.url();
  t.model = "fake-model";
  t.prompt = json::array({2, 17, 99});
  t.per_request_k = false;
  Progress progress(0, false, true);
  const auto results = run_endpoint_sweep(o, t, progress);
  ASSERT_EQ(results.size(), 1u);
  EXPECT_EQ(results[0].label, "restart-k2");
  const auto bodies = server.bodies();
  ASSERT_EQ(bodies.size(), 1u);
  EXPECT_FALSE(bodies[0].contains("speculative"));
  EXPECT_FALSE(bodies[0].contains("seed"));
  EXPECT_EQ(bodies[0]["prompt"], json::array({2, 17, 99}));
}

TEST(EndpointSweep, MissingMetricsGiveNoAcceptanceAndErrorsAreReported) {
  FakeServer server(/*with_metrics=*/false);
  SweepOptions o;
  o.ks = {0, 1};
  o.iterations = 1;
  o.warmup = 0;
  o.max_tokens = 2;
  EndpointTarget t;
  t.url = server.url();
  t.model = "m";
  t.prompt = "x";
  Progress progress(0, false, true);
  const auto rows = summarize(run_endpoint_sweep(o, t, progress));
  EXPECT_TRUE(std::isnan(rows[1].acceptance_rate));
  EXPECT_EQ(rows[0].speedup, 1.0);
  t.url = server.url() + "/nothing-here";
  EXPECT_THROW(run_endpoint_sweep(o, t, progress), Error);
  o.ks = {0, 99};
  EXPECT_THROW(run_endpoint_sweep(o, t, progress), Error);
}

TEST(SseParser, SplitsEventsAcrossReads) {
  const std::string stream =
      "data: {\"choices\":[{\"text\":\"a\"}]}\r\n\r\n"
      ": comment\n\n"
      "data: {\"choices\":[{\"text\":\"\"}]}\n\n"
      "data: {\"choices\":[{\"text\":\"b\"}]}\n\n"
      "data: {\"choices\":[],\"usage\":{\"completion_tokens\":7}}\n\n"
      "data: [DONE]\n\n";
  for (size_t piece : {1u, 3u, 1000u}) {
    SseParser p;
    StreamTrace trace;
    for (size_t i = 0; i < stream.size(); i += piece)
      p.feed(stream.data() + i, std::min(piece, stream.size() - i), static_cast<double>(i), trace);
    EXPECT_TRUE(p.done());
    EXPECT_EQ(trace.chunk_times.size(), 2u) << piece;  // empty text chunks do not count
    EXPECT_EQ(trace.completion_tokens, 7);
    EXPECT_TRUE(p.error.empty());
  }
  SseParser p;
  StreamTrace trace;
  const std::string err = "data: {\"error\":{\"message\":\"boom\"}}\n\n";
  p.feed(err.data(), err.size(), 0, trace);
  EXPECT_NE(p.error.find("boom"), std::string::npos);
}

TEST(Latency, BoundedByRequestCountPerLevel) {
  FakeServer server;
  LatencyOptions o;
  o.url = server.url();
  o.model = "fake-model";
  o.prompt = "hello";
  o.concurrency = {1, 3};
  o.duration_seconds = 600;  // the request cap ends each level
  o.max_requests = 6;
  o.max_tokens = 5;
  o.num_speculative_tokens = 2;
  Progress progress(0, false, true);
  const auto levels = run_latency(o, progress);
  ASSERT_EQ(levels.size(), 2u);
  for (const auto& L : levels) {
    EXPECT_EQ(L.requests, 6) << L.first_error;
    EXPECT_EQ(L.errors, 0);
    EXPECT_EQ(L.completion_tokens, 30);
    EXPECT_GT(L.throughput_tok_s, 0);
    EXPECT_GE(L.ttft_ms.p50, 0);
    EXPECT_LE(L.ttft_ms.p50, L.ttft_ms.p90);
    EXPECT_LE(L.ttft_ms.p90, L.ttft_ms.p99);
    EXPECT_LE(L.ttft_ms.p99, L.e2e_ms.p99);
    EXPECT_GE(L.itl_ms.p50, 0);
    EXPECT_GE(L.tpot_ms.p50, 0);
  }
  const auto bodies = server.bodies();
  ASSERT_EQ(bodies.size(), 12u);
  EXPECT_EQ(bodies[0]["stream"], true);
  EXPECT_EQ(bodies[0]["stream_options"]["include_usage"], true);
  EXPECT_EQ(bodies[0]["speculative"]["num_speculative_tokens"], 2);
  const std::string csv = latency_csv(levels);
  EXPECT_EQ(std::count(csv.begin(), csv.end(), '\n'), 3);
  EXPECT_NE(format_latency_table(levels).find("TTFT"), std::string::npos);
}

TEST(Latency, BoundedByDuration) {
  FakeServer server(true, /*delay_ms=*/20);
  LatencyOptions o;
  o.url = server.url();
  o.model = "fake-model";
  o.prompt = "hello";
  o.concurrency = {2};
  o.duration_seconds = 0.2;
  o.max_requests = 1000000;
  o.max_tokens = 2;
  Progress progress(0, false, true);
  const auto levels = run_latency(o, progress);
  ASSERT_EQ(levels.size(), 1u);
  EXPECT_GE(levels[0].requests, 1);
  EXPECT_LT(levels[0].requests, 1000000);  // the deadline, not the cap, ended the level
  EXPECT_EQ(levels[0].errors, 0);
}

TEST(Latency, ErrorsAreCountedNotFatal) {
  FakeServer server;
  LatencyOptions o;
  o.url = server.url() + "/wrong";
  o.model = "m";
  o.prompt = "x";
  o.concurrency = {2};
  o.max_requests = 4;
  Progress progress(0, false, true);
  const auto levels = run_latency(o, progress);
  EXPECT_EQ(levels[0].requests, 0);
  EXPECT_EQ(levels[0].errors, 4);
  EXPECT_NE(levels[0].first_error.find("404"), std::string::npos);
}

}  // namespace
}  // namespace tandem::bench
