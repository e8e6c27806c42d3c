"""The upstream provider over HTTP: the only place the HTTP client libraries are seen.

Two clients implement :class:`stratacache.llm.cache.Upstream` (what the cache calls on a miss) and
add ``forward`` for the requests the proxy passes through untouched:

* :class:`HTTPUpstream`, on one pooled ``aiohttp`` session: what ``strata serve`` uses. It was chosen
  by measured overhead: a POST and its response cost 0.10-0.16 ms of client CPU through aiohttp
  against 0.57-0.77 ms through httpx (whose anyio and httpcore layers were 38 % of a miss's CPU).
* :class:`HTTPXUpstream`, on one pooled ``httpx.AsyncClient``: used when an httpx *transport* is
  injected, so tests and the demo can put an in-process upstream (``proxy.simulated``) behind a
  real client, with the same pooling, timeouts and error translation as production.

:func:`make_upstream` picks between them. Every client library exception, whether raised while
connecting or halfway through a streamed body, is translated here, once, into
:class:`~stratacache.errors.UpstreamTimeoutError` or :class:`~stratacache.errors.UpstreamError`;
nothing above this module imports aiohttp or httpx.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from stratacache.errors import ConfigError, MissingExtraError, UpstreamError, UpstreamTimeoutError

if TYPE_CHECKING:
    import aiohttp
    import httpx

__all__ = [
    "AiohttpReply",
    "ForwardingUpstream",
    "HTTPReply",
    "HTTPUpstream",
    "HTTPXUpstream",
    "UpstreamResponse",
    "UpstreamTimeouts",
    "make_upstream",
]


def _aiohttp() -> Any:
    try:
        import aiohttp
    except ImportError as exc:
        raise MissingExtraError("aiohttp", "proxy") from exc
    return aiohttp


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
    """Between two writes of the request (httpx only: aiohttp has no write timeout)."""
    pool: float = 10.0
    """For a free connection from the pool."""

    def __post_init__(self) -> None:
        for name in ("connect", "read", "write", "pool"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not value > 0:
                raise ConfigError(f"upstream {name} timeout must be a number of seconds > 0")


class UpstreamResponse(Protocol):
    """What :meth:`ForwardingUpstream.forward` returns: a reply with a raw body."""

    @property
    def status(self) -> int:
        """The HTTP status code."""
        ...

    @property
    def headers(self) -> Mapping[str, str]:
        """The response headers (case-insensitive look-ups)."""
        ...

    def iter_bytes(self) -> AsyncIterator[bytes]:
        """The decoded body as it arrives."""
        ...

    def iter_raw(self) -> AsyncIterator[bytes]:
        """The body as the provider sent it."""
        ...

    async def read(self) -> bytes:
        """The whole decoded body."""
        ...

    async def aclose(self) -> None:
        """Release the connection (idempotent)."""
        ...


class ForwardingUpstream(Protocol):
    """An :class:`~stratacache.llm.cache.Upstream` that also passes requests through: the proxy's
    upstream client."""

    base_url: str

    async def post(self, path: str, body: bytes, headers: Mapping[str, str]) -> UpstreamResponse:
        """POST JSON ``body`` to ``path``; return at the response headers."""
        ...

    async def forward(
        self,
        method: str,
        path: str,
        *,
        query: str,
        headers: Mapping[str, str],
        body: AsyncIterable[bytes] | bytes | None,
    ) -> UpstreamResponse:
        """Send any request through untouched, streaming its body both ways."""
        ...

    async def aclose(self) -> None:
        """Close every pooled connection."""
        ...


def make_upstream(
    base_url: str,
    *,
    timeouts: UpstreamTimeouts | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    max_connections: int = 256,
) -> HTTPUpstream | HTTPXUpstream:
    """The upstream client for ``base_url``: aiohttp, or httpx over ``transport`` when one is given."""
    if transport is not None:
        return HTTPXUpstream(
            base_url, timeouts=timeouts, transport=transport, max_connections=max_connections
        )
    return HTTPUpstream(base_url, timeouts=timeouts, max_connections=max_connections)


def _check_options(base_url: str, max_connections: int) -> str:
    if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
        raise ConfigError(f"the upstream URL must start with http:// or https://: {base_url!r}")
    if max_connections < 1:
        raise ConfigError("max_connections must be at least 1")
    return base_url.rstrip("/")


# --- aiohttp (production) ------------------------------------------------------------------------


class AiohttpReply:
    """An upstream response from :class:`HTTPUpstream` whose body has not been read yet.

    The body is read once. A reply to :meth:`HTTPUpstream.post` is decoded (aiohttp undoes any
    ``Content-Encoding``); a reply to :meth:`HTTPUpstream.forward` is read as the provider sent it,
    so there :meth:`iter_bytes` and :meth:`iter_raw` are the same bytes. :meth:`aclose` returns the
    connection to the pool (or closes it, if the body was not read to the end) and is safe to call
    more than once.
    """

    __slots__ = ("_headers", "_response")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self._headers: Mapping[str, str] | None = None

    @property
    def status(self) -> int:
        """The HTTP status code."""
        return self._response.status

    @property
    def headers(self) -> Mapping[str, str]:
        """The response headers (case-insensitive look-ups; repeated names joined by ``, ``)."""
        if self._headers is None:
            self._headers = _joined(self._response.headers)
        return self._headers

    async def iter_bytes(self) -> AsyncIterator[bytes]:
        """Yield the body as it arrives (decoded, for a reply to ``post``)."""
        content = self._response.content
        aiohttp = _aiohttp()
        try:
            while True:
                chunk = await content.readany()
                if not chunk:
                    return
                yield chunk
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamTimeoutError(f"the upstream stopped sending ({exc!r})") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamError(f"the upstream response broke off: {exc!r}") from exc

    def iter_raw(self) -> AsyncIterator[bytes]:
        """Yield the body as it arrives (as sent, for a reply to ``forward``)."""
        return self.iter_bytes()

    async def read(self) -> bytes:
        """Read the whole body."""
        aiohttp = _aiohttp()
        try:
            body: bytes = await self._response.read()
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamTimeoutError(f"the upstream stopped sending ({exc!r})") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamError(f"the upstream response broke off: {exc!r}") from exc
        return body

    async def aclose(self) -> None:
        """Release the connection."""
        self._response.release()


def _joined(headers: Any) -> Mapping[str, str]:
    """``headers`` with a repeated name's values joined by ``, `` (as httpx presents them)."""
    if len(headers) == len(set(map(str.lower, headers.keys()))):
        # The common case: no name repeats, the multidict already is the mapping we want.
        return headers  # type: ignore[no-any-return]
    from multidict import CIMultiDict

    joined: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        if name in joined:
            joined[name] = f"{joined[name]}, {value}"
        else:
            joined[name] = value
    return joined


