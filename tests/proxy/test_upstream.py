"""Tests for stratacache.proxy.upstream: the aiohttp client to the provider."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import orjson
import pytest
from multidict import CIMultiDict

from stratacache.errors import ConfigError, UpstreamError, UpstreamTimeoutError
from stratacache.llm.cache import Upstream
from stratacache.proxy.upstream import HTTPUpstream, UpstreamTimeouts, _joined

from .fake_upstream import FakeUpstream

CHAT = orjson.dumps(
    {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}
)
JSON_HEADERS = {"content-type": "application/json", "authorization": "Bearer k"}


def test_the_client_is_an_upstream_built_outside_a_loop() -> None:
    # Built outside any event loop: the aiohttp session opens on the first request.
    assert isinstance(HTTPUpstream("http://127.0.0.1:9/v1"), Upstream)


def test_options_are_checked() -> None:
    with pytest.raises(ConfigError):
        HTTPUpstream("ftp://example.com")
    with pytest.raises(ConfigError):
        HTTPUpstream("http://example.com", max_connections=0)
    with pytest.raises(ConfigError):
        UpstreamTimeouts(read=0)


async def test_post_reads_status_headers_and_body(fake: FakeUpstream) -> None:
    upstream = HTTPUpstream(fake.base_url + "/")
    try:
        assert upstream.base_url == fake.base_url
        for _ in range(2):  # the second call reuses the pooled connection
            reply = await upstream.post("/chat/completions", CHAT, JSON_HEADERS)
            assert reply.status == 200
            assert reply.headers["Content-Type"].startswith("application/json")
            assert reply.headers.get("content-type") == reply.headers["CONTENT-TYPE"]
            answer = orjson.loads(await reply.read())
            assert answer["object"] == "chat.completion"
            await reply.aclose()
            await reply.aclose()  # idempotent
        assert fake.calls["/v1/chat/completions"] == 2
        sent = fake.log[-1].headers
        assert sent["authorization"] == "Bearer k"
        assert sent["content-type"] == "application/json"
    finally:
        await upstream.aclose()
        await upstream.aclose()


async def test_forward_streams_both_ways(fake: FakeUpstream) -> None:
    upstream = HTTPUpstream(fake.base_url)

    async def body() -> AsyncIterator[bytes]:
        for piece in (b"hello ", b"streamed ", b"world"):
            yield piece

    try:
        reply = await upstream.forward(
            "PUT",
            "/echo",
            query="a=1&b=%20x",
            headers={"content-type": "text/plain"},
            body=body(),
        )
        assert reply.status == 200
        assert reply.headers["x-echo-query"] == "a=1&b=%20x"
        assert reply.headers["x-echo-method"] == "PUT"
        assert b"".join([chunk async for chunk in reply.iter_raw()]) == b"hello streamed world"
        await reply.aclose()

        reply = await upstream.forward("GET", "/models", query="", headers={}, body=None)
        assert reply.headers["x-fake-upstream"] == "yes"
        assert b"".join([chunk async for chunk in reply.iter_bytes()]).startswith(b"{")
        await reply.aclose()
    finally:
        await upstream.aclose()


async def test_a_body_without_content_type_is_sent_without_one(fake: FakeUpstream) -> None:
    upstream = HTTPUpstream(fake.base_url)
    try:
        reply = await upstream.forward("POST", "/echo", query="", headers={}, body=b"raw")
        assert await reply.read() == b"raw"
        await reply.aclose()
        assert "content-type" not in fake.log[-1].headers
    finally:
        await upstream.aclose()


async def test_an_unreachable_upstream_raises_upstream_error() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    upstream = HTTPUpstream(f"http://127.0.0.1:{port}/v1")
    try:
        with pytest.raises(UpstreamError) as caught:
            await upstream.post("/chat/completions", CHAT, JSON_HEADERS)
        assert not isinstance(caught.value, UpstreamTimeoutError)
    finally:
        await upstream.aclose()


async def test_a_silent_upstream_raises_upstream_timeout_error(fake: FakeUpstream) -> None:
    fake.hang = True
    upstream = HTTPUpstream(fake.base_url, timeouts=UpstreamTimeouts(read=0.2))
    try:
        with pytest.raises(UpstreamTimeoutError):
            await upstream.post("/chat/completions", CHAT, JSON_HEADERS)
    finally:
        fake.release()
        await upstream.aclose()


async def test_a_stream_broken_off_raises_upstream_error(fake: FakeUpstream) -> None:
    fake.truncate = "abort"
    upstream = HTTPUpstream(fake.base_url)
    body = orjson.dumps({**orjson.loads(CHAT), "stream": True})
    try:
        reply = await upstream.post("/chat/completions", body, JSON_HEADERS)
        assert reply.status == 200
        with pytest.raises(UpstreamError, match="broke off"):
            async for _chunk in reply.iter_bytes():
                pass
        await reply.aclose()
    finally:
        await upstream.aclose()


def test_repeated_response_headers_are_joined() -> None:
    single = CIMultiDict([("Content-Type", "application/json"), ("X-A", "1")])
    assert _joined(single) is single
    repeated = CIMultiDict([("Set-Cookie", "a=1"), ("set-cookie", "b=2"), ("X-A", "1")])
    joined = _joined(repeated)
    assert joined["set-cookie"] == "a=1, b=2"
    assert {k.lower(): v for k, v in joined.items()} == {"set-cookie": "a=1, b=2", "x-a": "1"}
