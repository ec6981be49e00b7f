// tandem's version, reported by `tandem --version` and GET /version.
#pragma once

namespace tandem {
inline constexpr const char* kVersion = "0.1.0";
}  // namespace tandem
