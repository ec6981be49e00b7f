// Subcommands register themselves here (one file per subcommand in src/cli/), so adding a command
// touches no shared file. main() builds the CLI11 app from the registry.
#pragma once
#include <CLI/CLI.hpp>

#include <functional>
#include <string>
#include <vector>

namespace tandem::cli {

// Called once with the subcommand's CLI11 app; must add options and set a callback.
using CommandSetup = std::function<void(CLI::App& sub)>;

struct Command {
  std::string name;
  std::string description;
  CommandSetup setup;
};

std::vector<Command>& command_registry();

struct RegisterCommand {
  RegisterCommand(std::string name, std::string description, CommandSetup setup) {
    command_registry().push_back({std::move(name), std::move(description), std::move(setup)});
  }
};

}  // namespace tandem::cli
