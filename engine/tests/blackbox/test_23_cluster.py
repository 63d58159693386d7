"""The cluster (issue #16): three shardmq nodes as separate processes on 127.0.0.11, .12 and
.13, each behind a test-owned proxy that can cut traffic by source IP (cluster_nodes.py,
cluster_proxy.py). Clients connect to any node; what one node's client publishes reaches the
matching subscribers of every node, in order per publisher, once each; a client id is unique
cluster-wide (the older connection gets 5.0 DISCONNECT 0x8E, Session taken over
[MQTT-3.1.4-3]); retained messages are on every node; a node killed with SIGKILL is declared
down and the others keep serving; a partition leaves each side serving its own clients and
heals. Waits are for what the nodes report (`GET /api/v1/cluster`, `$SYS`) or for messages,
never a sleep before an assertion.

The tests that leave the cluster as they found it share one cluster (module scope); the kill
and the partition each get a fresh one.
"""

from __future__ import annotations

import subprocess
import threading
import time

import pytest

import mqttraw as m
from cluster_nodes import CONVERGE_SECS, Cluster, wait_route
from conftest import _shardmq_bin
from util import BROKER, VERSION_IDS, WAIT, PahoClient, uid

pytestmark = pytest.mark.skipif(BROKER != "shardmq", reason="shardmq's cluster")

ALL = {1, 2, 3}
COUNTERS = ["node_id", "members", "links_up", "messages_out", "messages_in", "bytes_out",
            "bytes_in", "messages_dropped", "routes_remote", "takeovers", "links_handshake_failures"]


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory):
    cl = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        cl.start()
    except BaseException:
        cl.close()
        raise
    yield cl
    crashed = cl.close()
    assert not crashed, "\n".join(crashed)


@pytest.fixture
def cluster(shared_cluster):
    """The module's three nodes, alive and converged; the clients this test made are closed
    after it, and a node that died during it fails it."""
    cl = shared_cluster
    cl.wait_view(cl.nodes.values(), ALL)
    first = len(cl.clients)
    yield cl
    for c in cl.clients[first:]:
        c.stop() if isinstance(c, PahoClient) else c.close()
    del cl.clients[first:]
    dead = [n for n in cl.nodes.values() if not n.alive()]
    if dead:
        pytest.fail(f"{dead[0]} exited during the test:\n{dead[0].log.read_text()[-4000:]}")


@pytest.fixture
def fresh_cluster(tmp_path):
    cl = Cluster(tmp_path)
    try:
        cl.start()
    except BaseException:
        cl.close()
        raise
    yield cl
    crashed = cl.close()
    if crashed:
        pytest.fail("\n".join(crashed))


def payloads_until(c: PahoClient, end: bytes) -> list[bytes]:
    """Payloads `c` receives before the one equal to `end`."""
    out = []
    while (msg := c.get()).payload != end:
        out.append(msg.payload)
    return out


def recv_payload(c: m.RawClient) -> bytes:
    """The next PUBLISH's payload; a timeout says what it means for a moved session."""
    try:
        return c.recv_publish().payload
    except TimeoutError:
        raise AssertionError(
            "a QoS 1 message acknowledged to its publisher after the moved session's CONNACK "
            "never arrived (lost: is CONNACK sent before every peer holds the moved "
            "subscriptions' routes?)") from None


def wait_counter(node, name: str, at_least: int) -> int:
    """Reads `name` from `node`'s /api/v1/cluster until it reaches `at_least`."""
    deadline = time.monotonic() + WAIT
    while (v := node.counter(name)) < at_least:
        assert time.monotonic() < deadline, f"{node}: {name} stayed at {v} < {at_least}"
        time.sleep(0.05)
    return v


# -- membership --------------------------------------------------------------------------------

