#include "server/http_server.h"

#include <httplib.h>
#include <signal.h>

#include <chrono>
#include <condition_variable>
#include <cmath>
#include <deque>
#include <mutex>
#include <random>

#include "server/api_error.h"
#include "server/reasoning_parser.h"
#include "server/stop_matcher.h"
#include "server/tool_parser.h"
#include "server/web_ui.h"
#include "util/error.h"
#include "util/log.h"
#include "util/version.h"

namespace tandem::server {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

double seconds(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

int64_t unix_time() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string random_id(const char* prefix) {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  return fmt::format("{}{:016x}{:016x}", prefix, rng(), rng());
}

const char* reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::stop: return "stop";
    case FinishReason::length: return "length";
    case FinishReason::abort: return "abort";
    case FinishReason::error: return "error";
    default: return "stop";
  }
}

void send_json(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(dump(body), "application/json");
}

void send_error(httplib::Response& res, const ApiError& e) { send_json(res, e.status(), e.to_json()); }

double clamp_logprob(float lp) { return std::isfinite(lp) ? lp : -9999.0; }

// ---------------------------------------------------------------------------------------------
// One HTTP generation request: n × prompts engine requests, their output queue and per-choice
// text state.

// One output token on its way to the client: its logprobs (when requested) and, for
// stream_options.tandem_spec_trace, how it was produced. Entries wait with the text they belong to
// (held back by stop matching) and go out in the chunk that carries it.
struct LogprobEntry {
  int32_t token;
  float logprob;
  std::vector<TokenLogprob> top;
  const char* kind = "target";  // "draft" (accepted), "bonus", "correction", or "target" (no drafts)
  int round = 0;                // the choice's engine step that produced it (0: after prefill)
  int position = 0;             // its index among that step's tokens
};

const char* token_kind(const RequestOutput& out, size_t j) {
  if (out.num_draft_tokens == 0) return "target";
  if (static_cast<int>(j) < out.num_accepted_draft_tokens) return "draft";
  return out.num_accepted_draft_tokens == out.num_draft_tokens ? "bonus" : "correction";
}

struct Delta {
  std::string content, reasoning;
  std::vector<ToolCallDelta> tool_calls;
  std::vector<LogprobEntry> logprobs;
  bool finished = false;
};

struct Choice {
  uint64_t id = 0;
  bool submitted = false;
  bool engine_finished = false;  // the engine sent its final output
  bool abort_sent = false;
  std::unique_ptr<IncrementalDecoder> decoder;
  std::unique_ptr<StopMatcher> matcher;
  // Chat: the text after stop matching goes through the reasoning parser, then its content through
  // the tool-call parser (vLLM's order).
  std::unique_ptr<ReasoningParser> reasoning_parser;
  std::unique_ptr<ToolCallParser> tool_parser;
  std::string text, reasoning;
  std::vector<ToolCall> tool_calls;
  std::vector<LogprobEntry> pending_lp, logprobs;
  int tokens = 0;
  int rounds = 0;  // engine outputs with tokens so far
  int prompt_tokens = 0;
  bool finished = false;
  std::string finish_reason;
  json stop_reason = nullptr;
  std::string error;
  bool have_first = false;
  Clock::time_point first_token, last_token;
  std::vector<PromptLogprob> prompt_lp;  // prompt_logprobs / echo + logprobs
  double queue_seconds = -1, scheduled_time = 0;  // from the engine
};

class Run {
 public:
  Run(HttpServer& server, ParsedRequest req, Clock::time_point arrival)
      : server_(server), service_(server.service()), codec_(server.codec()), req_(std::move(req)),
        arrival_(arrival), queue_(std::make_shared<Queue>()) {
    id_ = random_id(req_.chat ? "chatcmpl-" : "cmpl-");
    created_ = unix_time();
    eos_ = codec_.eos_ids();
    // The parsers read the channel and tool-call markers, special tokens: keep them in the text
    // (vLLM's parsers set skip_special_tokens = false too).
    const bool reasoning = req_.chat && !req_.reasoning_parser.empty();
    const bool markers = reasoning || req_.tool_output != ToolOutput::none;
    choices_.resize(req_.num_choices());
    for (int i = 0; i < req_.num_choices(); ++i) {
      Choice& c = choices_[i];
      c.decoder = codec_.stream_decoder(req_.skip_special_tokens && !markers);
      if (reasoning) c.reasoning_parser = make_reasoning_parser(req_.reasoning_parser);
      switch (req_.tool_output) {
        case ToolOutput::none: break;
        case ToolOutput::parse: c.tool_parser = make_tool_call_parser(req_.tool_call_parser, req_.stream); break;
        case ToolOutput::named: c.tool_parser = make_forced_tool_output(false, req_.stream); break;
        case ToolOutput::required: c.tool_parser = make_forced_tool_output(true, req_.stream); break;
      }
      c.matcher = std::make_unique<StopMatcher>(req_.stop);
      c.prompt_tokens = static_cast<int>(req_.prompts[i / req_.n].tokens.size());
    }
  }

  ~Run() { abort_all(); }

  void submit() {
    for (int i = 0; i < req_.num_choices(); ++i) {
      auto q = queue_;
      try {
        choices_[i].id = service_.submit(req_.engine_request(i), [q, i](const RequestOutput& out) {
          {
            std::lock_guard<std::mutex> lock(q->mutex);
            q->events.push_back({i, out, Clock::now()});
          }
          q->cv.notify_one();
        });
        choices_[i].submitted = true;
      } catch (const Error& e) {
        abort_all();
        throw bad_request(e.what(), req_.chat ? "messages" : "prompt");
      }
    }
  }

  void abort_all() {
    for (auto& c : choices_)
      if (c.submitted && !c.engine_finished && !c.abort_sent) {
        service_.abort(c.id);
        c.abort_sent = true;
      }
  }

