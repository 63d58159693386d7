"""Three shardmq nodes as separate processes on 127.0.0.11, .12 and .13, each behind a
test-owned `ClusterProxy` (cluster_proxy.py), for the cluster tests (test_23_cluster.py).

Node i runs with `--node-id i --cluster-listen 127.0.0.1X:real --cluster-advertise
127.0.0.1X:proxy --cluster-seeds <the three proxies>` (its own address among the seeds is
ignored, CLUSTER.md), MQTT and HTTP on port 0 of 127.0.0.1 (read from its `listening on` and
`http listening on` lines), and its own data directory (kept across a restart). Every wait is
for a state the nodes report (`GET /api/v1/cluster`) or a message that must arrive, with a
deadline, never a sleep before an assertion.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import mqttraw
from cluster_proxy import ClusterProxy, free_port_pair
from conftest import START_TIMEOUT_SECS, _die_with_parent, _shardmq_bin, _tail
from util import WAIT, PahoClient, uid

# How long a cluster may take to form or to notice a change (foca's probe period and suspicion
# timeout, a link dial); generous for a loaded 2-core machine.
CONVERGE_SECS = 40.0
IPS = {1: "127.0.0.11", 2: "127.0.0.12", 3: "127.0.0.13"}
NAMES = {1: "A", 2: "B", 3: "C"}


class Node:
    """One shardmq process with `--node-id`, behind its proxy."""

    def __init__(self, node_id: int, workdir: Path):
        self.id, self.ip, self.name = node_id, IPS[node_id], NAMES[node_id]
        self.workdir = workdir / f"node-{self.name}"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.real_port = free_port_pair(self.ip)
        self.proxy = ClusterProxy(self.ip, self.real_port, name=self.name)
        self.proc: subprocess.Popen | None = None
        self.mqtt: tuple[str, int] | None = None
        self.http: str | None = None
        self.log = self.workdir / "stderr.log"
        self.starts = 0

    @property
    def advertised(self) -> str:
        return self.proxy.addr

    def argv(self, seeds: list[str]) -> list[str]:
        return [_shardmq_bin(), "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0",
                "--shards", "2", "--no-pin", "--sys-interval-secs", "1", "--log-level", "info",
                "--data-dir", str(self.workdir / "data"), "--durability", "none",
                "--node-id", str(self.id),
                "--cluster-listen", f"{self.ip}:{self.real_port}",
                "--cluster-advertise", self.advertised,
                "--cluster-seeds", ",".join(seeds)]

    def start(self, seeds: list[str]) -> "Node":
        cmd = self.argv(seeds)
        self.starts += 1
        env = {k: v for k, v in os.environ.items() if k != "RUST_LOG"}
        with open(self.log, "ab") as err:
            err.write(f"==== start {self.starts}: {' '.join(cmd)}\n".encode())
            err.flush()
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err,
                                         stdin=subprocess.DEVNULL, cwd=self.workdir, env=env,
                                         preexec_fn=_die_with_parent)
        found: dict = {}
        ready = threading.Event()
        proc = self.proc

        def drain():
            for line in proc.stdout:
                text = line.decode(errors="replace").strip()
                if text.startswith("listening on ") and "mqtt" not in found:
                    found["mqtt"] = text[len("listening on "):]
                elif text.startswith("http listening on "):
                    found["http"] = text[len("http listening on "):]
                if "mqtt" in found and "http" in found:
                    ready.set()
            ready.set()

        threading.Thread(target=drain, daemon=True).start()
        if not ready.wait(START_TIMEOUT_SECS) or "http" not in found or "mqtt" not in found:
            proc.kill()
            proc.wait()
            raise AssertionError(f"node {self.name} did not print its listening lines within "
                                 f"{START_TIMEOUT_SECS} s (exit {proc.returncode}):\n"
                                 f"{' '.join(cmd)}\n{_tail(self.log)}")
        host, _, port = found["mqtt"].removeprefix("mqtt://").rpartition(":")
        self.mqtt = (host, int(port))
        self.http = "http://" + found["http"]
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, and wait for the process to be gone."""
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()

    def terminate(self) -> int | None:
        """SIGTERM (SIGKILL after 10 s); the exit status if it had died before (a crash)."""
        if self.proc is None:
            return None
        died = self.proc.poll()
        if died is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return died

    def get_json(self, path: str) -> dict:
        """`GET path` on the admin API, parsed (an HTTP error raises)."""
        with urllib.request.urlopen(self.http + path, timeout=WAIT) as r:
            assert r.status == 200, r.status
            return json.loads(r.read())

    def cluster_status(self) -> dict:
        """`GET /api/v1/cluster`, parsed."""
        return self.get_json("/api/v1/cluster")

    def counter(self, name: str) -> int:
        return int(self.cluster_status()["counters"][name])

    def __repr__(self) -> str:
        return f"node {self.name} (id {self.id}, {self.advertised})"


