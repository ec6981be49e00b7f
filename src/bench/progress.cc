#include "bench/progress.h"

#include <fmt/format.h>
#include <unistd.h>

#include <cstdio>

namespace tandem::bench {

Progress::Progress(int total, bool tty, bool quiet)
    : total_(total), tty_(tty), quiet_(quiet), start_(std::chrono::steady_clock::now()) {}

Progress::~Progress() { finish(); }

bool Progress::stderr_is_tty() { return isatty(STDERR_FILENO) == 1; }

void Progress::draw(const std::string& what) {
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  std::string line = total_ > 0 ? fmt::format("[{}/{}] {:5.1f}s {}", done_, total_, elapsed, what)
                                : fmt::format("[{}] {:5.1f}s {}", done_, elapsed, what);
  if (tty_) {
    if (total_ > 0) {
      const int width = 20, filled = static_cast<int>(width * static_cast<double>(done_) / total_);
      line = fmt::format("[{}{}] {}/{} {:5.1f}s {}", std::string(filled, '#'), std::string(width - filled, '.'),
                         done_, total_, elapsed, what);
    }
    if (line.size() > 110) line.resize(110);
    std::fprintf(stderr, "\r\033[K%s", line.c_str());
    open_line_ = true;
  } else {
    std::fprintf(stderr, "%s\n", line.c_str());
  }
  std::fflush(stderr);
}

void Progress::step(const std::string& what) {
  ++done_;
  if (!quiet_) draw(what);
}

void Progress::note(const std::string& message) {
  if (quiet_) return;
  if (open_line_) std::fprintf(stderr, "\r\033[K");
  std::fprintf(stderr, "%s\n", message.c_str());
  open_line_ = false;
  std::fflush(stderr);
}

void Progress::finish() {
  if (open_line_) {
    std::fprintf(stderr, "\n");
    std::fflush(stderr);
    open_line_ = false;
  }
}

}  // namespace tandem::bench
