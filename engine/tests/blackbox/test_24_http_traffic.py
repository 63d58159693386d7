"""The traffic series of `/metrics` and `$SYS` (PUBLISH packets and bytes sent by QoS, messages
dropped by reason) moving by exactly the traffic a test causes, and `connected_since` /
`disconnected_at` in the admin API's client records. shardmq only. Every wait is for a marker
or a value to appear, never a sleep."""

from __future__ import annotations

import math
import time
from datetime import datetime

import pytest
from paho.mqtt.packettypes import PacketTypes

from test_19_http import _start, clients, http_broker  # noqa: F401 (fixtures)
from util import BROKER, WAIT, PahoClient, id_on_shard, props, uid

pytestmark = pytest.mark.skipif(BROKER != "shardmq", reason="shardmq's own HTTP API")


def _varint_len(n: int) -> int:
    return 1 + (n >= 128) + (n >= 16_384) + (n >= 2_097_152)


def _v5_publish_len(topic: str, payload: bytes, qos: int) -> int:
    """Bytes of a 5.0 PUBLISH with no properties: fixed header, topic, packet id, property
    length (0), payload."""
    remaining = 2 + len(topic.encode()) + (2 if qos else 0) + 1 + len(payload)
    return 1 + _varint_len(remaining) + remaining


def _by(running, name: str, label: str) -> dict:
    """`name`'s samples summed over shards, by the value of `label`."""
    out: dict = {}
    for s in running.metrics():
        if s.name == name:
            out[s.labels[label]] = out.get(s.labels[label], 0) + s.value
    return out


def test_sent_by_qos_moves_by_exactly_the_packets_and_bytes_sent(http_broker, clients):
    prefix = f"q/{uid()}"
    sub = clients(5, client_id=id_on_shard("qsub-", 0))
    pub = clients(5, client_id=id_on_shard("qpub-", 1))
    sub.subscribe(f"{prefix}/#", 2)
    before_n = _by(http_broker, "shardmq_messages_sent_total", "qos")
    before_b = _by(http_broker, "shardmq_publish_bytes_sent_total", "qos")
    assert set(before_n) == {"0", "1", "2"} and set(before_b) == {"0", "1", "2"}
    sent = {0: [], 1: [], 2: []}
    plan = [(0, 10), (1, 200), (2, 3000), (0, 130), (1, 1), (1, 20_000), (2, 5)]
    for i, (qos, size) in enumerate(plan):
        topic, payload = f"{prefix}/{qos}/{i}", bytes([65 + i]) * size
        pub.publish(topic, payload, qos=qos)
        sent[qos].append(_v5_publish_len(topic, payload, qos))
    got = sub.get_n(len(plan))
    assert sorted(m.topic for m in got) == sorted(f"{prefix}/{q}/{i}" for i, (q, _) in enumerate(plan))
    after_n = _by(http_broker, "shardmq_messages_sent_total", "qos")
    after_b = _by(http_broker, "shardmq_publish_bytes_sent_total", "qos")
    for qos in (0, 1, 2):
        q = str(qos)
        assert after_n[q] - before_n[q] == len(sent[qos]), (qos, before_n, after_n)
        assert after_b[q] - before_b[q] == sum(sent[qos]), (qos, before_b, after_b)
    # The same totals in $SYS (published every second by shard 0; retained).
    watcher = clients(4)
    watcher.subscribe("$SYS/broker/messages/sent/qos/2", 0)
    deadline = time.monotonic() + WAIT
    while True:
        m = watcher.get()
        if int(m.payload) == after_n["2"]:
            break
        assert time.monotonic() < deadline, m.payload


def test_drops_are_counted_by_reason(http_broker, clients):
    prefix = f"d/{uid()}"
    dropped = lambda: _by(http_broker, "shardmq_messages_dropped_total", "reason")  # noqa: E731
    before = dropped()
    for reason in ["slow_consumer", "queue_full_oldest", "queue_full_newest", "expired",
                   "too_large", "acl_denied", "log_full", "retained_full", "no_subscribers"]:
        assert reason in before, reason
    # Too large for the client's Maximum Packet Size [MQTT-3.1.2-25]: not sent, counted.
    small = clients(5, client_id=id_on_shard("small-", 0),
                    properties=props(PacketTypes.CONNECT, MaximumPacketSize=200))
    small.subscribe(f"{prefix}/big/#", 1)
    pub = clients(5, client_id=id_on_shard("dpub-", 1))
    pub.publish(f"{prefix}/big/1", b"x" * 1000, qos=1)
    pub.publish(f"{prefix}/big/marker", b"m", qos=1)
    small.expect_marker(f"{prefix}/big/marker")
    after = dropped()
    assert after["too_large"] - before["too_large"] == 1, after
    # Expired in an offline session's queue [MQTT-3.3.2-5]: shed by the periodic scan.
    away = clients(5, client_id=id_on_shard("away-", 1), clean=False, session_expiry=300)
    away.subscribe(f"{prefix}/exp/#", 1)
    away.disconnect()
    expiring = props(PacketTypes.PUBLISH, MessageExpiryInterval=1)
    pub.publish(f"{prefix}/exp/1", b"short-lived", qos=1, properties=expiring)
    http_broker.wait_total("shardmq_messages_dropped_total", before["expired"] + 1,
                           reason="expired")
    final = dropped()
    assert final["expired"] - before["expired"] == 1, final
    for reason, n in final.items():
        if reason not in ("too_large", "expired"):
            assert n == before[reason], (reason, before, final)
    # The same counts in /api/v1/stats.
    stats = http_broker.json("GET", "/api/v1/stats")
    assert stats["messages_dropped_by_reason"] == {r: int(n) for r, n in final.items()}, stats
    assert stats["messages_dropped"] == sum(final.values())