def alive_ids(status: dict) -> set[int]:
    return {m["node_id"] for m in status["members"] if m["state"] == "alive"}


def view_is(status: dict, me: int, expected: set[int]) -> bool:
    """`status` (node `me`'s) shows exactly `expected` alive, with a link up to each of them,
    and every other member it lists declared down (not merely suspected)."""
    if alive_ids(status) != expected:
        return False
    if any(m["state"] != "down" for m in status["members"] if m["node_id"] not in expected):
        return False
    links = {m["node_id"]: m["link"] for m in status["members"]}
    return all(links.get(n) == ("self" if n == me else "up") for n in expected)


class Cluster:
    """Nodes A, B, C (ids 1, 2, 3), their proxies, and the clients the test made."""

    def __init__(self, workdir: Path, ids=(1, 2, 3)):
        self.nodes = {i: Node(i, workdir) for i in ids}
        self.clients: list = []

    @property
    def a(self) -> Node:
        return self.nodes[1]

    @property
    def b(self) -> Node:
        return self.nodes[2]

    @property
    def c(self) -> Node:
        return self.nodes[3]

    def seeds(self) -> list[str]:
        return [n.advertised for n in self.nodes.values()]

    def start(self) -> "Cluster":
        for n in self.nodes.values():
            n.start(self.seeds())
        self.wait_view(self.nodes.values(), set(self.nodes))
        return self

    def restart(self, node: Node) -> None:
        node.start(self.seeds())

    # -- waiting for a view --

    def wait_view(self, nodes, expected: set[int], secs: float = CONVERGE_SECS) -> None:
        """Until each of `nodes` reports exactly `expected` alive, with links up between them."""
        deadline = time.monotonic() + secs
        for n in nodes:
            last = None
            while True:
                assert n.alive(), f"{n} exited:\n{_tail(n.log)}"
                try:
                    last = n.cluster_status()
                    if view_is(last, n.id, expected):
                        break
                except (OSError, urllib.error.URLError, KeyError, ValueError) as e:
                    last = f"{type(e).__name__}: {e}"
                assert time.monotonic() < deadline, (
                    f"{n} did not see members {sorted(expected)} alive with links up within "
                    f"{secs} s; last /api/v1/cluster: {last}")
                time.sleep(0.1)

    # -- partitions --

    def partition(self, left: list[Node], right: list[Node]) -> None:
        """Cuts every path between `left` and `right` (both directions: each side's proxies
        drop what comes from the other side's IPs)."""
        for n in left:
            n.proxy.cut({m.ip for m in right})
        for n in right:
            n.proxy.cut({m.ip for m in left})

    def heal(self) -> None:
        for n in self.nodes.values():
            n.proxy.restore()

    # -- clients --

    def client(self, node: Node, version: int = 4, connect: bool = True, **kw) -> PahoClient:
        c = PahoClient(node.mqtt, version=version, **kw)
        self.clients.append(c)
        if connect:
            c.connect()
        return c

    def raw(self, node: Node, version: int = 4) -> mqttraw.RawClient:
        c = mqttraw.RawClient(node.mqtt[0], node.mqtt[1], version=version, timeout=WAIT)
        self.clients.append(c)
        return c

    def close(self) -> list[str]:
        """Stops everything; returns a description of each node that had died (a crash)."""
        for c in self.clients:
            try:
                c.stop() if isinstance(c, PahoClient) else c.close()
            except Exception:
                pass
        crashed = []
        for n in self.nodes.values():
            died = n.terminate()
            if died is not None and died != -signal.SIGKILL:
                crashed.append(f"{n} exited with status {died}:\n{_tail(n.log)}")
            n.proxy.close()
        return crashed


def wait_route(pub: PahoClient, topic: str, subs: list[PahoClient],
               secs: float = CONVERGE_SECS, stale=frozenset()) -> None:
    """Publishes QoS 0 probes on `topic` until every one of `subs` has received one (the
    routes from the publisher's node to theirs are in place), then ends with a QoS 1 marker
    that each of `subs` drains up to, so that no probe is left in their queues. Payloads in
    `stale` (messages that may arrive late) are skipped; any other is a failure."""
    deadline = time.monotonic() + secs
    waiting = list(subs)
    while waiting:
        assert time.monotonic() < deadline, (
            f"probes on {topic} did not reach {[s.client_id for s in waiting]} within {secs} s")
        pub.publish(topic, b"probe", 0)
        still = []
        for s in waiting:
            try:
                m = s.messages.get(timeout=0.2)
            except queue.Empty:
                still.append(s)
                continue
            if m.payload in stale:
                still.append(s)
                continue
            assert m.payload == b"probe", m.payload
        waiting = still
    end = b"probe-end-" + uid().encode()
    pub.publish(topic, end, 1)
    for s in subs:
        while (m := s.get()).payload != end:
            assert m.payload == b"probe" or m.payload in stale, m.payload
