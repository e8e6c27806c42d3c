"""The upstream provider over HTTP: one pooled ``httpx.AsyncClient``, the only place httpx is seen.

:class:`HTTPUpstream` implements :class:`stratacache.llm.cache.Upstream` (what the cache calls on a
miss) and adds :meth:`HTTPUpstream.forward` for the requests the proxy passes through untouched.
Every ``httpx`` exception, whether raised while connecting or halfway through a streamed body, is
translated here, once, into :class:`~stratacache.errors.UpstreamTimeoutError` or
:class:`~stratacache.errors.UpstreamError`; nothing above this module imports httpx.

The transport is injectable (``transport=``), so tests and the demo can put an in-process upstream
behind the same client, with the same pooling, timeouts and error translation as production.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from stratacache.errors import ConfigError, MissingExtraError, UpstreamError, UpstreamTimeoutError

if TYPE_CHECKING:
    import httpx

__all__ = ["HTTPReply", "HTTPUpstream", "UpstreamTimeouts"]


def _httpx() -> Any:
    try:
        import httpx
    except ImportError as exc:  # pragma: no cover - httpx is installed wherever tests run
        raise MissingExtraError("httpx", "proxy") from exc
    return httpx


@dataclass(frozen=True, slots=True)
class UpstreamTimeouts:
    """How long to wait for the provider, in seconds."""

    connect: float = 10.0
    """To open a connection."""
    read: float = 600.0
    """Between two reads of the response; a non-streamed completion can think for minutes."""
    write: float = 60.0
    """Between two writes of the request."""
    pool: float = 10.0
    """For a free connection from the pool."""

    def __post_init__(self) -> None:
        for name in ("connect", "read", "write", "pool"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
                raise ConfigError(f"upstream {name} timeout must be a number of seconds > 0")


class HTTPReply:
    """An upstream response whose body has not been read yet.

    The body is read once, with :meth:`iter_bytes` (decoded, for the cache), :meth:`iter_raw` (as
    sent, for a passthrough) or :meth:`read`; :meth:`aclose` returns the connection to the pool and
    is safe to call more than once.
    """

    __slots__ = ("_response",)

    def __init__(self, response: httpx.Response) -> None:
        self._response = response

    @property
    def status(self) -> int:
        """The HTTP status code."""
        return int(self._response.status_code)

    @property
    def headers(self) -> Mapping[str, str]:
        """The response headers (case-insensitive look-ups)."""
        headers: Mapping[str, str] = self._response.headers
        return headers

    async def iter_bytes(self) -> AsyncIterator[bytes]:
        """Yield the decoded body as it arrives."""
        async for chunk in _translated(self._response.aiter_bytes()):
            yield chunk

    async def iter_raw(self) -> AsyncIterator[bytes]:
        """Yield the body exactly as the provider sent it (still compressed, if it was)."""
        httpx = _httpx()
        try:
            # An in-process transport may hand back a response built from bytes, which httpx
            # has already read: there is no raw stream left, only the content.
            content = self._response.content
        except httpx.ResponseNotRead:
            async for chunk in _translated(self._response.aiter_raw()):
                yield chunk
        else:
            if content:
                yield content

    async def read(self) -> bytes:
        """Read the whole decoded body."""
        parts = [chunk async for chunk in self.iter_bytes()]
        return b"".join(parts)

    async def aclose(self) -> None:
        """Release the connection."""
        await self._response.aclose()


class HTTPUpstream:
    """An OpenAI-compatible provider at ``base_url`` (``https://api.openai.com/v1``, vLLM...).

    Paths given to :meth:`post` and :meth:`forward` are relative to ``base_url``:
    ``/chat/completions`` goes to ``{base_url}/chat/completions``.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeouts: UpstreamTimeouts | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        max_connections: int = 256,
    ) -> None:
        httpx = _httpx()
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ConfigError(f"the upstream URL must start with http:// or https://: {base_url!r}")
        if max_connections < 1:
            raise ConfigError("max_connections must be at least 1")
        t = timeouts or UpstreamTimeouts()
        self.base_url = base_url.rstrip("/")
        self._client: Any = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(connect=t.connect, read=t.read, write=t.write, pool=t.pool),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            transport=transport,
            follow_redirects=False,
            # The proxy's own environment (HTTP_PROXY, .netrc) must not leak into requests made
            # on behalf of clients.
            trust_env=False,
        )

    async def post(self, path: str, body: bytes, headers: Mapping[str, str]) -> HTTPReply:
        """POST a JSON ``body`` to ``path``; return as soon as the response headers arrive.

        An error status is returned as a reply (its body is the provider's error, for the client);
        only a failure to get a response at all raises :class:`UpstreamError`.
        """
        return await self._send("POST", path, headers=headers, content=body, query="")

    async def forward(
        self,
        method: str,
        path: str,
        *,
        query: str,
        headers: Mapping[str, str],
        body: AsyncIterable[bytes] | bytes | None,
    ) -> HTTPReply:
        """Send any request through untouched, streaming its body both ways."""
        return await self._send(method, path, headers=headers, content=body, query=query)

    async def aclose(self) -> None:
        """Close every pooled connection."""
        await self._client.aclose()

    async def _send(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str],
        content: AsyncIterable[bytes] | bytes | None,
        query: str,
    ) -> HTTPReply:
        httpx = _httpx()
        url = path if not query else f"{path}?{query}"
        try:
            request = self._client.build_request(
                method, url, headers=dict(headers), content=content
            )
            response = await self._client.send(request, stream=True)
        except httpx.TimeoutException as exc:
            raise UpstreamTimeoutError(f"the upstream did not answer in time ({exc!r})") from exc
        except httpx.HTTPError as exc:
            raise UpstreamError(f"the upstream request failed: {exc!r}") from exc
        except httpx.InvalidURL as exc:
            raise UpstreamError(f"invalid upstream URL for {path!r}: {exc}") from exc
        return HTTPReply(response)


async def _translated(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    httpx = _httpx()
    try:
        async for chunk in chunks:
            yield chunk
    except httpx.TimeoutException as exc:
        raise UpstreamTimeoutError(f"the upstream stopped sending ({exc!r})") from exc
    except httpx.HTTPError as exc:
        raise UpstreamError(f"the upstream response broke off: {exc!r}") from exc
    except httpx.StreamError as exc:
        raise UpstreamError(f"the upstream response could not be read: {exc!r}") from exc
