// tandem bench: the speculative-decoding sweep (in-process or against any OpenAI-compatible
// endpoint), merging of per-restart CSVs, and a streaming latency benchmark. See src/bench/.
#include <fmt/format.h>
#include <httplib.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "backend/op_profiler.h"
#include "bench/latency.h"
#include "bench/progress.h"
#include "bench/report.h"
#include "bench/step.h"
#include "bench/sweep.h"
#include "cli/command.h"
#include "cli/common.h"
#include "engine/image_prompt.h"
#include "model/gemma4_vision.h"
#include "tokenizer/tokenizer.h"
#include "util/error.h"

namespace tandem::cli {
namespace {

using nlohmann::json;

// The built-in prompt: the start of a Python module (the bundled model is a Python code model).
constexpr const char* kBuiltinPrompt = R"(import os
import sys


def read_lines(path):
    """Return the lines of a text file, without trailing newlines."""
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


class Config:
    """A small key/value configuration read from an INI-style file."""

    def __init__(self, path=None):
        self.values = {}
        if path is not None:
            self.load(path)

    def load(self, path):
)";

std::vector<int> parse_int_list(const std::string& text, const char* flag) {
  std::vector<int> out;
  std::stringstream ss(text);
  std::string part;
  while (std::getline(ss, part, ',')) {
    try {
      size_t used = 0;
      const int v = std::stoi(part, &used);
      if (used != part.size()) throw std::invalid_argument(part);
      out.push_back(v);
    } catch (const std::exception&) {
      fail("{}: \"{}\" is not an integer (expected a comma-separated list such as 0,1,2,3)", flag, part);
    }
  }
  if (out.empty()) fail("{} is empty", flag);
  return out;
}

std::vector<std::string> split_labels(const std::vector<std::string>& raw) {
  std::vector<std::string> out;
  for (const auto& r : raw) {
    std::stringstream ss(r);
    std::string part;
    while (std::getline(ss, part, ',')) out.push_back(part);
  }
  return out;
}

double parse_duration(const std::string& text) {
  size_t used = 0;
  double v = 0;
  try {
    v = std::stod(text, &used);
  } catch (const std::exception&) {
    fail("--duration: \"{}\" is not a duration (e.g. 30s, 2m, 500ms)", text);
  }
  const std::string unit = text.substr(used);
  if (unit.empty() || unit == "s") return v;
  if (unit == "ms") return v / 1000;
  if (unit == "m" || unit == "min") return v * 60;
  fail("--duration: unknown unit \"{}\" (s, ms, m)", unit);
}

std::string read_text_file(const std::string& path, const char* what) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail("{}: cannot read {}", what, path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

void write_text_file(const std::string& path, const std::string& text, const char* what) {
  const auto parent = std::filesystem::path(path).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent);
  std::ofstream f(path, std::ios::binary);
  if (!f || !(f << text)) fail("{}: cannot write {}", what, path);
}

std::string utc_now() {
  const std::time_t t = std::time(nullptr);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return buf;
}

std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("model name", 0) == 0) {
      const size_t colon = line.find(':');
      if (colon != std::string::npos) return line.substr(colon + 2);
    }
  return "unknown CPU";
}

std::string load_average() {
  double l[3] = {0, 0, 0};
  if (getloadavg(l, 3) != 3) return "unknown";
  return fmt::format("{:.2f} {:.2f} {:.2f}", l[0], l[1], l[2]);
}

struct PromptOptions {
  std::string prompt_file, prompt_text, prompt_ids;
};

void add_prompt_options(CLI::App& app, PromptOptions& p) {
  app.add_option("--prompt-file", p.prompt_file, "Prompt text file (default: a built-in Python code prompt)");
  app.add_option("--prompt", p.prompt_text, "Prompt text");
  app.add_option("--prompt-ids", p.prompt_ids, "Prompt token ids, comma-separated (for tokenizer-less checkpoints)");
}

