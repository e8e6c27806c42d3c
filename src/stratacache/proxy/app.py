"""The caching proxy: a thin starlette shell over :class:`stratacache.llm.cache.LLMCache`.

Routes:

* ``POST /v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``, ``/v1/responses``: through
  the cache. The body is read with a size limit (rejected while reading, before it is buffered
  whole), must be a JSON object, and is answered with the cache's ``X-Cache`` headers.
* every other ``/v1/*`` request: passed to the upstream untouched, bodies streamed both ways.
* ``GET /healthz``, ``GET /metrics`` (Prometheus text), ``GET /stats`` (the same numbers as JSON,
  with the semantic layer's counts, shadow observations and recommended threshold under
  ``semantic``).
* the admin endpoints of :mod:`stratacache.proxy.admin`.

Every error the proxy itself produces has the OpenAI shape, ``{"error": {"message", "type",
"param", "code"}}``, so SDKs raise their usual exceptions; nothing about a failed request is cached
and the proxy keeps serving.

:func:`create_app` builds everything from a :class:`~stratacache.config.Settings`: the embedded
chain (in-process L0, then SQLite under ``data_dir``), the signing key (created on first start), the
upstream client, the metrics and, when the ``semantic`` extra is installed (and ``semantic`` is not
false), the semantic layer (``stratacache.llm.semantic``): its embedder loads in a thread once the
server has started, and exact caching serves meanwhile; its vectors are saved beside the SQLite
file at shutdown. ``clock`` and ``embedder`` are injectable for tests.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    ItemsView,
    Iterable,
    Iterator,
    Mapping,
)
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute
from starlette.routing import Route as Endpoint

from stratacache.config import Settings
from stratacache.errors import (
    ConfigError,
    RequestError,
    StrataError,
    TierError,
    UpstreamError,
    UpstreamTimeoutError,
)
from stratacache.llm.cache import LLMCache, LLMRequest, route_path
from stratacache.llm.factory import build_cache
from stratacache.llm.keys import Route
from stratacache.llm.semantic import DeferredIndex, SemanticLayer, semantic_from_settings
from stratacache.observability.metrics import Metrics
from stratacache.observability.pricing import PriceTable
from stratacache.proxy.admin import admin_routes, start_event_consumer
from stratacache.proxy.dashboard import dashboard_route
from stratacache.proxy.headers import request_headers_for_upstream, response_headers_for_client
from stratacache.proxy.responses import json_error
from stratacache.proxy.upstream import ForwardingUpstream, HTTPUpstream, UpstreamTimeouts
from stratacache.tiers.base import Clock
from stratacache.tiers.chain import TierChain

if TYPE_CHECKING:
    from stratacache.semantic.base import Embedder

__all__ = ["Proxy", "build_proxy", "create_app", "json_error"]

logger = logging.getLogger("stratacache.proxy")

_JSON_TYPES = ("application/json",)
_BODYLESS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})
# Set by the proxy for its own responses; the upstream's copies would be duplicates.
_OWN_HEADERS = frozenset({"content-type", "date", "server"})


@dataclass(frozen=True, slots=True)
class Proxy:
    """The parts one proxy app runs on; ``app.state.proxy`` holds it."""

    settings: Settings
    """What the app was built from."""
    cache: LLMCache
    """The cache the cached routes go through."""
    tiers: TierChain
    """The storage chain (memory, then SQLite)."""
    upstream: ForwardingUpstream
    """The provider client (also used for passthrough)."""
    metrics: Metrics
    """The app's own metrics registry."""
    vectors: DeferredIndex | None = None
    """The semantic layer's vector index (saved at shutdown), if semantic caching is on."""

    @property
    def semantic(self) -> SemanticLayer | None:
        """The semantic layer, if semantic caching is on."""
        return self.cache.semantic

    async def start(self) -> None:
        """Start background work that must not delay serving: loading the embedding model."""
        layer = self.cache.semantic
        if layer is not None and not layer.ready:
            await layer.warm_up()

    async def aclose(self) -> None:
        """Stop background work, save the vectors, close the upstream client and the tiers."""
        await self.cache.aclose()
        if self.vectors is not None:
            try:
                self.vectors.save()
            except TierError as exc:  # the records are safe; only the index must be rebuilt
                logger.warning("could not save the semantic index: %s", exc)
        await self.upstream.aclose()
        await self.tiers.close()


