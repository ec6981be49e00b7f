#!/usr/bin/env bash
# End-to-end tests: node's test runner with the official openai client against a real `tandem serve`.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
export TANDEM_BINARY="$(realpath "$1")"
shopt -s nullglob
tests=("$here"/*.test.mjs)
if ((${#tests[@]} == 0)); then echo "e2e: no tests yet"; exit 0; fi
(cd "$here" && npm install --no-audit --no-fund --silent >/dev/null)
node --test --test-concurrency=1 "${tests[@]}"
