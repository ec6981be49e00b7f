#include "backend/backend.h"

#include <cstring>

#include "util/error.h"

#ifdef TANDEM_HAVE_CUDA
#include "backend/cuda/cuda_backend.h"
#endif

namespace tandem {

void Backend::rms_norms(std::span<const RmsNormStep> steps, float eps) {
  for (const RmsNormStep& st : steps) {
    if (!st.in || !st.out) fail("rms_norms: a step has no input or no output");
    if (st.add) rms_norm_add(*st.in, st.weight, eps, *st.out);
    else rms_norm(*st.in, st.weight, eps, *st.out);
    if (st.scale != 1.0f) scale(*st.out, st.scale);
  }
}

HostTensor to_host(Backend& be, const TensorView& t) {
  HostTensor h;
  h.resize(t.dtype, {t.rows(), t.cols()});
  const size_t row_bytes = static_cast<size_t>(t.cols()) * dtype_size(t.dtype);
  if (t.stride() == t.cols()) {
    be.download(h.view().data, t.data, t.nbytes());
  } else {
    for (int64_t r = 0; r < t.rows(); ++r)
      be.download(static_cast<char*>(h.view().data) + r * row_bytes, t.row<char>(0) + r * t.stride() * dtype_size(t.dtype),
                  row_bytes);
  }
  return h;
}

void upload_to(Backend& be, const void* host, TensorView& dst) {
  TANDEM_CHECK(dst.stride() == dst.cols());
  be.upload(dst.data, host, dst.nbytes());
}

bool cuda_available() {
#ifdef TANDEM_HAVE_CUDA
  return cuda_device_count() > 0;
#else
  return false;
#endif
}

std::unique_ptr<Backend> make_backend(const std::string& device, int threads) {
  if (device == "cpu") return make_cpu_backend(threads);
  if (device == "auto") return cuda_available() ? make_backend("cuda", threads) : make_cpu_backend(threads);
  if (device == "cuda" || device.rfind("cuda:", 0) == 0) {
#ifdef TANDEM_HAVE_CUDA
    int index = 0;
    if (device.size() > 5) {
      try {
        size_t used = 0;
        index = std::stoi(device.substr(5), &used);
        if (used != device.size() - 5 || index < 0) throw std::invalid_argument(device);
      } catch (const std::exception&) {
        fail("--device: \"{}\" is not cuda:N", device);
      }
    }
    const int n = cuda_device_count();
    if (index >= n) fail("--device {}: this machine has {} CUDA GPU(s)", device, n);
    return make_cuda_backend(index);
#else
    fail("--device {}: this build of tandem has no CUDA backend (configure with nvcc present and -DTANDEM_CUDA=ON)",
         device);
#endif
  }
  fail("--device must be cpu, cuda, cuda:N or auto, got \"{}\"", device);
}

}  // namespace tandem
