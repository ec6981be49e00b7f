#include "tokenizer/chat_template.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include "util/json_parse.h"

namespace tandem {
namespace {

[[noreturn]] void rethrow(const jinja::TemplateError& e) {
  if (e.raised) throw ChatTemplateRaised(e.message);
  if (e.has_pos)
    throw Error(fmt::format("chat template line {}, column {}: {}", e.pos.line, e.pos.col, e.message));
  throw Error("chat template: " + e.message);
}

std::string read_file(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) fail("cannot read {}: check the path", p.string());
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

ChatTemplate ChatTemplate::parse(std::string source) {
  ChatTemplate t;
  try {
    jinja::ParseLimits limits;
    t.program_ = jinja::parse_template(source, limits);
  } catch (const jinja::TemplateError& e) {
    rethrow(e);
  }
  t.source_ = std::move(source);
  return t;
}

std::string ChatTemplate::render(const jinja::Value& variables) const {
  if (!program_) fail("chat template: render() called on an empty template");
  if (variables.kind != jinja::Kind::Dict) fail("chat template: variables must be a JSON object");
  try {
    return jinja::render_program(*program_, variables, limits_);
  } catch (const jinja::TemplateError& e) {
    rethrow(e);
  }
}

std::string ChatTemplate::render(const nlohmann::ordered_json& variables) const {
  jinja::Value v;
  try {
    v = jinja::from_json(variables);
  } catch (const std::runtime_error& e) {
    fail("chat template: {}", e.what());
  }
  return render(v);
}

std::string ChatTemplate::render(const nlohmann::json& variables) const {
  jinja::Value v;
  try {
    v = jinja::from_json(variables);
  } catch (const std::runtime_error& e) {
    fail("chat template: {}", e.what());
  }
  return render(v);
}

std::string render_chat(const ChatTemplate& tmpl, const nlohmann::ordered_json& messages,
                        const nlohmann::ordered_json& options) {
  nlohmann::ordered_json vars = nlohmann::ordered_json::object();
  vars["messages"] = messages;
  vars["tools"] = nullptr;
  vars["documents"] = nullptr;
  vars["add_generation_prompt"] = false;
  if (!options.is_null() && !options.is_object()) fail("chat template: options must be a JSON object");
  if (options.is_object())
    for (auto it = options.begin(); it != options.end(); ++it) vars[it.key()] = it.value();
  return tmpl.render(vars);
}

ChatTemplateFiles load_chat_template_files(const std::string& path) {
  namespace fs = std::filesystem;
  ChatTemplateFiles out;
  fs::path p(path);
  fs::path config_path;
  bool template_from_config = false;
  if (fs::is_directory(p)) {
    config_path = p / "tokenizer_config.json";
    if (fs::exists(p / "chat_template.jinja"))
      out.source = read_file(p / "chat_template.jinja");
    else
      template_from_config = true;
  } else if (p.extension() == ".json") {
    config_path = p;
    template_from_config = true;
  } else {
    out.source = read_file(p);
    config_path = p.parent_path() / "tokenizer_config.json";
  }
  nlohmann::ordered_json config;
  if (fs::exists(config_path)) {
    try {
      config = parse_json<nlohmann::ordered_json>(read_file(config_path));
    } catch (const nlohmann::json::exception& e) {
      fail("{} is not valid JSON ({}): fix or remove it", config_path.string(), e.what());
    }
  }
  if (template_from_config) {
    if (!config.is_object() || !config.contains("chat_template"))
      fail("no chat template found for {}: expected chat_template.jinja or a chat_template entry in "
           "tokenizer_config.json",
           path);
    const auto& ct = config["chat_template"];
    if (ct.is_string()) {
      out.source = ct.get<std::string>();
    } else if (ct.is_array()) {  // [{"name": "default", "template": ...}, ...]
      for (const auto& e : ct)
        if (e.is_object() && e.value("name", "") == "default" && e.contains("template"))
          out.source = e["template"].get<std::string>();
      if (out.source.empty()) fail("{}: chat_template has no 'default' entry", config_path.string());
    } else {
      fail("{}: chat_template must be a string", config_path.string());
    }
  }
  if (config.is_object()) {
    for (auto it = config.begin(); it != config.end(); ++it) {
      const std::string& k = it.key();
      if (k.size() < 6 || k.compare(k.size() - 6, 6, "_token") != 0) continue;
      const auto& v = it.value();
      if (v.is_string())
        out.special_tokens[k] = v;
      else if (v.is_object() && v.contains("content") && v["content"].is_string())
        out.special_tokens[k] = v["content"];
    }
  }
  return out;
}

}  // namespace tandem
