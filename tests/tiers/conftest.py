"""Fixtures for the tier tests: a fake wall clock, and ``tier``, one fresh tier per implementation.

``tier`` is parametrised over :data:`TIER_FACTORIES`. A new implementation (the Redis tier) joins
the contract suite by adding a factory here: an async function that receives the pytest request (to
pull in fixtures of its own, such as a ``redis-server`` on a loopback port, with
``request.getfixturevalue``), the fake clock and a temporary directory, and returns an empty tier
that uses that clock. The fixture closes the tier afterwards.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from redis_server import own_redis_server, redis_server, redis_url
from stratacache.tiers import MemoryTier, SQLiteTier, Tier, TierChain

from .cluster import RedisCluster, redis_cluster
from .contract import FakeClock

__all__ = [
    "TIER_FACTORIES",
    "clock",
    "own_redis_server",
    "redis_cluster",
    "redis_server",
    "redis_url",
    "tier",
]

TierFactory = Callable[[pytest.FixtureRequest, FakeClock, Path], Awaitable[Tier]]


async def _memory(request: pytest.FixtureRequest, clock: FakeClock, tmp_path: Path) -> Tier:
    return MemoryTier(clock=clock)


async def _sqlite(request: pytest.FixtureRequest, clock: FakeClock, tmp_path: Path) -> Tier:
    return SQLiteTier(tmp_path / "cache.sqlite3", clock=clock)


async def _memory_sqlite(request: pytest.FixtureRequest, clock: FakeClock, tmp_path: Path) -> Tier:
    return TierChain(
        [MemoryTier(clock=clock), SQLiteTier(tmp_path / "cache.sqlite3", clock=clock)],
        clock=clock,
    )


async def _redis(request: pytest.FixtureRequest, clock: FakeClock, tmp_path: Path) -> Tier:
    from stratacache.tiers.redis import RedisTier

    return RedisTier(request.getfixturevalue("redis_url"), clock=clock)


async def _redis_cluster(request: pytest.FixtureRequest, clock: FakeClock, tmp_path: Path) -> Tier:
    from stratacache.tiers.redis import RedisTier

    cluster: RedisCluster = request.getfixturevalue("redis_cluster")
    cluster.flushall()
    return RedisTier(cluster.url, clock=clock, socket_timeout=5)


async def _memory_sqlite_redis(
    request: pytest.FixtureRequest, clock: FakeClock, tmp_path: Path
) -> Tier:
    # Redis suspends on every call: this is the chain where concurrent writes to one key
    # could finish in different orders in different tiers unless the chain orders them.
    from stratacache.tiers import TierChain

    lower = [await _sqlite(request, clock, tmp_path), await _redis(request, clock, tmp_path)]
    return TierChain([await _memory(request, clock, tmp_path), *lower], clock=clock)


TIER_FACTORIES: dict[str, TierFactory] = {
    "memory": _memory,
    "sqlite": _sqlite,
    "memory+sqlite": _memory_sqlite,
    "redis": _redis,
    "redis-cluster": _redis_cluster,
    "memory+sqlite+redis": _memory_sqlite_redis,
}
"""Every tier implementation the contract suite runs against, by test id."""


@pytest.fixture
def clock() -> FakeClock:
    """A wall clock at :data:`~tests.tiers.contract.START` that moves only when advanced."""
    return FakeClock()


@pytest.fixture(params=list(TIER_FACTORIES))
async def tier(
    request: pytest.FixtureRequest, clock: FakeClock, tmp_path: Path
) -> AsyncIterator[Tier]:
    """A fresh, empty tier of each kind, on the fake ``clock``; closed afterwards."""
    made = await TIER_FACTORIES[request.param](request, clock, tmp_path)
    yield made
    await made.close()
