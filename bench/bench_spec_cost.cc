// Cost of the pieces of a speculative round relative to one plain decode step, on CPU:
// one drafter step (R = 1) and one verify forward of k+1 tokens, for k = 1..4.
//   bench_spec_cost TARGET_DIR DRAFTER_DIR [--dummy] [--threads N] [--context N] [--reps N]
// With --dummy the directories need only config.json (seeded random weights).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "model/gemma4.h"
#include "model/gemma4_assistant.h"

using namespace tandem;

namespace {
double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
// Median of `reps` timings of fn().
template <typename F>
double median_seconds(int reps, F&& fn) {
  std::vector<double> t;
  fn();  // warm-up
  for (int i = 0; i < reps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    fn();
    t.push_back(seconds_since(t0));
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}
}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s TARGET_DIR DRAFTER_DIR [--dummy] [--threads N] [--context N] [--reps N]\n", argv[0]);
    return 2;
  }
  LoadFormat format = LoadFormat::safetensors;
  int threads = 0, context = 64, reps = 5;
  for (int i = 3; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--dummy")) format = LoadFormat::dummy;
    else if (!std::strcmp(argv[i], "--threads") && i + 1 < argc) threads = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--context") && i + 1 < argc) context = std::atoi(argv[++i]);
    else if (!std::strcmp(argv[i], "--reps") && i + 1 < argc) reps = std::atoi(argv[++i]);
  }
  try {
    auto backend = make_cpu_backend(threads);
    const auto t_load = std::chrono::steady_clock::now();
    auto target = Gemma4Model::load(argv[1], *backend, format);
    auto drafter = Gemma4Assistant::load(argv[2], *target, format);
    std::printf("backend %s; loaded in %.1f s; target %.0f M params (%.0f M active), %.2f GB of weights\n",
                backend->name().c_str(), seconds_since(t_load), target->parameter_count() / 1e6,
                target->active_parameter_count() / 1e6, target->weight_bytes() / 1e9);
    const ModelConfig& c = target->config();
    KvCache kv(c, (context + 32) / 16 + 1, 16);
    std::vector<int32_t> table;
    kv.reserve(table, context + 16);
    ForwardBatch batch;
    for (int i = 0; i < context; ++i) batch.add((i * 7919 + 13) % c.vocab_size, i, &table, i == context - 1);
    HostTensor hidden, logits;
    target->forward(batch, kv, &hidden, &logits);
    std::vector<float> h(hidden.f32(), hidden.f32() + c.hidden);

    auto verify = [&](int rows) {
      batch.clear();
      for (int i = 0; i < rows; ++i) batch.add((i * 31 + 5) % c.vocab_size, context + i, &table, true);
      return median_seconds(reps, [&] { target->forward(batch, kv, &hidden, &logits); });
    };
    const double plain = verify(1);
    AssistantRow row{17, h.data(), context, &table};
    HostTensor next;
    std::vector<int32_t> tokens;
    const double draft = median_seconds(reps, [&] { drafter->step(std::span(&row, 1), kv, next, tokens); });
    std::printf("plain decode step: %.2f ms; drafter step: %.2f ms (%.3f x plain)\n", plain * 1e3, draft * 1e3, draft / plain);
    std::printf("| k | verify k+1 (ms) | verify / plain | k drafter steps / plain | round / plain | break-even accepted per round |\n");
    std::printf("|---|---|---|---|---|---|\n");
    for (int k = 1; k <= 4; ++k) {
      const double v = verify(k + 1);
      const double round = (v + k * draft) / plain;
      // A round emits accepted + 1 tokens; plain decoding would need that many steps.
      std::printf("| %d | %.2f | %.3f | %.3f | %.3f | %.2f |\n", k, v * 1e3, v / plain, k * draft / plain, round,
                  std::max(0.0, round - 1));
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