  bool done() const {
    for (const auto& c : choices_)
      if (!c.finished) return false;
    return true;
  }

  // Waits up to `timeout` for outputs and applies them; returns the deltas produced.
  std::vector<std::pair<int, Delta>> step(std::chrono::milliseconds timeout) {
    std::deque<Event> events;
    {
      std::unique_lock<std::mutex> lock(queue_->mutex);
      queue_->cv.wait_for(lock, timeout, [&] { return !queue_->events.empty(); });
      events.swap(queue_->events);
    }
    std::vector<std::pair<int, Delta>> deltas;
    for (auto& ev : events) {
      Delta d;
      if (apply(ev, d)) deltas.emplace_back(ev.choice, std::move(d));
    }
    return deltas;
  }

  // Marks unfinished choices finished (after a shutdown or a failed write).
  void abandon(const char* reason) {
    abort_all();
    for (auto& c : choices_)
      if (!c.finished) finish(c, reason, Clock::now());
  }

  const ParsedRequest& request() const { return req_; }
  const std::vector<Choice>& choices() const { return choices_; }
  const std::string& id() const { return id_; }
  int64_t created() const { return created_; }

  json usage() const {
    int prompt = 0, completion = 0;
    for (const auto& p : req_.prompts) prompt += static_cast<int>(p.tokens.size());
    for (const auto& c : choices_) completion += c.tokens;
    return {{"prompt_tokens", prompt}, {"completion_tokens", completion}, {"total_tokens", prompt + completion}};
  }

  json logprobs_json(const std::vector<LogprobEntry>& entries, size_t text_offset) const {
    if (req_.chat) {
      json content = json::array();
      for (const auto& e : entries) {
        std::string tok = token_string(e.token);
        json top = json::array();
        for (const auto& t : e.top) {
          std::string s = token_string(t.token);
          top.push_back({{"token", s}, {"logprob", clamp_logprob(t.logprob)}, {"bytes", bytes_of(s)}});
        }
        content.push_back({{"token", tok}, {"logprob", clamp_logprob(e.logprob)}, {"bytes", bytes_of(tok)},
                           {"top_logprobs", top}});
      }
      return {{"content", content}};
    }
    json tokens = json::array(), token_logprobs = json::array(), top_logprobs = json::array(),
         offsets = json::array();
    size_t offset = text_offset;
    for (const auto& e : entries) {
      std::string tok = token_string(e.token);
      tokens.push_back(tok);
      token_logprobs.push_back(clamp_logprob(e.logprob));
      json top = json::object();
      for (const auto& t : e.top) top[token_string(t.token)] = clamp_logprob(t.logprob);
      top_logprobs.push_back(top);
      offsets.push_back(offset);
      offset += tok.size();
    }
    return {{"tokens", tokens}, {"token_logprobs", token_logprobs}, {"top_logprobs", top_logprobs},
            {"text_offset", offsets}};
  }

  // vLLM's prompt_logprobs field: null for the first prompt token, then per token a dict of token
  // id -> {logprob, rank, decoded_token} holding the prompt token and the top alternatives.
  json prompt_logprobs_json(int index) const {
    const Choice& c = choices_[index];
    json out = json::array({nullptr});
    for (const auto& e : c.prompt_lp) {
      json d = json::object();
      d[std::to_string(e.token)] = {{"logprob", clamp_logprob(e.logprob)}, {"rank", e.rank},
                                    {"decoded_token", token_string(e.token)}};
      for (size_t k = 0; k < e.top.size(); ++k) {
        const std::string key = std::to_string(e.top[k].token);
        if (!d.contains(key))
          d[key] = {{"logprob", clamp_logprob(e.top[k].logprob)}, {"rank", static_cast<int>(k) + 1},
                    {"decoded_token", token_string(e.top[k].token)}};
      }
      out.push_back(std::move(d));
    }
    return out;
  }

  // Completions echo + logprobs: the prompt tokens' part of "logprobs" (first token null), text
  // offsets from 0; `end_offset` is where the completion's offsets continue.
  json echo_logprobs_json(int index, size_t& end_offset) const {
    const Choice& c = choices_[index];
    const std::vector<int32_t>& prompt = req_.prompts[index / req_.n].tokens;
    json tokens = json::array(), token_logprobs = json::array(), top_logprobs = json::array(),
         offsets = json::array();
    size_t offset = 0;
    for (size_t j = 0; j < prompt.size(); ++j) {
      std::string tok = token_string(prompt[j]);
      tokens.push_back(tok);
      offsets.push_back(offset);
      offset += tok.size();
      if (j == 0 || j - 1 >= c.prompt_lp.size()) {
        token_logprobs.push_back(nullptr), top_logprobs.push_back(nullptr);
        continue;
      }
      const PromptLogprob& e = c.prompt_lp[j - 1];
      token_logprobs.push_back(clamp_logprob(e.logprob));
      json top = json::object();
      for (const auto& t : e.top) top[token_string(t.token)] = clamp_logprob(t.logprob);
      top_logprobs.push_back(std::move(top));
    }
    end_offset = offset;
    return {{"tokens", tokens}, {"token_logprobs", token_logprobs}, {"top_logprobs", top_logprobs},
            {"text_offset", offsets}};
  }

  // stream_options.tandem_spec_trace: one entry per token of the chunk, in order.
  json spec_trace_json(const std::vector<LogprobEntry>& entries) const {
    json out = json::array();
    for (const auto& e : entries) {
      json t = {{"token", token_string(e.token)}, {"kind", e.kind}, {"round", e.round}, {"position", e.position}};
      if (req_.logprobs >= 0) t["logprob"] = clamp_logprob(e.logprob);
      out.push_back(std::move(t));
    }
    return out;
  }

