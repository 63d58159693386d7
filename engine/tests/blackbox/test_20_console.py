"""The web console (`GET /` on the HTTP listener) in headless Chromium (Debian's `chromium`
package, driven by puppeteer-core: browser/console.js). The page loads; its charts move while
a client publishes; a client homed on the other shard is kicked from the clients table and
really disconnects; subscriptions are listed; a retained message is read and deleted; the
publish form reaches a paho subscriber. Screenshots of each view go to
target/console-screens/ for review. shardmq only (Mosquitto has no console)."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from test_19_http import _start
from util import BROKER, WAIT, PahoClient, id_on_shard, uid

pytestmark = pytest.mark.skipif(BROKER != "shardmq", reason="shardmq's own console")

HERE = Path(__file__).resolve().parent
DRIVER = HERE / "browser" / "console.js"
SHOTS = HERE.parents[2] / "target" / "console-screens"


def _browser_ready() -> str | None:
    if not Path("/usr/bin/chromium").exists() and not shutil.which("chromium"):
        return "Debian's chromium is not installed (scripts/install-test-deps.sh installs it)"
    if not (HERE / "browser" / "node_modules" / "puppeteer-core").exists():
        return "puppeteer-core is not installed (scripts/install-test-deps.sh: npm ci)"
    return None


@pytest.mark.parametrize("with_token", [False, True])
def test_console_in_a_browser(tmp_path, with_token):
    missing = _browser_ready()
    if missing:
        pytest.fail(missing)  # the suite installs both: a missing browser is a setup bug
    extra: list[str] = []
    token = None
    if with_token:
        token = "console-" + uid()
        tf = tmp_path / "token"
        tf.write_text(token + "\n")
        extra = ["--http-token-file", str(tf)]
    running = _start(tmp_path, extra)
    clients: list[PahoClient] = []

    def client(**kw) -> PahoClient:
        c = PahoClient(running.mqtt, **kw)
        c.connect()
        clients.append(c)
        return c

    stop = threading.Event()
    try:
        topic = f"console/{uid()}"
        # A subscriber and a publisher on different shards keep the rate chart moving.
        sub = client(client_id=id_on_shard("csub-", 0))
        sub.subscribe(f"{topic}/#", 0)
        pub = client(client_id=id_on_shard("cpub-", 1))

        def publish_steadily():
            while not stop.wait(0.02):
                pub.client.publish(f"{topic}/tick", b"x", 0)

        threading.Thread(target=publish_steadily, daemon=True).start()
        victim = client(client_id=id_on_shard("kick-me-", 1), version=5)
        retained_topic = f"{topic}/ret/a"
        pub.publish(retained_topic, b"hello-retained", 1, retain=True)
        hostile = f"{topic}/ret/<img src=x onerror=window.__xss=1>"
        pub.publish(hostile, b"<script>window.__xss=1</script>", 1, retain=True)
        out = client(client_id=id_on_shard("cout-", 0))
        out.subscribe("console-pub/#", 1)

        shots = SHOTS / ("with-token" if with_token else "loopback")
        shots.mkdir(parents=True, exist_ok=True)
        scenario = {
            "token": token,
            "kick": victim.client_id,
            "filter": f"{topic}/#",
            "retained": retained_topic,
            "retained_prefix": f"{topic}/ret/",
            "hostile": hostile,
            "retained_payload": "hello-retained",
            "publish_topic": "console-pub/x",
            "publish_payload": "from-the-browser",
        }
        proc = subprocess.run(
            ["node", str(DRIVER), running.http + "/", str(shots), json.dumps(scenario)],
            cwd=HERE / "browser", capture_output=True, text=True, timeout=120)
        steps = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
        assert proc.returncode == 0, f"browser steps: {steps}\nstderr: {proc.stderr[-2000:]}"
        assert steps[-1] == {"step": "done"}, steps
        assert any(s["step"] == "hostile_topic_is_text" for s in steps), steps
        overview = next(s for s in steps if s["step"] == "overview")
        assert overview["rate_max"] > 1 and overview["connections_max"] >= 2, overview

        # What the page did really happened:
        assert victim.disconnected.wait(WAIT), "the kicked client is still connected"
        assert victim.disconnect_info and victim.disconnect_info[0] == 0x98, victim.disconnect_info
        got = out.get()
        assert (got.topic, got.payload) == ("console-pub/x", b"from-the-browser")
        status, _, _ = running.request("GET", "/api/v1/retained/" + retained_topic, token=token)
        assert status == 404, "the retained message was not deleted"
        for view in ["overview", "clients", "subscriptions", "retained", "publish"]:
            assert (shots / f"{view}.png").stat().st_size > 1000
    finally:
        stop.set()
        for c in clients:
            c.stop()
        running.proc.terminate()
        running.proc.wait(10)


def test_console_page_loads_nothing_from_elsewhere(tmp_path):
    """The page is self-contained: no external URL, and a Content-Security-Policy that
    forbids loading from anywhere but the broker."""
    running = _start(tmp_path, [])
    try:
        status, headers, body = running.request("GET", "/")
        assert status == 200 and headers["Content-Type"].startswith("text/html")
        assert "default-src 'none'" in headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
        assert headers["X-Frame-Options"] == "DENY"
        page = body.decode()
        assert "<canvas" in page and "/api/v1/stats" in page
        for external in ["http://", "https://", "//cdn", "src=\"//"]:
            assert external not in page.replace("http://www.w3.org", ""), external
    finally:
        running.proc.terminate()
        running.proc.wait(10)
