#!/usr/bin/env python3
"""Where a kernel's warps wait, from Nsight Compute's source page (`ncu -i REPORT --page source --print-source sass
--csv`), as `tools/gpu-check.sh ncu-source` writes it (gzipped) to $OUT (docs/GPU.md). Usage:
    tools/ncu_source.py CSV[.gz] [--top N]
For each profiled kernel: its warp-stall samples by reason, its executed warp instructions by opcode (and per
tensor-core MMA, where it has any), the N instructions with the most samples, and the N with the most excessive
shared-memory wavefronts (bank conflicts) and excessive global sectors (uncoalesced accesses). Samples say where warps wait, not why the kernel is slow: read them with the details page's sections."""
import argparse
import collections
import csv
import gzip
import io
import sys


def kernels(path):
    """(kernel name, header, rows) for each kernel of the CSV: a '"Kernel Name",...' line, then a header and rows.
    In the twenty-sixth session's CSV each profiled launch came twice in a row: a block equal to the one before it is
    skipped."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        lines = f.read().splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith('"Kernel Name"')]
    previous = None
    for n, start in enumerate(starts):
        end = starts[n + 1] if n + 1 < len(starts) else len(lines)
        if lines[start:end] == previous:
            continue
        previous = lines[start:end]
        name = next(csv.reader([lines[start]]))[1]
        table = list(csv.reader(io.StringIO("\n".join(lines[start + 1:end]))))
        if table:
            yield name, table[0], table[1:]


def opcode(sass):
    """`HADD2` from `@P0   HADD2.F32 R98, -RZ, R10.H0_H0`: the mnemonic without predicate and modifiers."""
    words = sass.split()
    if words and words[0].startswith("@"):
        words = words[1:]
    return words[0].split(".")[0] if words else ""


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("csv")
    ap.add_argument("--top", type=int, default=12)
    args = ap.parse_args()
    found = False
    for name, header, rows in kernels(args.csv):
        found = True
        col = {h: i for i, h in enumerate(header)}
        num = lambda r, key: float(r[col[key]] or 0) if key in col and col[key] < len(r) else 0.0
        src = lambda r: r[col["Source"]].strip()
        samples = "Warp Stall Sampling (All Samples)"
        total = sum(num(r, samples) for r in rows)
        print(f"{name[:160]}\n  {len(rows)} instructions, {total:.0f} warp-stall samples")
        reasons = [h for h in header if h.startswith("stall_") and "Not Issued" not in h]
        by_reason = sorted(((sum(num(r, h) for r in rows), h) for h in reasons), reverse=True)
        print("  by reason: " + ", ".join(f"{h[6:]} {v / total:.0%}" for v, h in by_reason if total and v / total >= 0.02))
        ops = collections.Counter()
        for r in rows:
            ops[opcode(src(r))] += num(r, "Instructions Executed")
        executed = sum(ops.values())
        if executed:
            mma = sum(v for op, v in ops.items() if op in ("HMMA", "IMMA", "HGMMA", "QGMMA", "IGMMA"))
            per_mma = f", {executed / mma:.1f} per MMA" if mma else ""
            print(f"  executed: {executed:.0f} warp instructions{per_mma}; by opcode: " +
                  ", ".join(f"{op} {v / executed:.1%}" for op, v in ops.most_common(args.top)))
        print(f"  top {args.top} instructions by samples:")
        for r in sorted(rows, key=lambda r: -num(r, samples))[:args.top]:
            print(f"    {num(r, samples) / max(total, 1):6.1%}  {src(r)[:90]}")
        for key, what in (("L1 Wavefronts Shared Excessive", "shared wavefronts"),
                          ("L2 Theoretical Sectors Global Excessive", "global sectors")):
            worst = [r for r in sorted(rows, key=lambda r: -num(r, key)) if num(r, key) > 0][:args.top]
            if worst:
                print(f"  excessive {what} (instruction: excessive of all):")
                base = key.replace(" Excessive", "")
                for r in worst:
                    print(f"    {num(r, key):12.0f} of {num(r, base):12.0f}  {src(r)[:80]}")
    if not found:
        sys.exit(f"{args.csv}: no '\"Kernel Name\"' line; is it `--page source --csv` output?")


if __name__ == "__main__":
    main()
