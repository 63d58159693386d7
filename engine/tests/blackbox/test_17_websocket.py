"""WebSocket listeners (ws://, wss://), MQTT 5.0 §6 and RFC 6455: paho over ws and wss, raw
frames (one packet over several frames, several packets in one frame, fragmentation, ping,
the close handshake), every bad handshake and bad frame, and a message crossing shards between
a TLS, a WSS and a plain TCP client.

Mosquitto's WebSocket server is lenient (peers.md: it answers 101 without a subprotocol, on
any path, and takes text frames), so the refusal tests are shardmq-only; the rest also run
with BROKER=mosquitto."""

from __future__ import annotations

import base64
import os
import shutil
import socket
import struct

import pytest

import mqttraw
import tlsutil
from tlsutil import Pki
from util import BROKER, WAIT, is_mosquitto, uid

pytestmark = pytest.mark.skipif(not shutil.which("openssl"), reason="openssl missing")

shardmq_only = pytest.mark.skipif(is_mosquitto(), reason="shardmq-only: Mosquitto is lenient")


@pytest.fixture
def pki(tmp_path):
    return Pki(tmp_path)


@pytest.fixture
def broker_ws(pki, tmp_path, request):
    """A broker with plain, mqtts, ws and wss listeners; extra shardmq flags from the
    `broker_args` mark."""
    extra: list[str] = []
    for mark in request.node.iter_markers("broker_args"):
        extra += [str(a) for a in mark.args]
    b = tlsutil.start(tmp_path, pki.issue("localhost", server=True), extra=extra)
    yield b
    died = b.proc.poll()
    b.stop()
    assert died is None, f"{BROKER} died during the test\n{b.log()}"