def test_membership_in_api_and_sys(cluster):
    """Every node lists the three members at their advertised addresses, alive, with links up,
    and the counters named as in $SYS; `$SYS/broker/cluster/members` says 3."""
    for n in cluster.nodes.values():
        st = n.cluster_status()
        assert st["node_id"] == n.id, st
        by_id = {mb["node_id"]: mb for mb in st["members"]}
        assert set(by_id) == ALL, st
        for i, other in cluster.nodes.items():
            assert by_id[i]["addr"] == other.advertised, st
            assert by_id[i]["state"] == "alive", st
            assert by_id[i]["link"] == ("self" if i == n.id else "up"), st
        for name in COUNTERS:
            assert name in st["counters"], (name, st["counters"])
        assert st["counters"]["node_id"] == n.id
        assert st["counters"]["members"] == 3
        assert st["counters"]["links_up"] == 2
    c = cluster.client(cluster.b, 4)
    c.subscribe([("$SYS/broker/cluster/members", 0), ("$SYS/broker/cluster/node_id", 0)])
    seen: dict = {}
    deadline = time.monotonic() + WAIT
    while seen.get("$SYS/broker/cluster/members") != b"3" or "$SYS/broker/cluster/node_id" not in seen:
        msg = c.get(max(0.1, deadline - time.monotonic()))
        seen[msg.topic] = msg.payload
    assert seen["$SYS/broker/cluster/node_id"] == b"2", seen


# -- cross-node pub/sub ------------------------------------------------------------------------

@pytest.mark.parametrize("version", [4, 5], ids=VERSION_IDS.get)
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_cross_node_pubsub_in_order_once(cluster, topic, version, qos):
    """Subscribers on B and C, publishers on A and C: each subscriber gets every message of each
    publisher once, in that publisher's order, at the subscription's QoS."""
    subs = [cluster.client(cluster.b, version), cluster.client(cluster.c, version)]
    for s in subs:
        assert s.subscribe(f"{topic}/#", qos) == [qos]
    pubs = {b"A": cluster.client(cluster.a, version), b"C": cluster.client(cluster.c, version)}
    n = 30
    for i in range(n):
        for name, p in pubs.items():
            p.publish(f"{topic}/{name.decode()}", b"%s-%d" % (name, i), qos)
    for s in subs:
        got = s.get_n(2 * n)
        assert all(msg.qos == qos for msg in got), [msg.qos for msg in got]
        for name in pubs:
            mine = [msg.payload for msg in got if msg.payload.startswith(name + b"-")]
            assert mine == [b"%s-%d" % (name, i) for i in range(n)], (s.client_id, name, mine)
    # Nothing more (no duplicate): a QoS 1 marker from A comes next.
    pubs[b"A"].publish(f"{topic}/end", b"end", 1)
    for s in subs:
        s.expect_marker(f"{topic}/end")


def test_wildcards_one_copy_per_subscriber_one_per_node(cluster, topic):
    """Two wildcard subscribers on B and one on C: each gets one copy of each message, and
    one copy per destination node crosses the links (A's messages_out grows by 2 per message,
    B's and C's messages_in by 1)."""
    s1 = cluster.client(cluster.b, 5)
    s1.subscribe(f"{topic}/+/temp", 1)
    s2 = cluster.client(cluster.b, 4)
    s2.subscribe(f"{topic}/#", 1)
    s3 = cluster.client(cluster.c, 5)
    s3.subscribe(f"{topic}/#", 1)
    pub = cluster.client(cluster.a, 5)
    before = {n.name: n.cluster_status()["counters"] for n in cluster.nodes.values()}
    n = 20
    for i in range(n):
        pub.publish(f"{topic}/room{i}/temp", b"%d" % i, 1)
    pub.publish(f"{topic}/end/temp", b"end", 1)
    want = [b"%d" % i for i in range(n)]
    for s in (s1, s2, s3):
        assert payloads_until(s, b"end") == want, s.client_id
    pub.publish(f"{topic}/end2/temp", b"end2", 1)
    for s in (s1, s2, s3):
        s.expect_marker(f"{topic}/end2/temp")
    crossed = n + 2  # the messages and both markers
    out = wait_counter(cluster.a, "messages_out", before["A"]["messages_out"] + 2 * crossed)
    assert out == before["A"]["messages_out"] + 2 * crossed, "one copy per destination node"
    for node in (cluster.b, cluster.c):
        got = wait_counter(node, "messages_in", before[node.name]["messages_in"] + crossed)
        assert got == before[node.name]["messages_in"] + crossed, node
    assert cluster.a.counter("bytes_out") > before["A"]["bytes_out"]


# -- client ids --------------------------------------------------------------------------------

