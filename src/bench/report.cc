#include "bench/report.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>

#include "bench/stats.h"
#include "util/error.h"

namespace tandem::bench {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

std::string num(double v) { return std::isnan(v) ? "" : fmt::format("{}", v); }

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n\r") == std::string::npos) return s;
  std::string out = "\"";
  for (char c : s) {
    if (c == '"') out += '"';
    out += c;
  }
  return out + "\"";
}

std::vector<std::vector<std::string>> csv_records(const std::string& text) {
  std::vector<std::vector<std::string>> records;
  std::vector<std::string> row;
  std::string field;
  bool quoted = false, any = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (quoted) {
      if (c == '"' && i + 1 < text.size() && text[i + 1] == '"') field += '"', ++i;
      else if (c == '"') quoted = false;
      else field += c;
      continue;
    }
    if (c == '"') quoted = true, any = true;
    else if (c == ',') row.push_back(std::move(field)), field.clear(), any = true;
    else if (c == '\n' || c == '\r') {
      if (c == '\r' && i + 1 < text.size() && text[i + 1] == '\n') ++i;
      if (any || !field.empty()) row.push_back(std::move(field));
      if (!row.empty()) records.push_back(std::move(row));
      row.clear(), field.clear(), any = false;
    } else {
      field += c, any = true;
    }
  }
  if (any || !field.empty()) row.push_back(std::move(field));
  if (!row.empty()) records.push_back(std::move(row));
  return records;
}

std::string pct(double v) { return std::isnan(v) ? "-" : fmt::format("{:.0f}%", 100.0 * v); }
std::string fixed(double v, int digits) { return std::isnan(v) ? "-" : fmt::format("{:.{}f}", v, digits); }

std::string per_position_text(const std::vector<double>& v, const char* sep) {
  std::string out;
  for (size_t i = 0; i < v.size(); ++i) out += (i ? sep : "") + fmt::format("{:.3f}", v[i]);
  return out;
}

}  // namespace

SpecCounters SpecCounters::minus(const SpecCounters& before) const {
  SpecCounters d;
  d.num_drafts = num_drafts - before.num_drafts;
  d.num_draft_tokens = num_draft_tokens - before.num_draft_tokens;
  d.num_accepted_tokens = num_accepted_tokens - before.num_accepted_tokens;
  d.accepted_per_position.resize(accepted_per_position.size());
  for (size_t i = 0; i < accepted_per_position.size(); ++i)
    d.accepted_per_position[i] = accepted_per_position[i] -
                                 (i < before.accepted_per_position.size() ? before.accepted_per_position[i] : 0.0);
  d.draft_seconds = draft_seconds - before.draft_seconds;
  d.verify_seconds = verify_seconds - before.verify_seconds;
  return d;
}

SpecCounters SpecCounters::plus(const SpecCounters& o) const {
  SpecCounters d = *this;
  d.num_drafts += o.num_drafts;
  d.num_draft_tokens += o.num_draft_tokens;
  d.num_accepted_tokens += o.num_accepted_tokens;
  if (d.accepted_per_position.size() < o.accepted_per_position.size())
    d.accepted_per_position.resize(o.accepted_per_position.size(), 0.0);
  for (size_t i = 0; i < o.accepted_per_position.size(); ++i) d.accepted_per_position[i] += o.accepted_per_position[i];
  d.draft_seconds += o.draft_seconds;
  d.verify_seconds += o.verify_seconds;
  return d;
}

std::string setting_label(int k) { return k == 0 ? "baseline" : fmt::format("k={}", k); }