def test_a_full_session_queue_counts_its_drops_in_metrics_and_sys(tmp_path):
    conf = tmp_path / "shardmq.toml"
    conf.write_text("[limits]\nsession_queue_messages_max = 2\n")
    running = _start(tmp_path, ["--config", str(conf)])
    made = []
    try:
        prefix = f"full/{uid()}"
        away = PahoClient(running.mqtt, version=5, client_id=id_on_shard("full-", 0),
                          clean=False, session_expiry=300)
        away.connect()
        made.append(away)
        away.subscribe(f"{prefix}/#", 1)
        away.disconnect()
        pub = PahoClient(running.mqtt, version=5, client_id=id_on_shard("fpub-", 1))
        pub.connect()
        made.append(pub)
        for i in range(5):
            pub.publish(f"{prefix}/{i}", b"p", qos=1)
        # drop_oldest (the default): the queue keeps the newest two, three are dropped.
        counted = running.wait_total("shardmq_messages_dropped_total", 3,
                                     reason="queue_full_oldest")
        assert counted == 3
        watcher = PahoClient(running.mqtt, version=4)
        watcher.connect()
        made.append(watcher)
        watcher.subscribe("$SYS/broker/messages/dropped/queue_full_oldest", 0)
        deadline = time.monotonic() + WAIT
        while int(watcher.get().payload) != 3:
            assert time.monotonic() < deadline
        back = PahoClient(running.mqtt, version=5, client_id=away.client_id, clean=False,
                          session_expiry=300)
        back.connect()
        made.append(back)
        assert [m.topic for m in back.get_n(2)] == [f"{prefix}/3", f"{prefix}/4"]
    finally:
        for c in made:
            c.stop()
        running.proc.terminate()
        running.proc.wait(10)


def _unix(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_connected_since_and_disconnected_at(http_broker):
    cid = id_on_shard("since-", 1)
    # Connect two seconds or more after start, so a connection stamped with the start time
    # (or nothing) shows.
    http_broker.wait_total("shardmq_uptime_seconds", 2)
    before = time.time()
    c = PahoClient(http_broker.mqtt, version=5, client_id=cid, clean=False, session_expiry=300)
    c.connect()
    after = time.time()
    try:
        one = http_broker.json("GET", f"/api/v1/clients/{cid}")
        assert one["connected"] is True
        # Kept to the second (at most one second early): before - 1 < since <= after.
        since = one["connected_since_unix"]
        assert math.floor(before) - 1 <= since <= after, (before, one, after)
        # (and a second of slack for the broker's monotonic-to-wall-clock conversion)
        assert before - 1 < _unix(one["connected_since"]) <= after + 1, (before, one, after)
        assert one["disconnected_at"] is None and one["disconnected_at_unix"] is None
        listed = http_broker.json("GET", f"/api/v1/clients?prefix={cid}")["clients"]
        assert [x["connected_since"] for x in listed] == [one["connected_since"]]
        gone_before = time.time()
        c.disconnect()
        deadline = time.monotonic() + WAIT
        while True:
            off = http_broker.json("GET", f"/api/v1/clients/{cid}")
            if not off["connected"]:
                break
            assert time.monotonic() < deadline, off
            time.sleep(0.02)
        gone_after = time.time()
        assert off["connected_since"] is None and off["connected_since_unix"] is None
        # Ordering only, with a second of slack for the broker's clock conversion.
        assert math.floor(gone_before) - 1 <= off["disconnected_at_unix"] <= gone_after + 1, off
        assert gone_before - 1 <= _unix(off["disconnected_at"]) <= gone_after + 1, off
    finally:
        c.stop()
