"""The library face for the OpenAI SDK: ``cached(client)`` puts an :class:`LLMCache` under a client.

How it plugs in, and why this way. The SDK sends every request through an HTTP client it lets you
replace (``client.with_options(http_client=...)``). :func:`cached` returns such a copy of your
client whose HTTP transport answers the cached routes (``POST …/chat/completions``,
``…/completions``, ``…/embeddings``, ``…/responses``) through :meth:`LLMCache.handle`, exactly
as the proxy does, and passes every other request to the network untouched. The SDK's classes are
not subclassed and none of its methods are wrapped: its request building, retries, response
parsing, streaming (``Stream``/``AsyncStream``) and ``with_raw_response`` all work as they do
without a cache, and so do new endpoints and parameters in later SDK releases. Wrapping
``client.chat.completions.create`` instead would have meant re-implementing, per method and
twice (sync and async), what a request is and how a response is parsed and streamed: the
transport is the one seam where the SDK and the cache already speak the same language (HTTP
requests with JSON bodies and SSE responses). The keys, policy, signing, coalescing and replay are
the ones in :mod:`stratacache.llm.cache`; nothing here decides anything about caching.

Misses go to ``client.base_url`` through :class:`~stratacache.proxy.upstream.HTTPUpstream`. The
synchronous ``OpenAI`` client gets a transport that runs the same asynchronous cache on a private
event loop in a background thread (one per wrapped client), so there is one code path, not two.

The cache controls of the proxy work here too, as request headers (``extra_headers={"X-Cache-TTL":
"60", "X-Cache-Tags": "product:1"}``), and every response carries ``X-Cache`` (``HIT``,
``MISS``…), readable with ``client.chat.completions.with_raw_response.create(...)``.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import AsyncIterator, Coroutine, Iterator, Mapping
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, Final, TypeVar

from stratacache.errors import ConfigError, MissingExtraError, RequestError
from stratacache.llm.cache import (
    LLMCache,
    LLMRequest,
    RoutePolicy,
    derive_tenant_secret,
    error_body,
)
from stratacache.llm.keys import Route
from stratacache.llm.records import HmacSigner, RecordCodec
from stratacache.tiers.base import Clock, Tier
from stratacache.tiers.chain import TierChain

if TYPE_CHECKING:
    import openai

__all__ = ["cached"]

_C = TypeVar("_C", "openai.OpenAI", "openai.AsyncOpenAI")
_T = TypeVar("_T")

_ROUTES: Final = {"/" + route.value.replace(".", "/"): route for route in Route}
_ENCODING_HEADERS: Final = frozenset(
    {"content-length", "content-encoding", "transfer-encoding", "connection", "keep-alive"}
)


def _http() -> Any:
    """The HTTP library the installed SDK is built on (``httpx2`` in recent releases, else httpx)."""
    try:
        import httpx2
    except ImportError:
        try:
            import httpx
        except ImportError as exc:  # pragma: no cover - the SDK always brings one of them
            raise MissingExtraError("httpx", "openai") from exc
        return httpx
    return httpx2


def cached(
    client: _C,
    *,
    cache: Tier | None = None,
    key: bytes | None = None,
    routes: Mapping[Route, RoutePolicy] | None = None,
    share_across_tenants: bool = False,
    version: str = "",
    clock: Clock = time.time,
) -> _C:
    """Return a copy of ``client`` (``openai.OpenAI`` or ``openai.AsyncOpenAI``) that caches.

    :param cache: where answers live: any tier or :class:`~stratacache.tiers.TierChain` (default:
        an in-process :class:`~stratacache.tiers.MemoryTier` of 10,000 entries). Several wrapped
        clients may share one; closing a client does not close a cache you passed.
    :param key: the 32-byte key records are signed with and tenant ids derived from. Give the
        same key to every process sharing a durable or Redis cache (default: a random key, fine
        for an in-process cache).
    :param routes: the caching policy per route (TTL, admission mode, stale serving).
    :param share_across_tenants: let every API key share one set of entries.
    :param version: mixed into every key; change it to stop matching older answers.
    :param clock: wall-clock Unix seconds (tests pass a fake).
    :raises ConfigError: ``client`` is not an OpenAI SDK client, or a bad key.

    The original ``client`` is left as it was.
    """
    try:
        import openai
    except ImportError as exc:
        raise MissingExtraError("openai", "openai") from exc
    if not isinstance(client, openai.OpenAI | openai.AsyncOpenAI):
        raise ConfigError(
            f"cached() wraps openai.OpenAI or openai.AsyncOpenAI, not {type(client).__name__}"
        )
    from stratacache.proxy.upstream import HTTPUpstream, UpstreamTimeouts

    if key is None:
        key = secrets.token_bytes(32)
    if not isinstance(key, bytes) or len(key) != 32:
        raise ConfigError("the signing key must be 32 bytes")
    owns_tiers = cache is None
    if cache is None:
        from stratacache.tiers.memory import MemoryTier

        cache = MemoryTier(max_entries=10_000, clock=clock)
    chain = cache if isinstance(cache, TierChain) else TierChain([cache], clock=clock)
    upstream = HTTPUpstream(str(client.base_url), timeouts=UpstreamTimeouts(read=600.0))
    llm = LLMCache(
        chain,
        RecordCodec(HmacSigner(key)),
        upstream,
        tenant_secret=derive_tenant_secret(key),
        share_across_tenants=share_across_tenants,
        routes=routes,
        version=version,
        clock=clock,
    )
    http = _http()
    front = _Front(llm, upstream, client.base_url.path, owns_tiers=owns_tiers)
    if isinstance(client, openai.AsyncOpenAI):
        transport = _make_async_transport(http, front)
        return client.with_options(
            http_client=http.AsyncClient(transport=transport, timeout=client.timeout)
        )
    sync_transport = _make_sync_transport(http, front, _LoopThread())
    return client.with_options(
        http_client=http.Client(transport=sync_transport, timeout=client.timeout)
    )


class _Answer:
    """What the transport turns into an HTTP response: status, headers, a body or a stream."""

    __slots__ = ("body", "headers", "status", "stream")

    def __init__(
        self,
        status: int,
        headers: dict[str, str],
        body: bytes | None,
        stream: AsyncIterator[bytes] | None,
    ) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.stream = stream


class _Front:
    """The shell over :class:`LLMCache` both transports share: HTTP request in, answer out."""

    def __init__(self, cache: LLMCache, upstream: Any, base_path: str, *, owns_tiers: bool) -> None:
        self.cache = cache
        self.upstream = upstream
        self.base_path = base_path.rstrip("/")
        self.owns_tiers = owns_tiers

    def route(self, method: str, path: str) -> Route | None:
        """The cached route ``method path`` goes to, or ``None`` for a passthrough."""
        if method != "POST" or not path.startswith(self.base_path):
            return None
        return _ROUTES.get(path[len(self.base_path) :].rstrip("/"))

    async def answer(self, route: Route, headers: list[tuple[str, str]], raw: bytes) -> _Answer:
        """Answer one request to a cached route through the cache."""
        import orjson

        from stratacache.proxy.headers import request_headers_for_upstream

        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return _error(400, f"the request body is not valid JSON: {exc}")
        if not isinstance(body, dict):
            return _error(400, "the request body must be a JSON object")
        merged: dict[str, str] = {}
        for name, value in headers:
            lower = name.lower()
            merged[lower] = f"{merged[lower]}, {value}" if lower in merged else value
        request = LLMRequest(
            route=route,
            body=body,
            headers=merged,
            forward_headers=request_headers_for_upstream(headers),
            raw=raw,
        )
        try:
            result = await self.cache.handle(request)
        except RequestError as exc:
            return _error(400, str(exc))
        out = {
            name.lower(): value
            for name, value in result.upstream_headers.items()
            if name.lower() not in _ENCODING_HEADERS
        }
        out.update(result.cache_headers)
        out["content-type"] = result.media_type
        return _Answer(result.status, out, result.body, result.stream)

    async def aclose(self) -> None:
        """Stop the cache's background work; close the upstream, and the tiers if they are ours."""
        await self.cache.aclose()
        await self.upstream.aclose()
        if self.owns_tiers:
            await self.cache.tiers.close()