SettingSummary summarize(const SettingResult& r) {
  SettingSummary s;
  s.label = r.label.empty() ? setting_label(r.k) : r.label;
  s.k = r.k;
  s.iterations = static_cast<int>(r.iterations.size());
  std::vector<double> tps;
  for (const Iteration& it : r.iterations) {
    s.completion_tokens += it.completion_tokens;
    s.seconds += it.seconds;
    tps.push_back(it.tokens_per_second());
  }
  s.tok_s_median = median(tps);
  const Interval ci = bootstrap_median_ci(tps);
  s.tok_s_ci_low = ci.lo, s.tok_s_ci_high = ci.hi;
  s.tok_s_mean = mean(tps);
  s.tok_s_stdev = stdev(tps);
  const SpecCounters& c = r.spec;
  s.num_drafts = c.num_drafts, s.num_draft_tokens = c.num_draft_tokens, s.num_accepted_tokens = c.num_accepted_tokens;
  if (c.num_drafts > 0 && c.num_draft_tokens > 0) {
    s.acceptance_rate = c.num_accepted_tokens / c.num_draft_tokens;
    s.mean_acceptance_length = 1.0 + c.num_accepted_tokens / c.num_drafts;
    // Positions beyond this setting's k are counters of other settings' rounds (always 0 here).
    const size_t n = std::min(c.accepted_per_position.size(), static_cast<size_t>(std::max(r.k, 0)));
    for (size_t i = 0; i < n; ++i) s.accept_per_position.push_back(c.accepted_per_position[i] / c.num_drafts);
    s.draft_share = s.seconds > 0 ? c.draft_seconds / s.seconds : kNaN;
    s.verify_share = s.seconds > 0 ? c.verify_seconds / s.seconds : kNaN;
  } else {
    s.acceptance_rate = s.mean_acceptance_length = kNaN;
    s.draft_share = std::isnan(c.draft_seconds) ? kNaN : 0.0;  // nothing drafted
    s.verify_share = kNaN;
  }
  s.speedup = kNaN;
  return s;
}

std::vector<SettingSummary> summarize(const std::vector<SettingResult>& results) {
  std::vector<SettingSummary> rows;
  for (const auto& r : results) rows.push_back(summarize(r));
  compute_speedups(rows);
  return rows;
}

void compute_speedups(std::vector<SettingSummary>& rows) {
  const SettingSummary* base = nullptr;
  for (const auto& r : rows)
    if (r.k == 0) {
      base = &r;
      break;
    }
  const double b = base ? base->tok_s_median : kNaN;
  for (auto& r : rows) r.speedup = (base && b > 0) ? r.tok_s_median / b : kNaN;
  for (auto& r : rows)
    if (&r == base && b > 0) r.speedup = 1.0;  // exactly, whatever the division rounds to
}

std::string format_table(const std::vector<SettingSummary>& rows) {
  struct Col {
    std::string head;
    bool left;
  };
  const std::vector<Col> cols = {{"setting", true},       {"tok/s median", false}, {"95% CI (bootstrap)", false},
                                 {"accept", false},       {"mean len", false},     {"per-position", true},
                                 {"speedup", false},      {"draft", false},        {"verify", false}};
  std::vector<std::vector<std::string>> cells;
  for (const auto& r : rows) {
    std::string pos = r.accept_per_position.empty() ? "-" : per_position_text(r.accept_per_position, " ");
    cells.push_back({r.label, fixed(r.tok_s_median, 1),
                     std::isnan(r.tok_s_ci_low) ? "-" : fmt::format("[{:.1f}, {:.1f}]", r.tok_s_ci_low, r.tok_s_ci_high),
                     fixed(r.acceptance_rate, 3), fixed(r.mean_acceptance_length, 2), pos,
                     std::isnan(r.speedup) ? "-" : fmt::format("{:.2f}x", r.speedup), pct(r.draft_share),
                     pct(r.verify_share)});
  }
  std::vector<size_t> width(cols.size());
  for (size_t c = 0; c < cols.size(); ++c) {
    width[c] = cols[c].head.size();
    for (const auto& row : cells) width[c] = std::max(width[c], row[c].size());
  }
  auto line = [&](const std::vector<std::string>& v) {
    std::string out;
    for (size_t c = 0; c < cols.size(); ++c) {
      if (c) out += "  ";
      out += cols[c].left ? fmt::format("{:<{}}", v[c], width[c]) : fmt::format("{:>{}}", v[c], width[c]);
    }
    while (!out.empty() && out.back() == ' ') out.pop_back();
    return out + "\n";
  };
  std::vector<std::string> head;
  for (const auto& c : cols) head.push_back(c.head);
  std::string out = line(head);
  for (const auto& row : cells) out += line(row);
  return out;
}

static const char* kCsvColumns[] = {"setting", "k", "iterations", "completion_tokens", "seconds", "tok_s_median",
                                    "tok_s_ci95_low", "tok_s_ci95_high", "tok_s_mean", "tok_s_stdev",
                                    "acceptance_rate", "mean_acceptance_length", "accept_per_position", "speedup",
                                    "draft_share", "verify_share", "num_drafts", "num_draft_tokens",
                                    "num_accepted_tokens"};

