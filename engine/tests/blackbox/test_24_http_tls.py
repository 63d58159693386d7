"""The HTTP listener over TLS (`--http https://ADDR:PORT`) with a CA made at test time, its
certificate re-read on SIGHUP (a new handshake sees the new one; a bad file keeps the old),
and the bearer token re-read on SIGHUP and `POST /api/v1/reload`. Clients: python's `ssl`
and `urllib`, and curl. shardmq only. Every wait is for a marker or a value, never a sleep."""

from __future__ import annotations

import hashlib
import http.client
import json
import shutil
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from test_19_http import _start
from tlsutil import Pki
from util import BROKER, WAIT, uid

pytestmark = pytest.mark.skipif(BROKER != "shardmq", reason="shardmq's own HTTP API")


def _fingerprint_of_file(pem: Path) -> str:
    return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem.read_text())).hexdigest()


def _served_fingerprint(running, ca: Path) -> str:
    """The SHA-256 of the certificate a new TLS handshake is served (verified against `ca`)."""
    host, port = running.http.removeprefix("https://").rsplit(":", 1)
    ctx = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection((host, int(port)), timeout=WAIT) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.selected_alpn_protocol() in (None, "http/1.1")
            return hashlib.sha256(tls.getpeercert(binary_form=True)).hexdigest()


def _wait_for_log(running, text: str) -> None:
    deadline = time.monotonic() + WAIT
    while text not in running.stderr_path.read_text():
        assert time.monotonic() < deadline, f"no `{text}` in the log"
        time.sleep(0.02)


def _stop(running) -> None:
    running.proc.terminate()
    running.proc.wait(10)


@pytest.fixture
def pki(tmp_path):
    return Pki(tmp_path)


def test_https_serves_with_the_certificate_and_refuses_plain_http(tmp_path, pki):
    cert, key = pki.issue("localhost", server=True)
    running = _start(tmp_path, ["--http-tls-cert", str(cert), "--http-tls-key", str(key)],
                     http="https://127.0.0.1:0")
    try:
        assert running.http.startswith("https://127.0.0.1:")
        running.ssl_context = ssl.create_default_context(cafile=str(pki.ca))
        assert running.request("GET", "/healthz")[:1] == (200,)
        assert running.json("GET", "/api/v1/stats")["shards_unanswered"] == 0
        out = subprocess.run(["curl", "-sS", "--cacert", str(pki.ca), f"{running.http}/metrics"],
                             capture_output=True, text=True, timeout=WAIT)
        assert out.returncode == 0 and "shardmq_messages_sent_total" in out.stdout, out
        # Without the CA the certificate is not trusted.
        out = subprocess.run(["curl", "-sS", f"{running.http}/healthz"],
                             capture_output=True, text=True, timeout=WAIT)
        assert out.returncode == 60, out  # CURLE_PEER_FAILED_VERIFICATION
        # Plain HTTP to the HTTPS port gets no HTTP answer.
        plain = running.http.replace("https://", "http://")
        # (rustls answers a TLS alert, or closes: no status line either way)
        with pytest.raises((urllib.error.URLError, OSError, http.client.HTTPException)) as e:
            urllib.request.urlopen(plain + "/healthz", timeout=WAIT).read()
        assert not isinstance(e.value, urllib.error.HTTPError), e.value
        out = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                              f"{plain}/healthz"], capture_output=True, text=True, timeout=WAIT)
        assert out.returncode != 0 and out.stdout in ("", "000"), out
        # The listener still serves after those (a bad handshake does not stall it).
        assert running.request("GET", "/readyz")[0] == 200
    finally:
        _stop(running)


def test_the_mqtt_listeners_certificate_is_the_default(tmp_path, pki):
    cert, key = pki.issue("localhost", server=True)
    running = _start(tmp_path, ["--tls-cert", str(cert), "--tls-key", str(key)],
                     http="https://127.0.0.1:0")
    try:
        assert _served_fingerprint(running, pki.ca) == _fingerprint_of_file(cert)
    finally:
        _stop(running)


