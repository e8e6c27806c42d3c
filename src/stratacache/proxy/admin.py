"""The admin API: invalidation endpoints behind a bearer token, and the event hooks.

``DELETE /admin/keys/{key}``, ``DELETE /admin/namespaces/{namespace}``, ``DELETE /admin/tags/{tag}``,
``POST /admin/flush`` and ``POST /admin/events``. Each requires ``Authorization: Bearer <admin
token>``; without a configured token the endpoints are disabled (403) rather than open. The token
is compared in constant time.

``POST /admin/events`` is the webhook of :mod:`stratacache.llm.events`: its body is one event per
line (``product_updated 123``), or JSON (an event object or an array of them); the ``[[events]]``
rules of the config turn them into tag and namespace invalidations. The answer lists what was
invalidated; an event no rule applies to is a 422 when *no* event of the request matched (a typo
in an event name should not look like success). :func:`start_event_consumer` runs the Redis
stream or channel consumer for the app's lifespan.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from stratacache.errors import StrataError, TierError
from stratacache.llm.cache import LLMCache
from stratacache.llm.events import EventConsumer, EventRule, apply, parse_events, plan
from stratacache.proxy.responses import json_error

if TYPE_CHECKING:
    from stratacache.config import Settings

__all__ = ["admin_routes", "authorized", "start_event_consumer"]

_MAX_EVENTS_BODY = 1 << 20

Endpoint = Callable[[Request], Awaitable[Response]]


def authorized(request: Request, token: str | None) -> Response | None:
    """``None`` if ``request`` carries the admin token, else the error response to send."""
    if token is None:
        return json_error(
            403,
            "the admin API is disabled: start the proxy with --admin-token or STRATA_ADMIN_TOKEN",
            type="permission_error",
            code="admin_disabled",
        )
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode("utf-8"), token.encode("utf-8")
    ):
        return json_error(
            401,
            "the admin API needs 'Authorization: Bearer <admin token>'",
            type="authentication_error",
            code="invalid_admin_token",
        )
    return None


def admin_routes(
    cache: LLMCache, token: str | None, *, events: Sequence[EventRule] = ()
) -> list[Route]:
    """The admin endpoints for ``cache``, guarded by ``token``; ``events`` are the event rules."""

    def guarded(action: Endpoint) -> Endpoint:
        async def endpoint(request: Request) -> Response:
            denied = authorized(request, token)
            if denied is not None:
                return denied
            try:
                return await action(request)
            except TierError as exc:
                return json_error(503, f"a tier failed: {exc}", type="server_error", code="tier")
            except StrataError as exc:
                return json_error(400, str(exc), type="invalid_request_error", code="invalid")

        return endpoint

    async def delete_key(request: Request) -> JSONResponse:
        deleted = await cache.invalidate_key(request.path_params["key"])
        return JSONResponse({"deleted": int(deleted)})

    async def delete_namespace(request: Request) -> JSONResponse:
        deleted = await cache.invalidate_namespace(request.path_params["namespace"])
        return JSONResponse({"deleted": deleted})

    async def delete_tag(request: Request) -> JSONResponse:
        deleted = await cache.invalidate_tag(request.path_params["tag"])
        return JSONResponse({"deleted": deleted})

    async def flush(request: Request) -> JSONResponse:
        await cache.flush()
        return JSONResponse({"flushed": True})

    async def post_events(request: Request) -> Response:
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > _MAX_EVENTS_BODY:
                return _error(413, f"at most {_MAX_EVENTS_BODY} bytes of events", "too_large")
        received = parse_events(body, request.headers.get("content-type"))
        invalidation = plan(events, received)
        if len(invalidation.unmatched) == len(received):
            names = sorted(set(invalidation.unmatched))
            return _error(422, f"no event rule applies to {names}", "unknown_event")
        deleted = await apply(cache, invalidation)
        return JSONResponse(
            {
                "events": len(received),
                "tags": sorted(invalidation.tags),
                "namespaces": sorted(invalidation.namespaces),
                "unmatched": list(invalidation.unmatched),
                "deleted": deleted,
            }
        )

    return [
        Route("/admin/keys/{key:path}", guarded(delete_key), methods=["DELETE"]),
        Route("/admin/namespaces/{namespace}", guarded(delete_namespace), methods=["DELETE"]),
        Route("/admin/tags/{tag}", guarded(delete_tag), methods=["DELETE"]),
        Route("/admin/flush", guarded(flush), methods=["POST"]),
        Route("/admin/events", guarded(post_events), methods=["POST"]),
    ]


def _error(status: int, message: str, code: str) -> Response:
    return json_error(status, message, type="invalid_request_error", code=code)


def start_event_consumer(settings: Settings, cache: LLMCache) -> EventConsumer | None:
    """Start the consumer of ``settings.events_stream`` / ``events_channel``, if one is set.

    Call it inside the running loop; ``await consumer.aclose()`` at shutdown. The consumer
    reconnects by itself, so a Redis that is down at start-up delays nothing.
    """
    if settings.redis_url is None or (
        settings.events_stream is None and settings.events_channel is None
    ):
        return None
    consumer = EventConsumer.from_url(
        settings.redis_url,
        cache,
        settings.cache_rules.events,
        stream=settings.events_stream,
        channel=settings.events_channel,
    )
    consumer.start()
    return consumer