std::string prompt_text(const PromptOptions& p) {
  if (!p.prompt_file.empty() && !p.prompt_text.empty()) fail("give --prompt-file or --prompt, not both");
  if (!p.prompt_file.empty()) return read_text_file(p.prompt_file, "--prompt-file");
  if (!p.prompt_text.empty()) return p.prompt_text;
  return kBuiltinPrompt;
}

// For an endpoint: a token-id array or the text.
json endpoint_prompt(const PromptOptions& p) {
  if (!p.prompt_ids.empty()) return parse_ids(p.prompt_ids);
  return prompt_text(p);
}

struct OutputOptions {
  std::string csv, json_path, chart, title;
};

void add_output_options(CLI::App& app, OutputOptions& o) {
  app.add_option("--csv", o.csv,
                 "Write one CSV row per setting to FILE. Columns (empty = not applicable): setting, k, iterations, "
                 "completion_tokens, seconds (summed request wall time), tok_s_median, tok_s_ci95_low, tok_s_ci95_high "
                 "(bootstrap CI of the median), tok_s_mean, tok_s_stdev, acceptance_rate (accepted/drafted tokens), "
                 "mean_acceptance_length (1 + accepted/drafts), accept_per_position (';'-separated, accepted_per_pos[i]/drafts), "
                 "speedup (tok_s_median / the k=0 row's), draft_share, verify_share (of request wall time), num_drafts, "
                 "num_draft_tokens, num_accepted_tokens");
  app.add_option("--json", o.json_path, "Write the report (summary, raw iterations, counters) as JSON to FILE");
  app.add_option("--chart", o.chart, "Write an SVG bar chart (tok/s per setting, speedup and acceptance) to FILE");
  app.add_option("--title", o.title, "Chart title");
}

void write_outputs(const OutputOptions& o, const std::vector<bench::SettingSummary>& rows, const json& report,
                   const std::string& default_title, const std::string& subtitle) {
  std::printf("%s", bench::format_table(rows).c_str());
  std::fflush(stdout);
  if (!o.csv.empty()) write_text_file(o.csv, bench::to_csv(rows), "--csv");
  if (!o.json_path.empty()) write_text_file(o.json_path, report.dump(2) + "\n", "--json");
  if (!o.chart.empty())
    write_text_file(o.chart, bench::to_svg(rows, o.title.empty() ? default_title : o.title, subtitle), "--chart");
}

struct SweepCli {
  std::string model, draft, method, ks = "0,1,2,3", endpoint, api_key;
  std::vector<std::string> labels;
  PromptOptions prompt;
  OutputOptions out;
  int iterations = 5, warmup = 1, max_tokens = 200;
  BackendOptions backend;
  int64_t seed = 42;
  float temperature = 0.0f;
  bool settings_from_restarts = false, no_ignore_eos = false, quiet = false, interleave = false;
  QuantizationOptions quantization;
  double timeout = 600;
};

std::string first_served_model(const std::string& url, const std::string& api_key) {
  const bench::EndpointUrl u = bench::parse_endpoint_url(url);
  httplib::Client cli(u.base);
  cli.set_connection_timeout(10, 0);
  httplib::Headers headers;
  if (!api_key.empty()) headers.emplace("Authorization", "Bearer " + api_key);
  auto res = cli.Get((u.prefix + "/v1/models").c_str(), headers);
  if (!res || res->status != 200) fail("--model not given and GET {}/v1/models failed; pass --model NAME", u.base);
  json j = json::parse(res->body, nullptr, false);
  if (j.is_discarded() || !j.contains("data") || !j["data"].is_array() || j["data"].empty() ||
      !j["data"][0].contains("id"))
    fail("--model not given and {}/v1/models lists no model; pass --model NAME", u.base);
  return j["data"][0]["id"].get<std::string>();
}

