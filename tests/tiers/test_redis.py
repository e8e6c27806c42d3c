"""The Redis tier beyond the contract: its layout and backstop TTLs, published invalidations,
the circuit breaker, and a chain that keeps serving while the server is down."""

# ruff: noqa: E402  (the imports after the redis-py skip below)
from __future__ import annotations

import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

sync_redis = pytest.importorskip("redis", reason="redis-py (the redis extra) is not installed")
import redis.asyncio as aioredis

from redis_server import RedisServer
from stratacache.errors import ConfigError, TierError, TierUnavailableError
from stratacache.tiers import MemoryTier, TierChain, TierEntry
from stratacache.tiers.redis import BACKSTOP_MARGIN_S, RedisTier

from .contract import FakeClock, entry


class FakeTimer:
    """A monotonic clock for the breaker that moves only when told to."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def tier(redis_url: str, clock: FakeClock) -> AsyncIterator[RedisTier]:
    made = RedisTier(redis_url, clock=clock)
    yield made
    await made.close()


async def test_layout_and_backstop_ttls(
    tier: RedisTier, raw: aioredis.Redis, clock: FakeClock
) -> None:
    await tier.set("k", entry(b"v", expires_at=clock() + 10, tags=("t",), namespace="n"))
    await tier.set("forever", entry(b"v", tags=("t2",)))
    assert await raw.hget("strata:e:k", "v") == b"v"
    ttl = await raw.pttl("strata:e:k")
    # Never shorter than the logical expiry, and no longer than expiry plus the skew margin.
    assert (10 + BACKSTOP_MARGIN_S) * 1000 - 2000 < ttl <= (10 + BACKSTOP_MARGIN_S) * 1000
    assert await raw.smembers("strata:t:t") == {b"k"}
    assert await raw.smembers("strata:n:n") == {b"k"}
    assert 0 < await raw.pttl("strata:t:t") <= ttl + 10  # set in the same script, a ms apart
    assert await raw.pttl("strata:e:forever") == -1
    assert await raw.pttl("strata:t:t2") == -1
    # An index set gets the longest TTL of its members, and none once one lives forever.
    await tier.set("k2", entry(b"v", expires_at=clock() + 1000, namespace="n"))
    assert await raw.pttl("strata:n:n") > (1000 + BACKSTOP_MARGIN_S - 2) * 1000
    await tier.set("k3", entry(b"v", namespace="n"))
    assert await raw.pttl("strata:n:n") == -1


async def test_a_far_expiry_sets_no_server_ttl(tier: RedisTier, raw: aioredis.Redis) -> None:
    await tier.set("k", entry(expires_at=2**70))
    assert await raw.pttl("strata:e:k") == -1


async def test_an_entry_the_server_expired_is_skipped_by_invalidations(
    tier: RedisTier, raw: aioredis.Redis
) -> None:
    await tier.set("gone", entry(tags=("t",), namespace="n"))
    await tier.set("kept", entry(tags=("t",), namespace="n"))
    await raw.delete("strata:e:gone")  # what the server's TTL does
    assert await tier.delete_tag("t") == 1
    assert not await raw.exists("strata:t:t")
    # The namespace index still names the vanished key until the namespace is invalidated.
    assert await raw.smembers("strata:n:n") == {b"gone"}
    assert await tier.delete_namespace("n") == 0
    assert not await raw.exists("strata:n:n")


async def test_prefixes_keep_caches_apart(redis_url: str, clock: FakeClock) -> None:
    a = RedisTier(redis_url, prefix="a:", clock=clock)
    b = RedisTier(redis_url, prefix="a*", clock=clock)  # a glob character, escaped by clear()
    try:
        await a.set("k", entry(b"a", tags=("t",)))
        await b.set("k", entry(b"b", tags=("t",)))
        await b.clear()
        assert await a.get("k") == entry(b"a", tags=("t",))
        assert await b.get("k") is None
        assert await b.delete_tag("t") == 0
        assert await a.delete_tag("t") == 1
    finally:
        await a.close()
        await b.close()


async def test_changes_are_published(tier: RedisTier, raw: aioredis.Redis) -> None:
    pubsub = raw.pubsub()
    await pubsub.subscribe(tier.channel)
    await pubsub.get_message(timeout=1)  # the subscribe confirmation
    await tier.set("k", entry(tags=("t",), namespace="n"))
    await tier.delete("k")
    await tier.delete_tag("t")
    await tier.delete_namespace("n")
    await tier.clear()
    seen = []
    while len(seen) < 5:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
        assert message is not None
        seen.append(message["data"])
    origin = tier.origin.encode()
    # A write is "w", a deletion "k": only invalidations stop what other instances are fetching.
    assert seen == [origin + b"wk", origin + b"kk", origin + b"tt", origin + b"nn", origin + b"c"]
    await pubsub.aclose()


async def test_construction_errors(redis_url: str) -> None:
    with pytest.raises(ConfigError):
        RedisTier()
    client = aioredis.Redis.from_url(redis_url)
    try:
        with pytest.raises(ConfigError):
            RedisTier(redis_url, client=client)
        with pytest.raises(ConfigError, match="must be redis://"):
            RedisTier("http://localhost")
        with pytest.raises(ConfigError, match="prefix"):
            RedisTier(redis_url, prefix="")
        with pytest.raises(ConfigError, match="socket_timeout"):
            RedisTier(redis_url, socket_timeout=0)
        decoding = aioredis.Redis.from_url(redis_url, decode_responses=True)
        with pytest.raises(ConfigError, match="decode"):
            RedisTier(client=decoding)
        await decoding.aclose()
    finally:
        await client.aclose()


async def test_a_client_passed_in_is_not_closed(redis_url: str, clock: FakeClock) -> None:
    client = aioredis.Redis.from_url(redis_url)
    tier = RedisTier(client=client, clock=clock)
    await tier.set("k", entry())
    await tier.close()
    with pytest.raises(TierError):
        await tier.get("k")
    assert await client.exists("strata:e:k") == 1
    await client.aclose()


async def test_a_server_error_is_a_tier_error(tier: RedisTier, raw: aioredis.Redis) -> None:
    await raw.set("strata:e:k", b"not a hash")
    with pytest.raises(TierError) as info:
        await tier.get("k")
    assert not isinstance(info.value, TierUnavailableError)
    assert tier.available  # a wrong-type answer is not an outage


async def test_outage_breaker_and_recovery(own_redis_server: RedisServer, clock: FakeClock) -> None:
    timer = FakeTimer()
    redis_tier = RedisTier(own_redis_server.url, clock=clock, timer=timer, breaker_cooldown=5)
    chain = TierChain([MemoryTier(clock=clock), redis_tier], clock=clock)
    try:
        await chain.set("k", entry(b"before", tags=("t",)))
        own_redis_server.stop()

        with pytest.raises(TierUnavailableError):
            await redis_tier.get("k")
        assert not redis_tier.available
        # While the breaker is open a call costs nothing: it fails before touching the network.
        started = time.perf_counter()
        for _ in range(100):
            with pytest.raises(TierUnavailableError, match="circuit open"):
                await redis_tier.get("k")
        assert time.perf_counter() - started < 0.5

        # The chain keeps serving from the L0, and writes still land there.
        assert await chain.get("k") == entry(b"before", tags=("t",))
        assert await chain.set("new", entry(b"during")) is True
        assert await chain.get("new") == entry(b"during")
        assert chain.health == {"memory": True, "redis": False}
        # An invalidation it could not apply everywhere says so.
        with pytest.raises(TierUnavailableError):
            await chain.delete_tag("t")
        assert await chain.get("k") is None

        own_redis_server.start()  # an empty server on the same port
        with pytest.raises(TierUnavailableError, match="circuit open"):
            await redis_tier.get("k")  # still cooling down
        timer.now += 5
        assert await chain.set("after", entry(b"after")) is True
        assert chain.health == {"memory": True, "redis": True}
        assert redis_tier.available
        assert await redis_tier.get("after") == entry(b"after")
    finally:
        await chain.close()


async def test_a_chain_backfills_from_redis(redis_url: str, clock: FakeClock) -> None:
    writer = TierChain([MemoryTier(clock=clock), RedisTier(redis_url, clock=clock)], clock=clock)
    reader_l0 = MemoryTier(clock=clock)
    reader = TierChain([reader_l0, RedisTier(redis_url, clock=clock)], clock=clock)
    try:
        stored = TierEntry(b"shared", clock() + 60, frozenset({"t"}), "n")
        await writer.set("k", stored)
        assert await reader.lookup("k") == (stored, "redis")
        assert await reader_l0.get("k") == stored  # copied up with the same expiry
        assert await reader.lookup("k") == (stored, "memory")
        clock.advance(60)
        assert await reader.get("k") is None
    finally:
        await writer.close()
        await reader.close()


@pytest.fixture
def sentinel_port(redis_server: RedisServer, tmp_path: Path) -> Iterator[int]:
    """A Redis Sentinel on loopback watching the session's server as ``mymaster``."""
    port = RedisServer(redis_server.binary).port  # a free port
    config = tmp_path / "sentinel.conf"
    config.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor mymaster 127.0.0.1 {redis_server.port} 1\n"
    )
    proc = subprocess.Popen(
        [redis_server.binary, str(config), "--sentinel"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        probe = sync_redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=1)
        deadline = time.monotonic() + 10
        while True:  # polls the new process until it answers (not a wait for time)
            try:
                if probe.execute_command("SENTINEL", "get-master-addr-by-name", "mymaster"):
                    break
            except sync_redis.exceptions.ConnectionError:
                pass
            assert proc.poll() is None, "sentinel exited"
            assert time.monotonic() < deadline, "sentinel did not start"
            time.sleep(0.01)
        probe.close()
        yield port
    finally:
        proc.kill()
        proc.wait(timeout=10)


async def test_a_sentinel_url(sentinel_port: int, redis_url: str, clock: FakeClock) -> None:
    tier = RedisTier(f"redis+sentinel://127.0.0.1:{sentinel_port}/mymaster/0", clock=clock)
    direct = RedisTier(redis_url, clock=clock)
    try:
        await tier.set("k", entry(b"via sentinel", tags=("t",)))
        assert await direct.get("k") == entry(b"via sentinel", tags=("t",))
        assert await tier.delete_tag("t") == 1
    finally:
        await tier.close()
        await direct.close()
    for bad in (
        "redis+sentinel://127.0.0.1/mymaster",  # no port
        "redis+sentinel://127.0.0.1:26379/",  # no service
        "redis+sentinel://127.0.0.1:26379/mymaster/x",  # bad db
    ):
        with pytest.raises(ConfigError):
            RedisTier(bad)
