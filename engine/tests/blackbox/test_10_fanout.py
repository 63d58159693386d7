"""Fan-out: 1,000 subscribers (raw asyncio MQTT 3.1.1 clients, QoS 1) on one topic, one
publisher sending 100 QoS 1 messages with sequence numbers: every subscriber receives every
message exactly once and in order. Everything is bounded by timeouts."""

import asyncio
import time

import pytest

import mqttraw as m
from util import uid

SUBSCRIBERS = 1000
MESSAGES = 100
CONNECT_BATCH = 100  # concurrent connection attempts (stay under the listen backlog)
DELIVERY_TIMEOUT_SECS = 150


async def fanout(host: str, port: int, topic: str, subscribers: int, messages: int, qos: int):
    subs = [m.AsyncSubscriber(uid(f"fan{i}-")) for i in range(subscribers)]
    tasks = []
    pub = m.AsyncPublisher(uid("fanpub-"))
    try:
        for start in range(0, subscribers, CONNECT_BATCH):
            batch = subs[start:start + CONNECT_BATCH]
            await asyncio.wait_for(
                asyncio.gather(*(s.start(host, port, topic, qos) for s in batch)), 60)
        tasks = [asyncio.create_task(s.run()) for s in subs]
        await asyncio.wait_for(pub.start(host, port), 30)
        # One more than `messages`: the last is the marker. A duplicate of an earlier message
        # arrives before it (one publisher, one topic: in order), so once every subscriber has
        # the marker, anything extra is in its list.
        for seq in range(messages + 1):
            payload = b"%08d|" % seq + b"x" * 55  # 64 bytes
            await asyncio.wait_for(pub.publish_qos1(topic, payload, seq + 1), 30)
        deadline = time.monotonic() + DELIVERY_TIMEOUT_SECS
        while time.monotonic() < deadline:
            if all(len(s.payloads) > messages for s in subs):
                break
            dead = [t for t in tasks if t.done()]
            if dead:
                dead[0].result()  # surfaces the exception
                raise AssertionError(f"{len(dead)} subscriber connections ended early")
            await asyncio.sleep(0.1)  # polling, not a timed assertion
        return subs
    finally:
        for t in tasks:
            t.cancel()
        for s in subs:
            s.close()
        if getattr(pub, "writer", None):
            pub.close()
        await asyncio.gather(*tasks, return_exceptions=True)


def check(subs, messages):
    """Every subscriber got messages 0..`messages` (the last being the marker), once each,
    in order."""
    messages += 1
    want = [b"%08d" % i for i in range(messages)]
    short = [s for s in subs if len(s.payloads) < messages]
    assert not short, (f"{len(short)} of {len(subs)} subscribers missed messages, e.g. "
                       f"{short[0].client_id} got {len(short[0].payloads)}")
    for s in subs:
        got = [p.split(b"|")[0] for p in s.payloads]
        assert got == want, f"{s.client_id}: not exactly once in order: {got[:10]}..."
        assert s.dups == 0


@pytest.mark.timeout(300)
def test_fanout_1000_subscribers_qos1(broker, topic):
    subs = asyncio.run(fanout(broker.host, broker.port, f"{topic}/fan/t", SUBSCRIBERS,
                              MESSAGES, qos=1))
    check(subs, MESSAGES)


@pytest.mark.timeout(120)
def test_fanout_100_subscribers_qos0(broker, topic):
    """QoS 0 on an idle loopback broker with prompt readers: nothing lost, in order."""
    subs = asyncio.run(fanout(broker.host, broker.port, f"{topic}/fan/t0", 100, 100, qos=0))
    check(subs, 100)
