"""The compiled fast path (:mod:`stratacache.resp._fast`) against the pure-Python path.

Two sidecars on the same fake clock and seed get the same bytes through the same connection code
(:class:`~stratacache.resp.server.RespConnection` on a recording transport): one with the compiled
reader and runner (``Runner.serve`` per read, ``Runner.run`` inside ``Sidecar.feed``), one with
the pure-Python reader and ``accelerate=False``. Every read must give byte-identical replies, and
the sidecars must end in the same state: keys, values, TTLs, command and error statistics,
``dirty``, keyspace hits and misses. Commands that change the session's state (MULTI, SELECT,
HELLO, SUBSCRIBE, CLIENT REPLY) sit between the quick ones, so the hand-over between the compiled
and the Python path is exercised in both directions, at every byte boundary of the reads.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from stratacache.resp.keyspace import Keyspace
from stratacache.resp.server import RespConnection, RespServer
from stratacache.resp.sidecar import Sidecar
from stratacache.resp.values import HashValue, ListValue

from .conftest import FakeClock

_fast = pytest.importorskip("stratacache.resp._fast")


class _Transport:
    """Records what the connection writes."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default

    def write(self, data: bytes) -> None:
        self.data += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        return None

    def resume_reading(self) -> None:
        return None

    def take(self) -> bytes:
        data = bytes(self.data)
        self.data.clear()
        return data


class _Loop:
    """``call_soon`` by hand: the wake-ups of blocked clients run when the test says."""

    def __init__(self) -> None:
        self.callbacks: list[Callable[[], None]] = []

    def call_soon(self, callback: Callable[[], None]) -> None:
        self.callbacks.append(callback)

    def run(self) -> None:
        while self.callbacks:
            callbacks, self.callbacks = self.callbacks, []
            for callback in callbacks:
                callback()


class _Side:
    """A sidecar served through RespConnection objects on recording transports."""

    def __init__(self, compiled: bool, clock: FakeClock, maxmemory: int | None = None) -> None:
        keyspace = Keyspace(
            clock=clock, maxmemory=maxmemory, rng=random.Random(7), accelerate=compiled
        )
        self.sidecar = Sidecar(keyspace, accelerate=compiled)
        assert (self.sidecar.runner is not None) == compiled
        self.server = RespServer(self.sidecar, port=0, prefer_hiredis=compiled)
        self.loop = _Loop()
        self.server._loop = self.loop  # type: ignore[assignment]
        self.connections: list[tuple[RespConnection, _Transport]] = []

    def connect(self) -> int:
        connection = RespConnection(self.server)
        transport = _Transport()
        connection.connection_made(transport)  # type: ignore[arg-type]
        self.connections.append((connection, transport))
        return len(self.connections) - 1

    def send(self, client: int, data: bytes) -> bytes:
        connection, transport = self.connections[client]
        connection.data_received(data)
        self.loop.run()
        return transport.take()

    def output(self, client: int) -> bytes:
        self.loop.run()
        return self.connections[client][1].take()


def _plain(value: object) -> object:
    if isinstance(value, HashValue):
        return (dict(value.fields), value.size)
    if isinstance(value, ListValue):
        return (list(value.items), value.size)
    return value


def _state(sidecar: Sidecar) -> object:
    dbs = []
    for db in sidecar.keyspace.dbs[:2]:
        keys = sorted(db.key_snapshot())
        dbs.append(
            [(key, _plain(db.store.peek(key)), db.pttl(key), db.store.ttl(key)) for key in keys]
        )
    stats = [db.store.stats() for db in sidecar.keyspace.dbs[:2]]
    return (
        dbs,
        [(s.hits, s.misses, s.evictions, s.expirations, s.bytes) for s in stats],
        sidecar.commands_processed,
        {name: (s[0], s[2], s[3]) for name, s in sidecar.command_stats.items() if s[0] or s[2]},
        sidecar.error_counts,
        sidecar.error_replies,
        sidecar.dirty,
        sidecar.keyspace.expired_keys,
        sidecar.keyspace.evicted_keys,
    )


def _encode(argv: Sequence[bytes]) -> bytes:
    return b"*%d\r\n" % len(argv) + b"".join(b"$%d\r\n%b\r\n" % (len(a), a) for a in argv)


