#include "bench/prometheus.h"

#include <cctype>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <optional>

namespace tandem::bench {
namespace {

bool name_char(char c, bool first) {
  return std::isalpha(static_cast<unsigned char>(c)) || c == '_' || c == ':' ||
         (!first && std::isdigit(static_cast<unsigned char>(c)));
}

std::optional<double> parse_value(std::string_view s) {
  if (s == "NaN") return std::numeric_limits<double>::quiet_NaN();
  if (s == "+Inf" || s == "Inf") return std::numeric_limits<double>::infinity();
  if (s == "-Inf") return -std::numeric_limits<double>::infinity();
  if (s.empty()) return std::nullopt;
  std::string tmp(s);
  char* end = nullptr;
  const double v = std::strtod(tmp.c_str(), &end);
  if (end != tmp.c_str() + tmp.size()) return std::nullopt;
  return v;
}

std::optional<PromSample> parse_line(std::string_view line) {
  PromSample s;
  size_t i = 0;
  while (i < line.size() && name_char(line[i], i == 0)) ++i;
  if (i == 0) return std::nullopt;
  s.name = std::string(line.substr(0, i));
  auto skip_ws = [&] {
    while (i < line.size() && (line[i] == ' ' || line[i] == '\t')) ++i;
  };
  skip_ws();
  if (i < line.size() && line[i] == '{') {
    ++i;
    for (;;) {
      skip_ws();
      if (i < line.size() && line[i] == '}') {
        ++i;
        break;
      }
      const size_t k0 = i;
      while (i < line.size() && name_char(line[i], i == k0)) ++i;
      if (i == k0) return std::nullopt;
      std::string key(line.substr(k0, i - k0));
      skip_ws();
      if (i >= line.size() || line[i] != '=') return std::nullopt;
      ++i;
      skip_ws();
      if (i >= line.size() || line[i] != '"') return std::nullopt;
      ++i;
      std::string value;
      bool closed = false;
      while (i < line.size()) {
        const char c = line[i++];
        if (c == '"') {
          closed = true;
          break;
        }
        if (c == '\\' && i < line.size()) {
          const char e = line[i++];
          value += e == 'n' ? '\n' : e;  // \\ -> \, \" -> ", \n -> newline
        } else {
          value += c;
        }
      }
      if (!closed) return std::nullopt;
      s.labels[key] = std::move(value);
      skip_ws();
      if (i < line.size() && line[i] == ',') ++i;
      else if (i >= line.size() || line[i] != '}') return std::nullopt;
    }
  }
  skip_ws();
  const size_t v0 = i;
  while (i < line.size() && line[i] != ' ' && line[i] != '\t') ++i;
  const auto v = parse_value(line.substr(v0, i - v0));
  if (!v) return std::nullopt;
  s.value = *v;
  return s;  // an optional timestamp after the value is ignored
}

}  // namespace

std::vector<PromSample> parse_prometheus(std::string_view text, int* bad_lines) {
  std::vector<PromSample> out;
  int bad = 0;
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(pos, end - pos);
    pos = end + 1;
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ' || line.back() == '\t')) line.remove_suffix(1);
    while (!line.empty() && (line.front() == ' ' || line.front() == '\t')) line.remove_prefix(1);
    if (line.empty() || line.front() == '#') continue;
    if (auto s = parse_line(line)) out.push_back(std::move(*s));
    else ++bad;
  }
  if (bad_lines) *bad_lines = bad;
  return out;
}

bool PromSnapshot::has(std::string_view name) const {
  for (const auto& s : samples_)
    if (s.name == name) return true;
  return false;
}

double PromSnapshot::sum(std::string_view name) const {
  double total = 0;
  for (const auto& s : samples_)
    if (s.name == name) total += s.value;
  return total;
}

std::map<std::string, double> PromSnapshot::sum_by(std::string_view name, std::string_view label) const {
  std::map<std::string, double> out;
  for (const auto& s : samples_) {
    if (s.name != name) continue;
    auto it = s.labels.find(std::string(label));
    if (it != s.labels.end()) out[it->second] += s.value;
  }
  return out;
}

}  // namespace tandem::bench
