"""Mosquitto's own command-line clients (mosquitto_pub / mosquitto_sub, Debian package
mosquitto-clients) against the broker: MQTT 3.1, 3.1.1 and 5.0, QoS 0/1/2, retained, line
mode, persistent sessions, 5.0 user properties, wills, $SYS; and mixed with paho.

Every subprocess is bounded: mosquitto_sub by -C (message count) and -W (seconds), and every
wait by a Python timeout that kills the process."""

from __future__ import annotations

import shutil
import signal
import subprocess
import threading
import time

import pytest

from util import BROKER, VERSION_IDS, uid

pytestmark = pytest.mark.skipif(
    not (shutil.which("mosquitto_sub") and shutil.which("mosquitto_pub")),
    reason="mosquitto-clients not installed (scripts/install-test-deps.sh)")

VERSIONS = {3: "mqttv31", 4: "mqttv311", 5: "mqttv5"}
ALL = pytest.mark.parametrize("version", [3, 4, 5], ids=VERSION_IDS.get)
FORMAT = "MSG|%t|%q|%r|%l|%p"
PROC_TIMEOUT_SECS = 30
STDBUF = ["stdbuf", "-oL"] if shutil.which("stdbuf") else []


class MosqSub:
    """A running mosquitto_sub, with debug output (to see the SUBACK) and one parseable line
    per message: MSG|topic|qos|retain|length|payload."""

    def __init__(self, broker, topics, *, version=4, qos=1, count=None, wait_secs=20,
                 extra=(), fmt=FORMAT):
        # stdbuf: line-buffered stdout, so the debug "Subscribed" line is seen at once.
        cmd = STDBUF + ["mosquitto_sub", "-h", broker.host, "-p", str(broker.port), "-V",
               VERSIONS[version], "-q", str(qos), "-d", "-F", fmt, "-W", str(wait_secs)]
        for t in topics:
            cmd += ["-t", t]
        if count is not None:
            cmd += ["-C", str(count)]
        cmd += list(extra)
        self.cmd = cmd
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        self.lines: list[str] = []
        self.cond = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for raw in self.proc.stdout:
            with self.cond:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self.cond.notify_all()

    def _wait_line(self, pred, timeout: float) -> None:
        with self.cond:
            ok = self.cond.wait_for(lambda: any(pred(x) for x in self.lines), timeout)
        if not ok:
            self.kill()
            raise AssertionError(f"{' '.join(self.cmd)}: timed out; output:\n"
                                 + "\n".join(self.lines[-30:]))

    def wait_subscribed(self, timeout: float = 15) -> "MosqSub":
        self._wait_line(lambda x: x.startswith("Subscribed (mid"), timeout)
        return self

    def messages(self) -> list[tuple]:
        """(topic, qos, retain, payload) for each message received so far."""
        out = []
        with self.cond:
            for line in self.lines:
                if line.startswith("MSG|"):
                    _, t, q, r, n, p = line.split("|", 5)
                    assert len(p.encode()) == int(n), line
                    out.append((t, int(q), int(r), p))
        return out

    def wait_exit(self, timeout: float = PROC_TIMEOUT_SECS) -> int:
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{' '.join(self.cmd)} did not exit within {timeout} s; "
                                 "output:\n" + "\n".join(self.lines[-30:])) from None
        time.sleep(0.05)  # let the reader thread take the last lines
        return rc

    def kill(self, sig=signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)


