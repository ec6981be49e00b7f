#!/usr/bin/env bash
# Builds tandem on the GPU machine and runs every test there with the CUDA backend, then the step
# benchmarks. Run through the device tool from the repository root (docs/GPU.md):
#   tools/gpu-check.sh [build|test|e2e|serve|bench|throughput|all|steps|costs|ab|switches|stamps|trace|chain|sass|ncu|ncu-attention|ncu-source]...
#   (default: all)
# (never part of all: steps, two rounds of the decode and verify steps of the 26B-A4B in bf16, W4A16
# and FP8 and the 31B's decode, for quick A/B calls; costs, what each kernel adds to those steps when
# issued twice (TANDEM_CUDA_REPEAT); ab, the working tree's steps against AB_REF's (default main),
# interleaved, AB_REF built in a work tree of its own (in the background of the build phase when both are
# named); switches, the same steps under each setting of
# measuring switches in SWITCHES, interleaved; stamps, each step's time inside the rms_norms chains of decode
# steps, from the measuring build TANDEM_NORM_STAMPS, under each setting in SWITCHES; trace, every kernel's time inside replayed steps (CUPTI,
# tools/kernel_trace.py); chain, what a kernel of a chain of dependent kernels costs (bench_kernel_chain);
# sass, the SASS listings of the matmul and MoE
# kernels, for tools/sass_loop.py; ncu, Nsight Compute's per-kernel times of 26B-A4B decode steps, for
# tools/ncu_kernels.py; ncu-attention, Nsight Compute's sections for a few attention launches over a long
# context; ncu-source, where the warps of chosen kernels of a decode step wait, per SASS instruction.)
# The GPU machine reaches no package registry, so the Debian build dependencies travel as .deb files
# in .deps/ (tools/fetch-gpu-deps.sh, here) and are unpacked into a private prefix there.
# The step and sweep results go to $OUT (or out/ when unset), every log into $OUT/logs.tar.gz (the
# device tool returns at most 8 files).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out}
LOGS=$(mktemp -d)
mkdir -p "$OUT"
trap 'tar -czf "$OUT/logs.tar.gz" -C "$LOGS" .' EXIT
BUILD=${BUILD:-build-gpu}
DEPS=/tmp/tandem-deps
phases=("$@")
[ ${#phases[@]} -eq 0 ] && phases=(all)
want() { for p in "${phases[@]}"; do [ "$p" = "$1" ] || [ "$p" = all ] && return 0; done; return 1; }
named() { for p in "${phases[@]}"; do [ "$p" = "$1" ] && return 0; done; return 1; }  # phases outside all
stamp() { echo "[$(date +%T)] $*"; }
# bench_step BINARY CONFIG TOKENS CONTEXT [ARGS...]: `tandem bench step` of bench/configs/CONFIG on random
# weights on the GPU, output and errors together (each phase keeps the lines it wants).
bench_step() {
  "$1" bench step "bench/configs/$2" --load-format dummy --device cuda --tokens "$3" --context "$4" "${@:5}" 2>&1
}
# bench_under SETTING BINARY CONFIG TOKENS CONTEXT [ARGS...]: bench_step with one setting of the measuring
# switches, "NAME=VALUE ..." or "-" (none), exported in a subshell (env cannot run a function).
bench_under() {
  local vars
  read -ra vars <<<"$1"
  [ "${vars[0]:-}" = - ] && vars=()
  ( [ ${#vars[@]} -eq 0 ] || export "${vars[@]}"; bench_step "${@:2}" )
}
# step_rows [PATTERN]: the step table's rows of bench_step's output (the target's steps, and the drafter's
# with a --speculative-config), which ab, switches and trace keep, and the lines matching PATTERN too.
step_rows() { grep -E "^\| (target|drafter)${1:+|$1}"; }

# sources_by_content: touches the sources whose content differs from what they held at the last build in
# $BUILD (checksums in $BUILD/.source-sums), then records the current ones; each phase that builds calls
# it before its first ninja. A warm device machine keeps the build directory between calls, and a file of
# this tree may come back with new content but an older mtime: in the twenty-sixth session (docs/GPU.md)
# five sources reverted to older content were not rebuilt and the step runs used the previous call's binary.
sources_by_content() {
  local sums="$BUILD/.source-sums" now
  [ -d "$BUILD" ] || return 0
  now=$(git ls-files -co --exclude-standard -z -- src tests tools bench cmake CMakeLists.txt | xargs -0 sha1sum)
  if [ -f "$sums" ]; then
    # (diff exits 1 when the sums differ, which pipefail would make the function's failure)
    { diff <(echo "$now") "$sums" || true; } | sed -n 's/^< [0-9a-f]*  //p' | while IFS= read -r f; do touch -- "$f"; done
  fi
  echo "$now" >"$sums"
}

if [ -d .deps ]; then
  for f in .deps/*.deb; do dpkg -x "$f" "$DEPS"; done
fi
if [ -d "$DEPS/usr" ]; then
  export CMAKE_PREFIX_PATH="$DEPS/usr" PKG_CONFIG_SYSROOT_DIR="$DEPS" PATH="$DEPS/usr/bin:$PATH"
  export PKG_CONFIG_PATH="$DEPS/usr/lib/x86_64-linux-gnu/pkgconfig:$DEPS/usr/share/pkgconfig"
  export PKG_CONFIG_LIBDIR="$PKG_CONFIG_PATH"
  export LD_LIBRARY_PATH="$DEPS/usr/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  [ -x "$DEPS/usr/bin/pkg-config" ] || ln -sf pkgconf "$DEPS/usr/bin/pkg-config"
  # Headers of the multiarch directory (jconfig.h, which sets JPEG_LIB_VERSION) from the prefix too:
  # the GPU machine's own libjpeg-turbo8 headers there would otherwise pair with .deps' libjpeg62.
  export CPATH="$DEPS/usr/include/x86_64-linux-gnu"
fi

# configure SOURCE_DIR BUILD_DIR: the CMake configuration every build here uses. Only the GPU's own
# architecture: a full CI build compiles sm_80/89/90 + PTX. No web page: the device machine cannot reach the
# npm registry that its build needs.
configure() {
  cmake -S "$1" -B "$2" -G Ninja -DCMAKE_BUILD_TYPE=Release -DTANDEM_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DTANDEM_WEB_UI=OFF
}

# ab's reference: AB_REF (default main) checked out in a work tree of its own and `tandem` built there, at
# lower priority. A warm machine keeps the tree and its build directory, so a later call with the same
# AB_REF builds nothing. The device's copy has this tree but a git history that stops at the commit the
# session started from (docs/GPU.md, thirty-sixth session), so AB_REF must name that commit or an older one.
AB_TREE=/tmp/tandem-ab-ref
build_ab_ref() {
  local ref=${AB_REF:-main} commit
  commit=$(git rev-parse -q --verify "$ref^{commit}") || { echo "ab: $ref is no commit here"; return 1; }
  if [ "$(git -C "$AB_TREE" rev-parse -q --verify HEAD 2>/dev/null)" != "$commit" ]; then
    git worktree remove --force "$AB_TREE" 2>/dev/null || rm -rf "$AB_TREE"
    git worktree prune
    git worktree add --detach "$AB_TREE" "$commit" || return 1
  fi
  configure "$AB_TREE" "$AB_TREE/build" && nice -n 10 ninja -C "$AB_TREE/build" tandem
}

# The stamps phase's binary: the measuring build TANDEM_NORM_STAMPS in build-stamps (CUDAFLAGS takes effect at
# the directory's first configure), at lower priority.
build_stamps() {
  [ -f build-stamps/build.ninja ] || CUDAFLAGS=-DTANDEM_NORM_STAMPS configure . build-stamps || return 1
  BUILD=build-stamps sources_by_content
  nice -n 10 ninja -C build-stamps tandem
}

if want build; then
  stamp "configure + build ($(nproc) cores)"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv | tee "$LOGS/gpu.txt"
  configure . "$BUILD" >"$LOGS/configure.log" 2>&1 || { tail -40 "$LOGS/configure.log"; exit 1; }
  # With ab named too, AB_REF's build overlaps this one (two binaries in about the time of one: the
  # fortieth session); ab waits for it.
  if named ab; then
    build_ab_ref >"$LOGS/ab-build-ref.log" 2>&1 &
    ab_ref_build=$!
  fi
  if named stamps; then
    build_stamps >"$LOGS/stamps-build.log" 2>&1 &
    stamps_build=$!
  fi
  sources_by_content
  # BUILD_TARGETS (default: all) narrows the build, e.g. to test_backend for a call with little device time.
  # shellcheck disable=SC2086
  ninja -C "$BUILD" ${BUILD_TARGETS:-} >"$LOGS/build.log" 2>&1 || { grep -E "error|Error" "$LOGS/build.log" | head -40; exit 1; }
  stamp "built"
fi

if want test; then
  # The CPU suites as they are, then every model-level suite again with the CUDA backend.
  stamp "ctest (CPU backend, CUDA op tests)"
  (cd "$BUILD" && ctest -j 8 --output-on-failure -E "^(tokenizer|bench|server|unit)$") >"$LOGS/ctest-cpu.log" 2>&1 ||
    { tail -60 "$LOGS/ctest-cpu.log"; echo "CPU ctest failed"; }
  tail -3 "$LOGS/ctest-cpu.log"
  stamp "model and spec suites with TANDEM_TEST_DEVICE=cuda"
  for t in model spec; do
    TANDEM_TEST_DEVICE=cuda "$BUILD/test_$t" --gtest_brief=1 >"$LOGS/test-$t-cuda.log" 2>&1 ||
      { tail -40 "$LOGS/test-$t-cuda.log"; echo "test_$t on cuda FAILED"; }
    tail -2 "$LOGS/test-$t-cuda.log"
  done
fi

# The e2e suite's Node.js travels in three parts (.e2e/part-aa, -ab, -ac: tools/fetch-gpu-deps.sh) in
# consecutive calls to a warm machine; each call keeps the part it brought in /tmp until all are there.
mkdir -p /tmp/tandem-e2e
for f in .e2e/part-*; do [ -f "$f" ] && cp "$f" /tmp/tandem-e2e/; done
if want e2e; then
  # The openai-client end-to-end suite (tests/e2e, all but the web page's browser test) against
  # `tandem serve --device cuda`.
  stamp "e2e (openai client) against serve --device cuda"
  rm -rf /tmp/tandem-e2e/node
  mkdir -p /tmp/tandem-e2e/node
  if cat /tmp/tandem-e2e/part-* 2>/dev/null | xz -dc 2>/dev/null | tar -C /tmp/tandem-e2e/node -xf - 2>/dev/null; then
    rm -rf tests/e2e/node_modules && cp -r /tmp/tandem-e2e/node/node_modules tests/e2e/
    (cd tests/e2e && TANDEM_BINARY="$(realpath "../../$BUILD/tandem")" TANDEM_E2E_DEVICE=cuda \
      /tmp/tandem-e2e/node/bin/node --test --test-concurrency=1 $(ls *.test.mjs | grep -v webui)) \
      >"$LOGS/e2e-cuda.log" 2>&1 || { grep -E "^not ok|Error" "$LOGS/e2e-cuda.log" | head -30; echo "e2e on cuda FAILED"; }
    grep -E "^# (tests|pass|fail|skipped)" "$LOGS/e2e-cuda.log"
  else
    echo "e2e skipped: Node.js is incomplete here (carry .e2e/part-aa, -ab and -ac in consecutive calls)"
  fi
fi

if want serve; then
  # The bundled pair on the GPU: CPU and GPU greedy outputs side by side, then the server answering
  # chat and completions (streaming too) and /metrics, driven by curl (the GPU machine has no Node.js
  # for the openai-client e2e suite).
  stamp "generate cpu vs cuda, serve --device cuda"
  T="$BUILD/tandem"
  spec='{"model":"models/tandem-code-demo-assistant","num_speculative_tokens":3}'
  for dev in cpu cuda; do
    "$T" generate --device $dev --prompt "def fibonacci(n):" --max-tokens 64 --json >"$LOGS/gen-$dev.json" 2>/dev/null
    "$T" generate --device $dev --prompt "def fibonacci(n):" --max-tokens 64 --json --speculative-config "$spec" \
      >"$LOGS/gen-$dev-spec.json" 2>/dev/null
  done
  python3 - "$LOGS" <<'PY'
import json, sys
o = sys.argv[1]
ids = {n: json.load(open(f"{o}/gen-{n}.json"))["ids"] for n in ("cpu", "cuda", "cpu-spec", "cuda-spec")}
print("greedy ids equal cpu/cuda/cpu-spec/cuda-spec:", len({tuple(v) for v in ids.values()}) == 1)
PY
  "$T" serve --device cuda --port 8411 >"$LOGS/serve.log" 2>&1 &
  pid=$!
  for _ in $(seq 60); do curl -sf localhost:8411/health >/dev/null && break; sleep 1; done
  curl -sf localhost:8411/v1/chat/completions -H 'Content-Type: application/json' \
    -d '{"model":"tandem-code-demo","messages":[{"role":"user","content":"def add(a, b):"}],"max_tokens":32,"temperature":0}' \
    | tee "$LOGS/serve-chat.json" | head -c 400; echo
  curl -sfN localhost:8411/v1/completions -H 'Content-Type: application/json' \
    -d '{"model":"tandem-code-demo","prompt":"import os","max_tokens":16,"stream":true}' | tail -3
  curl -sf localhost:8411/metrics | grep -E "^vllm:(spec_decode_num_accepted_tokens_total|generation_tokens_total|num_requests_running)" || true
  kill -TERM $pid; wait $pid || true
  tail -3 "$LOGS/serve.log"
fi

if want bench; then
  stamp "bench step"
  T="$BUILD/tandem"
  bench_step "$T" gemma4-26b-a4b 1,2,3,4,5 512 \
    --speculative-config '{"model":"bench/configs/gemma4-26b-a4b-assistant","num_speculative_tokens":4}' --json-file "$OUT/step-26b.json" |
    tee "$LOGS/step-26b.txt"
  bench_step "$T" gemma4-31b 1,2,3,4,5 512 \
    --speculative-config '{"model":"bench/configs/gemma4-31b-assistant","num_speculative_tokens":4}' --json-file "$OUT/step-31b.json" |
    tee "$LOGS/step-31b.txt"
  # The report's checkpoint format: int4 (compressed-tensors W4A16, group 32) experts and attention.
  bench_step "$T" gemma4-26b-a4b-w4a16 1,2,3,4,5 512 \
    --speculative-config '{"model":"bench/configs/gemma4-26b-a4b-assistant","num_speculative_tokens":4}' --json-file "$OUT/step-26b-w4a16.json" |
    tee "$LOGS/step-26b-w4a16.txt"
  # The FP8-Dynamic format (compressed-tensors float-quantized, per-channel E4M3), run as W8A16.
  bench_step "$T" gemma4-26b-a4b-fp8 1,2,3,4,5 512 --json-file "$OUT/step-26b-fp8.json" | tee "$LOGS/step-26b-fp8.txt"
  # The decode and verify k=2 steps again with every op issued from the host (no CUDA graphs).
  bench_step "$T" gemma4-26b-a4b 1,3 512 --enforce-eager --json-file "$OUT/step-26b-eager.json" |
    tee "$LOGS/step-26b-eager.txt"
  # Decode, verify and prefill-sized steps with bf16 weights on the tensor cores and, for the A/B in
  # docs/PERF.md, on the CUDA cores (TANDEM_CUDA_MMA=0).
  for mma in 1 0; do
    TANDEM_CUDA_MMA=$mma bench_step "$T" gemma4-26b-a4b 1,3,5,9,17,128 512 --json-file "$OUT/step-26b-mma$mma.json" |
      tee "$LOGS/step-26b-mma$mma.txt"
  done
  stamp "bench vision (26B vision tower, one image)"
  "$T" bench vision bench/configs/gemma4-26b-a4b-vision --load-format dummy --device cuda 2>&1 | tee "$LOGS/vision.txt"
  stamp "bench sweep (bundled pair)"
  "$T" bench sweep --device cuda --num-speculative-tokens 0,1,2,3 --iterations 5 --max-tokens 200 --interleave \
    --quiet --csv "$OUT/sweep-gpu.csv" 2>&1 | tail -8
fi
if want throughput; then
  # Serving throughput: `tandem bench latency` against `tandem serve` with the full 26B-A4B on random
  # weights (a tokenizer padded to its 262144 ids, so every sampled id streams text), without and with
  # the drafter (random weights: its drafts are almost never accepted, so this is speculation's cost).
  stamp "serving throughput (26B-A4B, random weights)"
  T="$BUILD/tandem"
  python3 tools/extend_tokenizer.py models/tandem-code-demo /tmp/tandem-tok-262k 262144
  for spec in off k2; do
    args=()
    [ $spec = k2 ] && args=(--speculative-config '{"model":"bench/configs/gemma4-26b-a4b-assistant","num_speculative_tokens":2}')
    "$T" serve bench/configs/gemma4-26b-a4b --load-format dummy --tokenizer /tmp/tandem-tok-262k --device cuda \
      --port 8413 --max-num-seqs 64 "${args[@]}" >"$LOGS/throughput-serve-$spec.log" 2>&1 &
    pid=$!
    for _ in $(seq 240); do curl -sf localhost:8413/v1/models >/dev/null && break; sleep 1; done
    "$T" bench latency --endpoint http://127.0.0.1:8413 --concurrency 1,4,16,64 --duration 12s --max-tokens 128 \
      --quiet --csv "$OUT/throughput-26b-$spec.csv" 2>&1 | tail -6
    kill -TERM $pid; wait $pid || true
  done
fi
if named steps; then
  # Environment switches (TANDEM_CUDA_*) pass through: `tools/gpu-check.sh steps && TANDEM_CUDA_X=0
  # tools/gpu-check.sh steps` is an A/B in one call. Only the table rows and the copy bandwidth print.
  stamp "steps"
  for round in 1 2; do
    for run in "gemma4-26b-a4b 1,3" "gemma4-26b-a4b-w4a16 1,3" "gemma4-26b-a4b-fp8 1,3" "gemma4-31b 1"; do
      set -- $run
      echo "$1 (round $round)"
      bench_step "$BUILD/tandem" "$1" "$2" 512 | grep -E "^\| target|copy bandwidth" | tee -a "$LOGS/steps.txt" ||
        echo "(no step rows: $1 failed)"
    done
  done
fi
if named costs; then
  # What each kernel costs inside a recorded step: the 26B-A4B W4A16 and bf16 steps (T = 1, 3) once as
  # they are and once per kernel with TANDEM_CUDA_REPEAT issuing that kernel twice (docs/GPU.md,
  # "Measuring switches"); prints the step's growth per kernel, and the experts per layer, which a
  # repeated kernel that adds into its output can change (compare them with the first row).
  stamp "costs"
  for cfg in gemma4-26b-a4b-w4a16 gemma4-26b-a4b; do
    for k in "" matmul_mma_kernel norm_rope_kernel attention_chunk_kernel rms_norms_kernel moe_route_kernel \
             "moe_mma_kernel (gate_up)" "moe_mma_kernel (down)" moe_combine_kernel; do
      TANDEM_CUDA_REPEAT="$k" bench_step "$BUILD/tandem" "$cfg" 1,3 512 | grep -E "^\| target" |
        sed "s/^/$cfg|${k:-none}/" ||
        echo "(no step rows: $cfg with ${k:-no} kernel repeated failed)" >&2
    done
  done | tee "$LOGS/costs.txt" | python3 -c '
import sys
base = {}
for line in sys.stdin:
    cfg, kernel, _, tokens, ms, _, experts = line.split("|")[:7]
    key = (cfg, tokens.strip())
    if kernel == "none": base[key] = float(ms)
    delta = float(ms) - base.get(key, float(ms))
    print(f"{cfg:22} T={tokens.strip():2} {kernel:26} {float(ms):7.3f} ms  {delta:+7.3f}  experts {experts.strip()}")
'
fi
if named ab; then
  # The working tree against AB_REF in one call: this tree's `tandem` (from $BUILD) and AB_REF's (from its
  # own work tree, build_ab_ref) take turns, two rounds of each AB_RUNS entry (config:tokens:context, or
  # config:tokens:context:flags with more `bench step` flags joined by "+", e.g.
  # gemma4-26b-a4b-w4a16:1,3:512:--quantize-lm-head; flags may hold colons, so a --speculative-config JSON
  # without spaces adds the drafter step's row), so both see the same machine; the table rows go to
  # $OUT/ab.txt.
  stamp "ab: working tree against ${AB_REF:-main}"
  # A fresh machine has no configured build directory: the build phase (before ab, same call) makes it.
  [ -f "$BUILD/build.ninja" ] || { echo "ab: $BUILD is not configured here: run the build phase first"; exit 1; }
  rm -f /tmp/tandem-new /tmp/tandem-ref
  sources_by_content
  ninja -C "$BUILD" tandem >"$LOGS/ab-build-new.log" 2>&1 && cp "$BUILD/tandem" /tmp/tandem-new
  if [ -n "${ab_ref_build:-}" ]; then
    wait "$ab_ref_build"
  else
    build_ab_ref >"$LOGS/ab-build-ref.log" 2>&1
  fi && cp "$AB_TREE/build/tandem" /tmp/tandem-ref
  for side in new ref; do
    [ -x "/tmp/tandem-$side" ] && continue
    grep -E "error|Error" "$LOGS/ab-build-$side.log" | head -20 || tail -5 "$LOGS/ab-build-$side.log"
    echo "ab: the $side binary did not build (logs.tar.gz: ab-build-$side.log)"
    exit 1
  done
  stamp "ab: both binaries built"
  for round in 1 2; do
    for run in ${AB_RUNS:-gemma4-26b-a4b-w4a16:1,3:512 gemma4-26b-a4b:1,3:512 gemma4-26b-a4b-w4a16:1,3:32768}; do
      IFS=: read -r cfg tokens context flags <<<"$run"
      read -ra extra <<<"${flags//+/ }"
      for side in ref new; do
        bench_step "/tmp/tandem-$side" "$cfg" "$tokens" "$context" "${extra[@]}" | step_rows |
          awk -v p="$side $cfg${flags:+ $flags} context $context round $round " '{print p $0}' | tee -a "$OUT/ab.txt" ||
          echo "(no step rows: $side $cfg failed)"
      done
    done
  done
fi
if named switches; then
  # One binary under several settings of the measuring switches (docs/GPU.md): SWITCHES is a list of
  # settings separated by ";", each "NAME=VALUE ..." or "-" (none); ROUNDS (default 2) rounds of each
  # AB_RUNS entry (config:tokens:context[:flags], as for ab), the settings taking turns; the table rows go to
  # $OUT/switches.txt.
  stamp "switches"
  IFS=';' read -ra settings <<<"${SWITCHES:--}"
  for round in $(seq "${ROUNDS:-2}"); do
    for run in ${AB_RUNS:-gemma4-26b-a4b-w4a16:1,3:512}; do
      IFS=: read -r cfg tokens context flags <<<"$run"
      read -ra extra <<<"${flags//+/ }"
      for setting in "${settings[@]}"; do
        bench_under "$setting" "$BUILD/tandem" "$cfg" "$tokens" "$context" "${extra[@]}" |
          step_rows | awk -v p="[$setting] $cfg${flags:+ $flags} context $context round $round " '{print p $0}' |
          tee -a "$OUT/switches.txt" ||
          echo "(no step rows: $cfg under $setting failed)"
      done
    done
  done
fi
if named stamps; then
  # rms_norms' step times (docs/GPU.md, measuring builds): build_stamps' binary (built beside the build
  # phase's when both are named), then one decode step run of each AB_RUNS entry (default the
  # 26B-A4B in W4A16 over 512 tokens) under each setting in SWITCHES (as for switches); its NORMSTAMP lines
  # and step row go to $OUT/stamps-N.txt, their summary (tools/norm_stamps.py) to the output.
  stamp "stamps"
  if [ -n "${stamps_build:-}" ]; then
    wait "$stamps_build"
  else
    build_stamps >"$LOGS/stamps-build.log" 2>&1
  fi || { grep -E "error|Error" "$LOGS/stamps-build.log" | head -20 || tail -5 "$LOGS/stamps-build.log"; exit 1; }
  IFS=';' read -ra settings <<<"${SWITCHES:--}"
  n=0
  for run in ${AB_RUNS:-gemma4-26b-a4b-w4a16:1:512}; do
    IFS=: read -r cfg tokens context flags <<<"$run"
    read -ra extra <<<"${flags//+/ }"
    for setting in "${settings[@]}"; do
      n=$((n + 1))
      bench_under "$setting" build-stamps/tandem "$cfg" "$tokens" "$context" "${extra[@]}" | step_rows NORMSTAMP >"$OUT/stamps-$n.txt" || true
      echo "[$setting] $cfg${flags:+ $flags} context $context ($OUT/stamps-$n.txt):"
      step_rows <"$OUT/stamps-$n.txt" || echo "(no step row)"
      python3 tools/norm_stamps.py "$OUT/stamps-$n.txt" || true
    done
  done
fi
if named chain; then
  # What one kernel of a chain of dependent kernels costs on this GPU, with and without programmatic
  # dependent launch, by CTAs and bytes streamed (bench/bench_kernel_chain.cu; BUILD_TARGETS should name
  # bench_kernel_chain).
  stamp "chain"
  "$BUILD/bench_kernel_chain" | tee "$OUT/chain.txt"
fi
if named sass; then
  # The development machine has no cuobjdump: the listings travel back gzipped (~6 MB each).
  stamp "sass"
  for f in matmul moe; do
    cuobjdump -sass "$(find "$BUILD" -name "$f.cu.o" | head -1)" | gzip -6 >"$OUT/$f.sass.gz"
  done
fi
if named trace; then
  # Every kernel's start and end inside the replayed steps of each TRACE_RUNS entry (config:tokens:context
  # or config:tokens:context:flags, as AB_RUNS; default the 26B-A4B decode in W4A16 and bf16 over 512
  # tokens), recorded by tools/kernel_trace.cc (a CUPTI injection library) and summarised by
  # tools/kernel_trace.py into $OUT/trace-N.txt (the runs gzipped beside it). Each entry also runs without
  # the library first: the two step times say what the tracing itself costs.
  stamp "trace"
  sources_by_content
  ninja -C "$BUILD" tandem tandem_kernel_trace >"$LOGS/trace-build.log" 2>&1 ||
    { tail -20 "$LOGS/trace-build.log"; echo "trace: build failed"; exit 1; }
  i=0
  for run in ${TRACE_RUNS:-gemma4-26b-a4b-w4a16:1:512 gemma4-26b-a4b:1:512}; do
    IFS=: read -r cfg tokens context flags <<<"$run"
    read -ra extra <<<"${flags//+/ }"
    i=$((i + 1))
    bench_step "$BUILD/tandem" "$cfg" "$tokens" "$context" "${extra[@]}" | step_rows | sed "s/^/untraced $cfg /" ||
      echo "(no step rows: untraced $cfg failed)"
    CUDA_INJECTION64_PATH="$PWD/$BUILD/libtandem_kernel_trace.so" KERNEL_TRACE_FILE="$LOGS/trace-$i.csv" \
      bench_step "$BUILD/tandem" "$cfg" "$tokens" "$context" "${extra[@]}" | step_rows "^kernel_trace" |
      sed "s/^/traced $cfg /" || echo "(no step rows: traced $cfg failed)"
    if [ -f "$LOGS/trace-$i.csv" ]; then
      echo "$run" >"$OUT/trace-$i.txt"
      python3 tools/kernel_trace.py "$LOGS/trace-$i.csv" >>"$OUT/trace-$i.txt" 2>&1 || echo "trace: kernel_trace.py failed"
      head -40 "$OUT/trace-$i.txt"
      gzip -c "$LOGS/trace-$i.csv" >"$OUT/trace-$i.csv.gz"
    fi
  done
fi
if named ncu; then
  # Every kernel of a run (load, bandwidth probe, three steps) alone, cold caches, unmodified clocks
  # (docs/GPU.md): about 80 s per config. Eager launches, so a kernel is one launch, not a graph node.
  stamp "ncu"
  for cfg in gemma4-26b-a4b gemma4-26b-a4b-w4a16; do
    ncu --clock-control none --csv --page raw \
      --metrics gpu__time_duration.sum,dram__bytes_read.sum,launch__grid_size,launch__registers_per_thread \
      "$BUILD/tandem" bench step bench/configs/$cfg --load-format dummy --device cuda --tokens 1 --context 512 --reps 1 \
      --enforce-eager 2>"$LOGS/ncu-$cfg.log" | gzip -6 >"$OUT/ncu-$cfg.csv.gz"
  done
fi
if named ncu-attention; then
  # Where an attention launch's time goes over a long context: speed of light, memory, occupancy and
  # warp states of the second step's first 6 attention launches (5 sliding layers and a full one) of a
  # W4A16 26B-A4B decode over NCU_CONTEXT (default 32768) cached tokens, as text.
  stamp "ncu-attention"
  ncu --clock-control none --kernel-name regex:attention --launch-skip 30 --launch-count 6 \
    --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy --section WarpStateStats \
    "$BUILD/tandem" bench step bench/configs/gemma4-26b-a4b-w4a16 --load-format dummy --device cuda --tokens 1 \
    --context "${NCU_CONTEXT:-32768}" --reps 1 --enforce-eager >"$OUT/ncu-attention.txt" 2>"$LOGS/ncu-attention.log" ||
    { tail -5 "$LOGS/ncu-attention.log"; echo "ncu-attention failed"; }
fi
if named ncu-source; then
  # Where the warps of NCU_KERNEL's launches (a regex over kernel names; NCU_SKIP launches skipped, then
  # NCU_COUNT profiled) wait in a decode step of NCU_CONFIG (default the W4A16 26B-A4B) over NCU_CONTEXT
  # (default 512) cached tokens, with NCU_ARGS added to bench step's arguments (e.g. --quantize-lm-head):
  # warp-stall samples per SASS instruction (the source page as CSV, gzipped; tools/ncu_source.py reads it)
  # and the speed-of-light, occupancy, launch and warp-state sections (text). Caches are left as the
  # previous kernel leaves them (--cache-control none), as inside a step; launches are eager.
  # NCU_SKIP has no default: the launches before a decode step (the load's and the context's prefill) depend
  # on the config, the context and the code; docs/GPU.md (twenty-fifth session) gives the counts and how to
  # recount them from the ncu phase's CSV.
  [ -n "${NCU_SKIP:-}" ] || { echo "ncu-source: set NCU_SKIP (docs/GPU.md)"; exit 1; }
  stamp "ncu-source"
  rep=$(mktemp -d)/source
  # shellcheck disable=SC2086
  ncu --clock-control none --cache-control none --kernel-name "regex:${NCU_KERNEL:-matmul_mma|moe_mma|attention|rms_norms}" \
    --launch-skip "$NCU_SKIP" --launch-count "${NCU_COUNT:-14}" --warp-sampling-interval 0 \
    --section SourceCounters --section WarpStateStats --section SpeedOfLight --section Occupancy --section LaunchStats \
    -o "$rep" -f "$BUILD/tandem" bench step "bench/configs/${NCU_CONFIG:-gemma4-26b-a4b-w4a16}" --load-format dummy \
    --device cuda --tokens 1 --context "${NCU_CONTEXT:-512}" --reps 1 --enforce-eager ${NCU_ARGS:-} >"$LOGS/ncu-source.log" 2>&1 ||
    { tail -5 "$LOGS/ncu-source.log"; echo "ncu-source failed"; }
  if [ -f "$rep.ncu-rep" ]; then
    ncu -i "$rep.ncu-rep" --page details >"$OUT/ncu-source-details.txt" 2>&1
    ncu -i "$rep.ncu-rep" --page source --print-source sass --csv 2>&1 | gzip -6 >"$OUT/ncu-source.csv.gz"
  fi
fi
stamp "done"
