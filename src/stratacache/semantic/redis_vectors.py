"""A shared :class:`~stratacache.semantic.VectorIndex` on Redis 8 vector sets (VADD / VSIM).

Every instance pointed at the same server and prefix sees the same entries, so a paraphrase
answered through one proxy is a semantic hit on all of them. Layout, under ``prefix``
(default ``strata:vec:``)::

    {prefix}p:{partition}   vector set   one element per id: the float32 vector (NOQUANT, so
                                         scores are exact cosines), attributes {"t": text,
                                         "x": expires_at} (``x`` absent: no expiry)
    {prefix}ids             hash         id -> partition, so an id is found wherever it lives
    {prefix}meta            hash         dimension: the vector length every writer must use

One vector set per partition makes isolation structural, as in the in-process index: a search
names exactly one set and cannot see another partition's elements. Every write is one Lua
script, so the set and the ``ids`` hash change together. A search is a plain VSIM (one round
trip); the expired elements it meets are removed by a script that checks they are still expired,
and the search is repeated. Redis reports similarity as ``(1 + cos) / 2``; it is turned back into
the cosine the rest of the package uses.

Expiry is compared with the injected clock (the ``now`` each script is given), never with the
server's. Elements have no server TTL of their own; an expired element is dropped when a search
meets it or by :meth:`RedisVectorIndex.purge_expired`, which a maintenance job may run.

Failures: redis-py's errors are translated here, once: an unreachable or timed-out server is
:class:`~stratacache.errors.TierUnavailableError` (the semantic layer treats it as a miss), any
other server error :class:`~stratacache.errors.TierError`. The scripts touch keys they do not
declare, so Redis Cluster is not supported (as for the Redis tier).

This index is synchronous, like the :class:`~stratacache.semantic.VectorIndex` protocol: one call
is one round trip (about 0.1 ms on loopback) under a short socket timeout.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, TypeVar

from stratacache.errors import ConfigError, MissingExtraError, TierError, TierUnavailableError
from stratacache.semantic.backends import (
    REDIS_SCHEMES,
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
    from redis import Redis

    Vectors = npt.NDArray[np.float32]

__all__ = ["RedisVectorIndex"]

_T = TypeVar("_T")
_BATCH: Final = 500

# KEYS: ids hash. ARGV: prefix, id, partition, vector blob, attributes JSON.
# VADD comes first: if it fails (a server holding another dimension), nothing else has changed.
_ADD = """
local prefix, id, partition = ARGV[1], ARGV[2], ARGV[3]
local old = redis.call('HGET', KEYS[1], id)
redis.call('VADD', prefix .. 'p:' .. partition, 'FP32', ARGV[4], id, 'NOQUANT', 'SETATTR', ARGV[5])
if old and old ~= partition then redis.call('VREM', prefix .. 'p:' .. old, id) end
redis.call('HSET', KEYS[1], id, partition)
return 1
"""

# KEYS: ids hash. ARGV: prefix, ids... Returns how many were present.
_REMOVE = """
local removed = 0
for i = 2, #ARGV do
  local partition = redis.call('HGET', KEYS[1], ARGV[i])
  if partition then
    redis.call('VREM', ARGV[1] .. 'p:' .. partition, ARGV[i])
    redis.call('HDEL', KEYS[1], ARGV[i])
    removed = removed + 1
  end
end
return removed
"""

# KEYS: the partition's vector set, ids hash. Returns how many elements it held.
_REMOVE_PARTITION = """
local n = redis.call('VCARD', KEYS[1])
if n == 0 then return 0 end
local ids = redis.call('VRANDMEMBER', KEYS[1], n)  -- a positive count: every element, once
for _, id in ipairs(ids) do redis.call('HDEL', KEYS[2], id) end
redis.call('DEL', KEYS[1])
return #ids
"""

# KEYS: the partition's vector set, ids hash. ARGV: now, ids... Removes the ids still expired
# at ``now`` (another instance may have added one again since the search saw it expired).
_DROP_EXPIRED = """
local now, dropped = tonumber(ARGV[1]), 0
for i = 2, #ARGV do
  local attrs = redis.call('VGETATTR', KEYS[1], ARGV[i])
  local meta = attrs and cjson.decode(attrs) or {}
  if meta.x and meta.x <= now then
    redis.call('VREM', KEYS[1], ARGV[i])
    redis.call('HDEL', KEYS[2], ARGV[i])
    dropped = dropped + 1
  end
