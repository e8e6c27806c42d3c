"""Entries shared across tenants (``share_across_tenants``): identical requests made with different
credentials share one upstream call, but not a refusal of the credential that made it.

A 401 (a revoked key), a 429 (that key's rate limit) or another 4xx may be about the caller, not
the request: a follower with another credential makes its own call instead of taking it. Runs on
the real HTTP client against the fake OpenAI server, which refuses the keys a test names.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import orjson
import pytest

from proxy.fake_upstream import FakeUpstream
from stratacache.llm.cache import CacheStatus, LLMCache, LLMRequest
from stratacache.llm.keys import Route
from stratacache.proxy.upstream import HTTPUpstream
from stratacache.tiers import MemoryTier, TierChain

from .review_support import (
    Clock,
    Coalescing,
    ask,
    clock,
    content,
    fake,
    fake_module,
    make_cache,
    read,
    upstream,
)

__all__ = ["clock", "fake", "fake_module", "upstream"]

REVOKED = {"authorization": "Bearer sk-revoked"}
VALID = {"authorization": "Bearer sk-valid"}


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait (polled: the fake runs in another thread) until ``condition()`` is true."""
    for _ in range(5000):
        if condition():
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"never happened: {what}")


@pytest.fixture
async def shared(
    upstream: HTTPUpstream, clock: Clock
) -> AsyncIterator[tuple[LLMCache, Coalescing]]:
    """A cache on one memory tier whose entries every credential shares, and its observer."""
    observer = Coalescing()
    tiers = TierChain([MemoryTier(clock=clock)], clock=clock)
    cache = make_cache(tiers, upstream, clock, share_across_tenants=True, observer=observer)
    yield cache, observer
    await cache.aclose()


def embed(*texts: str) -> dict[str, object]:
    return {"model": "text-embedding-3-small", "input": list(texts)}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
async def test_a_follower_with_another_credential_does_not_take_the_leaders_401(
    shared: tuple[LLMCache, Coalescing], fake: FakeUpstream, stream: bool
) -> None:
    cache, observer = shared
    body = ask("What does the red widget cost?", stream=stream)
    fake.refuse_keys = {"sk-revoked"}
    fake.hang = True
    try:
        leader = asyncio.create_task(cache.handle(LLMRequest(Route.CHAT, body, headers=REVOKED)))
        await until(lambda: fake.held == 1, "the leader's call reached the upstream")
        follower = asyncio.create_task(cache.handle(LLMRequest(Route.CHAT, body, headers=VALID)))
        await until(lambda: observer.joined == 1, "the follower joined the leader's call")
        fake.release()

        refused = await leader
        assert refused.status == 401
        answered = await follower
        assert answered.status == 200, await read(answered)
        assert answered.cache is CacheStatus.MISS  # its own call, with its own key
        text = await read(answered)
        assert b"data: [DONE]" in text if stream else content(text)
        calls = [call.headers["authorization"] for call in fake.log]
        assert calls == ["Bearer sk-revoked", "Bearer sk-valid"]
        await cache.drain()
        again = await cache.handle(
            LLMRequest(Route.CHAT, ask("What does the red widget cost?"), headers=REVOKED)
        )
        assert again.cache is CacheStatus.HIT  # shared: the answer serves every tenant
    finally:
        fake.release()


async def test_a_follower_with_the_same_credential_shares_the_refusal(
    shared: tuple[LLMCache, Coalescing], fake: FakeUpstream
) -> None:
    cache, observer = shared
    body = ask("What does the blue widget cost?")
    fake.refuse_keys = {"sk-revoked"}
    fake.hang = True
    try:
        first = asyncio.create_task(cache.handle(LLMRequest(Route.CHAT, body, headers=REVOKED)))
        await until(lambda: fake.held == 1, "the first call reached the upstream")
        second = asyncio.create_task(cache.handle(LLMRequest(Route.CHAT, body, headers=REVOKED)))
        await until(lambda: observer.joined == 1, "the second request joined the first")
        fake.release()
        assert (await first).status == 401
        shared = await second
        assert shared.status == 401
        assert shared.cache is CacheStatus.COALESCED
        assert fake.calls["/v1/chat/completions"] == 1
    finally:
        fake.release()


async def test_a_server_error_is_shared_whatever_the_credential(
    shared: tuple[LLMCache, Coalescing], fake: FakeUpstream
) -> None:
    # A 5xx is the upstream's trouble, not the caller's: asking again at once would only add load.
    cache, observer = shared
    body = ask("What does the green widget cost?")
    fake.fail_status = 503
    fake.hang = True
    try:
        first = asyncio.create_task(cache.handle(LLMRequest(Route.CHAT, body, headers=REVOKED)))
        await until(lambda: fake.held == 1, "the first call reached the upstream")
        second = asyncio.create_task(cache.handle(LLMRequest(Route.CHAT, body, headers=VALID)))
        await until(lambda: observer.joined == 1, "the second request joined the first")
        fake.release()
        assert (await first).status == 503
        assert (await second).status == 503
        assert fake.calls["/v1/chat/completions"] == 1
    finally:
        fake.release()


async def test_an_embeddings_follower_with_another_credential_fetches_its_items_itself(
    shared: tuple[LLMCache, Coalescing], fake: FakeUpstream
) -> None:
    cache, _ = shared
    fake.refuse_keys = {"sk-revoked"}
    fake.hang = True
    try:
        leader = asyncio.create_task(
            cache.handle(LLMRequest(Route.EMBEDDINGS, embed("red", "blue"), headers=REVOKED))
        )
        await until(lambda: fake.held == 1, "the leader's call reached the upstream")
        follower = asyncio.create_task(
            cache.handle(LLMRequest(Route.EMBEDDINGS, embed("blue", "green"), headers=VALID))
        )
        await until(lambda: fake.held == 2, "the follower fetched the item nobody fetches")
        fake.release()
        assert (await leader).status == 401
        answered = await follower
        assert answered.status == 200, await read(answered)
        assert answered.cache is CacheStatus.MISS
        vectors = orjson.loads(await read(answered))["data"]
        assert [item["index"] for item in vectors] == [0, 1]
        sent = [(c.headers["authorization"], c.body["input"]) for c in fake.log]
        assert sorted(sent) == sorted(
            [
                ("Bearer sk-revoked", ["red", "blue"]),
                ("Bearer sk-valid", ["green"]),
                ("Bearer sk-valid", ["blue"]),  # refused for the leader's key: fetched with its own
            ]
        )
    finally:
        fake.release()
