"""PUBLISH at QoS 0/1/2 in both directions, QoS downgrade, exact acknowledgement bytes,
exactly-once for QoS 2, ordering, payload sizes, 5.0 properties and subscription options."""

import pytest

import mqttraw as m
from util import VERSION_IDS, sub_options, uid

ALL = pytest.mark.parametrize("version", [3, 4, 5], ids=VERSION_IDS.get)
V311_V5 = pytest.mark.parametrize("version", [4, 5], ids=VERSION_IDS.get)


@ALL
@pytest.mark.parametrize("pub_qos", [0, 1, 2], ids=lambda q: f"pub{q}")
@pytest.mark.parametrize("sub_qos", [0, 1, 2], ids=lambda q: f"sub{q}")
def test_qos_matrix(paho, topic, version, pub_qos, sub_qos):
    """Delivered QoS is min(publish QoS, subscription QoS) [MQTT-3.8.4-6]."""
    sub = paho(version)
    sub.subscribe(f"{topic}/q", sub_qos)
    pub = paho(version)
    pub.publish(f"{topic}/q", b"payload-%d" % pub_qos, pub_qos)
    msg = sub.get()
    assert msg.topic == f"{topic}/q"
    assert msg.payload == b"payload-%d" % pub_qos
    assert msg.qos == min(pub_qos, sub_qos)
    assert not msg.retain
    # Exactly once: a marker published next on the same topic is the next message.
    pub.publish(f"{topic}/q", b"marker", pub_qos)
    assert sub.get().payload == b"marker"


@pytest.mark.parametrize("pub_version,sub_version", [(5, 4), (4, 5), (3, 5), (5, 3)],
                         ids=lambda v: VERSION_IDS[v])
def test_cross_version_delivery(paho, topic, pub_version, sub_version):
    sub = paho(sub_version)
    sub.subscribe(f"{topic}/x", 2)
    pub = paho(pub_version)
    pub.publish(f"{topic}/x", b"across", 1)
    msg = sub.get()
    assert (msg.payload, msg.qos) == (b"across", 1)


def test_qos1_puback_exact_bytes_v311(raw, topic):
    c = raw(4)
    c.connect_ok(uid("c-"))
    c.send(m.publish(f"{topic}/a", b"x", qos=1, pid=0x1234))
    assert c.expect(m.PUBACK).raw == b"\x40\x02\x12\x34"


def test_qos2_flow_exact_bytes_v311(raw, topic):
    """PUBLISH -> PUBREC; PUBREL -> PUBCOMP, all carrying the packet id [MQTT-4.3.3-2]."""
    c = raw(4)
    c.connect_ok(uid("c-"))
    c.send(m.publish(f"{topic}/a", b"x", qos=2, pid=0xBEEF))
    assert c.expect(m.PUBREC).raw == b"\x50\x02\xbe\xef"
    c.send(m.pubrel(0xBEEF))
    assert c.expect(m.PUBCOMP).raw == b"\x70\x02\xbe\xef"


def test_qos_acks_v5(raw, topic):
    """5.0 acks may carry a reason code: 0x00 Success or 0x10 No matching subscribers."""
    c = raw(5)
    c.connect_ok(uid("c-"))
    c.send(m.publish(f"{topic}/a", b"x", qos=1, pid=11, version=5))
    ack = c.expect(m.PUBACK)
    assert ack.pid == 11 and ack.code in (0x00, 0x10), ack
    c.send(m.publish(f"{topic}/a", b"x", qos=2, pid=12, version=5))
    rec = c.expect(m.PUBREC)
    assert rec.pid == 12 and rec.code in (0x00, 0x10), rec
    c.send(m.pubrel(12, 5))
    comp = c.expect(m.PUBCOMP)
    assert comp.pid == 12 and comp.code == 0x00, comp


