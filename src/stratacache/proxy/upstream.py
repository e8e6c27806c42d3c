"""The upstream provider over HTTP: the only place the HTTP client library is seen.

:class:`HTTPUpstream`, on one pooled ``aiohttp`` session, implements
:class:`stratacache.llm.cache.Upstream` (what the cache calls on a miss) and adds ``forward`` for
the requests the proxy passes through untouched. aiohttp was chosen by measured overhead: a POST and
its response cost 0.10-0.16 ms of client CPU through aiohttp against 0.57-0.77 ms through httpx
(whose anyio and httpcore layers were 38 % of a miss's CPU). There is one client and no injected
transport: the tests and ``strata demo`` serve their upstreams on loopback ports, so every path
through here is the one production takes.

Every client library exception, whether raised while connecting or halfway through a streamed body,
is translated here, once, into :class:`~stratacache.errors.UpstreamTimeoutError` or
:class:`~stratacache.errors.UpstreamError`; nothing above this module imports aiohttp.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from stratacache.errors import ConfigError, MissingExtraError, UpstreamError, UpstreamTimeoutError

if TYPE_CHECKING:
    import aiohttp

__all__ = [
    "AiohttpReply",
    "ForwardingUpstream",
    "HTTPUpstream",
    "UpstreamResponse",
    "UpstreamTimeouts",
]


def _aiohttp() -> Any:
    try:
        import aiohttp
    except ImportError as exc:
        raise MissingExtraError("aiohttp", "proxy") from exc
    return aiohttp


@dataclass(frozen=True, slots=True)
class UpstreamTimeouts:
    """How long to wait for the provider, in seconds."""

    connect: float = 10.0
    """To open a connection."""
    read: float = 600.0
    """Between two reads of the response; a non-streamed completion can think for minutes."""
    pool: float = 10.0
    """For a free connection from the pool."""

    def __post_init__(self) -> None:
        for name in ("connect", "read", "pool"):
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
    """``headers`` with a repeated name's values joined by ``, `` (one value per name, as the
    cache's records and the client's response keep them)."""
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
