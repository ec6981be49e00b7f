#include "server/protocol.h"

#include <gtest/gtest.h>

#include "fakes.h"
#include "server/api_error.h"
#include "grammar/matcher.h"

namespace tandem::server {
namespace {

using nlohmann::json;
using testing::ByteCodec;

class ProtocolTest : public ::testing::Test {
 protected:
  ParsedRequest completion(const std::string& body) {
    return parse_completion_request(json::parse(body), codec, names, limits);
  }
  ParsedRequest chat(const std::string& body) { return parse_chat_request(json::parse(body), codec, names, limits); }
  // The param of the ApiError a body raises ("" if none is raised).
  std::string error_param(const std::string& body, bool is_chat = false, int* status = nullptr) {
    try {
      is_chat ? chat(body) : completion(body);
    } catch (const ApiError& e) {
      if (status) *status = e.status();
      return e.param().empty() ? "<none>" : e.param();
    }
    return "";
  }
  // The message of the ApiError parse_body raises for `text`, which must be a 400 ("" if none is raised).
  static std::string body_error(const std::string& text) {
    return testing::bad_request_message([&] { parse_body(text); });
  }
  ByteCodec codec;
  std::vector<std::string> names = {"demo"};
  Limits limits = [] {
    Limits l;
    l.max_model_len = 64;
    l.num_speculative_tokens = 3;
    return l;
  }();
};

TEST_F(ProtocolTest, CompletionDefaultsAndFields) {
  auto r = completion(R"({"model":"demo","prompt":"hi","max_tokens":5,"temperature":0,"seed":7,
                          "stop":"x","stop_token_ids":[9],"logprobs":2,"top_k":4,"n":2,
                          "speculative":{"num_speculative_tokens":0}})");
  ASSERT_EQ(r.prompts.size(), 1u);
  EXPECT_EQ(r.prompts[0].tokens, (std::vector<int32_t>{ByteCodec::kBos, ByteCodec::id_of('h'), ByteCodec::id_of('i')}));
  EXPECT_EQ(r.max_tokens, 5);
  EXPECT_TRUE(r.sampling.greedy());
  EXPECT_EQ(r.stop, std::vector<std::string>{"x"});
  EXPECT_EQ(r.stop_token_ids, std::vector<int32_t>{9});
  EXPECT_EQ(r.logprobs, 2);
  EXPECT_EQ(r.num_choices(), 2);
  Request e0 = r.engine_request(0), e1 = r.engine_request(1);
  EXPECT_EQ(e0.num_speculative_tokens, 0);
  EXPECT_EQ(e0.sampling.top_logprobs, 2);
  EXPECT_EQ(e0.sampling.top_k, 4);
  EXPECT_EQ(*e0.sampling.seed, 7u);
  EXPECT_EQ(*e1.sampling.seed, 8u);
}

TEST_F(ProtocolTest, MaxTokensDefaultsToTheRestOfTheContext) {
  auto r = completion(R"({"prompt":"abc"})");
  EXPECT_EQ(r.model, "demo");
  EXPECT_EQ(r.max_tokens, 64 - 4);
  EXPECT_EQ(r.num_speculative_tokens, -1);
}

TEST_F(ProtocolTest, PromptForms) {
  EXPECT_EQ(completion(R"({"prompt":[5,6,7]})").prompts[0].tokens, (std::vector<int32_t>{5, 6, 7}));
  auto r = completion(R"({"prompt":["a",[8,9]],"n":2})");
  ASSERT_EQ(r.prompts.size(), 2u);
  EXPECT_EQ(r.num_choices(), 4);
  EXPECT_EQ(r.engine_request(3).prompt, (std::vector<int32_t>{8, 9}));
}

TEST_F(ProtocolTest, ChatRendersTemplateWithoutExtraBos) {
  auto r = chat(R"({"messages":[{"role":"user","content":[{"type":"text","text":"hi"},{"type":"text","text":"you"}]}],
                    "max_completion_tokens":3,"logprobs":true,"top_logprobs":2,
                    "chat_template_kwargs":{"enable_thinking":true}})");
  const auto& toks = r.prompts[0].tokens;
  EXPECT_EQ(codec.decode(toks, false), "<bos>user: hi\nyou\n(thinking)assistant:");
  EXPECT_EQ(std::count(toks.begin(), toks.end(), ByteCodec::kBos), 1);
  EXPECT_EQ(r.max_tokens, 3);
  EXPECT_EQ(r.logprobs, 2);
}

