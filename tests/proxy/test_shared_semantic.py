"""Two proxies sharing one Redis 8: its exact tier and its vector sets (``semantic_index``).

A question answered through instance A is a semantic hit for a paraphrase asked on instance B,
which has never seen either text: B's vectors and records both come from the shared Redis.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("numpy", reason="the semantic extra is not installed")

from redis8_server import redis8_server_or_skip
from redis_server import RedisServer
from semantic.helpers import HashingEmbedder

from .conftest import RunningProxy, StartProxy
from .fake_upstream import FakeUpstream
from .helpers import CHAT, client, wait_until


@pytest.fixture
def redis8() -> Iterator[RedisServer]:
    server = redis8_server_or_skip()
    server.start()
    yield server
    server.stop()


def ask(text: str) -> dict[str, Any]:
    return {**CHAT, "messages": [CHAT["messages"][0], {"role": "user", "content": text}]}


def _instance(start: StartProxy, tmp_path: Path, name: str, url: str) -> RunningProxy:
    proxy = start(
        data_dir=tmp_path / name,
        embedder=HashingEmbedder(),
        signing_key_file=tmp_path / "shared.key",
        redis_url=url,
        chain="memory,redis",
        semantic_index=url,
    )
    layer = proxy.proxy.cache.semantic
    assert layer is not None
    wait_until(lambda: layer.ready)
    return proxy


def test_a_paraphrase_first_seen_on_another_instance_is_a_semantic_hit(
    start_proxy: StartProxy, tmp_path: Path, fake: FakeUpstream, redis8: RedisServer
) -> None:
    a = _instance(start_proxy, tmp_path, "a", redis8.url)
    b = _instance(start_proxy, tmp_path, "b", redis8.url)
    sdk_a, sdk_b = client(a), client(b)
    try:
        first = sdk_a.chat.completions.with_raw_response.create(
            **ask("What is the capital of France?")
        )
        assert first.headers["x-cache"] == "MISS"
        wait_until(lambda: a.proxy.cache.pending_writes == 0)
        hit = sdk_b.chat.completions.with_raw_response.create(
            **ask("what is the capital of france")
        )
        assert hit.headers["x-cache"] == "SEMANTIC-HIT"
        assert hit.parse().choices[0].message.content == first.parse().choices[0].message.content
        assert fake.calls["/v1/chat/completions"] == 1
        # Another question is not served from it, on either instance.
        other = sdk_b.chat.completions.with_raw_response.create(
            **ask("What is the capital of Peru?")
        )
        assert other.headers["x-cache"] == "MISS"
        assert fake.calls["/v1/chat/completions"] == 2
    finally:
        sdk_a.close()
        sdk_b.close()
