// Progress on stderr: one self-overwriting line on a terminal, plain lines otherwise (logs, CI).
#pragma once
#include <chrono>
#include <string>

namespace tandem::bench {

class Progress {
 public:
  // total: number of steps (requests) expected; tty: whether to redraw one line. quiet: print nothing.
  Progress(int total, bool tty, bool quiet = false);
  static bool stderr_is_tty();
  ~Progress();

  // One step done; `what` describes it ("k=2 iter 3/5: 812.4 tok/s").
  void step(const std::string& what);
  // A message that must stay visible (printed on its own line).
  void note(const std::string& message);
  void finish();

 private:
  void draw(const std::string& what);
  int total_, done_ = 0;
  bool tty_, quiet_, open_line_ = false;
  std::chrono::steady_clock::time_point start_;
};

}  // namespace tandem::bench
