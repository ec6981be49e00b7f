// The built-in web page (web/ in the source tree): bundled by esbuild at build time and compiled
// into the binary by cmake/embed_assets.cmake, so `tandem serve` needs no files at run time.
#pragma once
#include <span>
#include <string_view>

namespace tandem::server {

struct WebAsset {
  std::string_view path;          // URL path, e.g. "/" or "/app.js"
  std::string_view content_type;
  std::string_view body;
};

// Empty when the build has no web UI (-DTANDEM_WEB_UI=OFF).
std::span<const WebAsset> web_assets();

}  // namespace tandem::server
