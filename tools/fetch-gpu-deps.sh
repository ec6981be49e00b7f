#!/usr/bin/env bash
# Downloads the Debian packages tandem builds with into .deps/ (ignored by git), for the GPU machine,
# which reaches no package registry: tools/gpu-check.sh unpacks them there. Run here, as root.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .deps
cd .deps
apt-get download nlohmann-json3-dev libcli11-dev libfmt-dev libfmt9 libgtest-dev libgmock-dev \
  libbenchmark-dev libbenchmark1debian libcpp-httplib-dev libcpp-httplib0.11 pkgconf pkgconf-bin libpkgconf3 \
  libbrotli1 libssl3 libssl-dev zlib1g-dev zlib1g libbrotli-dev \
  libjpeg62-turbo-dev libjpeg62-turbo libpng-dev libpng16-16 libgif-dev libgif7 \
  libwebp-dev libwebp7 libwebpdemux2 libwebpmux3
