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
