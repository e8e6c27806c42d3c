"""OpenAI-style error responses, the one shape every error from the proxy takes."""

from __future__ import annotations

from starlette.responses import Response

from stratacache.llm.cache import error_body

__all__ = ["json_error"]


def json_error(status: int, message: str, *, type: str, code: str | int | None = None) -> Response:
    """An OpenAI-style JSON error response with ``status``."""
    return Response(
        error_body(message, type=type, code=code), status, media_type="application/json"
    )
