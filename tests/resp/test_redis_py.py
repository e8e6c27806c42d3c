"""redis-py's own clients against the sidecar: sync and asyncio, RESP2 and RESP3.

Nothing here was written for the sidecar: redis-py's handshake (HELLO, CLIENT SETINFO), its
pipelines and transactions, its WATCH retry loop, its Lock (EVALSHA/EVAL Lua scripts) and its
pub/sub machinery all run as they would against Redis.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from .conftest import RunningServer

redis = pytest.importorskip("redis")
import redis.asyncio as aioredis  # noqa: E402
from redis.backoff import NoBackoff  # noqa: E402
from redis.retry import Retry  # noqa: E402

PROTOCOLS = [pytest.param(2, id="resp2"), pytest.param(3, id="resp3")]


@pytest.fixture(params=PROTOCOLS)
def client(request: pytest.FixtureRequest, resp_server: RunningServer) -> Any:
    with resp_server.redis(protocol=request.param) as connection:
        yield connection


def test_handshake_and_basic_types(client: Any) -> None:
    assert client.ping() is True
    assert client.set("k", "v", ex=100) is True
    assert client.get("k") == b"v"
    assert client.ttl("k") == 100
    assert client.incr("n", 5) == 5
    assert client.incrbyfloat("n", 0.5) == 5.5
    assert client.hset("h", mapping={"a": "1", "b": "2"}) == 2
    assert client.hgetall("h") == {b"a": b"1", b"b": b"2"}
    assert client.rpush("l", "x", "y", "z") == 3
    assert client.lrange("l", 0, -1) == [b"x", b"y", b"z"]
    assert client.sadd("s", "m1", "m2") == 2
    assert client.smembers("s") == {b"m1", b"m2"}
    assert client.zadd("z", {"a": 1.5, "b": 2.5}) == 2
    assert client.zrange("z", 0, -1, withscores=True) in (
        [(b"a", 1.5), (b"b", 2.5)],
        [[b"a", 1.5], [b"b", 2.5]],
    )
    assert client.zscore("z", "b") == 2.5
    assert client.exists("k", "h", "nope") == 2
    assert client.type("z") == b"zset"
    assert sorted(client.keys("*")) == [b"h", b"k", b"l", b"n", b"s", b"z"]
    assert sorted(client.scan_iter(match="[hk]")) == [b"h", b"k"]
    assert client.dbsize() == 6
    info = client.info()
    assert info["redis_version"] == "7.0.15"
    assert info["db0"]["keys"] == 6
    assert client.client_id() > 0
    assert client.client_setname("me") is True
    assert client.client_getname() in ("me", b"me")


def test_errors_are_redis_errors(client: Any) -> None:
    client.set("s", "v")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        client.lpush("s", "x")
    with pytest.raises(redis.ResponseError, match="unknown command 'NOSUCH'"):
        client.execute_command("NOSUCH", "a")
    with pytest.raises(redis.ResponseError, match="not an integer"):
        client.incr("s")


def test_ttl_uses_the_injected_clock(client: Any, resp_server: RunningServer) -> None:
    client.set("k", "v", px=1500)
    resp_server.clock.advance(1.0)
    assert client.get("k") == b"v"
    assert 0 < client.pttl("k") <= 500
    resp_server.clock.advance(0.6)
    assert client.get("k") is None
    assert client.exists("k") == 0


def test_pipeline_without_transaction(client: Any) -> None:
    pipe = client.pipeline(transaction=False)
    for index in range(100):
        pipe.set(f"k{index}", index)
    pipe.get("k42")
    pipe.incr("k42")
    results = pipe.execute()
    assert results[:100] == [True] * 100
    assert results[100:] == [b"42", 43]


def test_transaction_and_watch_conflict(client: Any, resp_server: RunningServer) -> None:
    client.set("balance", 10)
    with resp_server.redis() as other:
        pipe = client.pipeline()
        pipe.watch("balance")
        pipe.multi()
        pipe.decrby("balance", 3)
        other.set("balance", 100)  # a concurrent change
        with pytest.raises(redis.WatchError):
            pipe.execute()
        pipe.reset()

    def withdraw(pipe: Any) -> None:
        balance = int(pipe.get("balance"))
        pipe.multi()
        pipe.set("balance", balance - 3)

    assert client.transaction(withdraw, "balance") == [True]
    assert client.get("balance") == b"97"
    pipe = client.pipeline()
    pipe.set("a", 1)
    pipe.lpush("a", 2)  # fails at EXEC time: the other commands still ran
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        pipe.execute()
    assert client.get("a") == b"1"


def test_lock_uses_lua_scripts(client: Any, resp_server: RunningServer) -> None:
    lock = client.lock("resource", timeout=10, blocking=False)
    assert lock.acquire() is True
    other = resp_server.redis().lock("resource", timeout=10, blocking=False)
    assert other.acquire() is False
    assert lock.extend(5) is True
    assert 10 < client.pttl("resource") / 1000 <= 15
    lock.release()
    assert other.acquire() is True
    with pytest.raises(redis.exceptions.LockNotOwnedError):
        lock.do_release(b"a token that does not own it")  # the release script refuses
    other.release()


def test_scripts_register_and_run(client: Any) -> None:
    script = client.register_script(
        "local n = redis.call('INCRBY', KEYS[1], ARGV[1]) "
        "return {n, redis.call('TYPE', KEYS[1])['ok'], cjson.encode({n})}"
    )
    assert script(keys=["c"], args=[2]) == [2, b"string", b"[2]"]
    assert script(keys=["c"], args=[3]) == [5, b"string", b"[5]"]
    assert client.script_exists(script.sha) == [True]
    client.script_flush()
    assert script(keys=["c"], args=[1])[0] == 6  # redis-py reloads the flushed script
    with pytest.raises(redis.ResponseError, match="attempted to access nonexistent global"):
        client.eval("return os.time()", 0)


def test_pubsub(client: Any, resp_server: RunningServer) -> None:
    pubsub = client.pubsub()
    pubsub.subscribe("news")
    pubsub.psubscribe("new*")
    confirmations = [pubsub.get_message(timeout=5) for _ in range(2)]
    assert [m["type"] for m in confirmations] == ["subscribe", "psubscribe"]
    with resp_server.redis() as publisher:
        assert publisher.publish("news", "hello") == 2
    received = [pubsub.get_message(timeout=5) for _ in range(2)]
    assert {(m["type"], m["data"]) for m in received} == {
        ("message", b"hello"),
        ("pmessage", b"hello"),
    }
    pubsub.close()


def test_blocking_pop_times_out_and_wakes_up(client: Any, resp_server: RunningServer) -> None:
    started = time.monotonic()
    assert client.blpop(["empty"], timeout=0.1) is None
    assert time.monotonic() - started < 5
    result: list[Any] = []

    def waiter() -> None:
        with resp_server.redis() as blocked:
            result.append(blocked.blpop(["q"], timeout=5))

    thread = threading.Thread(target=waiter)
    thread.start()
    deadline = time.monotonic() + 5
    while resp_server.run(lambda: resp_server.sidecar.blocked_count) == 0:
        assert time.monotonic() < deadline, "the waiter never blocked"
        time.sleep(0.005)
    client.rpush("q", "job")
    thread.join(timeout=5)
    assert result in ([(b"q", b"job")], [[b"q", b"job"]])


def test_databases_are_separate(resp_server: RunningServer) -> None:
    with resp_server.redis(db=3) as db3, resp_server.redis(db=0) as db0:
        db3.set("k", "three")
        assert db0.get("k") is None
        assert db3.get("k") == b"three"
        assert db0.move("nope", 3) is False


@pytest.mark.parametrize("protocol", [2, 3])
async def test_asyncio_client(resp_server: RunningServer, protocol: int) -> None:
    client = aioredis.Redis(host="127.0.0.1", port=resp_server.port, protocol=protocol)
    try:
        assert await client.ping() is True
        async with client.pipeline(transaction=True) as pipe:
            pipe.set("a", "1")
            pipe.incr("a")
            pipe.get("a")
            assert await pipe.execute() == [True, 2, b"2"]
        assert await client.hset("h", "f", "v") == 1
        assert await client.hget("h", "f") == b"v"
        lock = client.lock("l", timeout=5)
        assert await lock.acquire(blocking=False) is True
        await lock.release()
        assert await client.blpop(["nothing"], timeout=0.1) is None
        pubsub = client.pubsub()
        await pubsub.subscribe("ch")
        confirmation = await pubsub.get_message(timeout=5)
        assert confirmation is not None
        assert confirmation["type"] == "subscribe"
        await client.publish("ch", "m")
        message = await pubsub.get_message(timeout=5)
        assert message is not None
        assert message["data"] == b"m"
        await pubsub.aclose()  # type: ignore[no-untyped-call]
    finally:
        await client.aclose()


def test_requirepass(clock: Any) -> None:
    from stratacache.resp.keyspace import Keyspace
    from stratacache.resp.sidecar import Sidecar

    from .conftest import start_server

    running = start_server(Sidecar(Keyspace(clock=clock), requirepass="pw"), clock)
    # No retries: an authentication failure is a ConnectionError, which redis-py retries.
    no_retry = Retry(NoBackoff(), 0)
    try:
        with running.redis(retry=no_retry) as anonymous, pytest.raises(redis.AuthenticationError):
            anonymous.get("k")
        for protocol in (2, 3):
            with running.redis(password="pw", protocol=protocol) as authed:
                assert authed.set("k", "v") is True
        wrong = running.redis(password="wrong", retry=no_retry)
        with wrong, pytest.raises(redis.AuthenticationError):
            wrong.ping()
    finally:
        running.stop()
