// Property test: random schemas from the supported subset, random sampling among the allowed
// tokens of a byte-level vocabulary until the stop token; every finished output must parse as
// JSON and validate against its schema (a small validator for the subset below). Also checks,
// on the way, that a state is never stuck (some token is always allowed) and, for a sample of
// steps, that the mask equals brute force.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <regex>

#include "helpers.h"
#include "schema_gen.h"

namespace tandem::grammar {
namespace {

using namespace testing;
using json = nlohmann::json;
using ojson = nlohmann::ordered_json;

std::shared_ptr<const Vocabulary> sampling_vocab() {
  std::vector<std::string> t;
  // Byte-level: every printable ASCII byte, \t \n \r, and enough high bytes to spell é, 日 and
  // other characters (lead and continuation bytes), so no state is stranded by the vocabulary.
  for (int b = 0x20; b < 0x7F; ++b) t.push_back(std::string(1, static_cast<char>(b)));
  for (int b : {0x80, 0x97, 0x98, 0x9F, 0xA5, 0xA9, 0xBF, 0xC2, 0xC3, 0xE0, 0xE6, 0xED, 0xF0})
    t.push_back(std::string(1, static_cast<char>(b)));
  for (const char* s : {"true", "false", "null", "\":", "\",", "{\"", "\"}", "}]", "[]", "{}", "\\n", "\\\"", "\\u00e9",
                        "é", "日", "\xC3", "\xA9", "ab", "12", "0.5", "e5", "E-2", "\"a\"", "\"b\":", ", ", "cat",
                        "dog", "-0", "T", "Z", "@", "ex", ":00", "2024-", "\t", "\r"})
    t.push_back(s);
  t.push_back("<eos>");
  int32_t eos = static_cast<int32_t>(t.size()) - 1;
  return std::make_shared<const Vocabulary>(std::move(t), std::vector<int32_t>{eos});
}

TEST(Property, RandomSchemasSampleValidJson) {
  auto vocab = sampling_vocab();
  const int32_t V = vocab->size();
  const int kSchemas = 400, kSeeds = 4, kCap = 6000;
  int finished = 0, total = 0, overflow = 0, brute_checks = 0;
  size_t total_bytes = 0;
  for (int si = 0; si < kSchemas; ++si) {
    ojson schema = SchemaGen(1000 + si).root();
    JsonSchemaOptions opt;
    opt.compact = si % 3 == 0;
    std::optional<CompiledGrammar> compiled;
    try {
      compiled.emplace(compile_json_schema(schema.dump(), vocab, opt));
    } catch (const std::exception& e) {
      FAIL() << e.what() << "\nschema: " << schema.dump();
    }
    const CompiledGrammar& g = *compiled;
    for (int seed = 0; seed < kSeeds; ++seed) {
      ++total;
      std::mt19937 rng(seed * 7919 + si);
      GrammarMatcher m(g);
      std::string out;
      std::vector<uint32_t> w(vocab->bitmask_words());
      for (int step = 0; step < kCap && !m.is_terminated(); ++step) {
        m.fill_next_token_bitmask(w.data());
        if (seed == 0 && step < 25) {
          ++brute_checks;
          ASSERT_EQ(allowed_ids(w, V), allowed_ids(brute_mask(m), V)) << schema.dump() << "\nafter: " << out;
        }
        auto ids = allowed_ids(w, V);
        ASSERT_FALSE(ids.empty()) << "stuck: " << schema.dump() << "\nafter: " << out;
        int32_t id = ids[rng() % ids.size()];
        ASSERT_TRUE(m.accept_token(id));
        if (!m.is_terminated()) out += vocab->token(id);
      }
      if (!m.is_terminated()) continue;
      ++finished;
      total_bytes += out.size();
      if (std::getenv("GRAMMAR_PROPERTY_VERBOSE")) std::cout << schema.dump() << "\n  -> " << out << "\n";
      json value;
      try {
        value = json::parse(out);
      } catch (const json::out_of_range& e) {  // 1e999: valid JSON, not representable as double
        ++overflow;
        continue;
      } catch (const json::exception& e) {
        FAIL() << "not JSON: " << e.what() << "\nschema: " << schema.dump() << "\noutput: " << out;
      }
      std::string why;
      EXPECT_TRUE(validate(value, schema, schema, why)) << why << "\nschema: " << schema.dump() << "\noutput: " << out;
    }
  }
  std::cout << "property: " << finished << "/" << total << " finished within " << kCap << " tokens, " << overflow
            << " number overflows, " << total_bytes / std::max(finished, 1) << " bytes on average, " << brute_checks << " masks checked by brute force\n";
  EXPECT_GT(finished, total * 7 / 10);
}

}  // namespace
}  // namespace tandem::grammar