def frame(opcode: int, payload: bytes, fin: bool = True, masked: bool = True) -> bytes:
    """A client frame (masked, RFC 6455 §5.2/§5.3)."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    m = 0x80 if masked else 0
    if n < 126:
        head += bytes([m | n])
    elif n < 65536:
        head += bytes([m | 126]) + struct.pack(">H", n)
    else:
        head += bytes([m | 127]) + struct.pack(">Q", n)
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


class WsRaw:
    """A raw WebSocket client on a plain socket: the upgrade, then frames both ways."""

    def __init__(self, addr, path="/mqtt", protocol="mqtt", key=None, version="13", extra=()):
        self.sock = socket.create_connection(tuple(addr), timeout=WAIT)
        self.buf = b""
        key = key if key is not None else base64.b64encode(os.urandom(16)).decode()
        lines = [f"GET {path} HTTP/1.1", f"Host: {addr.host}:{addr.port}", "Upgrade: websocket",
                 "Connection: Upgrade", f"Sec-WebSocket-Key: {key}",
                 f"Sec-WebSocket-Version: {version}"]
        if protocol:
            lines.append(f"Sec-WebSocket-Protocol: {protocol}")
        lines += list(extra)
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                break
            self.buf += chunk
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        self.response = head.decode(errors="replace")
        self.status = int(self.response.split(" ")[1]) if self.response.startswith("HTTP/") else 0

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _need(self, n: int) -> bool:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                return False
            self.buf += chunk
        return True

    def recv_frame(self) -> tuple[int, bytes] | None:
        """The next server frame (opcode, payload); None at EOF. Server frames are unmasked."""
        if not self._need(2):
            return None
        b0, b1 = self.buf[0], self.buf[1]
        assert b1 & 0x80 == 0, "server frames are not masked (§5.1)"
        n, pos = b1 & 0x7F, 2
        if n == 126:
            self._need(4)
            n, pos = struct.unpack(">H", self.buf[2:4])[0], 4
        elif n == 127:
            self._need(10)
            n, pos = struct.unpack(">Q", self.buf[2:10])[0], 10
        assert self._need(pos + n), "EOF inside a frame"
        payload, self.buf = self.buf[pos:pos + n], self.buf[pos + n:]
        assert b0 & 0x80, "the server sends unfragmented frames"
        return b0 & 0x0F, payload

    def mqtt_packets(self, want: int) -> list[mqttraw.Packet]:
        """Reads binary frames until `want` MQTT packets decoded (they may span frames)."""
        dec = mqttraw.Decoder()
        out: list = []
        while len(out) < want:
            f = self.recv_frame()
            assert f is not None, f"EOF after {out}"
            assert f[0] == 2, f"a binary frame [MQTT-6.0.0-1], got opcode {f[0]}"
            out += dec.feed(f[1])
        return out

    def close_code(self) -> int | None:
        """Reads until a close frame; its status code (None at EOF without one)."""
        while True:
            try:
                f = self.recv_frame()
            except ConnectionResetError:
                return None
            if f is None:
                return None
            if f[0] == 8:
                return struct.unpack(">H", f[1][:2])[0] if len(f[1]) >= 2 else 1005

    def at_eof(self) -> bool:
        try:
            while True:
                chunk = self.sock.recv(4096)
                if not chunk:
                    return True
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


CONNECT = mqttraw.connect("ws-raw-" + uid())


@pytest.mark.skipif(is_mosquitto(), reason="shardmq-only: Mosquitto closes without a close frame")
def test_the_broker_closes_with_a_close_frame(broker_ws):
    """A DISCONNECT ends the WebSocket with a close frame (1000, RFC 6455 §5.5.1) before the
    TCP close, so a browser sees a clean close, not 1006."""
    c = WsRaw(broker_ws.ws)
    try:
        assert c.status == 101, c.response
        c.send(frame(2, CONNECT))
        assert c.mqtt_packets(1)[0].name == "CONNACK"
        c.send(frame(2, mqttraw.disconnect()))
        assert c.close_code() == 1000
        assert c.at_eof()
    finally:
        c.close()


def test_paho_over_ws_and_wss(broker_ws, pki):
    b = broker_ws
    topic = f"ws/{uid()}"
    ws = tlsutil.paho(b.ws, transport="ws", version=5)
    wss = tlsutil.paho(b.wss, transport="wss", ca=pki.ca)
    try:
        ws.subscribe(topic, qos=1)
        wss.publish(topic, b"from wss", qos=1)
        assert ws.get().payload == b"from wss"
        big = os.urandom(200_000)  # several TLS records, a 64-bit WebSocket length
        wss.subscribe(topic, qos=1)
        ws.publish(topic, big, qos=1)
        assert ws.get().payload == big
        assert wss.get().payload == big
    finally:
        ws.stop()
        wss.stop()


def test_packets_span_frames_and_frames_carry_several_packets(broker_ws):
    """[MQTT-6.0.0-2]: a packet may span frames; one frame may hold several packets; a
    fragmented message with a ping between its fragments (§5.4, §5.5.2)."""
    c = WsRaw(broker_ws.ws)
    try:
        assert c.status == 101, c.response
        assert "sec-websocket-protocol: mqtt" in c.response.lower(), c.response
        c.send(frame(2, CONNECT[:5]) + frame(2, CONNECT[5:]))  # one packet, two frames
        assert c.mqtt_packets(1)[0].name == "CONNACK"
        ping = mqttraw.pingreq()
        c.send(frame(2, ping * 3))  # three packets, one frame
        assert [p.name for p in c.mqtt_packets(3)] == ["PINGRESP"] * 3
        # A fragmented message: binary (not final), a ping, continuation (final).
        c.send(frame(2, ping[:1], fin=False) + frame(9, b"hi") + frame(0, ping[1:] + ping))
        got = []
        while len(got) < 2 or not any(o == 10 for o, _ in got):
            f = c.recv_frame()
            assert f is not None
            got.append(f)
        assert (10, b"hi") in got, "a pong with the ping's payload"
        packets = mqttraw.Decoder().feed(b"".join(p for o, p in got if o == 2))
        while len(packets) < 2:
            packets += c.mqtt_packets(1)
        assert [p.name for p in packets] == ["PINGRESP"] * 2
        # The close handshake: the server answers a close with a close and ends (§5.5.1).
        c.send(frame(8, struct.pack(">H", 1000)))
        assert c.close_code() == 1000
        assert c.at_eof()
    finally:
        c.close()


@shardmq_only
@pytest.mark.parametrize("case", ["path", "no-subprotocol", "other-subprotocol", "bad-key",
                                  "short-key", "version"])
def test_bad_upgrades_get_an_http_error_and_a_close(broker_ws, case):
    kw = {
        "path": {"path": "/other"},
        "no-subprotocol": {"protocol": None},
        "other-subprotocol": {"protocol": "chat"},
        "bad-key": {"key": "not base64!"},
        "short-key": {"key": base64.b64encode(b"short").decode()},
        "version": {"version": "8"},
    }[case]
    want = {"path": 404, "version": 426}.get(case, 400)
    c = WsRaw(broker_ws.ws, **kw)
    try:
        assert c.status == want, getattr(c, "response", c.status)
        assert c.at_eof(), "closed after the answer, not left hanging"
    finally:
        c.close()


@shardmq_only
@pytest.mark.broker_args("--ws-origin", "https://ok.example")
def test_origin_allow_list(broker_ws):
    bad = WsRaw(broker_ws.ws, extra=["Origin: https://evil.example"])
    good = WsRaw(broker_ws.ws, extra=["Origin: https://ok.example"])
    try:
        assert bad.status == 403, bad.response
        assert good.status == 101, good.response
    finally:
        bad.close()
        good.close()


@shardmq_only
@pytest.mark.broker_args("--max-packet-size", "100000")
@pytest.mark.parametrize("case,code", [("text", 1003), ("unmasked", 1002), ("too-big", 1009),
                                       ("reserved-opcode", 1002)])
def test_bad_frames_close_with_the_rfc_code(broker_ws, case, code):
    """[MQTT-6.0.0-1] text frames, §5.1 unmasked client frames, frames over the maximum packet
    size, reserved opcodes: a close frame with the code, then EOF. Other clients go on."""
    other = tlsutil.paho(broker_ws.ws, transport="ws")
    c = WsRaw(broker_ws.ws)
    try:
        assert c.status == 101, c.response
        c.send(frame(2, CONNECT))
        assert c.mqtt_packets(1)[0].name == "CONNACK"
        bad = {
            "text": frame(1, mqttraw.pingreq()),
            "unmasked": frame(2, mqttraw.pingreq(), masked=False),
            "too-big": frame(2, b"\x30" + b"\x00" * 200_000),
            "reserved-opcode": frame(3, b"x"),
        }[case]
        c.send(bad)
        assert c.close_code() == code
        assert c.at_eof()
        topic = f"ws/{uid()}"
        other.subscribe(topic)
        other.publish(topic, b"still served")
        assert other.get().payload == b"still served"
    finally:
        c.close()
        other.stop()


def home_shard(client_id: str, shards: int = 2) -> int:
    """The broker's home shard of a client id (FNV-1a, `ShardCore::home_shard`)."""
    h = 0xcbf29ce484222325
    for b in client_id.encode():
        h ^= b
        h = (h * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h % shards


def test_a_message_crosses_shards_between_tls_wss_and_tcp(broker_ws, pki):
    """Two shards: clients homed on each shard over TLS, WSS and plain TCP (a connection
    accepted on the other shard moves there with its TLS/WebSocket state) each receive what
    the others publish."""
    b = broker_ws
    topic = f"x/{uid()}"
    clients = []
    try:
        for transport, addr in (("tls", b.tls), ("wss", b.wss), ("tcp", b.tcp)):
            for shard in (0, 1):
                cid = uid(f"{transport}-")
                while home_shard(cid) != shard:
                    cid = uid(f"{transport}-")
                c = tlsutil.paho(addr, transport=transport, ca=pki.ca, client_id=cid)
                c.subscribe(topic, qos=1)
                clients.append((transport, c))
        for transport, c in clients:
            c.publish(topic, f"from {c.client_id}".encode(), qos=1)
        want = sorted(f"from {c.client_id}".encode() for _, c in clients)
        for transport, c in clients:
            got = sorted(m.payload for m in c.get_n(len(clients)))
            assert got == want, f"{transport} {c.client_id}"
    finally:
        for _, c in clients:
            c.stop()
