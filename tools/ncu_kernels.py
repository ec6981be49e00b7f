#!/usr/bin/env python3
"""Per-kernel times and DRAM bytes of one step, from an Nsight Compute CSV of `tandem bench step`.

`tools/gpu-check.sh ncu` runs `ncu --csv --page raw` over `bench step --tokens 1 --reps 1 --enforce-eager`
on the GPU machine and writes the CSV (gzipped) to $OUT (docs/GPU.md). Usage:
    tools/ncu_kernels.py CSV[.gz]
The step is the run's last: the kernels after the second-to-last `argmax_kernel` up to the last one. For
each kernel and grid: calls, total and per-call time, DRAM bytes read per call and their rate, registers.
Under ncu every kernel runs alone with cold caches, so the times rank kernels; they do not add up to a step."""
import collections
import csv
import gzip
import io
import re
import sys


def rows(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        lines = f.read().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith('"ID"'))
    table = list(csv.reader(io.StringIO("\n".join(lines[start:]))))
    header, data = table[0], table[2:]  # table[1]: units
    col = {h: i for i, h in enumerate(header)}
    num = lambda s: float(s.replace(",", "")) if s else 0.0
    for r in data:
        name = r[col["Kernel Name"]]
        base = re.sub(r"^.*::", "", name.split("(")[0].split("<")[0])
        args = name.split("<", 1)[1].rsplit(">(", 1)[0] if "<" in name.split("(")[0] else ""
        yield (f"{base}<{args}>" if args else base, r[col["Grid Size"]], num(r[col["gpu__time_duration.sum"]]),
               num(r[col["dram__bytes_read.sum"]]), r[col["launch__registers_per_thread"]])


def main():
    kernels = list(rows(sys.argv[1]))
    ends = [i for i, k in enumerate(kernels) if k[0].startswith("argmax_kernel")]
    if len(ends) < 2:
        sys.exit("fewer than two steps (argmax_kernel launches) in the profile")
    step = kernels[ends[-2] + 1 : ends[-1] + 1]
    total_ns = sum(k[2] for k in step)
    total_bytes = sum(k[3] for k in step)
    print(f"last step: {len(step)} kernels, {total_ns / 1e3:.1f} us of kernel time, {total_bytes / 1e9:.3f} GB read")
    groups = collections.defaultdict(lambda: [0, 0.0, 0.0, ""])
    for name, grid, ns, dram, regs in step:
        g = groups[(name, grid)]
        g[0] += 1
        g[1] += ns
        g[2] += dram
        g[3] = regs
    print("| total us | calls | us/call | MB/call | GB/s | regs | grid | kernel |")
    print("|---:|---:|---:|---:|---:|---:|---|---|")
    for (name, grid), (n, ns, dram, regs) in sorted(groups.items(), key=lambda kv: -kv[1][1]):
        print(f"| {ns / 1e3:.1f} | {n} | {ns / n / 1e3:.2f} | {dram / n / 1e6:.3f} | {dram / max(ns, 1):.0f} | {regs} | "
              f"{grid} | {name[:100]} |")


if __name__ == "__main__":
    main()
