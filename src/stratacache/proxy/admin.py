"""The admin API: invalidation endpoints behind a bearer token.

``DELETE /admin/keys/{key}``, ``DELETE /admin/namespaces/{namespace}``, ``DELETE /admin/tags/{tag}``
and ``POST /admin/flush``. Each requires ``Authorization: Bearer <admin token>``; without a
configured token the endpoints are disabled (403) rather than open. The token is compared in
constant time.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from stratacache.errors import StrataError, TierError
from stratacache.llm.cache import LLMCache
from stratacache.proxy.responses import json_error

__all__ = ["admin_routes", "authorized"]

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


def admin_routes(cache: LLMCache, token: str | None) -> list[Route]:
    """The admin endpoints for ``cache``, guarded by ``token``."""

    def guarded(action: Callable[[Request], Awaitable[JSONResponse]]) -> Endpoint:
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

    return [
        Route("/admin/keys/{key:path}", guarded(delete_key), methods=["DELETE"]),
        Route("/admin/namespaces/{namespace}", guarded(delete_namespace), methods=["DELETE"]),
        Route("/admin/tags/{tag}", guarded(delete_tag), methods=["DELETE"]),
        Route("/admin/flush", guarded(flush), methods=["POST"]),
    ]
