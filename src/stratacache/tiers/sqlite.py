"""The embedded durable tier: one SQLite file in the data directory, so a restart keeps the cache.

Layout (schema version 1, kept in ``PRAGMA user_version``)::

    entries (key TEXT PRIMARY KEY, value BLOB, expires_at REAL NULL, namespace TEXT, size INTEGER,
             accessed_at REAL)        indexes on expires_at (non-NULL only), accessed_at, namespace
    tags    (tag TEXT, key TEXT)      primary key (tag, key), index on key
    totals  (bytes INTEGER)           one row: the sum of entries.size

Triggers keep ``tags`` and ``totals`` right however a row leaves ``entries`` (delete, eviction,
lazy expiry, another process), inside the same statement, so the three tables never disagree.
``size`` counts the key, value, tags and namespace in bytes; the file itself is larger (pages,
indexes), and SQLite reuses the pages of deleted rows rather than shrinking the file.

Concurrency. Reads run their SQLite statements directly on the event loop: a lookup through the
primary key on a local WAL file takes tens of microseconds, less than a hop to a thread and back,
and WAL readers never wait for a writer. Writes do not: a write transaction costs about half a
millisecond of commit work (more for a large value or an eviction) and may wait for another
process's lock, and on the loop that time delays every other request. So every write goes to one
dedicated writer thread that owns its own connection, through a FIFO queue; the caller awaits an
asyncio future the thread resolves (``call_soon_threadsafe``) after the write has committed, so a
:meth:`SQLiteTier.get` after ``await set(...)`` sees it. The thread drains everything queued into
one ``BEGIN IMMEDIATE`` transaction and commits once (group commit: under load a burst of misses
costs one commit, not one each); each write runs under its own ``SAVEPOINT``, so a write that
fails is rolled back alone and fails only its own future. One thread and a FIFO queue keep the
writes in the order of the calls. Reads keep the connection they started with, the writer thread
its own, so no connection is ever shared between threads. Across processes, writers queue on
SQLite's lock for at most ``busy_timeout_s`` (in the writer thread, not on the loop), then fail
with :class:`~stratacache.errors.TierUnavailableError` so a chain serves from elsewhere.
:meth:`SQLiteTier.close` flushes the queued writes, then stops and joins the thread; the thread is a
daemon, so a tier never closed does not keep the process alive (its queued writes are then lost,
as a crash would lose them). A write whose caller is cancelled still happens: it is already queued.

Eviction. Expired rows are ignored by :meth:`SQLiteTier.get` and deleted as it meets them, purged
every minute of clock time by the next write, and purged first when a write takes the total over
``max_bytes``; then the least recently accessed rows go until the total is within budget.
``accessed_at`` is refreshed by a read only when it is more than a minute old: writing it on every
hit would turn each read into a write transaction that queues behind other writers and grows the
WAL, and a minute is fine enough to tell a hot entry from a cold one in a durable cache.

Every ``sqlite3`` error is translated in one place (:meth:`SQLiteTier._translate`), by SQLite's
result code, into :class:`~stratacache.errors.TierUnavailableError` (busy, locked, I/O, disk full:
fall back) or :class:`~stratacache.errors.TierError` (corrupt, not a database, anything else).

The tier stores the bytes it is given and returns them unchanged. It does not verify them: the
record codec does that upstream, so a tampered row comes back as stored and fails verification
there.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import math
import queue
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Concatenate, Final, ParamSpec, TypeVar

from stratacache.errors import ConfigError, TierError, TierUnavailableError
from stratacache.tiers._checks import check_entry, check_key
from stratacache.tiers.base import Clock, TierEntry, driven_by_hand

__all__ = ["SCHEMA_VERSION", "SQLiteTier"]

logger = logging.getLogger("stratacache.tiers.sqlite")

_P = ParamSpec("_P")
_T = TypeVar("_T")

SCHEMA_VERSION: Final = 1
"""The schema this code writes and reads; stored in the file's ``PRAGMA user_version``."""

_ACCESS_RESOLUTION_S: Final = 60.0  # a hit refreshes accessed_at only when it is older than this
_PURGE_INTERVAL_S: Final = 60.0  # a write purges expired rows when the last purge is this old
_EVICT_BATCH: Final = 64  # least recently used rows fetched per step of an eviction
# Writes committed together at most: bounds how long one group commit holds the file's write lock
# (other processes wait on it) and how long the first write of a long burst waits for its commit.
_MAX_GROUP: Final = 256