  static void append_logprobs(json& head, const json& tail) {
    for (const char* k : {"tokens", "token_logprobs", "top_logprobs", "text_offset"})
      for (const auto& v : tail[k]) head[k].push_back(v);
  }

 private:
  struct Event {
    int choice;
    RequestOutput out;
    Clock::time_point time;
  };
  struct Queue {
    std::mutex mutex;
    std::condition_variable cv;
    std::deque<Event> events;
  };

  std::string token_string(int32_t id) const {
    int32_t ids[1] = {id};
    return codec_.decode(ids, false);
  }
  static json bytes_of(const std::string& s) {
    json b = json::array();
    for (unsigned char ch : s) b.push_back(static_cast<int>(ch));
    return b;
  }

  void finish(Choice& c, const std::string& reason, Clock::time_point t) {
    c.finished = true;
    c.finish_reason = c.tool_parser ? c.tool_parser->finish_reason(reason) : reason;
    double tpot = c.tokens > 1 && c.have_first ? seconds(c.first_token, c.last_token) / (c.tokens - 1) : 0.0;
    server_.metrics().observe_finished(reason, seconds(arrival_, t), tpot, c.tokens);
    const double scheduled = c.scheduled_time;
    auto since_epoch = [](Clock::time_point p) { return std::chrono::duration<double>(p.time_since_epoch()).count(); };
    const double prefill = c.have_first && scheduled > 0 ? since_epoch(c.first_token) - scheduled : -1;
    const double decode = c.have_first ? seconds(c.first_token, c.last_token) : -1;
    const double inference = c.have_first && scheduled > 0 ? since_epoch(c.last_token) - scheduled : -1;
    server_.metrics().observe_request(c.queue_seconds, prefill, decode, inference, c.prompt_tokens, c.tokens);
  }

  void emit_content(Choice& c, Delta& d, const StopMatcher::Result& r) {
    route(c, d, r.text, false);
    if (!r.text.empty() || r.matched >= 0) {
      for (auto& e : c.pending_lp) d.logprobs.push_back(e), c.logprobs.push_back(std::move(e));
      c.pending_lp.clear();
    }
  }

  // Output text → reasoning, content and tool calls; `last` flushes what the parsers hold.
  void route(Choice& c, Delta& d, std::string_view text, bool last) {
    std::string content, reasoning;
    if (c.reasoning_parser) {
      c.reasoning_parser->push(text, reasoning, content);
      if (last) c.reasoning_parser->finish(reasoning, content);
      d.reasoning += reasoning;
      c.reasoning += reasoning;
    } else {
      content = text;
    }
    if (c.tool_parser) {
      ToolCallParser::Output o;
      c.tool_parser->push(content, o);
      if (last) c.tool_parser->finish(o);
      content = std::move(o.content);
      for (auto& t : o.calls) {
        if (t.first()) c.tool_calls.push_back({t.id, t.name, t.arguments});
        else if (t.index >= 0 && t.index < static_cast<int>(c.tool_calls.size())) c.tool_calls[t.index].arguments += t.arguments;
        d.tool_calls.push_back(std::move(t));
      }
    }
    d.content += content;
    c.text += content;
  }

  bool is_stop_token(int32_t t) const {
    for (int32_t e : eos_)
      if (e == t) return true;
    for (int32_t e : req_.stop_token_ids)
      if (e == t) return true;
    return false;
  }

  // Applies one engine output to its choice; false when it changes nothing visible.
  bool apply(const Event& ev, Delta& d) {
    Choice& c = choices_[ev.choice];
    const RequestOutput& out = ev.out;
    if (out.finished) c.engine_finished = true;
    if (c.finished) return false;
    if (!out.prompt_logprobs.empty()) c.prompt_lp = out.prompt_logprobs;
    if (out.scheduled_time > 0) c.queue_seconds = out.queue_seconds, c.scheduled_time = out.scheduled_time;
    if (!out.tokens.empty()) {
      if (!c.have_first) {
        c.have_first = true, c.first_token = ev.time;
        server_.metrics().observe_ttft(seconds(arrival_, ev.time));
      } else {
        server_.metrics().observe_itl(seconds(c.last_token, ev.time));
      }
      c.last_token = ev.time;
    }
    const int round = out.tokens.empty() ? c.rounds : c.rounds++;
    for (size_t j = 0; j < out.tokens.size(); ++j) {
      const int32_t tok = out.tokens[j];
      c.tokens += 1;
      const bool last = j + 1 == out.tokens.size();
      if (out.finished && last && out.finish_reason == FinishReason::stop && is_stop_token(tok)) {
        if (!eos_.empty() && std::find(eos_.begin(), eos_.end(), tok) == eos_.end()) c.stop_reason = tok;
        // The stop token itself is not part of the text, unless include_stop_str_in_output.
        if (!req_.include_stop_str_in_output) continue;
      }
      if (req_.logprobs >= 0 || req_.spec_trace) {
        LogprobEntry lp{tok, 0.0f, {}, token_kind(out, j), round, static_cast<int>(j)};
        if (j < out.logprobs.size()) lp.logprob = out.logprobs[j];
        if (j < out.top_logprobs.size()) lp.top = out.top_logprobs[j];
        c.pending_lp.push_back(std::move(lp));
      }
      // Stop strings are only looked for once more than min_tokens tokens exist (vLLM).
      StopMatcher::Result r = c.matcher->push(c.decoder->push(tok), c.tokens > req_.sampling.min_tokens);
      if (r.matched >= 0 && req_.include_stop_str_in_output) r.text += req_.stop[r.matched];
      emit_content(c, d, r);
      if (r.matched >= 0) {
        c.stop_reason = req_.stop[r.matched];
        service_.abort(c.id);
        c.abort_sent = true;
        d.finished = true;
        route(c, d, {}, true);
        finish(c, "stop", ev.time);
        return true;
      }
    }
    if (out.finished) {
      StopMatcher::Result r = c.matcher->push(c.decoder->flush(), c.tokens > req_.sampling.min_tokens);
      if (r.matched >= 0 && req_.include_stop_str_in_output) r.text += req_.stop[r.matched];
      emit_content(c, d, r);
      if (r.matched >= 0) {
        c.stop_reason = req_.stop[r.matched];
        route(c, d, {}, true);
        finish(c, "stop", ev.time);
      } else {
        StopMatcher::Result tail{c.matcher->flush(), -1};
        emit_content(c, d, tail);
        route(c, d, {}, true);
        if (out.finish_reason == FinishReason::error) c.error = out.error.empty() ? "engine error" : out.error;
        finish(c, reason_name(out.finish_reason), ev.time);
      }
      d.finished = true;
      return true;
    }
    return !d.content.empty() || !d.reasoning.empty() || !d.tool_calls.empty();
  }