TEST_F(ProtocolTest, Rejections) {
  int status = 0;
  EXPECT_EQ(error_param(R"({"prompt":"x","model":"other"})", false, &status), "model");
  EXPECT_EQ(status, 404);
  EXPECT_EQ(error_param(R"({"prompt":"x","temperature":-1})"), "temperature");
  EXPECT_EQ(error_param(R"({"prompt":"x","temperature":"hot"})"), "temperature");
  EXPECT_EQ(error_param(R"({"prompt":"x","top_p":0})"), "top_p");
  EXPECT_EQ(error_param(R"({"prompt":"x","top_p":1.5})"), "top_p");
  EXPECT_EQ(error_param(R"({"prompt":"x","max_tokens":0})"), "max_tokens");
  EXPECT_EQ(error_param(R"({"prompt":"x","max_tokens":"5"})"), "max_tokens");
  EXPECT_EQ(error_param(R"({"prompt":"x","max_tokens":100})"), "max_tokens");  // 2 + 100 > 64
  EXPECT_EQ(error_param(R"({"prompt":"x","n":0})"), "n");
  EXPECT_EQ(error_param(R"({"prompt":"x","n":17})"), "n");
  EXPECT_EQ(error_param(R"({"prompt":"x","stop":[1]})"), "stop");
  EXPECT_EQ(error_param(R"({"prompt":"x","stop":[""]})"), "stop");
  EXPECT_EQ(error_param(R"({"prompt":"x","stop":["a","b","c","d","e","f","g","h","i","j","k","l","m","n","o","p","q"]})"),
            "stop");
  EXPECT_EQ(error_param(R"({"prompt":"x","stop_token_ids":[99999]})"), "stop_token_ids");
  EXPECT_EQ(error_param(R"({"prompt":"x","logprobs":21})"), "logprobs");
  EXPECT_EQ(error_param(R"({"prompt":"x","logprobs":true})"), "logprobs");
  EXPECT_EQ(error_param(R"({"prompt":"x","stream":"yes"})"), "stream");
  EXPECT_EQ(error_param(R"({"prompt":"x","stream_options":{"include_usage":true}})"), "stream_options");
  EXPECT_EQ(error_param(R"({"prompt":"x","speculative":{"num_speculative_tokens":4}})"),
            "speculative.num_speculative_tokens");
  EXPECT_EQ(error_param(R"({"prompt":42})"), "prompt");
  EXPECT_EQ(error_param(R"({"prompt":[-1]})"), "prompt");
  EXPECT_EQ(error_param(R"({})"), "prompt");
  EXPECT_EQ(error_param(std::string(R"({"prompt":")") + std::string(80, 'a') + "\"}"), "prompt");
  EXPECT_EQ(error_param(R"({"messages":[]})", true), "messages");
  EXPECT_EQ(error_param(R"({"messages":[{"role":"wizard","content":"x"}]})", true), "messages");
  EXPECT_EQ(error_param(R"({"messages":[{"role":"user","content":[{"type":"image_url"}]}]})", true), "messages");
  EXPECT_EQ(error_param(R"({"messages":[{"role":"user","content":"x"}],"logprobs":"yes"})", true), "logprobs");
  EXPECT_EQ(error_param(R"({"messages":[{"role":"user","content":"x"}],"top_logprobs":3})", true), "top_logprobs");
}

TEST_F(ProtocolTest, MalformedBody) {
  EXPECT_THROW(parse_body("{not json"), ApiError);
  EXPECT_THROW(parse_body("[1,2]"), ApiError);
  EXPECT_NO_THROW(parse_body("{}"));
}

}  // namespace
}  // namespace tandem::server

