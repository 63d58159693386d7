"""Retained messages: set, replace, clear, delivery on subscribe (also to wildcard filters),
retain flag handling, 5.0 Retain As Published and Retain Handling."""

import pytest

import mqttraw as m
from util import VERSION_IDS, sub_options, uid

ALL = pytest.mark.parametrize("version", [3, 4, 5], ids=VERSION_IDS.get)


def retained_marker(c) -> str:
    """Has `c` (a raw client) retain a marker on a fresh topic and subscribe to it; returns
    the topic. The broker answers one connection's SUBSCRIBEs in order, so the marker comes
    after every retained message of the earlier SUBSCRIBEs."""
    marker = f"marker/{uid()}"
    c.publish(marker, b"marker", qos=1, retain=True)
    c.subscribe([(marker, 1)])
    return marker


def drain_retained(c, want: int, timeout: float = 10.0):
    """Reads exactly `want` PUBLISH packets, then checks that the next one is the marker of
    `retained_marker`: no more retained messages came."""
    got = [c.recv_publish(timeout=timeout) for _ in range(want)]
    marker = retained_marker(c)
    p = c.recv_publish(timeout=timeout)
    assert p.topic == marker, f"unexpected message {p!r} (after {got!r})"
    return got


@ALL
def test_retained_delivered_on_subscribe(paho, topic, version):
    """[MQTT-3.3.1-6]: a new subscription gets the retained message, retain flag set
    [MQTT-3.3.1-8]."""
    pub = paho(version)
    pub.publish(f"{topic}/r", b"kept", 1, retain=True)
    sub = paho(version)
    sub.subscribe(f"{topic}/r", 1)
    msg = sub.get()
    assert (msg.topic, msg.payload, msg.retain, msg.qos) == (f"{topic}/r", b"kept", True, 1)
    # Once: the retained marker of a later SUBSCRIBE (same connection) is the next message.
    sub.publish(f"{topic}-marker", b"marker", 1, retain=True)
    sub.subscribe(f"{topic}-marker", 1)
    sub.expect_marker(f"{topic}-marker")


@ALL
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_retained_replace(raw, topic, version, qos):
    """[MQTT-3.3.1-5]: a new retained message on the topic replaces the old one."""
    pub = raw(version)
    pub.connect_ok(uid("pub-"))
    pub.publish(f"{topic}/r", b"old", qos=qos, retain=True)
    pub.publish(f"{topic}/r", b"new", qos=qos, retain=True)
    sub = raw(version)
    sub.connect_ok(uid("sub-"))
    sub.subscribe([(f"{topic}/r", 2)])
    (p,) = drain_retained(sub, 1)
    assert (p.payload, p.retain, p.qos) == (b"new", True, qos)


@ALL
def test_retained_cleared_by_empty_payload(raw, topic, version):
    """[MQTT-3.3.1-10,11]: a zero-byte retained PUBLISH removes the retained message (and is
    itself not stored)."""
    pub = raw(version)
    pub.connect_ok(uid("pub-"))
    pub.publish(f"{topic}/r", b"gone soon", qos=1, retain=True)
    pub.publish(f"{topic}/r", b"", qos=1, retain=True)
    pub.publish(f"{topic}/sentinel", b"still here", qos=1, retain=True)
    sub = raw(version)
    sub.connect_ok(uid("sub-"))
    sub.subscribe([(f"{topic}/#", 1)])
    (p,) = drain_retained(sub, 1)
    assert (p.topic, p.payload) == (f"{topic}/sentinel", b"still here")


def test_empty_retained_delivered_live_to_existing_subscribers(raw, topic):
    """The zero-byte retained PUBLISH is still forwarded to current subscribers
    [MQTT-3.3.1-10] (as a normal message: retain flag 0 in 3.1.1)."""
    sub = raw(4)
    sub.connect_ok(uid("sub-"))
    sub.subscribe([(f"{topic}/r", 1)])
    pub = raw(4)
    pub.connect_ok(uid("pub-"))
    pub.publish(f"{topic}/r", b"", qos=1, retain=True)
    p = sub.recv_publish()
    assert (p.payload, p.retain) == (b"", False)