def _error(status: int, message: str) -> _Answer:
    body = error_body(message, type="invalid_request_error", code="invalid_request")
    return _Answer(status, {"content-type": "application/json"}, body, None)


def _make_async_transport(http: Any, front: _Front) -> Any:
    """An ``AsyncBaseTransport`` of the SDK's HTTP library that answers through ``front``."""

    class _AsyncStream(http.AsyncByteStream):  # type: ignore[misc]
        def __init__(self, chunks: AsyncIterator[bytes]) -> None:
            self._chunks = chunks

        async def __aiter__(self) -> AsyncIterator[bytes]:
            async for chunk in self._chunks:
                yield chunk

        async def aclose(self) -> None:
            close = getattr(self._chunks, "aclose", None)
            if close is not None:
                await close()

    class _AsyncCachingTransport(http.AsyncBaseTransport):  # type: ignore[misc]
        def __init__(self) -> None:
            self._inner = http.AsyncHTTPTransport()

        async def handle_async_request(self, request: Any) -> Any:
            route = front.route(request.method, request.url.path)
            if route is None:
                return await self._inner.handle_async_request(request)
            raw = await request.aread()
            answer = await front.answer(route, list(request.headers.multi_items()), raw)
            if answer.stream is not None:
                return http.Response(
                    answer.status,
                    headers=answer.headers,
                    stream=_AsyncStream(answer.stream),
                    request=request,
                )
            return http.Response(
                answer.status, headers=answer.headers, content=answer.body, request=request
            )

        async def aclose(self) -> None:
            await self._inner.aclose()
            await front.aclose()

    return _AsyncCachingTransport()


