"""The Redis 8 vector-set index: the shared contract, sharing between instances, and failures."""

from __future__ import annotations

import secrets
import sys
from collections.abc import Iterator

import numpy as np
import pytest

from redis8_server import own_redis8_server, redis8_server
from redis_server import RedisServer, redis_server
from stratacache.errors import ConfigError, MissingExtraError, TierError, TierUnavailableError
from stratacache.semantic.backends import open_index
from stratacache.semantic.redis_vectors import RedisVectorIndex

from .conftest import DIMENSION
from .contract import VectorIndexContract
from .helpers import FakeClock, unit

__all__ = ["own_redis8_server", "redis8_server", "redis_server"]


def _prefix() -> str:
    return f"t{secrets.token_hex(4)}:"  # each test its own key space on the session server


@pytest.fixture
def prefix() -> str:
    """A key prefix no other test uses."""
    return _prefix()


class TestRedisVectorIndexContract(VectorIndexContract):
    """The contract every index passes, on a real Redis 8 server."""

    @pytest.fixture
    def index(
        self, redis8_server: RedisServer, clock: FakeClock, prefix: str
    ) -> Iterator[RedisVectorIndex]:
        index = RedisVectorIndex(redis8_server.url, DIMENSION, prefix=prefix, clock=clock)
        yield index
        index.close()


def test_two_instances_share_one_index(
    redis8_server: RedisServer, clock: FakeClock, prefix: str
) -> None:
    one = RedisVectorIndex(redis8_server.url, DIMENSION, prefix=prefix, clock=clock)
    two = RedisVectorIndex(redis8_server.url, DIMENSION, prefix=prefix, clock=clock)
    one.add("p", "k", unit(DIMENSION, 0), text="How do refunds work?")
    [match] = two.search("p", unit(DIMENSION, 0))
    assert (match.id, match.text) == ("k", "How do refunds work?")
    assert two.remove("k") is True
    assert one.search("p", unit(DIMENSION, 0)) == []
    other = RedisVectorIndex(redis8_server.url, DIMENSION, prefix=_prefix(), clock=clock)
    one.add("p", "k", unit(DIMENSION, 0))
    assert other.search("p", unit(DIMENSION, 0)) == []  # another prefix is another index
    for index in (one, two, other):
        index.close()


def test_text_survives_the_round_trip(
    redis8_server: RedisServer, clock: FakeClock, prefix: str
) -> None:
    index = RedisVectorIndex(redis8_server.url, DIMENSION, prefix=prefix, clock=clock)
    text = 'Größe "quoted" \\ back\nslash \x00 nul, emoji \U0001f600, {"json": true}'
    index.add("partition with spaces/and:colons", "id ünïcode", unit(DIMENSION, 1), text=text)
    [match] = index.search("partition with spaces/and:colons", unit(DIMENSION, 1))
    assert (match.id, match.text) == ("id ünïcode", text)
    index.close()


def test_purge_expired_drops_only_the_expired(
    redis8_server: RedisServer, clock: FakeClock, prefix: str
) -> None:
    index = RedisVectorIndex(redis8_server.url, DIMENSION, prefix=prefix, clock=clock)
    for i in range(7):
        index.add(f"p{i % 3}", f"dead{i}", unit(DIMENSION, i), expires_at=clock() + 5)
    index.add("p0", "live", unit(DIMENSION, 0), expires_at=clock() + 50)
    index.add("p1", "forever", unit(DIMENSION, 1))
    clock.advance(5)
    assert len(index) == 9
    assert index.purge_expired() == 7
    assert len(index) == 2
    assert index.purge_expired() == 0
    assert "live" in index
    assert "forever" in index
    index.close()


def test_remove_partition_of_many_entries(
    redis8_server: RedisServer, clock: FakeClock, prefix: str
) -> None:
    index = RedisVectorIndex(redis8_server.url, DIMENSION, prefix=prefix, clock=clock)
    rng = np.random.default_rng(5)
    for i in range(300):
        index.add("big", f"k{i}", rng.standard_normal(DIMENSION).astype(np.float32))
    index.add("small", "s", unit(DIMENSION, 0))
    assert index.remove_partition("big") == 300
    assert len(index) == 1
    assert "k5" not in index
    index.close()


