"""SUBSCRIBE / UNSUBSCRIBE: wildcards, $-topics, overlapping subscriptions, SUBACK codes."""

import pytest

import mqttraw as m
from util import VERSION_IDS, id_on_shard, is_mosquitto, uid

ALL = pytest.mark.parametrize("version", [3, 4, 5], ids=VERSION_IDS.get)
V311_V5 = pytest.mark.parametrize("version", [4, 5], ids=VERSION_IDS.get)

# (filter, topic, matches) relative to a unique prefix "P/" (P has no wildcards).
MATCHING = [
    ("a/b/c", "a/b/c", True),
    ("a/b/c", "a/b/c/d", False),
    ("a/b/c", "a/b", False),
    ("a/+/c", "a/b/c", True),
    ("a/+/c", "a//c", True),
    ("a/+/c", "a/b/c/d", False),
    ("a/+/c", "a/c", False),
    ("a/+", "a/b", True),
    ("a/+", "a/", True),
    ("a/+", "a", False),
    ("a/#", "a", True),  # [MQTT-4.7.1-2]: "#" also matches the parent level
    ("a/#", "a/b", True),
    ("a/#", "a/b/c/d", True),
    ("a/#", "ab", False),
    ("+/+", "a/b", True),
    ("+/+", "a/b/c", False),
    ("+/b/#", "a/b", True),
    ("+/b/#", "a/b/c", True),
    ("+/b/#", "a/c/b", False),
    ("A/b", "a/b", False),  # case sensitive
    ("a b/c", "a b/c", True),  # spaces are legal
]


def reference_match(filt: str, topic: str) -> bool:
    """Topic matching as the spec defines it (4.7), for checking the broker against."""
    f, t = filt.split("/"), topic.split("/")
    for i, level in enumerate(f):
        if level == "#":
            return True
        if i >= len(t) or (level != "+" and level != t[i]):
            return False
    return len(f) == len(t)


def test_reference_matcher_agrees_with_table():
    for f, t, matches in MATCHING:
        assert reference_match(f, t) == matches, (f, t)


@V311_V5
def test_wildcard_matching(raw, topic, version):
    """One subscriber connection per filter; every table topic is published once; each
    subscriber receives exactly the topics its filter matches. Then one marker topic per filter
    (its wildcards filled in), so each subscriber's last expected message is a marker, and a
    topic it must not get would have come before it (one publisher, one QoS)."""
    filters = sorted({f for f, _, _ in MATCHING})
    markers = ["/".join("m" if level in ("+", "#") else level for level in f.split("/"))
               for f in filters]
    topics = sorted({t for _, t, _ in MATCHING}) + markers
    subs = {}
    for f in filters:
        c = raw(version)
        c.connect_ok(uid("sub-"))
        assert c.subscribe([(f"{topic}/{f}", 1)]).codes == [1]
        subs[f] = c
    pub = raw(version)
    pub.connect_ok(uid("pub-"))
    for t in topics:
        pub.publish(f"{topic}/{t}", t.encode(), qos=1)
    for f, c in subs.items():
        want = [t for t in topics if reference_match(f, t)]
        assert want[-1] in markers, f"filter {f!r}: a marker comes last"
        got = [c.recv_publish().payload.decode() for _ in want]
        assert got == want, f"filter {f!r}"


def test_hash_alone_matches_everything_but_dollar(raw, topic):
    """'#' matches every topic except those beginning with '$' [MQTT-4.7.2-1]."""
    sub = raw(4)
    sub.connect_ok(uid("sub-"))
    sub.subscribe([("#", 0), ("+/+/+/x", 0)])
    dsub = raw(4)
    dsub.connect_ok(uid("dsub-"))
    dollar = f"$x{uid()}/a/b/x"
    dsub.subscribe([(f"{dollar.split('/')[0]}/#", 0)])
    pub = raw(4)
    pub.connect_ok(uid("pub-"))
    pub.publish(dollar, b"dollar", qos=1)
    pub.publish(f"{topic}/x", b"plain", qos=1)
    # The $-subscriber gets its message; the wildcard subscriber gets only the plain one
    # (it may also see its own unrelated traffic, never a $ topic).
    assert dsub.recv_publish().payload == b"dollar"
    while True:
        p = sub.recv_publish()
        assert not p.topic.startswith("$"), p
        if p.payload == b"plain":
            break


