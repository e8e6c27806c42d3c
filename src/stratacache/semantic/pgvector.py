"""A shared :class:`~stratacache.semantic.VectorIndex` in PostgreSQL with pgvector (HNSW).

Every instance pointed at the same database and table sees the same entries. One table::

    {table} (
        id          text PRIMARY KEY,         the record's storage key
        partition   text NOT NULL,            the context partition (B-tree index)
        text        bytea NOT NULL,           the indexed text, UTF-8 (bytea: text may hold NUL)
        expires_at  double precision,         wall-clock Unix seconds; NULL: no expiry
        embedding   vector(dimension) NOT NULL   unit length; HNSW index, cosine distance
    )

A search is one statement, ``WHERE partition = … ORDER BY embedding <=> … LIMIT k``: the
partition is a filter in the same query, never a post-filter in Python. PostgreSQL picks the plan
(small partitions: the B-tree and an exact sort; a large one: the HNSW graph, with pgvector 0.8's
iterative scan set to ``strict_order`` so a selective partition still gets ``k`` results). The
score is ``1 - cosine distance``, the cosine the rest of the package uses.

Expiry is compared with the injected clock. When a search meets an expired row it deletes the
partition's expired rows in one statement and searches again, so expired neighbours never crowd
out live ones; :meth:`PgVectorIndex.purge_expired` deletes all of them (a partial index on
``expires_at`` keeps that cheap).

The schema is created on first use (``CREATE EXTENSION vector`` needs a role allowed to; create it
beforehand otherwise), under an advisory lock so instances starting together do not race. A table
holding another dimension is refused.

Failures: psycopg's errors are translated here, once: a server that cannot be reached, a dropped
connection or a statement timeout is :class:`~stratacache.errors.TierUnavailableError` (the next
call reconnects), any other database error :class:`~stratacache.errors.TierError`.

This index is synchronous, like the :class:`~stratacache.semantic.VectorIndex` protocol: one
connection, used under a lock, in autocommit mode.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, TypeVar

from stratacache.errors import ConfigError, MissingExtraError, TierError, TierUnavailableError
from stratacache.semantic.backends import (
    POSTGRES_SCHEMES,
    checked_dimension,
    checked_entry,
    checked_k,
    checked_name,
    unit_vector,
)
from stratacache.semantic.base import Match

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    Vectors = npt.NDArray[np.float32]

__all__ = ["PgVectorIndex"]

_T = TypeVar("_T")
_TABLE = re.compile(r"[a-z_][a-z0-9_]{0,39}")
_BATCH: Final = 1000
_RETRIES: Final = 3  # searches after dropping expired rows, before settling for what was found


def _psycopg() -> Any:
    try:
        import psycopg
        import psycopg.sql
    except ImportError as exc:
        raise MissingExtraError("psycopg", "postgres") from exc
    return psycopg


def _literal(vector: Vectors) -> str:
    # pgvector's text form; repr of each float32 widened to float64 round-trips exactly.
    return "[" + ",".join(map(repr, vector.tolist())) + "]"


def _no_nul(what: str, value: str) -> None:
    if "\x00" in value:
        raise ConfigError(f"{what} must not contain NUL characters (PostgreSQL text cannot)")


class PgVectorIndex:
    """A :class:`~stratacache.semantic.VectorIndex` in a PostgreSQL table with a pgvector HNSW index.

    :param url: a ``postgresql://`` (or ``postgres://``) connection URL.
    :param dimension: the vector length; a table created with another is refused.
    :param table: the table's name (lower-case letters, digits and ``_``, at most 40); instances
        share entries by sharing it.
    :param clock: wall-clock Unix seconds (default ``time.time``), compared with expiries.
    :param connect_timeout: seconds to wait for a connection.
    :param statement_timeout: seconds one statement may run before the server cancels it.
    :param hnsw_m: HNSW neighbours per node (used when the index is created).
    :param ef_construction: the HNSW build beam (used when the index is created).
    :param ef_search: the HNSW search beam (``hnsw.ef_search``), at least ``k``.
    :raises ConfigError: a bad URL, table name or number; id or partition text with NUL.
    :raises MissingExtraError: psycopg is not installed (the ``postgres`` extra).
    :raises TierUnavailableError: the server cannot be reached.
    :raises TierError: pgvector is missing and cannot be created, or the table holds another
        dimension.
    """

    def __init__(
        self,
        url: str,
        dimension: int,
        *,
        table: str = "strata_vectors",
        clock: Callable[[], float] = time.time,
        connect_timeout: float = 2.0,
        statement_timeout: float = 2.0,
        hnsw_m: int = 16,
        ef_construction: int = 64,
        ef_search: int = 100,
    ) -> None:
        self._dimension = checked_dimension(dimension)
        if not isinstance(url, str) or not url.startswith(POSTGRES_SCHEMES):
            raise ConfigError("the PostgreSQL URL must start with postgresql:// or postgres://")
        if not isinstance(table, str) or not _TABLE.fullmatch(table):
            raise ConfigError(
                f"the table name must be lower-case letters, digits and _, at most 40: {table!r}"
            )
        for name, value in (("hnsw_m", hnsw_m), ("ef_construction", ef_construction)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 2:
                raise ConfigError(f"{name} must be an int >= 2, not {value!r}")
        if isinstance(ef_search, bool) or not isinstance(ef_search, int) or ef_search < 1:
            raise ConfigError(f"ef_search must be a positive int, not {ef_search!r}")
        for name, seconds in (
            ("connect_timeout", connect_timeout),
            ("statement_timeout", statement_timeout),
        ):
            if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds <= 0:
                raise ConfigError(f"{name} must be a number of seconds > 0, not {seconds!r}")
        self._pg = _psycopg()
        self._url = url
        self.table = table
        """The table the entries live in."""
        self._clock = clock
        self._connect_timeout = max(1, round(connect_timeout))  # libpq takes whole seconds
        self._statement_ms = round(statement_timeout * 1000)
        self._hnsw = (hnsw_m, ef_construction)
        self._ef = ef_search
        self._lock = threading.Lock()
        self._conn: Any = None
        self._closed = False
        sql = self._pg.sql
        t = sql.Identifier(table)
        self._sql = {
            "upsert": sql.SQL(
                "INSERT INTO {t} (id, partition, text, expires_at, embedding)"
                " VALUES (%s, %s, %s, %s, %s::vector)"
                " ON CONFLICT (id) DO UPDATE SET partition = EXCLUDED.partition,"
                " text = EXCLUDED.text, expires_at = EXCLUDED.expires_at,"
                " embedding = EXCLUDED.embedding"
            ).format(t=t),
            "search": sql.SQL(
                "SELECT id, text, expires_at, 1 - (embedding <=> %(v)s::vector) FROM {t}"
                " WHERE partition = %(p)s ORDER BY embedding <=> %(v)s::vector LIMIT %(k)s"
            ).format(t=t),
            "drop_expired_in": sql.SQL(
                "DELETE FROM {t} WHERE partition = %s AND expires_at <= %s"
            ).format(t=t),
            "drop_expired": sql.SQL("DELETE FROM {t} WHERE expires_at <= %s").format(t=t),
            "remove": sql.SQL("DELETE FROM {t} WHERE id = %s").format(t=t),
            "remove_many": sql.SQL("DELETE FROM {t} WHERE id = ANY(%s)").format(t=t),
            "remove_partition": sql.SQL("DELETE FROM {t} WHERE partition = %s").format(t=t),
            "ids": sql.SQL("SELECT id FROM {t}").format(t=t),
            "expiry": sql.SQL("SELECT expires_at FROM {t} WHERE id = %s").format(t=t),
            "count": sql.SQL("SELECT count(*) FROM {t}").format(t=t),
        }
        self._run(lambda conn: None)  # connect and create the schema now: fail at start-up

    @property
    def dimension(self) -> int:
        """The length every added and searched vector must have."""
        return self._dimension

    def add(
        self,
        partition: str,
        id: str,
        vector: Vectors,
        *,
        text: str = "",
        expires_at: float | None = None,
    ) -> None:
        """Add (or replace) ``id`` in ``partition``; the vector is normalised on the way in.

        :raises ConfigError: bad partition, id, text, expiry or vector; the index is unchanged.
        :raises TierUnavailableError: the server cannot be reached.
        """
        checked_entry(partition, id, text, expires_at)
        _no_nul("partition", partition)
        _no_nul("id", id)
        literal = _literal(unit_vector(vector, self._dimension))
        expiry = None if expires_at is None else float(expires_at)
        row = (id, partition, text.encode("utf-8"), expiry, literal)
        self._run(lambda conn: conn.execute(self._sql["upsert"], row))

    def remove(self, id: str) -> bool:
        """Remove ``id`` wherever it is; ``True`` if it was present."""
        if not isinstance(id, str) or "\x00" in id:
            return False
        return bool(self._run(lambda conn: conn.execute(self._sql["remove"], (id,)).rowcount))

    def remove_partition(self, partition: str) -> int:
        """Remove every entry of ``partition``; return how many were removed."""
        checked_name("partition", partition)
        if "\x00" in partition:
            return 0
        query = self._sql["remove_partition"]
        return int(self._run(lambda conn: conn.execute(query, (partition,)).rowcount))

    def remove_where(self, predicate: Callable[[str], bool]) -> int:
        """Remove every entry whose id satisfies ``predicate``; return how many were removed.

        The ids are read once (the predicate is Python, so it cannot run in the database) and
        the matching rows are deleted in batches.
        """
        ids: list[str] = self._run(lambda conn: [row[0] for row in conn.execute(self._sql["ids"])])
        doomed = [id for id in ids if predicate(id)]
        query = self._sql["remove_many"]

        def remove(batch: list[str]) -> int:
            return int(self._run(lambda conn: conn.execute(query, (batch,)).rowcount))

        return sum(remove(doomed[i : i + _BATCH]) for i in range(0, len(doomed), _BATCH))

    def purge_expired(self) -> int:
        """Delete every expired entry now; return how many."""
        now = float(self._clock())
        return int(self._run(lambda conn: conn.execute(self._sql["drop_expired"], (now,)).rowcount))

    def search(self, partition: str, vector: Vectors, k: int = 1) -> list[Match]:
        """Return up to ``k`` live entries of ``partition``, best score first."""
        checked_k(k)
        checked_name("partition", partition)
        if "\x00" in partition:
            return []  # no such partition can have been added
        params = {"v": _literal(unit_vector(vector, self._dimension)), "p": partition, "k": k}
        now = float(self._clock())

        def search(conn: Any) -> list[Match]:
            for _ in range(_RETRIES):
                rows = conn.execute(self._sql["search"], params).fetchall()
                live = [
                    Match(id, min(float(score), 1.0), bytes(text).decode("utf-8"))
                    for id, text, expires, score in rows
                    if expires is None or expires > now
                ]
                if len(live) == len(rows):
                    return live
                # Drop every expired row of the partition at once, then look again.
                conn.execute(self._sql["drop_expired_in"], (partition, now))
            return live  # rows keep expiring under concurrent writers: settle for these

        result: list[Match] = self._run(search)
        return result

    def __contains__(self, id: object) -> bool:
        """Whether a live entry is stored under ``id``."""
        if not isinstance(id, str) or "\x00" in id:
            return False
        rows = self._run(lambda conn: conn.execute(self._sql["expiry"], (id,)).fetchall())
        return bool(rows) and (rows[0][0] is None or rows[0][0] > self._clock())

    def __len__(self) -> int:
        """How many entries are stored (expired ones not yet dropped included)."""
        return int(self._run(lambda conn: conn.execute(self._sql["count"]).fetchone()[0]))

    def close(self) -> None:
        """Close the connection; later calls raise :class:`~stratacache.errors.TierError`."""
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __repr__(self) -> str:
        return f"PgVectorIndex(table={self.table!r}, dimension={self._dimension})"

    # ---------------------------------------------------------------- internals

    def _run(self, work: Callable[[Any], _T]) -> _T:
        """Run ``work(connection)`` under the lock, translating psycopg's errors once, here."""
        pg = self._pg
        with self._lock:
            if self._closed:
                raise TierError("the pgvector index is closed")
            try:
                if self._conn is None or self._conn.closed or self._conn.broken:
                    self._conn = self._connect()
                return work(self._conn)
            except (pg.OperationalError, pg.errors.QueryCanceled, OSError) as exc:
                # The connection may be half-dead: drop it, the next call reconnects.
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None
                raise TierUnavailableError(f"the pgvector index is unavailable: {exc}") from exc
            except pg.Error as exc:
                raise TierError(f"the pgvector index failed: {exc}") from exc

    def _connect(self) -> Any:
        pg = self._pg
        conn = pg.connect(
            self._url,
            autocommit=True,
            connect_timeout=self._connect_timeout,
            application_name="stratacache",
        )
        try:
            conn.execute(f"SET statement_timeout = {self._statement_ms}")
            self._ensure_schema(conn)
            conn.execute(f"SET hnsw.ef_search = {self._ef}")
            # pgvector >= 0.8: keep scanning the graph until k rows pass the partition filter.
            # An older pgvector refuses the setting; it still works, but a search of a small
            # partition that goes through the graph may then return fewer than k rows.
            with contextlib.suppress(pg.errors.UndefinedObject, pg.errors.InvalidParameterValue):
                conn.execute("SET hnsw.iterative_scan = strict_order")
        except BaseException:
            conn.close()
            raise
        return conn

    def _ensure_schema(self, conn: Any) -> None:
        sql = self._pg.sql
        t = sql.Identifier(self.table)
        m, ef_construction = self._hnsw
        with conn.transaction():
            # One creator at a time across instances (CREATE ... IF NOT EXISTS can still race).
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self.table,))
            try:
                conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
            except self._pg.errors.InsufficientPrivilege as exc:
                raise TierError(
                    "pgvector is not installed in this database and this role may not create it;"
                    " run CREATE EXTENSION vector as its owner"
                ) from exc
            conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {t} (id text PRIMARY KEY,"
                    " partition text NOT NULL, text bytea NOT NULL,"
                    " expires_at double precision, embedding vector({d}) NOT NULL)"
                ).format(t=t, d=sql.Literal(self._dimension))
            )
            stored = conn.execute(
                "SELECT atttypmod FROM pg_attribute"
                " WHERE attrelid = %s::regclass AND attname = 'embedding'",
                (self.table,),
            ).fetchone()
            if stored is None or stored[0] != self._dimension:
                raise TierError(
                    f"the table {self.table!r} holds {stored[0] if stored else '?'}-d vectors,"
                    f" expected {self._dimension} (was the embedder changed? use another table)"
                )
            for statement in (
                "CREATE INDEX IF NOT EXISTS {partition} ON {t} (partition)",
                "CREATE INDEX IF NOT EXISTS {expiry} ON {t} (expires_at)"
                " WHERE expires_at IS NOT NULL",
                "CREATE INDEX IF NOT EXISTS {hnsw} ON {t} USING hnsw"
                " (embedding vector_cosine_ops) WITH (m = {m}, ef_construction = {ef})",
            ):
                conn.execute(
                    sql.SQL(statement).format(
                        t=t,
                        partition=sql.Identifier(f"{self.table}_partition"),
                        expiry=sql.Identifier(f"{self.table}_expiry"),
                        hnsw=sql.Identifier(f"{self.table}_hnsw"),
                        m=sql.Literal(m),
                        ef=sql.Literal(ef_construction),
                    )
                )
