"""Persistent sessions: queued messages while offline, in order, with session present;
redelivery of unacknowledged QoS 1 / 2 messages with DUP; clean sessions and 5.0 expiry."""

import pytest

import mqttraw as m
from util import VERSION_IDS, uid

ALL = pytest.mark.parametrize("version", [3, 4, 5], ids=VERSION_IDS.get)
V311_V5 = pytest.mark.parametrize("version", [4, 5], ids=VERSION_IDS.get)

EXPIRY = 300  # 5.0 Session Expiry Interval for "persistent" sessions


def persistent(version):
    """paho kwargs for a persistent session in this version."""
    kw = {"clean": False}
    if version == 5:
        kw["session_expiry"] = EXPIRY
    return kw


def raw_props(version):
    return {m.PROP_SESSION_EXPIRY: EXPIRY} if version == 5 else None


@ALL
def test_offline_messages_delivered_in_order(paho, topic, version):
    """[MQTT-3.1.2-4,5]: a persistent session keeps its subscriptions and queues QoS 1
    messages while the client is offline; they arrive in order [MQTT-4.6.0-6] on reconnect,
    with session present = 1."""
    cid = uid("persist-")
    sub = paho(version, client_id=cid, **persistent(version))
    sub.subscribe(f"{topic}/q", 1)
    sub.disconnect()
    pub = paho(version)
    for i in range(20):
        pub.publish(f"{topic}/q", b"%d" % i, 1)
    again = paho(version, client_id=cid, connect=False, **persistent(version))
    session_present = again.connect()
    if version != 3:  # MQTT 3.1 has no session present flag (the CONNACK byte is reserved)
        assert session_present is True, "session present must be 1"
    got = again.get_n(20)
    assert [int(msg.payload) for msg in got] == list(range(20))
    assert all(msg.qos == 1 for msg in got)
    # Nothing more (no duplicate): a live message published now comes after the queue.
    pub.publish(f"{topic}/q", b"live", 1)
    assert again.get().payload == b"live"


@V311_V5
def test_offline_qos2_delivered_once(raw, topic, version):
    cid = uid("persist-")
    sub = raw(version)
    sub.connect_ok(cid, clean=False, props=raw_props(version))
    sub.subscribe([(f"{topic}/q", 2)])
    sub.disconnect()
    pub = raw(version)
    pub.connect_ok(uid("pub-"))
    for i in range(5):
        pub.publish(f"{topic}/q", b"%d" % i, qos=2)
    again = raw(version)
    assert again.connect_ok(cid, clean=False, props=raw_props(version)).session_present
    got = [again.recv_publish() for _ in range(5)]
    assert [(p.payload, p.qos) for p in got] == [(b"%d" % i, 2) for i in range(5)]
    again.expect_nothing_before_pingresp()


@V311_V5
def test_unacked_qos1_redelivered_with_dup(raw, topic, version):
    """[MQTT-4.4.0-1]: on reconnect with a persistent session the server re-sends
    unacknowledged PUBLISH packets with their original packet id and DUP = 1 [MQTT-3.3.1-1]."""
    cid = uid("redeliver-")
    sub = raw(version)
    sub.connect_ok(cid, clean=False, props=raw_props(version))
    sub.subscribe([(f"{topic}/q", 1)])
    pub = raw(version)
    pub.connect_ok(uid("pub-"))
    pub.publish(f"{topic}/q", b"ack me", qos=1)
    first = sub.expect(m.PUBLISH)
    assert (first.payload, first.qos, first.dup) == (b"ack me", 1, False)
    sub.close()  # no PUBACK
    again = raw(version)
    assert again.connect_ok(cid, clean=False, props=raw_props(version)).session_present
    second = again.expect(m.PUBLISH)
    assert (second.payload, second.qos, second.dup, second.pid) == (b"ack me", 1, True, first.pid)
    again.send(m.puback(second.pid, version))
    again.expect_nothing_before_pingresp()
    # Acknowledged now: a third connection gets nothing.
    again.disconnect()
    third = raw(version)
    assert third.connect_ok(cid, clean=False, props=raw_props(version)).session_present
    third.expect_nothing_before_pingresp()


@V311_V5
def test_unacked_qos2_publish_redelivered_with_dup(raw, topic, version):
    cid = uid("redeliver-")
    sub = raw(version)
    sub.connect_ok(cid, clean=False, props=raw_props(version))
    sub.subscribe([(f"{topic}/q", 2)])
    pub = raw(version)
    pub.connect_ok(uid("pub-"))
    pub.publish(f"{topic}/q", b"two", qos=2)
    first = sub.expect(m.PUBLISH)
    sub.close()  # no PUBREC
    again = raw(version)
    again.connect_ok(cid, clean=False, props=raw_props(version))
    second = again.expect(m.PUBLISH)
    assert (second.payload, second.qos, second.dup, second.pid) == (b"two", 2, True, first.pid)
    again.send(m.pubrec(second.pid, version))
    assert again.expect(m.PUBREL).pid == second.pid
    again.send(m.pubcomp(second.pid, version))
    again.expect_nothing_before_pingresp()


