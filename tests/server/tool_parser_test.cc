// Tool-call and reasoning parsers on Gemma 4 output. The tool calls are rendered by the real Gemma 4
// chat template through tandem's template engine (an assistant message with tool_calls, as a client
// sends it back), then parsed back: round trip, whole and streamed at every byte boundary.
#include "server/tool_parser.h"

#include <gtest/gtest.h>

#include <fstream>
#include <random>
#include <sstream>

#include "server/adapters.h"
#include "server/protocol.h"
#include "server/reasoning_parser.h"

namespace tandem::server {
namespace {

using nlohmann::json;

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The bundled model's tokenizer with the real Gemma 4 chat template.
const TokenizerCodec& gemma4_codec() {
  static const TokenizerCodec codec(Tokenizer::load(std::string(TANDEM_SOURCE_DIR) + "/models/tandem-code-demo"),
                                    read_text(std::string(TANDEM_SOURCE_DIR) + "/tests/tokenizer/templates/gemma4.jinja"));
  return codec;
}

// What the template renders for an assistant message with these tool_calls (OpenAI form:
// arguments as JSON strings) and this content: the text between "<|turn>model\n" and "<turn|>".
std::string render_assistant(json calls, const std::string& content = "") {
  if (calls.is_object()) calls = json::array({calls});  // {call(...)} is the call itself in nlohmann
  json body = {{"messages", {{{"role", "user"}, {"content", "hi"}},
                             {{"role", "assistant"}, {"content", content}, {"tool_calls", calls}}}},
               {"add_generation_prompt", false}};
  std::string text = gemma4_codec().render_chat(chat_template_variables(body, gemma4_codec()));
  const std::string open = "<|turn>model\n";
  size_t a = text.find(open);
  size_t b = text.rfind("<turn|>");
  EXPECT_NE(a, std::string::npos) << text;
  EXPECT_NE(b, std::string::npos) << text;
  return text.substr(a + open.size(), b - a - open.size());
}

json call(const std::string& name, const json& args) {
  return {{"id", "call_" + name}, {"type", "function"}, {"function", {{"name", name}, {"arguments", args.dump()}}}};
}

ToolParseResult parse_whole(std::string_view text) {
  auto p = make_tool_call_parser("gemma4", false);
  return parse_tool_output(*p, text);
}

// Streams `pieces` and assembles the result; checks the delta protocol on the way (a call's first
// entry has id + name and comes before its argument fragments; indexes count up from 0).
ToolParseResult parse_streamed(const std::vector<std::string_view>& pieces, ToolCallParser* parser = nullptr) {
  std::unique_ptr<ToolCallParser> own;
  if (!parser) own = make_tool_call_parser("gemma4", true), parser = own.get();
  ToolParseResult r;
  auto take = [&](ToolCallParser::Output& o) {
    r.content += o.content;
    for (const auto& d : o.calls) {
      if (d.first()) {
        EXPECT_EQ(d.index, static_cast<int>(r.tool_calls.size()));
        EXPECT_TRUE(d.arguments.empty());
        EXPECT_EQ(d.id.rfind("chatcmpl-tool-", 0), 0u);
        r.tool_calls.push_back({d.id, d.name, ""});
      } else {
        EXPECT_TRUE(d.name.empty());
        EXPECT_EQ(d.index + 1, static_cast<int>(r.tool_calls.size())) << "fragment of an earlier or unknown call";
        if (d.index >= 0 && d.index < static_cast<int>(r.tool_calls.size())) r.tool_calls[d.index].arguments += d.arguments;
      }
    }
    o = {};
  };
  ToolCallParser::Output o;
  for (auto piece : pieces) parser->push(piece, o), take(o);
  parser->finish(o);
  take(o);
  return r;
}

void expect_same(const ToolParseResult& a, const ToolParseResult& b, const std::string& what) {
  EXPECT_EQ(a.content, b.content) << what;
  ASSERT_EQ(a.tool_calls.size(), b.tool_calls.size()) << what;
  for (size_t i = 0; i < a.tool_calls.size(); ++i) {
    EXPECT_EQ(a.tool_calls[i].name, b.tool_calls[i].name) << what;
    EXPECT_EQ(a.tool_calls[i].arguments, b.tool_calls[i].arguments) << what;
  }
}

// Every way of cutting `text` in two, and one byte at a time.
void expect_streaming_matches(const std::string& text) {
  const ToolParseResult whole = parse_whole(text);
  for (size_t i = 0; i <= text.size(); ++i) {
    std::string_view v(text);
    expect_same(parse_streamed({v.substr(0, i), v.substr(i)}), whole, "split at byte " + std::to_string(i));
  }
  std::vector<std::string_view> bytes;
  for (size_t i = 0; i < text.size(); ++i) bytes.push_back(std::string_view(text).substr(i, 1));
  expect_same(parse_streamed(bytes), whole, "byte by byte");
}

TEST(Gemma4ToolParser, RendersAndParsesOneCall) {
  const std::string text = render_assistant({call("get_weather", {{"city", "Paris"}, {"days", 3}})});
  EXPECT_EQ(text, "<|tool_call>call:get_weather{city:<|\"|>Paris<|\"|>,days:3}<tool_call|>");
  ToolParseResult r = parse_whole(text);
  EXPECT_EQ(r.content, "");
  ASSERT_EQ(r.tool_calls.size(), 1u);
  EXPECT_EQ(r.tool_calls[0].name, "get_weather");
  EXPECT_EQ(r.tool_calls[0].arguments, R"({"city": "Paris", "days": 3})");  // json.dumps, as vLLM
  EXPECT_EQ(r.tool_calls[0].id.size(), std::string("chatcmpl-tool-").size() + 32);
  json j = r.tool_calls[0].to_json();
  EXPECT_EQ(j["type"], "function");
  EXPECT_EQ(j["function"]["name"], "get_weather");
}

TEST(Gemma4ToolParser, RoundTripsArgumentsOfEveryType) {
  const std::vector<json> cases = {
      json::object(),
      {{"s", "plain"}},
      {{"quotes", "say \"hi\" and 'bye'"}, {"braces", "{a:1},[b]"}, {"colons", "k:v, x:y"}},
      {{"markers", "<|tool_call>call:x{}<tool_call|> <|channel> <turn|> | < >"}},
      {{"escapes", "back\\slash \\n not a newline\nreal newline\ttab \u0001"}},
      {{"unicode", "Zürich 東京 🌧 ünïcödé"}, {"emoji key 🔑", "v"}},
      {{"int", 42}, {"neg", -7}, {"zero", 0}, {"float", 1.5}, {"small", -0.25}, {"big", 12345678901234}},
      {{"t", true}, {"f", false}, {"none", nullptr}},
      {{"nested", {{"a", {{"b", {{"c", "deep"}}}}}, {"list", {1, "two", json::array({3, 4}), {{"k", "v"}}}}}}},
      {{"empty_list", json::array()}, {"empty_obj", json::object()}, {"empty_str", ""}},
      {{"my-key", 1}, {"key with space", 2}, {"dotted.key", 3}},
  };
  for (const auto& args : cases) {
    const std::string text = render_assistant({call("f", args)});
    ToolParseResult r = parse_whole(text);
    ASSERT_EQ(r.tool_calls.size(), 1u) << text;
    EXPECT_EQ(r.content, "") << text;
    json back = json::parse(r.tool_calls[0].arguments);
    EXPECT_EQ(back, args) << text << "\n→ " << r.tool_calls[0].arguments;
    expect_streaming_matches(text);
  }
}

TEST(Gemma4ToolParser, ParallelCallsWithContentAround) {
  const std::string calls = render_assistant({call("get_weather", {{"city", "Paris"}}),
                                              call("get_time", {{"tz", "Europe/Paris"}, {"fmt", "24h"}}),
                                              call("noop", json::object())});
  EXPECT_EQ(calls.find("<tool_call|><|tool_call>"), calls.find("<tool_call|>"));  // back to back
  const std::string text = "Let me check. " + calls + "\nDone.";
  ToolParseResult r = parse_whole(text);
  EXPECT_EQ(r.content, "Let me check. \nDone.");
  ASSERT_EQ(r.tool_calls.size(), 3u);
  EXPECT_EQ(r.tool_calls[0].name, "get_weather");
  EXPECT_EQ(r.tool_calls[1].name, "get_time");
  EXPECT_EQ(r.tool_calls[1].arguments, R"({"fmt": "24h", "tz": "Europe/Paris"})");
  EXPECT_EQ(r.tool_calls[2].arguments, "{}");
  EXPECT_NE(r.tool_calls[0].id, r.tool_calls[1].id);
  expect_streaming_matches(text);
}

TEST(Gemma4ToolParser, StreamsNameFirstThenArgumentFragments) {
  auto p = make_tool_call_parser("gemma4", true);
  ToolCallParser::Output o;
  p->push("Sure<|tool_", o);
  EXPECT_EQ(o.content, "Sure");  // a marker cut short is held, not shown
  EXPECT_TRUE(o.calls.empty());
  o = {};
  p->push("call>call:get_wea", o);
  EXPECT_TRUE(o.content.empty());
  EXPECT_TRUE(o.calls.empty());  // the name is announced once complete
  p->push("ther{city:<|\"|>Par", o);
  ASSERT_EQ(o.calls.size(), 2u);
  EXPECT_EQ(o.calls[0].to_json(), json::parse(R"({"index":0,"id":")" + o.calls[0].id +
                                             R"(","type":"function","function":{"name":"get_weather","arguments":""}})"));
  EXPECT_EQ(o.calls[1].to_json(), json::parse(R"({"index":0,"function":{"arguments":"{\"city\": \"Par"}})"));
  o = {};
  p->push("is<|\"|>}<tool_call|>", o);
  ASSERT_EQ(o.calls.size(), 1u);
  EXPECT_EQ(o.calls[0].arguments, "is\"}");
  EXPECT_EQ(p->finish_reason("stop"), "tool_calls");
  EXPECT_EQ(p->finish_reason("length"), "tool_calls");
}

TEST(Gemma4ToolParser, MalformedOutputStaysContent) {
  const std::vector<std::string> bad = {
      "<|tool_call>oops",                                // no call: head
      "<|tool_call>call:{a:1}<tool_call|>",              // no name
      "<|tool_call>call:f a{a:1}<tool_call|>",           // bad name
      "<|tool_call>call:f{a:1,,b:2}<tool_call|>",        // empty element
      "<|tool_call>call:f{a:}<tool_call|>",              // missing value
      "<|tool_call>call:f{a:1,}<tool_call|>",            // trailing comma
      "<|tool_call>call:f{a:[1,2}<tool_call|>",          // mismatched close
      "<|tool_call>call:f{a:<|\"|>never closed",         // unterminated string
      "<|tool_call>call:f{a:1",                          // cut short
      "<|tool_call>call:f{\"a\":1}<tool_call|>",         // JSON is not the format
      "<|tool_call",                                     // a marker cut short
  };
  for (const auto& text : bad) {
    ToolParseResult r = parse_whole(text);
    EXPECT_TRUE(r.tool_calls.empty()) << text;
    EXPECT_EQ(r.content, text);
    // Streamed: the head errors stay content; a call announced before its arguments broke is closed
    // as valid JSON.
    ToolParseResult s = parse_streamed({text});
    for (const auto& c : s.tool_calls) EXPECT_TRUE(json::accept(c.arguments)) << text << " → " << c.arguments;
    for (size_t i = 0; i <= text.size(); ++i) {
      std::string_view v(text);
      ToolParseResult split = parse_streamed({v.substr(0, i), v.substr(i)});
      expect_same(split, s, text + " split at " + std::to_string(i));
    }
  }
  // A good call after a broken one is still found.
  ToolParseResult r = parse_whole("<|tool_call>call:f{a:}<tool_call|> then <|tool_call>call:g{b:2}<tool_call|>");
  ASSERT_EQ(r.tool_calls.size(), 1u);
  EXPECT_EQ(r.tool_calls[0].name, "g");
  EXPECT_EQ(r.content, "<|tool_call>call:f{a:}<tool_call|> then ");
}

TEST(Gemma4ToolParser, TruncatedCallStreamedIsClosedAndNotReportedAsCalled) {
  auto p = make_tool_call_parser("gemma4", true);
  ToolParseResult r = parse_streamed({"<|tool_call>call:f{a:[1,<|\"|>x<|"}, p.get());
  ASSERT_EQ(r.tool_calls.size(), 1u);
  EXPECT_EQ(json::parse(r.tool_calls[0].arguments), json::parse(R"({"a": [1, "x<|"]})"));
  EXPECT_EQ(p->finish_reason("length"), "length");
}

TEST(Gemma4ToolParser, NoCallsIsAllContent) {
  for (std::string text : {"", "plain text", "a < b | c > d", "<tool_call|> stray close", "<|\"|>quoted<|\"|>"}) {
    ToolParseResult r = parse_whole(text);
    EXPECT_EQ(r.content, text);
    EXPECT_TRUE(r.tool_calls.empty());
    expect_streaming_matches(text);
  }
  auto p = make_tool_call_parser("gemma4", false);
  parse_tool_output(*p, "hello");
  EXPECT_EQ(p->finish_reason("stop"), "stop");
}

TEST(Gemma4ToolParser, RandomInputNeverBreaksTheInvariants) {
  const std::vector<std::string> atoms = {"<|tool_call>", "<tool_call|>", "<|\"|>", "call:", "f", "{", "}", "[",
                                          "]", ",", ":", "1", "true", " ", "\n", "x", "é", "<", "|"};
  std::mt19937 rng(7);
  for (int iter = 0; iter < 2000; ++iter) {
    std::string text;
    int n = 1 + rng() % 30;
    for (int i = 0; i < n; ++i) text += atoms[rng() % atoms.size()];
    ToolParseResult whole = parse_whole(text);
    for (const auto& c : whole.tool_calls) EXPECT_TRUE(json::parse(c.arguments).is_object()) << text;
    size_t cut = rng() % (text.size() + 1);
    ToolParseResult s = parse_streamed({std::string_view(text).substr(0, cut), std::string_view(text).substr(cut)});
    for (const auto& c : s.tool_calls) EXPECT_TRUE(json::parse(c.arguments).is_object()) << text;
    // Every call announced while streaming either completes (and the whole parse has it too) or is
    // malformed / cut short (and the whole parse keeps its text as content): equal counts, equal results.
    if (s.tool_calls.size() == whole.tool_calls.size()) expect_same(s, whole, text);
  }
}

TEST(ToolChoiceOutput, NamedFunctionReadsTheGemmaCallAndKeepsTheEngineReason) {
  auto p = make_forced_tool_output(false, false);
  ToolParseResult r = parse_tool_output(*p, "<|tool_call>call:get_weather{city:<|\"|>Paris<|\"|>}<tool_call|>");
  ASSERT_EQ(r.tool_calls.size(), 1u);
  EXPECT_EQ(r.tool_calls[0].name, "get_weather");
  EXPECT_EQ(r.tool_calls[0].arguments, R"({"city": "Paris"})");
  EXPECT_EQ(r.content, "");
  EXPECT_EQ(p->finish_reason("stop"), "stop");  // vLLM keeps the engine's reason here
}

TEST(ToolChoiceOutput, RequiredReadsSeveralCallsAndEndsWithToolCalls) {
  auto p = make_forced_tool_output(true, false);
  ToolParseResult r = parse_tool_output(
      *p, "<|tool_call>call:a{x:1,y:<|\"|>é<|\"|>}<tool_call|><|tool_call>call:b{}<tool_call|>");
  ASSERT_EQ(r.tool_calls.size(), 2u);
  EXPECT_EQ(r.tool_calls[0].arguments, R"({"x": 1, "y": "é"})");
  EXPECT_EQ(r.tool_calls[1].name, "b");
  EXPECT_EQ(p->finish_reason("stop"), "tool_calls");
  EXPECT_EQ(p->finish_reason("length"), "length");
  auto q = make_forced_tool_output(true, false);
  ToolParseResult none = parse_tool_output(*q, "no call");  // possible only without the constraint
  EXPECT_TRUE(none.tool_calls.empty());
  EXPECT_EQ(none.content, "no call");
  EXPECT_EQ(q->finish_reason("stop"), "stop");
}

TEST(ToolParserNames, UnknownNameIsAnError) {
  EXPECT_TRUE(is_tool_call_parser("gemma4"));
  EXPECT_FALSE(is_tool_call_parser("hermes"));
  EXPECT_THROW(make_tool_call_parser("hermes", false), Error);
  EXPECT_THROW(make_reasoning_parser("deepseek_r1"), Error);
}

// ---------------------------------------------------------------------------------------------
// Reasoning: <|channel>thought\n...<channel|>

ReasoningSplit reason_streamed(const std::vector<std::string_view>& pieces) {
  auto p = make_reasoning_parser("gemma4");
  std::string reasoning, content;
  for (auto piece : pieces) p->push(piece, reasoning, content);
  p->finish(reasoning, content);
  ReasoningSplit r;
  if (p->saw_reasoning()) r.reasoning = reasoning;
  r.content = content;
  return r;
}

TEST(Gemma4ReasoningParser, SplitsTheThinkingChannelAtEveryByteBoundary) {
  struct Case {
    std::string text;
    std::optional<std::string> reasoning;
    std::string content;
  };
  const std::vector<Case> cases = {
      {"<|channel>thought\nStep 1: 2+2.\nStep 2: 4.<channel|>The answer is 4.", "Step 1: 2+2.\nStep 2: 4.",
       "The answer is 4."},
      {"No thinking here.", std::nullopt, "No thinking here."},
      {"<|channel>thought\ncut short", "cut short", ""},
      {"<|channel>no label<channel|>x", "no label", "x"},
      {"<|channel>thought\n<channel|>", "", ""},
      {"<|channel>thought\nä <|channel> ö<channel|>ü<|channel>again<channel|>", "ä <|channel> ö",
       "ü<|channel>again<channel|>"},
      {"<|channel>thought\nplan<channel|><|tool_call>call:f{}<tool_call|>", "plan", "<|tool_call>call:f{}<tool_call|>"},
  };
  for (const auto& c : cases) {
    auto p = make_reasoning_parser("gemma4");
    ReasoningSplit whole = split_reasoning(*p, c.text);
    EXPECT_EQ(whole.reasoning, c.reasoning) << c.text;
    EXPECT_EQ(whole.content, c.content) << c.text;
    for (size_t i = 0; i <= c.text.size(); ++i) {
      std::string_view v(c.text);
      ReasoningSplit s = reason_streamed({v.substr(0, i), v.substr(i)});
      EXPECT_EQ(s.reasoning, c.reasoning) << c.text << " split at " << i;
      EXPECT_EQ(s.content, c.content) << c.text << " split at " << i;
    }
  }
}

TEST(Gemma4ReasoningParser, ThenToolCallsFromTheContent) {
  const std::string text = "<|channel>thought\nI need the weather.<channel|>" +
                           render_assistant({call("get_weather", {{"city", "Zürich"}})});
  auto rp = make_reasoning_parser("gemma4");
  ReasoningSplit split = split_reasoning(*rp, text);
  EXPECT_EQ(split.reasoning, "I need the weather.");
  ToolParseResult r = parse_whole(split.content);
  ASSERT_EQ(r.tool_calls.size(), 1u);
  EXPECT_EQ(r.tool_calls[0].arguments, R"({"city": "Zürich"})");
}

}  // namespace
}  // namespace tandem::server
