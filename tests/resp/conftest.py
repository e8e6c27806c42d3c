"""Fixtures for the RESP sidecar tests: a fake clock and a sidecar served on a loopback port.

``resp_server`` runs a :class:`~stratacache.resp.server.RespServer` on its own event loop in a
thread (so that both redis-py's blocking client and its asyncio client can talk to it), on a free
127.0.0.1 port, with a :class:`FakeClock` as its wall clock: TTL tests advance the clock instead
of sleeping. Blocking commands (BLPOP) still time out on the server loop's real timers, so those
tests use timeouts of about 0.1 s.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

from redis_server import RedisServer, redis_server, redis_server_or_skip, redis_url
from stratacache.resp.keyspace import Keyspace
from stratacache.resp.server import RespServer
from stratacache.resp.sidecar import Sidecar

__all__ = [
    "FakeClock",
    "RunningServer",
    "clock",
    "redis_server",
    "redis_server_or_skip",
    "redis_url",
    "resp_server",
    "start_server",
]

T = TypeVar("T")


class FakeClock:
    """A wall clock (unix seconds) that moves only when told to; safe to share across threads."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward."""
        with self._lock:
            self._now += seconds


@dataclass
class RunningServer:
    """A sidecar served on ``127.0.0.1:port`` by a loop in a background thread."""

    sidecar: Sidecar
    server: RespServer
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    clock: FakeClock

    @property
    def port(self) -> int:
        """The bound port."""
        return self.server.port

    def run(self, function: Callable[[], T]) -> T:
        """Run ``function`` on the server's loop (to read or change state safely) and return."""

        async def call() -> T:
            return function()

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(timeout=10)

    def redis(self, **options: Any) -> Any:
        """A redis-py client for this server."""
        import redis

        options.setdefault("socket_timeout", 10)
        return redis.Redis(host="127.0.0.1", port=self.port, **options)

    def raw(self) -> socket.socket:
        """A plain TCP socket connected to the server."""
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def stop(self) -> None:
        """Close the server and its loop, and join the thread."""
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


def start_server(sidecar: Sidecar, clock: FakeClock, **server_options: Any) -> RunningServer:
    """Serve ``sidecar`` on a free port from a new thread; returns once it listens."""
    loop = asyncio.new_event_loop()
    server = RespServer(sidecar, "127.0.0.1", 0, **server_options)
    ready = threading.Event()
    failure: list[BaseException] = []

    def main() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(server.start())
        except BaseException as exc:  # pragma: no cover - reported to the test below
            failure.append(exc)
            ready.set()
            return
        ready.set()
        loop.run_forever()
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()

    thread = threading.Thread(target=main, name="resp-server", daemon=True)
    thread.start()
    ready.wait(timeout=10)
    if failure:
        raise failure[0]
    return RunningServer(sidecar, server, loop, thread, clock)


@pytest.fixture
def clock() -> FakeClock:
    """A fake wall clock for the sidecar."""
    return FakeClock()


@pytest.fixture
def resp_server(clock: FakeClock) -> Iterator[RunningServer]:
    """A sidecar (16 databases, no memory bound, fake clock) on a loopback port."""
    pytest.importorskip("redis", reason="redis-py (the redis extra) is not installed")
    sidecar = Sidecar(Keyspace(clock=clock))
    running = start_server(sidecar, clock)
    yield running
    running.stop()


_ = RedisServer  # re-exported for the L2 tests' type hints
