"""Every MQTT 5.0 reason code the broker sends has a test that makes it send it. The table is
REASON_CODES.md (code, packet, cause, spec statement, test); this file holds the tests for the
codes no other file produces exactly, and a tidy-style check that keeps the table honest:
every code the engine's sources can send is in it, and every test it names exists.

Paho is used where it can produce the input (and shows the code to the application); raw
sockets where it cannot (unknown packet identifiers, alias 0, a silent connection)."""

from __future__ import annotations

import re
import time
import signal
import tempfile
from pathlib import Path

import pytest
from paho.mqtt.packettypes import PacketTypes

import mqttraw as m
from util import WAIT, id_on_shard, is_mosquitto, props, uid

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
shardmq_only = pytest.mark.skipif(is_mosquitto(), reason="a shardmq limit Mosquitto lacks")

# A configuration with tiny limits, for the quota reason codes (written once per run).
_LIMITS = Path(tempfile.mkdtemp(prefix="shardmq-limits-")) / "limits.toml"
_LIMITS.write_text("[limits]\nsessions_per_shard_max = 1\nsubscriptions_per_session_max = 2\n")
small_limits = pytest.mark.broker_args("--config", str(_LIMITS))
_ONE_CONN = _LIMITS.with_name("one-connection.toml")
_ONE_CONN.write_text("[limits]\nconnections_per_shard_max = 1\n")
one_connection_per_shard = pytest.mark.broker_args("--config", str(_ONE_CONN))


# ---------------------------------------------------------------------------------------------
# The table

# Codes the engine names but only ever receives (a client's DISCONNECT reason).
RECEIVED_ONLY = {"DISCONNECT_WITH_WILL_MESSAGE"}


def _reason_values() -> dict[str, int]:
    text = (REPO / "codec/src/reason.rs").read_text()
    return {name: int(value, 16) for name, value in
            re.findall(r"pub const (\w+): ReasonCode = ReasonCode\((0x[0-9A-Fa-f]+)\)", text)}


def _production_source(path: Path) -> str:
    """A Rust file without its `#[cfg(test)]` module (tests name codes they expect)."""
    text = path.read_text()
    return text.split("#[cfg(test)]")[0]


def codes_the_broker_can_send() -> dict[int, set[str]]:
    """Code -> the source files naming it: `ReasonCode::NAME` in engine/src/core and
    engine/src/io (not the simulator), every code a decode error maps to (sent in DISCONNECT
    once connected), and literal DISCONNECT frames of the io layer."""
    values = _reason_values()
    found: dict[int, set[str]] = {}
    files = [p for d in ("engine/src/core", "engine/src/io") for p in (REPO / d).rglob("*.rs")
             if "sim_tests" not in p.parts and p.name != "sim.rs"
             and not p.name.endswith("tests.rs")]
    for path in files:
        text = _production_source(path)
        for name in re.findall(r"ReasonCode::([A-Z][A-Z0-9_]+)", text):
            if name in RECEIVED_ONLY or name not in values:
                continue
            found.setdefault(values[name], set()).add(str(path.relative_to(REPO)))
        for byte in re.findall(r"&\[0xE0, 0x02, (0x[0-9A-F]{2}), 0x00\]", text):
            found.setdefault(int(byte, 16), set()).add(str(path.relative_to(REPO)))
    error_rs = (REPO / "codec/src/error.rs").read_text()
    mapping = error_rs[error_rs.index("pub fn reason_code"):]
    mapping = mapping[:mapping.index("\n    }\n")]
    for name in re.findall(r"ReasonCode::([A-Z][A-Z0-9_]+)", mapping):
        found.setdefault(values[name], set()).add("codec/src/error.rs")
    return found


