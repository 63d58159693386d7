"""Authorisation with Mosquitto's files: a password file written by Debian's `mosquitto_passwd`
at test time and one ACL file, run against shardmq and against Mosquitto (`BROKER=mosquitto`).

The differential table (`CASES`) lists who (a user of the password file, or anonymous), with
which client id, does what (write: PUBLISH; read: SUBSCRIBE and receive) on which topic, and
whether it is allowed. Both brokers must agree on every case. Where shardmq deliberately
differs, the case says so and each broker's own documented behaviour is asserted:

- SUBACK: Mosquitto grants every SUBSCRIBE and filters at delivery; shardmq refuses a filter
  with no read right at all (5.0 0x87, 3.1.1 0x80; issue #13, MQTT 5.0 §3.9.3) and grants
  one partly readable, filtering at delivery. What is *delivered* is the same.

Negative outcomes are shown with markers, never by waiting: a denied message must not arrive
before a marker its publisher sends after it (one publisher's messages keep their order).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

import mqttraw as m
from util import BROKER, WAIT, PahoClient, uid

pytestmark = pytest.mark.skipif(shutil.which("mosquitto_passwd") is None,
                                reason="mosquitto_passwd missing: scripts/install-test-deps.sh")

# World-readable: Mosquitto started as root drops to user `mosquitto` before reading them.
DIR = Path(tempfile.mkdtemp(prefix="shardmq-acl-"))
DIR.chmod(0o755)
PASSWORD_FILE = DIR / "passwd"
ACL_FILE = DIR / "acl"
USERS = {  # name -> (password, mosquitto_passwd hash option)
    "alice": ("wonderland", []),
    "bob smith": ("s3cret pw", []),
    "carol": ("carolpw", []),
    "dave": ("davepw", ["-H", "sha512"]),  # `$6$`: Mosquitto 1.6 and earlier
}
ACL = """\
# Anonymous clients: the lines before any `user`.
topic read public/#
topic deny public/secret
topic write inbox/anon

# Patterns apply to every client, anonymous ones too.
pattern readwrite devices/%c/#
pattern read users/%u/inbox
pattern write reports/%u/%c
pattern write state/%c-now

user alice
topic readwrite alice/#
topic deny alice/private/#
topic write sensors/+/alice
topic read $SYS/broker/clients/#
topic read shared/+/news

user bob smith
topic read alice/shared
topic readwrite bob/#

user carol
topic readwrite #
topic read $SYS/broker/denied/#

