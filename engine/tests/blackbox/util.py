"""Shared helpers: which broker is under test, and a blocking wrapper around paho-mqtt 2.x."""

from __future__ import annotations

import os
import queue
import re
import threading
import time
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

# The broker under test: "shardmq" (default) or "mosquitto".
BROKER = os.environ.get("BROKER", "shardmq").strip().lower()

# Generous upper bound for anything that should happen "promptly" on a loaded 2-core machine.
WAIT = 10.0
# There is deliberately no "watch for a while that nothing arrives" helper: a test shows that
# something did not happen with a marker that must arrive after it (a message published
# later, or PINGRESP as the very next packet: mqttraw's expect_nothing_before_pingresp).

PAHO_VERSIONS = {3: mqtt.MQTTv31, 4: mqtt.MQTTv311, 5: mqtt.MQTTv5}
VERSION_IDS = {3: "v31", 4: "v311", 5: "v5"}


def is_mosquitto() -> bool:
    return BROKER == "mosquitto"


def rss_kib(pid: int) -> int:
    """Resident set size of process `pid` in KiB (VmRSS in /proc/PID/status, Linux)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


def uid(prefix: str = "") -> str:
    """A short unique string (client ids, topic suffixes)."""
    return prefix + uuid.uuid4().hex[:10]


def sanitize(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_")


class PahoClient:
    """A paho-mqtt client driven synchronously: every call waits for the broker's answer."""

    def __init__(self, broker, version: int = 4, client_id: str | None = None,
                 clean: bool = True, session_expiry: int | None = None,
                 keepalive: int = 60, will: tuple | None = None,
                 properties: Properties | None = None, will_properties: Properties | None = None,
                 manual_ack: bool = False, transport: str = "tcp"):
        """`properties`: 5.0 CONNECT properties (Session Expiry from `session_expiry` is
        added to them); `will_properties`: 5.0 will properties; `manual_ack`: QoS 1/2
        messages are acknowledged only by `ack(msg)`; `transport`: "tcp" or "websockets"
        (path /mqtt; TLS is added with `self.client.tls_set`)."""
        self.host, self.port = broker
        self.properties = properties
        self.version = version
        self.client_id = uid("paho-") if client_id is None else client_id
        self.clean = clean
        self.session_expiry = session_expiry
        self.keepalive = keepalive
        self.messages: queue.Queue = queue.Queue()
        self.connack = threading.Event()
        self.connack_info: tuple = ()
        self.disconnected = threading.Event()
        # (reason code, properties) of the DISCONNECT the broker sent, if any.
        self.disconnect_info: tuple = ()
        self.subacks: dict = {}
        self.unsubacks: dict = {}
        self.lock = threading.Condition()
        kw = {"clean_session": clean} if version != 5 else {}
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                  protocol=PAHO_VERSIONS[version], reconnect_on_failure=False,
                                  manual_ack=manual_ack, transport=transport, **kw)
        if transport == "websockets":
            self.client.ws_set_options(path="/mqtt")
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_unsubscribe = self._on_unsubscribe
        if will:
            topic, payload, qos, retain = will
            self.client.will_set(topic, payload, qos, retain, properties=will_properties)

    # -- callbacks (paho's network thread) --

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.connack_info = (bool(flags.session_present), int(reason_code.value), properties)
        self.connack.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self.disconnect_info = (int(reason_code.value), properties)
        self.disconnected.set()

    def _on_message(self, client, userdata, msg):
        self.messages.put(msg)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        with self.lock:
            self.subacks[mid] = [int(rc.value) for rc in reason_codes]
            self.lock.notify_all()

    def _on_unsubscribe(self, client, userdata, mid, reason_codes, properties):
        with self.lock:
            # 5.0: the UNSUBACK reason codes; 3.1.1 has none (an empty list).
            codes = reason_codes if isinstance(reason_codes, list) else [reason_codes]
            self.unsubacks[mid] = [int(rc.value) for rc in codes]
            self.lock.notify_all()

    # -- blocking API --

    def connect(self) -> bool:
        """Connects, waits for CONNACK, asserts success; returns the session-present flag."""
        rc = self.connect_rc()
        assert rc == 0, f"{self.client_id}: CONNECT refused with code {rc:#x}"
        return self.connack_info[0]

    def connect_rc(self) -> int:
        """Connects and waits for CONNACK; returns its reason code (success or not)."""
        props = self.properties
        kw = {}
        if self.version == 5:
            kw["clean_start"] = self.clean
            if self.session_expiry is not None:
                props = props or Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = self.session_expiry
        self.client.connect(self.host, self.port, keepalive=self.keepalive, properties=props, **kw)
        self.client.loop_start()
        assert self.connack.wait(WAIT), f"{self.client_id}: no CONNACK within {WAIT} s"
        return self.connack_info[1]

    @property
    def connack_properties(self):
        """The CONNACK's 5.0 properties (a paho Properties object)."""
        return self.connack_info[2]

    def _wait_for(self, table: dict, mid: int):
        with self.lock:
            ok = self.lock.wait_for(lambda: mid in table, WAIT)
            assert ok, f"{self.client_id}: no acknowledgement for mid {mid} within {WAIT} s"
            return table.pop(mid)

    def subscribe(self, topic, qos: int = 0, options: SubscribeOptions | None = None,
                  properties: Properties | None = None) -> list:
        """Subscribes (one filter, or a list of (filter, qos)); returns the SUBACK codes.
        `properties`: 5.0 SUBSCRIBE properties (e.g. a Subscription Identifier)."""
        if options is not None:
            rc, mid = self.client.subscribe(topic, options=options, properties=properties)
        elif isinstance(topic, list):
            rc, mid = self.client.subscribe(topic, properties=properties)
        else:
            rc, mid = self.client.subscribe(topic, qos, properties=properties)
        assert rc == mqtt.MQTT_ERR_SUCCESS, rc
        return self._wait_for(self.subacks, mid)

    def unsubscribe(self, topic) -> list:
        """Unsubscribes; returns the UNSUBACK reason codes (5.0; empty for 3.1/3.1.1)."""
        rc, mid = self.client.unsubscribe(topic)
        assert rc == mqtt.MQTT_ERR_SUCCESS, rc
        return self._wait_for(self.unsubacks, mid)

    def publish(self, topic: str, payload=b"", qos: int = 0, retain: bool = False,
                properties: Properties | None = None) -> None:
        """Publishes and waits until the QoS flow with the broker is complete (for QoS 0: sent).
        `properties`: 5.0 PUBLISH properties."""
        info = self.client.publish(topic, payload, qos, retain, properties=properties)
        info.wait_for_publish(WAIT)
        assert info.is_published(), f"{self.client_id}: publish to {topic} not completed"

    def get(self, timeout: float = WAIT) -> mqtt.MQTTMessage:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"{self.client_id}: no message within {timeout} s") from None

    def get_n(self, n: int, timeout: float = WAIT) -> list:
        deadline = time.monotonic() + timeout
        out = []
        while len(out) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{self.client_id}: got {len(out)} of {n} messages "
                                     f"within {timeout} s: {[m.payload for m in out]}")
            try:
                out.append(self.messages.get(timeout=remaining))
            except queue.Empty:
                pass
        return out

    def ack(self, msg: mqtt.MQTTMessage) -> None:
        """Acknowledges a QoS 1/2 message (clients made with manual_ack=True)."""
        assert self.client.ack(msg.mid, msg.qos) == mqtt.MQTT_ERR_SUCCESS

    def expect_marker(self, marker_topic: str) -> None:
        """Asserts that the next message is the marker: one published on `marker_topic` after
        whatever must not arrive, on a path that keeps order with it (one publisher's
        messages stay in order, MQTT 4.6), so a message that should not come would come
        first."""
        msg = self.get()
        assert msg.topic == marker_topic, (f"{self.client_id}: unexpected message on "
                                           f"{msg.topic} before the marker: {msg.payload!r}")

    def disconnect(self) -> None:
        self.client.disconnect()
        self.disconnected.wait(WAIT)
        self.client.loop_stop()

    def stop(self) -> None:
        """Tears down without waiting (fixture cleanup)."""
        try:
            self.client.disconnect()
        except Exception:
            pass
        self.client.loop_stop()


def sub_options(qos: int, **kw) -> SubscribeOptions:
    return SubscribeOptions(qos=qos, **kw)


def props(packet_type: int, **values) -> Properties:
    """5.0 properties for `packet_type` (PacketTypes.CONNECT, .PUBLISH, …) by paho's names,
    e.g. props(PacketTypes.PUBLISH, MessageExpiryInterval=60, UserProperty=[("k", "v")])."""
    p = Properties(packet_type)
    for name, value in values.items():
        setattr(p, name, value)
    return p


def home_shard(client_id: str, shards: int = 2) -> int:
    """The shard a client id's session lives on in shardmq: FNV-1a of the id modulo the
    shard count (`ShardCore::home_shard`). The fixture's broker runs 2 shards."""
    h = 0xCBF29CE484222325
    for b in client_id.encode():
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h % shards


def id_on_shard(prefix: str, shard: int, shards: int = 2) -> str:
    """A unique client id whose home shard is `shard` (so tests can put a publisher and a
    subscriber on different shards and make every message cross the mesh)."""
    while True:
        cid = uid(prefix)
        if home_shard(cid, shards) == shard:
            return cid
