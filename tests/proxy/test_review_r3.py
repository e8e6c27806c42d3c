"""Review R3, proxy level: several instances sharing one Redis through the documented chain
``memory,sqlite,redis`` (README: "Several proxies can share one cache").

Each test reproduces one bug found in review, and stays as a regression test. Real proxies, a
real redis-server and the fake OpenAI upstream; the waits are for events in other threads or
processes, never for time.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

pytest.importorskip("redis", reason="redis-py (the redis extra) is not installed")

from redis_server import redis_server, redis_url
from stratacache.tiers.coherence import CoherentTier

from .conftest import ADMIN_TOKEN, RunningProxy, StartProxy
from .fake_upstream import FakeUpstream
from .helpers import CHAT, client, wait_until

__all__ = ["redis_server", "redis_url"]


def _instance(start: StartProxy, tmp_path: Path, name: str, url: str) -> RunningProxy:
    return start(
        data_dir=tmp_path / name,
        signing_key_file=tmp_path / "shared.key",
        redis_url=url,
        chain="memory,sqlite,redis",
    )


def test_a_tag_deleted_on_one_instance_is_gone_from_the_others_sqlite(
    start_proxy: StartProxy, fake: FakeUpstream, tmp_path: Path, redis_url: str
) -> None:
    """B reads A's answer from Redis and copies it into its faster tiers, its SQLite included.
    The tag is invalidated through A: Redis and B's L0 forget the answer (pub/sub), B's SQLite
    does not, and B serves the invalidated answer from it (and copies it back into its L0)."""
    a = _instance(start_proxy, tmp_path, "a", redis_url)
    b = _instance(start_proxy, tmp_path, "b", redis_url)
    tagged = {"x-cache-tags": "policy:returns"}
    with client(a, default_headers=tagged) as sdk_a, client(b, default_headers=tagged) as sdk_b:
        sdk_a.chat.completions.create(**CHAT)
        wait_until(lambda: a.proxy.cache.pending_writes == 0)  # stored in Redis by A
        first = sdk_b.chat.completions.with_raw_response.create(**CHAT)
        assert first.headers["x-cache"] == "HIT"
        assert first.headers["x-cache-tier"] == "redis"  # and copied into B's SQLite and L0
        b_l0, b_sqlite = b.proxy.tiers.tiers[:2]
        assert isinstance(b_l0, CoherentTier)
        assert isinstance(b_sqlite, CoherentTier)
        applied = b_l0.applied, b_sqlite.applied

        deleted = httpx.delete(
            a.root + "/admin/tags/policy:returns",
            headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
            timeout=5,
        )
        assert deleted.status_code == 200
        # Each of B's coherent tiers follows the channel on its own subscription: wait until
        # both have applied the invalidation (until then B's SQLite may still serve the answer;
        # a known window of a few milliseconds, see the README).
        wait_until(lambda: b_l0.applied > applied[0] and b_sqlite.applied > applied[1])
        after = sdk_b.chat.completions.with_raw_response.create(**CHAT)
        assert after.headers["x-cache"] == "MISS", (
            f"{after.headers['x-cache']} from {after.headers.get('x-cache-tier')} after the "
            "tag was invalidated"
        )
