"""The sans-IO core: dispatch checks, data types, TTLs on a fake clock, transactions, blocking,
pub/sub, memory budget and snapshots, driven without sockets."""

from __future__ import annotations

from pathlib import Path

import pytest

from stratacache.resp.commands import CommandTable, build_table, command
from stratacache.resp.keyspace import Keyspace
from stratacache.resp.protocol import NULL_ARRAY, ErrorReply, Push
from stratacache.resp.session import Session
from stratacache.resp.sidecar import Sidecar
from stratacache.resp.snapshot import load_snapshot, save_snapshot

from .conftest import FakeClock
from .helpers import Client, FakeTimers


@pytest.fixture
def sidecar(clock: FakeClock) -> Sidecar:
    return Sidecar(Keyspace(clock=clock))


@pytest.fixture
def client(sidecar: Sidecar) -> Client:
    return Client(sidecar)


def test_unknown_command_and_arity_errors_match_redis(client: Client) -> None:
    assert client("FOO", "a", "b") == ErrorReply(
        "ERR unknown command 'FOO', with args beginning with: 'a' 'b' "
    )
    assert client("GET") == ErrorReply("ERR wrong number of arguments for 'get' command")
    assert client("CONFIG", "NOPE") == ErrorReply("ERR unknown subcommand 'NOPE'. Try CONFIG HELP.")
    assert client("CONFIG") == ErrorReply("ERR wrong number of arguments for 'config' command")
    assert client("CONFIG", "GET") == ErrorReply(
        "ERR wrong number of arguments for 'config|get' command"
    )
    assert client("get", "x") is None  # any letter case


def test_wrongtype_error_text(client: Client) -> None:
    client("SET", "s", "v")
    assert client("LPUSH", "s", "x") == ErrorReply(
        "WRONGTYPE Operation against a key holding the wrong kind of value"
    )
    assert client("GET", "s") == b"v"


def test_auth_is_required_when_configured(clock: FakeClock) -> None:
    sidecar = Sidecar(Keyspace(clock=clock), requirepass="secret")
    client = Client(sidecar)
    assert client("GET", "k") == ErrorReply("NOAUTH Authentication required.")
    assert client("AUTH", "wrong") == ErrorReply(
        "WRONGPASS invalid username-password pair or user is disabled."
    )
    assert client("AUTH", "secret") == "OK"
    assert client("GET", "k") is None
    other = Client(sidecar)
    hello = other("HELLO", "3", "AUTH", "default", "secret")
    assert isinstance(hello, dict)
    assert hello[b"proto"] == 3


def test_strings_and_counters(client: Client) -> None:
    assert client("SET", "k", "10", "NX") == "OK"
    assert client("SET", "k", "11", "NX") is None
    assert client("INCRBY", "k", "5") == 15
    assert client("INCRBYFLOAT", "k", "0.1") == b"15.1"
    assert client("INCR", "k") == ErrorReply("ERR value is not an integer or out of range")
    assert client("APPEND", "k", "x") == 5
    assert client("GETRANGE", "k", "-2", "-1") == b"1x"
    assert client("SETRANGE", "pad", "3", "a") == 4
    assert client("GET", "pad") == b"\x00\x00\x00a"
    assert client("MSET", "a", "1", "b", "2") == "OK"
    assert client("MGET", "a", "b", "nope") == [b"1", b"2", None]
    assert client("SET", "a", "9", "GET") == b"1"
    assert client("GETDEL", "a") == b"9"
    assert client("SETBIT", "bits", "9", "1") == 0
    assert client("BITCOUNT", "bits") == 1
    assert client("LCS", "b", "pad") == b""


def test_ttls_follow_the_injected_clock(client: Client, clock: FakeClock) -> None:
    client("SET", "k", "v", "EX", "10")
    assert client("TTL", "k") == 10
    clock.advance(4.5)
    assert client("PTTL", "k") == 5500
    assert client("EXPIRETIME", "k") == int(clock() + 5.5 + 0.5)
    client("SET", "k", "w", "KEEPTTL")
    assert client("PTTL", "k") == 5500
    clock.advance(5.5)
    assert client("GET", "k") is None
    assert client("TTL", "k") == -2
    client("SET", "p", "v")
    assert client("TTL", "p") == -1
    assert client("EXPIRE", "p", "-1") == 1  # a past expiry deletes
    assert client("EXISTS", "p") == 0
    client("SET", "q", "v")
    assert client("PEXPIREAT", "q", str(int(clock() * 1000) + 1500)) == 1
    assert client("EXPIRE", "q", "100", "LT") == 0
    assert client("EXPIRE", "q", "100", "GT") == 1
    assert client("PERSIST", "q") == 1


