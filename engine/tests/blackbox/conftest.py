"""Fixtures: a fresh broker per test (shardmq or Mosquitto, chosen by $BROKER), client factories.

    BROKER=shardmq   (default) runs $SHARDMQ_BIN (default: <repo>/target/release/shardmq)
                     --listen 127.0.0.1:0 --shards 2 --no-pin --sys-interval-secs 1 [args]
                     and reads the port from its `listening on 127.0.0.1:PORT` line.
    BROKER=mosquitto runs Mosquitto (Debian package) with a temporary configuration on a free port.

A test asks for broker options with `@pytest.mark.broker_args("--keepalive-max-secs", "5")`
(shardmq flags). Under Mosquitto each flag is translated to its configuration key; a flag
Mosquitto has no equivalent for skips the test there.
"""

from __future__ import annotations

import os
import resource
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import NamedTuple

import pytest

import mqttraw
from util import BROKER, PahoClient, sanitize, uid

REPO_ROOT = Path(__file__).resolve().parents[3]
START_TIMEOUT_SECS = 20.0

# shardmq flag -> Mosquitto configuration key (None: Mosquitto cannot be configured for it).
MOSQUITTO_KEYS = {
    "--keepalive-max-secs": "max_keepalive",
    "--max-packet-size": "max_packet_size",
    "--sys-interval-secs": "sys_interval",
    "--connect-timeout-secs": None,
    "--password-file": "password_file",
    "--acl-file": "acl_file",
    "--allow-anonymous": "allow_anonymous",
}

# The fan-out test opens ~1,000 sockets in this process and the broker inherits the limit.
_soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if _soft != resource.RLIM_INFINITY and (_hard == resource.RLIM_INFINITY or _soft < _hard):
    _want = 16384 if _hard == resource.RLIM_INFINITY else min(_hard, 16384)
    if _want > _soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (_want, _hard))


