// The speculative-decoding sweep report: raw per-setting measurements, their summary (the table of
// the report), and the CSV / JSON / SVG writers. Independent of where the numbers came from
// (in-process engine or an HTTP endpoint).
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

namespace tandem::bench {

// Counter deltas over a setting's measured iterations, with vLLM's semantics: one draft = one
// (request, step) round that drafted tokens. Times are NaN when the source does not report them.
struct SpecCounters {
  double num_drafts = 0;
  double num_draft_tokens = 0;
  double num_accepted_tokens = 0;
  std::vector<double> accepted_per_position;
  double draft_seconds = 0;
  double verify_seconds = 0;

  SpecCounters minus(const SpecCounters& before) const;  // this - before, position-wise
  SpecCounters plus(const SpecCounters& other) const;    // this + other, position-wise
};

struct Iteration {
  int completion_tokens = 0;
  double seconds = 0;  // wall time of the request, submit to last token
  double tokens_per_second() const { return seconds > 0 ? completion_tokens / seconds : 0.0; }
};

struct SettingResult {
  std::string label;  // "baseline", "k=2", or the user's --label
  int k = 0;          // num_speculative_tokens; 0 = no speculation
  std::vector<Iteration> iterations;
  SpecCounters spec;
};

// One row of the table / CSV. NaN means "not applicable" (an empty CSV cell, "-" in the table).
struct SettingSummary {
  std::string label;
  int k = 0;
  int iterations = 0;
  int64_t completion_tokens = 0;  // over the measured iterations
  double seconds = 0;             // summed request wall time
  double tok_s_median = 0, tok_s_ci_low = 0, tok_s_ci_high = 0, tok_s_mean = 0, tok_s_stdev = 0;
  double acceptance_rate = 0;         // accepted / drafted tokens
  double mean_acceptance_length = 0;  // 1 + accepted / drafts
  std::vector<double> accept_per_position;  // accepted_per_pos[i] / drafts
  double speedup = 0;                 // tok_s_median / baseline's tok_s_median (baseline: exactly 1)
  double draft_share = 0;             // drafting seconds / request wall seconds
  double verify_share = 0;            // verify-step seconds / request wall seconds
  double num_drafts = 0, num_draft_tokens = 0, num_accepted_tokens = 0;
};

SettingSummary summarize(const SettingResult& r);
std::vector<SettingSummary> summarize(const std::vector<SettingResult>& results);
// Sets `speedup` of every row against the first row with k == 0 (NaN everywhere if none).
void compute_speedups(std::vector<SettingSummary>& rows);

std::string setting_label(int k);  // "baseline" for 0, "k=N" otherwise

// The report's table, for a terminal.
std::string format_table(const std::vector<SettingSummary>& rows);

// CSV: a header line, then one row per setting. Columns (empty cell = not applicable):
//   setting, k, iterations, completion_tokens, seconds, tok_s_median, tok_s_ci95_low,
//   tok_s_ci95_high, tok_s_mean, tok_s_stdev, acceptance_rate, mean_acceptance_length,
//   accept_per_position (';'-separated, position 1 first), speedup, draft_share, verify_share,
//   num_drafts, num_draft_tokens, num_accepted_tokens
std::string to_csv(const std::vector<SettingSummary>& rows);
// Reads what to_csv writes (any column order; unknown columns ignored). Throws tandem::Error.
std::vector<SettingSummary> parse_csv(const std::string& text, const std::string& name = "CSV");

nlohmann::json to_json(const SettingSummary& row);
// {"meta": meta, "settings": [summary + "iterations": [{completion_tokens, seconds, tok_s}] + raw counters]}
nlohmann::json to_json(const nlohmann::json& meta, const std::vector<SettingResult>& results,
                       const std::vector<SettingSummary>& rows);

// The report's figure: one bar per setting (tok/s median, 95 % CI whisker), labelled with its
// speedup and acceptance rate. Standalone SVG 1.1; each bar is a <rect class="bar">.
std::string to_svg(const std::vector<SettingSummary>& rows, const std::string& title,
                   const std::string& subtitle = "");

std::string xml_escape(const std::string& s);

}  // namespace tandem::bench