  HttpServer& server_;
  InferenceService& service_;
  const TextCodec& codec_;
  ParsedRequest req_;
  Clock::time_point arrival_;
  std::shared_ptr<Queue> queue_;
  std::vector<Choice> choices_;
  std::vector<int32_t> eos_;
  std::string id_;
  int64_t created_ = 0;
};


// ---------------------------------------------------------------------------------------------
// Response bodies.

json full_response(const Run& run) {
  const ParsedRequest& req = run.request();
  json choices = json::array();
  for (size_t i = 0; i < run.choices().size(); ++i) {
    const Choice& c = run.choices()[i];
    json ch = {{"index", i}, {"finish_reason", c.finish_reason}, {"stop_reason", c.stop_reason}};
    if (req.chat) {
      json msg = {{"role", "assistant"}, {"content", c.text}};
      const bool thought = c.reasoning_parser && c.reasoning_parser->saw_reasoning();
      // vLLM: no content is null after a parser took the text (the constrained forms keep "").
      if (c.text.empty() && (thought || (!c.tool_calls.empty() && req.tool_output == ToolOutput::parse)))
        msg["content"] = nullptr;
      if (c.reasoning_parser) {
        msg["reasoning"] = thought ? json(c.reasoning) : json(nullptr);
        msg["reasoning_content"] = msg["reasoning"];
      }
      if (req.has_tools || !c.tool_calls.empty()) {
        json calls = json::array();
        for (const auto& t : c.tool_calls) calls.push_back(t.to_json());
        msg["tool_calls"] = std::move(calls);
      }
      ch["message"] = msg;
      ch["logprobs"] = req.logprobs >= 0 ? run.logprobs_json(c.logprobs, 0) : json(nullptr);
    } else {
      std::string prefix = req.echo ? req.prompts[i / req.n].text : std::string();
      ch["text"] = prefix + c.text;
      if (req.echo && req.logprobs >= 0) {
        size_t end = 0;
        json lp = run.echo_logprobs_json(static_cast<int>(i), end);
        Run::append_logprobs(lp, run.logprobs_json(c.logprobs, end));
        ch["logprobs"] = std::move(lp);
      } else {
        ch["logprobs"] = req.logprobs >= 0 ? run.logprobs_json(c.logprobs, prefix.size()) : json(nullptr);
      }
      if (req.return_prompt_logprobs) ch["prompt_logprobs"] = run.prompt_logprobs_json(static_cast<int>(i));
    }
    choices.push_back(std::move(ch));
  }
  json out = {{"id", run.id()},
              {"object", req.chat ? "chat.completion" : "text_completion"},
              {"created", run.created()},
              {"model", req.model},
              {"choices", choices},
              {"usage", run.usage()}};
  // vLLM puts a chat request's prompt logprobs at the top level.
  if (req.chat && req.return_prompt_logprobs) out["prompt_logprobs"] = run.prompt_logprobs_json(0);
  return out;
}

json chunk_base(const Run& run) {
  return {{"id", run.id()},
          {"object", run.request().chat ? "chat.completion.chunk" : "text_completion"},
          {"created", run.created()},
          {"model", run.request().model}};
}

// The SSE chunk for one choice's delta; null when there is nothing to send.
json delta_chunk(const Run& run, int index, const Delta& d, size_t text_offset) {
  const ParsedRequest& req = run.request();
  const Choice& c = run.choices()[index];
  if (d.content.empty() && d.reasoning.empty() && d.tool_calls.empty() && !d.finished && d.logprobs.empty())
    return nullptr;
  json ch = {{"index", index}};
  if (req.chat) {
    json delta = json::object();
    if (!d.reasoning.empty()) delta["reasoning"] = delta["reasoning_content"] = d.reasoning;
    if (!d.content.empty()) delta["content"] = d.content;
    if (!d.tool_calls.empty()) {
      json calls = json::array();
      for (const auto& t : d.tool_calls) calls.push_back(t.to_json());
      delta["tool_calls"] = std::move(calls);
    }
    ch["delta"] = delta;
    ch["logprobs"] = req.logprobs >= 0 && !d.logprobs.empty() ? run.logprobs_json(d.logprobs, 0) : json(nullptr);
  } else {
    ch["text"] = d.content;
    ch["logprobs"] = req.logprobs >= 0 ? run.logprobs_json(d.logprobs, text_offset) : json(nullptr);
  }
  ch["finish_reason"] = d.finished ? json(c.finish_reason) : json(nullptr);
  if (d.finished) ch["stop_reason"] = c.stop_reason;
  if (req.spec_trace) ch["tandem_spec_trace"] = run.spec_trace_json(d.logprobs);
  json chunk = chunk_base(run);
  chunk["choices"] = json::array({ch});
  return chunk;
}

