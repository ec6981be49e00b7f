// The HTTP layer against a scripted engine (fakes.h) on a loopback port.
#include "server/http_server.h"

#include <arpa/inet.h>
#include <httplib.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <functional>
#include <thread>

#include "fakes.h"
#include "server/api_error.h"
#include "server/web_ui.h"

namespace tandem::server {
namespace {

using nlohmann::json;
using testing::ByteCodec;
using testing::FakeService;

class HttpTest : public ::testing::Test {
 protected:
  void start(int step_ms = 1, std::string api_key = {}) {
    service = std::make_unique<FakeService>(step_ms);
    ServerOptions o;
    o.host = "127.0.0.1";
    o.port = 0;
    o.served_model_names = {"demo"};
    o.api_key = api_key;
    o.max_body_bytes = 64 * 1024;
    o.limits = limits;
    if (configure) configure(o);
    server = std::make_unique<HttpServer>(*service, codec, o);
    port = server->bind();
    thread = std::thread([this] { server->run(); });
  }
  void TearDown() override {
    if (server) server->shutdown();
    if (thread.joinable()) thread.join();
    server.reset();
    service.reset();
  }
  httplib::Client client() {
    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(10, 0);
    return c;
  }
  json post(const std::string& path, const json& body, int expect_status = 200) {
    auto c = client();
    auto res = c.Post(path.c_str(), body.dump(), "application/json");
    EXPECT_TRUE(res);
    if (!res) return {};
    EXPECT_EQ(res->status, expect_status) << res->body;
    return json::parse(res->body);
  }
  // SSE events (payloads) of a streaming request; checks the framing on the way.
  std::vector<std::string> stream(const std::string& path, const json& body) {
    auto c = client();
    auto res = c.Post(path.c_str(), body.dump(), "application/json");
    EXPECT_TRUE(res);
    if (!res) return {};
    EXPECT_EQ(res->status, 200);
    EXPECT_NE(res->get_header_value("Content-Type").find("text/event-stream"), std::string::npos);
    std::vector<std::string> events;
    const std::string& b = res->body;
    size_t pos = 0;
    while (pos < b.size()) {
      EXPECT_EQ(b.compare(pos, 6, "data: "), 0) << b.substr(pos);
      size_t end = b.find("\n\n", pos);
      EXPECT_NE(end, std::string::npos);
      if (end == std::string::npos) break;
      events.push_back(b.substr(pos + 6, end - pos - 6));
      pos = end + 2;
    }
    EXPECT_FALSE(events.empty());
    if (!events.empty()) {
      EXPECT_EQ(events.back(), "[DONE]");
    }
    return events;
  }