@pytest.fixture
def mosq_sub(broker):
    made: list[MosqSub] = []

    def make(topics, **kw) -> MosqSub:
        s = MosqSub(broker, [topics] if isinstance(topics, str) else topics, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.kill()


@pytest.fixture
def mosq_pub(broker):
    def run(topic, message=None, *, version=4, qos=0, retain=False, null=False, lines=None,
            stdin=None, extra=()):
        cmd = ["mosquitto_pub", "-h", broker.host, "-p", str(broker.port), "-V",
               VERSIONS[version], "-q", str(qos), "-t", topic]
        data = None
        if retain:
            cmd.append("-r")
        if null:
            cmd.append("-n")
        elif lines is not None:
            cmd.append("-l")
            data = "".join(f"{x}\n" for x in lines).encode()
        elif stdin is not None:
            cmd.append("-s")
            data = stdin
        else:
            cmd += ["-m", message]
        cmd += list(extra)
        res = subprocess.run(cmd, input=data, capture_output=True, timeout=PROC_TIMEOUT_SECS)
        assert res.returncode == 0, f"{' '.join(cmd)}: rc {res.returncode}\n{res.stderr!r}"

    return run


@ALL
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_pub_sub(mosq_sub, mosq_pub, topic, version, qos):
    s = mosq_sub(f"{topic}/x", version=version, qos=2, count=1).wait_subscribed()
    mosq_pub(f"{topic}/x", f"hello qos {qos}", version=version, qos=qos)
    assert s.wait_exit() == 0
    assert s.messages() == [(f"{topic}/x", qos, 0, f"hello qos {qos}")]


@pytest.mark.parametrize("pub_version,sub_version", [(3, 5), (5, 3), (4, 5), (5, 4)],
                         ids=lambda v: VERSION_IDS[v])
def test_cross_version(mosq_sub, mosq_pub, topic, pub_version, sub_version):
    s = mosq_sub(f"{topic}/#", version=sub_version, qos=1, count=1).wait_subscribed()
    mosq_pub(f"{topic}/a/b", "across versions", version=pub_version, qos=1)
    assert s.wait_exit() == 0
    assert s.messages() == [(f"{topic}/a/b", 1, 0, "across versions")]


@pytest.mark.parametrize("version", [4, 5], ids=VERSION_IDS.get)
def test_qos_downgrade(mosq_sub, mosq_pub, topic, version):
    s = mosq_sub(f"{topic}/x", version=version, qos=0, count=1).wait_subscribed()
    mosq_pub(f"{topic}/x", "downgraded", version=version, qos=2)
    assert s.wait_exit() == 0
    assert s.messages() == [(f"{topic}/x", 0, 0, "downgraded")]


@pytest.mark.parametrize("version", [4, 5], ids=VERSION_IDS.get)
def test_retained_set_replace_clear(mosq_sub, mosq_pub, topic, version):
    t = f"{topic}/status"
    mosq_pub(t, "first", version=version, qos=1, retain=True)
    mosq_pub(t, "second", version=version, qos=1, retain=True)
    s = mosq_sub(t, version=version, count=1)
    assert s.wait_exit() == 0
    assert s.messages() == [(t, 1, 1, "second")]
    mosq_pub(t, version=version, qos=1, retain=True, null=True)
    s = mosq_sub(t, version=version, count=1, wait_secs=2)
    assert s.wait_exit() == 27  # -W expired: nothing retained any more
    assert s.messages() == []


def test_retained_wildcard(mosq_sub, mosq_pub, topic):
    for name in ("a", "b", "c/d"):
        mosq_pub(f"{topic}/{name}", name, qos=1, retain=True)
    s = mosq_sub(f"{topic}/#", count=3)
    assert s.wait_exit() == 0
    assert sorted(s.messages()) == [(f"{topic}/a", 1, 1, "a"), (f"{topic}/b", 1, 1, "b"),
                                    (f"{topic}/c/d", 1, 1, "c/d")]


@pytest.mark.parametrize("version", [4, 5], ids=VERSION_IDS.get)
def test_line_mode_in_order(mosq_sub, mosq_pub, topic, version):
    """mosquitto_pub -l sends one message per stdin line over one connection: in order."""
    n = 200
    s = mosq_sub(f"{topic}/lines", version=version, qos=1, count=n).wait_subscribed()
    mosq_pub(f"{topic}/lines", version=version, qos=1, lines=[f"line {i}" for i in range(n)])
    assert s.wait_exit() == 0
    assert [p for _, _, _, p in s.messages()] == [f"line {i}" for i in range(n)]


def test_large_payload_from_stdin(mosq_sub, mosq_pub, topic):
    payload = ("0123456789abcdef" * 8192).encode()  # 128 KiB
    s = mosq_sub(f"{topic}/big", qos=1, count=1).wait_subscribed()
    mosq_pub(f"{topic}/big", qos=1, stdin=payload)
    assert s.wait_exit() == 0
    [(_, _, _, got)] = s.messages()
    assert got.encode() == payload


@pytest.mark.parametrize("version", [4, 5], ids=VERSION_IDS.get)
def test_persistent_session(mosq_sub, mosq_pub, topic, version):
    """mosquitto_sub -c: subscribe and leave (-E), messages published meanwhile at QoS 1 are
    delivered, in order, when the same client id comes back."""
    cid = uid("msub-")
    t = f"{topic}/offline"
    first = mosq_sub(t, version=version, qos=1, extra=["-c", "-i", cid, "-E"])
    assert first.wait_exit() == 0
    for i in range(10):
        mosq_pub(t, f"queued {i}", version=version, qos=1)
    again = mosq_sub(t, version=version, qos=1, count=10, extra=["-c", "-i", cid])
    assert again.wait_exit() == 0
    assert [p for _, _, _, p in again.messages()] == [f"queued {i}" for i in range(10)]


def test_v5_user_properties(mosq_sub, mosq_pub, topic):
    """User properties (in order) and content type reach a 5.0 subscriber unchanged."""
    s = mosq_sub(f"{topic}/props", version=5, count=1, fmt="MSG|%t|%P|%C|%p").wait_subscribed()
    mosq_pub(f"{topic}/props", "with properties", version=5, qos=1,
             extra=["-D", "publish", "user-property", "k1", "v1",
                    "-D", "publish", "user-property", "k2", "v2",
                    "-D", "publish", "content-type", "text/plain"])
    assert s.wait_exit() == 0
    assert [x for x in s.lines if x.startswith("MSG|")] == [
        f"MSG|{topic}/props|k1:v1 k2:v2|text/plain|with properties"]


@pytest.mark.parametrize("version", [4, 5], ids=VERSION_IDS.get)
def test_will_of_killed_client(mosq_sub, topic, version):
    """A mosquitto_sub killed with SIGKILL never sends DISCONNECT: its will is published."""
    watcher = mosq_sub(f"{topic}/will", version=version, qos=1, count=1).wait_subscribed()
    victim = mosq_sub(f"{topic}/ignored", version=version,
                      extra=["--will-topic", f"{topic}/will", "--will-payload", "killed",
                             "--will-qos", "1"]).wait_subscribed()
    victim.kill(signal.SIGKILL)
    assert watcher.wait_exit() == 0
    assert watcher.messages() == [(f"{topic}/will", 1, 0, "killed")]


def test_mosquitto_sub_graceful_exit_sends_no_will(mosq_sub, mosq_pub, topic):
    """mosquitto_sub -C 1 exits with DISCONNECT after its message: no will."""
    watcher = mosq_sub([f"{topic}/will", f"{topic}/marker"], qos=1, count=1).wait_subscribed()
    polite = mosq_sub(f"{topic}/ignored", count=1,
                      extra=["--will-topic", f"{topic}/will", "--will-payload", "no"])
    polite.wait_subscribed()
    mosq_pub(f"{topic}/ignored", "bye", qos=1)  # polite exits after 1 message, DISCONNECT
    assert polite.wait_exit() == 0
    mosq_pub(f"{topic}/marker", "marker", qos=1)
    assert watcher.wait_exit() == 0
    assert watcher.messages() == [(f"{topic}/marker", 1, 0, "marker")]


def test_sys_version(mosq_sub):
    s = mosq_sub("$SYS/broker/version", qos=0, count=1, wait_secs=15)
    assert s.wait_exit() == 0
    [(_, _, _, version)] = s.messages()
    assert BROKER in version.lower()


@pytest.mark.parametrize("version", [4, 5], ids=VERSION_IDS.get)
def test_paho_to_mosquitto_sub(mosq_sub, paho, topic, version):
    s = mosq_sub(f"{topic}/mixed", version=version, qos=2, count=3).wait_subscribed()
    p = paho(version)
    for q in (0, 1, 2):
        p.publish(f"{topic}/mixed", f"paho {q}".encode(), q)
    assert s.wait_exit() == 0
    assert s.messages() == [(f"{topic}/mixed", q, 0, f"paho {q}") for q in (0, 1, 2)]


@pytest.mark.parametrize("version", [4, 5], ids=VERSION_IDS.get)
def test_mosquitto_pub_to_paho(mosq_pub, paho, topic, version):
    c = paho(version)
    c.subscribe(f"{topic}/mixed", 2)
    for q in (0, 1, 2):
        mosq_pub(f"{topic}/mixed", f"mosquitto_pub {q}", version=version, qos=q)
    got = [(m.payload.decode(), m.qos) for m in c.get_n(3)]
    assert got == [(f"mosquitto_pub {q}", q) for q in (0, 1, 2)]


def test_v5_empty_client_id_assigned(mosq_sub, mosq_pub, topic):
    """mosquitto_sub in 5.0 connects with an empty client id and uses the Assigned Client
    Identifier the broker returns (it prints it in its debug output)."""
    s = mosq_sub(f"{topic}/x", version=5, count=1).wait_subscribed()
    mosq_pub(f"{topic}/x", "assigned", version=5, qos=1)
    assert s.wait_exit() == 0
    assert s.messages() == [(f"{topic}/x", 1, 0, "assigned")]
    connack = [x for x in s.lines if "received CONNACK" in x]
    assert connack and "(null)" not in connack[0], s.lines
