// Structured-output cost on a real vocabulary: grammar compile time and per-token mask time
// (median, p99) for a tool-call-like JSON schema, JSON object mode and a regex, on the Gemma 3
// tokenizer (262k tokens). The decoded path is the tokenizer's own encoding of valid documents,
// so every step is a state a model would visit.
//   usage: bench_grammar [TOKENIZER_DIR]   (default .cache/tokenizers/gemma3 under the current
//          directory, from tests/tokenizer/fetch_tokenizers.sh; run from the repository root)
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "grammar/matcher.h"
#include "tokenizer/tokenizer.h"

using namespace tandem;
using namespace tandem::grammar;

namespace {

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

const char* kToolSchema = R"({
  "type": "object",
  "properties": {
    "name": {"type": "string", "enum": ["get_weather", "search_flights", "book_hotel"]},
    "arguments": {
      "type": "object",
      "properties": {
        "location": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer"},
        "legs": {
          "type": "array",
          "items": {
            "type": "object",
            "properties": {
              "from": {"type": "string", "minLength": 3, "maxLength": 3},
              "to": {"type": "string", "minLength": 3, "maxLength": 3},
              "date": {"type": "string", "format": "date"},
              "cabin": {"enum": ["economy", "business", "first"]},
              "flexible": {"type": "boolean"}
            },
            "required": ["from", "to", "date"],
            "additionalProperties": false
          },
          "minItems": 1
        },
        "notes": {"type": ["string", "null"]}
      },
      "required": ["location"],
      "additionalProperties": false
    }
  },
  "required": ["name", "arguments"],
  "additionalProperties": false
})";

const std::vector<std::string> kToolDocs = {
    R"({"name": "search_flights", "arguments": {"location": "Paris, France", "unit": "celsius", "days": 3, "legs": [{"from": "CDG", "to": "JFK", "date": "2025-03-14", "cabin": "business", "flexible": false}, {"from": "JFK", "to": "CDG", "date": "2025-03-21"}], "notes": "Window seat if possible; the traveller is vegetarian and needs a late check-out."}})",
    R"({"name":"get_weather","arguments":{"location":"São Paulo","unit":"fahrenheit","days":10,"notes":null}})",
    "{\n  \"name\": \"book_hotel\",\n  \"arguments\": {\n    \"location\": \"東京 (Tokyo)\",\n    \"legs\": [\n      {\"from\": \"HND\", \"to\": \"KIX\", \"date\": \"2024-12-01\"}\n    ],\n    \"notes\": \"Quiet room, \\\"non-smoking\\\" please.\\nArriving late.\"\n  }\n}",
};

struct Stats {
  std::vector<double> us;
  double pct(double p) {
    std::sort(us.begin(), us.end());
    return us.empty() ? 0 : us[std::min(us.size() - 1, static_cast<size_t>(p * (us.size() - 1) + 0.5))];
  }
  double mean() const {
    double s = 0;
    for (double x : us) s += x;
    return us.empty() ? 0 : s / us.size();
  }
};

