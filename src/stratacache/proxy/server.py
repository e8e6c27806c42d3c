"""How ``strata serve`` runs the app on uvicorn: one socket write per response where possible.

uvicorn's httptools protocol writes a response's status line and headers to the socket as soon as
the app sends ``http.response.start``, and the body on ``http.response.body``: two ``send`` calls
for every answer, though starlette sends the two messages back to back. On loopback a ``send`` is
most of the CPU a cache hit costs (the kernel runs the receiver's side of TCP in the sender's
call), so the second one is a large share of the total.

:func:`http_protocol` returns uvicorn's protocol with its transport wrapped in a
:class:`CoalescingTransport`, which gathers the writes made within one turn of the event loop and
sends them together at the end of that turn. The head and body of a whole response therefore
leave in one ``send``; a stream still leaves chunk by chunk, as its chunks arrive in different
turns. Nothing is held longer than the turn that wrote it, and a close or an abort first sends
(or drops, for an abort) what is pending.

Pass it to uvicorn as ``http=http_protocol()``.
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["CoalescingTransport", "http_protocol"]


class CoalescingTransport:
    """A transport that sends everything written within one event-loop turn in one write.

    Every other method is the wrapped transport's; those that end or hand over the connection
    send the pending bytes first.
    """

    __slots__ = ("_loop", "_pending", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue ``data``; it is sent with the rest of this turn's writes."""
        if not data:
            return
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(bytes(data))

    def writelines(self, lines: Any) -> None:
        """Queue each of ``lines``."""
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        """Send what is pending now, in one write."""
        pending = self._pending
        if not pending:
            return
        self._pending = []
        if self._transport.is_closing():
            return
        self._transport.write(pending[0] if len(pending) == 1 else b"".join(pending))

    def close(self) -> None:
        """Send what is pending, then close."""
        self.flush()
        self._transport.close()

    def abort(self) -> None:
        """Close at once; what is pending is dropped, as the wrapped transport drops its buffer."""
        self._pending = []
        self._transport.abort()

    def write_eof(self) -> None:
        """Send what is pending, then half-close."""
        self.flush()
        self._transport.write_eof()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        """Send what is pending, then hand the connection to ``protocol``."""
        self.flush()
        self._transport.set_protocol(protocol)

    def get_write_buffer_size(self) -> int:
        """Bytes not yet sent: pending here and buffered below."""
        return sum(map(len, self._pending)) + self._transport.get_write_buffer_size()

    def __getattr__(self, name: str) -> Any:
        # is_closing, get_extra_info, pause_reading, resume_reading... as the real transport.
        return getattr(self._transport, name)


def http_protocol() -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol (h11 where httptools is missing), writing through a
    :class:`CoalescingTransport`."""
    import importlib.util

    if importlib.util.find_spec("httptools") is not None:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as Base
    else:  # pragma: no cover - httptools is installed wherever tests run
        from uvicorn.protocols.http.h11_impl import H11Protocol as Base  # type: ignore[assignment]

    class CoalescingHTTPProtocol(Base):
        """uvicorn's protocol, writing one turn's output in one ``send``."""

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            wrapped: Any = CoalescingTransport(transport, self.loop)  # type: ignore[arg-type]
            super().connection_made(wrapped)

    return CoalescingHTTPProtocol
