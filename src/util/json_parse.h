#pragma once

#include <nlohmann/json.hpp>

#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>

namespace tandem {

// The most arrays and objects nested in one another that tandem accepts in JSON from outside (request
// bodies, checkpoint headers and configs). nlohmann::json parses without recursion, but copying,
// comparing, printing and most walks of a value recurse once a level: a 200 KB request nested 100000
// deep would overflow the stack of the first code that copies it and take the server down with it.
inline constexpr int kMaxJsonDepth = 512;

// Json::parse(input...) (a string, a stream or two iterators), refusing a document with more than
// kMaxJsonDepth nested arrays and objects by Json::parse_error (what any malformed document raises, so
// callers need no second handler). Text given as one string or as two byte pointers is also refused if
// it holds a NUL byte, which JSON text never does (not whitespace, and escaped inside strings): nlohmann
// reads a NUL after the value as the end of the input, so `{}` NUL `anything` parsed as `{}`. (A stream
// is read as nlohmann reads it.)
template <class Json = nlohmann::json, class... Input>
Json parse_json(Input&&... input) {
  using Event = typename Json::parse_event_t;
  auto refuse_nul = [](std::string_view text) {
    if (const size_t nul = text.find('\0'); nul != std::string_view::npos)
      throw Json::parse_error::create(101, nul + 1, "a NUL byte at byte " + std::to_string(nul + 1) + " of the text",
                                      nullptr);
  };
  if constexpr (sizeof...(Input) == 1 && (std::is_convertible_v<const Input&, std::string_view> && ...)) {
    refuse_nul(std::string_view(input...));
  } else if constexpr (sizeof...(Input) == 2 &&
                       ((std::is_pointer_v<std::decay_t<Input>> &&
                         sizeof(std::remove_pointer_t<std::decay_t<Input>>) == 1) && ...)) {
    const auto [first, last] = std::tuple(input...);
    refuse_nul(std::string_view(reinterpret_cast<const char*>(first), static_cast<size_t>(last - first)));
  }
  return Json::parse(std::forward<Input>(input)..., [](int depth, Event event, Json&) {
    // depth: the containers around the event's place, so a container that starts at depth d is the d + 1-th.
    if ((event == Event::object_start || event == Event::array_start) && depth >= kMaxJsonDepth)
      throw Json::parse_error::create(
          101, 0, "nesting deeper than " + std::to_string(kMaxJsonDepth) + " levels of arrays and objects", nullptr);
    return true;
  });
}

}  // namespace tandem
