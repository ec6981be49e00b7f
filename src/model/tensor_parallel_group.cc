#include "model/tensor_parallel_group.h"

#include <exception>
#include <thread>

#include "util/error.h"

namespace tandem {

TensorParallelGroup::TensorParallelGroup(Backend& rank0, const ModelConfig& c, int size, int threads_per_rank,
                                         LoadFormat format, const OnlineQuant& online)
    : comm_(std::max(size, 1)) {
  shard_config(c, size);  // refuses a model that does not split, before anything loads
  if (size > 1 && !rank0.is_host())
    fail("--tensor-parallel-size {} runs on the CPU backend only for now: {} would need NCCL, which this build "
         "does not have",
         size, rank0.name());
  for (int r = 0; r < size; ++r) {
    Backend* be = &rank0;
    if (r > 0) {
      own_backends_.push_back(make_cpu_backend(threads_per_rank));
      be = own_backends_.back().get();
    }
    models_.push_back(Gemma4Model::load(c, *be, format, online, Shard{r, size}));
  }
  // Loading makes no all-reduce; from here every rank's backend sums over the group.
  for (int r = 0; r < size; ++r) models_[r]->backend().set_communicator(&comm_.endpoint(r));
  if (size > 1) models_[0]->group_ = this;
}

TensorParallelGroup::~TensorParallelGroup() { models_[0]->backend().set_communicator(nullptr); }

void TensorParallelGroup::run(const std::function<void(int rank)>& fn) {
  std::vector<std::exception_ptr> errors(static_cast<size_t>(size()));
  auto guarded = [&](int r) {
    try {
      fn(r);
    } catch (...) {
      errors[r] = std::current_exception();
    }
  };
  std::vector<std::thread> threads;
  for (int r = 1; r < size(); ++r) threads.emplace_back(guarded, r);
  guarded(0);
  for (std::thread& t : threads) t.join();
  for (const std::exception_ptr& e : errors)
    if (e) std::rethrow_exception(e);
}

void TensorParallelGroup::follow(const KvCache& kv) {
  const KvBlocks blocks{kv.num_blocks(KvGroup::full), kv.has_sliding() ? kv.num_blocks(KvGroup::sliding) : 0};
  for (Twins& t : twins_)
    if (t.of == &kv && t.blocks.full == blocks.full && t.blocks.sliding == blocks.sliding &&
        t.block_size == kv.block_size() && t.dtype == kv.dtype()) {
      followed_ = &t;
      return;
    }
  Twins& t = twins_.emplace_back(Twins{&kv, blocks, kv.block_size(), kv.dtype(), {}});
  t.caches.resize(static_cast<size_t>(size()));
  for (int r = 1; r < size(); ++r)
    t.caches[r] = std::make_unique<KvCache>(models_[r]->backend(), models_[r]->rank_config(), blocks, kv.block_size(),
                                            kv.dtype());
  followed_ = &t;
}

}  // namespace tandem