void run(const std::string& label, const std::function<CompiledGrammar()>& make, const std::vector<std::string>& docs,
         const Tokenizer& tok, int reps) {
  std::vector<double> compile_ms;
  std::optional<CompiledGrammar> g;
  for (int i = 0; i < 3; ++i) {
    double t0 = now();
    g.emplace(make());
    compile_ms.push_back((now() - t0) * 1e3);
  }
  std::sort(compile_ms.begin(), compile_ms.end());
  const Vocabulary& v = g->vocabulary();
  std::vector<uint32_t> words(v.bitmask_words());
  Stats mask, accept;
  size_t tokens = 0;
  for (int r = 0; r < reps; ++r) {
    for (const auto& doc : docs) {
      GrammarMatcher m(*g);
      auto ids = tok.encode(doc, false);
      for (size_t i = 0; i <= ids.size(); ++i) {
        double t0 = now();
        m.fill_next_token_bitmask(words.data());
        double t1 = now();
        mask.us.push_back((t1 - t0) * 1e6);
        if (std::getenv("BENCH_GRAMMAR_SLOW") && (t1 - t0) * 1e6 > 100)
          fmt::print(stderr, "{}: {:.0f} us after {:?}\n", label, (t1 - t0) * 1e6, tok.decode(std::vector<int32_t>(ids.begin(), ids.begin() + i)));
        int32_t id = i < ids.size() ? ids[i] : v.stop_ids().at(0);
        if (!bitmask_allows(words.data(), id)) {
          fmt::print(stderr, "{}: token {} ({}) at {} not allowed by the mask\n", label, id, tok.token_text(id), i);
          std::exit(1);
        }
        double t2 = now();
        if (!m.accept_token(id)) {
          fmt::print(stderr, "{}: accept_token failed at {}\n", label, i);
          std::exit(1);
        }
        accept.us.push_back((now() - t2) * 1e6);
        ++tokens;
      }
    }
  }
  fmt::print("| {:<22} | {:>10.1f} | {:>6} | {:>6} | {:>8.1f} | {:>6} | {:>8.1f} | {:>8.1f} | {:>8.1f} | {:>8.1f} |\n", label,
             compile_ms[1], g->num_states(), g->num_cached_states(), g->cache_bytes() / 1048576.0, tokens / reps,
             mask.pct(0.5), mask.pct(0.99), mask.mean(), accept.pct(0.5));
}

}  // namespace

int main(int argc, char** argv) {
  namespace fs = std::filesystem;
  std::string dir = argc > 1 ? argv[1] : (fs::path(".cache") / "tokenizers" / "gemma3").string();
  if (!fs::exists(fs::path(dir) / "tokenizer.json")) {
    fmt::print(stderr, "no tokenizer at {} (run tests/tokenizer/fetch_tokenizers.sh, or pass a directory)\n", dir);
    return 1;
  }
  double t0 = now();
  Tokenizer tok = Tokenizer::load(dir);
  double t1 = now();
  auto vocab = Vocabulary::from_tokenizer(tok);
  double t2 = now();
  fmt::print("tokenizer {}: {} tokens, load {:.2f} s, grammar vocabulary + trie {:.0f} ms\n\n", dir, vocab->size(), t1 - t0,
             (t2 - t1) * 1e3);
  fmt::print("| {:<22} | {:>10} | {:>6} | {:>6} | {:>8} | {:>6} | {:>8} | {:>8} | {:>8} | {:>8} |\n", "grammar", "compile ms",
             "states", "cached", "cache MB", "tokens", "mask p50", "mask p99", "mask avg", "accept");
  fmt::print("|{:-<24}|{:->12}|{:->8}|{:->8}|{:->10}|{:->8}|{:->10}|{:->10}|{:->10}|{:->10}|\n", "", "", "", "", "", "", "", "",
             "", "");
  const int reps = 3;
  run("tool-call JSON schema", [&] { return compile_json_schema(kToolSchema, vocab); }, kToolDocs, tok, reps);
  JsonSchemaOptions compact;
  compact.compact = true;
  run("  (compact whitespace)", [&] { return compile_json_schema(kToolSchema, vocab, compact); }, {kToolDocs[1]}, tok, reps);
  run("json_object", [&] { return compile_json_object(vocab); }, kToolDocs, tok, reps);
  run("string maxLength 64", [&] { return compile_json_schema(R"({"type":"string","maxLength":64})", vocab); },
      {R"("A short answer, with \"quotes\" and ünïcödé.")"}, tok, reps);
  run("regex (date-time)", [&] { return compile_regex(R"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z)", vocab); },
      {"2025-03-14T09:26:53Z"}, tok, reps);
  fmt::print("\ntimes in microseconds per token unless noted; mask = fill_next_token_bitmask over {} tokens\n", vocab->size());
  return 0;
}
