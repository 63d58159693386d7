"""Session takeover: a second connection with the same client id closes the first
([MQTT-3.1.4-2]; 5.0: after DISCONNECT 0x8E Session taken over [MQTT-3.1.4-3]) and inherits
the session. Repeated with 20 client ids so that, with 2 shards, connections land both on
and off the client id's home shard."""

import pytest

import mqttraw as m
from util import VERSION_IDS, is_mosquitto, uid

V311_V5 = pytest.mark.parametrize("version", [4, 5], ids=VERSION_IDS.get)
IDS = 20


def props(version):
    return {m.PROP_SESSION_EXPIRY: 300} if version == 5 else None


def assert_taken_over(old: m.RawClient, version: int) -> None:
    got = [(p.type, p.code) for p in old.wait_closed()]
    if version == 4:
        assert got == [], got  # 3.1.1 has no server-sent DISCONNECT
    elif is_mosquitto():
        # Mosquitto 2.0.11 closes without sending DISCONNECT 0x8E (see README).
        assert got in ([], [(m.DISCONNECT, 0x8E)]), got
    else:
        # 5.0 [MQTT-3.1.4-3]: the server sends DISCONNECT 0x8E before closing.
        assert got == [(m.DISCONNECT, 0x8E)], got


@V311_V5
def test_takeover_closes_first_connection(raw, topic, version):
    pub = raw(version)
    pub.connect_ok(uid("pub-"))
    for i in range(IDS):
        cid = uid(f"take{i}-")
        first = raw(version)
        assert not first.connect_ok(cid, clean=False, props=props(version)).session_present
        first.subscribe([(f"{topic}/{i}", 1)])
        second = raw(version)
        ack = second.connect_ok(cid, clean=False, props=props(version))
        assert ack.session_present, f"{cid}: the session must survive the takeover"
        assert_taken_over(first, version)
        # The new connection owns the session: its subscription delivers here.
        pub.publish(f"{topic}/{i}", b"to the new connection %d" % i, qos=1)
        p = second.recv_publish()
        assert p.payload == b"to the new connection %d" % i
        second.ping()
        second.disconnect()


@V311_V5
def test_takeover_with_clean_start(raw, topic, version):
    """A clean takeover closes the old connection and discards its session."""
    pub = raw(version)
    pub.connect_ok(uid("pub-"))
    for i in range(IDS):
        cid = uid(f"clean{i}-")
        first = raw(version)
        first.connect_ok(cid, clean=False, props=props(version))
        first.subscribe([(f"{topic}/{i}", 1)])
        second = raw(version)
        assert not second.connect_ok(cid, clean=True).session_present
        assert_taken_over(first, version)
        pub.publish(f"{topic}/{i}", b"nobody", qos=1)
        second.subscribe([(f"{topic}/marker{i}", 1)])
        pub.publish(f"{topic}/marker{i}", b"marker", qos=1)
        assert second.recv_publish().payload == b"marker"
        second.disconnect()


def test_takeover_chain(raw, topic):
    """Five connections in a row with one id: each closes the previous one, only the last
    one is left connected and it still receives."""
    cid = uid("chain-")
    conns = []
    for _ in range(5):
        c = raw(4)
        c.connect_ok(cid, clean=False)
        if conns:
            assert_taken_over(conns[-1], 4)
        conns.append(c)
    last = conns[-1]
    last.subscribe([(f"{topic}/x", 1)])
    pub = raw(4)
    pub.connect_ok(uid("pub-"))
    pub.publish(f"{topic}/x", b"last", qos=1)
    assert last.recv_publish().payload == b"last"
    # Once only: the next message of the same publisher and topic is the next one it gets.
    pub.publish(f"{topic}/x", b"marker", qos=1)
    assert last.recv_publish().payload == b"marker"


def test_takeover_resends_unacked(raw, topic):
    """An unacknowledged QoS 1 message of the old connection goes to the new one (DUP)."""
    cid = uid("unacked-")
    first = raw(4)
    first.connect_ok(cid, clean=False)
    first.subscribe([(f"{topic}/x", 1)])
    pub = raw(4)
    pub.connect_ok(uid("pub-"))
    pub.publish(f"{topic}/x", b"pending", qos=1)
    p = first.expect(m.PUBLISH)  # not acknowledged
    second = raw(4)
    assert second.connect_ok(cid, clean=False).session_present
    assert_taken_over(first, 4)
    again = second.expect(m.PUBLISH)
    assert (again.payload, again.dup, again.pid) == (b"pending", True, p.pid)
    second.send(m.puback(again.pid))
    second.expect_nothing_before_pingresp()
