// OpenAI / vLLM request parsing and validation: turns a /v1/completions or /v1/chat/completions
// JSON body into prompts (token ids) and engine parameters, or throws ApiError (4xx).
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "engine/request.h"
#include "server/image_input.h"
#include "server/service.h"

namespace tandem::server {

struct Limits {
  int max_model_len = 8192;
  int max_n = 16;              // choices per prompt
  int max_choices = 64;        // prompts × n
  int max_stop = 16;           // stop strings
  int max_stop_length = 512;   // bytes per stop string
  int max_stop_token_ids = 64;
  int max_logprobs = 20;
  int max_logit_bias = 1024;       // entries in logit_bias
  int max_allowed_token_ids = 1 << 16;
  int num_speculative_tokens = 0;  // configured k: per-request overrides must be ≤ this
  // Tool calling and reasoning, as vLLM's --enable-auto-tool-choice, --tool-call-parser NAME and
  // --reasoning-parser NAME (empty: none).
  bool enable_auto_tool_choice = false;
  std::string tool_call_parser;
  std::string reasoning_parser;
  // Chat image_url parts (a model with a vision tower; otherwise they are refused).
  ImageOptions images;
};

// How a chat request's output is read for tool calls (from tools + tool_choice).
enum class ToolOutput {
  none,      // no tools, or tool_choice "none": all text is content
  parse,     // tool_choice "auto": the --tool-call-parser extracts calls from the text
  named,     // tool_choice {"type":"function","function":{"name":...}}: one Gemma 4 call of it, constrained
  required,  // tool_choice "required": one or more Gemma 4 tool calls, constrained
};

struct PromptInput {
  std::vector<int32_t> tokens;
  std::string text;  // the prompt as text (for echo); decoded when given as ids
  std::vector<ImageInput> images;  // chat: the images behind the expanded <|image|> placeholders of `tokens`
};

struct ParsedRequest {
  bool chat = false;
  std::string model;
  std::vector<PromptInput> prompts;  // completions may carry several; chat always one
  int n = 1;
  int max_tokens = 16;
  SamplingParams sampling;
  std::vector<std::string> stop;
  std::vector<int32_t> stop_token_ids;
  bool ignore_eos = false;
  bool skip_special_tokens = true;
  bool stream = false;
  bool include_usage = false;       // stream_options.include_usage
  bool continuous_usage = false;    // stream_options.continuous_usage_stats (vLLM)
  bool spec_trace = false;          // stream_options.tandem_spec_trace (tandem): per-token provenance
  bool echo = false;                // completions
  int logprobs = -1;                // alternatives per token; -1: no logprobs
  int num_speculative_tokens = -1;  // -1: server default
  std::string reasoning_parser;     // chat with --reasoning-parser: splits thinking into reasoning
  bool has_tools = false;           // chat: 'tools' given (the message then carries tool_calls)
  ToolOutput tool_output = ToolOutput::none;
  std::string tool_call_parser;     // ToolOutput::parse
  bool include_stop_str_in_output = false;  // keep the matched stop string / stop token text
  int prompt_logprobs = -1;         // engine prompt logprobs: explicit prompt_logprobs or echo + logprobs
  bool return_prompt_logprobs = false;  // the request set "prompt_logprobs": answer with that field
  std::vector<std::string> ignored_fields;  // unknown fields (ignored, logged)

  // One engine request per (prompt, sample).
  int num_choices() const { return static_cast<int>(prompts.size()) * n; }
  Request engine_request(int choice) const;
};

// `served_names`: accepted values of "model" (an absent "model" means the first). The body keeps
// the client's key order: a JSON schema's property order is the order the output writes them in.
ParsedRequest parse_completion_request(const nlohmann::ordered_json& body, const TextCodec& codec,
                                       const std::vector<std::string>& served_names,
                                       const Limits& limits);
ParsedRequest parse_chat_request(const nlohmann::ordered_json& body, const TextCodec& codec,
                                 const std::vector<std::string>& served_names, const Limits& limits);

// The chat-template variables of a chat body (messages normalized to string content, or to a list of
// text and {"type": "image"} parts when they hold images; tools, add_generation_prompt,
// chat_template_kwargs and bos/eos tokens). The URLs of the image parts, in prompt order, go to
// *image_urls when given. Used by /tokenize too (whose images stay single placeholders).
nlohmann::json chat_template_variables(const nlohmann::json& body, const TextCodec& codec,
                                       std::vector<std::string>* image_urls = nullptr);

// continue_final_message (vLLM / transformers): cut the rendered chat right after the final
// message's content, so the model continues it. Returns `rendered` unchanged when not requested.
std::string continue_final_message(const nlohmann::json& body, std::string rendered);

// Request fields tandem does not implement and that would change the output: a 400 naming the
// field when set to anything but its default. Unknown fields are ignored (as vLLM does); their
// names are returned so the caller can log them.
std::vector<std::string> check_fields(const nlohmann::json& body, bool chat);

// Parses the body text (keys in the client's order); throws ApiError(400) for malformed JSON or a
// non-object.
nlohmann::ordered_json parse_body(const std::string& text);

// A boolean field of a request body: `fallback` when absent or null (null is an unset field, as for every
// field the request parsers read), else a 400 naming the field unless it is a boolean.
bool get_bool(const nlohmann::json& body, const char* key, bool fallback);

// "model" check shared by every endpoint.
std::string resolve_model(const nlohmann::json& body, const std::vector<std::string>& served_names);

}  // namespace tandem::server
