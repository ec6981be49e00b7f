// Structured outputs through the engine, on the bundled model (models/tandem-code-demo, trained on
// Python code, never on JSON: its outputs are odd but must match). Every output under a grammar
// matches it, for random schemas and sampling seeds, with and without speculation; speculative +
// constrained greedy output equals plain constrained greedy output for every proposer, alone and
// batched; and the acceptance rate under a grammar is printed (docs/PERF.md quotes it).
#include <gtest/gtest.h>

#include <iostream>
#include <map>

#include "../grammar/schema_gen.h"
#include "../model/fixtures.h"
#include "engine/engine.h"
#include "grammar/matcher.h"
#include "spec/speculative_config.h"
#include "tokenizer/tokenizer.h"

namespace tandem {
namespace {

using grammar::CompiledGrammar;
using grammar::GrammarMatcher;
using ojson = nlohmann::ordered_json;

const std::string kModel = std::string(TANDEM_SOURCE_DIR) + "/models/tandem-code-demo";
const std::string kDrafter = std::string(TANDEM_SOURCE_DIR) + "/models/tandem-code-demo-assistant";

struct Bundled {
  std::unique_ptr<Backend> backend = testing::test_backend(2);
  std::unique_ptr<Gemma4Model> model = Gemma4Model::load(kModel, *backend);
  Tokenizer tokenizer = Tokenizer::load(kModel);
  std::shared_ptr<const grammar::Vocabulary> vocab =
      grammar::Vocabulary::from_tokenizer(tokenizer, model->config().vocab_size, model->config().eos_ids);

  std::unique_ptr<Engine> engine(const std::string& spec_json = "", int k = 0) {
    EngineConfig config;
    config.max_model_len = 512;
    config.kv_cache_bytes = 32 << 20;
    std::unique_ptr<Proposer> proposer;
    if (!spec_json.empty()) {
      SpeculativeConfig spec = parse_speculative_config(spec_json);
      proposer = make_proposer(spec, *model);
      config.num_speculative_tokens = k;
    }
    return std::make_unique<Engine>(*model, std::move(proposer), config);
  }
  std::vector<int32_t> prompt(const std::string& text) const { return tokenizer.encode(text, true); }
};

Bundled& bundled() {
  static Bundled* b = new Bundled();
  return *b;
}

struct Output {
  std::vector<int32_t> tokens;
  FinishReason reason = FinishReason::none;
};

Request constrained(const std::vector<int32_t>& prompt, const CompiledGrammar& g, int max_tokens, float temperature,
                    uint64_t seed = 0) {
  Request r;
  r.prompt = prompt;
  r.max_tokens = max_tokens;
  r.sampling.temperature = temperature;
  r.sampling.seed = seed;
  r.sampling.grammar = g;
  return r;
}

// Runs the requests as one batch (all submitted before the first step).
std::vector<Output> run(Engine& engine, const std::vector<Request>& requests) {
  std::vector<Output> out(requests.size());
  for (size_t i = 0; i < requests.size(); ++i)
    engine.submit(requests[i], [&out, i](const RequestOutput& o) {
      out[i].tokens.insert(out[i].tokens.end(), o.tokens.begin(), o.tokens.end());
      if (o.finished) out[i].reason = o.finish_reason;
    });
  engine.run_until_idle();
  return out;
}

// The output must be a prefix of a match (fed to a fresh matcher token by token); finished with
// "stop", its last token is a stop token the grammar allowed there, so the text matches whole.
void expect_matches(const CompiledGrammar& g, const Output& o, const std::string& what) {
  GrammarMatcher m(g);
  for (size_t i = 0; i < o.tokens.size(); ++i) ASSERT_TRUE(m.accept_token(o.tokens[i])) << what << ": token " << i;
  if (o.reason == FinishReason::stop) EXPECT_TRUE(m.is_terminated()) << what;
  else EXPECT_EQ(o.reason, FinishReason::length) << what;
}

std::string text_of(const Output& o) {
  std::vector<int32_t> ids = o.tokens;
  if (o.reason == FinishReason::stop) ids.pop_back();  // the stop token
  return bundled().tokenizer.decode(ids, true);
}

// A few grammars of each kind, compiled over the bundled vocabulary.
std::vector<std::pair<std::string, CompiledGrammar>> grammars() {
  auto vocab = bundled().vocab;
  return {
      {"schema", grammar::compile_json_schema(
                     R"({"type":"object","properties":{"name":{"type":"string","maxLength":12},"age":{"type":"integer"},
                         "tags":{"type":"array","items":{"enum":["a","b","c"]},"maxItems":3}},
                         "required":["name","age"],"additionalProperties":false})",
                     vocab)},
      {"json_object", grammar::compile_json_object(vocab)},
      {"regex", grammar::compile_regex(R"((def|class) [a-z_]{1,12}\(\):)", vocab)},
      {"choice", grammar::compile_choice(std::vector<std::string>{"return None", "return self", "pass"}, vocab)},
      {"ebnf", grammar::compile_ebnf("root ::= \"x = \" num (\"+\" num)*\nnum ::= [0-9]+", vocab)},
  };
}

