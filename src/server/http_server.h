// The OpenAI-compatible HTTP server (cpp-httplib, one thread per connection from a pool):
//   GET  /v1/models, /health, /metrics
//   POST /v1/completions, /v1/chat/completions (JSON or SSE streaming), /tokenize, /detokenize
//   GET  / and its assets (the built-in web page, web_ui.h), POST /tandem/sweep (when set)
// Each HTTP request becomes one engine request per choice; outputs arrive on the engine thread,
// are queued, and are detokenized / stop-matched / serialized on the connection's thread.
#pragma once
#include <nlohmann/json.hpp>

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "server/metrics.h"
#include "server/protocol.h"
#include "server/service.h"

namespace httplib {
class Server;
}

namespace tandem::server {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8000;  // 0: any free port (see bound_port())
  std::vector<std::string> served_model_names = {"tandem"};
  std::string model_root;  // reported as "root" in /v1/models
  std::string api_key;     // empty: no authentication
  size_t max_body_bytes = 8u << 20;
  // CORS (vLLM's --allowed-origins / --allowed-methods / --allowed-headers / --allow-credentials).
  std::vector<std::string> allowed_origins = {"*"};
  std::vector<std::string> allowed_methods = {"*"};
  std::vector<std::string> allowed_headers = {"*"};
  bool allow_credentials = false;
  int http_threads = 0;    // 0: enough for max_num_seqs streams plus headroom
  bool web_ui = true;      // serve the built-in page at / (when the build has one)
  // POST /tandem/sweep: the speculative sweep of `tandem bench sweep --endpoint`, run against this
  // server for the web page. The CLI plugs it in (src/bench sits above this layer); it gets the
  // request body and returns the report JSON, throwing ApiError for a bad request. Unset: 404.
  std::function<nlohmann::json(const nlohmann::json&)> sweep;
  Limits limits;
};

class HttpServer {
 public:
  HttpServer(InferenceService& service, const TextCodec& codec, ServerOptions options);
  ~HttpServer();

  // Binds the listening socket; throws tandem::Error when it cannot. Returns the port.
  int bind();
  int bound_port() const { return port_; }
  // Serves until shutdown(); call bind() first.
  void run();
  // Thread-safe (also from a signal-watching thread): stops accepting, aborts in-flight requests
  // and makes run() return once their handlers have finished.
  void shutdown();
  bool stopping() const { return stopping_.load(); }

  InferenceService& service() { return service_; }
  const TextCodec& codec() const { return codec_; }
  const ServerOptions& options() const { return options_; }
  ServerMetrics& metrics() { return metrics_; }

 private:
  void routes();

  InferenceService& service_;
  const TextCodec& codec_;
  ServerOptions options_;
  ServerMetrics metrics_;
  std::unique_ptr<httplib::Server> http_;
  // Each fixed path's methods ("GET", "POST, ..."), filled by routes() before the server listens and read
  // by the error handler: a known path asked with another method is answered 405 with Allow.
  std::map<std::string, std::string> methods_by_path_;
  std::atomic<bool> stopping_{false};
  int port_ = 0;
  int listen_socket_ = -1;  // the listening socket, to raise its backlog after bind
};

}  // namespace tandem::server
