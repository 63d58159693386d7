"""A tiny MQTT 3.1 / 3.1.1 / 5.0 packet encoder and streaming decoder for black-box tests.

Written for tests, not for production: it can build exactly the bytes a test wants, including
malformed ones, and decodes what a broker sends back into small dataclasses. It has a blocking
socket client (`RawClient`) for step-by-step protocol tests and an asyncio client
(`AsyncSubscriber`) cheap enough to run a thousand of in one process.

Versions are the protocol level byte: 3 (MQTT 3.1), 4 (3.1.1), 5 (5.0).
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Iterable

# Packet types (fixed header, high nibble).
CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH = range(8, 16)
NAMES = {
    1: "CONNECT", 2: "CONNACK", 3: "PUBLISH", 4: "PUBACK", 5: "PUBREC", 6: "PUBREL",
    7: "PUBCOMP", 8: "SUBSCRIBE", 9: "SUBACK", 10: "UNSUBSCRIBE", 11: "UNSUBACK",
    12: "PINGREQ", 13: "PINGRESP", 14: "DISCONNECT", 15: "AUTH",
}

V31, V311, V5 = 3, 4, 5

# MQTT 5.0 property identifiers -> wire type.
_BYTE, _U16, _U32, _VARINT, _UTF8, _BIN, _PAIR = range(7)
PROP_TYPES = {
    0x01: _BYTE, 0x02: _U32, 0x03: _UTF8, 0x08: _UTF8, 0x09: _BIN, 0x0B: _VARINT,
    0x11: _U32, 0x12: _UTF8, 0x13: _U16, 0x15: _UTF8, 0x16: _BIN, 0x17: _BYTE, 0x18: _U32,
    0x19: _BYTE, 0x1A: _UTF8, 0x1C: _UTF8, 0x1F: _UTF8, 0x21: _U16, 0x22: _U16, 0x23: _U16,
    0x24: _BYTE, 0x25: _BYTE, 0x26: _PAIR, 0x27: _U32, 0x28: _BYTE, 0x29: _BYTE, 0x2A: _BYTE,
}
PROP_SESSION_EXPIRY = 0x11
PROP_ASSIGNED_CLIENT_ID = 0x12
PROP_SERVER_KEEP_ALIVE = 0x13
PROP_REASON_STRING = 0x1F
PROP_RECEIVE_MAXIMUM = 0x21
PROP_MAX_PACKET_SIZE = 0x27
PROP_WILL_DELAY = 0x18
_REPEATABLE = {0x0B, 0x26}


class MalformedError(Exception):
    """The broker sent bytes that are not a well-formed MQTT packet."""


class ConnectionClosed(Exception):
    """The broker closed the connection (EOF or reset)."""


# --------------------------------------------------------------------------------------------
# Encoding


def varint(n: int) -> bytes:
    """Variable byte integer (remaining length, property lengths, subscription ids)."""
    assert 0 <= n <= 268_435_455, n
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def utf8(s: str | bytes) -> bytes:
    """A length-prefixed string; bytes are sent as given (for invalid UTF-8 tests)."""
    data = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(data)) + data


def properties(props: dict | None) -> bytes:
    """MQTT 5.0 properties: {id: value}; repeatable ids (0x0B, 0x26) take a list."""
    body = bytearray()
    for pid, value in (props or {}).items():
        values = value if pid in _REPEATABLE and isinstance(value, list) else [value]
        for v in values:
            kind = PROP_TYPES[pid]
            body += varint(pid)
            if kind == _BYTE:
                body += bytes([v])
            elif kind == _U16:
                body += struct.pack("!H", v)
            elif kind == _U32:
                body += struct.pack("!I", v)
            elif kind == _VARINT:
                body += varint(v)
            elif kind in (_UTF8, _BIN):
                body += utf8(v)
            else:
                body += utf8(v[0]) + utf8(v[1])
    return varint(len(body)) + bytes(body)


def packet(ptype: int, flags: int, body: bytes) -> bytes:
    """Fixed header + body."""
    return bytes([(ptype << 4) | flags]) + varint(len(body)) + body


@dataclass
class Will:
    topic: str
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    props: dict | None = None  # 5.0 will properties


def connect(client_id: str | bytes = "", *, version: int = V311, clean: bool = True,
            keepalive: int = 60, will: Will | None = None, username: str | None = None,
            password: bytes | None = None, props: dict | None = None,
            reserved_flag: bool = False) -> bytes:
    """CONNECT. For version 3 the protocol name is MQIsdp, otherwise MQTT."""
    name = "MQIsdp" if version == V31 else "MQTT"
    flags = (0x02 if clean else 0) | (0x01 if reserved_flag else 0)
    if will:
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
    if username is not None:
        flags |= 0x80
    if password is not None:
        flags |= 0x40
    body = utf8(name) + bytes([version, flags]) + struct.pack("!H", keepalive)
    if version == V5:
        body += properties(props)
    body += utf8(client_id)
    if will:
        if version == V5:
            body += properties(will.props)
        body += utf8(will.topic) + utf8(will.payload)
    if username is not None:
        body += utf8(username)
    if password is not None:
        body += utf8(password)
    return packet(CONNECT, 0, body)


def publish(topic: str | bytes, payload: bytes = b"", *, qos: int = 0, retain: bool = False,
            dup: bool = False, pid: int | None = None, version: int = V311,
            props: dict | None = None) -> bytes:
    """PUBLISH. `qos` may be 3 to build the malformed packet."""
    if isinstance(payload, str):
        payload = payload.encode()
    flags = (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0)
    body = utf8(topic)
    if qos:
        body += struct.pack("!H", pid if pid is not None else 1)
    if version == V5:
        body += properties(props)
    return packet(PUBLISH, flags, body + payload)


def _ack(ptype: int, pid: int, version: int, reason: int | None, flags: int = 0) -> bytes:
    body = struct.pack("!H", pid)
    if version == V5 and reason is not None:
        body += bytes([reason])
    return packet(ptype, flags, body)


def puback(pid: int, version: int = V311, reason: int | None = None) -> bytes:
    return _ack(PUBACK, pid, version, reason)


def pubrec(pid: int, version: int = V311, reason: int | None = None) -> bytes:
    return _ack(PUBREC, pid, version, reason)


def pubrel(pid: int, version: int = V311, reason: int | None = None) -> bytes:
    return _ack(PUBREL, pid, version, reason, flags=0x02)


def pubcomp(pid: int, version: int = V311, reason: int | None = None) -> bytes:
    return _ack(PUBCOMP, pid, version, reason)


def subscribe(pid: int, filters: Iterable[tuple[str | bytes, int]], version: int = V311,
              props: dict | None = None) -> bytes:
    """SUBSCRIBE; each filter comes with its options byte (QoS, plus 5.0 option bits)."""
    body = struct.pack("!H", pid)
    if version == V5:
        body += properties(props)
    for topic, options in filters:
        body += utf8(topic) + bytes([options])
    return packet(SUBSCRIBE, 0x02, body)


def unsubscribe(pid: int, filters: Iterable[str], version: int = V311) -> bytes:
    body = struct.pack("!H", pid)
    if version == V5:
        body += properties(None)
    for topic in filters:
        body += utf8(topic)
    return packet(UNSUBSCRIBE, 0x02, body)


def pingreq() -> bytes:
    return b"\xc0\x00"


def disconnect(version: int = V311, reason: int | None = None, props: dict | None = None) -> bytes:
    if version == V5 and (reason is not None or props):
        return packet(DISCONNECT, 0, bytes([reason or 0]) + properties(props))
    return b"\xe0\x00"


# 5.0 subscription option bits.
NO_LOCAL = 0x04
RETAIN_AS_PUBLISHED = 0x08


def retain_handling(n: int) -> int:
    return n << 4


# --------------------------------------------------------------------------------------------
# Decoding


@dataclass
class Packet:
    """A packet as read off the wire, parsed according to its type."""

    type: int
    flags: int
    raw: bytes  # the whole packet, fixed header included
    body: bytes
    # Parsed fields (those that apply to the type).
    session_present: bool = False
    code: int = 0  # CONNACK return / reason code; ack, DISCONNECT reason code
    pid: int = 0
    topic: str = ""
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    dup: bool = False
    codes: list = field(default_factory=list)  # SUBACK / UNSUBACK
    props: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return NAMES.get(self.type, f"type{self.type}")

    def __repr__(self) -> str:
        parts = [self.name]
        if self.type == PUBLISH:
            parts.append(f"topic={self.topic!r} qos={self.qos} retain={self.retain} "
                         f"dup={self.dup} pid={self.pid} payload={self.payload[:40]!r}")
        elif self.type in (CONNACK, DISCONNECT):
            parts.append(f"code=0x{self.code:02x} sp={self.session_present} props={self.props}")
        elif self.type in (SUBACK, UNSUBACK):
            parts.append(f"pid={self.pid} codes={[hex(c) for c in self.codes]}")
        elif self.type in (PUBACK, PUBREC, PUBREL, PUBCOMP):
            parts.append(f"pid={self.pid} code=0x{self.code:02x}")
        parts.append(f"raw={self.raw[:24].hex()}")
        return "<" + " ".join(parts) + ">"


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    value, mult = 0, 1
    for i in range(4):
        if pos + i >= len(buf):
            raise MalformedError("truncated variable byte integer")
        b = buf[pos + i]
        value += (b & 0x7F) * mult
        if not b & 0x80:
            return value, pos + i + 1
        mult *= 128
    raise MalformedError("variable byte integer longer than 4 bytes")


def _read_utf8(buf: bytes, pos: int) -> tuple[bytes, int]:
    (n,) = struct.unpack_from("!H", buf, pos)
    return buf[pos + 2:pos + 2 + n], pos + 2 + n


def parse_properties(buf: bytes, pos: int) -> tuple[dict, int]:
    n, pos = _read_varint(buf, pos)
    end = pos + n
    props: dict = {}
    while pos < end:
        pid, pos = _read_varint(buf, pos)
        kind = PROP_TYPES.get(pid)
        if kind is None:
            raise MalformedError(f"unknown property 0x{pid:02x}")
        if kind == _BYTE:
            v, pos = buf[pos], pos + 1
        elif kind == _U16:
            (v,), pos = struct.unpack_from("!H", buf, pos), pos + 2
        elif kind == _U32:
            (v,), pos = struct.unpack_from("!I", buf, pos), pos + 4
        elif kind == _VARINT:
            v, pos = _read_varint(buf, pos)
        elif kind == _UTF8:
            raw, pos = _read_utf8(buf, pos)
            v = raw.decode()
        elif kind == _BIN:
            v, pos = _read_utf8(buf, pos)
        else:
            k, pos = _read_utf8(buf, pos)
            val, pos = _read_utf8(buf, pos)
            v = (k.decode(), val.decode())
        if pid in _REPEATABLE:
            props.setdefault(pid, []).append(v)
        else:
            props[pid] = v
    if pos != end:
        raise MalformedError("property length mismatch")
    return props, end


def parse(ptype: int, flags: int, raw: bytes, body: bytes, version: int) -> Packet:
    p = Packet(ptype, flags, raw, body)
    v5 = version == V5
    try:
        if ptype == CONNACK:
            p.session_present = bool(body[0] & 1)
            p.code = body[1]
            if v5 and len(body) > 2:
                p.props, _ = parse_properties(body, 2)
        elif ptype == PUBLISH:
            p.qos, p.retain, p.dup = (flags >> 1) & 3, bool(flags & 1), bool(flags & 8)
            topic, pos = _read_utf8(body, 0)
            p.topic = topic.decode()
            if p.qos:
                (p.pid,) = struct.unpack_from("!H", body, pos)
                pos += 2
            if v5:
                p.props, pos = parse_properties(body, pos)
            p.payload = body[pos:]
        elif ptype in (PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK, SUBACK):
            (p.pid,) = struct.unpack_from("!H", body, 0)
            pos = 2
            if ptype in (SUBACK, UNSUBACK):
                if v5:
                    p.props, pos = parse_properties(body, pos)
                p.codes = list(body[pos:])
            elif len(body) > 2:
                p.code = body[2]
                if len(body) > 3:
                    p.props, _ = parse_properties(body, 3)
        elif ptype == DISCONNECT:
            if len(body) >= 1:
                p.code = body[0]
            if len(body) > 1:
                p.props, _ = parse_properties(body, 1)
    except (IndexError, struct.error) as e:
        raise MalformedError(f"truncated {NAMES.get(ptype)}: {raw.hex()}") from e
    return p


class Decoder:
    """Streaming decoder: feed bytes, get whole packets."""

    def __init__(self, version: int = V311):
        self.version = version
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[Packet]:
        self.buf += data
        out = []
        while True:
            if len(self.buf) < 2:
                return out
            try:
                length, pos = _read_varint(self.buf, 1)
            except MalformedError as e:
                if "truncated" in str(e):
                    return out
                raise
            if len(self.buf) < pos + length:
                return out
            raw = bytes(self.buf[:pos + length])
            del self.buf[:pos + length]
            out.append(parse(raw[0] >> 4, raw[0] & 0x0F, raw, raw[pos:], self.version))


# --------------------------------------------------------------------------------------------
# Blocking client


class RawClient:
    """One TCP connection to the broker, sending exact bytes and reading parsed packets."""

    def __init__(self, host: str, port: int, version: int = V311, timeout: float = 5.0):
        self.version = version
        self.timeout = timeout
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.decoder = Decoder(version)
        self.pending: list[Packet] = []
        # PUBLISH packets that arrived while expect() waited for another type (e.g. a PUBREL
        # of an earlier message, or a PUBACK for our own publish); expect(PUBLISH) returns them.
        self.stash: list[Packet] = []
        self.closed = False
        self.next_pid = 1

    # -- plumbing --

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no packet from the broker in time")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            raise TimeoutError("no packet from the broker in time") from None
        except (ConnectionResetError, BrokenPipeError) as e:
            self.closed = True
            raise ConnectionClosed(str(e)) from None
        if not data:
            self.closed = True
            raise ConnectionClosed("EOF")
        self.pending.extend(self.decoder.feed(data))

    def recv(self, timeout: float | None = None) -> Packet:
        """The next packet; TimeoutError if none in time, ConnectionClosed on EOF."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not self.pending:
            self._fill(deadline)
        return self.pending.pop(0)

    def expect(self, ptype: int, timeout: float | None = None) -> Packet:
        """The next packet of type `ptype`; PUBLISH packets arriving meanwhile are stashed for
        a later expect(PUBLISH); any other type is an assertion failure."""
        if ptype == PUBLISH and self.stash:
            return self.stash.pop(0)
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            p = self.recv(max(0.0, deadline - time.monotonic()))
            if p.type == PUBLISH and ptype != PUBLISH:
                self.stash.append(p)
                continue
            assert p.type == ptype, f"expected {NAMES[ptype]}, got {p!r}"
            return p

    def expect_nothing_before_pingresp(self) -> None:
        """Asserts that nothing is pending for this connection: sends PINGREQ and requires
        PINGRESP as the very next packet. The broker answers a connection's packets in order,
        so whatever it had queued for it (a re-send, a queued message) comes first."""
        assert not self.stash, f"unexpected packet {self.stash[0]!r}"
        self.send(pingreq())
        p = self.recv()
        assert p.type == PINGRESP, f"unexpected packet before PINGRESP: {p!r}"

    def is_open_after(self, poll_secs: float) -> bool:
        """True if the broker has not closed the connection within `poll_secs` (a polling
        step, never an assertion by itself); packets received meanwhile are kept."""
        try:
            # Not `self.stash.extend(self.wait_closed(...))`: wait_closed replaces self.stash,
            # so the list looked up first would be a stale one and the packets would be lost.
            got = self.wait_closed(poll_secs)
        except AssertionError:
            return True
        self.stash.extend(got)
        return False

    def wait_closed(self, timeout: float = 5.0) -> list[Packet]:
        """Waits until the broker closes the connection; returns the packets received first.
        Raises AssertionError if it is still open at the deadline."""
        deadline = time.monotonic() + timeout
        got = self.stash
        self.stash = []
        try:
            while True:
                while self.pending:
                    got.append(self.pending.pop(0))
                self._fill(deadline)
        except ConnectionClosed:
            got.extend(self.pending)
            self.pending.clear()
            return got
        except MalformedError:
            raise
        except TimeoutError:
            # Still open: what arrived stays for the next expect()/wait_closed() (a poll by
            # is_open_after must not lose a packet that came just before the close).
            self.stash = got + self.stash
            raise AssertionError(
                f"broker did not close the connection within {timeout} s (received {got})"
            ) from None

    def close(self) -> None:
        """Drops the TCP connection without DISCONNECT."""
        try:
            self.sock.close()
        except OSError:
            pass
        self.closed = True

    def abort(self) -> None:
        """Drops the TCP connection with a reset (SO_LINGER 0)."""
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        self.close()

    def pid(self) -> int:
        p = self.next_pid
        self.next_pid = p % 65535 + 1
        return p

    # -- protocol steps --

    def connect(self, client_id: str | bytes = "", **kw) -> Packet:
        """Sends CONNECT and returns the CONNACK (whatever its code)."""
        self.send(connect(client_id, version=self.version, **kw))
        return self.expect(CONNACK)

    def connect_ok(self, client_id: str | bytes = "", **kw) -> Packet:
        ack = self.connect(client_id, **kw)
        assert ack.code == 0, f"CONNECT refused: {ack!r}"
        return ack

    def subscribe(self, filters: list[tuple[str, int]], props: dict | None = None) -> Packet:
        pid = self.pid()
        self.send(subscribe(pid, filters, self.version, props))
        ack = self.expect(SUBACK)
        assert ack.pid == pid, ack
        return ack

    def unsubscribe(self, filters: list[str]) -> Packet:
        pid = self.pid()
        self.send(unsubscribe(pid, filters, self.version))
        ack = self.expect(UNSUBACK)
        assert ack.pid == pid, ack
        return ack

    def publish(self, topic: str, payload: bytes | str = b"", qos: int = 0,
                retain: bool = False, props: dict | None = None) -> None:
        """Publishes and completes the QoS 1 / 2 handshake with the broker."""
        pid = self.pid() if qos else None
        self.send(publish(topic, payload, qos=qos, retain=retain, pid=pid, version=self.version,
                          props=props))
        if qos == 1:
            ack = self.expect(PUBACK)
            assert ack.pid == pid and ack.code < 0x80, ack
        elif qos == 2:
            rec = self.expect(PUBREC)
            assert rec.pid == pid and rec.code < 0x80, rec
            self.send(pubrel(pid, self.version))
            comp = self.expect(PUBCOMP)
            assert comp.pid == pid, comp

    def recv_publish(self, timeout: float | None = None, ack: bool = True) -> Packet:
        """The next PUBLISH, acknowledged (QoS 1: PUBACK; QoS 2: PUBREC, PUBREL, PUBCOMP)."""
        p = self.expect(PUBLISH, timeout)
        if ack and p.qos == 1:
            self.send(puback(p.pid, self.version))
        elif ack and p.qos == 2:
            self.send(pubrec(p.pid, self.version))
            rel = self.expect(PUBREL, timeout)
            assert rel.pid == p.pid and rel.flags == 0x02, rel
            self.send(pubcomp(p.pid, self.version))
        return p

    def ping(self) -> None:
        self.send(pingreq())
        p = self.expect(PINGRESP)
        assert p.raw == b"\xd0\x00", p

    def disconnect(self) -> None:
        self.send(disconnect(self.version))
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --------------------------------------------------------------------------------------------
# asyncio client (fan-out)


