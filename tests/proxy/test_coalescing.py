"""Request coalescing: N concurrent identical misses make one upstream call."""

from __future__ import annotations

import asyncio

from openai.lib.streaming.chat import ChatCompletionStreamState

from .conftest import RunningProxy
from .fake_upstream import FakeUpstream
from .helpers import CHAT, aclient, await_until

N = 32


async def test_concurrent_identical_requests_make_one_call(
    proxy: RunningProxy, fake: FakeUpstream
) -> None:
    fake.hold_after = 0  # the upstream answers only when released
    sdk = aclient(proxy)
    calls = [
        asyncio.ensure_future(sdk.chat.completions.with_raw_response.create(**CHAT))
        for _ in range(N)
    ]
    await await_until(lambda: proxy.metric("strata_coalesced_requests_total") == N - 1)
    await await_until(lambda: fake.held == 1)
    fake.release()
    responses = await asyncio.gather(*calls)
    assert fake.calls["/v1/chat/completions"] == 1
    bodies = {r.parse().model_dump_json() for r in responses}
    assert len(bodies) == 1
    outcomes = sorted(r.headers["x-cache"] for r in responses)
    assert outcomes == ["COALESCED"] * (N - 1) + ["MISS"]
    # Followers saved the tokens of the one call.
    assert proxy.metric("strata_tokens_served_total") > 0
    await sdk.close()


async def test_concurrent_streams_share_one_call_from_the_first_chunk(
    proxy: RunningProxy, fake: FakeUpstream
) -> None:
    fake.hold_after = 3  # three chunks go out, then the upstream waits
    sdk = aclient(proxy)
    leader = await sdk.chat.completions.create(**CHAT, stream=True)
    first = await leader.__anext__()  # the stream is live before anyone else asks

    async def follow() -> list[dict[str, object]]:
        stream = await sdk.chat.completions.create(**CHAT, stream=True)
        return [chunk.model_dump() async for chunk in stream]

    followers = [asyncio.ensure_future(follow()) for _ in range(N - 1)]
    await await_until(lambda: proxy.metric("strata_coalesced_requests_total") == N - 1)
    fake.release()
    rest = [chunk.model_dump() async for chunk in leader]
    leader_chunks = [first.model_dump(), *rest]
    results = await asyncio.gather(*followers)
    assert fake.calls["/v1/chat/completions"] == 1
    for chunks in results:
        assert chunks == leader_chunks  # every chunk, from the start
    assert leader_chunks[0]["choices"][0]["delta"]["role"] == "assistant"  # type: ignore[index]
    await sdk.close()


async def test_a_plain_request_joins_a_live_stream(proxy: RunningProxy, fake: FakeUpstream) -> None:
    fake.hold_after = 2
    sdk = aclient(proxy)
    stream = await sdk.chat.completions.create(**CHAT, stream=True)
    plain = asyncio.ensure_future(sdk.chat.completions.with_raw_response.create(**CHAT))
    await await_until(lambda: proxy.metric("strata_coalesced_requests_total") == 1)
    fake.release()
    state = ChatCompletionStreamState()
    async for chunk in stream:
        state.handle_chunk(chunk)
    whole = await plain
    assert whole.headers["x-cache"] == "COALESCED"
    assert whole.parse().choices[0].message.content == (
        state.get_final_completion().choices[0].message.content
    )
    assert fake.calls["/v1/chat/completions"] == 1
    await sdk.close()


async def test_sampled_requests_are_never_coalesced(
    proxy: RunningProxy, fake: FakeUpstream
) -> None:
    sdk = aclient(proxy)
    request = {**CHAT, "temperature": 1.0}
    responses = await asyncio.gather(*(sdk.chat.completions.create(**request) for _ in range(4)))
    assert len({r.id for r in responses}) == 4
    assert fake.calls["/v1/chat/completions"] == 4
    await sdk.close()


async def test_an_abandoned_stream_is_cancelled_and_not_stored(
    proxy: RunningProxy, fake: FakeUpstream
) -> None:
    fake.hold_after = 2
    sdk = aclient(proxy)
    stream = await sdk.chat.completions.create(**CHAT, stream=True)
    await stream.__anext__()
    await stream.close()  # the client hangs up mid-stream
    await await_until(lambda: proxy.proxy.cache.in_flight == 0)
    fake.release()
    fake.hold_after = None
    again = await sdk.chat.completions.with_raw_response.create(**CHAT)
    assert again.headers["x-cache"] == "MISS"
    assert fake.calls["/v1/chat/completions"] == 2
    await sdk.close()