namespace tandem::server {
namespace {

TEST_F(ProtocolTest, VllmExtraParameters) {
  auto r = completion(R"({"prompt":"hi","max_tokens":8,"min_tokens":3,"repetition_penalty":1.3,
                          "logit_bias":{"7":150,"9":-2.5},"include_stop_str_in_output":true,"prompt_logprobs":2,
                          "allowed_token_ids":[7,9,11],"best_of":1,"use_beam_search":false,"user":"u"})");
  Request e = r.engine_request(0);
  EXPECT_EQ(e.sampling.min_tokens, 3);
  EXPECT_FLOAT_EQ(e.sampling.repetition_penalty, 1.3f);
  ASSERT_EQ(e.sampling.logit_bias.size(), 2u);
  EXPECT_EQ(e.sampling.logit_bias[0], (std::pair<int32_t, float>{7, 100.0f}));  // clamped like vLLM
  EXPECT_EQ(e.sampling.allowed_token_ids, (std::vector<int32_t>{7, 9, 11}));
  EXPECT_EQ(e.prompt_logprobs, 2);
  EXPECT_TRUE(r.include_stop_str_in_output);
  EXPECT_TRUE(r.return_prompt_logprobs);
  EXPECT_TRUE(r.ignored_fields.empty());

  // echo + logprobs asks the engine for prompt logprobs.
  auto echo = completion(R"({"prompt":"hi","max_tokens":2,"echo":true,"logprobs":1})");
  EXPECT_EQ(echo.engine_request(0).prompt_logprobs, 1);
  EXPECT_FALSE(echo.return_prompt_logprobs);

  // truncate_prompt_tokens keeps the last N tokens.
  auto t = completion(R"({"prompt":"abcdef","max_tokens":2,"truncate_prompt_tokens":3,"echo":true})");
  EXPECT_EQ(t.prompts[0].tokens, (std::vector<int32_t>{ByteCodec::id_of('d'), ByteCodec::id_of('e'), ByteCodec::id_of('f')}));
  EXPECT_EQ(t.prompts[0].text, "def");
  // add_special_tokens false: no BOS.
  EXPECT_EQ(completion(R"({"prompt":"ab","add_special_tokens":false})").prompts[0].tokens.size(), 2u);

  // Unknown fields are ignored and reported.
  auto u = completion(R"({"prompt":"x","max_tokens":2,"frobnicate":1,"cache_salt":"s"})");
  EXPECT_EQ(u.ignored_fields, std::vector<std::string>{"frobnicate"});
}

TEST_F(ProtocolTest, ChatTemplateFlags) {
  auto no_gen = chat(R"({"messages":[{"role":"user","content":"hi"}],"add_generation_prompt":false})");
  EXPECT_EQ(codec.decode(no_gen.prompts[0].tokens, false), "<bos>user: hi\n");
  auto cont = chat(R"({"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"Sure, "}],
                       "add_generation_prompt":false,"continue_final_message":true})");
  EXPECT_EQ(codec.decode(cont.prompts[0].tokens, false), "<bos>user: hi\nassistant: Sure,");
  EXPECT_EQ(error_param(R"({"messages":[{"role":"user","content":"hi"}],"continue_final_message":true})", true),
            "continue_final_message");  // add_generation_prompt defaults to true: both set (vLLM: 400)
}

