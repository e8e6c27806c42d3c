"""The asyncio shell around the sidecar: sockets in, replies out, nothing else.

One :class:`RespConnection` (an :class:`asyncio.Protocol`) per client. ``data_received`` feeds the
bytes to the connection's request reader, hands every complete command to the
:class:`~stratacache.resp.sidecar.Sidecar` at once and writes all the replies with one
``transport.write`` (pipelining costs one syscall per read, not per command). Sockets get
``TCP_NODELAY``. When the transport's write buffer passes its high-water mark (a client that
pipelines without reading), the connection stops reading until the buffer drains, so a slow
reader cannot make the server buffer without bound; a client whose output passes
``max_output_buffer`` (a pub/sub subscriber that never reads) is disconnected, as Redis does.

A protocol error answers ``-ERR Protocol error: ...`` and closes that connection only; an
exception in one connection's callbacks is logged and closes that connection only.

:func:`serve` runs a server until interrupted, on uvloop when it is installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import socket
from collections.abc import Callable
from typing import Final, cast

from stratacache.resp.protocol import (
    DEFAULT_MAX_BULK,
    DEFAULT_MAX_QUERY,
    CompiledRequestReader,
    ErrorReply,
    RequestReader,
    encode,
    request_reader,
)
from stratacache.resp.session import Session
from stratacache.resp.sidecar import Sidecar

__all__ = ["RespConnection", "RespServer", "serve"]

logger = logging.getLogger("stratacache.resp")

_PENDING_LIMIT: Final = 10_000  # commands waiting behind a blocked one before reading pauses
_EXPIRE_PERIOD: Final = 0.1  # seconds between active expiry cycles (Redis's hz 10)


def _address(info: object) -> str:
    if isinstance(info, tuple) and len(info) >= 2:
        return f"{info[0]}:{info[1]}"
    return str(info or "")


class RespConnection(asyncio.Protocol):
    """One client connection: reader → sidecar → one write per read."""

    def __init__(self, server: RespServer) -> None:
        self._server = server
        self._sidecar = server.sidecar
        self._transport: asyncio.Transport | None = None
        self._reader: RequestReader | None = None
        self._session: Session | None = None
        self._wake_scheduled = False
        self._reading_paused = False
        self._writing_paused = False
        self._authenticated = False  # what the reader was last told
        self._compiled: CompiledRequestReader | None = None
        self._serve: Callable[[Session, bytes, int], int] | None = None
        self._max_bulk = DEFAULT_MAX_BULK
        self.fd = -1
        """The socket's descriptor, read directly while a script keeps the loop busy."""

    @property
    def session(self) -> Session | None:
        """The client's session (after ``connection_made``)."""
        return self._session

    @property
    def reading_paused(self) -> bool:
        """Whether reading stopped for backpressure."""
        return self._reading_paused

    # -- asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Register the session and tune the socket."""
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        previous: object = self._transport
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if sock is not None:
            with contextlib.suppress(OSError, AttributeError):
                self.fd = sock.fileno()
        if isinstance(previous, _BusyTransport) and self._session is not None:
            # Accepted while a script kept the loop busy: the loop takes over the socket now,
            # with the session as it is (AUTH, HELLO, MULTI), and writes what waited.
            pending = previous.take_pending()
            if pending:
                transport.write(pending)
            if self._session.closing:
                transport.close()
            return
        session = self._sidecar.connect(
            _address(transport.get_extra_info("peername")),
            _address(transport.get_extra_info("sockname")),
        )
        session.wake = self._wake
        session.close_hook = self.close
        self._session = session
        config = self._sidecar.config
        self._reader = request_reader(
            int(config.get("proto-max-bulk-len")),
            int(config.get("client-query-buffer-limit")),
            prefer_hiredis=self._server.prefer_hiredis,
        )
        self._authenticated = session.authenticated
        self._reader.unauthenticated = not session.authenticated
        runner = self._sidecar.runner
        if runner is not None and isinstance(self._reader, CompiledRequestReader):
            # Reads that start at a request boundary go to the compiled fast path first.
            self._compiled = self._reader
            self._serve = runner.serve
            self._max_bulk = self._reader.max_bulk_len
        self._server.connections.add(self)

    def data_received(self, data: bytes) -> None:
        """Parse every complete command, run them all, answer with one write."""
        session = self._session
        reader = self._reader
        if session is None or reader is None or session.closing:
            return
        serve = self._serve
        compiled = self._compiled
        if serve is not None and compiled is not None and compiled.idle:
            # One C call runs the read's quick commands and queues their replies; whatever it
            # leaves (a command that is not quick, a partial request) goes the general way below.
            try:
                used = serve(session, data, self._max_bulk)
            except Exception:
                logger.exception("connection %s failed; closing it", session.addr)
                session.out.append(b"-ERR internal error\r\n")
                session.closing = True
                self._flush()
                return
            if used == len(data):
                self._flush()
                return
            if used:
                data = data[used:]
        try:
            result = reader.feed(data)
            if result.commands:
                self._sidecar.feed(session, result.commands)
            if result.error is not None:
                session.out.append(encode(ErrorReply(str(result.error)), session.resp))
                session.closing = True
            if session.authenticated is not self._authenticated:  # AUTH, HELLO, RESET
                self._authenticated = session.authenticated
                reader.unauthenticated = not session.authenticated
        except Exception:
            logger.exception("connection %s failed; closing it", session.addr)
            session.out.append(b"-ERR internal error\r\n")
            session.closing = True
        self._flush()
        if len(session.pending) > _PENDING_LIMIT and not self._reading_paused:
            self._pause_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the session."""
        self._server.connections.discard(self)
        if self._session is not None:
            self._sidecar.disconnect(self._session)
            self._session.closing = True

    def pause_writing(self) -> None:
        """The client is not reading: stop reading its requests too."""
        self._writing_paused = True
        self._pause_reading()

    def resume_writing(self) -> None:
        """The write buffer drained: run what waited for it, and read again."""
        self._writing_paused = False
        session = self._session
        if session is not None and session.pending:
            self._wake()
        self._resume_reading()

    # -- helpers

    def _pause_reading(self) -> None:
        if self._transport is not None and not self._reading_paused:
            self._reading_paused = True
            with contextlib.suppress(RuntimeError):
                self._transport.pause_reading()

    def _resume_reading(self) -> None:
        session = self._session
        if (
            self._transport is not None
            and self._reading_paused
            and not self._writing_paused
            and (session is None or len(session.pending) <= _PENDING_LIMIT)
        ):
            self._reading_paused = False
            with contextlib.suppress(RuntimeError):
                self._transport.resume_reading()

    def _flush(self) -> None:
        session = self._session
        transport = self._transport
        if session is None or transport is None or transport.is_closing():
            return
        data = session.take_output()
        if data:
            transport.write(data)
            if transport.get_write_buffer_size() > self._server.max_output_buffer:
                logger.warning("closing %s: output buffer over the limit", session.addr)
                transport.abort()
                return
        if session.closing:
            transport.close()

    def _wake(self) -> None:
        if not self._wake_scheduled:
            self._wake_scheduled = True
            self._server.loop.call_soon(self._on_wake)

    def _on_wake(self) -> None:
        self._wake_scheduled = False
        session = self._session
        if session is None:
            return
        if session.pending and session.blocked is None and not self._writing_paused:
            try:
                self._sidecar.resume(session)
            except Exception:
                logger.exception("connection %s failed; closing it", session.addr)
                session.closing = True
        self._flush()
        self._resume_reading()

    def read_while_busy(self) -> None:
        """Read what the client sent and answer it, from inside a long script.

        The loop is held by the script, so the socket is read here directly; the transport
        then finds nothing to read (EAGAIN), and its writes are still made at once.
        """
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # EAGAIN, a reset: the loop will see it later
            return
        if data:  # b"" is the end of the stream, which the loop will see again
            self.data_received(data)

    def close(self) -> None:
        """Close this connection (CLIENT KILL, server shutdown)."""
        if self._transport is not None:
            self._transport.close()


class _BusyTransport:
    """The transport of a client accepted while a script holds the loop: writes go straight
    to the socket, and what the socket does not take waits for the loop's transport."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._pending = bytearray()
        self._closing = False

    def get_extra_info(self, name: str, default: object = None) -> object:
        if name == "socket":
            return self._sock
        try:
            if name == "peername":
                return self._sock.getpeername()
            if name == "sockname":
                return self._sock.getsockname()
        except OSError:
            return default
        return default

    def write(self, data: bytes) -> None:
        if self._pending:
            self._pending += data
            return
        try:
            sent = self._sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._closing = True
            return
        self._pending += data[sent:]

    def take_pending(self) -> bytes:
        data = bytes(self._pending)
        self._pending.clear()
        return data

    def get_write_buffer_size(self) -> int:
        return len(self._pending)

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        self._closing = True

    def abort(self) -> None:
        self._closing = True

    def pause_reading(self) -> None:
        return None

    def resume_reading(self) -> None:
        return None


