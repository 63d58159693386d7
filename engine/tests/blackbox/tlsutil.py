"""TLS and WebSocket test helpers: a throw-away PKI made with the `openssl` command line, a broker
(shardmq or Mosquitto) with plain, mqtts, ws and wss listeners, and clients for each transport.

Nothing secret is committed: every certificate and key is made in the test's temporary
directory. The PKI uses `openssl ca` (with its small database), because that is what can make
an already-expired certificate and a CRL; README.md shows the same commands."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import NamedTuple

import pytest

from conftest import START_TIMEOUT_SECS, _die_with_parent, _free_port, _mosquitto_bin, \
    _shardmq_bin, _tail
from util import BROKER, WAIT, PahoClient, uid

CA_NAME = "/CN=shardmq test CA"


def _run(*cmd, cwd: Path) -> None:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, timeout=60)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))}: {r.stderr.decode(errors='replace')}"


class Pki:
    """A CA in `dir` (ca.pem, ca.key, ca.cnf, its database) that issues server and client
    certificates, revokes them and writes a CRL."""

    def __init__(self, dir: Path, name: str = "ca", subject: str = CA_NAME):
        self.dir = dir / name
        self.dir.mkdir(parents=True)
        (self.dir / "newcerts").mkdir()
        (self.dir / "index.txt").write_text("")
        (self.dir / "serial").write_text(f"{int.from_bytes(os.urandom(7), 'big') | 1:016x}\n")
        (self.dir / "crlnumber").write_text("01\n")
        (self.dir / "ca.cnf").write_text(f"""