std::string to_csv(const std::vector<SettingSummary>& rows) {
  std::string out;
  for (size_t i = 0; i < std::size(kCsvColumns); ++i) out += (i ? "," : "") + std::string(kCsvColumns[i]);
  out += "\n";
  for (const auto& r : rows) {
    std::string pos;
    for (size_t i = 0; i < r.accept_per_position.size(); ++i) pos += (i ? ";" : "") + num(r.accept_per_position[i]);
    const std::vector<std::string> f = {csv_field(r.label), std::to_string(r.k), std::to_string(r.iterations),
                                        std::to_string(r.completion_tokens), num(r.seconds), num(r.tok_s_median),
                                        num(r.tok_s_ci_low), num(r.tok_s_ci_high), num(r.tok_s_mean),
                                        num(r.tok_s_stdev), num(r.acceptance_rate), num(r.mean_acceptance_length),
                                        pos, num(r.speedup), num(r.draft_share), num(r.verify_share),
                                        num(r.num_drafts), num(r.num_draft_tokens), num(r.num_accepted_tokens)};
    for (size_t i = 0; i < f.size(); ++i) out += (i ? "," : "") + f[i];
    out += "\n";
  }
  return out;
}

std::vector<SettingSummary> parse_csv(const std::string& text, const std::string& name) {
  const auto records = csv_records(text);
  if (records.empty()) fail("{}: empty (expected a header line written by tandem bench)", name);
  std::map<std::string, size_t> col;
  for (size_t i = 0; i < records[0].size(); ++i) col[records[0][i]] = i;
  for (const char* required : {"setting", "k", "tok_s_median"})
    if (!col.count(required)) fail("{}: no \"{}\" column (not a tandem bench CSV?)", name, required);
  std::vector<SettingSummary> rows;
  for (size_t r = 1; r < records.size(); ++r) {
    const auto& rec = records[r];
    auto cell = [&](const char* c) -> std::string {
      auto it = col.find(c);
      return it == col.end() || it->second >= rec.size() ? "" : rec[it->second];
    };
    auto number = [&](const char* c) -> double {
      const std::string v = cell(c);
      if (v.empty()) return kNaN;
      try {
        size_t used = 0;
        const double d = std::stod(v, &used);
        if (used != v.size()) throw std::invalid_argument(v);
        return d;
      } catch (const std::exception&) {
        fail("{}: row {}: column {} is \"{}\", not a number", name, r + 1, c, v);
      }
    };
    auto zero_if_nan = [](double v) { return std::isnan(v) ? 0.0 : v; };
    SettingSummary s;
    s.label = cell("setting");
    s.k = static_cast<int>(number("k"));
    s.iterations = static_cast<int>(zero_if_nan(number("iterations")));
    s.completion_tokens = static_cast<int64_t>(zero_if_nan(number("completion_tokens")));
    s.seconds = zero_if_nan(number("seconds"));
    s.tok_s_median = number("tok_s_median");
    s.tok_s_ci_low = number("tok_s_ci95_low");
    s.tok_s_ci_high = number("tok_s_ci95_high");
    s.tok_s_mean = number("tok_s_mean");
    s.tok_s_stdev = number("tok_s_stdev");
    s.acceptance_rate = number("acceptance_rate");
    s.mean_acceptance_length = number("mean_acceptance_length");
    const std::string pos = cell("accept_per_position");
    for (size_t i = 0; i < pos.size();) {
      size_t end = pos.find(';', i);
      if (end == std::string::npos) end = pos.size();
      s.accept_per_position.push_back(std::stod(pos.substr(i, end - i)));
      i = end + 1;
    }
    s.speedup = number("speedup");
    s.draft_share = number("draft_share");
    s.verify_share = number("verify_share");
    s.num_drafts = zero_if_nan(number("num_drafts"));
    s.num_draft_tokens = zero_if_nan(number("num_draft_tokens"));
    s.num_accepted_tokens = zero_if_nan(number("num_accepted_tokens"));
    rows.push_back(std::move(s));
  }
  return rows;
}

