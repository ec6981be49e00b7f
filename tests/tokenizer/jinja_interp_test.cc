// Jinja-subset interpreter: Python value semantics and language details that the golden
// renders (chat_template_test.cc) do not pin down one by one.
#include <gtest/gtest.h>

#include "tokenizer/chat_template.h"
#include "tokenizer/jinja_value.h"

namespace tandem {
namespace {

using ojson = nlohmann::ordered_json;
using jinja::Value;

std::string R(const std::string& src, const ojson& vars = ojson::object()) {
  return ChatTemplate::parse(src).render(vars);
}

TEST(JinjaValue, PythonFloatRepr) {
  EXPECT_EQ(jinja::format_float(1.0), "1.0");
  EXPECT_EQ(jinja::format_float(0.1), "0.1");
  EXPECT_EQ(jinja::format_float(-2.5), "-2.5");
  EXPECT_EQ(jinja::format_float(1e16), "1e+16");
  EXPECT_EQ(jinja::format_float(1e15), "1000000000000000.0");
  EXPECT_EQ(jinja::format_float(0.0001), "0.0001");
  EXPECT_EQ(jinja::format_float(0.00001), "1e-05");
  EXPECT_EQ(jinja::format_float(1.5e-7), "1.5e-07");
  EXPECT_EQ(jinja::format_float(123456789.125), "123456789.125");
  EXPECT_EQ(jinja::format_float(1.0 / 3), "0.3333333333333333");
  EXPECT_EQ(jinja::format_float(-0.0), "-0.0");
  EXPECT_EQ(jinja::format_float(1e300), "1e+300");
}

TEST(JinjaValue, ReprAndStr) {
  Value d = jinja::from_json(ojson::parse(R"({"a":[1,"x",null,true,2.0],"q":"it's"})"));
  EXPECT_EQ(jinja::repr(d), R"({'a': [1, 'x', None, True, 2.0], 'q': "it's"})");
  EXPECT_EQ(jinja::to_str(Value::string("s")), "s");
  EXPECT_EQ(jinja::repr(Value::string("a\nb\\")), R"('a\nb\\')");
  EXPECT_EQ(jinja::repr(Value::make_list({Value::integer(1)}, true)), "(1,)");
}

TEST(JinjaValue, JsonDumpsMatchesPython) {
  Value v = jinja::from_json(ojson::parse(R"({"b":[1,2.5,null],"a":{"x":"é\n\u0001"}})"));
  jinja::JsonOptions o;
  EXPECT_EQ(jinja::to_json(v, o), R"({"b": [1, 2.5, null], "a": {"x": "é\n\u0001"}})");
  o.indent = "  ";
  o.item_sep = ",";
  EXPECT_EQ(jinja::to_json(v, o), "{\n  \"b\": [\n    1,\n    2.5,\n    null\n  ],\n  \"a\": {\n    \"x\": \"é\\n\\u0001\"\n  }\n}");
  jinja::JsonOptions ascii;
  ascii.ensure_ascii = true;
  EXPECT_EQ(jinja::to_json(Value::string("é😀"), ascii), R"("\u00e9\ud83d\ude00")");
}

TEST(JinjaValue, PythonEquality) {
  EXPECT_TRUE(jinja::equals(Value::integer(1), Value::floating(1.0)));
  EXPECT_TRUE(jinja::equals(Value::boolean(true), Value::integer(1)));
  EXPECT_FALSE(jinja::equals(Value::string("1"), Value::integer(1)));
  Value a = jinja::from_json(ojson::parse(R"({"x":1,"y":2})"));
  Value b = jinja::from_json(ojson::parse(R"({"y":2,"x":1})"));
  EXPECT_TRUE(jinja::equals(a, b));  // dict equality ignores order
}

TEST(JinjaLexer, WhitespaceControl) {
  EXPECT_EQ(R("a\n  {% if true %}\n    b\n  {% endif %}\nc\n"), "a\n    b\nc");
  EXPECT_EQ(R("  {%- if true -%}  x  {%- endif -%}  "), "x");
  EXPECT_EQ(R("x\n  {{ 'y' }}\n"), "x\n  y");   // lstrip/trim do not apply to {{ }}
  EXPECT_EQ(R("a {# c #}\nb"), "a b");           // comments trim the newline
  EXPECT_EQ(R("a\n{%+ if true %}b{% endif %}"), "a\nb");
  EXPECT_EQ(R("one\r\n{% if true %}\r\ntwo\r\n{% endif %}"), "one\ntwo\n");
  EXPECT_EQ(R("{% raw %}{{ x }}{% endraw %}"), "{{ x }}");
  EXPECT_EQ(R("{{ {'a': {'b': 1}}['a']['b']}}"), "1");  // '}}' inside braces is not the tag end
}

TEST(JinjaParser, OperatorPrecedence) {
  EXPECT_EQ(R("{{ 1 + 2 * 3 }}"), "7");
  EXPECT_EQ(R("{{ 2 ** 3 ** 2 }}"), "64");  // Jinja's ** is left-associative
  EXPECT_EQ(R("{{ -2 ** 2 }}"), "4");
  EXPECT_EQ(R("{{ 'a' ~ 2 * 3 }}"), "a6");
  EXPECT_THROW(R("{{ 'a' ~ 1 + 2 }}"), Error);  // ~ binds tighter than +, as in Jinja
  EXPECT_EQ(R("{{ not 1 == 2 }}"), "True");
  EXPECT_EQ(R("{{ 'x' + 'y' | upper }}"), "xY");
  EXPECT_EQ(R("{{ 1 if false else 2 if true else 3 }}"), "2");
  EXPECT_EQ(R("{{ [1, 2][-1] }}{{ (1, 2)[0] }}{{ {'k': 'v'}.k }}"), "21v");
}

TEST(JinjaEval, UndefinedSemantics) {
  EXPECT_EQ(R("[{{ x }}][{{ x | default('d') }}][{{ x is defined }}][{{ x | length }}]"), "[][d][False][0]");
  EXPECT_EQ(R("{{ d.missing is defined }}", {{"d", ojson::object()}}), "False");
  EXPECT_EQ(R("{{ n.attr is defined }}", {{"n", nullptr}}), "False");  // None.attr is undefined
  EXPECT_THROW(R("{{ x.y }}"), Error);                                  // undefined.attr fails
  EXPECT_THROW(R("{{ x + 1 }}"), Error);
  EXPECT_EQ(R("{% for a in x %}a{% else %}empty{% endfor %}"), "empty");
}

TEST(JinjaEval, ScopingLikeJinja) {
  EXPECT_EQ(R("{% set x = 1 %}{% for i in [1,2] %}{% set x = 5 %}{% endfor %}{{ x }}"), "1");
  EXPECT_EQ(R("{% set x = 1 %}{% if true %}{% set x = 5 %}{% endif %}{{ x }}"), "5");
  EXPECT_EQ(R("{% set ns = namespace(x=1) %}{% for i in [1,2] %}{% set ns.x = ns.x + i %}{% endfor %}{{ ns.x }}"), "4");
  EXPECT_EQ(R("{% macro m() %}{% set y = 2 %}{{ y }}{% endmacro %}{% set y = 1 %}{{ m() }}{{ y }}"), "21");
}

TEST(JinjaEval, LoopControls) {
  EXPECT_EQ(R("{% for i in range(6) %}{% if i is odd %}{% continue %}{% endif %}{% if i > 3 %}{% break %}{% endif %}{{ i }}{% endfor %}"), "02");
  EXPECT_EQ(R("{% for k, v in {'b': 1, 'a': 2} | dictsort %}{{ k }}{{ v }}{{ loop.last }}{% endfor %}"), "a2Falseb1True");
  EXPECT_THROW(ChatTemplate::parse("{% break %}"), Error);
}

TEST(JinjaEval, StringsAreCodePoints) {
  EXPECT_EQ(R("{{ s | length }} {{ s[0] }} {{ s[-1] }} {{ s[1:3] }} {{ s | reverse }}", {{"s", "é😀ab"}}), "4 é b 😀a ba😀é");
}

TEST(JinjaEval, StringMethods) {
  EXPECT_EQ(R("{{ 'a<x>b<x>c'.split('<x>') | join('|') }}"), "a|b|c");
  EXPECT_EQ(R("{{ '\n\nhi\n'.strip('\n') }}|{{ ' x '.lstrip() }}|"), "hi|x |");
  EXPECT_EQ(R("{{ 'abc'.startswith('a') and 'abc'.endswith('bc') }}"), "True");
  EXPECT_EQ(R("{{ 'Hello'.replace('l', 'L') }}"), "HeLLo");
}

TEST(JinjaEval, ArithmeticErrorsAreErrorsNotCrashes) {
  EXPECT_THROW(R("{{ 1 / 0 }}"), Error);
  EXPECT_THROW(R("{{ 1 // 0 }}"), Error);
  EXPECT_THROW(R("{{ 9223372036854775807 + 1 }}"), Error);
  EXPECT_THROW(R("{{ 2 ** 64 }}"), Error);
  EXPECT_THROW(R("{{ 'a' < 1 }}"), Error);
  EXPECT_THROW(R("{{ [][::0] }}"), Error);
  EXPECT_EQ(R("{{ -7 // 2 }} {{ -7 % 3 }} {{ 7 % -3 }} {{ -7.5 // 2 }} {{ 5.5 % 2 }}"), "-4 2 -2 -4.0 1.5");
}

TEST(JinjaEval, GenerationTagIsNoOp) {
  EXPECT_EQ(R("{% generation %}abc{% endgeneration %}"), "abc");
}

TEST(JinjaEval, TojsonMatchesTransformers) {
  ojson v = ojson::parse(R"({"t":{"name":"f","parameters":{"z":1,"a":[true,null,1.0]}}})");
  EXPECT_EQ(R("{{ t | tojson }}", v), R"({"name": "f", "parameters": {"z": 1, "a": [true, null, 1.0]}})");
  EXPECT_EQ(R("{{ '<é>' | tojson }}"), "\"<é>\"");  // no HTML escaping, no ASCII escaping
}

}  // namespace
}  // namespace tandem