@pytest.mark.parametrize("version", [4, 5], ids=VERSION_IDS.get)
def test_takeover_across_nodes(cluster, topic, version):
    """A client id connected on A, then on B: A's connection gets DISCONNECT 0x8E (5.0
    [MQTT-3.1.4-3]) or is closed (3.1.1 [MQTT-3.1.4-2]); the persistent session moves to B
    (Session Present, its subscription delivers there)."""
    props = {m.PROP_SESSION_EXPIRY: 300} if version == 5 else None
    pub = cluster.raw(cluster.c, version)
    pub.connect_ok(uid("pub-"))
    takeovers = cluster.a.counter("takeovers")
    ids = 3
    for i in range(ids):
        cid = uid(f"take{i}-")
        first = cluster.raw(cluster.a, version)
        first.connect_ok(cid, clean=False, props=props)
        first.subscribe([(f"{topic}/{i}", 1)])
        second = cluster.raw(cluster.b, version)
        ack = second.connect_ok(cid, clean=False, props=props)
        got = [(p.type, p.code) for p in first.wait_closed(WAIT)]
        assert got == ([] if version == 4 else [(m.DISCONNECT, 0x8E)]), got
        # The session came along: its subscription delivers on B without a new SUBSCRIBE.
        assert ack.session_present, f"{cid}: the session must move with the takeover"
        pub.publish(f"{topic}/{i}", b"to B %d" % i, qos=1)
        assert recv_payload(second) == b"to B %d" % i
        second.ping()
        second.disconnect()
    # A ended `ids` connections because their ids connected on B.
    assert wait_counter(cluster.a, "takeovers", takeovers + ids) == takeovers + ids


@pytest.mark.parametrize("version", [4, 5], ids=VERSION_IDS.get)
def test_persistent_session_moves_with_its_queue(cluster, topic, version):
    """Issue #16: a persistent session moves with its subscriptions and queue to the node of
    the new connection. Offline on A with three QoS 1 messages queued there, the client
    connects on B: Session Present, the three arrive in order, then live ones, once."""
    cid = uid("move-")
    props = {m.PROP_SESSION_EXPIRY: 300} if version == 5 else None
    first = cluster.raw(cluster.a, version)
    first.connect_ok(cid, clean=False, props=props)
    first.subscribe([(topic, 1)])
    first.disconnect()
    pub = cluster.raw(cluster.c, version)
    pub.connect_ok(uid("pub-"))
    for i in range(3):
        pub.publish(topic, b"queued %d" % i, qos=1)
    # The marker that A holds them: its admin API counts them in the offline session.
    deadline = time.monotonic() + WAIT
    while (held := cluster.a.get_json(f"/api/v1/clients/{cid}"))["queued_messages"] < 3:
        assert time.monotonic() < deadline, f"A did not queue the 3 messages: {held}"
        time.sleep(0.05)
    assert not held["connected"], held
    second = cluster.raw(cluster.b, version)
    ack = second.connect_ok(cid, clean=False, props=props)
    assert ack.session_present, "the session should have moved from A to B"
    assert [second.recv_publish().payload for _ in range(3)] == [b"queued %d" % i for i in range(3)]
    pub.publish(topic, b"live", qos=1)
    assert recv_payload(second) == b"live"
    second.expect_nothing_before_pingresp()


# -- retained ----------------------------------------------------------------------------------

def test_retained_across_nodes(cluster, topic):
    """Retained on A: a new subscriber on C gets it. Cleared on B: a new subscriber on A gets
    nothing (a marker published after comes first)."""
    t = f"{topic}/kept"
    watch_a = cluster.client(cluster.a, 5)
    watch_a.subscribe(t, 1)
    watch_c = cluster.client(cluster.c, 5)
    watch_c.subscribe(t, 1)
    cluster.client(cluster.a, 4).publish(t, b"kept", 1, retain=True)
    # C has handled the message once its live copy arrived there.
    assert watch_c.get().payload == b"kept"
    assert watch_a.get().payload == b"kept"
    late_c = cluster.client(cluster.c, 4)
    late_c.subscribe(t, 1)
    msg = late_c.get()
    assert (msg.payload, msg.retain) == (b"kept", True)
    cluster.client(cluster.b, 5).publish(t, b"", 1, retain=True)
    # A has handled the clear once the (empty) live copy arrived there.
    assert watch_a.get().payload == b""
    late_a = cluster.client(cluster.a, 5)
    late_a.subscribe([(t, 1), (f"{topic}/marker", 1)])
    cluster.client(cluster.a, 4).publish(f"{topic}/marker", b"m", 1)
    late_a.expect_marker(f"{topic}/marker")


# -- shared subscriptions ----------------------------------------------------------------------

