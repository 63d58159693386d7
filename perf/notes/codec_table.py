#!/usr/bin/env python3
"""Prints the markdown table of a codec bench run: our time vs mqttbytes per case.

Usage (after `cargo bench -p shardmq-perf --bench codec -- ...`):
    python3 perf/notes/codec_table.py [target/criterion]

Reads criterion's `<group>/<function>/<case>/new/estimates.json` (mean point estimate)
and `benchmark.json` (throughput: packets per iteration), for the groups
`{decode,encode}_{publish,control}_{v311,v5}`, and prints the time per packet.
Ratio = mqttbytes time / shardmq time (>1: we are faster; the throughput ratio is the same).
"""

import json
import os
import sys

root = sys.argv[1] if len(sys.argv) > 1 else "target/criterion"


def load(group, function, case):
    d = os.path.join(root, group, function, case, "new")
    try:
        est = json.load(open(os.path.join(d, "estimates.json")))
        bench = json.load(open(os.path.join(d, "benchmark.json")))
    except FileNotFoundError:
        return None
    ns = est["mean"]["point_estimate"]
    tp = bench.get("throughput") or {}
    packets = tp.get("Elements") or 1
    return ns / packets, packets


def fmt_ns(ns):
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.2f} µs"
    return f"{ns:.1f} ns"


def fmt_tp(ns, _packets):
    mpps = 1e3 / ns
    return f"{mpps:.2f} M/s" if mpps >= 0.1 else f"{mpps * 1e3:.1f} k/s"


print("| op | version | case | shardmq ns/packet (packets/s) | mqttbytes ns/packet (packets/s) | ratio (peer/ours) | shardmq header-only (fan-out path), ratio |")
print("|---|---|---|---|---|---|---|")
for op in ("decode", "encode"):
    for kind in ("publish", "control"):
        for version in ("v311", "v5"):
            group = f"{op}_{kind}_{version}"
            gdir = os.path.join(root, group, "shardmq")
            if not os.path.isdir(gdir):
                continue
            cases = sorted(
                (c for c in os.listdir(gdir) if c != "report"),
                key=lambda c: (not c[0].isdigit(), int("".join(ch for ch in c if ch.isdigit()) or 0)
                               * (1024 if c.endswith("KiB") else 1), c),
            )
            for case in cases:
                ours = load(group, "shardmq", case)
                peer = load(group, "mqttbytes", case)
                header = load(group, "shardmq_header", case)
                if not ours or not peer:
                    continue
                ratio = peer[0] / ours[0]
                h = ""
                if header:
                    h = f"{fmt_ns(header[0])} ({peer[0] / header[0]:.1f}×)"
                print(
                    f"| {op} | {version} | {'' if kind == 'control' else 'publish '}{case} "
                    f"| {fmt_ns(ours[0])} ({fmt_tp(*ours)}) | {fmt_ns(peer[0])} ({fmt_tp(*peer)}) "
                    f"| **{ratio:.2f}×** | {h} |"
                )
