"""Lua scripting with lupa: Redis's conversions, errors, sandbox, libraries and functions."""

from __future__ import annotations

import pytest

from stratacache.resp.keyspace import Keyspace
from stratacache.resp.protocol import ErrorReply
from stratacache.resp.sidecar import Sidecar

from .conftest import FakeClock
from .helpers import Client

pytest.importorskip("lupa")


@pytest.fixture
def client(clock: FakeClock) -> Client:
    return Client(Sidecar(Keyspace(clock=clock)))


def _error(reply: object) -> str:
    assert isinstance(reply, ErrorReply), reply
    return reply.message


def test_lua_to_redis_conversions(client: Client) -> None:
    assert client("EVAL", "return 100.5", "0") == 100
    assert client("EVAL", "return 'hello'", "0") == b"hello"
    assert client("EVAL", "return true", "0") == 1
    assert client("EVAL", "return false", "0") is None
    assert client("EVAL", "return {ok='fine'}", "0") == "fine"
    assert client("EVAL", "return {1, 2, {3, 'x'}, nil, 5}", "0") == [1, 2, [3, b"x"]]
    assert client("EVAL", "return {err='MY code'}", "0") == ErrorReply("MY code")
    assert client("EVAL", "return {KEYS[1], ARGV[1]}", "1", "k", "a") == [b"k", b"a"]


def test_redis_to_lua_conversions(client: Client) -> None:
    client("SET", "s", "v")
    script = (
        "local r = {} "
        "r[1] = type(redis.call('incr', 'n')) "
        "r[2] = redis.call('get', 's') "
        "r[3] = tostring(redis.call('get', 'missing')) "
        "r[4] = redis.call('set', 'x', 'y')['ok'] "
        "r[5] = redis.pcall('incr', 's')['err'] "
        "r[6] = #redis.call('mget', 's', 'x') "
        "return r"
    )
    assert client("EVAL", script, "0") == [
        b"number",
        b"v",
        b"false",
        b"OK",
        b"ERR value is not an integer or out of range",
        2,
    ]


def test_resp3_inside_scripts(client: Client) -> None:
    client("HSET", "h", "f", "v")
    assert client("EVAL", "redis.setresp(3); return redis.call('hgetall', 'h')", "0") == [
        b"f",
        b"v",
    ]
    resp3 = Client(client.sidecar, resp=3)
    assert resp3("EVAL", "redis.setresp(3); return redis.call('hgetall', 'h')", "0") == {b"f": b"v"}
    assert resp3("EVAL", "return {double=1.5}", "0") == 1.5


def test_errors_carry_redis_texts(client: Client) -> None:
    client("SET", "s", "v")
    message = _error(client("EVAL", "local n = redis.call('incr', 's') return n", "0"))
    assert message.startswith("ERR value is not an integer or out of range script: f_")
    assert message.endswith("on @user_script:1.")
    # `return redis.call(...)` is a Lua tail call: the script's frame is gone when the error is
    # raised, so the line cannot be reported (Redis's C redis.call keeps it); the error is the same.
    message = _error(client("EVAL", "return redis.call('incr', 's')", "0"))
    assert message.startswith("ERR value is not an integer or out of range")
    assert "Unknown Redis command" in _error(client("EVAL", "redis.call('nope')", "0"))
    assert "Wrong number of args" in _error(client("EVAL", "redis.call('get')", "0"))
    assert "not allowed from script" in _error(client("EVAL", "redis.call('blpop','x',0)", "0"))
    assert "at least one argument" in _error(client("EVAL", "redis.call()", "0"))
    assert _error(client("EVAL", "syntax error", "0")).startswith(
        "ERR Error compiling script (new function): user_script:1:"
    )
    assert _error(client("EVAL", "return 1", "2", "k")) == (
        "ERR Number of keys can't be greater than number of args"
    )
    assert _error(client("EVALSHA", "0" * 40, "0")) == (
        "NOSCRIPT No matching script. Please use EVAL."
    )
    # redis.pcall and pcall hand errors back instead of raising them.
    assert client("EVAL", "return redis.pcall('nope')['err']", "0") == (
        b"ERR Unknown Redis command called from script"
    )
    assert (
        client("EVAL", "local ok, e = pcall(redis.call, 'nope') return e", "0")
        == b"ERR Unknown Redis command called from script"
    )


@pytest.mark.parametrize(
    "escape",
    [
        "return os.time()",
        "return io.open('/etc/passwd')",
        "return getfenv(0).os.time()",
        "return loadstring(string.dump(function() return 1 end))()",
        "return loadstring('return os')()",
        "require('os')",
        "a = 1",
        "redis.call = nil",
        "setmetatable(_G, {})",
        "rawset(_G, 'x', 1)",
        "string.rep = nil",
        "getmetatable(_G).__index = {}",
        "setfenv(0, {})",
    ],
)
def test_the_sandbox_holds(client: Client, escape: str) -> None:
    assert isinstance(client("EVAL", escape, "0"), ErrorReply)
    assert client("EVAL", "return type(string.rep)", "0") == b"function"


