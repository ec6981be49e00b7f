// `tandem bench sweep` / `tandem bench merge` through the real binary on the fixture pair: a short
// in-process sweep (2 iterations × 16 tokens, k = 0,1,2) and its CSV, JSON and SVG outputs.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "bench/report.h"
#include "xml_check.h"

namespace tandem::bench {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const std::string kTarget = std::string(TANDEM_SOURCE_DIR) + "/tests/fixtures/gemma4-moe";
const std::string kDrafter = std::string(TANDEM_SOURCE_DIR) + "/tests/fixtures/gemma4-moe-assistant";
const std::string kPromptIds = "2,17,99,45,300,12,7,88,150,3";

std::string read_file(const fs::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

size_t count(const std::string& s, const std::string& what) {
  size_t n = 0;
  for (size_t p = s.find(what); p != std::string::npos; p = s.find(what, p + 1)) ++n;
  return n;
}

struct CmdResult {
  int status;
  std::string out, err;
};

class BenchCli : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = fs::temp_directory_path() / ("tandem_bench_test_" + std::to_string(getpid()));
    fs::create_directories(dir_);
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }

  static CmdResult run(const std::string& args) {
    const fs::path out = dir_ / "stdout.txt", err = dir_ / "stderr.txt";
    const std::string cmd = std::string(TANDEM_BINARY) + " " + args + " >" + out.string() + " 2>" + err.string();
    const int rc = std::system(cmd.c_str());
    return {WIFEXITED(rc) ? WEXITSTATUS(rc) : -1, read_file(out), read_file(err)};
  }

  static std::string sweep_args(const std::string& ks, const std::string& name) {
    return "bench sweep --model " + kTarget + " --draft " + kDrafter + " --prompt-ids " + kPromptIds +
           " --num-speculative-tokens " + ks + " --iterations 2 --max-tokens 16 --warmup 1 --threads 1 --csv " +
           (dir_ / (name + ".csv")).string() + " --json " + (dir_ / (name + ".json")).string() + " --chart " +
           (dir_ / (name + ".svg")).string();
  }

  static fs::path dir_;
};
fs::path BenchCli::dir_;

TEST_F(BenchCli, InProcessSweepWritesCsvJsonAndChart) {
  const CmdResult r = run(sweep_args("0,1,2", "sweep"));
  ASSERT_EQ(r.status, 0) << r.err;
  // The printed table has a header and one line per setting; progress went to stderr as plain
  // lines (not a TTY): (1 warm-up + 2 iterations) × 3 settings.
  EXPECT_EQ(count(r.out, "\n"), 4u) << r.out;
  EXPECT_NE(r.out.find("baseline"), std::string::npos);
  EXPECT_EQ(count(r.err, " iter "), 6u) << r.err;
  EXPECT_EQ(count(r.err, " warm-up "), 3u) << r.err;
  EXPECT_EQ(r.err.find('\r'), std::string::npos);

  const auto rows = parse_csv(read_file(dir_ / "sweep.csv"));
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_EQ(rows[0].label, "baseline");
  EXPECT_EQ(rows[0].k, 0);
  EXPECT_EQ(rows[0].speedup, 1.0);
  EXPECT_TRUE(std::isnan(rows[0].acceptance_rate));  // the baseline drafts nothing
  EXPECT_EQ(rows[0].num_drafts, 0);
  for (size_t i = 0; i < rows.size(); ++i) {
    EXPECT_EQ(rows[i].iterations, 2);
    EXPECT_EQ(rows[i].completion_tokens, 32);  // ignore_eos: 16 tokens every time
    EXPECT_GT(rows[i].tok_s_median, 0);
    EXPECT_LE(rows[i].tok_s_ci_low, rows[i].tok_s_median);
    EXPECT_GE(rows[i].tok_s_ci_high, rows[i].tok_s_median);
    EXPECT_GT(rows[i].speedup, 0);
  }
  for (size_t i = 1; i < rows.size(); ++i) {
    EXPECT_EQ(rows[i].k, static_cast<int>(i));
    EXPECT_GT(rows[i].num_drafts, 0);
    EXPECT_EQ(rows[i].num_draft_tokens <= rows[i].k * rows[i].num_drafts, true);
    EXPECT_GE(rows[i].acceptance_rate, 0.0);
    EXPECT_LE(rows[i].acceptance_rate, 1.0);
    EXPECT_DOUBLE_EQ(rows[i].mean_acceptance_length, 1 + rows[i].num_accepted_tokens / rows[i].num_drafts);
    ASSERT_EQ(rows[i].accept_per_position.size(), static_cast<size_t>(rows[i].k));
    for (double p : rows[i].accept_per_position) {
      EXPECT_GE(p, 0.0);
      EXPECT_LE(p, 1.0);
    }
    EXPECT_GE(rows[i].draft_share, 0.0);
    EXPECT_LE(rows[i].draft_share + rows[i].verify_share, 1.0);
  }

  const std::string svg = read_file(dir_ / "sweep.svg");
  EXPECT_EQ(testing::xml_wellformed(svg), "") << svg;
  EXPECT_EQ(count(svg, "<rect class=\"bar"), 3u);

  const json j = json::parse(read_file(dir_ / "sweep.json"));
  EXPECT_EQ(j["meta"]["mode"], "in-process");
  EXPECT_EQ(j["meta"]["method"], "mtp");  // the assistant drafter upgrades draft_model to mtp
  ASSERT_EQ(j["settings"].size(), 3u);
  EXPECT_EQ(j["settings"][0]["iterations_raw"].size(), 2u);
}

