"""A fake OpenAI-compatible upstream on a loopback port: the only fake the proxy tests use.

It is a real HTTP server (starlette on uvicorn, in a background thread) so the proxy under test talks to
it exactly as it would talk to a provider: over TCP, with chunked SSE streams. Every answer is a
deterministic function of the request plus a per-server call serial (``#<n>`` in the text and ``-<n>``
in the id), so a test can tell a replayed answer (same serial) from a fresh one (a new serial).

A test steers it through plain attributes, reset between tests by :meth:`FakeUpstream.reset`:

* ``fail_status``: answer every call with this HTTP status and an OpenAI-style error body;
* ``hang``: never answer (until :meth:`release` or shutdown), to exercise the proxy's timeout;
* ``truncate``: end a stream before its terminal event, ``"clean"`` (a normal end of body) or
  ``"abort"`` (the connection is dropped mid-body);
* ``finish_reason``: the finish reason reported (``"length"`` makes an unstorable answer);
* ``hold_after``: stream this many chunks, then wait for :meth:`release` before the rest (a
  non-streamed answer waits before anything is sent), so a test can gather concurrent requests
  behind one slow upstream call. Once released, the gate stays open (for requests that reach it
  later too) until :meth:`reset`.
* ``fixed_answer``: the text of every chat answer (no serial in it), so two calls can agree.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import socket
import struct
import threading
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

CREATED_BASE = 1_700_000_000
MODELS = ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small")


@dataclass
class Call:
    """One request the fake received."""

    path: str
    body: dict[str, Any]
    headers: dict[str, str]
    raw: bytes = b""


@dataclass
class FakeUpstream:
    """The fake server's state and controls; start it with :func:`running_fake_upstream`."""

    fail_status: int | None = None
    hang: bool = False
    truncate: Literal["clean", "abort"] | None = None
    finish_reason: str = "stop"
    hold_after: int | None = None
    fixed_answer: str | None = None
    refuse_keys: set[str] = field(default_factory=set)
    """Bearer tokens answered 401, as OpenAI answers a revoked key (after the gate, if any)."""
    calls: Counter[str] = field(default_factory=Counter)
    log: list[Call] = field(default_factory=list)
    port: int = 0
    _serial: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _release: asyncio.Event | None = None
    _held: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL, ending in ``/v1``."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def held(self) -> int:
        """How many responses are waiting at the ``hold_after`` / ``hang`` gate."""
        return self._held

    def reset(self) -> None:
        """Forget calls and restore the default behaviour (the serial keeps counting)."""
        self.release()
        loop = self._loop
        if loop is not None and not loop.is_closed():

            async def fresh_gate() -> None:
                self._release = asyncio.Event()

            # Wait for the swap, so no request of the next test can see the old, open gate.
            asyncio.run_coroutine_threadsafe(fresh_gate(), loop).result(timeout=5)
        with self._lock:
            self.fail_status = None
            self.hang = False
            self.truncate = None
            self.finish_reason = "stop"
            self.hold_after = None
            self.fixed_answer = None
            self.refuse_keys = set()
            self.calls.clear()
            self.log.clear()

    def release(self) -> None:
        """Open the gate: held and hanging responses continue, later ones pass (thread-safe)."""
        loop, event = self._loop, self._release
        if loop is not None and event is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop stopped between the check and now
                loop.call_soon_threadsafe(event.set)

    async def _wait_gate(self) -> None:
        gate = self._release
        assert gate is not None
        self._held += 1
        try:
            await gate.wait()
        finally:
            self._held -= 1

    def _next_serial(
        self, path: str, body: dict[str, Any], headers: dict[str, str], raw: bytes = b""
    ) -> int:
        with self._lock:
            self._serial += 1
            self.calls[path] += 1
            self.log.append(Call(path, body, headers, raw))
            return self._serial

    # --- the ASGI app -----------------------------------------------------------------------------

    def app(self) -> Starlette:
        """The starlette app serving the fake API under ``/v1``."""

        async def startup() -> None:
            self._loop = asyncio.get_running_loop()
            self._release = asyncio.Event()

        routes = [
            Route("/v1/chat/completions", self._chat, methods=["POST"]),
            Route("/v1/completions", self._completions, methods=["POST"]),
            Route("/v1/embeddings", self._embeddings, methods=["POST"]),
            Route("/v1/responses", self._responses, methods=["POST"]),
            Route("/v1/models", self._models, methods=["GET"]),
            Route("/v1/echo", self._echo, methods=["POST", "PUT"]),
        ]

        @contextlib.asynccontextmanager
        async def lifespan(_app: Starlette) -> AsyncIterator[None]:
            await startup()
            yield

        return Starlette(routes=routes, lifespan=lifespan)

    async def _begin(self, request: Request, path: str) -> tuple[int, dict[str, Any]] | Response:
        raw = await request.body()
        body = json.loads(raw) if raw else {}
        serial = self._next_serial(path, body, dict(request.headers), raw)
        if self.hang:
            await self._wait_gate()
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        if token in self.refuse_keys:
            return JSONResponse(
                {
                    "error": {
                        "message": "Incorrect API key provided.",
                        "type": "invalid_request_error",
                        "code": "invalid_api_key",
                    }
                },
                status_code=401,
            )
        if self.fail_status is not None:
            return JSONResponse(
                {
                    "error": {
                        "message": f"fake upstream failure #{serial}",
                        "type": "server_error",
                        "code": None,
                    }
                },
                status_code=self.fail_status,
            )
        return serial, body

    async def _chat(self, request: Request) -> Response:
        begun = await self._begin(request, "/v1/chat/completions")
        if isinstance(begun, Response):
            return begun
        serial, body = begun
        model = body.get("model", "gpt-4o-mini")
        prompt_tokens = _words(json.dumps(body.get("messages", [])))
        tools = body.get("tools") or []
        usage_wanted = bool((body.get("stream_options") or {}).get("include_usage"))
        common = {
            "id": f"chatcmpl-fake-{serial}",
            "created": CREATED_BASE + serial,
            "model": model,
            "system_fingerprint": "fp_fake",
        }
        if tools:
            name = tools[0]["function"]["name"]
            arguments = json.dumps({"city": "Paris", "serial": serial})
            completion_tokens = _words(arguments)
            finish = "tool_calls" if self.finish_reason == "stop" else self.finish_reason
            message: dict[str, Any] = {
                "role": "assistant",
                "content": None,
                "refusal": None,
                "tool_calls": [
                    {
                        "id": f"call_{serial}",
                        "type": "function",
                        "function": {"name": name, "arguments": arguments},
                    }
                ],
            }
        else:
            text = self.fixed_answer or _answer(body, serial)
            completion_tokens = _words(text)
            finish = self.finish_reason
            message = {"role": "assistant", "content": text, "refusal": None}
        usage = _usage(prompt_tokens, completion_tokens)
        if not body.get("stream"):
            await self._hold_if_asked()
            return JSONResponse(
                {
                    **common,
                    "object": "chat.completion",
                    "choices": [
                        {"index": 0, "message": message, "logprobs": None, "finish_reason": finish}
                    ],
                    "usage": usage,
                    "service_tier": "default",
                }
            )
        chunks = list(_chat_chunks(common, message, finish))
        if usage_wanted:
            chunks = [{**c, "usage": None} for c in chunks]
            chunks.append(
                {**common, "object": "chat.completion.chunk", "choices": [], "usage": usage}
            )
        return self._sse([(None, c) for c in chunks], done=True)

    async def _completions(self, request: Request) -> Response:
        begun = await self._begin(request, "/v1/completions")
        if isinstance(begun, Response):
            return begun
        serial, body = begun
        model = body.get("model", "gpt-3.5-turbo-instruct")
        text = _answer({"prompt": body.get("prompt")}, serial)
        usage = _usage(_words(json.dumps(body.get("prompt"))), _words(text))
        common = {
            "id": f"cmpl-fake-{serial}",
            "object": "text_completion",
            "created": CREATED_BASE + serial,
            "model": model,
        }
        if not body.get("stream"):
            await self._hold_if_asked()
            choice = {
                "text": text,
                "index": 0,
                "logprobs": None,
                "finish_reason": self.finish_reason,
            }
            return JSONResponse({**common, "choices": [choice], "usage": usage})
        chunks: list[dict[str, Any]] = [
            {
                **common,
                "choices": [{"text": piece, "index": 0, "logprobs": None, "finish_reason": None}],
            }
            for piece in _pieces(text)
        ]
        chunks.append(
            {
                **common,
                "choices": [
                    {"text": "", "index": 0, "logprobs": None, "finish_reason": self.finish_reason}
                ],
            }
        )
        if (body.get("stream_options") or {}).get("include_usage"):
            chunks = [{**c, "usage": None} for c in chunks]
            chunks.append({**common, "choices": [], "usage": usage})
        return self._sse([(None, c) for c in chunks], done=True)

    async def _embeddings(self, request: Request) -> Response:
        begun = await self._begin(request, "/v1/embeddings")
        if isinstance(begun, Response):
            return begun
        _serial, body = begun
        raw_input = body.get("input")
        items: list[Any]
        if isinstance(raw_input, str) or (
            isinstance(raw_input, list) and raw_input and isinstance(raw_input[0], int)
        ):
            items = [raw_input]
        else:
            items = list(raw_input or [])
        dims = int(body.get("dimensions") or 8)
        data = []
        tokens = 0
        for index, item in enumerate(items):
            vector = embedding_for(item, dims)
            tokens += len(item) if isinstance(item, list) else _words(item)
            if body.get("encoding_format") == "base64":
                encoded: Any = base64.b64encode(struct.pack(f"<{dims}f", *vector)).decode()
            else:
                encoded = vector
            data.append({"object": "embedding", "index": index, "embedding": encoded})
        await self._hold_if_asked()
        return JSONResponse(
            {
                "object": "list",
                "data": data,
                "model": body.get("model", "text-embedding-3-small"),
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )

    async def _responses(self, request: Request) -> Response:
        begun = await self._begin(request, "/v1/responses")
        if isinstance(begun, Response):
            return begun
        serial, body = begun
        text = _answer({"messages": [{"content": body.get("input")}]}, serial)
        prompt_tokens = _words(json.dumps(body.get("input")))
        item_id = f"msg_fake_{serial}"
        part = {"type": "output_text", "text": text, "annotations": []}
        item = {
            "type": "message",
            "id": item_id,
            "status": "completed",
            "role": "assistant",
            "content": [part],
        }
        base = {
            "id": f"resp_fake_{serial}",
            "object": "response",
            "created_at": CREATED_BASE + serial,
            "model": body.get("model", "gpt-4o-mini"),
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
        }
        final = {
            **base,
            "status": "completed",
            "output": [item],
            "usage": {
                "input_tokens": prompt_tokens,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": _words(text),
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": prompt_tokens + _words(text),
            },
        }
        if not body.get("stream"):
            await self._hold_if_asked()
            return JSONResponse(final)
        events: list[dict[str, Any]] = [
            {
                "type": "response.created",
                "response": {**base, "status": "in_progress", "output": []},
            },
            {
                "type": "response.in_progress",
                "response": {**base, "status": "in_progress", "output": []},
            },
            {
                "type": "response.output_item.added",
                "output_index": 0,
                "item": {**item, "status": "in_progress", "content": []},
            },
            {
                "type": "response.content_part.added",
                "item_id": item_id,
                "output_index": 0,
                "content_index": 0,
                "part": {"type": "output_text", "text": "", "annotations": []},
            },
        ]
        events += [
            {
                "type": "response.output_text.delta",
                "item_id": item_id,
                "output_index": 0,
                "content_index": 0,
                "delta": piece,
            }
            for piece in _pieces(text)
        ]
        events += [
            {
                "type": "response.output_text.done",
                "item_id": item_id,
                "output_index": 0,
                "content_index": 0,
                "text": text,
            },
            {
                "type": "response.content_part.done",
                "item_id": item_id,
                "output_index": 0,
                "content_index": 0,
                "part": part,
            },
            {"type": "response.output_item.done", "output_index": 0, "item": item},
            {"type": "response.completed", "response": final},
        ]
        numbered = [{**e, "sequence_number": i} for i, e in enumerate(events)]
        return self._sse([(e["type"], e) for e in numbered], done=False)

    async def _models(self, request: Request) -> Response:
        self._next_serial("/v1/models", {}, dict(request.headers))
        return JSONResponse(
            {
                "object": "list",
                "data": [
                    {"id": m, "object": "model", "created": CREATED_BASE, "owned_by": "fake"}
                    for m in MODELS
                ],
            },
            headers={"x-fake-upstream": "yes"},
        )

    async def _echo(self, request: Request) -> Response:
        # Passthrough checks: returns what it was sent, streamed back in pieces.
        raw = await request.body()
        self._next_serial("/v1/echo", {}, dict(request.headers))

        async def body() -> AsyncIterator[bytes]:
            for i in range(0, len(raw), 7):
                yield raw[i : i + 7]

        return StreamingResponse(
            body(),
            media_type=request.headers.get("content-type", "application/octet-stream"),
            headers={"x-echo-query": request.url.query, "x-echo-method": request.method},
        )

    async def _hold_if_asked(self) -> None:
        if self.hold_after is not None:
            await self._wait_gate()

    def _sse(self, events: list[tuple[str | None, dict[str, Any]]], *, done: bool) -> Response:
        truncate = self.truncate
        hold_after = self.hold_after
        if truncate is not None:
            events = events[: max(1, len(events) // 2)]

        async def body() -> AsyncIterator[bytes]:
            for sent, (name, data) in enumerate(events):
                if hold_after is not None and sent == hold_after:
                    await self._wait_gate()
                prefix = f"event: {name}\n" if name else ""
                yield f"{prefix}data: {json.dumps(data)}\n\n".encode()
            if truncate == "abort":
                raise ConnectionAbortedError("fake upstream drops the stream")
            if truncate is None and done:
                yield b"data: [DONE]\n\n"

        return StreamingResponse(body(), media_type="text/event-stream")


# --- deterministic content ----------------------------------------------------------------------


def _answer(body: dict[str, Any], serial: int) -> str:
    messages = body.get("messages")
    if messages:
        last = messages[-1].get("content")
        topic = last if isinstance(last, str) else json.dumps(last)
    else:
        topic = json.dumps(body.get("prompt"))
    return f"Answer #{serial}: you asked about {topic[:60]} and here is a fine reply."


def _words(text: str) -> int:
    return max(1, len(text.split()))


def _usage(prompt: int, completion: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _pieces(text: str) -> list[str]:
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def _chat_chunks(
    common: dict[str, Any], message: dict[str, Any], finish: str
) -> Iterator[dict[str, Any]]:
    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {
            **common,
            "object": "chat.completion.chunk",
            "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        }

    yield chunk({"role": "assistant", "content": "" if message.get("content") else None})
    if message.get("content"):
        for piece in _pieces(message["content"]):
            yield chunk({"content": piece})
    for i, call in enumerate(message.get("tool_calls") or []):
        yield chunk(
            {
                "tool_calls": [
                    {
                        "index": i,
                        "id": call["id"],
                        "type": "function",
                        "function": {"name": call["function"]["name"], "arguments": ""},
                    }
                ]
            }
        )
        arguments = call["function"]["arguments"]
        for start in range(0, len(arguments), 9):
            yield chunk(
                {
                    "tool_calls": [
                        {"index": i, "function": {"arguments": arguments[start : start + 9]}}
                    ]
                }
            )
    yield chunk({}, finish)


def embedding_for(item: str | list[int], dims: int) -> list[float]:
    """The fake's embedding of one input item: float32-exact values from its SHA-256."""
    seed = hashlib.sha256(json.dumps(item).encode()).digest()
    raw = (seed * (dims // 8 + 1))[: dims * 4]
    out = []
    for i in range(dims):
        (value,) = struct.unpack("<f", struct.pack("<f", (raw[i] - 128) / 128.0))
        out.append(value)
    return out


# --- running it -----------------------------------------------------------------------------------


class ThreadedServer:
    """Serve an ASGI app with uvicorn on a free loopback port in a background thread."""

    def __init__(self, app: Any, **config: Any) -> None:
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted connections only when the
        # listening socket says so; without it each response waits ~40 ms for a delayed ACK.
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        options: dict[str, Any] = {
            "log_level": "warning",
            "ws": "none",
            "lifespan": "on",
            "timeout_graceful_shutdown": 2,
            **config,
        }
        self._server = uvicorn.Server(uvicorn.Config(app, **options))
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    def start(self) -> None:
        """Start serving; returns once the server accepts connections."""
        self._thread.start()
        started = threading.Event()

        def watch() -> None:
            while not self._server.started and self._thread.is_alive():
                started.wait(0.005)
            started.set()

        watch()
        if not self._server.started:
            raise RuntimeError("the test server did not start")

    def stop(self) -> None:
        """Stop serving and wait for the thread to end."""
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()


@contextlib.contextmanager
def running_fake_upstream() -> Iterator[FakeUpstream]:
    """Run a :class:`FakeUpstream` on a loopback port for the duration of the ``with`` block."""
    fake = FakeUpstream()
    server = ThreadedServer(fake.app(), loop="asyncio")
    fake.port = server.port
    server.start()
    try:
        yield fake
    finally:
        fake.release()
        server.stop()
