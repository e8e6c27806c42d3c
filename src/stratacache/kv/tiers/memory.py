"""The host-memory KV store: blocks kept as tensors in this process, on the engine's store.

The engine's :class:`~stratacache.engine.Store` does the bookkeeping: a byte budget (a block weighs
its tensor bytes plus its key), W-TinyLFU admission (a block that one request stored once does not
push out blocks that many requests share) and eviction. This module adds what the engine does not
have: *pinning*.

A load first asks how many leading blocks are present, then reads them one by one; meanwhile
another request, or the load itself promoting blocks up from disk, stores new blocks, and the engine
may evict a block the load counted on but has not read yet. So a load pins the blocks it is about
to read. The engine has no notion of a pin, so pinning works around it: when the engine evicts a
pinned block (its ``on_evict`` listener reports it), the block is moved to a side table and stays
readable; when the last pin is released, the side table lets it go, and the eviction the engine
decided is complete. A pinned block is therefore never lost; the price is that resident bytes can
exceed the budget by the size of the blocks that were evicted while pinned, until they are unpinned.

Thread-safe: one re-entrant lock serialises every call (the engine reports evictions from inside
``set``, on the calling thread, so the listener runs while the lock is held).
"""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from stratacache.errors import ConfigError
from stratacache.kv.base import BlockKey, KVBlock, KVStats
from stratacache.kv.tiers._checks import check_blocks, check_keys, check_open

if TYPE_CHECKING:
    from stratacache.engine import RemovalCause

__all__ = ["HostMemoryKVStore"]


def _weigh(key: Any, block: Any) -> int:
    return len(key) + int(block.nbytes)