user dave
topic write dave/out
topic read dave/in/#
"""
WITH_FILES = pytest.mark.broker_args("--password-file", str(PASSWORD_FILE),
                                     "--acl-file", str(ACL_FILE), "--allow-anonymous", "true")


@pytest.fixture(scope="module", autouse=True)
def files():
    """The password file (by `mosquitto_passwd`) and the ACL file, before any broker starts."""
    PASSWORD_FILE.unlink(missing_ok=True)
    for i, (name, (password, opts)) in enumerate(USERS.items()):
        create = ["-c"] if i == 0 else []
        subprocess.run(["mosquitto_passwd", *opts, *create, "-b", str(PASSWORD_FILE), name,
                        password], check=True, capture_output=True, timeout=30)
    PASSWORD_FILE.chmod(0o644)
    ACL_FILE.write_text(ACL)
    ACL_FILE.chmod(0o644)
    text = PASSWORD_FILE.read_text()
    assert "alice:$7$" in text and "dave:$6$" in text, text
    yield
    shutil.rmtree(DIR, ignore_errors=True)


def raw_client(broker, user: str | None, client_id: str, version: int = m.V5) -> m.RawClient:
    c = m.RawClient(broker.host, broker.port, version=version)
    kw = {}
    if user is not None:
        kw = {"username": user, "password": USERS[user][0].encode()}
    c.connect_ok(client_id, **kw)
    return c


# (action, user or None for anonymous, client id, filter (read) / topic (write), topic
#  published (read), allowed, shardmq SUBACK (read: "grant" / "refuse"), why)
W, R = "write", "read"
CASES = [
    (W, None, "a1", "public/news", None, False, None, "anonymous: read only"),
    (W, None, "a1", "inbox/anon", None, True, None, "anonymous write line"),
    (W, None, "a1", "devices/a1/t", None, True, None, "%c pattern"),
    (W, None, "a1", "devices/a2/t", None, False, None, "%c is the client's own id"),
    (W, None, "a1", "reports/x/a1", None, False, None, "%u needs a user name"),
    (W, "alice", "al1", "alice/x", None, True, None, "user line"),
    (W, "alice", "al1", "alice", None, True, None, "`alice/#` matches `alice`"),
    (W, "alice", "al1", "alice/private/k", None, False, None, "deny wins"),
    (W, "alice", "al1", "alice/private", None, False, None, "deny `a/#` matches `a`"),
    (W, "alice", "al1", "sensors/t/alice", None, True, None, "`+` in a rule"),
    (W, "alice", "al1", "sensors/t/u/alice", None, False, None, "`+` is one level"),
    (W, "alice", "al1", "public/news", None, False, None, "anonymous lines are not alice's"),
    (W, "alice", "al1", "devices/al1/x", None, True, None, "%c for a user"),
    (W, "alice", "al1", "reports/alice/al1", None, True, None, "%u and %c"),
    (W, "alice", "al1", "reports/alice/other", None, False, None, "%c mismatch"),
    (W, "bob smith", "b1", "bob/x", None, True, None, "a user name with a space"),
    (W, "bob smith", "b1", "alice/shared", None, False, None, "read only"),
    (W, "bob smith", "b1", "reports/bob smith/b1", None, True, None, "%u with a space"),
    (W, "dave", "d1", "dave/out", None, True, None, "$6$ password entry"),
    (W, "dave", "d1", "dave/in/x", None, False, None, "read only"),
    (W, "carol", "c9", "anything/at/all", None, True, None, "readwrite #"),
    (W, None, "a1", "state/a1-now", None, True, None, "%c inside a level"),
    (W, None, "a1", "state/a2-now", None, False, None, "%c inside a level: another id"),
    (W, None, "x/y", "inbox/anon", None, True, None, "client id with `/`: plain lines"),
    (W, None, "p+q", "inbox/anon", None, True, None, "client id with `+`: plain lines"),
    (W, None, "h#", "inbox/anon", None, True, None, "client id with `#`: plain lines"),
    (W, None, "p+q", "devices/p/t", None, False, None, "`+` in an id is no wildcard"),
    (W, None, "x/y", "devices/x/y/t", None, {"shardmq": False, "mosquitto": True}, None,
     "DIFFERS: Mosquitto substitutes %c as text, so client `x/y` writes under client `x`'s "
     "devices/x/#; shardmq applies no pattern for an id that is not one level"),
    (R, None, "a1", "public/news", "public/news", True, "grant", "anonymous read"),
    (R, None, "a1", "public/secret", "public/secret", False, "refuse", "deny line"),
    (R, None, "a1", "public/#", "public/secret", False, "grant", "partly covered wildcard"),
    (R, None, "a1", "public/#", "public/a/b", True, "grant", "partly covered wildcard"),
    (R, None, "a1", "#", "public/x", True, "grant", "`#` partly readable"),
    (R, None, "a1", "#", "alice/x", False, "grant", "`#` partly readable"),
    (R, None, "a1", "inbox/anon", "inbox/anon", False, "refuse", "write only"),
    (R, None, "a1", "users/a1/inbox", "users/a1/inbox", False, "refuse", "%u: anonymous"),
    (R, None, "a1", "devices/+/q", "devices/a1/q", True, "grant", "%c under `+`"),
    (R, None, "a1", "devices/+/q", "devices/a2/q", False, "grant", "another client's"),
    (R, "alice", "al1", "alice/x", "alice/x", True, "grant", "user line"),
    (R, "alice", "al1", "alice/#", "alice/private/x", False, "grant", "deny inside a grant"),
    (R, "alice", "al1", "alice/#", "alice/y", True, "grant", "the rest of the grant"),
    (R, "alice", "al1", "sensors/t/alice", "sensors/t/alice", False, "refuse", "write only"),
    (R, "alice", "al1", "users/alice/inbox", "users/alice/inbox", True, "grant", "%u"),
    (R, "alice", "al1", "users/bob/inbox", "users/bob/inbox", False, "refuse", "%u: not bob"),
    (R, "alice", "al1", "shared/+/news", "shared/x/news", True, "grant", "fully covered"),
    (R, "alice", "al1", "$share/g/alice/x", "alice/x", True, "grant", "judged on the filter"),
    (R, "alice", "al1", "$share/g/public/#", "public/x", False, "refuse", "judged on filter"),
    (R, "bob smith", "b1", "alice/shared", "alice/shared", True, "grant", "space in name"),
    (R, "bob smith", "b1", "users/bob smith/inbox", "users/bob smith/inbox", True, "grant",
     "%u with a space"),
    (R, "bob smith", "b1", "alice/#", "alice/shared", True, "grant", "partly covered"),
    (R, "bob smith", "b1", "alice/#", "alice/other", False, "grant", "partly covered"),
    (R, "dave", "d1", "dave/in/#", "dave/in/x", True, "grant", "$6$ user reads"),
    (R, "dave", "d1", "dave/out", "dave/out", False, "refuse", "write only"),
    (R, "alice", "al1", "devices/al1/#", "devices/al1/q", True, "grant", "%c for a user"),
]


def _case_id(i: int, case) -> str:
    action, user, cid, what = case[:4]
    return f"{i:02d}-{action}-{user or 'anon'}-{what}"


def _observe_until(obs: m.RawClient, marker_payload: bytes) -> list[m.Packet]:
    """Packets `obs` receives up to and including the PUBLISH carrying `marker_payload`."""
    seen = []
    while True:
        p = obs.recv_publish(WAIT)
        seen.append(p)
        if p.payload == marker_payload:
            return seen


def _plain(cid: str) -> bool:
    return not any(ch in cid for ch in "/+#")


def _run_write(broker, obs, i, user, cid, topic, allowed) -> list[str]:
    pub = raw_client(broker, user, cid)
    try:
        pid = pub.pid()
        payload = f"case-{i}".encode()
        pub.send(m.publish(topic, payload, qos=1, pid=pid, version=m.V5))
        ack = pub.expect(m.PUBACK)
        errors = []
        # 5.0 QoS 1: PUBACK 0x87 Not authorized on both brokers (peers.md).
        if (ack.code < 0x80) != allowed or (not allowed and ack.code != 0x87):
            errors.append(f"PUBACK code 0x{ack.code:02x}")
        if not _plain(cid):
            return errors  # No marker topic for such an id: the PUBACK code decides.
        # The marker: the same publisher, a topic every client may write (%c pattern).
        marker = f"marker-{i}".encode()
        pub.publish(f"devices/{cid}/marker", marker, qos=1)
        got = [p.payload for p in _observe_until(obs, marker)]
        if (payload in got) != allowed:
            errors.append(f"delivered={payload in got}")
        return errors
    finally:
        pub.close()


def _run_read(broker, carol, i, user, cid, flt, topic, allowed, suback) -> list[str]:
    sub = raw_client(broker, user, cid)
    try:
        ack = sub.subscribe([(flt, 0), (f"devices/{cid}/marker", 0)])
        errors = []
        code = ack.codes[0]
        if BROKER == "mosquitto":
            want = 0x00  # Mosquitto grants and filters at delivery.
        else:
            want = 0x00 if suback == "grant" else 0x87
        if code != want:
            errors.append(f"SUBACK 0x{code:02x}, expected 0x{want:02x}")
        payload, marker = f"case-{i}".encode(), f"marker-{i}".encode()
        carol.publish(topic, payload, qos=1)
        carol.publish(f"devices/{cid}/marker", marker, qos=1)
        got = [p.payload for p in _observe_until(sub, marker)]
        if (payload in got) != allowed:
            errors.append(f"delivered={payload in got}")
        return errors
    finally:
        sub.close()


@WITH_FILES
def test_differential_acl_table(broker):
    """Every case of `CASES`, against this broker; all disagreements reported at once."""
    assert len(CASES) >= 40
    carol = raw_client(broker, "carol", uid("carol-"))
    obs = raw_client(broker, "carol", uid("obs-"))
    obs.subscribe([("#", 0)])
    failures = []
    for i, case in enumerate(CASES):
        action, user, cid, what, topic, allowed, suback, why = case
        if isinstance(allowed, dict):
            allowed = allowed[BROKER]
        cid = f"{cid}-{uid()}" if action == R else cid
        if action == W:
            errors = _run_write(broker, obs, i, user, cid, what, allowed)
        else:
            what = what.replace(case[2], cid) if case[2] in what else what
            topic = topic.replace(case[2], cid) if case[2] in topic else topic
            errors = _run_read(broker, carol, i, user, cid, what, topic, allowed, suback)
        if errors:
            failures.append(f"{_case_id(i, case)} (allowed={allowed}: {why}): {errors}")
    assert not failures, "\n".join(failures)


@WITH_FILES
def test_passwords_from_mosquitto_passwd(broker):
    """`$7$` and `$6$` entries, a name with a space; wrong password and unknown user refused.
    DIFFERS in the code only: shardmq says 0x86 Bad user name or password (3.1.1: return
    code 4), Mosquitto 2.0 0x87 Not authorized (3.1.1: 5)."""
    for user in USERS:
        raw_client(broker, user, uid("pw-")).close()
    for user, pw in [("alice", b"Wonderland"), ("nobody", b"x"), ("bob", b"s3cret pw")]:
        c = m.RawClient(broker.host, broker.port, version=m.V311)
        code = c.connect(uid("pw-"), username=user, password=pw).code
        assert code == (5 if BROKER == "mosquitto" else 4), (user, code)
        c.close()
        c = m.RawClient(broker.host, broker.port, version=m.V5)
        code = c.connect(uid("pw-"), username=user, password=pw).code
        assert code == (0x87 if BROKER == "mosquitto" else 0x86), (user, hex(code))
        c.close()


@WITH_FILES
def test_v311_denied_publish_is_acknowledged_and_dropped(broker):
    """3.1.1 has no negative PUBACK: both brokers acknowledge and drop (paho, QoS 1 and 2)."""
    obs = PahoClient(broker, version=4)
    obs.client.username_pw_set("carol", "carolpw")
    obs.connect()
    obs.subscribe("#", 1)
    pub = PahoClient(broker, version=4, client_id="a311")
    pub.connect()
    pub.publish("public/news", b"denied-1", qos=1)
    pub.publish("public/news", b"denied-2", qos=2)
    pub.publish("devices/a311/marker", b"marker", qos=1)
    msg = obs.get()
    assert (msg.topic, msg.payload) == ("devices/a311/marker", b"marker"), msg.payload


@WITH_FILES
def test_v311_suback_for_a_filter_without_read_right(broker):
    """shardmq: 0x80 for the refused filter only; Mosquitto grants every filter."""
    c = m.RawClient(broker.host, broker.port, version=m.V311)
    c.connect_ok("s311", username="dave", password=b"davepw")
    ack = c.subscribe([("dave/out", 1), ("dave/in/#", 1)])
    assert ack.codes == ([1, 1] if BROKER == "mosquitto" else [0x80, 1]), ack


@WITH_FILES
def test_retained_under_acl_partly_covered_wildcard(broker):
    """`#` subscribed by an anonymous client: only the readable retained message is sent."""
    carol = raw_client(broker, "carol", uid("carol-"))
    tag = uid()
    carol.publish(f"public/{tag}", b"readable", qos=1, retain=True)
    carol.publish(f"alice/{tag}", b"hidden", qos=1, retain=True)
    sub = raw_client(broker, None, "r1")
    sub.subscribe([(f"+/{tag}", 0)])
    p = sub.recv_publish(WAIT)
    assert (p.topic, p.payload, p.retain) == (f"public/{tag}", b"readable", True), p
    # A live marker after the replay: the hidden retained message never came before it.
    sub.subscribe([("devices/r1/marker", 0)])
    carol.publish("devices/r1/marker", b"marker", qos=1)
    p = sub.recv_publish(WAIT)
    assert p.payload == b"marker", p
    for t in (f"public/{tag}", f"alice/{tag}"):
        carol.publish(t, b"", qos=1, retain=True)


@WITH_FILES
def test_will_is_checked_when_published(broker):
    """A will on a topic its client may not write is not published; one it may is. Both
    clients are taken over (their wills are published then), the denied one first."""
    obs = raw_client(broker, "carol", uid("obs-"))
    obs.subscribe([("#", 0)])
    denied = m.RawClient(broker.host, broker.port, version=m.V311)
    denied.connect_ok("w1", will=m.Will("public/will", b"denied-will"))
    allowed = m.RawClient(broker.host, broker.port, version=m.V311)
    allowed.connect_ok("w2", will=m.Will("devices/w2/will", b"allowed-will"))
    for cid in ("w1", "w2"):
        m.RawClient(broker.host, broker.port, version=m.V311).connect_ok(cid)
    got = [p.payload for p in _observe_until(obs, b"allowed-will")]
    assert b"denied-will" not in got, got


@pytest.mark.skipif(BROKER != "shardmq", reason="shardmq's $SYS/broker/denied counters")
@WITH_FILES
def test_denials_are_counted_in_sys(broker):
    """Each denial reason has a counter under `$SYS/broker/denied/`, readable through the ACL
    like any topic; a denied PUBLISH moves `publish` (the change is the marker)."""
    carol = raw_client(broker, "carol", uid("carol-"))
    carol.subscribe([("$SYS/broker/denied/publish", 0)])
    before = int(carol.recv_publish(WAIT).payload)
    pub = raw_client(broker, None, "sys1")
    pid = pub.pid()
    pub.send(m.publish("public/x", b"denied", qos=1, pid=pid, version=m.V5))
    assert pub.expect(m.PUBACK).code == 0x87
    while True:  # Published every second: wait for a value past `before`.
        p = carol.recv_publish(WAIT)
        if int(p.payload) > before:
            break
    # Without a read right, the same counter is refused (alice reads clients/# only).
    alice = raw_client(broker, "alice", uid("alice-"))
    assert alice.subscribe([("$SYS/broker/denied/publish", 0)]).codes == [0x87]


@pytest.mark.skipif(shutil.which("mosquitto_pub") is None, reason="mosquitto-clients missing")
@WITH_FILES
def test_mosquitto_clients_with_the_same_files(broker):
    """mosquitto_pub / mosquitto_sub with the same files, 3.1.1 and 5.0: a denied QoS 1
    publish from mosquitto_pub 3.1.1 completes (acknowledged, dropped) and is never stored;
    the permitted one, retained, reaches mosquitto_sub 5.0 whenever it subscribes; a 5.0
    mosquitto_sub without read right gets nothing but what it may read."""
    base = ["-h", broker.host, "-p", str(broker.port), "-u", "alice", "-P", "wonderland"]
    tag = uid()
    denied = subprocess.run(["mosquitto_pub", *base, "-V", "mqttv311", "-q", "1", "-r",
                             "-t", f"alice/private/{tag}", "-m", "denied"],
                            capture_output=True, timeout=30)
    assert denied.returncode == 0, denied
    subprocess.run(["mosquitto_pub", *base, "-V", "mqttv5", "-q", "1", "-r", "-t",
                    f"alice/{tag}", "-m", "allowed"], check=True, capture_output=True, timeout=30)
    # `alice/#` is partly readable: only the permitted retained message comes.
    sub = subprocess.run(["mosquitto_sub", *base, "-i", uid("msub-"), "-V", "mqttv5", "-t",
                          "alice/#", "-C", "1", "-v", "-W", str(int(WAIT))],
                         capture_output=True, timeout=30)
    assert sub.stdout.decode().strip() == f"alice/{tag} allowed", sub
    subprocess.run(["mosquitto_pub", *base, "-q", "1", "-r", "-n", "-t", f"alice/{tag}"],
                   check=True, capture_output=True, timeout=30)


@pytest.mark.skipif(BROKER != "shardmq", reason="shardmq: start-up check")
def test_malformed_acl_line_stops_start_up():
    """A line shardmq cannot read fails the start with the file and line named (Mosquitto
    ignores unknown keywords; shardmq refuses them)."""
    bad = DIR / "bad-acl"
    bad.write_text("topic read a/#\n\ntopik read b\n")
    binary = os.environ.get("SHARDMQ_BIN") or str(
        Path(__file__).resolve().parents[3] / "target" / "release" / "shardmq")
    r = subprocess.run([binary, "--listen", "127.0.0.1:0", "--acl-file", str(bad)],
                       capture_output=True, timeout=30)
    assert r.returncode != 0
    err = r.stderr.decode()
    assert f"{bad}: line 3: `topik`" in err, err


@pytest.mark.skipif(BROKER != "shardmq", reason="shardmq: an empty ACL file")
@pytest.mark.broker_args("--acl-file", str(DIR / "empty-acl"))
def test_empty_acl_file_denies_everything(broker, request):
    """With an ACL file, what no line grants is denied: an empty file grants nothing."""
    pub = raw_client(broker, None, "e1")
    pid = pub.pid()
    pub.send(m.publish("a/b", b"x", qos=1, pid=pid, version=m.V5))
    assert pub.expect(m.PUBACK).code == 0x87
    assert pub.subscribe([("#", 0), ("a/b", 0)]).codes == [0x87, 0x87]


@pytest.fixture(scope="module", autouse=True)
def empty_acl(files):
    (DIR / "empty-acl").write_text("# nothing granted\n")
    (DIR / "empty-acl").chmod(0o644)
    yield
