"""Fixtures for the KV tests: torch on one thread, a redis-server on loopback, one store per kind.

``kv_store`` is parametrised over :data:`STORE_FACTORIES`; every implementation of
:class:`~stratacache.kv.KVStore` runs ``contract.py`` through it. The Redis store needs a
``redis-server`` binary (Debian's package; ``make system-deps`` installs it): the fixture starts one
on a free 127.0.0.1 port with persistence off and stops it by its pid. Without the binary the Redis
cases are skipped and say why.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="the kv extra (torch) is not installed")
pytest.importorskip("safetensors", reason="the kv extra (safetensors) is not installed")

from stratacache.kv import (  # noqa: E402 - after the skips above
    DiskKVStore,
    HostMemoryKVStore,
    KVStore,
    RedisKVStore,
    TieredKVStore,
)

StoreFactory = Callable[[pytest.FixtureRequest, Path], KVStore]


@pytest.fixture(autouse=True, scope="session")
def _torch_threads() -> Iterator[None]:
    """Keep torch to one thread: the machine's cores are shared, and tiny models gain nothing."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A ``redis://`` URL of a throwaway redis-server on loopback (session-wide, no persistence)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip(
            "redis-server is not installed (apt-get install redis-server, or make system-deps)"
        )
    redis = pytest.importorskip("redis", reason="redis-py (the redis extra) is not installed")
    port = _free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(host="127.0.0.1", port=port)
        # Polls the new process until it accepts connections (not a wait for time to pass).
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.exceptions.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"redis-server on port {port} did not start")
                time.sleep(0.02)
        client.close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def redis_store(redis_url: str) -> Iterator[RedisKVStore]:
    """A Redis store on the session's server, under a prefix of its own, emptied afterwards."""
    import redis

    prefix = f"test:{time.monotonic_ns()}:"
    store = RedisKVStore(url=redis_url, prefix=prefix)
    yield store
    store.close()
    with redis.Redis.from_url(redis_url) as client:
        for name in client.scan_iter(match=prefix + "*"):
            client.delete(name)


def _memory(request: pytest.FixtureRequest, tmp_path: Path) -> KVStore:
    return HostMemoryKVStore(max_bytes=64 << 20)


def _disk(request: pytest.FixtureRequest, tmp_path: Path) -> KVStore:
    return DiskKVStore(tmp_path / "kv")


def _redis(request: pytest.FixtureRequest, tmp_path: Path) -> KVStore:
    store: KVStore = request.getfixturevalue("redis_store")
    return store


def _memory_disk(request: pytest.FixtureRequest, tmp_path: Path) -> KVStore:
    return TieredKVStore([HostMemoryKVStore(max_bytes=64 << 20), DiskKVStore(tmp_path / "kv")])


def _memory_disk_redis(request: pytest.FixtureRequest, tmp_path: Path) -> KVStore:
    redis_store: KVStore = request.getfixturevalue("redis_store")
    return TieredKVStore(
        [HostMemoryKVStore(max_bytes=64 << 20), DiskKVStore(tmp_path / "kv"), redis_store]
    )


STORE_FACTORIES: dict[str, StoreFactory] = {
    "memory": _memory,
    "disk": _disk,
    "redis": _redis,
    "memory+disk": _memory_disk,
    "memory+disk+redis": _memory_disk_redis,
}
"""Every KVStore implementation the contract suite runs against, by test id."""


@pytest.fixture(params=list(STORE_FACTORIES))
def kv_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[KVStore]:
    """A fresh, empty store of each kind; closed afterwards."""
    store = STORE_FACTORIES[request.param](request, tmp_path)
    yield store
    store.close()
