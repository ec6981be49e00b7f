// tandem serve: the OpenAI-compatible server, with vLLM's command-line flags.
//   tandem serve [MODEL_DIR] --host 127.0.0.1 --port 8000 --served-model-name NAME
//     --max-num-batched-tokens N --max-num-seqs N --max-model-len N --gpu-memory-utilization F
//     --[no-]enable-prefix-caching (on by default) --enable-chunked-prefill --dtype auto
//     --speculative-config JSON --api-key KEY (or $VLLM_API_KEY) --allowed-origins JSON ...
//     --device cpu|cuda|cuda:N|auto --threads N --kv-cache-memory BYTES | --kv-cache-gb GB
//     --kv-cache-dtype auto|bf16|f32 --load-format safetensors|dummy (with --tokenizer DIR)
//     --enable-auto-tool-choice --tool-call-parser gemma4 --reasoning-parser gemma4 --no-web-ui
// Without MODEL_DIR it serves the bundled model with its drafter (speculation on, k = 2).
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <cctype>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <optional>
#include <thread>

#include <fmt/ranges.h>

#include "bench/progress.h"
#include "bench/report.h"
#include "bench/sweep.h"
#include "cli/command.h"
#include "cli/common.h"
#include "engine/engine.h"
#include "engine/image_prompt.h"
#include "model/gemma4_vision.h"
#include "model/tensor_parallel_group.h"
#include "model/config.h"
#include "server/adapters.h"
#include "server/api_error.h"
#include "server/http_server.h"
#include "server/reasoning_parser.h"
#include "server/tool_parser.h"
#include "spec/speculative_config.h"
#include "util/error.h"
#include "util/json_parse.h"
#include "util/log.h"

namespace tandem::cli {
namespace {

struct ServeOptions {
  std::string model;
  std::string host = "127.0.0.1";
  int port = 8000;
  std::vector<std::string> served_model_names;
  int max_num_batched_tokens = 2048;
  int max_num_seqs = 64;
  int max_model_len = 0;  // 0: the model's max_position_embeddings, at most 8192
  double gpu_memory_utilization = 0.9;
  bool gpu_memory_utilization_set = false;
  bool enable_prefix_caching = false, no_enable_prefix_caching = false;  // on unless --no-enable-prefix-caching
  bool enable_chunked_prefill = false, no_enable_chunked_prefill = false;
  std::string dtype = "auto";
  std::string speculative_config;
  std::string api_key;
  BackendOptions backend;
  std::string kv_cache_memory;
  double kv_cache_gb = 0;
  std::string tokenizer;
  std::string load_format = "safetensors";
  std::string chat_template;
  int max_body_mb = 0;  // 0: from --max-model-len (see below)
  bool disable_log_requests = false, disable_log_stats = false;
  bool no_web_ui = false;
  std::string allowed_origins = "[\"*\"]", allowed_methods = "[\"*\"]", allowed_headers = "[\"*\"]";
  bool allow_credentials = false;
  bool enable_auto_tool_choice = false;
  std::string tool_call_parser, reasoning_parser;
  std::string limit_mm_per_prompt, allowed_local_media_path, mm_processor_kwargs;
  std::string image_attention = "auto";
  QuantizationOptions quantization;
};

// Images (vLLM's flags): the per-prompt limit ('{"image": N}'; video and audio are not taken, so
// they may only be 0) and the processor's soft-token budget ('{"max_soft_tokens": N}').
struct ImageFlags {
  int max_images = 999;  // vLLM's default per modality
  int soft_tokens = 0;   // 0: the model's default
};

ImageFlags parse_image_flags(const ServeOptions& o) {
  ImageFlags f;
  auto object = [](const char* flag, const std::string& text) {
    nlohmann::json j;
    try {
      j = parse_json(text);
    } catch (const std::exception& e) {
      fail("{} must be a JSON object: {}", flag, e.what());
    }
    if (!j.is_object()) fail("{} must be a JSON object", flag);
    return j;
  };
  if (!o.limit_mm_per_prompt.empty()) {
    const nlohmann::json limits = object("--limit-mm-per-prompt", o.limit_mm_per_prompt);
    for (const auto& [k, v] : limits.items()) {
      if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > 1000000)
        fail("--limit-mm-per-prompt: \"{}\" must be a count, got {}", k, v.dump());
      if (k == "image") f.max_images = v.get<int>();
      else if ((k == "video" || k == "audio") && v.get<int>() > 0)
        fail("--limit-mm-per-prompt: tandem takes no {} input; only \"image\" may be above 0", k);
      else if (k != "video" && k != "audio")
        fail("--limit-mm-per-prompt: unknown modality \"{}\" (image, video, audio)", k);
    }
  }
  if (!o.mm_processor_kwargs.empty()) {
    const nlohmann::json kwargs = object("--mm-processor-kwargs", o.mm_processor_kwargs);
    for (const auto& [k, v] : kwargs.items()) {
      if (k != "max_soft_tokens") fail("--mm-processor-kwargs: only max_soft_tokens is supported, got \"{}\"", k);
      if (!v.is_number_integer() || !vision::is_soft_token_budget(v.get<int>()))
        fail("--mm-processor-kwargs: max_soft_tokens must be one of 70, 140, 280, 560, 1120, got {}", v.dump());
      f.soft_tokens = v.get<int>();
    }
  }
  if (!o.allowed_local_media_path.empty() && !std::filesystem::is_directory(o.allowed_local_media_path))
    fail("--allowed-local-media-path {} is not a directory", o.allowed_local_media_path);
  return f;
}

// vLLM's CORS flags take JSON lists of strings.
std::vector<std::string> json_string_list(const char* flag, const std::string& text) {
  nlohmann::json j;
  try {
    j = parse_json(text);
  } catch (const std::exception& e) {
    fail("{} must be a JSON list of strings, e.g. '[\"*\"]': {}", flag, e.what());
  }
  if (!j.is_array()) fail("{} must be a JSON list of strings, e.g. '[\"*\"]'", flag);
  std::vector<std::string> out;
  for (const auto& x : j) {
    if (!x.is_string()) fail("{} must be a JSON list of strings, e.g. '[\"*\"]'", flag);
    out.push_back(x.get<std::string>());
  }
  return out;
}

// The server binds its port before the model loads (so a busy port fails at once); until the
// engine and tokenizer exist these stand in for them. The server only calls submit / abort /
// stats and the codec once run() serves, which is after attach().
class LateService : public server::InferenceService {
 public:
  LateService(int max_model_len, int k) : max_model_len_(max_model_len), k_(k) {}
  void attach(Engine& engine) { engine_ = &engine; }
  uint64_t submit(Request r, OutputCallback cb) override { return engine_->submit(std::move(r), std::move(cb)); }
  void abort(uint64_t id) override { engine_->abort(id); }
  EngineStats stats() const override { return engine_ ? engine_->stats() : EngineStats{}; }
  int max_model_len() const override { return max_model_len_; }
  int num_speculative_tokens() const override { return k_; }

