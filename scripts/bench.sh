#!/usr/bin/env bash
# The standard end-to-end benchmark: shardmq side by side with Mosquitto and rumqttd, each
# started by the harness, pinned to the same CPU (broker on CPU 1, load on CPU 0).
#
#   fan-out 1 → {100, 1000, 5000} QoS 0 64 B   fan-in 100 → 1 QoS 0   p2p 10 pairs QoS 1, QoS 2
#   shared 1 → group of 10                       15,000 connections    10,000 retained, then #
#
# About 5 minutes on the 2-core machine (after the release build). Output in target/bench/:
# the tables (.txt), the JSON results (.json) and the fan-out plot (.svg).
#
# Environment: BENCH_BROKERS (default shardmq,mosquitto,rumqttd), BENCH_OUT (default
# target/bench). Extra arguments go to `shardmq-bench compare`, e.g. --duration-secs 3,
# --only fanout,conn, --shardmq-durability none.
set -euo pipefail
cd "$(dirname "$0")/.."

brokers="${BENCH_BROKERS:-shardmq,mosquitto,rumqttd}"
out="${BENCH_OUT:-target/bench}"
mkdir -p "$out"
stamp="$(date -u +%Y%m%dT%H%M%SZ)"

case ",$brokers," in
    *,mosquitto,* | *,rumqttd,*) scripts/install-peers.sh ;;
esac
cargo build --release -q -p shardmq-engine -p shardmq-bench

status=0
target/release/shardmq-bench compare --matrix standard --brokers "$brokers" \
    --json "$out/bench-$stamp.json" --svg "$out/fanout-$stamp.svg" "$@" \
    | tee "$out/bench-$stamp.txt" || status=$?
echo "bench: results in $out/bench-$stamp.{txt,json} and $out/fanout-$stamp.svg" >&2
exit "$status"
