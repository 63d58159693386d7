#!/usr/bin/env bash
# The project's single test command (README; `.ci/run` calls exactly this). From any cwd:
#   1. install what the tests need when missing (scripts/install-test-deps.sh)
#   2. cargo fmt --check            3. cargo clippy -D warnings
#   4. cargo build --release -p shardmq-engine (target/release/shardmq, used by the black-box tests)
#   5. every Rust test (cargo nextest when installed, plus doc tests; else cargo test)
#   6. the black-box suite engine/tests/blackbox (pytest) against the release binary.
# Set BROKER=mosquitto to run step 6 against Mosquitto instead (for validating the suite).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$(pwd)"

section() { printf '\n==== %s ====\n' "$*"; }
start_all=$SECONDS

section "1/6 install test dependencies"
scripts/install-test-deps.sh

section "2/6 cargo fmt --check"
cargo fmt --all -- --check

section "3/6 cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

section "4/6 cargo build --release -p shardmq-engine"
cargo build --release -p shardmq-engine

section "5/6 Rust tests"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace
    cargo test --workspace --doc
else
    cargo test --workspace
fi
# Benchmarks cannot rot: every criterion benchmark also runs once as a smoke test.
cargo test -p shardmq-perf --benches

section "non-root smoke test (8 MiB memlock, unprivileged user)"
scripts/nonroot-smoke.sh

section "6/6 black-box tests (engine/tests/blackbox, broker: ${BROKER:-shardmq})"
export SHARDMQ_BIN="${SHARDMQ_BIN:-$ROOT/target/release/shardmq}"
python3 -m pytest -q engine/tests/blackbox

section "all tests passed in $((SECONDS - start_all)) s"
