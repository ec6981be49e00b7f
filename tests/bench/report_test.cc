// Unit tests of the sweep report: statistics, summary math, CSV round trip, SVG, the XML checker.
#include <gtest/gtest.h>

#include <cmath>

#include "bench/report.h"
#include "bench/stats.h"
#include "util/error.h"
#include "xml_check.h"

namespace tandem::bench {
namespace {

using testing::xml_wellformed;

size_t count(const std::string& s, const std::string& what) {
  size_t n = 0;
  for (size_t p = s.find(what); p != std::string::npos; p = s.find(what, p + 1)) ++n;
  return n;
}

TEST(Stats, MedianAndPercentiles) {
  EXPECT_DOUBLE_EQ(median({3, 1, 2}), 2);
  EXPECT_DOUBLE_EQ(median({4, 1, 2, 3}), 2.5);
  EXPECT_TRUE(std::isnan(median({})));
  // numpy.percentile([1..10], [0, 90, 99, 100]) = 1, 9.1, 9.91, 10
  std::vector<double> v = {10, 9, 8, 7, 6, 5, 4, 3, 2, 1};
  EXPECT_DOUBLE_EQ(percentile(v, 0), 1);
  EXPECT_NEAR(percentile(v, 90), 9.1, 1e-12);
  EXPECT_NEAR(percentile(v, 99), 9.91, 1e-12);
  EXPECT_DOUBLE_EQ(percentile(v, 100), 10);
  EXPECT_NEAR(mean({1, 2, 3, 4}), 2.5, 1e-12);
  EXPECT_NEAR(stdev({2, 4, 4, 4, 5, 5, 7, 9}), 2.138089935299395, 1e-12);  // sample (n-1) stdev
  EXPECT_EQ(stdev({5}), 0);
}

TEST(Stats, BootstrapMedianInterval) {
  const std::vector<double> v = {100, 102, 98, 101, 99};
  const Interval a = bootstrap_median_ci(v);
  const Interval b = bootstrap_median_ci(v);
  EXPECT_EQ(a.lo, b.lo);  // deterministic (fixed seed)
  EXPECT_EQ(a.hi, b.hi);
  EXPECT_LE(a.lo, median(v));
  EXPECT_GE(a.hi, median(v));
  EXPECT_GE(a.lo, 98);
  EXPECT_LE(a.hi, 102);
  EXPECT_LT(a.lo, a.hi);
  // The median of a resample of 5 is one of the values, so the bounds are sample values.
  EXPECT_TRUE(a.lo == 98 || a.lo == 99 || a.lo == 100);
  const Interval one = bootstrap_median_ci({7});
  EXPECT_EQ(one.lo, 7);
  EXPECT_EQ(one.hi, 7);
  const Interval same = bootstrap_median_ci({5, 5, 5, 5});
  EXPECT_EQ(same.lo, 5);
  EXPECT_EQ(same.hi, 5);
  EXPECT_TRUE(std::isnan(bootstrap_median_ci({}).lo));
  // A wider spread gives a wider interval.
  const Interval wide = bootstrap_median_ci({50, 150, 80, 120, 100, 60, 140});
  EXPECT_GT(wide.hi - wide.lo, a.hi - a.lo);
}

std::vector<SettingResult> sample_results() {
  SettingResult base;
  base.k = 0;
  base.iterations = {{200, 2.0}, {200, 2.5}, {200, 1.6}};  // 100, 80, 125 tok/s
  base.spec.draft_seconds = 0, base.spec.verify_seconds = 0;
  SettingResult k2;
  k2.k = 2;
  k2.iterations = {{200, 1.0}, {200, 1.25}, {200, 0.8}};  // 200, 160, 250 tok/s
  k2.spec.num_drafts = 100;
  k2.spec.num_draft_tokens = 200;
  k2.spec.num_accepted_tokens = 150;
  k2.spec.accepted_per_position = {90, 60, 0};  // engine k = 3: position 3 belongs to other settings
  k2.spec.draft_seconds = 0.3;
  k2.spec.verify_seconds = 2.1;
  return {base, k2};
}

TEST(Report, SummaryMath) {
  auto rows = summarize(sample_results());
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0].label, "baseline");
  EXPECT_EQ(rows[1].label, "k=2");
  EXPECT_DOUBLE_EQ(rows[0].tok_s_median, 100);
  EXPECT_DOUBLE_EQ(rows[1].tok_s_median, 200);
  EXPECT_EQ(rows[0].speedup, 1.0);
  EXPECT_DOUBLE_EQ(rows[1].speedup, 2.0);
  EXPECT_EQ(rows[1].completion_tokens, 600);
  EXPECT_DOUBLE_EQ(rows[1].seconds, 3.05);
  EXPECT_DOUBLE_EQ(rows[1].acceptance_rate, 0.75);
  EXPECT_DOUBLE_EQ(rows[1].mean_acceptance_length, 2.5);
  ASSERT_EQ(rows[1].accept_per_position.size(), 2u);
  EXPECT_DOUBLE_EQ(rows[1].accept_per_position[0], 0.9);
  EXPECT_DOUBLE_EQ(rows[1].accept_per_position[1], 0.6);
  EXPECT_NEAR(rows[1].draft_share, 0.3 / 3.05, 1e-12);
  EXPECT_NEAR(rows[1].verify_share, 2.1 / 3.05, 1e-12);
  // The baseline drafts nothing: acceptance is not applicable, draft share 0.
  EXPECT_TRUE(std::isnan(rows[0].acceptance_rate));
  EXPECT_TRUE(std::isnan(rows[0].mean_acceptance_length));
  EXPECT_TRUE(rows[0].accept_per_position.empty());
  EXPECT_EQ(rows[0].draft_share, 0.0);
  EXPECT_LE(rows[1].tok_s_ci_low, 200);
  EXPECT_GE(rows[1].tok_s_ci_high, 200);
}

