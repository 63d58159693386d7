#!/usr/bin/env bash
# The standard end-to-end benchmark: shardmq side by side with Mosquitto and rumqttd, each
# started by the harness, pinned to the same CPU (broker on CPU 1, load on CPU 0).
#
#   standard:   fan-out 1 → {100, 1000, 5000} QoS 0 64 B at max rate (closed loop)
#               fan-out 1 → 100 and 1 → 1000 flood (open loop, unthrottled: delivered msg/s,
#                 loss per subscriber, peak broker RSS)
#               fan-out 1 → 1000 at 3,000 msg/s (latency), at 20 msg/s (CPU per delivery),
#                 QoS 1 at 5 msg/s; 1 → 15,000 at 1 msg/s (memory per subscribed connection)
#               fan-in 100 → 1 QoS 0   p2p 10 pairs QoS 1, QoS 2 at max rate and at
#               1,000 msg/s (latency)   shared 1 → group of 10   15,000 idle connections
#               (memory right after connecting and after 5 s idle)   10,000 retained, then #
#               (shardmq with its default durability, sync)
#             Every row runs BENCH_REPEAT times (default 3) per broker, brokers taking turns;
#             the tables give medians and spreads (min–max), and ratios only between the
#             medians of brokers whose every run lost, duplicated and reordered nothing. The
#             compact results go to perf/results/<date>-<commit>.json (commit that file:
#             README's headline table is generated from it with
#             `target/release/shardmq-bench table perf/results/<file>`).
#   durability: p2p 10 pairs QoS 1 and QoS 2 with shardmq --durability sync, batch:10 and none
#               beside Mosquitto with `persistence true` (which only snapshots every
#               autosave_interval, 30 min, and at exit: not durable per message)
#   restart:    1,000,000 QoS 1 messages of 64 B in an offline persistent session, then
#               shardmq killed with SIGKILL (Mosquitto stopped with SIGTERM, its only way to
#               save), restarted on the same data: time to CONNACK and to the last message
#
# About 30 minutes on the 2-core machine (after the release build); `--only ...` or
# BENCH_SECTIONS=standard with `--duration-secs 2 --warmup-secs 0.5` for less. Output in target/bench/:
# the tables (.txt), the JSON results (.json, one per section) and the fan-out plot (.svg).
# Brokers' data directories go under target/bench-tmp (not /tmp, which may be tmpfs).
#
# Environment: BENCH_BROKERS (default shardmq,mosquitto,rumqttd), BENCH_OUT (default
# target/bench), BENCH_SECTIONS (default standard,durability,restart), BENCH_REPEAT (default 3),
# BENCH_RESULTS (default perf/results; empty: do not save), BENCH_DURABILITY_SECS
# (each durability window, default 3), BENCH_RESTART_MESSAGES (default 1000000). Extra arguments go to the standard section's `shardmq-bench compare`,
# e.g. --duration-secs 3, --only fanout,conn, --only '1->1000 qos0 64B flood'.
set -euo pipefail
cd "$(dirname "$0")/.."

brokers="${BENCH_BROKERS:-shardmq,mosquitto,rumqttd}"
sections="${BENCH_SECTIONS:-standard,durability,restart}"
out="${BENCH_OUT:-target/bench}"
mkdir -p "$out"
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
bench=target/release/shardmq-bench

case ",$brokers," in
    *,mosquitto,* | *,rumqttd,*) scripts/install-peers.sh ;;
esac
cargo build --release -q -p shardmq-engine -p shardmq-bench

has() { case ",$1," in *,"$2",*) return 0 ;; *) return 1 ;; esac; }

# The persistent variants of the selected brokers (rumqttd keeps everything in memory).
durable=""
if has "$brokers" shardmq; then durable="shardmq@sync,shardmq@batch,shardmq@none"; fi
if has "$brokers" mosquitto; then durable="${durable:+$durable,}mosquitto@persist"; fi
restartable=""
if has "$brokers" shardmq; then restartable="shardmq@sync"; fi
if has "$brokers" mosquitto; then restartable="${restartable:+$restartable,}mosquitto@persist"; fi

status=0
txt="$out/bench-$stamp.txt"
: >"$txt"
if has "$sections" standard; then
    results="${BENCH_RESULTS-perf/results}"
    "$bench" compare --matrix standard --brokers "$brokers" --repeat "${BENCH_REPEAT:-3}" \
        ${results:+--save-results "$results"} \
        --json "$out/bench-$stamp.json" --svg "$out/fanout-$stamp.svg" "$@" \
        | tee -a "$txt" || status=$?
fi
if has "$sections" durability && [ -n "$durable" ]; then
    "$bench" compare --matrix durability --brokers "$durable" --repeat "${BENCH_REPEAT:-3}" \
        --duration-secs "${BENCH_DURABILITY_SECS:-3}" \
        --json "$out/durability-$stamp.json" | tee -a "$txt" || status=$?
fi
if has "$sections" restart && [ -n "$restartable" ]; then
    "$bench" restart --messages "${BENCH_RESTART_MESSAGES:-1000000}" --brokers "$restartable" \
        --timeout-secs 150 --json "$out/restart-$stamp.json" | tee -a "$txt" || status=$?
fi
echo "bench: results in $out/{bench,durability,restart}-$stamp.json, $txt and $out/fanout-$stamp.svg" >&2
exit "$status"
