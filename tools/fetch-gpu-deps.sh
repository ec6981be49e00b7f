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

# Node.js and the e2e suite's modules for `gpu-check.sh e2e` (the GPU machine has no Node.js): this
# machine's node binary, stripped (it links only libc / libstdc++), and tests/e2e's node_modules
# without the browser modules, as one xz archive in .e2e/ split in three parts. The working tree
# (~50 MB) leaves about 17 MB under the device tool's 64 MiB carry limit: .deps/ travels with the
# build, each part in a call of its own (docs/GPU.md).
cd ..
if [ ! -f .e2e/part-ac ]; then
  rm -f .e2e/part-*
  mkdir -p .e2e/stage/bin
  strip -o .e2e/stage/bin/node "$(readlink -f "$(command -v node)")"
  (cd tests/e2e && npm install --no-audit --no-fund --silent >/dev/null)
  tar -C tests/e2e -cf - --exclude='node_modules/puppeteer-core' --exclude='node_modules/chromium-bidi' \
    --exclude='node_modules/devtools-protocol' node_modules | tar -C .e2e/stage -xf -
  tar -C .e2e/stage -cf - bin node_modules | xz -T0 -9e >.e2e/node-e2e.tar.xz
  rm -rf .e2e/stage
  (cd .e2e && split -n 3 node-e2e.tar.xz part- && rm node-e2e.tar.xz)  # part-aa, part-ab, part-ac
fi
