#include "backend/communicator.h"

#include "util/error.h"

namespace tandem {

class FakeCommunicatorGroup::Endpoint final : public Communicator {
 public:
  Endpoint(FakeCommunicatorGroup& g, int rank) : g_(g), rank_(rank) {}
  int rank() const override { return rank_; }
  int size() const override { return g_.size(); }

  void all_reduce_sum(float* data, size_t n) override {
    // Post the buffer; once every rank has, each sums all of them in rank order into its own copy
    // (no buffer is written while another rank may still read it); the second barrier keeps a rank
    // from writing its result, or posting the next buffer, before every rank has read this one.
    g_.posted_[rank_] = data, g_.lengths_[rank_] = n;
    g_.barrier_.arrive_and_wait();
    for (size_t len : g_.lengths_) TANDEM_CHECK(len == n);  // the ranks run the same step
    sum_.assign(g_.posted_[0], g_.posted_[0] + n);
    for (int r = 1; r < size(); ++r)
      for (size_t i = 0; i < n; ++i) sum_[i] += g_.posted_[r][i];
    g_.barrier_.arrive_and_wait();
    std::copy(sum_.begin(), sum_.end(), data);
    if (rank_ == 0) ++g_.calls_;
  }

 private:
  FakeCommunicatorGroup& g_;
  int rank_;
  std::vector<float> sum_;
};

FakeCommunicatorGroup::FakeCommunicatorGroup(int size)
    : posted_(static_cast<size_t>(size)), lengths_(static_cast<size_t>(size)), barrier_(size) {
  TANDEM_CHECK(size >= 1);
  for (int r = 0; r < size; ++r) endpoints_.push_back(std::make_unique<Endpoint>(*this, r));
}

FakeCommunicatorGroup::~FakeCommunicatorGroup() = default;

Communicator& FakeCommunicatorGroup::endpoint(int rank) { return *endpoints_[rank]; }

}  // namespace tandem
