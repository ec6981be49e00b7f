// Errors returned to HTTP clients as OpenAI-style JSON bodies:
//   {"error": {"message": ..., "type": ..., "param": ..., "code": ...}}
#pragma once
#include <nlohmann/json.hpp>

#include <stdexcept>
#include <string>

namespace tandem::server {

class ApiError : public std::runtime_error {
 public:
  ApiError(int status, std::string message, std::string param = {},
           std::string type = "invalid_request_error", std::string code = {})
      : std::runtime_error(message), status_(status), param_(std::move(param)),
        type_(std::move(type)), code_(std::move(code)) {}

  int status() const { return status_; }
  const std::string& param() const { return param_; }
  const std::string& type() const { return type_; }
  const std::string& code() const { return code_; }

  nlohmann::json to_json() const { return error_body(what(), type_, param_, code_); }

  static nlohmann::json error_body(const std::string& message, const std::string& type,
                                   const std::string& param = {}, const std::string& code = {}) {
    nlohmann::json e = {{"message", message}, {"type", type}};
    e["param"] = param.empty() ? nlohmann::json(nullptr) : nlohmann::json(param);
    e["code"] = code.empty() ? nlohmann::json(nullptr) : nlohmann::json(code);
    return {{"error", e}};
  }

 private:
  int status_;
  std::string param_, type_, code_;
};

inline ApiError bad_request(std::string message, std::string param = {}) {
  return ApiError(400, std::move(message), std::move(param));
}

}  // namespace tandem::server
