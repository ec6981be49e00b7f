#include "util/dtype.h"

namespace tandem {

bool parse_dtype(std::string_view name, DType* out) {
  static constexpr DType all[] = {DType::F32, DType::BF16, DType::F16, DType::F8_E4M3, DType::I64,
                                  DType::I32, DType::I16,  DType::I8,  DType::U8,      DType::BOOL};
  for (DType t : all) {
    if (dtype_name(t) == name) {
      *out = t;
      return true;
    }
  }
  return false;
}

}  // namespace tandem
