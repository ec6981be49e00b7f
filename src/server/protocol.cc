#include "server/protocol.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <set>

#include "engine/image_prompt.h"
#include "server/api_error.h"
#include "server/reasoning_parser.h"
#include "server/structured_output.h"
#include "util/error.h"
#include "util/json_parse.h"

namespace tandem::server {
namespace {

using nlohmann::json;

std::string dump_compact(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

bool present(const json& body, const char* key) {
  auto it = body.find(key);
  return it != body.end() && !it->is_null();
}

double get_number(const json& body, const char* key, double fallback) {
  if (!present(body, key)) return fallback;
  const json& v = body.at(key);
  if (!v.is_number()) throw bad_request(fmt::format("'{}' must be a number", key), key);
  double d = v.get<double>();
  if (!std::isfinite(d)) throw bad_request(fmt::format("'{}' must be finite", key), key);
  return d;
}

int64_t get_integer(const json& body, const char* key, int64_t fallback) {
  if (!present(body, key)) return fallback;
  const json& v = body.at(key);
  if (v.is_number_integer()) {
    if (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(std::numeric_limits<int64_t>::max()))
      throw bad_request(fmt::format("'{}' is too large", key), key);
    return v.get<int64_t>();
  }
  if (v.is_number_float()) {
    double d = v.get<double>();
    if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9e15) return static_cast<int64_t>(d);
  }
  throw bad_request(fmt::format("'{}' must be an integer", key), key);
}

void check_range(double v, double lo, double hi, const char* key, const char* what) {
  if (v < lo || v > hi) throw bad_request(fmt::format("'{}' must be {}, got {}", key, what, v), key);
}

bool is_token_array(const json& v) {
  if (!v.is_array() || v.empty()) return false;
  for (const auto& x : v)
    if (!x.is_number_integer()) return false;
  return true;
}

std::vector<int32_t> token_ids(const json& v, const TextCodec& codec, const char* param) {
  std::vector<int32_t> ids;
  ids.reserve(v.size());
  const int64_t vocab = codec.vocab_size();
  for (const auto& x : v) {
    int64_t id = x.get<int64_t>();
    if (id < 0 || id >= vocab)
      throw bad_request(fmt::format("token id {} is outside the vocabulary [0, {})", id, vocab), param);
    ids.push_back(static_cast<int32_t>(id));
  }
  return ids;
}

// vLLM's extra sampling parameters: logit_bias, allowed_token_ids, min_tokens,
// include_stop_str_in_output, prompt_logprobs, truncate_prompt_tokens (checked here, applied later).
void parse_extra_sampling(const json& body, const TextCodec& codec, const Limits& limits, ParsedRequest& r) {
  SamplingParams& s = r.sampling;
  const int64_t vocab = codec.vocab_size();
  if (present(body, "logit_bias")) {
    const json& lb = body["logit_bias"];
    if (!lb.is_object()) throw bad_request("'logit_bias' must be an object of token id -> bias", "logit_bias");
    if (static_cast<int64_t>(lb.size()) > limits.max_logit_bias)
      throw bad_request(fmt::format("at most {} logit_bias entries are allowed", limits.max_logit_bias), "logit_bias");
    for (const auto& [key, v] : lb.items()) {
      int64_t id = -1;
      auto [end, ec] = std::from_chars(key.data(), key.data() + key.size(), id);
      if (ec != std::errc() || end != key.data() + key.size() || key.empty())
        throw bad_request(fmt::format("logit_bias key '{}' is not a token id", key), "logit_bias");
      if (id < 0 || id >= vocab)
        throw bad_request(fmt::format("logit_bias token id {} is outside the vocabulary [0, {})", id, vocab),
                          "logit_bias");
      if (!v.is_number()) throw bad_request("logit_bias values must be numbers", "logit_bias");
      double bias = v.get<double>();
      if (!std::isfinite(bias)) throw bad_request("logit_bias values must be finite", "logit_bias");
      // Clamped to [-100, 100] as vLLM does (OpenAI's documented range).
      s.logit_bias.emplace_back(static_cast<int32_t>(id), static_cast<float>(std::clamp(bias, -100.0, 100.0)));
    }
  }
  if (present(body, "allowed_token_ids")) {
    const json& ids = body["allowed_token_ids"];
    if (!ids.is_array() || ids.empty())
      throw bad_request("'allowed_token_ids' must be a non-empty list of token ids", "allowed_token_ids");
    if (static_cast<int64_t>(ids.size()) > limits.max_allowed_token_ids)
      throw bad_request(fmt::format("at most {} allowed_token_ids", limits.max_allowed_token_ids), "allowed_token_ids");
    for (const auto& x : ids)
      if (!x.is_number_integer()) throw bad_request("'allowed_token_ids' must be a list of integers", "allowed_token_ids");
    s.allowed_token_ids = token_ids(ids, codec, "allowed_token_ids");
  }
  const int64_t min_tokens = get_integer(body, "min_tokens", 0);
  if (min_tokens < 0) throw bad_request(fmt::format("'min_tokens' must be at least 0, got {}", min_tokens), "min_tokens");
  s.min_tokens = static_cast<int>(std::min<int64_t>(min_tokens, 1 << 30));  // ≤ max_tokens: resolve_lengths
  r.include_stop_str_in_output = get_bool(body, "include_stop_str_in_output", false);
  if (present(body, "prompt_logprobs")) {
    const int64_t n = get_integer(body, "prompt_logprobs", -1);
    if (n < 0 || n > limits.max_logprobs)
      throw bad_request(fmt::format("'prompt_logprobs' must be between 0 and {}, got {}", limits.max_logprobs, n),
                        "prompt_logprobs");
    if (get_bool(body, "stream", false))
      throw bad_request("'prompt_logprobs' is not available when 'stream' is true", "prompt_logprobs");
    r.prompt_logprobs = static_cast<int>(n);
    r.return_prompt_logprobs = true;
  }
  if (present(body, "truncate_prompt_tokens")) {
    const int64_t t = get_integer(body, "truncate_prompt_tokens", -1);
    if (t == 0 || t < -1)
      throw bad_request("'truncate_prompt_tokens' must be -1 (the maximum model length) or a positive number of tokens",
                        "truncate_prompt_tokens");
    if (t > limits.max_model_len)
      throw bad_request(fmt::format("'truncate_prompt_tokens' ({}) is greater than the maximum model length ({}). "
                                    "Please select a smaller truncation size.", t, limits.max_model_len),
                        "truncate_prompt_tokens");
  }
}

// truncate_prompt_tokens: keep the last N tokens of each prompt (-1: max_model_len), as vLLM.
void truncate_prompts(const json& body, const TextCodec& codec, const Limits& limits, ParsedRequest& r) {
  if (!present(body, "truncate_prompt_tokens")) return;
  int64_t keep = get_integer(body, "truncate_prompt_tokens", -1);
  if (keep == -1) keep = limits.max_model_len;
  for (auto& p : r.prompts) {
    if (static_cast<int64_t>(p.tokens.size()) <= keep) continue;
    p.tokens.erase(p.tokens.begin(), p.tokens.end() - keep);
    p.text = codec.decode(p.tokens, false);
  }
}

// Fields shared by completions and chat.
void parse_common(const json& body, const TextCodec& codec, const Limits& limits, ParsedRequest& r) {
  SamplingParams& s = r.sampling;
  s.temperature = static_cast<float>(get_number(body, "temperature", 1.0));
  check_range(s.temperature, 0.0, 100.0, "temperature", "between 0 and 100");
  s.top_p = static_cast<float>(get_number(body, "top_p", 1.0));
  if (!(s.top_p > 0.0f && s.top_p <= 1.0f))
    throw bad_request(fmt::format("'top_p' must be in (0, 1], got {}", s.top_p), "top_p");
  int64_t top_k = get_integer(body, "top_k", 0);
  if (top_k < -1) throw bad_request("'top_k' must be -1 (off), 0 (off) or positive", "top_k");
  s.top_k = top_k <= 0 ? 0 : static_cast<int>(std::min<int64_t>(top_k, 1 << 30));
  s.min_p = static_cast<float>(get_number(body, "min_p", 0.0));
  check_range(s.min_p, 0.0, 1.0, "min_p", "between 0 and 1");
  s.presence_penalty = static_cast<float>(get_number(body, "presence_penalty", 0.0));
  check_range(s.presence_penalty, -2.0, 2.0, "presence_penalty", "between -2 and 2");
  s.frequency_penalty = static_cast<float>(get_number(body, "frequency_penalty", 0.0));
  check_range(s.frequency_penalty, -2.0, 2.0, "frequency_penalty", "between -2 and 2");
  s.repetition_penalty = static_cast<float>(get_number(body, "repetition_penalty", 1.0));
  if (!(s.repetition_penalty > 0.0f) || !std::isfinite(s.repetition_penalty))
    throw bad_request(fmt::format("'repetition_penalty' must be greater than zero, got {}", s.repetition_penalty),
                      "repetition_penalty");
  if (present(body, "seed")) s.seed = static_cast<uint64_t>(get_integer(body, "seed", 0));

  r.n = static_cast<int>(std::clamp<int64_t>(get_integer(body, "n", 1), -1, 1 << 20));
  if (r.n < 1 || r.n > limits.max_n)
    throw bad_request(fmt::format("'n' must be between 1 and {}, got {}", limits.max_n, r.n), "n");
  if (present(body, "best_of") && get_integer(body, "best_of", 1) != r.n)
    throw bad_request(fmt::format("'best_of' must equal 'n' ({}): returning the best of more samples than 'n' is "
                                  "not supported, got {}", r.n, get_integer(body, "best_of", 1)), "best_of");
  if (get_bool(body, "use_beam_search", false))
    throw bad_request("beam search ('use_beam_search') is not supported", "use_beam_search");
  parse_extra_sampling(body, codec, limits, r);

  // Stop strings.
  if (present(body, "stop")) {
    const json& stop = body["stop"];
    if (stop.is_string()) {
      r.stop.push_back(stop.get<std::string>());
    } else if (stop.is_array()) {
      for (const auto& x : stop) {
        if (!x.is_string()) throw bad_request("'stop' must be a string or a list of strings", "stop");
        r.stop.push_back(x.get<std::string>());
      }
    } else {
      throw bad_request("'stop' must be a string or a list of strings", "stop");
    }
    if (static_cast<int>(r.stop.size()) > limits.max_stop)
      throw bad_request(fmt::format("at most {} stop strings are allowed, got {}", limits.max_stop,
                                    r.stop.size()), "stop");
    for (const auto& s2 : r.stop) {
      if (s2.empty()) throw bad_request("stop strings must not be empty", "stop");
      if (static_cast<int>(s2.size()) > limits.max_stop_length)
        throw bad_request(fmt::format("stop strings must be at most {} bytes", limits.max_stop_length),
                          "stop");
    }
  }
  if (present(body, "stop_token_ids")) {
    const json& ids = body["stop_token_ids"];
    if (!ids.is_array()) throw bad_request("'stop_token_ids' must be a list of integers", "stop_token_ids");
    for (const auto& x : ids)
      if (!x.is_number_integer())
        throw bad_request("'stop_token_ids' must be a list of integers", "stop_token_ids");
    if (static_cast<int>(ids.size()) > limits.max_stop_token_ids)
      throw bad_request(fmt::format("at most {} stop token ids are allowed", limits.max_stop_token_ids),
                        "stop_token_ids");
    if (!ids.empty()) r.stop_token_ids = token_ids(ids, codec, "stop_token_ids");
  }
  r.ignore_eos = get_bool(body, "ignore_eos", false);
  r.skip_special_tokens = get_bool(body, "skip_special_tokens", true);

  // Streaming.
  r.stream = get_bool(body, "stream", false);
  if (present(body, "stream_options")) {
    const json& so = body["stream_options"];
    if (!so.is_object()) throw bad_request("'stream_options' must be an object", "stream_options");
    if (!r.stream) throw bad_request("'stream_options' is only allowed when 'stream' is true", "stream_options");
    r.include_usage = get_bool(so, "include_usage", false);
    r.continuous_usage = get_bool(so, "continuous_usage_stats", false);
    r.spec_trace = get_bool(so, "tandem_spec_trace", false);
  }

  // tandem's per-request speculation override.
  if (present(body, "speculative")) {
    const json& sp = body["speculative"];
    if (!sp.is_object()) throw bad_request("'speculative' must be an object", "speculative");
    if (present(sp, "num_speculative_tokens")) {
      int64_t k = get_integer(sp, "num_speculative_tokens", -1);
      if (k < 0 || k > limits.num_speculative_tokens)
        throw bad_request(fmt::format("'speculative.num_speculative_tokens' must be between 0 and {} "
                                      "(the server's configured k), got {}",
                                      limits.num_speculative_tokens, k),
                          "speculative.num_speculative_tokens");
      r.num_speculative_tokens = static_cast<int>(k);
    }
  }
}

// max_tokens against the context: fills the default and rejects prompts that cannot fit.
void resolve_lengths(const json& body, const Limits& limits, ParsedRequest& r, bool chat) {
  const char* key = "max_tokens";
  int64_t max_tokens = -1;
  if (chat && present(body, "max_completion_tokens")) {
    key = "max_completion_tokens";
    max_tokens = get_integer(body, key, -1);
  } else if (present(body, "max_tokens")) {
    max_tokens = get_integer(body, key, -1);
  }
  if (max_tokens != -1 && max_tokens < 1)
    throw bad_request(fmt::format("'{}' must be at least 1, got {}", key, max_tokens), key);
  if (present(body, key) && max_tokens < 1)  // -1 is "absent" above; vLLM rejects it too
    throw bad_request(fmt::format("'{}' must be at least 1, got {}", key, max_tokens), key);
  size_t longest = 0;
  for (const auto& p : r.prompts) longest = std::max(longest, p.tokens.size());
  const int64_t len = static_cast<int64_t>(longest);
  if (len >= limits.max_model_len)
    throw ApiError(400,
                   fmt::format("This model's maximum context length is {} tokens, but the prompt has {} "
                               "tokens. Please shorten the prompt.",
                               limits.max_model_len, len),
                   chat ? "messages" : "prompt", "invalid_request_error", "context_length_exceeded");
  if (max_tokens == -1) {
    max_tokens = limits.max_model_len - len;
  } else if (len + max_tokens > limits.max_model_len) {
    throw ApiError(400,
                   fmt::format("This model's maximum context length is {} tokens, but {} tokens were "
                               "requested ({} in the prompt, {} for the completion). Please reduce the "
                               "prompt or '{}'.",
                               limits.max_model_len, len + max_tokens, len, max_tokens, key),
                   key, "invalid_request_error", "context_length_exceeded");
  }
  r.max_tokens = static_cast<int>(max_tokens);
  if (r.sampling.min_tokens > r.max_tokens)
    throw bad_request(fmt::format("'min_tokens' must be less than or equal to '{}' ({}), got {}", key, r.max_tokens,
                                  r.sampling.min_tokens), "min_tokens");
  if (r.num_choices() > limits.max_choices)
    throw bad_request(fmt::format("at most {} choices (prompts × n) per request, got {}",
                                  limits.max_choices, r.num_choices()), "n");
}

// A message's content for the chat template: its text (string content, or text parts joined by
// newlines) when it has no images; with images, the list of its parts in order, {"type": "text",
// "text": ...} and {"type": "image"} (what Gemma 4's template renders as <|image|>), each image's URL
// appended to *image_urls. With image_urls null, image parts are only checked.
json message_content(const json& m, size_t index, std::vector<std::string>* image_urls = nullptr) {
  auto it = m.find("content");
  if (it == m.end() || it->is_null()) return std::string();
  if (it->is_string()) return it->get<std::string>();
  if (!it->is_array())
    throw bad_request(fmt::format("messages[{}].content must be a string or a list of content parts", index),
                      "messages");
  std::string text;
  json parts = json::array();
  bool first = true, images = false;
  for (const auto& part : *it) {
    if (part.is_string()) {  // lenient: a bare string part
      if (!first) text += "\n";
      text += part.get<std::string>(), first = false;
      parts.push_back({{"type", "text"}, {"text", part}});
      continue;
    }
    if (!part.is_object() || !part.contains("type") || !part["type"].is_string())
      throw bad_request(fmt::format("messages[{}].content parts must be objects with a 'type'", index), "messages");
    const std::string type = part["type"];
    if (type == "text") {
      if (!part.contains("text") || !part["text"].is_string())
        throw bad_request(fmt::format("messages[{}]: a text part needs a string 'text'", index), "messages");
      if (!first) text += "\n";
      text += part["text"].get<std::string>(), first = false;
      parts.push_back({{"type", "text"}, {"text", part["text"]}});
    } else if (type == "image_url") {
      const json* url = nullptr;
      if (auto iu = part.find("image_url"); iu != part.end()) {
        if (iu->is_string()) url = &*iu;
        else if (iu->is_object() && iu->contains("url") && (*iu)["url"].is_string()) url = &(*iu)["url"];
      }
      if (!url)
        throw bad_request(fmt::format("messages[{}]: an image_url part needs 'image_url': {{'url': ...}}", index),
                          "messages");
      const std::string role = m.value("role", "");
      if (role != "user" && role != "assistant")
        throw bad_request(fmt::format("messages[{}]: images are accepted in user and assistant messages, not in a "
                                      "'{}' message", index, role), "messages");
      images = true;
      if (image_urls) image_urls->push_back(url->get<std::string>());
      parts.push_back({{"type", "image"}});
    } else if (type == "input_audio" || type == "audio_url") {
      throw bad_request(fmt::format("messages[{}]: audio input is not supported (this server takes text and images)",
                                    index), "messages");
    } else if (type == "video_url") {
      throw bad_request(fmt::format("messages[{}]: video input is not supported (this server takes text and images)",
                                    index), "messages");
    } else {
      throw bad_request(fmt::format("messages[{}]: content part type '{}' is not supported (text, image_url)",
                                    index, type), "messages");
    }
  }
  if (images) return parts;
  return text;
}

// The text of a message (its image parts contribute none).
std::string message_text(const json& m, size_t index) {
  const json c = message_content(m, index);
  if (c.is_string()) return c.get<std::string>();
  std::string text;
  bool first = true;
  for (const json& part : c)
    if (part["type"] == "text") {
      if (!first) text += "\n";
      text += part["text"].get<std::string>(), first = false;
    }
  return text;
}

// The images of a chat prompt: loaded, preprocessed, and their <|image|> placeholders expanded to
// <|image> + N × <|image|> + <image|> as the processor does.
void resolve_images(const json& body, const std::vector<std::string>& urls, const ImageOptions& o, PromptInput& in) {
  const ModelConfig* model = o.model;
  size_t placeholders = 0;
  if (model) placeholders = std::ranges::count(in.tokens, model->image_token_id);
  if (urls.empty() && placeholders == 0) return;
  if (!urls.empty() && !model)
    throw bad_request("this model does not take images (it has no vision tower, or --limit-mm-per-prompt allows none)",
                      "messages");
  if (static_cast<int64_t>(urls.size()) > o.max_images)
    throw bad_request(fmt::format("at most {} image{} per prompt (--limit-mm-per-prompt), got {}", o.max_images,
                                  o.max_images == 1 ? "" : "s", urls.size()), "messages");
  if (placeholders != urls.size())
    throw bad_request(fmt::format("the rendered prompt holds {} image placeholders for {} images (does the text "
                                  "contain a literal image token?)", placeholders, urls.size()), "messages");
  if (present(body, "truncate_prompt_tokens"))
    throw bad_request("'truncate_prompt_tokens' cannot be combined with images", "truncate_prompt_tokens");
  std::vector<std::shared_ptr<const vision::PatchImage>> images;
  for (size_t i = 0; i < urls.size(); ++i) images.push_back(prepare_request_image(image_url_bytes(urls[i], o), i, o));
  Request expanded;
  expand_image_placeholders(*model, in.tokens, images, expanded);
  in.tokens = std::move(expanded.prompt);
  in.images = std::move(expanded.images);
}

// An assistant message's tool_calls with each function.arguments as a mapping: OpenAI clients send
// a JSON string, chat templates (transformers, vLLM) take a mapping (Gemma 4's renders
// call:NAME{key:value,...} from it; a string would be pasted raw).
json normalize_tool_calls(const json& calls, size_t index) {
  if (!calls.is_array())
    throw bad_request(fmt::format("messages[{}].tool_calls must be a list", index), "messages");
  json out = json::array();
  for (size_t j = 0; j < calls.size(); ++j) {
    const json& c = calls[j];
    const std::string where = fmt::format("messages[{}].tool_calls[{}]", index, j);
    if (!c.is_object()) throw bad_request(where + " must be an object", "messages");
    if (present(c, "type") && c["type"] != "function")
      throw bad_request(where + ".type must be \"function\"", "messages");
    if (!c.contains("function") || !c["function"].is_object())
      throw bad_request(where + ".function must be an object", "messages");
    const json& f = c["function"];
    if (!f.contains("name") || !f["name"].is_string())
      throw bad_request(where + ".function.name must be a string", "messages");
    json args = json::object();  // absent, null or "": {} as vLLM
    if (present(f, "arguments")) {
      const json& a = f["arguments"];
      if (a.is_string()) {
        if (!a.get_ref<const std::string&>().empty()) {
          try {
            args = parse_json(a.get_ref<const std::string&>());
          } catch (const json::exception& e) {
            throw bad_request(fmt::format("{}.function.arguments is not valid JSON: {}", where, e.what()), "messages");
          }
          if (!args.is_object())
            throw bad_request(where + ".function.arguments must be a JSON object", "messages");
        }
      } else if (a.is_object()) {
        args = a;
      } else {
        throw bad_request(where + ".function.arguments must be a string of JSON", "messages");
      }
    }
    json call = c;
    call["function"]["arguments"] = std::move(args);
    out.push_back(std::move(call));
  }
  return out;
}

// Templates that take tool results as a `tool_responses` list ({name, response}) on the message that
// made the calls (Gemma 4's: it renders <|tool_response>response:NAME{value:...}<tool_response|>
// right after the calls and lets the model continue) get them there: the role "tool" messages that
// follow an assistant message with tool_calls move into it, named after the call they answer
// (tool_call_id; else their "name"; else "unknown", the template's default). Rendered as they
// come, they would open a "tool" turn, a role the template does not have.
void attach_tool_responses(json& messages) {
  json out = json::array();
  for (size_t i = 0; i < messages.size(); ++i) {
    json m = messages[i];
    const bool calls = m["role"] == "assistant" && m.contains("tool_calls") && m["tool_calls"].is_array() &&
                       !m["tool_calls"].empty() && !m.contains("tool_responses");
    size_t k = i + 1;
    if (calls) {
      json responses = json::array();
      for (; k < messages.size() && messages[k]["role"] == "tool"; ++k) {
        const json& t = messages[k];
        std::string name = t.contains("name") && t["name"].is_string() ? t["name"].get<std::string>() : "";
        if (t.contains("tool_call_id") && t["tool_call_id"].is_string())
          for (const auto& tc : m["tool_calls"])
            if (tc.contains("id") && tc["id"] == t["tool_call_id"]) name = tc["function"]["name"];
        json r = {{"name", name.empty() ? "unknown" : name}, {"response", t["content"]}};
        if (t.contains("tool_call_id")) r["tool_call_id"] = t["tool_call_id"];
        responses.push_back(std::move(r));
      }
      if (!responses.empty()) m["tool_responses"] = std::move(responses);
    }
    out.push_back(std::move(m));
    if (calls) i = k - 1;
  }
  messages = std::move(out);
}

void check_tools(const json& tools) {
  if (!tools.is_array()) throw bad_request("'tools' must be a list", "tools");
  for (size_t i = 0; i < tools.size(); ++i) {
    const json& t = tools[i];
    const std::string where = fmt::format("tools[{}]", i);
    if (!t.is_object()) throw bad_request(where + " must be an object", "tools");
    if (present(t, "type") && t["type"] != "function")
      throw bad_request(where + ".type must be \"function\"", "tools");
    if (!t.contains("function") || !t["function"].is_object())
      throw bad_request(where + ".function must be an object", "tools");
    const json& f = t["function"];
    if (!f.contains("name") || !f["name"].is_string() || f["name"].get_ref<const std::string&>().empty())
      throw bad_request(where + ".function.name must be a non-empty string", "tools");
    if (present(f, "description") && !f["description"].is_string())
      throw bad_request(where + ".function.description must be a string", "tools");
    if (present(f, "parameters") && !f["parameters"].is_object())
      throw bad_request(where + ".function.parameters must be an object (a JSON schema)", "tools");
  }
}

json tool_parameters_schema(const json& function) {
  if (present(function, "parameters") && !function["parameters"].empty()) return function["parameters"];
  return {{"type", "object"}, {"properties", json::object()}};
}

// Compiles `spec` over the model's vocabulary and attaches it to the request's sampling.
void attach_grammar(ParsedRequest& r, const GrammarSpec& spec, const TextCodec& codec) {
  GrammarCompiler* compiler = codec.grammar_compiler();
  if (!compiler) throw bad_request("structured outputs are not available on this server", spec.field);
  // Both mask tokens the grammar may need (the stop token where it must end; what it allows).
  if (r.sampling.min_tokens > 0)
    throw bad_request(fmt::format("'min_tokens' cannot be combined with '{}' (the grammar decides where the output ends)",
                                  spec.field), "min_tokens");
  if (!r.sampling.allowed_token_ids.empty())
    throw bad_request(fmt::format("'allowed_token_ids' cannot be combined with '{}'", spec.field), "allowed_token_ids");
  r.sampling.grammar = compiler->compile(spec);
}

// tools + tool_choice, with vLLM's rules and messages (ChatCompletionRequest.check_tool_usage and
// the serving layer's check of "auto"). "required" and a named function are enforced as vLLM does,
// by constrained decoding, in Gemma 4's own call syntax: the output is `<|tool_call>call:NAME{...}
// <tool_call|>` (one call of the named function; one or more calls for "required", exactly one with
// parallel_tool_calls false), the arguments following the tool's parameter schema.
void resolve_tool_choice(const json& body, const Limits& limits, const TextCodec& codec, ParsedRequest& r) {
  if (present(body, "tools")) check_tools(body["tools"]);
  if (present(body, "parallel_tool_calls") && !body["parallel_tool_calls"].is_boolean())
    throw bad_request("'parallel_tool_calls' must be a boolean", "parallel_tool_calls");
  r.has_tools = present(body, "tools");
  const bool any_tools = r.has_tools && !body["tools"].empty();
  json choice = present(body, "tool_choice") ? body["tool_choice"] : any_tools ? json("auto") : json(nullptr);
  if (choice.is_null() || choice == "none") return;
  if (!r.has_tools) throw bad_request("When using `tool_choice`, `tools` must be set.", "tool_choice");
  if (choice != "auto" && choice != "required" && !choice.is_object())
    throw bad_request(fmt::format("Invalid value for `tool_choice`: {}! Only named tools, \"none\", \"auto\" or "
                                  "\"required\" are supported.",
                                  choice.is_string() ? choice.get<std::string>() : dump_compact(choice)),
                      "tool_choice");
  if (choice == "required" && !any_tools) return;  // OpenAI: behaves as "none"
  const std::string usage = "Correct usage: `{\"type\": \"function\", \"function\": {\"name\": \"my_function\"}}`";
  json tools = json::array();  // the callable tools: {"name", "parameters"}
  GrammarSpec spec;
  spec.kind = GrammarSpec::Kind::tool_calls;
  spec.field = "tool_choice";
  if (choice.is_object()) {
    const json function = choice.contains("function") ? choice["function"] : json(nullptr);
    if (!function.is_object())
      throw bad_request(fmt::format("Invalid value for `function`: `{}` in `tool_choice`! {}", dump_compact(function), usage),
                        "tool_choice");
    if (!function.contains("name"))
      throw bad_request(fmt::format("Expected field `name` in `function` in `tool_choice`! {}", usage), "tool_choice");
    const json& name = function["name"];
    if (!name.is_string() || name.get_ref<const std::string&>().empty())
      throw bad_request(fmt::format("Invalid `name` in `function`: `{}` in `tool_choice`! {}",
                                    name.is_string() ? name.get<std::string>() : dump_compact(name), usage),
                        "tool_choice");
    for (const auto& t : body["tools"])
      if (t["function"]["name"] == name && tools.empty())
        tools.push_back({{"name", name}, {"parameters", tool_parameters_schema(t["function"])}});
    if (tools.empty())
      throw bad_request("The tool specified in `tool_choice` does not match any of the specified `tools`", "tool_choice");
    r.tool_output = ToolOutput::named;
  } else if (choice == "required") {
    for (const auto& t : body["tools"])
      tools.push_back({{"name", t["function"]["name"]}, {"parameters", tool_parameters_schema(t["function"])}});
    spec.several = get_bool(body, "parallel_tool_calls", true);
    r.tool_output = ToolOutput::required;
  } else {
    if (!limits.enable_auto_tool_choice || limits.tool_call_parser.empty())
      throw bad_request("\"auto\" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set",
                        "tool_choice");
    r.tool_output = ToolOutput::parse;
    r.tool_call_parser = limits.tool_call_parser;
    return;
  }
  spec.text = tools.dump();
  attach_grammar(r, spec, codec);
}

// The output constraint of a request (response_format, structured_outputs, guided_*), compiled and
// attached.
void resolve_structured_output(const nlohmann::ordered_json& body, const TextCodec& codec, ParsedRequest& r) {
  std::optional<GrammarSpec> spec = parse_structured_output(body);
  if (!spec) return;
  if (r.tool_output == ToolOutput::named || r.tool_output == ToolOutput::required)
    throw bad_request("You can only either use constraints for structured outputs or tools, not both.", spec->field);
  attach_grammar(r, *spec, codec);
}

// Chat with a reasoning parser: the grammar (of any constraint, tool calls included) applies after
// the reasoning, as vLLM does: from the token that closes it, unless the rendered prompt closed it
// already (Gemma 4's template ends a prompt with thinking off with an empty channel).
void constrain_after_reasoning(const TextCodec& codec, ParsedRequest& r) {
  if (!r.sampling.grammar || r.reasoning_parser.empty()) return;
  if (prompt_ends_reasoning(r.reasoning_parser, r.prompts.front().text)) return;
  const auto end = codec.token_id(reasoning_end_marker(r.reasoning_parser));
  if (!end) throw bad_request("structured outputs: the tokenizer has no token that ends the reasoning", "messages");
  r.sampling.grammar_after_token = *end;
}

}  // namespace

bool get_bool(const json& body, const char* key, bool fallback) {
  if (!present(body, key)) return fallback;
  const json& v = body.at(key);
  if (!v.is_boolean()) throw bad_request(fmt::format("'{}' must be a boolean", key), key);
  return v.get<bool>();
}

std::vector<std::string> check_fields(const json& body, bool chat) {
  // Output-changing fields tandem does not implement: 400 unless absent, null or the default.
  struct Unsupported {
    const char* name;
    json fine;  // the one accepted value besides null
    const char* why;
  };
  static const std::vector<Unsupported> common = {
      {"bad_words", json::array(), "is not supported"},
      {"logits_processors", json::array(), "is not supported (no custom logits processors)"},
      {"return_tokens_as_token_ids", false, "is not supported"},
      {"return_token_ids", false, "is not supported"},
      {"spaces_between_special_tokens", true, "can only be true"},
      {"priority", 0, "needs priority scheduling, which tandem does not have"},
  };
  static const std::vector<Unsupported> completion_only = {
      {"suffix", "", "is not supported"},
      {"prompt_embeds", json::array(), "is not supported"},
  };
  static const std::vector<Unsupported> chat_only = {
      {"echo", false, "is not supported for chat"},
      {"chat_template", "", "per request is not allowed; start the server with --chat-template"},
      {"audio", json::object(), "is not supported (text output only)"},
      {"web_search_options", json::object(), "is not supported"},
  };
  auto check = [&](const std::vector<Unsupported>& list) {
    for (const auto& u : list)
      if (present(body, u.name) && body[u.name] != u.fine)
        throw bad_request(fmt::format("'{}' {}", u.name, u.why), u.name);
  };
  check(common);
  check(chat ? chat_only : completion_only);
  if (chat && present(body, "modalities") && body["modalities"] != json::array({"text"}))
    throw bad_request("only 'modalities': [\"text\"] is supported", "modalities");

  // Everything tandem reads (tools / tool_choice / parallel_tool_calls: resolve_tool_choice; the
  // structured-output fields: parse_structured_output), or ignores knowingly because it cannot change the
  // output (user, metadata, cache_salt, ...). Anything else is ignored with a warning, as vLLM does.
  static const std::set<std::string> known_common = {
      "model", "frequency_penalty", "presence_penalty", "logit_bias", "logprobs", "max_tokens", "n", "seed", "stop",
      "stream", "stream_options", "temperature", "top_p", "user", "best_of", "use_beam_search", "top_k", "min_p",
      "repetition_penalty", "length_penalty", "stop_token_ids", "include_stop_str_in_output", "ignore_eos",
      "min_tokens", "skip_special_tokens", "spaces_between_special_tokens", "truncate_prompt_tokens",
      "allowed_token_ids", "prompt_logprobs", "add_special_tokens", "response_format", "guided_json",
      "guided_regex", "guided_choice", "guided_grammar", "guided_decoding_backend", "guided_whitespace_pattern",
      "structured_outputs", "priority", "request_id", "logits_processors", "return_tokens_as_token_ids",
      "return_token_ids", "cache_salt", "kv_transfer_params", "vllm_xargs", "bad_words", "speculative", "metadata",
      "store", "service_tier"};
  static const std::set<std::string> known_completion = {"prompt", "echo", "suffix", "prompt_embeds"};
  static const std::set<std::string> known_chat = {
      "messages", "top_logprobs", "max_completion_tokens", "tools", "tool_choice", "parallel_tool_calls",
      "reasoning_effort", "enable_thinking", "include_reasoning", "echo", "add_generation_prompt",
      "continue_final_message", "documents", "chat_template", "chat_template_kwargs", "mm_processor_kwargs",
      "modalities", "audio", "web_search_options", "functions", "function_call"};
  std::vector<std::string> ignored;
  for (const auto& [key, v] : body.items())
    if (!known_common.count(key) && !(chat ? known_chat : known_completion).count(key)) ignored.push_back(key);
  return ignored;
}

std::string continue_final_message(const json& body, std::string rendered) {
  if (!get_bool(body, "continue_final_message", false)) return rendered;
  const json& messages = body["messages"];  // validated by chat_template_variables
  std::string content = message_text(messages.back(), messages.size() - 1);
  // As transformers' apply_chat_template: the final message's content, stripped of surrounding
  // whitespace, is found last in the rendered chat and everything after it is dropped.
  const auto first = content.find_first_not_of(" \t\r\n");
  const auto last = content.find_last_not_of(" \t\r\n");
  const std::string final_text = first == std::string::npos ? std::string() : content.substr(first, last - first + 1);
  const auto at = final_text.empty() ? std::string::npos : rendered.rfind(final_text);
  if (at == std::string::npos)
    throw bad_request("continue_final_message is set but the final message does not appear in the chat after "
                      "applying the chat template", "continue_final_message");
  rendered.resize(at + final_text.size());
  return rendered;
}

nlohmann::ordered_json parse_body(const std::string& text) {
  nlohmann::ordered_json body;
  try {
    body = parse_json<nlohmann::ordered_json>(text);
  } catch (const json::exception& e) {  // a parse_error, or out_of_range for a number past a double (1e400)
    throw bad_request(fmt::format("request body is not valid JSON: {}", e.what()));
  }
  if (!body.is_object()) throw bad_request("request body must be a JSON object");
  return body;
}

std::string resolve_model(const json& body, const std::vector<std::string>& served_names) {
  if (!present(body, "model")) return served_names.empty() ? std::string() : served_names.front();
  if (!body["model"].is_string()) throw bad_request("'model' must be a string", "model");
  std::string model = body["model"];
  for (const auto& n : served_names)
    if (n == model) return model;
  throw ApiError(404, fmt::format("The model '{}' does not exist.", model), "model",
                 "invalid_request_error", "model_not_found");
}

Request ParsedRequest::engine_request(int choice) const {
  Request req;
  req.prompt = prompts[choice / n].tokens;
  req.images = prompts[choice / n].images;
  req.sampling = sampling;
  if (sampling.seed && n > 1) req.sampling.seed = *sampling.seed + static_cast<uint64_t>(choice % n);
  req.sampling.top_logprobs = logprobs;
  req.max_tokens = max_tokens;
  req.stop_token_ids = stop_token_ids;
  req.ignore_eos = ignore_eos;
  req.num_speculative_tokens = num_speculative_tokens;
  req.prompt_logprobs = prompt_logprobs;
  return req;
}

ParsedRequest parse_completion_request(const nlohmann::ordered_json& ordered, const TextCodec& codec,
                                       const std::vector<std::string>& served_names,
                                       const Limits& limits) {
  const json body = ordered;
  ParsedRequest r;
  r.chat = false;
  r.model = resolve_model(body, served_names);
  r.ignored_fields = check_fields(body, false);
  parse_common(body, codec, limits, r);
  r.echo = get_bool(body, "echo", false);
  if (present(body, "logprobs")) {
    const json& lp = body["logprobs"];
    if (lp.is_boolean()) throw bad_request("'logprobs' must be an integer for completions", "logprobs");
    int64_t n = get_integer(body, "logprobs", -1);
    if (n < 0 || n > limits.max_logprobs)
      throw bad_request(fmt::format("'logprobs' must be between 0 and {}", limits.max_logprobs), "logprobs");
    r.logprobs = static_cast<int>(n);
  }
  // echo + logprobs: the prompt's tokens get logprobs too (vLLM computes prompt logprobs for it).
  if (r.echo && r.logprobs >= 0) r.prompt_logprobs = std::max(r.prompt_logprobs, r.logprobs);
  const bool add_special = get_bool(body, "add_special_tokens", true);

  if (!body.contains("prompt") || body["prompt"].is_null())
    throw bad_request("'prompt' is required", "prompt");
  const json& p = body["prompt"];
  auto add_text = [&](const std::string& text) {
    PromptInput in;
    in.text = text;
    in.tokens = codec.encode(text, add_special);
    if (in.tokens.empty()) throw bad_request("the prompt is empty", "prompt");
    r.prompts.push_back(std::move(in));
  };
  auto add_ids = [&](const json& ids) {
    PromptInput in;
    in.tokens = token_ids(ids, codec, "prompt");
    in.text = codec.decode(in.tokens, false);
    r.prompts.push_back(std::move(in));
  };
  if (p.is_string()) {
    add_text(p.get<std::string>());
  } else if (is_token_array(p)) {
    add_ids(p);
  } else if (p.is_array() && !p.empty()) {
    if (static_cast<int64_t>(p.size()) > limits.max_choices)  // before tokenizing any of them
      throw bad_request(fmt::format("at most {} prompts per request, got {}", limits.max_choices, p.size()), "prompt");
    for (const auto& x : p) {
      if (x.is_string()) add_text(x.get<std::string>());
      else if (is_token_array(x)) add_ids(x);
      else
        throw bad_request("'prompt' must be a string, a list of strings, a list of token ids or a list "
                          "of token-id lists", "prompt");
    }
  } else {
    throw bad_request("'prompt' must be a string, a list of strings, a list of token ids or a list of "
                      "token-id lists", "prompt");
  }
  truncate_prompts(body, codec, limits, r);
  resolve_lengths(body, limits, r, false);
  resolve_structured_output(ordered, codec, r);
  return r;
}

json chat_template_variables(const json& body, const TextCodec& codec, std::vector<std::string>* image_urls) {
  if (!body.contains("messages")) throw bad_request("'messages' is required", "messages");
  const json& messages = body["messages"];
  if (!messages.is_array() || messages.empty())
    throw bad_request("'messages' must be a non-empty list", "messages");
  json out = json::array();
  for (size_t i = 0; i < messages.size(); ++i) {
    const json& m = messages[i];
    if (!m.is_object()) throw bad_request(fmt::format("messages[{}] must be an object", i), "messages");
    if (!m.contains("role") || !m["role"].is_string())
      throw bad_request(fmt::format("messages[{}].role must be a string", i), "messages");
    std::string role = m["role"];
    if (role != "system" && role != "developer" && role != "user" && role != "assistant" && role != "tool")
      throw bad_request(fmt::format("messages[{}].role '{}' is not one of system, developer, user, "
                                    "assistant, tool", i, role), "messages");
    json msg = m;  // keep extra keys (tool_calls, name, tool_call_id, ...) for the template
    if (role == "developer") msg["role"] = "system";
    msg["content"] = message_content(m, i, image_urls);
    if (role == "assistant" && present(m, "tool_calls")) msg["tool_calls"] = normalize_tool_calls(m["tool_calls"], i);
    out.push_back(std::move(msg));
  }
  if (codec.chat_template_source().find("tool_responses") != std::string::npos) attach_tool_responses(out);
  json vars = json::object();
  if (present(body, "chat_template_kwargs")) {
    if (!body["chat_template_kwargs"].is_object())
      throw bad_request("'chat_template_kwargs' must be an object", "chat_template_kwargs");
    for (const auto& [k, v] : body["chat_template_kwargs"].items()) vars[k] = v;
  }
  // Top-level template switches some clients send directly.
  for (const char* k : {"enable_thinking", "reasoning_effort"})
    if (present(body, k) && !vars.contains(k)) vars[k] = body[k];
  if (present(body, "tools")) {
    check_tools(body["tools"]);
    vars["tools"] = body["tools"];  // rendered with tool_choice "none" too, as vLLM does
  }
  if (present(body, "documents")) {
    if (!body["documents"].is_array()) throw bad_request("'documents' must be a list", "documents");
    vars["documents"] = body["documents"];
  }
  vars["messages"] = std::move(out);
  vars["add_generation_prompt"] = get_bool(body, "add_generation_prompt", true);
  if (get_bool(body, "continue_final_message", false) && vars["add_generation_prompt"].get<bool>())
    throw bad_request("Cannot set both 'continue_final_message' and 'add_generation_prompt' to true (set "
                      "'add_generation_prompt': false to continue the final message)", "continue_final_message");
  if (!vars.contains("bos_token")) vars["bos_token"] = codec.bos_token();
  if (!vars.contains("eos_token")) vars["eos_token"] = codec.eos_token();
  return vars;
}

ParsedRequest parse_chat_request(const nlohmann::ordered_json& ordered, const TextCodec& codec,
                                 const std::vector<std::string>& served_names, const Limits& limits) {
  const json body = ordered;
  ParsedRequest r;
  r.chat = true;
  r.model = resolve_model(body, served_names);
  r.ignored_fields = check_fields(body, true);
  parse_common(body, codec, limits, r);
  bool logprobs = get_bool(body, "logprobs", false);
  int64_t top = get_integer(body, "top_logprobs", 0);
  if (top < 0 || top > limits.max_logprobs)
    throw bad_request(fmt::format("'top_logprobs' must be between 0 and {}", limits.max_logprobs),
                      "top_logprobs");
  if (present(body, "top_logprobs") && !logprobs && top > 0)
    throw bad_request("'top_logprobs' requires 'logprobs' to be true", "top_logprobs");
  r.logprobs = logprobs ? static_cast<int>(top) : -1;

  resolve_tool_choice(body, limits, codec, r);
  r.reasoning_parser = limits.reasoning_parser;
  if (!codec.has_chat_template())
    throw bad_request("this model has no chat template; use /v1/completions", "messages");
  std::vector<std::string> image_urls;
  json vars = chat_template_variables(body, codec, &image_urls);
  PromptInput in;
  try {
    in.text = codec.render_chat(vars);
  } catch (const Error& e) {
    throw bad_request(fmt::format("the chat template failed: {}", e.what()), "messages");
  }
  in.text = continue_final_message(body, std::move(in.text));
  // The template emits <bos> itself (vLLM's chat default add_special_tokens is false).
  in.tokens = codec.encode(in.text, get_bool(body, "add_special_tokens", false));
  if (in.tokens.empty()) throw bad_request("the rendered prompt is empty", "messages");
  resolve_images(body, image_urls, limits.images, in);
  r.prompts.push_back(std::move(in));
  truncate_prompts(body, codec, limits, r);
  resolve_lengths(body, limits, r, true);
  resolve_structured_output(ordered, codec, r);
  constrain_after_reasoning(codec, r);
  return r;
}

}  // namespace tandem::server
