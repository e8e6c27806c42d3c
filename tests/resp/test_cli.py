"""``strata resp`` as a user runs it: a subprocess on a free port, SAVE, SHUTDOWN, restart."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from stratacache.resp.cli import resp_command

redis = pytest.importorskip("redis")

_RUN = (
    "import sys; from stratacache.resp.cli import resp_command; "
    "resp_command.main(args=sys.argv[1:], standalone_mode=True)"
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(log: Path, *args: str) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    with log.open("ab") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-c", _RUN, "--port", str(port), *args],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return process, port
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                process.wait()
                raise AssertionError(log.read_text()) from None
            time.sleep(0.02)


def test_serve_save_shutdown_and_reload(tmp_path: Path) -> None:
    snapshot = tmp_path / "dump.strata"
    log = tmp_path / "stderr.txt"
    process, port = _start(log, "--snapshot", str(snapshot), "--maxmemory", "64mb")
    try:
        client = redis.Redis(port=port)
        client.set("kept", "value")
        assert client.hset("h", "f", "v") == 1
        assert client.config_get("maxmemory") == {"maxmemory": str(64 * 1024 * 1024)}
        assert client.save() is True
        client.shutdown(nosave=True)
        client.close()
        assert process.wait(timeout=30) == 0
    finally:
        process.kill()
        process.wait()
    assert snapshot.exists()
    process, port = _start(log, "--snapshot", str(snapshot))
    try:
        with redis.Redis(port=port) as client:
            assert client.get("kept") == b"value"
            assert client.hgetall("h") == {b"f": b"v"}
    finally:
        process.kill()
        process.wait()
    assert "loaded 2 keys" in log.read_text()


def test_bad_options_are_reported() -> None:
    runner = CliRunner()
    result = runner.invoke(resp_command, ["--maxmemory", "lots"])
    assert result.exit_code != 0
    assert "not a memory amount" in result.output
    result = runner.invoke(resp_command, ["--backing", "nope://x", "--port", "0"])
    assert result.exit_code != 0
    assert "invalid backing URL" in result.output


def test_corrupt_snapshot_is_refused(tmp_path: Path) -> None:
    snapshot = tmp_path / "dump.strata"
    snapshot.write_bytes(b"garbage")
    result = CliRunner().invoke(resp_command, ["--snapshot", str(snapshot), "--port", "0"])
    assert result.exit_code != 0
    assert "cannot load snapshot" in result.output


def test_help_lists_the_options() -> None:
    result = CliRunner().invoke(resp_command, ["--help"])
    assert result.exit_code == 0
    for option in ("--port", "--bind", "--requirepass", "--maxmemory", "--backing", "--snapshot"):
        assert option in result.output