class RespServer:
    """A listening RESP server on an asyncio loop.

    :param sidecar: the state and commands served.
    :param host: the address to bind (``127.0.0.1`` by default: this is a local sidecar).
    :param port: the TCP port; ``0`` picks a free one (see :attr:`port` after :meth:`start`).
    :param max_output_buffer: bytes queued for one client before it is disconnected.
    :param prefer_hiredis: parse with hiredis when it is installed.
    """

    def __init__(
        self,
        sidecar: Sidecar,
        host: str = "127.0.0.1",
        port: int = 6380,
        *,
        max_output_buffer: int = 256 * 1024 * 1024,
        prefer_hiredis: bool = True,
    ) -> None:
        self.sidecar = sidecar
        self.host = host
        self.port = port
        self.max_output_buffer = max_output_buffer
        self.prefer_hiredis = prefer_hiredis
        self.connections: set[RespConnection] = set()
        self._server: asyncio.Server | None = None
        self._expire_task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.max_bulk_len = DEFAULT_MAX_BULK
        self.max_query_buffer = DEFAULT_MAX_QUERY
        self._busy_listener: socket.socket | None = None
        self._adoptions: set[asyncio.Task[object]] = set()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop the server runs on (after :meth:`start`)."""
        assert self._loop is not None, "the server is not started"
        return self._loop

    async def start(self) -> None:
        """Bind and start accepting connections."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        self.sidecar.timer_factory = loop.call_later
        self.sidecar.background = self._run_in_thread
        self.sidecar.busy_poller = self._serve_while_busy
        self._server = await loop.create_server(
            lambda: RespConnection(self), self.host, self.port, reuse_address=True
        )
        sockets = self._server.sockets
        if sockets:
            self.port = sockets[0].getsockname()[1]
        self._expire_task = loop.create_task(self._expire_loop())
        if self.sidecar.backing is not None:
            self.sidecar.backing.start()

    def _run_in_thread(
        self, work: Callable[[], object], done: Callable[[BaseException | None], None]
    ) -> None:
        future = self.loop.run_in_executor(None, work)

        def finished(result: asyncio.Future[object]) -> None:
            error = result.exception()
            if error is not None:
                logger.error("background work failed: %r", error)
            done(error)

        future.add_done_callback(finished)

    def _serve_while_busy(self, caller: Session) -> None:
        """Answer the other clients while ``caller``'s script runs long (see scripting.py).

        The caller's own connection is left alone: its next commands wait for the script.
        """
        self._accept_while_busy()
        readers = {
            connection.fd: connection
            for connection in self.connections
            if connection.fd >= 0
            and connection.session is not caller
            and not connection.reading_paused
        }
        if not readers:
            return
        poller = select.poll()
        for fd in readers:
            poller.register(fd, select.POLLIN)
        for fd, _ in poller.poll(0):
            readers[fd].read_while_busy()

    def _accept_while_busy(self) -> None:
        """Take the clients that connect while a script runs (``redis-cli SCRIPT KILL`` is a
        new connection): they are served on a :class:`_BusyTransport` until the loop is free,
        then handed to it."""
        listener = self._busy_listener
        if listener is None:
            if self._server is None or not self._server.sockets:
                return
            # A duplicate of the listening socket: accepting here leaves the loop's own
            # accept nothing to find (EAGAIN), as reading the clients does.
            listener = socket.socket(fileno=os.dup(self._server.sockets[0].fileno()))
            listener.setblocking(False)
            self._busy_listener = listener
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:  # EAGAIN: nobody waiting
                return
            sock.setblocking(False)
            connection = RespConnection(self)
            transport = _BusyTransport(sock)
            connection.connection_made(cast(asyncio.Transport, transport))
            self.loop.call_soon(self._adopt, connection, transport, sock)

    def _adopt(
        self, connection: RespConnection, transport: _BusyTransport, sock: socket.socket
    ) -> None:
        """The script is over: let the loop run a connection accepted while it ran."""
        session = connection.session
        if session is None or session.closing or transport.is_closing():
            self.connections.discard(connection)
            if session is not None:
                self.sidecar.disconnect(session)
            sock.close()
            return
        task = self.loop.create_task(self.loop.connect_accepted_socket(lambda: connection, sock))
        self._adoptions.add(task)
        task.add_done_callback(self._adoptions.discard)

    async def _expire_loop(self) -> None:
        # Keys nobody reads must still expire (memory, keyspace notifications): Redis's active
        # expiry, here one cycle per tick over every database.
        while True:
            await asyncio.sleep(_EXPIRE_PERIOD)
            try:
                self.sidecar.keyspace.expire_cycle()
                if self.sidecar.keyspace.ready:
                    self.sidecar.serve_ready()
            except Exception:
                logger.exception("active expiry failed")

    async def serve_forever(self) -> None:
        """Serve until cancelled."""
        if self._server is None:
            await self.start()
        assert self._server is not None
        await self._server.serve_forever()

    async def close(self) -> None:
        """Stop accepting, close every connection and wait for the listener to shut."""
        if self.sidecar.backing is not None:
            await self.sidecar.backing.close()
        if self._expire_task is not None:
            self._expire_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._expire_task
            self._expire_task = None
        if self._busy_listener is not None:
            self._busy_listener.close()
            self._busy_listener = None
        if self._server is not None:
            self._server.close()
            for connection in list(self.connections):
                connection.close()
            await self._server.wait_closed()
            self._server = None


def serve(
    sidecar: Sidecar,
    host: str = "127.0.0.1",
    port: int = 6380,
    *,
    on_ready: Callable[[RespServer], None] | None = None,
) -> None:
    """Run a RESP server until interrupted (uvloop when installed)."""

    async def main() -> None:
        server = RespServer(sidecar, host, port)
        await server.start()
        stopping: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def stop() -> None:
            if not stopping.done():
                stopping.set_result(None)

        sidecar.shutdown_hook = stop
        if on_ready is not None:
            on_ready(server)
        serving = asyncio.ensure_future(server.serve_forever())
        try:
            await asyncio.wait((serving, stopping), return_when=asyncio.FIRST_COMPLETED)
        finally:
            serving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await serving
            await server.close()

    try:
        import uvloop
    except ImportError:
        runner: Callable[[], asyncio.AbstractEventLoop] | None = None
    else:
        runner = uvloop.new_event_loop
    with (
        asyncio.Runner(loop_factory=runner) as loop_runner,
        contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError),
    ):
        loop_runner.run(main())
