"""Tiers of KV stores, fastest first: host memory, then local disk, then Redis.

* **Lookup** walks the chain of keys across tiers: block 0 may be in memory, blocks 1-5 on disk and
  block 6 in memory again; the answer is how many leading blocks are available *anywhere*.
* **Load** reads each run of blocks from the fastest tier that has it and *promotes* what came from a
  slower tier into every faster one, so the next request finds it closer. Before reading, it pins
  the requested blocks in every tier that supports pinning: promotions made by this very load
  (or stores by other requests) could otherwise evict a block the load counted on but has not read.
* **Store** writes through to every tier; each tier's own admission decides what it keeps. With
  ``min_sightings=N`` a block is only written once it has been offered N times, so a prompt seen
  once does not churn the tiers; sightings are counted in a bounded engine store, so a block not
  seen for a long time is forgotten and starts again from one.

A tier that is down (:class:`~stratacache.errors.TierUnavailableError`) is skipped for that call
and logged: the request recomputes what it would have loaded.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from stratacache.errors import ConfigError, TierUnavailableError
from stratacache.kv.base import BlockKey, KVBlock, KVStats, KVStore, PinnableKVStore
from stratacache.kv.tiers._checks import check_blocks, check_keys, check_open

__all__ = ["TieredKVStore"]

logger = logging.getLogger("stratacache.kv.tiered")

_T = TypeVar("_T")


class TieredKVStore:
    """Several :class:`~stratacache.kv.KVStore` tiers behind one, fastest first.

    :param tiers: the tiers, fastest first. The tiered store owns them: :meth:`close` closes them.
    :param min_sightings: offers of a block before it is written (1: write on the first offer).
    :param sightings_capacity: how many distinct blocks the sighting counter remembers.
    :param rng: the randomness of the sighting counter's admission policy.
    :raises ConfigError: no tiers, something that is not a KVStore, or a bad count.
    """

    name: str = "tiered"
    """The label for metrics and reports."""

    def __init__(
        self,
        tiers: Sequence[KVStore],
        *,
        min_sightings: int = 1,
        sightings_capacity: int = 100_000,
        rng: random.Random | None = None,
    ) -> None:
        tiers = tuple(tiers)
        if not tiers:
            raise ConfigError("a tiered KV store needs at least one tier")
        for tier in tiers:
            if not isinstance(tier, KVStore):
                raise ConfigError(f"not a KVStore: {type(tier).__name__}")
        for name, value in (
            ("min_sightings", min_sightings),
            ("sightings_capacity", sightings_capacity),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be an int >= 1, not {value!r}")
        from stratacache.engine import Store

        self._tiers = tiers
        self._min_sightings = min_sightings
        self._sightings = (
            Store(max_entries=sightings_capacity, rng=rng) if min_sightings > 1 else None
        )
        self._lock = threading.Lock()
        self._closed = False
        self._loaded = self._loaded_bytes = 0
        self._stored = self._stored_bytes = 0
        self._declined = 0
        self._promoted = 0

    @property
    def tiers(self) -> tuple[KVStore, ...]:
        """The tiers, fastest first."""
        return self._tiers

    @property
    def promoted_blocks(self) -> int:
        """Blocks copied from a slower tier into faster ones by loads."""
        return self._promoted

    def _call(self, tier: KVStore, fallback: _T, method: Callable[..., _T], *args: Any) -> _T:
        """``method(*args)``, or ``fallback`` when ``tier`` is unavailable."""
        try:
            return method(*args)
        except TierUnavailableError as exc:
            logger.warning("KV tier %s unavailable, carrying on without it: %s", tier.name, exc)
            return fallback

    def lookup(self, keys: Sequence[BlockKey]) -> int:
        """How many leading ``keys`` are available in some tier (each block in any one of them)."""
        check_keys(keys)
        check_open(self._closed, self.name)
        pos = 0
        while pos < len(keys):
            rest = keys[pos:]
            for tier in self._tiers:
                found = self._call(tier, 0, tier.lookup, rest)
                if found:
                    pos += found
                    break
            else:
                break
        return pos

    def load(self, keys: Sequence[BlockKey]) -> list[KVBlock]:
        """Load the longest available leading run, each block from the fastest tier holding it.

        Blocks read from a slower tier are stored into every faster one.
        """
        check_keys(keys)
        check_open(self._closed, self.name)
        pins: list[tuple[PinnableKVStore, list[BlockKey]]] = []
        for tier in self._tiers:
            if isinstance(tier, PinnableKVStore):
                pins.append((tier, self._call(tier, [], tier.pin, keys)))
        out: list[KVBlock] = []
        try:
            while len(out) < len(keys):
                if not self._load_run(keys[len(out) :], out):
                    break
        finally:
            for tier, pinned in pins:
                tier.unpin(pinned)
        with self._lock:
            self._loaded += len(out)
            self._loaded_bytes += sum(b.nbytes for b in out)
        return out

    def _load_run(self, rest: Sequence[BlockKey], out: list[KVBlock]) -> bool:
        """Append the next run of ``rest`` from the fastest tier that has its first block."""
        for index, tier in enumerate(self._tiers):
            found = self._call(tier, 0, tier.lookup, rest)
            if not found:
                continue
            run = rest[:found]
            got: list[KVBlock] = self._call(tier, [], tier.load, run)
            if not got:
                continue  # lost or corrupt since the lookup: a slower tier may still have it
            out.extend(got)
            if index:
                promote = dict(zip(run, got, strict=False))
                for faster in self._tiers[:index]:
                    self._call(faster, 0, faster.store, promote)
                with self._lock:
                    self._promoted += len(got)
            return True
        return False

    def store(self, blocks: Mapping[BlockKey, KVBlock]) -> int:
        """Write ``blocks`` through to every tier (after enough sightings).

        Returns how many of them the tier that kept the most now holds. The ``stored_blocks``
        counter grows by the most any one tier newly wrote.
        """
        items = check_blocks(blocks)
        check_open(self._closed, self.name)
        if self._sightings is not None:
            wanted: dict[BlockKey, KVBlock] = {}
            for key, block in items:
                if self._sightings.incr(key.digest) >= self._min_sightings:
                    wanted[key] = block
            declined = len(items) - len(wanted)
        else:
            wanted = dict(items)
            declined = 0
        held = written = written_bytes = 0
        if wanted:
            for tier in self._tiers:
                before = tier.stats()
                held = max(held, self._call(tier, 0, tier.store, wanted))
                after = tier.stats()
                # New blocks are those some tier wrote; under concurrent stores this is the
                # tier's own count over the call, an approximation.
                if after.stored_blocks - before.stored_blocks > written:
                    written = after.stored_blocks - before.stored_blocks
                    written_bytes = after.stored_bytes - before.stored_bytes
        with self._lock:
            self._declined += declined
            self._stored += written
            self._stored_bytes += written_bytes
        return held

    def delete(self, keys: Sequence[BlockKey]) -> int:
        """Remove ``keys`` from every tier; return the largest count any tier removed."""
        check_keys(keys)
        check_open(self._closed, self.name)
        removed = 0
        for tier in self._tiers:
            removed = max(removed, self._call(tier, 0, tier.delete, keys))
        if self._sightings is not None:
            for key in keys:
                self._sightings.delete(key.digest)
        return removed

    def clear(self) -> None:
        """Clear every tier and forget every sighting."""
        check_open(self._closed, self.name)
        for tier in self._tiers:
            self._call(tier, None, tier.clear)
        if self._sightings is not None:
            self._sightings.clear()

    def stats(self) -> KVStats:
        """Blocks this store returned and passed down; corrupt blocks summed over the tiers."""
        corrupt = sum(tier.stats().corrupt_blocks for tier in self._tiers)
        with self._lock:
            return KVStats(
                loaded_blocks=self._loaded,
                loaded_bytes=self._loaded_bytes,
                stored_blocks=self._stored,
                stored_bytes=self._stored_bytes,
                declined_blocks=self._declined,
                corrupt_blocks=corrupt,
            )

    def tier_stats(self) -> dict[str, KVStats]:
        """Each tier's own counters, by tier name (``name#i`` when two tiers share a name)."""
        out: dict[str, KVStats] = {}
        for i, tier in enumerate(self._tiers):
            label = tier.name if tier.name not in out else f"{tier.name}#{i}"
            out[label] = tier.stats()
        return out

    def close(self) -> None:
        """Close every tier; later calls raise :class:`~stratacache.errors.TierError`."""
        if self._closed:
            return
        self._closed = True
        for tier in self._tiers:
            tier.close()
