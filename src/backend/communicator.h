// The communicator of a tensor-parallel group: what Backend::all_reduce sums over. A backend holds
// its rank's communicator (Backend::set_communicator), so the all-reduce is an op like any other,
// issued in order with the rest of a step (on a GPU: an NCCL call on the backend's stream, which a
// CUDA graph can capture).
//
// In-process groups (FakeCommunicatorGroup): N ranks of one process, each a thread driving its own
// backend in lock-step with the others; what the CPU backend runs `--tensor-parallel-size N` on,
// and what the tests check the sharded model against the unsharded one with.
#pragma once
#include <barrier>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace tandem {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // data[n] (host memory) ← Σ over ranks r = 0, 1, … of rank r's data[n], summed in that order, so
  // every rank gets the same bits. Every rank of the group must call it, with the same n; it returns
  // once every rank's sum is written.
  virtual void all_reduce_sum(float* data, size_t n) = 0;
};

// N in-process ranks. endpoint(r) is rank r's communicator; the group must outlive them all.
class FakeCommunicatorGroup {
 public:
  explicit FakeCommunicatorGroup(int size);
  ~FakeCommunicatorGroup();
  int size() const { return static_cast<int>(endpoints_.size()); }
  Communicator& endpoint(int rank);
  // All-reduces completed so far (every rank's call counts once).
  uint64_t calls() const { return calls_; }

 private:
  class Endpoint;
  std::vector<std::unique_ptr<Endpoint>> endpoints_;
  std::vector<float*> posted_;  // each rank's buffer during an all-reduce
  std::vector<size_t> lengths_;
  std::barrier<> barrier_;
  uint64_t calls_ = 0;
};

}  // namespace tandem