def test_libraries(client: Client) -> None:
    assert client("EVAL", "return cjson.encode({1, 2, {a = 'b'}})", "0") == b'[1,2,{"a":"b"}]'
    assert client("EVAL", "return cjson.decode('[1,{\"x\":[true]}]')[2].x[1]", "0") == 1
    assert client(
        "EVAL",
        "local e = cmsgpack.pack({1, 'a', {k = 2}}) local d = cmsgpack.unpack(e) "
        "return {d[1], d[2], d[3].k, #e}",
        "0",
    ) == [1, b"a", 2, 8]  # 93 01 a1 61 81 a1 6b 02
    assert client(
        "EVAL", "return {bit.band(12, 10), bit.bor(12, 10), bit.bxor(12, 10), bit.tohex(255)}", "0"
    ) == [8, 14, 6, b"000000ff"]
    assert client("EVAL", "return redis.sha1hex('')", "0") == (
        b"da39a3ee5e6b4b0d3255bfef95601890afd80709"
    )
    assert client("EVAL", "math.randomseed(7) return tostring(math.random())", "0") == client(
        "EVAL", "math.randomseed(7) return tostring(math.random())", "0"
    )


def test_script_cache_commands(client: Client) -> None:
    sha = client("SCRIPT", "LOAD", "return 'loaded'")
    assert sha == b"b534286061d4b9e4026607613b95c06c06015ae8"
    assert client("EVALSHA", sha.upper(), "0") == b"loaded"
    assert client("SCRIPT", "EXISTS", sha, "f" * 40) == [1, 0]
    assert client("SCRIPT", "FLUSH") == "OK"
    assert client("SCRIPT", "EXISTS", sha) == [0]
    assert client("SCRIPT", "KILL") == ErrorReply("NOTBUSY No scripts in execution right now.")


def test_read_only_scripts(client: Client) -> None:
    client("SET", "k", "v")
    assert client("EVAL_RO", "return redis.call('get', 'k')", "0") == b"v"
    assert "read-only scripts" in _error(client("EVAL_RO", "redis.call('set', 'k', 'x')", "0"))
    shebang = "#!lua flags=no-writes\nreturn redis.call('set', 'k', 'x')"
    assert "read-only scripts" in _error(client("EVAL", shebang, "0"))
    assert "Unexpected flag" in _error(client("EVAL", "#!lua flags=bogus\nreturn 1", "0"))


def test_functions(client: Client) -> None:
    library = (
        "#!lua name=mylib\n"
        "redis.register_function('hello', function(keys, args) return 'hi ' .. args[1] end)\n"
        "redis.register_function{function_name='get', callback=function(keys) "
        "return redis.call('get', keys[1]) end, flags={'no-writes'}}"
    )
    assert client("FUNCTION", "LOAD", library) == b"mylib"
    assert client("FCALL", "hello", "0", "you") == b"hi you"
    client("SET", "k", "v")
    assert client("FCALL_RO", "get", "1", "k") == b"v"
    assert "already exists" in _error(client("FUNCTION", "LOAD", library))
    assert client("FUNCTION", "LOAD", "REPLACE", library) == b"mylib"
    listing = client("FUNCTION", "LIST")
    assert isinstance(listing, list)
    assert b"mylib" in listing[0]
    dump = client("FUNCTION", "DUMP")
    assert client("FUNCTION", "FLUSH") == "OK"
    assert _error(client("FCALL", "hello", "0")) == "ERR Function not found"
    assert client("FUNCTION", "RESTORE", dump) == "OK"
    assert client("FCALL", "hello", "0", "again") == b"hi again"
    assert "Missing library metadata" in _error(client("FUNCTION", "LOAD", "return 1"))
    assert "No functions registered" in _error(client("FUNCTION", "LOAD", "#!lua name=x\n"))
    # A library's top level sees only the registration API.
    assert "nonexistent global" in _error(
        client("FUNCTION", "LOAD", "#!lua name=y\nredis.call('ping')")
    )


def test_a_runaway_script_is_stopped(client: Client) -> None:
    client("CONFIG", "SET", "strata-script-time-limit", "20")
    message = _error(client("EVAL", "while true do end", "0"))
    assert "strata-script-time-limit" in message
    # Swallowing the error with pcall does not keep the script alive.
    message = _error(
        client("EVAL", "while true do pcall(function() while true do end end) end", "0")
    )
    assert "strata-script-time-limit" in message
    assert client("EVAL", "return 1", "0") == 1  # the runtime is usable afterwards


def test_massive_arguments_and_nesting(client: Client) -> None:
    assert (
        client(
            "EVAL",
            "local a = {} for i = 1, 7999 do a[i] = 'x' end return redis.call('rpush', 'l', unpack(a))",
            "0",
        )
        == 7999
    )
    client.send("EVAL", "local a = {} a[1] = a return a", "0")
    raw = client.session.take_output()
    depth = 0
    while raw.startswith(b"*1\r\n"):
        raw = raw[4:]
        depth += 1
    assert raw == b"-ERR reached lua stack limit\r\n"  # a recursive table ends, as in Redis
    assert depth > 100


