"""RESP2/RESP3 on the wire, sans-IO: request readers, a reply reader and the reply encoder.

Nothing here touches a socket. A connection feeds the bytes it reads to a :class:`RequestReader`
and gets back every complete command in them, plus at most one protocol error; the server encodes
each reply with :func:`encode` for the connection's protocol version. The same code therefore runs
under asyncio, in a test that feeds a fixture one byte at a time, and under hypothesis.

Requests follow Redis's own parser (``networking.c``), including its quirks, so that clients see
the same errors: a request starting with ``*`` is a multibulk, anything else is an inline command
split like ``sdssplitargs`` (quotes, ``\\xHH`` escapes); ``*0`` and ``*-1`` are ignored; a bulk's
two trailing bytes are skipped, not checked. Limits: a bulk longer than ``max_bulk_len`` (Redis's
``proto-max-bulk-len``), an inline line or a length header longer than 64 KiB, and, while the
connection is not authenticated, more than 10 arguments or a bulk over 16 KiB are protocol errors;
a pending request larger than ``max_query_buffer`` is one too.

Two readers pass the same tests: :class:`PythonRequestReader`, and :class:`HiredisRequestReader`,
which parses whole requests with hiredis's C reader when it is installed and hands any request
that is split across reads, inline or malformed to the Python reader, so limits and error texts
are the same. :func:`request_reader` picks the fastest available.

Replies are plain Python values, mapped to RESP by type (see :func:`encode`); :class:`ReplyReader`
parses RESP2/RESP3 replies back into the same values, for tests and tools.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

from stratacache.errors import RequestError

__all__ = [
    "NO_REPLY",
    "NULL_ARRAY",
    "OK",
    "PONG",
    "QUEUED",
    "Command",
    "CommandError",
    "CompiledRequestReader",
    "ErrorReply",
    "HiredisRequestReader",
    "ParseResult",
    "ProtocolError",
    "Push",
    "PythonRequestReader",
    "RawReply",
    "ReplyReader",
    "RequestReader",
    "SimpleString",
    "Verbatim",
    "encode",
    "format_double",
    "request_reader",
]

INLINE_MAX: Final = 64 * 1024
"""Redis's ``PROTO_INLINE_MAX_SIZE``: the longest inline line or length header."""
DEFAULT_MAX_BULK: Final = 512 * 1024 * 1024
"""Redis's default ``proto-max-bulk-len``."""
DEFAULT_MAX_QUERY: Final = 1024 * 1024 * 1024
"""Redis's default ``client-query-buffer-limit``."""
_UNAUTH_MAX_ARGS: Final = 10
_UNAUTH_MAX_BULK: Final = 16384
_INT_MAX: Final = 2**31 - 1

Command = list[bytes]
"""One request: the command name and its arguments, as bytes."""


class ProtocolError(RequestError):
    """The client sent bytes that are not a valid request; the message is Redis's reply text."""


class CommandError(RequestError):
    """A command the server refuses; the message is the error reply, code first.

    >>> str(CommandError("ERR syntax error"))
    'ERR syntax error'
    """


# --------------------------------------------------------------------------- reply values


class SimpleString(str):
    """A status reply (``+OK``): a short text without CR or LF."""

    __slots__ = ()


class Verbatim(str):
    """Text for humans (INFO, CLIENT LIST): a RESP3 verbatim string, a bulk string in RESP2."""

    __slots__ = ()


class Push(list):  # type: ignore[type-arg]
    """An out-of-band message (pub/sub): a RESP3 push, an array in RESP2."""

    __slots__ = ()


