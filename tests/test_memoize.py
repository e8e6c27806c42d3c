"""``@memoize``: plain and async functions, TTL by a fake clock, tags, namespaces, bad input."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from redis_server import RedisServer, redis_server, redis_url
from stratacache.errors import ConfigError
from stratacache.memoize import memoize
from stratacache.tiers import MemoryTier, SQLiteTier
from stratacache.tiers.redis import RedisTier

__all__ = ["redis_server", "redis_url"]


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sqlite(tmp_path: Path, clock: Clock) -> Iterator[SQLiteTier]:
    tier = SQLiteTier(tmp_path / "memo.db", clock=clock)
    yield tier
    asyncio.run(tier.close())


def test_a_plain_function_with_ttl_and_keyword_order(sqlite: SQLiteTier, clock: Clock) -> None:
    calls: list[tuple[Any, ...]] = []

    @memoize(sqlite, ttl=10, clock=clock)
    def area(width: int, height: int = 1, *, unit: str = "m") -> dict[str, Any]:
        calls.append((width, height, unit))
        return {"value": width * height, "unit": unit}

    assert area(2, 3) == {"value": 6, "unit": "m"}
    assert area(width=2, height=3) == {"value": 6, "unit": "m"}  # the same call, spelled otherwise
    assert area(2, height=3, unit="m") == {"value": 6, "unit": "m"}
    assert len(calls) == 1
    area(2)  # height defaults to 1: another call
    assert len(calls) == 2
    clock.now += 10  # expired by the injected clock
    area(2, 3)
    assert len(calls) == 3
    assert area.invalidate(2, 3) is True  # type: ignore[attr-defined]
    area(2, 3)
    assert len(calls) == 4


async def test_an_async_function_with_tags_and_namespace(clock: Clock) -> None:
    tier = MemoryTier(clock=clock)
    calls: list[str] = []

    @memoize(tier, tags=("catalog",), namespace="prices", clock=clock)
    async def price(sku: str) -> float:
        calls.append(sku)
        return 1.5

    assert await price("a") == 1.5
    assert await price("a") == 1.5
    assert await price("b") == 1.5
    assert calls == ["a", "b"]
    assert await tier.delete_tag("catalog") == 2
    await price("a")
    assert calls == ["a", "b", "a"]
    assert await tier.delete_namespace("prices") == 1


async def test_on_redis(redis_url: str, clock: Clock) -> None:
    tier = RedisTier(redis_url, clock=clock)
    count = 0

    @memoize(tier, ttl=60, clock=clock)
    async def slow(x: int) -> list[int]:
        nonlocal count
        count += 1
        return [x, x]

    assert await slow(3) == [3, 3]
    assert await slow(3) == [3, 3]
    assert count == 1

    @memoize(tier)
    def plain(x: int) -> int:
        return x

    with pytest.raises(ConfigError, match="in-process tier"):
        plain(1)  # a plain function cannot wait for Redis
    await tier.close()


def test_redis_down_is_uncached(clock: Clock) -> None:
    server = RedisServer("redis-server")  # never started: nothing listens on its port
    tier = RedisTier(server.url, clock=clock)
    count = 0

    @memoize(tier)
    async def f() -> int:
        nonlocal count
        count += 1
        return count

    async def twice() -> list[int]:
        return [await f(), await f()]

    assert asyncio.run(twice()) == [1, 2]


def test_bad_arguments_results_and_options(clock: Clock) -> None:
    tier = MemoryTier(clock=clock)

    @memoize(tier)
    def echo(value: Any) -> Any:
        return value

    with pytest.raises(ConfigError, match="arguments"):
        echo(object())

    @memoize(tier)
    def bad() -> object:
        return object()

    with pytest.raises(ConfigError, match="results"):
        bad()
    assert echo((1, 2)) == (1, 2)  # the first call returns the function's own result
    assert echo((1, 2)) == [1, 2]  # a cached call returns what JSON makes of it
    with pytest.raises(ConfigError):
        memoize(tier, ttl=0)
    with pytest.raises(ConfigError):
        memoize(tier, tags=(1,))  # type: ignore[arg-type]


async def test_a_plain_function_called_inside_a_running_loop(
    sqlite: SQLiteTier, clock: Clock
) -> None:
    # Sync helpers are often called from async code; the SQLite tier's writes go to a thread,
    # and a hand-driven call must wait for them in place instead of suspending.
    calls: list[int] = []

    @memoize(sqlite, clock=clock)
    def square(n: int) -> int:
        calls.append(n)
        return n * n

    assert square(4) == 16
    assert square(4) == 16
    assert calls == [4]
    assert square.invalidate(4) is True  # type: ignore[attr-defined]
    assert square(4) == 16
    assert calls == [4, 4]
