"""Review R1: correctness checks of the request path changed since 6e1b2af (write-behind, semantic
lookups and promotion, TTL rules and versioned namespaces, prefix keys).

Seven tests reproduced bugs found in review (they were marked ``xfail(strict=True)``); the bugs are
fixed and the tests stay as regression tests. The others check behaviour the review found correct
and that is worth keeping, and the last section covers related faults fixed alongside.

Everything runs on real tiers, the real HTTP upstream client and the fake OpenAI server on a
loopback port. Races are made deterministic by a gate in a real :class:`MemoryTier` subclass (a
slow tier whose read is in flight while an invalidation runs), never by sleeping.
"""

from __future__ import annotations

import asyncio

from proxy.fake_upstream import FakeUpstream
from stratacache.llm.cache import (
    CacheStatus,
    LLMCache,
    LLMRequest,
    RoutePolicy,
    derive_tenant_secret,
)
from stratacache.llm.keys import Route, request_key, tenant_for
from stratacache.llm.rules import CacheRules, NamespaceVersion, Rule
from stratacache.proxy.upstream import HTTPUpstream
from stratacache.tiers import MemoryTier, TierChain, TierEntry

from .review_support import (
    AUTH,
    KEY,
    Clock,
    ask,
    clock,
    content,
    fake,
    fake_module,
    make_cache,
    make_layer,
    read,
    upstream,
)

__all__ = ["clock", "fake", "fake_module", "upstream"]  # fixtures, imported

TENANT = tenant_for("sk-review", secret=derive_tenant_secret(KEY))


class GatedTier(MemoryTier):
    """A real in-process tier standing for a slow one (Redis): a read of the armed key fetches
    the entry, then stays in flight until :attr:`gate` opens, as a GET reply on the wire would."""

    name = "gated"

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock=clock)
        self.armed: str | None = None
        self.reached = asyncio.Event()
        self.gate = asyncio.Event()

    async def get(self, key: str) -> TierEntry | None:
        entry = await super().get(key)
        if key == self.armed:
            self.armed = None
            self.reached.set()
            await self.gate.wait()
        return entry


async def until_landed_in_table(cache: LLMCache) -> None:
    """Turn the loop until the flight has left the coalescing table (its write is then pending).
    Bounded by a count of turns, not by time."""
    for _ in range(10_000):
        if cache.in_flight == 0:
            return
        await asyncio.sleep(0)
    raise AssertionError("the flight never ended")


# --- write-behind and invalidation -----------------------------------------------------------------


PREFIX = {Route.CHAT: RoutePolicy(key="prefix", granularity=8)}


async def test_exact_route_invalidation_during_a_pending_write_wins(
    upstream: HTTPUpstream, clock: Clock, fake: FakeUpstream
) -> None:
    """Control for the prefix tests below: on an exact route, invalidate_key waits for the pending
    write, so the entry is not brought back."""
    tiers = TierChain([MemoryTier(clock=clock)], clock=clock)
    cache = make_cache(tiers, upstream, clock)
    first = await cache.handle(LLMRequest(Route.CHAT, ask("Do you ship to Norway?"), headers=AUTH))
    await until_landed_in_table(cache)
    assert cache.pending_writes == 1  # answered, not yet stored
    assert first.key is not None
    await cache.invalidate_key(first.key)
    await cache.drain()
    again = await cache.handle(LLMRequest(Route.CHAT, ask("Do you ship to Norway?"), headers=AUTH))
    assert again.cache is CacheStatus.MISS
    await cache.aclose()


async def test_prefix_route_late_arrival_waits_for_the_pending_write(
    upstream: HTTPUpstream, clock: Clock, fake: FakeUpstream
) -> None:
    tiers = TierChain([MemoryTier(clock=clock)], clock=clock)
    cache = make_cache(tiers, upstream, clock, routes=PREFIX)
    body = ask("Do you ship to Norway?")
    first = await cache.handle(LLMRequest(Route.CHAT, body, headers=AUTH))
    assert first.cache is CacheStatus.MISS
    await until_landed_in_table(cache)
    assert cache.pending_writes == 1
    late = await cache.handle(LLMRequest(Route.CHAT, body, headers=AUTH))
    try:
        assert late.cache is CacheStatus.HIT
        assert fake.calls["/v1/chat/completions"] == 1
    finally:
        await read(late)
        await cache.aclose()


