// Front ends on crafted strings: regex, choice, EBNF, JSON Schema.
#include <gtest/gtest.h>

#include "helpers.h"
#include "util/error.h"

namespace tandem::grammar {
namespace {

using namespace testing;

CompiledGrammar re(const std::string& p) { return compile_regex(p, byte_vocab()); }
CompiledGrammar ebnf(const std::string& t) { return compile_ebnf(t, byte_vocab()); }
CompiledGrammar schema(const std::string& s, bool compact = false) {
  JsonSchemaOptions o;
  o.compact = compact;
  return compile_json_schema(s, byte_vocab(), o);
}
std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Regex, LiteralsClassesQuantifiers) {
  auto g = re("ab[c-e]+x?y{2,3}");
  EXPECT_TRUE(full_match(g, "abcyy"));
  EXPECT_TRUE(full_match(g, "abedcxyyy"));
  EXPECT_FALSE(full_match(g, "abyy"));
  EXPECT_FALSE(full_match(g, "abcy"));
  EXPECT_FALSE(full_match(g, "abcyyyy"));
  EXPECT_TRUE(prefix_ok(g, "abc"));
  EXPECT_FALSE(prefix_ok(g, "abz"));
}

TEST(Regex, AlternationGroupsAnchorsEscapes) {
  auto g = re(R"(^(cat|dog)(?:s|\.)\d{1,2}\t\x41\u00e9$)");
  EXPECT_TRUE(full_match(g, "cats7\tA\xC3\xA9"));
  EXPECT_TRUE(full_match(g, "dog.42\tA\xC3\xA9"));
  EXPECT_FALSE(full_match(g, "cow.42\tA\xC3\xA9"));
  EXPECT_FALSE(full_match(g, "dogs123\tA\xC3\xA9"));
  auto w = re(R"(\w+\s\S)");
  EXPECT_TRUE(full_match(w, "a_9 x"));
  EXPECT_FALSE(full_match(w, "a_9  "));
}

TEST(Regex, UnicodeClassesAndDot) {
  auto g = re("[α-ω]+.[^a-z]");
  EXPECT_TRUE(full_match(g, "αβγ!日"));
  EXPECT_TRUE(full_match(g, "ω€Z"));
  EXPECT_FALSE(full_match(g, "αβ\nZ"));  // . excludes \n
  EXPECT_FALSE(full_match(g, "αβ!a"));
  EXPECT_FALSE(prefix_ok(g, "\xCE"  "\x80"));  // U+0380 is below α
  // A multi-byte class only accepts valid UTF-8.
  auto any = re(".");
  EXPECT_TRUE(full_match(any, "\xF0\x9F\x98\x80"));
  EXPECT_FALSE(prefix_ok(any, "\xC0"));
  EXPECT_FALSE(prefix_ok(any, "\xED\xA0"));  // surrogate
}

TEST(Regex, CountedRepetitionAndEmpty) {
  auto g = re("(ab){2}c{0,2}d{3,}");
  EXPECT_TRUE(full_match(g, "ababddd"));
  EXPECT_TRUE(full_match(g, "ababccdddd"));
  EXPECT_FALSE(full_match(g, "abccddd"));
  EXPECT_FALSE(full_match(g, "ababcccddd"));
  auto e = re("a|");
  EXPECT_TRUE(full_match(e, ""));
  EXPECT_TRUE(full_match(e, "a"));
}

TEST(Regex, UnsupportedIsAClearError) {
  EXPECT_NE(error_of([] { re("(a)\\1"); }).find("backreference"), std::string::npos);
  EXPECT_NE(error_of([] { re("a(?=b)"); }).find("lookaround"), std::string::npos);
  EXPECT_NE(error_of([] { re("\\bword"); }).find("word boundaries"), std::string::npos);
  EXPECT_NE(error_of([] { re("a)"); }).find("unbalanced"), std::string::npos);
  EXPECT_NE(error_of([] { re("*a"); }).find("nothing to repeat"), std::string::npos);
}

TEST(Choice, ExactlyOneOf) {
  std::vector<std::string> c{"yes", "no", "maybe so"};
  auto g = compile_choice(c, byte_vocab());
  EXPECT_TRUE(full_match(g, "yes"));
  EXPECT_TRUE(full_match(g, "maybe so"));
  EXPECT_FALSE(full_match(g, "ye"));
  EXPECT_FALSE(full_match(g, "yess"));
  EXPECT_FALSE(full_match(g, "maybe"));
}

TEST(Ebnf, ArithmeticWithCommentsAndRepetition) {
  auto g = ebnf(R"G(
    # expressions
    root   ::= expr
    expr   ::= term (("+" | "-") term)*
    term   ::= factor ("*" factor)*
    factor ::= num | "(" expr ")"
    num    ::= [0-9]+ ("." [0-9]{1,3})?
  )G");
  EXPECT_TRUE(full_match(g, "1+2*(3-4.5)"));
  EXPECT_TRUE(full_match(g, "((7))"));
  EXPECT_FALSE(full_match(g, "1+"));
  EXPECT_FALSE(full_match(g, "(1"));
  EXPECT_FALSE(full_match(g, "1.2345"));
  EXPECT_TRUE(prefix_ok(g, "(1+"));
}

TEST(Ebnf, LiteralsClassesEscapes) {
  auto g = ebnf("root ::= 'a' \"\\n\" [^\\n\"]{2} \"\\u00e9\" [\\x41-\\x43] .?\n");
  EXPECT_TRUE(full_match(g, "a\nxyéB"));
  EXPECT_TRUE(full_match(g, "a\n!!éC日"));
  EXPECT_FALSE(full_match(g, "a\n\"xéB"));
  EXPECT_FALSE(full_match(g, "a\nxyéD"));
}

TEST(Ebnf, Errors) {
  EXPECT_NE(error_of([] { ebnf("root ::= a"); }).find("'a' is used but never defined"), std::string::npos);
  EXPECT_NE(error_of([] { ebnf("start ::= \"x\""); }).find("no rule named 'root'"), std::string::npos);
  EXPECT_NE(error_of([] { ebnf("root ::= root \"x\" | \"y\""); }).find("left-recursive"), std::string::npos);
  EXPECT_NE(error_of([] { ebnf("root ::= \"x"); }).find("unterminated"), std::string::npos);
  EXPECT_NE(error_of([] { ebnf("root ::= a\na ::= b\nb ::= a"); }).find("matches no string"), std::string::npos);
}

TEST(JsonSchema, ObjectRequiredOptionalOrder) {
  auto g = schema(R"({"type":"object","properties":{"name":{"type":"string"},"age":{"type":"integer"},
                      "tags":{"type":"array","items":{"type":"string"}}},"required":["name"],
                      "additionalProperties":false})");
  EXPECT_TRUE(full_match(g, R"({"name":"bo"})"));
  EXPECT_TRUE(full_match(g, R"({"name":"bo","age":-3})"));
  EXPECT_TRUE(full_match(g, R"({ "name" : "bo" ,
      "tags": [ "a" , "b" ] })"));
  EXPECT_TRUE(full_match(g, R"({"name":"b\"o\\\u00e9\n","age":0,"tags":[]})"));
  EXPECT_FALSE(full_match(g, R"({"age":3})"));             // name required
  EXPECT_FALSE(full_match(g, R"({"age":3,"name":"x"})"));  // schema order
  EXPECT_FALSE(full_match(g, R"({"name":"x","extra":1})"));
  EXPECT_FALSE(full_match(g, R"({"name":"x","age":01})"));
  EXPECT_FALSE(full_match(g, R"({"name":"x","age":1.5})"));
  EXPECT_FALSE(full_match(g, "{\"name\":\"a\nb\"}"));  // raw control character
  EXPECT_FALSE(full_match(g, R"({"name":"\ud800"})"));  // lone surrogate escape
  EXPECT_FALSE(full_match(g, R"( {"name":"x"})"));       // no whitespace around the root
}

