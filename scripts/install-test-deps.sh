#!/usr/bin/env bash
# Installs what the tests need that cargo does not fetch, idempotently (only what is missing):
#   - Debian: mosquitto (the reference broker the black-box suite is validated against) and
#     mosquitto-clients (mosquitto_pub / mosquitto_sub, driven by engine/tests/blackbox);
#   - PyPI: paho-mqtt 2.x, pytest, pytest-timeout (for python3, whichever python3 is first on PATH);
#   - Node: Debian's nodejs and npm when `node` / `npm` are missing, then MQTT.js at the version
#     pinned in engine/tests/blackbox/js/package-lock.json (`npm ci`, only when the lock changed);
#   - Debian's chromium and libnss3-tools, and puppeteer-core (npm ci in
#     engine/tests/blackbox/browser) for the browser WebSocket test;
#   - rustup components rustfmt and clippy.
# The mosquitto package may start a system service on port 1883; the tests never use that port
# (every broker they start listens on a free port), so it is stopped when we can but never matters.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
log() { echo "install-test-deps: $*" >&2; }

# --- Debian packages --------------------------------------------------------------------------
missing_debs=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || missing_debs+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 && command -v mosquitto_sub >/dev/null 2>&1 \
    || missing_debs+=(mosquitto-clients)
if [ "${#missing_debs[@]}" -gt 0 ]; then
    log "installing ${missing_debs[*]} (apt)"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${missing_debs[@]}" >/dev/null
    if [[ " ${missing_debs[*]} " == *" mosquitto "* ]]; then
        # The package's service (port 1883) is not used by any test; stop it if it started.
        if command -v systemctl >/dev/null 2>&1; then
            $SUDO systemctl disable --now mosquitto >/dev/null 2>&1 || true
        fi
        if command -v service >/dev/null 2>&1; then
            $SUDO service mosquitto stop >/dev/null 2>&1 || true
        fi
    fi
else
    log "mosquitto and mosquitto-clients already installed"
fi

# --- Python packages --------------------------------------------------------------------------
PY="${PYTHON:-python3}"
pip_specs=()
# Silent probe: exit status 1 (no traceback) when paho-mqtt is missing or not 2.x.
"$PY" - >/dev/null 2>&1 <<'EOF' || pip_specs+=("paho-mqtt>=2,<3")
import importlib.metadata as m, sys
try:
    major = m.version("paho-mqtt").split(".")[0]
except m.PackageNotFoundError:
    sys.exit(1)
sys.exit(0 if major == "2" else 1)
EOF
"$PY" -c 'import pytest' >/dev/null 2>&1 || pip_specs+=("pytest")
"$PY" -c 'import pytest_timeout' >/dev/null 2>&1 || pip_specs+=("pytest-timeout")
"$PY" -c 'import prometheus_client' >/dev/null 2>&1 || pip_specs+=("prometheus-client")
if [ "${#pip_specs[@]}" -gt 0 ]; then
    log "installing ${pip_specs[*]} (pip)"
    if ! "$PY" -m pip --version >/dev/null 2>&1; then
        export DEBIAN_FRONTEND=noninteractive
        $SUDO apt-get update -qq
        $SUDO apt-get install -y -qq --no-install-recommends python3-pip >/dev/null
    fi
    pip_flags=(--quiet --disable-pip-version-check --root-user-action=ignore)
    # A Debian system python is "externally managed" (PEP 668): pip refuses without this flag.
    # A pyenv / venv python is not, and older pips do not know the flag: add it only when needed.
    if "$PY" -c 'import sys, sysconfig, os
sys.exit(0 if sys.prefix == sys.base_prefix and os.path.exists(os.path.join(sysconfig.get_paths()["stdlib"], "EXTERNALLY-MANAGED")) else 1)'; then
        pip_flags+=(--break-system-packages)
    fi
    "$PY" -m pip install "${pip_flags[@]}" "${pip_specs[@]}"
else
    log "paho-mqtt 2.x, pytest and pytest-timeout already installed"
fi

# --- Node and MQTT.js (engine/tests/blackbox/test_15_mqttjs_auth.py) --------------------------------
node_debs=()
command -v node >/dev/null 2>&1 || node_debs+=(nodejs)
command -v npm >/dev/null 2>&1 || node_debs+=(npm)
if [ "${#node_debs[@]}" -gt 0 ]; then
    log "installing ${node_debs[*]} (apt)"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${node_debs[@]}" >/dev/null
fi
JS_DIR=engine/tests/blackbox/js
# npm ci wipes and reinstalls node_modules: only when the lock differs from the installed one.
if ! cmp -s "$JS_DIR/package-lock.json" "$JS_DIR/node_modules/.installed-package-lock.json"; then
    log "installing MQTT.js (npm ci in $JS_DIR)"
    (cd "$JS_DIR" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error)
    cp "$JS_DIR/package-lock.json" "$JS_DIR/node_modules/.installed-package-lock.json"
else
    log "MQTT.js already installed ($JS_DIR/node_modules)"
fi

# --- A browser for the WebSocket test (engine/tests/blackbox/test_18_browser_ws.py) ----------------
# Debian's chromium (puppeteer-core drives it; nothing downloads a browser of its own) and
# certutil (libnss3-tools), which puts the test CA in the browser profile's trust store.
browser_debs=()
command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || browser_debs+=(chromium)
command -v certutil >/dev/null 2>&1 || browser_debs+=(libnss3-tools)
if [ "${#browser_debs[@]}" -gt 0 ]; then
    log "installing ${browser_debs[*]} (apt)"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${browser_debs[@]}" >/dev/null
fi
BROWSER_DIR=engine/tests/blackbox/browser
if [ -f "$BROWSER_DIR/package-lock.json" ] \
    && ! cmp -s "$BROWSER_DIR/package-lock.json" "$BROWSER_DIR/node_modules/.installed-package-lock.json"; then
    log "installing puppeteer-core (npm ci in $BROWSER_DIR)"
    (cd "$BROWSER_DIR" && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error)
    cp "$BROWSER_DIR/package-lock.json" "$BROWSER_DIR/node_modules/.installed-package-lock.json"
fi

# --- Rust components --------------------------------------------------------------------------
if command -v rustup >/dev/null 2>&1; then
    for comp in rustfmt clippy; do
        if ! rustup component list --installed 2>/dev/null | grep -q "^$comp"; then
            log "installing rustup component $comp"
            rustup component add "$comp"
        fi
    done
fi
log "done"
