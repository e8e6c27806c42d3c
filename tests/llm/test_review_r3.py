"""Review R3: correctness of LLMCache after the write-behind delay (``SETTLE_DELAY``).

Each test reproduces one bug found in review: sixteen in the code at 8204c3f and three in the
first fixes made during the review (calls begun during an invalidation never joined; other
instances' writes counted as invalidations, which stopped coalescing and, past the coherent tier's
history, every store). They stay as regression tests.

Everything runs on real tiers, the real HTTP upstream client and the fake OpenAI server on a
loopback port. Races are made deterministic by gates in real :class:`MemoryTier` subclasses and by
the fake upstream's hold/release controls, never by sleeping for timing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, NamedTuple

import pytest

from proxy.fake_upstream import FakeUpstream
from redis_server import redis_server, redis_url
from stratacache.llm.cache import (
    CacheStatus,
    LLMCache,
    LLMRequest,
    RoutePolicy,
    derive_tenant_secret,
)
from stratacache.llm.keys import Route
from stratacache.proxy.upstream import HTTPUpstream
from stratacache.tiers import MemoryTier, TierChain, TierEntry

from .review_support import (
    AUTH,
    KEY,
    Clock,
    Coalescing,
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

# Fixtures, imported: the review fixtures, and Redis for the multi-instance tests.
__all__ = ["clock", "fake", "fake_module", "redis_server", "redis_url", "upstream"]

EMBED_MODEL = "text-embedding-3-small"
ORIGINAL = "Where is the Rome store?"
PARAPHRASE = "where is the rome store"  # the same words: the hashing embedder scores 1.0


def embed(*texts: str) -> dict[str, Any]:
    return {"model": EMBED_MODEL, "input": list(texts)}


async def wait_held(fake: FakeUpstream, count: int) -> None:
    """Wait (on an event in another thread, polled) until ``count`` upstream answers are held."""
    for _ in range(5000):
        if fake.held >= count:
            return
        await asyncio.sleep(0.001)
    raise AssertionError("the upstream never held the answer")


async def turns(count: int = 100) -> None:
    """Let other tasks run for ``count`` turns of the loop (no time passes for the test's sake)."""
    for _ in range(count):
        await asyncio.sleep(0)


# --- embeddings --------------------------------------------------------------------------------------


async def test_an_embedding_fetched_across_an_invalidation_is_not_stored(
    upstream: HTTPUpstream, clock: Clock, fake: FakeUpstream
) -> None:
    """The chat path refuses to store an answer whose upstream call overlapped an invalidation
    (``_fly``: ``invalidated``); the embeddings path stores it, bringing back what was removed."""
    tiers = TierChain([MemoryTier(clock=clock)], clock=clock)
    cache = make_cache(tiers, upstream, clock)
    headers = {**AUTH, "x-cache-namespace": "catalog"}
    fake.hold_after = 0
    first = asyncio.create_task(
        cache.handle(LLMRequest(Route.EMBEDDINGS, embed("blue widget"), headers=headers))
    )
    await wait_held(fake, 1)
    await cache.invalidate_namespace("catalog")  # e.g. the embedding model was swapped
    fake.release()
    assert (await first).cache is CacheStatus.MISS
    await cache.drain()
    again = await cache.handle(LLMRequest(Route.EMBEDDINGS, embed("blue widget"), headers=headers))
    try:
        assert again.cache is CacheStatus.MISS, "an answer fetched before the flush was stored"
    finally:
        await cache.aclose()


async def test_an_embeddings_follower_survives_the_first_client_leaving(
    upstream: HTTPUpstream, clock: Clock, fake: FakeUpstream
) -> None:
    """Chat flights run in their own task, so a follower keeps the call alive when the first
    client hangs up (or its caller's timeout cancels it); embeddings items do not."""
    tiers = TierChain([MemoryTier(clock=clock)], clock=clock)
    cache = make_cache(tiers, upstream, clock)
    fake.hold_after = 0
    leader = asyncio.create_task(
        cache.handle(LLMRequest(Route.EMBEDDINGS, embed("red widget"), headers=AUTH))
    )
    await wait_held(fake, 1)
    follower = asyncio.create_task(
        cache.handle(LLMRequest(Route.EMBEDDINGS, embed("red widget"), headers=AUTH))
    )
    await turns()  # the follower finds the item in flight and waits for it
    assert cache.in_flight == 1
    leader.cancel()  # the first client is gone
    with pytest.raises(asyncio.CancelledError):
        await leader
    fake.release()
    answer = await follower
    try:
        assert answer.status == 200, answer.body
    finally:
        await cache.drain()
        await cache.aclose()


# --- semantic: promotion and shared lookups ----------------------------------------------------------


class GatedTier(MemoryTier):
    """A real in-process tier standing for a slow one (Redis, or SQLite's writer thread).

    ``delete_gate``: with ``gate_deletes``, a ``delete_tag`` stays in flight (before it deletes
    anything) until it opens, as a round trip on the wire would. ``read_gate``: a read of the
    armed key fetches the entry, then stays in flight until it opens.
    """

    name = "gated"

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock=clock)
        self.gate_deletes = False
        self.delete_reached = asyncio.Event()
        self.delete_gate = asyncio.Event()
        self.armed: str | None = None
        self.read_reached = asyncio.Event()
        self.read_gate = asyncio.Event()

    async def delete_tag(self, tag: str) -> int:
        if self.gate_deletes:
            self.delete_reached.set()
            await self.delete_gate.wait()
        return await super().delete_tag(tag)

    async def get(self, key: str) -> TierEntry | None:
        entry = await super().get(key)
        if key == self.armed:
            self.armed = None
            self.read_reached.set()
            await self.read_gate.wait()
        return entry


