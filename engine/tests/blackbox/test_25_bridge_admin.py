"""Bridges, continued (`test_21_bridge.py` holds the fixtures): WebSocket remotes, and the
bridges' state and control through shardmq's `$SYS` and admin API. The remote is always
Debian's Mosquitto; with BROKER=mosquitto the edge is Mosquitto too, and the tests of
shardmq-only features skip.
"""

from __future__ import annotations

import signal
import time

import pytest

from conftest import _free_port
from test_21_bridge import link_up, net  # noqa: F401  (net: the fixture)
from util import WAIT, is_mosquitto


@pytest.mark.parametrize("scheme", ["ws", "wss"])
def test_websocket_to_the_remote(net, tmp_path, scheme):
    """`ws://` and `wss://` remotes (MQTT over WebSocket, MQTT 5.0 §6): messages of every
    size cross both ways through Mosquitto's WebSocket listener, in order; Mosquitto's
    bridge cannot connect over WebSocket, so this runs against shardmq's only."""
    if is_mosquitto():
        pytest.skip("Mosquitto's bridges connect over TCP/TLS only")
    from tlsutil import Pki

    ws_port = _free_port()
    extra = [f"listener {ws_port} 127.0.0.1", "protocol websockets"]
    tls = None
    if scheme == "wss":
        pki = Pki(tmp_path)
        server_cert, server_key = pki.issue("localhost", server=True)
        client_cert, client_key = pki.issue("edge-bridge")
        extra += [f"cafile {pki.ca}", f"certfile {server_cert}", f"keyfile {server_key}"]
        tls = (pki.ca, client_cert, client_key)
    net.start_remote(extra)
    net.start_edge(["web/# both 1"], tls=tls, remote_port=ws_port, scheme=scheme,
                   protocol="5.0")
    remote_sub = net.client(net.remote, 4)
    remote_sub.subscribe("web/out", 1)
    edge_pub = net.client(net.edge, 4)
    link_up(edge_pub, "web/out", remote_sub)
    edge_sub = net.client(net.edge, 4)
    edge_sub.subscribe("web/in", 1)
    remote_pub = net.client(net.remote, 4)
    link_up(remote_pub, "web/in", edge_sub)
    sizes = [0, 1, 125, 126, 65_535, 65_536, 300_000] + [10] * 43
    payloads = [bytes([i % 251]) * n for i, n in enumerate(sizes)]
    for p in payloads:
        edge_pub.publish("web/out", p, 1)
        remote_pub.publish("web/in", p, 1)
    assert [m.payload for m in remote_sub.get_n(len(payloads))] == payloads
    assert [m.payload for m in edge_sub.get_n(len(payloads))] == payloads


def test_bridges_in_the_admin_api(net):
    """`GET /api/v1/bridges` lists the bridge with where it goes and its counters, which move
    as messages cross (shardmq's admin API; Mosquitto has none)."""
    if is_mosquitto():
        pytest.skip("shardmq's admin API")
    import json
    import urllib.error
    import urllib.request

    net.start_remote()
    http_port = _free_port()
    net.start_edge(["api/# out 1"], http_port=http_port)
    remote_sub = net.client(net.remote, 4)
    remote_sub.subscribe("api/#", 1)
    edge_pub = net.client(net.edge, 4)
    link_up(edge_pub, "api/probe", remote_sub)
    for i in range(5):
        edge_pub.publish("api/x", b"%d" % i, 1)
    remote_sub.get_n(5)

    def bridges() -> list:
        # The HTTP listener opens right after the MQTT listeners: wait for it to answer.
        deadline = time.monotonic() + WAIT
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/api/v1/bridges",
                                            timeout=WAIT) as r:
                    return json.loads(r.read())["bridges"]
            except urllib.error.URLError:
                assert time.monotonic() < deadline, "the HTTP listener did not answer"
                time.sleep(0.05)

    [b] = bridges()
    assert b["name"] == net.bridge_name and b["connected"] is True, b
    assert b["addresses"] == [f"127.0.0.1:{net.remote.port}"] and b["protocol"] == "3.1.1", b
    # Every probe and message above was forwarded before it reached the remote subscriber.
    assert b["forwarded_out"] >= 7, b


