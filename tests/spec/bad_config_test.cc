// Bad --speculative-config values through the real `tandem generate`: one clear error line naming
// what is wrong, exit code 1, no crash.
#include <gtest/gtest.h>

#include "../model/fixtures.h"

namespace tandem {
namespace {

void expect_error(const std::string& spec_json, std::initializer_list<std::string> needles,
                  const std::string& target = "gemma4-moe") {
  std::string out;
  const std::string cmd = std::string(TANDEM_BINARY) + " generate --model " + testing::fixtures_dir() + "/" + target +
                          " --ids 2,5,7 --max-tokens 4 --speculative-config '" + spec_json + "'";
  EXPECT_EQ(testing::run_command(cmd, &out), 1) << out;
  const size_t at = out.find("error: ");
  ASSERT_NE(at, std::string::npos) << out;
  EXPECT_EQ(out.find("error: ", at + 1), std::string::npos) << "more than one error line: " << out;
  for (const auto& n : needles) EXPECT_NE(out.find(n), std::string::npos) << "missing '" << n << "' in: " << out;
}

const std::string kFixtures = std::string(TANDEM_SOURCE_DIR) + "/tests/fixtures/";

TEST(SpecBadInput, DrafterForAnotherTarget) {
  expect_error("{\"model\": \"" + kFixtures + "gemma4-e2b-assistant\", \"num_speculative_tokens\": 2}",
               {"does not fit target", "gemma4-e2b-assistant", "gemma4-moe", "backbone_hidden_size", "80", "64"});
}

TEST(SpecBadInput, NonPositiveK) {
  expect_error("{\"model\": \"" + kFixtures + "gemma4-moe-assistant\", \"num_speculative_tokens\": 0}",
               {"num_speculative_tokens", "between 1 and"});
  expect_error("{\"model\": \"" + kFixtures + "gemma4-moe-assistant\", \"num_speculative_tokens\": -3}",
               {"num_speculative_tokens", "-3"});
}

TEST(SpecBadInput, AbsurdlyLargeK) {
  expect_error("{\"model\": \"" + kFixtures + "gemma4-moe-assistant\", \"num_speculative_tokens\": 100000}",
               {"num_speculative_tokens", "100000"});
}

TEST(SpecBadInput, MissingDrafterDirectory) {
  expect_error("{\"model\": \"/nonexistent/drafter\", \"num_speculative_tokens\": 2}", {"/nonexistent/drafter", "does not exist"});
}

TEST(SpecBadInput, NgramMinAboveMax) {
  expect_error("{\"method\": \"ngram\", \"prompt_lookup_min\": 4, \"prompt_lookup_max\": 2, \"num_speculative_tokens\": 2}",
               {"prompt_lookup_min", "4", "2"});
}

TEST(SpecBadInput, UnknownKeyAndMalformedJson) {
  expect_error("{\"model\": \"" + kFixtures + "gemma4-moe-assistant\", \"num_speculative_tokens\": 2, \"speed\": 11}",
               {"unknown key", "speed"});
  expect_error("{\"model\": ", {"not valid JSON"});
  expect_error("{\"method\": \"eagle3\", \"model\": \"" + kFixtures + "gemma4-moe-assistant\", \"num_speculative_tokens\": 2}",
               {"eagle3", "not supported"});
}

TEST(SpecBadInput, MtpWithANonAssistantDrafter) {
  expect_error("{\"method\": \"mtp\", \"model\": \"" + kFixtures + "gemma4-e2b\", \"num_speculative_tokens\": 2}",
               {"gemma4_assistant", "gemma4-e2b"});
}

}  // namespace
}  // namespace tandem
