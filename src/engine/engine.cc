#include "engine/engine.h"

#include <algorithm>
#include <chrono>
#include <numeric>

#include "backend/staged_inputs.h"
#include "engine/sampler.h"
#include "util/error.h"
#include "util/log.h"

namespace tandem {
namespace {
double now_seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
}  // namespace

// One request in flight. Invariant between steps: positions 0..computed-1 have KV in the target
// cache; tokens[computed..] still have to be run. In decode, exactly the last token (the "bonus",
// sampled by the target) is pending, and row `state_row` of the engine's hidden-state table (backend
// memory) holds the target's final-normed hidden state of the row that produced it (position
// computed-1), which the MTP drafter starts from.
struct Engine::Sequence {
  uint64_t id = 0;
  Request request;
  OutputCallback callback;
  Sampler sampler;
  std::vector<int32_t> tokens;  // prompt + generated
  int32_t prompt_len = 0;
  int32_t computed = 0;
  BlockTables tables;
  std::vector<uint64_t> block_hashes;  // chain hashes of the leading full blocks (prefix caching)
  int32_t state_row = -1;  // row of hidden_states_ while running
  bool has_hidden = false;
  int k = 0;  // speculative tokens per round for this request
  bool finished = false;
  double submitted_at = 0, scheduled_at = 0;  // now_seconds(); scheduled_at: first admission
  std::vector<PromptLogprob> prompt_lp;       // prompt_logprobs collected so far (positions 1..)
  bool prompt_lp_sent = false;
  // Structured outputs: the matcher's state is that of the committed output (it lives with the
  // sequence, so a preempted sequence resumes where it was). grammar_active: the grammar applies
  // to the next token (false until the request's grammar_after_token has been generated).
  std::optional<grammar::GrammarMatcher> matcher;
  bool grammar_active = false;