def test_sys_topics_not_matched_by_leading_wildcards(raw, topic):
    """[MQTT-4.7.2-1]: '#' and '+/...' never match $SYS topics (published every second here)."""
    watcher = raw(4)
    watcher.connect_ok(uid("w-"))
    ack = watcher.subscribe([("$SYS/#", 0)])
    assert ack.codes == [0]
    sub = raw(4)
    sub.connect_ok(uid("sub-"))
    sub.subscribe([("#", 0), ("+/broker/#", 0), ("+/+/+", 0)])
    # Wait for $SYS traffic to exist, then make sure the wildcard subscriber saw none of it:
    # a marker published afterwards by a client on shard 0 (shardmq's $SYS publisher) takes
    # the same path as any $SYS message would have, so it comes after them.
    p = watcher.recv_publish(timeout=15)
    assert p.topic.startswith("$SYS/")
    watcher.recv_publish(timeout=15)
    marker = raw(4)
    marker.connect_ok(id_on_shard("marker-", 0))
    marker.publish(f"{topic}/marker", b"marker", qos=0)
    while (q := sub.recv_publish(timeout=15)).payload != b"marker":
        assert not q.topic.startswith("$"), q


@ALL
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_suback_grants_requested_qos(paho, topic, version, qos):
    sub = paho(version)
    assert sub.subscribe(f"{topic}/x", qos) == [qos]


@V311_V5
def test_suback_one_code_per_filter(raw, topic, version):
    """[MQTT-3.8.4-5]/[MQTT-3.9.3-1]: one return code per filter, in order."""
    c = raw(version)
    c.connect_ok(uid("c-"))
    ack = c.subscribe([(f"{topic}/a", 2), (f"{topic}/b", 0), (f"{topic}/+", 1), (f"{topic}/#", 2)])
    assert ack.codes == [2, 0, 1, 2], ack
    if version == 4:
        assert ack.raw == b"\x90\x06" + ack.raw[2:4] + b"\x02\x00\x01\x02"


@V311_V5
def test_invalid_filter_suback_failure_or_disconnect(raw, topic, version):
    """'#' not last is an invalid filter [MQTT-4.7.1-2]. The spec allows either a failure code
    for that filter (3.1.1: 0x80; 5.0: 0x80 or 0x8F) with the others granted, or treating the
    packet as malformed and closing (5.0: optionally after DISCONNECT 0x81/0x82/0x8F)."""
    c = raw(version)
    c.connect_ok(uid("c-"))
    filters = [(f"{topic}/a", 0), (f"{topic}/b", 1), (f"{topic}/#/b", 1), (f"{topic}/c", 2)]
    c.send(m.subscribe(7, filters, version))
    try:
        p = c.recv()
    except m.ConnectionClosed:
        return
    if p.type == m.SUBACK:
        fail = [0x80] if version == 4 else [0x80, 0x8F]
        assert p.pid == 7 and p.codes[:2] == [0, 1] and p.codes[3] == 2, p
        assert p.codes[2] in fail, p
        c.ping()
    else:
        assert version == 5 and p.type == m.DISCONNECT and p.code in (0x81, 0x82, 0x8F), p
        c.wait_closed()


@V311_V5
@pytest.mark.parametrize("bad", ["a/b#", "a/+b/c", "#/a", "a/b+"])
def test_other_invalid_filters(raw, topic, version, bad):
    """Wildcards must occupy a whole level [MQTT-4.7.1-2,3]: failure code or close."""
    c = raw(version)
    c.connect_ok(uid("c-"))
    c.send(m.subscribe(9, [(f"{topic}/{bad}", 0)], version))
    try:
        p = c.recv()
    except m.ConnectionClosed:
        return
    if p.type == m.SUBACK:
        assert p.codes == [0x80] or (version == 5 and p.codes == [0x8F]), p
    else:
        assert version == 5 and p.type == m.DISCONNECT and p.code in (0x81, 0x82, 0x8F), p
        c.wait_closed()


