"""Per-listener anonymous access (`[[listener]] allow_anonymous`; Mosquitto:
`per_listener_settings true` with `allow_anonymous` under each `listener`): a loopback listener
for anonymous tools beside one that asks for a password. The same test runs against Mosquitto
with BROKER=mosquitto."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

import mqttraw as m
from conftest import _free_port, _mosquitto_bin, _shardmq_bin
from test_21_bridge import Proc
from util import BROKER, WAIT, PahoClient, id_on_shard, uid


@pytest.fixture
def two_listeners(tmp_path):
    pw = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(pw), "alice", "wonderland"],
                   check=True, capture_output=True)
    open_port, locked_port = _free_port(), _free_port()
    if BROKER == "mosquitto":
        conf = tmp_path / "m.conf"
        conf.write_text("\n".join([
            "per_listener_settings true", "user root", "persistence false", "log_dest stderr",
            f"listener {open_port} 127.0.0.1", "allow_anonymous true",
            f"listener {locked_port} 127.0.0.1", "allow_anonymous false", f"password_file {pw}",
        ]) + "\n")
        proc = Proc("broker", tmp_path, open_port, lambda: [_mosquitto_bin(), "-c", str(conf)])
    else:
        conf = tmp_path / "s.toml"
        conf.write_text(
            "shards = 2\nno_pin = true\n"
            f'[[listener]]\nurl = "mqtt://127.0.0.1:{open_port}"\nallow_anonymous = true\n'
            f'[[listener]]\nurl = "mqtt://127.0.0.1:{locked_port}"\nallow_anonymous = false\n'
            f'[auth]\npassword_file = "{pw}"\n')
        proc = Proc("broker", tmp_path, open_port,
                    lambda: [_shardmq_bin(), "--config", str(conf), "--in-memory"])
    proc.start()
    yield open_port, locked_port
    proc.stop()


def connack(port: int, **kw) -> int:
    c = m.RawClient("127.0.0.1", port, 4)
    try:
        return c.connect(uid("pl-"), **kw).code
    finally:
        c.close()


def test_anonymous_on_one_listener_passwords_on_the_other(two_listeners):
    open_port, locked_port = two_listeners
    assert connack(open_port) == 0, "anonymous refused on the open listener"
    assert connack(locked_port) == 5, "anonymous accepted on the password listener"
    assert connack(locked_port, username="alice", password=b"wonderland") == 0
    assert connack(locked_port, username="alice", password=b"nope") in (4, 5)
    # One broker behind both: a tool on the open listener reaches a user on the other.
    user = PahoClient(("127.0.0.1", locked_port), version=4)
    user.client.username_pw_set("alice", "wonderland")
    user.connect()
    tool = PahoClient(("127.0.0.1", open_port), version=4)
    tool.connect()
    try:
        user.subscribe("pl/#", 1)
        tool.publish("pl/x", b"from the open listener", 1)
        assert user.get().payload == b"from the open listener"
    finally:
        user.stop()
        tool.stop()


# -- per-listener password and ACL files, and max_connections -----------------------------
#
# Two listeners with their own files (Mosquitto: `per_listener_settings true` with
# `password_file`, `acl_file` and `max_connections` under each `listener`):
# - "inside": alice and bob; alice reads and writes a/#, bob everything.
# - "public": alice only, reading pub/#; at most two clients.

INSIDE_ACL = "user alice\ntopic readwrite a/#\nuser bob\ntopic readwrite #\n"
PUBLIC_ACL = "user alice\ntopic read pub/#\n"
PUBLIC_MAX = 2


def write_atomically(path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def passwd(path, *users) -> None:
    path.unlink(missing_ok=True)
    for name, pw in users:
        args = ["mosquitto_passwd", "-b", str(path), name, pw]
        if not path.exists():
            args.insert(1, "-c")
        subprocess.run(args, check=True, capture_output=True)


@pytest.fixture
def two_policies(tmp_path):
    pin, ppub = tmp_path / "inside.passwd", tmp_path / "public.passwd"
    passwd(pin, ("alice", "wonderland"), ("bob", "builder"))
    passwd(ppub, ("alice", "wonderland"))
    ain, apub = tmp_path / "inside.acl", tmp_path / "public.acl"
    ain.write_text(INSIDE_ACL)
    apub.write_text(PUBLIC_ACL)
    inside, public = _free_port(), _free_port()
    if BROKER == "mosquitto":
        conf = tmp_path / "m.conf"
        conf.write_text("\n".join([
            "per_listener_settings true", "user root", "persistence false", "log_dest stderr",
            f"listener {inside} 127.0.0.1", "allow_anonymous false", f"password_file {pin}",
            f"acl_file {ain}",
            f"listener {public} 127.0.0.1", "allow_anonymous false", f"password_file {ppub}",
            f"acl_file {apub}", f"max_connections {PUBLIC_MAX}",
        ]) + "\n")
        proc = Proc("broker", tmp_path, inside, lambda: [_mosquitto_bin(), "-c", str(conf)])
    else:
        conf = tmp_path / "s.toml"
        conf.write_text(
            "shards = 2\nno_pin = true\n"
            f'[[listener]]\nurl = "mqtt://127.0.0.1:{inside}"\n'
            f'password_file = "{pin}"\nacl_file = "{ain}"\n'
            f'[[listener]]\nurl = "mqtt://127.0.0.1:{public}"\n'
            f'password_file = "{ppub}"\nacl_file = "{apub}"\nmax_connections = {PUBLIC_MAX}\n')
        proc = Proc("broker", tmp_path, inside,
                    lambda: [_shardmq_bin(), "--config", str(conf), "--in-memory"])
    proc.start()
    yield proc, inside, public, apub
    proc.stop()


def raw(port: int, user: str, password: str, client_id: str | None = None) -> m.RawClient:
    c = m.RawClient("127.0.0.1", port, 4)
    c.connect_ok(client_id or uid("lp-"), username=user, password=password.encode())
    return c


def test_a_user_of_one_listener_is_refused_on_the_other(two_policies):
    _, inside, public, _ = two_policies
    assert connack(inside, username="bob", password=b"builder") == 0
    # Bob is not in the public listener's file: 3.1.1 return code 4 or 5.
    assert connack(public, username="bob", password=b"builder") in (4, 5)
    assert connack(public, username="alice", password=b"wonderland") == 0
    assert connack(public) == 5, "anonymous accepted on a listener with a password file"


def test_a_grant_on_one_listener_is_denied_on_the_other(two_policies):
    _, inside, public, _ = two_policies
    bob = raw(inside, "bob", "builder")
    # Client ids on both shards: a connection handed to its home shard keeps its rules.
    for shard in (0, 1):
        a_in = raw(inside, "alice", "wonderland", id_on_shard("lp-in-", shard))
        a_pub = raw(public, "alice", "wonderland", id_on_shard("lp-pub-", shard))
        topic, marker = f"a/{uid()}", f"pub/{uid()}"
        try:
            assert a_in.subscribe([(topic, 1)]).codes == [1]
            # No read right on a/… through the public listener: SUBACK 0x80 (Mosquitto
            # 2.0 grants the filter and delivers nothing through it).
            want = [1] if BROKER == "mosquitto" else [0x80]
            assert a_pub.subscribe([(topic, 1), (marker, 1)]).codes == want + [1]
            # alice's write on the public listener is acknowledged and dropped (3.1.1, as
            # Mosquitto does); her write inside is the first to arrive.
            a_pub.publish(topic, b"from public", qos=1)
            a_in.publish(topic, b"from inside", qos=1)
            assert a_in.recv_publish().payload == b"from inside"
            # The public alice gets the marker first: a/… was not delivered to her.
            bob.publish(topic, b"bob inside", qos=1)
            bob.publish(marker, b"marker", qos=1)
            got = a_pub.recv_publish()
            assert (got.topic, got.payload) == (marker, b"marker")
        finally:
            a_in.close()
            a_pub.close()
    bob.close()


def attempt(port: int, **kw) -> m.RawClient | None:
    """A connected client, or None when the CONNECT is refused: a CONNACK with a failure code
    (shardmq: 3, server unavailable) or the socket closed (Mosquitto closes it at accept)."""
    c = m.RawClient("127.0.0.1", port, 4)
    try:
        if c.connect(uid("lp-max-"), **kw).code == 0:
            return c
    except (m.ConnectionClosed, ConnectionResetError, BrokenPipeError):
        pass
    c.close()
    return None


def refused(port: int, **kw) -> bool:
    c = attempt(port, **kw)
    if c is None:
        return True
    c.close()
    return False


def test_a_listener_refuses_past_its_max_connections(two_policies):
    _, inside, public, _ = two_policies
    creds = {"username": "alice", "password": b"wonderland"}
    held = [raw(public, "alice", "wonderland") for _ in range(PUBLIC_MAX)]
    extra = raw(inside, "alice", "wonderland")
    try:
        assert refused(public, **creds), f"connection {PUBLIC_MAX + 1} accepted"
        assert not refused(inside, **creds), "the other listener has no quota"
        # One leaves: its slot is free once the broker has seen the close (retried until
        # then; until then every attempt is refused). The client let in keeps the slot.
        held.pop().close()
        deadline = time.monotonic() + WAIT
        while (c := attempt(public, **creds)) is None:
            assert time.monotonic() < deadline, "the freed slot was not given back"
        held.append(c)
        # The listener is full once more. (Mosquitto 2.0.11 loses count after a refusal:
        # with two clients connected it then accepts a third.)
        if BROKER != "mosquitto":
            assert refused(public, **creds)
    finally:
        for c in held + [extra]:
            c.close()


def test_sighup_reloads_one_listeners_acl_for_connected_clients(two_policies):
    proc, inside, public, apub = two_policies
    tag = uid()
    bob = raw(inside, "bob", "builder")
    alice = raw(public, "alice", "wonderland")
    try:
        assert alice.subscribe([(f"pub/{tag}/#", 0)]).codes == [0]
        bob.publish(f"pub/{tag}/old", b"old rules", qos=1)
        assert alice.recv_publish().payload == b"old rules"
        # New rules for the public listener: alice reads pub/TAG/open and new/TAG only.
        write_atomically(apub, f"user alice\ntopic read pub/{tag}/open\ntopic read new/{tag}\n")
        proc.proc.send_signal(signal.SIGHUP)
        # The reload is in once a message on new/TAG reaches alice: each round subscribes
        # (refused, or for Mosquitto granted but not delivered, under the old rules), sends a
        # probe there and a marker readable under both rules, in that order.
        deadline = time.monotonic() + WAIT
        while True:
            assert time.monotonic() < deadline, "the reload did not apply"
            alice.subscribe([(f"new/{tag}", 0)])
            bob.publish(f"new/{tag}", b"probe", qos=1)
            bob.publish(f"pub/{tag}/open", b"round marker", qos=1)
            first = alice.recv_publish()
            if first.payload == b"probe":
                assert alice.recv_publish().payload == b"round marker"
                break
            assert first.payload == b"round marker", first
        # The existing subscription pub/TAG/# no longer receives what the new rules deny:
        # pub/TAG/closed is not delivered, the marker after it is.
        bob.publish(f"pub/{tag}/closed", b"denied now", qos=1)
        bob.publish(f"pub/{tag}/open", b"marker", qos=1)
        got = alice.recv_publish()
        assert (got.topic, got.payload) == (f"pub/{tag}/open", b"marker")
        # The inside listener's rules did not change: bob still reads and writes anything.
        assert bob.subscribe([(f"pub/{tag}/closed", 0)]).codes == [0]
    finally:
        alice.close()
        bob.close()
