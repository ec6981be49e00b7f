// Errors that reach a user: one sentence naming the file, tensor, field or flag, and what to do.
#pragma once
#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace tandem {

// Thrown for anything the user can fix (bad checkpoint, bad flag, bad request). The message is
// complete and printed as is; the CLI prints "error: <message>" and exits non-zero.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
  throw Error(fmt::format(format, std::forward<Args>(args)...));
}

// Internal invariant; failing it is a tandem bug, not a user error.
#define TANDEM_CHECK(cond)                                                                     \
  do {                                                                                         \
    if (!(cond)) ::tandem::fail("internal check failed: {} ({}:{})", #cond, __FILE__, __LINE__); \
  } while (0)

}  // namespace tandem
