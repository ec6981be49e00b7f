#include "server/tool_parser.h"

#include <cctype>
#include <cmath>
#include <cstdlib>
#include <map>
#include <random>

#include <fmt/ranges.h>

#include "server/stop_matcher.h"
#include "tokenizer/jinja_value.h"
#include "util/error.h"

namespace tandem::server {
namespace {

using nlohmann::json;
using nlohmann::ordered_json;

constexpr std::string_view kCallOpen = "<|tool_call>";
constexpr std::string_view kCallClose = "<tool_call|>";
constexpr std::string_view kQuote = "<|\"|>";
constexpr std::string_view kCallPrefix = "call:";

std::string json_quoted(std::string_view s) {
  std::string out = "\"";
  jinja::append_json_escaped(out, s, false);
  out += '"';
  return out;
}

bool is_space(char c) { return c == ' ' || c == '\n' || c == '\t' || c == '\r'; }

std::string_view trim(std::string_view s) {
  while (!s.empty() && is_space(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_space(s.back())) s.remove_suffix(1);
  return s;
}

bool is_digit(char c) { return c >= '0' && c <= '9'; }

bool is_json_number(std::string_view s) {
  size_t i = 0, n = s.size();
  if (i < n && s[i] == '-') ++i;
  if (i >= n) return false;
  if (s[i] == '0') {
    ++i;
  } else if (is_digit(s[i])) {
    while (i < n && is_digit(s[i])) ++i;
  } else {
    return false;
  }
  if (i < n && s[i] == '.') {
    size_t d = ++i;
    while (i < n && is_digit(s[i])) ++i;
    if (i == d) return false;
  }
  if (i < n && (s[i] == 'e' || s[i] == 'E')) {
    ++i;
    if (i < n && (s[i] == '+' || s[i] == '-')) ++i;
    size_t d = i;
    while (i < n && is_digit(s[i])) ++i;
    if (i == d) return false;
  }
  return i == n;
}

// A bare (undelimited) value: true / false, None / null / nil, a number, else a string.
std::string bare_value_json(std::string_view raw) {
  std::string_view s = trim(raw);
  if (s == "true" || s == "false") return std::string(s);
  std::string lower(s);
  for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (lower == "null" || lower == "none" || lower == "nil") return "null";
  if (is_json_number(s)) return std::string(s);
  // Python number spellings JSON lacks ("1.", ".5", "+2").
  if (!s.empty() && s.find_first_not_of("0123456789+-.eE") == std::string_view::npos) {
    std::string str(s);
    char* end = nullptr;
    double d = std::strtod(str.c_str(), &end);
    if (end == str.c_str() + str.size() && std::isfinite(d)) return json(d).dump();
  }
  return json_quoted(s);
}

bool is_name_char(char c) {
  unsigned char u = static_cast<unsigned char>(c);
  return std::isalnum(u) || c == '_' || c == '-' || c == '.' || u >= 0x80;
}

void python_dumps(std::string& out, const ordered_json& v) {
  if (v.is_object()) {
    out += '{';
    bool first = true;
    for (auto it = v.begin(); it != v.end(); ++it) {
      if (!first) out += ", ";
      first = false;
      out += json_quoted(it.key());
      out += ": ";
      python_dumps(out, it.value());
    }
    out += '}';
  } else if (v.is_array()) {
    out += '[';
    for (size_t i = 0; i < v.size(); ++i) {
      if (i) out += ", ";
      python_dumps(out, v[i]);
    }
    out += ']';
  } else if (v.is_string()) {
    out += json_quoted(v.get_ref<const std::string&>());
  } else {
    out += v.dump(-1, ' ', false, json::error_handler_t::replace);
  }
}

// ---------------------------------------------------------------------------------------------
// Gemma 4: <|tool_call>call:NAME{k:v,...}<tool_call|>, converted to JSON as it arrives.

class Gemma4ToolParser final : public ToolCallParser {
 public:
  explicit Gemma4ToolParser(bool streaming) : streaming_(streaming) {}

  void push(std::string_view text, Output& out) override {
    buf_.append(text);
    run(out, false);
    if (streaming_) release(out);
  }

  void finish(Output& out) override {
    run(out, true);
    switch (mode_) {
      case Mode::Text: break;
      case Mode::Head:
        out.content += raw_;
        raw_.clear();
        mode_ = Mode::Text;
        break;
      case Mode::Args:
        // Unterminated: the output ended (or was cut) inside the arguments.
        truncated_ = true;
        if (streaming_) {
          // A delimiter cut short is string text after all.
          if (scalar_ == Scalar::String || scalar_ == Scalar::QuotedKey) emit_escaped(buf_);
          raw_ += buf_;
          buf_.clear();
        }
        args_error(out);
        break;
      case Mode::Tail:
        complete_call(out);
        break;
    }
    out.content += buf_;
    buf_.clear();
    release(out);
  }

  std::string finish_reason(const std::string& engine_reason) const override {
    if (completed_ > 0 && !truncated_ && (engine_reason == "stop" || engine_reason == "length"))
      return "tool_calls";
    return engine_reason;
  }

 private:
  enum class Mode { Text, Head, Args, Tail };
  enum class Scalar { None, String, QuotedKey, BareKey, Bare };
  enum class Expect { Key, Colon, Value, Next };
  struct Frame {
    bool object;
    Expect expect;
    bool empty = true;
  };

  // Processes buf_ as far as it decides; keeps the undecided rest in buf_.
  void run(Output& out, bool at_end) {
    size_t p = 0;
    for (;;) {
      bool more = false;
      switch (mode_) {
        case Mode::Text: more = text(out, p, at_end); break;
        case Mode::Head: more = head(out, p); break;
        case Mode::Args: more = args(out, p); break;
        case Mode::Tail: more = tail(out, p); break;
      }
      if (!more) break;
    }
    buf_.erase(0, p);
  }

  std::string_view rest(size_t p) const { return std::string_view(buf_).substr(p); }

  void consume(size_t& p, size_t n) {
    raw_.append(buf_, p, n);
    p += n;
  }

  bool text(Output& out, size_t& p, bool at_end) {
    size_t at = buf_.find(kCallOpen, p);
    if (at == std::string::npos) {
      size_t keep = at_end ? 0 : partial_suffix(rest(p), kCallOpen);
      out.content.append(buf_, p, buf_.size() - p - keep);
      p = buf_.size() - keep;
      return false;
    }
    out.content.append(buf_, p, at - p);
    p = at;
    raw_.clear();
    consume(p, kCallOpen.size());
    mode_ = Mode::Head;
    head_matched_ = 0;
    name_.clear();
    return true;
  }

  // "call:" NAME "{"
  bool head(Output& out, size_t& p) {
    while (p < buf_.size()) {
      const char c = buf_[p];
      if (head_matched_ < kCallPrefix.size()) {
        if (c != kCallPrefix[head_matched_]) return head_error(out);
        ++head_matched_;
      } else if (c == '{') {
        if (name_.empty()) return head_error(out);
        consume(p, 1);
        start_call();
        return true;
      } else if (is_name_char(c)) {
        name_ += c;
      } else {
        return head_error(out);
      }
      consume(p, 1);
    }
    return false;
  }

  bool head_error(Output& out) {
    out.content += raw_;
    raw_.clear();
    mode_ = Mode::Text;
    return true;
  }

  void start_call() {
    mode_ = Mode::Args;
    index_ = next_index_++;
    ToolCallDelta d;
    d.index = index_;
    d.id = make_tool_call_id();
    d.name = name_;
    held_.push_back(std::move(d));
    stack_.assign(1, Frame{true, Expect::Key});
    scalar_ = Scalar::None;
    emit("{");
  }

  void emit(std::string_view s) {
    if (held_.empty() || held_.back().first() || held_.back().index != index_) {
      ToolCallDelta d;
      d.index = index_;
      held_.push_back(std::move(d));
    }
    held_.back().arguments += s;
  }
  void emit_escaped(std::string_view s) {
    std::string e;
    jinja::append_json_escaped(e, s, false);
    if (!e.empty()) emit(e);
  }
  // The ", " before a key or array element that is not the first.
  void separator() {
    if (!stack_.back().empty) emit(", ");
  }
  void value_done() {
    stack_.back().empty = false;
    stack_.back().expect = Expect::Next;
  }

  bool args(Output& out, size_t& p) {
    if (scalar_ == Scalar::String || scalar_ == Scalar::QuotedKey) {
      size_t q = buf_.find(kQuote, p);
      if (q == std::string::npos) {
        size_t keep = partial_suffix(rest(p), kQuote);
        size_t n = buf_.size() - p - keep;
        emit_escaped(rest(p).substr(0, n));
        consume(p, n);
        return false;
      }
      emit_escaped(rest(p).substr(0, q - p));
      consume(p, q - p + kQuote.size());
      if (scalar_ == Scalar::QuotedKey) {
        emit("\"");
        stack_.back().expect = Expect::Colon;
      } else {
        emit("\"");
        value_done();
      }
      scalar_ = Scalar::None;
      return true;
    }
    if (scalar_ == Scalar::BareKey || scalar_ == Scalar::Bare) {
      const bool key = scalar_ == Scalar::BareKey;
      while (p < buf_.size()) {
        const char c = buf_[p];
        if (key && c == ':') {
          std::string_view k = trim(acc_);
          if (k.empty()) return args_error(out);
          separator();
          emit(json_quoted(k) + ": ");
          consume(p, 1);
          stack_.back().expect = Expect::Value;
          scalar_ = Scalar::None;
          return true;
        }
        if (!key && (c == ',' || c == '}' || c == ']')) {
          if (trim(acc_).empty()) return args_error(out);
          emit(bare_value_json(acc_));
          value_done();
          scalar_ = Scalar::None;
          return true;  // the terminator is read as structure
        }
        if (c == '{' || c == '}' || c == '[' || c == ']' || c == '<' || c == ',' || c == '"' || (key && c == '\n'))
          return args_error(out);
        acc_ += c;
        consume(p, 1);
      }
      return false;
    }
    // Structure.
    while (p < buf_.size() && is_space(buf_[p])) consume(p, 1);
    if (p >= buf_.size()) return false;
    const char c = buf_[p];
    Frame& f = stack_.back();
    const std::string_view r = rest(p);
    const bool quote = r.substr(0, kQuote.size()) == kQuote;
    if (!quote && c == '<' && r.size() < kQuote.size() && kQuote.substr(0, r.size()) == r) return false;
    switch (f.expect) {
      case Expect::Key:
        if (c == '}' && f.empty) return close(p);
        if (quote) {
          separator();
          emit("\"");
          consume(p, kQuote.size());
          scalar_ = Scalar::QuotedKey;
          return true;
        }
        if (c == '{' || c == '}' || c == '[' || c == ']' || c == ',' || c == ':' || c == '<' || c == '"')
          return args_error(out);
        scalar_ = Scalar::BareKey;
        acc_.clear();
        return true;
      case Expect::Colon:
        if (c != ':') return args_error(out);
        emit(": ");
        consume(p, 1);
        f.expect = Expect::Value;
        return true;
      case Expect::Value:
        if (!f.object && c == ']' && f.empty) return close(p);
        if (c == ',' || c == '}' || c == ']' || c == ':' || c == '"' || (c == '<' && !quote)) return args_error(out);
        if (!f.object) separator();  // in an object the key carried it
        if (quote) {
          emit("\"");
          consume(p, kQuote.size());
          scalar_ = Scalar::String;
          return true;
        }
        if (c == '{' || c == '[') {
          emit(c == '{' ? "{" : "[");
          consume(p, 1);
          stack_.push_back(Frame{c == '{', c == '{' ? Expect::Key : Expect::Value});
          return true;
        }
        scalar_ = Scalar::Bare;
        acc_.clear();
        return true;
      case Expect::Next:
        if (c == ',') {
          consume(p, 1);
          f.expect = f.object ? Expect::Key : Expect::Value;
          return true;
        }
        if (c == (f.object ? '}' : ']')) return close(p);
        return args_error(out);
    }
    return false;
  }

  bool close(size_t& p) {
    emit(stack_.back().object ? "}" : "]");
    consume(p, 1);
    stack_.pop_back();
    if (stack_.empty()) {
      mode_ = Mode::Tail;
    } else {
      value_done();
    }
    return true;
  }

  bool tail(Output& out, size_t& p) {
    while (p < buf_.size() && is_space(buf_[p])) consume(p, 1);
    const std::string_view r = rest(p);
    if (r.substr(0, kCallClose.size()) == kCallClose) {
      consume(p, kCallClose.size());
      complete_call(out);
      return true;
    }
    if (r.size() < kCallClose.size() && kCallClose.substr(0, r.size()) == r) return false;
    // The arguments are complete; what follows without the end marker is content.
    complete_call(out);
    return true;
  }

  void complete_call(Output& out) {
    ++completed_;
    truncated_ = false;
    raw_.clear();
    mode_ = Mode::Text;
    release(out);
  }

  // Malformed or unterminated arguments.
  bool args_error(Output& out) {
    if (streaming_) {
      // The call is announced: close its JSON where it stands.
      if (scalar_ == Scalar::String) emit("\""), value_done();
      else if (scalar_ == Scalar::QuotedKey) emit("\": null"), value_done();
      else if (scalar_ == Scalar::Bare) emit(trim(acc_).empty() ? "null" : bare_value_json(acc_)), value_done();
      while (!stack_.empty()) {
        Frame& f = stack_.back();
        if (f.object && f.expect == Expect::Value) emit("null");
        else if (f.object && f.expect == Expect::Colon) emit(": null");
        emit(f.object ? "}" : "]");
        stack_.pop_back();
        if (!stack_.empty()) value_done();
      }
      release(out);
    } else {
      held_.clear();
      --next_index_;
      out.content += raw_;
    }
    stack_.clear();
    scalar_ = Scalar::None;
    acc_.clear();
    raw_.clear();
    mode_ = Mode::Text;
    return true;
  }

  void release(Output& out) {
    if (mode_ == Mode::Args && !streaming_) return;
    if (mode_ == Mode::Tail && !streaming_) return;
    for (auto& d : held_) out.calls.push_back(std::move(d));
    held_.clear();
  }

  const bool streaming_;
  std::string buf_;  // input not decided yet
  Mode mode_ = Mode::Text;
  std::string raw_;  // the open call's text so far (content again if it turns out malformed)
  size_t head_matched_ = 0;
  std::string name_;
  std::vector<Frame> stack_;
  Scalar scalar_ = Scalar::None;
  std::string acc_;  // a bare key or value so far
  std::vector<ToolCallDelta> held_;
  int index_ = -1, next_index_ = 0;
  int completed_ = 0;
  bool truncated_ = false;
};

// ---------------------------------------------------------------------------------------------
// tool_choice named / "required": constrained decoding writes Gemma 4 tool calls, which the Gemma 4
// parser reads back; only finish_reason differs (vLLM's rules).

class ForcedToolOutput final : public ToolCallParser {
 public:
  ForcedToolOutput(bool required, bool streaming) : parser_(streaming), required_(required) {}
  void push(std::string_view text, Output& out) override {
    parser_.push(text, out);
    note(out);
  }
  void finish(Output& out) override {
    parser_.finish(out);
    note(out);
  }
  std::string finish_reason(const std::string& engine_reason) const override {
    return required_ && called_ && engine_reason == "stop" ? "tool_calls" : engine_reason;
  }

 private:
  void note(const Output& out) {
    for (const auto& d : out.calls) called_ |= d.first();
  }
  Gemma4ToolParser parser_;
  bool required_;
  bool called_ = false;
};

}  // namespace

std::string make_tool_call_id() {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  return fmt::format("chatcmpl-tool-{:016x}{:016x}", rng(), rng());
}

json ToolCall::to_json() const {
  return {{"id", id}, {"type", "function"}, {"function", {{"name", name}, {"arguments", arguments}}}};
}

json ToolCallDelta::to_json() const {
  if (first())
    return {{"index", index}, {"id", id}, {"type", "function"}, {"function", {{"name", name}, {"arguments", arguments}}}};
  return {{"index", index}, {"function", {{"arguments", arguments}}}};
}

const std::vector<std::string>& tool_call_parser_names() {
  static const std::vector<std::string> names = {"gemma4"};
  return names;
}

bool is_tool_call_parser(const std::string& name) {
  for (const auto& n : tool_call_parser_names())
    if (n == name) return true;
  return false;
}

std::unique_ptr<ToolCallParser> make_tool_call_parser(const std::string& name, bool streaming) {
  if (name == "gemma4") return std::make_unique<Gemma4ToolParser>(streaming);
  fail("invalid tool call parser: {} (chose from {{ {} }})", name, fmt::join(tool_call_parser_names(), ", "));
}

std::unique_ptr<ToolCallParser> make_forced_tool_output(bool required, bool streaming) {
  return std::make_unique<ForcedToolOutput>(required, streaming);
}

ToolParseResult parse_tool_output(ToolCallParser& parser, std::string_view text) {
  ToolCallParser::Output out;
  parser.push(text, out);
  parser.finish(out);
  ToolParseResult r;
  r.content = std::move(out.content);
  std::map<int, size_t> at;
  for (auto& d : out.calls) {
    if (d.first()) {
      at[d.index] = r.tool_calls.size();
      r.tool_calls.push_back({d.id, d.name, d.arguments});
    } else if (auto it = at.find(d.index); it != at.end()) {
      r.tool_calls[it->second].arguments += d.arguments;
    }
  }
  return r;
}

std::string python_json_dumps(const ordered_json& value) {
  std::string out;
  python_dumps(out, value);
  return out;
}

}  // namespace tandem::server