// Runs a streaming generation, writing SSE events through `write`; false when the client went away.
bool stream_run(HttpServer& server, Run& run, const std::function<bool(const std::string&)>& write,
                const std::function<bool()>& alive) {
  const ParsedRequest& req = run.request();
  const int n = static_cast<int>(run.choices().size());
  std::vector<size_t> offsets(n, 0);
  // echo + logprobs: the echoed prompt goes out with the first delta, which brings its logprobs.
  std::vector<bool> echo_pending(n, !req.chat && req.echo && req.logprobs >= 0);
  auto send = [&](json chunk) {
    if (req.include_usage) chunk["usage"] = req.continuous_usage ? run.usage() : json(nullptr);
    return write(sse_event(dump(chunk)));
  };
  // Opening chunks: the assistant role (chat) or the echoed prompt (completions).
  for (int i = 0; i < n; ++i) {
    json chunk = chunk_base(run);
    if (req.chat) {
      chunk["choices"] = json::array({{{"index", i},
                                       {"delta", {{"role", "assistant"}, {"content", ""}}},
                                       {"logprobs", nullptr},
                                       {"finish_reason", nullptr}}});
    } else if (req.echo && !echo_pending[i]) {
      const std::string& text = req.prompts[i / req.n].text;
      offsets[i] = text.size();
      chunk["choices"] = json::array({{{"index", i}, {"text", text}, {"logprobs", nullptr}, {"finish_reason", nullptr}}});
    } else {
      continue;
    }
    if (!send(chunk)) return false;
  }
  while (!run.done()) {
    if (server.stopping()) {
      // Shutdown: each unfinished choice gets a last chunk with finish_reason "abort", so the
      // client can tell a cut stream from a complete one.
      std::vector<int> open;
      for (int i = 0; i < n; ++i)
        if (!run.choices()[i].finished) open.push_back(i);
      run.abandon("abort");
      for (int i : open) {
        Delta d;
        d.finished = true;
        if (!send(delta_chunk(run, i, d, offsets[i]))) return false;
      }
      break;
    }
    auto deltas = run.step(std::chrono::milliseconds(100));
    if (deltas.empty()) {
      if (!alive()) return false;
      continue;
    }
    for (auto& [i, d] : deltas) {
      json echo_lp;
      if (echo_pending[i]) offsets[i] = 0, echo_lp = run.echo_logprobs_json(i, offsets[i]);
      json chunk = delta_chunk(run, i, d, offsets[i]);
      offsets[i] += d.content.size();
      if (echo_pending[i]) {
        echo_pending[i] = false;
        if (chunk.is_null()) {
          chunk = chunk_base(run);
          chunk["choices"] = json::array({{{"index", i}, {"text", ""}, {"logprobs", nullptr}, {"finish_reason", nullptr}}});
        }
        json& ch = chunk["choices"][0];
        ch["text"] = req.prompts[i / req.n].text + ch["text"].get<std::string>();
        if (ch["logprobs"].is_object()) Run::append_logprobs(echo_lp, ch["logprobs"]);
        ch["logprobs"] = std::move(echo_lp);
      }
      if (chunk.is_null()) continue;
      if (!send(chunk)) return false;
      const Choice& c = run.choices()[i];
      if (d.finished && !c.error.empty()) {
        if (!write(sse_event(dump(ApiError::error_body(c.error, "internal_server_error", "", "engine_error")))))
          return false;
      }
    }
  }
  if (req.include_usage) {
    json chunk = chunk_base(run);
    chunk["choices"] = json::array();
    chunk["usage"] = run.usage();
    if (!write(sse_event(dump(chunk)))) return false;
  }
  return write(sse_done());
}

}  // namespace

// ---------------------------------------------------------------------------------------------

HttpServer::HttpServer(InferenceService& service, const TextCodec& codec, ServerOptions options)
    : service_(service), codec_(codec), options_(std::move(options)), http_(std::make_unique<httplib::Server>()) {
  if (options_.served_model_names.empty()) options_.served_model_names = {"tandem"};
  options_.limits.max_model_len = service_.max_model_len();
  options_.limits.num_speculative_tokens = service_.num_speculative_tokens();
  metrics_.set_max_model_len(options_.limits.max_model_len);
  routes();
}

HttpServer::~HttpServer() { shutdown(); }

int HttpServer::bind() {
  // A client that disconnects makes send() raise SIGPIPE; we want the EPIPE error instead.
  ::signal(SIGPIPE, SIG_IGN);
  if (options_.port == 0) {
    port_ = http_->bind_to_any_port(options_.host);
  } else {
    port_ = http_->bind_to_port(options_.host, options_.port) ? options_.port : -1;
  }
  if (port_ <= 0) fail("cannot listen on {}:{} (address in use or not available)", options_.host, options_.port);
  // Debian's cpp-httplib listens with a backlog of 5: a burst of new connections (64 clients
  // starting at once) overflows the accept queue and some fail. listen() again on the same socket
  // raises the backlog (Linux updates it in place).
  if (listen_socket_ >= 0) ::listen(listen_socket_, SOMAXCONN);
  return port_;
}

void HttpServer::run() {
  if (port_ <= 0) bind();
  http_->listen_after_bind();
}

void HttpServer::shutdown() {
  if (stopping_.exchange(true)) return;
  // Handlers notice `stopping_` within 100 ms, abort their engine requests and return; stop()
  // closes the listening socket, and run() returns once the worker threads have drained.
  http_->stop();
}