TEST_F(ProtocolTest, VllmParameterRejections) {
  EXPECT_EQ(error_param(R"({"prompt":"x","max_tokens":-1})"), "max_tokens");
  EXPECT_EQ(error_param(R"({"messages":[{"role":"user","content":"x"}],"max_completion_tokens":-1})", true),
            "max_completion_tokens");
  EXPECT_EQ(error_param(R"({"messages":[{"role":"user","content":"x"}],"max_tokens":-1})", true), "max_tokens");
  EXPECT_EQ(error_param(R"({"prompt":"x","best_of":2})"), "best_of");
  EXPECT_EQ(error_param(R"({"prompt":"x","best_of":1,"n":2})"), "best_of");
  EXPECT_EQ(error_param(R"({"prompt":"x","best_of":2,"n":2,"max_tokens":2})"), "");
  EXPECT_EQ(error_param(R"({"prompt":"x","use_beam_search":true})"), "use_beam_search");
  EXPECT_EQ(error_param(R"({"prompt":"x","repetition_penalty":0})"), "repetition_penalty");
  EXPECT_EQ(error_param(R"({"prompt":"x","repetition_penalty":-1})"), "repetition_penalty");
  EXPECT_EQ(error_param(R"({"prompt":"x","logit_bias":{"abc":1}})"), "logit_bias");
  EXPECT_EQ(error_param(R"({"prompt":"x","logit_bias":{"99999":1}})"), "logit_bias");
  EXPECT_EQ(error_param(R"({"prompt":"x","logit_bias":{"5":"high"}})"), "logit_bias");
  EXPECT_EQ(error_param(R"({"prompt":"x","logit_bias":[1]})"), "logit_bias");
  EXPECT_EQ(error_param(R"({"prompt":"x","min_tokens":-1})"), "min_tokens");
  EXPECT_EQ(error_param(R"({"prompt":"x","min_tokens":5,"max_tokens":4})"), "min_tokens");
  EXPECT_EQ(error_param(R"({"prompt":"x","prompt_logprobs":21})"), "prompt_logprobs");
  EXPECT_EQ(error_param(R"({"prompt":"x","prompt_logprobs":-1})"), "prompt_logprobs");
  EXPECT_EQ(error_param(R"({"prompt":"x","prompt_logprobs":1,"stream":true})"), "prompt_logprobs");
  EXPECT_EQ(error_param(R"({"prompt":"x","truncate_prompt_tokens":0})"), "truncate_prompt_tokens");
  EXPECT_EQ(error_param(R"({"prompt":"x","truncate_prompt_tokens":65})"), "truncate_prompt_tokens");
  EXPECT_EQ(error_param(R"({"prompt":"x","allowed_token_ids":[]})"), "allowed_token_ids");
  EXPECT_EQ(error_param(R"({"prompt":"x","suffix":"end"})"), "suffix");
  EXPECT_EQ(error_param(R"({"prompt":"x","suffix":null,"max_tokens":2})"), "");
  EXPECT_EQ(error_param(R"({"prompt":"x","bad_words":["a"]})"), "bad_words");
  EXPECT_EQ(error_param(R"({"prompt":"x","spaces_between_special_tokens":false})"), "spaces_between_special_tokens");
  EXPECT_EQ(error_param(R"({"prompt":"x","priority":1})"), "priority");
  EXPECT_EQ(error_param(R"({"messages":[{"role":"user","content":"x"}],"echo":true})", true), "echo");
  EXPECT_EQ(error_param(R"({"messages":[{"role":"user","content":"x"}],"chat_template":"{{x}}"})", true),
            "chat_template");
  EXPECT_EQ(error_param(R"({"prompt":[1,2,3],"max_tokens":2,)"
                        R"("x":0})"), "");
  std::string many = R"({"prompt":[)";
  for (int i = 0; i < 65; ++i) many += std::string(i ? "," : "") + "\"a\"";
  EXPECT_EQ(error_param(many + "]}"), "prompt");
}

