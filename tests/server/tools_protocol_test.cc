// Chat requests with tools: tool_choice validation (vLLM's rules and wording), and a history with
// tool calls and tool results rendered by the real Gemma 4 template.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "fakes.h"
#include "server/adapters.h"
#include "server/api_error.h"
#include "server/protocol.h"

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
    try {
      chat(body);
    } catch (const ApiError& e) {
      EXPECT_EQ(e.status(), 400);
      return e.what();
    }
    return "";
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

TEST_F(ToolsProtocolTest, RequiredAndNamedNeedTheConstraintHook) {
  // Valid requests; tandem has no grammar engine, so attach_tool_choice_constraint() refuses them.
  std::string named = error({{"tools", kTools}, {"tool_choice", {{"type", "function"}, {"function", {{"name", "get_time"}}}}}});
  EXPECT_NE(named.find("needs constrained decoding"), std::string::npos) << named;
  std::string required = error({{"tools", kTools}, {"tool_choice", "required"}});
  EXPECT_NE(required.find("\"required\" needs constrained decoding"), std::string::npos) << required;
  // "required" with an empty tool list behaves as "none" (OpenAI).
  EXPECT_EQ(chat({{"tools", json::array()}, {"tool_choice", "required"}}).tool_output, ToolOutput::none);
  ParsedRequest r;
  EXPECT_FALSE(attach_tool_choice_constraint(r, json::object()));
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
