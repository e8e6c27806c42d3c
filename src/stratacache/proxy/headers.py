"""Which HTTP headers cross the proxy, in each direction, and the cache headers it adds.

The proxy is a hop: hop-by-hop headers (RFC 9110 §7.6.1) end at it, and the framing headers
(``content-length``, ``transfer-encoding``) are recomputed by whichever side writes the body
next. Our own cache controls (``Cache-Control`` and ``X-Cache-*`` on the request) are read by the
cache and are not forwarded: they say nothing the provider understands.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

__all__ = [
    "HOP_BY_HOP",
    "request_headers_for_upstream",
    "response_headers_for_client",
]

HOP_BY_HOP: frozenset[str] = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
"""Headers that describe one connection and never cross a proxy."""

_NOT_FORWARDED_UP = HOP_BY_HOP | {"host", "content-length", "cache-control", "expect"}
_CACHE_CONTROL_PREFIX = "x-cache-"


def request_headers_for_upstream(
    headers: Iterable[tuple[str, str]], *, keep_encoding: bool = False
) -> dict[str, str]:
    """Filter a client's request headers for the upstream request.

    ``keep_encoding`` keeps the client's ``Accept-Encoding`` (a passthrough forwards the body as
    the provider compressed it); the cached routes drop it, because the cache reads the body and
    the HTTP client then negotiates and decodes compression itself.
    """
    out: dict[str, str] = {}
    connection_tokens = _connection_tokens(headers)
    for raw_name, value in headers:
        name = raw_name.lower()
        if name in _NOT_FORWARDED_UP or name in connection_tokens:
            continue
        if name.startswith(_CACHE_CONTROL_PREFIX):
            continue
        if name == "accept-encoding" and not keep_encoding:
            continue
        out[name] = f"{out[name]}, {value}" if name in out else value
    return out


def response_headers_for_client(
    headers: Mapping[str, str], *, body_decoded: bool
) -> dict[str, str]:
    """Filter an upstream response's headers for the client.

    ``body_decoded``: the body is sent decoded, so ``Content-Encoding`` no longer holds.
    """
    out: dict[str, str] = {}
    connection_tokens = _connection_tokens(headers.items())
    for raw_name, value in headers.items():
        name = raw_name.lower()
        if name in HOP_BY_HOP or name in connection_tokens or name == "content-length":
            continue
        if body_decoded and name == "content-encoding":
            continue
        out[name] = value
    return out


def _connection_tokens(headers: Iterable[tuple[str, str]]) -> frozenset[str]:
    # "Connection: x-foo" marks x-foo as hop-by-hop for this message only.
    tokens: set[str] = set()
    for name, value in headers:
        if name.lower() == "connection":
            tokens.update(t.strip().lower() for t in value.split(",") if t.strip())
    return frozenset(tokens)