// The sweep's counters for a setting equal those of `tandem generate` with that k, times the
// number of iterations: greedy runs are identical, and a per-request k behaves as an engine k.
TEST_F(BenchCli, CountersMatchTandemGenerate) {
  const CmdResult r = run(sweep_args("0,1,2", "match"));
  ASSERT_EQ(r.status, 0) << r.err;
  const json sweep = json::parse(read_file(dir_ / "match.json"));
  for (int k : {1, 2}) {
    const CmdResult g = run("generate --model " + kTarget + " --ids " + kPromptIds + " --max-tokens 16 --ignore-eos --threads 1 " +
                      "--json --speculative-config '{\"model\": \"" + kDrafter + "\", \"num_speculative_tokens\": " +
                      std::to_string(k) + "}'");
    ASSERT_EQ(g.status, 0) << g.err;
    const json gen = json::parse(g.out);
    const json& c = sweep["settings"][k]["counters"];
    EXPECT_EQ(c["num_drafts"].get<double>(), 2.0 * gen["spec"]["num_drafts"].get<double>()) << "k=" << k;
    EXPECT_EQ(c["num_draft_tokens"].get<double>(), 2.0 * gen["spec"]["num_draft_tokens"].get<double>()) << "k=" << k;
    EXPECT_EQ(c["num_accepted_tokens"].get<double>(), 2.0 * gen["spec"]["num_accepted_tokens"].get<double>())
        << "k=" << k;
  }
}

TEST_F(BenchCli, MergeRecomputesSpeedupsAcrossRuns) {
  ASSERT_EQ(run(sweep_args("0", "m0")).status, 0);
  ASSERT_EQ(run(sweep_args("1,2", "m12")).status, 0);
  const auto single = parse_csv(read_file(dir_ / "m12.csv"));
  ASSERT_EQ(single.size(), 2u);
  EXPECT_TRUE(std::isnan(single[0].speedup));  // no baseline in that run
  const CmdResult r = run("bench merge " + (dir_ / "m0.csv").string() + " " + (dir_ / "m12.csv").string() + " --csv " +
                    (dir_ / "merged.csv").string() + " --chart " + (dir_ / "merged.svg").string());
  ASSERT_EQ(r.status, 0) << r.err;
  const auto rows = parse_csv(read_file(dir_ / "merged.csv"));
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_EQ(rows[0].speedup, 1.0);
  EXPECT_DOUBLE_EQ(rows[2].speedup, rows[2].tok_s_median / rows[0].tok_s_median);
  EXPECT_EQ(rows[2].acceptance_rate, single[1].acceptance_rate);
  const std::string svg = read_file(dir_ / "merged.svg");
  EXPECT_EQ(testing::xml_wellformed(svg), "");
  EXPECT_EQ(count(svg, "<rect class=\"bar"), 3u);
}

TEST_F(BenchCli, UserErrorsAreClear) {
  CmdResult r = run("bench sweep --model " + kTarget + " --draft " + kDrafter + " --iterations 1 --max-tokens 2");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.err.find("--prompt-ids"), std::string::npos) << r.err;
  r = run("bench sweep --model " + kTarget + " --prompt-ids 2,3 --num-speculative-tokens 0,x");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.err.find("--num-speculative-tokens"), std::string::npos) << r.err;
  r = run("bench sweep --model " + kTarget + " --prompt-ids 2,3 --num-speculative-tokens 1 --draft /nonexistent");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.err.find("/nonexistent"), std::string::npos) << r.err;
  r = run("bench sweep --settings-from-restarts --num-speculative-tokens 0,1");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.err.find("--endpoint"), std::string::npos) << r.err;
}

}  // namespace
}  // namespace tandem::bench