_KEYS = [b"k1", b"k2", b"list", b"hash"]
_NUMBERS = [b"1", b"x", b"-7", b"010", b"-0", b"9223372036854775807", b"-9223372036854775808"]

_COMMAND = st.one_of(
    st.tuples(st.sampled_from([b"GET", b"get"]), st.sampled_from(_KEYS)),
    st.tuples(st.just(b"SET"), st.sampled_from(_KEYS), st.sampled_from(_NUMBERS)),
    st.tuples(
        st.just(b"SET"),
        st.sampled_from(_KEYS),
        st.sampled_from(_NUMBERS),
        st.just(b"PX"),
        st.just(b"1500"),
    ),
    st.tuples(st.sampled_from([b"INCR", b"DECR", b"incr"]), st.sampled_from(_KEYS)),
    st.tuples(
        st.sampled_from([b"INCRBY", b"DECRBY"]), st.sampled_from(_KEYS), st.sampled_from(_NUMBERS)
    ),
    st.tuples(st.sampled_from([b"LPUSH", b"RPUSH"]), st.sampled_from(_KEYS), st.just(b"e")),
    st.tuples(st.just(b"LPUSH"), st.sampled_from(_KEYS), st.just(b"e"), st.just(b"f" * 300)),
    st.tuples(st.just(b"HSET"), st.sampled_from(_KEYS), st.just(b"f"), st.sampled_from(_NUMBERS)),
    st.tuples(st.just(b"HSET"), st.sampled_from(_KEYS), st.just(b"f")),  # arity error
    st.tuples(st.just(b"HGET"), st.sampled_from(_KEYS), st.just(b"f")),
    st.tuples(st.just(b"MGET"), st.sampled_from(_KEYS), st.sampled_from(_KEYS)),
    st.tuples(st.just(b"DEL"), st.sampled_from(_KEYS)),
    st.tuples(st.just(b"EXPIRE"), st.sampled_from(_KEYS), st.just(b"2")),
    st.tuples(st.just(b"PTTL"), st.sampled_from(_KEYS)),
    st.tuples(st.just(b"LRANGE"), st.sampled_from(_KEYS), st.just(b"0"), st.just(b"-1")),
    st.tuples(st.just(b"GET")),  # arity error
    st.tuples(st.just(b"Get"), st.just(b"k1")),  # mixed case: the table's slow lookup
    st.tuples(st.just(b"NOSUCH"), st.just(b"x")),
    st.tuples(st.just(b"PING")),
    st.tuples(st.just(b"MULTI")),
    st.tuples(st.just(b"EXEC")),
    st.tuples(st.just(b"WATCH"), st.sampled_from(_KEYS)),
    st.tuples(st.just(b"SELECT"), st.sampled_from([b"0", b"1"])),
    st.tuples(st.just(b"HELLO"), st.sampled_from([b"2", b"3"])),
    st.tuples(st.just(b"CLIENT"), st.just(b"REPLY"), st.sampled_from([b"ON", b"OFF", b"SKIP"])),
    st.tuples(st.just(b"SUBSCRIBE"), st.just(b"chan")),
    st.tuples(st.just(b"UNSUBSCRIBE")),
    st.tuples(st.just(b"PUBLISH"), st.just(b"chan"), st.just(b"m")),
    st.tuples(st.just(b"CONFIG"), st.just(b"SET"), st.just(b"notify-keyspace-events")).map(
        lambda t: (*t, b"KEA")
    ),
).map(list)

# One step: a client (0 or 1) sends some commands, split into reads at the given points; or the
# clock moves on.
_STEP = st.one_of(
    st.tuples(
        st.integers(0, 1),
        st.lists(_COMMAND, min_size=1, max_size=12),
        st.lists(st.integers(0, 400), max_size=3),
    ),
    st.floats(0.1, 3.0).map(lambda seconds: (-1, seconds)),
)


