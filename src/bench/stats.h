// Small statistics for benchmark reports: order statistics and a bootstrap confidence interval of
// the median. Everything is deterministic (the bootstrap uses a fixed seed) so that a report can be
// regenerated from its raw numbers.
#pragma once
#include <cstdint>
#include <vector>

namespace tandem::bench {

struct Interval {
  double lo = 0, hi = 0;
};

// NaN for an empty input.
double median(std::vector<double> v);
double mean(const std::vector<double>& v);
// Sample standard deviation (n - 1); 0 for fewer than two values.
double stdev(const std::vector<double>& v);
// p in [0, 100], linear interpolation between closest ranks (numpy's default); NaN if empty.
double percentile(std::vector<double> v, double p);

// Percentile bootstrap interval of the median: `resamples` resamples with replacement, the
// (1-level)/2 and (1+level)/2 percentiles of their medians. {x, x} for one value, NaNs for none.
Interval bootstrap_median_ci(const std::vector<double>& v, double level = 0.95, int resamples = 10000,
                             uint64_t seed = 0x7a6d);

}  // namespace tandem::bench
