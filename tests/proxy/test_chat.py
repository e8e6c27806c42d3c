"""Chat completions through the proxy with the official SDK: hits, misses, streams, conversions."""

from __future__ import annotations

import json

from openai.lib.streaming.chat import ChatCompletionStreamState

from .conftest import RunningProxy, StartProxy
from .fake_upstream import FakeUpstream
from .helpers import CHAT, TOOLS, aclient, client


def dump_chunks(stream: object) -> list[dict[str, object]]:
    return [chunk.model_dump(exclude_unset=True) for chunk in stream]  # type: ignore[attr-defined]


def test_miss_then_hit(proxy: RunningProxy, fake: FakeUpstream) -> None:
    sdk = client(proxy)
    first = sdk.chat.completions.with_raw_response.create(**CHAT)
    second = sdk.chat.completions.with_raw_response.create(**CHAT)
    assert first.headers["x-cache"] == "MISS"
    assert second.headers["x-cache"] == "HIT"
    assert second.headers["x-cache-tier"] == "memory"
    assert second.headers["age"] == "0"
    assert first.headers["x-cache-key"] == second.headers["x-cache-key"]
    assert first.parse().model_dump() == second.parse().model_dump()
    assert fake.calls["/v1/chat/completions"] == 1
    assert proxy.metric("strata_requests_total", outcome="hit") == 1


async def test_miss_then_hit_async(proxy: RunningProxy, fake: FakeUpstream) -> None:
    sdk = aclient(proxy)
    first = await sdk.chat.completions.create(**CHAT)
    second = await sdk.chat.completions.create(**CHAT)
    assert first.model_dump() == second.model_dump()
    assert "Answer #" in (second.choices[0].message.content or "")
    assert fake.calls["/v1/chat/completions"] == 1
    await sdk.close()


def test_age_header_follows_the_clock(proxy: RunningProxy) -> None:
    sdk = client(proxy)
    sdk.chat.completions.create(**CHAT)
    proxy.clock.advance(42)
    hit = sdk.chat.completions.with_raw_response.create(**CHAT)
    assert hit.headers["age"] == "42"


def test_streamed_hit_equals_the_original_stream(proxy: RunningProxy, fake: FakeUpstream) -> None:
    sdk = client(proxy)
    original = dump_chunks(sdk.chat.completions.create(**CHAT, stream=True))
    replay = sdk.chat.completions.with_raw_response.create(**CHAT, stream=True)
    assert replay.headers["x-cache"] == "HIT"
    assert dump_chunks(replay.parse()) == original
    assert len(original) > 5
    # The client did not ask for usage, so neither copy carries it.
    assert all("usage" not in chunk for chunk in original)
    assert fake.calls["/v1/chat/completions"] == 1
    # The record was still made with usage, for the client that asks for it.
    with_usage = dump_chunks(
        sdk.chat.completions.create(**CHAT, stream=True, stream_options={"include_usage": True})
    )
    assert with_usage[-1]["choices"] == []
    assert with_usage[-1]["usage"]["total_tokens"] > 0  # type: ignore[index]
    assert fake.calls["/v1/chat/completions"] == 1


def test_stream_with_usage_replays_the_usage_chunk(proxy: RunningProxy, fake: FakeUpstream) -> None:
    sdk = client(proxy)
    options = {"include_usage": True}
    original = dump_chunks(sdk.chat.completions.create(**CHAT, stream=True, stream_options=options))
    replay = dump_chunks(sdk.chat.completions.create(**CHAT, stream=True, stream_options=options))
    assert replay == original
    assert original[-1]["usage"] is not None
    assert fake.calls["/v1/chat/completions"] == 1


def test_tool_call_stream_replays_chunk_for_chunk(proxy: RunningProxy, fake: FakeUpstream) -> None:
    sdk = client(proxy)
    original = dump_chunks(sdk.chat.completions.create(**CHAT, tools=TOOLS, stream=True))
    replay = dump_chunks(sdk.chat.completions.create(**CHAT, tools=TOOLS, stream=True))
    assert replay == original
    deltas = [c["choices"][0]["delta"] for c in original if c["choices"]]  # type: ignore[index]
    assert sum(1 for d in deltas if d.get("tool_calls")) > 2
    assert fake.calls["/v1/chat/completions"] == 1


def test_streamed_record_served_whole_equals_sdk_accumulation(
    proxy: RunningProxy, fake: FakeUpstream
) -> None:
    sdk = client(proxy)
    for extra in ({}, {"tools": TOOLS}):
        state = ChatCompletionStreamState()
        for chunk in sdk.chat.completions.create(**CHAT, **extra, stream=True):
            state.handle_chunk(chunk)
        accumulated = state.get_final_completion()
        whole = sdk.chat.completions.with_raw_response.create(**CHAT, **extra)
        assert whole.headers["x-cache"] == "HIT"
        served = whole.parse()
        assert served.id == accumulated.id
        assert served.created == accumulated.created
        assert served.model == accumulated.model
        assert served.system_fingerprint == accumulated.system_fingerprint
        assert served.choices[0].finish_reason == accumulated.choices[0].finish_reason
        assert served.choices[0].message.content == accumulated.choices[0].message.content
        served_calls = [c.model_dump() for c in served.choices[0].message.tool_calls or []]
        accumulated_calls = [
            {
                "id": c.id,
                "type": c.type,
                "function": {"name": c.function.name, "arguments": c.function.arguments},
            }
            for c in accumulated.choices[0].message.tool_calls or []
        ]
        assert served_calls == accumulated_calls
        assert served.usage is not None  # the record holds usage even though the client streamed
    assert fake.calls["/v1/chat/completions"] == 2


