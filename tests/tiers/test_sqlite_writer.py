"""SQLiteTier's writer thread: group commit, one failing write among many, ordering, closing.

The writer is held on a write of our own (``_write`` with a function that waits on an event) so the
writes under test are queued behind it deterministically, then released together: no sleeps, no
timing. That first write also installs a trace callback on the writer's connection, so the tests
count the ``COMMIT`` statements actually run.
"""

from __future__ import annotations

import asyncio
import gc
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from stratacache.errors import TierError
from stratacache.tiers import SQLiteTier

from .contract import FakeClock, entry

_WAIT_S = 10.0  # generous bound on every wait between threads, so a bug fails instead of hanging


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "cache.sqlite3"


@pytest.fixture
async def tier(db: Path, clock: FakeClock) -> AsyncIterator[SQLiteTier]:
    made = SQLiteTier(db, clock=clock)
    yield made
    await made.close()


class Held:
    """Holds the writer thread inside one write until :meth:`release`; records its statements."""

    def __init__(self, tier: SQLiteTier) -> None:
        self.statements: list[str] = []
        self._entered = threading.Event()
        self._release = threading.Event()
        self.task = asyncio.ensure_future(tier._write(self._hold))

    def _hold(self, conn: sqlite3.Connection) -> None:
        conn.set_trace_callback(self.statements.append)
        self._entered.set()
        if not self._release.wait(_WAIT_S):
            raise AssertionError("the test never released the writer")

    async def entered(self) -> None:
        """Return once the writer thread is inside the held write."""
        assert await asyncio.to_thread(self._entered.wait, _WAIT_S)

    async def release(self) -> None:
        """Let the writer go on; the held write itself commits."""
        self._release.set()
        await asyncio.wait_for(self.task, _WAIT_S)

    def commits_after_release(self) -> int:
        """COMMITs run after the held write's own."""
        commits = [s for s in self.statements if s.strip().upper() == "COMMIT"]
        return len(commits) - 1


async def _queued(*calls: Callable[[], object]) -> list[asyncio.Future[object]]:
    """Start each call as a task and let every one of them reach the writer's queue."""
    tasks = [asyncio.ensure_future(call()) for call in calls]  # type: ignore[arg-type]
    await asyncio.sleep(0)  # each task runs up to its first await: its write is queued
    assert not any(task.done() for task in tasks)  # the writer is held: nothing committed yet
    return tasks


def _raw_count(db: Path, sql: str = "SELECT count(*) FROM entries") -> int:
    with closing(sqlite3.connect(db)) as conn:
        (count,) = conn.execute(sql).fetchone()
        return int(count)


async def test_concurrent_writes_commit_together_and_are_each_visible(tier: SQLiteTier) -> None:
    held = Held(tier)
    await held.entered()
    tasks = await _queued(
        *[
            lambda i=i: tier.set(f"k{i}", entry(f"v{i}".encode(), tags=(f"t{i % 3}",)))
            for i in range(50)
        ]
    )
    await held.release()
    assert await asyncio.gather(*tasks) == [True] * 50
    assert held.commits_after_release() == 1  # fifty writes, one commit
    for i in range(50):
        assert await tier.get(f"k{i}") == entry(f"v{i}".encode(), tags=(f"t{i % 3}",))
    assert await tier.delete_tag("t0") == 17


async def test_a_failing_write_fails_alone(tier: SQLiteTier, db: Path) -> None:
    await tier.set("bad", entry(b"old", tags=("kept",)))
    await tier.set("a", entry(b"old a"))
    with closing(sqlite3.connect(db, isolation_level=None)) as conn:
        # Something the tier cannot foresee refuses one row mid-batch, after the tier has already
        # deleted that key's tags in the same write.
        conn.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON entries WHEN new.key = 'bad' "
            "BEGIN SELECT RAISE(ABORT, 'refused by a trigger'); END"
        )
    total_before = await tier.total_bytes()
    held = Held(tier)
    await held.entered()
    tasks = await _queued(
        lambda: tier.set("a", entry(b"new a")),
        lambda: tier.set("bad", entry(b"new", tags=("other",))),
        lambda: tier.set("c", entry(b"c")),
    )
    await held.release()
    first, failed, last = await asyncio.gather(*tasks, return_exceptions=True)
    assert first is True
    assert last is True
    assert isinstance(failed, TierError)
    assert "refused by a trigger" in str(failed)
    assert held.commits_after_release() == 1
    assert await tier.get("a") == entry(b"new a")
    assert await tier.get("c") == entry(b"c")
    # The failed write was rolled back whole: the old entry and its tag are intact.
    assert await tier.get("bad") == entry(b"old", tags=("kept",))
    assert await tier.total_bytes() == total_before + len("c") + len(b"c")
    assert _raw_count(db, "SELECT sum(size) FROM entries") == await tier.total_bytes()


