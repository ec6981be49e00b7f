// tandem: one binary, many subcommands (serve, generate, bench, plan, inspect, logits, tokenize, ...).
#include <algorithm>
#include <cstdio>
#include <string_view>
#include <vector>

#include "cli/command.h"
#include "util/error.h"
#include "util/version.h"

namespace tandem::cli {
std::vector<Command>& command_registry() {
  static std::vector<Command> commands;
  return commands;
}
}  // namespace tandem::cli

int main(int argc, char** argv) {
  using namespace tandem;
  CLI::App app{"tandem: fast, lossless speculative decoding for Gemma 4 and friends"};
  app.set_version_flag("--version", std::string("tandem ") + kVersion);
  app.require_subcommand(1);
  auto& commands = cli::command_registry();
  std::sort(commands.begin(), commands.end(),
            [](const cli::Command& a, const cli::Command& b) { return a.name < b.name; });
  for (auto& c : commands) c.setup(*app.add_subcommand(c.name, c.description));
  // vLLM's -tp, which CLI11 (one-letter short options only) cannot declare: the option it stands for.
  static char tensor_parallel_size[] = "--tensor-parallel-size";
  std::vector<char*> args(argv, argv + argc);
  for (char*& a : args)
    if (std::string_view(a) == "-tp") a = tensor_parallel_size;
  try {
    app.parse(argc, args.data());
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  }
  return 0;
}