namespace {
bool cors_all(const std::vector<std::string>& list) {
  return std::find(list.begin(), list.end(), "*") != list.end();
}
bool cors_allowed(const std::vector<std::string>& list, const std::string& value) {
  return cors_all(list) || std::find(list.begin(), list.end(), value) != list.end();
}
std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

httplib::Server::HandlerResponse cors_preflight(const ServerOptions& options_, const httplib::Request& req,
                                                httplib::Response& res) {
  const std::string origin = req.get_header_value("Origin");
  const std::string method = req.get_header_value("Access-Control-Request-Method");
  const std::string requested = req.get_header_value("Access-Control-Request-Headers");
  std::string failure;
  if (!cors_allowed(options_.allowed_origins, origin)) failure = "origin";
  else if (!cors_allowed(options_.allowed_methods, method)) failure = "method";
  std::vector<std::string> allowed_headers;  // lower-cased, plus the CORS-safelisted ones
  for (const auto& h : options_.allowed_headers) allowed_headers.push_back(lower(h));
  for (const char* h : {"accept", "accept-language", "content-language", "content-type"}) allowed_headers.push_back(h);
  if (failure.empty() && !cors_all(options_.allowed_headers) && !requested.empty()) {
    size_t pos = 0;
    while (pos <= requested.size()) {
      size_t end = requested.find(',', pos);
      if (end == std::string::npos) end = requested.size();
      std::string h = requested.substr(pos, end - pos);
      h.erase(0, h.find_first_not_of(" \t"));
      h.erase(h.find_last_not_of(" \t") + 1);
      if (!h.empty() && std::find(allowed_headers.begin(), allowed_headers.end(), lower(h)) == allowed_headers.end())
        failure = "headers";
      pos = end + 1;
    }
  }
  if (cors_all(options_.allowed_origins) && !options_.allow_credentials) {
    res.set_header("Access-Control-Allow-Origin", "*");
  } else if (failure != "origin") {
    res.set_header("Access-Control-Allow-Origin", origin);
    res.set_header("Vary", "Origin");
  }
  res.set_header("Access-Control-Allow-Methods", cors_all(options_.allowed_methods)
                                                    ? std::string("DELETE, GET, HEAD, OPTIONS, PATCH, POST, PUT")
                                                    : fmt::format("{}", fmt::join(options_.allowed_methods, ", ")));
  res.set_header("Access-Control-Max-Age", "600");
  if (cors_all(options_.allowed_headers) && !requested.empty())
    res.set_header("Access-Control-Allow-Headers", requested);
  else if (!cors_all(options_.allowed_headers))
    res.set_header("Access-Control-Allow-Headers", fmt::format("{}", fmt::join(allowed_headers, ", ")));
  if (options_.allow_credentials) res.set_header("Access-Control-Allow-Credentials", "true");
  if (failure.empty()) {
    res.status = 200;
    res.set_content("OK", "text/plain; charset=utf-8");
  } else {
    res.status = 400;
    res.set_content("Disallowed CORS " + failure, "text/plain; charset=utf-8");
  }
  return httplib::Server::HandlerResponse::Handled;
}
}  // namespace