@V311_V5
def test_pubrel_resent_after_reconnect(raw, topic, version):
    """[MQTT-4.4.0-1]: after PUBREC, a reconnect makes the server re-send PUBREL (same id),
    not the PUBLISH."""
    cid = uid("redeliver-")
    sub = raw(version)
    sub.connect_ok(cid, clean=False, props=raw_props(version))
    sub.subscribe([(f"{topic}/q", 2)])
    pub = raw(version)
    pub.connect_ok(uid("pub-"))
    pub.publish(f"{topic}/q", b"two", qos=2)
    p = sub.expect(m.PUBLISH)
    sub.send(m.pubrec(p.pid, version))
    assert sub.expect(m.PUBREL).pid == p.pid
    sub.close()  # no PUBCOMP
    again = raw(version)
    again.connect_ok(cid, clean=False, props=raw_props(version))
    rel = again.expect(m.PUBREL)
    assert rel.pid == p.pid and rel.flags == 0x02, rel
    again.send(m.pubcomp(p.pid, version))
    again.expect_nothing_before_pingresp()


@ALL
def test_clean_session_discards_subscriptions(paho, topic, version):
    """[MQTT-3.1.2-6] / 5.0 Clean Start: a clean connection starts with no subscriptions."""
    cid = uid("clean-")
    sub = paho(version, client_id=cid, **persistent(version))
    sub.subscribe(f"{topic}/q", 1)
    sub.disconnect()
    fresh = paho(version, client_id=cid, clean=True)
    assert fresh.connack_info[0] is False
    fresh.subscribe(f"{topic}/marker", 1)
    pub = paho(version)
    pub.publish(f"{topic}/q", b"nobody listens", 1)
    pub.publish(f"{topic}/marker", b"marker", 1)
    fresh.expect_marker(f"{topic}/marker")


@ALL
def test_subscriptions_survive_reconnect(paho, topic, version):
    """The session's subscriptions apply to the new connection without re-subscribing."""
    cid = uid("persist-")
    sub = paho(version, client_id=cid, **persistent(version))
    sub.subscribe(f"{topic}/q", 1)
    sub.disconnect()
    again = paho(version, client_id=cid, **persistent(version))
    pub = paho(version)
    pub.publish(f"{topic}/q", b"still subscribed", 1)
    assert again.get().payload == b"still subscribed"


def test_v5_session_expiry_zero_ends_session(raw, topic):
    """5.0 [MQTT-3.1.2-23]: with Session Expiry Interval 0 (absent) the session ends when the
    connection closes, even with Clean Start = 0."""
    cid = uid("noexpiry-")
    c = raw(5)
    c.connect_ok(cid, clean=False)
    c.subscribe([(f"{topic}/q", 1)])
    c.disconnect()
    again = raw(5)
    assert not again.connect_ok(cid, clean=False).session_present


def test_v5_session_expiry_set_on_disconnect(raw, topic):
    """5.0: DISCONNECT may change a non-zero expiry; setting it to 0 ends the session."""
    cid = uid("shorten-")
    c = raw(5)
    c.connect_ok(cid, clean=False, props={m.PROP_SESSION_EXPIRY: EXPIRY})
    c.subscribe([(f"{topic}/q", 1)])
    c.send(m.disconnect(5, reason=0, props={m.PROP_SESSION_EXPIRY: 0}))
    c.wait_closed()
    again = raw(5)
    assert not again.connect_ok(cid, clean=False).session_present


def test_v5_session_expires(raw, topic):
    """5.0: a session with a 1 s expiry is gone after it expires. The marker that it ended:
    its will, whose delay (600 s) is longer than the expiry, is published when the session
    ends (§3.1.3.2.2: "or the Session ends, whichever happens first")."""
    cid = uid("short-")
    w = raw(5)
    w.connect_ok(uid("watch-"))
    w.subscribe([(f"{topic}/ended", 1)])
    c = raw(5)
    c.connect_ok(cid, clean=False, props={m.PROP_SESSION_EXPIRY: 1},
                 will=m.Will(f"{topic}/ended", b"session ended", qos=1,
                             props={m.PROP_WILL_DELAY: 600}))
    c.subscribe([(f"{topic}/q", 1)])
    c.close()  # without DISCONNECT, so the will is kept until the session ends
    assert w.recv_publish(timeout=15).payload == b"session ended"
    again = raw(5)
    assert not again.connect_ok(cid, clean=False, props={m.PROP_SESSION_EXPIRY: 1}).session_present


@V311_V5
def test_offline_queue_keeps_qos1_in_order(raw, topic, version):
    """QoS 1 messages are queued for an offline session; QoS 0 ones MAY be (3.1.2.4), so only
    the QoS 1 message is required, and it comes out in publish order relative to QoS 0 ones."""
    cid = uid("mixed-")
    sub = raw(version)
    sub.connect_ok(cid, clean=False, props=raw_props(version))
    sub.subscribe([(f"{topic}/q", 1)])
    sub.disconnect()
    pub = raw(version)
    pub.connect_ok(uid("pub-"))
    pub.publish(f"{topic}/q", b"q0-a", qos=0)
    pub.publish(f"{topic}/q", b"q1", qos=1)
    pub.publish(f"{topic}/q", b"q0-b", qos=0)
    pub.publish(f"{topic}/q", b"q1-last", qos=1)
    again = raw(version)
    again.connect_ok(cid, clean=False, props=raw_props(version))
    got = []
    while b"q1-last" not in got:
        got.append(again.recv_publish().payload)
    assert [p for p in got if p.startswith(b"q1")] == [b"q1", b"q1-last"]
    assert [p for p in got if p in (b"q0-a", b"q0-b")] in ([], [b"q0-a"], [b"q0-b"], [b"q0-a", b"q0-b"])
