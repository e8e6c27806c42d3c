"""A throwaway 3-node Redis Cluster (Debian's ``redis-server``) on free loopback ports.

Three masters, no replicas, persistence off, each in its own temporary directory; the slots are
assigned with ``redis-cli --cluster create`` and the fixture waits (polling ``CLUSTER INFO``, not
sleeping for time to pass) until every node reports ``cluster_state:ok``. Stopped by pid.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["RedisCluster", "redis_cluster"]


def _free_ports(count: int) -> list[int]:
    import socket

    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for sock in socks:
            sock.close()


class RedisCluster:
    """Three ``redis-server`` processes forming one cluster."""

    def __init__(self, server: str, cli: str, directory: Path) -> None:
        self._server = server
        self._cli = cli
        self._dir = directory
        # The cluster bus defaults to port + 10000, past 65535 for a high free port: give it one.
        ports = _free_ports(6)
        self.ports, self._bus_ports = ports[:3], ports[3:]
        self._procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        """The ``redis+cluster://`` URL naming every node."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def start(self) -> None:
        """Start the nodes, create the cluster, and return once it serves every slot."""
        import redis

        for port, bus in zip(self.ports, self._bus_ports, strict=True):
            node = self._dir / str(port)
            node.mkdir()
            self._procs.append(
                subprocess.Popen(
                    [
                        self._server,
                        "--port",
                        str(port),
                        "--bind",
                        "127.0.0.1",
                        "--cluster-enabled",
                        "yes",
                        "--cluster-port",
                        str(bus),
                        "--cluster-config-file",
                        "nodes.conf",
                        "--dir",
                        str(node),
                        "--save",
                        "",
                        "--appendonly",
                        "no",
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        deadline = time.monotonic() + 20
        clients = [
            redis.Redis(host="127.0.0.1", port=p, socket_connect_timeout=1) for p in self.ports
        ]
        try:
            for client in clients:
                while True:
                    try:
                        client.ping()
                        break
                    except redis.exceptions.ConnectionError:
                        self._check(deadline)
                        time.sleep(0.01)
            subprocess.run(
                [
                    self._cli,
                    "--cluster",
                    "create",
                    *(f"127.0.0.1:{p}" for p in self.ports),
                    "--cluster-replicas",
                    "0",
                    "--cluster-yes",
                ],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=30,
            )
            for client in clients:
                while b"cluster_state:ok" not in client.execute_command("CLUSTER", "INFO"):
                    self._check(deadline)
                    time.sleep(0.01)
        finally:
            for client in clients:
                client.close()

    def flushall(self) -> None:
        """Empty every node."""
        import redis

        for port in self.ports:
            with redis.Redis(host="127.0.0.1", port=port) as client:
                client.flushall()

    def _check(self, deadline: float) -> None:
        if time.monotonic() > deadline or any(p.poll() is not None for p in self._procs):
            self.stop()
            pytest.fail("the Redis cluster did not start")

    def stop(self) -> None:
        """Kill every node and wait for it to exit."""
        for proc in self._procs:
            proc.kill()
            proc.wait(timeout=10)
        self._procs.clear()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A 3-node cluster for the session; skipped when redis-server or redis-cli is missing."""
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        pytest.skip("redis-server and redis-cli are not installed (apt-get install redis-server)")
    pytest.importorskip("redis", reason="redis-py (the redis extra) is not installed")
    cluster = RedisCluster(server, cli, tmp_path_factory.mktemp("cluster"))
    cluster.start()
    yield cluster
    cluster.stop()
