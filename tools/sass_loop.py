#!/usr/bin/env python3
"""Instruction counts of a CUDA kernel's main loop, from `cuobjdump -sass` output.

`tools/sass-here.sh FILE.cu OUTDIR` writes a listing on the development machine (nvcc, and a cuobjdump it
fetches from Debian); `tools/gpu-check.sh sass` writes those of the matmul and MoE objects to $OUT on the GPU
machine (docs/GPU.md). Usage:
    tools/sass_loop.py LISTING[.gz] PATTERN     PATTERN: a regular expression over mangled kernel names
For each kernel whose name matches: its instruction count, and for its first loop (the range from the
target of the first backward branch to that branch) the instruction count and the opcodes, most
frequent first. A loop's count is static: branches inside it may skip some of its instructions."""
import collections
import gzip
import re
import sys


def kernels(path):
    opener = gzip.open if path.endswith(".gz") else open
    name, body = None, []
    with opener(path, "rt") as f:
        for line in f:
            m = re.search(r"Function : (\S+)", line)
            if m:
                if name:
                    yield name, body
                name, body = m.group(1), []
                continue
            m = re.match(r"\s+/\*([0-9a-f]{4,})\*/\s+(.*?);", line)
            if m and name:
                body.append((int(m.group(1), 16), m.group(2).strip()))
    if name:
        yield name, body


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    for name, body in kernels(sys.argv[1]):
        if not re.search(sys.argv[2], name):
            continue
        print(f"{name}: {len(body)} instructions")
        for addr, text in body:
            m = re.search(r"BRA (0x[0-9a-f]+)", text)
            if m and int(m.group(1), 16) < addr:
                loop = [t for a, t in body if int(m.group(1), 16) <= a <= addr]
                ops = collections.Counter(re.sub(r"^@!?U?P\w+\s+", "", t).split()[0] for t in loop)
                print(f"  first loop {m.group(1)}..{hex(addr)}: {len(loop)} instructions")
                print("  " + ", ".join(f"{op} {n}" for op, n in ops.most_common()))
                break


if __name__ == "__main__":
    main()
