// Chat requests with tools: tool_choice validation (vLLM's rules and wording), and a history with
// tool calls and tool results rendered by the real Gemma 4 template.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "fakes.h"
#include "server/adapters.h"
#include "server/api_error.h"
#include "server/protocol.h"
#include "server/tool_parser.h"
#include "grammar/matcher.h"

namespace tandem::server {
namespace {

using nlohmann::json;
using testing::ByteCodec;

const json kTools = json::parse(R"([
  {"type":"function","function":{"name":"get_weather","description":"Weather of a city",
   "parameters":{"type":"object","properties":{"city":{"type":"string"}},"required":["city"]}}},
  {"type":"function","function":{"name":"get_time"}}])");

class ToolsProtocolTest : public ::testing::Test {
 protected:
  ParsedRequest chat(json body, const TextCodec* c = nullptr) {
    if (!body.contains("messages")) body["messages"] = {{{"role", "user"}, {"content", "hi"}}};
    return parse_chat_request(body, c ? *c : codec, names, limits);
  }
  // The 400 message a body gets ("" if accepted).
  std::string error(const json& body) {
    return testing::bad_request_message([&] { chat(body); });
  }
  ByteCodec codec;
  std::vector<std::string> names = {"demo"};
  Limits limits = [] {
    Limits l;
    l.max_model_len = 4096;
    l.enable_auto_tool_choice = true;
    l.tool_call_parser = "gemma4";
    return l;
  }();
};

TEST_F(ToolsProtocolTest, AutoIsTheDefaultWithToolsAndNeedsTheServerFlags) {
  ParsedRequest r = chat({{"tools", kTools}});
  EXPECT_EQ(r.tool_output, ToolOutput::parse);
  EXPECT_EQ(r.tool_call_parser, "gemma4");
  EXPECT_TRUE(r.has_tools);
  EXPECT_EQ(chat({{"tools", kTools}, {"tool_choice", "auto"}}).tool_output, ToolOutput::parse);
  EXPECT_EQ(chat({}).tool_output, ToolOutput::none);
  EXPECT_EQ(chat({{"tools", json::array()}}).tool_output, ToolOutput::none);
  limits.enable_auto_tool_choice = false;
  EXPECT_EQ(error({{"tools", kTools}}),
            "\"auto\" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set");
  limits.enable_auto_tool_choice = true, limits.tool_call_parser.clear();
  EXPECT_NE(error({{"tools", kTools}, {"tool_choice", "auto"}}), "");
}

TEST_F(ToolsProtocolTest, NoneKeepsToolsInThePromptAndParsesNothing) {
  ParsedRequest r = chat({{"tools", kTools}, {"tool_choice", "none"}});
  EXPECT_EQ(r.tool_output, ToolOutput::none);
  EXPECT_TRUE(r.has_tools);
  limits.enable_auto_tool_choice = false;  // "none" needs no flags
  EXPECT_EQ(chat({{"tools", kTools}, {"tool_choice", "none"}}).tool_output, ToolOutput::none);
  EXPECT_EQ(chat({{"tool_choice", "none"}}).tool_output, ToolOutput::none);
}

TEST_F(ToolsProtocolTest, InvalidToolChoiceIsRejectedInVllmWords) {
  EXPECT_EQ(error({{"tools", kTools}, {"tool_choice", "sometimes"}}),
            "Invalid value for `tool_choice`: sometimes! Only named tools, \"none\", \"auto\" or \"required\" are "
            "supported.");
  EXPECT_EQ(error({{"tool_choice", "auto"}}), "When using `tool_choice`, `tools` must be set.");
  EXPECT_EQ(error({{"tool_choice", "required"}}), "When using `tool_choice`, `tools` must be set.");
  const std::string usage = "Correct usage: `{\"type\": \"function\", \"function\": {\"name\": \"my_function\"}}`";
  EXPECT_EQ(error({{"tools", kTools}, {"tool_choice", {{"type", "function"}}}}),
            "Invalid value for `function`: `null` in `tool_choice`! " + usage);
  EXPECT_EQ(error({{"tools", kTools}, {"tool_choice", {{"type", "function"}, {"function", json::object()}}}}),
            "Expected field `name` in `function` in `tool_choice`! " + usage);
  EXPECT_EQ(error({{"tools", kTools}, {"tool_choice", {{"type", "function"}, {"function", {{"name", ""}}}}}}),
            "Invalid `name` in `function`: `` in `tool_choice`! " + usage);
  EXPECT_EQ(error({{"tools", kTools}, {"tool_choice", {{"type", "function"}, {"function", {{"name", "nope"}}}}}}),
            "The tool specified in `tool_choice` does not match any of the specified `tools`");
  EXPECT_NE(error({{"tools", "get_weather"}}), "");
  EXPECT_NE(error({{"tools", {{{"type", "function"}}}}}), "");
  EXPECT_NE(error({{"tools", {{{"type", "retrieval"}, {"function", {{"name", "x"}}}}}}}), "");
  EXPECT_NE(error({{"tools", kTools}, {"parallel_tool_calls", "yes"}}), "");
}

// tool_choice "required" / named: constrained to Gemma 4 tool calls whose arguments follow the
// tool's schema (checked through the attached grammar on the fake byte-level vocabulary, where the
// markers are single special tokens as in Gemma 4's tokenizer).
TEST_F(ToolsProtocolTest, RequiredAndNamedConstrainTheOutputToGemmaToolCalls) {
  // Whether the output (\x03 \x04 \x05: <|tool_call>, <tool_call|>, <|"|>) then the stop token is
  // what the request's grammar accepts.
  auto accepts = [](const ParsedRequest& r, const std::string& out) {
    grammar::GrammarMatcher m(*r.engine_request(0).sampling.grammar);
    for (unsigned char c : out) {
      const int32_t id = c == 3 ? ByteCodec::kCallOpen : c == 4 ? ByteCodec::kCallClose : c == 5 ? ByteCodec::kQuote
                                                                                       : ByteCodec::id_of(c);
      if (!m.accept_token(id)) return false;
    }
    return m.accept_token(ByteCodec::kEos);
  };
  const std::string paris = "\x03" "call:get_weather{city:\x05Paris\x05}\x04";
  const std::string time = "\x03" "call:get_time{}\x04";
  ParsedRequest named =
      chat({{"tools", kTools}, {"tool_choice", {{"type", "function"}, {"function", {{"name", "get_weather"}}}}}});
  EXPECT_EQ(named.tool_output, ToolOutput::named);
  EXPECT_TRUE(accepts(named, paris));
  EXPECT_TRUE(accepts(named, "\x03" "call:get_weather{city:\x05" "a\"b}<|\"|\x05}\x04"));  // raw text up to <|"|>
  EXPECT_TRUE(accepts(named, "<|tool_call>call:get_weather{city:<|\"|>Paris<|\"|>}<tool_call|>"));  // as text
  EXPECT_FALSE(accepts(named, time));                                              // another tool
  EXPECT_FALSE(accepts(named, paris + paris));                                     // one call only
  EXPECT_FALSE(accepts(named, "\x03" "call:get_weather{}\x04"));                   // city is required
  EXPECT_FALSE(accepts(named, "\x03" "call:get_weather{city:3}\x04"));             // not a string
  EXPECT_FALSE(accepts(named, "\x03" "call:get_weather{city:\x05Paris\x05,x:1}\x04"));  // undeclared
  EXPECT_FALSE(accepts(named, "Sure! " + paris));                                  // no text around it
  ParsedRequest required = chat({{"tools", kTools}, {"tool_choice", "required"}});
  EXPECT_EQ(required.tool_output, ToolOutput::required);
  EXPECT_TRUE(accepts(required, paris));
  EXPECT_TRUE(accepts(required, time + paris));  // parallel calls
  EXPECT_FALSE(accepts(required, ""));           // at least one call
  EXPECT_FALSE(accepts(required, "\x03" "call:get_date{}\x04"));
  ParsedRequest single = chat({{"tools", kTools}, {"tool_choice", "required"}, {"parallel_tool_calls", false}});
  EXPECT_TRUE(accepts(single, time));
  EXPECT_FALSE(accepts(single, time + paris));
  // null is the default (parallel calls), as for every other field; it was a 500.
  ParsedRequest null_parallel =
      chat({{"tools", kTools}, {"tool_choice", "required"}, {"parallel_tool_calls", nullptr}});
  EXPECT_TRUE(accepts(null_parallel, time + paris));
  // The output of such a request is read by the Gemma 4 parser: whole and streamed, it gives the call.
  auto p = make_forced_tool_output(false, false);
  ToolParseResult parsed = parse_tool_output(*p, "<|tool_call>call:get_weather{city:<|\"|>Paris<|\"|>}<tool_call|>");
  ASSERT_EQ(parsed.tool_calls.size(), 1u);
  EXPECT_EQ(json::parse(parsed.tool_calls[0].arguments), json({{"city", "Paris"}}));
  // "required" with an empty tool list behaves as "none" (OpenAI).
  EXPECT_EQ(chat({{"tools", json::array()}, {"tool_choice", "required"}}).tool_output, ToolOutput::none);
  EXPECT_FALSE(chat({{"tools", json::array()}, {"tool_choice", "required"}}).sampling.grammar.has_value());
  // Not together with another output constraint (vLLM's rule and message).
  EXPECT_EQ(error({{"tools", kTools}, {"tool_choice", "required"}, {"guided_choice", {"a"}}}),
            "You can only either use constraints for structured outputs or tools, not both.");
  // A parameter schema the grammar cannot express is a 400 naming tool_choice.
  json odd = kTools;
  odd[0]["function"]["parameters"]["properties"]["city"]["uniqueItems"] = true;
  std::string e = error({{"tools", odd}, {"tool_choice", "required"}});
  EXPECT_NE(e.find("'tool_choice'"), std::string::npos) << e;
  EXPECT_NE(e.find("uniqueItems"), std::string::npos) << e;
  // tool_choice "auto" is not constrained.
  EXPECT_FALSE(chat({{"tools", kTools}, {"tool_choice", "auto"}}).sampling.grammar.has_value());
}

TEST_F(ToolsProtocolTest, AssistantToolCallArgumentsMustBeJson) {
  auto history = [](json arguments) {
    return json{{"messages",
                 {{{"role", "user"}, {"content", "hi"}},
                  {{"role", "assistant"},
                   {"content", nullptr},
                   {"tool_calls", {{{"id", "c1"}, {"type", "function"},
                                    {"function", {{"name", "get_weather"}, {"arguments", arguments}}}}}}}}}};
  };
  std::string e = error(history("{\"city\": \"Paris\""));
  EXPECT_NE(e.find("messages[1].tool_calls[0].function.arguments is not valid JSON"), std::string::npos) << e;
  EXPECT_NE(error(history("[1, 2]")).find("must be a JSON object"), std::string::npos);
  // A number past a double's range is nlohmann's out_of_range, not parse_error: still the client's fault (400).
  EXPECT_NE(error(history("{\"a\": 1e400}")).find("function.arguments is not valid JSON"), std::string::npos);
  EXPECT_NE(error(history(42)), "");
  EXPECT_EQ(error(history("{\"city\": \"Paris\"}")), "");
  EXPECT_EQ(error(history("")), "");  // "" and null: {} as vLLM
  EXPECT_EQ(error(history(nullptr)), "");
  json vars = chat_template_variables(history("{\"city\": \"Paris\"}"), codec);
  EXPECT_EQ(vars["messages"][1]["tool_calls"][0]["function"]["arguments"], json({{"city", "Paris"}}));
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

TEST_F(ToolsProtocolTest, Gemma4RendersToolCallsAndToolResultsFromOpenAiMessages) {
  TokenizerCodec gemma(Tokenizer::load(std::string(TANDEM_SOURCE_DIR) + "/models/tandem-code-demo"),
                       read_text(std::string(TANDEM_SOURCE_DIR) + "/tests/tokenizer/templates/gemma4.jinja"));
  json body = json::parse(R"({
    "tools": [{"type":"function","function":{"name":"get_weather","description":"Weather of a city",
               "parameters":{"type":"object","properties":{"city":{"type":"string","description":"City"}},
                             "required":["city"]}}}],
    "messages": [
      {"role":"user","content":"Weather in Paris and Rome?"},
      {"role":"assistant","content":null,"tool_calls":[
        {"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\": \"Paris\"}"}},
        {"id":"call_2","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Rome\"}"}}]},
      {"role":"tool","tool_call_id":"call_1","content":"sunny, 21 C"},
      {"role":"tool","tool_call_id":"call_2","content":[{"type":"text","text":"rain, 14 C"}]}
    ]})");
  ParsedRequest r = chat(body, &gemma);
  const std::string& prompt = r.prompts[0].text;
  EXPECT_EQ(prompt,
            "<bos><|turn>system\n<|tool>declaration:get_weather{description:<|\"|>Weather of a city<|\"|>,"
            "parameters:{properties:{city:{description:<|\"|>City<|\"|>,type:<|\"|>STRING<|\"|>}},"
            "required:[<|\"|>city<|\"|>],type:<|\"|>OBJECT<|\"|>}}<tool|><turn|>\n"
            "<|turn>user\nWeather in Paris and Rome?<turn|>\n"
            "<|turn>model\n<|tool_call>call:get_weather{city:<|\"|>Paris<|\"|>}<tool_call|>"
            "<|tool_call>call:get_weather{city:<|\"|>Rome<|\"|>}<tool_call|>"
            "<|tool_response>response:get_weather{value:<|\"|>sunny, 21 C<|\"|>}<tool_response|>"
            "<|tool_response>response:get_weather{value:<|\"|>rain, 14 C<|\"|>}<tool_response|>"
            "<|channel>thought\n<channel|>");
  // The markers are single special tokens of the prompt.
  auto call_open = gemma.token_id("<|tool_call>");
  ASSERT_TRUE(call_open);
  EXPECT_EQ(std::count(r.prompts[0].tokens.begin(), r.prompts[0].tokens.end(), *call_open), 2);
  // The model's answer after the results closes the turn; a later user turn follows.
  body["messages"].push_back({{"role", "assistant"}, {"content", "Paris is sunny, Rome rainy."}});
  body["messages"].push_back({{"role", "user"}, {"content", "Thanks"}});
  std::string more = chat(body, &gemma).prompts[0].text;
  EXPECT_NE(more.find("<tool_response|><|turn>model\nParis is sunny, Rome rainy.<turn|>\n<|turn>user\nThanks<turn|>\n"
                      "<|turn>model\n"),
            std::string::npos)
      << more;
  // tool_choice "none" still shows the tools to the model (vLLM).
  body["tool_choice"] = "none";
  EXPECT_NE(chat(body, &gemma).prompts[0].text.find("<|tool>declaration:get_weather"), std::string::npos);
  // A tool result with no call before it keeps its own turn, as the template renders it.
  json orphan = {{"messages", {{{"role", "user"}, {"content", "hi"}}, {{"role", "tool"}, {"content", "42"}}}}};
  EXPECT_NE(chat(orphan, &gemma).prompts[0].text.find("<|turn>tool\n42<turn|>"), std::string::npos);
}

}  // namespace
}  // namespace tandem::server
