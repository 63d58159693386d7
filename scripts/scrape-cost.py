#!/usr/bin/env python3
"""What a /metrics scrape costs the shards.

Usage: scripts/scrape-cost.py [BIN] [CLIENTS] [SECS]
  (defaults: target/release/shardmq, 1000 connected idle clients, 5 s per phase)

Starts shardmq (2 unpinned shards, in memory, --http on a free port), connects CLIENTS
MQTT 3.1.1 clients, then compares the shard threads' CPU time (/proc/PID/task/TID/schedstat)
over SECS seconds of idling with SECS seconds of back-to-back scrapes, and prints the shard
CPU per scrape and what one scrape a second costs a shard."""
import os, socket, subprocess, sys, time, urllib.request
BIN = sys.argv[1] if len(sys.argv) > 1 else "target/release/shardmq"
CLIENTS = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
SECS = float(sys.argv[3]) if len(sys.argv) > 3 else 5.0
p = subprocess.Popen([BIN, "--listen", "127.0.0.1:0", "--shards", "2", "--no-pin", "--in-memory",
                      "--http", "127.0.0.1:0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
mqtt = p.stdout.readline().decode().split()[-1].removeprefix("mqtt://")
http = p.stdout.readline().decode().split()[-1]
host, port = mqtt.rsplit(":", 1)
socks = []
for i in range(CLIENTS):
    s = socket.create_connection((host, int(port)))
    cid = f"c{i}".encode()
    body = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(cid).to_bytes(2, "big") + cid
    s.sendall(bytes([0x10, len(body)]) + body)
    assert s.recv(4)[:2] == b"\x20\x02"
    socks.append(s)
def shard_tids():
    out = []
    for t in os.listdir(f"/proc/{p.pid}/task"):
        if open(f"/proc/{p.pid}/task/{t}/comm").read().startswith("shardmq-shard"):
            out.append(t)
    return out
def runtime():
    return sum(int(open(f"/proc/{p.pid}/task/{t}/schedstat").read().split()[0]) for t in shard_tids())
def http_runtime():
    return sum(int(open(f"/proc/{p.pid}/task/{t}/schedstat").read().split()[0])
               for t in os.listdir(f"/proc/{p.pid}/task")
               if open(f"/proc/{p.pid}/task/{t}/comm").read().startswith("shardmq-http"))
time.sleep(3)  # idle sweep settles
r0 = runtime(); time.sleep(SECS); idle = runtime() - r0
r0, h0, n = runtime(), http_runtime(), 0
size = 0
end = time.monotonic() + SECS
while time.monotonic() < end:
    size = len(urllib.request.urlopen(f"http://{http}/metrics").read()); n += 1
busy = runtime() - r0; hcpu = http_runtime() - h0
print(f"clients={CLIENTS} secs={SECS} scrapes={n} body_bytes={size}")
print(f"shard CPU idle: {idle/1e6:.2f} ms; with scrapes: {busy/1e6:.2f} ms")
print(f"shard CPU per scrape (both shards): {(busy-idle)/n/1e3:.1f} us; per shard: {(busy-idle)/n/2e3:.1f} us")
print(f"http thread CPU per scrape: {hcpu/n/1e3:.1f} us")
print(f"at 1 scrape/s: {(busy-idle)/n/2/1e9*100:.4f} % of a shard")
p.terminate(); p.wait()
