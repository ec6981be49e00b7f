// JSON files with errors that name the file.
#pragma once
#include <nlohmann/json.hpp>
#include <string>

namespace tandem {

// Throws tandem::Error("cannot read PATH" / "PATH: malformed JSON at line L, column C: ...").
nlohmann::json read_json_file(const std::string& path);

}  // namespace tandem
