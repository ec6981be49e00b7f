#include "util/log.h"

#include <atomic>
#include <chrono>
#include <cstdio>
#include <mutex>

namespace tandem::log {
namespace {
std::atomic<Level> g_level{Level::info};
std::mutex g_mutex;
}  // namespace

void set_level(Level level) { g_level = level; }
Level level() { return g_level; }

void write(Level level, const std::string& message) {
  static const char* names[] = {"debug", "info", "warn", "error"};
  using namespace std::chrono;
  const double t = duration<double>(steady_clock::now().time_since_epoch()).count();
  std::lock_guard<std::mutex> lock(g_mutex);
  std::fprintf(stderr, "[tandem %s %.3f] %s\n", names[static_cast<int>(level)], t, message.c_str());
}

}  // namespace tandem::log