_SCHEMA: Final = (
    """CREATE TABLE entries (
        key TEXT PRIMARY KEY NOT NULL,
        value BLOB NOT NULL,
        expires_at REAL,
        namespace TEXT NOT NULL,
        size INTEGER NOT NULL,
        accessed_at REAL NOT NULL
    )""",
    "CREATE INDEX entries_expires_at ON entries (expires_at) WHERE expires_at IS NOT NULL",
    "CREATE INDEX entries_accessed_at ON entries (accessed_at)",
    "CREATE INDEX entries_namespace ON entries (namespace)",
    """CREATE TABLE tags (
        tag TEXT NOT NULL,
        key TEXT NOT NULL,
        PRIMARY KEY (tag, key)
    ) WITHOUT ROWID""",
    "CREATE INDEX tags_key ON tags (key)",
    "CREATE TABLE totals (id INTEGER PRIMARY KEY CHECK (id = 0), bytes INTEGER NOT NULL)",
    "INSERT INTO totals (id, bytes) VALUES (0, 0)",
    """CREATE TRIGGER entries_inserted AFTER INSERT ON entries BEGIN
        UPDATE totals SET bytes = bytes + new.size;
    END""",
    """CREATE TRIGGER entries_resized AFTER UPDATE OF size ON entries BEGIN
        UPDATE totals SET bytes = bytes + new.size - old.size;
    END""",
    """CREATE TRIGGER entries_deleted AFTER DELETE ON entries BEGIN
        UPDATE totals SET bytes = bytes - old.size;
        DELETE FROM tags WHERE key = old.key;
    END""",
    f"PRAGMA user_version = {SCHEMA_VERSION}",
)
_TABLES: Final = frozenset({"entries", "tags", "totals"})

_GET: Final = """
    SELECT value, expires_at, namespace, accessed_at,
           (SELECT json_group_array(tag) FROM tags WHERE tags.key = entries.key)
    FROM entries WHERE key = ?
"""
_UPSERT: Final = """
    INSERT INTO entries (key, value, expires_at, namespace, size, accessed_at)
    VALUES (?, ?, ?, ?, ?, ?)
    ON CONFLICT (key) DO UPDATE SET
        value = excluded.value, expires_at = excluded.expires_at, namespace = excluded.namespace,
        size = excluded.size, accessed_at = excluded.accessed_at
"""
_PURGE: Final = "DELETE FROM entries WHERE expires_at <= ?"
_LEAST_RECENT: Final = """
    SELECT key, size FROM entries WHERE key != ? ORDER BY accessed_at, rowid LIMIT ?
"""

# SQLite primary result codes (https://sqlite.org/rescode.html) whose failure is transient or
# environmental: a chain skips the tier and serves from the others. Everything else is a TierError.
_UNAVAILABLE_CODES: Final = frozenset(
    {
        5,  # SQLITE_BUSY: another connection holds the lock past busy_timeout
        6,  # SQLITE_LOCKED
        7,  # SQLITE_NOMEM
        10,  # SQLITE_IOERR
        13,  # SQLITE_FULL: the disk is full
        14,  # SQLITE_CANTOPEN
        15,  # SQLITE_PROTOCOL: a WAL lock race that did not settle
    }
)
_CORRUPT_CODES: Final = frozenset({11, 26})  # SQLITE_CORRUPT, SQLITE_NOTADB


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def _entry_size(key: str, entry: TierEntry) -> int:
    """The bytes an entry counts against ``max_bytes``: its key, value, namespace and tags."""
    size = _utf8_len(key) + len(entry.value) + _utf8_len(entry.namespace)
    for tag in entry.tags:
        size += _utf8_len(tag)
    return size


def _live(expires_at: float | None, now: float) -> bool:
    return expires_at is None or expires_at > now


def _translate(path: Path, exc: sqlite3.Error) -> TierError:
    """Map a ``sqlite3`` error to the stratacache error tree by SQLite's primary result code."""
    code = getattr(exc, "sqlite_errorcode", None)
    name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
    primary = code & 0xFF if isinstance(code, int) else None
    if primary in _UNAVAILABLE_CODES:
        return TierUnavailableError(f"SQLite tier {path}: {exc} ({name})")
    if primary in _CORRUPT_CODES:
        return TierError(
            f"SQLite tier {path} is corrupt or not a SQLite database: {exc} ({name}); "
            "move the file away (the cache will start empty)"
        )
    return TierError(f"SQLite tier {path}: {exc} ({name})")


