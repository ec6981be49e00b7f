#!/usr/bin/env python3
"""Summarises the NORMSTAMP lines of the rms_norms measuring build (docs/GPU.md, measuring builds).

Each line is one one-row rms_norms launch: its index, its step count, its SM, when its CTA started, how long it
waited (ns), then each step's reduction and end (ns after the wait returned). Launches of the same step count
are split into KINDS kinds that take turns within each run of consecutive launches (a Gemma 4 MoE layer's two
four-step chains alternate: the one after attention, then the layer-end one), and each kind's medians are printed: the wait, then each step's end and its
own duration, in µs.

  tools/norm_stamps.py FILE [--kinds 2]
"""
import argparse
import re
import statistics
import sys

LINE = re.compile(r"NORMSTAMP (\d+) steps=(\d+) sm=(\d+) start=(\d+) wait=(\d+) \|(.*)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file")
    ap.add_argument("--kinds", type=int, default=2, help="kinds of launches of one step count, taken in turn")
    args = ap.parse_args()
    by_steps = {}
    with open(args.file, errors="replace") as f:
        for line in f:
            m = LINE.search(line)
            if not m:
                continue
            k, steps, sm, _, wait, rest = m.groups()
            times = [int(t) for t in rest.replace("|", " ").split()][: 2 * int(steps)]
            by_steps.setdefault(int(steps), []).append((int(k), int(sm), int(wait), times))
    if not by_steps:
        sys.exit(f"{args.file}: no NORMSTAMP lines")
    for steps, launches in sorted(by_steps.items()):
        launches.sort()
        kinds = args.kinds if len(launches) >= 2 * args.kinds else 1
        # The kinds take turns within each run of consecutive launches of this step count (a decode step's
        # layers), starting again with the first kind after any other launch (the step's ends).
        turn, previous = [], None
        for k, *_ in launches:
            turn.append(0 if previous is None or k != previous + 1 else (turn[-1] + 1) % kinds)
            previous = k
        for kind in range(kinds):
            rows = [r for r, t in zip(launches, turn) if t == kind]
            ends = [statistics.median(r[3][2 * s + 1] for r in rows) / 1000 for s in range(steps)]
            own = [e - (ends[s - 1] if s else 0.0) for s, e in enumerate(ends)]
            sms = sorted({r[1] for r in rows})
            print(f"{steps} steps, kind {kind + 1} of {kinds}: {len(rows)} launches on {len(sms)} SM(s); "
                  f"wait {statistics.median(r[2] for r in rows) / 1000:.2f} µs; step ends "
                  + " / ".join(f"{e:.2f}" for e in ends) + " µs after the wait (each step "
                  + " / ".join(f"{o:.2f}" for o in own) + ")")


if __name__ == "__main__":
    main()
