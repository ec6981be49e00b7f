// Tensor parallelism on the CUDA backend. A group of more than one GPU needs an NCCL communicator,
// which this build does not have yet (issue 16): set_communicator refuses one, and all_reduce is the
// single-rank identity.
#include "backend/cuda/cuda_common.cuh"

namespace tandem {

using namespace cu;

void CudaBackend::set_communicator(Communicator* comm) {
  if (comm && comm->size() > 1)
    fail("{}: tensor parallelism over {} GPUs needs NCCL, which this build does not have yet; run with "
         "--tensor-parallel-size 1, or on the CPU backend",
         name_, comm->size());
}

void CudaBackend::all_reduce(TensorView& x) { check_2d(x, DType::F32, "all_reduce x"); }

}  // namespace tandem