const char* const kPrompts[] = {"def main():\n    ", "import os\n\n", "class Point:\n    def __init__(self, x, y):\n"};

// Speculative proposers on the bundled pair: its trained MTP drafter, the target as its own draft
// model (it always agrees unconstrained, so only the grammar cuts its runs), prompt n-grams.
struct SpecCase {
  const char* name;
  std::string json;
};
std::vector<SpecCase> spec_cases(int k) {
  const std::string ks = std::to_string(k);
  return {{"mtp", R"({"model": ")" + kDrafter + R"(", "num_speculative_tokens": )" + ks + "}"},
          {"draft_model", R"({"method": "draft_model", "model": ")" + kModel + R"(", "num_speculative_tokens": )" + ks + "}"},
          {"ngram", R"({"method": "ngram", "prompt_lookup_min": 1, "prompt_lookup_max": 3, "num_speculative_tokens": )" +
                        ks + "}"}};
}

TEST(Constrained, EveryOutputMatchesItsGrammar) {
  auto engine = bundled().engine();
  const auto gs = grammars();
  std::vector<Request> requests;
  std::vector<std::string> names;
  for (const auto& [name, g] : gs)
    for (int p = 0; p < 3; ++p)
      for (float t : {0.0f, 1.0f}) {
        requests.push_back(constrained(bundled().prompt(kPrompts[p]), g, 48, t, 7 + p));
        names.push_back(name + " prompt " + std::to_string(p) + " T=" + std::to_string(t));
      }
  const auto out = run(*engine, requests);
  int stopped = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    expect_matches(*requests[i].sampling.grammar, out[i], names[i]);
    stopped += out[i].reason == FinishReason::stop;
  }
  // The choice and regex grammars are short: they must end with the stop token.
  EXPECT_GE(stopped, 12);
  // Unconstrained, the same greedy prompt continues as Python: the mask really changes the output.
  Request free = requests[0];
  free.sampling.grammar.reset();
  EXPECT_NE(run(*engine, {free})[0].tokens, out[0].tokens);
}

TEST(Constrained, RandomSchemasAndSeedsGiveValidJson) {
  auto vocab = bundled().vocab;
  auto plain = bundled().engine();
  auto spec = bundled().engine(spec_cases(3)[0].json, 3);
  int finished = 0, total = 0;
  for (int si = 0; si < 24; ++si) {
    const ojson schema = grammar::testing::SchemaGen(500 + si).root();
    grammar::JsonSchemaOptions options;
    options.compact = si % 2 == 0;  // the model likes whitespace: compact schemas finish more often
    const CompiledGrammar g = grammar::compile_json_schema(schema.dump(), vocab, options);
    std::vector<Request> requests;
    for (uint64_t seed = 0; seed < 4; ++seed)
      requests.push_back(constrained(bundled().prompt(kPrompts[seed % 3]), g, 64, seed == 3 ? 0.7f : 1.0f, seed * 31 + si));
    for (Engine* e : {plain.get(), spec.get()}) {
      const auto out = run(*e, requests);
      for (const auto& o : out) {
        const std::string what = "schema " + schema.dump() + "\noutput " + text_of(o);
        ++total;
        expect_matches(g, o, what);
        if (o.reason != FinishReason::stop) continue;
        ++finished;
        nlohmann::json value;
        try {
          value = nlohmann::json::parse(text_of(o));
        } catch (const nlohmann::json::out_of_range&) {  // 1e999: valid JSON, not a double
          continue;
        } catch (const nlohmann::json::exception& e) {
          ADD_FAILURE() << "not JSON: " << e.what() << "\n" << what;
          continue;
        }
        std::string why;
        EXPECT_TRUE(grammar::testing::validate(value, schema, schema, why)) << why << "\n" << what;
      }
    }
  }
  std::cout << "constrained property: " << finished << "/" << total << " outputs finished within 64 tokens\n";
  EXPECT_GT(finished, total / 4);
}