def _run(steps: Sequence[tuple[Any, ...]], maxmemory: int | None = None) -> None:
    clock_fast, clock_pure = FakeClock(), FakeClock()
    fast = _Side(True, clock_fast, maxmemory)
    pure = _Side(False, clock_pure, maxmemory)
    for side in (fast, pure):
        side.connect()
        side.connect()
    for step in steps:
        if step[0] == -1:
            clock_fast.advance(step[1])
            clock_pure.advance(step[1])
            continue
        client: int = step[0]
        commands: list[list[bytes]] = step[1]
        cuts: list[int] = step[2]
        data = b"".join(_encode(argv) for argv in commands)
        points = sorted({0, len(data), *(cut % (len(data) + 1) for cut in cuts)})
        for start, end in itertools.pairwise(points):
            chunk = data[start:end]
            assert fast.send(client, chunk) == pure.send(client, chunk), (commands, start)
        for other in (0, 1):
            assert fast.output(other) == pure.output(other)
    assert _state(fast.sidecar) == _state(pure.sidecar)


@settings(max_examples=300, deadline=None)
@given(st.lists(_STEP, max_size=12))
@example([(0, [[b"SET", b"k1", b"1", b"PX", b"1500"], [b"INCR", b"k1"]], [])])  # INCR keeps TTL
@example([(0, [[b"LPUSH", b"list", b"e", b"f" * 300]] * 3 + [[b"PTTL", b"list"]], [5])])
@example([(1, [[b"WATCH", b"k1"]], []), (0, [[b"SET", b"k1", b"2"]], []), (1, [[b"MULTI"]], [])])
def test_compiled_and_pure_paths_answer_and_end_alike(steps: list[tuple[Any, ...]]) -> None:
    _run(steps)


@settings(max_examples=60, deadline=None)
@given(st.lists(_STEP, max_size=10))
def test_compiled_and_pure_paths_evict_alike_under_maxmemory(
    steps: list[tuple[Any, ...]],
) -> None:
    _run(steps, maxmemory=2_000)


_PIPELINE = [
    [b"SET", b"a", b"1"],
    [b"INCR", b"a"],
    [b"GET", b"a"],
    [b"CLIENT", b"SETNAME", b"me"],  # not quick: the Python path, then the compiled one again
    [b"MGET", b"a", b"b"],
    [b"LPUSH", b"l", b"x", b"y"],
    [b"HELLO", b"3"],
    [b"GET", b"missing"],
    [b"HSET", b"h", b"f", b"v", b"g", b"w"],
    [b"INCR", b"l"],
    [b"SELECT", b"1"],
    [b"GET", b"a"],
    [b"RPUSH", b"l", b"z"],
    [b"PING"],
]


def test_a_pipeline_split_at_every_byte_answers_in_order() -> None:
    data = b"".join(_encode(argv) for argv in _PIPELINE)
    reference = _Side(False, FakeClock())
    reference.connect()
    expected = reference.send(0, data)
    assert expected.count(b"\r\n") > len(_PIPELINE)
    for cut in range(len(data) + 1):
        side = _Side(True, FakeClock())
        side.connect()
        got = side.send(0, data[:cut]) + side.send(0, data[cut:])
        assert got == expected, cut
        assert _state(side.sidecar) == _state(reference.sidecar), cut


def test_serve_runs_quick_commands_and_stops_at_the_first_other_one() -> None:
    side = _Side(True, FakeClock())
    side.connect()
    session = side.connections[0][0].session
    assert session is not None
    runner = side.sidecar.runner
    assert runner is not None
    quick = _encode([b"SET", b"a", b"1"]) + _encode([b"GET", b"a"])
    slow = _encode([b"CLIENT", b"SETNAME", b"x"])
    assert runner.serve(session, quick + slow + quick, 1 << 20) == len(quick)
    assert session.take_output() == b"+OK\r\n$1\r\n1\r\n"
    assert side.sidecar.command_stats["set"][0] == 1
    assert side.sidecar.command_stats["get"][0] == 1
    assert side.sidecar.dirty == 1
    assert session.last_command == "get"
    # A partial request is left to the reader; a session in MULTI is not plain at all.
    assert runner.serve(session, quick[:-3], 1 << 20) == len(_encode([b"SET", b"a", b"1"]))
    session.take_output()
    session.multi = []
    assert runner.serve(session, quick, 1 << 20) == 0