class HTTPUpstream:
    """An OpenAI-compatible provider at ``base_url`` (``https://api.openai.com/v1``, vLLM...), over
    one pooled aiohttp session.

    Paths given to :meth:`post` and :meth:`forward` are relative to ``base_url``:
    ``/chat/completions`` goes to ``{base_url}/chat/completions``. The session is opened on the
    first request, in the event loop that serves it (an app may be built before its loop runs).
    Cookies the provider sets are passed to the client and never kept: the session's requests are
    made on behalf of many clients.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeouts: UpstreamTimeouts | None = None,
        max_connections: int = 256,
    ) -> None:
        _aiohttp()  # fail now, with the extra to install, not on the first request
        self.base_url = _check_options(base_url, max_connections)
        self._timeouts = timeouts or UpstreamTimeouts()
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._urls: dict[str, Any] = {}  # post() path -> parsed URL, parsed once per route

    def _open(self) -> aiohttp.ClientSession:
        client = _aiohttp()
        t = self._timeouts
        session: aiohttp.ClientSession = client.ClientSession(
            connector=client.TCPConnector(limit=self._max_connections, limit_per_host=0),
            timeout=client.ClientTimeout(
                total=None,
                # aiohttp's "connect" covers waiting for a pooled connection and opening one.
                connect=t.pool + t.connect,
                sock_connect=t.connect,
                sock_read=t.read,
            ),
            cookie_jar=client.DummyCookieJar(),
            # The proxy's own environment (HTTP_PROXY, .netrc) must not leak into requests made
            # on behalf of clients.
            trust_env=False,
        )
        self._session = session
        return session

    async def post(self, path: str, body: bytes, headers: Mapping[str, str]) -> AiohttpReply:
        """POST a JSON ``body`` to ``path``; return as soon as the response headers arrive.

        An error status is returned as a reply (its body is the provider's error, for the client);
        only a failure to get a response at all raises :class:`UpstreamError`.
        """
        url = self._urls.get(path)
        if url is None:
            url = self._urls[path] = self._url(path, "")
        return await self._send("POST", url, path, headers=headers, data=body, decoded=True)

    async def forward(
        self,
        method: str,
        path: str,
        *,
        query: str,
        headers: Mapping[str, str],
        body: AsyncIterable[bytes] | bytes | None,
    ) -> AiohttpReply:
        """Send any request through untouched, streaming its body both ways."""
        url = self._url(path, query)
        return await self._send(method, url, path, headers=headers, data=body, decoded=False)

    async def aclose(self) -> None:
        """Close every pooled connection."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    def _url(self, path: str, query: str) -> Any:
        from yarl import URL

        text = self.base_url + path if not query else f"{self.base_url}{path}?{query}"
        try:
            return URL(text)
        except (ValueError, TypeError) as exc:
            raise UpstreamError(f"invalid upstream URL for {path!r}: {exc}") from exc

    async def _send(
        self,
        method: str,
        url: Any,
        path: str,
        *,
        headers: Mapping[str, str],
        data: AsyncIterable[bytes] | bytes | None,
        decoded: bool,
    ) -> AiohttpReply:
        aiohttp = _aiohttp()
        session = self._session or self._open()
        try:
            response = await session.request(
                method,
                url,
                data=data,
                headers=headers,
                allow_redirects=False,
                auto_decompress=decoded,
                # aiohttp would label a body without a Content-Type as octet-stream; a passthrough
                # sends what the client sent, nothing more.
                skip_auto_headers=_SKIP_CONTENT_TYPE,
            )
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamTimeoutError(f"the upstream did not answer in time ({exc!r})") from exc
        except aiohttp.InvalidURL as exc:
            raise UpstreamError(f"invalid upstream URL for {path!r}: {exc}") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise UpstreamError(f"the upstream request failed: {exc!r}") from exc
        return AiohttpReply(response)


_SKIP_CONTENT_TYPE = ("Content-Type",)


# --- httpx (an injected transport) ---------------------------------------------------------------


class HTTPReply:
    """An upstream response from :class:`HTTPXUpstream` whose body has not been read yet.

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


class HTTPXUpstream:
    """An OpenAI-compatible provider at ``base_url`` over one pooled ``httpx.AsyncClient``.

    ``transport`` replaces the network (an in-process upstream, for the demo and tests); paths
    are relative to ``base_url`` as for :class:`HTTPUpstream`.
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
        self.base_url = _check_options(base_url, max_connections)
        t = timeouts or UpstreamTimeouts()
        self._client: Any = httpx.AsyncClient(
            base_url=self.base_url,
            timeout=httpx.Timeout(connect=t.connect, read=t.read, write=t.write, pool=t.pool),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            transport=transport,
            follow_redirects=False,
            trust_env=False,
        )

    async def post(self, path: str, body: bytes, headers: Mapping[str, str]) -> HTTPReply:
        """POST a JSON ``body`` to ``path``; return as soon as the response headers arrive."""
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
