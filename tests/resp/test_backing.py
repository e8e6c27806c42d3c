"""L2 fall-through against a real redis-server: read-through, write-through, invalidation between
sidecars and from plain clients, and serving from L0 while the backing Redis is down.

Skipped (with the reason) when redis-server is not installed. Waiting for an asynchronous effect
(a forwarded write, an invalidation) polls for the condition with a deadline; nothing sleeps for
time to pass.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from redis_server import RedisServer
from stratacache.resp.backing import attach_backing
from stratacache.resp.keyspace import Keyspace
from stratacache.resp.sidecar import Sidecar

from .conftest import FakeClock, RunningServer, start_server

redis = pytest.importorskip("redis")


def eventually(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``condition`` until it holds (or fail after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.005)


def _sidecar_on(url: str) -> RunningServer:
    clock = FakeClock(time.time())  # the backing Redis keeps real time: TTLs must agree
    sidecar = Sidecar(Keyspace(clock=clock))
    attach_backing(sidecar, url, negative_ttl=0.05)
    running = start_server(sidecar, clock)
    eventually(lambda: running.run(lambda: sidecar.backing_status) == "up")
    return running


@pytest.fixture
def backed(redis_url: str) -> Iterator[tuple[RunningServer, Any]]:
    """A sidecar with the session's redis-server behind it, and a plain client of that Redis."""
    running = _sidecar_on(redis_url)
    direct = redis.Redis.from_url(redis_url)
    yield running, direct
    direct.close()
    running.stop()


def _in_l0(running: RunningServer, key: bytes, db: int = 0) -> bool:
    return running.run(lambda: key in running.sidecar.keyspace.dbs[db].store)


def test_reads_fall_through_and_fill_l0(backed: tuple[RunningServer, Any]) -> None:
    running, direct = backed
    direct.set("s", "from-l2", px=60_000)
    direct.rpush("l", "a", "b")
    direct.hset("h", mapping={"f": "1", "g": "2"})
    direct.sadd("set", "m")
    direct.zadd("z", {"x": 1.5})
    with running.redis() as client:
        assert client.get("s") == b"from-l2"
        assert 59_000 < client.pttl("s") <= 60_000  # the TTL came along
        assert client.lrange("l", 0, -1) == [b"a", b"b"]
        assert client.hgetall("h") == {b"f": b"1", b"g": b"2"}
        assert client.smembers("set") == {b"m"}
        assert client.zscore("z", "x") == 1.5
        assert client.mget("s", "nope") == [b"from-l2", None]
        assert client.get("absent") is None
    assert _in_l0(running, b"s")
    assert _in_l0(running, b"h")


def test_writes_go_through(backed: tuple[RunningServer, Any]) -> None:
    running, direct = backed
    direct.hset("h", "old", "1")
    with running.redis() as client:
        client.set("k", "v")
        client.incrby("n", 5)
        client.hset("h", "new", "2")  # the L0 reads the hash first: nothing is lost
        assert client.hgetall("h") == {b"old": b"1", b"new": b"2"}
        client.eval(
            "redis.call('set', KEYS[1], 'lua') redis.call('rpush', KEYS[2], 'x')", 2, "e", "q"
        )
        client.expire("k", 100)
        with client.pipeline(transaction=True) as pipe:
            pipe.set("t1", "a").set("t2", "b").execute()
    eventually(lambda: direct.get("t2") == b"b")
    assert direct.get("k") == b"v"
    assert 0 < direct.ttl("k") <= 100
    assert direct.get("n") == b"5"
    assert direct.hgetall("h") == {b"old": b"1", b"new": b"2"}
    assert direct.get("e") == b"lua"
    assert direct.lrange("q", 0, -1) == [b"x"]
    assert direct.get("t1") == b"a"


def test_blocking_pop_effects_reach_the_backing_redis(backed: tuple[RunningServer, Any]) -> None:
    running, direct = backed
    with running.redis() as client:
        client.rpush("jobs", "one", "two")
        assert client.blpop(["jobs"], timeout=1) == (b"jobs", b"one")
    eventually(lambda: direct.lrange("jobs", 0, -1) == [b"two"])


def test_other_writers_invalidate_l0(backed: tuple[RunningServer, Any], redis_url: str) -> None:
    running, direct = backed
    other = _sidecar_on(redis_url)
    try:
        with running.redis() as mine, other.redis() as theirs:
            direct.set("k", "v1")
            assert mine.get("k") == b"v1"  # now cached in this sidecar's L0
            theirs.set("k", "v2")  # another sidecar writes through
            eventually(lambda: mine.get("k") == b"v2")
            direct.set("k", "v3")  # a plain client writes to the backing Redis directly
            eventually(lambda: mine.get("k") == b"v3")
            direct.delete("k")
            eventually(lambda: mine.get("k") is None)
            mine.set("mine", "1")  # this sidecar's own writes are not echoed back to it
            eventually(lambda: direct.get("mine") == b"1")
            assert _in_l0(running, b"mine")
    finally:
        other.stop()


def test_flushall_on_the_backing_redis_empties_l0(backed: tuple[RunningServer, Any]) -> None:
    running, direct = backed
    with running.redis() as client:
        client.set("a", "1")
        eventually(lambda: direct.get("a") == b"1")
        direct.flushall()
        eventually(lambda: not _in_l0(running, b"a"))
        assert client.get("a") is None


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    from redis_server import redis_server_or_skip

    server = redis_server_or_skip()
    server.start()
    yield server
    server.stop()


def test_l0_keeps_serving_while_the_backing_redis_is_down(private_redis: RedisServer) -> None:
    running = _sidecar_on(private_redis.url)
    try:
        with running.redis() as client:
            client.set("kept", "v")
            eventually(lambda: redis.Redis.from_url(private_redis.url).get("kept") == b"v")
            private_redis.stop()
            assert client.get("kept") == b"v"  # served from L0
            assert client.get("unknown") is None  # a miss, not an error
            client.set("local", "only")
            assert client.get("local") == b"only"
            eventually(lambda: client.info("strata")["strata_backing"] == "down")
            private_redis.start()  # back: the L0 is emptied and reads go through again
            eventually(lambda: client.info("strata")["strata_backing"] == "up")
            direct = redis.Redis.from_url(private_redis.url)
            direct.set("fresh", "after")
            assert client.get("fresh") == b"after"
            direct.close()
    finally:
        running.stop()


def test_attach_rejects_a_bad_url(clock: FakeClock) -> None:
    from stratacache.errors import ConfigError

    with pytest.raises(ConfigError):
        attach_backing(Sidecar(Keyspace(clock=clock)), "not-a-url://x")