// Structured outputs: every spelling vLLM accepts (response_format, structured_outputs, the older
// guided_*) compiles to a grammar attached to the engine request; malformed or unsupported ones are a
// 400 naming the field.
TEST_F(ProtocolTest, StructuredOutputSpellingsAttachAGrammar) {
  auto message = [&](const std::string& body, bool is_chat) {
    try {
      is_chat ? chat(body) : completion(body);
    } catch (const ApiError& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  // Whether `text` (plus the stop token) is what the request's grammar accepts whole.
  auto accepts = [&](const ParsedRequest& r, const std::string& text) {
    grammar::GrammarMatcher m(*r.engine_request(0).sampling.grammar);
    for (unsigned char c : text)
      if (!m.accept_token(ByteCodec::id_of(c))) return false;
    return m.accept_token(ByteCodec::kEos);
  };
  const std::string chat_head = R"({"messages":[{"role":"user","content":"x"}],"max_tokens":2,)";
  const std::string completion_head = R"({"prompt":"x","max_tokens":2,)";
  for (const bool is_chat : {false, true}) {
    SCOPED_TRACE(is_chat ? "chat" : "completions");
    const std::string head = is_chat ? chat_head : completion_head;
    auto parse = [&](const std::string& field) { return is_chat ? chat(head + field + "}") : completion(head + field + "}"); };
    struct Case {
      std::string field, good, bad;
    };
    const Case cases[] = {
        {R"("response_format":{"type":"json_object"})", R"({"a": [1, {}]})", "[1]"},
        {R"("response_format":{"type":"json_schema","json_schema":{"name":"x","strict":true,"schema":{"type":"object","properties":{"n":{"type":"integer"}},"required":["n"],"additionalProperties":false}}})",
         R"({"n": 12})", R"({"n": "12"})"},
        {R"("structured_outputs":{"json":{"enum":["yes","no"]}})", R"("yes")", R"("maybe")"},
        {R"("structured_outputs":{"json":"{\"type\":\"boolean\"}"})", "true", "1"},
        {R"("structured_outputs":{"json":{"type":"object"},"disable_any_whitespace":true})", R"({"a":1})", R"({"a": 1})"},
        {R"("structured_outputs":{"json":{"type":"object","properties":{"a":{"type":"integer"}}},"disable_additional_properties":true})",
         R"({"a": 1})", R"({"a": 1, "b": 2})"},
        {R"("structured_outputs":{"regex":"[a-c]+\\d"})", "abca7", "abcd7"},
        {R"("structured_outputs":{"choice":["red","green"]})", "green", "blue"},
        {R"("structured_outputs":{"grammar":"root ::= \"x\" [0-9]*"})", "x42", "y42"},
        {R"("structured_outputs":{"json_object":true})", "{}", "[]"},
        {R"("guided_json":{"type":"array","items":{"type":"null"},"maxItems":1})", "[null]", "[null, null]"},
        {R"("guided_regex":"(ab)+")", "abab", "aba"},
        {R"("guided_choice":["a b","c"])", "a b", "a"},
        {R"("guided_grammar":"root ::= [xy]+","guided_decoding_backend":"xgrammar")", "xyx", "xyz"},
    };
    for (const auto& c : cases) {
      const ParsedRequest r = parse(c.field);
      ASSERT_TRUE(r.sampling.grammar.has_value()) << c.field;
      EXPECT_EQ(r.sampling.grammar_after_token, -1) << c.field;
      EXPECT_TRUE(accepts(r, c.good)) << c.field << " " << c.good;
      EXPECT_FALSE(accepts(r, c.bad)) << c.field << " " << c.bad;
    }
    // Bad constraints: 400 naming the field.
    const std::pair<std::string, std::string> bad[] = {
        {R"("response_format":"json")", "response_format"},
        {R"("response_format":{"type":"xml"})", "response_format"},
        {R"("response_format":{"type":"structural_tag"})", "response_format"},
        {R"("response_format":{"type":"json_schema"})", "response_format"},
        {R"("response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{"type":"object","uniqueItems":true}}})",
         "response_format"},
        {R"("structured_outputs":{"json":{"type":"strnig"}})", "structured_outputs.json"},
        {R"("structured_outputs":{"json":"{not json"})", "structured_outputs.json"},
        {R"("structured_outputs":{"regex":"(a"})", "structured_outputs.regex"},
        {R"("structured_outputs":{"regex":"a","choice":["a"]})", "structured_outputs"},
        {R"("structured_outputs":{"choice":[]})", "structured_outputs.choice"},
        {R"("structured_outputs":{"grammar":"root ::= undefined_rule"})", "structured_outputs.grammar"},
        {R"("structured_outputs":{"whitespace_pattern":" "})", "structured_outputs"},
        {R"("structured_outputs":{"structural_tag":"{}"})", "structured_outputs"},
        {R"("structured_outputs":{"jsn":{}})", "structured_outputs"},
        {R"("structured_outputs":"json")", "structured_outputs"},
        {R"("guided_json":{"type":"object","allOf":[]})", "guided_json"},
        {R"("guided_regex":"a\\1")", "guided_regex"},
        {R"("guided_choice":"a")", "guided_choice"},
        {R"("guided_grammar":"rot ::= \"a\"")", "guided_grammar"},
        {R"("guided_whitespace_pattern":" ")", "guided_whitespace_pattern"},
        {R"("guided_regex":"a","guided_choice":["a"])", "guided_choice"},
        {R"("response_format":{"type":"json_object"},"guided_regex":"a")", "guided_regex"},
        {R"("guided_regex":"a","min_tokens":1)", "min_tokens"},
        {R"("guided_regex":"a","allowed_token_ids":[5])", "allowed_token_ids"},
    };
    for (const auto& [field, param] : bad) EXPECT_EQ(error_param(head + field + "}", is_chat), param) << field;
    EXPECT_NE(message(head + R"("guided_json":{"type":"object","allOf":[]}})", is_chat).find("allOf"), std::string::npos);
    // No constraint.
    for (const std::string field : {R"("response_format":{"type":"text"})", R"("response_format":{})",
                                    R"("response_format":null)", R"("structured_outputs":null)", R"("guided_json":null)",
                                    R"("structured_outputs":{})"})
      EXPECT_FALSE(parse(field).sampling.grammar.has_value()) << field;
  }
  // Compiled once per distinct constraint.
  const size_t before = codec.grammar_compiler()->cached();
  completion(completion_head + R"("guided_regex":"zz+q"})");
  completion(completion_head + R"("guided_regex":"zz+q"})");
  EXPECT_EQ(codec.grammar_compiler()->cached(), before + 1);
}