void HttpServer::routes() {
  auto& svr = *http_;
  size_t threads = options_.http_threads > 0 ? static_cast<size_t>(options_.http_threads) : 256;
  svr.new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  svr.set_payload_max_length(options_.max_body_bytes);
  // cpp-httplib's default socket options (address reuse), plus remembering the listening socket.
  svr.set_socket_options([this](socket_t sock) {
    int yes = 1;
    ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
    listen_socket_ = sock;
  });
  svr.set_keep_alive_max_count(1000);
  svr.set_keep_alive_timeout(2);  // idle keep-alive connections hold a worker; also bounds shutdown time
  svr.set_read_timeout(30, 0);
  svr.set_write_timeout(30, 0);

  // CORS, as vLLM's (Starlette's) CORSMiddleware with --allowed-origins / --allowed-methods /
  // --allowed-headers / --allow-credentials: preflight OPTIONS requests are answered here (before
  // authentication, as vLLM skips OPTIONS there), other responses get the headers afterwards.
  svr.set_post_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    const std::string origin = req.get_header_value("Origin");
    if (origin.empty() || req.method == "OPTIONS") return;
    if (cors_all(options_.allowed_origins) && !options_.allow_credentials) {
      res.set_header("Access-Control-Allow-Origin", "*");
    } else if (cors_allowed(options_.allowed_origins, origin)) {
      res.set_header("Access-Control-Allow-Origin", origin);
      res.set_header("Vary", "Origin");
    }
    if (options_.allow_credentials) res.set_header("Access-Control-Allow-Credentials", "true");
  });

  svr.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (req.method == "OPTIONS" && req.has_header("Origin") && req.has_header("Access-Control-Request-Method"))
      return cors_preflight(options_, req, res);
    const bool guarded_path = req.path.rfind("/v1", 0) == 0 || req.path.rfind("/tandem/", 0) == 0;
    // OPTIONS never needs the key (vLLM's middleware lets every OPTIONS request through): it reads
    // nothing, and is answered 405 or 404 below.
    if (options_.api_key.empty() || !guarded_path || req.method == "OPTIONS")
      return httplib::Server::HandlerResponse::Unhandled;
    const std::string expected = "Bearer " + options_.api_key;
    if (req.get_header_value("Authorization") == expected) return httplib::Server::HandlerResponse::Unhandled;
    send_error(res, ApiError(401, "Invalid or missing API key (send 'Authorization: Bearer <key>').", "",
                             "authentication_error", "invalid_api_key"));
    return httplib::Server::HandlerResponse::Handled;
  });
  svr.set_error_handler(httplib::Server::HandlerWithResponse([this](const httplib::Request& req,
                                                                   httplib::Response& res) {
    if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
    std::string message;
    const char* type = "invalid_request_error";
    if (res.status == 404) {  // a path this server answers, asked with another method
      if (const auto it = methods_by_path_.find(req.path); it != methods_by_path_.end()) {
        res.status = 405;
        res.set_header("Allow", it->second);
        message = fmt::format("Method {} is not allowed for {} (allowed: {})", req.method, req.path, it->second);
      }
    }
    switch (res.status) {
      case 405: break;
      case 404: message = fmt::format("No route for {} {}", req.method, req.path); break;
      case 413: message = "Request body is too large"; break;
      case 400: message = "Malformed HTTP request"; break;
      default:
        message = fmt::format("HTTP error {}", res.status);
        if (res.status >= 500) type = "internal_server_error";
    }
    res.set_content(dump(ApiError::error_body(message, type)), "application/json");
    return httplib::Server::HandlerResponse::Handled;
  }));
  svr.set_exception_handler([](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    std::string what = "unknown error";
    try {
      if (ep) std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    log::warn("request failed: {}", what);
    send_json(res, 500, ApiError::error_body("Internal server error: " + what, "internal_server_error"));
  });

  // Every handler: catch everything → JSON error.
  auto guarded = [this](auto fn) {
    return [this, fn](const httplib::Request& req, httplib::Response& res) {
      try {
        fn(req, res);
      } catch (const ApiError& e) {
        send_error(res, e);
      } catch (const Error& e) {
        send_error(res, bad_request(e.what()));
      } catch (const std::exception& e) {
        log::warn("{} {} failed: {}", req.method, req.path, e.what());
        send_json(res, 500, ApiError::error_body(std::string("Internal server error: ") + e.what(),
                                                 "internal_server_error"));
      }
    };
  };

  // A fixed path: registered (its '.' escaped, as cpp-httplib routes are regular expressions) and its
  // method noted, so that the path asked with another method is answered 405 with Allow, as vLLM's
  // server does, rather than 404.
  auto route = [&](const std::string& method, const std::string& path, httplib::Server::Handler handler) {
    std::string pattern;
    for (char ch : path) {
      if (ch == '.') pattern += '\\';
      pattern += ch;
    }
    if (method == "GET") {
      svr.Get(pattern, std::move(handler));
    } else {
      TANDEM_CHECK(method == "POST");
      // The body is read here rather than by cpp-httplib (0.11.4), which reads a chunked body into
      // memory past --max-body-mb, however large, and a body without Content-Length until the client
      // closes: HTTP/1.1 gives such a request no body, and its client, waiting for the answer, sat
      // through the read timeout.
      svr.Post(pattern, [this, handler = std::move(handler)](const httplib::Request& req, httplib::Response& res,
                                                             const httplib::ContentReader& read) {
        httplib::Request with_body = req;
        bool too_large = false;
        // Past the limit the rest is read and dropped, as cpp-httplib does with a Content-Length over
        // it, so that the connection stays in step.
        auto append = [&](const char* data, size_t size) {
          too_large = too_large || with_body.body.size() + size > options_.max_body_bytes;
          if (!too_large) with_body.body.append(data, size);
          return true;
        };
        if (req.has_header("Content-Length") || lower(req.get_header_value("Transfer-Encoding")) == "chunked") {
          // A multipart body (no JSON; its parts are dropped) needs the multipart reader.
          const bool read_all = req.is_multipart_form_data()
                                    ? read([](const httplib::MultipartFormData&) { return true; },
                                           [](const char*, size_t) { return true; })
                                    : read(append);
          if (!read_all) return;  // cpp-httplib set the status: 413 for a Content-Length over the limit, else 400
        }
        if (too_large) {
          res.status = 413;
          return;
        }
        handler(with_body, res);
      });
    }
    std::string& allowed = methods_by_path_[path];
    allowed += allowed.empty() ? method : ", " + method;
  };

  route("GET", "/health", [](const httplib::Request&, httplib::Response& res) { res.status = 200; });
  route("GET", "/version", [](const httplib::Request&, httplib::Response& res) { send_json(res, 200, {{"version", kVersion}}); });

  route("GET", "/v1/models", guarded([this](const httplib::Request&, httplib::Response& res) {
            json data = json::array();
            for (const auto& name : options_.served_model_names)
              data.push_back({{"id", name},
                              {"object", "model"},
                              {"created", unix_time()},
                              {"owned_by", "tandem"},
                              {"root", options_.model_root.empty() ? name : options_.model_root},
                              {"parent", nullptr},
                              {"max_model_len", options_.limits.max_model_len}});
            send_json(res, 200, {{"object", "list"}, {"data", data}});
          }));

  svr.Get(R"(/v1/models/(.+))", guarded([this](const httplib::Request& req, httplib::Response& res) {
            const std::string id = req.matches[1];
            for (const auto& name : options_.served_model_names)
              if (name == id) {
                send_json(res, 200, {{"id", name}, {"object", "model"}, {"created", unix_time()},
                                     {"owned_by", "tandem"},
                                     {"root", options_.model_root.empty() ? name : options_.model_root},
                                     {"parent", nullptr}, {"max_model_len", options_.limits.max_model_len}});
                return;
              }
            throw ApiError(404, fmt::format("The model '{}' does not exist.", id), "model", "invalid_request_error",
                           "model_not_found");
          }));

  route("GET", "/metrics", guarded([this](const httplib::Request&, httplib::Response& res) {
            res.set_content(metrics_.render(service_.stats(), options_.served_model_names.front(),
                                            options_.limits.num_speculative_tokens),
                            "text/plain; version=0.0.4; charset=utf-8");
          }));

  route("POST", "/tokenize", guarded([this](const httplib::Request& req, httplib::Response& res) {
             json body = parse_body(req.body);
             resolve_model(body, options_.served_model_names);
             std::vector<int32_t> tokens;
             if (body.contains("messages")) {
               if (!codec_.has_chat_template()) throw bad_request("this model has no chat template", "messages");
               std::string text;
               try {
                 text = codec_.render_chat(chat_template_variables(body, codec_));
               } catch (const Error& e) {
                 throw bad_request(fmt::format("the chat template failed: {}", e.what()), "messages");
               }
               // The prompt a chat request with this body would get (vLLM's /tokenize applies it too).
               text = continue_final_message(body, std::move(text));
               tokens = codec_.encode(text, get_bool(body, "add_special_tokens", false));
             } else if (body.contains("prompt") && body["prompt"].is_string()) {
               tokens = codec_.encode(body["prompt"].get<std::string>(), get_bool(body, "add_special_tokens", true));
             } else {
               throw bad_request("'prompt' (a string) or 'messages' is required", "prompt");
             }
             json out = {{"count", tokens.size()}, {"max_model_len", options_.limits.max_model_len}, {"tokens", tokens}};
             if (get_bool(body, "return_token_strs", false)) {
               json strs = json::array();
               for (int32_t t : tokens) {
                 int32_t one[1] = {t};
                 strs.push_back(codec_.decode(one, false));
               }
               out["token_strs"] = strs;
             } else {
               out["token_strs"] = nullptr;
             }
             send_json(res, 200, out);
           }));

  route("POST", "/detokenize", guarded([this](const httplib::Request& req, httplib::Response& res) {
             json body = parse_body(req.body);
             resolve_model(body, options_.served_model_names);
             if (!body.contains("tokens") || !body["tokens"].is_array())
               throw bad_request("'tokens' must be a list of token ids", "tokens");
             std::vector<int32_t> ids;
             for (const auto& t : body["tokens"]) {
               if (!t.is_number_integer()) throw bad_request("'tokens' must be a list of token ids", "tokens");
               int64_t v = t.get<int64_t>();
               if (v < 0 || v >= codec_.vocab_size())
                 throw bad_request(fmt::format("token id {} is outside the vocabulary", v), "tokens");
               ids.push_back(static_cast<int32_t>(v));
             }
             send_json(res, 200, {{"prompt", codec_.decode(ids, false)}});
           }));

  auto generate = [this](bool chat) {
    return [this, chat](const httplib::Request& hreq, httplib::Response& res) {
      const auto arrival = Clock::now();
      const nlohmann::ordered_json body = parse_body(hreq.body);
      ParsedRequest parsed =
          chat ? parse_chat_request(body, codec_, options_.served_model_names, options_.limits)
               : parse_completion_request(body, codec_, options_.served_model_names, options_.limits);
      if (!parsed.ignored_fields.empty())  // vLLM ignores unknown fields with a warning too
        log::warn("{} {}: ignored unknown field(s): {}", hreq.method, hreq.path, fmt::join(parsed.ignored_fields, ", "));
      if (stopping_) throw ApiError(503, "the server is shutting down", "", "service_unavailable");
      auto run = std::make_shared<Run>(*this, std::move(parsed), arrival);
      run->submit();
      if (run->request().stream) {
        res.set_header("Cache-Control", "no-cache");
        res.set_chunked_content_provider(
            "text/event-stream",
            [this, run](size_t, httplib::DataSink& sink) {
              bool ok = false;
              try {
                ok = stream_run(*this, *run, [&](const std::string& s) { return sink.write(s.data(), s.size()); },
                                [&] { return sink.is_writable(); });
              } catch (const std::exception& e) {
                log::warn("stream failed: {}", e.what());
              }
              if (!ok) {
                run->abandon("abort");
                return false;
              }
              sink.done();
              return true;
            },
            [run](bool) { run->abort_all(); });
        return;
      }
      // Non-streaming: the JSON body is written by a content provider once generation is done, so
      // that while it runs the connection is watched (DataSink::is_writable sees a closed socket)
      // and a client that hangs up aborts its engine requests, as vLLM does.
      res.set_chunked_content_provider(
          "application/json",
          [this, run](size_t, httplib::DataSink& sink) {
            while (!run->done()) {
              if (stopping_) {
                run->abandon("abort");
                break;
              }
              run->step(std::chrono::milliseconds(100));
              if (!sink.is_writable()) {
                run->abandon("abort");
                return false;
              }
            }
            for (const auto& c : run->choices())
              if (!c.error.empty()) {
                // The 200 status is already sent: end the connection without completing the body,
                // so the client sees a failed request rather than a truncated success.
                log::warn("request {} failed in the engine: {}", run->id(), c.error);
                return false;
              }
            const std::string body = dump(full_response(*run));
            if (!sink.write(body.data(), body.size())) return false;
            sink.done();
            return true;
          },
          [run](bool) { run->abort_all(); });
    };
  };
  route("POST", "/v1/completions", guarded(generate(false)));
  route("POST", "/v1/chat/completions", guarded(generate(true)));

  if (options_.sweep)
    route("POST", "/tandem/sweep", guarded([this](const httplib::Request& req, httplib::Response& res) {
               send_json(res, 200, options_.sweep(parse_body(req.body)));
             }));

  // The web page is public (it asks for the API key and sends it on /v1 calls). Everything it
  // loads comes from here: the CSP forbids other origins, inline scripts and inline styles.
  if (options_.web_ui)
    for (const WebAsset& a : web_assets()) {
      route("GET", std::string(a.path), [&a](const httplib::Request&, httplib::Response& res) {
        res.set_header("Content-Security-Policy",
                       "default-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
                       "frame-ancestors 'none'");
        res.set_header("X-Content-Type-Options", "nosniff");
        res.set_header("Cache-Control", "no-cache");
        res.set_content(a.body.data(), a.body.size(), std::string(a.content_type));
      });
    }
}

}  // namespace tandem::server
