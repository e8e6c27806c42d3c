"""Tests for stratacache.proxy.server: uvicorn's protocol writing one event-loop turn at a time."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx

from stratacache.config import Settings
from stratacache.proxy.app import create_app
from stratacache.proxy.server import CoalescingTransport, http_protocol

from .conftest import ADMIN_TOKEN, FakeClock, RunningProxy
from .fake_upstream import FakeUpstream, ThreadedServer
from .helpers import CHAT as CHAT_BODY
from .helpers import client

CHAT: dict[str, Any] = dict(CHAT_BODY)

Far = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _connected() -> tuple[asyncio.Transport, Far, asyncio.Server]:
    """A real loopback TCP connection: our side's transport, and the far side's streams."""
    accepted: asyncio.Queue[Far] = asyncio.Queue()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await accepted.put((reader, writer))

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    transport, _protocol = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
    assert isinstance(transport, asyncio.Transport)
    return transport, await accepted.get(), server


async def _close(far: Far, server: asyncio.Server) -> None:
    far[1].close()
    await far[1].wait_closed()
    server.close()
    await server.wait_closed()


async def test_writes_of_one_turn_leave_together_and_in_order() -> None:
    transport, far, server = await _connected()
    loop = asyncio.get_running_loop()
    wrapped = CoalescingTransport(transport, loop)
    try:
        wrapped.write(b"HTTP/1.1 200 OK\r\n\r\n")
        wrapped.write(b"")
        wrapped.writelines([b"body ", bytearray(b"one")])
        # Nothing has reached the socket yet: it is all pending until the end of this turn.
        assert wrapped.get_write_buffer_size() == len(b"HTTP/1.1 200 OK\r\n\r\nbody one")
        assert transport.get_write_buffer_size() == 0
        await asyncio.sleep(0)
        assert wrapped.get_write_buffer_size() == 0
        wrapped.write(b" two")
        wrapped.close()  # sends what is pending first
        assert wrapped.is_closing()
        assert await far[0].read() == b"HTTP/1.1 200 OK\r\n\r\nbody one two"
    finally:
        await _close(far, server)


async def test_an_abort_drops_what_is_pending() -> None:
    transport, far, server = await _connected()
    wrapped = CoalescingTransport(transport, asyncio.get_running_loop())
    try:
        wrapped.write(b"sent")
        wrapped.flush()
        wrapped.write(b"dropped")
        wrapped.abort()
        await asyncio.sleep(0)  # the scheduled flush finds nothing to send
        received = b""
        while chunk := await far[0].read(100):
            received += chunk
        assert received == b"sent"
    finally:
        await _close(far, server)


def test_the_proxy_serves_through_the_coalescing_protocol(
    fake: FakeUpstream, tmp_path: Path, clock: FakeClock
) -> None:
    settings = Settings(
        upstream=fake.base_url,
        data_dir=tmp_path / "strata",
        admin_token=ADMIN_TOKEN,
        upstream_timeout=5.0,
    )
    app = create_app(settings, clock=clock)
    server = ThreadedServer(app, http=http_protocol())
    server.start()
    proxy = RunningProxy(server, app.state.proxy, clock)
    try:
        sdk = client(proxy)
        miss = sdk.chat.completions.with_raw_response.create(**CHAT)
        hit = sdk.chat.completions.with_raw_response.create(**CHAT)
        assert (miss.headers["x-cache"], hit.headers["x-cache"]) == ("MISS", "HIT")
        assert hit.parse().choices[0].message == miss.parse().choices[0].message
        streamed = sdk.chat.completions.create(**CHAT, stream=True)
        text = "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices)
        assert text == miss.parse().choices[0].message.content
        with httpx.Client(base_url=proxy.root) as http:  # one kept-alive connection
            for _ in range(3):
                assert http.get("/healthz").json()["status"] == "ok"
            echoed = http.post("/v1/echo", content=b"x" * 100_000)
            assert echoed.content == b"x" * 100_000
        assert fake.calls["/v1/chat/completions"] == 1
    finally:
        server.stop()