// With a reasoning parser the grammar applies after the reasoning (vLLM): from <channel|> on,
// unless the prompt already closed the channel (thinking off).
TEST_F(ProtocolTest, StructuredOutputsStartAfterTheReasoning) {
  limits.reasoning_parser = "gemma4";
  const std::string body = R"({"messages":[{"role":"user","content":"x"}],"max_tokens":2,"guided_choice":["a"])";
  ParsedRequest thinking = chat(body + "}");
  EXPECT_EQ(thinking.sampling.grammar_after_token, ByteCodec::kClose);
  // The fake template renders "(thinking)" only; a prompt whose model turn closes the channel:
  ParsedRequest closed = chat(R"({"messages":[{"role":"user","content":"<|turn>model\n<|channel>thought\n<channel|>"}],)"
                              R"("add_generation_prompt":false,"max_tokens":2,"guided_choice":["a"]})");
  EXPECT_EQ(closed.sampling.grammar_after_token, -1);
  // tool_choice "required" / named too.
  ParsedRequest tools = chat(R"({"messages":[{"role":"user","content":"x"}],"max_tokens":2,"tool_choice":"required",)"
                             R"("tools":[{"type":"function","function":{"name":"f"}}]})");
  EXPECT_EQ(tools.sampling.grammar_after_token, ByteCodec::kClose);
  limits.reasoning_parser.clear();
  EXPECT_EQ(chat(body + "}").sampling.grammar_after_token, -1);
}

TEST_F(ProtocolTest, DeepNestingIsABadRequestAtTheParse) {
  // 100000 levels under an unknown key: parsed, then copied, such a body overflowed the stack and took
  // the server down. It is refused while parsing; nesting up to the limit still parses.
  const std::string deep = R"({"prompt":"x","foo":)" + std::string(100000, '[') + std::string(100000, ']') + "}";
  const std::string error = body_error(deep);
  EXPECT_NE(error.find("nesting deeper than 512 levels"), std::string::npos) << error;
  const std::string at_limit = R"({"prompt":"x","foo":)" + std::string(511, '[') + "1" + std::string(511, ']') + "}";
  EXPECT_NO_THROW(parse_body(at_limit));
  EXPECT_THROW(parse_body(R"({"prompt":"x","foo":)" + std::string(512, '[') + std::string(512, ']') + "}"), ApiError);
}

TEST_F(ProtocolTest, NulByteIsABadRequest) {
  // nlohmann ends the input at a NUL: the garbage after it was never read and the body accepted.
  for (const std::string& body : {std::string("{\"prompt\":\"x\"}\0garbage", 22), std::string("{\"prompt\":\"x\"}\0", 15)}) {
    const std::string error = body_error(body);
    EXPECT_NE(error.find("NUL byte at byte 15"), std::string::npos) << error;
  }
  EXPECT_NO_THROW(parse_body(R"({"prompt":"x\u0000"})"));  // escaped inside a string, as JSON allows
}

TEST_F(ProtocolTest, NumberOverflowIsABadRequest) {
  EXPECT_NE(body_error(R"({"prompt":"x","foo":1e400})"), "");
}

}  // namespace
}  // namespace tandem::server
