"""Several proxy instances sharing one Redis: hits cross instances, an outage is not an error.

Each test starts a real redis-server (``tests/redis_server.py``); the instances share the signing
key file (a record signed by one instance must verify on the others) and the Redis prefix.
"""

# ruff: noqa: E402  (the imports after the redis-py skip below)
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

redis = pytest.importorskip("redis", reason="redis-py (the redis extra) is not installed")

from redis_server import RedisServer, own_redis_server, redis_server, redis_url
from stratacache.tiers.coherence import CoherentTier
from stratacache.tiers.redis import RedisTier

from .conftest import ADMIN_TOKEN, RunningProxy, StartProxy
from .fake_upstream import FakeUpstream
from .helpers import CHAT, client, wait_until

__all__ = ["own_redis_server", "redis_server", "redis_url"]


@pytest.fixture
def shared(redis_url: str) -> Iterator[redis.Redis]:
    """A plain client on the test's Redis, to watch what the proxies store there."""
    with redis.Redis.from_url(redis_url) as raw:
        yield raw


def _stored(raw: redis.Redis) -> int:
    return sum(1 for _ in raw.scan_iter(match="strata:e:*"))


def _instance(start: StartProxy, tmp_path: Path, name: str, url: str, chain: str) -> RunningProxy:
    return start(
        data_dir=tmp_path / name,
        signing_key_file=tmp_path / "shared.key",
        redis_url=url,
        chain=chain,
    )


@pytest.mark.parametrize("chain", ["memory,redis", "memory,sqlite,redis"])
def test_a_miss_on_one_instance_is_a_hit_on_another(
    start_proxy: StartProxy,
    *,
    fake: FakeUpstream,
    tmp_path: Path,
    redis_url: str,
    shared: redis.Redis,
    chain: str,
) -> None:
    a = _instance(start_proxy, tmp_path, "a", redis_url, chain)
    b = _instance(start_proxy, tmp_path, "b", redis_url, chain)
    assert a.proxy.tiers.name == chain.replace(",", "+")

    with client(a) as sdk_a, client(b) as sdk_b:
        first = sdk_a.chat.completions.with_raw_response.create(**CHAT)
        assert first.headers["x-cache"] == "MISS"
        wait_until(lambda: _stored(shared) == 1)

        second = sdk_b.chat.completions.with_raw_response.create(**CHAT)
        assert second.headers["x-cache"] == "HIT"
        assert second.headers["x-cache-tier"] == "redis"
        assert second.parse().model_dump() == first.parse().model_dump()
        # Copied into B's faster tiers on the way.
        third = sdk_b.chat.completions.with_raw_response.create(**CHAT)
        assert third.headers["x-cache-tier"] == "memory"
    assert fake.calls["/v1/chat/completions"] == 1


def test_a_streamed_miss_is_replayed_by_another_instance(
    start_proxy: StartProxy,
    fake: FakeUpstream,
    tmp_path: Path,
    redis_url: str,
    shared: redis.Redis,
) -> None:
    a = _instance(start_proxy, tmp_path, "a", redis_url, "memory,redis")
    b = _instance(start_proxy, tmp_path, "b", redis_url, "memory,redis")
    with client(a) as sdk_a, client(b) as sdk_b:
        live = "".join(
            chunk.choices[0].delta.content or ""
            for chunk in sdk_a.chat.completions.create(**CHAT, stream=True)
            if chunk.choices
        )
        wait_until(lambda: _stored(shared) == 1)
        replayed = "".join(
            chunk.choices[0].delta.content or ""
            for chunk in sdk_b.chat.completions.create(**CHAT, stream=True)
            if chunk.choices
        )
    assert replayed == live
    assert fake.calls["/v1/chat/completions"] == 1


