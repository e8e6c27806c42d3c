"""Fixtures for the proxy tests: the fake upstream (one per session) and proxies on loopback ports."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from stratacache.config import Settings
from stratacache.proxy.app import Proxy, create_app

from .fake_upstream import FakeUpstream, ThreadedServer, running_fake_upstream

ADMIN_TOKEN = "admin-token-for-tests"


class FakeClock:
    """A wall clock that moves only when told to (shared by the test and the server thread)."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._now = start
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._now += seconds


@dataclass
class RunningProxy:
    """A proxy app served on a loopback port."""

    server: ThreadedServer
    proxy: Proxy
    clock: FakeClock

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.port}/v1"

    @property
    def root(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"

    def metric(self, name: str, **labels: str) -> float:
        return self.proxy.metrics.value(name, **labels)

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture(scope="session")
def fake_session() -> Iterator[FakeUpstream]:
    with running_fake_upstream() as fake:
        yield fake


@pytest.fixture
def fake(fake_session: FakeUpstream) -> Iterator[FakeUpstream]:
    fake_session.reset()
    yield fake_session
    fake_session.reset()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


StartProxy = Callable[..., RunningProxy]


@pytest.fixture
def start_proxy(fake: FakeUpstream, tmp_path: Path, clock: FakeClock) -> Iterator[StartProxy]:
    """Start a proxy (as many as a test wants; all stopped at the end) on the fake upstream."""
    running: list[RunningProxy] = []

    def start(
        data_dir: Path | None = None, *, embedder: Any = None, **overrides: Any
    ) -> RunningProxy:
        options: dict[str, Any] = {
            "upstream": fake.base_url,
            "data_dir": data_dir or tmp_path / "strata",
            "admin_token": ADMIN_TOKEN,
            "upstream_timeout": 5.0,
            # Exact only unless a test asks: the packaged model takes seconds to load.
            "semantic": embedder is not None,
            **overrides,
        }
        settings = Settings(**options)
        app = create_app(settings, clock=clock, embedder=embedder)
        server = ThreadedServer(app)
        server.start()
        proxy = RunningProxy(server, app.state.proxy, clock)
        running.append(proxy)
        return proxy

    yield start
    for proxy in running:
        proxy.stop()


@pytest.fixture
def proxy(start_proxy: StartProxy) -> RunningProxy:
    return start_proxy()


@pytest.fixture
def http(proxy: RunningProxy) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=proxy.root, timeout=10) as client:
        yield client
