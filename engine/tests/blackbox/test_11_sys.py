"""$SYS topics: the broker publishes its version, uptime, connected clients and message
counters (retained or every --sys-interval-secs, which the fixture sets to 1 s; Mosquitto:
sys_interval 1). We wait up to 15 s for each."""

import re
import time

import pytest

from util import BROKER, is_mosquitto

SYS_WAIT_SECS = 15.0

TOPICS = [
    "$SYS/broker/version",
    "$SYS/broker/uptime",
    "$SYS/broker/clients/connected",
    "$SYS/broker/messages/received",
    "$SYS/broker/messages/sent",
    "$SYS/broker/messages/dropped",
    "$SYS/broker/load/bytes/received",
    "$SYS/broker/load/bytes/sent",
]
# Topics Mosquitto 2.0 does not publish (it has $SYS/broker/publish/messages/dropped, only
# published once something was dropped).
MOSQUITTO_LACKS = {"$SYS/broker/messages/dropped"}
# Mosquitto's byte totals are `$SYS/broker/bytes/*` (its `load/bytes/*/1min`... are rates).
MOSQUITTO_NAMES = {
    "$SYS/broker/load/bytes/received": "$SYS/broker/bytes/received",
    "$SYS/broker/load/bytes/sent": "$SYS/broker/bytes/sent",
}


def sys_name(sys_topic: str) -> str:
    """The broker under test's name for `sys_topic`."""
    return MOSQUITTO_NAMES.get(sys_topic, sys_topic) if is_mosquitto() else sys_topic


def integer(payload: bytes) -> int:
    found = re.search(rb"\d+", payload)
    assert found, f"no integer in {payload!r}"
    return int(found.group())


def next_value(client, sys_topic: str) -> bytes:
    deadline = time.monotonic() + SYS_WAIT_SECS
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"{sys_topic} not published within {SYS_WAIT_SECS} s"
        msg = client.get(timeout=remaining)
        if msg.topic == sys_topic:
            return msg.payload


@pytest.mark.parametrize("sys_topic", TOPICS, ids=lambda t: t.split("broker/")[1])
def test_sys_topic_published(paho, sys_topic):
    if is_mosquitto() and sys_topic in MOSQUITTO_LACKS:
        pytest.skip(f"Mosquitto does not publish {sys_topic}")
    sys_topic = sys_name(sys_topic)
    c = paho(4)
    c.subscribe(sys_topic, 0)
    value = next_value(c, sys_topic)
    if sys_topic.endswith("/version"):
        assert BROKER.encode() in value.lower(), value
    elif sys_topic.endswith("clients/connected"):
        # The first value may be a retained one from before this client connected.
        wait_until_at_least(c, sys_topic, 1, first=integer(value))
    else:
        # A number (that the counters move is checked by test_sys_counter_moves_with_traffic).
        integer(value)


def test_sys_uptime_advances(paho):
    c = paho(5)
    c.subscribe("$SYS/broker/uptime", 0)
    first = integer(next_value(c, "$SYS/broker/uptime"))
    deadline = time.monotonic() + SYS_WAIT_SECS
    while time.monotonic() < deadline:
        if integer(next_value(c, "$SYS/broker/uptime")) > first:
            return
    raise AssertionError(f"uptime stuck at {first}")


def wait_until_at_least(c, sys_topic: str, target: int, first: int | None = None) -> None:
    if first is not None and first >= target:
        return
    deadline = time.monotonic() + SYS_WAIT_SECS
    last = first
    while time.monotonic() < deadline:
        last = integer(next_value(c, sys_topic))
        if last >= target:
            return
    raise AssertionError(f"{sys_topic} stayed at {last}, expected >= {target}")


def test_sys_clients_connected_counts_clients(paho):
    c = paho(4)
    c.subscribe("$SYS/broker/clients/connected", 0)
    base = integer(next_value(c, "$SYS/broker/clients/connected"))
    for _ in range(5):
        paho(4)
    wait_until_at_least(c, "$SYS/broker/clients/connected", base + 5)


# Known traffic for the counters: TRAFFIC_MESSAGES PUBLISHes of TRAFFIC_PAYLOAD_BYTES each,
# received by the broker and sent back to the publisher (subscribed to its own topic). Large
# enough that the $SYS publications to the watching client (a few per second) cannot account
# for it within SYS_WAIT_SECS.
TRAFFIC_MESSAGES = 100
TRAFFIC_PAYLOAD_BYTES = 1000


@pytest.mark.parametrize("sys_topic,at_least", [
    ("$SYS/broker/messages/received", TRAFFIC_MESSAGES),
    ("$SYS/broker/messages/sent", TRAFFIC_MESSAGES),
    ("$SYS/broker/load/bytes/received", TRAFFIC_MESSAGES * TRAFFIC_PAYLOAD_BYTES),
    ("$SYS/broker/load/bytes/sent", TRAFFIC_MESSAGES * TRAFFIC_PAYLOAD_BYTES),
], ids=lambda x: x.split("broker/")[1] if isinstance(x, str) else "")
def test_sys_counter_moves_with_traffic(paho, topic, sys_topic, at_least):
    """A counter read before known traffic is, in a later publication, higher by at least
    that traffic (it is why `load/bytes/*` staying 0 would now fail)."""
    sys_topic = sys_name(sys_topic)
    c = paho(4)
    c.subscribe(sys_topic, 0)
    next_value(c, sys_topic)  # possibly the retained value, from before this test
    before = integer(next_value(c, sys_topic))
    pub = paho(4)
    pub.subscribe(f"{topic}/count", 1)
    payload = b"x" * TRAFFIC_PAYLOAD_BYTES
    for _ in range(TRAFFIC_MESSAGES):
        pub.publish(f"{topic}/count", payload, 1)
    pub.get_n(TRAFFIC_MESSAGES)
    wait_until_at_least(c, sys_topic, before + at_least)


def test_sys_via_v5_and_wildcard(paho):
    """$SYS/# delivers several broker topics to a 5.0 client too."""
    c = paho(5)
    c.subscribe("$SYS/broker/#", 0)
    seen = set()
    deadline = time.monotonic() + SYS_WAIT_SECS
    wanted = {"$SYS/broker/version", "$SYS/broker/uptime"}
    while not wanted <= seen and time.monotonic() < deadline:
        seen.add(c.get(timeout=max(0.1, deadline - time.monotonic())).topic)
    assert wanted <= seen, seen
    assert all(t.startswith("$SYS/broker/") for t in seen)