TEST(Report, BaselineSpeedupIsExactlyOneWhateverTheOrder) {
  auto res = sample_results();
  std::swap(res[0], res[1]);
  res[1].iterations = {{7, 0.3}, {7, 0.7}, {7, 0.11}};  // medians that do not divide evenly
  auto rows = summarize(res);
  EXPECT_EQ(rows[1].k, 0);
  EXPECT_EQ(rows[1].speedup, 1.0);
  EXPECT_NEAR(rows[0].speedup, 200 / rows[1].tok_s_median, 1e-12);
  // Without a k = 0 row there is no speedup.
  rows.erase(rows.begin() + 1);
  compute_speedups(rows);
  EXPECT_TRUE(std::isnan(rows[0].speedup));
}

TEST(Report, CsvRoundTrip) {
  auto rows = summarize(sample_results());
  rows[1].label = "mtp, \"k\"=2";  // needs quoting
  const std::string csv = to_csv(rows);
  EXPECT_EQ(csv.substr(0, csv.find('\n')),
            "setting,k,iterations,completion_tokens,seconds,tok_s_median,tok_s_ci95_low,tok_s_ci95_high,tok_s_mean,"
            "tok_s_stdev,acceptance_rate,mean_acceptance_length,accept_per_position,speedup,draft_share,verify_share,"
            "num_drafts,num_draft_tokens,num_accepted_tokens");
  EXPECT_EQ(count(csv, "\n"), 3u);
  const auto back = parse_csv(csv);
  ASSERT_EQ(back.size(), 2u);
  for (size_t i = 0; i < 2; ++i) {
    EXPECT_EQ(back[i].label, rows[i].label);
    EXPECT_EQ(back[i].k, rows[i].k);
    EXPECT_EQ(back[i].iterations, rows[i].iterations);
    EXPECT_EQ(back[i].completion_tokens, rows[i].completion_tokens);
    EXPECT_EQ(back[i].tok_s_median, rows[i].tok_s_median);  // shortest round-trip formatting: exact
    EXPECT_EQ(back[i].tok_s_ci_low, rows[i].tok_s_ci_low);
    EXPECT_EQ(back[i].speedup, rows[i].speedup);
    EXPECT_EQ(back[i].accept_per_position, rows[i].accept_per_position);
    EXPECT_EQ(std::isnan(back[i].acceptance_rate), std::isnan(rows[i].acceptance_rate));
  }
  EXPECT_EQ(back[1].acceptance_rate, 0.75);
  EXPECT_THROW(parse_csv("a,b\n1,2\n"), Error);
  EXPECT_THROW(parse_csv("setting,k,tok_s_median\nx,notanumber,1\n"), Error);
}

TEST(Report, SvgIsWellFormedWithOneBarPerSetting) {
  auto rows = summarize(sample_results());
  rows[0].label = "base <&> \"line\"";
  const std::string svg = to_svg(rows, "Sweep of <model> & co", "subtitle 'x'");
  EXPECT_EQ(xml_wellformed(svg), "") << svg;
  EXPECT_EQ(count(svg, "<rect class=\"bar"), 2u);
  EXPECT_NE(svg.find("<svg xmlns=\"http://www.w3.org/2000/svg\""), std::string::npos);
  EXPECT_NE(svg.find("1.00\u00d7"), std::string::npos);  // baseline speedup label
  EXPECT_NE(svg.find("2.00\u00d7"), std::string::npos);
  EXPECT_NE(svg.find("acc 75%"), std::string::npos);
  EXPECT_NE(svg.find("base &lt;&amp;&gt; &quot;line&quot;"), std::string::npos);
  // Empty and zero inputs still give a valid document.
  EXPECT_EQ(xml_wellformed(to_svg({}, "empty")), "");
  SettingSummary zero;
  zero.tok_s_median = zero.tok_s_ci_low = zero.tok_s_ci_high = 0;
  zero.speedup = zero.acceptance_rate = NAN;
  EXPECT_EQ(xml_wellformed(to_svg({zero}, "zero")), "");
}

TEST(Report, TableShowsEveryColumn) {
  const std::string t = format_table(summarize(sample_results()));
  EXPECT_NE(t.find("setting"), std::string::npos);
  EXPECT_NE(t.find("baseline"), std::string::npos);
  EXPECT_NE(t.find("1.00x"), std::string::npos);
  EXPECT_NE(t.find("2.00x"), std::string::npos);
  EXPECT_NE(t.find("0.750"), std::string::npos);
  EXPECT_NE(t.find("2.50"), std::string::npos);
  EXPECT_NE(t.find("0.900 0.600"), std::string::npos);
  EXPECT_EQ(count(t, "\n"), 3u);
}

TEST(XmlCheck, RejectsMalformedDocuments) {
  EXPECT_EQ(xml_wellformed("<a><b x=\"1\" y='2'/>t&amp;&#215;&#x41;<!-- c --></a>"), "");
  EXPECT_NE(xml_wellformed("<a><b></a></b>"), "");
  EXPECT_NE(xml_wellformed("<a>"), "");
  EXPECT_NE(xml_wellformed("<a x=1/>"), "");
  EXPECT_NE(xml_wellformed("<a x=\"1\" x=\"2\"/>"), "");
  EXPECT_NE(xml_wellformed("<a>&nbsp;</a>"), "");
  EXPECT_NE(xml_wellformed("<a>a < b</a>"), "");
  EXPECT_NE(xml_wellformed("<a/><b/>"), "");
  EXPECT_NE(xml_wellformed("text"), "");
}

}  // namespace
}  // namespace tandem::bench