def test_shared_subscription_one_member_cluster_wide(cluster, topic):
    """`$share/g/T` with one member on B and one on C, publisher on A: each message reaches
    exactly one member of the group, cluster-wide."""
    g = uid("g")
    members = [cluster.client(cluster.b, 5), cluster.client(cluster.c, 5)]
    for s in members:
        assert s.subscribe([(f"$share/{g}/{topic}/s", 1), (f"{topic}/end", 1)]) == [1, 1]
    pub = cluster.client(cluster.a, 5)
    n = 20
    for i in range(n):
        pub.publish(f"{topic}/s", b"%d" % i, 1)
    pub.publish(f"{topic}/end", b"end", 1)
    got = [payloads_until(s, b"end") for s in members]
    everything = sorted(got[0] + got[1], key=int)
    assert everything == [b"%d" % i for i in range(n)], (
        f"each message once in the group: B got {len(got[0])}, C got {len(got[1])} of {n}")


# -- failures ----------------------------------------------------------------------------------

class Stream:
    """Publishes `0`, `1`, `2`, ... at QoS 1 on `topic` from a thread until stopped."""

    def __init__(self, pub: PahoClient, topic: str):
        self.pub, self.topic = pub, topic
        self.sent = 0
        self.error: BaseException | None = None
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "Stream":
        self.thread.start()
        return self

    def _run(self) -> None:
        try:
            while not self.stopping.is_set():
                self.pub.publish(self.topic, b"%d" % self.sent, 1)
                self.sent += 1
                self.stopping.wait(0.005)  # pace: about 150 messages a second at most
        except BaseException as e:  # reported by stop()
            self.error = e

    def stop(self) -> int:
        self.stopping.set()
        self.thread.join(WAIT * 2)
        assert self.error is None, f"the publisher failed: {self.error!r}"
        return self.sent


def numbers_until_end(c: PahoClient) -> list[int]:
    return [int(p) for p in payloads_until(c, b"end")]


def test_sigkill_node_mid_stream_and_rejoin(fresh_cluster, topic):
    """Publisher on A, subscribers on B and C; C is killed with SIGKILL mid-stream: A and B
    keep delivering (B misses nothing), membership drops to 2; C restarts on the same data
    directory, rejoins, and a new subscriber on C gets the stream's next messages."""
    cl = fresh_cluster
    sub_b = cl.client(cl.b, 5)
    sub_b.subscribe(topic, 1)
    sub_c = cl.client(cl.c, 4)
    sub_c.subscribe(topic, 1)
    stream = Stream(cl.client(cl.a, 5), topic).start()
    seen_c = [int(msg.payload) for msg in sub_c.get_n(20)]
    assert seen_c == list(range(20)), seen_c
    cl.c.kill()
    cl.wait_view([cl.a, cl.b], {1, 2})
    # Still delivering to B: a message sent after both saw C gone arrives.
    after = stream.sent + 10
    got_b = []
    while not got_b or got_b[-1] < after:
        got_b.append(int(sub_b.get().payload))
    cl.restart(cl.c)
    cl.wait_view(cl.nodes.values(), ALL)
    sub_c2 = cl.client(cl.c, 5)
    sub_c2.subscribe(topic, 1)
    first = int(sub_c2.get().payload)
    sent = stream.stop()
    stream.pub.publish(topic, b"end", 1)  # the same publisher: it comes after the stream
    got_b += numbers_until_end(sub_b)
    assert got_b == list(range(sent)), f"B missed or repeated messages: {_gaps(got_b, sent)}"
    got_c = [first] + numbers_until_end(sub_c2)
    assert got_c == list(range(first, sent)), f"C after the restart: {_gaps(got_c, sent)}"


def _gaps(got: list[int], sent: int) -> str:
    missing = sorted(set(range(sent)) - set(got))
    dups = len(got) - len(set(got))
    return f"{len(got)} received of {sent}, missing {missing[:10]}..., {dups} duplicates"


def wait_one_closed(clients: list, secs: float):
    """Until the broker closes one of `clients` (raw); returns it and what it got before."""
    deadline = time.monotonic() + secs
    while True:
        for x in clients:
            if not x.is_open_after(0.2):
                got, x.stash = x.stash, []
                return x, got
        assert time.monotonic() < deadline, f"none of the connections was closed within {secs} s"


