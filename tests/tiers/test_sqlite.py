"""SQLiteTier beyond the contract: durability, eviction order, damaged files, sharing one file."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from contextlib import closing
from pathlib import Path

import pytest

import stratacache
from stratacache.errors import ConfigError, TierError, TierUnavailableError
from stratacache.tiers import SQLiteTier, TierEntry
from stratacache.tiers.sqlite import SCHEMA_VERSION

from .contract import FakeClock, entry


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "data" / "cache.sqlite3"


@pytest.fixture
async def tier(db: Path, clock: FakeClock) -> AsyncIterator[SQLiteTier]:
    made = SQLiteTier(db, clock=clock)
    yield made
    await made.close()


@pytest.fixture
def raw(db: Path, tier: SQLiteTier) -> Iterator[sqlite3.Connection]:
    """A plain sqlite3 connection to the tier's file, to look behind its back."""
    with closing(sqlite3.connect(db, isolation_level=None)) as conn:
        yield conn


def _rows(conn: sqlite3.Connection, sql: str, *params: object) -> list[tuple[object, ...]]:
    return conn.execute(sql, params).fetchall()


# ------------------------------------------------------------------------- file and schema


async def test_creates_the_directory_and_a_wal_database(
    tier: SQLiteTier, raw: sqlite3.Connection, db: Path
) -> None:
    assert db.is_file()
    assert _rows(raw, "PRAGMA journal_mode") == [("wal",)]
    assert _rows(raw, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    tables = {name for (name,) in _rows(raw, "SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"entries", "tags", "totals"} <= tables


async def test_restart_keeps_entries(db: Path, clock: FakeClock) -> None:
    first = SQLiteTier(db, clock=clock)
    kept = entry(b"\x00answer\xff", expires_at=clock() + 100, tags=("t1", "t2"), namespace="ns")
    await first.set("k", kept)
    await first.set("empty", entry(b""))
    await first.set("short", entry(expires_at=clock() + 10))
    await first.close()

    second = SQLiteTier(db, clock=clock)
    try:
        assert await second.get("k") == kept
        assert await second.get("empty") == entry(b"")
        clock.advance(50)
        assert await second.get("short") is None  # expiry still applies after a restart
        assert await second.get("k") == kept
        assert await second.delete_tag("t2") == 1  # tags survived too
        assert await second.delete_namespace("") == 1
    finally:
        await second.close()


async def test_an_unknown_newer_schema_is_refused(db: Path, clock: FakeClock) -> None:
    await SQLiteTier(db, clock=clock).close()
    with closing(sqlite3.connect(db)) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(TierError, match="newer stratacache"):
        SQLiteTier(db, clock=clock)


async def test_another_programs_database_is_refused(db: Path, clock: FakeClock) -> None:
    db.parent.mkdir(parents=True)
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("CREATE TABLE invoices (id INTEGER)")
        conn.commit()
    with pytest.raises(TierError, match=r"something else.*invoices"):
        SQLiteTier(db, clock=clock)
    with closing(sqlite3.connect(db)) as conn:  # and it was left alone
        assert conn.execute("SELECT name FROM sqlite_master").fetchall() == [("invoices",)]
        assert conn.execute("PRAGMA journal_mode").fetchall() == [("delete",)]


async def test_a_missing_table_is_reported(db: Path, clock: FakeClock) -> None:
    await SQLiteTier(db, clock=clock).close()
    with closing(sqlite3.connect(db)) as conn:
        conn.execute("DROP TABLE tags")
    with pytest.raises(TierError, match=r"damaged.*tags"):
        SQLiteTier(db, clock=clock)


async def test_a_file_that_is_not_a_database(db: Path, clock: FakeClock) -> None:
    db.parent.mkdir(parents=True)
    db.write_bytes(b"this is not a database, just some text\n" * 200)
    with pytest.raises(TierError, match="corrupt or not a SQLite database") as info:
        SQLiteTier(db, clock=clock)
    assert not isinstance(info.value, TierUnavailableError)  # a fallback would hide it


async def test_a_scribbled_database_fails_at_open(db: Path, clock: FakeClock) -> None:
    tier = SQLiteTier(db, clock=clock)
    for i in range(200):
        await tier.set(f"k{i}", entry(bytes(500), tags=(f"t{i}",)))
    await tier.close()
    data = bytearray(db.read_bytes())
    page_size = int.from_bytes(data[16:18], "big")
    # Overwrite every page after the first (the schema) with garbage: the b-trees are gone.
    for offset in range(page_size, len(data), page_size):
        data[offset : offset + 64] = b"\xa5" * 64
    db.write_bytes(bytes(data))
    with pytest.raises(TierError, match="corrupt"):
        SQLiteTier(db, clock=clock)


async def test_a_path_that_cannot_be_a_directory(tmp_path: Path, clock: FakeClock) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(TierError, match="cannot create the directory"):
        SQLiteTier(tmp_path / "file" / "cache.sqlite3", clock=clock)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_bytes": 0},
        {"max_bytes": -5},
        {"max_bytes": 1.5},
        {"max_bytes": True},
        {"busy_timeout_s": -1},
        {"busy_timeout_s": float("nan")},
        {"busy_timeout_s": "5"},
    ],
)
def test_bad_arguments(db: Path, kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        SQLiteTier(db, **kwargs)  # type: ignore[arg-type]
    assert not db.exists()


def test_a_bad_path_type() -> None:
    with pytest.raises(ConfigError):
        SQLiteTier(42)  # type: ignore[arg-type]


async def test_a_closed_tier(tier: SQLiteTier) -> None:
    await tier.close()
    for call in (tier.get("k"), tier.purge_expired(), tier.total_bytes(), tier.clear()):
        with pytest.raises(TierError, match="closed"):
            await call
    assert "closed" in repr(tier)


# --------------------------------------------------------------------------- stored as given


async def test_a_tampered_value_is_returned_as_stored(
    tier: SQLiteTier, raw: sqlite3.Connection
) -> None:
    await tier.set("k", entry(b'{"answer": 42}|signature', tags=("t",)))
    raw.execute("UPDATE entries SET value = ? WHERE key = 'k'", (b'{"answer": 43}|signature',))
    got = await tier.get("k")
    # The tier does not verify: the record codec upstream does, and rejects this.
    assert got == entry(b'{"answer": 43}|signature', tags=("t",))


async def test_an_expired_row_is_deleted_when_read(
    tier: SQLiteTier, raw: sqlite3.Connection, clock: FakeClock
) -> None:
    await tier.set("k", entry(expires_at=clock() + 5, tags=("t",)))
    clock.advance(5)
    assert _rows(raw, "SELECT count(*) FROM entries") == [(1,)]
    assert await tier.get("k") is None
    assert _rows(raw, "SELECT count(*) FROM entries") == [(0,)]
    assert _rows(raw, "SELECT count(*) FROM tags") == [(0,)]


async def test_purge_expired(tier: SQLiteTier, raw: sqlite3.Connection, clock: FakeClock) -> None:
    for i in range(10):
        await tier.set(f"k{i}", entry(expires_at=clock() + 1 + i, tags=("t",)))
    await tier.set("forever", entry(tags=("t",)))
    clock.advance(5.5)
    assert await tier.purge_expired() == 5
    assert _rows(raw, "SELECT count(*) FROM entries") == [(6,)]
    assert _rows(raw, "SELECT count(*) FROM tags") == [(6,)]


async def test_writes_purge_expired_rows_every_minute(
    tier: SQLiteTier, raw: sqlite3.Connection, clock: FakeClock
) -> None:
    await tier.set("short", entry(expires_at=clock() + 1))
    clock.advance(30)
    await tier.set("a", entry())  # the last purge was 30 s ago: not yet
    assert _rows(raw, "SELECT count(*) FROM entries WHERE key = 'short'") == [(1,)]
    clock.advance(31)
    await tier.set("b", entry())
    assert _rows(raw, "SELECT count(*) FROM entries WHERE key = 'short'") == [(0,)]


async def test_accessed_at_is_refreshed_at_most_once_a_minute(
    tier: SQLiteTier, raw: sqlite3.Connection, clock: FakeClock
) -> None:
    start = clock()
    await tier.set("k", entry())
    clock.advance(30)
    await tier.get("k")
    assert _rows(raw, "SELECT accessed_at FROM entries") == [(start,)]
    clock.advance(31)
    await tier.get("k")
    assert _rows(raw, "SELECT accessed_at FROM entries") == [(start + 61,)]


async def test_totals_and_tags_stay_consistent(
    tier: SQLiteTier, raw: sqlite3.Connection, clock: FakeClock
) -> None:
    for i in range(30):
        await tier.set(
            f"k{i}", entry(bytes(i * 10), tags=(f"t{i % 4}", "all"), namespace=f"n{i % 3}")
        )
    for i in range(0, 30, 4):
        await tier.set(f"k{i}", entry(bytes(7), tags=("replaced",)))
    await tier.delete("k1")
    await tier.delete_tag("t2")
    await tier.delete_namespace("n1")
    await tier.set("k29", entry(expires_at=clock() + 1))
    clock.advance(2)
    await tier.get("k29")
    ((total,),) = _rows(raw, "SELECT bytes FROM totals")
    assert total == _rows(raw, "SELECT coalesce(sum(size), 0) FROM entries")[0][0]
    assert total == await tier.total_bytes()
    orphans = "SELECT count(*) FROM tags WHERE key NOT IN (SELECT key FROM entries)"
    assert _rows(raw, orphans) == [(0,)]
    await tier.clear()
    assert await tier.total_bytes() == 0
    assert _rows(raw, "SELECT count(*) FROM tags") == [(0,)]


# --------------------------------------------------------------------------------- eviction


def _sized(n: int, **kwargs: object) -> TierEntry:
    """An entry that, under a one-letter key and no tags, weighs ``1 + n`` bytes."""
    return entry(bytes(n), **kwargs)  # type: ignore[arg-type]


async def test_max_bytes_evicts_expired_first_then_least_recently_used(
    db: Path, clock: FakeClock
) -> None:
    tier = SQLiteTier(db, clock=clock, max_bytes=350)  # three entries of 101 bytes fit, four do not
    t0 = clock()

    def keys() -> str:
        # Looked up behind the tier's back: a get() would refresh accessed_at and change the order.
        with closing(sqlite3.connect(db)) as conn:
            return "".join(k for (k,) in conn.execute("SELECT key FROM entries ORDER BY key"))

    try:
        await tier.set("b", _sized(100))
        await tier.set("c", _sized(100))
        clock.advance(61)
        await tier.get("b")  # b is now more recent than c
        await tier.set("a", _sized(100, expires_at=t0 + 65))  # the most recent, but short-lived
        clock.advance(9)  # t0 + 70: a has expired, nothing purged it yet (last purge at t0 + 61)
        await tier.set("d", _sized(100))  # over budget: the expired a goes, though it is recent
        assert keys() == "bcd"
        assert await tier.total_bytes() == 303
        clock.advance(1)
        await tier.set("e", _sized(100))  # over budget with nothing expired: the LRU, c, goes
        assert keys() == "bde"
        assert await tier.total_bytes() == 303
    finally:
        await tier.close()


async def test_eviction_keeps_the_newest_entry(db: Path, clock: FakeClock) -> None:
    tier = SQLiteTier(db, clock=clock, max_bytes=1000)
    try:
        for i in range(10):
            await tier.set(f"{i}", _sized(99, tags=(f"t{i}",)))
        await tier.set("x", _sized(999))  # exactly the budget: everything else must go
        assert await tier.get("x") is not None
        assert await tier.total_bytes() == 1000
        for i in range(10):
            assert await tier.get(f"{i}") is None
            assert await tier.delete_tag(f"t{i}") == 0
    finally:
        await tier.close()


async def test_an_entry_over_the_whole_budget_is_declined(db: Path, clock: FakeClock) -> None:
    tier = SQLiteTier(db, clock=clock, max_bytes=100)
    try:
        await tier.set("k", _sized(10))
        await tier.set("other", _sized(10))
        assert await tier.set("k", _sized(100)) is False  # 101 bytes with its key
        assert await tier.get("k") is None  # the previous entry is gone as well
        assert await tier.get("other") is not None
    finally:
        await tier.close()


# ------------------------------------------------------------------------ sharing one file


async def test_two_tiers_on_one_file(db: Path, clock: FakeClock) -> None:
    one = SQLiteTier(db, clock=clock)
    two = SQLiteTier(db, clock=clock)
    try:
        await one.set("k", entry(b"from one", tags=("t",)))
        assert await two.get("k") == entry(b"from one", tags=("t",))
        await two.set("k", entry(b"from two", namespace="n"))
        assert await one.get("k") == entry(b"from two", namespace="n")
        assert await one.delete_tag("t") == 0
        assert await one.delete_namespace("n") == 1
        assert await two.get("k") is None

        async def writer(tier: SQLiteTier, prefix: str) -> None:
            for i in range(100):
                await tier.set(f"{prefix}{i}", entry(prefix.encode() * 50, tags=("both",)))
                await asyncio.sleep(0)

        await asyncio.gather(writer(one, "a"), writer(two, "b"))
        assert await one.total_bytes() == await two.total_bytes()
        assert await two.delete_tag("both") == 200
    finally:
        await one.close()
        await two.close()


async def test_a_budget_counts_what_the_other_tier_wrote(db: Path, clock: FakeClock) -> None:
    small = SQLiteTier(db, clock=clock, max_bytes=500)
    other = SQLiteTier(db, clock=clock)
    try:
        for i in range(4):
            await other.set(f"{i}", _sized(99))  # 400 bytes, unbounded writer
        await small.set("x", _sized(200))  # 601 > 500: the two oldest of the other's entries go
        assert [await small.get(f"{i}") is None for i in range(4)] == [True, True, False, False]
        assert await other.total_bytes() == 401
    finally:
        await small.close()
        await other.close()


async def test_a_lock_held_too_long_makes_the_tier_unavailable(
    db: Path, tier: SQLiteTier, clock: FakeClock
) -> None:
    await tier.set("k", entry(b"before"))
    impatient = SQLiteTier(db, clock=clock, busy_timeout_s=0.05)
    try:
        with closing(sqlite3.connect(db, isolation_level=None)) as holder:
            holder.execute("BEGIN IMMEDIATE")  # another process in the middle of a write
            with pytest.raises(TierUnavailableError, match="locked"):
                await impatient.set("k", entry(b"during"))
            assert await impatient.get("k") == entry(b"before")  # WAL: reads still work
            holder.execute("ROLLBACK")
        assert await impatient.set("k", entry(b"after"))
        assert await tier.get("k") == entry(b"after")
    finally:
        await impatient.close()


_WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from stratacache.tiers import SQLiteTier, TierEntry

    async def main() -> None:
        tier = SQLiteTier(sys.argv[1])
        for i in range(300):
            await tier.set(f"child{i}", TierEntry(b"c" * 100, tags=frozenset({"child", "all"})))
        await tier.close()

    asyncio.run(main())
    """
)


async def test_two_processes_on_one_file(db: Path, tier: SQLiteTier) -> None:
    await tier.set("warm-up", entry())  # the file and schema exist before the child starts
    # The child imports this very stratacache, installed or not.
    src = str(Path(stratacache.__file__).parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(db)], stderr=subprocess.PIPE, env=env
    )
    try:
        for i in range(300):
            await tier.set(f"parent{i}", entry(b"p" * 100, tags=("parent", "all")))
    finally:
        _, stderr = child.communicate(timeout=120)
    assert child.returncode == 0, stderr.decode()
    assert await tier.get("child299") == entry(b"c" * 100, tags=("child", "all"))
    assert await tier.delete_tag("child") == 300
    assert await tier.delete_tag("all") == 300
    assert await tier.total_bytes() == len("warm-up") + len(b"v")  # only the warm-up entry is left
