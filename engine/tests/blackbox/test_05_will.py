"""Will messages: published on abnormal disconnect, not after DISCONNECT; QoS, retain;
5.0 DISCONNECT with reason 0x04."""

import pytest

import mqttraw as m
from util import VERSION_IDS, WAIT, id_on_shard, uid

ALL = pytest.mark.parametrize("version", [3, 4, 5], ids=VERSION_IDS.get)
V311_V5 = pytest.mark.parametrize("version", [4, 5], ids=VERSION_IDS.get)


def watcher(raw, version, filt, qos=1):
    w = raw(version)
    w.connect_ok(uid("watch-"))
    w.subscribe([(filt, qos)])
    return w


@ALL
def test_will_on_socket_close(raw, topic, version):
    """[MQTT-3.1.2-8]: the will is published when the connection closes without DISCONNECT."""
    w = watcher(raw, version, f"{topic}/will")
    c = raw(version)
    c.connect_ok(uid("dying-"), will=m.Will(f"{topic}/will", b"gone", qos=1))
    c.close()
    p = w.recv_publish(timeout=WAIT)
    assert (p.topic, p.payload, p.qos, p.retain) == (f"{topic}/will", b"gone", 1, False)


@V311_V5
def test_will_on_reset(raw, topic, version):
    """A TCP reset (not a FIN) is also an abnormal disconnect."""
    w = watcher(raw, version, f"{topic}/will")
    c = raw(version)
    c.connect_ok(uid("dying-"), will=m.Will(f"{topic}/will", b"reset"))
    c.abort()
    assert w.recv_publish(timeout=WAIT).payload == b"reset"


@ALL
def test_no_will_after_disconnect(raw, topic, version):
    """[MQTT-3.1.2-10]: DISCONNECT discards the will."""
    w = watcher(raw, version, f"{topic}/#")
    c = raw(version)
    c.connect_ok(id_on_shard("polite-", 0), will=m.Will(f"{topic}/will", b"must not appear"))
    c.send(m.disconnect(version))
    # Once the broker has closed the connection it has processed the DISCONNECT; a marker
    # published then from a client on the same shard follows any will on the same path.
    assert c.wait_closed() == []
    c2 = raw(version)
    c2.connect_ok(id_on_shard("marker-", 0))
    c2.publish(f"{topic}/marker", b"marker", qos=1)
    assert w.recv_publish().payload == b"marker"


@V311_V5
@pytest.mark.parametrize("will_qos", [0, 1, 2])
def test_will_qos(raw, topic, version, will_qos):
    w = watcher(raw, version, f"{topic}/will", qos=2)
    c = raw(version)
    c.connect_ok(uid("dying-"), will=m.Will(f"{topic}/will", b"q", qos=will_qos))
    c.close()
    assert w.recv_publish(timeout=WAIT).qos == will_qos


@ALL
def test_will_retain(raw, topic, version):
    """[MQTT-3.1.2-17]: a will with retain set becomes the retained message."""
    c = raw(version)
    c.connect_ok(uid("dying-"), will=m.Will(f"{topic}/will", b"last words", qos=1, retain=True))
    live = watcher(raw, version, f"{topic}/will")
    c.close()
    live.recv_publish(timeout=WAIT)
    late = raw(version)
    late.connect_ok(uid("late-"))
    late.subscribe([(f"{topic}/will", 1)])
    p = late.recv_publish()
    assert (p.payload, p.retain) == (b"last words", True)


def test_will_on_protocol_error(raw, topic):
    """3.1.1 section 3.1.2.5: the will is published when the server closes the connection
    because of a protocol error."""
    w = watcher(raw, 4, f"{topic}/will")
    c = raw(4)
    c.connect_ok(uid("bad-"), will=m.Will(f"{topic}/will", b"protocol error"))
    c.send(b"\x00\x00")  # reserved packet type 0
    c.wait_closed()
    assert w.recv_publish(timeout=WAIT).payload == b"protocol error"


def test_v5_disconnect_with_will_message(raw, topic):
    """5.0: DISCONNECT with reason 0x04 asks the server to publish the will."""
    w = watcher(raw, 5, f"{topic}/will")
    c = raw(5)
    c.connect_ok(uid("dying-"), will=m.Will(f"{topic}/will", b"asked for"))
    c.send(m.disconnect(5, reason=0x04))
    assert w.recv_publish(timeout=WAIT).payload == b"asked for"


def test_v5_will_properties_forwarded(raw, topic):
    """5.0 (3.1.3.2): will properties (content type, user properties) go with the will."""
    w = watcher(raw, 5, f"{topic}/will")
    c = raw(5)
    props = {0x03: "text/plain", 0x26: [("who", "me")]}
    c.connect_ok(uid("dying-"), will=m.Will(f"{topic}/will", b"props", props=props))
    c.close()
    p = w.recv_publish(timeout=WAIT)
    assert p.props.get(0x03) == "text/plain" and p.props.get(0x26) == [("who", "me")], p.props


def test_will_published_once(raw, topic):
    """The will is published once; reconnecting with the same id publishes nothing more."""
    w = watcher(raw, 4, f"{topic}/will")
    cid = uid("dying-")
    c = raw(4)
    c.connect_ok(cid, will=m.Will(f"{topic}/will", b"once"))
    c.close()
    assert w.recv_publish(timeout=WAIT).payload == b"once"
    # The marker: the same id again, with another will, gone without DISCONNECT: its will is
    # published after anything the first session could still have published.
    again = raw(4)
    again.connect_ok(cid, will=m.Will(f"{topic}/will", b"second"))
    again.close()
    assert w.recv_publish(timeout=WAIT).payload == b"second"
