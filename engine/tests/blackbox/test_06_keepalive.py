"""Keep alive: PINGREQ/PINGRESP, a silent client is disconnected (and its will published),
a pinging client is not; 5.0 Server Keep Alive when the broker caps the interval.

Timing is only ever asserted as a generous upper bound (the machine is noisy): the spec says
one and a half keep alive periods [MQTT-3.1.2-24]; we allow several seconds more."""

import time

import pytest

import mqttraw as m
from util import VERSION_IDS, is_mosquitto, uid

ALL = pytest.mark.parametrize("version", [3, 4, 5], ids=VERSION_IDS.get)
V311_V5 = pytest.mark.parametrize("version", [4, 5], ids=VERSION_IDS.get)

# Keep alive 1 s: the broker must drop a silent client after 1.5 s; we wait up to this long.
SILENT_DEADLINE_SECS = 12.0  # Mosquitto 2.0 takes ~6 s (its keep alive check is coarse)


@ALL
def test_pingreq_pingresp(raw, version):
    """[MQTT-3.12.4-1]: PINGREQ is answered by PINGRESP (exactly d0 00)."""
    c = raw(version)
    c.connect_ok(uid("ping-"))
    for _ in range(3):
        c.send(m.pingreq())
        assert c.expect(m.PINGRESP).raw == b"\xd0\x00"


@ALL
def test_silent_client_disconnected_and_will_published(raw, topic, version):
    """[MQTT-3.1.2-24]: no packet within 1.5 x keep alive -> the server disconnects the client,
    which is an abnormal disconnect: the will is published."""
    w = raw(version)
    w.connect_ok(uid("watch-"))
    w.subscribe([(f"{topic}/will", 1)])
    c = raw(version)
    c.connect_ok(uid("silent-"), keepalive=1, will=m.Will(f"{topic}/will", b"timed out", qos=1))
    got = c.wait_closed(timeout=SILENT_DEADLINE_SECS)
    # 5.0: the server may send DISCONNECT 0x8D (Keep Alive timeout) first.
    assert all(p.type == m.DISCONNECT and p.code == 0x8D for p in got), got
    p = w.recv_publish(timeout=SILENT_DEADLINE_SECS)
    assert p.payload == b"timed out"


def busy_until_marker_closed(marker: m.RawClient, activity) -> None:
    """Runs `activity` every 0.3 s until the broker closes `marker`, a silent connection
    opened just after the one under test with the same (or a shorter) keep alive: once the
    broker has dropped it, the one under test would have been dropped too if its activity
    did not count."""
    deadline = time.monotonic() + SILENT_DEADLINE_SECS
    while marker.is_open_after(0.3):
        assert time.monotonic() < deadline, "the silent marker connection was never closed"
        activity()


@V311_V5
def test_pinging_client_stays_connected(raw, topic, version):
    """A client that sends PINGREQ well within its keep alive is never disconnected."""
    c = raw(version)
    c.connect_ok(uid("alive-"), keepalive=2)
    marker = raw(version)
    marker.connect_ok(uid("silent-"), keepalive=2)
    busy_until_marker_closed(marker, c.ping)
    c.ping()


@V311_V5
def test_any_packet_counts_as_activity(raw, topic, version):
    """Keep alive is reset by any control packet, not just PINGREQ (3.1.2.10)."""
    c = raw(version)
    c.connect_ok(uid("busy-"), keepalive=2)
    marker = raw(version)
    marker.connect_ok(uid("silent-"), keepalive=2)
    busy_until_marker_closed(marker, lambda: c.publish(f"{topic}/busy", b"x", qos=1))
    c.ping()


def test_keepalive_zero_never_times_out(raw):
    """Keep alive 0 turns the mechanism off (3.1.2.10); the connection survives idling past
    the moment a keep alive 1 connection opened after it is dropped."""
    c = raw(4)
    c.connect_ok(uid("zero-"), keepalive=0)
    marker = raw(4)
    marker.connect_ok(uid("silent-"), keepalive=1)
    marker.wait_closed(timeout=SILENT_DEADLINE_SECS)
    c.ping()


@pytest.mark.broker_args("--keepalive-max-secs", "10")
def test_v5_server_keep_alive(raw):
    """5.0 [MQTT-3.2.2-21]: a broker that caps keep alive tells the client with Server Keep
    Alive in CONNACK, and the client must use that value."""
    c = raw(5)
    ack = c.connect_ok(uid("capped-"), keepalive=100)
    assert ack.props.get(m.PROP_SERVER_KEEP_ALIVE) == 10, ack
    c.ping()


@pytest.mark.skipif(is_mosquitto(), reason="Mosquitto's max_keepalive must be >= 10 s")
@pytest.mark.broker_args("--keepalive-max-secs", "1")
def test_v5_server_keep_alive_enforced(raw):
    """The capped keep alive is the one enforced: a silent client goes after ~1.5 s."""
    c = raw(5)
    ack = c.connect_ok(uid("capped-"), keepalive=100)
    assert ack.props.get(m.PROP_SERVER_KEEP_ALIVE) == 1, ack
    got = c.wait_closed(timeout=SILENT_DEADLINE_SECS)
    assert all(p.type == m.DISCONNECT and p.code == 0x8D for p in got), got
