"""A throwaway ``redis-server`` on a free loopback port, for tests that need a real Redis.

:class:`RedisServer` starts Debian's ``redis-server`` with persistence off, waits until it answers
PING (polling the new process, not sleeping for time to pass), and stops it by its pid. A test can
:meth:`~RedisServer.stop` it mid-run to simulate an outage and :meth:`~RedisServer.start` it again on
the same port. :func:`redis_server_or_skip` skips the test when the binary or redis-py is missing.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

__all__ = ["RedisServer", "own_redis_server", "redis_server", "redis_server_or_skip", "redis_url"]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One ``redis-server`` process on ``127.0.0.1:port`` (a free port unless given)."""

    def __init__(self, binary: str, port: int | None = None) -> None:
        self.binary = binary
        self.port = port or _free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The ``redis://`` URL of the server, database 0."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server and return once it answers PING."""
        import redis

        self._proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    client.ping()
                    return
                except redis.exceptions.ConnectionError:
                    if self._proc.poll() is not None or time.monotonic() > deadline:
                        self.stop()
                        pytest.fail(f"redis-server on port {self.port} did not start")
                    time.sleep(0.01)
        finally:
            client.close()

    def stop(self) -> None:
        """Kill the server (SIGKILL: an outage, not a shutdown) and wait for it to exit."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(timeout=10)
            self._proc = None

    def flushall(self) -> None:
        """Empty every database."""
        import redis

        with redis.Redis(host="127.0.0.1", port=self.port) as client:
            client.flushall()


def redis_server_or_skip() -> RedisServer:
    """A (not yet started) :class:`RedisServer`, or skip the test when Redis is not installed."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    pytest.importorskip("redis", reason="redis-py (the redis extra) is not installed")
    return RedisServer(binary)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A redis-server for the whole session (import this fixture into a conftest to use it)."""
    server = redis_server_or_skip()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """The session server's URL, emptied before and after the test."""
    redis_server.flushall()
    yield redis_server.url
    redis_server.flushall()


@pytest.fixture
def own_redis_server() -> Iterator[RedisServer]:
    """A redis-server of the test's own, which the test may kill and restart."""
    server = redis_server_or_skip()
    server.start()
    yield server
    server.stop()