# ----------------------------------------------------------------------------- the writer thread


@dataclass(frozen=True, slots=True)
class _Write:
    """One queued write: the work to run on the writer's connection, and whom to tell."""

    work: Callable[[sqlite3.Connection], Any]
    loop: asyncio.AbstractEventLoop | None  # None: a caller without an event loop blocks on it
    future: asyncio.Future[Any] | concurrent.futures.Future[Any]


@dataclass(frozen=True, slots=True)
class _Stop:
    """Tells the writer thread to close its connection and end, after the writes queued before it.

    ``future`` (on ``loop``) is resolved once the connection is closed; ``None`` when nobody waits
    (the tier was garbage-collected without :meth:`SQLiteTier.close`).
    """

    loop: asyncio.AbstractEventLoop | None = None
    future: asyncio.Future[None] | concurrent.futures.Future[None] | None = None


def _settle(
    future: asyncio.Future[Any] | concurrent.futures.Future[Any],
    result: object,
    error: BaseException | None,
) -> None:
    if future.done():  # the caller was cancelled; the write happened all the same
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


def _tell(
    loop: asyncio.AbstractEventLoop | None,
    future: asyncio.Future[Any] | concurrent.futures.Future[Any],
    result: object,
    error: BaseException | None,
) -> None:
    """Resolve ``future`` on its own loop's thread (asyncio futures are not thread-safe)."""
    if loop is None:  # a concurrent future, which is
        _settle(future, result, error)
        return
    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
        loop.call_soon_threadsafe(_settle, future, result, error)


_Outcome = tuple[_Write, object, BaseException | None]


def _settle_all(outcomes: list[_Outcome]) -> None:
    for write, result, error in outcomes:
        _settle(write.future, result, error)