def build_proxy(
    settings: Settings,
    *,
    clock: Clock | None = None,
    embedder: Embedder | None = None,
) -> Proxy:
    """Build the embedded stack for ``settings``: memory -> SQLite tiers, signed records, upstream,
    and the semantic layer when it is on.

    ``clock`` (wall-clock seconds) drives record times and tier expiry; ``embedder`` replaces the
    semantic layer's configured one.
    """
    import time

    from stratacache.tiers.factory import build_chain

    now = clock or time.time
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    tiers = build_chain(settings, clock=now)
    upstream = HTTPUpstream(
        settings.upstream,
        timeouts=UpstreamTimeouts(
            connect=settings.upstream_connect_timeout, read=settings.upstream_timeout
        ),
        max_connections=settings.upstream_max_connections,
    )
    metrics = Metrics(PriceTable.default().with_overrides(settings.pricing))
    try:
        semantic = semantic_from_settings(settings, tiers, clock=now, embedder=embedder)
    except StrataError as exc:
        raise ConfigError(f"semantic caching: {exc}") from None
    cache = build_cache(
        settings,
        upstream,
        clock=now,
        observer=metrics,
        tiers=tiers,
        semantic=None if semantic is None else semantic[0],
    )
    if semantic is not None:
        metrics.registry.register(SemanticCollector(semantic[0]))
    return Proxy(
        settings=settings,
        cache=cache,
        tiers=tiers,
        upstream=upstream,
        metrics=metrics,
        vectors=None if semantic is None else semantic[1],
    )


def create_app(
    settings: Settings,
    *,
    clock: Clock | None = None,
    embedder: Embedder | None = None,
) -> Starlette:
    """The proxy as an ASGI app. Its resources are released when the server's lifespan ends."""
    proxy = build_proxy(settings, clock=clock, embedder=embedder)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        import asyncio

        starting = asyncio.get_running_loop().create_task(proxy.start())
        events = start_event_consumer(settings, proxy.cache)
        _app.state.events = events  # the Redis event consumer, if one is configured
        try:
            yield
        finally:
            if events is not None:
                await events.aclose()
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
            await proxy.aclose()

    routes: list[BaseRoute] = [
        Endpoint(f"/v1{route_path(route)}", _cached(proxy, route), methods=["POST"])
        for route in Route
    ]
    routes += [
        Endpoint("/healthz", _health(proxy), methods=["GET"]),
        Endpoint("/metrics", _metrics(proxy), methods=["GET"]),
        Endpoint("/stats", _stats(proxy), methods=["GET"]),
        dashboard_route(),
        *admin_routes(proxy.cache, settings.admin_token, events=settings.cache_rules.events),
        Endpoint(
            "/v1/{path:path}",
            _passthrough(proxy),
            methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
        ),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_error, Exception: _internal_error},
    )
    app.state.proxy = proxy
    return app


# --- cached routes -------------------------------------------------------------------------------


class _TooLargeError(Exception):
    pass


async def _read_limited(request: Request, headers: Mapping[str, str], limit: int) -> bytes:
    """The request body, refusing (before buffering it) one longer than ``limit`` bytes."""
    declared = headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > limit:
        raise _TooLargeError
    # ASGI messages read directly: starlette's request.stream() is an async generator, a
    # measurable cost on a cache hit for what is nearly always one message.
    receive = request.receive
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            if message["type"] == "http.disconnect":
                raise ClientDisconnect
            continue
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise _TooLargeError
            parts.append(chunk)
        if not message.get("more_body", False):
            break
    return parts[0] if len(parts) == 1 else b"".join(parts)


class _RequestHeaders(Mapping[str, str]):
    """A request's headers, decoded once (starlette's ``Headers`` decodes on every ``items()``).

    Look-ups take any case and give the first value; :meth:`items` lists every occurrence, in
    order, as the cache controls need (a repeated ``Cache-Control`` is read in full).
    """

    __slots__ = ("_first", "_pairs")

    def __init__(self, raw: Iterable[tuple[bytes, bytes]]) -> None:
        # ASGI servers give header names in lower case.
        self._pairs = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in raw]
        first: dict[str, str] = {}
        for name, value in self._pairs:
            first.setdefault(name, value)
        self._first = first

    def __getitem__(self, name: str) -> str:
        return self._first[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._first

    def __iter__(self) -> Iterator[str]:
        return iter(self._first)

    def __len__(self) -> int:
        return len(self._first)

    def items(self) -> ItemsView[str, str]:
        """Every ``(name, value)``, repeated names included."""
        return _AllItems(self)

    @property
    def pairs(self) -> list[tuple[str, str]]:
        """Every ``(name, value)`` in order."""
        return self._pairs


class _AllItems(ItemsView[str, str]):
    _mapping: _RequestHeaders

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._mapping.pairs)

    def __len__(self) -> int:
        return len(self._mapping.pairs)


