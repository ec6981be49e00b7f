// The engine loop: continuous batching of many sequences into one ragged target step per
// iteration (prefill chunks, decode tokens and speculative verify blocks side by side), with a
// proposer drafting between target steps. Thread-safe submit/abort; runs on its own thread for
// the server, or inline (run_until_idle) for the CLI.
#pragma once
#include <array>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "engine/proposer.h"
#include "engine/request.h"
#include "model/gemma4.h"
#include "model/gemma4_vision.h"
#include "model/kv_cache.h"

namespace tandem {

struct EngineConfig {
  int max_num_seqs = 64;
  int max_num_batched_tokens = 2048;  // target rows per step
  int max_model_len = 8192;
  int block_size = 16;
  int64_t kv_cache_bytes = 256ll << 20;
  bool enable_prefix_caching = false;
  int num_speculative_tokens = 0;  // k; 0 disables speculation
  DType kv_dtype = DType::F32;     // KV cache element type (BF16 halves its bytes on GPU backends)
};

// Counters with vLLM's semantics (see docs): one draft = one (request, step) round with drafts.
struct SpecStats {
  uint64_t num_drafts = 0;
  uint64_t num_draft_tokens = 0;
  uint64_t num_accepted_tokens = 0;
  std::vector<uint64_t> accepted_per_position;
  double draft_seconds = 0;
  double verify_seconds = 0;
};

// Cumulative histogram data (per-bucket counts, last bucket +Inf) for /metrics.
struct StatHistogram {
  std::vector<double> bounds;
  std::vector<uint64_t> counts;  // bounds.size() + 1
  double sum = 0;
  uint64_t count = 0;
  void observe(double v) {
    if (counts.size() != bounds.size() + 1) counts.assign(bounds.size() + 1, 0);
    size_t i = 0;
    while (i < bounds.size() && v > bounds[i]) ++i;
    counts[i] += 1, sum += v, count += 1;
  }
};

struct EngineStats {
  int num_running = 0;
  int num_waiting = 0;
  double kv_usage = 0;  // fraction of the KV cache's bytes in use
  uint64_t prompt_tokens = 0;
  uint64_t generation_tokens = 0;
  uint64_t prefix_cache_queries = 0;  // prompt tokens looked up
  uint64_t prefix_cache_hits = 0;     // prompt tokens found cached
  uint64_t requests_finished = 0;
  uint64_t num_preemptions = 0;     // sequences preempted (recomputed later) for lack of KV pages
  uint64_t mm_images_encoded = 0;   // images run through the vision tower
  uint64_t mm_encoder_cache_hits = 0;  // images whose features were still cached (same pixels)
  double mm_encode_seconds = 0;     // host-observed time in the vision tower
  // Tokens per engine step (prefill rows + generated tokens), vLLM's iteration_tokens_total.
  StatHistogram iteration_tokens{{1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384}, {}};
  SpecStats spec;
};

class Engine {
 public:
  Engine(Gemma4Model& target, std::unique_ptr<Proposer> proposer, EngineConfig config);
  ~Engine();

  // Validates and queues a request; throws tandem::Error for requests that can never run
  // (prompt longer than max_model_len, empty prompt, token ids outside the vocabulary).
  uint64_t submit(Request request, OutputCallback callback);
  void abort(uint64_t id);

  // Inline mode: run steps until no request is left.
  void run_until_idle();
  // Background mode.
  void start();
  void stop();

  EngineStats stats() const;

  // The vision tower, for requests with images (without one, submit refuses them).
  void set_vision(Gemma4Vision* vision) { vision_ = vision; }
  Gemma4Vision* vision() { return vision_; }

  // Optional observer of every speculative round (request id, drafted tokens, accepted count),
  // called on the engine thread; used by `tandem generate --trace-spec` and tests.
  std::function<void(uint64_t, const std::vector<int32_t>&, int)> spec_trace;
  const EngineConfig& config() const { return config_; }
  Gemma4Model& target() { return target_; }
  Proposer* proposer() { return proposer_.get(); }
  // The target's KV cache (read it between steps: from an output callback, or in inline mode).
  const KvCache& kv_cache() const { return *kv_; }

 private:
  struct Sequence;
  struct GrammarRound;
  bool step();  // one scheduling iteration; false when idle
  // Structured outputs. check_drafts: the token mask of each output row of a sequence's round
  // (the matcher advanced through the drafts before that row); `drafts` is cut at the first one
  // the grammar forbids. commit_grammar: the matcher back to the committed output, then through
  // the tokens the round emitted.
  GrammarRound check_drafts(Sequence& s, std::vector<int32_t>& drafts);
  void commit_grammar(Sequence& s, const GrammarRound& round, const std::vector<int32_t>& emitted);
  int32_t match_prefix(Sequence& s);  // prefix cache lookup at admission; returns tokens reused
  // What block b's hash must add to its tokens: the images whose placeholders fall in it.
  uint64_t image_hash_extra(const Sequence& s, int32_t b) const;
  // The largest prefill chunk from s.computed of at most n rows that splits no image block (0: none).
  int32_t fit_image_blocks(const Sequence& s, int32_t n) const;
  // The features of an image (backend memory), from the encoder cache or encoded now.
  const TensorView& image_features(const ImageInput& image);
  void publish_blocks(Sequence& s);   // publishes the sequence's newly completed blocks
  // After s.computed advanced: publishes completed blocks, releases sliding blocks behind the window.
  void commit_kv(Sequence& s);
  // Gives back what a sequence holds: drafter state, KV pages, its hidden-state row.
  void release_resources(Sequence& s);
  void loop();

  Gemma4Model& target_;
  Gemma4Vision* vision_ = nullptr;
  std::unique_ptr<Proposer> proposer_;
  EngineConfig config_;
  std::unique_ptr<KvCache> kv_;
  Tensor hidden_states_;                  // [max_num_seqs, H] each running sequence's drafter input
  std::vector<int32_t> free_state_rows_;  // rows of hidden_states_ not held by a running sequence
  Tensor tokens_;                         // [R + N] I32 the token the backend picked for each output row,
                                          // then the step's N device drafts (one download)
  Tensor sample_inputs_;                  // [R, 6] F32 sample_rows' params (4 columns) and uniforms (2)
  Tensor sample_drafts_;                  // [2R + N] I32 sample_rows' drafts as staged (Engine::step)
  Tensor sample_drafts_merged_;           // [R] I32 sample_rows' drafts with the device drafts in
  // Encoder cache (vLLM's): features of recent images by pixel hash, most recently used first,
  // trimmed to max_num_batched_tokens rows between steps (never while a step holds views of it).
  struct EncodedImage {
    uint64_t hash;
    Tensor features;
  };
  std::list<EncodedImage> encoder_cache_;

  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::unique_ptr<Sequence>> waiting_;
  std::vector<std::unique_ptr<Sequence>> running_;
  std::vector<uint64_t> aborted_;
  uint64_t next_id_ = 1;
  EngineStats stats_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::mt19937_64 seed_source_{std::random_device{}()};
};

}  // namespace tandem
