// The Prometheus text parser and the speculative counters read from /metrics.
#include <gtest/gtest.h>

#include <cmath>

#include "bench/prometheus.h"
#include "bench/sweep.h"

namespace tandem::bench {
namespace {

// Shaped like vLLM v1's /metrics (prometheus_client): label sets per engine, _created samples.
const char* kVllm = R"(# HELP vllm:spec_decode_num_drafts_total Number of spec decoding drafts.
# TYPE vllm:spec_decode_num_drafts_total counter
vllm:spec_decode_num_drafts_total{engine="0",model_name="m"} 40.0
vllm:spec_decode_num_drafts_total{engine="1",model_name="m"} 2.0
# HELP vllm:spec_decode_num_drafts_created Number of spec decoding drafts.
# TYPE vllm:spec_decode_num_drafts_created gauge
vllm:spec_decode_num_drafts_created{engine="0",model_name="m"} 1.7e+09
vllm:spec_decode_num_draft_tokens_total{engine="0",model_name="m"} 120.0
vllm:spec_decode_num_draft_tokens_total{engine="1",model_name="m"} 6.0
vllm:spec_decode_num_accepted_tokens_total{engine="0",model_name="m"} 90.0
vllm:spec_decode_num_accepted_tokens_total{engine="1",model_name="m"} 3.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="m",position="0"} 38.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="m",position="1"} 30.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="0",model_name="m",position="2"} 22.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="1",model_name="m",position="0"} 2.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="1",model_name="m",position="1"} 1.0
vllm:spec_decode_num_accepted_tokens_per_pos_total{engine="1",model_name="m",position="2"} 0.0
vllm:num_requests_running{engine="0",model_name="m"} 0.0
)";

TEST(Prometheus, ParsesSamplesLabelsAndSpecialValues) {
  int bad = -1;
  const auto samples = parse_prometheus(
      "# HELP x help text\n"
      "# TYPE x counter\n"
      "x 1\n"
      "x_total{a=\"1\",b=\"two words\"} 2.5 1700000000000\n"
      "  y{path=\"/v1/completions\",msg=\"say \\\"hi\\\", then \\\\ go\\n\"} +Inf\r\n"
      "z{} NaN\n"
      "w{le=\"0.5\",} -3e-2\n"
      "\n"
      "broken{a=\"1\" 3\n"
      "alsobroken{a=1} 3\n"
      "nonumber{a=\"1\"} abc\n",
      &bad);
  ASSERT_EQ(samples.size(), 5u);
  EXPECT_EQ(bad, 3);
  EXPECT_EQ(samples[0].name, "x");
  EXPECT_EQ(samples[0].value, 1);
  EXPECT_TRUE(samples[0].labels.empty());
  EXPECT_EQ(samples[1].name, "x_total");
  EXPECT_EQ(samples[1].labels.at("b"), "two words");
  EXPECT_EQ(samples[1].value, 2.5);  // the timestamp is ignored
  EXPECT_EQ(samples[2].labels.at("path"), "/v1/completions");
  EXPECT_EQ(samples[2].labels.at("msg"), "say \"hi\", then \\ go\n");
  EXPECT_TRUE(std::isinf(samples[2].value));
  EXPECT_TRUE(std::isnan(samples[3].value));
  EXPECT_EQ(samples[4].labels.at("le"), "0.5");
  EXPECT_DOUBLE_EQ(samples[4].value, -0.03);
}

TEST(Prometheus, SumsOverLabelSets) {
  const PromSnapshot m = PromSnapshot::parse(kVllm);
  EXPECT_TRUE(m.has("vllm:spec_decode_num_drafts_total"));
  EXPECT_FALSE(m.has("vllm:spec_decode_num_drafts"));
  EXPECT_EQ(m.sum("vllm:spec_decode_num_drafts_total"), 42);
  EXPECT_EQ(m.sum("absent"), 0);
  const auto by = m.sum_by("vllm:spec_decode_num_accepted_tokens_per_pos_total", "position");
  ASSERT_EQ(by.size(), 3u);
  EXPECT_EQ(by.at("0"), 40);
  EXPECT_EQ(by.at("1"), 31);
  EXPECT_EQ(by.at("2"), 22);
}

TEST(Prometheus, SpecCountersFromVllmMetrics) {
  const SpecCounters c = spec_counters_from_metrics(kVllm);
  EXPECT_EQ(c.num_drafts, 42);
  EXPECT_EQ(c.num_draft_tokens, 126);
  EXPECT_EQ(c.num_accepted_tokens, 93);
  EXPECT_EQ(c.accepted_per_position, (std::vector<double>{40, 31, 22}));
  EXPECT_TRUE(std::isnan(c.draft_seconds));  // vLLM does not export drafting time
  EXPECT_TRUE(std::isnan(c.verify_seconds));
  // tandem's extra counters are picked up; deltas subtract position-wise.
  const SpecCounters before = spec_counters_from_metrics(
      "vllm:spec_decode_num_drafts_total 2\n"
      "vllm:spec_decode_num_draft_tokens_total 6\n"
      "vllm:spec_decode_num_accepted_tokens_total 3\n"
      "vllm:spec_decode_num_accepted_tokens_per_pos_total{position=\"0\"} 2\n"
      "tandem:spec_decode_draft_seconds_total 0.5\n"
      "tandem:spec_decode_verify_seconds_total 1.5\n");
  EXPECT_EQ(before.draft_seconds, 0.5);
  const SpecCounters d = c.minus(before);
  EXPECT_EQ(d.num_drafts, 40);
  EXPECT_EQ(d.num_accepted_tokens, 90);
  EXPECT_EQ(d.accepted_per_position, (std::vector<double>{38, 31, 22}));
  // An empty page (no speculation) reads as zero counters.
  const SpecCounters none = spec_counters_from_metrics("");
  EXPECT_EQ(none.num_drafts, 0);
  EXPECT_TRUE(none.accepted_per_position.empty());
}

TEST(Endpoint, UrlParsing) {
  EXPECT_EQ(parse_endpoint_url("http://127.0.0.1:8000").base, "http://127.0.0.1:8000");
  EXPECT_EQ(parse_endpoint_url("http://127.0.0.1:8000/").prefix, "");
  EXPECT_EQ(parse_endpoint_url("http://127.0.0.1:8000/v1").prefix, "");
  EXPECT_EQ(parse_endpoint_url("localhost:9000").base, "http://localhost:9000");
  const EndpointUrl e = parse_endpoint_url("http://h:1/proxy/v1/");
  EXPECT_EQ(e.base, "http://h:1");
  EXPECT_EQ(e.prefix, "/proxy");
}

}  // namespace
}  // namespace tandem::bench