async def test_prefix_route_invalidation_during_a_pending_write_wins(
    upstream: HTTPUpstream, clock: Clock, fake: FakeUpstream
) -> None:
    tiers = TierChain([MemoryTier(clock=clock)], clock=clock)
    cache = make_cache(tiers, upstream, clock, routes=PREFIX)
    body = ask("Do you ship to Norway?")
    first = await cache.handle(LLMRequest(Route.CHAT, body, headers=AUTH))
    await until_landed_in_table(cache)
    assert cache.pending_writes == 1
    assert first.key is not None
    assert "#" not in first.key  # a plain answer gives the slot key
    await cache.invalidate_key(first.key)
    await cache.drain()
    again = await cache.handle(LLMRequest(Route.CHAT, body, headers=AUTH))
    try:
        assert again.cache is CacheStatus.MISS
    finally:
        await cache.aclose()


async def test_prefix_route_streamed_miss_key_can_be_invalidated(
    upstream: HTTPUpstream, clock: Clock, fake: FakeUpstream
) -> None:
    tiers = TierChain([MemoryTier(clock=clock)], clock=clock)
    cache = make_cache(tiers, upstream, clock, routes=PREFIX)
    body = ask("Do you ship to Norway?", stream=True)
    first = await cache.handle(LLMRequest(Route.CHAT, body, headers=AUTH))
    await read(first)
    await cache.drain()
    assert first.key is not None
    try:
        assert await cache.invalidate_key(first.key) is True
        again = await cache.handle(LLMRequest(Route.CHAT, body, headers=AUTH))
        await read(again)
        assert again.cache is CacheStatus.MISS
    finally:
        await cache.aclose()


async def test_prefix_route_never_serves_another_suffix(
    upstream: HTTPUpstream, clock: Clock, fake: FakeUpstream
) -> None:
    """Two requests sharing the first 8 tokens share a slot but never an answer."""
    tiers = TierChain([MemoryTier(clock=clock)], clock=clock)
    cache = make_cache(tiers, upstream, clock, routes=PREFIX)
    a = await cache.handle(LLMRequest(Route.CHAT, ask("Do you ship to Norway?"), headers=AUTH))
    await cache.drain()
    b = await cache.handle(LLMRequest(Route.CHAT, ask("Do you ship to Sweden?"), headers=AUTH))
    assert b.cache is CacheStatus.MISS
    assert content(await read(b)) != content(await read(a))
    await cache.aclose()


# --- semantic lookups and promotion ------------------------------------------------------------------


ORIGINAL = "Where is the Rome store?"
PARAPHRASE = "where is the rome store"  # the same words: the hashing embedder scores 1.0


async def test_a_no_store_paraphrase_is_not_promoted(
    upstream: HTTPUpstream, clock: Clock, fake: FakeUpstream
) -> None:
    tiers = TierChain([MemoryTier(clock=clock)], clock=clock)
    cache = make_cache(tiers, upstream, clock, semantic=make_layer(clock))
    await cache.handle(LLMRequest(Route.CHAT, ask(ORIGINAL), headers=AUTH))
    await cache.drain()
    headers = {**AUTH, "cache-control": "no-store"}
    hit = await cache.handle(LLMRequest(Route.CHAT, ask(PARAPHRASE), headers=headers))
    assert hit.cache is CacheStatus.SEMANTIC_HIT
    await cache.drain()
    paraphrase_key = request_key(Route.CHAT, ask(PARAPHRASE), tenant=TENANT).storage_key
    try:
        assert await tiers.lookup(paraphrase_key) is None
    finally:
        await cache.aclose()


async def test_a_semantic_hit_honours_the_paraphrases_ttl_rule(
    upstream: HTTPUpstream, clock: Clock, fake: FakeUpstream
) -> None:
    # Stock questions go stale in a minute; the rule's regex matches only the form with "?".
    rules = CacheRules(rules=(Rule(prompt=r"stock\?", ttl=60),))
    tiers = TierChain([MemoryTier(clock=clock)], clock=clock)
    cache = make_cache(tiers, upstream, clock, semantic=make_layer(clock), rules=rules)
    old = await cache.handle(
        LLMRequest(Route.CHAT, ask("is the blue widget in stock"), headers=AUTH)
    )
    assert old.cache is CacheStatus.MISS
    await cache.drain()
    clock.now += 3600
    fresh = await cache.handle(
        LLMRequest(Route.CHAT, ask("Is the blue widget in stock?"), headers=AUTH)
    )
    try:
        assert fresh.cache is CacheStatus.MISS, f"served an answer {fresh.age} s old"
    finally:
        await cache.aclose()