void print_acceptance(const std::string& what, const SpecStats& s) {
  std::cout << "acceptance " << what << ": " << s.num_accepted_tokens << "/" << s.num_draft_tokens
            << " draft tokens = " << 100.0 * s.num_accepted_tokens / std::max<uint64_t>(s.num_draft_tokens, 1)
            << "%, mean accepted length " << 1.0 + static_cast<double>(s.num_accepted_tokens) / std::max<uint64_t>(s.num_drafts, 1)
            << " (" << s.num_drafts << " rounds)\n";
}

// Speculative + constrained greedy output == plain constrained greedy output, per proposer, one
// request at a time and all together in one batch; prints the acceptance under the grammars.
TEST(Constrained, SpeculativeGreedyEqualsPlainGreedy) {
  auto plain = bundled().engine();
  const auto gs = grammars();
  std::vector<Request> requests;
  for (const auto& [name, g] : gs)
    for (const char* p : kPrompts) requests.push_back(constrained(bundled().prompt(p), g, 40, 0.0f));
  std::vector<Output> want;
  for (const auto& r : requests) want.push_back(run(*plain, {r})[0]);
  for (int k : {1, 3, 5}) {
    for (const auto& c : spec_cases(k)) {
      SCOPED_TRACE(std::string(c.name) + " k=" + std::to_string(k));
      auto engine = bundled().engine(c.json, k);
      for (size_t i = 0; i < requests.size(); ++i) {
        const Output got = run(*engine, {requests[i]})[0];
        EXPECT_EQ(got.tokens, want[i].tokens) << "request " << i;
        EXPECT_EQ(got.reason, want[i].reason) << "request " << i;
      }
      const auto batched = run(*engine, requests);
      for (size_t i = 0; i < requests.size(); ++i) EXPECT_EQ(batched[i].tokens, want[i].tokens) << "batched request " << i;
      const SpecStats s = engine->stats().spec;
      EXPECT_GT(s.num_drafts, 0u);
      EXPECT_LE(s.num_accepted_tokens, s.num_draft_tokens);
      print_acceptance(std::string("under grammars: ") + c.name + " k=" + std::to_string(k), s);
      if (k != 3) continue;
      // The same prompts and lengths unconstrained, for comparison.
      auto free_engine = bundled().engine(c.json, k);
      std::vector<Request> free = requests;
      for (auto& r : free) r.sampling.grammar.reset();
      run(*free_engine, free);
      print_acceptance(std::string("unconstrained:   ") + c.name + " k=" + std::to_string(k), free_engine->stats().spec);
    }
  }
}

// Preemption (recompute) keeps a sequence's matcher: constrained outputs, greedy and seeded
// sampling, are the same when requests are preempted as when each runs alone.
TEST(Constrained, PreemptedSequencesResumeTheirGrammar) {
  Bundled& b = bundled();
  EngineConfig config;
  config.max_model_len = 64;
  config.block_size = 16;
  // Room for five blocks: one full-length sequence, not four growing ones.
  config.kv_cache_bytes = b.model->config().kv_bytes_per_token(4) * 16 * 5;
  const auto gs = grammars();
  std::vector<Request> requests;
  for (int i = 0; i < 4; ++i) {
    Request r = constrained(b.prompt(kPrompts[i % 3]), gs[i % 2 == 0 ? 0 : 4].second, 48, i < 2 ? 0.0f : 1.0f, 40 + i);
    r.ignore_eos = true;  // every request runs its 48 tokens, so the KV pressure is certain
    requests.push_back(r);
  }
  std::vector<Output> alone;
  {
    Engine engine(*b.model, nullptr, config);
    for (const auto& r : requests) alone.push_back(run(engine, {r})[0]);
    EXPECT_EQ(engine.stats().num_preemptions, 0u);
  }
  Engine engine(*b.model, nullptr, config);
  const auto together = run(engine, requests);
  EXPECT_GT(engine.stats().num_preemptions, 0u);
  for (size_t i = 0; i < requests.size(); ++i) {
    EXPECT_EQ(together[i].tokens, alone[i].tokens) << "request " << i;
    GrammarMatcher m(*requests[i].sampling.grammar);
    const auto& eos = b.model->config().eos_ids;
    for (int32_t t : together[i].tokens) {
      if (m.is_terminated())  // ignore_eos: once the match is complete only stop tokens follow
        EXPECT_NE(std::find(eos.begin(), eos.end(), t), eos.end()) << "request " << i;
      else
        ASSERT_TRUE(m.accept_token(t)) << "request " << i;
    }
  }
}

