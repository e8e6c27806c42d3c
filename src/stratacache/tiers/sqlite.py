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

Concurrency. The methods are coroutines but run their SQLite statements directly on the event loop
instead of in a thread: every statement is a lookup or a write through an index on a local file
(tens of microseconds, a few milliseconds for a 1 MiB value), less than a hop to a worker thread
and back would cost, and a thread would need a lock around the connection anyway. No transaction is
ever held across an ``await``, so tasks on one loop cannot interleave inside one, and two tiers in
one thread cannot deadlock. Across processes, WAL mode lets readers run while one writer writes;
writers queue on SQLite's lock for at most ``busy_timeout_s`` (blocking the loop for that long in
the worst case), then fail with :class:`~stratacache.errors.TierUnavailableError` so a chain serves
from elsewhere. Multi-statement writes start with ``BEGIN IMMEDIATE`` so they take the write lock
up front: a deferred transaction that upgrades from reading to writing can fail with SQLITE_BUSY
without waiting.

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

import contextlib
import json
import logging
import math
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Concatenate, Final, ParamSpec, TypeVar

from stratacache.errors import ConfigError, TierError, TierUnavailableError
from stratacache.tiers._checks import check_entry, check_key
from stratacache.tiers.base import Clock, TierEntry

__all__ = ["SCHEMA_VERSION", "SQLiteTier"]

logger = logging.getLogger("stratacache.tiers.sqlite")

_P = ParamSpec("_P")
_T = TypeVar("_T")

SCHEMA_VERSION: Final = 1
"""The schema this code writes and reads; stored in the file's ``PRAGMA user_version``."""

_ACCESS_RESOLUTION_S: Final = 60.0  # a hit refreshes accessed_at only when it is older than this
_PURGE_INTERVAL_S: Final = 60.0  # a write purges expired rows when the last purge is this old
_EVICT_BATCH: Final = 64  # least recently used rows fetched per step of an eviction

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
        self._next_purge = -math.inf
        self._conn: sqlite3.Connection | None = self._open(float(busy_timeout_s))

    # ------------------------------------------------------------------ opening

    def _open(self, busy_timeout_s: float) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TierError(f"cannot create the directory for {self.path}: {exc}") from exc
        try:
            # isolation_level=None: the sqlite3 module must not open transactions behind our back;
            # each multi-statement write says BEGIN IMMEDIATE itself. check_same_thread=False: the
            # event loop may run in a thread other than the one that built the tier.
            conn = sqlite3.connect(
                self.path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise self._translate(exc) from exc
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
        return self._autocommit(self._get, key, self._clock())

    async def set(self, key: str, entry: TierEntry) -> bool:
        """Store ``entry`` under ``key``, replacing any previous entry, tags and namespace included.

        Returns ``False``, leaving ``key`` absent, when the entry has already expired or is larger
        than ``max_bytes`` on its own.
        """
        check_key(key)
        check_entry(entry)
        return self._transaction(self._set, key, entry, self._clock())

    async def delete(self, key: str) -> bool:
        """Remove ``key``; ``True`` if a live entry was there."""
        check_key(key)
        return self._autocommit(self._delete_where, "key = ?", key, self._clock()) > 0

    async def delete_tag(self, tag: str) -> int:
        """Remove every entry carrying ``tag``, in every namespace; return how many were live."""
        check_key(tag)
        where = "key IN (SELECT key FROM tags WHERE tag = ?)"
        return self._autocommit(self._delete_where, where, tag, self._clock())

    async def delete_namespace(self, namespace: str) -> int:
        """Remove every entry in ``namespace``; return how many were live."""
        check_key(namespace)
        return self._autocommit(self._delete_where, "namespace = ?", namespace, self._clock())

    async def clear(self) -> None:
        """Remove every entry."""
        self._transaction(self._clear)

    async def close(self) -> None:
        """Close the database connection; later calls raise :class:`~stratacache.errors.TierError`.

        Closing twice is harmless. When the last connection to the file closes, SQLite checkpoints
        the WAL into the main file.
        """
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except sqlite3.Error as exc:
                raise self._translate(exc) from exc

    # ---------------------------------------------------------------- extras

    async def purge_expired(self) -> int:
        """Delete every expired row now and return how many; writes also do this every minute."""
        return self._autocommit(self._purge, self._clock())

    async def total_bytes(self) -> int:
        """The total size of the stored rows (expired ones not yet purged included)."""
        return self._autocommit(self._total_bytes)

    # -------------------------------------------------------------- internals

    def _connection(self) -> sqlite3.Connection:
        conn = self._conn
        if conn is None:
            raise TierError(f"the SQLite tier on {self.path} is closed")
        return conn

    def _autocommit(
        self,
        work: Callable[Concatenate[sqlite3.Connection, _P], _T],
        *args: _P.args,
        **kwargs: _P.kwargs,
    ) -> _T:
        """Run ``work`` in autocommit mode: each statement is its own atomic transaction."""
        conn = self._connection()
        try:
            return work(conn, *args, **kwargs)
        except sqlite3.Error as exc:
            raise self._translate(exc) from exc

    def _transaction(
        self,
        work: Callable[Concatenate[sqlite3.Connection, _P], _T],
        *args: _P.args,
        **kwargs: _P.kwargs,
    ) -> _T:
        """Run ``work`` in one ``BEGIN IMMEDIATE`` transaction, rolled back if anything fails."""
        conn = self._connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = work(conn, *args, **kwargs)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    # SQLite may have rolled back already (on SQLITE_FULL, say); the original error
                    # is the one to report.
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise
            return result
        except sqlite3.Error as exc:
            raise self._translate(exc) from exc

    def _translate(self, exc: sqlite3.Error) -> TierError:
        """Map a ``sqlite3`` error to the stratacache error tree by SQLite's primary result code."""
        code = getattr(exc, "sqlite_errorcode", None)
        name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
        primary = code & 0xFF if isinstance(code, int) else None
        if primary in _UNAVAILABLE_CODES:
            return TierUnavailableError(f"SQLite tier {self.path}: {exc} ({name})")
        if primary in _CORRUPT_CODES:
            return TierError(
                f"SQLite tier {self.path} is corrupt or not a SQLite database: {exc} ({name}); "
                "move the file away (the cache will start empty)"
            )
        return TierError(f"SQLite tier {self.path}: {exc} ({name})")

    def _get(self, conn: sqlite3.Connection, key: str, now: float) -> TierEntry | None:
        row = conn.execute(_GET, (key,)).fetchone()
        if row is None:
            return None
        value, expires_at, namespace, accessed_at, tags = row
        if not _live(expires_at, now):
            # Guarded by the expiry so a fresh entry another process wrote meanwhile survives.
            conn.execute("DELETE FROM entries WHERE key = ? AND expires_at <= ?", (key, now))
            return None
        if now - accessed_at >= _ACCESS_RESOLUTION_S:
            conn.execute("UPDATE entries SET accessed_at = ? WHERE key = ?", (now, key))
        return TierEntry(
            value=value,
            expires_at=expires_at,
            tags=frozenset(json.loads(tags)) if tags != "[]" else frozenset(),
            namespace=namespace,
        )

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