async def test_writes_to_one_key_apply_in_the_order_of_the_calls(tier: SQLiteTier) -> None:
    held = Held(tier)
    await held.entered()
    tasks = await _queued(
        lambda: tier.set("k", entry(b"1")),
        lambda: tier.delete("k"),
        lambda: tier.delete("k"),
        lambda: tier.set("k", entry(b"2", tags=("t",))),
        lambda: tier.set("k", entry(b"3", namespace="n")),
        lambda: tier.delete_tag("t"),
    )
    await held.release()
    assert await asyncio.gather(*tasks) == [True, True, False, True, True, 0]
    assert await tier.get("k") == entry(b"3", namespace="n")


async def test_a_cancelled_caller_still_writes(tier: SQLiteTier) -> None:
    held = Held(tier)
    await held.entered()
    (task,) = await _queued(lambda: tier.set("k", entry(b"v")))
    task.cancel()
    await held.release()
    with pytest.raises(asyncio.CancelledError):
        await task
    await tier.purge_expired()  # queued after it: once this returns, the cancelled write committed
    assert await tier.get("k") == entry(b"v")


async def test_close_flushes_the_queued_writes(db: Path, clock: FakeClock) -> None:
    tier = SQLiteTier(db, clock=clock)
    held = Held(tier)
    await held.entered()
    tasks = await _queued(*[lambda i=i: tier.set(f"k{i}", entry()) for i in range(20)])
    closing_task = asyncio.ensure_future(tier.close())
    await asyncio.sleep(0)
    with pytest.raises(TierError, match="closed"):  # refused at once, while the flush is under way
        await tier.set("late", entry())
    await held.release()
    await asyncio.wait_for(closing_task, _WAIT_S)
    assert await asyncio.gather(*tasks) == [True] * 20
    assert not tier._writer.is_alive()
    assert _raw_count(db) == 20
    await tier.close()  # twice is harmless


@pytest.mark.parametrize(
    "call",
    [
        lambda t: t.set("k", entry()),
        lambda t: t.delete("k"),
        lambda t: t.delete_tag("t"),
        lambda t: t.delete_namespace("n"),
        lambda t: t.clear(),
        lambda t: t.purge_expired(),
        lambda t: t.get("k"),
        lambda t: t.total_bytes(),
    ],
)
async def test_every_call_after_close_is_refused(
    db: Path, clock: FakeClock, call: Callable[[SQLiteTier], object]
) -> None:
    tier = SQLiteTier(db, clock=clock)
    await tier.set("k", entry())
    await tier.close()
    with pytest.raises(TierError, match=r"SQLite tier on .* is closed"):
        await call(tier)  # type: ignore[misc]
    assert _raw_count(db) == 1  # nothing was written


async def test_a_tier_dropped_without_close_stops_its_thread(db: Path, clock: FakeClock) -> None:
    tier = SQLiteTier(db, clock=clock)
    await tier.set("k", entry())
    writer = tier._writer
    assert writer.daemon  # never keeps the process alive
    del tier
    gc.collect()
    await asyncio.to_thread(writer.join, _WAIT_S)
    assert not writer.is_alive()
    assert _raw_count(db) == 1


async def test_an_error_from_the_lock_reaches_every_queued_write_then_the_writer_recovers(
    db: Path, clock: FakeClock
) -> None:
    tier = SQLiteTier(db, clock=clock, busy_timeout_s=0)
    try:
        with closing(sqlite3.connect(db, isolation_level=None)) as holder:
            holder.execute("BEGIN IMMEDIATE")
            results = await asyncio.gather(
                tier.set("a", entry()), tier.delete("b"), return_exceptions=True
            )
            assert all(isinstance(r, TierError) and "locked" in str(r) for r in results)
            holder.execute("ROLLBACK")
        assert await tier.set("a", entry(b"after"))
        assert await tier.get("a") == entry(b"after")
    finally:
        await tier.close()


def _drive(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine to its result by hand, as ``memoize`` does for a plain function."""
    with pytest.raises(StopIteration) as stop:
        coro.send(None)
    return stop.value.value


def test_without_an_event_loop_writes_wait_in_place(db: Path, clock: FakeClock) -> None:
    tier = SQLiteTier(db, clock=clock)
    assert _drive(tier.set("k", entry(b"v", tags=("t",)))) is True
    assert _drive(tier.get("k")) == entry(b"v", tags=("t",))
    assert _drive(tier.delete_tag("t")) == 1
    assert _drive(tier.set("k", entry(b"w"))) is True
    _drive(tier.close())
    assert not tier._writer.is_alive()
    assert _raw_count(db) == 1
    with pytest.raises(TierError, match="closed"):
        _drive(tier.set("k", entry()))