def _die_with_parent() -> None:
    """Runs in the child before exec: SIGKILL the broker if pytest itself dies (Linux)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
    except Exception:
        pass


class BrokerAddr(NamedTuple):
    host: str
    port: int


def pytest_configure(config):
    if BROKER not in ("shardmq", "mosquitto"):
        raise pytest.UsageError(f"BROKER must be 'shardmq' or 'mosquitto', not {BROKER!r}")


def pytest_report_header(config):
    if BROKER == "mosquitto":
        return f"broker under test: mosquitto ({shutil.which('mosquitto') or '/usr/sbin/mosquitto'})"
    return f"broker under test: shardmq ({_shardmq_bin()})"


def _shardmq_bin() -> str:
    return os.environ.get("SHARDMQ_BIN") or str(REPO_ROOT / "target" / "release" / "shardmq")


def _mosquitto_bin() -> str:
    found = shutil.which("mosquitto")
    if found:
        return found
    if os.path.exists("/usr/sbin/mosquitto"):
        return "/usr/sbin/mosquitto"
    pytest.fail("mosquitto not found: run scripts/install-test-deps.sh", pytrace=False)


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return "<no stderr>"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


class _Running:
    def __init__(self, proc: subprocess.Popen, stderr_path: Path, addr: BrokerAddr):
        self.proc, self.stderr_path, self.addr = proc, stderr_path, addr


def _start_shardmq(extra: list[str], workdir: Path) -> _Running:
    binary = _shardmq_bin()
    if not os.access(binary, os.X_OK):
        pytest.fail(f"shardmq binary not found at {binary}: build it with "
                    "`cargo build --release -p shardmq-engine`, set SHARDMQ_BIN, "
                    "or run against Mosquitto with BROKER=mosquitto", pytrace=False)
    cmd = [binary, "--listen", "127.0.0.1:0", "--shards", "2", "--no-pin"]
    if "--sys-interval-secs" not in extra:
        cmd += ["--sys-interval-secs", "1"]
    cmd += extra
    stderr_path = workdir / "stderr.log"
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL,
                                cwd=workdir, preexec_fn=_die_with_parent)
    found: list = []
    ready = threading.Event()

    def drain():
        # Read the `listening on` line, then keep draining stdout so the broker never blocks.
        for line in proc.stdout:
            text = line.decode(errors="replace").strip()
            if not found and text.startswith("listening on "):
                found.append(text[len("listening on "):])
                ready.set()
        ready.set()

    threading.Thread(target=drain, daemon=True).start()
    if not ready.wait(START_TIMEOUT_SECS) or not found:
        proc.kill()
        proc.wait()
        pytest.fail(f"shardmq did not print 'listening on 127.0.0.1:PORT' within "
                    f"{START_TIMEOUT_SECS} s (exit status {proc.returncode}); command: "
                    f"{' '.join(cmd)}\nstderr:\n{_tail(stderr_path)}", pytrace=False)
    host, _, port = found[0].rpartition(":")
    return _Running(proc, stderr_path, BrokerAddr(host, int(port)))


def _start_mosquitto(extra: list[str], workdir: Path) -> _Running:
    settings = {"sys_interval": "1"}
    it = iter(extra)
    for flag in it:
        key = MOSQUITTO_KEYS.get(flag, "unknown")
        if key is None:
            pytest.skip(f"Mosquitto cannot be configured for {flag}")
        if key == "unknown":
            pytest.fail(f"no Mosquitto equivalent known for broker argument {flag}")
        settings[key] = next(it)
    last_err = ""
    for _attempt in range(3):
        port = _free_port()
        conf = workdir / "mosquitto.conf"
        lines = [
            f"listener {port} 127.0.0.1",
            "allow_anonymous true",
            "persistence false",
            "set_tcp_nodelay true",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
        ] + [f"{k} {v}" for k, v in settings.items()]
        conf.write_text("\n".join(lines) + "\n")
        stderr_path = workdir / "stderr.log"
        with open(stderr_path, "wb") as err:
            proc = subprocess.Popen([_mosquitto_bin(), "-c", str(conf)], stdout=err, stderr=err,
                                    stdin=subprocess.DEVNULL, cwd=workdir,
                                    preexec_fn=_die_with_parent)
        deadline = time.monotonic() + START_TIMEOUT_SECS
        while time.monotonic() < deadline and proc.poll() is None:
            if _accepts(port):
                return _Running(proc, stderr_path, BrokerAddr("127.0.0.1", port))
            time.sleep(0.05)
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        last_err = _tail(stderr_path)
        if "in use" not in last_err:
            break
    pytest.fail(f"mosquitto did not accept connections within {START_TIMEOUT_SECS} s\n"
                f"stderr:\n{last_err}", pytrace=False)


# The broker process of each running test, by address (for `broker_pid`).
_RUNNING: dict[BrokerAddr, _Running] = {}


@pytest.fixture
def broker(request, tmp_path_factory):
    """A broker process for this test only; yields (host, port); killed at teardown.
    Teardown also fails the test if the broker died during it (a crash is a bug)."""
    extra: list[str] = []
    for mark in request.node.iter_markers("broker_args"):
        extra += [str(a) for a in mark.args]
    workdir = tmp_path_factory.mktemp("broker")
    running = (_start_mosquitto if BROKER == "mosquitto" else _start_shardmq)(extra, workdir)
    _RUNNING[running.addr] = running
    try:
        yield running.addr
    finally:
        _RUNNING.pop(running.addr, None)
        died = running.proc.poll()
        if died is None:
            running.proc.terminate()
            try:
                running.proc.wait(5)
            except subprocess.TimeoutExpired:
                running.proc.kill()
                running.proc.wait()
    if died is not None:
        pytest.fail(f"{BROKER} exited during the test with status {died}\n"
                    f"stderr:\n{_tail(running.stderr_path)}", pytrace=False)


@pytest.fixture
def broker_pid(broker) -> int:
    """The process id of this test's broker (to read /proc/PID/status)."""
    return _RUNNING[broker].proc.pid


@pytest.fixture
def topic(request) -> str:
    """A topic prefix unique to this test run (no wildcard or $ characters)."""
    return f"t/{sanitize(request.node.name)[:60]}/{uid()}"


@pytest.fixture
def paho(broker):
    """Factory: paho(version=4, connect=True, **PahoClient kwargs) -> connected PahoClient."""
    made: list[PahoClient] = []

    def make(version: int = 4, connect: bool = True, **kw) -> PahoClient:
        c = PahoClient(broker, version=version, **kw)
        made.append(c)
        if connect:
            c.connect()
        return c

    yield make
    for c in made:
        c.stop()


@pytest.fixture
def raw(broker):
    """Factory: raw(version=4) -> mqttraw.RawClient (TCP connected, nothing sent yet)."""
    made: list[mqttraw.RawClient] = []

    def make(version: int = 4, timeout: float = 5.0) -> mqttraw.RawClient:
        c = mqttraw.RawClient(broker.host, broker.port, version=version, timeout=timeout)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()
