"""In-process vector indexes, one shard per context partition, persisted to one file.

Each partition (see :attr:`stratacache.llm.keys.CacheKey.partition`) gets its own shard, so a search
can only ever see entries of the caller's partition: isolation is structural, not a filter that a
bug could forget. :class:`USearchIndex` keeps an HNSW graph per shard (usearch); :class:`ExactIndex`
scans a numpy matrix and is the fallback when usearch is not installed (and the faster choice for
the many small partitions a conversational workload creates). :func:`default_index` picks one.

Expiry is checked against the injected wall clock on every search; expired entries are dropped as
they are met and by :meth:`purge_expired`.

Persistence (:meth:`save` / :meth:`load`) writes one file: a magic line, a JSON header (dimension
and, per entry, id, partition, text and expiry), the vectors as raw little-endian float32, and a
SHA-256 trailer. It is written to a temporary file and renamed, so a crash leaves the old file; a
file that fails its checksum raises :class:`~stratacache.errors.TierError` rather than loading
half an index. No pickle anywhere.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

from stratacache.errors import ConfigError, MissingExtraError, TierError
from stratacache.semantic.base import Match

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    Vectors = npt.NDArray[np.float32]

__all__ = ["ExactIndex", "USearchIndex", "default_index", "vector_file_for"]

_MAGIC = b"STRATACACHE-VECTORS\n"
_VERSION = 1
_DIGEST = 32

_IndexT = TypeVar("_IndexT", bound="_ShardedIndex")


def vector_file_for(sqlite_path: Path | str) -> Path:
    """The vector file kept beside a SQLite tier's database: ``<db>.vectors``."""
    path = Path(sqlite_path)
    return path.with_name(path.name + ".vectors")


def default_index(
    dimension: int, *, clock: Callable[[], float] = time.time
) -> ExactIndex | USearchIndex:
    """A :class:`USearchIndex` when usearch is installed, else an :class:`ExactIndex`."""
    try:
        import usearch.index  # noqa: F401
    except ImportError:
        return ExactIndex(dimension, clock=clock)
    return USearchIndex(dimension, clock=clock)


def _numpy() -> Any:
    try:
        import numpy
    except ImportError as exc:
        raise MissingExtraError("numpy", "semantic") from exc
    return numpy


@dataclass(slots=True)
class _Entry:
    partition: str
    label: int
    text: str
    expires_at: float | None


class _Shard(Protocol):
    def add(self, label: int, vector: Vectors) -> None: ...
    def add_many(self, labels: list[int], matrix: Vectors) -> None: ...
    def remove(self, label: int) -> None: ...
    def search(self, vector: Vectors, k: int) -> list[tuple[int, float]]: ...
    def get(self, label: int) -> Vectors: ...
    def __len__(self) -> int: ...