@V311_V5
def test_outgoing_qos2_flow(raw, topic, version):
    """Broker -> subscriber QoS 2: PUBLISH (pid != 0), PUBREC, PUBREL (flags 0x2), PUBCOMP."""
    sub = raw(version)
    sub.connect_ok(uid("sub-"))
    sub.subscribe([(f"{topic}/a", 2)])
    pub = raw(version)
    pub.connect_ok(uid("pub-"))
    pub.publish(f"{topic}/a", b"two", qos=2)
    p = sub.expect(m.PUBLISH)
    assert (p.qos, p.payload, p.dup, p.retain) == (2, b"two", False, False) and p.pid != 0, p
    sub.send(m.pubrec(p.pid, version))
    rel = sub.expect(m.PUBREL)
    assert rel.pid == p.pid and rel.flags == 0x02, rel
    if version == 4:
        assert rel.raw == b"\x62\x02" + p.pid.to_bytes(2, "big")
    sub.send(m.pubcomp(p.pid, version))
    sub.expect_nothing_before_pingresp()


@V311_V5
def test_qos2_duplicate_publish_delivered_once(raw, topic, version):
    """A QoS 2 PUBLISH re-sent with DUP before PUBREL is delivered once [MQTT-4.3.3-2]."""
    sub = raw(version)
    sub.connect_ok(uid("sub-"))
    sub.subscribe([(f"{topic}/a", 2)])
    pub = raw(version)
    pub.connect_ok(uid("pub-"))
    pub.send(m.publish(f"{topic}/a", b"once", qos=2, pid=5, version=version))
    assert pub.expect(m.PUBREC).pid == 5
    pub.send(m.publish(f"{topic}/a", b"once", qos=2, pid=5, dup=True, version=version))
    assert pub.expect(m.PUBREC).pid == 5
    pub.send(m.pubrel(5, version))
    assert pub.expect(m.PUBCOMP).pid == 5
    assert sub.recv_publish().payload == b"once"
    # A second copy would come before the next message of the same publisher and topic.
    pub.publish(f"{topic}/a", b"marker", qos=1)
    assert sub.recv_publish().payload == b"marker"


@V311_V5
def test_packet_id_reusable_after_flow(raw, topic, version):
    """After PUBCOMP the id is free: the same id again is a new message (section 2.3.1)."""
    sub = raw(version)
    sub.connect_ok(uid("sub-"))
    sub.subscribe([(f"{topic}/a", 2)])
    pub = raw(version)
    pub.connect_ok(uid("pub-"))
    for payload in (b"first", b"second"):
        pub.send(m.publish(f"{topic}/a", payload, qos=2, pid=9, version=version))
        assert pub.expect(m.PUBREC).pid == 9
        pub.send(m.pubrel(9, version))
        assert pub.expect(m.PUBCOMP).pid == 9
    assert [sub.recv_publish().payload for _ in range(2)] == [b"first", b"second"]


@ALL
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_order_preserved(paho, topic, version, qos):
    """Messages from one publisher on one topic arrive in publish order [MQTT-4.6.0-6]
    (QoS 0 as well: nothing is lost on an idle loopback broker)."""
    sub = paho(version)
    sub.subscribe(f"{topic}/o", qos)
    pub = paho(version)
    infos = [pub.client.publish(f"{topic}/o", b"%d" % i, qos) for i in range(200)]
    for info in infos:
        info.wait_for_publish(10)
    got = [int(msg.payload) for msg in sub.get_n(200)]
    assert got == list(range(200))


@V311_V5
@pytest.mark.parametrize("size", [0, 1, 127, 128, 16383, 16384, 200_000])
def test_payload_sizes(raw, topic, version, size):
    """Payloads around the remaining-length encoding boundaries arrive byte-exact."""
    sub = raw(version)
    sub.connect_ok(uid("sub-"))
    sub.subscribe([(f"{topic}/p", 1)])
    pub = raw(version)
    pub.connect_ok(uid("pub-"))
    payload = bytes((i * 7) % 256 for i in range(size))
    pub.publish(f"{topic}/p", payload, qos=1)
    p = sub.recv_publish()
    assert p.payload == payload and len(p.payload) == size