@ALL
def test_retained_for_wildcard_filters(raw, topic, version):
    """Every retained message matching a wildcard filter is delivered on subscribe."""
    pub = raw(version)
    pub.connect_ok(uid("pub-"))
    topics = ["a/1", "b/1", "a/2/x", "c", "b/2"]
    for t in topics:
        pub.publish(f"{topic}/{t}", t.encode(), qos=1, retain=True)
    cases = [("+/1", {"a/1", "b/1"}), ("#", set(topics)), ("a/#", {"a/1", "a/2/x"}),
             ("+/+/x", {"a/2/x"}), ("+", {"c"}), ("nothing/#", set())]
    subs = []
    for filt, want in cases:
        sub = raw(version)
        sub.connect_ok(uid("sub-"))
        sub.subscribe([(f"{topic}/{filt}", 1)])
        subs.append((filt, want, sub))
    for filt, want, sub in subs:
        got = drain_retained(sub, len(want))
        assert {p.payload.decode() for p in got} == want, filt
        assert all(p.retain for p in got)


@ALL
def test_retain_flag_not_set_on_live_delivery(paho, topic, version):
    """[MQTT-3.3.1-9] (5.0: Retain As Published = 0 [MQTT-3.3.1-12]): a retained PUBLISH
    forwarded to an existing subscription has retain = 0."""
    sub = paho(version)
    sub.subscribe(f"{topic}/r", 1)
    pub = paho(version)
    pub.publish(f"{topic}/r", b"live", 1, retain=True)
    msg = sub.get()
    assert (msg.payload, msg.retain) == (b"live", False)
    # A later subscriber does get it as retained.
    late = paho(version)
    late.subscribe(f"{topic}/r", 1)
    msg = late.get()
    assert (msg.payload, msg.retain) == (b"live", True)


def test_retained_qos_downgraded_to_subscription(raw, topic):
    pub = raw(4)
    pub.connect_ok(uid("pub-"))
    pub.publish(f"{topic}/r", b"q2", qos=2, retain=True)
    sub = raw(4)
    sub.connect_ok(uid("sub-"))
    sub.subscribe([(f"{topic}/r", 0)])
    (p,) = drain_retained(sub, 1)
    assert (p.qos, p.retain, p.payload) == (0, True, b"q2")


def test_resubscribe_resends_retained_v311(raw, topic):
    """[MQTT-3.8.4-3]: re-subscribing replaces the subscription and the retained messages
    matching it are re-sent."""
    pub = raw(4)
    pub.connect_ok(uid("pub-"))
    pub.publish(f"{topic}/r", b"again", qos=1, retain=True)
    sub = raw(4)
    sub.connect_ok(uid("sub-"))
    sub.subscribe([(f"{topic}/r", 1)])
    assert sub.recv_publish().payload == b"again"
    sub.subscribe([(f"{topic}/r", 1)])
    assert sub.recv_publish().payload == b"again"


def test_non_retained_publish_does_not_replace_retained(raw, topic):
    """[MQTT-3.3.1-12]: a PUBLISH with retain = 0 leaves the retained message alone."""
    pub = raw(4)
    pub.connect_ok(uid("pub-"))
    pub.publish(f"{topic}/r", b"retained", qos=1, retain=True)
    pub.publish(f"{topic}/r", b"transient", qos=1, retain=False)
    sub = raw(4)
    sub.connect_ok(uid("sub-"))
    sub.subscribe([(f"{topic}/r", 1)])
    (p,) = drain_retained(sub, 1)
    assert p.payload == b"retained"


def test_v5_retain_as_published(paho, topic):
    """5.0: with Retain As Published the live delivery keeps retain = 1 [MQTT-3.3.1-13]."""
    sub = paho(5)
    sub.subscribe(f"{topic}/r", options=sub_options(1, retainAsPublished=True))
    pub = paho(5)
    pub.publish(f"{topic}/r", b"rap", 1, retain=True)
    msg = sub.get()
    assert (msg.payload, msg.retain) == (b"rap", True)


@pytest.mark.parametrize("handling", [0, 1, 2])
def test_v5_retain_handling(raw, topic, handling):
    """5.0 [MQTT-3.3.1-9..11]: 0 = send retained on every subscribe, 1 = only if the
    subscription is new, 2 = never."""
    pub = raw(5)
    pub.connect_ok(uid("pub-"))
    pub.publish(f"{topic}/r", b"kept", qos=1, retain=True)
    sub = raw(5)
    sub.connect_ok(uid("sub-"))
    opts = 1 | m.retain_handling(handling)
    sub.subscribe([(f"{topic}/r", opts)])
    first = drain_retained(sub, 1 if handling in (0, 1) else 0)
    sub.subscribe([(f"{topic}/r", opts)])
    second = drain_retained(sub, 1 if handling == 0 else 0)
    assert all(p.payload == b"kept" and p.retain for p in first + second)