def test_another_dimension_on_the_same_prefix_is_refused(
    redis8_server: RedisServer, clock: FakeClock, prefix: str
) -> None:
    RedisVectorIndex(redis8_server.url, DIMENSION, prefix=prefix, clock=clock).close()
    with pytest.raises(TierError, match=f"holds {DIMENSION}-d vectors, expected 8"):
        RedisVectorIndex(redis8_server.url, 8, prefix=prefix, clock=clock)


def test_a_dead_server_raises_tier_unavailable_and_recovers(
    own_redis8_server: RedisServer, clock: FakeClock
) -> None:
    index = RedisVectorIndex(own_redis8_server.url, DIMENSION, clock=clock)
    index.add("p", "k", unit(DIMENSION, 0))
    own_redis8_server.stop()
    for call in (
        lambda: index.search("p", unit(DIMENSION, 0)),
        lambda: index.add("p", "k2", unit(DIMENSION, 0)),
        lambda: index.remove("k"),
        lambda: len(index),
        lambda: "k" in index,
    ):
        with pytest.raises(TierUnavailableError):
            call()
    own_redis8_server.start()  # persistence is off: the restarted server is empty
    index.add("p", "k", unit(DIMENSION, 0))
    assert [m.id for m in index.search("p", unit(DIMENSION, 0))] == ["k"]
    index.close()
    with pytest.raises(TierError, match="closed"):
        len(index)


def test_no_server_at_start_up_is_tier_unavailable(clock: FakeClock) -> None:
    pytest.importorskip("redis")
    from redis_server import _free_port

    with pytest.raises(TierUnavailableError):
        RedisVectorIndex(f"redis://127.0.0.1:{_free_port()}/0", DIMENSION, clock=clock)


def test_a_redis_without_vector_sets_is_refused(redis_server: RedisServer) -> None:
    with pytest.raises(TierError, match="Redis 8"):
        RedisVectorIndex(redis_server.url, DIMENSION, prefix=_prefix())


def test_without_redis_py_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)
    with pytest.raises(MissingExtraError, match=r"stratacache\[redis\]"):
        RedisVectorIndex("redis://127.0.0.1:1/0", DIMENSION)


@pytest.mark.parametrize(
    ("url", "options"),
    [
        ("redis://127.0.0.1:1/0", {"client": object()}),  # both url and client
        (None, {}),  # neither
        ("http://127.0.0.1/", {}),
        ("redis://127.0.0.1:1/0", {"prefix": ""}),
        ("redis://127.0.0.1:1/0", {"ef_search": 0}),
    ],
)
def test_bad_construction_is_a_config_error(url: str | None, options: dict[str, object]) -> None:
    pytest.importorskip("redis")
    with pytest.raises(ConfigError):
        RedisVectorIndex(url, DIMENSION, **options)  # type: ignore[arg-type]


def test_open_index_picks_the_backend_by_url(redis8_server: RedisServer, clock: FakeClock) -> None:
    namespace = f"ns{secrets.token_hex(3)}"
    index = open_index(redis8_server.url, DIMENSION, clock=clock, namespace=namespace)
    assert isinstance(index, RedisVectorIndex)
    assert index.prefix == f"{namespace}:vec:"
    index.close()
    assert type(open_index("memory", DIMENSION, clock=clock)).__name__ in {
        "USearchIndex",
        "ExactIndex",
    }
    for bad in ("http://x", "", "memcached://x"):
        with pytest.raises(ConfigError):
            open_index(bad, DIMENSION)
    with pytest.raises(ConfigError):
        open_index("memory", DIMENSION, namespace="not-an-identifier")


def test_both_shapes_of_a_vsim_reply_are_read() -> None:
    from stratacache.semantic.redis_vectors import _triples

    flat = [b"b", b"0.75", None, b"a", b"1", b'{"t":"x"}']  # redis-py < 6: the RESP array
    parsed = {b"b": [0.75, None], b"a": [1.0, b'{"t":"x"}']}  # redis-py >= 6: a dict
    expected = [("a", 1.0, b'{"t":"x"}'), ("b", 0.75, None)]
    assert _triples(flat) == expected
    assert _triples(parsed) == expected
    assert _triples(None) == []
    assert _triples([]) == []