def test_plain_record_served_as_a_stream(proxy: RunningProxy, fake: FakeUpstream) -> None:
    sdk = client(proxy)
    for extra in ({}, {"tools": TOOLS}):
        original = sdk.chat.completions.create(**CHAT, **extra)
        state = ChatCompletionStreamState()
        stream = sdk.chat.completions.with_raw_response.create(
            **CHAT, **extra, stream=True, stream_options={"include_usage": True}
        )
        assert stream.headers["x-cache"] == "HIT"
        for chunk in stream.parse():
            state.handle_chunk(chunk)
        rebuilt = state.get_final_completion()
        assert rebuilt.id == original.id
        assert rebuilt.choices[0].message.content == original.choices[0].message.content
        assert rebuilt.choices[0].finish_reason == original.choices[0].finish_reason
        assert [c.function.arguments for c in rebuilt.choices[0].message.tool_calls or []] == [
            c.function.arguments  # type: ignore[union-attr]
            for c in original.choices[0].message.tool_calls or []
        ]
        assert rebuilt.usage == original.usage
    assert fake.calls["/v1/chat/completions"] == 2


async def test_async_stream_hit(proxy: RunningProxy, fake: FakeUpstream) -> None:
    sdk = aclient(proxy)
    first = [c.model_dump() async for c in await sdk.chat.completions.create(**CHAT, stream=True)]
    second = [c.model_dump() async for c in await sdk.chat.completions.create(**CHAT, stream=True)]
    assert first == second
    assert fake.calls["/v1/chat/completions"] == 1
    await sdk.close()


def test_sampled_requests_are_not_cached(proxy: RunningProxy, fake: FakeUpstream) -> None:
    sdk = client(proxy)
    request = {**CHAT, "temperature": 0.7}
    first = sdk.chat.completions.with_raw_response.create(**request)
    second = sdk.chat.completions.with_raw_response.create(**request)
    assert first.headers["x-cache"] == second.headers["x-cache"] == "BYPASS"
    assert first.parse().id != second.parse().id
    assert fake.calls["/v1/chat/completions"] == 2


def test_a_fixed_seed_is_cached(proxy: RunningProxy, fake: FakeUpstream) -> None:
    sdk = client(proxy)
    request = {**CHAT, "temperature": 0.7, "seed": 7}
    sdk.chat.completions.create(**request)
    assert sdk.chat.completions.with_raw_response.create(**request).headers["x-cache"] == "HIT"
    assert fake.calls["/v1/chat/completions"] == 1


def test_two_api_keys_do_not_share(proxy: RunningProxy, fake: FakeUpstream) -> None:
    alice, bob = client(proxy, "sk-alice"), client(proxy, "sk-bob")
    a = alice.chat.completions.with_raw_response.create(**CHAT)
    b = bob.chat.completions.with_raw_response.create(**CHAT)
    assert a.headers["x-cache"] == b.headers["x-cache"] == "MISS"
    assert a.headers["x-cache-key"] != b.headers["x-cache-key"]
    assert "sk-alice" not in a.headers["x-cache-key"]
    assert alice.chat.completions.with_raw_response.create(**CHAT).headers["x-cache"] == "HIT"
    assert fake.calls["/v1/chat/completions"] == 2


def test_share_across_tenants_when_configured(start_proxy: StartProxy, fake: FakeUpstream) -> None:
    proxy = start_proxy(share_across_tenants=True)
    client(proxy, "sk-alice").chat.completions.create(**CHAT)
    hit = client(proxy, "sk-bob").chat.completions.with_raw_response.create(**CHAT)
    assert hit.headers["x-cache"] == "HIT"
    assert fake.calls["/v1/chat/completions"] == 1


def test_different_prompts_models_and_params_do_not_share(
    proxy: RunningProxy, fake: FakeUpstream
) -> None:
    sdk = client(proxy)
    variants = [
        CHAT,
        {**CHAT, "model": "gpt-4o"},
        {**CHAT, "messages": [{"role": "user", "content": "What is the capital of France?"}]},
        {**CHAT, "max_tokens": 5},
        {
            **CHAT,
            "messages": [
                *CHAT["messages"][:1],
                {"role": "user", "content": "What is the capital of France? "},
            ],
        },  # type: ignore[index]
    ]
    for request in variants:
        assert sdk.chat.completions.with_raw_response.create(**request).headers["x-cache"] == "MISS"
    assert fake.calls["/v1/chat/completions"] == len(variants)


def test_the_credential_is_forwarded_and_controls_are_not(
    proxy: RunningProxy, fake: FakeUpstream
) -> None:
    sdk = client(proxy, "sk-forward-me")
    sdk.chat.completions.create(
        **CHAT,
        extra_headers={"X-Cache-Namespace": "docs", "Cache-Control": "max-age=60"},
        extra_body={"cache": {"tags": ["t1"]}},
    )
    call = fake.log[-1]
    assert call.headers["authorization"] == "Bearer sk-forward-me"
    assert "x-cache-namespace" not in call.headers
    assert "cache-control" not in call.headers
    assert "cache" not in call.body
    assert call.body["messages"] == CHAT["messages"]


def test_a_body_without_controls_is_forwarded_byte_for_byte(
    proxy: RunningProxy, fake: FakeUpstream
) -> None:
    import httpx

    raw = b'{"model": "gpt-4o-mini", "temperature": 0,  "messages": [{"role": "user", "content": "x"}]}'
    with httpx.Client() as http:
        response = http.post(
            f"{proxy.base_url}/chat/completions",
            content=raw,
            headers={"content-type": "application/json", "authorization": "Bearer k"},
        )
    assert response.status_code == 200
    assert fake.log[-1].raw == raw
    assert json.loads(raw) == fake.log[-1].body
