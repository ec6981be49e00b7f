// Chat templates: golden renders from transformers (tools/golden_templates.py) and API behaviour.
#include "tokenizer/chat_template.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

namespace tandem {
namespace {

namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;

fs::path source_dir() { return fs::path(TANDEM_SOURCE_DIR); }

std::string read_text(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// src rendered without variables.
std::string render(const std::string& src) { return ChatTemplate::parse(src).render(ojson::object()); }

// src rendered without variables under `limits` (the defaults if null), or the error it raised
// ("chat template line L, column C: ..."), so a test can compare the message and its position.
std::string render_or_error(const std::string& src, const ChatTemplateLimits* limits = nullptr) {
  try {
    auto tmpl = ChatTemplate::parse(src);
    if (limits) tmpl.set_limits(*limits);
    return "rendered: " + tmpl.render(ojson::object());
  } catch (const Error& e) {
    return e.what();
  }
}

// One golden file: every case rendered through render_chat must equal transformers' output
// exactly; error cases must throw with transformers' message.
void check_golden(const std::string& suite, size_t min_cases) {
  fs::path path = source_dir() / "tests/tokenizer/golden" / ("templates_" + suite + ".json");
  ASSERT_TRUE(fs::exists(path)) << path;
  ojson doc = ojson::parse(read_text(path));
  std::string renderer = doc.value("renderer", "");
  EXPECT_NE(renderer.find("transformers"), std::string::npos) << "goldens must come from transformers: " << renderer;
  std::optional<ChatTemplate> file_template;
  if (doc["template"].is_string())
    file_template = ChatTemplate::parse(read_text(source_dir() / "tests/tokenizer/templates" / doc["template"].get<std::string>()));
  size_t checked = 0;
  for (const auto& c : doc["cases"]) {
    std::string name = c["name"];
    SCOPED_TRACE(suite + "/" + name);
    std::optional<ChatTemplate> inline_template;
    if (c.contains("source")) {
      try {
        inline_template = ChatTemplate::parse(c["source"].get<std::string>());
      } catch (const Error& e) {
        ASSERT_TRUE(c.contains("error")) << "unexpected parse error: " << e.what();
        ++checked;
        continue;
      }
    }
    const ChatTemplate& tmpl = inline_template ? *inline_template : *file_template;
    if (c.contains("expected")) {
      std::string got;
      try {
        got = render_chat(tmpl, c["messages"], c["options"]);
      } catch (const Error& e) {
        ADD_FAILURE() << "render failed: " << e.what();
        continue;
      }
      EXPECT_EQ(got, c["expected"].get<std::string>());
    } else {
      std::string want = c["error"];
      try {
        std::string got = render_chat(tmpl, c["messages"], c["options"]);
        ADD_FAILURE() << "expected error '" << want << "', rendered: " << got;
      } catch (const ChatTemplateRaised& e) {
        EXPECT_EQ(std::string(e.what()), want);  // raise_exception messages pass through unchanged
      } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find(want), std::string::npos) << e.what();
        EXPECT_EQ(std::string(e.what()).rfind("chat template line ", 0), 0u) << e.what();
      }
    }
    ++checked;
  }
  EXPECT_GE(checked, min_cases);
}

TEST(ChatTemplateGolden, Gemma4) { check_golden("gemma4", 20); }
TEST(ChatTemplateGolden, Gemma3) { check_golden("gemma3", 20); }
TEST(ChatTemplateGolden, Llama3) { check_golden("llama3", 20); }
TEST(ChatTemplateGolden, Qwen3) { check_golden("qwen3", 20); }
TEST(ChatTemplateGolden, Mistral) { check_golden("mistral", 20); }
TEST(ChatTemplateGolden, Features) { check_golden("features", 60); }

TEST(ChatTemplate, RealGemma4TemplateFromSharedData) {
  fs::path p = "/work/shared/data/gemma4/chat_template.jinja";
  if (!fs::exists(p)) GTEST_SKIP() << "no shared Gemma 4 template";
  auto tmpl = ChatTemplate::parse(read_text(p));
  ojson messages = ojson::parse(R"([{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"}])");
  std::string out = render_chat(tmpl, messages, {{"add_generation_prompt", true}, {"bos_token", "<bos>"}});
  EXPECT_EQ(out,
            "<bos><|turn>system\nBe brief.<turn|>\n<|turn>user\nHi<turn|>\n<|turn>model\n"
            "<|channel>thought\n<channel|>");
}