[ ca ]
default_ca = testca
[ testca ]
dir = {self.dir}
database = $dir/index.txt
new_certs_dir = $dir/newcerts
certificate = $dir/ca.pem
private_key = $dir/ca.key
serial = $dir/serial
crlnumber = $dir/crlnumber
default_md = sha256
default_days = 2
default_crl_days = 2
policy = policy_any
unique_subject = no
[ policy_any ]
commonName = supplied
[ client_ext ]
basicConstraints = CA:FALSE
keyUsage = digitalSignature
extendedKeyUsage = clientAuth
[ server_ext ]
basicConstraints = CA:FALSE
keyUsage = digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
""")
        _run("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", subject,
             cwd=self.dir)
        self.ca = self.dir / "ca.pem"

    def issue(self, cn: str, *, server: bool = False, expired: bool = False) -> tuple[Path, Path]:
        """A certificate and key for `cn` (PEM paths). `expired`: valid only in 2020."""
        stem = uid(f"{cn}-")
        key, csr, pem = (self.dir / f"{stem}.{ext}" for ext in ("key", "csr", "pem"))
        _run("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", key, "-out", csr, "-subj", f"/CN={cn}", cwd=self.dir)
        cmd = ["openssl", "ca", "-batch", "-config", "ca.cnf", "-notext", "-in", csr, "-out", pem,
               "-extensions", "server_ext" if server else "client_ext"]
        if expired:
            cmd += ["-startdate", "20200101000000Z", "-enddate", "20200102000000Z"]
        _run(*cmd, cwd=self.dir)
        return pem, key

    def revoke(self, pem: Path) -> None:
        _run("openssl", "ca", "-config", "ca.cnf", "-revoke", pem, cwd=self.dir)

    def crl(self) -> Path:
        out = self.dir / "crl.pem"
        _run("openssl", "ca", "-config", "ca.cnf", "-gencrl", "-out", out, cwd=self.dir)
        return out


class Addr(NamedTuple):
    host: str
    port: int


class Broker:
    """A broker with one listener per transport: .tcp, .tls, .ws, .wss (Addr each)."""

    def __init__(self, proc, stderr: Path, addrs: dict):
        self.proc, self.stderr = proc, stderr
        self.tcp, self.tls, self.ws, self.wss = (addrs[k] for k in ("tcp", "tls", "ws", "wss"))

    def log(self) -> str:
        return _tail(self.stderr, 20000)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_shardmq(workdir: Path, server: tuple[Path, Path], *, client_ca: Path | None = None,
                  client_auth: str | None = None, crl: Path | None = None,
                  identity: bool = False, extra: list[str] = ()) -> Broker:
    cert, key = server
    cmd = [_shardmq_bin(), "--shards", "2", "--no-pin", "--sys-interval-secs", "1",
           "--listen", "127.0.0.1:0", "--listen", "mqtts://127.0.0.1:0",
           "--listen", "ws://127.0.0.1:0/mqtt", "--listen", "wss://127.0.0.1:0/mqtt",
           "--tls-cert", str(cert), "--tls-key", str(key)]
    if client_ca:
        cmd += ["--tls-client-ca", str(client_ca)]
    if client_auth:
        cmd += ["--tls-client-auth", client_auth]
    if crl:
        cmd += ["--tls-crl", str(crl)]
    if identity:
        cmd += ["--tls-identity-as-username"]
    cmd += list(extra)
    stderr = workdir / "stderr.log"
    with open(stderr, "wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL,
                                cwd=workdir, preexec_fn=_die_with_parent)
    lines: list[str] = []
    done = threading.Event()

    def drain():
        for line in proc.stdout:
            text = line.decode(errors="replace").strip()
            if text.startswith("listening on "):
                lines.append(text[len("listening on "):])
                if len(lines) == 4:
                    done.set()
        done.set()

    threading.Thread(target=drain, daemon=True).start()
    if not done.wait(START_TIMEOUT_SECS) or len(lines) < 4:
        proc.kill()
        proc.wait()
        pytest.fail(f"shardmq did not start: {' '.join(cmd)}\n{_tail(stderr)}", pytrace=False)
    addrs = {}
    for line, kind in zip(lines, ("tcp", "tls", "ws", "wss")):
        hostport = line.split("://", 1)[-1].split("/", 1)[0]
        host, _, port = hostport.rpartition(":")
        addrs[kind] = Addr(host, int(port))
    return Broker(proc, stderr, addrs)


def start_mosquitto(workdir: Path, server: tuple[Path, Path], *, client_ca: Path | None = None,
                    client_auth: str | None = None, crl: Path | None = None,
                    identity: bool = False, extra: list[str] = ()) -> Broker:
    """Mosquitto with the same listeners. Mosquitto has no "optional" client certificates
    (peers.md): `client_auth="optional"` cannot be configured."""
    if client_auth == "optional":
        pytest.skip("Mosquitto has no optional client certificates")
    if extra:
        pytest.skip(f"no Mosquitto equivalent for {extra}")
    cert, key = server
    ports = {k: _free_port() for k in ("tcp", "tls", "ws", "wss")}
    tls_lines = [f"certfile {cert}", f"keyfile {key}"]
    if client_ca:
        tls_lines.append(f"cafile {client_ca}")
    required = client_auth == "required" or (client_ca is not None and client_auth is None)
    tls_lines.append(f"require_certificate {'true' if required else 'false'}")
    if crl:
        tls_lines.append(f"crlfile {crl}")
    if identity:
        tls_lines.append("use_identity_as_username true")
    conf = [
        "user root", "persistence false", "allow_anonymous true", "log_dest stderr",
        "log_type error", "log_type warning", "log_type notice", "sys_interval 1",
        f"listener {ports['tcp']} 127.0.0.1",
        f"listener {ports['tls']} 127.0.0.1", *tls_lines,
        f"listener {ports['ws']} 127.0.0.1", "protocol websockets",
        f"listener {ports['wss']} 127.0.0.1", "protocol websockets",
        f"certfile {cert}", f"keyfile {key}",
    ]
    path = workdir / "mosquitto.conf"
    path.write_text("\n".join(conf) + "\n")
    stderr = workdir / "stderr.log"
    with open(stderr, "wb") as err:
        proc = subprocess.Popen([_mosquitto_bin(), "-c", str(path)], stdout=err, stderr=err,
                                stdin=subprocess.DEVNULL, cwd=workdir, preexec_fn=_die_with_parent)
    deadline = time.monotonic() + START_TIMEOUT_SECS
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            for p in ports.values():
                socket.create_connection(("127.0.0.1", p), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    else:
        proc.kill()
        proc.wait()
        pytest.fail(f"mosquitto did not start\n{_tail(stderr)}", pytrace=False)
    return Broker(proc, stderr, {k: Addr("127.0.0.1", p) for k, p in ports.items()})


def start(workdir: Path, server: tuple[Path, Path], **kw) -> Broker:
    return (start_mosquitto if BROKER == "mosquitto" else start_shardmq)(workdir, server, **kw)


def paho(addr: Addr, *, transport: str = "tcp", ca: Path | None = None,
         cert: tuple[Path, Path] | None = None, version: int = 4, connect: bool = True,
         **kw) -> PahoClient:
    """A PahoClient over `transport` ("tcp", "tls", "ws" or "wss")."""
    ws = "websockets" if transport in ("ws", "wss") else "tcp"
    c = PahoClient(tuple(addr), version=version, transport=ws, **kw)
    if transport in ("tls", "wss"):
        kwargs = {"ca_certs": str(ca)} if ca else {}
        if cert:
            kwargs.update(certfile=str(cert[0]), keyfile=str(cert[1]))
        c.client.tls_set(**kwargs)
    if connect:
        c.connect()
    return c


def sys_value(addr: Addr, topic: str) -> int:
    """The current value of a `$SYS` counter (shardmq publishes them retained every second)."""
    c = PahoClient(tuple(addr))
    try:
        c.connect()
        c.subscribe(topic)
        return int(c.get().payload)
    finally:
        c.stop()


def wait_sys_at_least(addr: Addr, topic: str, least: int) -> int:
    """Waits until the `$SYS` counter reaches `least` (a marker, not a sleep)."""
    c = PahoClient(tuple(addr))
    try:
        c.connect()
        c.subscribe(topic)
        deadline = time.monotonic() + 3 * WAIT
        value = -1
        while time.monotonic() < deadline:
            value = int(c.get(timeout=3 * WAIT).payload)
            if value >= least:
                return value
        raise AssertionError(f"{topic} stayed at {value}, expected at least {least}")
    finally:
        c.stop()


def tls_handshake_refused(addr: Addr, ca: Path, cert: tuple[Path, Path] | None) -> str:
    """Connects with TLS (client certificate `cert`, if any) and sends CONNECT; returns why the
    connection failed ("" if a CONNACK came back: not refused)."""
    ctx = ssl.create_default_context(cafile=str(ca))
    if cert:
        ctx.load_cert_chain(str(cert[0]), str(cert[1]))
    raw = socket.create_connection(tuple(addr), timeout=WAIT)
    try:
        s = ctx.wrap_socket(raw, server_hostname="localhost")
        # TLS 1.3: the server checks the client certificate after the client's handshake
        # is done, so a refusal shows on the first read.
        s.sendall(b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00")
        got = s.recv(4)
        if got[:1] == b"\x20":
            return ""
        return f"closed ({got!r})"
    except (ssl.SSLError, ConnectionError, OSError) as e:
        return f"{type(e).__name__}: {e}"
    finally:
        raw.close()
