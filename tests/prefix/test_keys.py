"""Prefix-aware keys: one slot per prefix, and the collision check that refuses another request."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from prefix.logs import RULES
from stratacache.config import Settings
from stratacache.errors import ConfigError
from stratacache.llm.cache import (
    CacheStatus,
    LLMCache,
    LLMRequest,
    RoutePolicy,
    derive_tenant_secret,
)
from stratacache.llm.keys import Route, request_key
from stratacache.llm.records import HmacSigner, RecordCodec
from stratacache.llm.warm import RecordedReply
from stratacache.observability.metrics import Metrics
from stratacache.prefix.keys import PrefixCacheKey, prefix_key
from stratacache.tiers import MemoryTier, TierChain

KEY = b"k" * 32
HEADERS = {"authorization": "Bearer sk-test"}


def chat(question: str, **extra: Any) -> dict[str, Any]:
    return {
        "model": "gpt-4o-mini",
        "temperature": 0,
        "messages": [
            {"role": "system", "content": RULES},
            {"role": "user", "content": question},
        ],
        **extra,
    }


def key_of(body: dict[str, Any], granularity: int = 256) -> PrefixCacheKey:
    exact = request_key(Route.CHAT, body, tenant="t" * 32)
    return prefix_key(exact, body, granularity=granularity)


def test_same_prefix_shares_a_slot_but_not_a_digest() -> None:
    a, b = key_of(chat("What is rule 3?")), key_of(chat("What is rule 4?"))
    assert a.storage_key == b.storage_key
    assert a.digest != b.digest
    assert "/prefix-256/" in a.storage_key
    # Anything that is not prompt text still separates slots.
    assert key_of(chat("What is rule 3?", temperature=0.5)).storage_key != a.storage_key
    assert key_of(chat("What is rule 3?"), granularity=128).storage_key != a.storage_key
    # A prompt shorter than N tokens is keyed by all of it.
    short = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    other = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello"}]}
    assert key_of(short).storage_key != key_of(other).storage_key


def test_bad_options_are_refused() -> None:
    with pytest.raises(ConfigError):
        RoutePolicy(key="fuzzy")
    with pytest.raises(ConfigError):
        RoutePolicy(key="prefix", granularity=0)
    with pytest.raises(ConfigError):
        key_of(chat("x"), granularity=0)
    with pytest.raises(ConfigError):
        prefix_key(
            request_key(Route.EMBEDDINGS, {"model": "m", "input": "x"}, tenant="t" * 32),
            {},
            granularity=8,
        )


def test_the_config_file_sets_prefix_keys(tmp_path: Path) -> None:
    path = tmp_path / "strata.toml"
    path.write_text('[routes."chat.completions"]\nkey = "prefix"\ngranularity = 512\n')
    policy = Settings.load(config_file=path).routes[Route.CHAT]
    assert (policy.key, policy.granularity) == ("prefix", 512)


class _EchoUpstream:
    """Answers each request with its own last user message, so a wrong answer is visible."""

    def __init__(self) -> None:
        self.calls = 0

    async def post(self, path: str, body: bytes, headers: Mapping[str, str]) -> RecordedReply:
        self.calls += 1
        question = json.loads(body)["messages"][-1]["content"]
        answer = {
            "id": f"chatcmpl-{self.calls}",
            "object": "chat.completion",
            "created": 1,
            "model": "gpt-4o-mini",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": f"answer to {question}"},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 3000, "completion_tokens": 4, "total_tokens": 3004},
        }
        return RecordedReply(json.dumps(answer).encode())


SLOTS: list[str] = []


async def _ask(cache: LLMCache, body: dict[str, Any]) -> tuple[CacheStatus, str]:
    response = await cache.handle(LLMRequest(Route.CHAT, body, headers=HEADERS))
    SLOTS.append(response.key or "")
    assert response.body is not None
    for _ in range(50):  # let the answer be stored before the next request
        await asyncio.sleep(0)
    content = json.loads(response.body)["choices"][0]["message"]["content"]
    return response.cache, content


async def test_the_collision_check_refuses_a_same_prefix_different_suffix_request() -> None:
    SLOTS.clear()
    upstream = _EchoUpstream()
    metrics = Metrics()
    tiers = TierChain([MemoryTier()])
    cache = LLMCache(
        tiers,
        RecordCodec(HmacSigner(KEY)),
        upstream,
        tenant_secret=derive_tenant_secret(KEY),
        observer=metrics,
        routes={Route.CHAT: RoutePolicy(key="prefix", granularity=256)},
    )
    first, second = chat("What is rule 3?"), chat("What is rule 4?")
    try:
        assert await _ask(cache, first) == (CacheStatus.MISS, "answer to What is rule 3?")
        assert await _ask(cache, first) == (CacheStatus.HIT, "answer to What is rule 3?")
        # Same first 256 tokens, another question: refused, answered upstream with its own answer.
        assert await _ask(cache, second) == (CacheStatus.MISS, "answer to What is rule 4?")
        assert await _ask(cache, second) == (CacheStatus.HIT, "answer to What is rule 4?")
        assert await _ask(cache, first) == (CacheStatus.MISS, "answer to What is rule 3?")
        # Both share one slot; nothing was treated as tampering.
        assert len(set(SLOTS)) == 1
        assert "/prefix-256/" in SLOTS[0]
        assert metrics.value("strata_verification_failures_total") == 0
        assert upstream.calls == 3
        # Two different questions in flight at once are never coalesced onto one answer.
        answers = await asyncio.gather(
            _ask(cache, chat("What is rule 7?")), _ask(cache, chat("What is rule 8?"))
        )
        assert [a[1] for a in answers] == ["answer to What is rule 7?", "answer to What is rule 8?"]
    finally:
        await cache.aclose()
        await tiers.close()


def test_prefix_keys_without_the_extra_fail_at_configuration(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    from stratacache.prefix import keys, tokens
    from stratacache.prefix.tokens import EncodingUnavailableError

    monkeypatch.setattr(keys, "_TOKENIZERS", {})
    monkeypatch.setattr(tokens, "_ENCODINGS", {})
    monkeypatch.setitem(sys.modules, "tiktoken", None)
    with pytest.raises(EncodingUnavailableError, match=r"stratacache\[prefix\]"):
        RoutePolicy(key="prefix")
    assert RoutePolicy().key == "exact"
