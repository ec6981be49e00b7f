// Test doubles for the server: a byte-level "tokenizer" and a scripted engine on its own thread.
#pragma once
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "server/api_error.h"
#include "server/service.h"
#include "server/structured_output.h"
#include "util/error.h"

namespace tandem::server::testing {

// The message of the ApiError fn() raises, which must be a 400 ("" if it raises none).
template <typename F>
std::string bad_request_message(F&& fn) {
  try {
    fn();
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status(), 400);
    return e.what();
  }
  return "";
}

// Ids: 0 <pad>, 1 <eos>, 2 <bos>, 3 <|channel>, 4 <channel|>, 5 + byte, then the tool-call markers
// <|tool_call>, <tool_call|>, <|"|> (special tokens like Gemma 4's).
class ByteCodec : public TextCodec {
 public:
  static constexpr int32_t kEos = 1, kBos = 2, kOpen = 3, kClose = 4, kBase = 5;
  static constexpr int32_t kCallOpen = kBase + 256, kCallClose = kBase + 257, kQuote = kBase + 258;
  static int32_t id_of(unsigned char c) { return kBase + c; }

  std::vector<int32_t> encode(std::string_view text, bool add_special) const override {
    std::vector<int32_t> ids;
    if (add_special) ids.push_back(kBos);
    size_t i = 0;
    if (text.substr(0, 5) == "<bos>") ids.push_back(kBos), i = 5;
    for (; i < text.size(); ++i) ids.push_back(id_of(static_cast<unsigned char>(text[i])));
    return ids;
  }
  std::string decode(std::span<const int32_t> ids, bool skip_special) const override {
    std::string s;
    for (int32_t id : ids) {
      if (id >= kBase && id < kBase + 256) s += static_cast<char>(id - kBase);
      else if (!skip_special && id == kEos) s += "<eos>";
      else if (!skip_special && id == kBos) s += "<bos>";
      else if (!skip_special && id == kOpen) s += "<|channel>";
      else if (!skip_special && id == kClose) s += "<channel|>";
      else if (!skip_special && id == kCallOpen) s += "<|tool_call>";
      else if (!skip_special && id == kCallClose) s += "<tool_call|>";
      else if (!skip_special && id == kQuote) s += "<|\"|>";
    }
    return s;
  }
  struct Decoder : IncrementalDecoder {
    const ByteCodec* codec;
    bool skip;
    std::string push(int32_t id) override {
      int32_t one[1] = {id};
      return codec->decode(one, skip);
    }
    std::string flush() override { return {}; }
  };
  std::unique_ptr<IncrementalDecoder> stream_decoder(bool skip) const override {
    auto d = std::make_unique<Decoder>();
    d->codec = this, d->skip = skip;
    return d;
  }
  std::optional<int32_t> token_id(std::string_view t) const override {
    if (t == "<|channel>") return kOpen;
    if (t == "<channel|>") return kClose;
    if (t == "<|tool_call>") return kCallOpen;
    if (t == "<tool_call|>") return kCallClose;
    if (t == "<|\"|>") return kQuote;
    return std::nullopt;
  }
  std::vector<int32_t> eos_ids() const override { return {kEos}; }
  int32_t vocab_size() const override { return kBase + 259; }
  bool has_chat_template() const override { return true; }
  std::string render_chat(const nlohmann::json& v) const override {
    std::string s = v["bos_token"].get<std::string>();
    for (const auto& m : v["messages"]) s += m["role"].get<std::string>() + ": " + m["content"].get<std::string>() + "\n";
    if (v.value("enable_thinking", false)) s += "(thinking)";
    if (v["add_generation_prompt"].get<bool>()) s += "assistant:";
    return s;
  }
  std::string bos_token() const override { return "<bos>"; }
  std::string eos_token() const override { return "<eos>"; }
  // Grammars over these ids: one byte per token, the markers by their text (tool calls only).
  GrammarCompiler* grammar_compiler() const override {
    std::call_once(grammar_once_, [this] {
      std::vector<std::string> bytes(vocab_size());
      for (int c = 0; c < 256; ++c) bytes[id_of(static_cast<unsigned char>(c))] = std::string(1, static_cast<char>(c));
      bytes[kEos] = "<eos>", bytes[kBos] = "<bos>", bytes[kOpen] = "<|channel>", bytes[kClose] = "<channel|>";
      bytes[kCallOpen] = "<|tool_call>", bytes[kCallClose] = "<tool_call|>", bytes[kQuote] = "<|\"|>";
      grammar_ = std::make_unique<GrammarCompiler>(
          std::move(bytes), std::vector<int32_t>{kEos},
          std::vector<int32_t>{0, kBos, kOpen, kClose, kCallOpen, kCallClose, kQuote},
          std::vector<int32_t>{kCallOpen, kCallClose, kQuote});
    });
    return grammar_.get();
  }

 private:
  mutable std::once_flag grammar_once_;
  mutable std::unique_ptr<GrammarCompiler> grammar_;
};