void run_sweep(const SweepCli& c) {
  bench::SweepOptions o;
  o.ks = parse_int_list(c.ks, "--num-speculative-tokens");
  o.labels = split_labels(c.labels);
  o.iterations = c.iterations, o.warmup = c.warmup, o.max_tokens = c.max_tokens;
  o.seed = c.seed, o.temperature = c.temperature, o.ignore_eos = !c.no_ignore_eos;
  o.interleave = c.interleave;
  if (c.settings_from_restarts) {
    if (c.endpoint.empty()) fail("--settings-from-restarts is for --endpoint sweeps");
    if (o.ks.size() != 1)
      fail("--settings-from-restarts: run one setting per server start (--num-speculative-tokens K --label NAME), "
           "then `tandem bench merge a.csv b.csv ... --csv all.csv --chart all.svg`");
  }
  const int total = static_cast<int>(o.ks.size()) * (o.iterations + o.warmup);
  bench::Progress progress(total, bench::Progress::stderr_is_tty(), c.quiet);
  json meta;
  meta["date"] = utc_now();
  meta["cpu"] = cpu_model();
  meta["load_average_start"] = load_average();
  meta["iterations"] = o.iterations, meta["warmup"] = o.warmup, meta["max_tokens"] = o.max_tokens;
  meta["temperature"] = o.temperature, meta["seed"] = o.seed, meta["ignore_eos"] = o.ignore_eos;
  meta["num_speculative_tokens"] = o.ks;
  meta["order"] = o.interleave ? "interleaved (round-robin over settings per iteration)" : "sequential (one setting after another)";
  meta["tok_s"] = "completion tokens / wall time of the request (submit to last token, prefill included)";
  meta["ci"] = "95% percentile bootstrap of the median over iterations (10000 resamples, fixed seed)";
  std::vector<bench::SettingResult> results;
  std::string model_name;
  if (c.endpoint.empty()) {
    bench::InProcessTarget t;
    t.model_dir = c.model.empty() ? bundled_model_dir() : c.model;
    t.draft_dir = c.draft.empty() && c.method != "ngram" ? bundled_drafter_dir() : c.draft;
    t.method = c.method;
    t.threads = c.backend.threads;
    t.device = c.backend.device;
    t.enforce_eager = c.backend.enforce_eager;
    t.quantization = c.quantization.parse();
    if (!c.prompt.prompt_ids.empty()) {
      t.prompt_ids = parse_ids(c.prompt.prompt_ids);
    } else {
      const auto dir = std::filesystem::path(t.model_dir);
      if (!std::filesystem::exists(dir / "tokenizer.json") && !std::filesystem::is_regular_file(dir))
        fail("{} has no tokenizer.json: pass the prompt as --prompt-ids", t.model_dir);
      t.prompt_ids = Tokenizer::load(t.model_dir).encode(prompt_text(c.prompt), true);
    }
    model_name = std::filesystem::path(t.model_dir).filename().string();
    progress.note(fmt::format("bench sweep: {} (draft {}), k = {}, {} × {} tokens, prompt {} tokens, load average {}",
                              t.model_dir, t.draft_dir, c.ks, o.iterations, o.max_tokens, t.prompt_ids.size(),
                              load_average()));
    results = bench::run_inprocess_sweep(o, t, progress, &meta);
  } else {
    if (c.quantization.parse().any())
      fail("--quantization and --quantize-lm-head apply to the in-process engine; start the server with it instead");
    bench::EndpointTarget t;
    t.url = c.endpoint;
    t.model = c.model.empty() ? first_served_model(c.endpoint, c.api_key) : c.model;
    t.api_key = c.api_key;
    t.prompt = endpoint_prompt(c.prompt);
    t.per_request_k = !c.settings_from_restarts;
    t.timeout_seconds = c.timeout;
    model_name = t.model;
    progress.note(fmt::format("bench sweep: {} model {}, k = {}{}, {} × {} tokens", c.endpoint, t.model, c.ks,
                              t.per_request_k ? " (per request)" : " (as configured at server start)", o.iterations,
                              o.max_tokens));
    results = bench::run_endpoint_sweep(o, t, progress, &meta);
  }
  progress.finish();
  meta["load_average_end"] = load_average();
  auto rows = bench::summarize(results);
  const std::string subtitle =
      fmt::format("{} tokens × {} iterations, T={}, {} · {}", o.max_tokens, o.iterations, o.temperature,
                  c.endpoint.empty() ? "in-process, " + cpu_model() : c.endpoint, utc_now().substr(0, 10));
  write_outputs(c.out, rows, bench::to_json(meta, results, rows), "Speculative decoding sweep: " + model_name, subtitle);
}