  ByteCodec codec;
  Limits limits;  // tool / reasoning parser settings for start()
  std::function<void(ServerOptions&)> configure;  // further options for start()
  std::unique_ptr<FakeService> service;
  std::unique_ptr<HttpServer> server;
  std::thread thread;
  int port = 0;
};

TEST_F(HttpTest, ModelsAndHealth) {
  start();
  auto c = client();
  auto h = c.Get("/health");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);
  auto m = c.Get("/v1/models");
  ASSERT_TRUE(m);
  json j = json::parse(m->body);
  EXPECT_EQ(j["object"], "list");
  EXPECT_EQ(j["data"][0]["id"], "demo");
  EXPECT_EQ(j["data"][0]["max_model_len"], 256);
}

TEST_F(HttpTest, CompletionNonStreaming) {
  start();
  json r = post("/v1/completions", {{"model", "demo"}, {"prompt", "SAY:hello world|"}, {"max_tokens", 50}});
  EXPECT_EQ(r["object"], "text_completion");
  EXPECT_EQ(r["choices"][0]["text"], "hello world");
  EXPECT_EQ(r["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(r["usage"]["prompt_tokens"], 17);
  EXPECT_EQ(r["usage"]["completion_tokens"], 12);  // 11 bytes + EOS
  EXPECT_EQ(r["usage"]["total_tokens"], 29);

  json l = post("/v1/completions", {{"prompt", "go"}, {"max_tokens", 5}, {"echo", true}});
  EXPECT_EQ(l["choices"][0]["text"], "goabcde");
  EXPECT_EQ(l["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(l["usage"]["completion_tokens"], 5);
}

TEST_F(HttpTest, StopStringTruncatesAndAborts) {
  start(5);
  json r = post("/v1/completions", {{"prompt", "x"}, {"max_tokens", 100}, {"stop", {"fgh", "zzz"}}});
  EXPECT_EQ(r["choices"][0]["text"], "abcde");
  EXPECT_EQ(r["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(r["choices"][0]["stop_reason"], "fgh");
  EXPECT_EQ(r["usage"]["completion_tokens"], 8);
  EXPECT_GE(service->num_aborted(), 1u);
}

TEST_F(HttpTest, CompletionStreamingWithUsage) {
  start();
  auto events = stream("/v1/completions", {{"prompt", "SAY:stream me|"},
                                           {"max_tokens", 50},
                                           {"stream", true},
                                           {"stream_options", {{"include_usage", true}}}});
  std::string text;
  std::string finish;
  json usage;
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    json e = json::parse(events[i]);
    ASSERT_TRUE(e.contains("usage"));
    if (e["choices"].empty()) {
      usage = e["usage"];
      continue;
    }
    EXPECT_EQ(e["object"], "text_completion");
    text += e["choices"][0]["text"].get<std::string>();
    if (!e["choices"][0]["finish_reason"].is_null()) finish = e["choices"][0]["finish_reason"];
  }
  EXPECT_EQ(text, "stream me");
  EXPECT_EQ(finish, "stop");
  EXPECT_EQ(usage["completion_tokens"], 10);
}

TEST_F(HttpTest, ChatStreamingAndN) {
  start();
  auto events = stream("/v1/chat/completions",
                       {{"messages", {{{"role", "user"}, {"content", "SAY:hi there|"}}}}, {"stream", true}, {"n", 2}});
  std::map<int, std::string> text;
  std::map<int, bool> role;
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    json e = json::parse(events[i]);
    EXPECT_EQ(e["object"], "chat.completion.chunk");
    for (const auto& ch : e["choices"]) {
      int idx = ch["index"];
      if (ch["delta"].contains("role")) role[idx] = true;
      if (ch["delta"].contains("content")) text[idx] += ch["delta"]["content"].get<std::string>();
    }
  }
  EXPECT_TRUE(role[0] && role[1]);
  EXPECT_EQ(text[0], "hi there");
  EXPECT_EQ(text[1], "hi there");
  EXPECT_EQ(service->submitted().size(), 2u);
}

TEST_F(HttpTest, ThinkingChannelGoesToReasoningContent) {
  limits.reasoning_parser = "gemma4";
  start();
  const std::string say = "SAY:\x01thought\nplan it\x02The answer.|";
  json r = post("/v1/chat/completions", {{"messages", {{{"role", "user"}, {"content", say}}}}});
  EXPECT_EQ(r["choices"][0]["message"]["reasoning_content"], "plan it");
  EXPECT_EQ(r["choices"][0]["message"]["reasoning"], "plan it");
  EXPECT_EQ(r["choices"][0]["message"]["content"], "The answer.");
  auto events = stream("/v1/chat/completions", {{"messages", {{{"role", "user"}, {"content", say}}}}, {"stream", true}});
  std::string reasoning, content;
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    json e = json::parse(events[i]);
    for (const auto& ch : e["choices"]) {
      if (ch["delta"].contains("reasoning_content")) {
        reasoning += ch["delta"]["reasoning_content"].get<std::string>();
        EXPECT_EQ(ch["delta"]["reasoning"], ch["delta"]["reasoning_content"]);
      }
      if (ch["delta"].contains("content")) content += ch["delta"]["content"].get<std::string>();
    }
  }
  EXPECT_EQ(reasoning, "plan it");
  EXPECT_EQ(content, "The answer.");
  // Completions keep the raw text (no channel parsing), special tokens skipped.
  json c = post("/v1/completions", {{"prompt", say}});
  EXPECT_EQ(c["choices"][0]["text"], "thought\nplan itThe answer.");
}

TEST_F(HttpTest, ModelRetrieveAndPlainContentType) {
  start();
  auto c = client();
  auto m = c.Get("/v1/models/demo");
  ASSERT_TRUE(m);
  EXPECT_EQ(json::parse(m->body)["id"], "demo");
  EXPECT_EQ(c.Get("/v1/models/other")->status, 404);
  // curl -d sends application/x-www-form-urlencoded; the body is still JSON.
  auto r = c.Post("/v1/completions", R"({"prompt":"SAY:ok|"})", "application/x-www-form-urlencoded");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(json::parse(r->body)["choices"][0]["text"], "ok");
}

TEST_F(HttpTest, ChatLogprobs) {
  start();
  json r = post("/v1/chat/completions", {{"messages", {{{"role", "user"}, {"content", "SAY:ab|"}}}},
                                         {"logprobs", true}, {"top_logprobs", 2}});
  EXPECT_EQ(r["choices"][0]["message"]["content"], "ab");
  auto content = r["choices"][0]["logprobs"]["content"];
  ASSERT_EQ(content.size(), 2u);
  EXPECT_EQ(content[0]["token"], "a");
  EXPECT_DOUBLE_EQ(content[0]["logprob"].get<double>(), -0.5);
  EXPECT_EQ(content[0]["top_logprobs"].size(), 2u);
  EXPECT_EQ(content[0]["top_logprobs"][1]["token"], "B");

  json c = post("/v1/completions", {{"prompt", "SAY:xy|"}, {"logprobs", 1}});
  EXPECT_EQ(c["choices"][0]["logprobs"]["tokens"], json({"x", "y"}));
  EXPECT_EQ(c["choices"][0]["logprobs"]["text_offset"], json({0, 1}));
  EXPECT_EQ(c["choices"][0]["logprobs"]["top_logprobs"][0].size(), 1u);
}

TEST_F(HttpTest, SpeculativeOverrideReachesEngine) {
  start();
  post("/v1/completions", {{"prompt", "SAY:a|"}, {"speculative", {{"num_speculative_tokens", 0}}}});
  post("/v1/completions", {{"prompt", "SAY:a|"}});
  auto sub = service->submitted();
  ASSERT_EQ(sub.size(), 2u);
  EXPECT_EQ(sub[0].num_speculative_tokens, 0);
  EXPECT_EQ(sub[1].num_speculative_tokens, -1);
}

TEST_F(HttpTest, ErrorsAreOpenAiShaped) {
  start();
  auto c = client();
  auto bad = c.Post("/v1/completions", "{oops", "application/json");
  ASSERT_TRUE(bad);
  EXPECT_EQ(bad->status, 400);
  json e = json::parse(bad->body);
  EXPECT_EQ(e["error"]["type"], "invalid_request_error");
  EXPECT_TRUE(e["error"]["message"].is_string());

  json m = post("/v1/chat/completions", {{"model", "nope"}, {"messages", {{{"role", "user"}, {"content", "x"}}}}}, 404);
  EXPECT_EQ(m["error"]["code"], "model_not_found");

  auto big = c.Post("/v1/completions", std::string(100 * 1024, ' '), "application/json");
  ASSERT_TRUE(big);
  EXPECT_EQ(big->status, 413);
  EXPECT_TRUE(json::parse(big->body).contains("error"));

  auto none = c.Get("/v1/nothing");
  ASSERT_TRUE(none);
  EXPECT_EQ(none->status, 404);
  EXPECT_TRUE(json::parse(none->body).contains("error"));

  // A path the server answers, asked with another method: 405 with Allow.
  auto get_chat = c.Get("/v1/chat/completions");
  ASSERT_TRUE(get_chat);
  EXPECT_EQ(get_chat->status, 405);
  EXPECT_EQ(get_chat->get_header_value("Allow"), "POST");
  EXPECT_NE(json::parse(get_chat->body)["error"]["message"].get<std::string>().find("not allowed"), std::string::npos);
  auto post_health = c.Post("/health", "{}", "application/json");
  ASSERT_TRUE(post_health);
  EXPECT_EQ(post_health->status, 405);
  EXPECT_EQ(post_health->get_header_value("Allow"), "GET");
  // OPTIONS that is no CORS preflight is just another method (it was a 405 without message or Allow
  // on every path).
  auto options = c.Options("/v1/models");
  ASSERT_TRUE(options);
  EXPECT_EQ(options->status, 405);
  EXPECT_EQ(options->get_header_value("Allow"), "GET");
  EXPECT_NE(json::parse(options->body)["error"]["message"].get<std::string>().find("not allowed"), std::string::npos);
  EXPECT_EQ(c.Options("/v1/nothing")->status, 404);
}

// Odd but well-formed-JSON (or not) bodies: always a 4xx with an error object, or a 200; never a
// 5xx, and the server keeps serving.
TEST_F(HttpTest, OddBodiesNeverCrash) {
  start();
  auto c = client();
  const char* bodies[] = {
      R"({"prompt":"x","max_tokens":1e300})", R"({"prompt":"x","max_tokens":-5})", R"({"prompt":"x","seed":-1,"max_tokens":2})",
      R"({"prompt":[[]]})", R"({"prompt":[]})", R"({"prompt":[1.5]})", R"({"prompt":"x","n":1.5})",
      R"({"prompt":"x","stop":null,"max_tokens":2})", R"({"prompt":"x","stop":{"a":1}})", R"({"prompt":null})",
      R"({"prompt":"x","logprobs":-1})", R"({"prompt":"x","top_k":-7})", R"({"prompt":"x","temperature":null,"max_tokens":2})",
      R"({"prompt":"x","speculative":5})", R"({"prompt":"x","speculative":{"num_speculative_tokens":"2"}})",
      R"({"prompt":"x","stream_options":[],"stream":true})", R"({"prompt":"x","model":7})",
      R"({"prompt":"x","max_tokens":18446744073709551615})", "\"just a string\"", "", "null", "{\"prompt\":\"\xff\xfe\"}",
      R"({"messages":[{"role":"user","content":null}],"max_tokens":2})", R"({"messages":[{"role":"user"}],"max_tokens":2})",
      R"({"messages":[{"content":"x"}]})", R"({"messages":"hi"})", R"({"messages":[{"role":"user","content":[{"type":"text"}]}]})",
      R"({"messages":[{"role":"user","content":"x"}],"chat_template_kwargs":[1]})", R"({"messages":[1,2,3]})",
  };
  for (const char* b : bodies) {
    for (const char* path : {"/v1/completions", "/v1/chat/completions"}) {
      auto res = c.Post(path, b, "application/json");
      ASSERT_TRUE(res) << b;
      EXPECT_TRUE(res->status == 200 || (res->status >= 400 && res->status < 500)) << path << " " << b << " -> "
                                                                                  << res->status << " " << res->body;
      if (res->status != 200) {
        json e = json::parse(res->body);
        EXPECT_TRUE(e["error"]["message"].is_string()) << res->body;
      }
    }
  }
  EXPECT_EQ(c.Get("/health")->status, 200);
}

// A POST with neither Content-Length nor chunked encoding has no body (HTTP/1.1): it is answered at
// once (cpp-httplib read it until the client closed, so the client waited out the 30 s read
// timeout). A chunked body is held to the body limit as one with a Content-Length is (cpp-httplib
// read it whole into memory, however large).
TEST_F(HttpTest, BodyWithoutLengthAndChunkedBodies) {
  start();
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
  timeval timeout{5, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  const std::string bare = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
  ASSERT_EQ(::send(fd, bare.data(), bare.size(), 0), static_cast<ssize_t>(bare.size()));
  std::string answer;
  char buf[4096];
  for (ssize_t n; (n = ::recv(fd, buf, sizeof buf, 0)) > 0;) answer.append(buf, static_cast<size_t>(n));
  ::close(fd);
  EXPECT_EQ(answer.rfind("HTTP/1.1 400", 0), 0u) << answer;
  EXPECT_NE(answer.find("not valid JSON"), std::string::npos) << answer;

  auto c = client();
  auto chunked = [&](const std::string& body) {
    return c.Post("/v1/completions", [body](size_t, httplib::DataSink& sink) {
      sink.write(body.data(), body.size());
      sink.done();
      return true;
    }, "application/json");
  };
  auto small = chunked(json({{"prompt", "SAY:ok|"}, {"max_tokens", 5}}).dump());
  ASSERT_TRUE(small);
  EXPECT_EQ(small->status, 200) << small->body;
  auto big = chunked(json({{"prompt", std::string(100 * 1024, 'x')}}).dump());  // the limit is 64 KiB
  ASSERT_TRUE(big);
  EXPECT_EQ(big->status, 413);
  EXPECT_TRUE(json::parse(big->body).contains("error"));
  EXPECT_EQ(c.Get("/health")->status, 200);
}

TEST_F(HttpTest, ApiKey) {
  start(1, "sekrit");
  auto c = client();
  auto no = c.Get("/v1/models");
  ASSERT_TRUE(no);
  EXPECT_EQ(no->status, 401);
  EXPECT_EQ(json::parse(no->body)["error"]["code"], "invalid_api_key");
  auto wrong = c.Get("/v1/models", {{"Authorization", "Bearer nope"}});
  EXPECT_EQ(wrong->status, 401);
  auto ok = c.Get("/v1/models", {{"Authorization", "Bearer sekrit"}});
  EXPECT_EQ(ok->status, 200);
  EXPECT_EQ(c.Get("/health")->status, 200);
  EXPECT_EQ(c.Get("/metrics")->status, 200);
  // OPTIONS needs no key (as vLLM): a known path is 405 with Allow, an unknown one 404.
  auto options = c.Options("/v1/models");
  ASSERT_TRUE(options);
  EXPECT_EQ(options->status, 405);
  EXPECT_EQ(options->get_header_value("Allow"), "GET");
  EXPECT_EQ(c.Options("/v1/nothing")->status, 404);
}

// Chunks of a stream with the per-request parts (id, created) blanked, for comparing two streams.
std::vector<json> comparable(const std::vector<std::string>& events) {
  std::vector<json> out;
  for (const auto& e : events) {
    if (e == "[DONE]") continue;
    json j = json::parse(e);
    j["id"] = "", j["created"] = 0;
    out.push_back(std::move(j));
  }
  return out;
}

TEST_F(HttpTest, SpecTraceIsOptInAndOnlyAddsItsField) {
  start();
  for (bool chat : {true, false}) {
    json body = {{"max_tokens", 7}, {"stream", true}, {"logprobs", chat ? json(true) : json(1)}};
    if (chat) body["messages"] = {{{"role", "user"}, {"content", "x"}}};
    else body["prompt"] = "x";
    const std::string path = chat ? "/v1/chat/completions" : "/v1/completions";
    auto plain = stream(path, body);
    for (const auto& e : plain) EXPECT_EQ(e.find("tandem_spec_trace"), std::string::npos) << e;
    body["stream_options"] = {{"tandem_spec_trace", false}, {"include_usage", true}};
    auto off = stream(path, body);
    body["stream_options"]["tandem_spec_trace"] = true;
    auto on = stream(path, body);
    for (const auto& e : off) EXPECT_EQ(e.find("tandem_spec_trace"), std::string::npos) << e;

    // Without the trace field, the traced stream is the untraced one, chunk for chunk.
    auto a = comparable(off), b = comparable(on);
    ASSERT_EQ(a.size(), b.size());
    std::vector<json> trace;
    for (size_t i = 0; i < b.size(); ++i) {
      for (auto& ch : b[i]["choices"]) {
        if (!ch.contains("tandem_spec_trace")) continue;
        for (auto& t : ch["tandem_spec_trace"]) trace.push_back(t);
        ch.erase("tandem_spec_trace");
      }
      EXPECT_EQ(a[i], b[i]);
    }
    // The fake engine: 2 tokens after prefill (no drafts), then rounds of an accepted draft and a
    // correction; max_tokens 7 ends the fourth step after its first token.
    const std::vector<std::string> kinds = {"target", "target", "draft", "correction", "draft", "correction", "draft"};
    ASSERT_EQ(trace.size(), kinds.size());
    for (size_t i = 0; i < trace.size(); ++i) {
      EXPECT_EQ(trace[i]["kind"], kinds[i]) << i;
      EXPECT_EQ(trace[i]["round"], static_cast<int>(i / 2)) << i;
      EXPECT_EQ(trace[i]["position"], static_cast<int>(i % 2)) << i;
      EXPECT_EQ(trace[i]["token"], std::string(1, static_cast<char>('a' + i)));
      EXPECT_EQ(trace[i]["logprob"], -0.5);
    }
  }
  // Without logprobs the entries carry no logprob; a non-boolean option is a 400.
  auto events = stream("/v1/completions", {{"prompt", "x"}, {"max_tokens", 2}, {"stream", true},
                                           {"stream_options", {{"tandem_spec_trace", true}}}});
  json first = json::parse(events.front())["choices"][0]["tandem_spec_trace"][0];
  EXPECT_EQ(first, json({{"token", "a"}, {"kind", "target"}, {"round", 0}, {"position", 0}}));
  post("/v1/completions", {{"prompt", "x"}, {"stream", true}, {"stream_options", {{"tandem_spec_trace", 1}}}}, 400);
}

TEST_F(HttpTest, WebPageIsPublicWithCsp) {
  if (web_assets().empty()) GTEST_SKIP() << "built without the web page (TANDEM_WEB_UI=OFF)";
  start(1, "sekrit");
  auto c = client();
  auto page = c.Get("/");
  ASSERT_TRUE(page);
  EXPECT_EQ(page->status, 200);
  EXPECT_NE(page->get_header_value("Content-Type").find("text/html"), std::string::npos);
  EXPECT_EQ(page->get_header_value("Content-Security-Policy").rfind("default-src 'self';", 0), 0u);
  EXPECT_NE(page->body.find("app.js"), std::string::npos);
  auto js = c.Get("/app.js");
  ASSERT_TRUE(js);
  EXPECT_EQ(js->status, 200);
  EXPECT_NE(js->get_header_value("Content-Type").find("javascript"), std::string::npos);
  EXPECT_EQ(c.Get("/appXjs")->status, 404);  // the '.' of a path is not a regex wildcard
}

TEST_F(HttpTest, NoWebUiServesNoPage) {
  configure = [](ServerOptions& o) { o.web_ui = false; };
  start();
  auto c = client();
  EXPECT_EQ(c.Get("/")->status, 404);
  EXPECT_EQ(c.Get("/v1/models")->status, 200);
}

TEST_F(HttpTest, SweepRouteIsPluggedInAndNeedsTheKey) {
  json seen;
  configure = [&](ServerOptions& o) {
    o.sweep = [&](const json& body) {
      if (!body.contains("ks")) throw bad_request("'ks' is required", "ks");
      seen = body;
      return json{{"settings", json::array()}};
    };
  };
  start(1, "sekrit");
  auto c = client();
  httplib::Headers key = {{"Authorization", "Bearer sekrit"}};
  EXPECT_EQ(c.Post("/tandem/sweep", R"({"ks":[0]})", "application/json")->status, 401);
  auto ok = c.Post("/tandem/sweep", key, R"({"ks":[0,1]})", "application/json");
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, 200);
  EXPECT_EQ(seen["ks"], json({0, 1}));
  auto bad = c.Post("/tandem/sweep", key, R"({})", "application/json");
  EXPECT_EQ(bad->status, 400);
  EXPECT_EQ(json::parse(bad->body)["error"]["param"], "ks");
  EXPECT_EQ(c.Post("/tandem/sweep", key, "[1,", "application/json")->status, 400);
}

TEST_F(HttpTest, NoSweepWithoutHandler) {
  start();
  EXPECT_EQ(client().Post("/tandem/sweep", "{}", "application/json")->status, 404);
}

TEST_F(HttpTest, TokenizeDetokenize) {
  start();
  json t = post("/tokenize", {{"prompt", "ab"}});
  EXPECT_EQ(t["count"], 3);
  EXPECT_EQ(t["tokens"], json({ByteCodec::kBos, ByteCodec::id_of('a'), ByteCodec::id_of('b')}));
  EXPECT_EQ(t["max_model_len"], 256);
  json d = post("/detokenize", {{"tokens", {ByteCodec::id_of('o'), ByteCodec::id_of('k')}}});
  EXPECT_EQ(d["prompt"], "ok");
  json chat = post("/tokenize", {{"messages", {{{"role", "user"}, {"content", "q"}}}}});
  EXPECT_EQ(chat["count"], static_cast<int>(std::string("<bos>user: q\nassistant:").size()) - 4);
  // continue_final_message cuts the rendered chat after the final message, as a chat request does
  // (it was ignored here).
  json cont = post("/tokenize", {{"messages", {{{"role", "user"}, {"content", "q"}}, {{"role", "assistant"}, {"content", "a"}}}},
                                 {"add_generation_prompt", false}, {"continue_final_message", true}});
  EXPECT_EQ(cont["count"], static_cast<int>(std::string("<bos>user: q\nassistant: a").size()) - 4);
  // A flag of another type is a 400 naming it, on both forms (json::value made it a 500).
  json flag = post("/tokenize", {{"prompt", "ab"}, {"return_token_strs", 1}}, 400);
  EXPECT_EQ(flag["error"]["param"], "return_token_strs");
  flag = post("/tokenize", {{"messages", {{{"role", "user"}, {"content", "q"}}}}, {"add_special_tokens", "yes"}}, 400);
  EXPECT_EQ(flag["error"]["param"], "add_special_tokens");
  // null is an unset flag, as in the generation requests: its default.
  json unset = post("/tokenize", {{"prompt", "ab"}, {"add_special_tokens", nullptr}, {"return_token_strs", nullptr}});
  EXPECT_EQ(unset["count"], 3);
  EXPECT_TRUE(unset["token_strs"].is_null());
}

TEST_F(HttpTest, ClientDisconnectAbortsStream) {
  start(5);
  std::atomic<int> chunks{0};
  std::thread t([&] {
    httplib::Client c("127.0.0.1", port);
    httplib::Request req;
    req.method = "POST";
    req.path = "/v1/completions";
    req.body = json({{"prompt", "x"}, {"max_tokens", 250}, {"stream", true}}).dump();
    req.set_header("Content-Type", "application/json");
    req.content_receiver = [&](const char*, size_t, uint64_t, uint64_t) { return ++chunks < 3; };
    c.send(req);
  });
  t.join();
  EXPECT_GE(chunks.load(), 3);
  // The server notices at its next write and aborts; the engine then drops the sequence.
  for (int i = 0; i < 200 && (service->running() > 0 || service->num_aborted() == 0); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(service->running(), 0);
  EXPECT_EQ(service->num_aborted(), 1u);
  std::string metrics = client().Get("/metrics")->body;
  EXPECT_NE(metrics.find("vllm:request_success_total{model_name=\"demo\",finished_reason=\"abort\"} 1"),
            std::string::npos) << metrics;
}

TEST_F(HttpTest, ShutdownAbortsInFlight) {
  start(20);  // 250 tokens take ~2.5 s, far longer than the shutdown
  std::thread t([&] {
    httplib::Client c("127.0.0.1", port);
    auto res = c.Post("/v1/completions", json({{"prompt", "x"}, {"max_tokens", 250}}).dump(), "application/json");
    // The in-flight request is answered (finish_reason "abort"), not dropped.
    if (res) {
      EXPECT_EQ(json::parse(res->body)["choices"][0]["finish_reason"], "abort");
    }
  });
  for (int i = 0; i < 1000 && service->running() == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  ASSERT_EQ(service->running(), 1);
  server->shutdown();
  thread.join();
  t.join();
  EXPECT_EQ(service->num_aborted(), 1u);
}


TEST_F(HttpTest, ClientDisconnectAbortsNonStreamingRequest) {
  start(5);  // 250 tokens at 2 per 5 ms: ~0.6 s unless aborted
  std::thread t([&] {
    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(0, 150000);  // hang up after 150 ms without an answer
    auto res = c.Post("/v1/completions", json({{"prompt", "x"}, {"max_tokens", 250}}).dump(), "application/json");
    EXPECT_FALSE(res);
  });
  t.join();
  for (int i = 0; i < 200 && (service->running() > 0 || service->num_aborted() == 0); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(service->running(), 0);
  EXPECT_EQ(service->num_aborted(), 1u);
  std::string metrics = client().Get("/metrics")->body;
  EXPECT_NE(metrics.find("vllm:request_success_total{model_name=\"demo\",finished_reason=\"abort\"} 1"),
            std::string::npos) << metrics;
  EXPECT_NE(metrics.find("vllm:request_success_total{model_name=\"demo\",finished_reason=\"length\"} 0"),
            std::string::npos) << metrics;
}

TEST_F(HttpTest, ShutdownEndsStreamWithAbortChunk) {
  start(20);
  std::string body;
  std::thread t([&] {
    httplib::Client c("127.0.0.1", port);
    httplib::Request req;
    req.method = "POST";
    req.path = "/v1/chat/completions";
    req.body = json({{"messages", {{{"role", "user"}, {"content", "x"}}}}, {"max_tokens", 200}, {"stream", true}}).dump();
    req.set_header("Content-Type", "application/json");
    req.content_receiver = [&](const char* d, size_t n, uint64_t, uint64_t) { return body.append(d, n), true; };
    c.send(req);
  });
  for (int i = 0; i < 1000 && service->running() == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  std::this_thread::sleep_for(std::chrono::milliseconds(60));
  server->shutdown();
  thread.join();
  t.join();
  const std::string tail = "data: [DONE]\n\n";
  ASSERT_GE(body.size(), tail.size());
  EXPECT_EQ(body.substr(body.size() - tail.size()), tail) << body;
  const size_t last = body.rfind("data: {", body.size() - tail.size());
  json chunk = json::parse(body.substr(last + 6, body.size() - tail.size() - last - 8));
  EXPECT_EQ(chunk["choices"][0]["finish_reason"], "abort") << body;
}

TEST_F(HttpTest, CorsPreflightAndHeaders) {
  start(1, "key");
  auto c = client();
  auto pre = c.Options("/v1/chat/completions", {{"Origin", "http://app.test"},
                                                {"Access-Control-Request-Method", "POST"},
                                                {"Access-Control-Request-Headers", "authorization,content-type"}});
  ASSERT_TRUE(pre);
  EXPECT_EQ(pre->status, 200);  // no API key needed for a preflight (vLLM skips OPTIONS too)
  EXPECT_EQ(pre->get_header_value("Access-Control-Allow-Origin"), "*");
  EXPECT_EQ(pre->get_header_value("Access-Control-Allow-Headers"), "authorization,content-type");
  EXPECT_NE(pre->get_header_value("Access-Control-Allow-Methods").find("POST"), std::string::npos);
  auto get = c.Get("/v1/models", {{"Origin", "http://app.test"}, {"Authorization", "Bearer key"}});
  EXPECT_EQ(get->status, 200);
  EXPECT_EQ(get->get_header_value("Access-Control-Allow-Origin"), "*");
  EXPECT_FALSE(c.Get("/v1/models", {{"Authorization", "Bearer key"}})->has_header("Access-Control-Allow-Origin"));
}

TEST_F(HttpTest, CorsRestrictedOrigins) {
  service = std::make_unique<FakeService>(1);
  ServerOptions o;
  o.port = 0;
  o.served_model_names = {"demo"};
  o.allowed_origins = {"http://good.test"};
  o.allowed_methods = {"GET", "POST"};
  o.allowed_headers = {"Authorization"};
  o.allow_credentials = true;
  server = std::make_unique<HttpServer>(*service, codec, o);
  port = server->bind();
  thread = std::thread([this] { server->run(); });
  auto c = client();
  auto ok = c.Options("/v1/models", {{"Origin", "http://good.test"}, {"Access-Control-Request-Method", "GET"},
                                     {"Access-Control-Request-Headers", "authorization"}});
  EXPECT_EQ(ok->status, 200);
  EXPECT_EQ(ok->get_header_value("Access-Control-Allow-Origin"), "http://good.test");
  EXPECT_EQ(ok->get_header_value("Access-Control-Allow-Credentials"), "true");
  EXPECT_EQ(c.Options("/v1/models", {{"Origin", "http://evil.test"}, {"Access-Control-Request-Method", "GET"}})->status,
            400);
  EXPECT_EQ(c.Options("/v1/models", {{"Origin", "http://good.test"}, {"Access-Control-Request-Method", "DELETE"}})->status,
            400);
  EXPECT_EQ(c.Options("/v1/models", {{"Origin", "http://good.test"}, {"Access-Control-Request-Method", "GET"},
                                     {"Access-Control-Request-Headers", "x-custom"}})->status,
            400);
  auto get = c.Get("/v1/models", {{"Origin", "http://good.test"}});
  EXPECT_EQ(get->get_header_value("Access-Control-Allow-Origin"), "http://good.test");
  EXPECT_FALSE(c.Get("/v1/models", {{"Origin", "http://evil.test"}})->has_header("Access-Control-Allow-Origin"));
}

TEST_F(HttpTest, VersionEndpoint) {
  start();
  json v = json::parse(client().Get("/version")->body);
  EXPECT_TRUE(v["version"].is_string());
}

TEST_F(HttpTest, IncludeStopStrAndMinTokens) {
  start();
  json r = post("/v1/completions", {{"prompt", "x"}, {"max_tokens", 100}, {"stop", {"fgh"}},
                                    {"include_stop_str_in_output", true}});
  EXPECT_EQ(r["choices"][0]["text"], "abcdefgh");
  EXPECT_EQ(r["choices"][0]["stop_reason"], "fgh");
  // Stop strings are not looked for until min_tokens tokens exist: "cd" at tokens 3-4 is skipped.
  json m = post("/v1/completions", {{"prompt", "x"}, {"max_tokens", 60}, {"stop", {"cd"}}, {"min_tokens", 10}});
  EXPECT_EQ(m["choices"][0]["text"], "abcdefghijklmnopqrstuvwxyzab");
  EXPECT_EQ(m["choices"][0]["finish_reason"], "stop");
  // The EOS text is kept with include_stop_str_in_output (empty when special tokens are skipped).
  json e = post("/v1/completions", {{"prompt", "SAY:hi|"}, {"max_tokens", 10}, {"include_stop_str_in_output", true},
                                    {"skip_special_tokens", false}});
  EXPECT_EQ(e["choices"][0]["text"], "hi<eos>");
}

TEST_F(HttpTest, NewVllmMetricsPresent) {
  start();
  post("/v1/completions", {{"prompt", "x"}, {"max_tokens", 4}});
  std::string m = client().Get("/metrics")->body;
  for (const char* name : {"vllm:num_preemptions_total{", "vllm:gpu_cache_usage_perc{", "vllm:iteration_tokens_total_bucket{",
                           "vllm:request_queue_time_seconds_bucket{", "vllm:request_prefill_time_seconds_bucket{",
                           "vllm:request_decode_time_seconds_bucket{", "vllm:request_inference_time_seconds_bucket{"})
    EXPECT_NE(m.find(name), std::string::npos) << name;
  EXPECT_NE(m.find("vllm:request_prompt_tokens_count{model_name=\"demo\"} 1\n"), std::string::npos) << m;
  EXPECT_NE(m.find("vllm:request_generation_tokens_sum{model_name=\"demo\"} 4\n"), std::string::npos) << m;
}

}  // namespace
}  // namespace tandem::server

namespace tandem::server {
namespace {

const json kWeatherTool = json::parse(R"([{"type":"function","function":{"name":"get_weather",
    "parameters":{"type":"object","properties":{"city":{"type":"string"}}}}}])");

// Streams a chat request and reassembles content, reasoning and tool calls from the deltas.
struct StreamedChat {
  std::string content, reasoning, finish;
  json tool_calls = json::array();
};

class HttpToolsTest : public HttpTest {
 protected:
  StreamedChat stream_chat(json body) {
    body["stream"] = true;
    StreamedChat out;
    auto events = stream("/v1/chat/completions", body);
    for (size_t i = 0; i + 1 < events.size(); ++i) {
      json e = json::parse(events[i]);
      for (const auto& ch : e["choices"]) {
        const json& d = ch["delta"];
        if (d.contains("content")) out.content += d["content"].get<std::string>();
        if (d.contains("reasoning")) out.reasoning += d["reasoning"].get<std::string>();
        if (d.contains("tool_calls"))
          for (const auto& t : d["tool_calls"]) {
            size_t idx = t["index"];
            if (t.contains("id")) {
              EXPECT_EQ(idx, out.tool_calls.size());
              EXPECT_EQ(t["type"], "function");
              EXPECT_EQ(t["function"]["arguments"], "");
              out.tool_calls.push_back({{"id", t["id"]}, {"type", "function"},
                                        {"function", {{"name", t["function"]["name"]}, {"arguments", ""}}}});
            } else {
              EXPECT_LT(idx, out.tool_calls.size());
              if (idx >= out.tool_calls.size()) continue;
              std::string a = out.tool_calls[idx]["function"]["arguments"];
              out.tool_calls[idx]["function"]["arguments"] = a + t["function"]["arguments"].get<std::string>();
            }
          }
        if (!ch["finish_reason"].is_null()) out.finish = ch["finish_reason"];
      }
    }
    return out;
  }
};

json chat_body(const std::string& say) {
  return {{"messages", {{{"role", "user"}, {"content", "SAY:" + say + "|"}}}}, {"tools", kWeatherTool}};
}

TEST_F(HttpToolsTest, AutoToolChoiceParsesCallsWholeAndStreamed) {
  limits.enable_auto_tool_choice = true, limits.tool_call_parser = "gemma4";
  start();
  // \x03 <|tool_call>, \x04 <tool_call|>, \x05 <|"|> (special tokens of the fake tokenizer).
  const std::string say = "Checking.\x03" "call:get_weather{city:\x05" "Paris, \"FR\"\x05}\x04\x03" "call:get_weather{city:\x05"
                          "Zurich\x05}\x04";  // ASCII: the fake decoder streams bytes, not characters
  json r = post("/v1/chat/completions", chat_body(say));
  const json& msg = r["choices"][0]["message"];
  EXPECT_EQ(msg["content"], "Checking.");
  ASSERT_EQ(msg["tool_calls"].size(), 2u);
  EXPECT_EQ(msg["tool_calls"][0]["type"], "function");
  EXPECT_EQ(msg["tool_calls"][0]["function"]["name"], "get_weather");
  EXPECT_EQ(msg["tool_calls"][0]["function"]["arguments"], "{\"city\": \"Paris, \\\"FR\\\"\"}");
  EXPECT_EQ(msg["tool_calls"][1]["function"]["arguments"], "{\"city\": \"Zurich\"}");
  EXPECT_EQ(msg["tool_calls"][0]["id"].get<std::string>().rfind("chatcmpl-tool-", 0), 0u);
  EXPECT_EQ(r["choices"][0]["finish_reason"], "tool_calls");

  StreamedChat s = stream_chat(chat_body(say));
  EXPECT_EQ(s.content, "Checking.");
  EXPECT_EQ(s.finish, "tool_calls");
  ASSERT_EQ(s.tool_calls.size(), 2u);
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(s.tool_calls[i]["function"]["name"], msg["tool_calls"][i]["function"]["name"]);
    EXPECT_EQ(s.tool_calls[i]["function"]["arguments"], msg["tool_calls"][i]["function"]["arguments"]);
  }

  // No call: plain content, finish_reason stop, an empty tool_calls list.
  json plain = post("/v1/chat/completions", chat_body("just text"));
  EXPECT_EQ(plain["choices"][0]["message"]["content"], "just text");
  EXPECT_EQ(plain["choices"][0]["message"]["tool_calls"], json::array());
  EXPECT_EQ(plain["choices"][0]["finish_reason"], "stop");

  // tool_choice "none": nothing is parsed (and the markers, special tokens, are skipped).
  json body = chat_body(say);
  body["tool_choice"] = "none";
  json none = post("/v1/chat/completions", body);
  EXPECT_EQ(none["choices"][0]["message"]["tool_calls"], json::array());
  EXPECT_EQ(none["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(none["choices"][0]["message"]["content"],
            "Checking.call:get_weather{city:Paris, \"FR\"}call:get_weather{city:Zurich}");
}

TEST_F(HttpToolsTest, ReasoningThenToolCall) {
  limits.enable_auto_tool_choice = true, limits.tool_call_parser = "gemma4", limits.reasoning_parser = "gemma4";
  start();
  const std::string say = "\x01thought\nI need the weather.\x02\x03" "call:get_weather{city:\x05Oslo\x05}\x04";
  json r = post("/v1/chat/completions", chat_body(say));
  const json& msg = r["choices"][0]["message"];
  EXPECT_EQ(msg["reasoning"], "I need the weather.");
  EXPECT_EQ(msg["reasoning_content"], "I need the weather.");
  EXPECT_TRUE(msg["content"].is_null());
  ASSERT_EQ(msg["tool_calls"].size(), 1u);
  EXPECT_EQ(msg["tool_calls"][0]["function"]["arguments"], "{\"city\": \"Oslo\"}");
  StreamedChat s = stream_chat(chat_body(say));
  EXPECT_EQ(s.reasoning, "I need the weather.");
  EXPECT_EQ(s.content, "");
  ASSERT_EQ(s.tool_calls.size(), 1u);
  EXPECT_EQ(s.tool_calls[0]["function"]["arguments"], "{\"city\": \"Oslo\"}");
  EXPECT_EQ(s.finish, "tool_calls");
}

TEST_F(HttpToolsTest, ToolsNeedTheServerFlagsForAuto) {
  start();
  json r = post("/v1/chat/completions", chat_body("x"), 400);
  EXPECT_EQ(r["error"]["message"],
            "\"auto\" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set");
  EXPECT_EQ(r["error"]["param"], "tool_choice");
  json body = chat_body("fine");
  body["tool_choice"] = "none";
  EXPECT_EQ(post("/v1/chat/completions", body)["choices"][0]["message"]["content"], "fine");
  // Without a reasoning parser the channel is not split (vLLM): its markers are special tokens.
  json t = post("/v1/chat/completions", {{"messages", {{{"role", "user"}, {"content", "SAY:\x01thought\nhm\x02ok|"}}}}});
  EXPECT_EQ(t["choices"][0]["message"]["content"], "thought\nhmok");
  EXPECT_FALSE(t["choices"][0]["message"].contains("reasoning_content"));
}

}  // namespace
}  // namespace tandem::server
