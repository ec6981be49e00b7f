// Element types of stored tensors (safetensors names) and activations.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace tandem {

enum class DType : uint8_t { F32, BF16, F16, F8_E4M3, I64, I32, I16, I8, U8, BOOL };

constexpr size_t dtype_size(DType t) {
  switch (t) {
    case DType::F32: case DType::I32: return 4;
    case DType::BF16: case DType::F16: case DType::I16: return 2;
    case DType::I64: return 8;
    case DType::F8_E4M3: case DType::I8: case DType::U8: case DType::BOOL: return 1;
  }
  return 0;
}

constexpr std::string_view dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "F32";
    case DType::BF16: return "BF16";
    case DType::F16: return "F16";
    case DType::F8_E4M3: return "F8_E4M3";
    case DType::I64: return "I64";
    case DType::I32: return "I32";
    case DType::I16: return "I16";
    case DType::I8: return "I8";
    case DType::U8: return "U8";
    case DType::BOOL: return "BOOL";
  }
  return "?";
}

// Returns false for names tandem does not read (e.g. F64, U16).
bool parse_dtype(std::string_view name, DType* out);

}  // namespace tandem
