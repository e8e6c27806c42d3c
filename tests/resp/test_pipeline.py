"""The fast path of :meth:`Sidecar.feed` against the checked path it stands in for.

A batch of pipelined commands runs its quick commands without :meth:`Sidecar.execute`'s checks
while the session is in its plain state. The property here: any sequence of commands, including
the ones that change the session's state mid-batch (MULTI, CLIENT REPLY, HELLO, SELECT,
SUBSCRIBE), gives byte for byte the replies that the checked path gives when the same commands
are fed one at a time, and leaves the same data behind.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from stratacache.resp.keyspace import Keyspace
from stratacache.resp.protocol import ErrorReply
from stratacache.resp.sidecar import QUICK_COMMANDS, Sidecar
from stratacache.resp.values import HashValue, ListValue

from .conftest import FakeClock
from .helpers import Client

_KEYS = [b"k1", b"k2", b"list", b"hash"]

_COMMAND = st.one_of(
    st.tuples(st.just(b"GET"), st.sampled_from(_KEYS)),
    st.tuples(st.just(b"SET"), st.sampled_from(_KEYS), st.sampled_from([b"1", b"x", b"-7"])),
    st.tuples(st.just(b"INCR"), st.sampled_from(_KEYS)),
    st.tuples(st.just(b"INCRBY"), st.sampled_from(_KEYS), st.sampled_from([b"2", b"z"])),
    st.tuples(st.just(b"LPUSH"), st.sampled_from(_KEYS), st.just(b"e")),
    st.tuples(st.just(b"HSET"), st.sampled_from(_KEYS), st.just(b"f"), st.just(b"v")),
    st.tuples(st.just(b"HGET"), st.sampled_from(_KEYS), st.just(b"f")),
    st.tuples(st.just(b"MGET"), st.sampled_from(_KEYS), st.sampled_from(_KEYS)),
    st.tuples(st.just(b"DEL"), st.sampled_from(_KEYS)),
    st.tuples(st.just(b"EXPIRE"), st.sampled_from(_KEYS), st.just(b"100")),
    st.tuples(st.just(b"TTL"), st.sampled_from(_KEYS)),
    st.tuples(st.just(b"LRANGE"), st.sampled_from(_KEYS), st.just(b"0"), st.just(b"-1")),
    st.tuples(st.just(b"GET")),  # arity error
    st.tuples(st.just(b"get"), st.just(b"k1")),
    st.tuples(st.just(b"Get"), st.just(b"k1")),  # mixed case: the table's slow lookup
    st.tuples(st.just(b"NOSUCH"), st.just(b"x")),
    st.tuples(st.just(b"PING")),
    st.tuples(st.just(b"MULTI")),
    st.tuples(st.just(b"EXEC")),
    st.tuples(st.just(b"DISCARD")),
    st.tuples(st.just(b"WATCH"), st.sampled_from(_KEYS)),
    st.tuples(st.just(b"SELECT"), st.sampled_from([b"0", b"1"])),
    st.tuples(st.just(b"HELLO"), st.sampled_from([b"2", b"3"])),
    st.tuples(st.just(b"CLIENT"), st.just(b"REPLY"), st.sampled_from([b"ON", b"OFF", b"SKIP"])),
    st.tuples(st.just(b"SUBSCRIBE"), st.just(b"chan")),
    st.tuples(st.just(b"UNSUBSCRIBE")),
    st.tuples(st.just(b"PUBLISH"), st.just(b"chan"), st.just(b"m")),
).map(list)

# HELLO's reply carries the client id: both sidecars number their clients alike, so it matches.


def _sidecar() -> Sidecar:
    return Sidecar(Keyspace(clock=FakeClock()))


def _plain(value: object) -> object:
    if isinstance(value, HashValue):
        return dict(value.fields)
    if isinstance(value, ListValue):
        return list(value.items)
    return value


def _contents(sidecar: Sidecar) -> list[dict[bytes, object]]:
    return [
        {key: _plain(db.store.peek(key)) for key in db.key_snapshot()}
        for db in sidecar.keyspace.dbs[:2]
    ]


@settings(max_examples=150, deadline=None)
@given(st.lists(_COMMAND, max_size=40))
def test_a_batch_answers_as_the_checked_path_one_by_one(commands: list[list[bytes]]) -> None:
    batched = _sidecar()
    session = batched.connect("127.0.0.1:1")
    batched.feed(session, [list(argv) for argv in commands])
    fast_output = session.take_output()

    checked = _sidecar()
    checked._quick = {}  # every command through execute()
    reference = checked.connect("127.0.0.1:1")
    for argv in commands:
        checked.feed(reference, [list(argv)])
    assert fast_output == reference.take_output()
    assert _contents(batched) == _contents(checked)
    assert batched.commands_processed == checked.commands_processed
    for name, stats in checked.command_stats.items():
        assert batched.command_stats[name][0] == stats[0], name  # calls
        assert batched.command_stats[name][3] == stats[3], name  # failed calls
    assert batched.error_counts == checked.error_counts
    assert batched.dirty == checked.dirty


def test_quick_commands_exist_and_never_block() -> None:
    table = _sidecar().table
    for name in QUICK_COMMANDS:
        spec = table.lookup(name.encode())
        assert spec is not None, name
        assert spec.handler is not None
        assert not spec.transaction_control
        assert not spec.no_multi
        assert "blocking" not in spec.flag_names
        assert "pubsub" not in spec.flag_names or name == "publish"


def test_errors_on_the_fast_path_are_counted_like_any_other() -> None:
    sidecar = _sidecar()
    client = Client(sidecar)
    client("SET", "s", "text")
    assert client("INCR", "s") == ErrorReply("ERR value is not an integer or out of range")
    assert client("LPUSH", "s", "x") == ErrorReply(
        "WRONGTYPE Operation against a key holding the wrong kind of value"
    )
    assert sidecar.command_stats["incr"][3] == 1
    assert sidecar.error_counts == {"ERR": 1, "WRONGTYPE": 1}
    info = client("INFO", "commandstats")
    assert "cmdstat_set:calls=1," in str(info)
    assert "cmdstat_incr:calls=1,usec=" in str(info)