def test_long_topic(raw, topic):
    """A ~640-byte, 28-level topic name works both ways (within shardmq's default limits of
    32 levels and 1024 bytes)."""
    long_topic = topic + "/" + "/".join("segment-%02d-abcdefghijklmn" % i for i in range(25))
    assert len(long_topic.split("/")) <= 32 and 600 < len(long_topic) < 1024
    sub = raw(4)
    sub.connect_ok(uid("sub-"))
    sub.subscribe([(long_topic, 1), (topic + "/#", 0)])
    pub = raw(4)
    pub.connect_ok(uid("pub-"))
    pub.publish(long_topic, b"deep", qos=1)
    got = sub.recv_publish()
    assert (got.topic, got.payload) == (long_topic, b"deep")


def test_utf8_topic(paho, topic):
    sub = paho(4)
    name = f"{topic}/température/日本/🙂"
    sub.subscribe(f"{topic}/+/日本/#", 1)
    pub = paho(4)
    pub.publish(name, "ünïcödé".encode(), 1)
    msg = sub.get()
    assert msg.topic == name and msg.payload.decode() == "ünïcödé"


def test_v5_properties_forwarded(raw, topic):
    """5.0 [MQTT-3.3.2-15..20]: payload format, content type, response topic, correlation data
    and user properties are forwarded unchanged (user property order preserved)."""
    sub = raw(5)
    sub.connect_ok(uid("sub-"))
    sub.subscribe([(f"{topic}/p", 1)])
    pub = raw(5)
    pub.connect_ok(uid("pub-"))
    props = {
        0x01: 1,
        0x03: "text/plain",
        0x08: f"{topic}/reply",
        0x09: b"\x00\x01corr",
        0x26: [("k1", "v1"), ("k2", "v2"), ("k1", "v3")],
    }
    pub.publish(f"{topic}/p", b"with props", qos=1, props=props)
    p = sub.recv_publish()
    assert p.payload == b"with props"
    for key, value in props.items():
        assert p.props.get(key) == value, (hex(key), p.props)


def test_v5_message_expiry_forwarded(raw, topic):
    """5.0 [MQTT-3.3.2-6]: the forwarded Message Expiry Interval is the remaining lifetime."""
    sub = raw(5)
    sub.connect_ok(uid("sub-"))
    sub.subscribe([(f"{topic}/e", 1)])
    pub = raw(5)
    pub.connect_ok(uid("pub-"))
    pub.publish(f"{topic}/e", b"x", qos=1, props={0x02: 100})
    p = sub.recv_publish()
    assert 90 <= p.props.get(0x02, -1) <= 100, p.props


def test_v5_no_local(paho, topic):
    """5.0 [MQTT-3.8.3-3]: with No Local, the client's own publications are not sent back."""
    c = paho(5)
    c.subscribe(f"{topic}/nl", options=sub_options(1, noLocal=True))
    c.subscribe(f"{topic}/marker", 1)
    c.publish(f"{topic}/nl", b"mine", 1)
    # Its own marker, after "mine": "mine", if sent back, would come before it.
    c.publish(f"{topic}/marker", b"own marker", 1)
    other = paho(5)
    other.publish(f"{topic}/nl", b"theirs", 1)
    other.publish(f"{topic}/marker", b"marker", 1)
    payloads = [msg.payload for msg in c.get_n(3)]
    assert sorted(payloads) == [b"marker", b"own marker", b"theirs"], payloads


def test_v311_publisher_receives_own_message(paho, topic):
    """Without No Local (3.1.1 has none), a subscriber gets its own publications."""
    c = paho(4)
    c.subscribe(f"{topic}/self", 1)
    c.publish(f"{topic}/self", b"echo", 1)
    assert c.get().payload == b"echo"


def test_v5_subscription_identifier(raw, topic):
    """5.0 [MQTT-3.3.4-3]: the Subscription Identifier of the matching subscription is sent."""
    sub = raw(5)
    ack = sub.connect_ok(uid("sub-"))
    if ack.props.get(0x29, 1) == 0:
        pytest.skip("broker does not support subscription identifiers (0x29 = 0)")
    sub.subscribe([(f"{topic}/s/+", 1)], props={0x0B: 42})
    pub = raw(5)
    pub.connect_ok(uid("pub-"))
    pub.publish(f"{topic}/s/x", b"x", qos=1)
    p = sub.recv_publish()
    assert p.props.get(0x0B) == [42], p.props