struct MergeCli {
  std::vector<std::string> inputs;
  OutputOptions out;
};

void run_merge(const MergeCli& c) {
  std::vector<bench::SettingSummary> rows;
  for (const auto& path : c.inputs)
    for (auto& r : bench::parse_csv(read_text_file(path, "bench merge"), path)) rows.push_back(std::move(r));
  bench::compute_speedups(rows);
  json settings = json::array();
  for (const auto& r : rows) settings.push_back(bench::to_json(r));
  json report = {{"meta", {{"merged_from", c.inputs}, {"date", utc_now()}}}, {"settings", settings}};
  write_outputs(c.out, rows, report, "Speculative decoding sweep", "merged from " + std::to_string(c.inputs.size()) + " runs");
}

struct StepCli {
  bench::StepOptions options;
  BackendOptions backend;
  std::string tokens = "1,2,3,4,5";
  std::string load_format = "safetensors";
  QuantizationOptions quantization;
  std::string json_path;
  bool json_stdout = false;
};

void run_step_cmd(StepCli& c) {
  c.options.tokens = parse_int_list(c.tokens, "--tokens");
  c.options.format = parse_load_format(c.load_format);
  c.options.quantization = c.quantization.parse();
  c.options.device = c.backend.device, c.options.threads = c.backend.threads;
  c.options.enforce_eager = c.backend.enforce_eager, c.options.kv_dtype = c.backend.kv_cache_dtype;
  c.options.tensor_parallel_size = c.backend.tensor_parallel_size;
  const bench::StepReport report = bench::run_step_bench(c.options);
  if (c.json_stdout) {
    std::printf("%s\n", report.to_json().dump(2).c_str());
  } else {
    std::printf("%s", report.to_table().c_str());
  }
  if (!c.json_path.empty()) std::ofstream(c.json_path) << report.to_json().dump(2) << "\n";
}

struct LatencyCli {
  std::string endpoint, model, api_key, concurrency = "1,4,16,64", duration = "30s", csv, json_path;
  PromptOptions prompt;
  int max_tokens = 128, max_requests = 1000, k = -1;
  int64_t seed = -1;
  float temperature = 0.0f;
  bool quiet = false, no_ignore_eos = false;
};

// tandem bench vision: the vision tower's encode time for one image (preprocessing timed apart).
struct VisionCli {
  std::string model, image, load_format = "safetensors";
  BackendOptions backend;
  int max_soft_tokens = 0, reps = 3, width = 1024, height = 768;
  bool json = false, profile_ops = false;
};

