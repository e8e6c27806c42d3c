"""The asyncio server: bad input closes only the offending connection, pipelining, backpressure,
TCP_NODELAY, QUIT and CLIENT KILL."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stratacache.resp.protocol import ErrorReply, ReplyReader

from .conftest import RunningServer


def _read_until_closed(sock: socket.socket, limit: float = 5.0) -> bytes:
    sock.settimeout(limit)
    data = b""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return data


def _replies(data: bytes) -> list[object]:
    reader = ReplyReader()
    reader.feed(data)
    out = []
    while (reply := reader.gets()) is not False:
        out.append(reply)
    return out


def _exchange(sock: socket.socket, payload: bytes, count: int) -> list[object]:
    """Send ``payload`` and read ``count`` replies."""
    sock.sendall(payload)
    reader = ReplyReader()
    out: list[object] = []
    while len(out) < count:
        chunk = sock.recv(65536)
        assert chunk, "connection closed early"
        reader.feed(chunk)
        while (reply := reader.gets()) is not False:
            out.append(reply)
    return out


@pytest.mark.parametrize(
    ("garbage", "error"),
    [
        (b"*1\r\n:1\r\n", "ERR Protocol error: expected '$', got ':'"),
        (b"*1\r\n$99999999999\r\n", "ERR Protocol error: invalid bulk length"),
        (b"*x\r\n", "ERR Protocol error: invalid multibulk length"),
        (b'GET "open\r\n', "ERR Protocol error: unbalanced quotes in request"),
    ],
)
def test_protocol_error_closes_only_that_connection(
    resp_server: RunningServer, garbage: bytes, error: str
) -> None:
    with resp_server.redis() as good:
        good.set("safe", "data")
        with resp_server.raw() as bad:
            bad.sendall(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n" + garbage)
            replies = _replies(_read_until_closed(bad))
        assert replies == ["OK", ErrorReply(error)]
        assert good.get("safe") == b"data"
        assert good.get("k") == b"v"  # what came before the garbage was executed
        assert good.ping() is True


def test_truncated_frame_then_disconnect_leaves_state_consistent(
    resp_server: RunningServer,
) -> None:
    with resp_server.raw() as sock:
        sock.sendall(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$10\r\nabc")
    with resp_server.redis() as client:
        assert client.get("k") is None
        assert client.ping() is True
        # Only this client's session is left: the truncated one was forgotten on disconnect.
        deadline = time.monotonic() + 5
        while resp_server.run(lambda: len(resp_server.sidecar.sessions)) != 1:
            assert time.monotonic() < deadline
            time.sleep(0.005)


def test_oversized_bulk_against_configured_limit(resp_server: RunningServer) -> None:
    with resp_server.redis() as client:
        client.config_set("proto-max-bulk-len", str(1024 * 1024))
    with resp_server.raw() as sock:
        sock.sendall(b"*2\r\n$3\r\nGET\r\n$%d\r\n" % (1024 * 1024 + 1))
        assert _replies(_read_until_closed(sock)) == [
            ErrorReply("ERR Protocol error: invalid bulk length")
        ]


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(garbage=st.binary(min_size=1, max_size=200))
def test_fuzzed_connections_never_hurt_the_server(
    resp_server: RunningServer, garbage: bytes
) -> None:
    with resp_server.redis() as good:
        good.set("anchor", "intact")
        with resp_server.raw() as sock:
            sock.sendall(garbage)
            sock.shutdown(socket.SHUT_WR)
            data = _read_until_closed(sock, limit=2.0)
        for reply in _replies(data):
            if isinstance(reply, ErrorReply):
                assert "\n" not in reply.message
        assert good.get("anchor") == b"intact"
        assert good.ping() is True


def test_pipelined_commands_are_answered_in_order(resp_server: RunningServer) -> None:
    with resp_server.raw() as sock:
        payload = b"".join(b"*2\r\n$4\r\nINCR\r\n$1\r\nn\r\n" for _ in range(5000))
        replies = _exchange(sock, payload + b"PING\r\n", 5001)
    assert replies[:5000] == list(range(1, 5001))
    assert replies[-1] == "PONG"


def test_socket_has_nodelay(resp_server: RunningServer) -> None:
    with resp_server.redis() as client:
        client.ping()

        def check() -> bool:
            connections = list(resp_server.server.connections)
            sockets = [c._transport.get_extra_info("socket") for c in connections if c._transport]
            return all(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for s in sockets if s)

        assert resp_server.run(check)


def test_backpressure_pauses_reading_from_a_client_that_does_not_read(
    resp_server: RunningServer,
) -> None:
    with resp_server.redis() as client:
        client.set("big", b"x" * 1_000_000)
    flood = resp_server.raw()
    flood.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        request = b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n"
        flood.setblocking(False)
        sent = 0
        deadline = time.monotonic() + 10
        # Keep sending without ever reading: the server must stop reading us.
        while time.monotonic() < deadline:
            try:
                sent += flood.send(request * 64)
            except BlockingIOError:
                break
        assert sent > 0

        def paused() -> bool:
            return any(c._reading_paused for c in resp_server.server.connections)

        deadline = time.monotonic() + 10
        while not resp_server.run(paused):  # the server catches up with what we sent
            assert time.monotonic() < deadline, "reading was never paused"
            time.sleep(0.005)
        with resp_server.redis() as other:  # everyone else is still served
            assert other.ping() is True
    finally:
        flood.close()


def test_quit_and_client_kill(resp_server: RunningServer) -> None:
    with resp_server.raw() as sock:
        sock.sendall(b"QUIT\r\nPING\r\n")
        assert _replies(_read_until_closed(sock)) == ["OK"]
    with resp_server.raw() as victim, resp_server.redis() as killer:
        (victim_id,) = _exchange(victim, b"CLIENT ID\r\n", 1)
        assert killer.client_kill_filter(_id=victim_id) == 1
        assert _read_until_closed(victim) == b""  # closed by the server
        assert killer.ping() is True


def test_inline_commands_from_a_terminal(resp_server: RunningServer) -> None:
    with resp_server.raw() as sock:
        assert _exchange(sock, b'SET greeting "hello world"\r\nGET greeting\r\n', 2) == [
            "OK",
            b"hello world",
        ]


def test_shutdown_without_a_loop_hook_is_refused(resp_server: RunningServer) -> None:
    import redis

    with resp_server.redis() as client, pytest.raises(redis.ResponseError, match="SHUTDOWN"):
        client.execute_command("SHUTDOWN", "NOSAVE")


def test_bgsave_writes_in_the_background(resp_server: RunningServer, tmp_path: Path) -> None:
    from stratacache.resp.keyspace import Keyspace
    from stratacache.resp.snapshot import load_snapshot

    path = tmp_path / "bg.strata"
    resp_server.run(lambda: setattr(resp_server.sidecar, "snapshot_path", str(path)))
    with resp_server.redis() as client:
        client.hset("h", mapping={"a": "1"})
        assert client.bgsave() is True
        deadline = time.monotonic() + 10
        while client.info("persistence")["rdb_bgsave_in_progress"]:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        assert client.info("persistence")["rdb_last_bgsave_status"] == "ok"
    assert load_snapshot(Keyspace(clock=resp_server.clock), path) == 1


def test_a_long_script_lets_other_clients_in_for_busy_and_script_kill(
    resp_server: RunningServer,
) -> None:
    pytest.importorskip("lupa")
    import redis

    admin = resp_server.redis()
    admin.config_set("lua-time-limit", 0)
    with resp_server.raw() as runner:
        # The script and a PING behind it in one pipeline: the PING waits for the script.
        runner.sendall(
            b"*3\r\n$4\r\nEVAL\r\n$17\r\nwhile true do end\r\n$1\r\n0\r\n*1\r\n$4\r\nPING\r\n"
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                admin.ping()
            except redis.exceptions.ResponseError as exc:
                busy = str(exc)
                break
            assert time.monotonic() < deadline, "the script never made the server busy"
            time.sleep(0.001)
        assert busy.startswith("BUSY Redis is busy running a script.")
        assert admin.script_kill() is True
        replies = _exchange(runner, b"", 2)
    assert isinstance(replies[0], ErrorReply)
    assert "killed by user" in replies[0].message
    assert replies[1] == "PONG"
    assert admin.ping() is True


def test_a_client_that_connects_during_a_long_script_can_kill_it(
    resp_server: RunningServer,
) -> None:
    pytest.importorskip("lupa")
    import redis

    watcher = resp_server.redis()
    watcher.config_set("lua-time-limit", 0)
    with resp_server.raw() as runner:
        runner.sendall(b"*3\r\n$4\r\nEVAL\r\n$17\r\nwhile true do end\r\n$1\r\n0\r\n")
        deadline = time.monotonic() + 10
        while True:
            try:
                watcher.ping()
            except redis.exceptions.ResponseError:
                break
            assert time.monotonic() < deadline, "the script never made the server busy"
            time.sleep(0.001)
        # A new connection, as `redis-cli SCRIPT KILL` opens: accepted while the loop is held,
        # its HELLO 3 (allowed while busy) is kept when the loop takes it over afterwards.
        with resp_server.raw() as newcomer:
            hello, busy, killed = _exchange(
                newcomer,
                b"*2\r\n$5\r\nHELLO\r\n$1\r\n3\r\n*1\r\n$4\r\nPING\r\n"
                b"*2\r\n$6\r\nSCRIPT\r\n$4\r\nKILL\r\n",
                3,
            )
            assert isinstance(hello, dict)
            assert hello[b"proto"] == 3
            assert isinstance(busy, ErrorReply)
            assert busy.message.startswith("BUSY")
            assert killed == "OK"
            (script_error,) = _exchange(runner, b"", 1)
            assert isinstance(script_error, ErrorReply)
            assert "killed by user" in script_error.message
            # Served by the loop now, still in RESP3: a null is "_".
            newcomer.sendall(b"*2\r\n$3\r\nGET\r\n$7\r\nmissing\r\n")
            assert newcomer.recv(100) == b"_\r\n"
    assert watcher.ping() is True