def _tell_all(outcomes: list[_Outcome]) -> None:
    """Resolve a group's futures: one wake-up per event loop, not one per write."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
    for outcome in outcomes:
        loop = outcome[0].loop
        if loop is None:
            _settle(outcome[0].future, outcome[1], outcome[2])
        else:
            by_loop.setdefault(loop, []).append(outcome)
    for loop, settled in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            loop.call_soon_threadsafe(_settle_all, settled)


def _failure(path: Path, exc: BaseException) -> BaseException:
    """The error a caller sees for ``exc``: sqlite3 errors translated, anything else as raised."""
    if isinstance(exc, sqlite3.Error):
        error = _translate(path, exc)
        error.__cause__ = exc
        return error
    return exc


def _commit_group(conn: sqlite3.Connection, group: list[_Write], path: Path) -> None:
    """Run ``group`` in one transaction, each write under its own savepoint, and commit once.

    A write that fails is rolled back to its savepoint and fails alone. If SQLite abandons the
    whole transaction (disk full, I/O error), the writes before it were lost with it and fail with
    the same error; the ones after it get a transaction of their own.
    """
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:  # the lock stayed taken past busy_timeout: nothing was written
        _fail_all(group, _failure(path, exc))
        return
    outcomes: list[_Outcome] = []
    for index, write in enumerate(group):
        try:
            conn.execute("SAVEPOINT write")
            result = write.work(conn)
            conn.execute("RELEASE write")
        except Exception as exc:  # handed to its caller, whatever it is
            error = _failure(path, exc)
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK TO write")
                    conn.execute("RELEASE write")
                except sqlite3.Error:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
            if not conn.in_transaction:
                lost = [(done, None, own or error) for done, _, own in outcomes]
                _tell_all([*lost, (write, None, error)])
                if index + 1 < len(group):
                    _commit_group(conn, group[index + 1 :], path)
                return
            outcomes.append((write, None, error))
            continue
        outcomes.append((write, result, None))
    try:
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        error = _failure(path, exc)
        _tell_all([(write, None, own or error) for write, _, own in outcomes])
        return
    _tell_all(outcomes)


def _abandon(writes: queue.SimpleQueue[_Write | _Stop], conn: sqlite3.Connection) -> None:
    """What a tier garbage-collected without ``close()`` does: stop its writer, close its reader."""
    writes.put(_Stop())
    with contextlib.suppress(sqlite3.Error):
        conn.close()


def _fail_all(group: list[_Write], error: BaseException) -> None:
    _tell_all([(write, None, error) for write in group])


def _take(writes: queue.SimpleQueue[_Write | _Stop]) -> tuple[list[_Write], _Stop | None]:
    """Wait for a write, then take everything queued behind it (up to the group's limit)."""
    group: list[_Write] = []
    item = writes.get()
    while not isinstance(item, _Stop):
        group.append(item)
        if len(group) >= _MAX_GROUP:
            return group, None
        try:
            item = writes.get_nowait()
        except queue.Empty:
            return group, None
    return group, item


def _run_writer(
    conn: sqlite3.Connection, writes: queue.SimpleQueue[_Write | _Stop], path: Path
) -> None:
    """The writer thread: take whatever is queued, commit it as one group, until told to stop.

    It holds no reference to the tier, so a tier dropped without ``close()`` can be collected
    (its finalizer queues the stop).
    """
    while True:
        # No reference to the last group (and through it to the tier) may stay here while the
        # thread waits for the next one: hence a helper for the wait and the ``del`` below.
        group, stop = _take(writes)
        if group:
            try:
                _commit_group(conn, group, path)
            except BaseException as exc:  # a bug here must not leave callers waiting forever
                _fail_all(group, exc)
                if not isinstance(exc, Exception):
                    raise
        del group  # the bindings would otherwise outlive the wait for the next group
        if stop is not None:
            error: BaseException | None = None
            try:
                conn.close()
            except sqlite3.Error as exc:
                error = _failure(path, exc)
            if stop.future is not None:
                _tell(stop.loop, stop.future, None, error)
            return


class SQLiteTier:
    """A durable tier in one SQLite file (WAL mode), shared safely by several processes.

    :param path: the database file; its directory is created if missing. Several tiers, in one
        process or many, may open the same file.
    :param max_bytes: keep the total size of the entries (key, value, tags and namespace bytes)
        within this many bytes, evicting expired entries and then the least recently accessed ones
        (``None``: no limit). An entry larger than the whole budget is declined.
    :param clock: wall-clock Unix seconds (default ``time.time``); tests pass a fake.
    :param busy_timeout_s: how long a statement waits for another connection's lock before the call
        fails with :class:`~stratacache.errors.TierUnavailableError`.
    :raises TierError: the file is corrupt, is not a SQLite database, belongs to something else, or
        was written by a newer stratacache.
    :raises TierUnavailableError: the file cannot be opened (permissions, I/O) or stays locked.
    :raises ConfigError: an argument is invalid.
    """

    name: str = "sqlite"
    """The label used for metrics and the ``X-Cache-Tier`` header."""

    def __init__(
        self,
        path: Path | str,
        *,
        max_bytes: int | None = None,
        clock: Clock = time.time,
        busy_timeout_s: float = 5.0,
    ) -> None:
        if not isinstance(path, str | Path):
            raise ConfigError(f"path must be a str or Path, not {type(path).__name__}")
        if max_bytes is not None and (
            not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 1
        ):
            raise ConfigError(f"max_bytes must be a positive int or None, not {max_bytes!r}")
        if (
            isinstance(busy_timeout_s, bool)
            or not isinstance(busy_timeout_s, int | float)
            or not math.isfinite(busy_timeout_s)
            or busy_timeout_s < 0
        ):
            raise ConfigError(
                f"busy_timeout_s must be a finite number of seconds >= 0, not {busy_timeout_s!r}"
            )
        self.path = Path(path)
        """The database file."""
        self._max_bytes = max_bytes
        self._clock = clock
        self._next_purge = -math.inf  # read and written by the writer thread only
        # The loop's connection, for reads; None once closed.
        self._conn: sqlite3.Connection | None = self._open(float(busy_timeout_s))
        try:
            writer = self._connect(float(busy_timeout_s))
            try:
                writer.execute("PRAGMA synchronous = NORMAL")  # per connection; see _prepare
            except BaseException as exc:
                writer.close()
                if isinstance(exc, sqlite3.Error):
                    raise self._translate(exc) from exc
                raise
        except BaseException:
            self._conn.close()
            raise
        # Guards the check for "closed" and the put together, so nothing is queued behind the stop.
        self._submit = threading.Lock()
        self._writes: queue.SimpleQueue[_Write | _Stop] | None = queue.SimpleQueue()
        self._writer = threading.Thread(
            target=_run_writer,
            args=(writer, self._writes, self.path),
            name=f"stratacache-sqlite-writer {self.path.name}",
            daemon=True,  # never keeps the process alive; close() is what flushes
        )
        self._writer.start()
        # A tier dropped without close() still stops its thread, after the writes already queued,
        # and closes the loop's connection.
        self._finalizer = weakref.finalize(self, _abandon, self._writes, self._conn)

    # ------------------------------------------------------------------ opening

    def _connect(self, busy_timeout_s: float) -> sqlite3.Connection:
        try:
            # isolation_level=None: the sqlite3 module must not open transactions behind our back;
            # the writer says BEGIN IMMEDIATE itself. check_same_thread=False: the event loop and
            # the writer thread are not the thread that built the tier (each connection is still
            # used by one thread only).
            return sqlite3.connect(
                self.path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise self._translate(exc) from exc

    def _open(self, busy_timeout_s: float) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TierError(f"cannot create the directory for {self.path}: {exc}") from exc
        conn = self._connect(busy_timeout_s)
        try:
            self._prepare(conn)
        except BaseException as exc:
            conn.close()
            if isinstance(exc, sqlite3.Error):
                raise self._translate(exc) from exc
            raise
        return conn

    def _prepare(self, conn: sqlite3.Connection) -> None:
        # The first statement reads the file header: a file that is not a database fails here.
        version = self._user_version(conn)
        if version == 0:
            self._refuse_foreign(conn)  # before switching to WAL, which would change their file
        (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
        if str(mode).lower() != "wal":
            # WAL cannot work on some filesystems (network mounts); SQLite then keeps its rollback
            # journal, which is still correct, only readers wait for writers.
            logger.warning("%s: WAL mode unavailable, using journal_mode=%s", self.path, mode)
        # In WAL mode NORMAL skips the fsync per commit: a crash of the process loses nothing, a
        # power cut may lose the last commits but never leaves the file inconsistent. For a cache
        # that is the right trade.
        conn.execute("PRAGMA synchronous = NORMAL")
        if version == 0:
            conn.execute("BEGIN IMMEDIATE")
            try:
                # Read again under the write lock: another process may have created it meanwhile.
                if self._user_version(conn) == 0:
                    self._refuse_foreign(conn)
                    for statement in _SCHEMA:
                        conn.execute(statement)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        missing = _TABLES - self._tables(conn)
        if missing:
            raise TierError(
                f"{self.path} is damaged: schema version {version} but tables "
                f"{', '.join(sorted(missing))} are missing"
            )
        # Reading the totals row and both ends of the LRU index touches pages beyond the header, so
        # a truncated or scribbled file fails now rather than on the first request.
        if conn.execute("SELECT bytes FROM totals WHERE id = 0").fetchone() is None:
            raise TierError(f"{self.path} is damaged: its totals row is missing")
        conn.execute("SELECT min(accessed_at), max(accessed_at) FROM entries").fetchone()

    def _user_version(self, conn: sqlite3.Connection) -> int:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if not isinstance(version, int) or version < 0 or version > SCHEMA_VERSION:
            raise TierError(
                f"{self.path} has schema version {version}, written by a newer stratacache "
                f"(this one reads version {SCHEMA_VERSION}); upgrade stratacache or use another "
                "data directory"
            )
        return version

    def _refuse_foreign(self, conn: sqlite3.Connection) -> None:
        """Raise if a file without our schema version has tables: it belongs to something else."""
        foreign = self._tables(conn)
        if foreign:
            raise TierError(
                f"{self.path} is a SQLite database of something else (tables: "
                f"{', '.join(sorted(foreign))}); give stratacache its own file"
            )

    @staticmethod
    def _tables(conn: sqlite3.Connection) -> set[str]:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        return {name for (name,) in rows if not name.startswith("sqlite_")}

    # ---------------------------------------------------------------- the Tier

    async def get(self, key: str) -> TierEntry | None:
        """Return the live entry for ``key``, or ``None``; an expired row found is deleted."""
        check_key(key)
        now = self._clock()
        row = self._autocommit(self._read, key)
        if row is None:
            return None
        value, expires_at, namespace, accessed_at, tags = row
        if not _live(expires_at, now):
            await self._write(self._delete_expired, key, now)
            return None
        if now - accessed_at >= _ACCESS_RESOLUTION_S:
            await self._write(self._touch, key, now)
        return TierEntry(
            value=value,
            expires_at=expires_at,
            tags=frozenset(json.loads(tags)) if tags != "[]" else frozenset(),
            namespace=namespace,
        )

    async def set(self, key: str, entry: TierEntry) -> bool:
        """Store ``entry`` under ``key``, replacing any previous entry, tags and namespace included.

        Returns ``False``, leaving ``key`` absent, when the entry has already expired or is larger
        than ``max_bytes`` on its own. Returns once the write has committed.
        """
        check_key(key)
        check_entry(entry)
        return await self._write(self._set, key, entry, self._clock())

    async def delete(self, key: str) -> bool:
        """Remove ``key``; ``True`` if a live entry was there."""
        check_key(key)
        return await self._write(self._delete_where, "key = ?", key, self._clock()) > 0

    async def delete_tag(self, tag: str) -> int:
        """Remove every entry carrying ``tag``, in every namespace; return how many were live."""
        check_key(tag)
        where = "key IN (SELECT key FROM tags WHERE tag = ?)"
        return await self._write(self._delete_where, where, tag, self._clock())

    async def delete_namespace(self, namespace: str) -> int:
        """Remove every entry in ``namespace``; return how many were live."""
        check_key(namespace)
        return await self._write(self._delete_where, "namespace = ?", namespace, self._clock())

    async def clear(self) -> None:
        """Remove every entry."""
        await self._write(self._clear)

    async def close(self) -> None:
        """Commit the writes already queued, stop the writer thread and close both connections.

        Later calls raise :class:`~stratacache.errors.TierError`; closing twice is harmless. When
        the last connection to the file closes, SQLite checkpoints the WAL into the main file.
        """
        with self._submit:
            writes, self._writes = self._writes, None
        if writes is None:
            return
        self._finalizer.detach()
        conn, self._conn = self._conn, None
        try:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # driven without a loop, as in _write
                waiter: concurrent.futures.Future[None] = concurrent.futures.Future()
                writes.put(_Stop(None, waiter))
                waiter.result()
            else:
                stopped: asyncio.Future[None] = loop.create_future()
                writes.put(_Stop(loop, stopped))
                await stopped  # the queued writes have committed (or failed); the thread is ending
            self._writer.join()  # it has nothing left to do but return
        finally:
            if conn is not None:
                try:
                    conn.close()
                except sqlite3.Error as exc:
                    raise self._translate(exc) from exc

    # ---------------------------------------------------------------- extras

    async def purge_expired(self) -> int:
        """Delete every expired row now and return how many; writes also do this every minute."""
        return await self._write(self._purge, self._clock())

    async def total_bytes(self) -> int:
        """The total size of the stored rows (expired ones not yet purged included)."""
        return self._autocommit(self._total_bytes)

    # -------------------------------------------------------------- internals

    def _closed(self) -> TierError:
        return TierError(f"the SQLite tier on {self.path} is closed")

    def _connection(self) -> sqlite3.Connection:
        conn = self._conn
        if conn is None:
            raise self._closed()
        return conn

    def _autocommit(
        self,
        work: Callable[Concatenate[sqlite3.Connection, _P], _T],
        *args: _P.args,
        **kwargs: _P.kwargs,
    ) -> _T:
        """Run a read (``work``) on the loop's connection in autocommit mode."""
        conn = self._connection()
        try:
            return work(conn, *args, **kwargs)
        except sqlite3.Error as exc:
            raise self._translate(exc) from exc

    async def _write(
        self,
        work: Callable[Concatenate[sqlite3.Connection, _P], _T],
        *args: _P.args,
        **kwargs: _P.kwargs,
    ) -> _T:
        """Queue ``work`` for the writer thread and wait until it has committed (or failed).

        ``work`` runs in the writer's transaction under its own savepoint: atomic, and rolled back
        alone if it raises. Errors arrive already translated.
        """

        def run(conn: sqlite3.Connection) -> _T:
            return work(conn, *args, **kwargs)

        loop = _running_loop()
        if loop is None or driven_by_hand.get():
            # A plain function memoized on this tier drives the coroutine by hand
            # (stratacache.memoize), with no loop or from inside one: it must not suspend, so wait
            # in place; the writer thread resolves a thread-safe future and needs no loop.
            waiter: concurrent.futures.Future[_T] = concurrent.futures.Future()
            self._put(_Write(run, None, waiter))
            return waiter.result()
        future: asyncio.Future[_T] = loop.create_future()
        self._put(_Write(run, loop, future))
        return await future

    def _put(self, item: _Write) -> None:
        with self._submit:
            if self._writes is None:
                raise self._closed()
            self._writes.put(item)

    def _translate(self, exc: sqlite3.Error) -> TierError:
        """Map a ``sqlite3`` error to the stratacache error tree by SQLite's primary result code."""
        return _translate(self.path, exc)

    @staticmethod
    def _read(conn: sqlite3.Connection, key: str) -> tuple[Any, ...] | None:
        row: tuple[Any, ...] | None = conn.execute(_GET, (key,)).fetchone()
        return row

    @staticmethod
    def _delete_expired(conn: sqlite3.Connection, key: str, now: float) -> None:
        # Guarded by the expiry so a fresh entry written meanwhile (by anyone) survives.
        conn.execute("DELETE FROM entries WHERE key = ? AND expires_at <= ?", (key, now))

    @staticmethod
    def _touch(conn: sqlite3.Connection, key: str, now: float) -> None:
        conn.execute("UPDATE entries SET accessed_at = ? WHERE key = ?", (now, key))

    def _set(self, conn: sqlite3.Connection, key: str, entry: TierEntry, now: float) -> bool:
        size = _entry_size(key, entry)
        if not _live(entry.expires_at, now) or (
            self._max_bytes is not None and size > self._max_bytes
        ):
            # Declined; the previous entry goes too, so a replaced entry is never served.
            conn.execute("DELETE FROM entries WHERE key = ?", (key,))
            return False
        conn.execute("DELETE FROM tags WHERE key = ?", (key,))
        # float(): an int expiry may be wider than SQLite's 64-bit INTEGER; the column is REAL.
        expires_at = None if entry.expires_at is None else float(entry.expires_at)
        conn.execute(_UPSERT, (key, entry.value, expires_at, entry.namespace, size, now))
        if entry.tags:
            conn.executemany(
                "INSERT INTO tags (tag, key) VALUES (?, ?)", [(tag, key) for tag in entry.tags]
            )
        purged = now >= self._next_purge
        if purged:
            self._purge(conn, now)
        if self._max_bytes is not None:
            self._shrink(conn, now, self._max_bytes, keep=key, purged=purged)
        return True

    def _purge(self, conn: sqlite3.Connection, now: float) -> int:
        """Delete the expired rows (through the partial index on expires_at); return how many."""
        count = conn.execute(_PURGE, (now,)).rowcount
        self._next_purge = now + _PURGE_INTERVAL_S
        return count

    def _shrink(
        self, conn: sqlite3.Connection, now: float, budget: int, *, keep: str, purged: bool
    ) -> None:
        """Evict until the total is within ``budget``: expired rows first, then the least recent."""
        total = self._total_bytes(conn)
        if total <= budget:
            return
        if not purged:
            self._purge(conn, now)
            total = self._total_bytes(conn)
        while total > budget:
            rows = conn.execute(_LEAST_RECENT, (keep, _EVICT_BATCH)).fetchall()
            if not rows:
                break  # only ``keep`` is left, and it fits on its own (checked by the caller)
            victims: list[tuple[str]] = []
            for victim, size in rows:
                victims.append((victim,))
                total -= size
                if total <= budget:
                    break
            conn.executemany("DELETE FROM entries WHERE key = ?", victims)

    @staticmethod
    def _total_bytes(conn: sqlite3.Connection) -> int:
        (total,) = conn.execute("SELECT bytes FROM totals WHERE id = 0").fetchone()
        return int(total)

    @staticmethod
    def _delete_where(conn: sqlite3.Connection, where: str, param: str, now: float) -> int:
        """Delete the rows matching ``where`` in one statement (atomic with its triggers).

        Returns how many of them were live: an expired row not yet purged was already absent.
        """
        rows = conn.execute(f"DELETE FROM entries WHERE {where} RETURNING expires_at", (param,))
        return sum(1 for (expires_at,) in rows if _live(expires_at, now))

    def _clear(self, conn: sqlite3.Connection) -> None:
        conn.execute("DELETE FROM tags")
        conn.execute("DELETE FROM entries")
        conn.execute("UPDATE totals SET bytes = 0")

    def __repr__(self) -> str:
        state = "closed" if self._conn is None else "open"
        return f"SQLiteTier({str(self.path)!r}, max_bytes={self._max_bytes}, {state})"