  Sequence(uint64_t id_, Request r, OutputCallback cb, uint64_t seed)
      : id(id_), request(std::move(r)), callback(std::move(cb)), sampler(request.sampling, seed, request.prompt) {
    if (request.sampling.grammar) {
      matcher.emplace(*request.sampling.grammar);
      grammar_active = request.sampling.grammar_after_token < 0;
    }
  }
  bool wants_prompt_logprobs() const { return request.prompt_logprobs >= 0 && !prompt_lp_sent; }
  int generated() const { return static_cast<int>(tokens.size()) - prompt_len; }
  std::span<const int32_t> output() const { return std::span<const int32_t>(tokens).subspan(prompt_len); }
  bool decoding() const { return computed == static_cast<int32_t>(tokens.size()) - 1; }
};

// Structured outputs, one round of one sequence: the token mask of each output row and how many
// drafts were advanced into the matcher to compute them.
struct Engine::GrammarRound {
  int words = 0;                // bitmask words per row
  std::vector<uint32_t> masks;  // [rows][words]
  std::vector<char> masked;     // per row: the grammar applies to the token sampled there
  int accepted_drafts = 0;
  const uint32_t* mask(int row) const {
    return row < static_cast<int>(masked.size()) && masked[row] ? masks.data() + static_cast<size_t>(row) * words
                                                                 : nullptr;
  }
};

Engine::GrammarRound Engine::check_drafts(Sequence& s, std::vector<int32_t>& drafts) {
  GrammarRound r;
  grammar::GrammarMatcher& m = *s.matcher;
  r.words = m.grammar().vocabulary().bitmask_words();
  const int32_t after = s.request.sampling.grammar_after_token;
  bool active = s.grammar_active;
  for (size_t i = 0;; ++i) {
    r.masked.push_back(active);
    r.masks.resize(r.masked.size() * r.words);
    if (active) m.fill_next_token_bitmask(r.masks.data() + i * r.words);
    if (i == drafts.size()) break;
    if (!active) {
      active = drafts[i] == after;
    } else if (m.accept_token(drafts[i])) {
      ++r.accepted_drafts;
    } else {  // forbidden: row i samples the correction under the mask just filled
      drafts.resize(i);
      break;
    }
  }
  return r;
}

void Engine::commit_grammar(Sequence& s, const GrammarRound& round, const std::vector<int32_t>& emitted) {
  grammar::GrammarMatcher& m = *s.matcher;
  m.rollback(round.accepted_drafts);
  for (int32_t t : emitted) {
    if (!s.grammar_active) {
      s.grammar_active = t == s.request.sampling.grammar_after_token;
    } else if (m.is_terminated()) {
      // A stop token ended the match and the request goes on (ignore_eos): the mask allows only
      // stop tokens from here, and the matcher has nothing left to track.
    } else if (!m.accept_token(t)) {  // every row was sampled under its mask
      fail("internal error: request {} sampled token {}, which its grammar forbids", s.id, t);
    }
  }
}

Engine::Engine(Gemma4Model& target, std::unique_ptr<Proposer> proposer, EngineConfig config)
    : target_(target), proposer_(std::move(proposer)), config_(config), hidden_states_(target.backend()),
      tokens_(target.backend()), sample_inputs_(target.backend()), sample_drafts_(target.backend()),
      sample_drafts_merged_(target.backend()) {
  if (!proposer_) config_.num_speculative_tokens = 0;
  // The sliding group gets what max_num_seqs sequences can hold at once; the full group the rest.
  const KvSizing sizing = kv_sizing(target.rank_config(), config_.block_size, config_.kv_dtype);
  const KvBlocks blocks = sizing.split(
      config_.kv_cache_bytes,
      sizing.sliding_working_set(config_.max_num_seqs, config_.max_num_batched_tokens, config_.num_speculative_tokens));
  const int64_t needed = (config_.max_model_len + config_.num_speculative_tokens + config_.block_size) /
                         config_.block_size;
  if (blocks.full < needed)
    fail("the KV cache ({} MiB) holds {} tokens, fewer than one sequence of --max-model-len {} needs; "
         "raise the KV cache size or lower --max-model-len",
         config_.kv_cache_bytes >> 20, blocks.full * config_.block_size, config_.max_model_len);
  kv_ = std::make_unique<KvCache>(target.backend(), target.rank_config(), blocks, config_.block_size, config_.kv_dtype);
  hidden_states_.resize(DType::F32, {config_.max_num_seqs, target.config().hidden});
  for (int32_t r = config_.max_num_seqs - 1; r >= 0; --r) free_state_rows_.push_back(r);
  stats_.spec.accepted_per_position.assign(config_.num_speculative_tokens, 0);
}

Engine::~Engine() { stop(); }

uint64_t Engine::submit(Request request, OutputCallback callback) {
  const ModelConfig& c = target_.config();
  if (request.prompt.empty()) fail("the prompt is empty");
  for (int32_t t : request.prompt)
    if (t < 0 || t >= c.vocab_size) fail("prompt token id {} is outside the vocabulary (size {})", t, c.vocab_size);
  if (request.max_tokens < 1) fail("max_tokens must be at least 1");
  int32_t image_end = 0;
  for (const ImageInput& im : request.images) {
    if (!vision_) fail("this model takes no images (it has no vision tower, or images are not enabled)");
    if (!im.image) fail("an image of the request has no pixels");
    const int32_t n = im.image->soft_tokens();
    if (im.offset < image_end || im.offset < 0 || static_cast<int64_t>(im.offset) + n > static_cast<int64_t>(request.prompt.size()))
      fail("image placeholders [{}, {}) are out of order or outside the prompt of {} tokens", im.offset, im.offset + n,
           request.prompt.size());
    for (int32_t i = im.offset; i < im.offset + n; ++i)
      if (request.prompt[i] != c.image_token_id)
        fail("prompt position {} should hold the image token {} but holds {}", i, c.image_token_id, request.prompt[i]);
    // The rows of one image block attend to each other, so they are prefilled in one step.
    if (n > config_.max_num_batched_tokens)
      fail("an image of {} soft tokens must be prefilled in one step, but --max-num-batched-tokens is {}; raise it to "
           "at least {}", n, config_.max_num_batched_tokens, n);
    image_end = im.offset + n;
  }
  const int64_t total = static_cast<int64_t>(request.prompt.size()) + request.max_tokens;
  if (total > config_.max_model_len)
    fail("the prompt ({} tokens) plus max_tokens ({}) exceeds the maximum model length {}", request.prompt.size(),
         request.max_tokens, config_.max_model_len);
  if (request.num_speculative_tokens > config_.num_speculative_tokens)
    fail("num_speculative_tokens {} exceeds the server's configured {}", request.num_speculative_tokens,
         config_.num_speculative_tokens);
  if (const auto& g = request.sampling.grammar) {
    if (g->vocabulary().size() != c.vocab_size)
      fail("the grammar was compiled for a vocabulary of {} tokens, the model's has {}", g->vocabulary().size(),
           c.vocab_size);
    // Both would mask tokens the grammar may need (a stop token where the grammar must end, or
    // every token it allows): the row could be left with nothing to sample.
    if (!request.sampling.allowed_token_ids.empty()) fail("allowed_token_ids cannot be combined with a grammar");
    if (request.sampling.min_tokens > 0) fail("min_tokens cannot be combined with a grammar");
  }
  if (request.sampling.min_tokens > 0) {  // vLLM masks EOS (unless ignore_eos) and stop_token_ids
    auto& ids = request.sampling.min_tokens_stop_ids;
    if (!request.ignore_eos) ids = c.eos_ids;
    ids.insert(ids.end(), request.stop_token_ids.begin(), request.stop_token_ids.end());
  }
  std::lock_guard<std::mutex> lock(mutex_);
  const uint64_t id = next_id_++;
  const uint64_t seed = request.sampling.seed ? *request.sampling.seed : seed_source_();
  auto seq = std::make_unique<Sequence>(id, std::move(request), std::move(callback), seed);
  seq->tokens = seq->request.prompt;
  seq->submitted_at = now_seconds();
  seq->prompt_len = static_cast<int32_t>(seq->tokens.size());
  seq->k = seq->request.num_speculative_tokens < 0 ? config_.num_speculative_tokens
                                                    : seq->request.num_speculative_tokens;
  waiting_.push_back(std::move(seq));
  wake_.notify_one();
  return id;
}

void Engine::abort(uint64_t id) {
  std::lock_guard<std::mutex> lock(mutex_);
  aborted_.push_back(id);
  wake_.notify_one();
}

EngineStats Engine::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

void Engine::run_until_idle() {
  while (step()) {
  }
}

void Engine::start() {
  stop_ = false;
  thread_ = std::thread([this] { loop(); });
}

void Engine::stop() {
  stop_ = true;
  wake_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void Engine::loop() {
  while (!stop_) {
    bool busy = false;
    try {
      busy = step();
    } catch (const std::exception& e) {
      // A failing step must not take the server down: fail every running request with the error.
      log::warn("engine step failed: {}", e.what());
      std::vector<std::unique_ptr<Sequence>> failed;
      {
        std::lock_guard<std::mutex> lock(mutex_);
        failed.swap(running_);
        for (auto& s : failed) release_resources(*s);
      }
      for (auto& s : failed) {  // outside the lock: a callback may call abort()
        RequestOutput out;
        out.id = s->id, out.finished = true, out.finish_reason = FinishReason::error, out.error = e.what();
        s->callback(out);
      }
    }
    if (!busy) {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait_for(lock, std::chrono::milliseconds(50),
                     [this] { return stop_ || !waiting_.empty() || !aborted_.empty(); });
    }
  }
  // Shutting down: whatever is left is aborted.
  std::lock_guard<std::mutex> lock(mutex_);
  auto abort_all = [](auto& list) {
    for (auto& s : list) {
      RequestOutput out;
      out.id = s->id, out.finished = true, out.finish_reason = FinishReason::abort;
      s->callback(out);
    }
    list.clear();
  };
  abort_all(running_);
  abort_all(waiting_);
}

uint64_t Engine::image_hash_extra(const Sequence& s, int32_t b) const {
  const int32_t bs = kv_->block_size();
  uint64_t h = 0;
  for (const ImageInput& im : s.request.images)
    if (im.offset < (b + 1) * bs && im.end() > b * bs)
      h = (h ^ im.image->hash) * 0x100000001b3ull + static_cast<uint64_t>(im.offset - b * bs + (1 << 20));
  return h;
}

int32_t Engine::fit_image_blocks(const Sequence& s, int32_t n) const {
  for (const ImageInput& im : s.request.images) {
    const int32_t end = s.computed + n;
    if (s.computed < im.end() && end > im.offset && end < im.end())  // would split this block
      n = im.offset > s.computed ? im.offset - s.computed : 0;
  }
  return n;
}

const TensorView& Engine::image_features(const ImageInput& image) {
  const uint64_t h = image.image->hash;
  for (auto it = encoder_cache_.begin(); it != encoder_cache_.end(); ++it)
    if (it->hash == h) {
      encoder_cache_.splice(encoder_cache_.begin(), encoder_cache_, it);
      std::lock_guard<std::mutex> lock(mutex_);
      ++stats_.mm_encoder_cache_hits;
      return encoder_cache_.front().features.view();
    }
  const double t0 = now_seconds();
  encoder_cache_.push_front({h, Tensor(target_.backend())});
  TensorView& f = encoder_cache_.front().features.resize(DType::F32, {image.image->soft_tokens(), target_.config().hidden});
  vision_->encode(*image.image, f);
  std::lock_guard<std::mutex> lock(mutex_);
  ++stats_.mm_images_encoded;
  stats_.mm_encode_seconds += now_seconds() - t0;
  return f;
}

int32_t Engine::match_prefix(Sequence& s) {
  // Only blocks strictly before the last token: that token must run to produce logits.
  const int32_t bs = kv_->block_size();
  const int32_t full = (static_cast<int32_t>(s.tokens.size()) - 1) / bs;
  std::vector<uint64_t> hashes;
  for (int32_t b = 0; b < full; ++b)
    hashes.push_back(block_hash(b ? hashes.back() : 0, std::span<const int32_t>(s.tokens).subspan(b * bs, bs),
                                image_hash_extra(s, b)));
  const int64_t taken = kv_->lookup(hashes, s.tables);
  s.block_hashes.assign(hashes.begin(), hashes.begin() + taken);
  return static_cast<int32_t>(taken) * bs;
}

void Engine::publish_blocks(Sequence& s) {
  if (!config_.enable_prefix_caching) return;
  const int32_t bs = kv_->block_size();
  while (static_cast<int32_t>(s.block_hashes.size() + 1) * bs <= s.computed) {
    const size_t b = s.block_hashes.size();
    const uint64_t h = block_hash(b ? s.block_hashes.back() : 0, std::span<const int32_t>(s.tokens).subspan(b * bs, bs),
                                  image_hash_extra(s, static_cast<int32_t>(b)));
    kv_->publish(s.tables, static_cast<int64_t>(b), h);
    s.block_hashes.push_back(h);
  }
}

void Engine::commit_kv(Sequence& s) {
  publish_blocks(s);
  kv_->release_behind(s.tables, s.computed);
}

void Engine::release_resources(Sequence& s) {
  if (proposer_) proposer_->release(s.id);
  kv_->release_all(s.tables);
  if (s.state_row >= 0) free_state_rows_.push_back(s.state_row);
  s.state_row = -1;
  s.has_hidden = false;
}

bool Engine::step() {
  const ModelConfig& c = target_.config();
  const int V = c.vocab_size;

  // 1. Aborts and admission (under the lock; the forward runs without it). Callbacks run after
  // the lock is released, since a callback may call abort().
  std::vector<std::pair<OutputCallback, RequestOutput>> aborted_outputs;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto remove = [&](auto& list, uint64_t id) {
      auto it = std::find_if(list.begin(), list.end(), [&](const auto& s) { return s->id == id; });
      if (it == list.end()) return;
      Sequence& s = **it;
      RequestOutput out;
      out.id = s.id, out.finished = true, out.finish_reason = FinishReason::abort;
      out.prompt_tokens = s.prompt_len, out.completion_tokens = s.generated();
      if (s.scheduled_at > 0) out.queue_seconds = s.scheduled_at - s.submitted_at, out.scheduled_time = s.scheduled_at;
      aborted_outputs.emplace_back(std::move(s.callback), std::move(out));
      release_resources(s);
      list.erase(it);
    };
    for (uint64_t id : aborted_) {
      remove(running_, id);
      remove(waiting_, id);
    }
    aborted_.clear();
    // Admit in arrival order while the whole prompt (+1 decode block) fits in free KV blocks.
    while (!waiting_.empty() && static_cast<int>(running_.size()) < config_.max_num_seqs) {
      Sequence& s = *waiting_.front();
      // Prompt logprobs need logits at every prompt position: no prefix cache reads for those.
      const int32_t matched = config_.enable_prefix_caching && !s.wants_prompt_logprobs() ? match_prefix(s) : 0;
      // The full group holds the whole prompt from here; the sliding group is reserved chunk by chunk.
      if (!kv_->reserve_full(s.tables, static_cast<int64_t>(s.tokens.size()) + 1)) {
        kv_->release_all(s.tables);  // give back any matched blocks; retry when pages free up
        s.block_hashes.clear();
        break;
      }
      s.computed = matched;
      if (s.scheduled_at == 0) s.scheduled_at = now_seconds();
      if (config_.enable_prefix_caching) {
        stats_.prefix_cache_queries += s.prompt_len;
        stats_.prefix_cache_hits += std::min(matched, s.prompt_len);
      }
      stats_.prompt_tokens += s.prompt_len;
      s.state_row = free_state_rows_.back();
      free_state_rows_.pop_back();
      running_.push_back(std::move(waiting_.front()));
      waiting_.pop_front();
    }
    stats_.num_running = static_cast<int>(running_.size());
    stats_.num_waiting = static_cast<int>(waiting_.size());
    stats_.kv_usage = kv_->usage();
  }
  for (auto& [callback, out] : aborted_outputs) callback(out);
  if (running_.empty()) return !aborted_outputs.empty();
  // Trim the encoder cache (no step holds views of it now).
  int64_t cached_rows = 0;
  for (auto it = encoder_cache_.begin(); it != encoder_cache_.end();) {
    const int64_t rows = cached_rows += it->features.view().rows();
    it = rows > config_.max_num_batched_tokens && it != encoder_cache_.begin() ? encoder_cache_.erase(it) : std::next(it);
  }

  // 2. Drafts for sequences in decode (a round needs KV room for the bonus and k drafts).
  const double t_draft0 = now_seconds();
  std::vector<DraftRequest> drafts;
  std::vector<Sequence*> drafting;
  for (auto& sp : running_) {
    Sequence& s = *sp;
    if (!s.decoding() || s.k <= 0 || !proposer_) continue;
    const int remaining = s.request.max_tokens - s.generated();
    const int room = config_.max_model_len - static_cast<int>(s.tokens.size());
    const int k = std::min({s.k, remaining - 1, room});
    if (k <= 0 || !kv_->reserve(s.tables, s.computed, s.computed + k + 1)) continue;
    DraftRequest d;
    d.seq_id = s.id, d.tokens = &s.tokens, d.committed = s.computed, d.tables = &s.tables, d.k = k;
    if (s.has_hidden) d.target_hidden = hidden_states_.view().row_slice(s.state_row, s.state_row + 1);
    drafts.push_back(std::move(d));
    drafting.push_back(&s);
  }
  if (!drafts.empty()) proposer_->propose(drafts, *kv_);
  // Drafts left in backend memory go into the verify batch there and reach the host with its sampled
  // ids, except in a step where a sequence with a grammar drafted: check_drafts needs them before the
  // verify, so they come to the host now (one more wait, as with a proposer that drafts on the host).
  Backend& be = target_.backend();
  const DeviceDrafts* device = proposer_ ? proposer_->device_drafts() : nullptr;
  bool drafts_to_host = false;
  for (size_t i = 0; i < drafts.size(); ++i) drafts_to_host |= drafts[i].device_count > 0 && drafting[i]->matcher;
  if (drafts_to_host) {
    const HostTensor ids = to_host(be, device->ids);
    proposer_->drafts_arrived({ids.view().as<int32_t>(), static_cast<size_t>(ids.view().numel())});
    for (DraftRequest& d : drafts) {
      if (d.device_count > 0) d.drafts = host_drafts(*device, ids.view().as<int32_t>(), d.device_index, d.device_count);
      d.device_count = 0;
    }
  }
  const double draft_seconds = now_seconds() - t_draft0;

  // 3. One ragged target batch: decode / verify rows first, then prefill chunks within budget.
  ForwardBatch batch;
  struct Span {
    Sequence* seq;
    int32_t first_row, n_rows;
    std::vector<int32_t> drafts;
    bool outputs;  // the chunk reaches the last token, so its last row(s) produce logits
    int32_t prompt_lp_rows = 0;  // leading output rows that only serve prompt_logprobs
    GrammarRound grammar = {};   // structured outputs: the token mask of each output row
    // Drafts still in backend memory: how many rows of the batch take them (from element
    // device_index of device->ids on), and the RNG's position before their rows drew uniforms.
    // `drafts` holds them once they reach the host, cut at the first stop id.
    int device_drafts = 0;
    int32_t device_index = 0;
    std::mt19937_64 rng_before{};
    int draft_rows() const { return device_drafts > 0 ? device_drafts : static_cast<int>(drafts.size()); }
  };
  std::vector<Span> spans;
  int budget = config_.max_num_batched_tokens;
  size_t next_draft = 0;
  std::vector<Sequence*> preempted;
  int prefill_rows = 0;
  for (auto& sp : running_) {
    Sequence& s = *sp;
    if (!s.decoding()) continue;
    const bool has_drafts = next_draft < drafting.size() && drafting[next_draft] == &s;
    if (!has_drafts && !kv_->reserve(s.tables, s.computed, s.computed + 1)) {
      preempted.push_back(&s);  // out of KV pages: recompute this sequence later
      continue;
    }
    Span span{&s, batch.size(), 0, {}, true};
    if (has_drafts) {
      const DraftRequest& d = drafts[next_draft++];
      span.drafts = d.drafts, span.device_drafts = d.device_count, span.device_index = d.device_index;
    }
    if (s.matcher) span.grammar = check_drafts(s, span.drafts);
    const int32_t p = s.computed;
    batch.add(s.tokens.back(), p, &s.tables, true);
    for (size_t i = 0; i < span.drafts.size(); ++i) batch.add(span.drafts[i], p + 1 + static_cast<int32_t>(i), &s.tables, true);
    if (span.device_drafts) batch.device_tokens = device->ids;
    for (int j = 0; j < span.device_drafts; ++j)
      batch.add_device(span.device_index + j * device->stride, p + 1 + j, &s.tables, true);
    span.n_rows = batch.size() - span.first_row;
    budget -= span.n_rows;
    spans.push_back(std::move(span));
  }
  for (auto& sp : running_) {
    Sequence& s = *sp;
    if (s.decoding() || budget <= 0) continue;
    const int32_t total = static_cast<int32_t>(s.tokens.size());
    const int32_t n = fit_image_blocks(s, std::min(budget, total - s.computed));
    if (n <= 0 || !kv_->reserve(s.tables, s.computed, s.computed + n + 1)) continue;
    Span span{&s, batch.size(), n, {}, s.computed + n == total};
    if (s.matcher && span.outputs) span.grammar = check_drafts(s, span.drafts);
    const bool all_rows = s.wants_prompt_logprobs();
    if (all_rows) span.prompt_lp_rows = span.outputs ? n - 1 : n;
    for (int32_t i = 0; i < n; ++i) {
      const int32_t p = s.computed + i;
      int32_t block_end = 0;
      for (const ImageInput& im : s.request.images)
        if (p >= im.offset && p < im.end()) block_end = im.end();
      batch.add(s.tokens[p], p, &s.tables, all_rows || (span.outputs && i == n - 1), block_end);
    }
    for (const ImageInput& im : s.request.images) {  // the chunk's image rows take the image's features
      const int32_t r0 = std::max(im.offset, s.computed), r1 = std::min(im.end(), s.computed + n);
      if (r0 < r1)
        batch.embeds.push_back({span.first_row + (r0 - s.computed),
                                image_features(im).row_slice(r0 - im.offset, r1 - im.offset)});
    }
    budget -= n;
    prefill_rows += n;
    spans.push_back(std::move(span));
  }
  if (!preempted.empty()) {
    // Preemption by recomputation: drop the sequence's KV and queue it first; its prompt and
    // generated tokens are prefilled again when pages free up.
    std::lock_guard<std::mutex> lock(mutex_);
    for (Sequence* p : preempted) {
      ++stats_.num_preemptions;
      log::warn("request {} preempted (recompute): not enough KV cache space; {} preemptions so far. Raise the KV "
                "cache size or lower --max-num-seqs",
                p->id, stats_.num_preemptions);
      auto it = std::find_if(running_.begin(), running_.end(), [&](const auto& s) { return s.get() == p; });
      release_resources(*p);
      p->block_hashes.clear();
      p->computed = 0;
      waiting_.push_front(std::move(*it));
      running_.erase(it);
    }
  }
  if (spans.empty()) return true;  // everything is waiting on KV room; the next step retries

  const double t_fwd0 = now_seconds();
  const ForwardOutput fwd = target_.run(batch, *kv_, true);
  // Rows whose sampler leaves the logits as they are (no grammar, penalties, bias,
  // allowed_token_ids or min_tokens mask) and that want no logprobs or prompt logprobs are sampled on
  // the backend (argmax_rows when all of them are greedy, else sample_rows), and only their token ids
  // cross to the host. The logits of the whole batch come to the host only when some other row
  // needs them there. Prompt-logprob rows are output rows even in chunks that do not reach the
  // prompt's end. Every output row draws its two uniforms first, whichever path samples it. Device
  // drafts come back in the same download as the sampled ids (after them), the one wait of the round;
  // rows past a stop id they contain are verified but ignored (rows after a row never change it).
  auto on_backend = [](const Span& span) {
    if (span.prompt_lp_rows > 0) return false;
    const Sampler& sampler = span.seq->sampler;
    return sampler.params().top_logprobs < 0 && sampler.leaves_logits(span.seq->generated());
  };
  const int64_t n_rows = fwd.logits.data ? fwd.logits.rows() : 0;
  std::vector<float> sample_inputs(n_rows * 6, 0.0f);  // rows no sampled span owns stay greedy
  const int64_t N = batch.device_rows.empty() ? 0 : device->ids.numel();
  // [n_rows + N] each row's draft (-1: none), the device drafts' room, then [n_rows] the index that
  // merges them (merge_device_ids).
  std::vector<int32_t> sample_drafts(2 * n_rows + N, -1);
  std::iota(sample_drafts.begin() + n_rows + N, sample_drafts.end(), 0);
  bool any_backend = false, any_sampled = false, any_host = false;
  for (int64_t row = 0; Span& span : spans) {
    row += span.prompt_lp_rows;
    if (!span.outputs) continue;
    Sequence& s = *span.seq;
    const bool backend_rows = on_backend(span);
    any_backend |= backend_rows, any_host |= !backend_rows;
    any_sampled |= backend_rows && !s.sampler.params().greedy();
    const int n_out = span.draft_rows() + 1;
    if (span.device_drafts) span.rng_before = s.sampler.rng_position();
    for (int i = 0; i < n_out; ++i, ++row) {
      const sampling::RowParams p = s.sampler.row_params();
      const auto u = s.sampler.uniforms();
      float* in = &sample_inputs[row * 6];
      in[0] = p.temperature, in[1] = p.top_k, in[2] = p.top_p, in[3] = p.min_p, in[4] = u[0], in[5] = u[1];
      if (i < static_cast<int>(span.drafts.size())) sample_drafts[row] = span.drafts[i];
      if (i < span.device_drafts)
        sample_drafts[n_rows + N + row] = static_cast<int32_t>(n_rows + span.device_index + i * device->stride);
    }
  }
  any_host |= std::any_of(spans.begin(), spans.end(), [](const Span& span) { return span.prompt_lp_rows > 0; });
  HostTensor logits, backend_tokens;  // backend_tokens: [n_rows] sampled ids, then the N device drafts
  if (n_rows > 0 && (any_backend || N > 0)) {
    TensorView& result = tokens_.resize(DType::I32, {n_rows + N});
    TensorView out(DType::I32, result.data, {n_rows});
    if (any_backend && !any_sampled) {
      be.argmax_rows(fwd.logits, nullptr, out);
    } else if (any_backend) {
      TensorView& in = sample_inputs_.resize(DType::F32, {n_rows, 6});
      TensorView& staged = sample_drafts_.resize(DType::I32, {2 * n_rows + N});
      upload_to(be, sample_inputs.data(), in);
      upload_to(be, sample_drafts.data(), staged);
      TensorView drafts(DType::I32, staged.data, {n_rows});
      if (N > 0) {  // the rows of device drafts take them here
        drafts = TensorView(DType::I32, sample_drafts_merged_.resize(DType::I32, {n_rows}).data, {n_rows});
        const TensorView combined(DType::I32, staged.data, {n_rows + N});
        const TensorView index(DType::I32, staged.as<int32_t>() + n_rows + N, {n_rows});
        merge_device_ids(be, combined, device->ids, nullptr, index, drafts);
      }
      TensorView params(DType::F32, in.data, {n_rows, sampling::kParamCols});
      TensorView uniforms(DType::F32, in.as<float>() + sampling::kParamCols, {n_rows, sampling::kUniforms});
      params.row_stride = uniforms.row_stride = 6;
      be.sample_rows(fwd.logits, params, uniforms, drafts, out);
    }
    if (N > 0) {
      TensorView tail(DType::I32, result.as<int32_t>() + n_rows, {1, N});
      be.copy(device->ids.reshaped({1, N}), tail);
    }
    backend_tokens = to_host(be, result);
  }
  if (n_rows > 0 && any_host) logits = to_host(be, fwd.logits);
  const double forward_seconds = now_seconds() - t_fwd0;
  // Device drafts on the host: cut at the first stop id (as a host proposer cuts them), and each
  // such round's RNG advanced by the rows it keeps only.
  if (N > 0) proposer_->drafts_arrived({backend_tokens.view().as<int32_t>() + n_rows, static_cast<size_t>(N)});
  for (Span& span : spans) {
    if (!span.device_drafts) continue;
    const int32_t* device_ids = backend_tokens.view().as<int32_t>() + n_rows;
    span.drafts = host_drafts(*device, device_ids, span.device_index, span.device_drafts);
    Sampler& sampler = span.seq->sampler;
    sampler.set_rng_position(span.rng_before);
    for (size_t i = 0; i <= span.drafts.size(); ++i) sampler.uniforms();
  }

  // 4. Accept / sample, emit, retire.
  int out_row = 0;  // index into the output rows (hidden / logits)
  SpecStats spec_delta;
  spec_delta.accepted_per_position.assign(config_.num_speculative_tokens, 0);
  uint64_t generated_delta = 0;
  for (Span& span : spans) {
    Sequence& s = *span.seq;
    for (int i = 0; i < span.prompt_lp_rows; ++i) {  // row at position p predicts prompt token p + 1
      const int32_t p = s.computed + i;
      if (p + 1 >= s.prompt_len || static_cast<int32_t>(s.prompt_lp.size()) != p) continue;
      const auto lg = std::span<const float>(logits.f32() + static_cast<int64_t>(out_row + i) * V, V);
      const int32_t t = s.tokens[p + 1];
      s.prompt_lp.push_back({t, token_logprob(lg, t), token_rank(lg, t), top_logprobs(lg, s.request.prompt_logprobs)});
    }
    out_row += span.prompt_lp_rows;
    if (!span.outputs) {  // a prefill chunk that does not reach the end yet
      s.computed += span.n_rows;
      commit_kv(s);
      continue;
    }
    const int n_out = static_cast<int>(span.drafts.size()) + 1;  // the rows that count: drafts cut at a stop id
    const int row0 = out_row;
    out_row += span.draft_rows() + 1;
    auto row_logits = [&](int i) { return std::span<const float>(logits.f32() + static_cast<int64_t>(row0 + i) * V, V); };
    auto row_mask = [&](int i) { return span.grammar.mask(i); };

    // Longest accepted prefix of the drafts, then one token from the target (correction or bonus).
    std::vector<int32_t> emitted;
    std::vector<int32_t> prefix(s.output().begin(), s.output().end());  // output so far, for penalties
    int accepted = 0;
    const bool backend_rows = on_backend(span);
    for (int i = 0; i < n_out; ++i) {
      const bool has_draft = i < static_cast<int>(span.drafts.size());
      const int32_t draft = has_draft ? span.drafts[i] : -1;
      int32_t token;
      if (backend_rows) {
        token = backend_tokens.view().as<int32_t>()[row0 + i];
      } else if (s.sampler.params().greedy()) {
        token = s.sampler.argmax(row_logits(i), prefix, row_mask(i));
      } else {
        const float* in = &sample_inputs[(row0 + i) * 6];
        token = s.sampler.sample(row_logits(i), prefix, draft, {in[4], in[5]}, row_mask(i));
      }
      // Either way the token is the draft exactly when the draft is accepted (a rejected draft's
      // mass is removed before the draw).
      if (has_draft && token == draft) {
        ++accepted, emitted.push_back(token), prefix.push_back(token);
        continue;
      }
      emitted.push_back(token);
      break;
    }
    if (!span.drafts.empty()) {
      spec_delta.num_drafts += 1;
      spec_delta.num_draft_tokens += span.drafts.size();
      spec_delta.num_accepted_tokens += accepted;
      for (int i = 0; i < accepted; ++i) spec_delta.accepted_per_position[i] += 1;
      if (spec_trace) spec_trace(s.id, span.drafts, accepted);
    }
    if (s.matcher) commit_grammar(s, span.grammar, emitted);

    // Commit: KV is valid through the last accepted row; hidden of that row seeds the next draft.
    const int last_row = static_cast<int>(emitted.size()) - 1;
    s.computed = span.drafts.empty() ? s.computed + span.n_rows : s.computed + 1 + accepted;
    TensorView state = hidden_states_.view().row_slice(s.state_row, s.state_row + 1);
    be.copy(fwd.hidden.row_slice(row0 + last_row, row0 + last_row + 1), state);
    s.has_hidden = true;

    // Stop rules, applied token by token.
    RequestOutput out;
    out.id = s.id;
    out.prompt_tokens = s.prompt_len;
    out.num_draft_tokens = static_cast<int>(span.drafts.size());
    out.num_accepted_draft_tokens = accepted;
    const auto& stops = s.request.stop_token_ids;
    for (int i = 0; i < static_cast<int>(emitted.size()); ++i) {
      const int32_t t = emitted[i];
      s.tokens.push_back(t);
      out.tokens.push_back(t);
      if (s.request.sampling.top_logprobs >= 0) {
        const auto lg = row_logits(i);
        out.logprobs.push_back(token_logprob(lg, t));
        out.top_logprobs.push_back(top_logprobs(lg, s.request.sampling.top_logprobs));
      }
      const bool eos = !s.request.ignore_eos && std::find(c.eos_ids.begin(), c.eos_ids.end(), t) != c.eos_ids.end();
      const bool may_stop = s.generated() >= s.request.sampling.min_tokens;
      if (may_stop && (eos || std::find(stops.begin(), stops.end(), t) != stops.end())) {
        out.finish_reason = FinishReason::stop;
      } else if (s.generated() >= s.request.max_tokens || static_cast<int>(s.tokens.size()) >= config_.max_model_len) {
        out.finish_reason = FinishReason::length;
      }
      if (out.finish_reason != FinishReason::none) break;
    }
    if (s.wants_prompt_logprobs()) out.prompt_logprobs = std::move(s.prompt_lp), s.prompt_lp_sent = true;
    generated_delta += out.tokens.size();
    out.completion_tokens = s.generated();
    out.finished = out.finish_reason != FinishReason::none;
    s.finished = out.finished;
    out.queue_seconds = s.scheduled_at - s.submitted_at, out.scheduled_time = s.scheduled_at;
    // Free pages beyond what is committed (rejected drafts) and behind the window; offer completed
    // blocks for reuse.
    kv_->truncate(s.tables, s.computed + 1);
    commit_kv(s);
    s.callback(out);
  }

  // 5. Retire finished sequences and publish stats.
  std::lock_guard<std::mutex> lock(mutex_);
  for (auto it = running_.begin(); it != running_.end();) {
    if ((*it)->finished) {
      release_resources(**it);
      it = running_.erase(it);
      ++stats_.requests_finished;
    } else {
      ++it;
    }
  }
  stats_.generation_tokens += generated_delta;
  stats_.iteration_tokens.observe(static_cast<double>(prefill_rows + generated_delta));
  if (spec_delta.num_drafts) {
    stats_.spec.num_drafts += spec_delta.num_drafts;
    stats_.spec.num_draft_tokens += spec_delta.num_draft_tokens;
    stats_.spec.num_accepted_tokens += spec_delta.num_accepted_tokens;
    for (size_t i = 0; i < spec_delta.accepted_per_position.size(); ++i)
      stats_.spec.accepted_per_position[i] += spec_delta.accepted_per_position[i];
    stats_.spec.draft_seconds += draft_seconds;
    stats_.spec.verify_seconds += forward_seconds;
  }
  stats_.num_running = static_cast<int>(running_.size());
  stats_.num_waiting = static_cast<int>(waiting_.size());
  stats_.kv_usage = kv_->usage();
  return true;
}

}  // namespace tandem
