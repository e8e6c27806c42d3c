"""Tests for stratacache.llm.cache: LLMCache without the HTTP shell, and its helpers.

LLMCache runs on real tiers and the real HTTP upstream client; the fake OpenAI-compatible server on a
loopback port (tests/proxy/fake_upstream.py) is the only fake.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.fake_upstream import FakeUpstream, running_fake_upstream
from stratacache.errors import ConfigError, RequestError
from stratacache.llm.cache import (
    CacheStatus,
    LLMCache,
    LLMRequest,
    LLMResponse,
    RoutePolicy,
    Upstream,
    _attribute,
    _credential,
    _strip_usage,
    derive_tenant_secret,
    error_body,
    route_path,
)
from stratacache.llm.keys import Route, request_key, tenant_for
from stratacache.llm.policy import AdmissionMode
from stratacache.llm.records import HmacSigner, Record, RecordCodec
from stratacache.observability.metrics import Metrics
from stratacache.proxy.upstream import HTTPUpstream
from stratacache.tiers import MemoryTier, SQLiteTier, TierChain, TierEntry

KEY = b"k" * 32
CHAT: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "user", "content": "hello"}],
    "temperature": 0,
}
AUTH = {"authorization": "Bearer sk-unit"}


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


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
async def tiers(tmp_path: Path, clock: Clock) -> AsyncIterator[TierChain]:
    chain = TierChain(
        [MemoryTier(clock=clock), SQLiteTier(tmp_path / "cache.db", clock=clock)], clock=clock
    )
    yield chain
    await chain.close()


@pytest.fixture
async def upstream(fake: FakeUpstream) -> AsyncIterator[HTTPUpstream]:
    client = HTTPUpstream(fake.base_url)
    yield client
    await client.aclose()


def make_cache(
    tiers: TierChain, upstream: HTTPUpstream, clock: Clock, **options: Any
) -> tuple[LLMCache, Metrics]:
    metrics = Metrics()
    cache = LLMCache(
        tiers,
        RecordCodec(HmacSigner(KEY)),
        upstream,
        tenant_secret=derive_tenant_secret(KEY),
        observer=metrics,
        clock=clock,
        **options,
    )
    return cache, metrics


async def read(response: LLMResponse) -> bytes:
    if response.body is not None:
        return response.body
    assert response.stream is not None
    return b"".join([chunk async for chunk in response.stream])


# --- the cache, end to end -----------------------------------------------------------------------


async def test_miss_then_hit(
    tiers: TierChain, upstream: HTTPUpstream, clock: Clock, fake: FakeUpstream
) -> None:
    cache, metrics = make_cache(tiers, upstream, clock)
    miss = await cache.handle(LLMRequest(Route.CHAT, CHAT, headers=AUTH))
    assert miss.cache is CacheStatus.MISS
    assert miss.status == 200
    clock.now += 5
    hit = await cache.handle(LLMRequest(Route.CHAT, CHAT, headers=AUTH))
    assert hit.cache is CacheStatus.HIT
    assert (hit.age, hit.tier) == (5, "memory")
    assert hit.cache_headers == {
        "x-cache": "HIT",
        "x-cache-key": hit.key,
        "age": "5",
        "x-cache-tier": "memory",
    }
    assert await read(hit) == await read(miss)
    tenant = tenant_for("sk-unit", secret=derive_tenant_secret(KEY))
    assert hit.key == request_key(Route.CHAT, CHAT, tenant=tenant).storage_key
    assert fake.calls["/v1/chat/completions"] == 1
    assert metrics.value("strata_requests_total", outcome="hit") == 1
    await cache.aclose()


async def test_streams_are_recorded_and_replayed(
    tiers: TierChain, upstream: HTTPUpstream, clock: Clock, fake: FakeUpstream
) -> None:
    cache, _ = make_cache(tiers, upstream, clock)
    request = LLMRequest(Route.CHAT, {**CHAT, "stream": True}, headers=AUTH)
    live = await cache.handle(request)
    assert live.media_type == "text/event-stream"
    assert live.stream is not None
    first = await read(live)
    replay = await cache.handle(request)
    assert replay.cache is CacheStatus.HIT
    assert await read(replay) == first
    assert first.endswith(b"data: [DONE]\n\n")
    # The upstream was asked for usage; the client, which did not ask, got none.
    assert fake.log[-1].body["stream_options"] == {"include_usage": True}
    assert b'"usage"' not in first
    await cache.aclose()


async def test_an_abandoned_stream_cancels_the_upstream_call(
    tiers: TierChain, upstream: HTTPUpstream, clock: Clock, fake: FakeUpstream
) -> None:
    fake.hold_after = 2
    cache, metrics = make_cache(tiers, upstream, clock)
    response = await cache.handle(LLMRequest(Route.CHAT, {**CHAT, "stream": True}, headers=AUTH))
    assert response.stream is not None
    iterator = aiter(response.stream)
    assert b"data: " in await anext(iterator)
    await iterator.aclose()  # type: ignore[attr-defined]
    # The call is cancelled; wait for it to unwind (an event, not a duration).
    for _ in range(5000):
        if cache.in_flight == 0:
            break
        await asyncio.sleep(0.001)
    assert cache.in_flight == 0
    fake.release()
    again = await cache.handle(LLMRequest(Route.CHAT, CHAT, headers=AUTH))
    assert again.cache is CacheStatus.MISS
    assert metrics.value("strata_not_stored_total", reason="abandoned") == 1
    await cache.aclose()


async def test_a_record_for_another_request_is_refused_and_deleted(
    tiers: TierChain, upstream: HTTPUpstream, clock: Clock, fake: FakeUpstream
) -> None:
    cache, metrics = make_cache(tiers, upstream, clock)
    tenant = tenant_for("sk-unit", secret=derive_tenant_secret(KEY))
    key = request_key(Route.CHAT, CHAT, tenant=tenant)
    # Correctly signed, stored under the right key, but answering another request.
    forged = Record(
        key=key.storage_key,
        fingerprint="0" * 64,
        route="chat.completions",
        model="m",
        created_at=clock.now,
        body=b'{"forged": true}',
    )
    await tiers.set(key.storage_key, TierEntry(cache.codec.encode(forged)))
    response = await cache.handle(LLMRequest(Route.CHAT, CHAT, headers=AUTH))
    assert response.cache is CacheStatus.MISS
    assert b"forged" not in await read(response)
    assert metrics.value("strata_verification_failures_total", tier="memory") == 1
    assert fake.calls["/v1/chat/completions"] == 1
    await cache.aclose()


async def test_a_failing_tier_falls_back_to_the_upstream(
    tmp_path: Path, upstream: HTTPUpstream, clock: Clock, fake: FakeUpstream
) -> None:
    sqlite = SQLiteTier(tmp_path / "broken.db", clock=clock)
    chain = TierChain([sqlite], clock=clock)
    cache, metrics = make_cache(chain, upstream, clock)
    await sqlite.close()  # every call on it now raises TierError
    for _ in range(2):
        response = await cache.handle(LLMRequest(Route.CHAT, CHAT, headers=AUTH))
        assert response.status == 200
        assert response.cache is CacheStatus.MISS
    await cache.aclose()  # the writes come after the answers: closing drains them
    assert metrics.value("strata_not_stored_total", reason="tier-error") == 2


async def test_embeddings_attribute_batch_usage_to_items(
    tiers: TierChain, upstream: HTTPUpstream, clock: Clock, fake: FakeUpstream
) -> None:
    cache, _ = make_cache(tiers, upstream, clock)
    body = {"model": "e", "input": ["one", "two three four"], "encoding_format": "float"}
    batch = orjson.loads(await read(await cache.handle(LLMRequest(Route.EMBEDDINGS, body))))
    assert batch["usage"]["prompt_tokens"] == 4
    single = await cache.handle(LLMRequest(Route.EMBEDDINGS, {**body, "input": "two three four"}))
    assert single.cache is CacheStatus.HIT
    # The batch's 4 tokens were split by length: 3 chars against 14.
    assert orjson.loads(await read(single))["usage"]["prompt_tokens"] == 3
    assert fake.calls["/v1/embeddings"] == 1
    await cache.aclose()


async def test_bad_requests_raise_request_error(
    tiers: TierChain, upstream: HTTPUpstream, clock: Clock
) -> None:
    cache, _ = make_cache(tiers, upstream, clock)
    with pytest.raises(RequestError):
        await cache.handle(LLMRequest(Route.CHAT, ["not", "an", "object"]))  # type: ignore[arg-type]
    with pytest.raises(RequestError):
        await cache.handle(LLMRequest(Route.CHAT, {**CHAT, "cache": {"nope": 1}}))
    with pytest.raises(RequestError):
        await cache.handle(LLMRequest(Route.EMBEDDINGS, {"model": "e", "input": {"a": 1}}))
    await cache.aclose()


async def test_construction_is_validated(
    tiers: TierChain, upstream: HTTPUpstream, clock: Clock
) -> None:
    codec = RecordCodec(HmacSigner(KEY))
    with pytest.raises(ConfigError):
        LLMCache(MemoryTier(), codec, upstream, tenant_secret=KEY)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        LLMCache(tiers, codec, upstream, tenant_secret=b"short")
    with pytest.raises(ConfigError):
        LLMCache(tiers, codec, upstream, tenant_secret=KEY, routes={Route.CHAT: "always"})  # type: ignore[dict-item]


def test_the_http_upstream_is_an_upstream() -> None:
    assert isinstance(HTTPUpstream("http://127.0.0.1:9/v1"), Upstream)


# --- value types and helpers ---------------------------------------------------------------------


def test_route_policy_validation() -> None:
    assert RoutePolicy().mode is AdmissionMode.DETERMINISTIC
    assert RoutePolicy(stale_while_revalidate=5, stale_if_error=60).stale_window == 60
    for bad in ({"ttl": 0}, {"ttl": -1}, {"stale_if_error": -1}, {"ttl": float("nan")}):
        with pytest.raises(ConfigError):
            RoutePolicy(**bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        RoutePolicy(mode="always")  # type: ignore[arg-type]


def test_route_paths() -> None:
    assert [route_path(r) for r in Route] == [
        "/chat/completions",
        "/completions",
        "/embeddings",
        "/responses",
    ]


def test_error_body_has_the_openai_shape() -> None:
    body = orjson.loads(error_body("boom", type="server_error", code=500))
    assert body == {
        "error": {"message": "boom", "type": "server_error", "param": None, "code": 500}
    }


def test_tenant_secret_derivation() -> None:
    secret = derive_tenant_secret(KEY)
    assert secret == derive_tenant_secret(KEY)
    assert secret != KEY
    assert secret != derive_tenant_secret(b"j" * 32)
    with pytest.raises(ConfigError):
        derive_tenant_secret(b"short")


@pytest.mark.parametrize(
    ("headers", "credential"),
    [
        ({"Authorization": "Bearer sk-1"}, "sk-1"),
        ({"authorization": "bearer  sk-2 "}, "sk-2"),
        ({"authorization": "Basic abc"}, "Basic abc"),
        ({"api-key": "azure"}, "azure"),
        ({"X-Api-Key": "anthropic-style"}, "anthropic-style"),
        ({}, None),
    ],
)
def test_credentials(headers: dict[str, str], credential: str | None) -> None:
    assert _credential(headers) == credential


def test_strip_usage() -> None:
    assert _strip_usage(b'{"choices":[],"usage":{"total_tokens":3}}') is None
    assert _strip_usage(b'{"choices":[{"index":0}],"usage":null}') == b'{"choices":[{"index":0}]}'
    assert _strip_usage(b'{"choices":[{"index":0}]}') == b'{"choices":[{"index":0}]}'
    # A provider that reports usage in a chunk with choices: kept, it is part of the answer.
    kept = b'{"choices":[{"index":0}],"usage":{"total_tokens":3}}'
    assert _strip_usage(kept) == kept


@given(
    st.integers(min_value=0, max_value=10_000),
    st.lists(st.integers(min_value=1, max_value=500), min_size=1, max_size=20),
)
def test_attribution_adds_up(total: int, weights: list[int]) -> None:
    counts = _attribute(total, weights)
    assert sum(counts) == total
    assert all(c >= 0 for c in counts)
    assert len(counts) == len(weights)


def test_attribution_is_exact_for_token_counts() -> None:
    assert _attribute(9, [2, 3, 4]) == [2, 3, 4]
    assert _attribute(10, [1, 1, 2]) == [2, 3, 5]


# --- verified records ----------------------------------------------------------------------------


class CountingCodec(RecordCodec):
    """The real codec, counting the records it decodes (and so verifies)."""

    def __init__(self, signer: HmacSigner) -> None:
        super().__init__(signer)
        self.decodes = 0

    def decode(
        self, data: bytes | bytearray | memoryview, *, expected_key: str | None = None
    ) -> Record:
        self.decodes += 1
        return super().decode(data, expected_key=expected_key)


def counting_cache(tiers: TierChain, upstream: HTTPUpstream, clock: Clock) -> LLMCache:
    return LLMCache(
        tiers,
        CountingCodec(HmacSigner(KEY)),
        upstream,
        tenant_secret=derive_tenant_secret(KEY),
        clock=clock,
    )


async def test_a_memory_hit_reuses_the_record_verified_or_signed_before(
    tiers: TierChain, upstream: HTTPUpstream, clock: Clock, fake: FakeUpstream
) -> None:
    cache = counting_cache(tiers, upstream, clock)
    codec = cache.codec
    assert isinstance(codec, CountingCodec)
    assert (
        await cache.handle(LLMRequest(Route.CHAT, CHAT, headers=AUTH))
    ).cache is CacheStatus.MISS
    for _ in range(3):
        hit = await cache.handle(LLMRequest(Route.CHAT, CHAT, headers=AUTH))
        assert (hit.cache, hit.tier) == (CacheStatus.HIT, "memory")
    assert codec.decodes == 0  # the cache signed this record itself

    # Another process (a restart): the SQLite copy is verified once, the memory copy reused.
    await tiers.tiers[0].clear()
    other = counting_cache(tiers, upstream, clock)
    other_codec = other.codec
    assert isinstance(other_codec, CountingCodec)
    tiers_seen = [
        (await other.handle(LLMRequest(Route.CHAT, CHAT, headers=AUTH))).tier for _ in range(3)
    ]
    assert tiers_seen == ["sqlite", "memory", "memory"]
    assert other_codec.decodes == 1
    assert fake.calls["/v1/chat/completions"] == 1


async def test_durable_reads_are_verified_every_time(
    tiers: TierChain, upstream: HTTPUpstream, clock: Clock
) -> None:
    cache = counting_cache(tiers, upstream, clock)
    codec = cache.codec
    assert isinstance(codec, CountingCodec)
    await cache.handle(LLMRequest(Route.CHAT, CHAT, headers=AUTH))
    await cache.drain()  # the record is written after the answer
    for expected in (1, 2):
        await tiers.tiers[0].clear()  # every hit now comes from SQLite, as a new object
        hit = await cache.handle(LLMRequest(Route.CHAT, CHAT, headers=AUTH))
        assert hit.tier == "sqlite"
        assert codec.decodes == expected


async def test_a_replaced_memory_entry_is_verified_again(
    tiers: TierChain, upstream: HTTPUpstream, clock: Clock, fake: FakeUpstream
) -> None:
    # A record was verified for this key; the memory tier now holds other bytes under it (forged
    # with another key). Those are verified, fail, are deleted, and the upstream answers.
    cache, metrics = make_cache(tiers, upstream, clock)
    miss = await cache.handle(LLMRequest(Route.CHAT, CHAT, headers=AUTH))
    assert miss.key is not None
    await cache.drain()  # the record is written after the answer
    memory = tiers.tiers[0]
    entry = await memory.get(miss.key)
    assert entry is not None
    record = cache.codec.decode(entry.value, expected_key=miss.key)
    forged = RecordCodec(HmacSigner(b"f" * 32)).encode(record)
    await memory.set(miss.key, TierEntry(forged, namespace=entry.namespace))
    again = await cache.handle(LLMRequest(Route.CHAT, CHAT, headers=AUTH))
    assert again.cache is CacheStatus.MISS
    assert metrics.value("strata_verification_failures_total", tier="memory") == 1
    assert fake.calls["/v1/chat/completions"] == 2


@pytest.mark.parametrize("how", ["key", "tag", "namespace", "flush"])
async def test_invalidation_forgets_verified_records(
    tiers: TierChain, upstream: HTTPUpstream, clock: Clock, fake: FakeUpstream, how: str
) -> None:
    cache, _metrics = make_cache(tiers, upstream, clock)
    headers = {**AUTH, "x-cache-tags": "t1", "x-cache-namespace": "ns1"}
    kept = {**CHAT, "messages": [{"role": "user", "content": "kept"}]}
    first = await cache.handle(LLMRequest(Route.CHAT, CHAT, headers=headers))
    await cache.handle(LLMRequest(Route.CHAT, kept, headers=AUTH))
    await cache.drain()
    assert len(cache._verified) == 2
    assert first.key is not None
    if how == "key":
        assert await cache.invalidate_key(first.key)
    elif how == "tag":
        assert await cache.invalidate_tag("t1") == 1
    elif how == "namespace":
        assert await cache.invalidate_namespace("ns1") == 1
    else:
        await cache.flush()
    assert len(cache._verified) == (0 if how == "flush" else 1)
    again = await cache.handle(LLMRequest(Route.CHAT, CHAT, headers=headers))
    assert again.cache is CacheStatus.MISS


# --- write-behind: the answer first, then signing and storing -----------------------------------


class RecordingCodec(RecordCodec):
    """The real codec, recording each record it signs (``fail``: raise instead, like a bug)."""

    def __init__(self, signer: HmacSigner, *, fail: bool = False) -> None:
        super().__init__(signer)
        self.encoded: list[str] = []
        self.fail = fail

    def encode(self, record: Record) -> bytes:
        if self.fail:
            raise RuntimeError("signing failed")
        self.encoded.append(record.key)
        return super().encode(record)


def recording_cache(
    tiers: TierChain, upstream: HTTPUpstream, clock: Clock, *, fail: bool = False
) -> tuple[LLMCache, RecordingCodec, Metrics]:
    codec = RecordingCodec(HmacSigner(KEY), fail=fail)
    metrics = Metrics()
    cache = LLMCache(
        tiers,
        codec,
        upstream,
        tenant_secret=derive_tenant_secret(KEY),
        observer=metrics,
        clock=clock,
    )
    return cache, codec, metrics


@pytest.mark.parametrize("stream", [False, True])
async def test_the_answer_is_given_before_the_record_is_signed(
    tiers: TierChain, upstream: HTTPUpstream, clock: Clock, fake: FakeUpstream, stream: bool
) -> None:
    cache, codec, _ = recording_cache(tiers, upstream, clock)
    miss = await cache.handle(LLMRequest(Route.CHAT, {**CHAT, "stream": stream}, headers=AUTH))
    body = await read(miss)
    assert body
    assert codec.encoded == []  # the client has the whole answer; nothing is signed yet
    assert cache.pending_writes == 1
    assert miss.key is not None
    assert await tiers.get(miss.key) is None
    await cache.drain()
    assert codec.encoded == [miss.key]
    assert await tiers.tiers[1].get(miss.key) is not None  # in SQLite too
    assert cache.pending_writes == 0


async def test_a_request_before_the_write_lands_waits_for_it_and_hits(
    tiers: TierChain, upstream: HTTPUpstream, clock: Clock, fake: FakeUpstream
) -> None:
    cache, codec, metrics = recording_cache(tiers, upstream, clock)
    miss = await cache.handle(LLMRequest(Route.CHAT, CHAT, headers=AUTH))
    assert cache.pending_writes == 1
    assert codec.encoded == []
    late = await cache.handle(LLMRequest(Route.CHAT, CHAT, headers=AUTH))
    assert late.cache is CacheStatus.HIT  # neither COALESCED nor a second call
    assert late.tier == "memory"
    assert await read(late) == await read(miss)
    assert fake.calls["/v1/chat/completions"] == 1
    assert metrics.value("strata_coalesced_requests_total") == 0
    # Embeddings items take the same path.
    body = {"model": "e", "input": ["alpha", "beta"]}
    await cache.handle(LLMRequest(Route.EMBEDDINGS, body, headers=AUTH))
    again = await cache.handle(
        LLMRequest(Route.EMBEDDINGS, {**body, "input": "beta"}, headers=AUTH)
    )
    assert again.cache is CacheStatus.HIT
    assert fake.calls["/v1/embeddings"] == 1
    await cache.aclose()


async def test_an_answer_that_may_not_be_stored_leaves_nothing_pending(
    tiers: TierChain, upstream: HTTPUpstream, clock: Clock, fake: FakeUpstream
) -> None:
    fake.finish_reason = "length"
    cache, codec, metrics = recording_cache(tiers, upstream, clock)
    first = await cache.handle(LLMRequest(Route.CHAT, CHAT, headers=AUTH))
    second = await cache.handle(LLMRequest(Route.CHAT, CHAT, headers=AUTH))
    assert (first.cache, second.cache) == (CacheStatus.MISS, CacheStatus.MISS)
    await cache.drain()
    assert codec.encoded == []
    assert metrics.value("strata_not_stored_total", reason="finish_reason:length") == 2
    assert fake.calls["/v1/chat/completions"] == 2


async def test_closing_drains_the_pending_writes(
    tmp_path: Path, upstream: HTTPUpstream, clock: Clock, fake: FakeUpstream
) -> None:
    path = tmp_path / "drain.db"
    chain = TierChain([MemoryTier(clock=clock), SQLiteTier(path, clock=clock)], clock=clock)
    cache, _, _ = recording_cache(chain, upstream, clock)
    requests = [{**CHAT, "messages": [{"role": "user", "content": f"q{i}"}]} for i in range(5)]
    for body in requests:
        await cache.handle(LLMRequest(Route.CHAT, body, headers=AUTH))
    assert cache.pending_writes >= 1  # at least the last answer's write is still to come
    await cache.aclose()
    await chain.close()
    # A new process on the same file has every answer.
    reopened = TierChain([SQLiteTier(path, clock=clock)], clock=clock)
    cache, _, _ = recording_cache(reopened, upstream, clock)
    for body in requests:
        hit = await cache.handle(LLMRequest(Route.CHAT, body, headers=AUTH))
        assert hit.cache is CacheStatus.HIT
    assert fake.calls["/v1/chat/completions"] == 5
    await cache.aclose()
    await reopened.close()


async def test_a_failing_write_is_counted_and_the_client_still_answered(
    tiers: TierChain, upstream: HTTPUpstream, clock: Clock, fake: FakeUpstream
) -> None:
    cache, _, metrics = recording_cache(tiers, upstream, clock, fail=True)
    for stream in (False, True):
        response = await cache.handle(
            LLMRequest(Route.CHAT, {**CHAT, "stream": stream}, headers=AUTH)
        )
        assert response.status == 200
        assert b"#" in await read(response)
        await cache.drain()
    assert metrics.value("strata_not_stored_total", reason="write-error") == 2
    assert cache.pending_writes == 0
    await cache.aclose()


@pytest.mark.parametrize("how", ["key", "tag", "flush"])
async def test_an_invalidation_waits_for_the_pending_write(
    tiers: TierChain, upstream: HTTPUpstream, clock: Clock, fake: FakeUpstream, how: str
) -> None:
    cache, _, _ = recording_cache(tiers, upstream, clock)
    headers = {**AUTH, "x-cache-tags": "t1"}
    miss = await cache.handle(LLMRequest(Route.CHAT, CHAT, headers=headers))
    assert miss.key is not None
    assert cache.pending_writes == 1
    if how == "key":
        assert await cache.invalidate_key(miss.key)
    elif how == "tag":
        assert await cache.invalidate_tag("t1") == 1
    else:
        await cache.flush()
    # The write landed before the delete, not after it: the entry stays gone.
    assert await tiers.get(miss.key) is None
    again = await cache.handle(LLMRequest(Route.CHAT, CHAT, headers=headers))
    assert again.cache is CacheStatus.MISS
    await cache.aclose()


def test_verified_records_are_bounded_and_matched_by_identity() -> None:
    from stratacache.llm.cache import _VerifiedRecords

    def record(key: str) -> Record:
        return Record(
            key=key,
            fingerprint="f" * 64,
            route="chat.completions",
            model="m",
            created_at=0.0,
            body=b"{}",
        )

    def entry(size: int, **options: Any) -> TierEntry:
        return TierEntry(b"x" * size, **options)

    verified = _VerifiedRecords(max_entries=2, max_bytes=100)
    a, b, c = entry(10), entry(10), entry(10)
    verified.put("a", a, record("a"))
    verified.put("b", b, record("b"))
    assert verified.get("a", a) is not None  # "a" is now the most recent
    assert verified.get("a", entry(10)) is None  # equal bytes, another object: not trusted
    verified.put("c", c, record("c"))
    assert (len(verified), verified.get("b", b)) == (2, None)  # "b" was least recently used

    by_bytes = _VerifiedRecords(max_entries=10, max_bytes=100)
    thirty = [entry(30) for _ in range(3)]
    for i, e in enumerate(thirty):
        by_bytes.put(str(i), e, record(str(i)))
    by_bytes.put("3", twenty := entry(20), record("3"))  # 110 bytes: the oldest goes
    assert by_bytes.get("0", thirty[0]) is None
    assert by_bytes.get("3", twenty) is not None
    assert len(by_bytes) == 3
    huge = entry(101)
    by_bytes.put("huge", huge, record("huge"))  # heavier than the whole budget: not kept
    assert by_bytes.get("huge", huge) is None
    assert len(by_bytes) == 3

    tagged = _VerifiedRecords(max_entries=10, max_bytes=1000)
    one = entry(1, tags=frozenset({"t"}), namespace="n1")
    two = entry(1, namespace="n2")
    tagged.put("one", one, record("one"))
    tagged.put("two", two, record("two"))
    tagged.discard_tag("t")
    assert (tagged.get("one", one), tagged.get("two", two) is not None) == (None, True)
    tagged.discard_namespace("n2")
    assert len(tagged) == 0

    off = _VerifiedRecords(max_entries=0, max_bytes=1000)
    off.put("a", a, record("a"))
    assert len(off) == 0
    with pytest.raises(ConfigError):
        _VerifiedRecords(max_entries=-1, max_bytes=10)
    with pytest.raises(ConfigError):
        _VerifiedRecords(max_entries=1, max_bytes=True)


# --- the semantic layer, without the HTTP shell -------------------------------------------------


class BreakableEmbedder:
    """HashingEmbedder that raises while ``broken`` (an embedding server that went away)."""

    def __init__(self) -> None:
        from semantic.helpers import HashingEmbedder

        self.inner = HashingEmbedder()
        self.broken = False

    @property
    def model(self) -> str:
        return self.inner.model

    @property
    def dimension(self) -> int:
        return self.inner.dimension

    def embed(self, texts: Any) -> Any:
        if self.broken:
            raise RuntimeError("embedding server unreachable")
        return self.inner.embed(texts)


def semantic_cache(
    tiers: TierChain, upstream: HTTPUpstream, clock: Clock
) -> tuple[LLMCache, Any, BreakableEmbedder]:
    pytest.importorskip("numpy")
    from stratacache.llm.semantic import semantic_layer
    from stratacache.semantic import EmbeddingCache, ExactIndex

    embedder = BreakableEmbedder()
    layer = semantic_layer(
        EmbeddingCache(embedder),
        ExactIndex(embedder.dimension, clock=clock),
        thresholds={Route.CHAT: None},
        clock=clock,
    )
    cache, _ = make_cache(tiers, upstream, clock, semantic=layer)
    return cache, layer, embedder


def ask(text: str) -> dict[str, Any]:
    return {**CHAT, "messages": [{"role": "user", "content": text}]}


async def test_a_semantic_match_outside_the_requests_scope_is_never_served(
    tiers: TierChain, upstream: HTTPUpstream, clock: Clock, fake: FakeUpstream
) -> None:
    cache, layer, embedder = semantic_cache(tiers, upstream, clock)
    other = {"authorization": "Bearer sk-other"}
    theirs = await cache.handle(LLMRequest(Route.CHAT, ask("secret plans"), headers=other))
    await cache.drain()
    assert theirs.key is not None
    # An index that (through some bug) put their record in our partition must still not leak it.
    tenant = tenant_for("sk-unit", secret=derive_tenant_secret(KEY))
    ours = request_key(Route.CHAT, ask("Secret plans"), tenant=tenant)
    layer.index.add(ours.partition, theirs.key, embedder.embed(["secret plans"])[0], text="x")
    answer = await cache.handle(LLMRequest(Route.CHAT, ask("Secret plans"), headers=AUTH))
    assert answer.cache is CacheStatus.MISS
    assert theirs.key not in layer.index  # dropped on the way
    assert fake.calls["/v1/chat/completions"] == 2
    await cache.aclose()


async def test_semantic_failures_and_gone_records_fall_back_to_the_upstream(
    tiers: TierChain, upstream: HTTPUpstream, clock: Clock, fake: FakeUpstream
) -> None:
    cache, layer, embedder = semantic_cache(tiers, upstream, clock)
    first = await cache.handle(LLMRequest(Route.CHAT, ask("Where is Rome?"), headers=AUTH))
    await cache.drain()
    assert first.key is not None
    hit = await cache.handle(LLMRequest(Route.CHAT, ask("where is rome"), headers=AUTH))
    assert hit.cache is CacheStatus.SEMANTIC_HIT
    assert hit.cache_headers["x-cache-similarity"] == "1.0000"
    # The embedder breaks: requests are answered as if there were no semantic layer.
    embedder.broken = True
    broken = await cache.handle(LLMRequest(Route.CHAT, ask("Rome: where is it"), headers=AUTH))
    assert (broken.status, broken.cache) == (200, CacheStatus.MISS)
    await cache.drain()
    assert layer.stats()["errors"] >= 1
    embedder.broken = False
    # The record vanishes behind the index's back (evicted): its vector goes on the next match.
    await tiers.delete(first.key)
    gone = await cache.handle(LLMRequest(Route.CHAT, ask("where is Rome?"), headers=AUTH))
    assert gone.cache is CacheStatus.MISS
    assert first.key not in layer.index
    assert layer.stats()["stale_vectors"] == 1
    await cache.drain()
    # Too old for the client's max-age: not served, and the vector stays for others.
    assert gone.key is not None
    assert gone.key in layer.index
    clock.now += 60
    headers = {**AUTH, "cache-control": "max-age=10"}
    old = await cache.handle(LLMRequest(Route.CHAT, ask("WHERE is Rome"), headers=headers))
    assert old.cache is CacheStatus.MISS
    assert gone.key in layer.index
    await cache.aclose()


# --- paced replay ----------------------------------------------------------------------------------


class Ticks:
    """A monotonic timer that advances 20 ms per reading (so recorded gaps are never zero)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 0.02
        return self.now


