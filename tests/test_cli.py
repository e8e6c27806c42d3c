"""Tests for the ``strata serve`` and ``strata demo`` commands."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from proxy.fake_upstream import FakeUpstream, running_fake_upstream
from stratacache.cli import main


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeUpstream]:
    with running_fake_upstream() as upstream:
        yield upstream


def test_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "serve" in out
    assert "demo" in out


def test_print_config_resolves_flags_env_and_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "strata.toml"
    config.write_text('port = 9001\n[routes.embeddings]\nmode = "never"\n', encoding="utf-8")
    monkeypatch.setenv("STRATA_ADMIN_TOKEN", "a-secret-token")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    code = main(
        [
            "serve",
            "--config",
            str(config),
            "--upstream",
            "http://127.0.0.1:1234/v1",
            "--data-dir",
            str(tmp_path / "d"),
            "--print-config",
        ]
    )
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["port"] == 9001
    assert printed["upstream"] == "http://127.0.0.1:1234/v1"
    assert printed["data_dir"] == str(tmp_path / "d")
    assert printed["admin_token"] == "<set>"  # never printed in clear
    assert printed["routes"]["embeddings"]["mode"] == "never"
    assert printed["routes"]["chat.completions"]["mode"] == "deterministic"


def test_bad_settings_are_a_clean_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    assert main(["serve", "--upstream", "ftp://nope", "--print-config"]) == 1
    assert "upstream must be an http" in capsys.readouterr().err
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:8080/v1")
    assert main(["serve", "--print-config"]) == 1
    assert "proxy itself" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Served:
    """A ``strata serve`` subprocess: its port and, once stopped, its output and exit code."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.output = ""  # stdout and stderr (uvicorn logs access lines to stdout)
        self.returncode: int | None = None


@contextlib.contextmanager
def strata_serve(upstream: str, data_dir: Path, *flags: str) -> Iterator[Served]:
    """Run ``strata serve`` in a subprocess until the block ends, then stop it with SIGINT."""
    # No Redis, no database server, no API key in the environment: only the embedded store.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "STRATA_"))}
    served = Served(_free_port())
    argv = ["serve", "--port", str(served.port), "--upstream", upstream, "--data-dir"]
    process = subprocess.Popen(
        [sys.executable, "-m", "stratacache.cli", *argv, str(data_dir), *flags],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:  # wait for the server to come up (an event, polled)
            try:
                if httpx.get(f"http://127.0.0.1:{served.port}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            assert time.monotonic() < deadline, "strata serve did not start"
            time.sleep(0.05)
        yield served
    finally:
        process.send_signal(signal.SIGINT)
        try:
            served.output, _ = process.communicate(timeout=15)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
        served.returncode = process.returncode


def ask(port: int, text: str) -> str:
    client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-cli", max_retries=0)
    request = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": text}],
        "temperature": 0,
    }
    response = client.chat.completions.with_raw_response.create(**request)  # type: ignore[call-overload]
    assert "server" not in response.headers
    cache: str = response.headers["x-cache"]
    return cache


def test_serve_starts_with_nothing_but_a_data_dir(fake: FakeUpstream, tmp_path: Path) -> None:
    with strata_serve(fake.base_url, tmp_path / "data", "--log-level", "warning") as served:
        assert (ask(served.port, "cli"), ask(served.port, "cli")) == ("MISS", "HIT")
    assert served.returncode == 0
    assert (tmp_path / "data" / "cache.db").exists()
    assert (tmp_path / "data" / "signing.key").exists()


@pytest.mark.parametrize("flags", [(), ("--access-log",)], ids=["default", "access-log"])
def test_a_line_per_request_is_logged_only_when_asked(
    fake: FakeUpstream, tmp_path: Path, flags: tuple[str, ...]
) -> None:
    with strata_serve(fake.base_url, tmp_path / "data", *flags) as served:
        assert ask(served.port, "logged?") == "MISS"
    assert served.returncode == 0
    assert "strata: caching" in served.output  # the start line, at the default level (info)
    assert ('"POST /v1/chat/completions HTTP/1.1" 200' in served.output) == bool(flags)


def test_demo_runs_offline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "demo",
            "--requests",
            "24",
            "--latency-scale",
            "0",
            "--data-dir",
            str(tmp_path / "demo"),
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "SIMULATED" in out
    assert "hit rate" in out
    assert "latency p50, hit" in out
    assert "dollars saved" in out
    assert (tmp_path / "demo" / "cache.db").exists()


async def test_demo_result_numbers(tmp_path: Path) -> None:
    from rich.console import Console

    from stratacache.proxy.demo import run_demo

    result = await run_demo(
        requests=30, concurrency=1, latency_scale=0, data_dir=tmp_path, console=Console(quiet=True)
    )
    assert result.requests == 30
    assert sum(result.outcomes.values()) == 30
    # With one request at a time there is no coalescing: every repeat is a hit.
    distinct = result.outcomes.get("MISS", 0)
    assert distinct == result.upstream_calls
    assert result.outcomes.get("HIT", 0) == 30 - distinct
    assert 0 < result.hit_rate < 1
    assert result.tokens_saved > 0
    assert result.dollars_saved > 0