nlohmann::json to_json(const SettingSummary& r) {
  auto n = [](double v) -> nlohmann::json { return std::isnan(v) ? nlohmann::json(nullptr) : nlohmann::json(v); };
  return {{"setting", r.label},
          {"k", r.k},
          {"iterations", r.iterations},
          {"completion_tokens", r.completion_tokens},
          {"seconds", r.seconds},
          {"tok_s_median", n(r.tok_s_median)},
          {"tok_s_ci95", {n(r.tok_s_ci_low), n(r.tok_s_ci_high)}},
          {"tok_s_mean", n(r.tok_s_mean)},
          {"tok_s_stdev", n(r.tok_s_stdev)},
          {"acceptance_rate", n(r.acceptance_rate)},
          {"mean_acceptance_length", n(r.mean_acceptance_length)},
          {"accept_per_position", r.accept_per_position},
          {"speedup", n(r.speedup)},
          {"draft_share", n(r.draft_share)},
          {"verify_share", n(r.verify_share)},
          {"num_drafts", r.num_drafts},
          {"num_draft_tokens", r.num_draft_tokens},
          {"num_accepted_tokens", r.num_accepted_tokens}};
}

nlohmann::json to_json(const nlohmann::json& meta, const std::vector<SettingResult>& results,
                       const std::vector<SettingSummary>& rows) {
  nlohmann::json settings = nlohmann::json::array();
  for (size_t i = 0; i < rows.size(); ++i) {
    nlohmann::json s = to_json(rows[i]);
    if (i < results.size()) {
      nlohmann::json its = nlohmann::json::array();
      for (const auto& it : results[i].iterations)
        its.push_back({{"completion_tokens", it.completion_tokens}, {"seconds", it.seconds}, {"tok_s", it.tokens_per_second()}});
      s["iterations_raw"] = its;
      const SpecCounters& c = results[i].spec;
      auto n = [](double v) -> nlohmann::json { return std::isnan(v) ? nlohmann::json(nullptr) : nlohmann::json(v); };
      s["counters"] = {{"num_drafts", c.num_drafts},
                       {"num_draft_tokens", c.num_draft_tokens},
                       {"num_accepted_tokens", c.num_accepted_tokens},
                       {"accepted_per_position", c.accepted_per_position},
                       {"draft_seconds", n(c.draft_seconds)},
                       {"verify_seconds", n(c.verify_seconds)}};
    }
    settings.push_back(std::move(s));
  }
  return {{"meta", meta}, {"settings", settings}};
}

std::string xml_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&apos;"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20 && c != '\n' && c != '\t') break;  // not allowed in XML 1.0
        out += c;
    }
  }
  return out;
}