class WatchedTier(MemoryTier):
    """A real in-process L0 whose write of the armed key waits until this tier's ``delete_tag``
    has run: it makes the (normally 5 ms later) alias write land after the invalidation reached
    this tier, whatever the machine's speed."""

    name = "watched"

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock=clock)
        self.armed: str | None = None
        self.deleted = asyncio.Event()

    async def delete_tag(self, tag: str) -> int:
        removed = await super().delete_tag(tag)
        self.deleted.set()
        return removed

    async def set(self, key: str, entry: TierEntry) -> bool:
        if key == self.armed:
            await self.deleted.wait()
        return await super().set(key, entry)


async def test_an_alias_promoted_during_a_tag_invalidation_does_not_outlive_it(
    upstream: HTTPUpstream, clock: Clock, fake: FakeUpstream
) -> None:
    """The chain invalidates slowest tier first. While the slow tier's DELETE is on the wire, a
    paraphrase reads the original from L0 (still there) and schedules an alias carrying the tag
    being invalidated. The epoch it read was already bumped by that invalidation, so the alias is
    written; it lands after L0's delete and serves the invalidated answer afterwards."""
    from stratacache.llm.keys import request_key, tenant_for

    fast = WatchedTier(clock)
    slow = GatedTier(clock)
    tiers = TierChain([fast, slow], clock=clock)
    cache = make_cache(tiers, upstream, clock, semantic=make_layer(clock))
    tagged = {**AUTH, "x-cache-tags": "rome"}
    original = await cache.handle(LLMRequest(Route.CHAT, ask(ORIGINAL), headers=tagged))
    await cache.drain()
    assert original.cache is CacheStatus.MISS
    tenant = tenant_for("sk-review", secret=derive_tenant_secret(KEY))
    fast.armed = request_key(Route.CHAT, ask(PARAPHRASE), tenant=tenant).storage_key

    slow.gate_deletes = True
    invalidation = asyncio.create_task(cache.invalidate_tag("rome"))  # the store moved
    await slow.delete_reached.wait()  # the slow tier's delete is on the wire
    racing = await cache.handle(LLMRequest(Route.CHAT, ask(PARAPHRASE), headers=AUTH))
    assert racing.cache is CacheStatus.SEMANTIC_HIT  # served while racing: acceptable
    slow.delete_gate.set()
    await invalidation
    await cache.drain()

    later = await cache.handle(LLMRequest(Route.CHAT, ask(PARAPHRASE), headers=AUTH))
    try:
        assert later.cache is CacheStatus.MISS, (
            f"{later.cache}: the invalidated answer came back via an alias"
        )
    finally:
        await cache.aclose()