TEST(JsonSchema, AdditionalPropertiesAllowedByDefault) {
  auto g = schema(R"({"type":"object","properties":{"a":{"type":"integer"}}})");
  EXPECT_TRUE(full_match(g, R"({})"));
  EXPECT_TRUE(full_match(g, R"({"a":1,"b":[true,null,{"c":"d"}]})"));
  EXPECT_TRUE(full_match(g, R"({"ab":"x","zz":2.5e-3})"));
  EXPECT_FALSE(full_match(g, R"({"a":1,"a":"x"})"));  // an extra key is never a declared one
  EXPECT_FALSE(full_match(g, R"({"b":1,"a":2})"));    // declared properties come first
  auto typed = schema(R"({"type":"object","additionalProperties":{"type":"boolean"}})");
  EXPECT_TRUE(full_match(typed, R"({"x":true,"y":false})"));
  EXPECT_FALSE(full_match(typed, R"({"x":1})"));
}

TEST(JsonSchema, EnumConstTypesAnyOf) {
  auto g = schema(R"({"type":"object","properties":{
      "u":{"enum":["C","F",null,3]},"k":{"const":{"x":[1]}},"t":{"type":["string","null"]},
      "n":{"anyOf":[{"type":"number"},{"type":"boolean"}]},"o":{"oneOf":[{"type":"null"},{"type":"integer"}]}},
      "required":["u","k","t","n","o"],"additionalProperties":false})");
  EXPECT_TRUE(full_match(g, R"({"u":"C","k":{"x":[1]},"t":null,"n":1.5E+2,"o":7})"));
  EXPECT_TRUE(full_match(g, R"({"u":3,"k":{"x":[1]},"t":"s","n":true,"o":null})"));
  EXPECT_FALSE(full_match(g, R"({"u":"c","k":{"x":[1]},"t":null,"n":1,"o":7})"));
  EXPECT_FALSE(full_match(g, R"({"u":"C","k":{"x":[2]},"t":null,"n":1,"o":7})"));
  EXPECT_FALSE(full_match(g, R"({"u":"C","k":{"x":[1]},"t":1,"n":1,"o":7})"));
  EXPECT_FALSE(full_match(g, R"({"u":"C","k":{"x":[1]},"t":null,"n":"1","o":7})"));
}

