// The CUDA backend's entry points. Declared in every build; defined only when the build has CUDA
// (TANDEM_HAVE_CUDA), so callers must check cuda_device_count() / the macro before using them.
#pragma once
#include <memory>

#include "backend/backend.h"

namespace tandem {

// A backend on GPU `device` (0-based); throws tandem::Error when that device is not there.
std::unique_ptr<Backend> make_cuda_backend(int device);

// Number of CUDA GPUs visible to this process; 0 when there is no driver or no GPU (never throws).
int cuda_device_count();

}  // namespace tandem