void run_vision_cmd(const VisionCli& c) {
  auto backend = c.backend.make_backend();
  std::map<std::string, OpTime> op_times;
  if (c.profile_ops) backend = make_op_profiler(std::move(backend), &op_times);
  const ModelConfig config = load_model_config(c.model);
  const int budget = image_soft_token_budget(config, c.max_soft_tokens);
  const auto t_load = std::chrono::steady_clock::now();
  auto tower = Gemma4Vision::load(config, *backend, parse_load_format(c.load_format));
  const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_load).count();
  // The image: a file, or a smooth synthetic picture of --width × --height (its content does not
  // change the work, only its size, through the resize).
  vision::RgbImage rgb;
  std::vector<uint8_t> bytes;
  if (!c.image.empty()) bytes = read_file_bytes(c.image);
  std::vector<double> pre, enc;
  std::shared_ptr<const vision::PatchImage> img;
  for (int r = 0; r < c.reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    if (!c.image.empty()) {
      img = prepare_image(config, bytes, budget);
    } else {
      rgb.width = c.width, rgb.height = c.height;
      rgb.rgb.resize(static_cast<size_t>(c.width) * c.height * 3);
      for (size_t i = 0; i < rgb.rgb.size(); ++i) rgb.rgb[i] = static_cast<uint8_t>((i * 7 + i / 3 / c.width * 13) & 255);
      img = std::make_shared<const vision::PatchImage>(
          vision::preprocess_image(rgb, config.vision->patch_size, config.vision->pooling_kernel, budget));
    }
    const auto t1 = std::chrono::steady_clock::now();
    Tensor features(*backend);
    TensorView& f = features.resize(DType::F32, {img->soft_tokens(), config.hidden});
    tower->encode(*img, f);
    backend->synchronize();
    const auto t2 = std::chrono::steady_clock::now();
    pre.push_back(std::chrono::duration<double>(t1 - t0).count());
    enc.push_back(std::chrono::duration<double>(t2 - t1).count());
  }
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  nlohmann::json j = {{"model", c.model},
                      {"backend", backend->name()},
                      {"load_format", c.load_format},
                      {"vision_parameters", tower->parameter_count()},
                      {"image", c.image.empty() ? fmt::format("synthetic {}x{}", c.width, c.height) : c.image},
                      {"max_soft_tokens", budget},
                      {"patches", img->num_patches()},
                      {"soft_tokens", img->soft_tokens()},
                      {"reps", c.reps},
                      {"load_seconds", load_s},
                      {"preprocess_seconds_median", median(pre)},
                      {"encode_seconds_median", median(enc)},
                      {"encode_seconds", enc}};
  if (c.profile_ops) {  // per image: the reps (each profiled) averaged
    for (const auto& [op, t] : op_times) j["op_ms_per_image"][op] = t.seconds * 1e3 / c.reps;
  }
  if (c.json) {
    std::printf("%s\n", j.dump(2).c_str());
    return;
  }
  if (c.profile_ops)
    for (const auto& [op, t] : op_times) std::printf("  %-14s %10.1f ms per image\n", op.c_str(), t.seconds * 1e3 / c.reps);
  std::printf("%s on %s: %d patches -> %d soft tokens; preprocess %.1f ms, encode %.3f s (median of %d)\n",
              j["image"].get<std::string>().c_str(), backend->name().c_str(), img->num_patches(), img->soft_tokens(),
              1e3 * median(pre), median(enc), c.reps);
}

void run_latency_cmd(const LatencyCli& c) {
  bench::LatencyOptions o;
  o.url = c.endpoint;
  o.model = c.model.empty() ? first_served_model(c.endpoint, c.api_key) : c.model;
  o.api_key = c.api_key;
  o.prompt = endpoint_prompt(c.prompt);
  o.concurrency = parse_int_list(c.concurrency, "--concurrency");
  o.duration_seconds = parse_duration(c.duration);
  o.max_requests = c.max_requests, o.max_tokens = c.max_tokens, o.temperature = c.temperature, o.seed = c.seed;
  o.num_speculative_tokens = c.k, o.ignore_eos = !c.no_ignore_eos;
  bench::Progress progress(0, bench::Progress::stderr_is_tty(), c.quiet);
  progress.note(fmt::format("bench latency: {} model {}, concurrency {}, {:.0f} s per level (at most {} requests), "
                            "max_tokens {}",
                            c.endpoint, o.model, c.concurrency, o.duration_seconds, o.max_requests, o.max_tokens));
  const auto levels = bench::run_latency(o, progress);
  progress.finish();
  std::printf("%s", bench::format_latency_table(levels).c_str());
  std::fflush(stdout);
  if (!c.csv.empty()) write_text_file(c.csv, bench::latency_csv(levels), "--csv");
  if (!c.json_path.empty()) write_text_file(c.json_path, bench::latency_json(o, levels).dump(2) + "\n", "--json");
}

