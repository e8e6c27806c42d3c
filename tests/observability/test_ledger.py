"""The cost ledger: each provider's usage shape, priced by hand and by the ledger."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stratacache.llm.cache import CacheStatus, LLMCache, LLMRequest, derive_tenant_secret
from stratacache.llm.keys import Route
from stratacache.llm.records import HmacSigner, RecordCodec
from stratacache.observability.ledger import Ledger, Usage, default_prices, normalize_usage
from stratacache.observability.metrics import Metrics
from stratacache.observability.pricing import Price, PriceTable
from stratacache.tiers import MemoryTier, TierChain

M = 1_000_000


def test_openai_chat_counts_cached_tokens_inside_the_prompt() -> None:
    usage = {
        "prompt_tokens": 2000,
        "completion_tokens": 300,
        "prompt_tokens_details": {"cached_tokens": 1792},
    }
    charge = Ledger().charge("gpt-4o-2024-08-06", usage)  # $2.50 in, $1.25 cached, $10 out
    assert charge.usage == Usage("openai", 2000, 1792, 0, 0, 300)
    assert charge.billed == pytest.approx((208 * 2.50 + 1792 * 1.25 + 300 * 10.0) / M)
    assert charge.uncached == pytest.approx((2000 * 2.50 + 300 * 10.0) / M)
    assert charge.prompt_cache_saved == pytest.approx(1792 * (2.50 - 1.25) / M)


def test_openai_responses_and_flattened_record_usage() -> None:
    responses = {
        "input_tokens": 1500,
        "output_tokens": 80,
        "input_tokens_details": {"cached_tokens": 1024},
        "output_tokens_details": {"reasoning_tokens": 50},
    }
    flat = {
        "prompt_tokens": 1500,
        "completion_tokens": 80,
        "prompt_tokens_details.cached_tokens": 1024,
    }
    ledger = Ledger()
    expected = (476 * 0.15 + 1024 * 0.075 + 80 * 0.60) / M  # gpt-4o-mini
    assert ledger.charge("gpt-4o-mini", responses).billed == pytest.approx(expected)
    assert ledger.charge("gpt-4o-mini", flat).billed == pytest.approx(expected)


def test_anthropic_counts_cache_reads_and_writes_outside_input_tokens() -> None:
    ledger = Ledger()  # claude-sonnet-4-5: $3 in, $0.30 cache read, $15 out
    write = {
        "input_tokens": 50,
        "cache_creation_input_tokens": 2000,
        "cache_read_input_tokens": 0,
        "cache_creation": {"ephemeral_5m_input_tokens": 1500, "ephemeral_1h_input_tokens": 500},
        "output_tokens": 100,
    }
    charge = ledger.charge("claude-sonnet-4-5-20250929", write)
    assert charge.usage == Usage("anthropic", 2050, 0, 2000, 500, 100)
    billed = 50 * 3.0 + 1500 * 3.0 * 1.25 + 500 * 3.0 * 2.0 + 100 * 15.0
    assert charge.billed == pytest.approx(billed / M)
    assert charge.uncached == pytest.approx((2050 * 3.0 + 100 * 15.0) / M)
    assert charge.prompt_cache_saved < 0  # a write costs more than it saves on its own

    read = {"input_tokens": 50, "cache_read_input_tokens": 2000, "output_tokens": 100}
    charge = ledger.charge("claude-sonnet-4-5", read)
    assert charge.billed == pytest.approx((50 * 3.0 + 2000 * 0.30 + 100 * 15.0) / M)
    assert charge.prompt_cache_saved == pytest.approx(2000 * (3.0 - 0.30) / M)


def test_gemini_counts_cached_tokens_inside_the_prompt() -> None:
    usage = {
        "usageMetadata": {
            "promptTokenCount": 3000,
            "cachedContentTokenCount": 2048,
            "candidatesTokenCount": 200,
            "thoughtsTokenCount": 100,
        }
    }
    charge = Ledger().charge("gemini-2.5-flash", usage)  # $0.30 in, $0.03 cached, $2.50 out
    assert charge.usage == Usage("gemini", 3000, 2048, 0, 0, 300)
    assert charge.billed == pytest.approx((952 * 0.30 + 2048 * 0.03 + 300 * 2.50) / M)
    snake = {
        "prompt_token_count": 3000,
        "cached_content_token_count": 2048,
        "candidates_token_count": 300,
    }
    assert Ledger().charge("gemini-2.5-flash", snake).billed == pytest.approx(charge.billed)


def test_overrides_unknown_models_and_totals() -> None:
    table = default_prices().with_overrides(
        {"gpt-4o": Price(1.0, 2.0, 0.1), "my-model": Price(4.0)}
    )
    ledger = Ledger(table)
    usage = {
        "prompt_tokens": 1000,
        "completion_tokens": 10,
        "prompt_tokens_details": {"cached_tokens": 500},
    }
    first = ledger.record_upstream("gpt-4o", usage)
    assert first.billed == pytest.approx((500 * 1.0 + 500 * 0.1 + 10 * 2.0) / M)
    hit = ledger.record_cache_hit("gpt-4o", usage)
    assert hit.billed == first.billed
    assert ledger.record_upstream("my-model", {"prompt_tokens": 10}).billed == pytest.approx(40 / M)
    unknown = ledger.record_upstream("somebody-else", usage)
    assert (unknown.priced, unknown.billed, unknown.uncached) == (False, 0.0, 0.0)
    totals = ledger.totals()
    assert totals["gpt-4o"].upstream_requests == 1
    assert totals["gpt-4o"].cache_hits == 1
    assert totals["gpt-4o"].response_cache_saved == pytest.approx(first.billed)
    assert totals["somebody-else"].input_tokens == 1000
    snapshot = ledger.snapshot()
    assert snapshot["spent_dollars"] == pytest.approx(first.billed + 40 / M, abs=1e-6)
    assert snapshot["prompt_cache_saved_dollars"] == pytest.approx(500 * 0.9 / M, abs=1e-6)
    json.dumps(snapshot)


_COUNTS = st.one_of(st.integers(-5, 10**7), st.none(), st.text(max_size=3), st.booleans())


@given(
    st.dictionaries(
        st.sampled_from(
            [
                "prompt_tokens",
                "completion_tokens",
                "input_tokens",
                "output_tokens",
                "cache_read_input_tokens",
                "cache_creation_input_tokens",
                "promptTokenCount",
                "cachedContentTokenCount",
                "prompt_tokens_details.cached_tokens",
            ]
        ),
        _COUNTS,
    )
)
def test_any_usage_normalises_to_sane_counts(usage: dict[str, Any]) -> None:
    normal = normalize_usage(usage)
    assert 0 <= normal.cached_tokens <= normal.input_tokens
    assert 0 <= normal.long_cache_write_tokens <= normal.cache_write_tokens
    assert normal.cached_tokens + normal.cache_write_tokens <= normal.input_tokens
    assert Ledger().charge("gpt-4o", usage).billed >= 0
    assert normalize_usage(None).shape == "none"


def test_metrics_exposes_the_ledger() -> None:
    metrics = Metrics(PriceTable.default())
    anthropic = {"input_tokens": 10, "cache_read_input_tokens": 1000, "output_tokens": 5}
    metrics.upstream_usage("chat.completions", "claude-sonnet-4-5", anthropic)
    saved = 1000 * (3.0 - 0.30) / M
    assert metrics.value("strata_prompt_cache_dollars_saved_total", model="claude-sonnet-4-5") == (
        pytest.approx(saved)
    )
    assert metrics.value("strata_prompt_cache_tokens_total", kind="read") == 1000
    assert metrics.value("strata_upstream_dollars_total") == pytest.approx(
        (10 * 3.0 + 1000 * 0.30 + 5 * 15.0) / M
    )
    ledger = metrics.snapshot()["ledger"]
    assert ledger["by_model"]["claude-sonnet-4-5"]["cached_tokens"] == 1000
    assert ledger["prompt_cache_saved_dollars"] == pytest.approx(saved, abs=1e-6)
    exposition, _ = metrics.exposition()
    assert b"strata_prompt_cache_dollars_saved_total" in exposition


class _Reply:
    def __init__(self, body: bytes) -> None:
        self._body = body

    @property
    def status(self) -> int:
        return 200

    @property
    def headers(self) -> Mapping[str, str]:
        return {"content-type": "application/json"}

    async def iter_bytes(self) -> AsyncIterator[bytes]:
        yield self._body

    async def read(self) -> bytes:
        return self._body

    async def aclose(self) -> None:
        return None


class _Upstream:
    """A fake provider in-process, answering with a usage that reports a prompt-cache read."""

    def __init__(self, *, usage: bool = True) -> None:
        self.calls = 0
        self.usage = usage

    async def post(self, path: str, body: bytes, headers: Mapping[str, str]) -> _Reply:
        self.calls += 1
        answer = {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": "gpt-4o-mini",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "hi"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": 2000,
                "completion_tokens": 10,
                "total_tokens": 2010,
                "prompt_tokens_details": {"cached_tokens": 1536},
            },
        }
        if not self.usage:
            del answer["usage"]
        return _Reply(json.dumps(answer).encode())


async def test_the_cache_reports_upstream_usage_and_hits_to_the_ledger() -> None:
    key = b"k" * 32
    metrics = Metrics()
    upstream = _Upstream()
    tiers = TierChain([MemoryTier()])
    cache = LLMCache(
        tiers,
        RecordCodec(HmacSigner(key)),
        upstream,
        tenant_secret=derive_tenant_secret(key),
        observer=metrics,
    )
    body = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0,
    }
    headers = {"authorization": "Bearer sk-test"}
    try:
        first = await cache.handle(LLMRequest(Route.CHAT, body, headers=headers))
        assert first.cache is CacheStatus.MISS
        for _ in range(50):  # the answer is stored after it is sent
            await asyncio.sleep(0)
            if metrics.ledger.totals():
                break
        second = await cache.handle(LLMRequest(Route.CHAT, body, headers=headers))
        assert second.cache is CacheStatus.HIT
    finally:
        await cache.aclose()
        await tiers.close()
    assert upstream.calls == 1
    billed = (464 * 0.15 + 1536 * 0.075 + 10 * 0.60) / M
    totals = metrics.ledger.totals()["gpt-4o-mini"]
    assert totals.upstream_requests == 1
    assert totals.spent == pytest.approx(billed)
    assert totals.prompt_cache_saved == pytest.approx(1536 * 0.075 / M)
    assert totals.cache_hits == 1
    assert totals.response_cache_saved == pytest.approx(billed)
    stats = metrics.snapshot()
    assert stats["dollars_saved"] == pytest.approx(billed, abs=1e-6)
    assert stats["ledger"]["by_model"]["gpt-4o-mini"]["cache_hits"] == 1


async def test_an_answer_without_usage_is_estimated_by_the_context_cache() -> None:
    from stratacache.prefix.context import ContextCache

    key = b"k" * 32
    metrics = Metrics()
    tiers = TierChain([MemoryTier()])
    cache = LLMCache(
        tiers,
        RecordCodec(HmacSigner(key)),
        _Upstream(usage=False),
        tenant_secret=derive_tenant_secret(key),
        observer=metrics,
    )
    messages = [{"role": "user", "content": "hello there"}]
    body = {"model": "gpt-4o-mini", "messages": messages, "temperature": 0}
    try:
        await cache.handle(LLMRequest(Route.CHAT, body, headers={"authorization": "Bearer sk"}))
        for _ in range(50):
            await asyncio.sleep(0)
            if metrics.ledger.totals():
                break
    finally:
        await cache.aclose()
        await tiers.close()
    totals = metrics.ledger.totals()["gpt-4o-mini"]
    assert totals.input_tokens == ContextCache().count(messages).prompt_tokens > 0
    assert totals.spent == pytest.approx(totals.input_tokens * 0.15 / M)
