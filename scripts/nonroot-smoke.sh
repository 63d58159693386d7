#!/usr/bin/env bash
# Runs the broker as an unprivileged user, the way most people will run it: with the
# locked-memory limit of a normal user (8 MiB here; glommio registers io_memory with
# io_uring, which counts against it), two shards, no pinning. Checks that it starts, serves
# pub/sub across both shards, refuses clearly when RLIMIT_MEMLOCK is too low, and exits 0 on
# SIGTERM.
#
# Needs root (to create the user and su to it). Uses target/release/shardmq unless
# SHARDMQ_BIN is set; installs mosquitto-clients with apt when missing.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${SHARDMQ_BIN:-$ROOT/target/release/shardmq}
TEST_USER=${SHARDMQ_TEST_USER:-shardtest}
MEMLOCK_KIB=${SHARDMQ_TEST_MEMLOCK_KIB:-8192}

fail() { echo "nonroot-smoke: FAIL: $*" >&2; exit 1; }
say() { echo "nonroot-smoke: $*"; }

[ "$(id -u)" = 0 ] || fail "must run as root (creates user $TEST_USER and runs the broker as it)"
[ -x "$BIN" ] || fail "no broker binary at $BIN (cargo build --release -p shardmq-engine)"
if ! command -v mosquitto_sub >/dev/null || ! command -v mosquitto_pub >/dev/null; then
    say "installing mosquitto-clients"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto-clients >/dev/null
fi
id -u "$TEST_USER" >/dev/null 2>&1 || useradd -m "$TEST_USER"

WORK=$(mktemp -d /tmp/shardmq-nonroot.XXXXXX)
BROKER_PID=""
cleanup() {
    if [ -n "$BROKER_PID" ] && kill -0 "$BROKER_PID" 2>/dev/null; then
        kill -KILL "$BROKER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
cp "$BIN" "$WORK/shardmq"
chmod 755 "$WORK" "$WORK/shardmq"
chown "$TEST_USER" "$WORK"

# Runs a command as the test user with the locked-memory limit of a normal user.
as_user() {
    su "$TEST_USER" -s /bin/bash -c "ulimit -l $MEMLOCK_KIB 2>/dev/null || true; $1"
}

say "memlock limit as $TEST_USER: $(as_user 'ulimit -l') KiB"

# 1. Too little locked memory: a clear one-line error naming the fix, non-zero exit.
set +e
as_user "ulimit -l 64; exec $WORK/shardmq --listen 127.0.0.1:0 --shards 2 --no-pin" \
    >"$WORK/low.out" 2>"$WORK/low.err"
rc=$?
set -e
[ "$rc" != 0 ] || fail "started with a 64 KiB memlock limit"
grep -q "ulimit -l" "$WORK/low.err" || fail "memlock error does not name the fix: $(cat "$WORK/low.err")"
say "low memlock refused: $(head -n1 "$WORK/low.err")"

# 2. A normal start (persistent: the user's data directory, direct IO where the file system
# allows it).
as_user "echo \$\$ > $WORK/pid; exec $WORK/shardmq --listen 127.0.0.1:0 --shards 2 --no-pin --data-dir $WORK/data" \
    >"$WORK/out" 2>"$WORK/err" &
for _ in $(seq 1 100); do
    grep -q "^listening on " "$WORK/out" 2>/dev/null && break
    sleep 0.1
done
grep -q "^listening on " "$WORK/out" || fail "no 'listening on' line; stderr: $(cat "$WORK/err")"
BROKER_PID=$(cat "$WORK/pid")
PORT=$(sed -n 's/^listening on 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$WORK/out" | head -n1)
say "broker pid $BROKER_PID listening on port $PORT"

# 3. Pub/sub across shards: smoke-sub-0 is homed on shard 0, smoke-sub-1 on shard 1, and the
# publishers the other way round (FNV-1a of the client id modulo 2).
for s in 0 1; do
    mosquitto_sub -p "$PORT" -i "smoke-sub-$s" -t 'smoke/#' -q 1 -C 2 -W 20 >"$WORK/sub$s" 2>&1 &
done
sleep 1
mosquitto_pub -p "$PORT" -i smoke-pub-0 -t smoke/a -q 1 -m one
mosquitto_pub -p "$PORT" -i smoke-pub-1 -t smoke/b -q 1 -m two
wait %2 %3 2>/dev/null || true
for s in 0 1; do
    [ "$(cat "$WORK/sub$s")" = "$(printf 'one\ntwo')" ] \
        || fail "subscriber $s got: $(cat "$WORK/sub$s")"
done
say "pub/sub across both shards works"

# 4. Graceful shutdown.
kill -TERM "$BROKER_PID"
for _ in $(seq 1 100); do
    kill -0 "$BROKER_PID" 2>/dev/null || break
    sleep 0.1
done
kill -0 "$BROKER_PID" 2>/dev/null && fail "broker still running 10 s after SIGTERM"
wait %1 || fail "broker exited with status $? after SIGTERM"
BROKER_PID=""
if grep -qi "panic" "$WORK/err"; then fail "stderr mentions a panic: $(cat "$WORK/err")"; fi
say "OK"