end
return dropped
"""

# KEYS: ids hash. ARGV: prefix, now, ids... Returns a flat list id, 1 (live) / 0 (expired or gone).
_LIVE = """
local out = {}
for i = 3, #ARGV do
  local id = ARGV[i]
  local partition = redis.call('HGET', KEYS[1], id)
  local live = 0
  if partition then
    local attrs = redis.call('VGETATTR', ARGV[1] .. 'p:' .. partition, id)
    local meta = attrs and cjson.decode(attrs) or {}
    if not (meta.x and meta.x <= tonumber(ARGV[2])) then live = 1 end
  end
  out[#out + 1] = id
  out[#out + 1] = live
end
return out
"""


def _triples(reply: Any) -> list[tuple[str, float, bytes | str | None]]:
    """``(id, similarity, attributes)`` from a VSIM ... WITHSCORES WITHATTRIBS reply, best first.

    redis-py >= 6 turns the reply into a dict ``{id: [score, attrs]}``; older clients return the
    flat RESP array ``id, score, attrs, ...``. Both are accepted.
    """
    if not reply:
        return []
    rows: list[tuple[str, float, bytes | str | None]] = []
    if isinstance(reply, dict):
        for id, value in reply.items():
            score, attrs = value if isinstance(value, list | tuple) else (value, None)
            rows.append((_text(id), float(score), attrs))
    else:
        flat = list(reply)
        rows = [(_text(flat[i]), float(flat[i + 1]), flat[i + 2]) for i in range(0, len(flat), 3)]
    rows.sort(key=lambda row: -row[1])  # stable: the server's order among equal scores
    return rows


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _redis() -> Any:
    try:
        import redis
        import redis.exceptions
    except ImportError as exc:
        raise MissingExtraError("redis", "redis") from exc
    return redis


class RedisVectorIndex:
    """A :class:`~stratacache.semantic.VectorIndex` on a Redis 8 server's vector sets.

    :param url: ``redis://``, ``rediss://`` or ``unix://`` (the index owns the client it builds),
        or ``None`` with ``client=``.
    :param dimension: the vector length; the server remembers it under ``{prefix}meta`` and an
        index of another dimension on the same prefix is refused.
    :param client: instead of ``url``, a synchronous ``redis.Redis`` that does not decode
        responses (the index does not close it).
    :param prefix: prepended to every key; instances share entries by sharing it.
    :param clock: wall-clock Unix seconds (default ``time.time``), compared with expiries.
    :param socket_timeout: with ``url``, the connect and command timeout in seconds.
    :param ef_search: the HNSW search beam (VSIM's EF); higher finds true neighbours more often.
    :raises ConfigError: neither or both of ``url`` and ``client``, a bad URL, prefix or number.
    :raises MissingExtraError: redis-py is not installed (the ``redis`` extra).
    :raises TierUnavailableError: the server cannot be reached.
    :raises TierError: the server has no vector sets (older than Redis 8), or holds vectors of
        another dimension under ``prefix``.
    """

    def __init__(
        self,
        url: str | None,
        dimension: int,
        *,
        client: Redis | None = None,
        prefix: str = "strata:vec:",
        clock: Callable[[], float] = time.time,
        socket_timeout: float = 0.5,
        ef_search: int = 100,
    ) -> None:
        self._dimension = checked_dimension(dimension)
        if (client is None) == (url is None):
            raise ConfigError("give RedisVectorIndex exactly one of url and client=")
        if not isinstance(prefix, str) or not prefix:
            raise ConfigError("the Redis key prefix must be a non-empty str")
        if isinstance(ef_search, bool) or not isinstance(ef_search, int) or ef_search < 1:
            raise ConfigError(f"ef_search must be a positive int, not {ef_search!r}")
        redis = _redis()
        self._errors = redis.exceptions
        if client is None:
            if not isinstance(url, str) or not url.startswith(REDIS_SCHEMES):
                raise ConfigError("the Redis URL must be redis://, rediss:// or unix://")
            try:
                client = redis.Redis.from_url(
                    url, socket_connect_timeout=socket_timeout, socket_timeout=socket_timeout
                )
            except ValueError as exc:
                raise ConfigError(f"bad Redis URL: {exc}") from None
            self._owns_client = True
        else:
            self._owns_client = False
        if client.get_connection_kwargs().get("decode_responses"):
            raise ConfigError("the Redis client must not decode responses: vectors are binary")
        self._client: Redis = client
        self.prefix = prefix
        """The key prefix shared by the instances that share this index."""
        self._ids = prefix + "ids"
        self._clock = clock
        self._ef = ef_search
        self._lock = threading.Lock()  # redis-py's pool is thread-safe; this guards _closed
        self._closed = False
        self._add = client.register_script(_ADD)
        self._remove = client.register_script(_REMOVE)
        self._remove_partition = client.register_script(_REMOVE_PARTITION)
        self._drop_expired = client.register_script(_DROP_EXPIRED)
        self._live = client.register_script(_LIVE)
        self._check_server()

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
        blob = unit_vector(vector, self._dimension).tobytes()
        attrs: dict[str, object] = {"t": text}
        if expires_at is not None:
            attrs["x"] = expires_at
        payload = json.dumps(attrs, ensure_ascii=True, separators=(",", ":"))
        self._call(self._add, keys=[self._ids], args=[self.prefix, id, partition, blob, payload])

    def remove(self, id: str) -> bool:
        """Remove ``id`` wherever it is; ``True`` if it was present."""
        return bool(self._call(self._remove, keys=[self._ids], args=[self.prefix, id]))

    def remove_partition(self, partition: str) -> int:
        """Remove every entry of ``partition``; return how many were removed."""
        checked_name("partition", partition)
        keys = [self._set_key(partition), self._ids]
        return int(self._call(self._remove_partition, keys=keys))

    def remove_where(self, predicate: Callable[[str], bool]) -> int:
        """Remove every entry whose id satisfies ``predicate``; return how many were removed.

        The ids are scanned in batches (HSCAN), so this costs one pass over the index.
        """
        doomed = [id for id in self._scan_ids() if predicate(id)]
        removed = 0
        for start in range(0, len(doomed), _BATCH):
            batch = doomed[start : start + _BATCH]
            removed += int(self._call(self._remove, keys=[self._ids], args=[self.prefix, *batch]))
        return removed

    def purge_expired(self) -> int:
        """Drop every expired entry now (one pass over the index); return how many."""
        now = repr(float(self._clock()))
        ids = self._scan_ids()
        dead: list[str] = []
        for start in range(0, len(ids), _BATCH):
            batch = ids[start : start + _BATCH]
            flat = self._call(self._live, keys=[self._ids], args=[self.prefix, now, *batch])
            dead.extend(flat[i].decode() for i in range(0, len(flat), 2) if not flat[i + 1])
        removed = 0
        for start in range(0, len(dead), _BATCH):
            batch = dead[start : start + _BATCH]
            removed += int(self._call(self._remove, keys=[self._ids], args=[self.prefix, *batch]))
        return removed

    def search(self, partition: str, vector: Vectors, k: int = 1) -> list[Match]:
        """Return up to ``k`` live entries of ``partition``, best score first.

        One VSIM round trip; when it meets expired entries they are removed (a second round
        trip) and the search is repeated, so they cannot crowd out live neighbours. VSIM is sent
        as a plain command, not inside a script, so the server may run it on a worker thread
        instead of blocking every other client for the length of the graph walk.
        """
        checked_k(k)
        checked_name("partition", partition)
        blob = unit_vector(vector, self._dimension).tobytes()
        key = self._set_key(partition)
        count = k
        while True:
            now = float(self._clock())
            reply = self._call(
                self._client.execute_command,
                "VSIM", key, "FP32", blob, "WITHSCORES", "WITHATTRIBS",
                "COUNT", count, "EF", max(self._ef, count),
            )  # fmt: skip
            live: list[Match] = []
            expired: list[str] = []
            for id, similarity, attrs in _triples(reply):
                meta = json.loads(attrs) if attrs else {}
                expires_at = meta.get("x")
                if expires_at is not None and expires_at <= now:
                    expired.append(id)
                else:
                    # VSIM scores (1 + cos) / 2; the package's unit is the cosine.
                    live.append(Match(id, min(2.0 * similarity - 1.0, 1.0), meta.get("t", "")))
            if not expired:
                return live
            args = [repr(now), *expired]
            dropped = self._call(self._drop_expired, keys=[key, self._ids], args=args)
            if len(live) >= k or not dropped:
                # Enough live ones; or another instance renewed the expired ones meanwhile,
                # and the next search will see them.
                return live[:k]
            count = k + len(expired)  # room for the live ones behind the next expired layer

    def __contains__(self, id: object) -> bool:
        """Whether a live entry is stored under ``id``."""
        if not isinstance(id, str):
            return False
        now = repr(float(self._clock()))
        flat = self._call(self._live, keys=[self._ids], args=[self.prefix, now, id])
        return bool(flat[1])

    def __len__(self) -> int:
        """How many entries are stored (expired ones not yet dropped included)."""
        return int(self._call(self._client.hlen, self._ids))

    def close(self) -> None:
        """Close the client the index built (a client you passed in is left open)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._owns_client:
            self._client.close()

    def __repr__(self) -> str:
        return f"RedisVectorIndex(prefix={self.prefix!r}, dimension={self._dimension})"

    # ---------------------------------------------------------------- internals

    def _set_key(self, partition: str) -> str:
        return f"{self.prefix}p:{partition}"

    def _scan_ids(self) -> list[str]:
        def scan() -> list[str]:
            return [id.decode() for id, _ in self._client.hscan_iter(self._ids, count=_BATCH)]

        return self._call(scan)

    def _check_server(self) -> None:
        """Refuse a server without vector sets, or a prefix holding another dimension."""
        meta = self.prefix + "meta"

        def check() -> bytes | None:
            self._client.hsetnx(meta, "dimension", str(self._dimension))
            stored = self._client.hget(meta, "dimension")
            return stored if isinstance(stored, bytes) else None

        stored = self._call(check)
        if stored is not None and int(stored) != self._dimension:
            raise TierError(
                f"the Redis vector index under {self.prefix!r} holds {int(stored)}-d vectors,"
                f" expected {self._dimension} (was the embedder changed? use another prefix)"
            )
        try:
            self._call(self._client.execute_command, "VCARD", self.prefix + "probe")
        except TierError as exc:
            if isinstance(exc, TierUnavailableError):
                raise
            raise TierError(
                "the Redis server has no vector sets (VADD/VSIM need Redis 8 or later)"
            ) from exc

    def _call(self, func: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Run one Redis call, translating redis-py's errors once, here."""
        if self._closed:
            raise TierError("the Redis vector index is closed")
        errors = self._errors
        try:
            return func(*args, **kwargs)
        except (
            errors.ConnectionError,
            errors.TimeoutError,
            errors.BusyLoadingError,
            OSError,
            TimeoutError,
        ) as exc:
            raise TierUnavailableError(f"the Redis vector index is unavailable: {exc!r}") from exc
        except errors.RedisError as exc:
            raise TierError(f"the Redis vector index failed: {exc!r}") from exc
