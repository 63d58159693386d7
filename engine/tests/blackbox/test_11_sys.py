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
]
# Topics Mosquitto 2.0 does not publish (it has $SYS/broker/publish/messages/dropped, only
# published once something was dropped).
MOSQUITTO_LACKS = {"$SYS/broker/messages/dropped"}


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
    c = paho(4)
    c.subscribe(sys_topic, 0)
    value = next_value(c, sys_topic)
    if sys_topic.endswith("/version"):
        assert BROKER.encode() in value.lower(), value
    elif sys_topic.endswith("clients/connected"):
        # The first value may be a retained one from before this client connected.
        wait_until_at_least(c, sys_topic, 1, first=integer(value))
    else:
        assert integer(value) >= 0, value


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


def test_sys_message_counters_count(paho, topic):
    c = paho(4)
    c.subscribe("$SYS/broker/messages/received", 0)
    c.subscribe("$SYS/broker/messages/sent", 0)
    received = integer(next_value(c, "$SYS/broker/messages/received"))
    sent = integer(next_value(c, "$SYS/broker/messages/sent"))
    pub = paho(4)
    pub.subscribe(f"{topic}/count", 1)
    for i in range(10):
        pub.publish(f"{topic}/count", b"%d" % i, 1)
    pub.get_n(10)
    wait_until_at_least(c, "$SYS/broker/messages/received", received + 10)
    wait_until_at_least(c, "$SYS/broker/messages/sent", sent + 10)


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