std::string to_svg(const std::vector<SettingSummary>& rows, const std::string& title, const std::string& subtitle) {
  const int n = std::max<int>(1, static_cast<int>(rows.size()));
  const double left = 72, right = 24, top = 78, plot_h = 280, bottom = 80;
  const double slot = 120;
  const double width = std::max(520.0, left + right + slot * n);
  const double plot_w = width - left - right;
  const double height = top + plot_h + bottom;
  double ymax = 0;
  for (const auto& r : rows) {
    if (!std::isnan(r.tok_s_median)) ymax = std::max(ymax, r.tok_s_median);
    if (!std::isnan(r.tok_s_ci_high)) ymax = std::max(ymax, r.tok_s_ci_high);
  }
  if (ymax <= 0) ymax = 1;
  // A "nice" tick step (1, 2, 2.5, 5 × 10^n) giving about five ticks; headroom for the labels.
  const double raw = ymax * 1.18 / 5;
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = 10 * mag;
  for (double m : {1.0, 2.0, 2.5, 5.0, 10.0})
    if (m * mag >= raw) {
      step = m * mag;
      break;
    }
  const double ytop = step * std::ceil(ymax * 1.18 / step);
  auto y = [&](double v) { return top + plot_h - plot_h * std::clamp(v / ytop, 0.0, 1.0); };
  const double base_y = top + plot_h;

  std::string o;
  o += "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";
  o += fmt::format("<svg xmlns=\"http://www.w3.org/2000/svg\" version=\"1.1\" width=\"{:.0f}\" height=\"{:.0f}\" "
                   "viewBox=\"0 0 {:.0f} {:.0f}\" font-family=\"Helvetica, Arial, sans-serif\">\n",
                   width, height, width, height);
  o += "<style>.bar{fill:#3b7dd8}.bar.baseline{fill:#9aa0a6}.axis{stroke:#333;stroke-width:1}"
       ".grid{stroke:#ddd;stroke-width:1}.ci{stroke:#222;stroke-width:1.5}text{fill:#222}</style>\n";
  o += fmt::format("<rect x=\"0\" y=\"0\" width=\"{:.0f}\" height=\"{:.0f}\" fill=\"#ffffff\"/>\n", width, height);
  o += fmt::format("<text x=\"{:.1f}\" y=\"26\" font-size=\"17\" font-weight=\"bold\" text-anchor=\"middle\">{}</text>\n",
                   width / 2, xml_escape(title));
  if (!subtitle.empty())
    o += fmt::format("<text x=\"{:.1f}\" y=\"46\" font-size=\"11\" text-anchor=\"middle\">{}</text>\n", width / 2,
                     xml_escape(subtitle));
  // Y grid and ticks.
  for (double v = 0; v <= ytop + step * 1e-9; v += step) {
    const double yy = y(v);
    o += fmt::format("<line class=\"grid\" x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\"/>\n", left, yy,
                     left + plot_w, yy);
    o += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" font-size=\"11\" text-anchor=\"end\">{}</text>\n", left - 6,
                     yy + 4, fmt::format("{:g}", v));
  }
  o += fmt::format("<text transform=\"translate(18 {:.1f}) rotate(-90)\" font-size=\"12\" text-anchor=\"middle\">"
                   "tokens/s (median, 95% CI)</text>\n",
                   top + plot_h / 2);
  const double slot_w = plot_w / n;
  const double bar_w = std::min(72.0, slot_w * 0.6);
  for (size_t i = 0; i < rows.size(); ++i) {
    const SettingSummary& r = rows[i];
    const double cx = left + slot_w * (static_cast<double>(i) + 0.5);
    const double v = std::isnan(r.tok_s_median) ? 0.0 : r.tok_s_median;
    const double by = y(v);
    o += fmt::format("<rect class=\"bar{}\" x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.1f}\" height=\"{:.1f}\">"
                     "<title>{}: {:.1f} tok/s</title></rect>\n",
                     r.k == 0 ? " baseline" : "", cx - bar_w / 2, by, bar_w, base_y - by, xml_escape(r.label), v);
    double label_y = by;
    if (!std::isnan(r.tok_s_ci_low) && !std::isnan(r.tok_s_ci_high)) {
      const double y0 = y(r.tok_s_ci_low), y1 = y(r.tok_s_ci_high);
      o += fmt::format("<line class=\"ci\" x1=\"{0:.1f}\" y1=\"{1:.1f}\" x2=\"{0:.1f}\" y2=\"{2:.1f}\"/>\n", cx, y0, y1);
      for (double yy : {y0, y1})
        o += fmt::format("<line class=\"ci\" x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\"/>\n", cx - 6, yy,
                         cx + 6, yy);
      label_y = std::min(label_y, y1);
    }
    const std::string speed = std::isnan(r.speedup) ? "" : fmt::format("{:.2f}\u00d7", r.speedup);
    const std::string acc = std::isnan(r.acceptance_rate) ? (r.k == 0 ? "no drafts" : "acc n/a")
                                                          : fmt::format("acc {:.0f}%", 100 * r.acceptance_rate);
    o += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" font-size=\"13\" font-weight=\"bold\" text-anchor=\"middle\">{}</text>\n",
                     cx, label_y - 22, xml_escape(speed));
    o += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" font-size=\"11\" text-anchor=\"middle\">{}</text>\n", cx,
                     label_y - 8, xml_escape(acc));
    o += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" font-size=\"12\" text-anchor=\"middle\">{}</text>\n", cx,
                     base_y + 18, xml_escape(r.label));
    o += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" font-size=\"10\" text-anchor=\"middle\">{:.1f} tok/s</text>\n",
                     cx, base_y + 33, v);
  }
  o += fmt::format("<line class=\"axis\" x1=\"{0:.1f}\" y1=\"{1:.1f}\" x2=\"{0:.1f}\" y2=\"{2:.1f}\"/>\n", left, top,
                   base_y);
  o += fmt::format("<line class=\"axis\" x1=\"{:.1f}\" y1=\"{:.1f}\" x2=\"{:.1f}\" y2=\"{:.1f}\"/>\n", left, base_y,
                   left + plot_w, base_y);
  o += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" font-size=\"10\" text-anchor=\"middle\" fill=\"#555\">"
                   "bar: median tok/s \u00b7 whisker: 95% bootstrap CI of the median</text>\n",
                   width / 2, height - 22);
  o += fmt::format("<text x=\"{:.1f}\" y=\"{:.1f}\" font-size=\"10\" text-anchor=\"middle\" fill=\"#555\">"
                   "label: speedup vs baseline (k=0), acceptance = accepted / drafted tokens</text>\n",
                   width / 2, height - 8);
  o += "</svg>\n";
  return o;
}

}  // namespace tandem::bench
