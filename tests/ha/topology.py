"""A Sentinel-managed Redis as an operator runs one: a primary, replicas that each reach the
primary through a TCP proxy the test can stall, and three `redis-server --sentinel` processes.

The proxy stands for a slow or partitioned replication link: while it holds, it keeps reading
both ways but forwards nothing (the replica gets no new writes, the primary no acknowledgements);
if the primary dies meanwhile, what it held is dropped, as a partition would.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

from sync_worker.devstack.stack import find_redis_server
from tests.fixtures.redis_server import free_port

MASTER_NAME = "mymaster"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 180_000
"""Long on purpose: a sentinel "repairs" a replica whose master address is not the master's (ours
names the proxy) once this long has passed since it saw it, which would route around the proxy.
The failover itself does not wait for it; only a failed election would (twice this)."""


def _binary() -> str:
    found = find_redis_server()
    if found is None:
        pytest.fail("no redis-server: install one (apt-get install redis-server)")
    return str(found.path)


def _wait_ping(port: int, *, timeout: float = 10) -> None:
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    finally:
        client.close()


@dataclass
class Node:
    """One redis-server process (a data node or a sentinel)."""

    name: str
    port: int
    argv: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT)
        _wait_ping(self.port)

    def client(self, **options: object) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True, **options)  # type: ignore[arg-type]

    def kill(self) -> None:
        """SIGKILL, as a crashed machine: nothing is flushed or handed over."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


class StallingProxy:
    """A TCP proxy from a local port to `upstream_port` that can hold its traffic."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    def hold(self) -> None:
        """From now on forward nothing, either way; keep what arrives."""
        self._flowing.clear()

    def release(self) -> None:
        """Forward again (what was held goes first)."""
        self._flowing.set()

    def close(self) -> None:
        self._closed.set()
        self._flowing.set()
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=2)
            except OSError:
                downstream.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [downstream, upstream]
            pair = _Pair(downstream, upstream)
            for source, target in ((upstream, downstream), (downstream, upstream)):
                threading.Thread(
                    target=self._pump, args=(pair, source, target), name="proxy-pump", daemon=True
                ).start()

    def _pump(self, pair: _Pair, source: socket.socket, target: socket.socket) -> None:
        held: list[bytes] = []
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            if not data:
                # The other end is gone. What was held is dropped with the link: it never
                # reached the other side, as over a partition.
                pair.close()
                return
            if not self._flowing.is_set():
                held.append(data)
                continue
            try:
                if held:
                    target.sendall(b"".join(held))
                    held = []
                target.sendall(data)
            except OSError:
                pair.close()
                return


@dataclass
class _Pair:
    downstream: socket.socket
    upstream: socket.socket

    def close(self) -> None:
        for sock in (self.downstream, self.upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()


@dataclass
class SentinelTopology:
    """The running topology; `url` is the `sentinel://` list our processes are given."""

    directory: Path
    primary: Node
    replicas: list[Node]
    proxies: list[StallingProxy]
    """One per replica: its link to the primary."""
    sentinels: list[Node] = field(default_factory=list)

    @property
    def url(self) -> str:
        return ";".join(f"sentinel://127.0.0.1:{s.port}" for s in self.sentinels)

    def hold(self) -> None:
        """Stall every replication link."""
        for proxy in self.proxies:
            proxy.hold()

    def master_port(self) -> int:
        """The port the sentinels name as master now (asks the first that answers)."""
        for sentinel in self.sentinels:
            try:
                with sentinel.client(socket_timeout=1) as client:
                    _, port = client.sentinel_get_master_addr_by_name(MASTER_NAME)
                return int(port)
            except redis.ConnectionError:
                continue
        raise RuntimeError("no sentinel answered")

    def promoted(self) -> Node | None:
        """The replica the sentinels name as master, once they do."""
        port = self.master_port()
        return next((r for r in self.replicas if r.port == port), None)

    def replicating_through_proxies(self) -> bool:
        """Every replica's link goes through its proxy and is up."""
        for replica, proxy in zip(self.replicas, self.proxies, strict=True):
            with replica.client() as client:
                info = client.info("replication")
            if info["master_port"] != proxy.port or info["master_link_status"] != "up":
                return False
        return True

    def ready(self) -> bool:
        """Every sentinel knows the master, the replicas and the other sentinels, and the
        replicas are in sync."""
        for sentinel in self.sentinels:
            with sentinel.client(socket_timeout=1) as client:
                master = client.sentinel_master(MASTER_NAME)
                known = client.sentinel_slaves(MASTER_NAME)
            if int(master["num-other-sentinels"]) != len(self.sentinels) - 1:
                return False
            ports = {r["port"] for r in known if r["is_slave"]}
            if not {r.port for r in self.replicas} <= ports:
                return False
        return self.replicating_through_proxies()

    def stop(self) -> None:
        for node in [*self.sentinels, *self.replicas, self.primary]:
            node.stop()
        for proxy in self.proxies:
            proxy.close()


@contextlib.contextmanager
def sentinel_topology(directory: Path, *, replicas: int = 1) -> Iterator[SentinelTopology]:
    """Start the primary, `replicas` replicas each behind its own proxy, and three sentinels;
    stop them all."""
    binary = _binary()
    common = ["--bind", "127.0.0.1", "--save", "", "--protected-mode", "no"]
    primary_port = free_port()
    (directory / "primary").mkdir(parents=True)
    primary = Node(
        "primary",
        primary_port,
        [binary, "--port", str(primary_port), "--dir", str(directory / "primary"), *common,
         "--appendonly", "yes", "--appendfsync", "everysec"],
        directory / "primary.log",
    )  # fmt: skip
    primary.start()
    topology = SentinelTopology(directory, primary, [], [])
    try:
        for number in range(replicas):
            proxy = StallingProxy(primary_port)
            topology.proxies.append(proxy)
            port = free_port()
            (directory / f"replica-{number}").mkdir()
            replica = Node(
                f"replica-{number}",
                port,
                [binary, "--port", str(port), "--dir", str(directory / f"replica-{number}"),
                 *common, "--appendonly", "yes", "--appendfsync", "everysec",
                 "--replicaof", "127.0.0.1", str(proxy.port)],
                directory / f"replica-{number}.log",
            )  # fmt: skip
            topology.replicas.append(replica)
            replica.start()
        for number in range(3):
            port = free_port()
            config = directory / f"sentinel-{number}.conf"
            config.write_text(
                f"port {port}\n"
                "bind 127.0.0.1\n"
                "protected-mode no\n"
                f"dir {directory}\n"
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {primary_port} 2\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}\n"
                f"sentinel parallel-syncs {MASTER_NAME} 1\n"
            )
            sentinel = Node(
                f"sentinel-{number}",
                port,
                [binary, str(config), "--sentinel"],
                directory / f"sentinel-{number}.log",
            )
            sentinel.start()
            topology.sentinels.append(sentinel)
        deadline = time.monotonic() + 60
        while not topology.ready():
            if time.monotonic() > deadline:
                pytest.fail("the sentinels did not discover the replicas and each other in 60 s")
            time.sleep(0.1)
        yield topology
    finally:
        topology.stop()
