#!/usr/bin/env python3
"""Where a graph-replayed step's time goes, from the kernel runs tools/kernel_trace.cc recorded.

`tools/gpu-check.sh trace` runs `tandem bench step` with the injection library and this script on the GPU
machine (docs/GPU.md). Usage:
    tools/kernel_trace.py CSV[.gz] [--graph ID] [--timeline FIRST LAST]
First the CUDA graphs the run replayed: kernels a replay, replays, median span. Then for one graph (--graph,
else the one with the most kernels among those replayed at least 5 times), over its complete replays:
- the median span (first kernel's start to last kernel's end) and busy time (some kernel running);
- per kernel and grid: launches a replay; median µs a launch from start to end (under programmatic
  dependent launch a kernel starts while its predecessor runs and waits for it, so this includes the
  wait); and its charge: with a replay's kernels sorted by end, each is charged the time from the end
  before it to its own end, so the charges add up to the span, and a kernel that ends while a longer one
  runs on the other stream is charged little. The charge is the kernel's share of the step's time;
- with --timeline, kernels FIRST..LAST of the replay in order of start (0-based): stream, start and end
  relative to the replay's first start, duration and charge, medians (a layer of the 26B-A4B decode step
  is about 15 kernels)."""
import argparse
import collections
import csv
import gzip
import re
import statistics


def short_name(name):
    """`matmul_mma_kernel<cu::MmaQuantRows<0>, 1, 0, true, 1>` from a demangled kernel signature."""
    s = name.replace("(anonymous namespace)::", "").replace("tandem::", "")
    s = re.sub(r"\([A-Za-z_][\w:]*\)(?=-?\d)", "", s)  # enum casts: (QuantCode)0 -> 0
    s = s[5:] if s.startswith("void ") else s
    depth = 0
    for i, c in enumerate(s):
        depth += (c == "<") - (c == ">")
        if c == "(" and depth == 0:
            return s[:i]  # the parameter list
    return s


def load(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", newline="") as f:
        return [{"start": int(r["start_ns"]), "end": int(r["end_ns"]), "stream": int(r["stream"]),
                 "graph": int(r["graph"]), "node": int(r["graph_node"]),
                 "grid": f"({r['grid_x']}, {r['grid_y']}, {r['grid_z']})", "name": short_name(r["name"])}
                for r in csv.DictReader(f)]


def replays_by_graph(runs):
    """graph id -> its replays (lists of kernel runs, by start): a graph's runs in order of start, a new
    replay wherever a node comes again (each node runs once a replay; replays of one graph do not overlap)."""
    by_graph = collections.defaultdict(list)
    for k in runs:
        if k["graph"]:
            by_graph[k["graph"]].append(k)
    graphs = {}
    for graph, ks in sorted(by_graph.items(), key=lambda kv: min(k["start"] for k in kv[1])):
        reps, seen = [], set()
        for k in sorted(ks, key=lambda k: k["start"]):
            if not reps or k["node"] in seen:
                reps.append([])
                seen = set()
            reps[-1].append(k)
            seen.add(k["node"])
        graphs[graph] = reps
    return graphs


def span_and_busy(replay):
    t0 = replay[0]["start"]
    span = max(k["end"] for k in replay) - t0
    busy, cur_s, cur_e = 0, None, None
    for k in replay:  # by start
        if cur_e is None or k["start"] > cur_e:
            busy += 0 if cur_e is None else cur_e - cur_s
            cur_s, cur_e = k["start"], k["end"]
        else:
            cur_e = max(cur_e, k["end"])
    busy += cur_e - cur_s
    return span, busy


def charges(replay):
    """node -> the time from the end before this kernel's (or the replay's start) to its end."""
    t_prev, out = replay[0]["start"], {}
    for k in sorted(replay, key=lambda k: k["end"]):
        out[k["node"]] = k["end"] - t_prev  # ends ascend, and none precedes the replay's first start
        t_prev = k["end"]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("csv")
    ap.add_argument("--graph", type=int)
    ap.add_argument("--timeline", type=int, nargs=2, metavar=("FIRST", "LAST"))
    a = ap.parse_args()
    graphs = replays_by_graph(load(a.csv))
    if not graphs:
        raise SystemExit("no kernels of CUDA graphs in the trace (was the step run with --enforce-eager?)")
    med = statistics.median
    print("| graph | kernels a replay | replays | median span µs |")
    print("|---:|---:|---:|---:|")
    size = {}
    for g, reps in graphs.items():
        size[g] = collections.Counter(len(r) for r in reps).most_common(1)[0][0]
        print(f"| {g} | {size[g]} | {len(reps)} | {med(span_and_busy(r)[0] for r in reps) / 1e3:.1f} |")
    graph = a.graph if a.graph is not None else max((g for g in graphs if len(graphs[g]) >= 5),
                                                     key=lambda g: size[g], default=None)
    if graph not in graphs:
        raise SystemExit(f"no graph {graph} replayed at least 5 times; pass --graph")
    reps = [r for r in graphs[graph] if len(r) == size[graph]]  # complete replays
    spans = [span_and_busy(r) for r in reps]
    span, busy = med(s for s, _ in spans), med(b for _, b in spans)
    print(f"\ngraph {graph}: {len(reps)} replays of {size[graph]} kernels; median span {span / 1e3:.1f} µs, "
          f"busy {busy / 1e3:.1f} µs ({100 * busy / span:.0f} %)")
    # Per node, over the replays: offsets from the replay's first start, duration, charge.
    per_node = collections.defaultdict(lambda: collections.defaultdict(list))
    for r in reps:
        t0, ch = r[0]["start"], charges(r)
        for k in r:
            n = per_node[k["node"]]
            n["start"].append(k["start"] - t0)
            n["end"].append(k["end"] - t0)
            n["dur"].append(k["end"] - k["start"])
            n["charge"].append(ch[k["node"]])
            n["who"] = (k["name"], k["grid"], k["stream"])
    nodes = sorted(per_node, key=lambda n: med(per_node[n]["start"]))
    groups = collections.defaultdict(lambda: [0, [], 0.0])
    for n in nodes:
        name, grid, _ = per_node[n]["who"]
        g = groups[(name, grid)]
        g[0] += 1
        g[1].append(med(per_node[n]["dur"]))
        g[2] += med(per_node[n]["charge"])
    print("\n| charge µs a replay | share | launches | µs a launch (start to end) | grid | kernel |")
    print("|---:|---:|---:|---:|---|---|")
    for (name, grid), (count, durs, charge) in sorted(groups.items(), key=lambda kv: -kv[1][2]):
        print(f"| {charge / 1e3:.1f} | {100 * charge / span:.1f} % | {count} | {med(durs) / 1e3:.2f} | {grid} | "
              f"{name[:90]} |")
    if a.timeline:
        first, last = a.timeline
        print("\n| # | stream | start µs | end µs | µs | charge µs | grid | kernel |")
        print("|---:|---:|---:|---:|---:|---:|---|---|")
        for i in range(max(0, first), min(last, len(nodes) - 1) + 1):
            n = per_node[nodes[i]]
            name, grid, stream = n["who"]
            print(f"| {i} | {stream} | {med(n['start']) / 1e3:.2f} | {med(n['end']) / 1e3:.2f} | "
                  f"{med(n['dur']) / 1e3:.2f} | {med(n['charge']) / 1e3:.2f} | {grid} | {name[:70]} |")


if __name__ == "__main__":
    main()
