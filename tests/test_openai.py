"""``stratacache.openai.cached``: the real OpenAI SDK, cached in-process, against the fake upstream."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from proxy.fake_upstream import FakeUpstream, running_fake_upstream
from stratacache.errors import ConfigError
from stratacache.openai import cached
from stratacache.tiers import MemoryTier, TierChain

CHAT = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "What is the capital of France?"}],
    "temperature": 0,
}
CHAT_PATH = "/v1/chat/completions"


@pytest.fixture(scope="module")
def fake_module() -> Iterator[FakeUpstream]:
    with running_fake_upstream() as fake:
        yield fake


@pytest.fixture
def fake(fake_module: FakeUpstream) -> Iterator[FakeUpstream]:
    fake_module.reset()
    yield fake_module
    fake_module.reset()


def sdk(fake: FakeUpstream, api_key: str = "sk-test-a") -> openai.OpenAI:
    return openai.OpenAI(base_url=fake.base_url, api_key=api_key, max_retries=0)


def asdk(fake: FakeUpstream, api_key: str = "sk-test-a") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=fake.base_url, api_key=api_key, max_retries=0)


def test_sync_hit_after_miss(fake: FakeUpstream) -> None:
    plain = sdk(fake)
    with cached(plain) as client:
        first = client.chat.completions.with_raw_response.create(**CHAT)
        assert first.headers["x-cache"] == "MISS"
        second = client.chat.completions.with_raw_response.create(**CHAT)
        assert second.headers["x-cache"] == "HIT"
        assert second.headers["x-cache-tier"] == "memory"
        assert second.parse().model_dump() == first.parse().model_dump()
        assert isinstance(client, openai.OpenAI)
        assert type(client) is type(plain)  # a copy of the SDK's own class, not a subclass
    assert fake.calls[CHAT_PATH] == 1
    # The client that was wrapped is unchanged: it still calls the upstream.
    plain.chat.completions.create(**CHAT)
    assert fake.calls[CHAT_PATH] == 2
    plain.close()


def test_sync_stream_is_replayed(fake: FakeUpstream) -> None:
    with cached(sdk(fake)) as client:
        live = [c.model_dump() for c in client.chat.completions.create(**CHAT, stream=True)]
        replay = [c.model_dump() for c in client.chat.completions.create(**CHAT, stream=True)]
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in live if c["choices"])
        again = "".join(
            c["choices"][0]["delta"].get("content") or "" for c in replay if c["choices"]
        )
        assert text
        assert again == text
        # A plain request is answered from the streamed record too.
        whole = client.chat.completions.create(**CHAT)
        assert whole.choices[0].message.content == text
    assert fake.calls[CHAT_PATH] == 1


async def test_async_hit_stream_and_tenants(fake: FakeUpstream) -> None:
    shared = TierChain([MemoryTier()])
    async with cached(asdk(fake), cache=shared, key=b"k" * 32) as client:
        first = await client.chat.completions.with_raw_response.create(**CHAT)
        assert first.headers["x-cache"] == "MISS"
        hit = await client.chat.completions.with_raw_response.create(**CHAT)
        assert hit.headers["x-cache"] == "HIT"
        chunks = [c async for c in await client.chat.completions.create(**CHAT, stream=True)]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == hit.parse().choices[0].message.content
        assert fake.calls[CHAT_PATH] == 1
    # Another API key is another tenant: it does not see the first key's answers.
    async with cached(asdk(fake, "sk-test-b"), cache=shared, key=b"k" * 32) as other:
        answer = await other.chat.completions.with_raw_response.create(**CHAT)
        assert answer.headers["x-cache"] == "MISS"
    # The same key and cache under another wrapped client: a hit.
    async with cached(asdk(fake), cache=shared, key=b"k" * 32) as again:
        answer = await again.chat.completions.with_raw_response.create(**CHAT)
        assert answer.headers["x-cache"] == "HIT"
    assert fake.calls[CHAT_PATH] == 2
    await shared.close()


async def test_embeddings_and_passthrough(fake: FakeUpstream) -> None:
    async with cached(asdk(fake)) as client:
        texts = ["alpha", "beta"]
        first = await client.embeddings.create(model="text-embedding-3-small", input=texts)
        second = await client.embeddings.with_raw_response.create(
            model="text-embedding-3-small", input=texts
        )
        assert second.headers["x-cache"] == "HIT"
        assert second.parse().data[0].embedding == first.data[0].embedding
        assert fake.calls["/v1/embeddings"] == 1
        models = await client.models.list()  # not a cached route: straight through
        assert {m.id for m in models.data} >= {"gpt-4o-mini"}
        assert fake.calls["/v1/models"] == 1


def test_cache_controls_and_errors(fake: FakeUpstream) -> None:
    with cached(sdk(fake)) as client:
        client.chat.completions.create(**CHAT, extra_headers={"cache-control": "no-store"})
        again = client.chat.completions.with_raw_response.create(**CHAT)
        assert again.headers["x-cache"] == "MISS"
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(**CHAT, extra_headers={"x-cache-ttl": "soon"})
        fake.fail_status = 500
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(**{**CHAT, "seed": 1})
    with pytest.raises(ConfigError):
        cached(object())  # type: ignore[type-var]
    with pytest.raises(ConfigError):
        cached(sdk(fake), key=b"short")