TEST(JsonSchema, ArraysMinMaxItems) {
  auto g = schema(R"({"type":"array","items":{"type":"integer"},"minItems":2,"maxItems":3})");
  EXPECT_FALSE(full_match(g, "[1]"));
  EXPECT_TRUE(full_match(g, "[1,2]"));
  EXPECT_TRUE(full_match(g, "[1, 2,\n3]"));
  EXPECT_FALSE(full_match(g, "[1,2,3,4]"));
  auto empty = schema(R"({"type":"array","maxItems":0})");
  EXPECT_TRUE(full_match(empty, "[]"));
  EXPECT_FALSE(full_match(empty, "[1]"));
}

TEST(JsonSchema, StringsLengthPatternFormat) {
  auto g = schema(R"({"type":"string","minLength":2,"maxLength":3})");
  EXPECT_FALSE(full_match(g, R"("a")"));
  EXPECT_TRUE(full_match(g, R"("ab")"));
  EXPECT_TRUE(full_match(g, R"("é\n日")"));  // code points, escapes count as one
  EXPECT_FALSE(full_match(g, R"("abcd")"));
  auto p = schema(R"({"type":"string","pattern":"^[a-z]+\"\\\\x$"})");
  EXPECT_TRUE(full_match(p, R"("ab\"\\x")"));  // pattern chars " and \ are escaped in JSON
  EXPECT_FALSE(full_match(p, R"("ab"\x")"));
  auto d = schema(R"({"type":"string","format":"date-time"})");
  EXPECT_TRUE(full_match(d, R"("2024-02-29T13:05:59.5+01:00")"));
  EXPECT_FALSE(full_match(d, R"("2024-13-29T13:05:59Z")"));
  auto u = schema(R"({"type":"string","format":"uuid"})");
  EXPECT_TRUE(full_match(u, R"("123e4567-e89b-12d3-a456-426614174000")"));
  auto e = schema(R"({"type":"string","format":"email"})");
  EXPECT_TRUE(full_match(e, R"("a.b+c@example.co.uk")"));
  EXPECT_FALSE(full_match(e, R"("a@b")"));
}

TEST(JsonSchema, RefsAndRecursion) {
  auto g = schema(R"({"$ref":"#/$defs/node","$defs":{"node":{"type":"object","properties":{
      "v":{"type":"integer"},"kids":{"type":"array","items":{"$ref":"#/$defs/node"}}},
      "required":["v"],"additionalProperties":false}}})");
  EXPECT_TRUE(full_match(g, R"({"v":1,"kids":[{"v":2},{"v":3,"kids":[{"v":4,"kids":[]}]}]})"));
  EXPECT_FALSE(full_match(g, R"({"v":1,"kids":[{"w":2}]})"));
  auto d = schema(R"({"type":"object","properties":{"p":{"$ref":"#/definitions/P"}},"required":["p"],
                      "additionalProperties":false,"definitions":{"P":{"type":"boolean"}}})");
  EXPECT_TRUE(full_match(d, R"({"p":false})"));
}