TEST(ChatTemplate, OpenAIStyleListContentOnGemma4) {
  auto tmpl = ChatTemplate::parse(read_text(source_dir() / "tests/tokenizer/templates/gemma4.jinja"));
  ojson messages = ojson::parse(R"([{"role":"user","content":[{"type":"text","text":"What is this?"},
      {"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}},{"type":"image"}]}])");
  std::string out = render_chat(tmpl, messages, {{"add_generation_prompt", true}, {"bos_token", "<bos>"},
                                                {"enable_thinking", true}});
  EXPECT_EQ(out, "<bos><|turn>system\n<|think|><turn|>\n<|turn>user\nWhat is this?\n\n<|image|>\n\n<turn|>\n<|turn>model\n");
}

TEST(ChatTemplate, RenderTakesVariablesAsIs) {
  auto tmpl = ChatTemplate::parse("{{ tools is defined }}|{{ x }}");
  EXPECT_EQ(tmpl.render(nlohmann::json{{"x", 1}}), "False|1");
  EXPECT_EQ(tmpl.render(ojson{{"x", 1.0}}), "False|1.0");
  // render_chat adds what transformers adds: tools/documents None, add_generation_prompt False.
  EXPECT_EQ(render_chat(tmpl, ojson::array(), {{"x", "y"}}), "True|y");
}

TEST(ChatTemplate, OrderedJsonKeepsKeyOrderPlainJsonSorts) {
  auto tmpl = ChatTemplate::parse("{% for k in d %}{{ k }}{% endfor %}");
  ojson o = ojson::parse(R"({"d":{"b":1,"a":2}})");
  EXPECT_EQ(tmpl.render(o), "ba");
  EXPECT_EQ(tmpl.render(nlohmann::json::parse(R"({"d":{"b":1,"a":2}})")), "ab");
}

TEST(ChatTemplate, SyntaxErrorHasLineAndColumn) {
  try {
    ChatTemplate::parse("line one\n{% if x %}\n  {{ x | }}\n{% endif %}");
    FAIL() << "expected a syntax error";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()).rfind("chat template line 3, column ", 0), 0u) << e.what();
  }
  try {
    ChatTemplate::parse("{% for x in y %}no end");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("endfor"), std::string::npos) << e.what();
  }
  try {
    ChatTemplate::parse("{% frobnicate %}");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "chat template line 1, column 4: unknown tag 'frobnicate'");
  }
}

TEST(ChatTemplate, RuntimeErrorHasLineAndColumn) {
  auto tmpl = ChatTemplate::parse("ok\n\n  {{ 'a' | foo }}");
  try {
    tmpl.render(ojson::object());
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "chat template line 3, column 12: unknown filter 'foo'");
  }
}

TEST(ChatTemplate, RaiseExceptionPassesThrough) {
  auto tmpl = ChatTemplate::parse("{{ raise_exception('Roles must alternate') }}");
  try {
    tmpl.render(ojson::object());
    FAIL();
  } catch (const ChatTemplateRaised& e) {
    EXPECT_STREQ(e.what(), "Roles must alternate");
  }
}