def test_redis_killed_mid_run_then_back(
    start_proxy: StartProxy,
    fake: FakeUpstream,
    tmp_path: Path,
    own_redis_server: RedisServer,
) -> None:
    a = _instance(start_proxy, tmp_path, "a", own_redis_server.url, "memory,sqlite,redis")
    with client(a) as sdk:
        sdk.chat.completions.create(**CHAT)
        own_redis_server.stop()
        l0, sqlite = a.proxy.tiers.tiers[0], a.proxy.tiers.tiers[1]
        assert isinstance(l0, CoherentTier)
        assert isinstance(sqlite, CoherentTier)
        # Deaf to the other instances' invalidations, the instance's own tiers are off.
        wait_until(lambda: not l0.subscribed and not sqlite.subscribed)

        # Every request still succeeds, from the upstream: nothing is served that another
        # instance might have invalidated meanwhile, and nothing is stored here.
        for question in ("And of Italy?", "And of Italy?"):
            other = {**CHAT, "messages": [{"role": "user", "content": question}]}
            assert sdk.chat.completions.with_raw_response.create(**other).status_code == 200
        health = httpx.get(a.root + "/healthz", timeout=5).json()
        assert health["status"] == "degraded"
        assert health["tiers"]["redis"] is False

        own_redis_server.start()
        redis_tier = a.proxy.tiers.tiers[-1]
        assert isinstance(redis_tier, RedisTier)
        assert not redis_tier.available
        redis_tier.reset_breaker()  # what the cooldown does (tests/tiers/test_redis.py runs it)
        third = {**CHAT, "messages": [{"role": "user", "content": "And of Spain?"}]}
        assert sdk.chat.completions.with_raw_response.create(**third).headers["x-cache"] == "MISS"
        assert httpx.get(a.root + "/healthz", timeout=5).json()["status"] == "ok"
        with redis.Redis.from_url(own_redis_server.url) as raw:
            wait_until(lambda: _stored(raw) == 1)


def test_a_tag_deleted_on_one_instance_is_gone_on_both(
    start_proxy: StartProxy,
    fake: FakeUpstream,
    tmp_path: Path,
    redis_url: str,
) -> None:
    a = _instance(start_proxy, tmp_path, "a", redis_url, "memory,redis")
    b = _instance(start_proxy, tmp_path, "b", redis_url, "memory,redis")
    tagged = {"x-cache-tags": "policy:returns"}
    with client(a, default_headers=tagged) as sdk_a, client(b, default_headers=tagged) as sdk_b:
        sdk_a.chat.completions.create(**CHAT)
        wait_until(lambda: a.proxy.cache.pending_writes == 0)  # stored in Redis by A
        wait_until(
            lambda: (
                sdk_b.chat.completions.with_raw_response.create(**CHAT).headers["x-cache-tier"]
                == "memory"
            )
        )  # in B's L0 now
        b_l0 = b.proxy.tiers.tiers[0]
        assert isinstance(b_l0, CoherentTier)
        applied = b_l0.applied

        deleted = httpx.delete(
            a.root + "/admin/tags/policy:returns",
            headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
            timeout=5,
        )
        assert deleted.status_code == 200
        wait_until(lambda: b_l0.applied > applied)  # pushed over pub/sub, not left to a TTL
        after = sdk_b.chat.completions.with_raw_response.create(**CHAT)
        assert after.headers["x-cache"] == "MISS"
    assert fake.calls["/v1/chat/completions"] == 2


def test_an_event_on_the_redis_stream_invalidates_every_instance(
    start_proxy: StartProxy,
    fake: FakeUpstream,
    tmp_path: Path,
    redis_url: str,
    shared: redis.Redis,
) -> None:
    from stratacache.llm.events import EventRule
    from stratacache.llm.rules import CacheRules

    rules = CacheRules(events=(EventRule("product_updated", tags=("product:{0}",)),))
    instances = [
        start_proxy(
            data_dir=tmp_path / name,
            signing_key_file=tmp_path / "shared.key",
            redis_url=redis_url,
            chain="memory,redis",
            events_stream="strata:events",
            cache_rules=rules,
        )
        for name in ("a", "b")
    ]
    tagged = {"x-cache-tags": "product:7"}
    sdks = [client(i, default_headers=tagged) for i in instances]
    sdks[0].chat.completions.create(**CHAT)
    wait_until(lambda: _stored(shared) == 1)
    for sdk in sdks:  # a hit on both, from their own L0 the second time
        sdk.chat.completions.create(**CHAT)
        assert sdk.chat.completions.with_raw_response.create(**CHAT).headers["x-cache"] == "HIT"
    # Both consumers must be reading before the event is sent (they read what comes after).
    consumers = [i.server._server.config.app.state.events for i in instances]
    wait_until(lambda: all(c is not None and c.connected for c in consumers))
    shared.xadd("strata:events", {"event": "product_updated 7"})
    wait_until(lambda: all(c.handled == 1 for c in consumers))
    assert _stored(shared) == 0
    # B asks again: a miss. A's L0 dropped its copy too: it gets B's new answer from Redis.
    fresh = sdks[1].chat.completions.with_raw_response.create(**CHAT)
    assert fresh.headers["x-cache"] == "MISS"
    wait_until(lambda: _stored(shared) == 1)
    again = sdks[0].chat.completions.with_raw_response.create(**CHAT)
    assert (again.headers["x-cache"], again.headers["x-cache-tier"]) == ("HIT", "redis")
    assert again.parse().model_dump() == fresh.parse().model_dump()
    assert fake.calls["/v1/chat/completions"] == 2
    for sdk in sdks:
        sdk.close()
