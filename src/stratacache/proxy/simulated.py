"""A SIMULATED OpenAI-compatible upstream for ``strata demo``: no API key, no network, fake answers.

:class:`SimulatedProvider` is a plain ASGI app that answers ``/chat/completions`` (plain and
streamed, usage chunk included when asked), ``/embeddings`` and ``/models``, with latencies shaped
like a real provider's: a time to first token of a few hundred milliseconds, then a steady trickle
of chunks. Every answer says it is simulated. The demo serves it on a loopback port and points the
proxy at it, so the demo's misses go through the same HTTP client as production's. It exists so a
new user can watch the cache work before pointing it at a real provider; it is not a test double
(the tests use their own fake server) and nothing else in stratacache uses it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import struct
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

__all__ = ["SIMULATED_LABEL", "SimulatedProvider"]

SIMULATED_LABEL = "SIMULATED"
"""Printed wherever the simulated upstream's output is shown."""

_SENTENCES = (
    "Caching answers that do not change saves both time and money.",
    "A deterministic request, with temperature zero, can be answered again from a store.",
    "Streaming replies are recorded chunk by chunk and replayed exactly.",
    "Identical requests that arrive together are sent upstream once.",
    "Every stored answer is signed, so a tampered record is never served.",
    "Tenants are kept apart by a hash of their credential.",
    "The embedded store survives a restart of the proxy.",
    "Stale answers can be served while a fresh one is fetched.",
)


Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class _Answer:
    """One answer: a status and a body sent in pieces, each after its pause."""

    __slots__ = ("content_type", "delays", "pieces", "status")

    def __init__(
        self,
        status: int,
        pieces: list[bytes],
        delays: list[float] | None = None,
        content_type: str = "application/json",
    ) -> None:
        self.status = status
        self.pieces = pieces
        self.delays = delays or [0.0] * len(pieces)
        self.content_type = content_type


class SimulatedProvider:
    """A SIMULATED provider with realistic latency, as an ASGI app.

    :param latency_scale: multiplies every delay (0: instant, for scripted runs).
    :param first_token_s: mean time to the first token (or to a plain answer's start).
    :param per_chunk_s: mean time between streamed chunks.
    :param rng: randomness for the latency jitter (seeded for reproducible runs).
    :param sleep: the coroutine that waits (``asyncio.sleep``).
    """

    def __init__(
        self,
        *,
        latency_scale: float = 1.0,
        first_token_s: float = 0.35,
        per_chunk_s: float = 0.012,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if latency_scale < 0:
            raise ValueError("latency_scale must be >= 0")
        self._scale = latency_scale
        self._first = first_token_s
        self._per_chunk = per_chunk_s
        self._rng = rng or random.Random(0)
        self._sleep = sleep
        self.calls = 0
        """How many requests reached the simulated provider."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one ASGI connection scope (HTTP; lifespan is acknowledged)."""
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        answer = await self.answer(scope["method"], scope["path"], b"".join(chunks))
        await send(
            {
                "type": "http.response.start",
                "status": answer.status,
                "headers": [(b"content-type", answer.content_type.encode())],
            }
        )
        for piece, delay in zip(answer.pieces, answer.delays, strict=True):
            if delay > 0:
                await self._sleep(delay)
            await send({"type": "http.response.body", "body": piece, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def answer(self, method: str, path: str, raw: bytes) -> _Answer:
        """Answer one request as a provider would (after a realistic wait)."""
        self.calls += 1
        path = path.rstrip("/")
        body: dict[str, Any] = {}
        if method == "POST":
            try:
                body = json.loads(raw) if raw else {}
            except ValueError:
                return _error(400, "the SIMULATED upstream got invalid JSON")
            if not isinstance(body, dict):
                return _error(400, "the SIMULATED upstream wants a JSON object")
        if path.endswith("/chat/completions") and method == "POST":
            return await self._chat(body)
        if path.endswith("/embeddings") and method == "POST":
            await self._wait(self._first * 0.4)
            return _json(200, _embeddings(body))
        if path.endswith("/models"):
            return _json(200, {"object": "list", "data": [_model("gpt-4o-mini")]})
        return _error(404, f"the SIMULATED upstream does not serve {method} {path}")

    async def _wait(self, mean: float) -> None:
        delay = self._delay(mean)
        if delay > 0:
            await self._sleep(delay)

    def _delay(self, mean: float) -> float:
        return self._scale * mean * self._rng.uniform(0.7, 1.3)

    async def _chat(self, body: dict[str, Any]) -> _Answer:
        messages = body.get("messages") or []
        prompt = json.dumps(messages)
        digest = hashlib.sha256(prompt.encode()).digest()
        count = 3 + digest[0] % 4
        text = f"[{SIMULATED_LABEL}] " + " ".join(
            _SENTENCES[(digest[i] + i) % len(_SENTENCES)] for i in range(count)
        )
        model = str(body.get("model") or "gpt-4o-mini")
        serial = self.calls
        created = int(time.time())
        usage = {
            "prompt_tokens": max(1, len(prompt) // 4),
            "completion_tokens": max(1, len(text) // 4),
        }
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        common = {
            "id": f"chatcmpl-simulated-{serial}",
            "created": created,
            "model": model,
            "system_fingerprint": "fp_simulated",
        }
        if not body.get("stream"):
            await self._wait(self._first + self._per_chunk * len(text.split()))
            message = {"role": "assistant", "content": text, "refusal": None}
            choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}
            return _json(
                200, {**common, "object": "chat.completion", "choices": [choice], "usage": usage}
            )
        words = text.split(" ")
        deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
        deltas += [{"content": w if i == 0 else " " + w} for i, w in enumerate(words)]
        chunks = [
            {
                **common,
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": d, "logprobs": None, "finish_reason": None}],
            }
            for d in deltas
        ]
        chunks.append(
            {
                **common,
                "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}],
            }
        )
        if (body.get("stream_options") or {}).get("include_usage"):
            chunks = [{**c, "usage": None} for c in chunks]
            chunks.append(
                {**common, "object": "chat.completion.chunk", "choices": [], "usage": usage}
            )
        pieces = [f"data: {json.dumps(c)}\n\n".encode() for c in chunks] + [b"data: [DONE]\n\n"]
        delays = [self._delay(self._first)] + [self._delay(self._per_chunk) for _ in pieces[1:]]
        return _Answer(200, pieces, delays, content_type="text/event-stream")


def _embeddings(body: dict[str, Any]) -> dict[str, Any]:
    raw = body.get("input")
    items = [raw] if isinstance(raw, str) else list(raw or [])
    data = []
    for index, item in enumerate(items):
        seed = hashlib.sha256(json.dumps(item).encode()).digest()
        vector = [struct.unpack("<f", struct.pack("<f", (b - 128) / 128))[0] for b in seed[:16]]
        data.append({"object": "embedding", "index": index, "embedding": vector})
    tokens = sum(max(1, len(json.dumps(i)) // 4) for i in items)
    return {
        "object": "list",
        "data": data,
        "model": body.get("model", "text-embedding-3-small"),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def _model(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "simulated"}


def _json(status: int, payload: Any) -> _Answer:
    return _Answer(status, [json.dumps(payload).encode()])


def _error(status: int, message: str) -> _Answer:
    return _json(status, {"error": {"message": message, "type": "simulated", "code": status}})
