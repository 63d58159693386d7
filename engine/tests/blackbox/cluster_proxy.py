"""A test-owned relay in front of one cluster node, able to cut and restore traffic by source IP.

Each node of the cluster tests listens for its peers on `127.0.0.1X:real` (`--cluster-listen`)
and tells them to use `127.0.0.1X:proxy` (`--cluster-advertise`), where one `ClusterProxy`
relays both UDP datagrams (foca's membership gossip) and TCP connections (node links) to the
real port. Nodes send from their own listen IP (CLUSTER.md, the source address rule), so the
proxy knows which node a datagram or a connection comes from by its source IP alone.

`cut({"127.0.0.12"})` drops every datagram from that IP, closes the open TCP connections from
it and closes at once any new one (as a refused connect); `restore()` lets everything through
again. A partition {A} | {B, C} is proxy A cutting B's and C's IPs and proxies B and C cutting
A's. The relay keeps the source IP towards the node (it binds its upstream sockets to the
sender's IP, port 0), so the node sees the same addresses with or without it.

Threads only (no asyncio): a few connections and a few hundred datagrams a second.
"""

from __future__ import annotations

import select
import socket
import threading

# Largest datagram relayed (foca's packets are far smaller; UDP's own limit is 65,507).
DATAGRAM_MAX_BYTES = 65_535


def free_port_pair(ip: str) -> int:
    """A port free for both TCP and UDP on `ip` (bound and released: the node binds it next)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind((ip, 0))
            port = t.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind((ip, port))
                except OSError:
                    continue
            return port
    raise RuntimeError(f"no port free for both TCP and UDP on {ip}")


class ClusterProxy:
    """Relays TCP and UDP from `ip:port` (picked here, both protocols) to `ip:target_port`."""

    def __init__(self, ip: str, target_port: int, name: str = ""):
        self.ip, self.target = ip, (ip, target_port)
        self.name = name or ip
        self.lock = threading.Lock()
        self.blocked: set[str] = set()
        # Open relayed TCP connections: (source ip, downstream socket, upstream socket).
        self.conns: list[tuple[str, socket.socket, socket.socket]] = []
        # UDP: one upstream socket per sender address, bound to the sender's IP.
        self.udp_up: dict[tuple[str, int], socket.socket] = {}
        self.stats = {"tcp_accepted": 0, "tcp_refused": 0, "udp_relayed": 0, "udp_dropped": 0}
        self.closing = False
        self.tcp, self.udp = self._bind_both()
        self.port = self.tcp.getsockname()[1]
        self.threads = [threading.Thread(target=self._accept_loop, daemon=True),
                        threading.Thread(target=self._udp_loop, daemon=True)]
        for t in self.threads:
            t.start()

    @property
    def addr(self) -> str:
        return f"{self.ip}:{self.port}"

    def _bind_both(self) -> tuple[socket.socket, socket.socket]:
        for _ in range(50):
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp.bind((self.ip, 0))
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                udp.bind((self.ip, tcp.getsockname()[1]))
            except OSError:
                tcp.close()
                udp.close()
                continue
            tcp.listen(64)
            return tcp, udp
        raise RuntimeError(f"proxy {self.name}: no port free for both TCP and UDP")

    # -- control --

    def cut(self, ips) -> None:
        """Drops traffic from `ips` (datagrams dropped; TCP connections closed and refused)."""
        ips = set(ips)
        with self.lock:
            self.blocked |= ips
            doomed = [c for c in self.conns if c[0] in ips]
            self.conns = [c for c in self.conns if c[0] not in ips]
        for _, down, up in doomed:
            _close(down)
            _close(up)

    def restore(self) -> None:
        """Lets every source through again."""
        with self.lock:
            self.blocked.clear()

    def is_blocked(self, ip: str) -> bool:
        with self.lock:
            return ip in self.blocked

    def close(self) -> None:
        self.closing = True
        _close(self.tcp)
        _close(self.udp)
        with self.lock:
            conns, self.conns = self.conns, []
            ups, self.udp_up = list(self.udp_up.values()), {}
        for _, down, up in conns:
            _close(down)
            _close(up)
        for s in ups:
            _close(s)

    # -- TCP --

    def _accept_loop(self) -> None:
        while not self.closing:
            try:
                down, (src_ip, _) = self.tcp.accept()
            except OSError:
                return
            if self.is_blocked(src_ip):
                self.stats["tcp_refused"] += 1
                _close(down)
                continue
            up = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                up.bind((src_ip, 0))
                up.connect(self.target)
            except OSError:
                _close(up)
                _close(down)
                continue
            for s in (up, down):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self.lock:
                if src_ip in self.blocked:  # cut while we were connecting
                    _close(up)
                    _close(down)
                    continue
                self.conns.append((src_ip, down, up))
                self.stats["tcp_accepted"] += 1
            threading.Thread(target=self._pump, args=(down, up), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket) -> None:
        """Copies both ways until either side closes; then closes both."""
        try:
            while True:
                ready, _, _ = select.select([a, b], [], [], 1.0)
                if self.closing:
                    break
                done = False
                for s in ready:
                    data = s.recv(65536)
                    if not data:
                        done = True
                        break
                    (b if s is a else a).sendall(data)
                if done:
                    break
        except (OSError, ValueError):
            pass
        _close(a)
        _close(b)
        with self.lock:
            self.conns = [c for c in self.conns if c[1] is not a]

    # -- UDP --

    def _udp_loop(self) -> None:
        while not self.closing:
            try:
                data, src = self.udp.recvfrom(DATAGRAM_MAX_BYTES)
            except OSError:
                return
            if src is None:  # shut down by close()
                return
            if self.is_blocked(src[0]):
                self.stats["udp_dropped"] += 1
                continue
            up = self._udp_upstream(src)
            if up is None:
                continue
            try:
                up.sendto(data, self.target)
                self.stats["udp_relayed"] += 1
            except OSError:
                pass

    def _udp_upstream(self, src: tuple[str, int]) -> socket.socket | None:
        with self.lock:
            up = self.udp_up.get(src)
            if up is not None:
                return up
            up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                up.bind((src[0], 0))
            except OSError:
                _close(up)
                return None
            self.udp_up[src] = up
        threading.Thread(target=self._udp_replies, args=(up, src), daemon=True).start()
        return up

    def _udp_replies(self, up: socket.socket, src: tuple[str, int]) -> None:
        """A node that answers a datagram's source address reaches the sender through here."""
        while not self.closing:
            try:
                data, sender = up.recvfrom(DATAGRAM_MAX_BYTES)
            except OSError:
                return
            if sender is None:  # shut down by close()
                return
            if self.is_blocked(src[0]):
                self.stats["udp_dropped"] += 1
                continue
            try:
                self.udp.sendto(data, src)
            except OSError:
                pass


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        s.close()
    except OSError:
        pass
