"""Coherent L0s: two chains on one Redis, each L0 forgetting what the other instance changed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from redis_server import RedisServer
from stratacache.errors import ConfigError, TierError
from stratacache.tiers import MemoryTier, TierChain
from stratacache.tiers.coherence import CoherentTier
from stratacache.tiers.redis import RedisTier

from .contract import FakeClock, entry


@dataclass
class Instance:
    """One instance: a coherent L0 in front of the shared Redis tier."""

    l0: CoherentTier
    memory: MemoryTier
    chain: TierChain


def instance(url: str, clock: FakeClock) -> Instance:
    memory = MemoryTier(clock=clock)
    redis_tier = RedisTier(url, clock=clock)
    l0 = CoherentTier(memory, redis_tier, heartbeat=0.2, retry_delay=0.01)
    return Instance(l0, memory, TierChain([l0, redis_tier], clock=clock))


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> float:
    """Yield to the loop until ``condition`` holds (an event, not time); return how long it took."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, "condition not reached in time"
        await asyncio.sleep(0.001)
    return time.monotonic() - started


async def in_l0(inst: Instance, key: str) -> bool:
    return await inst.memory.get(key) is not None


@pytest.fixture
async def pair(redis_url: str, clock: FakeClock) -> AsyncIterator[tuple[Instance, Instance]]:
    a, b = instance(redis_url, clock), instance(redis_url, clock)
    await a.l0.wait_subscribed()
    await b.l0.wait_subscribed()
    yield a, b
    await a.chain.close()
    await b.chain.close()


async def test_an_overwrite_on_one_instance_drops_the_key_from_the_other(
    pair: tuple[Instance, Instance],
) -> None:
    a, b = pair
    await a.chain.set("k", entry(b"1"))
    await until(lambda: b.l0.applied == 1)  # every write is announced, a new key's too
    assert await b.chain.lookup("k") == (entry(b"1"), "redis")
    assert await b.chain.lookup("k") == (entry(b"1"), "memory")  # backfilled into B's L0

    await a.chain.set("k", entry(b"2"))
    took = await until(lambda: b.l0.applied == 2)
    assert took < 0.1
    assert not await in_l0(b, "k")
    assert await b.chain.lookup("k") == (entry(b"2"), "redis")
    # A's own write is not undone by its own message.
    assert await a.chain.lookup("k") == (entry(b"2"), "memory")
    assert a.l0.applied == 0


@pytest.mark.parametrize("how", ["delete", "tag", "namespace", "clear"])
async def test_invalidations_reach_the_other_l0(pair: tuple[Instance, Instance], how: str) -> None:
    a, b = pair
    await a.chain.set("k", entry(b"v", tags=("product:1",), namespace="ns"))
    await a.chain.set("other", entry(b"o", tags=("product:2",), namespace="ns2"))
    await until(lambda: b.l0.applied == 2)
    for key in ("k", "other"):
        assert await b.chain.get(key) is not None
        assert await in_l0(b, key)

    if how == "delete":
        assert await a.chain.delete("k")
    elif how == "tag":
        assert await a.chain.delete_tag("product:1") == 1
    elif how == "namespace":
        assert await a.chain.delete_namespace("ns") == 1
    else:
        await a.chain.clear()
    await until(lambda: b.l0.applied == 3)
    assert not await in_l0(b, "k")
    assert await b.chain.get("k") is None
    assert await in_l0(b, "other") is (how != "clear")


async def test_a_backfill_that_raced_with_an_invalidation_is_declined(
    pair: tuple[Instance, Instance],
) -> None:
    a, b = pair
    await a.chain.set("k", entry(b"old", tags=("t",)))
    await a.chain.set("unrelated", entry(b"u"))
    await until(lambda: b.l0.applied == 2)
    # B misses in its L0 and reads Redis; before it copies the answer up, A replaces the entry.
    assert await b.l0.get("k") is None
    assert await b.l0.get("unrelated") is None
    old = await b.chain.tiers[1].get("k")
    await a.chain.set("k", entry(b"new", tags=("t",)))
    await until(lambda: b.l0.applied == 3)
    assert old is not None
    assert await b.l0.set("k", old) is False
    assert not await in_l0(b, "k")
    # An invalidation of another key does not stop an unrelated backfill.
    assert await b.l0.set("unrelated", entry(b"u")) is True
    # Nor does it stop a later read-and-copy of the same key.
    assert await b.chain.lookup("k") == (entry(b"new", tags=("t",)), "redis")
    assert await in_l0(b, "k")


async def test_losing_the_subscription_empties_the_l0(
    own_redis_server: RedisServer, clock: FakeClock
) -> None:
    b = instance(own_redis_server.url, clock)
    try:
        await b.l0.wait_subscribed()
        await b.chain.set("k", entry(b"v"))
        assert await in_l0(b, "k")

        own_redis_server.stop()
        await until(lambda: not b.l0.subscribed)
        assert not await in_l0(b, "k")
        # Unsubscribed, the L0 neither serves nor stores; the chain still answers.
        assert await b.chain.get("k") is None
        assert await b.chain.set("k2", entry(b"v2")) is False
        assert not await in_l0(b, "k2")

        own_redis_server.start()
        await until(lambda: b.l0.subscribed)
        assert await b.chain.set("k3", entry(b"v3")) is True
        assert await b.chain.lookup("k3") == (entry(b"v3"), "memory")
    finally:
        await b.chain.close()


async def test_construction_and_close(redis_url: str, clock: FakeClock) -> None:
    memory = MemoryTier(clock=clock)
    redis_tier = RedisTier(redis_url, clock=clock)
    with pytest.raises(ConfigError):
        CoherentTier(memory, memory)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        CoherentTier(memory, redis_tier, heartbeat=0)
    l0 = CoherentTier(memory, redis_tier)
    assert l0.name == "memory"
    await l0.wait_subscribed()
    await l0.close()
    await l0.close()
    with pytest.raises(TierError):
        await l0.get("k")
    with pytest.raises(TierError):
        await memory.get("k")  # the wrapped tier is closed with it
    await redis_tier.close()


async def test_a_silent_channel_counts_as_lost(redis_url: str, clock: FakeClock) -> None:
    memory = MemoryTier(clock=clock)
    redis_tier = RedisTier(redis_url, clock=clock)
    l0 = CoherentTier(memory, redis_tier, heartbeat=0.1, retry_delay=0.01)
    chain = TierChain([l0, redis_tier], clock=clock)
    try:
        await l0.wait_subscribed()
        await chain.set("k", entry())
        # The server stops answering (its socket stays open): the heartbeat notices.
        await redis_tier.client.execute_command("CLIENT", "PAUSE", "1000", "ALL")
        await until(lambda: not l0.subscribed)
        assert not await memory.get("k")
        await until(lambda: l0.subscribed)  # the pause ends, the subscription comes back
    finally:
        await chain.close()