def test_containers_and_their_replies(client: Client) -> None:
    assert client("RPUSH", "l", "a", "b", "c") == 3
    assert client("LRANGE", "l", "-2", "-1") == [b"b", b"c"]
    assert client("LPOS", "l", "c") == 2
    assert client("LPOP", "l", "2") == [b"a", b"b"]
    assert client("LPOP", "nope", "2") is NULL_ARRAY
    assert client("HSET", "h", "f", "1", "g", "2") == 2
    assert client("HGETALL", "h") == [b"f", b"1", b"g", b"2"]
    assert client("HINCRBY", "h", "f", "4") == 5
    assert client("SADD", "s", "x", "y") == 2
    assert sorted(client("SMEMBERS", "s")) == [b"x", b"y"]
    assert client("ZADD", "z", "1", "a", "2", "b", "3", "c") == 3
    assert client("ZRANGE", "z", "(1", "+inf", "BYSCORE", "WITHSCORES") == [
        b"b",
        b"2",
        b"c",
        b"3",
    ]
    assert client("ZRANGEBYLEX", "z", "-", "[b") == [b"a", b"b"]
    assert client("ZPOPMAX", "z") == [b"c", b"3"]
    assert client("TYPE", "z") == "zset"
    # An emptied container disappears, as in Redis.
    assert client("SREM", "s", "x", "y") == 2
    assert client("EXISTS", "s") == 0


def test_resp3_types(sidecar: Sidecar) -> None:
    client = Client(sidecar, resp=3)
    client("HSET", "h", "f", "v")
    assert client("HGETALL", "h") == {b"f": b"v"}
    client("ZADD", "z", "1.5", "m")
    assert client("ZSCORE", "z", "m") == 1.5
    assert client("ZRANGE", "z", "0", "-1", "WITHSCORES") == [[b"m", 1.5]]
    assert client("GET", "nope") is None


def test_multi_exec_and_watch(sidecar: Sidecar) -> None:
    one, two = Client(sidecar), Client(sidecar)
    one("SET", "k", "1")
    assert one("WATCH", "k") == "OK"
    assert one("MULTI") == "OK"
    assert one("INCR", "k") == "QUEUED"
    two("SET", "k", "5")  # another client changes the watched key
    assert one("EXEC") is NULL_ARRAY
    assert one("GET", "k") == b"5"
    one("MULTI")
    one("INCR", "k")
    one("GET", "k")
    assert one("EXEC") == [6, b"6"]
    one("MULTI")
    assert one("NOPE") == ErrorReply("ERR unknown command 'NOPE', with args beginning with: ")
    assert one("EXEC") == ErrorReply("EXECABORT Transaction discarded because of previous errors.")
    assert one("EXEC") == ErrorReply("ERR EXEC without MULTI")


def test_watched_key_expiring_fails_exec(client: Client, clock: FakeClock) -> None:
    client("SET", "k", "v", "PX", "100")
    client("WATCH", "k")
    clock.advance(0.2)
    client("MULTI")
    client("PING")
    assert client("EXEC") is NULL_ARRAY


def test_blocking_pop_is_served_in_order_and_times_out(sidecar: Sidecar) -> None:
    timers = FakeTimers()
    sidecar.timer_factory = timers
    first, second, pusher = Client(sidecar), Client(sidecar), Client(sidecar)
    first.send("BLPOP", "q", "0")
    second.send("BLPOP", "q", "0.1")
    first.send("PING")  # waits behind the blocked BLPOP
    assert first.replies() == []
    assert second.replies() == []
    assert sidecar.blocked_count == 2
    assert pusher("RPUSH", "q", "a") == 1
    assert first.replies() == [[b"q", b"a"]]
    sidecar.resume(first.session)
    assert first.replies() == ["PONG"]
    timers.fire_all()
    assert second.replies() == [NULL_ARRAY]
    assert sidecar.blocked_count == 0


def test_blocked_client_is_not_woken_by_another_type(sidecar: Sidecar) -> None:
    waiter, writer = Client(sidecar), Client(sidecar)
    waiter.send("BLPOP", "k", "0")
    writer("MULTI")
    writer("LPUSH", "k", "x")
    writer("DEL", "k")
    writer("SET", "k", "string")
    writer("EXEC")
    assert waiter.replies() == []
    writer("DEL", "k")
    writer("RPUSH", "k", "y")
    assert waiter.replies() == [[b"k", b"y"]]


