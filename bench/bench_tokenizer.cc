// Single-threaded encode throughput of tandem::Tokenizer.
//   bench_tokenizer TOKENIZER_PATH TEXT_FILE [EXPECTED_IDS_JSON]
// Encodes the whole file (without special tokens) once to warm up, then 3 times, and prints one
// JSON line with the best time. With EXPECTED_IDS_JSON (a JSON array, e.g. HF's ids for the same
// text) it also reports whether the ids are identical.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tokenizer/tokenizer.h"

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s TOKENIZER_PATH TEXT_FILE [EXPECTED_IDS_JSON]\n", argv[0]);
    return 2;
  }
  auto slurp = [](const char* path) {
    std::ifstream f(path, std::ios::binary);
    std::ostringstream ss;
    ss << f.rdbuf();
    return ss.str();
  };
  using clock = std::chrono::steady_clock;
  auto t0 = clock::now();
  tandem::Tokenizer tok = tandem::Tokenizer::load(argv[1]);
  double load_s = std::chrono::duration<double>(clock::now() - t0).count();
  std::string text = slurp(argv[2]);
  std::vector<int32_t> ids = tok.encode(text, false);
  double best = 1e30;
  for (int r = 0; r < 3; ++r) {
    auto a = clock::now();
    ids = tok.encode(text, false);
    best = std::min(best, std::chrono::duration<double>(clock::now() - a).count());
  }
  nlohmann::json out = {{"tokenizer", argv[1]}, {"bytes", text.size()}, {"tokens", ids.size()},
                        {"best_s", best},      {"tokens_per_s", ids.size() / best}, {"load_s", load_s},
                        {"impl", "tandem"}};
  if (argc > 3) {
    auto expected = nlohmann::json::parse(slurp(argv[3])).get<std::vector<int32_t>>();
    out["matches_expected"] = expected == ids;
    if (expected != ids) {
      size_t i = 0;
      while (i < ids.size() && i < expected.size() && ids[i] == expected[i]) ++i;
      out["first_mismatch"] = i;
    }
  }
  std::printf("%s\n", out.dump().c_str());
  return 0;
}
