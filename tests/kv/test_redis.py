"""The Redis store against a real redis-server: binary keys, TTLs, corrupt values, a dead server."""

from __future__ import annotations

import pytest
import redis

from stratacache.errors import ConfigError, TierUnavailableError
from stratacache.kv import BlockCodec, HostMemoryKVStore, RedisKVStore, TieredKVStore

from .conftest import _free_port
from .helpers import blocks_for, chain, same

KEYS = chain(3)


@pytest.fixture
def raw(redis_url: str) -> redis.Redis:
    """A plain client on the test server, to look behind the store's back."""
    return redis.Redis.from_url(redis_url)


def test_values_are_block_documents_under_binary_keys(
    redis_store: RedisKVStore, raw: redis.Redis
) -> None:
    blocks = blocks_for(KEYS)
    redis_store.store(blocks)
    name = redis_store._key(KEYS[0])
    assert name.endswith(KEYS[0].digest)
    value = raw.get(name)
    assert isinstance(value, bytes)
    assert same(BlockCodec().decode(KEYS[0], value), blocks[KEYS[0]])
    assert raw.ttl(name) == -1  # no TTL unless asked


def test_a_ttl_is_set_and_refreshed_by_loads(redis_url: str, raw: redis.Redis) -> None:
    store = RedisKVStore(url=redis_url, prefix="ttl-test:", ttl=60)
    try:
        store.store(blocks_for(KEYS))
        name = store._key(KEYS[0])
        assert 0 < raw.pttl(name) <= 60_000
        raw.pexpire(name, 5_000)
        assert len(store.load(KEYS)) == 3
        assert raw.pttl(name) > 5_000
    finally:
        store.clear()
        store.close()


def test_a_corrupt_value_is_dropped_not_loaded(redis_store: RedisKVStore, raw: redis.Redis) -> None:
    blocks = blocks_for(KEYS)
    redis_store.store(blocks)
    name = redis_store._key(KEYS[1])
    raw.set(name, raw.get(name)[:-10])  # type: ignore[index]
    loaded = redis_store.load(KEYS)
    assert len(loaded) == 1
    assert same(loaded[0], blocks[KEYS[0]])
    assert redis_store.stats().corrupt_blocks == 1
    assert raw.exists(name) == 0


def test_clear_removes_only_its_own_prefix(redis_store: RedisKVStore, raw: redis.Redis) -> None:
    raw.set(b"someone-else:key", b"keep me")
    try:
        redis_store.store(blocks_for(KEYS))
        redis_store.clear()
        assert redis_store.lookup(KEYS) == 0
        assert raw.get(b"someone-else:key") == b"keep me"
    finally:
        raw.delete(b"someone-else:key")


def test_a_prefix_with_glob_characters_clears_exactly(redis_url: str, raw: redis.Redis) -> None:
    star = RedisKVStore(url=redis_url, prefix="p*:")
    plain = RedisKVStore(url=redis_url, prefix="px:")
    try:
        star.store(blocks_for(KEYS))
        plain.store(blocks_for(KEYS))
        star.clear()
        assert star.lookup(KEYS) == 0
        assert plain.lookup(KEYS) == 3
    finally:
        plain.clear()
        star.close()
        plain.close()


def test_a_dead_server_is_unavailable_and_the_tiers_carry_on() -> None:
    dead = RedisKVStore(url=f"redis://127.0.0.1:{_free_port()}/0", timeout=0.5)
    with pytest.raises(TierUnavailableError):
        dead.lookup(KEYS)
    with pytest.raises(TierUnavailableError):
        dead.store(blocks_for(KEYS))
    tiered = TieredKVStore([HostMemoryKVStore(max_bytes=1 << 20), dead])
    assert tiered.store(blocks_for(KEYS)) == 3
    assert tiered.lookup(KEYS) == 3
    assert len(tiered.load(KEYS)) == 3
    tiered.close()


def test_configuration_errors(redis_url: str) -> None:
    with pytest.raises(ConfigError):
        RedisKVStore()
    with pytest.raises(ConfigError):
        RedisKVStore(redis.Redis.from_url(redis_url), url=redis_url)
    with pytest.raises(ConfigError):
        RedisKVStore(redis.Redis.from_url(redis_url, decode_responses=True))
    with pytest.raises(ConfigError):
        RedisKVStore(url=redis_url, prefix="")
    for bad in (0, -1, float("nan"), float("inf"), True, "1"):
        with pytest.raises(ConfigError):
            RedisKVStore(url=redis_url, ttl=bad)  # type: ignore[arg-type]
        with pytest.raises(ConfigError):
            RedisKVStore(url=redis_url, timeout=bad)  # type: ignore[arg-type]
