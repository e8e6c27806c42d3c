"""Tests for stratacache.langchain: LangChain's standard cache suites, then what they do not cover.

The standard suites (from the ``langchain-tests`` package) run against the embedded chain (memory,
then SQLite) and against a real ``redis-server`` on a loopback port.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("langchain_core", reason="the langchain extra is not installed")
pytest.importorskip("langchain_tests", reason="langchain-tests is not installed")

from langchain_core.messages import AIMessage
from langchain_core.outputs import ChatGeneration, Generation
from langchain_tests.integration_tests import AsyncCacheTestSuite, SyncCacheTestSuite

from redis_server import redis_server, redis_url
from stratacache.config import Settings
from stratacache.errors import ConfigError
from stratacache.langchain import StrataCache
from stratacache.tiers import MemoryTier, SQLiteTier, TierChain, TierEntry

__all__ = ["redis_server", "redis_url"]

KEY = b"L" * 32
PROMPT = "What is a cache?"
LLM = "[('_type', 'openai-chat'), ('model_name', 'gpt-4o-mini'), ('temperature', 0.0)]"


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def embedded(tmp_path: Path, clock: Clock | None = None) -> TierChain:
    now = clock or Clock()
    return TierChain(
        [MemoryTier(clock=now), SQLiteTier(tmp_path / "cache.db", clock=now)], clock=now
    )


@pytest.fixture(params=["memory+sqlite", "redis"])
def made(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StrataCache]:
    if request.param == "redis":
        from stratacache.tiers.redis import RedisTier

        tiers = RedisTier(request.getfixturevalue("redis_url"))
        cache = StrataCache(TierChain([tiers]), key=KEY)
    else:
        cache = StrataCache(embedded(tmp_path), key=KEY)
    yield cache
    cache.close()


class TestStandardSync(SyncCacheTestSuite):
    @pytest.fixture
    def cache(self, made: StrataCache) -> StrataCache:
        return made


class TestStandardAsync(AsyncCacheTestSuite):
    @pytest.fixture
    async def cache(self, made: StrataCache) -> StrataCache:
        return made


# --- beyond the standard suites ---------------------------------------------------------------------


def test_chat_generations_round_trip_and_sync_sees_async(tmp_path: Path) -> None:
    cache = StrataCache(embedded(tmp_path), key=KEY)
    try:
        chat = [ChatGeneration(message=AIMessage(content="A store of answers."))]
        asyncio.run(cache.aupdate(PROMPT, LLM, chat))
        assert cache.lookup(PROMPT, LLM) == chat
        assert cache.lookup(PROMPT, LLM + " ") is None  # another model configuration
        assert cache.lookup(PROMPT + "?", LLM) is None
    finally:
        cache.close()


def test_entries_survive_a_restart_and_need_the_same_key(tmp_path: Path) -> None:
    first = StrataCache(embedded(tmp_path), key=KEY)
    first.update(PROMPT, LLM, [Generation(text="kept")])
    first.close()
    again = StrataCache(embedded(tmp_path), key=KEY)
    try:
        assert again.lookup(PROMPT, LLM) == [Generation(text="kept")]
    finally:
        again.close()
    # A record signed with another key does not verify: a miss, and it is deleted.
    stranger = StrataCache(embedded(tmp_path), key=b"X" * 32)
    try:
        assert stranger.lookup(PROMPT, LLM) is None
    finally:
        stranger.close()
    again = StrataCache(embedded(tmp_path), key=KEY)
    try:
        assert again.lookup(PROMPT, LLM) is None
    finally:
        again.close()


def test_tampered_records_are_misses_and_deleted(tmp_path: Path) -> None:
    tier = MemoryTier()
    cache = StrataCache(tier, key=KEY)
    try:
        cache.update(PROMPT, LLM, [Generation(text="right")])
        storage = cache.key_for(PROMPT, LLM)
        entry = asyncio.run(tier.get(storage))
        assert entry is not None
        forged = entry.value.replace(b"right", b"wrong")
        asyncio.run(tier.set(storage, TierEntry(forged, namespace=entry.namespace)))
        assert cache.lookup(PROMPT, LLM) is None
        assert asyncio.run(tier.get(storage)) is None
        # A valid record moved to another key does not answer there either.
        cache.update(PROMPT, LLM, [Generation(text="right")])
        entry = asyncio.run(tier.get(storage))
        assert entry is not None
        other = cache.key_for("another prompt", LLM)
        asyncio.run(tier.set(other, entry))
        assert cache.lookup("another prompt", LLM) is None
    finally:
        cache.close()


def test_ttl_tags_namespace_and_version(tmp_path: Path) -> None:
    clock = Clock()
    tier = MemoryTier(clock=clock)
    cache = StrataCache(tier, key=KEY, ttl=60, tags=("docs",), clock=clock, namespace="lc")
    neighbour = StrataCache(tier, key=KEY, clock=clock, namespace="other")
    try:
        cache.update(PROMPT, LLM, [Generation(text="a")])
        neighbour.update(PROMPT, LLM, [Generation(text="b")])
        clock.now += 59
        assert cache.lookup(PROMPT, LLM) == [Generation(text="a")]
        clock.now += 2
        assert cache.lookup(PROMPT, LLM) is None  # past its TTL
        cache.update(PROMPT, LLM, [Generation(text="a")])
        assert asyncio.run(tier.delete_tag("docs")) == 1
        assert cache.lookup(PROMPT, LLM) is None
        # clear() empties its own namespace only.
        cache.update(PROMPT, LLM, [Generation(text="a")])
        cache.clear()
        assert cache.lookup(PROMPT, LLM) is None
        assert neighbour.lookup(PROMPT, LLM) == [Generation(text="b")]
        # A new version starts afresh without a flush.
        v2 = StrataCache(tier, key=KEY, clock=clock, namespace="other", version="prompt-v2")
        assert v2.lookup(PROMPT, LLM) is None
        v2.close()
    finally:
        cache.close()
        neighbour.close()


async def test_async_calls_do_not_block_the_loop(tmp_path: Path) -> None:
    cache = StrataCache(embedded(tmp_path), key=KEY)
    try:
        prompts = [f"prompt {i}" for i in range(20)]
        await asyncio.gather(
            *(cache.aupdate(p, LLM, [Generation(text=p.upper())]) for p in prompts)
        )
        found = await asyncio.gather(*(cache.alookup(p, LLM) for p in prompts))
        assert found == [[Generation(text=p.upper())] for p in prompts]
    finally:
        await cache.aclose()


def test_from_settings_opens_the_deployment_store(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", upstream="http://127.0.0.1:9/v1")
    first = StrataCache.from_settings(settings)
    first.update(PROMPT, LLM, [Generation(text="shared")])
    first.close()
    assert (tmp_path / "data" / "signing.key").exists()
    again = StrataCache.from_settings(settings)
    try:
        assert again.lookup(PROMPT, LLM) == [Generation(text="shared")]
    finally:
        again.close()
    with pytest.raises(ConfigError):
        StrataCache.from_settings(
            Settings(data_dir=tmp_path / "d2", upstream="http://127.0.0.1:9/v1", signing="ed25519")
        )


def test_an_unreachable_tier_is_a_miss_not_an_error(tmp_path: Path) -> None:
    from stratacache.tiers.redis import RedisTier

    dead = RedisTier("redis://127.0.0.1:9/0", socket_timeout=0.2)
    cache = StrataCache(dead, key=KEY)
    try:
        cache.update(PROMPT, LLM, [Generation(text="lost")])
        assert cache.lookup(PROMPT, LLM) is None
    finally:
        cache.close()


@pytest.mark.parametrize(
    "kwargs",
    [{"key": b"short"}, {"ttl": 0}, {"ttl": float("nan")}, {"tags": [""]}, {"namespace": ""}],
)
def test_bad_arguments(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        StrataCache(**kwargs)  # type: ignore[arg-type]