class _ForwardHeaders(Mapping[str, str]):
    """The headers to send upstream, filtered only if they are read: a cache hit never sends any."""

    __slots__ = ("_filtered", "_headers")

    def __init__(self, headers: _RequestHeaders) -> None:
        self._headers = headers
        self._filtered: dict[str, str] | None = None

    def _get(self) -> dict[str, str]:
        if self._filtered is None:
            self._filtered = request_headers_for_upstream(self._headers.pairs)
        return self._filtered

    def __getitem__(self, name: str) -> str:
        return self._get()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._get())

    def __len__(self) -> int:
        return len(self._get())


def _cached(proxy: Proxy, route: Route) -> Callable[[Request], Awaitable[Response]]:
    import orjson

    limit = proxy.settings.max_body_bytes

    async def endpoint(request: Request) -> Response:
        request_headers = _RequestHeaders(request.scope["headers"])
        content_type = request_headers.get("content-type")
        if content_type is not None:
            media = content_type.split(";", 1)[0].strip().lower()
            if media not in _JSON_TYPES and not media.endswith("+json"):
                return json_error(
                    415,
                    f"the request body must be JSON (Content-Type: application/json), "
                    f"not {media!r}",
                    type="invalid_request_error",
                    code="unsupported_media_type",
                )
        try:
            raw = await _read_limited(request, request_headers, limit)
        except _TooLargeError:
            return json_error(
                413,
                f"the request body is larger than the limit of {limit} bytes",
                type="invalid_request_error",
                code="request_too_large",
            )
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return json_error(
                400,
                f"the request body is not valid JSON: {exc}",
                type="invalid_request_error",
                code="invalid_json",
            )
        if not isinstance(body, dict):
            return json_error(
                400,
                "the request body must be a JSON object",
                type="invalid_request_error",
                code="invalid_json",
            )
        llm_request = LLMRequest(
            route=route,
            body=body,
            headers=request_headers,
            forward_headers=_ForwardHeaders(request_headers),
            raw=raw,
        )
        try:
            result = await proxy.cache.handle(llm_request)
        except RequestError as exc:
            return json_error(400, str(exc), type="invalid_request_error", code="invalid_request")
        headers = {
            name: value
            for name, value in response_headers_for_client(
                result.upstream_headers, body_decoded=True
            ).items()
            if name not in _OWN_HEADERS
        }
        headers.update(result.cache_headers)
        if result.stream is not None:
            return StreamingResponse(
                result.stream,
                status_code=result.status,
                headers=headers,
                media_type=result.media_type,
            )
        return Response(result.body, result.status, headers=headers, media_type=result.media_type)

    return endpoint


# --- passthrough ---------------------------------------------------------------------------------


def _passthrough(proxy: Proxy) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        has_body = (
            request.method not in _BODYLESS
            or request.headers.get("content-length", "0") != "0"
            or "transfer-encoding" in request.headers
        )
        try:
            reply = await proxy.upstream.forward(
                request.method,
                "/" + request.path_params["path"],
                query=request.url.query,
                headers=request_headers_for_upstream(request.headers.items(), keep_encoding=True),
                body=request.stream() if has_body else None,
            )
        except UpstreamTimeoutError as exc:
            return json_error(504, str(exc), type="upstream_timeout", code="upstream_timeout")
        except UpstreamError as exc:
            return json_error(502, str(exc), type="upstream_error", code="upstream_unavailable")
        headers = response_headers_for_client(reply.headers, body_decoded=False)
        media_type = headers.pop("content-type", None)
        for name in ("date", "server"):
            headers.pop(name, None)

        async def relay() -> AsyncIterator[bytes]:
            try:
                async for chunk in reply.iter_raw():
                    yield chunk
            finally:
                await reply.aclose()

        return StreamingResponse(
            relay(), status_code=reply.status, headers=headers, media_type=media_type
        )

    return endpoint


