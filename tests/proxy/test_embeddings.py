"""Embeddings are cached per input item."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from .conftest import RunningProxy, StartProxy
from .fake_upstream import FakeUpstream, embedding_for
from .helpers import aclient, await_until, client

MODEL = "text-embedding-3-small"


def words(text: str) -> int:
    return len(text.split())


def test_a_batch_calls_upstream_for_new_items_only(proxy: RunningProxy, fake: FakeUpstream) -> None:
    sdk = client(proxy)
    first = sdk.embeddings.with_raw_response.create(model=MODEL, input=["alpha beta", "gamma"])
    assert first.headers["x-cache"] == "MISS"
    second = sdk.embeddings.with_raw_response.create(
        model=MODEL, input=["gamma", "delta epsilon zeta", "alpha beta"]
    )
    assert second.headers["x-cache"] == "MISS"
    assert fake.calls["/v1/embeddings"] == 2
    assert fake.log[-1].body["input"] == ["delta epsilon zeta"]
    parsed = second.parse()
    assert [d.index for d in parsed.data] == [0, 1, 2]
    # The SDK asked for base64 and decoded it: the vectors are the fake's, in the caller's order.
    for item, text in zip(parsed.data, ["gamma", "delta epsilon zeta", "alpha beta"], strict=True):
        assert item.embedding == embedding_for(text, 8)
    # Usage: what the upstream would have counted for the whole batch.
    assert parsed.usage.prompt_tokens == words("gamma delta epsilon zeta alpha beta")
    assert parsed.usage.total_tokens == parsed.usage.prompt_tokens
    hit = sdk.embeddings.with_raw_response.create(model=MODEL, input=["alpha beta", "gamma"])
    assert hit.headers["x-cache"] == "HIT"
    assert hit.parse().usage.prompt_tokens == words("alpha beta gamma")
    assert fake.calls["/v1/embeddings"] == 2
    assert proxy.metric("strata_tokens_served_total", route="embeddings") > 0


def test_single_string_and_float_format(proxy: RunningProxy, fake: FakeUpstream) -> None:
    with httpx.Client(base_url=proxy.base_url, headers={"authorization": "Bearer k"}) as http:
        body = {"model": MODEL, "input": "one two three", "encoding_format": "float"}
        first = http.post("/embeddings", json=body)
        second = http.post("/embeddings", json=body)
    assert first.headers["x-cache"] == "MISS"
    assert second.headers["x-cache"] == "HIT"
    assert second.json()["data"][0]["embedding"] == embedding_for("one two three", 8)
    assert second.json()["usage"] == {"prompt_tokens": 3, "total_tokens": 3}
    assert first.json()["data"] == second.json()["data"]
    # The float and base64 answers are different entries (the format changes the answer).
    client(proxy, "k").embeddings.create(model=MODEL, input="one two three")
    assert fake.calls["/v1/embeddings"] == 2


def test_duplicates_and_token_inputs(proxy: RunningProxy, fake: FakeUpstream) -> None:
    sdk = client(proxy)
    result = sdk.embeddings.create(model=MODEL, input=[[1, 2, 3], [4, 5], [1, 2, 3]])
    assert fake.log[-1].body["input"] == [[1, 2, 3], [4, 5]]
    assert [d.embedding for d in result.data] == [
        embedding_for([1, 2, 3], 8),
        embedding_for([4, 5], 8),
        embedding_for([1, 2, 3], 8),
    ]
    assert result.usage.prompt_tokens == 8
    again = sdk.embeddings.with_raw_response.create(model=MODEL, input=[4, 5])
    assert again.headers["x-cache"] == "HIT"
    assert again.parse().usage.prompt_tokens == 2


def test_dimensions_and_models_do_not_share(proxy: RunningProxy, fake: FakeUpstream) -> None:
    sdk = client(proxy)
    sdk.embeddings.create(model=MODEL, input="x")
    sdk.embeddings.create(model=MODEL, input="x", dimensions=16)
    sdk.embeddings.create(model="text-embedding-3-large", input="x")
    assert fake.calls["/v1/embeddings"] == 3


def test_a_failing_batch_stores_nothing(proxy: RunningProxy, fake: FakeUpstream) -> None:
    import openai

    fake.fail_status = 500
    sdk = client(proxy)
    with pytest.raises(openai.InternalServerError):
        sdk.embeddings.create(model=MODEL, input=["a", "b"])
    fake.fail_status = None
    assert (
        sdk.embeddings.with_raw_response.create(model=MODEL, input="a").headers["x-cache"] == "MISS"
    )


def test_bad_embeddings_input_is_a_400(proxy: RunningProxy, fake: FakeUpstream) -> None:
    with httpx.Client(base_url=proxy.base_url) as http:
        for body in (
            {"model": MODEL, "input": []},
            {"model": MODEL, "input": [1.5]},
            {"input": "x"},
        ):
            response = http.post("/embeddings", json=body)
            assert response.status_code == 400, body
            assert response.json()["error"]["type"] == "invalid_request_error"
    assert fake.calls["/v1/embeddings"] == 0


def test_mode_never_passes_embeddings_through(start_proxy: StartProxy, fake: FakeUpstream) -> None:
    from stratacache.llm.cache import RoutePolicy
    from stratacache.llm.keys import Route
    from stratacache.llm.policy import AdmissionMode

    proxy = start_proxy(routes={Route.EMBEDDINGS: RoutePolicy(mode=AdmissionMode.NEVER)})
    sdk = client(proxy)
    for _ in range(2):
        reply = sdk.embeddings.with_raw_response.create(model=MODEL, input=["a", "b"])
        assert reply.headers["x-cache"] == "BYPASS"
        assert [d.embedding for d in reply.parse().data] == [
            embedding_for("a", 8),
            embedding_for("b", 8),
        ]
    assert fake.calls["/v1/embeddings"] == 2


async def test_concurrent_batches_share_items_in_flight(
    proxy: RunningProxy, fake: FakeUpstream
) -> None:
    fake.hold_after = 0
    sdk = aclient(proxy)
    first = asyncio.ensure_future(sdk.embeddings.create(model=MODEL, input=["a", "b"]))
    await await_until(lambda: fake.held == 1)
    second = asyncio.ensure_future(
        sdk.embeddings.with_raw_response.create(model=MODEL, input=["b", "c"])
    )
    await await_until(lambda: fake.held == 2)  # only "c" went up for the second batch
    fake.release()
    a, b = await first, await second
    assert fake.log[-1].body["input"] == ["c"] or fake.log[-2].body["input"] == ["c"]
    assert fake.calls["/v1/embeddings"] == 2
    assert b.parse().data[0].embedding == a.data[1].embedding
    assert b.headers["x-cache"] == "MISS"
    assert proxy.metric("strata_coalesced_requests_total", route="embeddings") == 1
    await sdk.close()