async def test_a_promotion_racing_an_invalidation_does_not_resurrect_the_answer(
    upstream: HTTPUpstream, clock: Clock, fake: FakeUpstream
) -> None:
    gated = GatedTier(clock)
    fast = MemoryTier(clock=clock)
    tiers = TierChain([fast, gated], clock=clock)
    cache = make_cache(tiers, upstream, clock, semantic=make_layer(clock))
    original = await cache.handle(LLMRequest(Route.CHAT, ask(ORIGINAL), headers=AUTH))
    await cache.drain()
    assert original.key is not None
    await fast.delete(original.key)  # evicted from L0: the next read goes to the slow tier
    gated.armed = original.key
    racing = asyncio.create_task(
        cache.handle(LLMRequest(Route.CHAT, ask(PARAPHRASE), headers=AUTH))
    )
    await gated.reached.wait()  # the semantic match's record is on the wire...
    assert await cache.invalidate_key(original.key) is True  # ...when the answer is invalidated
    gated.gate.set()
    await read(await racing)  # served while racing: acceptable
    await cache.drain()
    later = await cache.handle(LLMRequest(Route.CHAT, ask(PARAPHRASE), headers=AUTH))
    try:
        assert later.cache is CacheStatus.MISS, "the invalidated answer came back via its alias"
    finally:
        await read(later)
        await cache.aclose()


async def test_invalidating_the_original_removes_a_landed_alias(
    upstream: HTTPUpstream, clock: Clock, fake: FakeUpstream
) -> None:
    tiers = TierChain([MemoryTier(clock=clock)], clock=clock)
    cache = make_cache(tiers, upstream, clock, semantic=make_layer(clock))
    original = await cache.handle(LLMRequest(Route.CHAT, ask(ORIGINAL), headers=AUTH))
    await cache.drain()
    hit = await cache.handle(LLMRequest(Route.CHAT, ask(PARAPHRASE), headers=AUTH))
    assert hit.cache is CacheStatus.SEMANTIC_HIT
    # Invalidate while the alias write is still pending: it must land first, then go.
    assert original.key is not None
    await cache.invalidate_key(original.key)
    await cache.drain()
    again = await cache.handle(LLMRequest(Route.CHAT, ask(PARAPHRASE), headers=AUTH))
    assert again.cache is CacheStatus.MISS
    await cache.aclose()


async def test_no_semantic_answer_across_prompt_versions_tenants_or_no_cache(
    upstream: HTTPUpstream, clock: Clock, fake: FakeUpstream
) -> None:
    tiers = TierChain([MemoryTier(clock=clock)], clock=clock)
    layer = make_layer(clock)
    v1 = CacheRules(versions=(NamespaceVersion("*", prompt_version="v1"),))
    v2 = CacheRules(versions=(NamespaceVersion("*", prompt_version="v2"),))
    old = make_cache(tiers, upstream, clock, semantic=layer, rules=v1)
    await old.handle(LLMRequest(Route.CHAT, ask(ORIGINAL), headers=AUTH))
    await old.drain()
    await old.aclose()
    new = make_cache(tiers, upstream, clock, semantic=layer, rules=v2)
    after_deploy = await new.handle(LLMRequest(Route.CHAT, ask(PARAPHRASE), headers=AUTH))
    assert after_deploy.cache is CacheStatus.MISS
    other = {"authorization": "Bearer sk-someone-else"}
    theirs = await new.handle(LLMRequest(Route.CHAT, ask(ORIGINAL), headers=other))
    assert theirs.cache is CacheStatus.MISS
    no_cache = {**AUTH, "cache-control": "no-cache"}
    bypass = await new.handle(LLMRequest(Route.CHAT, ask(ORIGINAL.lower()), headers=no_cache))
    assert bypass.cache is CacheStatus.BYPASS
    sampled = await new.handle(LLMRequest(Route.CHAT, ask(PARAPHRASE, temperature=1), headers=AUTH))
    assert sampled.cache is CacheStatus.BYPASS
    assert fake.calls["/v1/chat/completions"] == 5
    await new.aclose()


# --- coalescing (pre-dates 6e1b2af, found while reviewing the write-behind) --------------------------


async def wait_held(fake: FakeUpstream, count: int) -> None:
    """Wait (on an event in another thread, polled) until ``count`` upstream answers are held."""
    for _ in range(5000):
        if fake.held >= count:
            return
        await asyncio.sleep(0.001)
    raise AssertionError("the upstream never held the answer")