def test_scripts_are_atomic_and_see_the_callers_db(client: Client) -> None:
    client("SELECT", "2")
    client("SET", "k", "db2")
    assert client("EVAL", "redis.call('select', 0) return redis.call('get', 'k')", "0") is None
    assert client("GET", "k") == b"db2"  # SELECT inside the script does not move the caller


def _busy_sidecar(clock: FakeClock) -> tuple[Sidecar, Client]:
    sidecar = Sidecar(Keyspace(clock=clock))
    client = Client(sidecar)
    client("CONFIG", "SET", "lua-time-limit", "0")  # busy from the first hook call
    client("CONFIG", "SET", "strata-script-time-limit", "10000")
    return sidecar, client


def test_a_long_script_answers_busy_and_script_kill_stops_it(clock: FakeClock) -> None:
    sidecar, caller = _busy_sidecar(clock)
    other = Client(sidecar)
    seen: list[object] = []

    def poller(session: object) -> None:
        # The server's poller runs the other clients' commands from inside the script.
        assert session is caller.session
        if not seen:
            seen.append(other("PING"))
            seen.append(other("FUNCTION", "KILL"))  # an EVAL runs: FUNCTION KILL is refused
            seen.append(other("SCRIPT", "KILL"))

    sidecar.busy_poller = poller
    reply = caller("EVAL", "local f = function() while 1 do end end while 1 do pcall(f) end", "0")
    assert "killed by user" in _error(reply)  # pcall does not keep a killed script alive
    assert seen[0] == ErrorReply(
        "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN NOSAVE."
    )
    assert _error(seen[1]).startswith("BUSY")
    assert seen[2] == "OK"
    assert sidecar.busy is None
    assert other("PING") == "PONG"
    assert other("SCRIPT", "KILL") == ErrorReply("NOTBUSY No scripts in execution right now.")


def test_a_script_that_wrote_cannot_be_killed(clock: FakeClock) -> None:
    sidecar, caller = _busy_sidecar(clock)
    other = Client(sidecar)
    seen: list[object] = []

    def poller(session: object) -> None:
        if not seen:
            seen.append(other("SCRIPT", "KILL"))
            seen.append(other("GET", "x"))
            # Let the script finish: what another sidecar user could not do while BUSY.
            sidecar.keyspace.dbs[0].set(b"stop", b"1")

    sidecar.busy_poller = poller
    script = "redis.call('set', 'x', 'y') while not redis.call('get', 'stop') do end return 7"
    assert caller("EVAL", script, "0") == 7
    assert _error(seen[0]).startswith("UNKILLABLE Sorry the script already executed write")
    assert _error(seen[1]).startswith("BUSY")
    assert caller("GET", "x") == b"y"


def test_transactions_meeting_a_busy_script_are_aborted(clock: FakeClock) -> None:
    sidecar, caller = _busy_sidecar(clock)
    queued, aborted = Client(sidecar), Client(sidecar)
    caller("SET", "xx", "1")
    assert aborted("MULTI") == "OK"
    assert aborted("INCR", "xx") == "QUEUED"
    seen: list[object] = []

    def poller(session: object) -> None:
        if not seen:
            seen.append(queued("MULTI"))  # allowed while busy
            seen.append(queued("INCR", "xx"))  # refused: the transaction will fail
            seen.append(aborted("EXEC"))  # refused, and the transaction is discarded
            seen.append(aborted("FUNCTION", "KILL"))
            seen.append(aborted("SCRIPT", "KILL"))

    sidecar.busy_poller = poller
    assert "killed by user" in _error(caller("EVAL", "while true do end", "0"))
    assert seen[0] == "OK"
    assert _error(seen[1]).startswith("BUSY")
    assert _error(seen[2]).startswith(
        "EXECABORT Transaction discarded because of: BUSY Redis is busy running a script."
    )
    assert _error(seen[3]).startswith("BUSY")
    assert seen[4] == "OK"
    assert queued("INCR", "xx") == "QUEUED"
    assert _error(queued("EXEC")).startswith("EXECABORT Transaction discarded because of previous")
    assert aborted("PING", "x") == b"x"  # no longer in MULTI
    assert caller("GET", "xx") == b"1"


def test_functions_are_killed_with_function_kill(clock: FakeClock) -> None:
    sidecar, caller = _busy_sidecar(clock)
    other = Client(sidecar)
    caller(
        "FUNCTION",
        "LOAD",
        "#!lua name=lib\nredis.register_function('spin', function() while 1 do end end)",
    )
    seen: list[object] = []

    def poller(session: object) -> None:
        if not seen:
            seen.append(other("PING"))
            seen.append(other("SCRIPT", "KILL"))
            seen.append(other("FUNCTION", "KILL"))

    sidecar.busy_poller = poller
    assert "killed by user" in _error(caller("FCALL", "spin", "0"))
    assert seen[0] == ErrorReply(
        "BUSY Redis is busy running a script. You can only call FUNCTION KILL or SHUTDOWN NOSAVE."
    )
    assert _error(seen[1]).startswith("BUSY")
    assert seen[2] == "OK"
