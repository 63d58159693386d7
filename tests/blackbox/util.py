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
# How long to watch for something that must NOT happen (a message that should not be delivered).
QUIET = 0.7

PAHO_VERSIONS = {3: mqtt.MQTTv31, 4: mqtt.MQTTv311, 5: mqtt.MQTTv5}
VERSION_IDS = {3: "v31", 4: "v311", 5: "v5"}


def is_mosquitto() -> bool:
    return BROKER == "mosquitto"


def uid(prefix: str = "") -> str:
    """A short unique string (client ids, topic suffixes)."""
    return prefix + uuid.uuid4().hex[:10]


def sanitize(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_")


class PahoClient:
    """A paho-mqtt client driven synchronously: every call waits for the broker's answer."""

    def __init__(self, broker, version: int = 4, client_id: str | None = None,
                 clean: bool = True, session_expiry: int | None = None,
                 keepalive: int = 60, will: tuple | None = None):
        self.host, self.port = broker
        self.version = version
        self.client_id = uid("paho-") if client_id is None else client_id
        self.clean = clean
        self.session_expiry = session_expiry
        self.keepalive = keepalive
        self.messages: queue.Queue = queue.Queue()
        self.connack = threading.Event()
        self.connack_info: tuple = ()
        self.disconnected = threading.Event()
        self.subacks: dict = {}
        self.unsubacks: dict = {}
        self.lock = threading.Condition()
        kw = {"clean_session": clean} if version != 5 else {}
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                  protocol=PAHO_VERSIONS[version], reconnect_on_failure=False,
                                  **kw)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_unsubscribe = self._on_unsubscribe
        if will:
            topic, payload, qos, retain = will
            self.client.will_set(topic, payload, qos, retain)

    # -- callbacks (paho's network thread) --

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.connack_info = (bool(flags.session_present), int(reason_code.value), properties)
        self.connack.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self.disconnected.set()

    def _on_message(self, client, userdata, msg):
        self.messages.put(msg)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        with self.lock:
            self.subacks[mid] = [int(rc.value) for rc in reason_codes]
            self.lock.notify_all()

    def _on_unsubscribe(self, client, userdata, mid, reason_codes, properties):
        with self.lock:
            self.unsubacks[mid] = True
            self.lock.notify_all()

    # -- blocking API --

    def connect(self) -> bool:
        """Connects, waits for CONNACK, asserts success; returns the session-present flag."""
        props = None
        kw = {}
        if self.version == 5:
            kw["clean_start"] = self.clean
            if self.session_expiry is not None:
                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = self.session_expiry
        self.client.connect(self.host, self.port, keepalive=self.keepalive, properties=props, **kw)
        self.client.loop_start()
        assert self.connack.wait(WAIT), f"{self.client_id}: no CONNACK within {WAIT} s"
        session_present, rc, _ = self.connack_info
        assert rc == 0, f"{self.client_id}: CONNECT refused with code {rc:#x}"
        return session_present

    def _wait_for(self, table: dict, mid: int):
        with self.lock:
            ok = self.lock.wait_for(lambda: mid in table, WAIT)
            assert ok, f"{self.client_id}: no acknowledgement for mid {mid} within {WAIT} s"
            return table.pop(mid)

    def subscribe(self, topic, qos: int = 0, options: SubscribeOptions | None = None) -> list:
        """Subscribes (one filter, or a list of (filter, qos)); returns the SUBACK codes."""
        if options is not None:
            rc, mid = self.client.subscribe(topic, options=options)
        elif isinstance(topic, list):
            rc, mid = self.client.subscribe(topic)
        else:
            rc, mid = self.client.subscribe(topic, qos)
        assert rc == mqtt.MQTT_ERR_SUCCESS, rc
        return self._wait_for(self.subacks, mid)

    def unsubscribe(self, topic) -> None:
        rc, mid = self.client.unsubscribe(topic)
        assert rc == mqtt.MQTT_ERR_SUCCESS, rc
        self._wait_for(self.unsubacks, mid)

    def publish(self, topic: str, payload=b"", qos: int = 0, retain: bool = False) -> None:
        """Publishes and waits until the QoS flow with the broker is complete (for QoS 0: sent)."""
        info = self.client.publish(topic, payload, qos, retain)
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

    def expect_nothing(self, duration: float = QUIET) -> None:
        try:
            msg = self.messages.get(timeout=duration)
        except queue.Empty:
            return
        raise AssertionError(f"{self.client_id}: unexpected message on {msg.topic}: "
                             f"{msg.payload!r}")

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
