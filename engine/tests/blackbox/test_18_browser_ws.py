"""A real browser: MQTT.js (its browser bundle) in headless Chromium connects over ws:// and
wss://, subscribes, publishes, and the page reports what it received. The test CA is trusted
by the browser profile (an NSS database in a temporary $HOME, made with certutil), not by a
flag that turns certificate checks off.

Needs Debian's chromium and libnss3-tools, node, and `npm ci` in browser/ and js/
(scripts/install-test-deps.sh does all of it); without them the test skips, saying why. Also
runs with BROKER=mosquitto (its WebSocket listeners speak the same protocol)."""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

import tlsutil
from tlsutil import Pki
from util import BROKER, uid

HERE = Path(__file__).resolve().parent
BUNDLE = HERE / "js" / "node_modules" / "mqtt" / "dist" / "mqtt.min.js"
DRIVER = HERE / "browser" / "websocket.js"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def _why_skip() -> str | None:
    if not shutil.which("node"):
        return "node not found (scripts/install-test-deps.sh)"
    if not Path(CHROMIUM).exists():
        return "chromium not installed (scripts/install-test-deps.sh)"
    if not shutil.which("certutil"):
        return "certutil (libnss3-tools) not installed (scripts/install-test-deps.sh)"
    if not BUNDLE.is_file():
        return f"MQTT.js not installed in {BUNDLE.parents[2]} (npm ci)"
    if not (HERE / "browser" / "node_modules" / "puppeteer-core").is_dir():
        return "puppeteer-core not installed in browser/ (npm ci)"
    return None


pytestmark = pytest.mark.skipif(_why_skip() is not None, reason=_why_skip() or "")


def test_mqttjs_in_chromium_over_ws_and_wss(tmp_path):
    pki = Pki(tmp_path)
    # The browser profile's trust store: the test CA, trusted for servers.
    home = tmp_path / "home"
    nssdb = home / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    subprocess.run(["certutil", "-d", f"sql:{nssdb}", "-N", "--empty-password"], check=True,
                   capture_output=True, timeout=30)
    subprocess.run(["certutil", "-d", f"sql:{nssdb}", "-A", "-t", "C,,", "-n", "shardmq test CA",
                    "-i", str(pki.ca)], check=True, capture_output=True, timeout=30)
    # The page, served from 127.0.0.1 (a page there may open sockets to loopback).
    site = tmp_path / "site"
    site.mkdir()
    shutil.copy(BUNDLE, site / "mqtt.min.js")
    (site / "index.html").write_text('<!doctype html><script src="mqtt.min.js"></script>')
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    handler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    page = f"http://127.0.0.1:{httpd.server_address[1]}/index.html"
    b = tlsutil.start(tmp_path, pki.issue("localhost", server=True))
    try:
        topic = f"browser/{uid()}"
        ws = f"ws://127.0.0.1:{b.ws.port}/mqtt"
        wss = f"wss://127.0.0.1:{b.wss.port}/mqtt"
        r = subprocess.run(["node", str(DRIVER), page, ws, wss, topic],
                           capture_output=True, text=True, timeout=90, cwd=HERE / "browser",
                           env={"HOME": str(home), "PATH": "/usr/bin:/bin", "CHROMIUM": CHROMIUM})
        lines = [line for line in r.stdout.splitlines() if line.startswith("{")]
        assert lines, f"no output: {r.stdout}\n{r.stderr}"
        out = json.loads(lines[-1])
        assert "error" not in out, f"{out['error']}\n{b.log()}"
        assert out["received"] == ["from ws", "from wss"], out
        if BROKER == "shardmq":
            assert out["protocols"] == ["mqtt", "mqtt"], out
    finally:
        httpd.shutdown()
        died = b.proc.poll()
        b.stop()
        assert died is None, b.log()
