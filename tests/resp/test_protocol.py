"""The sans-IO wire layer: request readers, the encoder, the reply reader.

Both request readers (pure Python, and hiredis with its hand-off to Python) run every test. Every
fixture is fed whole, split at every byte, and one byte at a time; hypothesis feeds random and
truncated input, which may only ever produce commands and protocol errors, never an exception.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stratacache.errors import RequestError
from stratacache.resp.protocol import (
    NULL_ARRAY,
    OK,
    Command,
    CompiledRequestReader,
    ErrorReply,
    HiredisRequestReader,
    ProtocolError,
    Push,
    PythonRequestReader,
    ReplyReader,
    RequestReader,
    SimpleString,
    Verbatim,
    encode,
    format_double,
    request_reader,
    split_inline,
)

ReaderFactory = Callable[..., RequestReader]


def _hiredis(*args: int) -> RequestReader:
    pytest.importorskip("hiredis")
    return HiredisRequestReader(*args)


def _compiled(*args: int) -> RequestReader:
    pytest.importorskip("stratacache.resp._fast")
    return CompiledRequestReader(*args)


READERS = [
    pytest.param(PythonRequestReader, id="python"),
    pytest.param(_hiredis, id="hiredis"),
    pytest.param(_compiled, id="compiled"),
]

# (wire bytes, the commands they hold)
FIXTURES: list[tuple[bytes, list[Command]]] = [
    (b"*1\r\n$4\r\nPING\r\n", [[b"PING"]]),
    (b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n", [[b"SET", b"k", b"hello"]]),
    (b"*2\r\n$3\r\nGET\r\n$0\r\n\r\n", [[b"GET", b""]]),
    (b"*2\r\n$4\r\nECHO\r\n$4\r\na\r\nb\r\n", [[b"ECHO", b"a\r\nb"]]),
    (b"*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nPING\r\n", [[b"PING"], [b"PING"]]),
    (b"*0\r\n*-1\r\n*1\r\n$4\r\nPING\r\n", [[b"PING"]]),
    (b"PING\r\n", [[b"PING"]]),
    (b"PING\n", [[b"PING"]]),
    (b"SET  k   v\r\n", [[b"SET", b"k", b"v"]]),
    (b'SET k "a b\\x41\\n"\r\n', [[b"SET", b"k", b"a bA\n"]]),
    (b"SET k 'it\\'s'\r\n", [[b"SET", b"k", b"it's"]]),
    (b"\r\n\r\nPING\r\n", [[b"PING"]]),
    (b"PING\r\n*1\r\n$4\r\nPING\r\nECHO x\r\n", [[b"PING"], [b"PING"], [b"ECHO", b"x"]]),
    (b"*2\r\n$3\r\nGET\r\n$10\r\n0123456789\r\n", [[b"GET", b"0123456789"]]),
    (
        b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$70000\r\n" + b"x" * 70000 + b"\r\n",
        [[b"SET", b"k", b"x" * 70000]],
    ),
]

# (wire bytes, the commands before the error, Redis's error text)
BAD: list[tuple[bytes, list[Command], str]] = [
    (b"*1\r\n:4\r\n", [], "ERR Protocol error: expected '$', got ':'"),
    (b"*1\r\n*1\r\n$1\r\na\r\n", [], "ERR Protocol error: expected '$', got '*'"),
    (b"*x\r\n", [], "ERR Protocol error: invalid multibulk length"),
    (b"*01\r\n$4\r\nPING\r\n", [], "ERR Protocol error: invalid multibulk length"),
    (b"*3000000000\r\n", [], "ERR Protocol error: invalid multibulk length"),
    (b"*1\r\n$-1\r\n", [], "ERR Protocol error: invalid bulk length"),
    (b"*1\r\n$abc\r\n", [], "ERR Protocol error: invalid bulk length"),
    (b"*1\r\n$999999999999\r\n", [], "ERR Protocol error: invalid bulk length"),
    (
        b"*1\r\n$4\r\nPING\r\n*1\r\n$x\r\n",
        [[b"PING"]],
        "ERR Protocol error: invalid bulk length",
    ),
    (b'SET k "unbalanced\r\n', [], "ERR Protocol error: unbalanced quotes in request"),
    (b'SET k "a"b\r\n', [], "ERR Protocol error: unbalanced quotes in request"),
    (b"x" * 70000, [], "ERR Protocol error: too big inline request"),
    (b"*" + b"1" * 70000, [], "ERR Protocol error: too big mbulk count string"),
    (b"*1\r\n$" + b"1" * 70000, [], "ERR Protocol error: too big bulk count string"),
]


def _feed_all(reader: RequestReader, chunks: list[bytes]) -> tuple[list[Command], str | None]:
    commands: list[Command] = []
    error: str | None = None
    for chunk in chunks:
        result = reader.feed(chunk)
        commands += result.commands
        if result.error is not None:
            assert error is None, "a reader reports at most one error"
            error = str(result.error)
    return commands, error


@pytest.mark.parametrize("factory", READERS)
@pytest.mark.parametrize(("wire", "expected"), FIXTURES)
def test_fixtures_parse_whole_split_and_bytewise(
    factory: ReaderFactory, wire: bytes, expected: list[Command]
) -> None:
    assert _feed_all(factory(), [wire]) == (expected, None)
    assert _feed_all(factory(), [wire[i : i + 1] for i in range(len(wire))]) == (expected, None)
    step = max(1, len(wire) // 200)  # every split of the small fixtures, a sample of the big one
    for cut in range(0, len(wire) + 1, step):
        assert _feed_all(factory(), [wire[:cut], wire[cut:]]) == (expected, None), cut


@pytest.mark.parametrize("factory", READERS)
@pytest.mark.parametrize(("wire", "before", "message"), BAD)
def test_bad_input_gives_redis_error_text(
    factory: ReaderFactory, wire: bytes, before: list[Command], message: str
) -> None:
    commands, error = _feed_all(factory(), [wire])
    assert (commands, error) == (before, message)
    # Split anywhere, the same commands come out first and the same error follows.
    for cut in range(1, min(len(wire), 64)):
        assert _feed_all(factory(), [wire[:cut], wire[cut:]]) == (before, message), cut


@pytest.mark.parametrize("factory", READERS)
def test_reader_accepts_nothing_after_an_error(factory: ReaderFactory) -> None:
    reader = factory()
    assert reader.feed(b"*1\r\n:1\r\n").error is not None
    assert reader.feed(b"*1\r\n$4\r\nPING\r\n").commands == []


@pytest.mark.parametrize("factory", READERS)
def test_bulk_length_and_query_buffer_limits(factory: ReaderFactory) -> None:
    assert (
        str(factory(10).feed(b"*1\r\n$11\r\n").error) == "ERR Protocol error: invalid bulk length"
    )
    assert factory(10).feed(b"*1\r\n$10\r\n0123456789\r\n").commands == [[b"0123456789"]]
    reader = factory(1024 * 1024, 1000)
    result = reader.feed(b"*1\r\n$2000\r\n" + b"x" * 500)
    assert result.error is None
    result = reader.feed(b"x" * 600)
    assert str(result.error) == "ERR Protocol error: query buffer limit exceeded"


@pytest.mark.parametrize("factory", READERS)
def test_unauthenticated_limits(factory: ReaderFactory) -> None:
    reader = factory()
    reader.unauthenticated = True
    many = b"*11\r\n" + b"$1\r\na\r\n" * 11
    assert str(reader.feed(many).error) == "ERR Protocol error: unauthenticated multibulk length"
    reader = factory()
    reader.unauthenticated = True
    big = b"*2\r\n$4\r\nAUTH\r\n$16385\r\n"
    assert str(reader.feed(big).error) == "ERR Protocol error: unauthenticated bulk length"
    reader = factory()
    reader.unauthenticated = True
    assert reader.feed(b"*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n").commands == [[b"AUTH", b"pw"]]


@pytest.mark.parametrize("factory", READERS)
def test_large_bulk_in_many_reads_is_assembled(factory: ReaderFactory) -> None:
    payload = bytes(range(256)) * 4096  # 1 MiB, every byte value
    wire = b"*2\r\n$3\r\nSET\r\n$%d\r\n%b\r\n" % (len(payload), payload)
    reader = factory()
    commands: list[Command] = []
    for start in range(0, len(wire), 65536):
        result = reader.feed(wire[start : start + 65536])
        assert result.error is None
        commands += result.commands
    assert commands == [[b"SET", payload]]
    assert reader.buffered == 0


def test_hiredis_hands_off_non_canonical_frames() -> None:
    reader = _hiredis()
    # A leading zero in a length is refused by Redis: the hand-off must give Redis's error.
    assert str(reader.feed(b"*1\r\n$04\r\nPING\r\n").error) == (
        "ERR Protocol error: invalid bulk length"
    )


@pytest.mark.parametrize("factory", READERS)
def test_a_huge_array_header_costs_nothing(factory: ReaderFactory) -> None:
    # hiredis allocates a declared array up front and takes seconds to free one of 2e9 slots;
    # such headers must never reach it (Redis allocates lazily, and so does the Python reader).
    started = time.perf_counter()
    for _ in range(3):
        reader = factory()
        assert reader.feed(b"*1\r\n$4\r\nPING\r\n*2000000000\r\n$1\r\n").commands == [[b"PING"]]
        del reader
    assert time.perf_counter() - started < 1.0


def test_request_reader_prefers_the_compiled_parser_then_hiredis() -> None:
    pytest.importorskip("stratacache.resp._fast")
    assert isinstance(request_reader(), CompiledRequestReader)
    assert isinstance(request_reader(prefer_hiredis=False), PythonRequestReader)


def test_split_inline_matches_sdssplitargs() -> None:
    assert split_inline(b"a \t b") == [b"a", b"b"]
    assert split_inline(b'"\\x4g"') == [b"x4g"]  # not a hex escape: the backslash escapes x
    assert split_inline(b'"\\t\\n\\q"') == [b"\t\nq"]
    assert split_inline(b"'a\\\"b'") == [b'a\\"b']
    assert split_inline(b'"a" "b"') == [b"a", b"b"]
    assert split_inline(b"") == []
    assert split_inline(b'"open') is None


# --------------------------------------------------------------------------- fuzzing

_COMMANDS = st.lists(st.lists(st.binary(max_size=40), min_size=1, max_size=6), max_size=8)


def _wire(commands: list[Command]) -> bytes:
    return b"".join(
        b"*%d\r\n" % len(command) + b"".join(b"$%d\r\n%b\r\n" % (len(a), a) for a in command)
        for command in commands
    )


@pytest.mark.parametrize("factory", READERS)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=300), cuts=st.lists(st.integers(0, 300), max_size=6))
def test_random_bytes_never_raise(factory: ReaderFactory, data: bytes, cuts: list[int]) -> None:
    reader = factory()
    bounds = sorted({0, len(data), *(min(c, len(data)) for c in cuts)})
    chunks = [data[a:b] for a, b in itertools.pairwise(bounds)]
    commands, error = _feed_all(reader, chunks)
    assert all(isinstance(arg, bytes) for command in commands for arg in command)
    assert error is None or error.startswith("ERR Protocol error:")


@pytest.mark.parametrize("factory", READERS)
@settings(max_examples=150, deadline=None)
@given(commands=_COMMANDS, data=st.data())
def test_valid_streams_round_trip_and_truncation_is_a_prefix(
    factory: ReaderFactory, commands: list[Command], data: st.DataObject
) -> None:
    wire = _wire(commands)
    cut = data.draw(st.integers(0, len(wire)))
    assert _feed_all(factory(), [wire[:cut], wire[cut:]]) == (commands, None)
    parsed, error = _feed_all(factory(), [wire[:cut]])
    assert error is None
    assert parsed == commands[: len(parsed)]


@pytest.mark.parametrize("factory", READERS)
@settings(max_examples=100, deadline=None)
@given(commands=_COMMANDS, garbage=st.binary(max_size=30), data=st.data())
def test_commands_before_a_bad_frame_survive_it(
    factory: ReaderFactory, commands: list[Command], garbage: bytes, data: st.DataObject
) -> None:
    wire = _wire(commands) + b"*1\r\n:1\r\n" + garbage
    cut = data.draw(st.integers(0, len(wire)))
    parsed, error = _feed_all(factory(), [wire[:cut], wire[cut:]])
    assert parsed == commands
    assert error == "ERR Protocol error: expected '$', got ':'"


# --------------------------------------------------------------------------- encoder


def test_encode_types_for_both_protocols() -> None:
    assert encode(OK) == b"+OK\r\n"
    assert encode(ErrorReply("ERR bad\r\nthing")) == b"-ERR bad  thing\r\n"
    assert encode(None, 2) == b"$-1\r\n"
    assert encode(None, 3) == b"_\r\n"
    assert encode(NULL_ARRAY, 2) == b"*-1\r\n"
    assert encode(NULL_ARRAY, 3) == b"_\r\n"
    assert encode(True, 2) == b":1\r\n"
    assert encode(True, 3) == b"#t\r\n"
    assert encode(1.5, 2) == b"$3\r\n1.5\r\n"
    assert encode(float("inf"), 3) == b",inf\r\n"
    assert encode({b"a": 1}, 2) == b"*2\r\n$1\r\na\r\n:1\r\n"
    assert encode({b"a": 1}, 3) == b"%1\r\n$1\r\na\r\n:1\r\n"
    assert encode({b"m"}, 3) == b"~1\r\n$1\r\nm\r\n"
    assert encode(Push([b"message"]), 2) == b"*1\r\n$7\r\nmessage\r\n"
    assert encode(Push([b"message"]), 3) == b">1\r\n$7\r\nmessage\r\n"
    assert encode(Verbatim("hi"), 2) == b"$2\r\nhi\r\n"
    assert encode(Verbatim("hi"), 3) == b"=6\r\ntxt:hi\r\n"
    assert encode("é") == b"$2\r\n\xc3\xa9\r\n"
    with pytest.raises(TypeError):
        encode(object())


def test_format_double_is_redis_7_0() -> None:
    assert format_double(0.1) == b"0.10000000000000001"
    assert format_double(-0.0) == b"-0"
    assert format_double(float("nan")) == b"nan"
    assert format_double(1e300) == b"1.0000000000000001e+300"


_LINE = st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\n")
_LEAVES = (
    st.binary(max_size=20)
    | st.integers(-(2**63), 2**63 - 1)
    | st.none()
    | st.booleans()
    | st.floats(allow_nan=False)
    | st.text(alphabet=_LINE, max_size=10).map(SimpleString)
    | st.text(alphabet=_LINE, min_size=1, max_size=10).map(lambda t: ErrorReply("ERR " + t))
    | st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=10).map(Verbatim)
)
_VALUES = st.recursive(
    _LEAVES,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.binary(max_size=8), children, max_size=4)
        | st.sets(st.binary(max_size=8), max_size=4)
        | st.lists(children, max_size=3).map(Push)
    ),
    max_leaves=12,
)


def _expected(value: object, resp: int) -> object:
    """What a RESP2 or RESP3 client reads back for ``value``."""
    if isinstance(value, bool):
        return value if resp == 3 else int(value)
    if isinstance(value, float):
        return value if resp == 3 else format_double(value)
    if isinstance(value, Verbatim):
        return value if resp == 3 else value.encode()
    if isinstance(value, Push):
        items = [_expected(item, resp) for item in value]
        return Push(items) if resp == 3 else items
    if isinstance(value, list):
        return [_expected(item, resp) for item in value]
    if isinstance(value, dict):
        if resp == 3:
            return {key: _expected(item, resp) for key, item in value.items()}
        flat: list[object] = []
        for key, item in value.items():
            flat += [key, _expected(item, resp)]
        return flat
    if isinstance(value, set):
        return set(value) if resp == 3 else list(value)
    return value


@pytest.mark.parametrize("resp", [2, 3])
@settings(max_examples=200, deadline=None)
@given(value=_VALUES)
def test_encode_then_read_round_trips(resp: int, value: object) -> None:
    wire = encode(value, resp)
    reader = ReplyReader()
    reader.feed(wire)
    got = reader.gets()
    expected = _expected(value, resp)
    if resp == 2 and isinstance(value, set):
        assert isinstance(got, list)
        assert isinstance(expected, list)
        assert sorted(got) == sorted(expected)
    else:
        assert got == expected
    assert reader.gets() is False


@settings(max_examples=100, deadline=None)
@given(value=_VALUES, data=st.data())
def test_reply_reader_any_split(value: object, data: st.DataObject) -> None:
    wire = encode(value, 3)
    cut = data.draw(st.integers(0, len(wire)))
    reader = ReplyReader()
    reader.feed(wire[:cut])
    first = reader.gets()
    reader.feed(wire[cut:])
    got = first if first is not False else reader.gets()
    assert got == _expected(value, 3)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=200))
def test_reply_reader_random_bytes_raise_only_protocol_errors(data: bytes) -> None:
    reader = ReplyReader()
    reader.feed(data)
    try:
        while reader.gets() is not False:
            pass
    except RequestError as exc:  # the only exception allowed out, and a ProtocolError
        failure: Exception | None = exc
    else:
        failure = None
    assert failure is None or isinstance(failure, ProtocolError)


def test_reply_reader_types() -> None:
    reader = ReplyReader()
    reader.feed(b"(12345678901234567890\r\n,-inf\r\n!3\r\nERR\r\n|1\r\n+k\r\n+v\r\n:7\r\n*-1\r\n")
    assert reader.gets() == 12345678901234567890
    assert math.isinf(reader.gets())  # type: ignore[arg-type]
    assert reader.gets() == ErrorReply("ERR")
    assert reader.gets() == 7  # the attribute is read and dropped
    assert reader.gets() is NULL_ARRAY
    reader.feed(b"?x\r\n")
    with pytest.raises(ProtocolError):
        reader.gets()
