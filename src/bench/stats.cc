#include "bench/stats.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>

namespace tandem::bench {

static constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return kNaN;
  std::sort(v.begin(), v.end());
  const double rank = std::clamp(p, 0.0, 100.0) / 100.0 * static_cast<double>(v.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(rank));
  const size_t hi = std::min(lo + 1, v.size() - 1);
  const double frac = rank - static_cast<double>(lo);
  return v[lo] + (v[hi] - v[lo]) * frac;
}

double median(std::vector<double> v) { return percentile(std::move(v), 50.0); }

double mean(const std::vector<double>& v) {
  if (v.empty()) return kNaN;
  return std::accumulate(v.begin(), v.end(), 0.0) / static_cast<double>(v.size());
}

double stdev(const std::vector<double>& v) {
  if (v.size() < 2) return 0.0;
  const double m = mean(v);
  double ss = 0;
  for (double x : v) ss += (x - m) * (x - m);
  return std::sqrt(ss / static_cast<double>(v.size() - 1));
}

Interval bootstrap_median_ci(const std::vector<double>& v, double level, int resamples, uint64_t seed) {
  if (v.empty()) return {kNaN, kNaN};
  if (v.size() == 1) return {v[0], v[0]};
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<size_t> pick(0, v.size() - 1);
  std::vector<double> medians(static_cast<size_t>(std::max(resamples, 1)));
  std::vector<double> sample(v.size());
  for (double& m : medians) {
    for (double& s : sample) s = v[pick(rng)];
    m = median(sample);
  }
  const double tail = (1.0 - level) / 2.0 * 100.0;
  return {percentile(medians, tail), percentile(medians, 100.0 - tail)};
}

}  // namespace tandem::bench
