"""Per-listener anonymous access (`[[listener]] allow_anonymous`; Mosquitto:
`per_listener_settings true` with `allow_anonymous` under each `listener`): a loopback listener
for anonymous tools beside one that asks for a password. The same test runs against Mosquitto
with BROKER=mosquitto."""

from __future__ import annotations

import subprocess

import pytest

import mqttraw as m
from conftest import _free_port, _mosquitto_bin, _shardmq_bin
from test_21_bridge import Proc
from util import BROKER, PahoClient, uid


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