def test_blocking_commands_inside_multi_do_not_block(client: Client) -> None:
    client("MULTI")
    client("BLPOP", "nope", "0")
    assert client("EXEC") == [NULL_ARRAY]


def test_pubsub_delivery_and_subscribed_mode(sidecar: Sidecar) -> None:
    subscriber, publisher = Client(sidecar), Client(sidecar)
    subscriber.send("SUBSCRIBE", "news")
    subscriber.send("PSUBSCRIBE", "n*")
    assert subscriber.replies() == [[b"subscribe", b"news", 1], [b"psubscribe", b"n*", 2]]
    assert publisher("PUBLISH", "news", "hi") == 2
    assert subscriber.replies() == [
        [b"message", b"news", b"hi"],
        [b"pmessage", b"n*", b"news", b"hi"],
    ]
    assert subscriber("GET", "x") == ErrorReply(
        "ERR Can't execute 'get': only (P|S)SUBSCRIBE / (P|S)UNSUBSCRIBE / PING / QUIT / "
        "RESET are allowed in this context"
    )
    assert subscriber("PING") == [b"pong", b""]
    resp3 = Client(sidecar, resp=3)
    resp3.send("SUBSCRIBE", "news")
    assert resp3.replies() == [Push([b"subscribe", b"news", 1])]
    assert resp3("GET", "x") is None  # RESP3 clients may run commands while subscribed


def test_client_reply_off_and_skip(client: Client) -> None:
    client.send("CLIENT", "REPLY", "OFF")
    client.send("SET", "k", "v")
    assert client.replies() == []
    client.send("CLIENT", "REPLY", "ON")
    assert client.replies() == ["OK"]
    client.send("CLIENT", "REPLY", "SKIP")
    client.send("GET", "k")
    client.send("GET", "k")
    assert client.replies() == [b"v"]


def test_keyspace_notifications(sidecar: Sidecar) -> None:
    watcher, writer = Client(sidecar), Client(sidecar)
    writer("CONFIG", "SET", "notify-keyspace-events", "KEA")
    watcher.send("PSUBSCRIBE", "__key*__:*")
    watcher.replies()
    writer("SET", "k", "v")
    writer("DEL", "k")
    assert watcher.replies() == [
        [b"pmessage", b"__key*__:*", b"__keyspace@0__:k", b"set"],
        [b"pmessage", b"__key*__:*", b"__keyevent@0__:set", b"k"],
        [b"pmessage", b"__key*__:*", b"__keyspace@0__:k", b"del"],
        [b"pmessage", b"__key*__:*", b"__keyevent@0__:del", b"k"],
    ]


def test_maxmemory_bounds_containers_that_grow_in_place(clock: FakeClock) -> None:
    sidecar = Sidecar(Keyspace(clock=clock, maxmemory=200_000))
    client = Client(sidecar)
    for chunk in range(60):
        client("RPUSH", "big", *[b"x" * 100] * 50)
        client("SET", f"small{chunk}", "v")
    assert sidecar.keyspace.used_bytes() <= 200_000
    info = client("INFO", "memory")
    assert b"maxmemory:200000" in info


def test_scan_returns_every_key_once_while_others_change(client: Client) -> None:
    for index in range(200):
        client("SET", f"k{index}", "v")
    seen: list[bytes] = []
    cursor = b"0"
    rounds = 0
    while True:
        cursor, page = client("SCAN", cursor, "COUNT", "7")
        seen += page
        client("SET", f"new{rounds}", "v")  # keys added during the scan may or may not appear
        rounds += 1
        if cursor == b"0":
            break
    stable = [key for key in seen if key.startswith(b"k")]
    assert sorted(stable) == sorted(f"k{index}".encode() for index in range(200))
    assert len(stable) == len(set(stable))


def test_snapshot_round_trip_keeps_types_and_ttls(tmp_path: Path, clock: FakeClock) -> None:
    sidecar = Sidecar(Keyspace(clock=clock))
    client = Client(sidecar)
    client("SET", "s", "v", "EX", "100")
    client("RPUSH", "l", "a", "b")
    client("HSET", "h", "f", "v")
    client("SADD", "set", "m")
    client("ZADD", "z", "2.5", "m")
    client("SELECT", "3")
    client("SET", "other", "db")
    path = tmp_path / "dump.strata"
    assert save_snapshot(sidecar.keyspace, path) == 6
    fresh = Keyspace(clock=clock)
    assert load_snapshot(fresh, path) == 6
    copy = Client(Sidecar(fresh))
    assert copy("GET", "s") == b"v"
    assert copy("TTL", "s") == 100
    assert copy("LRANGE", "l", "0", "-1") == [b"a", b"b"]
    assert copy("ZSCORE", "z", "m") == b"2.5"
    assert copy("SELECT", "3") == "OK"
    assert copy("GET", "other") == b"db"
    clock.advance(200)
    assert load_snapshot(Keyspace(clock=clock), path) == 5  # the expired string is skipped


