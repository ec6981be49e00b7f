#!/usr/bin/env python3
"""Drafter acceptance of the bundled model with tandem itself, on the held-out code prompts stored
in models/tandem-code-demo/golden.safetensors (ids.0..2; held-out files, see DATA.md).

Runs `tandem generate` per prompt, k and temperature; sums vLLM-style counters over prompts and
seeds and prints a Markdown table. Usage: tools/bundled_acceptance.py [build/tandem] [--tokens 200]
[--ks 1,2,3] [--quantization int4|int8|fp8 [--quantize-lm-head]] [--drafter-quantization int4|int8|fp8
[--drafter-quantize-lm-head]] (the target's and the drafter's quantization at load) [--target DIR] (another
checkpoint of the bundled model's weights as the target, e.g. bench/peers' compressed-tensors int4 one; the
prompts stay the bundled model's).
"""
import json
import struct
import subprocess
import sys

tandem = sys.argv[1] if len(sys.argv) > 1 and not sys.argv[1].startswith("--") else "build/tandem"


def option(name, default):
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


tokens = int(option("--tokens", 200))
ks = [int(k) for k in option("--ks", "1,2,3").split(",")]
target_flags = ["--quantization", option("--quantization", "none")] if "--quantization" in sys.argv else []
if "--quantize-lm-head" in sys.argv:
    target_flags.append("--quantize-lm-head")
drafter_quant = {}
if "--drafter-quantization" in sys.argv:
    drafter_quant["quantization"] = option("--drafter-quantization", None)
    drafter_quant["quantize_lm_head"] = "--drafter-quantize-lm-head" in sys.argv
model = "models/tandem-code-demo"
target = option("--target", model)
drafter = "models/tandem-code-demo-assistant"


def prompts(path):
    raw = open(path, "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    out = []
    for i in range(100):
        t = header.get(f"ids.{i}")
        if not t:
            break
        a, b = t["data_offsets"]
        data = raw[8 + n + a:8 + n + b]
        out.append(list(struct.unpack(f"<{len(data) // 4}i", data)))
    return out


rows = []
for temperature, seeds in ((0.0, [0]), (0.7, [1, 2, 3])):
    for k in ks:
        drafts = drafted = accepted = 0
        per_pos = [0] * k
        for ids in prompts(f"{model}/golden.safetensors"):
            for seed in seeds:
                cmd = [tandem, "generate", "--model", target, "--ids", ",".join(map(str, ids)), "--max-tokens", str(tokens),
                       "--ignore-eos", "--json", "--temperature", str(temperature), "--seed", str(seed),
                       "--speculative-config", json.dumps({"model": drafter, "num_speculative_tokens": k, **drafter_quant})
                       ] + target_flags
                spec = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()[-1])["spec"]
                drafts += spec["num_drafts"]
                drafted += spec["num_draft_tokens"]
                accepted += spec["num_accepted_tokens"]
                per_pos = [a + b for a, b in zip(per_pos, spec["accepted_per_position"])]
        rows.append((temperature, k, drafts, accepted / drafted, 1 + accepted / drafts, [p / drafts for p in per_pos]))

print("| temperature | k | rounds | acceptance (accepted / drafted) | mean acceptance length | per-position acceptance |")
print("|---|---|---|---|---|---|")
for t, k, n, a, al, pp in rows:
    print(f"| {t} | {k} | {n} | {a:.1%} | {al:.2f} | {' / '.join(f'{p:.1%}' for p in pp)} |")
