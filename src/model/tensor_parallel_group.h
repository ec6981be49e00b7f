// N tensor-parallel ranks of one model in one process (threads, not processes: docs/DESIGN.md,
// "Tensor parallelism"): per rank a backend holding its endpoint of an in-process communicator, the
// model's slice for that rank, and its storage of the KV cache's blocks. Rank 0's model is the one
// the engine drives: its run() runs every rank's forward at once, each on a thread of its own, in
// lock-step through the all-reduces. The rows, and so every host-side decision, are the same on every
// rank, and the residual stream and logits come out identical on all of them. Ranks other than 0 run
// on CPU backends and read rank 0's step inputs (image features, drafter states) from its memory, so
// rank 0 must be a host backend too; a GPU group needs NCCL (issue 16).
#pragma once
#include <functional>
#include <list>
#include <memory>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "model/gemma4.h"

namespace tandem {

class TensorParallelGroup {
 public:
  // `size` ranks of the model `c`: rank 0 on `rank0` (which must outlive the group), ranks 1… on CPU
  // backends of threads_per_rank threads (0: one per core). Throws tandem::Error where the model does
  // not split `size` ways (shard_config), or where size > 1 and rank0 is not a host backend. Size 1
  // is the whole model on rank0, leading no one.
  TensorParallelGroup(Backend& rank0, const ModelConfig& c, int size, int threads_per_rank,
                      LoadFormat format = LoadFormat::safetensors, const OnlineQuant& online = {});
  ~TensorParallelGroup();

  int size() const { return static_cast<int>(models_.size()); }
  Gemma4Model& rank(int r) { return *models_[r]; }
  const FakeCommunicatorGroup& communicator() const { return comm_; }

  // Runs fn(r) for every rank r at once (rank 0 on the calling thread) and returns when all have;
  // rethrows rank 0's failure, else the first other rank's. fn must make the same backend
  // all-reduces on every rank: one rank failing between two of them (which Gemma4Model::run, whose
  // checks all come before its first op, does not) would leave the others waiting.
  void run(const std::function<void(int rank)>& fn);

  // Rank 0's KV cache `kv` (the scheduler allocates its blocks; every rank reads its tables) has a
  // twin on each other rank: the same blocks, of that rank's KV heads, made by the first follow(kv)
  // and kept while the group lives (two engines may share a model). cache(r), r >= 1, is rank r's
  // twin of the cache last followed.
  void follow(const KvCache& kv);
  KvCache& cache(int r) { return *followed_->caches[r]; }

 private:
  FakeCommunicatorGroup comm_;
  std::vector<std::unique_ptr<Backend>> own_backends_;  // ranks 1…
  std::vector<std::unique_ptr<Gemma4Model>> models_;
  struct Twins {
    const KvCache* of;  // (a cache made where a followed one was freed has its address: its shape
    KvBlocks blocks;    // tells them apart)
    int32_t block_size;
    DType dtype;
    std::vector<std::unique_ptr<KvCache>> caches;  // [size]; caches[0] unused
  };
  std::list<Twins> twins_;  // (stable addresses: followed_ points into it)
  Twins* followed_ = nullptr;
};

}  // namespace tandem
