// The llama.cpp side of the peer benchmark: a small program against llama.h (compiled by run.mjs
// from the llama.cpp source bundled in node-llama-cpp and linked to its prebuilt libraries), timed the
// way `tandem generate` is: prefill of the prompt ids, then greedy decode one token at a time, with
// the argmax taken here over the returned logits (ties to the lowest id) so both engines pick tokens
// by the same rule.
//
//   llama_driver run MODEL.gguf --threads N (--ids 1,2,3 | --text T) --n-gen M   -> one JSON line
//   (--text: the prompt as llama.cpp tokenizes it, special tokens parsed, <bos> added)
//   llama_driver quantize IN.gguf OUT.gguf q8_0|q4_0                  (llama.cpp's default quantize rules)
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "ggml-backend.h"
#include "llama.h"

namespace {

using Clock = std::chrono::steady_clock;

[[noreturn]] void die(const std::string& msg) {
  std::fprintf(stderr, "llama_driver: %s\n", msg.c_str());
  std::exit(1);
}

std::vector<llama_token> parse_ids(const char* s) {
  std::vector<llama_token> ids;
  for (char* end; *s; s = *end ? end + 1 : end) {
    ids.push_back(static_cast<llama_token>(std::strtol(s, &end, 10)));
    if (end == s) die(std::string("bad id list: ") + s);
  }
  return ids;
}

llama_token argmax(const float* logits, int n) {
  int best = 0;
  for (int i = 1; i < n; ++i)
    if (logits[i] > logits[best]) best = i;
  return best;
}

void quiet_log(ggml_log_level level, const char* text, void*) {
  if (level >= GGML_LOG_LEVEL_ERROR) std::fputs(text, stderr);
}

int run(const char* model_path, int threads, std::vector<llama_token> prompt, const std::string& text, int n_gen) {
  llama_model_params mp = llama_model_default_params();
  mp.progress_callback = [](float, void*) { return true; };  // no progress dots
  llama_model* model = llama_model_load_from_file(model_path, mp);
  if (!model) die(std::string("cannot load ") + model_path);
  llama_context_params cp = llama_context_default_params();
  const size_t n_prompt_max = text.empty() ? prompt.size() : text.size() + 2;
  cp.n_ctx = static_cast<uint32_t>(n_prompt_max + n_gen + 16);
  cp.n_batch = cp.n_ubatch = static_cast<uint32_t>(n_prompt_max);
  cp.n_threads = cp.n_threads_batch = threads;
  cp.no_perf = true;
  llama_context* ctx = llama_init_from_model(model, cp);
  if (!ctx) die("cannot create a context");
  const llama_vocab* vocab = llama_model_get_vocab(model);
  const int n_vocab = llama_vocab_n_tokens(vocab);
  if (!text.empty()) {
    prompt.resize(text.size() + 2);
    const int n = llama_tokenize(vocab, text.data(), static_cast<int32_t>(text.size()), prompt.data(),
                                 static_cast<int32_t>(prompt.size()), /*add_special=*/true, /*parse_special=*/true);
    if (n < 0) die("tokenizing the prompt failed");
    prompt.resize(n);
  }

  std::vector<llama_token> tokens = prompt;
  const auto t0 = Clock::now();
  if (llama_decode(ctx, llama_batch_get_one(tokens.data(), static_cast<int32_t>(tokens.size())))) die("prefill failed");
  std::vector<llama_token> out{argmax(llama_get_logits_ith(ctx, -1), n_vocab)};
  const auto t1 = Clock::now();
  while (static_cast<int>(out.size()) < n_gen) {
    llama_token t = out.back();
    if (llama_decode(ctx, llama_batch_get_one(&t, 1))) die("decode failed");
    out.push_back(argmax(llama_get_logits_ith(ctx, -1), n_vocab));
  }
  const auto t2 = Clock::now();
  const double prefill = std::chrono::duration<double>(t1 - t0).count();
  const double decode = std::chrono::duration<double>(t2 - t1).count();
  std::printf("{\"prefill_seconds\": %.6f, \"decode_seconds\": %.6f, \"n_prompt\": %zu, \"ids\": [", prefill, decode,
              prompt.size());
  for (size_t i = 0; i < out.size(); ++i) std::printf("%s%d", i ? ", " : "", out[i]);
  std::printf("]}\n");
  llama_free(ctx);
  llama_model_free(model);
  return 0;
}

int quantize(const char* in, const char* out, const std::string& type) {
  llama_model_quantize_params qp = llama_model_quantize_default_params();
  if (type == "q8_0") qp.ftype = LLAMA_FTYPE_MOSTLY_Q8_0;
  else if (type == "q4_0") qp.ftype = LLAMA_FTYPE_MOSTLY_Q4_0;
  else die("quantize type must be q8_0 or q4_0");
  if (llama_model_quantize(in, out, &qp) != 0) die(std::string("quantizing ") + in + " failed");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  llama_log_set(quiet_log, nullptr);
  // The CPU backends are separate libraries next to libllama; load the best one for this CPU.
  const char* libs = std::getenv("LLAMA_DRIVER_LIBS");
  if (libs) ggml_backend_load_all_from_path(libs);
  else ggml_backend_load_all();
  llama_backend_init();
  if (argc >= 5 && !std::strcmp(argv[1], "quantize")) return quantize(argv[2], argv[3], argv[4]);
  if (argc < 3 || std::strcmp(argv[1], "run"))
    die("usage: llama_driver run MODEL --threads N (--ids A,B,C | --text T) --n-gen M");
  int threads = 1, n_gen = 16;
  std::vector<llama_token> ids;
  std::string text;
  for (int i = 3; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--threads")) threads = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--ids")) ids = parse_ids(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--text")) text = argv[i + 1];
    else if (!std::strcmp(argv[i], "--n-gen")) n_gen = std::atoi(argv[i + 1]);
    else die(std::string("unknown option ") + argv[i]);
  }
  if (ids.empty() == text.empty() || n_gen < 1 || threads < 1)
    die("need one of --ids and --text, --n-gen >= 1 and --threads >= 1");
  return run(argv[2], threads, ids, text, n_gen);
}