 private:
  Engine* engine_ = nullptr;
  int max_model_len_, k_;
};

class LateCodec : public server::TextCodec {
 public:
  void attach(const server::TextCodec& codec) { c_ = &codec; }
  std::vector<int32_t> encode(std::string_view t, bool special) const override { return c_->encode(t, special); }
  std::string decode(std::span<const int32_t> ids, bool skip) const override { return c_->decode(ids, skip); }
  std::unique_ptr<server::IncrementalDecoder> stream_decoder(bool skip) const override {
    return c_->stream_decoder(skip);
  }
  std::optional<int32_t> token_id(std::string_view t) const override { return c_->token_id(t); }
  std::vector<int32_t> eos_ids() const override { return c_->eos_ids(); }
  int32_t vocab_size() const override { return c_->vocab_size(); }
  bool has_chat_template() const override { return c_->has_chat_template(); }
  std::string render_chat(const nlohmann::json& v) const override { return c_->render_chat(v); }
  std::string bos_token() const override { return c_->bos_token(); }
  std::string eos_token() const override { return c_->eos_token(); }
  std::string chat_template_source() const override { return c_->chat_template_source(); }
  server::GrammarCompiler* grammar_compiler() const override { return c_->grammar_compiler(); }

 private:
  const server::TextCodec* c_ = nullptr;
};

// Every `interval` while there is activity: throughput, queue, KV usage and speculative acceptance
// over the interval (the numbers vLLM logs, from the same counters /metrics exports).
class StatsLogger {
 public:
  StatsLogger(Engine& engine, std::chrono::seconds interval) : engine_(engine), interval_(interval) {
    thread_ = std::thread([this] { loop(); });
  }
  ~StatsLogger() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

 private:
  void loop() {
    EngineStats last = engine_.stats();
    std::unique_lock<std::mutex> lock(mutex_);
    while (!cv_.wait_for(lock, interval_, [&] { return stop_; })) {
      const EngineStats now = engine_.stats();
      const double dt = static_cast<double>(interval_.count());
      const uint64_t prompt = now.prompt_tokens - last.prompt_tokens;
      const uint64_t gen = now.generation_tokens - last.generation_tokens;
      if (prompt || gen || now.num_running || now.num_waiting) {
        log::info("prompt throughput {:.1f} tok/s, generation throughput {:.1f} tok/s, running {} reqs, waiting {} "
                  "reqs, KV cache usage {:.1f}%",
                  prompt / dt, gen / dt, now.num_running, now.num_waiting, 100.0 * now.kv_usage);
        const uint64_t drafts = now.spec.num_drafts - last.spec.num_drafts;
        const uint64_t drafted = now.spec.num_draft_tokens - last.spec.num_draft_tokens;
        const uint64_t accepted = now.spec.num_accepted_tokens - last.spec.num_accepted_tokens;
        if (drafts > 0) {
          std::string per_pos;
          for (size_t i = 0; i < now.spec.accepted_per_position.size(); ++i) {
            const uint64_t prev = i < last.spec.accepted_per_position.size() ? last.spec.accepted_per_position[i] : 0;
            per_pos += fmt::format("{}{:.3f}", i ? ", " : "", double(now.spec.accepted_per_position[i] - prev) / drafts);
          }
          log::info("speculative decoding: mean acceptance length {:.2f}, accepted {} / drafted {} tokens "
                    "({:.1f}%), per-position acceptance rate {}",
                    1.0 + double(accepted) / drafts, accepted, drafted, drafted ? 100.0 * accepted / drafted : 0.0,
                    per_pos);
        }
      }
      last = now;
    }
  }

