#!/usr/bin/env bash
# Installs the peer brokers the benchmark compares against, idempotently:
#   - Mosquitto from Debian's packages (apt): /usr/sbin/mosquitto;
#   - rumqttd from crates.io, pinned, built with its published Cargo.lock (--locked), into
#     bench-harness/.peers/bin/rumqttd.
#
# rumqttd 0.20.0's published lock file pins metrics 0.22.1, which current rustc rejects
# (E0521, rust-lang/rust#141402). So the crate's source is copied, exactly that dependency is
# moved to its fixed patch release (0.22.4, same API; it drags ahash and zerocopy patch bumps)
# with `cargo update --precise`, and the copy is installed with --locked.
#
# The system service the Debian package starts is stopped: the harness starts its own
# Mosquitto on a free port with a temporary configuration.
set -euo pipefail
cd "$(dirname "$0")/.."

RUMQTTD_VERSION="0.20.0"
METRICS_FIX_VERSION="0.22.4"
PEERS_ROOT="$(pwd)/bench-harness/.peers"
CARGO_HOME_DIR="${CARGO_HOME:-$HOME/.cargo}"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

if [ ! -x /usr/sbin/mosquitto ] && ! command -v mosquitto >/dev/null 2>&1; then
    echo "install-peers: installing mosquitto (apt)" >&2
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends mosquitto >/dev/null
    if command -v systemctl >/dev/null 2>&1; then
        $SUDO systemctl disable --now mosquitto >/dev/null 2>&1 || true
    fi
    if command -v service >/dev/null 2>&1; then
        $SUDO service mosquitto stop >/dev/null 2>&1 || true
    fi
else
    echo "install-peers: mosquitto already installed" >&2
fi

if [ -x "$PEERS_ROOT/bin/rumqttd" ] && [ -f "$PEERS_ROOT/.crates.toml" ] \
    && grep -q "rumqttd $RUMQTTD_VERSION" "$PEERS_ROOT/.crates.toml"; then
    echo "install-peers: rumqttd $RUMQTTD_VERSION already installed in $PEERS_ROOT" >&2
else
    echo "install-peers: installing rumqttd $RUMQTTD_VERSION (cargo install --locked)" >&2
    src="$(ls -d "$CARGO_HOME_DIR"/registry/src/*/rumqttd-"$RUMQTTD_VERSION" 2>/dev/null | head -n1 || true)"
    if [ -z "$src" ]; then
        # Fetch the crate's source through cargo itself (a throwaway manifest).
        tmp="$(mktemp -d)"
        mkdir -p "$tmp/src" && touch "$tmp/src/lib.rs"
        printf '[package]\nname = "fetch-rumqttd"\nversion = "0.0.0"\nedition = "2021"\n[dependencies]\nrumqttd = "=%s"\n' \
            "$RUMQTTD_VERSION" >"$tmp/Cargo.toml"
        (cd "$tmp" && cargo fetch -q)
        rm -rf "$tmp"
        src="$(ls -d "$CARGO_HOME_DIR"/registry/src/*/rumqttd-"$RUMQTTD_VERSION" | head -n1)"
    fi
    # Build outside this repository: inside it, cargo would take our workspace for its own.
    build="$(mktemp -d)/rumqttd-$RUMQTTD_VERSION"
    cp -r "$src" "$build"
    if grep -q '^version = "0.22.1"' "$build/Cargo.lock"; then
        (cd "$build" && cargo update -q --precise "$METRICS_FIX_VERSION" -p metrics@0.22.1)
    fi
    CARGO_TARGET_DIR="$build/target" cargo install --path "$build" --locked --root "$PEERS_ROOT"
    rm -rf "$(dirname "$build")"
fi

echo "install-peers: mosquitto=$(command -v mosquitto || echo /usr/sbin/mosquitto)" >&2
echo "install-peers: rumqttd=$PEERS_ROOT/bin/rumqttd" >&2