def test_overlapping_subscriptions_v311(raw, topic):
    """[MQTT-3.3.5-1]: overlapping subscriptions deliver the message respecting the maximum QoS
    of all matching subscriptions. shardmq delivers exactly one copy at that QoS.

    Mosquitto 2.0 deviates: it delivers one copy at the QoS of the first subscription it
    finds, which can be lower than the maximum; there we only check that exactly one copy
    arrives (see README)."""
    sub = raw(4)
    sub.connect_ok(uid("sub-"))
    sub.subscribe([(f"{topic}/#", 1), (f"{topic}/+", 2), (f"{topic}/x", 0)])
    pub = raw(4)
    pub.connect_ok(uid("pub-"))
    pub.publish(f"{topic}/x", b"one", qos=2)
    first = sub.recv_publish()
    assert first.payload == b"one"
    if not is_mosquitto():
        assert first.qos == 2, first
    # A second copy would come before the publisher's next message (which matches too).
    pub.publish(f"{topic}/y", b"marker", qos=2)
    nxt = sub.recv_publish()
    assert nxt.payload == b"marker", f"more than one copy: {first!r} then {nxt!r}"


def test_overlapping_subscriptions_v5(raw, topic):
    """5.0 [MQTT-3.3.4-2]: the maximum QoS of the matching subscriptions is respected; further
    copies (one per additional matching subscription, each at its own QoS) are allowed."""
    sub = raw(5)
    sub.connect_ok(uid("sub-"))
    sub.subscribe([(f"{topic}/#", 1), (f"{topic}/+", 2), (f"{topic}/x", 0)])
    pub = raw(5)
    pub.connect_ok(uid("pub-"))
    pub.publish(f"{topic}/x", b"one", qos=2)
    # Every copy comes before the publisher's next message (which matches too).
    pub.publish(f"{topic}/y", b"marker", qos=2)
    copies = []
    while (p := sub.recv_publish()).payload != b"marker":
        copies.append(p)
    assert 1 <= len(copies) <= 3 and all(c.payload == b"one" for c in copies), copies
    assert max(c.qos for c in copies) == 2, copies


@ALL
def test_unsubscribe_stops_delivery(paho, topic, version):
    sub = paho(version)
    sub.subscribe(f"{topic}/a", 1)
    sub.subscribe(f"{topic}/marker", 1)
    pub = paho(version)
    pub.publish(f"{topic}/a", b"before", 1)
    assert sub.get().payload == b"before"
    sub.unsubscribe(f"{topic}/a")
    pub.publish(f"{topic}/a", b"after", 1)
    pub.publish(f"{topic}/marker", b"marker", 1)
    assert sub.get().payload == b"marker"


@V311_V5
def test_unsuback(raw, topic, version):
    """UNSUBACK carries the packet id [MQTT-3.10.4-4]; also for a filter never subscribed."""
    c = raw(version)
    c.connect_ok(uid("c-"))
    c.subscribe([(f"{topic}/a", 1)])
    ack = c.unsubscribe([f"{topic}/a", f"{topic}/never"])
    if version == 4:
        assert ack.raw == b"\xb0\x02" + ack.raw[2:4]
    else:
        # 5.0: 0x00 Success / 0x11 No subscription existed, one per filter.
        assert ack.codes[0] == 0x00 and ack.codes[1] in (0x00, 0x11), ack


@ALL
def test_resubscribe_replaces_qos(paho, topic, version):
    """[MQTT-3.8.4-3]: a SUBSCRIBE with an existing filter replaces it (one copy, new QoS)."""
    sub = paho(version)
    sub.subscribe(f"{topic}/a", 2)
    sub.subscribe(f"{topic}/a", 1)
    pub = paho(version)
    pub.publish(f"{topic}/a", b"x", 2)
    msg = sub.get()
    assert msg.qos == 1
    # One copy: a marker published next on the same topic is the next message.
    pub.publish(f"{topic}/a", b"marker", 2)
    assert sub.get().payload == b"marker"
