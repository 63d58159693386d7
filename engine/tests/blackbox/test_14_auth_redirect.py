"""Enhanced authentication (MQTT 5.0 §4.12) with SCRAM-SHA-256, re-authentication, plain
credentials against the users file, and server redirection (§4.11).

paho-mqtt has no AUTH packet support, so it covers what ends at CONNACK (plain credentials,
refusals, redirection, Server Reference); the AUTH exchanges use raw sockets with a SCRAM
client written here on Python's hashlib (independent of the broker's Rust one).

The users file holds `alice`, added with `shardmq users add` (the documented way), and `bob`,
whose line is computed here from RFC 5802's formulas (so the file format is checked too).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import subprocess
import tempfile
from pathlib import Path

import pytest

import mqttraw as m
from paho.mqtt.packettypes import PacketTypes

from util import BROKER, id_on_shard, uid
from util import props as paho_props

pytestmark = pytest.mark.skipif(BROKER != "shardmq", reason="shardmq-specific flags")

METHOD = "SCRAM-SHA-256"
PROP_AUTH_METHOD, PROP_AUTH_DATA, PROP_SERVER_REFERENCE = 0x15, 0x16, 0x1C
USERS_FILE = Path(tempfile.mkdtemp(prefix="shardmq-users-")) / "users"
WITH_USERS = pytest.mark.broker_args("--auth-users-file", str(USERS_FILE))
SHARDS = pytest.mark.parametrize("shard", [0, 1], ids=["shard0", "shard1"])


def _shardmq_bin() -> str:
    root = Path(__file__).resolve().parents[3]
    return os.environ.get("SHARDMQ_BIN") or str(root / "target" / "release" / "shardmq")


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


@pytest.fixture(scope="module", autouse=True)
def users_file():
    """Writes the users file before any broker of this module starts."""
    if BROKER != "shardmq":
        yield
        return
    salt, iterations = os.urandom(16), 4096
    salted = hashlib.pbkdf2_hmac("sha256", b"builder", salt, iterations)
    stored = hashlib.sha256(_hmac(salted, b"Client Key")).digest()
    server = _hmac(salted, b"Server Key")
    USERS_FILE.write_text(
        f"# written by test_14\nbob SCRAM-SHA-256${iterations}:{_b64(salt)}${_b64(stored)}:{_b64(server)}\n"
    )
    subprocess.run([_shardmq_bin(), "users", "add", "alice", "--file", str(USERS_FILE)],
                   input=b"wonderland\n", check=True, capture_output=True, timeout=30)
    yield
    USERS_FILE.unlink(missing_ok=True)


class Scram:
    """The client side of SCRAM-SHA-256 (RFC 5802 §3, no channel binding)."""

    def __init__(self, user: str, password: str):
        self.password = password.encode()
        self.nonce = _b64(os.urandom(12))
        self.first_bare = f"n={user},r={self.nonce}"
        self.server_signature = b""

    def client_first(self) -> bytes:
        return f"n,,{self.first_bare}".encode()

    def client_final(self, server_first: bytes) -> bytes:
        attrs = dict(a.split("=", 1) for a in server_first.decode().split(","))
        assert attrs["r"].startswith(self.nonce) and len(attrs["r"]) > len(self.nonce), attrs
        salted = hashlib.pbkdf2_hmac("sha256", self.password, base64.b64decode(attrs["s"]),
                                     int(attrs["i"]))
        client_key = _hmac(salted, b"Client Key")
        without_proof = f"c=biws,r={attrs['r']}"
        auth_message = f"{self.first_bare},{server_first.decode()},{without_proof}".encode()
        signature = _hmac(hashlib.sha256(client_key).digest(), auth_message)
        self.server_signature = _hmac(_hmac(salted, b"Server Key"), auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        return f"{without_proof},p={_b64(proof)}".encode()

    def check_server_final(self, data: bytes) -> None:
        assert data.startswith(b"v="), data
        assert base64.b64decode(data[2:]) == self.server_signature, "the server's proof"


def auth(reason: int, data: bytes, method: str = METHOD) -> bytes:
    return m.packet(m.AUTH, 0, bytes([reason]) +
                    m.properties({PROP_AUTH_METHOD: method, PROP_AUTH_DATA: data}))


def auth_fields(p: m.Packet) -> tuple[int, dict]:
    """(reason code, properties) of an AUTH packet."""
    assert p.type == m.AUTH, p
    if not p.body:
        return 0, {}
    return p.body[0], (m.parse_properties(p.body, 1)[0] if len(p.body) > 1 else {})


def exchange(c: m.RawClient, scram: Scram, first: bytes) -> m.Packet:
    """Sends `first` (CONNECT or AUTH 0x19), answers server-first, returns the last word."""
    c.send(first)
    reason, props = auth_fields(c.expect(m.AUTH))
    assert reason == 0x18, "[MQTT-4.12.0-2]"
    assert props[PROP_AUTH_METHOD] == METHOD, "[MQTT-4.12.0-5]"
    c.send(auth(0x18, scram.client_final(props[PROP_AUTH_DATA])))
    return c.recv()


def scram_connect(c: m.RawClient, cid: str, user: str, password: str) -> tuple[Scram, m.Packet]:
    scram = Scram(user, password)
    connect = m.connect(cid, version=5, props={PROP_AUTH_METHOD: METHOD,
                                               PROP_AUTH_DATA: scram.client_first()})
    return scram, exchange(c, scram, connect)


@WITH_USERS
@SHARDS
def test_scram_exchange_then_publish(raw, paho, shard):
    """CONNECT → AUTH 0x18 → AUTH 0x18 → CONNACK 0x00 carrying the method and server-final;
    then the connection carries messages from a paho client on the other shard."""
    c = raw(5)
    scram, ack = scram_connect(c, id_on_shard("scram-", shard), "alice", "wonderland")
    assert ack.type == m.CONNACK and ack.code == 0, ack
    assert ack.props[PROP_AUTH_METHOD] == METHOD
    scram.check_server_final(ack.props[PROP_AUTH_DATA])
    topic = f"auth/{uid()}"
    c.subscribe([(topic, 0)], props=None)
    pub = paho(5, connect=False, client_id=id_on_shard("pub-", 1 - shard))
    pub.client.username_pw_set("bob", "builder")
    assert pub.connect_rc() == 0
    pub.publish(topic, b"hello")
    assert c.expect(m.PUBLISH).payload == b"hello"


@WITH_USERS
@SHARDS
@pytest.mark.parametrize("user,password", [("alice", "wrong"), ("bob", "wonderland"),
                                           ("mallory", "x")])
def test_scram_bad_credentials_get_0x86(raw, shard, user, password):
    c = raw(5)
    _, ack = scram_connect(c, id_on_shard("bad-", shard), user, password)
    assert ack.type == m.CONNACK and ack.code == 0x86, ack
    assert c.wait_closed() == [], "[MQTT-4.12.0-4]"


@WITH_USERS
def test_scram_tampered_nonce_gets_0x87(raw):
    c = raw(5)
    scram = Scram("alice", "wonderland")
    c.send(m.connect(uid("nonce-"), version=5,
                     props={PROP_AUTH_METHOD: METHOD, PROP_AUTH_DATA: scram.client_first()}))
    _, props = auth_fields(c.expect(m.AUTH))
    final = scram.client_final(props[PROP_AUTH_DATA]).replace(b",r=", b",r=X", 1)
    c.send(auth(0x18, final))
    ack = c.expect(m.CONNACK)
    assert ack.code == 0x87, ack
    assert c.wait_closed() == []


@WITH_USERS
def test_other_packets_during_the_exchange_are_a_protocol_error(raw):
    """[MQTT-3.1.2-30]: only AUTH or DISCONNECT before CONNACK."""
    c = raw(5)
    c.send(m.connect(uid("early-"), version=5, props={
        PROP_AUTH_METHOD: METHOD, PROP_AUTH_DATA: Scram("alice", "x").client_first()}))
    c.expect(m.AUTH)
    c.send(m.subscribe(1, [("a/b", 0)], version=5))
    assert c.expect(m.CONNACK).code == 0x82
    assert c.wait_closed() == []


@WITH_USERS
@SHARDS
def test_reauthentication(raw, shard):
    """[MQTT-4.12.1-1]: AUTH 0x19 with the same method; success is AUTH 0x00 with
    server-final, failure is DISCONNECT 0x87 and a close [MQTT-4.12.1-2]."""
    c = raw(5)
    _, ack = scram_connect(c, id_on_shard("reauth-", shard), "bob", "builder")
    assert ack.code == 0
    again = Scram("bob", "builder")
    done = exchange(c, again, auth(0x19, again.client_first()))
    reason, props = auth_fields(done)
    assert reason == 0x00 and props[PROP_AUTH_METHOD] == METHOD
    again.check_server_final(props[PROP_AUTH_DATA])
    c.ping()
    wrong = Scram("bob", "nope")
    last = exchange(c, wrong, auth(0x19, wrong.client_first()))
    assert last.type == m.DISCONNECT and last.code == 0x87, last
    assert c.wait_closed() == []


@WITH_USERS
@pytest.mark.parametrize("packet", [auth(0x19, b"n,,n=bob,r=x", method="OTHER"),
                                    auth(0x18, b"c=biws")], ids=["other-method", "no-exchange"])
def test_reauthentication_protocol_errors(raw, packet):
    c = raw(5)
    _, ack = scram_connect(c, uid("reauth-err-"), "bob", "builder")
    assert ack.code == 0
    c.send(packet)
    d = c.expect(m.DISCONNECT)
    assert d.code == 0x82, d
    assert c.wait_closed() == []


@WITH_USERS
def test_auth_without_a_method_in_connect_is_a_protocol_error(raw):
    """[MQTT-4.12.0-7]: a client that named no method in CONNECT sends no AUTH."""
    c = raw(5)
    c.connect_ok(uid("plain-"), username="bob", password=b"builder")
    c.send(auth(0x19, b"n,,n=bob,r=x"))
    assert c.expect(m.DISCONNECT).code == 0x82
    assert c.wait_closed() == []


@WITH_USERS
@pytest.mark.parametrize("version", [4, 5], ids=["v311", "v5"])
def test_plain_credentials_against_the_users_file(paho, raw, version):
    """With a users file, user name + password are checked; anonymous clients are refused.
    (paho reports 3.1.1 return codes 4 and 5 as 0x86 and 0x87; the raw client checks the
    3.1.1 bytes.)"""
    cases = [(("alice", "wonderland"), 0), (("bob", "builder"), 0),
             (("alice", "builder"), 0x86), (None, 0x87)]
    for creds, want in cases:
        c = paho(version, connect=False)
        if creds:
            c.client.username_pw_set(*creds)
        assert c.connect_rc() == want, creds
        if want == 0 and version == 5:
            assert not hasattr(c.connack_properties, "AuthenticationMethod"), "[MQTT-4.12.0-6]"
    if version == 4:
        for kw, code in [({"username": "bob", "password": b"nope"}, 4), ({}, 5)]:
            c = raw(4)
            assert c.connect(uid("v311-"), **kw).raw == bytes([0x20, 0x02, 0x00, code])
            assert c.wait_closed() == []


@WITH_USERS
def test_unknown_method_gets_0x8c(paho):
    """[MQTT-4.12.0-1]."""
    c = paho(5, connect=False, properties=paho_props(PacketTypes.CONNECT,
                                                     AuthenticationMethod="GS2-KRB5"))
    assert c.connect_rc() == 0x8C


def test_without_users_file_scram_is_not_offered(paho):
    c = paho(5, connect=False, properties=paho_props(PacketTypes.CONNECT, AuthenticationMethod=METHOD,
                                                     AuthenticationData=b"n,,n=a,r=b"))
    assert c.connect_rc() == 0x8C


def _redirect_case(kind: str, code: int):
    @pytest.mark.broker_args("--server-reference", "mqtt2.example:1884", "--redirect", kind)
    def test(paho, raw):
        v5 = paho(5, connect=False)
        assert v5.connect_rc() == code
        assert v5.connack_properties.ServerReference == "mqtt2.example:1884"
        c = raw(4)
        assert c.connect(uid("moved-")).raw == b"\x20\x02\x00\x03", "server unavailable"
        assert c.wait_closed() == []
        c = raw(5)
        ack = c.connect(uid("moved-"))
        assert ack.code == code and ack.props[PROP_SERVER_REFERENCE] == "mqtt2.example:1884"
        assert c.wait_closed() == []
    test.__doc__ = f"§4.11, --redirect {kind}: CONNACK {code:#x} with the Server Reference " \
                   "(5.0), return code 3 Server unavailable (3.1.1)."
    return test


test_redirect_temporary = _redirect_case("temporary", 0x9C)
test_redirect_permanent = _redirect_case("permanent", 0x9D)
