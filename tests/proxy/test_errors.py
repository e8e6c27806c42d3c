"""Bad input and a failing upstream: clean OpenAI-style errors, nothing cached, still serving."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest

from .conftest import RunningProxy, StartProxy
from .fake_upstream import FakeUpstream
from .helpers import CHAT, aclient, await_until, client, wait_until


def assert_openai_error(response: httpx.Response, status: int) -> dict[str, object]:
    assert response.status_code == status
    body = response.json()
    assert set(body) == {"error"}
    assert {"message", "type", "code"} <= set(body["error"])
    error: dict[str, object] = body["error"]
    return error


def test_upstream_500_is_passed_on_and_not_stored(proxy: RunningProxy, fake: FakeUpstream) -> None:
    fake.fail_status = 500
    sdk = client(proxy)
    with pytest.raises(openai.InternalServerError) as caught:
        sdk.chat.completions.create(**CHAT)
    assert caught.value.status_code == 500
    assert "fake upstream failure" in caught.value.message
    fake.fail_status = None
    assert sdk.chat.completions.with_raw_response.create(**CHAT).headers["x-cache"] == "MISS"
    assert fake.calls["/v1/chat/completions"] == 2
    assert proxy.metric("strata_upstream_errors_total", kind="status") == 1


def test_upstream_4xx_is_passed_on(proxy: RunningProxy, fake: FakeUpstream) -> None:
    fake.fail_status = 404
    with pytest.raises(openai.NotFoundError):
        client(proxy).chat.completions.create(**CHAT)


def test_stream_request_to_a_failing_upstream(proxy: RunningProxy, fake: FakeUpstream) -> None:
    fake.fail_status = 503
    with pytest.raises(openai.APIStatusError) as caught:
        client(proxy).chat.completions.create(**CHAT, stream=True)
    assert caught.value.status_code == 503


def test_upstream_timeout_is_a_504(start_proxy: StartProxy, fake: FakeUpstream) -> None:
    proxy = start_proxy(upstream_timeout=0.3)
    fake.hang = True
    sdk = client(proxy)
    with pytest.raises(openai.APIStatusError) as caught:
        sdk.chat.completions.create(**CHAT)
    assert caught.value.status_code == 504
    assert caught.value.code == "upstream_timeout"
    fake.release()
    fake.hang = False
    assert sdk.chat.completions.with_raw_response.create(**CHAT).headers["x-cache"] == "MISS"
    assert proxy.metric("strata_upstream_errors_total", kind="timeout") == 1


def test_unreachable_upstream_is_a_502(start_proxy: StartProxy) -> None:
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proxy = start_proxy(upstream=f"http://127.0.0.1:{port}/v1")
    with pytest.raises(openai.APIStatusError) as caught:
        client(proxy).chat.completions.create(**CHAT)
    assert caught.value.status_code == 502
    assert caught.value.code == "upstream_unavailable"


@pytest.mark.parametrize("how", ["clean", "abort"])
def test_truncated_stream_is_an_error_and_not_stored(
    proxy: RunningProxy, fake: FakeUpstream, how: str
) -> None:
    fake.truncate = how  # type: ignore[assignment]
    sdk = client(proxy)
    with pytest.raises(openai.APIError) as caught:
        for _chunk in sdk.chat.completions.create(**CHAT, stream=True):
            pass
    assert "terminal event" in caught.value.message or "broke off" in caught.value.message
    fake.truncate = None
    assert sdk.chat.completions.with_raw_response.create(**CHAT).headers["x-cache"] == "MISS"
    # The verdict is counted after the answers have left (llm.cache.SETTLE_DELAY).
    wait_until(
        lambda: (
            proxy.metric("strata_not_stored_total", reason="truncated")
            + proxy.metric("strata_not_stored_total", reason="upstream-error")
            >= 1
        )
    )
    assert (
        proxy.metric("strata_not_stored_total", reason="truncated")
        + proxy.metric("strata_not_stored_total", reason="upstream-error")
        == 1
    )


async def test_a_plain_follower_of_a_broken_stream_gets_a_502(
    proxy: RunningProxy, fake: FakeUpstream
) -> None:
    # A plain request that joined a stream which then broke gets an error, not a partial answer.
    fake.truncate = "clean"
    fake.hold_after = 1
    sdk = aclient(proxy)
    stream = await sdk.chat.completions.create(**CHAT, stream=True)
    plain = asyncio.ensure_future(sdk.chat.completions.create(**CHAT))
    await await_until(lambda: proxy.metric("strata_coalesced_requests_total") == 1)
    fake.release()
    with pytest.raises(openai.APIError):
        async for _chunk in stream:
            pass
    with pytest.raises(openai.APIStatusError) as caught:
        await plain
    assert caught.value.status_code == 502
    assert fake.calls["/v1/chat/completions"] == 1
    await sdk.close()


@pytest.mark.parametrize("reason", ["length", "content_filter"])
def test_unfinished_answers_are_not_stored(
    proxy: RunningProxy, fake: FakeUpstream, reason: str
) -> None:
    fake.finish_reason = reason
    sdk = client(proxy)
    answer = sdk.chat.completions.create(**CHAT)
    assert answer.choices[0].finish_reason == reason
    assert sdk.chat.completions.with_raw_response.create(**CHAT).headers["x-cache"] == "MISS"
    # Counted when the write-behind decides, just after the answers went out.
    wait_until(
        lambda: proxy.metric("strata_not_stored_total", reason=f"finish_reason:{reason}") == 2
    )


def test_oversized_body_is_a_413(start_proxy: StartProxy, fake: FakeUpstream) -> None:
    proxy = start_proxy(max_body_bytes=4096)
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 10_000}]}
    with pytest.raises(openai.APIStatusError) as caught:
        client(proxy).chat.completions.create(**big)  # type: ignore[arg-type]
    assert caught.value.status_code == 413

    # Without a Content-Length (chunked), the limit holds while reading.
    def chunks() -> object:
        for _ in range(10):
            yield b"x" * 1000

    with httpx.Client(base_url=proxy.root) as http:
        response = http.post(
            "/v1/chat/completions",
            content=chunks(),  # type: ignore[arg-type]
            headers={"content-type": "application/json"},
        )
        assert_openai_error(response, 413)
        assert http.get("/healthz").status_code == 200
    assert fake.calls["/v1/chat/completions"] == 0


def test_malformed_json_is_a_400(proxy: RunningProxy, http: httpx.Client) -> None:
    for raw in (b"{not json", b"[1, 2]", b"", b'{"model": "m", "messages": [}'):
        response = http.post(
            "/v1/chat/completions", content=raw, headers={"content-type": "application/json"}
        )
        error = assert_openai_error(response, 400)
        assert error["code"] == "invalid_json"


def test_wrong_content_type_is_a_415(proxy: RunningProxy, http: httpx.Client) -> None:
    response = http.post(
        "/v1/chat/completions", content=json.dumps(CHAT), headers={"content-type": "text/plain"}
    )
    assert_openai_error(response, 415)


def test_unknown_paths_outside_v1_are_openai_style_404s(http: httpx.Client) -> None:
    assert_openai_error(http.get("/nope"), 404)


def test_the_proxy_keeps_serving_after_errors(proxy: RunningProxy, fake: FakeUpstream) -> None:
    sdk = client(proxy)
    fake.fail_status = 500
    for _ in range(3):
        with pytest.raises(openai.InternalServerError):
            sdk.chat.completions.create(**CHAT)
    fake.fail_status = None
    sdk.chat.completions.create(**CHAT)
    assert sdk.chat.completions.with_raw_response.create(**CHAT).headers["x-cache"] == "HIT"