class _LoopThread:
    """A private event loop in a daemon thread, for running the async cache under a sync client."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="stratacache-openai", daemon=True
        )
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        """Run ``coro`` on the loop and wait for its result."""
        future: Future[_T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result()

    def stop(self) -> None:
        """Stop the loop and join its thread."""
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


def _make_sync_transport(http: Any, front: _Front, loop: _LoopThread) -> Any:
    """A ``BaseTransport`` that runs ``front`` on ``loop``, for the synchronous client."""

    class _SyncStream(http.SyncByteStream):  # type: ignore[misc]
        def __init__(self, chunks: AsyncIterator[bytes]) -> None:
            self._chunks = chunks

        def __iter__(self) -> Iterator[bytes]:
            while (chunk := loop.run(_next(self._chunks))) is not None:
                yield chunk

        def close(self) -> None:
            close = getattr(self._chunks, "aclose", None)
            if close is not None:
                loop.run(close())

    class _SyncCachingTransport(http.BaseTransport):  # type: ignore[misc]
        def __init__(self) -> None:
            self._inner = http.HTTPTransport()

        def handle_request(self, request: Any) -> Any:
            route = front.route(request.method, request.url.path)
            if route is None:
                return self._inner.handle_request(request)
            raw = request.read()
            headers = list(request.headers.multi_items())
            answer = loop.run(front.answer(route, headers, raw))
            if answer.stream is not None:
                return http.Response(
                    answer.status,
                    headers=answer.headers,
                    stream=_SyncStream(answer.stream),
                    request=request,
                )
            return http.Response(
                answer.status, headers=answer.headers, content=answer.body, request=request
            )

        def close(self) -> None:
            self._inner.close()
            try:
                loop.run(front.aclose())
            finally:
                loop.stop()

    return _SyncCachingTransport()


async def _next(chunks: AsyncIterator[bytes]) -> bytes | None:
    """The next chunk, or ``None`` at the end (an exception cannot end an iteration across threads)."""
    try:
        return await chunks.__anext__()
    except StopAsyncIteration:
        return None