def table_rows() -> list[dict]:
    rows = []
    for line in (HERE / "REASON_CODES.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and re.fullmatch(r"0x[0-9A-F]{2}", cells[0]):
            rows.append(dict(zip(("code", "packet", "cause", "spec", "tests"), cells)))
    return rows


def _resolve(ref_file: str) -> Path:
    return REPO / ref_file if "/" in ref_file else HERE / ref_file


def test_reason_code_table_is_complete_and_honest():
    """Every code the broker's sources can send has a row; every row has a test (or says why
    none: "not sent"); every test named exists."""
    rows = table_rows()
    assert len(rows) > 20, "REASON_CODES.md table not found or not parsed"
    listed = {int(r["code"], 16) for r in rows}
    missing = {hex(c): sorted(f) for c, f in codes_the_broker_can_send().items()
               if c not in listed}
    assert not missing, f"reason codes sent but not in REASON_CODES.md: {missing}"
    problems = []
    for r in rows:
        refs = re.findall(r"`([\w./-]+\.(?:py|rs))::(\w+)`", r["tests"])
        if not refs and "not sent" not in r["tests"]:
            problems.append(f"{r['code']} {r['packet']}: no test named and not marked 'not sent'")
        for ref_file, name in refs:
            path = _resolve(ref_file)
            if not path.exists():
                problems.append(f"{r['code']}: {ref_file} does not exist")
                continue
            if not re.search(rf"\b(def|fn) {name}\b", path.read_text()):
                problems.append(f"{r['code']}: {ref_file} has no test {name}")
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------------------------------------
# Codes no other file produces exactly


def test_pubrel_packet_identifier_not_found(raw):
    """5.0 §3.6.2.1: PUBREL 0x92 Packet Identifier not found — a PUBREC for a packet id the
    server never sent (paho answers only what it received: raw socket)."""
    c = raw(5)
    c.connect_ok(uid("rec-"))
    c.send(m.pubrec(4242, 5))
    rel = c.expect(m.PUBREL)
    if is_mosquitto() and rel.code == 0:
        pytest.skip("Mosquitto 2.0.11 answers an unknown PUBREC with PUBREL 0x00")
    assert (rel.pid, rel.flags, rel.code) == (4242, 0x02, 0x92), rel
    c.ping()  # not an error that closes the connection


def test_pubcomp_packet_identifier_not_found(raw):
    """5.0 §3.7.2.1: PUBCOMP 0x92 Packet Identifier not found — a PUBREL for a packet id
    with no QoS 2 exchange in progress."""
    c = raw(5)
    c.connect_ok(uid("rel-"))
    c.send(m.pubrel(4243, 5))
    comp = c.expect(m.PUBCOMP)
    if is_mosquitto() and comp.code == 0:
        pytest.skip("Mosquitto 2.0.11 answers an unknown PUBREL with PUBCOMP 0x00")
    assert (comp.pid, comp.code) == (4243, 0x92), comp
    c.ping()


def test_unsuback_no_subscription_existed(paho, topic):
    """5.0 §3.11.3: UNSUBACK 0x11 No subscription existed, one code per filter in order
    [MQTT-3.11.3-1]; 0x00 for the one that existed."""
    c = paho(5)
    c.subscribe(f"{topic}/yes", 1)
    assert c.unsubscribe([f"{topic}/no", f"{topic}/yes"]) == [0x11, 0x00]


@shardmq_only
def test_suback_topic_filter_invalid(paho, topic):
    """5.0 §3.9.3: SUBACK 0x8F Topic Filter invalid — well formed, but not accepted (shardmq:
    more than topic_levels_max = 32 levels); the other filters are granted [MQTT-3.9.3-1]."""
    c = paho(5)
    deep = topic + "/l" * 40
    assert c.subscribe([(f"{topic}/ok", 1), (deep, 1), (f"{topic}/ok2", 2)]) == [1, 0x8F, 2]


@shardmq_only
@small_limits
def test_suback_quota_exceeded(paho, topic):
    """5.0 §3.9.3: SUBACK 0x97 Quota exceeded — past subscriptions_per_session_max (2 here).
    Replacing an existing subscription is not a new one [MQTT-3.8.4-3]."""
    c = paho(5)
    assert c.subscribe([(f"{topic}/a", 1), (f"{topic}/b", 1), (f"{topic}/c", 1)]) == [1, 1, 0x97]
    assert c.subscribe(f"{topic}/a", 2) == [2]


@shardmq_only
@small_limits
def test_connack_quota_exceeded(paho):
    """5.0 §3.2.2.2: CONNACK 0x97 Quota exceeded — a new session on a shard already holding
    sessions_per_shard_max (1 here) sessions. A session on the other shard is fine, and so is
    taking over the existing session."""
    first = id_on_shard("first-", 0)
    paho(5, client_id=first)
    assert paho(5, client_id=id_on_shard("second-", 0), connect=False).connect_rc() == 0x97
    paho(5, client_id=id_on_shard("other-", 1))
    paho(5, client_id=first)


@shardmq_only
@one_connection_per_shard
@pytest.mark.parametrize("version", [4, 5])
def test_connack_server_busy_at_the_connection_limit(paho, version):
    """5.0 §3.2.2.2: CONNACK 0x89 Server busy (3.1.1: return code 3, Server unavailable) — a
    CONNECT to a shard already holding connections_per_shard_max (1 here) connections; the
    connection is then closed [MQTT-3.2.2-7]. The other shard still has room, and the first
    shard takes connections again once its client leaves."""
    first = paho(version, client_id=id_on_shard("busy-first-", 0))
    busy = paho(version, client_id=id_on_shard("busy-second-", 0), connect=False).connect_rc()
    # paho 2.x reports 3.1.1's return code 3 as 0x88 Server unavailable.
    assert busy == (0x89 if version == 5 else 0x88), busy
    paho(version, client_id=id_on_shard("busy-other-", 1))
    first.stop()
    # The closed connection's slot is freed by the shard's next sweep: retry until it is.
    deadline = time.monotonic() + WAIT
    while paho(version, client_id=id_on_shard("busy-third-", 0), connect=False).connect_rc():
        assert time.monotonic() < deadline, "shard 0 never took a connection again"
        time.sleep(0.2)


def test_disconnect_topic_filter_invalid(raw, topic):
    """5.0 §3.14.2.1: DISCONNECT 0x8F Topic Filter invalid — shardmq's answer to a SUBSCRIBE
    whose filter breaks [MQTT-4.7.1-2] (test_02 allows every spec-conforming answer)."""
    c = raw(5)
    c.connect_ok(uid("filt-"))
    c.send(m.subscribe(1, [(f"{topic}/#/x", 1)], 5))
    got = [(p.type, p.code) for p in c.wait_closed()]
    if is_mosquitto():
        assert got in ([], [(m.DISCONNECT, 0x81)], [(m.DISCONNECT, 0x82)],
                       [(m.DISCONNECT, 0x8F)], [(m.SUBACK, 0x8F)]), got
    else:
        assert got == [(m.DISCONNECT, 0x8F)], got


@pytest.mark.parametrize("kind", ["wildcard", "too_deep"])
def test_disconnect_topic_name_invalid(paho, raw, topic, kind):
    """5.0 §3.14.2.1: DISCONNECT 0x90 Topic Name invalid — a wildcard in a PUBLISH topic
    [MQTT-3.3.2-2] (raw: paho refuses to send it), or a topic the broker does not accept
    (shardmq: more than 32 levels; paho sends it)."""
    if kind == "wildcard":
        c = raw(5)
        c.connect_ok(uid("wild-"))
        c.send(m.publish(f"{topic}/+/x", b"x", qos=1, pid=1, version=5))
        got = [(p.type, p.code) for p in c.wait_closed()]
        allowed = [[(m.DISCONNECT, 0x90)]] + ([[], [(m.DISCONNECT, 0x82)]] if is_mosquitto()
                                              else [])
        assert got in allowed, got
        return
    if is_mosquitto():
        pytest.skip("Mosquitto has no topic level limit")
    c = paho(5)
    c.client.publish(topic + "/l" * 40, b"x", 1)
    assert c.disconnected.wait(WAIT)
    assert c.disconnect_info[0] == 0x90, c.disconnect_info


def test_disconnect_topic_alias_zero(raw, topic):
    """[MQTT-3.3.2-8]: a Topic Alias of 0 is not permitted -> DISCONNECT 0x94 Topic Alias
    invalid (the reason code table, 4.13)."""
    c = raw(5)
    c.connect_ok(uid("alias0-"))
    c.send(m.publish(f"{topic}/x", b"x", version=5, props={0x23: 0}))
    got = [(p.type, p.code) for p in c.wait_closed()]
    # Mosquitto 2.0.11 calls it malformed (0x81).
    allowed = [[(m.DISCONNECT, 0x94)]] + ([[], [(m.DISCONNECT, 0x81)]] if is_mosquitto() else [])
    assert got in allowed, got


def test_disconnect_keep_alive_timeout(raw):
    """[MQTT-3.1.2-22]: no packet within 1.5 x Keep Alive -> the server closes, 5.0: after
    DISCONNECT 0x8D Keep Alive timeout (reason code table)."""
    c = raw(5)
    c.connect_ok(uid("silent-"), keepalive=1)
    got = [(p.type, p.code) for p in c.wait_closed(timeout=15)]
    if is_mosquitto() and got == []:
        return
    assert got == [(m.DISCONNECT, 0x8D)], got


def test_disconnect_server_shutting_down(tmp_path):
    """5.0 §3.14.2.1: DISCONNECT 0x8B Server shutting down to every 5.0 client on SIGTERM
    (both shards); 3.1.1 clients are just closed. Its own broker: the fixture's must not die."""
    import conftest

    start = conftest._start_mosquitto if is_mosquitto() else conftest._start_shardmq
    running = start([], tmp_path)
    try:
        host, port = running.addr
        v5 = [m.RawClient(host, port, version=5) for _ in range(2)]
        for i, c in enumerate(v5):
            c.connect_ok(id_on_shard("bye-", i))
        v4 = m.RawClient(host, port, version=4)
        v4.connect_ok(uid("bye4-"))
        running.proc.send_signal(signal.SIGTERM)
        for c in v5:
            got = [(p.type, p.code) for p in c.wait_closed(timeout=WAIT)]
            if is_mosquitto() and got == []:
                continue
            assert got == [(m.DISCONNECT, 0x8B)], got
        assert v4.wait_closed(timeout=WAIT) == []
        assert running.proc.wait(WAIT) is not None
    finally:
        if running.proc.poll() is None:
            running.proc.kill()
            running.proc.wait()


def test_request_problem_information_still_gets_reason_codes(paho, topic):
    """[MQTT-3.1.2-29] forbids Reason Strings with Request Problem Information 0, not reason
    codes: a paho client that asked for none still sees UNSUBACK 0x11."""
    c = paho(5, properties=props(PacketTypes.CONNECT, RequestProblemInformation=0))
    assert c.unsubscribe(f"{topic}/none") == [0x11]