class _ExactShard:
    """A growable matrix of rows; removal moves the last row into the hole."""

    def __init__(self, dimension: int) -> None:
        np = _numpy()
        self._np = np
        self._matrix = np.zeros((4, dimension), dtype=np.float32)
        self._labels: list[int] = []
        self._rows: dict[int, int] = {}

    def add(self, label: int, vector: Vectors) -> None:
        row = len(self._labels)
        if row == self._matrix.shape[0]:
            grown = self._np.zeros((row * 2, self._matrix.shape[1]), dtype=self._np.float32)
            grown[:row] = self._matrix
            self._matrix = grown
        self._matrix[row] = vector
        self._labels.append(label)
        self._rows[label] = row

    def add_many(self, labels: list[int], matrix: Vectors) -> None:
        start = len(self._labels)
        end = start + len(labels)
        if end > self._matrix.shape[0]:
            grown = self._np.zeros((max(end, start * 2), self._matrix.shape[1]), dtype="float32")
            grown[:start] = self._matrix[:start]
            self._matrix = grown
        self._matrix[start:end] = matrix
        self._rows.update(zip(labels, range(start, end), strict=True))
        self._labels.extend(labels)

    def remove(self, label: int) -> None:
        row = self._rows.pop(label)
        last = len(self._labels) - 1
        if row != last:
            moved = self._labels[last]
            self._matrix[row] = self._matrix[last]
            self._labels[row] = moved
            self._rows[moved] = row
        self._labels.pop()

    def search(self, vector: Vectors, k: int) -> list[tuple[int, float]]:
        n = len(self._labels)
        if n == 0:
            return []
        scores = self._matrix[:n] @ vector
        if k < n:
            top = self._np.argpartition(-scores, k - 1)[:k]
        else:
            top = self._np.arange(n)
        top = top[self._np.argsort(-scores[top], kind="stable")]
        return [(self._labels[int(i)], float(scores[int(i)])) for i in top]

    def get(self, label: int) -> Vectors:
        out: Vectors = self._matrix[self._rows[label]].copy()
        return out

    def scores(self, labels: list[int], vector: Vectors) -> list[float]:
        """The exact inner products of ``vector`` with the rows of ``labels``."""
        rows = [self._rows[label] for label in labels]
        out: list[float] = (self._matrix[rows] @ vector).tolist()
        return out

    def labels(self) -> list[int]:
        return list(self._labels)

    def rows(self) -> Vectors:
        """The live rows, in the order of :meth:`labels`."""
        out: Vectors = self._matrix[: len(self._labels)]
        return out

    def __len__(self) -> int:
        return len(self._labels)


class _USearchShard:
    """One usearch HNSW graph over cosine similarity (inner product on our unit vectors).

    With an int8 or half-precision graph, the float32 vectors are also kept in an
    :class:`_ExactShard`: the graph walk (most of a search) reads a quarter or half of the bytes,
    and the few candidates it returns are re-scored exactly, so scores, thresholds and saved files
    stay float32-exact.
    """

    def __init__(self, dimension: int, settings: _GraphSettings) -> None:
        try:
            from usearch.index import Index
        except ImportError as exc:
            raise MissingExtraError("usearch", "semantic") from exc
        self._np = _numpy()
        self._threads = settings.threads
        self._beam = settings.expansion_search
        self._exact = _ExactShard(dimension) if settings.dtype != "f32" else None
        self._index = Index(
            ndim=dimension,
            # Vectors are unit length, so inner product is cosine; an int8 graph needs usearch's
            # cosine, which undoes the quantisation's scale (recall@4 0.906 against 0.899 for
            # inner product on int8, 0.907 on f16, at 50k synthetic entries).
            metric="cos" if settings.dtype == "i8" else "ip",
            dtype=settings.dtype,
            connectivity=settings.connectivity,
            expansion_add=settings.expansion_add,
            expansion_search=settings.expansion_search,
        )
        # The search runs on every cache lookup. usearch's Python ``search`` costs more than the
        # graph walk at 10k entries: argument checks, a result object per call, and by default a
        # batch scheduled over every core (``threads=0``) for a single query. The compiled
        # ``search_many`` with one thread is the same search without that; the public method is
        # the fallback should a usearch release drop the attribute.
        compiled = getattr(self._index, "_compiled", None)
        self._compiled_search = getattr(compiled, "search_many", None)
        try:
            from usearch.compiled import ScalarKind

            self._unknown = ScalarKind.Unknown
        except ImportError:  # pragma: no cover - every usearch with _compiled has it
            self._compiled_search = None

    def add(self, label: int, vector: Vectors) -> None:
        self._index.add(label, vector)
        if self._exact is not None:
            self._exact.add(label, vector)

    def add_many(self, labels: list[int], matrix: Vectors) -> None:
        # One call inserts the whole batch on ``threads`` native threads (the GIL is released):
        # a million entries in minutes instead of an hour of one-by-one Python calls.
        keys = self._np.asarray(labels, dtype=self._np.uint64)
        self._index.add(keys, matrix, threads=self._threads)
        if self._exact is not None:
            self._exact.add_many(labels, matrix)

    def remove(self, label: int) -> None:
        self._index.remove(label)
        if self._exact is not None:
            self._exact.remove(label)

    def search(self, vector: Vectors, k: int) -> list[tuple[int, float]]:
        if len(self._index) == 0:
            return []
        if self._exact is not None and len(self._index) <= self._beam:
            # A graph no larger than its search beam: the walk would visit every node anyway, and
            # the exact scan of the float32 copy is as fast and finds a node the graph linked
            # badly (seen with usearch's multi-threaded bulk insert into a 40-node graph).
            return self._exact.search(vector, k)
        # A quantised graph ranks by rounded scores: two entries within ~1e-3 (f16) or ~1e-2 (i8)
        # of each other may swap, so it is asked for a few more than k and the exact re-score
        # picks the k.
        count = k if self._exact is None else min(len(self._index), k + max(k, 4))
        if self._compiled_search is not None:
            # (keys, distances, counts, visited nodes, computed distances)
            keys, distances, counts, *_ = self._compiled_search(
                vector.reshape(1, -1), count=count, exact=False, threads=1, dtype=self._unknown
            )
            n = int(counts[0])
            found_keys, found_distances = keys[0, :n].tolist(), distances[0, :n].tolist()
        else:
            found = self._index.search(vector, count, threads=1)
            found_keys, found_distances = found.keys.tolist(), found.distances.tolist()
        if self._exact is not None and found_keys:
            exact = self._exact.scores(found_keys, vector)
            ranked = sorted(zip(found_keys, exact, strict=True), key=lambda pair: -pair[1])
            return ranked[:k]
        # usearch reports inner-product distance as 1 - dot.
        return [(key, 1.0 - dist) for key, dist in zip(found_keys, found_distances, strict=True)]

    def set_expansion_search(self, value: int) -> None:
        # usearch's property has a setter at run time; its type stub declares it read-only.
        setattr(self._index, "expansion_search", value)  # noqa: B010
        self._beam = value

    def get(self, label: int) -> Vectors:
        if self._exact is not None:
            return self._exact.get(label)
        out: Vectors = self._np.asarray(self._index.get(label), dtype=self._np.float32)
        return out

    def __len__(self) -> int:
        return len(self._index)