TEST(ChatTemplate, LimitsGiveClearErrors) {
  auto expect_error = [](const std::string& src, const std::string& needle, ChatTemplateLimits lim = {}) {
    auto tmpl = ChatTemplate::parse(src);
    tmpl.set_limits(lim);
    try {
      tmpl.render(ojson::object());
      ADD_FAILURE() << "no error for " << src;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  ChatTemplateLimits small;
  small.max_loop_iterations = 1000;
  expect_error("{% for i in range(100) %}{% for j in range(100) %}{% endfor %}{% endfor %}", "loop iterations", small);
  expect_error("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "recursion too deep");
  ChatTemplateLimits tiny_out;
  tiny_out.max_output_bytes = 1000;
  expect_error("{% for i in range(1000) %}xx{% endfor %}", "exceeds the limit", tiny_out);
  expect_error("{{ 'x' * 100000000 }}", "exceeds the limit");
  expect_error("{{ range(1000000) | list }}", "Range too big");
  expect_error("{% set ns = namespace(a=1) %}{% set ns.self = ns %}", "cannot store a namespace");
}

// Templates come with downloaded models: each of these used to run for minutes, hours or forever, or
// to take gigabytes; now each ends with an error that names the limit.
TEST(ChatTemplate, HostileTemplatesEndWithClearErrors) {
  auto expect_error = [](const std::string& src, const std::string& needle, ChatTemplateLimits lim = {}) {
    SCOPED_TRACE(src.substr(0, 120));
    auto tmpl = ChatTemplate::parse(src);
    tmpl.set_limits(lim);
    try {
      tmpl.render(ojson::object());
      ADD_FAILURE() << "no error";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
      EXPECT_EQ(std::string(e.what()).rfind("chat template line ", 0), 0u) << e.what();
    }
  };
  const std::string work = "exceeded the work limit";
  const std::string size = "exceeds the limit of";
  ChatTemplateLimits small;  // keeps the test fast; the defaults end the same way, later
  small.max_work = 1 << 24;
  // Exponential call trees: the call depth stays under max_macro_depth.
  expect_error("{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(60) }}", work);
  expect_error("{% macro f(n) %}{% if n %}{% call f(n - 1) %}{% endcall %}{% call f(n - 1) %}{% endcall %}"
               "{% endif %}{% endmacro %}{{ f(60) }}",
               work, small);
  // Costly loop bodies under max_loop_iterations.
  expect_error("{% set s = 'a' * 1000000 %}{% for i in range(100000) %}{% if s %}{% endif %}{% endfor %}", work, small);
  expect_error("{% for i in range(1000) %}{% for j in range(900) %}{% set x = i + j + i + j %}{% endfor %}{% endfor %}",
               work, small);
  expect_error("{% for i in range(100000) %}{% set r = range(100000) %}{% endfor %}", work, small);
  expect_error("{% set r = range(100000) | list %}{% for i in range(100000) %}{% if -1 in r %}{% endif %}{% endfor %}",
               work, small);
  // Quadratic builtins, and a filter mapped with a big argument (copied per item).
  expect_error("{{ range(100000) | unique | length }}", work, small);
  expect_error("{% set s = 'x' * 1000000 %}{{ range(100000) | map('replace', s, 'y') | list | length }}", work, small);
  expect_error("{{ range(100000) | map('string') | sum(start='') | length }}", work, small);
  // Many variables, each under the size limit, holding big strings.
  std::string slots = "{% set v0 = 'x' * 1000000 %}";
  for (int i = 1; i < 40; ++i) slots += "{% set v" + std::to_string(i) + " = v" + std::to_string(i - 1) + " ~ 1 %}";
  expect_error(slots, work, small);
  // Dict literals and dict equality (keys in another order) search the keys: quadratic.
  std::string dict = "{";
  for (int i = 0; i < 1000; ++i) {
    dict += "'k";
    dict += std::to_string(i) + "': 0, ";
  }
  dict += "}";
  expect_error("{% for i in range(1000) %}{% set d = " + dict + " %}{% endfor %}", work, small);
  expect_error("{% set d = " + dict + " %}{% set e = dict(d.items() | reverse) %}{% for i in range(1000) %}"
               "{% if d == e %}{% endif %}{% endfor %}",
               work, small);
  // Shared sub-lists: 40 doublings build a value of 2^40 items in 40 small lists.
  std::string dag = "{% set x = [1] %}";
  for (int i = 0; i < 40; ++i) dag += "{% set x = [x, x] %}";
  expect_error(dag + "{{ x == x }}", size);
  expect_error(dag + "{{ x }}", size);
  expect_error("{% set ns = namespace(x=[1]) %}{% for i in range(60) %}{% set ns.x = [ns.x, ns.x] %}{% endfor %}"
               "{{ ns.x | tojson }}",
               size);
  // Lists whose items, not their count, are big; and lists built from the bytes of a string.
  expect_error("{% set s = 'a' * 1000000 %}{{ ([s] * 100000) | length }}", size);
  expect_error("{{ ('a' * 10000000) | list | length }}", size);
  expect_error("{{ (',' * 10000000).split(',') | length }}", size);
  // Text that grows while it is written: tojson indents, a namespace printed many times.
  expect_error("{{ range(1000) | list | tojson(indent='x' * 100000) }}", size);
  expect_error("{% set ns = namespace(a='') %}{% set l = [ns] * 1000 %}{% set ns.a = 'x' * 100000 %}{{ l }}", size);
  // Deep evaluation (each macro level adds 55 nested negations) stops before the native stack does.
  expect_error("{% macro f(n) %}{% if n %}{{ " + std::string(55, '-') +
                   "(f(n - 1) | int) }}{% endif %}{% endmacro %}{{ f(99) }}",
               "recursion too deep");
}

// The size cap is checked both while repr/tojson write their text and while the interpreter builds a
// value; either way the user sees one message, at the expression or statement that went over.
TEST(ChatTemplate, SizeLimitErrorsNameTheLimitAndPosition) {
  ChatTemplateLimits lim;
  lim.max_output_bytes = 1000;
  auto render_error = [&](const std::string& src) { return render_or_error(src, &lim); };
  // tojson's text (the indents) outgrows the cap: reported at the filter.
  EXPECT_EQ(render_error("ok\n  {{ [1, 2] | tojson(indent='x' * 600) }}"),
            "chat template line 2, column 15: value exceeds the limit of 1000 bytes");
  // repr of a list whose escaped string outgrows the cap when {{ }} prints it: reported at the statement.
  EXPECT_EQ(render_error("{% set s = '\\n' * 600 %}\n{{ [s] }}"),
            "chat template line 2, column 1: value exceeds the limit of 1000 bytes");
  // A value built by an expression: split's parts weigh more than the cap.
  EXPECT_EQ(render_error("\n\n{{ (',' * 900).split(',') | length }}"),
            "chat template line 3, column 21: value exceeds the limit of 1000 bytes");
  // A value built by a statement: the for loop's list of a string's characters.
  EXPECT_EQ(render_error("{% set s = 'x' * 900 %}\n {% for c in s %}{% endfor %}"),
            "chat template line 2, column 5: value exceeds the limit of 1000 bytes");
}

TEST(ChatTemplate, DegenerateArgumentsStayFast) {
  // '' * 10**15 looped 10**15 times, a range stepping past INT64_MAX wrapped around and never ended,
  // and substring search and strip() took time quadratic in their arguments.
  EXPECT_EQ(render("{{ '' * 1000000000000000 }}|{{ ([] * 1000000000000000) | length }}"), "|0");
  EXPECT_EQ(render("{{ range(9223372036854775806, 9223372036854775807, 4611686018427387904) | list }}"),
            "[9223372036854775806]");
  EXPECT_EQ(render("{% set s = 'a' * 1000000 %}{{ s.find('a' * 100000 ~ 'b') }} {{ s.rfind('b' ~ 'a' * 100000) }} "
                   "{{ ('a' * 100000 ~ 'b') in s }} {{ s.count('a' * 100000 ~ 'b') }} {{ s.strip('b' * 100000 ~ 'a') }}|"),
            "-1 -1 False 0 |");
}

// Python's optional start and end of str.find and its siblings: code point bounds clamped like a
// slice's, positions counted in the whole string. Expected values are CPython's.
TEST(ChatTemplate, StringSearchMethodsTakeStartAndEnd) {
  EXPECT_EQ(render("{% set s = 'abcabc' %}{{ s.find('c', 3) }} {{ s.find('c', -2) }} {{ s.find('c', 10) }} "
                   "{{ s.find('', 6) }} {{ s.find('', 7) }} {{ s.find('c', -100) }} {{ s.find('c', 0, 2) }} "
                   "{{ s.find('b', 1, 2) }} {{ s.find('', 2, 1) }} {{ s.find('c', none, none) }}"),
            "5 5 -1 6 -1 2 -1 1 -1 2");
  EXPECT_EQ(render("{% set s = 'abcabc' %}{{ s.rfind('a', 0, 3) }} {{ s.rfind('c', none, -1) }} "
                   "{{ s.rfind('', 1, 2) }} {{ s.index('b', 2) }} {{ s.count('a', 1) }} {{ s.count('', 2, 4) }} "
                   "{{ s.count('', 7) }}"),
            "0 2 2 4 1 3 0");
  EXPECT_EQ(render("{% set s = 'abcabc' %}{{ s.startswith('ca', 2) }} {{ s.startswith('ab', none, 1) }} "
                   "{{ s.startswith('', 6) }} {{ s.startswith('', 7) }} {{ s.endswith('ab', 0, -1) }} "
                   "{{ s.endswith(('x', 'b'), 0, 5) }} {{ s.endswith('', 3, 2) }} {{ s.startswith(('x', 'b'), 1) }}"),
            "True False True False True True False True");
  // Bounds and results count code points, not bytes.
  EXPECT_EQ(render("{% set s = 'héllo wörld' %}{{ s.find('l', 4) }} {{ s.rfind('ö', 0, 8) }} "
                   "{{ s.count('l', 3, -1) }} {{ s.startswith('ö', 7) }} {{ s.index('d', -1) }}"),
            "9 7 2 True 10");
  // Needles over 16 bytes take the Knuth-Morris-Pratt path.
  EXPECT_EQ(render("{% set n = 'a' * 40 ~ 'b' %}{% set s = n ~ 'x' ~ n ~ 'y' %}{{ s.find(n, 1) }} {{ s.rfind(n, 1) }} "
                   "{{ s.rfind(n, 0, 83) }} {{ s.rfind(n, 0, 82) }} {{ s.count(n, 1) }} {{ s.count(n, 0, -1) }} "
                   "{{ s.find(n, 0, 40) }}"),
            "42 42 42 0 1 2 -1");
  EXPECT_EQ(render("{% set n = 'a' * 40 ~ 'b' %}{% set s = 'é' * 5 ~ n ~ 'é' ~ n %}{{ s.find(n, 6) }} "
                   "{{ s.rfind(n, 0, -1) }} {{ s.count(n, -41) }} {{ s.index(n, -41) }}"),
            "47 5 1 47");
  EXPECT_EQ(render_or_error("{{ 'abc'.find('a', 'x') }}"),
            "chat template line 1, column 14: slice indices must be integers or None");
  EXPECT_EQ(render_or_error("{{ 'abc'.endswith('c', 0, 1.5) }}"),
            "chat template line 1, column 18: slice indices must be integers or None");
  EXPECT_EQ(render_or_error("{{ 'abc'.count('a', 0, 1, 2) }}"),
            "chat template line 1, column 15: count expected at most 3 arguments, got 4");
  EXPECT_EQ(render_or_error("{{ 'abc'.startswith('a', 0, 1, 2) }}"),
            "chat template line 1, column 20: startswith expected at most 3 arguments, got 4");
  EXPECT_EQ(render_or_error("{{ 'abcabc'.index('a', 4) }}"), "chat template line 1, column 18: substring not found");
}

TEST(ChatTemplate, ListIndexTakesStartAndEnd) {
  // Expected values from CPython.
  EXPECT_EQ(render("{% set l = [1, 2, 1, 2, 1] %}{{ l.index(1) }} {{ l.index(1, 1) }} {{ l.index(2, -2) }} "
                   "{{ l.index(1, -100) }} {{ l.index(1, 3, 5) }} {{ l.index(2, 0, -1) }} {{ l.count(1) }}"),
            "0 2 3 0 4 1 3");
  EXPECT_EQ(render_or_error("{{ [1, 2].index(1, 1) }}"), "chat template line 1, column 16: 1 is not in list");
  EXPECT_EQ(render_or_error("{{ [1, 2].index(2, 5, 1) }}"), "chat template line 1, column 16: 2 is not in list");
  EXPECT_EQ(render_or_error("{{ [1, 2].index(1, 'a') }}"),
            "chat template line 1, column 16: slice indices must be integers or None");
  // list.index takes integer bounds only (str.find's may be None).
  EXPECT_EQ(render_or_error("{{ [1, 2].index(1, none) }}"),
            "chat template line 1, column 16: slice indices must be integers or None");
  EXPECT_EQ(render_or_error("{{ [1, 2].index(1, 0, 1, 2) }}"),
            "chat template line 1, column 16: index expected at most 3 arguments, got 4");
  EXPECT_EQ(render_or_error("{{ [1, 2].count(1, 0) }}"),
            "chat template line 1, column 16: count() takes exactly one argument (2 given)");
}

TEST(ChatTemplate, ValueLimitLetsTemplatesCopyTheirVariables) {
  // messages[1:] of a conversation that outweighs max_output_bytes is fine; doubling it is not.
  ojson messages = ojson::array();
  for (int i = 0; i < 100; ++i) messages.push_back({{"role", "user"}, {"content", std::string(100, 'x')}});
  ChatTemplateLimits lim;
  lim.max_output_bytes = 1000;
  auto copy = ChatTemplate::parse("{{ messages[1:] | selectattr('role', 'equalto', 'user') | list | length }}");
  copy.set_limits(lim);
  EXPECT_EQ(render_chat(copy, messages), "99");
  auto grow = ChatTemplate::parse("{{ (messages + messages) | length }}");
  grow.set_limits(lim);
  EXPECT_THROW(render_chat(grow, messages), Error);
}

TEST(ChatTemplate, LongConversationStaysWithinDefaultLimits) {
  // Gemma 4 with 20 tools and 300 turns of ~2 KB (a 1.2 MB prompt) needs about 12% of max_work.
  auto tmpl = ChatTemplate::parse(read_text(source_dir() / "tests/tokenizer/templates/gemma4.jinja"));
  ojson tools = ojson::array();
  for (int i = 0; i < 20; ++i) {
    ojson props = ojson::object();
    for (const char* p : {"p0", "p1", "p2", "p3", "p4", "p5", "p6", "p7"})
      props[p] = {{"type", "string"}, {"description", "a parameter"}, {"enum", {"a", "b"}}};
    ojson params = {{"type", "object"}, {"properties", props}, {"required", {"p0"}}};
    ojson function = {{"name", "tool_" + std::to_string(i)}, {"description", "does a thing"}, {"parameters", params}};
    tools.push_back({{"type", "function"}, {"function", function}});
  }
  const ojson call = ojson::parse(R"([{"type": "function", "function": {"name": "tool_1", "arguments": {"p0": "x"}}}])");
  const ojson response = ojson::parse(R"([{"name": "tool_1", "response": {"ok": true}}])");
  const std::string text(2000, 'w');
  ojson messages = ojson::array();
  messages.push_back({{"role", "system"}, {"content", "Be helpful."}});
  for (int i = 0; i < 300; ++i) {
    messages.push_back({{"role", "user"}, {"content", text}});
    messages.push_back({{"role", "assistant"}, {"content", "<|channel>thought\nhmm<channel|>" + text}, {"tool_calls", call}});
    messages.push_back({{"role", "tool"}, {"tool_responses", response}});
  }
  const ojson options = {{"tools", tools}, {"add_generation_prompt", true}};
  EXPECT_GT(render_chat(tmpl, messages, options).size(), 1'200'000u);
  ChatTemplateLimits tight;
  tight.max_work = ChatTemplateLimits{}.max_work / 4;
  tmpl.set_limits(tight);
  EXPECT_NO_THROW(render_chat(tmpl, messages, options));
}

TEST(ChatTemplate, DeepNestingIsRejectedNotCrashing) {
  std::string deep = "{{ " + std::string(5000, '(') + "1" + std::string(5000, ')') + " }}";
  EXPECT_THROW(ChatTemplate::parse(deep), Error);
  std::string chain = "{{ 1";
  for (int i = 0; i < 5000; ++i) chain += " + 1";
  chain += " }}";
  EXPECT_THROW(ChatTemplate::parse(chain), Error);
  std::string blocks;
  for (int i = 0; i < 500; ++i) blocks += "{% if true %}";
  EXPECT_THROW(ChatTemplate::parse(blocks), Error);
  // Values built at run time are bounded too.
  auto tmpl = ChatTemplate::parse(
      "{% set ns = namespace(x=[]) %}{% for i in range(2000) %}{% set ns.x = [ns.x] %}{% endfor %}{{ ns.x }}");
  EXPECT_THROW(tmpl.render(ojson::object()), Error);
  std::string deep_json(1000, '[');
  deep_json += std::string(1000, ']');
  auto t2 = ChatTemplate::parse("{{ messages | length }}");
  ojson msgs = ojson::parse(deep_json);
  EXPECT_THROW(render_chat(t2, msgs), Error);
}

TEST(ChatTemplate, LoadFilesFromModelDirectory) {
  fs::path dir = fs::temp_directory_path() / ("tandem_ct_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  {
    std::ofstream(dir / "tokenizer_config.json")
        << R"({"bos_token":{"content":"<bos>","lstrip":false},"eos_token":"<eos>","pad_token":null,)"
        << R"("chat_template":"{{ bos_token }}from-config"})";
  }
  auto files = load_chat_template_files(dir.string());
  EXPECT_EQ(files.source, "{{ bos_token }}from-config");
  EXPECT_EQ(files.special_tokens["bos_token"], "<bos>");
  EXPECT_EQ(files.special_tokens["eos_token"], "<eos>");
  EXPECT_FALSE(files.special_tokens.contains("pad_token"));
  { std::ofstream(dir / "chat_template.jinja") << "{{ eos_token }}from-jinja\n"; }
  files = load_chat_template_files(dir.string());
  EXPECT_EQ(files.source, "{{ eos_token }}from-jinja\n");
  files = load_chat_template_files((dir / "chat_template.jinja").string());
  EXPECT_EQ(files.special_tokens["bos_token"], "<bos>");
  fs::remove_all(dir);
  EXPECT_THROW(load_chat_template_files((dir / "missing.jinja").string()), Error);
}

TEST(ChatTemplateCli, JsonlRendersEachLine) {
  fs::path dir = fs::temp_directory_path() / ("tandem_ct_cli_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  { std::ofstream(dir / "tokenizer_config.json") << R"({"bos_token":"<B>","eos_token":"<E>"})"; }
  {
    std::ofstream(dir / "chat_template.jinja")
        << "{{ bos_token }}{% for m in messages %}[{{ m.role }}:{{ m.content }}]{% endfor %}"
           "{% if add_generation_prompt %}>{% endif %}{{ tools is none }}{{ extra | default('') }}";
  }
  {
    std::ofstream(dir / "in.jsonl")
        << R"({"messages":[{"role":"user","content":"héllo\n"}],"add_generation_prompt":true})" << "\n"
        << R"({"messages":[],"bos_token":"<X>","tools":[1],"extra":"!"})" << "\n";
  }
  std::string cmd = std::string(TANDEM_BINARY) + " chat-template --template " + dir.string() + " --jsonl < " +
                    (dir / "in.jsonl").string();
  FILE* p = popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  int rc = pclose(p);
  EXPECT_EQ(rc, 0);
  EXPECT_EQ(out, "\"<B>[user:héllo\\n]>True\"\n\"<X>False!\"\n");
  fs::remove_all(dir);
}

}  // namespace
}  // namespace tandem
