"""TLS listeners (mqtts://): mosquitto_pub/mosquitto_sub and paho over TLS, the client
certificate matrix (expired, other CA, a fake CA with the same name, revoked by the CRL,
missing when required), identity as user name, ALPN, garbage and stalled handshakes.

Runs against Mosquitto too (BROKER=mosquitto) where Mosquitto has the feature; the tests that
are shardmq-only say why (peers.md: Mosquitto has no optional client certificates, selects no
ALPN protocol, and has no $SYS counters for handshakes)."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess

import pytest

import tlsutil
from tlsutil import Pki
from util import BROKER, WAIT, is_mosquitto, uid

pytestmark = pytest.mark.skipif(
    not (shutil.which("openssl") and shutil.which("mosquitto_pub")),
    reason="openssl or mosquitto-clients missing (scripts/install-test-deps.sh)")

shardmq_only = pytest.mark.skipif(is_mosquitto(), reason="shardmq-only (see the module doc)")


@pytest.fixture
def pki(tmp_path):
    return Pki(tmp_path)


@pytest.fixture
def running(tmp_path):
    """Starts a broker (tlsutil.start) and stops it at teardown, failing the test if it died."""
    made = []

    def make(server, **kw):
        b = tlsutil.start(tmp_path, server, **kw)
        made.append(b)
        return b

    yield make
    for b in made:
        died = b.proc.poll()
        b.stop()
        assert died is None, f"{BROKER} died during the test\n{b.log()}"


def mosq(tool: str, addr, ca, *args, cert=None, timeout: float = WAIT) -> subprocess.CompletedProcess:
    cmd = [tool, "-h", "localhost", "-p", str(addr.port), "--cafile", str(ca)]
    if cert:
        cmd += ["--cert", str(cert[0]), "--key", str(cert[1])]
    return subprocess.run(cmd + list(args), capture_output=True, timeout=timeout + 5)


def test_mosquitto_clients_over_tls(pki, running, tmp_path):
    b = running(pki.issue("localhost", server=True))
    topic = f"tls/{uid()}"
    # Line-buffered, so the debug "received SUBACK" line is seen at once.
    stdbuf = ["stdbuf", "-oL"] if shutil.which("stdbuf") else []
    sub = subprocess.Popen(stdbuf + ["mosquitto_sub", "-h", "localhost", "-p", str(b.tls.port), "--cafile",
                            str(pki.ca), "-t", topic, "-C", "1", "-W", str(int(WAIT)), "-d"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        # Publish until the subscriber has subscribed (its SUBACK shows in its debug output).
        lines = []
        for line in sub.stdout:
            lines.append(line.decode(errors="replace"))
            if "received SUBACK" in lines[-1]:
                break
        r = mosq("mosquitto_pub", b.tls, pki.ca, "-t", topic, "-m", "over tls", "-q", "1")
        assert r.returncode == 0, r.stderr
        out, _ = sub.communicate(timeout=WAIT + 5)
        assert "over tls" in out.decode(), lines + [out.decode()]
    finally:
        sub.kill()
    # The same client without the CA cannot verify the server.
    r = subprocess.run(["mosquitto_pub", "-h", "localhost", "-p", str(b.tls.port), "--capath",
                        str(tmp_path), "-t", topic, "-m", "x"], capture_output=True, timeout=WAIT)
    assert r.returncode != 0


def test_paho_tls_and_plain_tcp_meet(pki, running):
    b = running(pki.issue("localhost", server=True))
    topic = f"tls/{uid()}"
    sub = tlsutil.paho(b.tls, transport="tls", ca=pki.ca, version=5)
    plain = tlsutil.paho(b.tcp)
    try:
        sub.subscribe(topic, qos=1)
        plain.publish(topic, b"plain to tls", qos=1)
        assert sub.get().payload == b"plain to tls"
        sub.publish(topic, b"tls to tls", qos=1)
        assert sub.get().payload == b"tls to tls"
    finally:
        sub.stop()
        plain.stop()


def test_client_certificate_matrix(pki, running, tmp_path):
    """Required client certificates: a good one is served; expired, another CA's, a fake CA's
    with the same name, revoked, and none are refused in the handshake. A client connected
    before them keeps working (nobody else is affected)."""
    other = Pki(tmp_path, "other", "/CN=another CA")
    fake = Pki(tmp_path, "fake")  # same subject as the real CA, different key
    good = pki.issue("alice")
    revoked = pki.issue("mallory")
    pki.revoke(revoked[0])
    crl = pki.crl()
    bad = {
        "expired": pki.issue("old", expired=True),
        "other CA": other.issue("alice"),
        "fake same-name CA": fake.issue("alice"),
        "revoked": revoked,
        "none": None,
    }
    b = running(pki.issue("localhost", server=True), client_ca=pki.ca, client_auth="required",
                crl=crl)
    topic = f"mtls/{uid()}"
    watcher = tlsutil.paho(b.tls, transport="tls", ca=pki.ca, cert=good)
    try:
        watcher.subscribe(topic, qos=1)
        for what, cert in bad.items():
            why = tlsutil.tls_handshake_refused(b.tls, pki.ca, cert)
            assert why, f"{what}: the broker accepted the certificate"
            r = mosq("mosquitto_pub", b.tls, pki.ca, "-t", topic, "-m", what, cert=cert)
            assert r.returncode != 0, f"{what}: mosquitto_pub was served"
        assert tlsutil.tls_handshake_refused(b.tls, pki.ca, good) == ""
        r = mosq("mosquitto_pub", b.tls, pki.ca, "-t", topic, "-m", "good", "-q", "1", cert=good)
        assert r.returncode == 0, r.stderr
        # Only the good client's message arrives, on the connection made before the refusals.
        assert watcher.get().payload == b"good"
    finally:
        watcher.stop()
    if not is_mosquitto():
        # One counted refusal per bad handshake (two tries each), and a log line naming why.
        tlsutil.wait_sys_at_least(b.tcp, "$SYS/broker/tls/handshake_failures", 2 * len(bad))
        log = b.log()
        assert "TLS handshake with" in log and "refused" in log, log


@shardmq_only
def test_optional_client_certificates(pki, running, tmp_path):
    """Optional: a client without a certificate is served, one with a bad one is refused."""
    other = Pki(tmp_path, "other", "/CN=another CA")
    b = running(pki.issue("localhost", server=True), client_ca=pki.ca, client_auth="optional")
    assert tlsutil.tls_handshake_refused(b.tls, pki.ca, None) == ""
    assert tlsutil.tls_handshake_refused(b.tls, pki.ca, pki.issue("alice")) == ""
    assert tlsutil.tls_handshake_refused(b.tls, pki.ca, other.issue("alice"))


def test_identity_as_username(pki, running, tmp_path):
    """The certificate's CN is the user name and no password is asked: with a users file and
    anonymous clients refused, a client with a certificate and no credentials is served."""
    extra = []
    if not is_mosquitto():
        users = tmp_path / "users"
        r = subprocess.run([tlsutil._shardmq_bin(), "users", "add", "bob", "--file", str(users)],
                           input=b"secret\n", capture_output=True, timeout=WAIT)
        assert r.returncode == 0, r.stderr
        extra = ["--auth-users-file", str(users), "--allow-anonymous", "false"]
    b = running(pki.issue("localhost", server=True), client_ca=pki.ca, client_auth="required",
                identity=True, extra=extra)
    if not is_mosquitto():
        # Anonymous clients are refused on the plain listener: the setting is in force.
        plain = tlsutil.paho(b.tcp, connect=False)
        try:
            # 3.1.1 return code 5, Not authorized (paho reports it as 0x87).
            assert plain.connect_rc() in (5, 0x87)
        finally:
            plain.stop()
    c = tlsutil.paho(b.tls, transport="tls", ca=pki.ca, cert=pki.issue("device-7"), connect=False)
    try:
        assert c.connect_rc() == 0
    finally:
        c.stop()


@shardmq_only
def test_alpn_mqtt_is_selected(pki, running):
    """ALPN: a client offering "mqtt" gets it (Mosquitto selects none: peers.md)."""
    b = running(pki.issue("localhost", server=True))
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    ctx.set_alpn_protocols(["mqtt"])
    with socket.create_connection(tuple(b.tls), timeout=WAIT) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as s:
            assert s.selected_alpn_protocol() == "mqtt"
            assert s.version() in ("TLSv1.2", "TLSv1.3")
    # TLS 1.1 is not offered.
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.load_verify_locations(str(pki.ca))
    with pytest.warns(DeprecationWarning):
        old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
    with socket.create_connection(tuple(b.tls), timeout=WAIT) as raw:
        with pytest.raises((ssl.SSLError, OSError)):
            old.wrap_socket(raw, server_hostname="localhost")


def test_garbage_and_stalled_handshakes_are_closed(pki, running):
    """Garbage instead of a ClientHello is refused at once; a silent connection is closed
    at the connect timeout; meanwhile other clients are served."""
    extra = [] if is_mosquitto() else ["--connect-timeout-secs", "1"]
    b = running(pki.issue("localhost", server=True), extra=extra)
    stalled = socket.create_connection(tuple(b.tls), timeout=WAIT)
    garbage = socket.create_connection(tuple(b.tls), timeout=WAIT)
    try:
        garbage.sendall(b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00")
        got = b""
        while True:
            try:
                chunk = garbage.recv(4096)
            except ConnectionResetError:  # Mosquitto resets instead of sending an alert
                break
            if not chunk:
                break
            got += chunk
        # At most a TLS alert record (content type 21), then EOF; never a CONNACK.
        assert got == b"" or got[0] == 21, got
        c = tlsutil.paho(b.tls, transport="tls", ca=pki.ca)
        c.stop()
        if not is_mosquitto():
            # Mosquitto keeps a silent TLS connection open (it has no connect timeout).
            assert stalled.recv(1) == b"", "closed at the connect timeout"
    finally:
        stalled.close()
        garbage.close()


def _tls_connects(addr, ca) -> bool:
    try:
        c = tlsutil.paho(addr, transport="tls", ca=ca, connect=False)
        try:
            return c.connect_rc() == 0
        finally:
            c.stop()
    except (ssl.SSLError, OSError):
        return False


@shardmq_only
def test_sighup_reloads_the_certificate_and_keeps_connections(pki, running, tmp_path):
    """SIGHUP: new handshakes use the new certificate (here from another CA), connections
    made before stay; a bad key file on the next reload keeps the certificate in use and
    logs why. (Mosquitto does not reload certificates.)"""
    import signal
    import time

    second = Pki(tmp_path, "second", "/CN=second CA")
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    for src, dst in zip(pki.issue("localhost", server=True), (cert, key)):
        dst.write_bytes(src.read_bytes())
    b = running((cert, key))
    topic = f"reload/{uid()}"
    old = tlsutil.paho(b.tls, transport="tls", ca=pki.ca)
    try:
        old.subscribe(topic, qos=1)
        for src, dst in zip(second.issue("localhost", server=True), (cert, key)):
            dst.write_bytes(src.read_bytes())
        b.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + WAIT
        while not _tls_connects(b.tls, second.ca):
            assert time.monotonic() < deadline, f"the new certificate is not served\n{b.log()}"
        assert not _tls_connects(b.tls, pki.ca), "the old certificate is still served"
        new = tlsutil.paho(b.tls, transport="tls", ca=second.ca)
        try:
            new.publish(topic, b"after reload", qos=1)
            assert old.get().payload == b"after reload", "the old connection stays"
        finally:
            new.stop()
        # A bad key: the reload reports it and the current certificate stays.
        key.write_text("not a key\n")
        b.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + WAIT
        while str(key) not in b.log():
            assert time.monotonic() < deadline, f"no log line about {key}\n{b.log()}"
            time.sleep(0.05)
        assert "old certificate stays in use" in b.log()
        assert _tls_connects(b.tls, second.ca)
    finally:
        old.stop()


@shardmq_only
def test_proxy_protocol_gives_the_client_address(pki, running):
    """`--proxy-protocol`: a PROXY v1 or v2 header comes first and names the client; the
    address shows where the broker reports one (a refused TLS handshake's log line). A
    connection without a header is closed. (Mosquitto 2.0 has no PROXY protocol.)"""
    import struct

    b = running(pki.issue("localhost", server=True), extra=["--proxy-protocol"])
    # v1 in front of TLS: garbage instead of a ClientHello is refused, logged with 10.9.8.7.
    with socket.create_connection(tuple(b.tls), timeout=WAIT) as s:
        s.sendall(b"PROXY TCP4 10.9.8.7 127.0.0.1 4444 8883\r\n" + b"\x10\x00garbage")
        while s.recv(4096):
            pass
    # v2 in front of plain MQTT: the CONNECT behind it is served.
    sig = b"\r\n\r\n\x00\r\nQUIT\n"
    body = bytes([10, 6, 5, 4, 127, 0, 0, 1]) + struct.pack(">HH", 5555, 1883)
    header = sig + bytes([0x21, 0x11]) + struct.pack(">H", len(body)) + body
    with socket.create_connection(tuple(b.tcp), timeout=WAIT) as s:
        s.sendall(header + b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00")
        assert s.recv(4)[:1] == b"\x20", "CONNACK"
    # No header: closed without an answer.
    with socket.create_connection(tuple(b.tcp), timeout=WAIT) as s:
        s.sendall(b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00")
        assert s.recv(4) == b""
    log = b.log()
    assert "TLS handshake with 10.9.8.7:4444 refused" in log, log
    assert "PROXY header from" in log, log


@shardmq_only
def test_handshakes_in_progress_are_bounded_per_shard(pki, running, tmp_path):
    """`[limits] handshakes_per_shard_max`: with 1 per shard and 2 shards, of 4 connections
    that never finish their handshake at least 2 are closed at once (counted in $SYS); a
    client connected before them goes on. (Mosquitto has no such limit.)"""
    conf = tmp_path / "limits.toml"
    conf.write_text("[limits]\nhandshakes_per_shard_max = 1\n")
    b = running(pki.issue("localhost", server=True), extra=["--config", str(conf)])
    topic = f"busy/{uid()}"
    ok = tlsutil.paho(b.tls, transport="tls", ca=pki.ca)
    stalled = [socket.create_connection(tuple(b.tls), timeout=WAIT) for _ in range(4)]
    try:
        tlsutil.wait_sys_at_least(b.tcp, "$SYS/broker/handshakes/refused_busy", 2)
        ok.subscribe(topic, qos=1)
        ok.publish(topic, b"still served", qos=1)
        assert ok.get().payload == b"still served"
    finally:
        ok.stop()
        for s in stalled:
            s.close()