class AsyncSubscriber:
    """A cheap MQTT 3.1.1 subscriber for fan-out tests: acks QoS 1 in batches, records payloads."""

    def __init__(self, client_id: str):
        self.client_id = client_id
        self.payloads: list[bytes] = []
        self.dups = 0
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.decoder = Decoder(V311)
        self.pending: list[Packet] = []

    async def _next(self) -> Packet:
        while True:
            if self.pending:
                return self.pending.pop(0)
            data = await self.reader.read(65536)
            if not data:
                raise ConnectionClosed(self.client_id)
            self.pending.extend(self.decoder.feed(data))

    async def start(self, host: str, port: int, topic: str, qos: int) -> None:
        self.reader, self.writer = await asyncio.open_connection(host, port)
        self.writer.write(connect(self.client_id, keepalive=300) + subscribe(1, [(topic, qos)]))
        await self.writer.drain()
        ack = await self._next()
        assert ack.type == CONNACK and ack.code == 0, ack
        sub = await self._next()
        assert sub.type == SUBACK and sub.codes == [qos], sub

    async def run(self) -> None:
        """Reads until the connection closes or the task is cancelled."""
        while True:
            batch = self.pending
            self.pending = []
            if not batch:
                data = await self.reader.read(65536)
                if not data:
                    return
                batch = self.decoder.feed(data)
            acks = bytearray()
            for p in batch:
                if p.type == PUBLISH:
                    self.payloads.append(p.payload)
                    self.dups += p.dup
                    if p.qos == 1:
                        acks += puback(p.pid)
            if acks:
                self.writer.write(bytes(acks))

    def close(self) -> None:
        if self.writer:
            self.writer.transport.abort()


class AsyncPublisher:
    """An MQTT 3.1.1 publisher that sends QoS 1 messages one after another, awaiting PUBACK."""

    def __init__(self, client_id: str):
        self.client_id = client_id
        self.decoder = Decoder(V311)
        self.pending: list[Packet] = []

    async def _next(self) -> Packet:
        while not self.pending:
            data = await self.reader.read(65536)
            if not data:
                raise ConnectionClosed(self.client_id)
            self.pending.extend(self.decoder.feed(data))
        return self.pending.pop(0)

    async def start(self, host: str, port: int) -> None:
        self.reader, self.writer = await asyncio.open_connection(host, port)
        self.writer.write(connect(self.client_id, keepalive=300))
        ack = await self._next()
        assert ack.type == CONNACK and ack.code == 0, ack

    async def publish_qos1(self, topic: str, payload: bytes, pid: int) -> None:
        self.writer.write(publish(topic, payload, qos=1, pid=pid))
        ack = await self._next()
        assert ack.type == PUBACK and ack.pid == pid, ack

    def close(self) -> None:
        self.writer.write(disconnect())
        self.writer.close()