def test_bridge_queue_depth_in_sys(net):
    """While the remote is down, `$SYS/broker/bridges/NAME/queue/messages` counts what waits
    in the bridge's local session for it, and falls back to 0 once the remote is back and has
    taken it (shardmq's $SYS; Mosquitto has no such topic)."""
    if is_mosquitto():
        pytest.skip("shardmq's $SYS/broker/bridges")
    net.start_remote()
    net.start_edge(["dq/# out 1"])
    remote_sub = net.client(net.remote, 4)
    remote_sub.subscribe("dq/#", 1)
    edge_pub = net.client(net.edge, 4)
    link_up(edge_pub, "dq/probe", remote_sub)
    remote_sub.stop()
    net.remote.stop(signal.SIGTERM)
    for i in range(7):
        edge_pub.publish("dq/x", b"%d" % i, 1)
    watcher = net.client(net.edge, 4)
    watcher.subscribe(f"$SYS/broker/bridges/{net.bridge_name}/queue/messages", 0)

    def wait_for(value: bytes) -> None:
        seen = []
        while (m := watcher.get(timeout=WAIT)).payload != value:
            seen.append(m.payload)
            assert len(seen) < 60, f"queue depth never {value!r}: {seen}"

    wait_for(b"7")
    net.remote.start()
    wait_for(b"0")


def _api(port: int, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    """One admin API request; returns (status, JSON body)."""
    import json
    import urllib.error
    import urllib.request

    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    deadline = time.monotonic() + WAIT
    while True:
        try:
            with urllib.request.urlopen(req, timeout=WAIT) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())
        except urllib.error.URLError:
            # The HTTP listener opens right after the MQTT listeners.
            assert time.monotonic() < deadline, "the HTTP listener did not answer"
            time.sleep(0.05)


def test_bridges_added_and_removed_through_the_api(net):
    """`POST /api/v1/bridges` starts a bridge at run time (same keys as a [[bridge]] table,
    errors name the key, a second one of the same name is 409); `DELETE` stops it and keeps
    its local session, so messages published meanwhile cross once it is added back;
    `?discard_session=true` ends that session too, and its retained $SYS topics are cleared
    (shardmq's admin API; Mosquitto has none)."""
    if is_mosquitto():
        pytest.skip("shardmq's admin API")
    net.start_remote()
    http = _free_port()
    net.start_edge(["api/# out 1"], http_port=http)
    remote_sub = net.client(net.remote, 4)
    remote_sub.subscribe("dyn/#", 1)
    edge_pub = net.client(net.edge, 4)
    dyn = {"name": "dyn", "address": f"mqtt://127.0.0.1:{net.remote.port}",
           "topics": ["dyn/# out 1"], "reconnect_min_secs": 1, "reconnect_max_secs": 2}

    status, b = _api(http, "POST", "/api/v1/bridges", dyn)
    assert status == 201 and b["name"] == "dyn" and b["local_client_id"] == "bridge-dyn", b
    link_up(edge_pub, "dyn/probe", remote_sub)
    status, e = _api(http, "POST", "/api/v1/bridges", dyn)
    assert status == 409 and e["field"] == "name", e
    status, e = _api(http, "POST", "/api/v1/bridges", {**dyn, "name": "x", "topics": ["a up 1"]})
    assert status == 400 and e["field"] == "topics", e
    status, e = _api(http, "POST", "/api/v1/bridges", {**dyn, "name": "y", "colour": "red"})
    assert status == 400 and e["field"] == "colour", e
    status, listed = _api(http, "GET", "/api/v1/bridges")
    assert sorted(x["name"] for x in listed["bridges"]) == sorted([net.bridge_name, "dyn"])

    watcher = net.client(net.edge, 4)
    watcher.subscribe("$SYS/broker/bridges/dyn/connected", 0)
    assert watcher.get().payload in (b"0", b"1")  # shard 0 reports the added bridge

    # Removed, its session stays: what is published meanwhile waits there.
    status, r = _api(http, "DELETE", "/api/v1/bridges/dyn")
    assert status == 200 and r == {"name": "dyn", "removed": True, "session_ended": False}, r
    for i in range(5):
        edge_pub.publish("dyn/x", b"%d" % i, 1)
    status, _ = _api(http, "POST", "/api/v1/bridges", dyn)
    assert status == 201
    got = [m.payload for m in remote_sub.get_n(5, timeout=WAIT * 2)]
    assert got == [b"%d" % i for i in range(5)], got

    status, r = _api(http, "DELETE", "/api/v1/bridges/dyn?discard_session=true")
    assert status == 200 and r["session_ended"] is True, r
    status, _ = _api(http, "GET", "/api/v1/clients/bridge-dyn")
    assert status == 404
    status, _ = _api(http, "DELETE", "/api/v1/bridges/dyn")
    assert status == 404
    status, listed = _api(http, "GET", "/api/v1/bridges")
    assert [x["name"] for x in listed["bridges"]] == [net.bridge_name]
    # Its retained $SYS topic is cleared: the watcher sees the empty value.
    while watcher.get().payload != b"":
        pass