TEST(JsonSchema, CompactWhitespace) {
  auto g = schema(R"({"type":"object","properties":{"a":{"type":"array"}},"required":["a"]})", true);
  EXPECT_TRUE(full_match(g, R"({"a":[1,{"b":null}]})"));
  EXPECT_FALSE(full_match(g, R"({"a": [1]})"));
  EXPECT_FALSE(full_match(g, R"({ "a":[1]})"));
}

TEST(JsonSchema, AnyValueAndJsonObject) {
  auto any = schema("{}");
  EXPECT_TRUE(full_match(any, "[1,\"x\",{\"y\":[]}]"));
  EXPECT_TRUE(full_match(any, "-0.5e10"));
  auto obj = compile_json_object(byte_vocab());
  EXPECT_TRUE(full_match(obj, R"({"a":{"b":[1,2,{}]},"c":"d"})"));
  EXPECT_FALSE(full_match(obj, "[1]"));
  EXPECT_FALSE(full_match(obj, "\"x\""));
}

TEST(JsonSchema, UnsupportedKeywordsAreNamed) {
  EXPECT_NE(error_of([] { schema(R"({"type":"array","uniqueItems":true})"); }).find("'uniqueItems'"), std::string::npos);
  EXPECT_NE(error_of([] { schema(R"({"type":"object","properties":{"x":{"not":{}}}})"); }).find("'not' (at #/properties/x)"),
            std::string::npos);
  EXPECT_NE(error_of([] { schema(R"({"allOf":[{}]})"); }).find("'allOf'"), std::string::npos);
  EXPECT_NE(error_of([] { schema(R"({"type":"string","format":"hostname"})"); }).find("format 'hostname'"), std::string::npos);
  EXPECT_NE(error_of([] { schema(R"({"$ref":"#/$defs/missing"})"); }).find("does not resolve"), std::string::npos);
  EXPECT_NE(error_of([] { schema(R"({"type":"strin"})"); }).find("unknown type 'strin'"), std::string::npos);
  EXPECT_NE(error_of([] { schema("{"); }).find("not valid JSON"), std::string::npos);
  // Ignored: annotations and numeric bounds (documented as not enforced).
  auto g = schema(R"({"type":"integer","minimum":5,"description":"d","title":"t"})");
  EXPECT_TRUE(full_match(g, "3"));
}

// Gemma 4 tool calls: <|tool_call>call:NAME{args}<tool_call|>, the arguments in its template's
// syntax (bare sorted keys, strings between <|"|> with nothing escaped, no whitespace).
CompiledGrammar tool_calls(const std::string& tools_json, bool several) {
  std::vector<ToolCallSchema> tools;
  for (const auto& t : nlohmann::ordered_json::parse(tools_json)) tools.push_back({t["name"], t["parameters"]});
  return compile(grammar_gemma4_tool_calls(tools, several), byte_vocab());
}

TEST(Gemma4ToolCalls, ArgumentsFollowTheSchemaInTheTemplateSyntax) {
  const std::string tools = R"([
    {"name": "get_weather", "parameters": {"type": "object", "properties": {
       "unit": {"enum": ["C", "F"]}, "city": {"type": "string"}, "days": {"type": "integer"},
       "at": {"type": "object", "properties": {"lat": {"type": "number"}}, "required": ["lat"]},
       "tags": {"type": "array", "items": {"type": "string", "maxLength": 3}, "maxItems": 2},
       "odd key": {"type": "boolean"}, "note": {"type": ["string", "null"]}},
     "required": ["city"]}},
    {"name": "get_time", "parameters": {"type": "object", "properties": {}}}])";
  auto one = tool_calls(tools, false);
  const std::string q = "<|\"|>";
  EXPECT_TRUE(full_match(one, "<|tool_call>call:get_weather{city:" + q + "Paris" + q + "}<tool_call|>"));
  EXPECT_TRUE(full_match(one, "<|tool_call>call:get_time{}<tool_call|>"));
  // Sorted keys (the template's dictsort), each type in its spelling; a key with a space is quoted.
  EXPECT_TRUE(full_match(one, "<|tool_call>call:get_weather{at:{lat:-1.5},city:" + q + "a,b}\"{" + q + ",days:3," +
                                  "note:null," + q + "odd key" + q + ":true,tags:[" + q + "x>y" + q + "],unit:" + q + "C" + q +
                                  "}<tool_call|>"));
  EXPECT_FALSE(full_match(one, "<|tool_call>call:get_weather{days:3,city:" + q + "P" + q + "}<tool_call|>"));  // order
  EXPECT_FALSE(full_match(one, "<|tool_call>call:get_weather{days:3}<tool_call|>"));         // city required
  EXPECT_FALSE(full_match(one, "<|tool_call>call:get_weather{city:\"Paris\"}<tool_call|>"));  // JSON quotes
  EXPECT_FALSE(full_match(one, "<|tool_call>call:get_weather{city:" + q + "P" + q + ",unit:" + q + "K" + q + "}<tool_call|>"));
  EXPECT_FALSE(full_match(one, "<|tool_call>call:get_weather{city:" + q + "P" + q + ",tags:[" + q + "abcd" + q + "]}<tool_call|>"));
  EXPECT_FALSE(full_match(one, "<|tool_call>call:get_weather{city: " + q + "P" + q + "}<tool_call|>"));  // whitespace
  EXPECT_FALSE(full_match(one, "<|tool_call>call:get_time{}<tool_call|><|tool_call>call:get_time{}<tool_call|>"));
  // A string never contains the delimiter: the first <|"|> ends it.
  EXPECT_FALSE(full_match(one, "<|tool_call>call:get_weather{city:" + q + "a" + q + "b" + q + "}<tool_call|>"));
  EXPECT_TRUE(full_match(one, "<|tool_call>call:get_weather{city:" + q + "<|\"|<<|" + q + "}<tool_call|>"));
  auto several = tool_calls(tools, true);
  EXPECT_TRUE(full_match(several, "<|tool_call>call:get_time{}<tool_call|><|tool_call>call:get_time{}<tool_call|>"));
  EXPECT_FALSE(full_match(several, ""));
  EXPECT_FALSE(full_match(several, "<|tool_call>call:get_date{}<tool_call|>"));
}

TEST(Gemma4ToolCalls, ErrorsNameTheProblem) {
  EXPECT_NE(error_of([] { tool_calls(R"([{"name": "a b", "parameters": {"type": "object"}}])", false); }).find("a b"),
            std::string::npos);
  EXPECT_NE(error_of([] { tool_calls(R"([{"name": "f", "parameters": {"type": "array"}}])", false); }).find("object"),
            std::string::npos);
  EXPECT_NE(error_of([] { tool_calls(R"([{"name": "f", "parameters": {"type": "object", "properties":
                                        {"x": {"type": "string", "uniqueItems": true}}}}])", false); })
                .find("uniqueItems"),
            std::string::npos);
}

}  // namespace
}  // namespace tandem::grammar