async def test_a_streamed_hit_can_replay_at_the_recorded_pace(
    tiers: TierChain, upstream: HTTPUpstream, clock: Clock, fake: FakeUpstream
) -> None:
    pauses: list[float] = []

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)

    routes = {Route.CHAT: RoutePolicy(pace="original", pace_max_gap=0.03)}
    cache, _ = make_cache(tiers, upstream, clock, routes=routes, sleep=sleep, timer=Ticks())
    request = LLMRequest(Route.CHAT, {**CHAT, "stream": True}, headers=AUTH)
    live = await read(await cache.handle(request))
    await cache.drain()
    assert pauses == []  # the live stream is never paced
    stored = await tiers.tiers[1].get(
        request_key(
            Route.CHAT, CHAT, tenant=tenant_for("sk-unit", secret=derive_tenant_secret(KEY))
        ).storage_key
    )
    assert stored is not None
    record = cache.codec.decode(stored.value)
    assert record.gaps is not None
    assert len(record.gaps) == len(record.chunks or ())
    assert all(gap >= 0 for gap in record.gaps)
    assert record.gaps[0] > 0  # the first chunk waited for the upstream
    hit = await cache.handle(request)
    assert hit.cache is CacheStatus.HIT
    assert hit.stream is not None  # paced: produced over time, not one body
    assert await read(hit) == live  # the same bytes, usage chunk still left out
    assert pauses
    assert all(0 < pause <= 0.03 for pause in pauses)  # capped; zero gaps make no pause
    # A plain request is answered at once, and a route without pace replays at once too.
    plain = await cache.handle(LLMRequest(Route.CHAT, CHAT, headers=AUTH))
    assert plain.body is not None
    await cache.aclose()


def test_pace_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match="pace"):
        RoutePolicy(pace="fast")
    with pytest.raises(ConfigError, match="pace_max_gap"):
        RoutePolicy(pace="original", pace_max_gap=-1)


def test_recorded_gaps_round_trip_and_stay_optional() -> None:
    from stratacache.errors import RecordFormatError

    codec = RecordCodec(HmacSigner(KEY))
    base = Record(
        key="t/default/chat.completions/d",
        fingerprint="d",
        route="chat.completions",
        model="m",
        created_at=1.0,
        chunks=(b'{"a":1}', b'{"b":2}'),
    )
    paced = Record(**{**{f: getattr(base, f) for f in base.__slots__}, "gaps": (0.25, 0.0)})
    assert codec.decode(codec.encode(paced)).gaps == (0.25, 0.0)
    # Without gaps the bytes are the format as it always was.
    assert b"gaps" not in codec.encode(base)
    assert codec.decode(codec.encode(base)).gaps is None
    for bad in ((0.1,), (0.1, -1.0), (0.1, float("nan"))):
        with pytest.raises(RecordFormatError):
            Record(**{**{f: getattr(base, f) for f in base.__slots__}, "gaps": bad})
