"""CONNECT / CONNACK: acceptance, session present, client identifiers, protocol levels."""

import pytest

import mqttraw as m
from util import VERSION_IDS, uid

ALL = pytest.mark.parametrize("version", [3, 4, 5], ids=VERSION_IDS.get)
V311_V5 = pytest.mark.parametrize("version", [4, 5], ids=VERSION_IDS.get)


@ALL
def test_connect_accepted_paho(paho, version):
    c = paho(version)
    assert c.connack_info[1] == 0


@pytest.mark.parametrize("version", [3, 4], ids=VERSION_IDS.get)
def test_connack_exact_bytes_v3(raw, version):
    """3.1 / 3.1.1: a clean CONNECT is answered by exactly 20 02 00 00."""
    c = raw(version)
    c.send(m.connect(uid("c-"), version=version))
    assert c.expect(m.CONNACK).raw == b"\x20\x02\x00\x00"
    c.ping()


def test_connack_v5(raw):
    c = raw(5)
    ack = c.connect(uid("c-"))
    assert ack.raw[0] == 0x20 and ack.body[0] == 0x00 and ack.code == 0x00, ack
    c.ping()


def test_connect_with_username_and_password(raw):
    """Anonymous access is allowed; credentials are accepted too."""
    c = raw(4)
    c.connect_ok(uid("c-"), username="user", password=b"secret")
    c.ping()


@V311_V5
def test_session_present_flag(raw, version):
    """[MQTT-3.2.2-1..3] / 5.0 [MQTT-3.2.2-2,3]: session present is 1 only when resuming."""
    cid = uid("sp-")
    props = {m.PROP_SESSION_EXPIRY: 300} if version == 5 else None
    c1 = raw(version)
    assert not c1.connect_ok(cid, clean=False, props=props).session_present
    c1.disconnect()
    c2 = raw(version)
    assert c2.connect_ok(cid, clean=False, props=props).session_present
    c2.disconnect()
    c3 = raw(version)
    assert not c3.connect_ok(cid, clean=True, props=props).session_present
    c3.disconnect()
    c4 = raw(version)
    ack = c4.connect_ok(cid, clean=False, props=props)
    if version == 4:
        # A clean session is discarded at disconnect [MQTT-3.1.2-6].
        assert ack.raw == b"\x20\x02\x00\x00"
    else:
        # 5.0: Clean Start only discards the old session; the new one has an expiry interval.
        assert ack.session_present


def test_empty_client_id_clean_session_accepted_v311(raw):
    """[MQTT-3.1.3-6]: a zero-byte client id with CleanSession=1 is accepted."""
    c = raw(4)
    c.send(m.connect("", clean=True))
    assert c.expect(m.CONNACK).raw == b"\x20\x02\x00\x00"
    c.ping()


def test_empty_client_id_persistent_session_rejected_v311(raw):
    """[MQTT-3.1.3-8]: zero-byte client id with CleanSession=0 -> CONNACK 0x02, then close."""
    c = raw(4)
    c.send(m.connect("", clean=False))
    assert c.expect(m.CONNACK).raw == b"\x20\x02\x00\x02"
    assert c.wait_closed() == []


def test_empty_client_id_gets_assigned_identifier_v5(raw):
    """5.0 [MQTT-3.2.2-16]: an empty client id is answered with an Assigned Client Identifier."""
    c = raw(5)
    ack = c.connect_ok("")
    assigned = ack.props.get(m.PROP_ASSIGNED_CLIENT_ID)
    assert isinstance(assigned, str) and assigned, ack
    c.ping()


def test_assigned_identifiers_are_distinct_v5(raw):
    ids = set()
    for _ in range(5):
        c = raw(5)
        ids.add(c.connect_ok("").props[m.PROP_ASSIGNED_CLIENT_ID])
    assert len(ids) == 5


@pytest.mark.parametrize("level", [6, 2, 0])
def test_unsupported_protocol_level(raw, level):
    """3.1.1 [MQTT-3.1.2-2]: an unsupported protocol level MUST get CONNACK 0x01, then close.
    5.0's [MQTT-3.1.2-2] only says the server MAY send a 5.0 CONNACK 0x84; so 20 02 00 01 is
    the one answer that satisfies both specs (a 5.0-format 20 03 00 84 00 breaks 3.1.1's MUST,
    and a client of an unknown version cannot be assumed to parse 5.0 properties)."""
    c = raw(4)
    c.send(m.connect(uid("c-"), version=level))
    got = c.wait_closed()
    assert [p.raw for p in got] == [b"\x20\x02\x00\x01"], got


def test_wrong_protocol_name(raw):
    """[MQTT-3.1.2-1]: the server MAY disconnect; it must not accept the connection as MQTT."""
    c = raw(4)
    body = m.utf8("MQTX") + bytes([4, 0x02]) + b"\x00\x3c" + m.utf8(uid("c-"))
    c.send(m.packet(m.CONNECT, 0, body))
    got = c.wait_closed()
    assert all(p.type == m.CONNACK and p.code != 0 for p in got), got


@V311_V5
def test_reserved_connect_flag_closes(raw, version):
    """[MQTT-3.1.2-3]: the reserved connect flag must be 0, otherwise the server disconnects."""
    c = raw(version)
    c.send(m.connect(uid("c-"), version=version, reserved_flag=True))
    got = c.wait_closed()
    # 5.0 allows a CONNACK with reason 0x81 (Malformed) before closing; 3.1.1 only a close.
    allowed = [] if version == 4 else [0x81]
    assert all(p.type == m.CONNACK and p.code in allowed for p in got), got


@V311_V5
def test_second_connect_disconnects(raw, version):
    """[MQTT-3.1.0-2]: a second CONNECT is a protocol violation: the server disconnects.
    5.0: it may send DISCONNECT 0x82 (Protocol Error) first."""
    cid = uid("c-")
    c = raw(version)
    c.connect_ok(cid)
    c.send(m.connect(cid, version=version))
    got = c.wait_closed()
    allowed = [] if version == 4 else [0x82]
    assert all(p.type == m.DISCONNECT and p.code in allowed for p in got), got


def test_disconnect_closes_cleanly(raw):
    """After DISCONNECT the server closes the connection [MQTT-3.14.4-1]; the id is reusable."""
    cid = uid("c-")
    c = raw(4)
    c.connect_ok(cid)
    c.send(m.disconnect())
    assert c.wait_closed() == []
    c2 = raw(4)
    c2.connect_ok(cid)
    c2.ping()