@dataclass(frozen=True, slots=True)
class _GraphSettings:
    connectivity: int
    expansion_add: int
    expansion_search: int
    threads: int
    dtype: str


class _ShardedIndex:
    """The bookkeeping both indexes share: ids, partitions, expiry, persistence, locking."""

    kind: ClassVar[str] = ""

    def __init__(self, dimension: int, *, clock: Callable[[], float] = time.time) -> None:
        if isinstance(dimension, bool) or not isinstance(dimension, int) or dimension < 1:
            raise ConfigError(f"dimension must be a positive int, not {dimension!r}")
        self._dimension = dimension
        self._clock = clock
        self._np = _numpy()
        self._entries: dict[str, _Entry] = {}
        self._ids: dict[int, str] = {}
        self._shards: dict[str, _Shard] = {}
        self._next_label = 1
        self._lock = threading.RLock()

    def _new_shard(self) -> _Shard:
        raise NotImplementedError

    def _grown(self, shard: _Shard) -> _Shard:
        """The shard to keep after an add (a subclass may swap in a bigger structure)."""
        return shard

    @property
    def dimension(self) -> int:
        """The length every vector must have."""
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
        """
        _check_name("partition", partition)
        _check_name("id", id)
        if not isinstance(text, str):
            raise ConfigError(f"text must be a str, not {type(text).__name__}")
        _check_encodable("text", text)
        _check_expiry(expires_at)
        unit = self._vector(vector)
        with self._lock:
            if id in self._entries:
                self._remove_locked(id)
            label = self._next_label
            self._next_label += 1
            shard = self._shards.get(partition)
            if shard is None:
                shard = self._shards[partition] = self._new_shard()
            shard.add(label, unit)
            self._shards[partition] = self._grown(shard)
            self._entries[id] = _Entry(partition, label, text, expires_at)
            self._ids[label] = id

    def add_many(
        self,
        partition: str,
        ids: Sequence[str],
        vectors: Vectors,
        *,
        texts: Sequence[str] | None = None,
        expires_at: Sequence[float | None] | None = None,
    ) -> None:
        """Add (or replace) many entries of one partition in one call: the bulk path.

        Equivalent to calling :meth:`add` per row, but a graph inserts the whole batch on native
        threads, so a rebuild or warm-up of a million entries takes minutes, not an hour.

        :param vectors: one row per id (normalised on the way in).
        :param texts: one text per id (default: empty).
        :param expires_at: one expiry per id (default: none).
        :raises ConfigError: bad or repeated ids, bad rows, texts or expiries, or lengths that do
            not match; the index is unchanged.
        """
        _check_name("partition", partition)
        ids = list(ids)
        for id in ids:
            _check_name("id", id)
        if len(set(ids)) != len(ids):
            raise ConfigError("add_many was given the same id twice")
        texts = [""] * len(ids) if texts is None else list(texts)
        expiries = [None] * len(ids) if expires_at is None else list(expires_at)
        if len(texts) != len(ids) or len(expiries) != len(ids):
            raise ConfigError("add_many needs one text and one expiry per id")
        for text in texts:
            if not isinstance(text, str):
                raise ConfigError(f"text must be a str, not {type(text).__name__}")
            _check_encodable("text", text)
        for expiry in expiries:
            _check_expiry(expiry)
        matrix = self._matrix(vectors, len(ids))
        if not ids:
            return
        with self._lock:
            for id in ids:
                if id in self._entries:
                    self._remove_locked(id)
            labels = list(range(self._next_label, self._next_label + len(ids)))
            self._next_label += len(ids)
            shard = self._shards.get(partition)
            if shard is None:
                shard = self._shards[partition] = self._new_shard()
            shard.add_many(labels, matrix)
            self._shards[partition] = self._grown(shard)
            for id, label, text, expiry in zip(ids, labels, texts, expiries, strict=True):
                self._entries[id] = _Entry(partition, label, text, expiry)
                self._ids[label] = id

    def remove(self, id: str) -> bool:
        """Remove ``id``; ``True`` if it was present."""
        with self._lock:
            if id not in self._entries:
                return False
            self._remove_locked(id)
            return True

    def remove_partition(self, partition: str) -> int:
        """Remove every entry of ``partition``; return how many."""
        with self._lock:
            doomed = [i for i, e in self._entries.items() if e.partition == partition]
            for id in doomed:
                self._remove_locked(id)
            return len(doomed)

    def remove_where(self, predicate: Callable[[str], bool]) -> int:
        """Remove every entry whose id satisfies ``predicate``; return how many."""
        with self._lock:
            doomed = [i for i in self._entries if predicate(i)]
            for id in doomed:
                self._remove_locked(id)
            return len(doomed)

    def purge_expired(self) -> int:
        """Drop every expired entry now; return how many."""
        now = self._clock()
        with self._lock:
            doomed = [i for i, e in self._entries.items() if _expired(e, now)]
            for id in doomed:
                self._remove_locked(id)
            return len(doomed)

    def search(self, partition: str, vector: Vectors, k: int = 1) -> list[Match]:
        """Return up to ``k`` live entries of ``partition``, best first; expired ones are dropped."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"k must be a positive int, not {k!r}")
        _check_name("partition", partition)
        unit = self._vector(vector)
        now = self._clock()
        with self._lock:
            shard = self._shards.get(partition)
            if shard is None:
                return []
            fetch = k
            while True:
                found = shard.search(unit, min(fetch, len(shard)))
                live: list[Match] = []
                expired: list[str] = []
                for label, score in found:
                    id = self._ids[label]
                    entry = self._entries[id]
                    if _expired(entry, now):
                        expired.append(id)
                    else:
                        live.append(Match(id, min(score, 1.0), entry.text))
                for id in expired:
                    self._remove_locked(id)
                if len(live) >= k or not expired or partition not in self._shards:
                    return live[:k]
                fetch = k  # the expired ones are gone; ask again for the rest

    def __contains__(self, id: object) -> bool:
        """Whether a live entry is stored under ``id``."""
        with self._lock:
            entry = self._entries.get(id) if isinstance(id, str) else None
            return entry is not None and not _expired(entry, self._clock())

    def __len__(self) -> int:
        """How many entries are stored (expired ones not yet dropped included)."""
        return len(self._entries)

    def partitions(self) -> list[str]:
        """The partitions holding at least one entry."""
        with self._lock:
            return list(self._shards)

    def save(self, path: Path | str) -> None:
        """Write every live entry to ``path`` atomically (temporary file, fsync, rename).

        :raises TierError: the file cannot be written.
        """
        path = Path(path)
        now = self._clock()
        with self._lock:
            ids = [i for i, e in self._entries.items() if not _expired(e, now)]
            header = {
                "version": _VERSION,
                "kind": self.kind,
                "dimension": self._dimension,
                "entries": [
                    [
                        i,
                        self._entries[i].partition,
                        self._entries[i].text,
                        self._entries[i].expires_at,
                    ]
                    for i in ids
                ],
            }
            matrix = self._np.zeros((len(ids), self._dimension), dtype="<f4")
            for row, id in enumerate(ids):
                entry = self._entries[id]
                matrix[row] = self._shards[entry.partition].get(entry.label)
        head = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        body = _MAGIC + struct.pack("<I", len(head)) + head + matrix.tobytes()
        blob = body + hashlib.sha256(body).digest()
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(blob)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise TierError(f"cannot write the vector file {path}: {exc}") from None

    @classmethod
    def load(
        cls: type[_IndexT], path: Path | str, *, clock: Callable[[], float] = time.time
    ) -> _IndexT:
        """Rebuild an index from a file written by :meth:`save` (by either index class).

        Entries that expired while the process was down are skipped.

        :raises TierError: the file is missing, unreadable, corrupt or from a newer version.
        """
        path = Path(path)
        try:
            blob = path.read_bytes()
        except OSError as exc:
            raise TierError(f"cannot read the vector file {path}: {exc}") from None
        body, digest = blob[:-_DIGEST], blob[-_DIGEST:]
        if len(blob) < len(_MAGIC) + 4 + _DIGEST or not blob.startswith(_MAGIC):
            raise TierError(f"{path} is not a stratacache vector file")
        if hashlib.sha256(body).digest() != digest:
            raise TierError(f"the vector file {path} is corrupt (checksum mismatch)")
        offset = len(_MAGIC)
        (size,) = struct.unpack_from("<I", body, offset)
        offset += 4
        try:
            header = json.loads(body[offset : offset + size].decode("utf-8"))
            version = header["version"]
            dimension = header["dimension"]
            entries = header["entries"]
        except (ValueError, KeyError, TypeError) as exc:
            raise TierError(f"the vector file {path} has a bad header: {exc!r}") from None
        if version != _VERSION:
            raise TierError(f"the vector file {path} has version {version!r}, expected {_VERSION}")
        np = _numpy()
        raw = body[offset + size :]
        if (
            not isinstance(dimension, int)
            or not isinstance(entries, list)
            or dimension < 1
            or len(raw) != len(entries) * dimension * 4
        ):
            raise TierError(f"the vector file {path} has the wrong size")
        matrix = np.frombuffer(raw, dtype="<f4").reshape(len(entries), dimension)
        index = cls(dimension, clock=clock)
        now = clock()
        try:
            # One bulk add per partition: a graph is then built on native threads.
            groups: dict[str, list[int]] = {}
            for row, (_, partition, _, expires_at) in enumerate(entries):
                if expires_at is not None and expires_at <= now:
                    continue
                groups.setdefault(partition, []).append(row)
            for partition, rows in groups.items():
                index.add_many(
                    partition,
                    [entries[r][0] for r in rows],
                    matrix[rows],
                    texts=[entries[r][2] for r in rows],
                    expires_at=[entries[r][3] for r in rows],
                )
        except (ConfigError, ValueError, TypeError) as exc:
            raise TierError(f"the vector file {path} holds a bad entry: {exc}") from None
        return index

    @classmethod
    def open(
        cls: type[_IndexT],
        path: Path | str,
        dimension: int,
        *,
        clock: Callable[[], float] = time.time,
    ) -> _IndexT:
        """Load ``path`` when it exists, else return an empty index (the start-up path).

        :raises TierError: the file exists but cannot be loaded, or holds another dimension.
        """
        if not Path(path).exists():
            return cls(dimension, clock=clock)
        index = cls.load(path, clock=clock)
        if index.dimension != dimension:
            raise TierError(
                f"the vector file {path} holds {index.dimension}-d vectors, expected {dimension}"
                " (was the embedder changed? delete the file to rebuild)"
            )
        return index

    def _remove_locked(self, id: str) -> None:
        entry = self._entries.pop(id)
        del self._ids[entry.label]
        shard = self._shards[entry.partition]
        shard.remove(entry.label)
        if len(shard) == 0:
            del self._shards[entry.partition]

    def _matrix(self, vectors: Vectors, rows: int) -> Vectors:
        np = self._np
        try:
            array = np.array(vectors, dtype=np.float32, ndmin=2, copy=True)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"not a matrix of vectors: {exc}") from None
        if array.ndim != 2 or array.shape != (rows, self._dimension):
            raise ConfigError(
                f"expected {rows} vectors of {self._dimension} values, got shape {array.shape}"
            )
        if not np.isfinite(array).all():
            raise ConfigError("a vector holds NaN or an infinity")
        norms = np.linalg.norm(array, axis=1, keepdims=True)
        norms[norms == 0] = 1.0
        array /= norms
        out: Vectors = np.ascontiguousarray(array)
        return out

    def _vector(self, vector: Vectors) -> Vectors:
        np = self._np
        try:
            array = np.asarray(vector, dtype=np.float32).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"not a vector: {exc}") from None
        if array.shape[0] != self._dimension:
            raise ConfigError(f"expected a {self._dimension}-d vector, got {array.shape[0]}-d")
        if not np.isfinite(array).all():
            raise ConfigError("a vector holds NaN or an infinity")
        norm = float(np.linalg.norm(array))
        out: Vectors = array / norm if norm > 0 else array.copy()
        return np.ascontiguousarray(out, dtype=np.float32)  # type: ignore[no-any-return]