class RawReply(bytes):
    """A reply already encoded for the caller's protocol (a Lua script's result)."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class ErrorReply:
    """An error reply; ``message`` starts with its code, as in ``"ERR syntax error"``."""

    message: str
    counted: bool = False
    """Already counted in the error statistics (a script re-raising a command's error)."""


class _NullArray:
    """The RESP2 null array (``*-1``), distinct from the null bulk string; RESP3 has one null."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NULL_ARRAY"


class _NoReply:
    """A handler's answer when it has already queued its own replies (SUBSCRIBE: one per channel)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NO_REPLY"


NO_REPLY: Final = _NoReply()
"""Returned by a handler that wrote its replies itself; the dispatcher sends nothing more."""
NULL_ARRAY: Final = _NullArray()
"""The null array: ``*-1`` in RESP2 (EXEC aborted by WATCH, BLPOP timeout), ``_`` in RESP3."""
OK: Final = SimpleString("OK")
"""The ``+OK`` status."""
PONG: Final = SimpleString("PONG")
"""The ``+PONG`` status."""
QUEUED: Final = SimpleString("QUEUED")
"""The ``+QUEUED`` status of a command queued by MULTI."""


# --------------------------------------------------------------------------- encoder


def format_double(value: float) -> bytes:
    """Format a double as Redis 7.0 replies with it (``%.17g``; ``inf``, ``-inf``, ``nan``).

    >>> format_double(1.5), format_double(0.1), format_double(float("-inf")), format_double(3.0)
    (b'1.5', b'0.10000000000000001', b'-inf', b'3')
    """
    if math.isinf(value):
        return b"inf" if value > 0 else b"-inf"
    return b"%.17g" % value


_CRLF: Final = b"\r\n"
_RESP2_NULL: Final = b"$-1\r\n"
_RESP3_NULL: Final = b"_\r\n"
_OK_BYTES: Final = b"+OK\r\n"


def _utf8(text: str) -> bytes:
    # surrogateescape gives back the bytes a text was decoded from; a lone surrogate it cannot
    # map (never produced by this package) is still written rather than failing the reply.
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")


def _error_line(message: str) -> bytes:
    # A newline inside an error would end the reply early and desynchronise the client.
    text = message.replace("\r", " ").replace("\n", " ")
    return b"-" + _utf8(text) + _CRLF


def _simple_line(text: str) -> bytes:
    return b"+" + _utf8(text.replace("\r", " ").replace("\n", " ")) + _CRLF


def _encode_into(value: object, resp3: bool, out: list[bytes]) -> None:
    kind = type(value)
    if kind is bytes:
        data: bytes = value  # type: ignore[assignment]
        out.append(b"$%d\r\n%b\r\n" % (len(data), data))
    elif kind is int:
        number_value: int = value  # type: ignore[assignment]
        out.append(b":%d\r\n" % number_value)
    elif value is None:
        out.append(_RESP3_NULL if resp3 else _RESP2_NULL)
    elif kind is list or kind is tuple:
        items: list[object] = value  # type: ignore[assignment]
        out.append(b"*%d\r\n" % len(items))
        for item in items:
            _encode_into(item, resp3, out)
    elif kind is SimpleString:
        out.append(_OK_BYTES if value is OK else _simple_line(value))  # type: ignore[arg-type]
    elif kind is ErrorReply:
        out.append(_error_line(value.message))  # type: ignore[attr-defined]
    elif kind is str:
        data = _utf8(value)  # type: ignore[arg-type]
        out.append(b"$%d\r\n%b\r\n" % (len(data), data))
    elif kind is bool:
        if resp3:
            out.append(b"#t\r\n" if value else b"#f\r\n")
        else:
            out.append(b":1\r\n" if value else b":0\r\n")
    elif kind is float:
        number: float = value  # type: ignore[assignment]
        text = format_double(number)
        if resp3:
            out.append(b"," + text + _CRLF)
        else:
            out.append(b"$%d\r\n%b\r\n" % (len(text), text))
    elif kind is dict:
        mapping: dict[object, object] = value  # type: ignore[assignment]
        out.append((b"%%%d\r\n" if resp3 else b"*%d\r\n") % (len(mapping) * (1 if resp3 else 2)))
        for key, item in mapping.items():
            _encode_into(key, resp3, out)
            _encode_into(item, resp3, out)
    elif kind is set or kind is frozenset:
        members: set[object] = value  # type: ignore[assignment]
        out.append((b"~%d\r\n" if resp3 else b"*%d\r\n") % len(members))
        for item in members:
            _encode_into(item, resp3, out)
    elif kind is Push:
        message: list[object] = value  # type: ignore[assignment]
        out.append((b">%d\r\n" if resp3 else b"*%d\r\n") % len(message))
        for item in message:
            _encode_into(item, resp3, out)
    elif value is NULL_ARRAY:
        out.append(_RESP3_NULL if resp3 else b"*-1\r\n")
    elif kind is RawReply:
        out.append(value)  # type: ignore[arg-type]
    elif kind is Verbatim:
        data = _utf8(value)  # type: ignore[arg-type]
        if resp3:
            out.append(b"=%d\r\ntxt:%b\r\n" % (len(data) + 4, data))
        else:
            out.append(b"$%d\r\n%b\r\n" % (len(data), data))
    elif isinstance(value, bytes | bytearray | memoryview):
        _encode_into(bytes(value), resp3, out)
    elif isinstance(value, bool):
        _encode_into(bool(value), resp3, out)
    elif isinstance(value, int):
        _encode_into(int(value), resp3, out)
    elif isinstance(value, str):
        _encode_into(str(value), resp3, out)
    else:
        raise TypeError(f"cannot encode {kind.__name__} as RESP")


def encode(value: object, protocol: int = 2) -> bytes:
    """Encode one reply for a RESP2 (``protocol=2``) or RESP3 (``protocol=3``) client.

    ``bytes`` and ``str`` are bulk strings, ``int`` an integer, ``None`` the null bulk string,
    ``list``/``tuple`` an array, :class:`SimpleString` a status, :class:`ErrorReply` an error,
    ``float`` a double (a bulk string in RESP2), ``bool`` a boolean (an integer in RESP2),
    ``dict`` a map (a flat array in RESP2), ``set`` a set (an array in RESP2), :class:`Push` a
    push (an array in RESP2), :class:`Verbatim` a verbatim string and :data:`NULL_ARRAY` the null
    array.

    >>> encode(b"hi"), encode([1, None]), encode({b"a": 1.5}, 3)
    (b'$2\\r\\nhi\\r\\n', b'*2\\r\\n:1\\r\\n$-1\\r\\n', b'%1\\r\\n$1\\r\\na\\r\\n,1.5\\r\\n')
    """
    kind = type(value)
    if kind is bytes:
        data: bytes = value  # type: ignore[assignment]
        return b"$%d\r\n%b\r\n" % (len(data), data)
    if value is OK:
        return _OK_BYTES
    if kind is int:
        number: int = value  # type: ignore[assignment]
        return b":%d\r\n" % number
    if kind is list:
        # MGET, LRANGE, HMGET...: an array of strings and nulls, without the general recursion.
        items: list[object] = value  # type: ignore[assignment]
        null = _RESP3_NULL if protocol >= 3 else _RESP2_NULL
        parts = [b"*%d\r\n" % len(items)]
        append = parts.append
        for item in items:
            if type(item) is bytes:
                append(b"$%d\r\n%b\r\n" % (len(item), item))
            elif item is None:
                append(null)
            else:
                break
        else:
            return b"".join(parts)
    out: list[bytes] = []
    _encode_into(value, protocol >= 3, out)
    return out[0] if len(out) == 1 else b"".join(out)


# --------------------------------------------------------------------------- request readers


@dataclass(slots=True)  # not frozen: one is made per read, and frozen __init__ costs 3x
class ParseResult:
    """What one read produced: the complete commands in order, then at most one protocol error.

    The commands before the error must still run; after an error the connection answers with
    the error and closes, as Redis does, and the reader accepts nothing more.
    """

    commands: list[Command]
    error: ProtocolError | None = None


class RequestReader(Protocol):
    """Splits the bytes a client sends into commands."""

    unauthenticated: bool
    """While true, the stricter limits Redis applies before AUTH are in force."""

    def feed(self, data: bytes) -> ParseResult:
        """Add ``data`` and return every command it completes (and an error, if any)."""
        ...

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete command."""
        ...


_SPACES: Final = frozenset(b" \t\n\v\f\r")
_HEX: Final = frozenset(b"0123456789abcdefABCDEF")
# Without quotes, \v, \f or NUL (which sdssplitargs treats unlike bytes.split), split() is exact.
_PLAIN_INLINE: Final = re.compile(rb"[^\"'\x0b\x0c\x00]*")
_ESCAPES: Final = {ord("n"): 10, ord("r"): 13, ord("t"): 9, ord("b"): 8, ord("a"): 7}


def split_inline(line: bytes) -> list[bytes] | None:
    """Split an inline command like Redis's ``sdssplitargs``; ``None`` on unbalanced quotes.

    >>> split_inline(b'SET k "a b\\\\x41" \\'it\\\\\\'s\\'')
    [b'SET', b'k', b'a bA', b"it's"]
    """
    if _PLAIN_INLINE.fullmatch(line):
        return line.split()
    args: list[bytes] = []
    i = 0
    n = len(line)
    while True:
        while i < n and line[i] in _SPACES:
            i += 1
        if i >= n:
            return args
        current = bytearray()
        in_double = in_single = False
        while True:
            c = line[i] if i < n else 0
            if in_double:
                if (
                    c == 0x5C
                    and i + 3 < n
                    and line[i + 1] == 0x78
                    and line[i + 2] in _HEX
                    and line[i + 3] in _HEX
                ):
                    current.append(int(line[i + 2 : i + 4], 16))
                    i += 3
                elif c == 0x5C and i + 1 < n:
                    i += 1
                    current.append(_ESCAPES.get(line[i], line[i]))
                elif c == 0x22:
                    if i + 1 < n and line[i + 1] not in _SPACES:
                        return None
                    i += 1
                    break
                elif i >= n:
                    return None
                else:
                    current.append(c)
            elif in_single:
                if c == 0x5C and i + 1 < n and line[i + 1] == 0x27:
                    i += 1
                    current.append(0x27)
                elif c == 0x27:
                    if i + 1 < n and line[i + 1] not in _SPACES:
                        return None
                    i += 1
                    break
                elif i >= n:
                    return None
                else:
                    current.append(c)
            elif i >= n or c in (0x20, 0x0A, 0x0D, 0x09, 0x00):
                if i < n:
                    i += 1
                break
            elif c == 0x22:
                in_double = True
            elif c == 0x27:
                in_single = True
            else:
                current.append(c)
            i += 1
        args.append(bytes(current))


def _parse_count(text: bytes) -> int | None:
    """Redis's ``string2ll`` on a length header: decimal, no sign but ``-``, no leading zeros."""
    if text.isdigit():
        if len(text) > 1 and text[0] == 0x30:
            return None
        return int(text)
    if text[:1] == b"-" and text[1:].isdigit() and text[1:2] != b"0":
        return int(text)
    return None


class PythonRequestReader:
    """The pure-Python request reader: Redis's parser, state kept across reads.

    :param max_bulk_len: the longest bulk argument accepted (Redis's ``proto-max-bulk-len``).
    :param max_query_buffer: the most bytes a pending request may occupy.

    >>> reader = PythonRequestReader()
    >>> reader.feed(b"*1\\r\\n$4\\r\\nPI").commands, reader.feed(b"NG\\r\\nECHO hi\\r\\n").commands
    ([], [[b'PING'], [b'ECHO', b'hi']])
    """

    def __init__(
        self, max_bulk_len: int = DEFAULT_MAX_BULK, max_query_buffer: int = DEFAULT_MAX_QUERY
    ) -> None:
        self.max_bulk_len = max_bulk_len
        self.max_query_buffer = max_query_buffer
        self.unauthenticated = False
        self._buf = b""
        self._pos = 0
        # A multibulk in progress: arguments still to read, the ones read, the current bulk's length.
        self._remaining = 0
        self._args: list[bytes] = []
        self._bulk = -1
        # While a large bulk arrives, reads are collected here and joined once it is complete, so
        # a 100 MB argument costs one copy instead of one per read.
        self._chunks: list[bytes] = []
        self._chunked = 0
        self._need = 0
        self._failed: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete command."""
        return len(self._buf) - self._pos + self._chunked

    @property
    def failed(self) -> bool:
        """Whether a protocol error was reported (nothing more is accepted)."""
        return self._failed is not None

    @property
    def idle(self) -> bool:
        """True at a command boundary with nothing buffered."""
        return self._remaining == 0 and self.buffered == 0

    def feed(self, data: bytes) -> ParseResult:
        """Add ``data`` and return every command it completes (and an error, if any)."""
        if self._failed is not None:
            return ParseResult([], None)
        if self._need:
            self._chunks.append(data)
            self._chunked += len(data)
            if len(self._buf) - self._pos + self._chunked < self._need:
                return self._check_size([])
            self._buf = self._buf[self._pos :] + b"".join(self._chunks)
            self._pos = 0
            self._chunks.clear()
            self._chunked = 0
            self._need = 0
        elif self._pos >= len(self._buf):
            self._buf = data
            self._pos = 0
        else:
            self._buf = self._buf[self._pos :] + data
            self._pos = 0
        commands: list[Command] = []
        try:
            self._parse(commands)
        except ProtocolError as exc:
            self._failed = exc
            self._buf = b""
            self._pos = 0
            return ParseResult(commands, exc)
        return self._check_size(commands)

    def _check_size(self, commands: list[Command]) -> ParseResult:
        if self.buffered > self.max_query_buffer:
            error = ProtocolError("ERR Protocol error: query buffer limit exceeded")
            self._failed = error
            self._buf = b""
            self._pos = 0
            self._chunks.clear()
            self._chunked = 0
            return ParseResult(commands, error)
        return ParseResult(commands)

    def _parse(self, commands: list[Command]) -> None:
        buf = self._buf
        end = len(buf)
        pos = self._pos
        args = self._args
        while True:
            if self._remaining == 0:
                if pos >= end:
                    break
                if buf[pos] != 0x2A:  # not '*': an inline command
                    newline = buf.find(b"\n", pos)
                    if newline < 0:
                        if end - pos > INLINE_MAX:
                            raise ProtocolError("ERR Protocol error: too big inline request")
                        break
                    line_end = (
                        newline - 1 if newline > pos and buf[newline - 1] == 0x0D else newline
                    )
                    inline = split_inline(buf[pos:line_end])
                    if inline is None:
                        raise ProtocolError("ERR Protocol error: unbalanced quotes in request")
                    pos = newline + 1
                    if inline:
                        commands.append(inline)
                    continue
                cr = buf.find(b"\r", pos)
                if cr < 0:
                    if end - pos > INLINE_MAX:
                        raise ProtocolError("ERR Protocol error: too big mbulk count string")
                    break
                if cr > end - 2:
                    break
                count = _parse_count(buf[pos + 1 : cr])
                if count is None or count > _INT_MAX:
                    raise ProtocolError("ERR Protocol error: invalid multibulk length")
                if count > _UNAUTH_MAX_ARGS and self.unauthenticated:
                    raise ProtocolError("ERR Protocol error: unauthenticated multibulk length")
                pos = cr + 2
                if count <= 0:
                    continue
                self._remaining = count
                args = self._args = []
            while self._remaining:
                bulk = self._bulk
                if bulk < 0:
                    cr = buf.find(b"\r", pos)
                    if cr < 0:
                        if end - pos > INLINE_MAX:
                            raise ProtocolError("ERR Protocol error: too big bulk count string")
                        self._pos = pos
                        return
                    if cr > end - 2:
                        self._pos = pos
                        return
                    if buf[pos] != 0x24:  # '$'
                        got = chr(buf[pos]) if buf[pos] else ""
                        raise ProtocolError(f"ERR Protocol error: expected '$', got '{got}'")
                    parsed = _parse_count(buf[pos + 1 : cr])
                    if parsed is None or parsed < 0 or parsed > self.max_bulk_len:
                        raise ProtocolError("ERR Protocol error: invalid bulk length")
                    if parsed > _UNAUTH_MAX_BULK and self.unauthenticated:
                        raise ProtocolError("ERR Protocol error: unauthenticated bulk length")
                    bulk = self._bulk = parsed
                    pos = cr + 2
                if end - pos < bulk + 2:
                    self._pos = pos
                    if bulk + 2 > 4 * INLINE_MAX:
                        self._need = bulk + 2
                    return
                args.append(buf[pos : pos + bulk])
                pos += bulk + 2
                self._bulk = -1
                self._remaining -= 1
            commands.append(args)
            args = self._args = []
        self._pos = pos


class HiredisRequestReader:
    """A request reader that lets hiredis's C parser do the common case.

    A read that holds only whole multibulk requests (nearly every read of a pipelining client) is
    parsed by hiredis. Everything else, an inline command, a request split across reads, a frame
    hiredis rejects, goes to a :class:`PythonRequestReader` from the byte where that request
    starts, so the limits and error texts are the pure reader's. That byte is found by re-encoding
    the requests hiredis returned from the same read; clients always send the canonical encoding,
    and the re-encoding is compared with the bytes before the offset is trusted.
    """

    def __init__(
        self, max_bulk_len: int = DEFAULT_MAX_BULK, max_query_buffer: int = DEFAULT_MAX_QUERY
    ) -> None:
        import hiredis

        self._hiredis = hiredis
        self._reader = hiredis.Reader()
        self._python = PythonRequestReader(max_bulk_len, max_query_buffer)
        self._python_active = False

    @property
    def unauthenticated(self) -> bool:
        """While true, the stricter limits Redis applies before AUTH are in force."""
        return self._python.unauthenticated

    @unauthenticated.setter
    def unauthenticated(self, value: bool) -> None:
        self._python.unauthenticated = value

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete command."""
        return self._python.buffered

    def feed(self, data: bytes) -> ParseResult:
        """Add ``data`` and return every command it completes (and an error, if any)."""
        python = self._python
        if self._python_active:
            result = python.feed(data)
            if python.idle or result.error is not None:
                self._python_active = False
            return result
        if (
            python.unauthenticated
            or not data
            or data[0] != 0x2A
            or python._failed is not None
            or _BIG_COUNT.search(data) is not None
        ):
            return self._to_python(data, 0, [])
        reader = self._reader
        reader.feed(data)
        gets = reader.gets
        commands: list[Command] = []
        append = commands.append
        size = 0
        try:
            command = gets()
            while command is not False:
                # Only a flat array of bulk strings is a request; anything else (an inline
                # command, a nested array, an integer) goes to the Python reader.
                if type(command) is not list or not command:
                    return self._handoff(data, commands)
                count = len(command)
                size += 4 if count < 10 else 3 + _digits(count)
                for arg in command:
                    if type(arg) is not bytes:
                        return self._handoff(data, commands)
                    length = len(arg)
                    size += length + (
                        6 if length < 10 else 7 if length < 100 else 5 + _digits(length)
                    )
                append(command)
                command = gets()
        except self._hiredis.ProtocolError:
            return self._handoff(data, commands)
        # hiredis does not say whether it holds part of a request (it consumes a type byte
        # before the rest of its line arrives), so the read must account for every byte.
        if size != len(data):
            return self._handoff(data, commands)
        return ParseResult(commands)

    def _handoff(self, data: bytes, commands: list[Command]) -> ParseResult:
        """Give the rest of ``data``, after the complete ``commands``, to the Python reader."""
        self._reader = self._hiredis.Reader()
        offset = sum(_encoded_size(command) for command in commands)
        if b"".join(_encode_request(command) for command in commands) != data[:offset]:
            # A non-canonical encoding: the offset cannot be trusted, so re-parse the whole read.
            return self._to_python(data, 0, [])
        return self._to_python(data, offset, commands)

    def _to_python(self, data: bytes, offset: int, commands: list[Command]) -> ParseResult:
        python = self._python
        result = python.feed(data[offset:] if offset else data)
        self._python_active = not python.idle and result.error is None
        if commands:
            return ParseResult(commands + result.commands, result.error)
        return result


class CompiledRequestReader:
    """A request reader whose common case is the compiled parser of :mod:`stratacache.resp._fast`.

    The compiled parser takes the complete, canonical multibulk requests at the start of a read
    and says exactly where it stopped; everything from there (an inline command, a request split
    across reads, a header it does not judge, a bulk over the limit) goes to a
    :class:`PythonRequestReader`, which stays in charge until it is idle again. So the limits and
    error texts are the pure reader's, and no re-encoding is needed to find the hand-off byte.
    """

    def __init__(
        self, max_bulk_len: int = DEFAULT_MAX_BULK, max_query_buffer: int = DEFAULT_MAX_QUERY
    ) -> None:
        from stratacache.resp import _fast

        self._parse = _fast.parse_requests
        self._python = PythonRequestReader(max_bulk_len, max_query_buffer)
        self._python_active = False
        self.idle = True
        """True when no request is partly read: the next read starts at a request boundary."""
        self.max_bulk_len = max_bulk_len
        """The longest bulk argument accepted."""

    @property
    def unauthenticated(self) -> bool:
        """While true, the stricter limits Redis applies before AUTH are in force."""
        return self._python.unauthenticated

    @unauthenticated.setter
    def unauthenticated(self, value: bool) -> None:
        self._python.unauthenticated = value

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete command."""
        return self._python.buffered

    def feed(self, data: bytes) -> ParseResult:
        """Add ``data`` and return every command it completes (and an error, if any)."""
        python = self._python
        commands: list[Command] = []
        if not (self._python_active or python.unauthenticated or python._failed is not None):
            commands, used = self._parse(data, python.max_bulk_len)
            if used == len(data):
                return ParseResult(commands)
            if used:
                data = data[used:]
        result = python.feed(data)
        self._python_active = not python.idle and result.error is None
        self.idle = not self._python_active and python._failed is None
        if commands:
            return ParseResult(commands + result.commands, result.error)
        return result


# An array header of 10,000 or more elements anywhere in a read sends the read to the Python
# reader: hiredis would allocate the whole array up front, and freeing a reader left waiting for
# "*2000000000" takes seconds (a denial of service). Binary data that merely looks like such a
# header only costs the slower parser.
_BIG_COUNT: Final = re.compile(rb"\*\d{5}")


def _digits(number: int) -> int:
    if number < 10:
        return 1
    if number < 100:
        return 2
    if number < 1000:
        return 3
    return len(str(number))


def _encoded_size(command: Command) -> int:
    """The bytes of ``command`` in the canonical multibulk encoding."""
    size = 3 + _digits(len(command))  # *N\r\n
    for arg in command:
        length = len(arg)
        size += length + 5 + (1 if length < 10 else 2 if length < 100 else _digits(length))
    return size


def _encode_request(command: Command) -> bytes:
    return b"*%d\r\n" % len(command) + b"".join(
        b"$%d\r\n%b\r\n" % (len(arg), arg) for arg in command
    )


def request_reader(
    max_bulk_len: int = DEFAULT_MAX_BULK,
    max_query_buffer: int = DEFAULT_MAX_QUERY,
    *,
    prefer_hiredis: bool = True,
) -> RequestReader:
    """A request reader: compiled or hiredis-backed when available (and preferred), else pure Python."""
    if prefer_hiredis:
        try:
            return CompiledRequestReader(max_bulk_len, max_query_buffer)
        except ImportError:
            pass
        try:
            return HiredisRequestReader(max_bulk_len, max_query_buffer)
        except ImportError:
            pass
    return PythonRequestReader(max_bulk_len, max_query_buffer)


# --------------------------------------------------------------------------- reply reader


class _IncompleteError(Exception):
    """Internal: the buffer ends inside a reply."""


_DOUBLE_RE: Final = re.compile(rb"[+-]?(inf|nan|(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?)", re.IGNORECASE)


class ReplyReader:
    """A pure-Python reader of RESP2/RESP3 replies into the values :func:`encode` takes.

    Attributes are read and dropped; a map whose keys are not hashable is returned as a list of
    pairs. Malformed input raises :class:`ProtocolError`; an incomplete reply waits for more.

    :param max_bulk_len: the longest string accepted.
    :param max_depth: the deepest nesting accepted.

    >>> reader = ReplyReader()
    >>> reader.feed(b"*2\\r\\n:1\\r\\n$2\\r\\nhi\\r\\n%1\\r\\n+a\\r\\n#t")
    >>> reader.gets(), reader.gets()
    ([1, b'hi'], False)
    >>> reader.feed(b"\\r\\n")
    >>> reader.gets()
    {'a': True}
    """

    def __init__(self, max_bulk_len: int = DEFAULT_MAX_BULK, max_depth: int = 64) -> None:
        self.max_bulk_len = max_bulk_len
        self.max_depth = max_depth
        self._buf = b""
        self._pos = 0

    def feed(self, data: bytes) -> None:
        """Add bytes read from the server."""
        self._buf = self._buf[self._pos :] + data
        self._pos = 0

    def gets(self) -> object:
        """The next complete reply, or ``False`` when the buffer holds only part of one."""
        try:
            value, pos = self._value(self._pos, 0)
        except _IncompleteError:
            return False
        except (ValueError, IndexError, UnicodeDecodeError) as exc:
            raise ProtocolError(f"ERR Protocol error: {exc}") from None
        self._pos = pos
        return value

    def _line(self, pos: int) -> tuple[bytes, int]:
        end = self._buf.find(b"\r\n", pos)
        if end < 0:
            if len(self._buf) - pos > INLINE_MAX:
                raise ValueError("line too long")
            raise _IncompleteError
        return self._buf[pos:end], end + 2

    def _count(self, text: bytes) -> int:
        number = _parse_count(text)
        if number is None:
            raise ValueError(f"invalid length {text!r}")
        return number

    def _value(self, pos: int, depth: int) -> tuple[object, int]:
        if depth > self.max_depth:
            raise ValueError("nesting too deep")
        if pos >= len(self._buf):
            raise _IncompleteError
        kind = self._buf[pos]
        line, pos = self._line(pos + 1)
        if kind == 0x2B:  # '+'
            return SimpleString(line.decode("utf-8", "surrogateescape")), pos
        if kind == 0x2D:  # '-'
            return ErrorReply(line.decode("utf-8", "surrogateescape")), pos
        if kind == 0x3A:  # ':'
            return self._count(line), pos
        if kind in (0x24, 0x21, 0x3D):  # '$' bulk, '!' bulk error, '=' verbatim
            size = self._count(line)
            if size < 0:
                if kind != 0x24 or size != -1:
                    raise ValueError(f"invalid length {size}")
                return None, pos
            if size > self.max_bulk_len:
                raise ValueError("bulk string too long")
            if len(self._buf) - pos < size + 2:
                raise _IncompleteError
            if self._buf[pos + size : pos + size + 2] != b"\r\n":
                raise ValueError("bulk string not terminated by CRLF")
            data = self._buf[pos : pos + size]
            pos += size + 2
            if kind == 0x21:
                return ErrorReply(data.decode("utf-8", "surrogateescape")), pos
            if kind == 0x3D:
                if len(data) < 4 or data[3] != 0x3A:
                    raise ValueError("verbatim string without a format")
                return Verbatim(data[4:].decode("utf-8", "surrogateescape")), pos
            return data, pos
        if kind in (0x2A, 0x7E, 0x3E, 0x25, 0x7C):  # '*' array, '~' set, '>' push, '%' map, '|'
            count = self._count(line)
            if count < 0:
                if kind != 0x2A or count != -1:
                    raise ValueError(f"invalid length {count}")
                return NULL_ARRAY, pos
            if kind in (0x25, 0x7C):
                pairs: list[tuple[object, object]] = []
                for _ in range(count):
                    key, pos = self._value(pos, depth + 1)
                    item, pos = self._value(pos, depth + 1)
                    pairs.append((key, item))
                if kind == 0x7C:  # an attribute: metadata about the reply that follows
                    return self._value(pos, depth)
                try:
                    return dict(pairs), pos
                except TypeError:
                    return pairs, pos
            items: list[object] = []
            for _ in range(count):
                item, pos = self._value(pos, depth + 1)
                items.append(item)
            if kind == 0x3E:
                return Push(items), pos
            if kind == 0x7E:
                try:
                    return set(items), pos
                except TypeError:
                    return items, pos
            return items, pos
        if kind == 0x5F:  # '_'
            if line:
                raise ValueError("null with a payload")
            return None, pos
        if kind == 0x23:  # '#'
            if line not in (b"t", b"f"):
                raise ValueError(f"invalid boolean {line!r}")
            return line == b"t", pos
        if kind == 0x2C:  # ','
            if not _DOUBLE_RE.fullmatch(line):
                raise ValueError(f"invalid double {line!r}")
            return float(line), pos
        if kind == 0x28:  # '(' big number
            if not re.fullmatch(rb"-?\d+", line):
                raise ValueError(f"invalid big number {line!r}")
            return int(line), pos
        raise ValueError(f"unknown reply type byte {chr(kind)!r}")


Encoder = Callable[[object], bytes]