class HostMemoryKVStore:
    """KV blocks in host memory, bounded by bytes, with pinning.

    :param max_bytes: the budget for the blocks' tensor bytes (plus 32 bytes of key each).
    :param clock: monotonic seconds for the engine (default ``time.monotonic``).
    :param rng: the randomness of the engine's admission; seed it to replay a run exactly.
    :raises ConfigError: ``max_bytes`` that is not an int >= 1.

    >>> store = HostMemoryKVStore(max_bytes=1 << 20)
    >>> store.lookup([]), store.stats().stored_blocks
    (0, 0)
    """

    name: str = "memory"
    """The label for metrics and reports."""

    def __init__(
        self,
        max_bytes: int,
        *,
        clock: Callable[[], float] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 1:
            raise ConfigError(f"max_bytes must be an int >= 1, not {max_bytes!r}")
        from stratacache.engine import Store

        self._max_bytes = max_bytes
        self._lock = threading.RLock()
        self._pins: dict[bytes, int] = {}
        # Blocks the engine evicted while pinned: still readable until their last pin goes.
        self._held: dict[bytes, KVBlock] = {}
        self._store = Store(
            max_bytes=max_bytes, weigher=_weigh, clock=clock, on_evict=self._evicted, rng=rng
        )
        self._closed = False
        self._loaded = self._loaded_bytes = 0
        self._stored = self._stored_bytes = 0
        self._declined = 0
        self._evictions = 0

    @property
    def max_bytes(self) -> int:
        """The byte budget."""
        return self._max_bytes

    @property
    def resident_bytes(self) -> int:
        """Bytes held now, as weighed for the budget: the engine's entries plus pinned evictees.

        At most :attr:`max_bytes` plus the weight of the blocks evicted while pinned.
        """
        with self._lock:
            held = sum(_weigh(d, b) for d, b in self._held.items())
            return int(self._store.stats().bytes) + held

    @property
    def evictions(self) -> int:
        """Blocks the engine evicted or refused since creation, pinned ones counted on unpin."""
        return self._evictions

    def __len__(self) -> int:
        with self._lock:
            return len(self._store) + len(self._held)

    def _evicted(self, key: Any, value: Any, cause: RemovalCause) -> None:
        # Called by the engine from inside set(), on this thread, under self._lock.
        if key in self._pins:
            self._held[key] = value
        else:
            self._evictions += 1

    def _present(self, digest: bytes) -> bool:
        return digest in self._store or digest in self._held

    def lookup(self, keys: Sequence[BlockKey]) -> int:
        """How many leading ``keys`` are in memory (no effect on the policy)."""
        check_keys(keys)
        with self._lock:
            check_open(self._closed, self.name)
            count = 0
            for key in keys:
                if not self._present(key.digest):
                    break
                count += 1
            return count

    def load(self, keys: Sequence[BlockKey]) -> list[KVBlock]:
        """The blocks of the leading ``keys`` held in memory; each read counts as an access."""
        check_keys(keys)
        out: list[KVBlock] = []
        with self._lock:
            check_open(self._closed, self.name)
            for key in keys:
                block = self._store.get(key.digest)
                if block is None:
                    block = self._held.get(key.digest)
                    if block is None:
                        break
                out.append(block)
            self._loaded += len(out)
            self._loaded_bytes += sum(b.nbytes for b in out)
        return out

    def store(self, blocks: Mapping[BlockKey, KVBlock]) -> int:
        """Offer ``blocks`` to the engine; return how many are held afterwards.

        The engine may refuse a new block in favour of blocks it has seen more often; a block
        heavier than the whole budget is always refused.
        """
        items = check_blocks(blocks)
        held = 0
        with self._lock:
            check_open(self._closed, self.name)
            for key, block in items:
                digest = key.digest
                if digest in self._store:
                    held += 1
                    continue
                if self._store.set(digest, block):
                    # A pinned evictee stored again is back under the engine's control.
                    self._held.pop(digest, None)
                    self._stored += 1
                    self._stored_bytes += block.nbytes
                    held += 1
                elif digest in self._held:
                    held += 1  # refused again, but pinned: still readable
                else:
                    self._declined += 1
        return held

    def pin(self, keys: Sequence[BlockKey]) -> list[BlockKey]:
        """Protect the present ``keys`` from eviction until :meth:`unpin`; return those pinned."""
        check_keys(keys)
        pinned: list[BlockKey] = []
        with self._lock:
            check_open(self._closed, self.name)
            for key in keys:
                digest = key.digest
                if self._present(digest):
                    self._pins[digest] = self._pins.get(digest, 0) + 1
                    pinned.append(key)
        return pinned

    def unpin(self, keys: Sequence[BlockKey]) -> None:
        """Release one pin on each of ``keys``; a block evicted while pinned is dropped now."""
        check_keys(keys)
        with self._lock:
            for key in keys:
                digest = key.digest
                count = self._pins.get(digest, 0)
                if count > 1:
                    self._pins[digest] = count - 1
                elif count == 1:
                    del self._pins[digest]
                    if self._held.pop(digest, None) is not None:
                        self._evictions += 1

    def delete(self, keys: Sequence[BlockKey]) -> int:
        """Remove ``keys`` (pinned or not); return how many were present."""
        check_keys(keys)
        removed = 0
        with self._lock:
            check_open(self._closed, self.name)
            for key in keys:
                in_store = self._store.delete(key.digest)
                in_held = self._held.pop(key.digest, None) is not None
                removed += in_store or in_held
        return removed

    def clear(self) -> None:
        """Remove every block (pins stay counted, and protect blocks stored again)."""
        with self._lock:
            check_open(self._closed, self.name)
            self._store.clear()
            self._held.clear()

    def stats(self) -> KVStats:
        """The counters since creation."""
        with self._lock:
            return KVStats(
                loaded_blocks=self._loaded,
                loaded_bytes=self._loaded_bytes,
                stored_blocks=self._stored,
                stored_bytes=self._stored_bytes,
                declined_blocks=self._declined,
                corrupt_blocks=0,
            )

    def close(self) -> None:
        """Drop every block; later calls raise :class:`~stratacache.errors.TierError`."""
        with self._lock:
            if not self._closed:
                self._store.clear()
                self._held.clear()
                self._pins.clear()
                self._closed = True