// A grammar that starts after a token (the end of the reasoning): free before it, constrained after.
TEST(Constrained, GrammarAfterTokenLeavesTheReasoningFree) {
  auto engine = bundled().engine();
  const auto gs = grammars();
  const CompiledGrammar& choice = gs[3].second;
  const std::vector<int32_t> prompt = bundled().prompt(kPrompts[0]);
  // The third free greedy token ends the "reasoning"; the grammar starts after it.
  Request free = constrained(prompt, choice, 6, 0.0f);
  free.sampling.grammar.reset();
  const std::vector<int32_t> head = run(*engine, {free})[0].tokens;
  Request r = constrained(prompt, choice, 24, 0.0f);
  r.sampling.grammar_after_token = head[2];
  const size_t at = std::find(head.begin(), head.end(), head[2]) - head.begin() + 1;  // its first occurrence
  const Output o = run(*engine, {r})[0];
  ASSERT_GT(o.tokens.size(), at);
  EXPECT_EQ(std::vector<int32_t>(o.tokens.begin(), o.tokens.begin() + at), std::vector<int32_t>(head.begin(), head.begin() + at));
  expect_matches(choice, Output{{o.tokens.begin() + at, o.tokens.end()}, o.reason}, "after the reasoning");
  // Speculative rounds that cross the end of the reasoning give the same output.
  for (int k : {1, 3})
    for (const auto& c : spec_cases(k)) {
      auto spec = bundled().engine(c.json, k);
      EXPECT_EQ(run(*spec, {r})[0].tokens, o.tokens) << c.name << " k=" << k;
    }
}

// ignore_eos: the output runs to max_tokens; after the match only stop tokens are allowed.
TEST(Constrained, IgnoreEosContinuesWithStopTokensAfterTheMatch) {
  const auto gs = grammars();
  const auto& eos = bundled().model->config().eos_ids;
  for (const char* spec : {"", "mtp"}) {
    auto engine = spec[0] ? bundled().engine(spec_cases(3)[0].json, 3) : bundled().engine();
    Request r = constrained(bundled().prompt(kPrompts[1]), gs[3].second, 16, 0.0f);
    r.ignore_eos = true;
    const Output o = run(*engine, {r})[0];
    EXPECT_EQ(o.reason, FinishReason::length);
    ASSERT_EQ(o.tokens.size(), 16u);
    GrammarMatcher m(gs[3].second);
    size_t i = 0;
    while (i < o.tokens.size() && !m.is_terminated()) ASSERT_TRUE(m.accept_token(o.tokens[i++])) << spec;
    EXPECT_TRUE(m.is_terminated()) << spec;
    for (; i < o.tokens.size(); ++i) EXPECT_NE(std::find(eos.begin(), eos.end(), o.tokens[i]), eos.end()) << spec;
  }
}

TEST(Constrained, RejectsMismatchedVocabularyAndConflictingMasks) {
  auto engine = bundled().engine();
  auto small = std::make_shared<const grammar::Vocabulary>(std::vector<std::string>{"a", "b", "<eos>"}, std::vector<int32_t>{2});
  Request r = constrained(bundled().prompt("x"), grammar::compile_regex("a+", small), 4, 0.0f);
  EXPECT_THROW(engine->submit(r, [](const RequestOutput&) {}), Error);
  Request m = constrained(bundled().prompt("x"), grammars()[3].second, 4, 0.0f);
  m.sampling.min_tokens = 2;
  EXPECT_THROW(engine->submit(m, [](const RequestOutput&) {}), Error);
}

}  // namespace
}  // namespace tandem
