#!/usr/bin/env python3
"""The cost of authorisation in fan-out (issue #13): broker CPU per delivered message for
fan-out 1 → 1000, QoS 0, 64 B, with an ACL file of 10,000 users (5 lines each) + 100
patterns + `topic readwrite #` for anonymous clients (the harness connects anonymously, so
every subscription is fully covered and every PUBLISH is write-checked), against the same
broker without an ACL. Target: with / without ≤ 1.1.

Runs alternate, with the ACL first (A B A B A B for --pairs 3); each run starts a fresh
broker (pinned to --broker-cpu, one shard) and runs `shardmq-bench fanout` against it
(pinned to --harness-cpu). The results (every run, medians, the ratio of the medians, the
harness's CPU contention warnings) go to perf/results/<date>-<commit>-acl.json.

    scripts/bench-acl.py                          # release build, 3 pairs of 5 s windows
    scripts/bench-acl.py --duration-secs 1 --pairs 1 --subscribers 100 --no-pin \\
        --shardmq-bin target/debug/shardmq --bench-bin target/debug/shardmq-bench \\
        --results target/bench-acl           # a quick check that it works (not a measurement)

Run it on a quiet machine: the harness warns (and the file records) when other processes
took CPU during a window.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
USERS, LINES_PER_USER, PATTERNS = 10_000, 5, 100


def write_acl(path: Path) -> int:
    """The ACL of perf/notes/2026-12-07-acl.md; returns its rule count."""
    lines = ["topic readwrite #"]
    for i in range(USERS):
        lines += [f"user user{i}", f"topic readwrite home/user{i}/#",
                  f"topic read sensors/{i % 100}/+", f"topic write cmd/user{i}",
                  f"topic deny home/user{i}/secret/#", f"topic read shared/{i % 7}/#"]
    lines += [f"pattern readwrite devices/%c/p{i}/#" for i in range(PATTERNS)]
    path.write_text("\n".join(lines) + "\n")
    return 1 + USERS * LINES_PER_USER + PATTERNS


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            sys.exit(f"the broker exited:\n{log.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                sys.exit("the broker did not listen within 60 s")
            time.sleep(0.05)


def one_run(args, acl: Path | None, tmp: Path, index: int) -> dict:
    port = free_port()
    pin = [] if args.no_pin else ["taskset", "-c", str(args.broker_cpu)]
    broker = [*pin, str(args.shardmq_bin), "--listen", f"127.0.0.1:{port}", "--shards", "1",
              "--no-pin", "--in-memory"]
    if acl:
        broker += ["--acl-file", str(acl)]
    log = tmp / f"broker-{index}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(broker, stdout=out, stderr=out, stdin=subprocess.DEVNULL)
    try:
        wait_listening(port, proc, log)
        out_json = tmp / f"run-{index}.json"
        bench = [str(args.bench_bin), "fanout", "--subscribers", str(args.subscribers),
                 "--duration-secs", str(args.duration_secs), "--warmup-secs",
                 str(args.warmup_secs), "--broker-addr", f"127.0.0.1:{port}", "--broker-pid",
                 str(proc.pid), "--quiet", "--json", str(out_json)]
        bench += ["--no-pin"] if args.no_pin else ["--harness-cpus", str(args.harness_cpu)]
        done = subprocess.run(bench, capture_output=True, text=True)
        sys.stderr.write(done.stdout + done.stderr)
        if done.returncode != 0:
            sys.exit(f"shardmq-bench failed ({done.returncode})")
        r = json.loads(out_json.read_text())["scenarios"][0]["results"][0]
    finally:
        proc.terminate()
        proc.wait(30)
    keep = ["broker_cpu_us_per_msg", "delivered_per_sec", "sent", "broker_cpu_percent",
            "other_cpu_percent", "broker_wait_percent", "harness_wait_percent", "error"]
    run = {"acl": acl is not None, "broker_command": " ".join(broker)}
    run.update({k: r.get(k) for k in keep})
    run["lost"] = r["integrity"]["lost"]
    run["rss_kib_loaded"] = r.get("broker_rss_kib_loaded")
    return run


def git(*a: str) -> str:
    return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=3, help="runs with and without, alternating")
    p.add_argument("--subscribers", type=int, default=1000)
    p.add_argument("--duration-secs", type=float, default=5.0)
    p.add_argument("--warmup-secs", type=float, default=1.0)
    p.add_argument("--broker-cpu", type=int, default=1)
    p.add_argument("--harness-cpu", type=int, default=0)
    p.add_argument("--no-pin", action="store_true")
    p.add_argument("--shardmq-bin", type=Path)
    p.add_argument("--bench-bin", type=Path)
    p.add_argument("--results", type=Path, default=ROOT / "perf" / "results",
                   help="directory of the results file")
    args = p.parse_args()
    if args.pairs < 1:
        sys.exit("--pairs: at least 1")
    if args.shardmq_bin is None or args.bench_bin is None:
        subprocess.run(["cargo", "build", "--release", "-q", "-p", "shardmq-engine", "-p",
                        "shardmq-bench"], cwd=ROOT, check=True)
        args.shardmq_bin = args.shardmq_bin or ROOT / "target" / "release" / "shardmq"
        args.bench_bin = args.bench_bin or ROOT / "target" / "release" / "shardmq-bench"
    with tempfile.TemporaryDirectory(prefix="shardmq-bench-acl-") as t:
        tmp = Path(t)
        acl = tmp / "acl.txt"
        rules = write_acl(acl)
        runs = []
        for i in range(args.pairs * 2):
            with_acl = i % 2 == 0
            print(f"run {i + 1}/{args.pairs * 2}: {'with' if with_acl else 'without'} ACL",
                  file=sys.stderr)
            runs.append(one_run(args, acl if with_acl else None, tmp, i))
    median = {}
    for side, flag in (("with_acl", True), ("without_acl", False)):
        xs = [r["broker_cpu_us_per_msg"] for r in runs if r["acl"] == flag]
        median[side] = statistics.median(xs)
    ratio = median["with_acl"] / median["without_acl"] if median["without_acl"] else None
    clean = all(r["lost"] == 0 and not r["error"] for r in runs)
    contended = max((r["other_cpu_percent"] or 0) for r in runs)
    commit = git("rev-parse", "--short", "HEAD")
    out = {
        "command": " ".join([sys.argv[0], *sys.argv[1:]]),
        "git_commit": git("rev-parse", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host_cpus": os.cpu_count(),
        "scenario": f"fanout 1->{args.subscribers} qos0 64B max-rate, 1 shard",
        "acl_rules": rules,
        "duration_secs": args.duration_secs,
        "runs": runs,
        "median_broker_cpu_us_per_msg": median,
        "ratio_with_over_without": ratio,
        "target_ratio_max": 1.1,
        "every_run_clean": clean,
        "other_cpu_percent_max": contended,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    day = datetime.date.today().isoformat()
    path = args.results / f"{day}-{commit}-acl.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"broker µs per delivered message, median: with ACL {median['with_acl']:.3f}, "
          f"without {median['without_acl']:.3f}; ratio {ratio:.2f} (target ≤ 1.1)"
          f"{'' if clean else '; NOT CLEAN: a run lost messages or failed'}"
          f"{'; other processes used up to %.0f%% of a core' % contended if contended > 20 else ''}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
