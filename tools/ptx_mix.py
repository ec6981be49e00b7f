#!/usr/bin/env python3
"""Static instruction counts of CUDA kernels, from their PTX: a GPU-less way to see what a change does to a
kernel's code before a device session measures it (docs/GPU.md).

Usage: tools/ptx_mix.py FILE.cu PATTERN... [--build DIR] [--top N]
Compiles src/backend/cuda/FILE.cu to PTX with the command of the CUDA build in DIR (default build-cuda,
configured with -DTANDEM_CUDA=ON), then for each kernel whose mangled name contains a PATTERN prints its
PTX instructions, its mma.sync instructions and, for the loop (a backward branch) with the most MMAs, that
loop's instructions, instructions per MMA and its opcode mix.

What it counts is static PTX: every path of a branch counts, executed or not, PTX `mov`s mostly vanish in
SASS, and ptxas schedules and rewrites the rest. A smaller loop is a hint, not a measurement: Nsight
Compute's executed instructions (`tools/gpu-check.sh ncu-source`) are the measure."""
import argparse
import collections
import re
import shlex
import subprocess
import sys
import tempfile


def ptx_of(cu, build):
    cmds = subprocess.run(["ninja", "-C", build, "-t", "commands", "tandem_backend"], check=True,
                          capture_output=True, text=True).stdout.splitlines()
    cmd = next((c for c in cmds if f"/cuda/{cu} " in c), None)
    if cmd is None:
        sys.exit(f"ptx_mix: no compile command for {cu} in {build}")
    args = shlex.split(cmd)
    kept, skip = [], 0
    for a in args:
        if skip:
            skip -= 1
            continue
        if a == "-MD":
            continue
        if a in ("-MT", "-MF", "-o"):
            skip = 1
            continue
        kept.append("-ptx" if a == "-c" else a)
    with tempfile.TemporaryDirectory() as tmp:
        out = f"{tmp}/{cu}.ptx"
        subprocess.run(kept + ["-o", out], check=True, cwd=build)
        with open(out) as f:
            return f.read()


def kernels(ptx):
    """(mangled name, instruction lines without labels, label -> index)."""
    for entry in re.split(r"\n(?=(?:\.visible |\.weak )?\.entry )", ptx):
        m = re.search(r"\.entry (\S+)\(", entry)
        if not m:
            continue
        ins, labels = [], {}
        for line in entry.split("\n"):
            line = line.strip().lstrip("{").rstrip("}").strip()  # an inline scope: { cvt.f32.f16 %f1, %rs1; }
            if not line or line.startswith(("//", ".", ")")):
                continue
            if re.fullmatch(r"\$?\w+:", line):
                labels[line[:-1]] = len(ins)
            else:
                ins.append(line)
        yield m.group(1), ins, labels


def opcode(line):
    return re.sub(r"^@!?%p\d+\s+", "", line).split()[0].split(".")[0]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("cu")
    ap.add_argument("patterns", nargs="+")
    ap.add_argument("--build", default="build-cuda")
    ap.add_argument("--top", type=int, default=16)
    a = ap.parse_args()
    for name, ins, labels in kernels(ptx_of(a.cu, a.build)):
        if not any(p in name for p in a.patterns):
            continue
        mmas = sum("mma.sync" in x for x in ins)
        print(f"{name}\n  {len(ins)} instructions, {mmas} mma.sync")
        best = None  # (start, end, mmas) of the loop with the most MMAs
        for i, line in enumerate(ins):
            m = re.search(r"\bbra(?:\.uni)?\s+(\$?\w+);", line)
            if m and m.group(1) in labels and labels[m.group(1)] <= i:
                s = labels[m.group(1)]
                n = sum("mma.sync" in x for x in ins[s:i + 1])
                if n and (best is None or n > best[2]):
                    best = (s, i, n)
        if best:
            s, e, n = best
            mix = collections.Counter(opcode(x) for x in ins[s:e + 1])
            print(f"  hottest loop: {e - s + 1} instructions, {n} mma.sync, {(e - s + 1) / n:.1f} a MMA")
            print("  " + ", ".join(f"{op} {c}" for op, c in mix.most_common(a.top)))


if __name__ == "__main__":
    main()
