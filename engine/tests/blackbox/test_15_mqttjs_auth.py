"""Enhanced authentication (MQTT 5.0 §4.12, SCRAM-SHA-256) and redirection (§4.11) seen by a
real MQTT 5 client: MQTT.js (npm package `mqtt`, pinned in js/package-lock.json), run with Node.

test_14 drives the AUTH exchanges with raw sockets; here MQTT.js does: CONNECT with
`properties.authenticationMethod` / `authenticationData` (client-first), its `handleAuth` hook
answers the server's AUTH 0x18 with client-final, and the server-final in CONNACK (or in AUTH
0x00 after re-authentication) is verified. The SCRAM client is js/scram.js (node:crypto only,
checked against RFC 7677's example by js/scram.test.js). Re-authentication goes out through
MQTT.js's internal `_sendPacket` (it has no public call for AUTH 0x19).

js/scenarios.js runs one scenario and prints what MQTT.js saw as JSON; the assertions are here.
Needs node and `npm ci` in engine/tests/blackbox/js (scripts/install-test-deps.sh does both); without
them the tests skip, saying why.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from util import BROKER, id_on_shard, uid

JS_DIR = Path(__file__).resolve().parent / "js"
NODE = shutil.which("node")
METHOD = "SCRAM-SHA-256"
SCENARIO_TIMEOUT_SECS = 80  # js/scenarios.js gives up by itself after 60 s


def _shardmq_bin() -> str:
    root = Path(__file__).resolve().parents[3]
    return os.environ.get("SHARDMQ_BIN") or str(root / "target" / "release" / "shardmq")


def _why_skip() -> str | None:
    if BROKER != "shardmq":
        return "shardmq-specific flags (--auth-users-file, --server-reference)"
    if NODE is None:
        return "node not found: run scripts/install-test-deps.sh (installs nodejs, npm, MQTT.js)"
    if not (JS_DIR / "node_modules" / "mqtt" / "package.json").is_file():
        return f"MQTT.js not installed in {JS_DIR}: run scripts/install-test-deps.sh (npm ci)"
    out = subprocess.run([NODE, "--version"], capture_output=True, text=True).stdout.strip()
    major = re.match(r"v(\d+)\.", out)
    if not major or int(major.group(1)) < 18:
        return f"node {out or '?'} is too old for MQTT.js 5 (needs 18 or newer)"
    return None


SKIP_REASON = _why_skip()
pytestmark = pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or "")

# Created by the fixture below (`shardmq users add` makes it, mode 0600), removed after.
USERS_FILE = Path(tempfile.gettempdir()) / f"shardmq-mqttjs-users-{uid()}"
WITH_USERS = pytest.mark.broker_args("--auth-users-file", str(USERS_FILE))
SHARDS = pytest.mark.parametrize("shard", [0, 1], ids=["shard0", "shard1"])
USERS = {"alice": "wonderland", "bob": "builder"}


@pytest.fixture(scope="module", autouse=True)
def users_file():
    """alice and bob, added with `shardmq users add` before any broker of this module starts."""
    if SKIP_REASON is None:
        for user, password in USERS.items():
            subprocess.run([_shardmq_bin(), "users", "add", user, "--file", str(USERS_FILE)],
                           input=f"{password}\n".encode(), check=True, capture_output=True,
                           timeout=30)
    yield
    USERS_FILE.unlink(missing_ok=True)


def run_js(scenario: str, **args) -> dict:
    """Runs js/scenarios.js; returns what MQTT.js saw (the JSON it printed)."""
    proc = subprocess.run([NODE, "scenarios.js", json.dumps({"scenario": scenario, **args})],
                          cwd=JS_DIR, capture_output=True, text=True,
                          timeout=SCENARIO_TIMEOUT_SECS)
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0 and lines, (
        f"scenario {scenario} failed (exit {proc.returncode})\nstdout:\n{proc.stdout[-6000:]}"
        f"\nstderr:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def assert_server_first(packet: dict) -> None:
    """An AUTH 0x18 carrying a SCRAM server-first-message (r=NONCE,s=SALT,i=N) [MQTT-4.12.0-5]."""
    assert packet["cmd"] == "auth" and packet["reasonCode"] == 0x18, packet
    assert packet["authenticationMethod"] == METHOD, packet
    assert re.fullmatch(r"r=[^,]+,s=[A-Za-z0-9+/=]+,i=\d+", packet["authenticationData"]), packet


def assert_scram_connected(rec: dict) -> None:
    """CONNECT → AUTH 0x18 → (MQTT.js) AUTH 0x18 → CONNACK 0x00 with method and server-final,
    whose server signature MQTT.js's side verified."""
    assert rec["connected"], rec
    assert [p["cmd"] for p in rec["received"][:2]] == ["auth", "connack"], rec["received"]
    assert_server_first(rec["received"][0])
    assert rec["authHandled"] == [{"reasonCode": 0x18}], "handleAuth answered one AUTH 0x18"
    ack = rec["connack"]
    assert ack["reasonCode"] == 0 and ack["authenticationMethod"] == METHOD, ack
    assert ack["authenticationData"].startswith("v="), ack
    assert rec["serverFinalVerified"] is True


