// Chat templates: a Jinja-subset interpreter that renders HF chat templates exactly like
// transformers does (jinja2 ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks,
// loopcontrols, tojson = json.dumps(ensure_ascii=False), raise_exception, strftime_now).
//
//   auto tmpl = ChatTemplate::parse(source);
//   std::string prompt = render_chat(tmpl, messages, {{"add_generation_prompt", true}});
//
// Pass nlohmann::ordered_json where key order matters (it does for templates that print dicts or
// `tojson` tool schemas): nlohmann::json sorts object keys, Python dicts keep insertion order.
//
// Not supported (errors, never silent differences): include/extends/import/block, recursive
// loops, *args/**kwargs call syntax, macro varargs/kwargs, printf-style '%' on strings and the
// format/batch/slice/groupby/truncate/urlize filters, storing namespaces or callables in namespace
// attributes. Known differences: upper/lower/title map ASCII, Latin-1, Greek and Cyrillic only;
// map/select/reject return lists where Jinja returns generators (only visible when printed raw).
#pragma once
#include <nlohmann/json.hpp>

#include <memory>
#include <string>

#include "tokenizer/jinja_eval.h"
#include "util/error.h"

namespace tandem {

// Thrown for the template's own raise_exception(msg); what() is msg unchanged.
class ChatTemplateRaised : public Error {
 public:
  explicit ChatTemplateRaised(const std::string& message) : Error(message) {}
};

using ChatTemplateLimits = jinja::RenderLimits;

class ChatTemplate {
 public:
  // Throws tandem::Error("chat template line L, column C: ...") on syntax errors.
  static ChatTemplate parse(std::string source);

  // Renders with `variables` (a JSON object) as the template context, nothing added. Errors:
  // tandem::Error with line/column, or ChatTemplateRaised for raise_exception().
  std::string render(const nlohmann::ordered_json& variables) const;
  std::string render(const nlohmann::json& variables) const;
  std::string render(const jinja::Value& variables) const;

  void set_limits(const ChatTemplateLimits& limits) { limits_ = limits; }
  const ChatTemplateLimits& limits() const { return limits_; }
  const std::string& source() const { return source_; }

 private:
  std::string source_;
  std::shared_ptr<const jinja::Program> program_;
  ChatTemplateLimits limits_;
};

// What transformers' apply_chat_template passes: messages, tools (None if absent), documents
// (None if absent), add_generation_prompt (False if absent), plus every key of `options`
// (bos_token, eos_token, enable_thinking, ...).
std::string render_chat(const ChatTemplate& tmpl, const nlohmann::ordered_json& messages,
                        const nlohmann::ordered_json& options = nlohmann::ordered_json::object());

// Template source and special tokens of a model: `path` is a model directory (chat_template.jinja,
// else tokenizer_config.json's chat_template), a .jinja file (tokenizer_config.json next to it
// supplies tokens), or a tokenizer_config.json. special_tokens holds bos_token/eos_token/...
// as strings (AddedToken objects are reduced to their content).
struct ChatTemplateFiles {
  std::string source;
  nlohmann::ordered_json special_tokens = nlohmann::ordered_json::object();
};
ChatTemplateFiles load_chat_template_files(const std::string& path);

}  // namespace tandem
