// tandem chat-template: render a model's chat template for JSON conversations read from stdin.
//
//   echo '{"messages":[{"role":"user","content":"hi"}],"add_generation_prompt":true}' |
//     tandem chat-template --template models/gemma4 --jsonl
//
// Each stdin line is a JSON object whose keys all become template variables; like transformers'
// apply_chat_template, tools/documents default to None, add_generation_prompt to False, and the
// special tokens (bos_token, eos_token, ...) to tokenizer_config.json's values. Each output line
// is the rendered prompt as one JSON string.
#include <iostream>
#include <string>

#include "cli/command.h"
#include "cli/common.h"
#include "tokenizer/chat_template.h"
#include "util/error.h"

namespace tandem::cli {
namespace {

void run_chat_template(const std::string& path, bool jsonl) {
  if (!jsonl) fail("chat-template: only --jsonl input is supported; pass --jsonl");
  ChatTemplateFiles files = load_chat_template_files(path);
  ChatTemplate tmpl = ChatTemplate::parse(files.source);
  for_each_stdin_json<nlohmann::ordered_json>([&](const nlohmann::ordered_json& obj, size_t lineno) {
    if (!obj.is_object()) fail("stdin line {}: expected a JSON object with \"messages\"", lineno);
    nlohmann::ordered_json vars = nlohmann::ordered_json::object();
    vars["tools"] = nullptr;
    vars["documents"] = nullptr;
    vars["add_generation_prompt"] = false;
    for (auto it = files.special_tokens.begin(); it != files.special_tokens.end(); ++it)
      vars[it.key()] = it.value();
    for (auto it = obj.begin(); it != obj.end(); ++it) vars[it.key()] = it.value();
    std::string out;
    try {
      out = tmpl.render(vars);
    } catch (const Error& e) {
      fail("stdin line {}: {}", lineno, e.what());
    }
    std::cout << nlohmann::ordered_json(out).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace)
              << '\n';
  });
  std::cout.flush();
}

struct Options {
  std::string path;
  bool jsonl = false;
};

static RegisterCommand reg("chat-template", "Render a chat template for JSON conversations on stdin",
                           [](CLI::App& sub) {
                             auto opts = std::make_shared<Options>();
                             sub.add_option("--template", opts->path,
                                            "model directory, chat_template.jinja or tokenizer_config.json")
                                 ->required();
                             sub.add_flag("--jsonl", opts->jsonl,
                                          "read one JSON object per stdin line, write one JSON string per line");
                             sub.callback([opts] { run_chat_template(opts->path, opts->jsonl); });
                           });

}  // namespace
}  // namespace tandem::cli