// Generates, for a prompt containing "SAY:<text>|", the bytes of <text> then EOS; otherwise the
// letters "abcdefghijklmnopqrstuvwxyz" repeated until max_tokens. Two tokens per step (like a
// speculative round: after the first step, reported as an accepted draft and a correction), one
// step every `step_ms`.
class FakeService : public InferenceService {
 public:
  explicit FakeService(int step_ms = 1, int k = 3) : step_ms_(step_ms), k_(k) {
    thread_ = std::thread([this] { loop(); });
  }
  ~FakeService() override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

  uint64_t submit(Request r, OutputCallback cb) override {
    if (r.prompt.empty()) fail("empty prompt");
    std::lock_guard<std::mutex> lock(mutex_);
    uint64_t id = next_id_++;
    Seq s;
    s.req = r, s.cb = std::move(cb);
    std::string prompt;
    for (int32_t t : r.prompt)
      if (t >= ByteCodec::kBase && t < ByteCodec::kBase + 256) prompt += static_cast<char>(t - ByteCodec::kBase);
    auto at = prompt.find("SAY:");
    if (at != std::string::npos) {
      auto end = prompt.find('|', at);
      std::string say = prompt.substr(at + 4, end == std::string::npos ? std::string::npos : end - at - 4);
      // \x01 and \x02 in the script stand for the thinking-channel markers, \x03 \x04 \x05 for
      // <|tool_call>, <tool_call|> and <|"|>.
      for (unsigned char c : say)
        s.script.push_back(c == 1   ? ByteCodec::kOpen
                           : c == 2 ? ByteCodec::kClose
                           : c == 3 ? ByteCodec::kCallOpen
                           : c == 4 ? ByteCodec::kCallClose
                           : c == 5 ? ByteCodec::kQuote
                                    : ByteCodec::id_of(c));
      s.script.push_back(ByteCodec::kEos);
    }
    seqs_[id] = std::move(s);
    submitted_.push_back(r);
    cv_.notify_all();
    return id;
  }
  void abort(uint64_t id) override {
    std::lock_guard<std::mutex> lock(mutex_);
    aborted_.insert(id);
    cv_.notify_all();
  }
  EngineStats stats() const override {
    std::lock_guard<std::mutex> lock(mutex_);
    EngineStats st;
    st.num_running = static_cast<int>(seqs_.size());
    st.kv_usage = seqs_.empty() ? 0.0 : 0.01 * seqs_.size();
    st.prompt_tokens = prompt_tokens_;
    st.generation_tokens = generation_tokens_;
    st.spec.num_drafts = 3, st.spec.num_draft_tokens = 9, st.spec.num_accepted_tokens = 5;
    st.spec.accepted_per_position = {3, 1, 1};
    return st;
  }
  int max_model_len() const override { return 256; }
  int num_speculative_tokens() const override { return k_; }

  std::vector<Request> submitted() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return submitted_;
  }
  size_t num_aborted() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return aborted_.size();
  }
  int running() const { return stats().num_running; }

 private:
  struct Seq {
    Request req;
    OutputCallback cb;
    std::vector<int32_t> script;
    int produced = 0;
  };

  void loop() {
    std::unique_lock<std::mutex> lock(mutex_);
    while (!stop_) {
      cv_.wait_for(lock, std::chrono::milliseconds(step_ms_), [&] { return stop_; });
      for (auto it = seqs_.begin(); it != seqs_.end();) {
        Seq& s = it->second;
        RequestOutput out;
        out.id = it->first;
        out.prompt_tokens = static_cast<int>(s.req.prompt.size());
        if (aborted_.count(it->first)) {
          out.finished = true, out.finish_reason = FinishReason::abort;
        } else {
          if (s.produced == 0) prompt_tokens_ += s.req.prompt.size();
          // A speculative round after the first step: two drafts, the first accepted, so the two
          // tokens are an accepted draft and the target's correction.
          if (s.produced > 0) out.num_draft_tokens = 2, out.num_accepted_draft_tokens = 1;
          for (int j = 0; j < 2 && !out.finished; ++j) {
            int32_t t = s.script.empty() ? ByteCodec::id_of('a' + s.produced % 26) : s.script[s.produced];
            out.tokens.push_back(t);
            if (s.req.sampling.top_logprobs >= 0) {
              out.logprobs.push_back(-0.5f);
              std::vector<TokenLogprob> top;
              for (int a = 0; a < s.req.sampling.top_logprobs; ++a) top.push_back({ByteCodec::id_of('A' + a), -1.0f - a});
              out.top_logprobs.push_back(top);
            }
            s.produced += 1, generation_tokens_ += 1;
            if (t == ByteCodec::kEos) out.finished = true, out.finish_reason = FinishReason::stop;
            else if (s.produced >= s.req.max_tokens) out.finished = true, out.finish_reason = FinishReason::length;
          }
        }
        out.completion_tokens = s.produced;
        OutputCallback cb = s.cb;
        bool done = out.finished;
        if (done) it = seqs_.erase(it);
        else ++it;
        cb(out);
      }
    }
  }

  int step_ms_, k_;
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  std::map<uint64_t, Seq> seqs_;
  std::set<uint64_t> aborted_;
  std::vector<Request> submitted_;
  uint64_t next_id_ = 1, prompt_tokens_ = 0, generation_tokens_ = 0;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace tandem::server::testing
