"""Tests for stratacache.llm.events: parsing events, rules, planning, and the Redis consumer.

Invalidations run through a real LLMCache (built from Settings, entries imported with warm), and
the consumer reads a real redis-server on a loopback port.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from redis_server import redis_server, redis_url
from stratacache.config import Settings
from stratacache.errors import ConfigError, RequestError, StrataError, TierUnavailableError
from stratacache.llm.cache import CacheStatus, LLMCache, LLMRequest
from stratacache.llm.events import (
    Event,
    EventConsumer,
    EventRule,
    Invalidation,
    apply,
    parse_event,
    parse_events,
    plan,
    rules_from_toml,
)
from stratacache.llm.factory import build_cache
from stratacache.llm.keys import Route
from stratacache.llm.rules import CacheRules
from stratacache.llm.warm import RecordedUpstream, read_log, warm

__all__ = ["redis_server", "redis_url"]

AUTH = {"Authorization": "Bearer sk-events"}
RULES = (
    EventRule("product_updated", tags=("product:{0}",)),
    EventRule("product_*", tags=("catalog",)),
    EventRule("region_changed", namespaces=("shop-{region}",)),
)


# --- parsing ----------------------------------------------------------------------------------------


def test_text_and_json_events() -> None:
    assert parse_event("product_updated 123") == Event("product_updated", ("123",))
    assert parse_event(b"  ping  ") == Event("ping")
    assert parse_event('{"event": "product_updated", "args": [123], "region": "eu", "x": {}}') == (
        Event("product_updated", ("123",), {"region": "eu"})
    )
    assert parse_event({"event": "product_updated 7", "args": "8"}) == Event(
        "product_updated", ("7", "8")
    )


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        "bad/name 1",
        "{not json",
        '{"args": [1]}',
        '{"event": "e", "args": [true]}',
        '{"event": "e", "args": [{"a": 1}]}',
        "e " + "x " * 40,
        b"\xff\xfe",
        "x" * 70_000,
        [1, 2],
    ],
)
def test_bad_events_are_request_errors(raw: Any) -> None:
    with pytest.raises(RequestError):
        parse_event(raw)


@given(st.one_of(st.text(max_size=300), st.binary(max_size=300)))
def test_parse_event_raises_only_request_errors(raw: str | bytes) -> None:
    try:
        event = parse_event(raw)
    except RequestError:
        return
    assert isinstance(event, Event)


def test_webhook_bodies() -> None:
    assert parse_events(b"a 1\n\nb 2\n", "text/plain") == [Event("a", ("1",)), Event("b", ("2",))]
    assert parse_events(b'[{"event": "a"}, {"event": "b"}]', "application/json") == [
        Event("a"),
        Event("b"),
    ]
    for body, kind in ((b"", None), (b"[]", "application/json"), (b"{", "application/json")):
        with pytest.raises(RequestError):
            parse_events(body, kind)


# --- rules and plans ---------------------------------------------------------------------------------


def test_plans_render_every_matching_rule() -> None:
    got = plan(RULES, [parse_event("product_updated 123"), parse_event("noise")])
    assert got == Invalidation(
        tags=frozenset({"product:123", "catalog"}), namespaces=frozenset(), unmatched=("noise",)
    )
    region = plan(RULES, [parse_event('{"event": "region_changed", "region": "eu"}')])
    assert region.namespaces == {"shop-eu"}
    assert not plan(RULES, [Event("other")])


@pytest.mark.parametrize(
    "event",
    [
        Event("product_updated"),  # no argument 0
        Event("region_changed"),  # no field "region"
        Event("product_updated", ("a,b",)),  # renders a tag with a comma
        Event("product_updated", ("a/b",)),
        Event("region_changed", fields={"region": "has space"}),  # not a namespace
    ],
)
def test_a_plan_that_cannot_render_is_an_error(event: Event) -> None:
    with pytest.raises(RequestError):
        plan(RULES, [event])


def test_templates_are_not_format_strings() -> None:
    with pytest.raises(ConfigError):
        EventRule("e", tags=("{0.__class__}",))
    with pytest.raises(ConfigError):
        EventRule("e", tags=("{0[1]}",))
    with pytest.raises(ConfigError):
        EventRule("e", tags=("t:{}",))
    assert plan([EventRule("e", tags=("t:{0}:{1}",))], [Event("e", ("x", "y"))]).tags == {"t:x:y"}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"event": "e"}, "array of tables"),
        ([{"event": "e"}], "invalidates nothing"),
        ([{"event": "e", "tags": "t"}], "list of strings"),
        ([{"event": "e", "tags": ["t"], "when": 1}], "unknown key"),
        ([{"tags": ["t"]}], "events[0]"),
    ],
)
def test_event_rules_from_toml(raw: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        rules_from_toml(raw, "strata.toml: events")


def test_settings_read_event_rules_and_sources(tmp_path: Path) -> None:
    config = tmp_path / "strata.toml"
    config.write_text(
        '[[events]]\nevent = "product_updated"\ntags = ["product:{0}"]\n', encoding="utf-8"
    )
    env = {"STRATA_EVENTS_STREAM": "ev", "STRATA_REDIS_URL": "redis://127.0.0.1:9/0"}
    settings = Settings.load(config_file=config, env=env)
    assert settings.events_stream == "ev"
    assert settings.cache_rules.events == (EventRule("product_updated", tags=("product:{0}",)),)
    assert not settings.cache_rules  # events change no key
    with pytest.raises(ConfigError, match="redis_url"):
        Settings(events_stream="ev")
    with pytest.raises(ConfigError, match="not both"):
        Settings(redis_url="redis://x", events_stream="a", events_channel="b")


# --- applied to a cache -------------------------------------------------------------------------------


def answer(text: str) -> dict[str, Any]:
    return {
        "id": "c",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
        ],
    }


def chat(text: str) -> dict[str, Any]:
    return {
        "model": "gpt-4o-mini",
        "temperature": 0,
        "messages": [{"role": "user", "content": text}],
    }


@pytest.fixture
async def cache(tmp_path: Path) -> AsyncIterator[LLMCache]:
    settings = Settings(data_dir=tmp_path / "data", upstream="http://127.0.0.1:9/v1")
    made = build_cache(settings, RecordedUpstream(None))
    lines = [
        json.dumps(
            {
                "request": chat("p123"),
                "response": answer("a"),
                "headers": {"X-Cache-Tags": "product:123"},
            }
        ),
        json.dumps(
            {
                "request": chat("p456"),
                "response": answer("b"),
                "headers": {"X-Cache-Tags": "product:456"},
            }
        ),
        json.dumps(
            {
                "request": chat("eu"),
                "response": answer("c"),
                "headers": {"X-Cache-Namespace": "shop-eu"},
            }
        ),
    ]
    report = await warm(made, read_log(lines, headers=AUTH))
    assert report.stored == 3
    yield made
    await made.aclose()
    await made.tiers.close()


async def _status(cache: LLMCache, text: str, namespace: str | None = None) -> CacheStatus:
    headers = {**AUTH, "X-Cache-Namespace": namespace} if namespace else AUTH
    return (await cache.handle(LLMRequest(Route.CHAT, chat(text), headers=headers))).cache


async def test_apply_invalidates_tags_and_namespaces(cache: LLMCache) -> None:
    deleted = await apply(cache, plan(RULES, [Event("product_updated", ("123",))]))
    assert deleted == 1
    assert await _status(cache, "p123") is CacheStatus.MISS
    assert await _status(cache, "p456") is CacheStatus.HIT
    region = parse_event('{"event": "region_changed", "region": "eu"}')
    assert await apply(cache, plan(RULES, [region])) == 1
    assert await _status(cache, "eu", "shop-eu") is CacheStatus.MISS


# --- the Redis consumer ---------------------------------------------------------------------------------


async def test_the_stream_consumer_applies_events_and_survives_a_dropped_connection(
    cache: LLMCache, redis_url: str
) -> None:
    import redis.asyncio

    admin = redis.asyncio.Redis.from_url(redis_url)
    # An event from before the consumer started is history, not news.
    await admin.xadd("strata:events", {"event": "product_updated 456"})
    consumer = EventConsumer.from_url(
        redis_url, cache, RULES, stream="strata:events", retry_delay=0.01
    )
    consumer.start()
    try:
        await consumer.wait_connected()
        await admin.xadd("strata:events", {"event": "bad/name"})
        await admin.xadd("strata:events", {"other": "field"})
        await admin.xadd("strata:events", {"event": "product_updated 123"})
        await consumer.wait_handled(3)
        assert (consumer.handled, consumer.rejected, consumer.deleted) == (1, 2, 1)
        assert await _status(cache, "p123") is CacheStatus.MISS

        # Every client connection dropped: events added meanwhile are read after reconnecting.
        await admin.client_kill_filter(_type="normal", skipme=True)
        await admin.xadd(
            "strata:events", {"event": json.dumps({"event": "product_updated", "args": [456]})}
        )
        await consumer.wait_handled(4)
        assert consumer.handled == 2
        assert await _status(cache, "p456") is CacheStatus.MISS
    finally:
        await consumer.aclose()
        await admin.aclose()


class _TierDownOnce:
    """The real cache, behind a tier that is unavailable for the first invalidation it is asked
    for (as a Redis tier restarting would be)."""

    def __init__(self, cache: LLMCache) -> None:
        self.cache = cache
        self.failures = 0

    async def invalidate_tag(self, tag: str) -> int:
        if self.failures == 0:
            self.failures += 1
            raise TierUnavailableError("the tier is restarting")
        return await self.cache.invalidate_tag(tag)

    async def invalidate_namespace(self, namespace: str) -> int:
        return await self.cache.invalidate_namespace(namespace)


async def test_the_stream_consumer_retries_an_event_while_a_tier_is_down(
    cache: LLMCache, redis_url: str
) -> None:
    import redis.asyncio

    admin = redis.asyncio.Redis.from_url(redis_url)
    invalidator = _TierDownOnce(cache)
    consumer = EventConsumer.from_url(
        redis_url, invalidator, RULES, stream="strata:retry", retry_delay=0.01
    )
    consumer.start()
    try:
        await consumer.wait_connected()
        await admin.xadd("strata:retry", {"event": "product_updated 123"})
        await consumer.wait_handled(1)
        assert invalidator.failures == 1
        assert (consumer.handled, consumer.rejected) == (1, 0)  # applied on the retry
        assert await _status(cache, "p123") is CacheStatus.MISS
    finally:
        await consumer.aclose()
        await admin.aclose()


async def test_the_channel_consumer(cache: LLMCache, redis_url: str) -> None:
    import redis.asyncio

    consumer = EventConsumer.from_url(redis_url, cache, RULES, channel="strata:events")
    consumer.start()
    admin = redis.asyncio.Redis.from_url(redis_url)
    try:
        await consumer.wait_connected()
        await admin.publish("strata:events", "product_updated 456")
        await consumer.wait_handled(1)
        assert consumer.deleted == 1
        assert await _status(cache, "p456") is CacheStatus.MISS
    finally:
        await consumer.aclose()
        await admin.aclose()


def test_consumer_arguments() -> None:
    with pytest.raises(ConfigError):
        EventConsumer.from_url("redis://127.0.0.1:9", _Nothing(), RULES)
    with pytest.raises(ConfigError):
        EventConsumer.from_url("redis://127.0.0.1:9", _Nothing(), RULES, stream="a", channel="b")
    with pytest.raises(StrataError):
        EventConsumer.from_url("redis://:bad:port", _Nothing(), RULES, stream="a")


class _Nothing:
    async def invalidate_tag(self, tag: str) -> int:
        return 0

    async def invalidate_namespace(self, namespace: str) -> int:
        return 0


def test_cache_rules_carry_event_rules() -> None:
    with pytest.raises(ConfigError):
        CacheRules(events=("not a rule",))  # type: ignore[arg-type]