async def test_a_shared_semantic_lookup_honours_each_requests_ttl(
    upstream: HTTPUpstream, clock: Clock, fake: FakeUpstream
) -> None:
    """Alone, a paraphrase with ``X-Cache-TTL: 60`` refuses an hour-old answer (``_semantic_find``
    bounds the age by the request's TTL). Joining an identical lookup in progress made without a
    TTL, it takes that lookup's result as its own."""
    fast = MemoryTier(clock=clock)
    slow = GatedTier(clock)
    tiers = TierChain([fast, slow], clock=clock)
    cache = make_cache(tiers, upstream, clock, semantic=make_layer(clock))
    original = await cache.handle(LLMRequest(Route.CHAT, ask(ORIGINAL), headers=AUTH))
    await cache.drain()
    assert original.key is not None
    clock.now += 3600  # the answer is an hour old
    await fast.delete(original.key)  # evicted from L0: the candidate is read from the slow tier
    slow.armed = original.key

    patient = asyncio.create_task(
        cache.handle(LLMRequest(Route.CHAT, ask(PARAPHRASE), headers=AUTH))
    )
    await slow.read_reached.wait()  # its semantic candidate is being read
    strict_headers = {**AUTH, "x-cache-ttl": "60"}
    strict = asyncio.create_task(
        cache.handle(LLMRequest(Route.CHAT, ask(PARAPHRASE), headers=strict_headers))
    )
    await turns()  # the strict request joins the lookup in progress
    slow.read_gate.set()
    assert (await patient).cache is CacheStatus.SEMANTIC_HIT  # no TTL: an hour old is fine
    answer = await strict
    try:
        assert answer.cache is not CacheStatus.SEMANTIC_HIT, (
            f"served an answer {answer.age} s old to a request with X-Cache-TTL: 60"
        )
    finally:
        await read(answer)
        await cache.drain()
        await cache.aclose()


async def test_a_paraphrase_arriving_after_an_invalidation_is_not_served_what_it_removed(
    upstream: HTTPUpstream, clock: Clock, fake: FakeUpstream
) -> None:
    """R1 accepted serving the invalidated answer to the paraphrase whose read raced with the
    invalidation. An identical paraphrase that arrives once the invalidation has *returned* joins
    that lookup, gets the same record, and (its epoch being current) writes an alias of it, so
    the invalidated answer is served from then on."""
    fast = MemoryTier(clock=clock)
    slow = GatedTier(clock)
    tiers = TierChain([fast, slow], clock=clock)
    cache = make_cache(tiers, upstream, clock, semantic=make_layer(clock))
    original = await cache.handle(LLMRequest(Route.CHAT, ask(ORIGINAL), headers=AUTH))
    await cache.drain()
    assert original.key is not None
    await fast.delete(original.key)  # evicted from L0: the candidate is read from the slow tier
    slow.armed = original.key

    racing = asyncio.create_task(
        cache.handle(LLMRequest(Route.CHAT, ask(PARAPHRASE), headers=AUTH))
    )
    await slow.read_reached.wait()  # its semantic candidate is on the wire...
    assert await cache.invalidate_key(original.key) is True  # ...when the answer is invalidated
    late = asyncio.create_task(cache.handle(LLMRequest(Route.CHAT, ask(PARAPHRASE), headers=AUTH)))
    await turns()  # the late request starts after the invalidation returned
    slow.read_gate.set()
    await read(await racing)  # served while racing: acceptable (as in R1)
    answer = await late
    invalidated = content(await read(original))
    try:
        assert content(await read(answer)) != invalidated, (
            f"{answer.cache}: a request made after the invalidation got the invalidated answer"
        )
        await cache.drain()
        again = await cache.handle(LLMRequest(Route.CHAT, ask(PARAPHRASE), headers=AUTH))
        assert content(await read(again)) != invalidated, f"{again.cache}: via an alias"
    finally:
        await cache.aclose()


# --- coalescing ------------------------------------------------------------------------------------


async def test_a_request_after_an_invalidation_does_not_join_a_flight_from_before_it(
    upstream: HTTPUpstream, clock: Clock, fake: FakeUpstream
) -> None:
    """``_fly`` refuses to store an answer whose upstream call overlapped an invalidation (it may
    predate the change the invalidation announced), but ``_miss`` still hands that answer to a
    request that arrived after the invalidation had returned."""
    tiers = TierChain([MemoryTier(clock=clock)], clock=clock)
    cache = make_cache(tiers, upstream, clock)
    body = ask("What does the purple widget cost?")
    headers = {**AUTH, "x-cache-tags": "widget"}
    fake.hold_after = 0
    before = asyncio.create_task(cache.handle(LLMRequest(Route.CHAT, body, headers=headers)))
    await wait_held(fake, 1)
    await cache.invalidate_tag("widget")  # the price changed; the invalidation has returned
    after = asyncio.create_task(cache.handle(LLMRequest(Route.CHAT, body, headers=headers)))
    await turns()  # it finds the flight from before the invalidation in the table
    fake.release()
    old = await before
    new = await after
    try:
        assert new.cache is not CacheStatus.COALESCED, "joined a call made before the change"
        assert content(await read(new)) != content(await read(old))
    finally:
        await cache.drain()
        await cache.aclose()