async def test_a_coalesced_followers_tags_are_stored_with_the_answer(
    upstream: HTTPUpstream, clock: Clock, fake: FakeUpstream
) -> None:
    tiers = TierChain([MemoryTier(clock=clock)], clock=clock)
    cache = make_cache(tiers, upstream, clock)
    body = ask("What does the blue widget cost?")
    fake.hold_after = 0
    leader = asyncio.create_task(
        cache.handle(LLMRequest(Route.CHAT, body, headers={**AUTH, "cache-control": "no-store"}))
    )
    await wait_held(fake, 1)
    follower = asyncio.create_task(
        cache.handle(LLMRequest(Route.CHAT, body, headers={**AUTH, "x-cache-tags": "widget"}))
    )
    for _ in range(100):  # let the follower join the flight (loop turns, no time)
        await asyncio.sleep(0)
    fake.release()
    assert (await follower).cache is CacheStatus.COALESCED
    await leader
    await cache.drain()
    await cache.invalidate_tag("widget")  # the price changed
    again = await cache.handle(LLMRequest(Route.CHAT, body, headers=AUTH))
    try:
        assert again.cache is CacheStatus.MISS, "served after its tag was invalidated"
    finally:
        await cache.aclose()


# --- fixed alongside R1 -----------------------------------------------------------------------------


async def test_an_answer_fetched_across_an_invalidation_is_not_stored(
    upstream: HTTPUpstream, clock: Clock, fake: FakeUpstream
) -> None:
    """The upstream call began before its tag was invalidated: the answer is given, not stored
    (it may predate the change the invalidation announced)."""
    tiers = TierChain([MemoryTier(clock=clock)], clock=clock)
    cache = make_cache(tiers, upstream, clock)
    body = ask("What does the red widget cost?")
    headers = {**AUTH, "x-cache-tags": "widget"}
    fake.hold_after = 0
    first = asyncio.create_task(cache.handle(LLMRequest(Route.CHAT, body, headers=headers)))
    await wait_held(fake, 1)
    await cache.invalidate_tag("widget")  # the price changed while the answer was on its way
    fake.release()
    assert (await first).cache is CacheStatus.MISS
    await cache.drain()
    again = await cache.handle(LLMRequest(Route.CHAT, body, headers=headers))
    try:
        assert again.cache is CacheStatus.MISS
    finally:
        await cache.aclose()


async def test_an_invalidation_waits_only_for_the_writes_pending_when_it_starts() -> None:
    """Under steady traffic new writes keep arriving; an invalidation must not wait for them."""
    from stratacache.llm.coalesce import PendingWrites

    pending = PendingWrites()
    first_gate, later_gate = asyncio.Event(), asyncio.Event()
    pending.schedule(("a",), first_gate.wait())  # type: ignore[arg-type]
    settled = asyncio.create_task(pending.settle_current())
    await asyncio.sleep(0)
    pending.schedule(("b",), later_gate.wait())  # type: ignore[arg-type]
    first_gate.set()
    for _ in range(100):  # loop turns, not time
        if settled.done():
            break
        await asyncio.sleep(0)
    assert settled.done(), "the invalidation waited for a write scheduled after it started"
    assert "b" in pending
    later_gate.set()
    await pending.drain()


class FailingTier(MemoryTier):
    """A real in-process tier whose next read of :attr:`failing` fails with a TierError."""

    name = "failing"

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock=clock)
        self.failing: str | None = None

    async def get(self, key: str) -> TierEntry | None:
        if key == self.failing:
            self.failing = None
            from stratacache.errors import TierError

            raise TierError("the tier could not read the entry")
        return await super().get(key)


async def test_a_failed_candidate_read_keeps_the_vector(
    upstream: HTTPUpstream, clock: Clock, fake: FakeUpstream
) -> None:
    tier = FailingTier(clock)
    tiers = TierChain([tier], clock=clock)
    cache = make_cache(tiers, upstream, clock, semantic=make_layer(clock))
    original = await cache.handle(LLMRequest(Route.CHAT, ask(ORIGINAL), headers=AUTH))
    await cache.drain()
    assert original.key is not None
    tier.failing = original.key
    no_store = {**AUTH, "cache-control": "no-store"}  # so only the original's vector exists
    miss = await cache.handle(LLMRequest(Route.CHAT, ask(PARAPHRASE), headers=no_store))
    assert miss.cache is CacheStatus.MISS  # the tier failed: answered from upstream
    await cache.drain()
    # The failure said nothing about the record: the original's vector is still there.
    again = await cache.handle(LLMRequest(Route.CHAT, ask("WHERE is the Rome store"), headers=AUTH))
    try:
        assert again.cache is CacheStatus.SEMANTIC_HIT
    finally:
        await cache.aclose()