def assert_refused(rec: dict, code: int) -> None:
    """CONNACK `code` reached MQTT.js (as the connack and as its error), then the close."""
    assert not rec["connected"], rec
    assert rec["connack"] is not None and rec["connack"]["reasonCode"] == code, rec
    assert [e["code"] for e in rec.get("errors", [])] == [code], rec
    assert rec["received"][-1]["cmd"] == "connack", "nothing after a refusing CONNACK"
    assert rec["closed"] is True, "[MQTT-4.12.0-4] the server closes the connection"


def test_scram_client_matches_rfc7677():
    """js/scram.js reproduces RFC 7677's example exchange (so failures below are the broker's)."""
    proc = subprocess.run([NODE, "--test", "--test-reporter=tap", "scram.test.js"], cwd=JS_DIR,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert re.search(r"^# pass [1-9]", proc.stdout, re.M) and re.search(r"^# fail 0$",
                                                                         proc.stdout, re.M)


@WITH_USERS
@SHARDS
def test_mqttjs_scram_then_pubsub(broker, topic, shard):
    """MQTT.js authenticates alice (homed on `shard`) and bob (the other shard) with SCRAM;
    both subscribe at QoS 1 and each publishes once: both get both messages (one of each
    crosses the shards)."""
    clients = [{"clientId": id_on_shard("mqttjs-a-", shard), "user": "alice",
                "password": USERS["alice"]},
               {"clientId": id_on_shard("mqttjs-b-", 1 - shard), "user": "bob",
                "password": USERS["bob"]}]
    seen = run_js("scram-pubsub", port=broker.port, topic=topic, clients=clients)
    assert seen["mqttVersion"].startswith("5.")
    assert len(seen["clients"]) == 2
    for rec in seen["clients"]:
        assert_scram_connected(rec)
    assert seen["granted"] == [[1], [1]]
    for inbox in seen["messages"]:
        assert sorted(m["payload"] for m in inbox) == ["from-0", "from-1"], inbox
        assert {m["topic"] for m in inbox} == {topic}


@WITH_USERS
@SHARDS
@pytest.mark.parametrize("user,password", [("alice", "wrong"), ("bob", "wonderland"),
                                           ("mallory", "x")],
                         ids=["wrong-password", "other-users-password", "unknown-user"])
def test_mqttjs_bad_credentials_get_0x86(broker, shard, user, password):
    """The full exchange happens (MQTT.js answers AUTH 0x18), then CONNACK 0x86 Bad user name
    or password; an unknown user is not told apart from a wrong password."""
    rec = run_js("connect", port=broker.port, clientId=id_on_shard("mqttjs-bad-", shard),
                 user=user, password=password)
    assert_server_first(rec["received"][0])
    assert rec["authHandled"] == [{"reasonCode": 0x18}]
    assert_refused(rec, 0x86)


@WITH_USERS
def test_mqttjs_tampered_nonce_gets_0x87(broker):
    """A client-final whose nonce the server never issued: CONNACK 0x87 Not authorized."""
    rec = run_js("connect", port=broker.port, clientId=id_on_shard("mqttjs-nonce-", 0),
                 user="alice", password=USERS["alice"], tamper=True)
    assert_server_first(rec["received"][0])
    assert_refused(rec, 0x87)


@WITH_USERS
@pytest.mark.parametrize("method", ["GS2-KRB5", "SCRAM-SHA-1"])
def test_mqttjs_unknown_method_gets_0x8c(broker, method):
    """[MQTT-4.12.0-1]: a method the server does not support: CONNACK 0x8C Bad authentication
    method, without any AUTH packet."""
    rec = run_js("connect", port=broker.port, clientId=id_on_shard("mqttjs-method-", 1),
                 method=method, scram=False)
    assert rec["authHandled"] == []
    assert [p["cmd"] for p in rec["received"]] == ["connack"], rec["received"]
    assert_refused(rec, 0x8C)


@WITH_USERS
@SHARDS
@pytest.mark.parametrize("bad_user,bad_password", [("alice", "nope"), ("bob", "builder")],
                         ids=["wrong-password", "other-user"])
def test_mqttjs_reauthentication(broker, topic, shard, bad_user, bad_password):
    """[MQTT-4.12.1-1]: after a SCRAM CONNECT, MQTT.js sends AUTH 0x19 with a new
    client-first; the server answers AUTH 0x18, then AUTH 0x00 with a server-final MQTT.js
    verifies; the connection still carries a QoS 1 round trip. A second re-authentication
    with a wrong password, or as another user (it must be the same user), ends in DISCONNECT
    0x87 and a close [MQTT-4.12.1-2]."""
    seen = run_js("reauth", port=broker.port, clientId=id_on_shard("mqttjs-reauth-", shard),
                  user="alice", password=USERS["alice"], badUser=bad_user,
                  badPassword=bad_password, topic=topic)
    assert seen["connect"]["connected"], seen["connect"]
    assert seen["connect"]["serverFinalVerified"] is True, seen["connect"]
    good = seen["good"]
    assert good["ended"] == "reauth-done", good
    assert [p["cmd"] for p in good["received"]] == ["auth", "auth"], good["received"]
    assert_server_first(good["received"][0])
    done = good["received"][1]
    assert done["reasonCode"] == 0x00 and done["authenticationMethod"] == METHOD, done
    assert good["authHandled"] == [{"reasonCode": 0x18},
                                   {"reasonCode": 0x00, "serverFinalVerified": True}]
    assert not good["closed"]
    assert seen["granted"] == [1]
    assert seen["messages"] == [{"topic": topic, "payload": "after-reauth"}]
    bad = seen["bad"]
    assert_server_first(bad["received"][0])
    assert bad["received"][-1] == {"cmd": "disconnect", "reasonCode": 0x87}, bad["received"]
    assert bad["ended"] == "disconnect" and bad["closed"] is True, bad


REFERENCE = "mqtt2.example:1884 mqtt3.example:1885"


@pytest.mark.parametrize("code", [
    pytest.param(0x9C, marks=pytest.mark.broker_args("--server-reference", REFERENCE,
                                                     "--redirect", "temporary"), id="temporary"),
    pytest.param(0x9D, marks=pytest.mark.broker_args("--server-reference", REFERENCE,
                                                     "--redirect", "permanent"), id="permanent"),
])
def test_mqttjs_sees_redirection(broker, code):
    """§4.11: MQTT.js gets CONNACK 0x9C Use another server / 0x9D Server moved with the
    Server Reference (two servers, space-separated), reports the code as its error and does
    not stay connected."""
    rec = run_js("connect", port=broker.port, clientId=id_on_shard("mqttjs-moved-", 0),
                 method=None)
    assert rec["connack"]["serverReference"] == REFERENCE, rec
    assert_refused(rec, code)
