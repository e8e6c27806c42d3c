"""What the review tests (``test_review_r1``, ``test_review_r3``) share: one signing key and
credential, a shop conversation, a wall clock that moves only when told, the fake OpenAI server
with the real HTTP client in front of it, and an ``LLMCache`` built on them.

The fixtures are imported by the test modules that use them: pytest finds fixtures by name in a
module's namespace.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import pytest

from proxy.fake_upstream import FakeUpstream, running_fake_upstream
from stratacache.llm.cache import LLMCache, LLMResponse, derive_tenant_secret
from stratacache.llm.keys import Route
from stratacache.llm.records import HmacSigner, RecordCodec
from stratacache.proxy.upstream import HTTPUpstream
from stratacache.tiers import TierChain

__all__ = [
    "AUTH",
    "KEY",
    "SYSTEM",
    "Clock",
    "Coalescing",
    "ask",
    "clock",
    "content",
    "fake",
    "fake_module",
    "make_cache",
    "make_layer",
    "read",
    "upstream",
]

KEY = b"r" * 32
AUTH = {"authorization": "Bearer sk-review"}
SYSTEM = {"role": "system", "content": "You answer questions about the shop in one sentence."}


def ask(text: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": "gpt-4o-mini",
        "messages": [SYSTEM, {"role": "user", "content": text}],
        "temperature": 0,
        **extra,
    }


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


class Coalescing:
    """A cache observer that counts the requests which joined a call in flight (the other
    events are not needed here)."""

    def __init__(self) -> None:
        self.joined = 0

    def request_coalesced(self, route: str) -> None:
        self.joined += 1

    def request_served(self, route: str, outcome: str, tier: str | None, seconds: float) -> None:
        pass

    def tokens_saved(self, route: str, model: str | None, usage: Any) -> None:
        pass

    def upstream_usage(self, route: str, model: str | None, usage: Any) -> None:
        pass

    def upstream_called(self, route: str, seconds: float, status: int | None, error: str) -> None:
        pass

    def verification_failed(self, tier: str, reason: str) -> None:
        pass

    def not_stored(self, route: str, reason: str) -> None:
        pass


@pytest.fixture(scope="module")
def fake_module() -> Iterator[FakeUpstream]:
    with running_fake_upstream() as fake:
        yield fake


@pytest.fixture
def fake(fake_module: FakeUpstream) -> Iterator[FakeUpstream]:
    fake_module.reset()
    yield fake_module
    fake_module.reset()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def upstream(fake: FakeUpstream) -> AsyncIterator[HTTPUpstream]:
    client = HTTPUpstream(fake.base_url)
    yield client
    await client.aclose()


def make_cache(tiers: TierChain, upstream: HTTPUpstream, clock: Clock, **options: Any) -> LLMCache:
    return LLMCache(
        tiers,
        RecordCodec(HmacSigner(KEY)),
        upstream,
        tenant_secret=derive_tenant_secret(KEY),
        clock=clock,
        **options,
    )


def make_layer(clock: Clock) -> Any:
    pytest.importorskip("numpy")
    from semantic.helpers import HashingEmbedder
    from stratacache.llm.semantic import semantic_layer
    from stratacache.semantic import EmbeddingCache, ExactIndex

    embedder = HashingEmbedder()
    return semantic_layer(
        EmbeddingCache(embedder),
        ExactIndex(embedder.dimension, clock=clock),
        thresholds={Route.CHAT: None},
        clock=clock,
    )


async def read(response: LLMResponse) -> bytes:
    if response.body is not None:
        return response.body
    assert response.stream is not None
    return b"".join([chunk async for chunk in response.stream])


def content(body: bytes) -> str:
    text: str = orjson.loads(body)["choices"][0]["message"]["content"]
    return text