async def test_identical_requests_share_a_call_made_while_an_invalidation_runs(
    upstream: HTTPUpstream, clock: Clock, fake: FakeUpstream
) -> None:
    """An invalidation can take a while (a namespace or a flush on a large Redis: one scan per
    node). A call that *starts* during it fetches a fresh answer, which identical requests may
    share; refusing them turns every request for a hot question into an upstream call until the
    invalidation ends."""
    fast = MemoryTier(clock=clock)
    slow = GatedTier(clock)
    tiers = TierChain([fast, slow], clock=clock)
    cache = make_cache(tiers, upstream, clock)
    body = ask("What does the bronze widget cost?")
    slow.gate_deletes = True
    invalidation = asyncio.create_task(cache.invalidate_tag("catalogue"))
    await slow.delete_reached.wait()  # the invalidation is running (on the wire)
    fake.hold_after = 0
    first = asyncio.create_task(cache.handle(LLMRequest(Route.CHAT, body, headers=AUTH)))
    await wait_held(fake, 1)  # its call started after the invalidation did
    second = asyncio.create_task(cache.handle(LLMRequest(Route.CHAT, body, headers=AUTH)))
    await turns()  # the identical request finds the call in flight
    fake.release()
    slow.delete_gate.set()
    await invalidation
    await read(await first)
    shared = await second
    await read(shared)
    try:
        assert shared.cache is CacheStatus.COALESCED, shared.cache
        assert fake.calls["/v1/chat/completions"] == 1
    finally:
        await cache.drain()
        await cache.aclose()


class SlowWriteTier(MemoryTier):
    """A real in-process tier standing for a slow one: a write of the armed key stays in flight
    (before it stores anything) until :attr:`gate` opens, as a SET on the wire would."""

    name = "slow-write"

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock=clock)
        self.armed: str | None = None
        self.reached = asyncio.Event()
        self.gate = asyncio.Event()

    async def set(self, key: str, entry: TierEntry) -> bool:
        if key == self.armed:
            self.armed = None
            self.reached.set()
            await self.gate.wait()
        return await super().set(key, entry)


