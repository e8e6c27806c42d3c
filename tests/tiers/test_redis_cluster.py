"""RedisTier on a real 3-node Redis Cluster: what the shared contract suite does not show.

The contract suite itself runs on the cluster too (``redis-cluster`` in ``conftest.TIER_FACTORIES``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

redis = pytest.importorskip("redis", reason="redis-py (the redis extra) is not installed")

from stratacache.config import Settings  # noqa: E402
from stratacache.errors import ConfigError  # noqa: E402
from stratacache.tiers import MemoryTier, TierChain, TierEntry  # noqa: E402
from stratacache.tiers.coherence import CoherentTier  # noqa: E402
from stratacache.tiers.redis import CLUSTER_SHARDS, RedisTier  # noqa: E402

from .cluster import RedisCluster  # noqa: E402
from .contract import FakeClock  # noqa: E402

# A cluster client's deadline covers the whole call, waiting for a connection included (see
# RedisTier): the 0.25 s default is a production setting, and a loaded CI machine can exceed it.
# These tests are about where keys go and what reaches every shard, not latency.
_DEADLINE = 5.0


def _slot_of(client: redis.RedisCluster, name: bytes) -> int:
    return int(client.keyslot(name))


async def test_an_entry_and_its_indexes_share_a_slot_and_entries_spread(
    redis_cluster: RedisCluster, clock: FakeClock
) -> None:
    redis_cluster.flushall()
    tier = RedisTier(redis_cluster.url, clock=clock, socket_timeout=_DEADLINE)
    try:
        for i in range(200):
            await tier.set(f"k{i}", TierEntry(b"v", tags=frozenset({"t"}), namespace="ns"))
    finally:
        await tier.close()
    with redis.RedisCluster(host="127.0.0.1", port=redis_cluster.ports[0]) as raw:
        names = list(raw.scan_iter(match="strata:*", target_nodes=raw.ALL_NODES))
        by_shard: dict[bytes, set[int]] = {}
        for name in names:
            shard = name.split(b"}", 1)[0]
            by_shard.setdefault(shard, set()).add(_slot_of(raw, name))
        assert all(len(slots) == 1 for slots in by_shard.values())  # one slot per shard
        assert len(by_shard) > CLUSTER_SHARDS // 2  # 200 keys use most of the shards
        # ...and the shards' slots live on every node.
        owners = {raw.get_node_from_key(name).name for name in names}
        assert len(owners) == 3


async def test_tags_namespaces_and_clear_reach_every_shard(
    redis_cluster: RedisCluster, clock: FakeClock
) -> None:
    redis_cluster.flushall()
    tier = RedisTier(redis_cluster.url, clock=clock, socket_timeout=_DEADLINE)
    try:
        for i in range(100):
            tags = frozenset({"even"} if i % 2 == 0 else {"odd"})
            await tier.set(f"k{i}", TierEntry(b"v", tags=tags, namespace=f"ns{i % 3}"))
        assert await tier.delete_tag("even") == 50
        assert await tier.get("k0") is None
        assert await tier.get("k1") is not None
        remaining_ns0 = len([i for i in range(100) if i % 2 == 1 and i % 3 == 0])
        assert await tier.delete_namespace("ns0") == remaining_ns0
        await tier.clear()
        assert all([await tier.get(f"k{i}") is None for i in range(100)])
    finally:
        await tier.close()


async def test_coherent_l0s_over_a_cluster(redis_cluster: RedisCluster, clock: FakeClock) -> None:
    redis_cluster.flushall()
    shared = [RedisTier(redis_cluster.url, clock=clock, socket_timeout=_DEADLINE) for _ in range(2)]
    l0s = [CoherentTier(MemoryTier(clock=clock), tier) for tier in shared]
    chains = [TierChain([l0, tier], clock=clock) for l0, tier in zip(l0s, shared, strict=True)]
    try:
        for l0 in l0s:
            await l0.wait_subscribed()
        await chains[0].set("k", TierEntry(b"v", tags=frozenset({"t"})))
        assert await chains[1].lookup("k") is not None  # now in B's L0 too
        applied = l0s[1].applied
        await chains[0].delete_tag("t")
        import asyncio

        async with asyncio.timeout(10):
            while l0s[1].applied == applied:
                await asyncio.sleep(0.001)
        assert await l0s[1].local.get("k") is None
    finally:
        for chain in chains:
            await chain.close()


def test_cluster_urls_in_settings_and_the_tier() -> None:
    assert Settings(redis_url="redis+cluster://127.0.0.1:7000,127.0.0.1:7001").chain_tiers == (
        "memory",
        "redis",
    )
    for bad in ("redis+cluster://", "redis+cluster://host", "redis+cluster://h:p,h2:"):
        with pytest.raises(ConfigError):
            RedisTier(bad)


async def test_a_cache_on_the_cluster_follows_an_event_stream(
    redis_cluster: RedisCluster, tmp_path: Path
) -> None:
    import json

    from stratacache.llm.cache import CacheStatus, LLMRequest
    from stratacache.llm.events import EventConsumer, EventRule
    from stratacache.llm.factory import build_cache
    from stratacache.llm.keys import Route
    from stratacache.llm.warm import RecordedUpstream, read_log, warm

    redis_cluster.flushall()
    settings = Settings(
        data_dir=tmp_path / "data", upstream="http://127.0.0.1:9/v1", redis_url=redis_cluster.url
    )
    cache = build_cache(settings, RecordedUpstream(None))
    rules = [EventRule("product_updated", tags=("product:{0}",))]
    consumer = EventConsumer.from_url(redis_cluster.url, cache, rules, stream="strata:events")
    auth = {"Authorization": "Bearer sk-cluster"}
    body = {"model": "m", "temperature": 0, "messages": [{"role": "user", "content": "p1"}]}
    answer = {
        "id": "c",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "a"}, "finish_reason": "stop"}
        ],
    }
    line = json.dumps(
        {"request": body, "response": answer, "headers": {"X-Cache-Tags": "product:1"}}
    )
    try:
        assert (await warm(cache, read_log([line], headers=auth))).stored == 1
        consumer.start()
        await consumer.wait_connected()
        with redis.RedisCluster(host="127.0.0.1", port=redis_cluster.ports[0]) as raw:
            raw.xadd("strata:events", {"event": "product_updated 1"})
        await consumer.wait_handled(1)
        assert consumer.deleted == 1
        got = await cache.handle(LLMRequest(Route.CHAT, body, headers=auth))
        assert got.cache is CacheStatus.MISS
    finally:
        await consumer.aclose()
        await cache.aclose()
        await cache.tiers.close()


async def test_many_tasks_at_once_and_an_unreachable_cluster(
    redis_cluster: RedisCluster, clock: FakeClock
) -> None:
    import asyncio

    from stratacache.errors import TierUnavailableError

    redis_cluster.flushall()
    # A generous deadline: on a busy machine 100 tasks queue for the connections, and the
    # deadline counts that wait too (this test is about correctness, not latency).
    tier = RedisTier(redis_cluster.url, clock=clock, socket_timeout=10)
    try:

        async def worker(n: int) -> None:
            for i in range(10):
                assert await tier.set(f"w{n}:{i}", TierEntry(b"v", tags=frozenset({"all"})))
                assert await tier.get(f"w{n}:{i}") is not None

        await asyncio.gather(*(worker(n) for n in range(100)))
        assert await tier.delete_tag("all") == 1000
    finally:
        await tier.close()
    dead = RedisTier("redis+cluster://127.0.0.1:9", clock=clock, socket_timeout=0.5)
    try:
        with pytest.raises(TierUnavailableError):
            await dead.get("k")
    finally:
        await dead.close()


async def test_a_connection_dropped_under_a_call_is_tried_once_more(
    redis_cluster: RedisCluster, clock: FakeClock
) -> None:
    from stratacache.errors import TierUnavailableError

    redis_cluster.flushall()
    # The breaker would open on the one failure below; this test is about the retry.
    tier = RedisTier(redis_cluster.url, clock=clock, socket_timeout=_DEADLINE, breaker_threshold=5)
    client = tier._client
    real = client.execute_command
    drops: list[int] = []  # how many of the next commands find their connection closed

    async def dropping(*args: object, **kwargs: object) -> object:
        if drops and drops[0] > 0:
            drops[0] -= 1
            raise redis.exceptions.ConnectionError("Connection closed by server.")
        return await real(*args, **kwargs)

    client.execute_command = dropping  # what the tier's scripts and reads call
    try:
        drops[:] = [1]
        assert await tier.set("k", TierEntry(b"v", tags=frozenset({"t"})))
        drops[:] = [1]
        found = await tier.get("k")
        assert found is not None
        assert found.value == b"v"
        drops[:] = [2]  # twice in a row: the tier is unavailable for this call, and says so
        with pytest.raises(TierUnavailableError):
            await tier.get("k")
        drops[:] = []
        assert (await tier.get("k")) is not None
    finally:
        await tier.close()
