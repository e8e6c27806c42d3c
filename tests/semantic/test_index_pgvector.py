"""The PostgreSQL + pgvector index: the shared contract, sharing between instances, and failures."""

from __future__ import annotations

import secrets
import sys
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from pg_server import PgServer, own_pg_server, pg_server
from stratacache.errors import ConfigError, MissingExtraError, TierError, TierUnavailableError
from stratacache.semantic.backends import open_index
from stratacache.semantic.pgvector import PgVectorIndex

from .conftest import DIMENSION
from .contract import VectorIndexContract
from .helpers import FakeClock, unit

__all__ = ["own_pg_server", "pg_server"]


@pytest.fixture
def table() -> str:
    """A table name no other test uses."""
    return f"t_{secrets.token_hex(5)}"


Connect = Callable[..., PgVectorIndex]


@pytest.fixture
def connect(pg_server: PgServer, clock: FakeClock, table: str) -> Iterator[Connect]:
    """Build indexes (on the session server, the test's table and clock unless told); close them."""
    made: list[PgVectorIndex] = []

    def connect(
        url: str | None = None, dimension: int = DIMENSION, **options: Any
    ) -> PgVectorIndex:
        options = {"table": table, "clock": clock, **options}
        made.append(PgVectorIndex(url or pg_server.url, dimension, **options))
        return made[-1]

    yield connect
    for index in made:
        index.close()


class TestPgVectorIndexContract(VectorIndexContract):
    """The contract every index passes, on a real PostgreSQL with pgvector."""

    @pytest.fixture
    def index(self, connect: Connect) -> PgVectorIndex:
        return connect()


def test_the_schema_has_an_hnsw_index_and_pgvector_0_8(
    pg_server: PgServer, connect: Connect, table: str
) -> None:
    import psycopg

    connect()
    with psycopg.connect(pg_server.url) as conn:
        [(definition,)] = conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE indexname = %s", (f"{table}_hnsw",)
        ).fetchall()
        [(version,)] = conn.execute(
            "SELECT extversion FROM pg_extension WHERE extname = 'vector'"
        ).fetchall()
    assert "USING hnsw (embedding vector_cosine_ops)" in definition
    assert tuple(int(p) for p in version.split(".")[:2]) >= (0, 8)


def test_a_large_partition_is_searched_through_the_graph(connect: Connect, table: str) -> None:
    """With a selective partition filter, the iterative HNSW scan still returns k rows."""
    import psycopg

    index = connect()
    rng = np.random.default_rng(11)
    vectors = rng.standard_normal((600, DIMENSION)).astype(np.float32)
    for i, v in enumerate(vectors):
        index.add("big" if i % 6 else "rare", f"k{i}", v)

    def force_the_graph(conn: psycopg.Connection) -> str:
        # Planner switches on the index's own session, so its next search must use the graph.
        conn.execute(f"DROP INDEX {table}_partition")  # else the planner prefers the B-tree
        conn.execute(f"ANALYZE {table}")
        conn.execute("SET enable_seqscan = off")
        conn.execute("SET enable_bitmapscan = off")
        conn.execute("SET enable_indexscan = on")
        plan = conn.execute(
            f"EXPLAIN SELECT id FROM {table} WHERE partition = 'rare'"
            f" ORDER BY embedding <=> %s::vector LIMIT 5",
            ("[" + ",".join(["1"] * DIMENSION) + "]",),
        ).fetchall()
        return "\n".join(row[0] for row in plan)

    assert f"{table}_hnsw" in index._run(force_the_graph)
    found = index.search("rare", vectors[0], k=5)
    assert len(found) == 5
    assert found[0].id == "k0"
    assert all(int(m.id[1:]) % 6 == 0 for m in found)


def test_two_instances_share_one_table(connect: Connect) -> None:
    one = connect()
    two = connect()
    one.add("p", "k", unit(DIMENSION, 0), text="How do refunds work?")
    [match] = two.search("p", unit(DIMENSION, 0))
    assert (match.id, match.text) == ("k", "How do refunds work?")
    assert two.remove("k") is True
    assert one.search("p", unit(DIMENSION, 0)) == []


def test_text_survives_the_round_trip_and_nul_ids_are_refused(connect: Connect) -> None:
    index = connect()
    text = 'Größe "quoted" \\ back\nslash \x00 nul, emoji \U0001f600'
    index.add("partition/with:colons", "id ünïcode", unit(DIMENSION, 1), text=text)
    [match] = index.search("partition/with:colons", unit(DIMENSION, 1))
    assert (match.id, match.text) == ("id ünïcode", text)
    for partition, id in (("p\x00", "k"), ("p", "k\x00")):
        with pytest.raises(ConfigError, match="NUL"):
            index.add(partition, id, unit(DIMENSION, 0))
    assert index.search("p\x00", unit(DIMENSION, 0)) == []
    assert "k\x00" not in index
    assert len(index) == 1


def test_purge_expired(connect: Connect, clock: FakeClock) -> None:
    index = connect()
    for i in range(4):
        index.add("p", f"dead{i}", unit(DIMENSION, i), expires_at=clock() + 5)
    index.add("p", "live", unit(DIMENSION, 0), expires_at=clock() + 6)
    clock.advance(5)
    assert index.purge_expired() == 4
    assert len(index) == 1
    assert "live" in index


def test_another_dimension_in_the_same_table_is_refused(connect: Connect) -> None:
    connect()
    with pytest.raises(TierError, match=f"holds {DIMENSION}-d vectors, expected 8"):
        connect(dimension=8)


def test_a_dead_server_raises_tier_unavailable_and_reconnects(
    own_pg_server: PgServer, connect: Connect
) -> None:
    index = connect(own_pg_server.url, connect_timeout=1)
    index.add("p", "k", unit(DIMENSION, 0))
    own_pg_server.kill()
    for call in (
        lambda: index.search("p", unit(DIMENSION, 0)),
        lambda: index.add("p", "k2", unit(DIMENSION, 0)),
        lambda: index.remove("k"),
        lambda: len(index),
    ):
        with pytest.raises(TierUnavailableError):
            call()
    own_pg_server.start()  # same data directory: the committed row is still there
    assert [m.id for m in index.search("p", unit(DIMENSION, 0))] == ["k"]
    index.close()
    with pytest.raises(TierError, match="closed"):
        len(index)


def test_without_psycopg_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(MissingExtraError, match=r"stratacache\[postgres\]"):
        PgVectorIndex("postgresql://127.0.0.1:1/x", DIMENSION)


@pytest.mark.parametrize(
    ("url", "options"),
    [
        ("mysql://127.0.0.1/x", {}),
        ("postgresql://127.0.0.1:1/x", {"table": "Bad-Name"}),
        ("postgresql://127.0.0.1:1/x", {"table": "x" * 41}),
        ("postgresql://127.0.0.1:1/x", {"hnsw_m": 1}),
        ("postgresql://127.0.0.1:1/x", {"ef_search": 0}),
        ("postgresql://127.0.0.1:1/x", {"statement_timeout": 0}),
    ],
)
def test_bad_construction_is_a_config_error(url: str, options: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        PgVectorIndex(url, DIMENSION, **options)  # type: ignore[arg-type]


def test_open_index_picks_postgres_by_url(pg_server: PgServer, clock: FakeClock) -> None:
    namespace = f"ns{secrets.token_hex(3)}"
    index = open_index(pg_server.url, DIMENSION, clock=clock, namespace=namespace)
    assert isinstance(index, PgVectorIndex)
    assert index.table == f"{namespace}_vectors"
    index.close()
