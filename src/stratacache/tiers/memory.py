"""The in-process tier (L0): the engine's :class:`~stratacache.engine.Store` as a Tier.

The store keeps the entries, their expiry (a TTL of ``expires_at - clock()``) and the W-TinyLFU
policy; this module adds what the store does not know about: tags and namespaces. It keeps two
indexes, tag -> keys and namespace -> keys, so :meth:`MemoryTier.delete_tag` and
:meth:`MemoryTier.delete_namespace` cost time in proportion to the entries they remove, not to the
size of the cache.

The indexes must forget a key whenever the store drops it. Writes and deletes through the tier
update them directly; entries the store removes on its own (evicted for size, refused admission,
expired) are reported by the store's ``on_evict`` listener, which the tier installs on the store it
builds. Every index update is keyed by the identity of the entry object, so a late eviction report
for a value that has since been replaced leaves the new entry indexed.

The tier is meant for one event loop: the store is thread-safe, the indexes are not.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Final, TypeAlias

from stratacache.errors import ConfigError, TierError
from stratacache.tiers._checks import check_entry, check_key
from stratacache.tiers.base import Clock, TierEntry

if TYPE_CHECKING:
    from stratacache.engine import RemovalCause, Store

__all__ = ["MemoryTier"]

_ENTRY_OVERHEAD: Final = 128  # bytes: the TierEntry object, its frozenset and the index slots

_MIN_PRUNE: Final = 1024  # index size below which a borrowed store's index is never swept

_Keys: TypeAlias = set[str]  # spelled once here: inside the class, ``set`` is the method


class MemoryTier:
    """The L0 tier: entries in this process's memory, bounded by count and/or bytes.

    :param store: the engine store to keep the entries in. Leave it ``None`` to let the tier build
        one with ``max_entries``, ``max_bytes``, :meth:`weigh` and ``clock``: only then can the tier
        listen to the store's evictions and drop evicted keys from its indexes at once. A store you
        pass must be used by this tier alone (its values are :class:`TierEntry` objects) and should
        be built with ``weigher=MemoryTier.weigh``; the tier then sweeps evicted keys out of its
        indexes from time to time instead.
    :param max_entries: at most this many entries (``None``: no limit on the count).
    :param max_bytes: at most this many bytes, as weighed by :meth:`weigh` (``None``: no limit).
    :param clock: wall-clock Unix seconds (default ``time.time``), the time ``expires_at`` is
        compared with; tests pass a fake.
    :raises ConfigError: ``store`` together with ``max_entries`` or ``max_bytes``, or a bad limit.

    >>> import asyncio
    >>> from stratacache.tiers import TierEntry
    >>> tier = MemoryTier(max_entries=1000)
    >>> asyncio.run(tier.set("k", TierEntry(b"v", tags=frozenset({"t"}))))
    True
    >>> asyncio.run(tier.delete_tag("t"))
    1
    """

    name: str = "memory"
    """The label used for metrics and the ``X-Cache-Tier`` header."""

    def __init__(
        self,
        store: Store | None = None,
        *,
        max_entries: int | None = None,
        max_bytes: int | None = None,
        clock: Clock = time.time,
    ) -> None:
        self._clock = clock
        self._entries: dict[str, TierEntry] = {}  # what the indexes hold, by key
        self._by_tag: dict[str, _Keys] = {}
        self._by_namespace: dict[str, _Keys] = {}
        self._closed = False
        if store is None:
            from stratacache.engine import Store

            # The store shares the tier's clock, so it expires an entry when the tier would.
            self._store = Store(
                max_entries=max_entries,
                max_bytes=max_bytes,
                weigher=self.weigh,
                clock=clock,
                on_evict=self._on_evict,
            )
            self._prune_at: float = float("inf")  # the listener keeps the indexes exact
        else:
            if max_entries is not None or max_bytes is not None:
                raise ConfigError(
                    "pass max_entries/max_bytes to the Store you give MemoryTier, not to MemoryTier"
                )
            self._store = store
            self._prune_at = _MIN_PRUNE

    @staticmethod
    def weigh(key: Any, entry: Any) -> int:
        """The weight of an entry in bytes: its value, key, tags and namespace, plus an overhead."""
        if not isinstance(entry, TierEntry):
            return _ENTRY_OVERHEAD
        weight = len(entry.value) + len(key) + len(entry.namespace) + _ENTRY_OVERHEAD
        for tag in entry.tags:
            weight += len(tag)
        return weight

    @property
    def store(self) -> Store:
        """The engine store underneath, for its statistics (do not write to it directly)."""
        return self._store

    # ---------------------------------------------------------------- the Tier

    async def get(self, key: str) -> TierEntry | None:
        """Return the live entry for ``key``, or ``None`` when absent or expired."""
        check_key(key)
        self._check_open()
        entry: TierEntry | None = self._store.get(key)
        if entry is None:
            return None
        if entry.expired(self._clock()):
            # A borrowed store may run on another clock; the tier's clock decides.
            self._store.delete(key)
            self._unindex(key)
            return None
        return entry

    async def set(self, key: str, entry: TierEntry) -> bool:
        """Store ``entry`` under ``key``, replacing any previous entry.

        Returns ``False``, leaving ``key`` absent, when the entry has already expired, is heavier
        than the whole budget, or the store's admission policy turned it away.
        """
        check_key(key)
        check_entry(entry)
        self._check_open()
        now = self._clock()
        self._unindex(key)
        if entry.expired(now):
            self._store.delete(key)
            return False
        # Index first: if the store evicts the new entry during set(), the listener finds it
        # indexed and removes it again; indexing afterwards would leave a key the store dropped.
        self._index(key, entry)
        ttl = None if entry.expires_at is None else entry.expires_at - now
        try:
            stored = self._store.set(key, entry, ttl)
        except BaseException:
            self._unindex(key)
            self._store.delete(key)
            raise
        if not stored and self._entries.get(key) is entry:
            self._unindex(key)  # the store dropped the previous value as well
        if len(self._entries) >= self._prune_at:
            self._prune()
        return stored

    async def delete(self, key: str) -> bool:
        """Remove ``key``; ``True`` if a live entry was there."""
        check_key(key)
        self._check_open()
        return self._remove(key, self._clock())

    async def delete_tag(self, tag: str) -> int:
        """Remove every entry carrying ``tag``, in every namespace; return how many were live."""
        check_key(tag)
        self._check_open()
        return self._remove_all(self._by_tag.get(tag))

    async def delete_namespace(self, namespace: str) -> int:
        """Remove every entry in ``namespace``; return how many were live."""
        check_key(namespace)
        self._check_open()
        return self._remove_all(self._by_namespace.get(namespace))

    async def clear(self) -> None:
        """Remove every entry."""
        self._check_open()
        self._store.clear()
        self._entries.clear()
        self._by_tag.clear()
        self._by_namespace.clear()

    async def close(self) -> None:
        """Drop every entry; later calls raise :class:`~stratacache.errors.TierError`."""
        if not self._closed:
            await self.clear()
            self._closed = True

    # -------------------------------------------------------------- internals

    def _check_open(self) -> None:
        if self._closed:
            raise TierError("the memory tier is closed")

    def _remove(self, key: str, now: float) -> bool:
        entry: TierEntry | None = self._store.peek(key)
        self._store.delete(key)
        self._unindex(key)
        return entry is not None and not entry.expired(now)

    def _remove_all(self, keys: _Keys | None) -> int:
        if not keys:
            return 0
        now = self._clock()
        # A copy: each removal edits the set being walked.
        return sum(self._remove(key, now) for key in list(keys))

    def _index(self, key: str, entry: TierEntry) -> None:
        self._entries[key] = entry
        for tag in entry.tags:
            self._by_tag.setdefault(tag, set()).add(key)
        self._by_namespace.setdefault(entry.namespace, set()).add(key)

    def _unindex(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        for tag in entry.tags:
            self._discard(self._by_tag, tag, key)
        self._discard(self._by_namespace, entry.namespace, key)

    @staticmethod
    def _discard(index: dict[str, _Keys], name: str, key: str) -> None:
        keys = index.get(name)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del index[name]  # so a tag used once does not stay in memory forever

    def _on_evict(self, key: Any, value: Any, cause: RemovalCause) -> None:
        """The store's listener: it removed ``value`` on its own (size, admission or expiry)."""
        if self._entries.get(key) is value:
            self._unindex(key)

    def _prune(self) -> None:
        """Drop index entries whose key a borrowed store evicted without telling the tier."""
        peek = self._store.peek
        for key, entry in list(self._entries.items()):
            if peek(key) is not entry:
                self._unindex(key)
        self._prune_at = max(_MIN_PRUNE, 2 * len(self._entries))

    def __repr__(self) -> str:
        return f"MemoryTier(entries={len(self._entries)}, closed={self._closed})"