def test_snapshot_rejects_corrupt_files(tmp_path: Path, clock: FakeClock) -> None:
    from stratacache.errors import RecordFormatError

    path = tmp_path / "dump.strata"
    sidecar = Sidecar(Keyspace(clock=clock))
    Client(sidecar)("SET", "k", "v")
    save_snapshot(sidecar.keyspace, path)
    data = bytearray(path.read_bytes())
    data[-6] ^= 0xFF
    path.write_bytes(bytes(data))
    fresh = Keyspace(clock=clock)
    with pytest.raises(RecordFormatError):
        load_snapshot(fresh, path)
    assert fresh.dbs[0].size() == 0
    path.write_bytes(b"not a snapshot")
    with pytest.raises(RecordFormatError):
        load_snapshot(fresh, path)


def test_save_and_dump_restore_commands(tmp_path: Path, clock: FakeClock) -> None:
    sidecar = Sidecar(Keyspace(clock=clock), snapshot_path=str(tmp_path / "d.strata"))
    client = Client(sidecar)
    client("HSET", "h", "f", "v")
    assert client("SAVE") == "OK"
    assert client("BGSAVE") == "Background saving started"
    payload = client("DUMP", "h")
    assert client("RESTORE", "h2", "0", payload) == "OK"
    assert client("HGETALL", "h2") == [b"f", b"v"]
    assert client("RESTORE", "h2", "0", payload) == ErrorReply(
        "BUSYKEY Target key name already exists."
    )
    assert client("RESTORE", "h3", "0", b"junk") == ErrorReply(
        "ERR DUMP payload version or checksum are wrong"
    )
    no_path = Client(Sidecar(Keyspace(clock=clock)))
    assert isinstance(no_path("SAVE"), ErrorReply)


def test_a_failing_handler_answers_an_error_and_the_server_goes_on(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(session: Session, argv: list[bytes]) -> object:
        raise RuntimeError("bug")

    table = CommandTable([*build_table().values(), command("boom", 1, "", broken)])
    client = Client(Sidecar(Keyspace(clock=clock), table=table))
    assert client("BOOM") == ErrorReply("ERR internal error while running 'boom'")
    assert "command 'boom' failed" in caplog.text
    assert client("PING") == "PONG"


def test_info_and_command_introspection(client: Client) -> None:
    client("SET", "k", "v")
    info = client("INFO")
    assert isinstance(info, bytes)
    for field in (b"redis_version:7.0.15", b"used_memory:", b"db0:keys=1", b"connected_clients:1"):
        assert field in info
    assert client("COMMAND", "COUNT") == len(client.sidecar.table)
    assert client("COMMAND", "GETKEYS", "MSET", "a", "1", "b", "2") == [b"a", b"b"]
    assert client("DBSIZE") == 1
    assert client("FLUSHALL") == "OK"
    assert client("DBSIZE") == 0


def test_big_replies_are_produced_in_slices(sidecar: Sidecar) -> None:
    from stratacache.resp.sidecar import OUTPUT_SLICE

    client = Client(sidecar)
    client("SET", "big", b"x" * 100_000)
    woken: list[bool] = []
    client.session.wake = lambda: woken.append(True)
    sidecar.feed(client.session, [[b"GET", b"big"]] * 100)
    queued = sum(map(len, client.session.out))
    assert OUTPUT_SLICE < queued < OUTPUT_SLICE + 17 * 100_100  # stopped after a slice
    assert client.session.pending  # the rest waits...
    assert woken  # ...and the connection is told to come back for it
    client.session.take_output()
    while client.session.pending:
        sidecar.resume(client.session)
        client.session.take_output()
    assert not client.session.pending


def test_package_exports_resolve_lazily() -> None:
    from stratacache import resp

    for name in resp.__all__:
        assert getattr(resp, name) is not None
    with pytest.raises(AttributeError):
        resp.nothing_here  # noqa: B018
