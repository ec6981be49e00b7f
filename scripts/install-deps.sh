#!/usr/bin/env bash
# Installs the Debian packages tandem builds and tests with. Idempotent; run as root on a fresh machine.
set -euo pipefail
pkgs=(build-essential cmake ninja-build ccache pkg-config
      nlohmann-json3-dev libcpp-httplib-dev libcli11-dev libfmt-dev
      libjpeg62-turbo-dev libpng-dev libgif-dev libwebp-dev  # image decoders (src/vision/)
      libgtest-dev libgmock-dev libbenchmark-dev
      clang libclang-rt-14-dev prometheus
      chromium)  # the web page's browser test (tests/e2e/webui.test.mjs, puppeteer-core)
missing=()
# Node.js + npm for the web page's bundle (web/) and the e2e tests: any installation will do (some images ship them outside Debian's
# packages, and Debian's npm then conflicts), so only install them when the commands are absent.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then missing+=(nodejs npm); fi
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