async def test_invalidate_key_waits_for_every_write_of_the_key_in_progress(
    upstream: HTTPUpstream, clock: Clock, fake: FakeUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write of K is on its way to a slow tier. A no-cache request for K (a refresh) gets an
    answer that may not be stored (cut at max_tokens): its write is scheduled after the first,
    replaces it as "the" pending write of K, and ends at once, so K is no longer pending.
    ``invalidate_key(K)`` then deletes without waiting, and the first write lands after it."""
    import stratacache.llm.cache as cache_module
    from stratacache.llm.keys import request_key, tenant_for

    monkeypatch.setattr(cache_module, "SETTLE_DELAY", 0)  # the order matters here, not the delay
    slow = SlowWriteTier(clock)
    tiers = TierChain([slow], clock=clock)
    cache = make_cache(tiers, upstream, clock)
    body = ask("Which widgets are discontinued?")
    key = request_key(
        Route.CHAT, body, tenant=tenant_for("sk-review", secret=derive_tenant_secret(KEY))
    )
    slow.armed = key.storage_key
    first = await cache.handle(LLMRequest(Route.CHAT, body, headers=AUTH))
    assert first.cache is CacheStatus.MISS
    await slow.reached.wait()  # its write is on the wire
    fake.finish_reason = "length"  # the refresh's answer is cut short: not storable
    refresh = {**AUTH, "cache-control": "no-cache"}
    assert (await cache.handle(LLMRequest(Route.CHAT, body, headers=refresh))).status == 200
    await turns()  # the refresh's write ends at once: nothing to store
    assert cache.pending_writes == 1  # the first write is still in progress
    # The list of discontinued widgets changed. (Once fixed, the invalidation waits for the
    # write: the gate opens while it runs, not after.)
    invalidation = asyncio.create_task(cache.invalidate_key(key.storage_key))
    await turns()
    slow.gate.set()
    await invalidation
    await cache.drain()
    again = await cache.handle(LLMRequest(Route.CHAT, body, headers=AUTH))
    try:
        assert again.cache is CacheStatus.MISS, "the write landed after invalidate_key returned"
    finally:
        await cache.aclose()


# --- several instances sharing Redis --------------------------------------------------------------


@pytest.fixture
def shared_redis_url(request: pytest.FixtureRequest) -> str:
    pytest.importorskip("redis", reason="redis-py (the redis extra) is not installed")
    url: str = request.getfixturevalue("redis_url")
    return url


def instance_chain(url: str, clock: Clock, *, history: int = 4096) -> tuple[TierChain, Any]:
    """One instance's chain as ``tiers.factory.build_chain`` makes it: coherent L0, then Redis."""
    from stratacache.tiers.coherence import CoherentTier
    from stratacache.tiers.redis import RedisTier

    redis_tier = RedisTier(url, clock=clock)
    l0 = CoherentTier(
        MemoryTier(clock=clock), redis_tier, heartbeat=0.2, retry_delay=0.01, history=history
    )
    return TierChain([l0, redis_tier], clock=clock), l0


class Instances(NamedTuple):
    """Two instances, A and B, sharing one Redis (see :func:`two_instances`)."""

    a: LLMCache
    b: LLMCache
    b_l0: Any
    a_tiers: TierChain


@asynccontextmanager
async def two_instances(
    url: str,
    upstream: HTTPUpstream,
    clock: Clock,
    *,
    b_history: int = 4096,
    b_observer: Any = None,
    routes: dict[Route, RoutePolicy] | None = None,
) -> AsyncIterator[Instances]:
    """Instances A and B on one Redis, subscribed to each other's invalidations; closed after."""
    a_tiers, a_l0 = instance_chain(url, clock)
    b_tiers, b_l0 = instance_chain(url, clock, history=b_history)
    caches: list[LLMCache] = []
    try:
        await a_l0.wait_subscribed()
        await b_l0.wait_subscribed()
        caches.append(make_cache(a_tiers, upstream, clock, routes=routes))
        caches.append(make_cache(b_tiers, upstream, clock, observer=b_observer, routes=routes))
        yield Instances(caches[0], caches[1], b_l0, a_tiers)
    finally:
        for cache in caches:
            await cache.aclose()
        await a_tiers.close()
        await b_tiers.close()


async def heard(l0: Any, count: int) -> None:
    """Wait until an instance's coherent L0 has applied ``count`` invalidations from the others
    (an event in another process, polled)."""
    for _ in range(5000):
        if l0.applied >= count:
            return
        await asyncio.sleep(0.001)
    raise AssertionError("the invalidation never reached the other instance")


async def joined_or_called(observer: Coalescing, fake: FakeUpstream) -> None:
    """Wait until a second request has either joined the call in flight or made its own (held
    upstream): its lookup crosses Redis, so loop turns alone are not enough (events, polled)."""
    for _ in range(5000):
        if observer.joined or fake.held >= 2:
            return
        await asyncio.sleep(0.001)
    raise AssertionError("the second request neither joined nor called upstream")


async def test_a_paraphrase_after_another_instances_invalidation_is_not_served_what_it_removed(
    shared_redis_url: str, upstream: HTTPUpstream, clock: Clock, fake: FakeUpstream
) -> None:
    """The multi-instance form of ``test_a_paraphrase_arriving_after_an_invalidation_...``: the
    original is invalidated through A while B's semantic candidate read is on the wire to Redis;
    a paraphrase that reaches B once B has heard of it joins that lookup."""
    from stratacache.llm.keys import request_key, tenant_for
    from stratacache.tiers.coherence import CoherentTier
    from stratacache.tiers.redis import RedisTier

    tenant = tenant_for("sk-review", secret=derive_tenant_secret(KEY))

    class GatedRedisTier(RedisTier):
        """The real Redis tier; a read of the armed key gets its reply, then waits for a gate."""

        armed: str | None = None
        reached = asyncio.Event()
        gate = asyncio.Event()
        watched: str | None = None
        seen = asyncio.Event()

        async def get(self, key: str) -> TierEntry | None:
            entry = await super().get(key)
            if key == self.watched:
                self.seen.set()
            if key == self.armed:
                self.armed = None
                self.reached.set()
                await self.gate.wait()
            return entry

    a_tiers, a_l0 = instance_chain(shared_redis_url, clock)
    b_redis = GatedRedisTier(shared_redis_url, clock=clock)
    b_memory = MemoryTier(clock=clock)
    b_l0 = CoherentTier(b_memory, b_redis, heartbeat=0.2, retry_delay=0.01)
    b_tiers = TierChain([b_l0, b_redis], clock=clock)
    await a_l0.wait_subscribed()
    await b_l0.wait_subscribed()
    a = make_cache(a_tiers, upstream, clock)
    b = make_cache(b_tiers, upstream, clock, semantic=make_layer(clock))
    try:
        original = await b.handle(LLMRequest(Route.CHAT, ask(ORIGINAL), headers=AUTH))
        await b.drain()
        assert original.key is not None
        invalidated = content(await read(original))
        await b_memory.delete(original.key)  # evicted from B's L0: the next read goes to Redis
        b_redis.armed = original.key
        racing = asyncio.create_task(
            b.handle(LLMRequest(Route.CHAT, ask(PARAPHRASE), headers=AUTH))
        )
        await b_redis.reached.wait()  # B's semantic candidate is on the wire...
        assert await a.invalidate_key(original.key) is True  # ...when A invalidates it
        await heard(b_l0, 1)
        b_redis.watched = request_key(Route.CHAT, ask(PARAPHRASE), tenant=tenant).storage_key
        late = asyncio.create_task(b.handle(LLMRequest(Route.CHAT, ask(PARAPHRASE), headers=AUTH)))
        await b_redis.seen.wait()  # its exact lookup has missed in B's L0 and in Redis...
        await turns()  # ...and it finds the semantic lookup in progress
        b_redis.gate.set()
        await read(await racing)  # served while racing: acceptable
        answer = await late
        assert content(await read(answer)) != invalidated, (
            f"{answer.cache}: a request made after B heard of the invalidation got the answer"
        )
        await b.drain()
        again = await b.handle(LLMRequest(Route.CHAT, ask(PARAPHRASE), headers=AUTH))
        assert content(await read(again)) != invalidated, f"{again.cache}: via an alias"
    finally:
        await a.aclose()
        await b.aclose()
        await a_tiers.close()
        await b_tiers.close()


async def test_an_answer_fetched_across_another_instances_invalidation_is_not_stored(
    shared_redis_url: str, upstream: HTTPUpstream, clock: Clock, fake: FakeUpstream
) -> None:
    """The multi-instance form of R1's ``test_an_answer_fetched_across_an_invalidation_is_not_
    stored``: the tag is invalidated through instance A (``DELETE /admin/tags/widget``) while B's
    upstream call for a widget question is on its way; B then stores that answer in Redis, where
    A serves it."""
    async with two_instances(shared_redis_url, upstream, clock) as (a, b, b_l0, _):
        body = ask("What does the green widget cost?")
        headers = {**AUTH, "x-cache-tags": "widget"}
        fake.hold_after = 0
        first = asyncio.create_task(b.handle(LLMRequest(Route.CHAT, body, headers=headers)))
        await wait_held(fake, 1)
        await a.invalidate_tag("widget")  # the price changed while B's answer was on its way
        await heard(b_l0, 1)  # B hears of it
        fake.release()
        assert (await first).cache is CacheStatus.MISS
        await b.drain()
        again = await a.handle(LLMRequest(Route.CHAT, body, headers=headers))
        assert again.cache is CacheStatus.MISS, f"{again.cache} from {again.tier}"


async def test_another_instances_unrelated_write_does_not_stop_coalescing(
    shared_redis_url: str, upstream: HTTPUpstream, clock: Clock, fake: FakeUpstream
) -> None:
    """Every write through the Redis tier is announced on the coherence channel (so the other
    L0s drop the key), and counts among what an instance has heard. A request may join a call
    in flight only while nothing was heard since it started; with other instances storing
    answers all the time, identical requests no longer share a call: each makes its own."""
    observer = Coalescing()
    async with two_instances(shared_redis_url, upstream, clock, b_observer=observer) as (
        _,
        b,
        b_l0,
        a_tiers,
    ):
        body = ask("What does the silver widget cost?")
        fake.hold_after = 0
        first = asyncio.create_task(b.handle(LLMRequest(Route.CHAT, body, headers=AUTH)))
        await wait_held(fake, 1)
        # Meanwhile A stores an answer to another question (as the write path does).
        assert await a_tiers.set("another/default/chat.completions/0", TierEntry(b"answer"))
        await heard(b_l0, 1)
        second = asyncio.create_task(b.handle(LLMRequest(Route.CHAT, body, headers=AUTH)))
        await joined_or_called(observer, fake)  # the second, identical request
        fake.release()
        await read(await first)
        joined = await second
        await read(joined)
        assert joined.cache is CacheStatus.COALESCED, joined.cache
        assert fake.calls["/v1/chat/completions"] == 1


async def test_other_instances_writes_during_a_long_call_do_not_stop_its_store(
    shared_redis_url: str, upstream: HTTPUpstream, clock: Clock, fake: FakeUpstream
) -> None:
    """Every write through Redis is announced and kept in the coherent L0's history of
    invalidations (4096 by default; 8 here, to stay fast). A store now asks whether anything
    heard since its call started concerns it, and a history that has overflowed answers yes, so
    a call during which the other instances stored more answers than the history holds (a
    20 s completion at 200 stores a second) is stored in no tier: Redis included."""
    async with two_instances(shared_redis_url, upstream, clock, b_history=8) as (
        a,
        b,
        b_l0,
        a_tiers,
    ):
        body = ask("What does the golden widget cost?")
        fake.hold_after = 0
        first = asyncio.create_task(b.handle(LLMRequest(Route.CHAT, body, headers=AUTH)))
        await wait_held(fake, 1)
        for i in range(9):  # meanwhile A stores answers to other questions
            assert await a_tiers.set(f"another/default/chat.completions/{i}", TierEntry(b"x"))
        await heard(b_l0, 9)
        fake.release()
        assert (await first).cache is CacheStatus.MISS
        await b.drain()
        again = await a.handle(LLMRequest(Route.CHAT, body, headers=AUTH))
        assert again.cache is CacheStatus.HIT, "B's answer was stored nowhere"


async def test_a_later_request_does_not_launder_an_answer_from_before_the_invalidation(
    shared_redis_url: str, upstream: HTTPUpstream, clock: Clock, fake: FakeUpstream
) -> None:
    """B's first request misses and calls upstream; the tag is invalidated through A and B hears
    it; a second request for the same key on B then misses in B's L0 again (the L0 now dates the
    key's miss after the invalidation) and joins the call from before it. That call's answer is
    stored in Redis and served by A."""
    observer = Coalescing()
    async with two_instances(shared_redis_url, upstream, clock, b_observer=observer) as (
        a,
        b,
        b_l0,
        _,
    ):
        body = ask("What does the black widget cost?")
        headers = {**AUTH, "x-cache-tags": "widget"}
        fake.hold_after = 0
        first = asyncio.create_task(b.handle(LLMRequest(Route.CHAT, body, headers=headers)))
        await wait_held(fake, 1)
        await a.invalidate_tag("widget")  # the price changed while B's answer was on its way
        await heard(b_l0, 1)
        second = asyncio.create_task(b.handle(LLMRequest(Route.CHAT, body, headers=headers)))
        await joined_or_called(observer, fake)  # it missed in B's L0 (and in Redis)
        fake.release()
        before = content(await read(await first))
        await read(await second)
        await b.drain()
        again = await a.handle(LLMRequest(Route.CHAT, body, headers=headers))
        # A fresh answer (the second request's own call, made after the invalidation) may be
        # stored and served; the first call's may not.
        assert content(await read(again)) != before, f"{again.cache} from {again.tier}"


async def test_a_long_call_under_traffic_still_respects_another_instances_invalidation(
    shared_redis_url: str, upstream: HTTPUpstream, clock: Clock, fake: FakeUpstream
) -> None:
    """As in the first multi-instance test, with B busy meanwhile: while its upstream call is
    on its way (a long completion: the read timeout is ten minutes), B's L0 sees as many misses
    of other keys as it remembers. The key's own miss is forgotten, and with it the evidence
    that the answer predates the invalidation ("a miss older than those is declined too" holds
    for forgotten invalidations, not for forgotten misses)."""
    from stratacache.tiers import coherence

    async with two_instances(shared_redis_url, upstream, clock) as (a, b, b_l0, _):
        body = ask("What does the white widget cost?")
        headers = {**AUTH, "x-cache-tags": "widget"}
        fake.hold_after = 0
        first = asyncio.create_task(b.handle(LLMRequest(Route.CHAT, body, headers=headers)))
        await wait_held(fake, 1)
        await a.invalidate_tag("widget")  # the price changed while B's answer was on its way
        await heard(b_l0, 1)
        for i in range(coherence._MAX_PENDING):  # B's other traffic: misses of other questions
            await b_l0.get(f"other-{i}")
        fake.release()
        assert (await first).cache is CacheStatus.MISS
        await b.drain()
        again = await a.handle(LLMRequest(Route.CHAT, body, headers=headers))
        assert again.cache is CacheStatus.MISS, f"{again.cache} from {again.tier}"


async def test_a_no_cache_answer_fetched_across_another_instances_invalidation_is_not_stored(
    shared_redis_url: str, upstream: HTTPUpstream, clock: Clock, fake: FakeUpstream
) -> None:
    """As above, for a request that skips the lookup (``Cache-Control: no-cache``) but may store
    its answer: a refresh asked for by the client."""
    async with two_instances(shared_redis_url, upstream, clock) as (a, b, b_l0, _):
        body = ask("What does the orange widget cost?")
        headers = {**AUTH, "x-cache-tags": "widget"}
        refresh = {**headers, "cache-control": "no-cache"}
        fake.hold_after = 0
        first = asyncio.create_task(b.handle(LLMRequest(Route.CHAT, body, headers=refresh)))
        await wait_held(fake, 1)
        await a.invalidate_tag("widget")  # the price changed while B's answer was on its way
        await heard(b_l0, 1)
        fake.release()
        assert (await first).cache is CacheStatus.BYPASS
        await b.drain()
        again = await a.handle(LLMRequest(Route.CHAT, body, headers=headers))
        assert again.cache is CacheStatus.MISS, f"{again.cache} from {again.tier}"


async def test_a_refresh_fetched_across_another_instances_invalidation_is_not_stored(
    shared_redis_url: str, upstream: HTTPUpstream, clock: Clock, fake: FakeUpstream
) -> None:
    """B serves a stale answer from its L0 and refreshes it in the background; the refresh's
    upstream call is on its way when the tag is invalidated through A. The refreshed answer (as
    old as the invalidation) is stored, in Redis, and A serves it as fresh."""
    policy = {Route.CHAT: RoutePolicy(ttl=10, stale_while_revalidate=3600)}
    async with two_instances(shared_redis_url, upstream, clock, routes=policy) as (a, b, b_l0, _):
        body = ask("What does the grey widget cost?")
        headers = {**AUTH, "x-cache-tags": "widget"}
        assert (await b.handle(LLMRequest(Route.CHAT, body, headers=headers))).cache is (
            CacheStatus.MISS
        )
        await b.drain()
        clock.now += 60  # stale, within stale-while-revalidate
        fake.hold_after = 0
        stale = await b.handle(LLMRequest(Route.CHAT, body, headers=headers))
        assert stale.cache is CacheStatus.STALE
        assert stale.tier == "memory"
        await wait_held(fake, 1)  # the refresh is on its way...
        await a.invalidate_tag("widget")  # ...when the price changes
        await heard(b_l0, 1)
        fake.release()
        await b.drain()
        again = await a.handle(LLMRequest(Route.CHAT, body, headers=headers))
        assert again.cache is CacheStatus.MISS, f"{again.cache} from {again.tier}"


async def test_a_pending_write_does_not_undo_another_instances_invalidation(
    shared_redis_url: str,
    upstream: HTTPUpstream,
    clock: Clock,
    fake: FakeUpstream,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """B has answered and its write waits out the settle delay (5 ms; here until the test says
    so, to be deterministic). Meanwhile the tag is invalidated through A, and B hears of it over
    the coherence channel. B's write still lands, in Redis, after the invalidation: A serves it.
    (A local invalidation waits for the pending writes; one made elsewhere cannot.)"""
    import stratacache.llm.cache as cache_module

    settled = asyncio.Event()

    async def settle_delay() -> None:
        await settled.wait()

    monkeypatch.setattr(cache_module, "_after_replies", settle_delay)
    async with two_instances(shared_redis_url, upstream, clock) as (a, b, b_l0, _):
        try:
            body = ask("What does the yellow widget cost?")
            headers = {**AUTH, "x-cache-tags": "widget"}
            first = await b.handle(LLMRequest(Route.CHAT, body, headers=headers))
            assert first.cache is CacheStatus.MISS
            await turns()
            assert b.pending_writes == 1  # answered, its write waiting out the delay
            await a.invalidate_tag("widget")  # the price changed
            await heard(b_l0, 1)  # B hears of it
            settled.set()
            await b.drain()
            again = await a.handle(LLMRequest(Route.CHAT, body, headers=headers))
            assert again.cache is CacheStatus.MISS, f"{again.cache} from {again.tier}"
        finally:
            settled.set()  # a write still waiting would hold up closing


# --- stale answers ---------------------------------------------------------------------------------


async def test_a_stale_if_error_fallback_is_not_served_after_its_invalidation(
    upstream: HTTPUpstream, clock: Clock, fake: FakeUpstream
) -> None:
    """The stale answer is the fallback of a request whose upstream call then hangs (up to the
    read timeout, a minute by default). The answer is invalidated meanwhile; when the upstream
    finally fails, the request is answered with it anyway, long after the invalidation returned."""
    tiers = TierChain([MemoryTier(clock=clock)], clock=clock)
    policy = RoutePolicy(ttl=10, stale_if_error=3600)
    cache = make_cache(tiers, upstream, clock, routes={Route.CHAT: policy})
    body = ask("Is the blue widget safe for children?")
    headers = {**AUTH, "x-cache-tags": "widget"}
    stored = await cache.handle(LLMRequest(Route.CHAT, body, headers=headers))
    assert stored.cache is CacheStatus.MISS
    await cache.drain()
    clock.now += 60  # expired, within stale-if-error
    fake.hang = True
    fake.fail_status = 503
    waiting = asyncio.create_task(cache.handle(LLMRequest(Route.CHAT, body, headers=headers)))
    await wait_held(fake, 1)
    assert await cache.invalidate_tag("widget") == 1  # the widget was recalled
    fake.release()
    answer = await waiting
    try:
        assert answer.cache is not CacheStatus.STALE, "served the answer invalidated meanwhile"
    finally:
        await cache.aclose()