  Engine& engine_;
  std::chrono::seconds interval_;
  std::mutex mutex_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

// POST /tandem/sweep, for the web page's sweep tab: `tandem bench sweep --endpoint`'s code, run
// against this server over loopback HTTP (the same requests, /metrics counters and statistics),
// once per prompt; each setting's iterations and counters are pooled over the prompts. Body:
// {"ks": [0, 1, 2], "prompts": ["..."], "iterations": 3, "max_tokens": 64, "warmup": 1}.
nlohmann::json run_web_sweep(const nlohmann::json& body, const std::string& url, const std::string& model,
                             const std::string& api_key, int configured_k) {
  using server::bad_request;
  auto integer = [&](const char* key, int fallback, int lo, int hi) {
    if (!body.contains(key)) return fallback;
    const auto& v = body[key];
    if (!v.is_number_integer() || v.get<int64_t>() < lo || v.get<int64_t>() > hi)
      throw bad_request(fmt::format("'{}' must be an integer in {}..{}", key, lo, hi), key);
    return v.get<int>();
  };
  bench::SweepOptions o;
  o.iterations = integer("iterations", 3, 1, 20);
  o.warmup = integer("warmup", 1, 0, 5);
  o.max_tokens = integer("max_tokens", 64, 1, 2048);
  o.ks.clear();
  if (!body.contains("ks") || !body["ks"].is_array() || body["ks"].empty() || body["ks"].size() > 17)
    throw bad_request("'ks' must be a list of 1..17 settings (0 = baseline)", "ks");
  for (const auto& k : body["ks"]) {
    if (!k.is_number_integer() || k.get<int64_t>() < 0 || k.get<int64_t>() > configured_k)
      throw bad_request(fmt::format("each of 'ks' must be an integer in 0..{} (the server's k)", configured_k), "ks");
    o.ks.push_back(k.get<int>());
  }
  std::vector<std::string> prompts;
  const auto bad_prompts = [] { return bad_request("'prompts' must be a list of 1..8 non-empty strings", "prompts"); };
  if (!body.contains("prompts") || !body["prompts"].is_array()) throw bad_prompts();
  for (const auto& p : body["prompts"]) {
    if (!p.is_string() || p.get<std::string>().empty()) throw bad_prompts();
    prompts.push_back(p.get<std::string>());
  }
  if (prompts.empty() || prompts.size() > 8) throw bad_prompts();

  // One sweep at a time: concurrent ones would measure each other.
  static std::mutex running;
  std::unique_lock<std::mutex> lock(running, std::try_to_lock);
  if (!lock.owns_lock()) throw server::ApiError(409, "a sweep is already running", "", "conflict");

  bench::EndpointTarget t;
  t.url = url, t.model = model, t.api_key = api_key;
  bench::Progress progress(0, false, /*quiet=*/true);
  std::vector<bench::SettingResult> pooled;
  nlohmann::json meta;
  try {
    for (const auto& p : prompts) {
      t.prompt = p;
      auto results = bench::run_endpoint_sweep(o, t, progress, &meta);
      if (pooled.empty()) {
        pooled = std::move(results);
        continue;
      }
      for (size_t i = 0; i < results.size(); ++i) {
        auto& its = pooled[i].iterations;
        its.insert(its.end(), results[i].iterations.begin(), results[i].iterations.end());
        pooled[i].spec = pooled[i].spec.plus(results[i].spec);
      }
    }
  } catch (const Error& e) {
    throw server::ApiError(500, fmt::format("the sweep failed: {}", e.what()), "", "internal_server_error");
  }
  meta["prompts"] = prompts;
  meta["iterations_per_prompt"] = o.iterations;
  meta["max_tokens"] = o.max_tokens;
  auto rows = bench::summarize(pooled);
  bench::compute_speedups(rows);
  return bench::to_json(meta, pooled, rows);
}

void run_serve(ServeOptions o) {
  // Signals go to a dedicated thread (sigwait); block them before any thread is created.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  // vLLM's checks of the tool-calling and reasoning flags, before anything loads.
  if (!o.tool_call_parser.empty() && !server::is_tool_call_parser(o.tool_call_parser))
    fail("invalid tool call parser: {} (chose from {{ {} }})", o.tool_call_parser,
         fmt::join(server::tool_call_parser_names(), ", "));
  if (o.enable_auto_tool_choice && o.tool_call_parser.empty())
    fail("--enable-auto-tool-choice requires --tool-call-parser");
  if (!o.reasoning_parser.empty() && !server::is_reasoning_parser(o.reasoning_parser))
    fail("invalid reasoning parser: {} (chose from {{ {} }})", o.reasoning_parser,
         fmt::join(server::reasoning_parser_names(), ", "));

  const bool bundled = o.model.empty();
  const std::string model_dir = bundled ? bundled_model_dir() : o.model;
  if (!std::filesystem::is_directory(model_dir)) fail("model directory {} does not exist", model_dir);
  if (bundled && o.speculative_config.empty()) {
    const std::string drafter = bundled_drafter_dir();
    if (std::filesystem::is_directory(drafter)) {
      // k = 2: the fastest setting of the bundled pair in every measured sweep (docs/PERF.md).
      o.speculative_config =
          nlohmann::json{{"method", "mtp"}, {"model", drafter}, {"num_speculative_tokens", 2}}.dump();
    } else {
      log::warn("bundled drafter missing at {}; serving without speculation", drafter);
    }
  }
  std::string name = std::filesystem::path(model_dir).lexically_normal().filename().string();
  if (name.empty()) name = std::filesystem::path(model_dir).lexically_normal().parent_path().filename().string();
  if (o.served_model_names.empty()) o.served_model_names = {name};

  // 1. Everything that can be checked without the weights, so a wrong flag fails within a second.
  if (o.dtype != "auto" && o.dtype != "float32" && o.dtype != "bfloat16" && o.dtype != "float16" &&
      o.dtype != "half" && o.dtype != "float" && o.dtype != "bf16")
    fail("--dtype must be auto, bfloat16, float16 or float32, got \"{}\"", o.dtype);
  const ModelConfig mc = load_model_config(model_dir);
  const ImageFlags image_flags = parse_image_flags(o);
  // Images need the whole block of one image's soft tokens in one step (its rows attend to each
  // other), so the step budget must hold one. vLLM makes the same check with its encoder budget,
  // which for Gemma 4 also counts a video (32 frames × (70 + 2 + 6) = 2496 tokens); tandem takes no
  // video, so only the image budget counts.
  const bool images = mc.takes_images() && image_flags.max_images > 0;
  const int image_tokens = images ? image_soft_token_budget(mc, image_flags.soft_tokens) : 0;
  if (images && o.max_num_batched_tokens < image_tokens)
    fail("--max-num-batched-tokens {} cannot hold one image: the {} soft tokens of an image are prefilled in one step. "
         "Raise --max-num-batched-tokens to {} or more, lower --mm-processor-kwargs '{{\"max_soft_tokens\": N}}', or "
         "take no images with --limit-mm-per-prompt '{{\"image\": 0}}'",
         o.max_num_batched_tokens, image_tokens, image_tokens);
  std::optional<SpeculativeConfig> spec;
  if (!o.speculative_config.empty()) spec = parse_speculative_config(o.speculative_config);
  std::string chat_template_source;
  if (!o.chat_template.empty()) {
    std::ifstream f(o.chat_template);
    if (!f) fail("--chat-template: cannot read {}", o.chat_template);
    chat_template_source.assign(std::istreambuf_iterator<char>(f), {});
  }
  const std::string tokenizer_dir = o.tokenizer.empty() ? model_dir : o.tokenizer;
  if (!std::filesystem::is_directory(tokenizer_dir)) fail("--tokenizer: directory {} does not exist", tokenizer_dir);
  const LoadFormat load_format = parse_load_format(o.load_format);
  // A benchmark config directory holds config.json alone: random weights need a tokenizer from elsewhere.
  if (load_format == LoadFormat::dummy && !std::filesystem::exists(std::filesystem::path(tokenizer_dir) / "tokenizer.json"))
    fail("--load-format dummy: {} has no tokenizer.json; give one with --tokenizer DIR", tokenizer_dir);
  if (!o.kv_cache_memory.empty()) parse_bytes("--kv-cache-memory", o.kv_cache_memory);
  if (o.api_key.empty())
    if (const char* env = std::getenv("VLLM_API_KEY"); env && *env) o.api_key = env;  // as vLLM

  EngineConfig config;
  const int model_max = mc.max_position > 0 ? mc.max_position : 8192;
  if (o.max_model_len > model_max)
    fail("--max-model-len {} is larger than the model's max_position_embeddings {}", o.max_model_len, model_max);
  config.max_model_len = o.max_model_len > 0 ? o.max_model_len : std::min(model_max, 8192);
  config.max_num_seqs = o.max_num_seqs;
  config.max_num_batched_tokens = o.max_num_batched_tokens;
  // vLLM's default: prefix caching on; --no-enable-prefix-caching turns it off.
  config.enable_prefix_caching = !o.no_enable_prefix_caching;

  // 2. Bind the port before loading anything large (vLLM does the same): a busy port fails now.
  LateService service(config.max_model_len, spec ? spec->num_speculative_tokens : 0);
  LateCodec late_codec;
  server::ServerOptions so;
  so.host = o.host;
  so.port = o.port;
  so.served_model_names = o.served_model_names;
  so.model_root = std::filesystem::absolute(model_dir).lexically_normal().string();
  so.api_key = o.api_key;
  // Bodies over the limit get 413 from the Content-Length, before they are read. The default
  // allows 128 bytes per token of context (1 MiB at 8192 tokens), far more than a prompt that fits.
  // With images on, at least 64 MiB: base64 image data is far larger than the tokens it becomes.
  so.max_body_bytes = o.max_body_mb > 0 ? static_cast<size_t>(o.max_body_mb) << 20
                                        : std::max<size_t>(images ? 64u << 20 : 1u << 20,
                                                           static_cast<size_t>(config.max_model_len) * 128);
  so.http_threads = std::max(64, 2 * config.max_num_seqs + 32);
  so.allowed_origins = json_string_list("--allowed-origins", o.allowed_origins);
  so.allowed_methods = json_string_list("--allowed-methods", o.allowed_methods);
  so.allowed_headers = json_string_list("--allowed-headers", o.allowed_headers);
  so.allow_credentials = o.allow_credentials;
  so.web_ui = !o.no_web_ui;
  // The sweep calls this server back through its own port, known once bound (below).
  int bound_port = 0;
  if (spec) {
    const std::string loopback = o.host == "0.0.0.0" || o.host.empty() ? "127.0.0.1"
                                 : o.host == "::"                      ? "[::1]"
                                 : o.host.find(':') != std::string::npos ? "[" + o.host + "]"
                                                                         : o.host;
    so.sweep = [&bound_port, loopback, model = o.served_model_names.front(), key = o.api_key,
                k = spec->num_speculative_tokens](const nlohmann::json& body) {
      return run_web_sweep(body, fmt::format("http://{}:{}", loopback, bound_port), model, key, k);
    };
  }
  if (images) {
    so.limits.images.model = &mc;
    so.limits.images.max_images = image_flags.max_images;
    so.limits.images.soft_tokens = image_tokens;
    so.limits.images.allowed_local_media_path = o.allowed_local_media_path;
  }
  so.limits.enable_auto_tool_choice = o.enable_auto_tool_choice;
  so.limits.tool_call_parser = o.tool_call_parser;
  so.limits.reasoning_parser = o.reasoning_parser;
  if (!o.tool_call_parser.empty() || !o.reasoning_parser.empty())
    log::info("tool calls: {}{}; reasoning parser: {}",
              o.tool_call_parser.empty() ? std::string("off") : "parser " + o.tool_call_parser,
              o.enable_auto_tool_choice ? ", auto tool choice on" : "",
              o.reasoning_parser.empty() ? std::string("off") : o.reasoning_parser);
  server::HttpServer http(service, late_codec, so);
  const int port = http.bind();
  bound_port = port;
  log::info("bound {}:{}; loading the model", o.host, port);

  // 3. The tokenizer (the parsers' markers are checked before the weights load), the backend (the
  // GPU memory check needs it), then the model and drafter.
  server::TokenizerCodec codec(Tokenizer::load(tokenizer_dir), chat_template_source);
  late_codec.attach(codec);
  // The parsers read these special tokens; a tokenizer without them cannot produce the format.
  auto need_tokens = [&](const char* flag, const std::string& name, std::initializer_list<const char*> tokens) {
    for (const char* t : tokens)
      if (!codec.token_id(t)) fail("{} {}: the tokenizer has no '{}' token", flag, name, t);
  };
  if (!o.tool_call_parser.empty()) need_tokens("--tool-call-parser", o.tool_call_parser, {"<|tool_call>", "<tool_call|>", "<|\"|>"});
  if (!o.reasoning_parser.empty()) need_tokens("--reasoning-parser", o.reasoning_parser, {"<|channel>", "<channel|>"});

  auto backend = o.backend.make_backend();
  const bool gpu = !backend->is_host();
  size_t gpu_free = 0, gpu_total = 0;
  backend->memory_info(&gpu_free, &gpu_total);
  const double gib = 1024.0 * 1024 * 1024;
  // vLLM's meaning: the fraction of the GPU's total memory this process may use. It cannot be more
  // than what is free when we start.
  if (gpu && o.gpu_memory_utilization * gpu_total > gpu_free + (256ull << 20))
    fail("--gpu-memory-utilization {} asks for {:.1f} GiB of the GPU's {:.1f} GiB, but only {:.1f} GiB are free "
         "(other processes hold the rest); use --gpu-memory-utilization {:.2f} or less",
         o.gpu_memory_utilization, o.gpu_memory_utilization * gpu_total / gib, gpu_total / gib, gpu_free / gib,
         std::floor(100.0 * gpu_free / gpu_total) / 100.0);
  TensorParallelGroup group(*backend, mc, o.backend.tensor_parallel_size, o.backend.threads, load_format,
                           o.quantization.parse());
  Gemma4Model& target = group.rank(0);
  apply_image_attention(o.image_attention, target);
  std::unique_ptr<Gemma4Vision> vision;
  if (images) {
    vision = Gemma4Vision::load(mc, *backend, load_format);
    log::info("images: vision tower loaded ({:.1f} M parameters, {} MiB); {} soft tokens per image (of a step's "
              "--max-num-batched-tokens {}), at most {} per prompt; image-block attention on {} layers",
              vision->parameter_count() / 1e6, vision->weight_bytes() >> 20, image_tokens, o.max_num_batched_tokens,
              image_flags.max_images,
              target.config().image_bidirectional_sliding && target.config().image_bidirectional_full ? "all"
              : target.config().image_bidirectional_sliding                                       ? "sliding"
              : target.config().image_bidirectional_full                                          ? "full"
                                                                                                    : "no");
  } else if (mc.vision) {
    log::info("images: off ({})", mc.takes_images() ? "--limit-mm-per-prompt allows none"
                                                    : "the image marker token ids lie outside the vocabulary");
  }
  // The engine stops on the model's EOS ids; the server reads them (stop tokens are not text) and
  // compiles structured outputs over the model's logits width with them.
  codec.set_model(target.config().vocab_size, target.config().eos_ids);

  std::unique_ptr<Proposer> proposer;
  std::string spec_desc = "off";
  if (spec) {
    // Speculative proposer from src/spec (vLLM's --speculative-config JSON).
    spec->load_format = load_format;
    proposer = make_proposer(*spec, target);
    config.num_speculative_tokens = spec->num_speculative_tokens;
    spec_desc = fmt::format("{} k={}{}", spec->method, spec->num_speculative_tokens,
                            spec->model.empty() ? "" : " drafter " + spec->model);
  }

  // KV cache: explicit size; on a GPU what --gpu-memory-utilization leaves after the weights and the
  // activations of the largest step; on the CPU min(4 GiB, 25% of available memory, what
  // max_num_seqs full-length sequences need). --kv-cache-dtype: bf16 on GPUs, f32 on the CPU by default.
  config.kv_dtype = parse_kv_cache_dtype(o.backend.kv_cache_dtype, *backend);
  // Full layers keep every position; sliding layers only the window of each running sequence (the
  // engine's split of the cache, kv_cache.h).
  const KvSizing sizing = kv_sizing(target.rank_config(), config.block_size, config.kv_dtype);
  const int k = config.num_speculative_tokens;
  const int64_t sliding_cap =
      sizing.sliding_working_set(config.max_num_seqs, config.max_num_batched_tokens, k);
  auto kv_bytes_for = [&](int64_t seqs) {
    return sizing.bytes(sizing.blocks_for(seqs, int64_t{config.max_model_len} + k + 1, sliding_cap));
  };
  const int64_t one_sequence = kv_bytes_for(1);
  int64_t kv_bytes = 0;
  std::string kv_source;
  if (!o.kv_cache_memory.empty()) {
    kv_bytes = parse_bytes("--kv-cache-memory", o.kv_cache_memory), kv_source = "--kv-cache-memory";
  } else if (o.kv_cache_gb > 0) {
    kv_bytes = static_cast<int64_t>(o.kv_cache_gb * (1ll << 30)), kv_source = "--kv-cache-gb";
  } else if (gpu) {
    size_t free_now = 0, total = 0;
    backend->memory_info(&free_now, &total);
    const int64_t used = static_cast<int64_t>(gpu_free) - static_cast<int64_t>(free_now);  // weights so far
    const int64_t rows =
        step_logit_rows(config.max_num_batched_tokens, config.max_num_seqs, config.num_speculative_tokens);
    const int64_t activations = activation_bytes(mc, config.max_num_batched_tokens, rows) +
                                (images ? vision_activation_bytes(mc, image_tokens, config.max_num_batched_tokens) : 0);
    const int64_t budget = static_cast<int64_t>(o.gpu_memory_utilization * static_cast<double>(total));
    kv_bytes = budget - used - activations;
    if (kv_bytes < one_sequence) {
      const double need = static_cast<double>(used + activations + one_sequence) / static_cast<double>(total);
      const int64_t fits = sizing.max_positions(1, kv_bytes, sliding_cap) - k - 1;
      fail("not enough GPU memory for the KV cache: --gpu-memory-utilization {} gives {:.2f} GiB, of which the "
           "weights take {:.2f} GiB and the activations of a {}-token step {:.2f} GiB, leaving {:.2f} GiB; one sequence "
           "of --max-model-len {} needs {:.2f} GiB of KV cache. Use --gpu-memory-utilization {:.2f}{}",
           o.gpu_memory_utilization, budget / gib, used / gib, config.max_num_batched_tokens, activations / gib,
           std::max<int64_t>(kv_bytes, 0) / gib, config.max_model_len, one_sequence / gib, std::ceil(need * 100) / 100,
           fits > 0 ? fmt::format(" or --max-model-len {} or less", fits) : std::string());
    }
    kv_source = fmt::format("--gpu-memory-utilization {} ({:.2f} GiB of {:.2f} GiB; weights {:.2f} GiB, activations "
                            "{:.2f} GiB)", o.gpu_memory_utilization, budget / gib, total / gib, used / gib,
                            activations / gib);
  } else {
    const int64_t avail = mem_available_bytes();
    kv_bytes = std::min<int64_t>(4ll << 30, kv_bytes_for(config.max_num_seqs));
    // Every rank of a tensor-parallel group holds a cache of this size (of its own KV heads).
    if (avail > 0) kv_bytes = std::min<int64_t>(kv_bytes, avail / 4 / o.backend.tensor_parallel_size);
    kv_bytes = std::max<int64_t>(kv_bytes, one_sequence);
    kv_source = o.backend.tensor_parallel_size > 1
                    ? fmt::format("system memory (min of 4 GiB, 25% of available over {} ranks, max-num-seqs "
                                  "full-length sequences; per rank)",
                                  o.backend.tensor_parallel_size)
                    : "system memory (min of 4 GiB, 25% of available, max-num-seqs full-length sequences)";
  }
  config.kv_cache_bytes = kv_bytes;

  if (o.gpu_memory_utilization_set && !gpu)
    log::info("--gpu-memory-utilization {} ignored on CPU; KV cache sized from {}: {} MiB", o.gpu_memory_utilization,
              kv_source, kv_bytes >> 20);
  else
    log::info("KV cache sized from {}: {} MiB", kv_source, kv_bytes >> 20);
  const KvBlocks kv_blocks = sizing.split(kv_bytes, sliding_cap);
  if (sizing.keep > 0)
    log::info("KV cache: {} tokens of full-layer KV ({} bytes/token), sliding layers {} MiB ({} bytes/token for the "
              "last {} positions of each sequence: {} blocks of {}{})",
              kv_blocks.full * config.block_size, sizing.full_block_bytes / config.block_size,
              sizing.bytes({0, kv_blocks.sliding}) >> 20, sizing.sliding_block_bytes / config.block_size, sizing.keep,
              kv_blocks.sliding, config.block_size,
              kv_blocks.sliding == kv_blocks.full ? ", as many as the full layers: the windows of --max-num-seqs "
                                                    "sequences would need more"
                                                  : "");
  else
    log::info("KV cache: {} tokens ({} bytes/token)", kv_blocks.full * config.block_size,
              sizing.full_block_bytes / config.block_size);
  if (gpu)
    log::info("--dtype {}: weights stay in their checkpoint dtype, activations are float32, the KV cache bfloat16",
              o.dtype);
  else
    log::info("--dtype {}: on CPU the weights stay in their checkpoint dtype and activations / KV cache are float32",
              o.dtype);
  if (o.no_enable_chunked_prefill)
    log::info("--no-enable-chunked-prefill: ignored, prefill is always chunked by --max-num-batched-tokens {}",
              config.max_num_batched_tokens);
  else
    log::info("chunked prefill on (chunks of at most --max-num-batched-tokens {} rows per step)",
              config.max_num_batched_tokens);
  log::info("prefix caching {}", config.enable_prefix_caching ? "on (--no-enable-prefix-caching turns it off)" : "off");

  Engine engine(target, std::move(proposer), config);
  engine.set_vision(vision.get());
  engine.start();
  service.attach(engine);

  std::thread signal_thread([&] {
    int sig = 0;
    sigwait(&signals, &sig);
    if (sig == SIGINT || sig == SIGTERM)
      log::info("{} received: shutting down (aborting in-flight requests)", sig == SIGINT ? "SIGINT" : "SIGTERM");
    http.shutdown();
  });

  std::unique_ptr<StatsLogger> stats_logger;
  if (!o.disable_log_stats) stats_logger = std::make_unique<StatsLogger>(engine, std::chrono::seconds(10));

  log::info("tandem serve: model {} as \"{}\", max-model-len {}, max-num-seqs {}, speculation {}", model_dir,
            o.served_model_names.front(), config.max_model_len, config.max_num_seqs, spec_desc);
  log::info("listening on http://{}:{} (OpenAI API at http://{}:{}/v1)", o.host, port, o.host, port);
  http.run();
  http.shutdown();
  pthread_kill(signal_thread.native_handle(), SIGTERM);  // wakes sigwait if no signal came
  signal_thread.join();
  stats_logger.reset();
  engine.stop();
  log::info("server stopped");
}

const RegisterCommand serve_command(
    "serve", "OpenAI-compatible server (vLLM flags); no MODEL_DIR serves the bundled model with speculation",
    [](CLI::App& app) {
      auto o = std::make_shared<ServeOptions>();
      app.add_option("model", o->model, "Target checkpoint directory (default: the bundled model + drafter)");
      app.add_option("--host", o->host, "Address to listen on");
      app.add_option("--port", o->port, "Port (0: any free port)")->check(CLI::Range(0, 65535));
      // One value per flag (repeat it for aliases), so a MODEL_DIR after it is not taken as a name.
      app.add_option("--served-model-name", o->served_model_names,
                     "Model name clients use (default: the directory's name); repeat for aliases")
          ->expected(1)
          ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
      app.add_option("--max-num-batched-tokens", o->max_num_batched_tokens, "Target rows per engine step")
          ->check(CLI::Range(1, 1 << 20));
      app.add_option("--max-num-seqs", o->max_num_seqs, "Sequences per step")->check(CLI::Range(1, 4096));
      app.add_option("--max-model-len", o->max_model_len, "Prompt + completion tokens per request")
          ->check(CLI::Range(1, 1 << 24));
      app.add_option("--gpu-memory-utilization", o->gpu_memory_utilization, "Fraction of the GPU's total memory this process may use (vLLM's meaning): the KV cache gets what the weights and activations leave. Ignored on CPU")
          ->check(CLI::Range(0.0, 1.0))
          ->each([o](const std::string&) { o->gpu_memory_utilization_set = true; });
      app.add_flag("--enable-prefix-caching", o->enable_prefix_caching,
                   "Reuse KV blocks of repeated prompt prefixes (the default, as in vLLM)");
      app.add_flag("--no-enable-prefix-caching", o->no_enable_prefix_caching, "Disable prefix caching");
      app.add_flag("--enable-chunked-prefill", o->enable_chunked_prefill, "Always on (accepted for vLLM compatibility)");
      app.add_flag("--no-enable-chunked-prefill", o->no_enable_chunked_prefill, "Accepted; prefill is always chunked");
      app.add_option("--dtype", o->dtype, "auto|bfloat16|float16|float32 (CPU: weights keep their dtype)");
      app.add_option("--speculative-config", o->speculative_config,
                     "JSON, e.g. {\"method\":\"mtp\",\"model\":DIR,\"num_speculative_tokens\":3}");
      app.add_option("--api-key", o->api_key,
                     "Require 'Authorization: Bearer KEY' on /v1/* (default: $VLLM_API_KEY when set)");
      app.add_option("--allowed-origins", o->allowed_origins, "CORS: JSON list of allowed origins (default [\"*\"])");
      app.add_option("--allowed-methods", o->allowed_methods, "CORS: JSON list of allowed methods (default [\"*\"])");
      app.add_option("--allowed-headers", o->allowed_headers, "CORS: JSON list of allowed headers (default [\"*\"])");
      app.add_flag("--allow-credentials", o->allow_credentials, "CORS: allow credentials");
      o->quantization.add_to(app);
      o->backend.add_to(app, BackendOptions::kSteps);
      app.add_option("--kv-cache-memory", o->kv_cache_memory, "KV cache size in bytes (suffixes KiB/MiB/GiB allowed)");
      app.add_option("--kv-cache-gb", o->kv_cache_gb, "KV cache size in GiB")->check(CLI::PositiveNumber);
      app.add_option("--tokenizer", o->tokenizer, "Tokenizer directory (default: the model's)");
      app.add_option("--load-format", o->load_format,
                     "safetensors, or dummy (random weights for the config and the drafter's; benchmarks; needs "
                     "--tokenizer when the directory has no tokenizer.json)");
      app.add_option("--chat-template", o->chat_template, "Jinja chat template file (default: the model's)");
      app.add_option("--max-body-mb", o->max_body_mb,
                     "Largest request body in MiB, 413 beyond (default: 128 bytes per token of --max-model-len, "
                     "at least 1 MiB)")
          ->check(CLI::Range(1, 1024));
      app.add_flag("--disable-log-requests", o->disable_log_requests, "Accepted for vLLM compatibility");
      app.add_flag("--disable-log-stats", o->disable_log_stats, "No periodic throughput / acceptance log lines");
      app.add_flag("--no-web-ui", o->no_web_ui, "Do not serve the web page at / (the API is unchanged)");
      app.add_flag("--enable-auto-tool-choice", o->enable_auto_tool_choice,
                   "Parse tool calls from the output for tool_choice \"auto\" (needs --tool-call-parser)");
      app.add_option("--tool-call-parser", o->tool_call_parser, "Tool-call format of the model's output: gemma4");
      app.add_option("--limit-mm-per-prompt", o->limit_mm_per_prompt,
                     "Images per prompt, vLLM's JSON: '{\"image\": N}' (default 999; 0 turns images off)");
      app.add_option("--allowed-local-media-path", o->allowed_local_media_path,
                     "Directory whose files file:// image URLs may name (default: file:// URLs are refused)");
      app.add_option("--mm-processor-kwargs", o->mm_processor_kwargs,
                     "Image processor settings, vLLM's JSON: '{\"max_soft_tokens\": 70|140|280|560|1120}' (default 280)");
      app.add_option("--image-attention", o->image_attention, kImageAttentionHelp);
      app.add_option("--reasoning-parser", o->reasoning_parser,
                     "Split the model's thinking into reasoning / reasoning_content: gemma4");
      app.callback([o] { run_serve(*o); });
    });

}  // namespace
}  // namespace tandem::cli
