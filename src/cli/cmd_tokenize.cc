// tandem tokenize / detokenize: HF tokenizer.json tokenizers from the command line.
//   tandem tokenize --tokenizer PATH [--no-special] --jsonl      one JSON string per stdin line
//                                                                -> one JSON array of ids per line
//   tandem tokenize --tokenizer PATH [--no-special] "some text"  -> one JSON array
//   tandem tokenize --tokenizer PATH --bench FILE                encode throughput on FILE
//   tandem detokenize --tokenizer PATH [--skip-special] --jsonl  JSON array of ids per line
//                                                                -> JSON string per line
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>

#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "cli/common.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"

namespace tandem::cli {
namespace {

using json = nlohmann::json;

struct TokenizeOptions {
  std::string tokenizer;
  bool no_special = false;
  bool skip_special = false;
  bool jsonl = false;
  std::string text;
  std::string bench_file;
};

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

void run_bench(const Tokenizer& tok, const std::string& path, bool add_special) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail("cannot open benchmark text {}", path);
  std::ostringstream ss;
  ss << f.rdbuf();
  std::string text = ss.str();
  std::vector<int32_t> ids = tok.encode(text, add_special);  // warm-up
  double best = 1e30;
  for (int r = 0; r < 3; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    ids = tok.encode(text, add_special);
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  json out = {{"bytes", text.size()}, {"tokens", ids.size()}, {"best_s", best}, {"tokens_per_s", ids.size() / best}};
  std::printf("%s\n", out.dump().c_str());
}

void run_tokenize(const TokenizeOptions& o) {
  Tokenizer tok = Tokenizer::load(o.tokenizer);
  bool add_special = !o.no_special;
  if (!o.bench_file.empty()) return run_bench(tok, o.bench_file, add_special);
  if (!o.jsonl) {
    std::printf("%s\n", dump(json(tok.encode(o.text, add_special))).c_str());
    return;
  }
  for_each_stdin_json([&](const json& j, size_t lineno) {
    if (!j.is_string()) fail("stdin line {}: expected a JSON string", lineno);
    std::string out = dump(json(tok.encode(j.get_ref<const std::string&>(), add_special)));
    std::fwrite(out.data(), 1, out.size(), stdout);
    std::fputc('\n', stdout);
  });
  std::fflush(stdout);
}

void run_detokenize(const TokenizeOptions& o) {
  Tokenizer tok = Tokenizer::load(o.tokenizer);
  std::vector<int32_t> ids;
  for_each_stdin_json([&](const json& j, size_t lineno) {
    if (!j.is_array()) fail("stdin line {}: expected a JSON array of token ids", lineno);
    ids.clear();
    for (const auto& v : j) {
      if (!v.is_number_integer()) fail("stdin line {}: token ids must be integers", lineno);
      ids.push_back(v.get<int32_t>());
    }
    std::string out = dump(json(tok.decode(ids, o.skip_special)));
    std::fwrite(out.data(), 1, out.size(), stdout);
    std::fputc('\n', stdout);
  });
  std::fflush(stdout);
}

const RegisterCommand tokenize_command("tokenize", "Encode text with a tokenizer.json tokenizer", [](CLI::App& app) {
  auto o = std::make_shared<TokenizeOptions>();
  app.add_option("--tokenizer", o->tokenizer, "tokenizer.json or a directory containing it")->required();
  app.add_flag("--no-special", o->no_special, "Do not add the post-processor's special tokens (e.g. <bos>)");
  app.add_flag("--jsonl", o->jsonl, "Read one JSON string per stdin line, write one JSON id array per line");
  app.add_option("--bench", o->bench_file, "Time single-threaded encoding of this file (best of 3)");
  app.add_option("text", o->text, "Text to encode (without --jsonl)");
  app.callback([o] { run_tokenize(*o); });
});

const RegisterCommand detokenize_command("detokenize", "Decode token ids with a tokenizer.json tokenizer",
                                         [](CLI::App& app) {
  auto o = std::make_shared<TokenizeOptions>();
  app.add_option("--tokenizer", o->tokenizer, "tokenizer.json or a directory containing it")->required();
  app.add_flag("--skip-special", o->skip_special, "Drop special tokens from the output");
  app.add_flag("--jsonl", o->jsonl, "Read one JSON id array per stdin line, write one JSON string per line")
      ->required();
  app.callback([o] { run_detokenize(*o); });
});

}  // namespace
}  // namespace tandem::cli