class ExactIndex(_ShardedIndex):
    """Exact cosine search over a numpy matrix per partition (no extra dependency beyond numpy).

    :param dimension: the vector length.
    :param clock: wall-clock Unix seconds (default ``time.time``); tests pass a fake.
    """

    kind: ClassVar[str] = "exact"

    def _new_shard(self) -> _Shard:
        return _ExactShard(self._dimension)


class USearchIndex(_ShardedIndex):
    """Approximate (HNSW) cosine search with usearch, one graph per large partition.

    :param dimension: the vector length.
    :param clock: wall-clock Unix seconds (default ``time.time``).
    :param connectivity: HNSW neighbours per node (usearch's ``M``).
    :param expansion_add: the insertion beam (higher: a better graph, slower to build).
    :param expansion_search: the search beam (higher: better recall, slower). The defaults were
        chosen with ``bench/semantic.py --speed``, which measures recall at k=4 against
        :class:`ExactIndex` on the same entries: at 1M entries, 32 found the same nearest entry
        as 64 for every near-duplicate query at under half the latency (recall@4 0.87 against
        0.89); settable later (:attr:`expansion_search`).
    :param exact_below: a partition's entries are scanned exactly until it holds more than this
        many, then moved into a graph (0: a graph from the first entry).
    :param threads: native threads for bulk inserts (:meth:`add_many`, :meth:`load`; 0: one per
        core).
    :param dtype: how a graph stores vectors: ``"i8"`` (the default: the graph walk reads a
        quarter of the bytes; the candidates it finds are re-scored against a float32 copy, so
        scores and saved vectors stay exact, for about 380 more bytes per entry than ``"f32"``),
        ``"f16"`` (half the bytes, 750 more per entry) or ``"f32"`` (one float32 copy, in the
        graph). At 1M synthetic entries, int8 searched at the recall of f16 with a 12 % lower
        median and a p99 of 0.86 ms against 1.9 ms (one run, same machine, alternating queries).
    :raises MissingExtraError: usearch is not installed.
    """

    kind: ClassVar[str] = "usearch"

    def __init__(
        self,
        dimension: int,
        *,
        clock: Callable[[], float] = time.time,
        connectivity: int = 16,
        expansion_add: int = 128,
        expansion_search: int = 32,
        exact_below: int = 256,
        threads: int = 0,
        dtype: str = "i8",
    ) -> None:
        super().__init__(dimension, clock=clock)
        try:
            import usearch.index  # noqa: F401
        except ImportError as exc:
            raise MissingExtraError("usearch", "semantic") from exc
        if isinstance(exact_below, bool) or not isinstance(exact_below, int) or exact_below < 0:
            raise ConfigError(f"exact_below must be an int >= 0, not {exact_below!r}")
        for name, value, low in (
            ("connectivity", connectivity, 2),
            ("expansion_add", expansion_add, 1),
            ("expansion_search", expansion_search, 1),
            ("threads", threads, 0),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be an int >= {low}, not {value!r}")
        if dtype not in {"f32", "f16", "i8"}:
            raise ConfigError(f"dtype must be 'f32', 'f16' or 'i8', not {dtype!r}")
        self._settings = _GraphSettings(
            connectivity, expansion_add, expansion_search, threads, dtype
        )
        self._exact_below = exact_below

    @property
    def expansion_search(self) -> int:
        """The search beam of every graph (settable: recall against latency, no rebuild)."""
        return self._settings.expansion_search

    @expansion_search.setter
    def expansion_search(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"expansion_search must be an int >= 1, not {value!r}")
        with self._lock:
            self._settings = replace(self._settings, expansion_search=value)
            for shard in self._shards.values():
                if isinstance(shard, _USearchShard):
                    shard.set_expansion_search(value)

    def _new_shard(self) -> _Shard:
        if self._exact_below > 0:
            return _ExactShard(self._dimension)
        return _USearchShard(self._dimension, self._settings)

    def _grown(self, shard: _Shard) -> _Shard:
        # A conversation partition usually holds a handful of entries: a numpy scan is faster
        # there than a graph and costs a fraction of its memory. Past ``exact_below`` entries the
        # shard moves into an HNSW graph (once; it does not move back when it shrinks).
        if not isinstance(shard, _ExactShard) or len(shard) <= self._exact_below:
            return shard
        graph = _USearchShard(self._dimension, self._settings)
        graph.add_many(shard.labels(), shard.rows())
        return graph


def _check_name(what: str, value: object) -> None:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{what} must be a non-empty str, not {value!r}")
    _check_encodable(what, value)


def _check_encodable(what: str, value: str) -> None:
    # The vector file stores text as UTF-8; a lone surrogate would only fail at save time.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ConfigError(f"{what} is not valid Unicode text: {value!r}") from None


def _check_expiry(expires_at: object) -> None:
    if expires_at is not None and (
        isinstance(expires_at, bool)
        or not isinstance(expires_at, int | float)
        or not math.isfinite(expires_at)
    ):
        raise ConfigError(f"expires_at must be a finite number or None, not {expires_at!r}")


def _expired(entry: _Entry, now: float) -> bool:
    return entry.expires_at is not None and entry.expires_at <= now