def test_partition_and_heal(fresh_cluster, topic):
    """{A} | {B, C}: no node crashes, each side serves its own clients (A's publisher reaches
    A's subscriber; B's reaches B's and C's). After the heal: 3 members again, routes converge
    and cross-node delivery works both ways; a client id connected on both sides during the
    split ends connected on exactly one (the later CONNECT, ARCHITECTURE.md), the other
    getting DISCONNECT 0x8E."""
    cl = fresh_cluster
    a, b, c = cl.a, cl.b, cl.c
    subs = {}
    for n in (a, b, c):
        subs[n.name] = cl.client(n, 5)
        subs[n.name].subscribe(f"{topic}/#", 1)
    sa, sb, sc = subs["A"], subs["B"], subs["C"]
    pa, pb = cl.client(a, 5), cl.client(b, 4)
    pa.publish(f"{topic}/x", b"before", 1)
    for s in (sa, sb, sc):
        assert s.get().payload == b"before", s.client_id
    dup = uid("dup-")
    x_a = cl.raw(a, 5)
    x_a.send(m.connect(dup, version=5, keepalive=0))
    assert x_a.expect(m.CONNACK).code == 0

    cl.partition([a], [b, c])
    cl.wait_view([a], {1})
    cl.wait_view([b, c], {2, 3})
    pa.publish(f"{topic}/a", b"side A", 1)
    assert sa.get().payload == b"side A"
    pb.publish(f"{topic}/b", b"side B", 1)
    assert sb.get().payload == b"side B"
    assert sc.get().payload == b"side B"
    x_b = cl.raw(b, 5)
    x_b.send(m.connect(dup, version=5, keepalive=0))
    assert x_b.expect(m.CONNACK).code == 0
    x_a.ping()  # A cannot hear of it during the split

    cl.heal()
    cl.wait_view(cl.nodes.values(), ALL)
    # Messages published on one side during the split may reach the other late (QoS 1 kept
    # for a session); probes are what the wait is for.
    stale = {b"side A", b"side B"}
    wait_route(pa, f"{topic}/probe-a", [sa, sb, sc], stale=stale)
    wait_route(pb, f"{topic}/probe-b", [sa, sb, sc], stale=stale)
    pa.publish(f"{topic}/y", b"after A", 1)
    pb.publish(f"{topic}/y", b"after B", 1)
    for s in (sa, sb, sc):
        assert sorted(msg.payload for msg in s.get_n(2)) == [b"after A", b"after B"], s.client_id

    closed, got = wait_one_closed([x_a, x_b], CONVERGE_SECS)
    survivor = x_b if closed is x_a else x_a
    where = "A (the earlier CONNECT)" if closed is x_a else "B (the later CONNECT)"
    assert [(p.type, p.code) for p in got] == [(m.DISCONNECT, 0x8E)], (
        f"the connection on {where} was closed after the heal with {got}, not DISCONNECT 0x8E")
    # The survivor stays: a round trip through the cluster, then it still answers.
    survivor.ping()
    pa.publish(f"{topic}/z", b"settled", 1)
    assert sb.get().payload == b"settled"
    survivor.ping()
    assert survivor is x_b, "the later CONNECT (on B, during the split) should win the heal"


# -- configuration -----------------------------------------------------------------------------

L = ["--cluster-listen", "127.0.0.11:7000"]


@pytest.mark.parametrize("args,says", [
    (["--node-id", "64", *L], "--node-id 64"),
    (["--node-id", "1", "--cluster-listen", "not-an-address"], "--cluster-listen `not-an-address`"),
    (["--node-id", "1", "--cluster-listen", "127.0.0.11:0"], "port 0"),
    (["--node-id", "1", *L, "--cluster-seeds", "nowhere"], "--cluster-seeds `nowhere`"),
    (L, "--node-id"),
])
def test_bad_cluster_flags_refused(tmp_path, args, says):
    """A node id past 63, an unparsable or port-0 address, or a cluster flag without
    --node-id stops start-up, nothing panics, and the message names the flag."""
    cmd = [_shardmq_bin(), "--listen", "127.0.0.1:0", "--in-memory", "--no-pin", *args]
    r = subprocess.run(cmd, cwd=tmp_path, capture_output=True, timeout=WAIT * 2)
    text = (r.stdout + r.stderr).decode(errors="replace")
    assert r.returncode != 0, text
    assert says in text, text
    assert "panicked" not in text and "unexpected argument" not in text, text
