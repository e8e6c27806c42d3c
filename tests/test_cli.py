"""Tests for the ``strata serve`` and ``strata demo`` commands."""

from __future__ import annotations

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


def test_serve_starts_with_nothing_but_a_data_dir(fake: FakeUpstream, tmp_path: Path) -> None:
    # No Redis, no database server, no API key in the environment: only the embedded store.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "STRATA_"))}
    port = _free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "stratacache.cli",
            "serve",
            "--port",
            str(port),
            "--upstream",
            fake.base_url,
            "--data-dir",
            str(tmp_path / "data"),
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while True:  # wait for the server to come up (an event, polled)
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.monotonic() < deadline, "strata serve did not start"
            time.sleep(0.05)
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-cli", max_retries=0)
        request = {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "cli"}],
            "temperature": 0,
        }
        first = client.chat.completions.with_raw_response.create(**request)  # type: ignore[call-overload]
        second = client.chat.completions.with_raw_response.create(**request)  # type: ignore[call-overload]
        assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
        assert "server" not in second.headers
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        finally:
            if process.poll() is None:
                process.kill()
            for stream in (process.stdout, process.stderr):
                if stream is not None:
                    stream.close()
    assert process.returncode == 0
    assert (tmp_path / "data" / "cache.db").exists()
    assert (tmp_path / "data" / "signing.key").exists()


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