# --- health, metrics, stats ----------------------------------------------------------------------


def _health(proxy: Proxy) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        tiers = dict(proxy.tiers.health)
        return JSONResponse({"status": "ok" if all(tiers.values()) else "degraded", "tiers": tiers})

    return endpoint


def _metrics(proxy: Proxy) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        body, content_type = proxy.metrics.exposition()
        return Response(body, headers={"content-type": content_type})

    return endpoint


def _stats(proxy: Proxy) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        stats: dict[str, Any] = proxy.metrics.snapshot()
        stats["tiers"] = dict(proxy.tiers.health)
        stats["in_flight"] = proxy.cache.in_flight
        stats["pending_writes"] = proxy.cache.pending_writes
        layer = proxy.cache.semantic
        stats["semantic"] = {"mode": "off"} if layer is None else layer.stats()
        return JSONResponse(stats)

    return endpoint


class SemanticCollector:
    """Prometheus families for a :class:`~stratacache.llm.semantic.SemanticLayer`, read at scrape.

    ``strata_semantic_lookups_total{result}`` (hit, below_threshold, vetoed),
    ``strata_semantic_vetoes_total{guard}``, ``strata_semantic_events_total{event}`` (served,
    promoted, indexed, stale_vectors, errors), ``strata_semantic_vectors``; in shadow mode also
    ``strata_semantic_shadow_total{outcome}`` (would_serve_matched, would_serve_wrong,
    not_served), the ``strata_semantic_shadow_similarity`` histogram of the best candidates, and
    ``strata_semantic_recommended_threshold`` once there is one.
    """

    def __init__(self, layer: SemanticLayer) -> None:
        self._layer = layer

    def collect(self) -> Iterator[Any]:
        """The families, from the layer's counters now."""
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        stats = self._layer.stats()
        lookups = CounterMetricFamily(
            "strata_semantic_lookups", "Semantic lookups by result.", labels=["result"]
        )
        for result in ("hits", "below_threshold", "vetoed"):
            lookups.add_metric([result.removesuffix("s")], stats[result])
        yield lookups
        vetoes = CounterMetricFamily(
            "strata_semantic_vetoes", "Candidates vetoed, by guard.", labels=["guard"]
        )
        for guard, count in sorted(stats["vetoes"].items()):
            vetoes.add_metric([guard], count)
        yield vetoes
        events = CounterMetricFamily(
            "strata_semantic_events", "What the semantic layer did.", labels=["event"]
        )
        for event in ("served", "promoted", "indexed", "stale_vectors", "errors"):
            events.add_metric([event], stats[event])
        yield events
        yield GaugeMetricFamily(
            "strata_semantic_vectors", "Vectors in the semantic index.", value=stats["vectors"]
        )
        if not self._layer.shadow:
            return
        log = self._layer.shadow_log
        shadow = stats["shadow"]
        outcomes = CounterMetricFamily(
            "strata_semantic_shadow",
            "Shadow-mode comparisons by outcome.",
            labels=["outcome"],
        )
        outcomes.add_metric(["would_serve_matched"], shadow["would_serve_matched"])
        outcomes.add_metric(["would_serve_wrong"], shadow["would_serve_wrong"])
        outcomes.add_metric(["not_served"], shadow["observations"] - shadow["would_serve"])
        yield outcomes
        buckets, count, total = log.histogram()
        yield HistogramMetricFamily(
            "strata_semantic_shadow_similarity",
            "Similarity of the best candidate of each shadow comparison.",
            buckets=[("+Inf" if b == float("inf") else str(b), c) for b, c in buckets],
            sum_value=total,
        )
        assert count == buckets[-1][1]
        recommended = shadow["recommended_threshold"]
        if recommended is not None:
            yield GaugeMetricFamily(
                "strata_semantic_recommended_threshold",
                "The threshold the shadow comparisons recommend.",
                value=recommended,
            )


# --- errors --------------------------------------------------------------------------------------


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    return json_error(exc.status_code, str(exc.detail), type=kind, code=exc.status_code)


async def _internal_error(request: Request, exc: Exception) -> Response:
    logger.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    if isinstance(exc, ConfigError):
        return json_error(500, str(exc), type="server_error", code="config")
    return json_error(500, "internal error in the caching proxy", type="server_error", code=500)
