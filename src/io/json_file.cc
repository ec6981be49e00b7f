#include "io/json_file.h"

#include <fstream>
#include <sstream>

#include "util/error.h"
#include "util/json_parse.h"

namespace tandem {

nlohmann::json read_json_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("cannot read {}", path);
  std::stringstream buffer;
  buffer << in.rdbuf();
  try {
    return parse_json(buffer.str());
  } catch (const nlohmann::json::exception& e) {
    fail("{}: malformed JSON: {}", path, e.what());
  }
}

}  // namespace tandem
