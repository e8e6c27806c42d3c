"""The other cached routes (Responses API, legacy completions), passthrough, health, metrics, stats."""

from __future__ import annotations

import httpx

from .conftest import RunningProxy
from .fake_upstream import FakeUpstream
from .helpers import CHAT, client

RESPONSE = {"model": "gpt-4o-mini", "input": "Say hello", "temperature": 0}
COMPLETION = {"model": "gpt-3.5-turbo-instruct", "prompt": "Once upon", "temperature": 0}


def test_responses_api_miss_then_hit(proxy: RunningProxy, fake: FakeUpstream) -> None:
    sdk = client(proxy)
    first = sdk.responses.with_raw_response.create(**RESPONSE)
    second = sdk.responses.with_raw_response.create(**RESPONSE)
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
    assert first.parse().output_text == second.parse().output_text
    assert fake.calls["/v1/responses"] == 1


def test_responses_api_streams_replay_and_convert(proxy: RunningProxy, fake: FakeUpstream) -> None:
    sdk = client(proxy)
    original = [e.model_dump() for e in sdk.responses.create(**RESPONSE, stream=True)]
    replay = [e.model_dump() for e in sdk.responses.create(**RESPONSE, stream=True)]
    assert replay == original
    assert original[-1]["type"] == "response.completed"
    whole = sdk.responses.create(**RESPONSE)
    assert whole.output_text == original[-1]["response"]["output"][0]["content"][0]["text"]
    assert fake.calls["/v1/responses"] == 1
    # And the other way: a plain record replayed as events.
    other = {**RESPONSE, "input": "Say goodbye"}
    plain = sdk.responses.create(**other)
    events = list(sdk.responses.create(**other, stream=True))
    assert events[-1].type == "response.completed"
    assert events[-1].response.output_text == plain.output_text  # type: ignore[union-attr]
    assert fake.calls["/v1/responses"] == 2


def test_responses_api_truncated_stream_not_stored(proxy: RunningProxy, fake: FakeUpstream) -> None:
    import openai
    import pytest

    fake.truncate = "clean"
    sdk = client(proxy)
    with pytest.raises(openai.APIError):
        for _event in sdk.responses.create(**RESPONSE, stream=True):
            pass
    fake.truncate = None
    assert sdk.responses.with_raw_response.create(**RESPONSE).headers["x-cache"] == "MISS"


def test_legacy_completions(proxy: RunningProxy, fake: FakeUpstream) -> None:
    sdk = client(proxy)
    first = sdk.completions.create(**COMPLETION)
    hit = sdk.completions.with_raw_response.create(**COMPLETION)
    assert hit.headers["x-cache"] == "HIT"
    assert hit.parse().choices[0].text == first.choices[0].text
    streamed = "".join(
        c.choices[0].text for c in sdk.completions.create(**COMPLETION, stream=True) if c.choices
    )
    assert streamed == first.choices[0].text
    assert fake.calls["/v1/completions"] == 1


def test_models_pass_through(proxy: RunningProxy, fake: FakeUpstream) -> None:
    sdk = client(proxy)
    assert [m.id for m in sdk.models.list()] == ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small"]
    assert [m.id for m in sdk.models.list()] == ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small"]
    assert fake.calls["/v1/models"] == 2  # never cached
    raw = sdk.models.with_raw_response.list()
    assert raw.headers["x-fake-upstream"] == "yes"
    assert "x-cache" not in raw.headers


def test_other_methods_on_a_cached_path_pass_through(
    proxy: RunningProxy, fake: FakeUpstream, http: httpx.Client
) -> None:
    # GET /v1/chat/completions (listing stored completions) is not a cached call: the upstream
    # answers it (here with its own plain-text 405, not the proxy's JSON errors).
    response = http.get("/v1/chat/completions?limit=2")
    assert response.status_code == 405
    assert response.text == "Method Not Allowed"
    assert "x-cache" not in response.headers


def test_passthrough_streams_bodies_both_ways(proxy: RunningProxy, fake: FakeUpstream) -> None:
    payload = bytes(range(256)) * 64

    def upload() -> object:
        for i in range(0, len(payload), 1000):
            yield payload[i : i + 1000]

    with httpx.Client(base_url=proxy.base_url) as http:
        response = http.put(
            "/echo?a=1&b=two",
            content=upload(),  # type: ignore[arg-type]
            headers={"content-type": "application/octet-stream", "authorization": "Bearer k"},
        )
    assert response.status_code == 200
    assert response.content == payload
    assert response.headers["x-echo-query"] == "a=1&b=two"
    assert response.headers["x-echo-method"] == "PUT"
    assert fake.log[-1].headers["authorization"] == "Bearer k"


def test_healthz(proxy: RunningProxy, http: httpx.Client) -> None:
    response = http.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "tiers": {"memory": True, "sqlite": True}}


def test_metrics_and_stats(proxy: RunningProxy, fake: FakeUpstream, http: httpx.Client) -> None:
    sdk = client(proxy)
    sdk.chat.completions.create(**CHAT)
    sdk.chat.completions.create(**CHAT)
    sdk.chat.completions.create(**CHAT)
    text = http.get("/metrics")
    assert text.headers["content-type"].startswith("text/plain")
    body = text.text
    assert 'strata_requests_total{outcome="hit",route="chat.completions",tier="memory"} 2.0' in body
    assert 'strata_requests_total{outcome="miss",route="chat.completions",tier=""} 1.0' in body
    assert "strata_hit_latency_seconds_bucket" in body
    assert "strata_upstream_latency_seconds_count" in body
    assert 'strata_dollars_saved_total{model="gpt-4o-mini",route="chat.completions"}' in body
    stats = http.get("/stats").json()
    assert stats["requests"]["total"] == 3
    assert stats["requests"]["by_outcome"] == {"hit": 2, "miss": 1}
    assert stats["requests"]["by_tier"] == {"memory": 2}
    assert stats["hit_rate"] == 2 / 3
    assert stats["latency_seconds"]["hit"]["count"] == 2
    assert stats["latency_seconds"]["miss"]["count"] == 1
    assert stats["tokens_served_from_cache"]["input"] > 0
    assert stats["tokens_served_from_cache"]["output"] > 0
    assert stats["dollars_saved"] > 0
    assert stats["verification_failures"] == 0
    assert stats["tiers"] == {"memory": True, "sqlite": True}