def test_parse_requests_takes_only_complete_canonical_requests() -> None:
    parse = _fast.parse_requests
    assert parse(b"*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n$1\r\nx\r\n", 100) == (
        [[b"PING"], [b"GET", b"x"]],
        34,
    )
    assert parse(b"*2\r\n$3\r\nGET\r\n$1\r\nx", 100) == ([], 0)  # partial
    assert parse(b"PING\r\n", 100) == ([], 0)  # inline
    assert parse(b"*1\r\n$04\r\nPING\r\n", 100) == ([], 0)  # a leading zero: Python judges
    assert parse(b"*1\r\n$4\r\nPINGxx", 100) == ([], 0)  # no CRLF after the bulk
    assert parse(b"*1\r\n$5\r\nhello\r\n", 4) == ([], 0)  # over the bulk limit
    assert parse(b"*0\r\n", 100) == ([], 0)
    assert parse(b"*-1\r\n", 100) == ([], 0)


def test_a_fast_path_set_invalidates_another_clients_watch() -> None:
    for compiled in (True, False):
        side = _Side(compiled, FakeClock())
        watcher, writer = side.connect(), side.connect()
        assert side.send(watcher, _encode([b"WATCH", b"k"])) == b"+OK\r\n"
        assert side.send(writer, _encode([b"SET", b"k", b"v"])) == b"+OK\r\n"
        reply = side.send(
            watcher, _encode([b"MULTI"]) + _encode([b"GET", b"k"]) + _encode([b"EXEC"])
        )
        assert reply == b"+OK\r\n+QUEUED\r\n*-1\r\n", compiled


def test_lpush_on_the_fast_path_wakes_a_blocked_client() -> None:
    for compiled in (True, False):
        side = _Side(compiled, FakeClock())
        blocked, pusher = side.connect(), side.connect()
        assert side.send(blocked, _encode([b"BLPOP", b"q", b"0"])) == b""
        assert side.send(
            pusher, _encode([b"LPUSH", b"q", b"a", b"b"]) + _encode([b"LLEN", b"q"])
        ) == (b":2\r\n:1\r\n")
        assert side.output(blocked) == b"*2\r\n$1\r\nq\r\n$1\r\nb\r\n", compiled


def test_expiry_wrong_types_and_overflow_on_the_fast_path() -> None:
    clock = FakeClock()
    side = _Side(True, clock)
    side.connect()
    script = [
        [b"SET", b"n", b"9223372036854775806", b"PX", b"1000"],
        [b"INCR", b"n"],
        [b"INCR", b"n"],  # overflow
        [b"PTTL", b"n"],
        [b"LPUSH", b"l", b"x"],
        [b"GET", b"l"],
        [b"INCR", b"l"],
        [b"HSET", b"l", b"f", b"v"],
        [b"DECRBY", b"n", b"-9223372036854775808"],
        [b"INCRBY", b"n", b"x"],
    ]
    out = side.send(0, b"".join(_encode(argv) for argv in script))
    wrongtype = b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n"
    assert out == (
        b"+OK\r\n:9223372036854775807\r\n-ERR increment or decrement would overflow\r\n:1000\r\n"
        b":1\r\n" + wrongtype * 3 + b"-ERR decrement would overflow\r\n"
        b"-ERR value is not an integer or out of range\r\n"
    )
    clock.advance(1.0)
    assert side.send(0, _encode([b"GET", b"n"]) + _encode([b"INCR", b"n"])) == b"$-1\r\n:1\r\n"
    assert side.send(0, _encode([b"PTTL", b"n"])) == b":-1\r\n"
    assert side.sidecar.keyspace.expired_keys == 1
    assert side.sidecar.command_stats["incr"][3] == 2
    assert side.sidecar.error_counts == {"ERR": 3, "WRONGTYPE": 3}


def test_the_compiled_weigher_weighs_as_values_weigh() -> None:
    from stratacache.resp.values import KEY_OVERHEAD, weigh

    compiled = _fast.Weigher(KEY_OVERHEAD)
    for key, value in [(b"k", b"vv"), ("key", b"v"), (3, b"v"), (b"k", 5), (b"k", bytearray(3))]:
        assert compiled(key, value) == weigh(key, value)
    mine, theirs = ListValue([b"a", b"bb"]), ListValue([b"a", b"bb"])
    assert compiled(b"k", mine) == weigh(b"k", theirs) == mine.weighed == theirs.weighed
    assert Keyspace()._weigher is not weigh  # the compiled one is in use
    assert Keyspace(accelerate=False)._weigher is weigh
