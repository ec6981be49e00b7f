#!/usr/bin/env bash
# Builds the libFuzzer targets in tests/fuzz/ with clang under ASan + UBSan and runs each for a
# bounded time (default: the tokenizer targets, 30 s each).
#   tests/fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]      e.g. tests/fuzz/run.sh 30 fuzz_tokenizer_load
# Targets are linked against src/tokenizer/*.cc and src/util/*.cc only, so no full build is needed.
# Build output and corpora live in build-fuzz/ (gitignored). Exits non-zero if a target crashes or
# spends over 10 s on one input.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
secs="${1:-30}"
shift || true
targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then targets=(fuzz_tokenizer_load fuzz_tokenizer_encode); fi
out="$root/build-fuzz"
mkdir -p "$out/obj"
CXX="${CXX:-clang++}"
flags=(-std=c++20 -g -O1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined
       -DFMT_HEADER_ONLY -I"$root/src")
# Library objects (rebuilt when the source is newer).
objs=()
for src in "$root"/src/tokenizer/*.cc "$root"/src/util/*.cc; do
  obj="$out/obj/$(basename "$(dirname "$src")")_$(basename "${src%.cc}").o"
  if [[ ! -f "$obj" || "$src" -nt "$obj" ]]; then
    "$CXX" "${flags[@]}" -fsanitize=fuzzer-no-link -c "$src" -o "$obj" &
  fi
  objs+=("$obj")
done
wait
# Seed corpora.
mkdir -p "$out/corpus/fuzz_tokenizer_load" "$out/corpus/fuzz_tokenizer_encode"
python3 - "$root" "$out/corpus" <<'PY'
import json, os, sys
root, corpus = sys.argv[1], sys.argv[2]
texts = json.load(open(os.path.join(root, "tests/tokenizer/golden/texts.json")))["texts"]
for i, t in enumerate(texts[:120]):
    b = t.encode("utf-8")[:2000]
    open(os.path.join(corpus, "fuzz_tokenizer_encode", "seed%03d" % i), "wb").write(bytes([i % 5]) + b)
tiny = {"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2, "<0x41>": 3, "<unk>": 4}, "merges": ["a b"],
                  "unk_token": "<unk>", "byte_fallback": True, "fuse_unk": True},
        "added_tokens": [{"id": 5, "content": "<s>", "special": True, "lstrip": True, "rstrip": False,
                          "single_word": False, "normalized": False}],
        "normalizer": {"type": "Sequence", "normalizers": [{"type": "NFC"}, {"type": "Replace", "pattern": {"String": " "}, "content": "b"}]},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"String": "a"}, "behavior": "MergedWithNext", "invert": True},
            {"type": "Metaspace", "replacement": "b", "prepend_scheme": "always", "split": True},
            {"type": "Digits", "individual_digits": True}]},
        "post_processor": {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                           {"Sequence": {"id": "A", "type_id": 0}}], "special_tokens": {"<s>": {"id": "<s>", "ids": [5]}}},
        "decoder": {"type": "Sequence", "decoders": [{"type": "ByteFallback"}, {"type": "Strip", "content": "a", "start": 1, "stop": 2},
                    {"type": "Fuse"}]}}
open(os.path.join(corpus, "fuzz_tokenizer_load", "tiny.json"), "w").write(json.dumps(tiny))
tiny["model"]["merges"] = [["a", "b"]]
tiny["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": True, "use_regex": True}
tiny["decoder"] = {"type": "ByteLevel"}
open(os.path.join(corpus, "fuzz_tokenizer_load", "tiny_bytelevel.json"), "w").write(json.dumps(tiny))
open(os.path.join(corpus, "fuzz_tokenizer_load", "with_config"), "w").write(
    json.dumps(tiny) + "\0" + json.dumps({"bos_token": {"content": "<s>"}, "eos_token": "a", "chat_template": [{"name": "default", "template": "x"}]}))
PY
status=0
for t in "${targets[@]}"; do
  src="$root/tests/fuzz/$t.cc"
  echo "== $t: building" >&2
  "$CXX" "${flags[@]}" -fsanitize=fuzzer "$src" "${objs[@]}" -o "$out/$t"
  mkdir -p "$out/corpus/$t"
  echo "== $t: fuzzing for ${secs}s" >&2
  # -timeout=10: an input running over 10 s fails the run and is saved as a timeout-* artifact
  # (libFuzzer's default, 1200 s, let one slow input hold a CI job for over 20 minutes).
  if ! (cd "$out" && "./$t" -max_total_time="$secs" -timeout=10 -max_len=4096 -rss_limit_mb=4096 \
          -print_final_stats=1 "corpus/$t" 2>&1 | tail -25); then
    echo "== $t: FAILED (crash artifacts in $out)" >&2
    status=1
  fi
done
exit $status