const RegisterCommand bench_command(
    "bench", "Benchmarks: speculative-decoding sweep (in-process or any OpenAI endpoint), merge, latency",
    [](CLI::App& app) {
      app.require_subcommand(1);

      auto* sweep = app.add_subcommand(
          "sweep",
          "Sweep num_speculative_tokens: tok/s (median, 95% bootstrap CI), acceptance, speedup vs k=0.\n"
          "In-process by default (one model load, per-request k); with --endpoint against any OpenAI-compatible\n"
          "server, acceptance from its /metrics (vLLM counter names).\n"
          "--settings-from-restarts: for servers that cannot change k per request, start the server once per\n"
          "setting and run `tandem bench sweep --endpoint URL --settings-from-restarts --num-speculative-tokens K\n"
          "--label NAME --csv K.csv` each time (k=0 for the baseline run), then merge:\n"
          "`tandem bench merge 0.csv 1.csv 2.csv --csv all.csv --chart all.svg`.");
      auto s = std::make_shared<SweepCli>();
      sweep->add_option("--model", s->model,
                        "Target checkpoint directory (default: the bundled model); with --endpoint, the served model "
                        "name (default: the first of /v1/models)");
      sweep->add_option("--draft", s->draft, "Drafter checkpoint directory (default: the bundled drafter)");
      sweep->add_option("--speculative-method", s->method, "draft_model (default; an assistant drafter becomes mtp), mtp or ngram")
          ->check(CLI::IsMember({"draft_model", "mtp", "ngram"}));
      sweep->add_option("--num-speculative-tokens", s->ks, "Settings to sweep, comma-separated (0 = baseline)")
          ->capture_default_str();
      sweep->add_option("--label", s->labels, "Setting names, one per setting (default: baseline, k=1, ...)");
      sweep->add_option("--iterations", s->iterations, "Measured requests per setting")->capture_default_str();
      sweep->add_option("--warmup", s->warmup, "Unmeasured requests per setting before measuring")->capture_default_str();
      sweep->add_option("--max-tokens", s->max_tokens, "Tokens per request (EOS ignored)")->capture_default_str();
      sweep->add_option("--seed", s->seed, "Sampling seed (-1: none)")->capture_default_str();
      sweep->add_option("--temperature", s->temperature, "0 = greedy")->capture_default_str();
      s->backend.add_to(*sweep, BackendOptions::kEager);  // the in-process engine's
      s->quantization.add_to(*sweep);
      sweep->add_option("--endpoint", s->endpoint, "http://HOST:PORT of an OpenAI-compatible server");
      sweep->add_option("--api-key", s->api_key, "Bearer token for --endpoint");
      sweep->add_option("--timeout", s->timeout, "Per-request timeout in seconds (endpoint)")->capture_default_str();
      sweep->add_flag("--settings-from-restarts", s->settings_from_restarts,
                      "Do not send the per-request k: the server runs with the k it was started with");
      sweep->add_flag("--no-ignore-eos", s->no_ignore_eos, "Stop at EOS (default: generate max_tokens every time)");
      sweep->add_flag("--interleave", s->interleave,
                      "Round-robin the settings per iteration (default: one setting after another, as the report did); "
                      "fairer on a machine whose load drifts");
      sweep->add_flag("--quiet", s->quiet, "No progress output");
      add_prompt_options(*sweep, s->prompt);
      add_output_options(*sweep, s->out);
      sweep->callback([s] { run_sweep(*s); });

      auto* step = app.add_subcommand(
          "step",
          "Time one target forward of N query tokens per sequence over a cached context (1 = decode, 1+k = verify)\n"
          "and one drafter step, next to the bytes each must read (weights touched, including the union of the\n"
          "experts the rows were routed to, plus KV) and the device copy bandwidth measured in the same run.");
      auto st = std::make_shared<StepCli>();
      step->add_option("model", st->options.model, "Target checkpoint (or config-only) directory")->required();
      step->add_option("--speculative-config", st->options.speculative_config, "Drafter, vLLM-style JSON with \"model\"");
      step->add_option("--load-format", st->load_format, "safetensors, or dummy (random weights for the config)");
      st->quantization.add_to(*step);
      st->backend.add_to(*step, BackendOptions::kSteps);
      step->add_option("--tokens", st->tokens, "Query tokens per sequence, comma-separated")->capture_default_str();
      step->add_option("--batch", st->options.batch, "Sequences per step")->check(CLI::Range(1, 4096));
      step->add_option("--context", st->options.context, "Cached tokens per sequence")->check(CLI::Range(0, 1 << 20));
      step->add_option("--reps", st->options.reps, "Timed repetitions per setting (median)")->check(CLI::Range(1, 100000));
      step->add_flag("--json", st->json_stdout, "Print JSON instead of the table");
      step->add_flag("--profile-ops", st->options.profile_ops,
                     "Also time each op of the first setting's step, waiting for each (slows the step down)");
      step->add_option("--json-file", st->json_path, "Also write the JSON to FILE");
      step->callback([st] { run_step_cmd(*st); });

      auto* merge = app.add_subcommand("merge", "Merge sweep CSVs (e.g. one per server restart) into one table/CSV/chart");
      auto m = std::make_shared<MergeCli>();
      merge->add_option("inputs", m->inputs, "CSV files written by tandem bench sweep --csv")->required()->check(CLI::ExistingFile);
      add_output_options(*merge, m->out);
      merge->callback([m] { run_merge(*m); });

      auto* vis = app.add_subcommand(
          "vision", "Time the vision tower on one image (decode + resize + patchify timed apart from the encode)");
      auto v = std::make_shared<VisionCli>();
      vis->add_option("model", v->model, "Checkpoint (or config-only) directory with a vision_config")->required();
      vis->add_option("--load-format", v->load_format, "safetensors, or dummy (random weights for the config)");
      vis->add_option("--image", v->image, "Image file (default: a synthetic --width x --height picture)");
      vis->add_option("--width", v->width, "Synthetic image width")->check(CLI::Range(1, 1 << 14));
      vis->add_option("--height", v->height, "Synthetic image height")->check(CLI::Range(1, 1 << 14));
      vis->add_option("--max-soft-tokens", v->max_soft_tokens, "70, 140, 280, 560 or 1120 (default: the model's)");
      vis->add_option("--reps", v->reps, "Timed repetitions (median)")->check(CLI::Range(1, 1000));
      v->backend.add_to(*vis, 0);
      vis->add_flag("--json", v->json, "Print JSON");
      vis->add_flag("--profile-ops", v->profile_ops, "Also time each op (waiting for each; slows the encode down)");
      vis->callback([v] { run_vision_cmd(*v); });

      auto* latency = app.add_subcommand(
          "latency", "Streaming latency per concurrency level: TTFT, inter-chunk latency, TPOT, throughput (p50/p90/p99)");
      auto l = std::make_shared<LatencyCli>();
      latency->add_option("--endpoint", l->endpoint, "http://HOST:PORT of an OpenAI-compatible server")->required();
      latency->add_option("--model", l->model, "Served model name (default: the first of /v1/models)");
      latency->add_option("--api-key", l->api_key, "Bearer token");
      latency->add_option("--concurrency", l->concurrency, "Concurrency levels, comma-separated")->capture_default_str();
      latency->add_option("--duration", l->duration, "Time per level (no request starts after it): 30s, 2m, 500ms")
          ->capture_default_str();
      latency->add_option("--max-requests", l->max_requests, "At most this many requests per level")->capture_default_str();
      latency->add_option("--max-tokens", l->max_tokens, "Tokens per request")->capture_default_str();
      latency->add_option("--num-speculative-tokens", l->k, "Send this per-request k (-1: server default)");
      latency->add_option("--temperature", l->temperature)->capture_default_str();
      latency->add_option("--seed", l->seed, "Sampling seed (-1: none)");
      latency->add_option("--csv", l->csv, "Write one CSV row per concurrency level to FILE");
      latency->add_option("--json", l->json_path, "Write the results as JSON to FILE");
      latency->add_flag("--no-ignore-eos", l->no_ignore_eos, "Stop at EOS");
      latency->add_flag("--quiet", l->quiet, "No progress output");
      add_prompt_options(*latency, l->prompt);
      latency->callback([l] { run_latency_cmd(*l); });
    });

}  // namespace
}  // namespace tandem::cli