def test_sighup_reloads_the_certificate_for_new_handshakes(tmp_path, pki):
    first, first_key = pki.issue("localhost", server=True)
    second, second_key = pki.issue("localhost", server=True)
    cert, key = tmp_path / "http.pem", tmp_path / "http.key"
    shutil.copy(first, cert)
    shutil.copy(first_key, key)
    running = _start(tmp_path, ["--http-tls-cert", str(cert), "--http-tls-key", str(key)],
                     http="https://127.0.0.1:0")
    try:
        assert _served_fingerprint(running, pki.ca) == _fingerprint_of_file(first)
        shutil.copy(second, cert)
        shutil.copy(second_key, key)
        running.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + WAIT
        while _served_fingerprint(running, pki.ca) != _fingerprint_of_file(second):
            assert time.monotonic() < deadline, "the new certificate was never served"
            time.sleep(0.02)
        # A file that no longer parses keeps the certificate in use, and the log says why.
        cert.write_text("not a certificate\n")
        running.proc.send_signal(signal.SIGHUP)
        _wait_for_log(running, "the certificate in use is kept")
        assert _served_fingerprint(running, pki.ca) == _fingerprint_of_file(second)
        # POST /api/v1/reload says the same.
        running.ssl_context = ssl.create_default_context(cafile=str(pki.ca))
        bad = running.json("POST", "/api/v1/reload", expect=409)
        assert "http_tls" not in bad["reloaded"], bad
        assert any(str(cert) in e and "kept" in e for e in bad["errors"]), bad
        shutil.copy(first, cert)
        shutil.copy(first_key, key)
        good = running.json("POST", "/api/v1/reload")
        assert good["reloaded"] == ["http_tls"], good
        assert _served_fingerprint(running, pki.ca) == _fingerprint_of_file(first)
    finally:
        _stop(running)


def test_the_token_file_is_reloaded_and_a_bad_one_keeps_the_old(tmp_path):
    old, new = f"old-{uid()}-0123456789", f"new-{uid()}-0123456789"
    token_file = tmp_path / "token"
    token_file.write_text(old + "\n")
    running = _start(tmp_path, ["--http-token-file", str(token_file)])
    try:
        assert running.request("GET", "/metrics", token=old)[0] == 200
        token_file.write_text(new + "\n")
        running.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + WAIT
        while running.request("GET", "/metrics", token=new)[0] != 200:
            assert time.monotonic() < deadline, "the new token was never accepted"
            time.sleep(0.02)
        assert running.request("GET", "/metrics", token=old)[0] == 401
        # An empty file keeps the token in use, and the log says why.
        token_file.write_text("\n")
        running.proc.send_signal(signal.SIGHUP)
        _wait_for_log(running, "the token in use is kept")
        assert running.request("GET", "/metrics", token=new)[0] == 200
        assert running.request("GET", "/metrics", token="")[0] == 401
        # Through the API: the reply lists the token file, or says why it was not read.
        running.token = new
        status, _, body = running.request("POST", "/api/v1/reload")
        bad = json.loads(body)
        assert status == 409 and bad["reloaded"] == [], bad
        assert any("token" in e and "empty" in e for e in bad["errors"]), bad
        token_file.write_text(old + "\n")
        good = running.json("POST", "/api/v1/reload")
        assert good["reloaded"] == ["http_token_file"] and good["errors"] == [], good
        assert running.request("GET", "/metrics", token=old)[0] == 200
        assert running.request("GET", "/metrics", token=new)[0] == 401
    finally:
        _stop(running)


def test_check_config_reads_the_http_certificate(tmp_path, pki):
    cert, key = pki.issue("localhost", server=True)
    conf = tmp_path / "c.toml"
    conf.write_text(f'http = "https://127.0.0.1:8443"\nhttp_tls_cert = "{cert}"\n'
                    f'http_tls_key = "{key}"\n')
    from conftest import _shardmq_bin
    out = subprocess.run([_shardmq_bin(), "check-config", str(conf)], capture_output=True,
                         text=True, timeout=WAIT)
    assert out.returncode == 0 and "HTTP on https://127.0.0.1:8443" in out.stdout, out
    conf.write_text(f'http = "https://127.0.0.1:8443"\nhttp_tls_cert = "{key}"\n'
                    f'http_tls_key = "{key}"\n')
    out = subprocess.run([_shardmq_bin(), "check-config", str(conf)], capture_output=True,
                         text=True, timeout=WAIT)
    assert out.returncode != 0 and str(key) in out.stderr, out
