"""Tiers layered fastest first, used as one tier: read through with backfill, write through.

A read tries each tier in order. A hit in a slower tier is copied into every faster tier above it
with the *same* ``expires_at``, so a faster tier never serves an entry longer than the tier it came
from would. A write goes to every tier (the L0 may decline, for size or admission). Invalidations
go to every tier, slowest first: were the fast tier emptied first, a read racing with the
invalidation could miss there, hit the slow tier before its turn came, and copy the stale entry
back up.

Availability. A tier that raises :class:`~stratacache.errors.TierUnavailableError` during a read or
a write is skipped, so the chain keeps answering from the others; :attr:`TierChain.health` says
which tiers answered their last call, and a change is logged once (down, then up again), not on
every call. An invalidation cannot be skipped that way, because the tier that missed it would serve
the entry again once it came back: it is applied to every tier that answers, and then the first
``TierUnavailableError`` is raised so the caller knows it is incomplete. Any other exception
propagates at once.

Backfill and concurrency. A slow tier (Redis) suspends the read; a write or invalidation of the
same key meanwhile would be undone by copying what the read found. The chain counts its writes and
invalidations, and a read backfills only if none happened since it started: cheap, and with
in-process tiers (which never suspend) the count never moves during a read.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, TypeVar

from stratacache.errors import ConfigError, TierUnavailableError
from stratacache.tiers._checks import check_entry, check_key
from stratacache.tiers.base import Clock, StaleWriteGuard, Tier, TierEntry

__all__ = ["TierChain"]

logger = logging.getLogger("stratacache.tiers.chain")

_T = TypeVar("_T")


class TierChain:
    """Several tiers, fastest first, behaving as one :class:`~stratacache.tiers.Tier`.

    :param tiers: the tiers, fastest first (``[MemoryTier(), SQLiteTier(path)]``). Their names must
        differ: they label hits and health.
    :param clock: wall-clock Unix seconds (default ``time.time``). An entry that a slow tier found
        live but that has expired by this clock when the answer arrives is a miss, and is not
        copied upward.
    :raises ConfigError: no tiers, or two with the same name.

    Counts returned by :meth:`delete_tag` and :meth:`delete_namespace` are the largest count any
    one tier reported, not the sum: the tiers hold copies of the same entries, so a sum would count
    an entry once per tier that held it.
    """

    def __init__(self, tiers: Sequence[Tier], *, clock: Clock = time.time) -> None:
        self._tiers: tuple[Tier, ...] = tuple(tiers)
        if not self._tiers:
            raise ConfigError("a TierChain needs at least one tier")
        names = [tier.name for tier in self._tiers]
        if len(set(names)) != len(names):
            raise ConfigError(f"the tiers of a chain need distinct names, got {names}")
        self.name: str = "+".join(names)
        """The tiers' names joined by ``+``: ``memory+sqlite``."""
        self._clock = clock
        self._health: dict[str, bool] = dict.fromkeys(names, True)
        self._writes = 0  # writes and invalidations so far; see "Backfill and concurrency"
        self._key_locks: dict[str, list[Any]] = {}  # key -> [asyncio.Lock, writers using it]
        self._guards = tuple(t for t in self._tiers if isinstance(t, StaleWriteGuard))

    @property
    def tiers(self) -> tuple[Tier, ...]:
        """The tiers, fastest first."""
        return self._tiers

    @property
    def health(self) -> Mapping[str, bool]:
        """Tier name -> whether it answered its last call (a read-only live view)."""
        return MappingProxyType(self._health)

    async def lookup(self, key: str) -> tuple[TierEntry, str] | None:
        """Return the live entry for ``key`` and the name of the tier that had it, or ``None``.

        On a hit in a slower tier the entry is copied into every faster tier, unchanged (same bytes,
        tags, namespace and ``expires_at``). A tier that is unavailable counts as a miss.
        """
        check_key(key)
        writes = self._writes
        for depth, tier in enumerate(self._tiers):
            try:
                entry = await tier.get(key)
            except TierUnavailableError as exc:
                self._mark_down(tier, exc)
                continue
            self._mark_up(tier)
            if entry is None or entry.expired(self._clock()):
                # Expired on its way from a slow tier: the chain never returns an expired entry.
                continue
            if depth and self._writes == writes:
                await self._backfill(key, entry, self._tiers[:depth])
            return entry, tier.name
        return None

    async def get(self, key: str) -> TierEntry | None:
        """Return the live entry for ``key`` from the fastest tier holding it (:meth:`lookup`)."""
        found = await self.lookup(key)
        return None if found is None else found[0]

    def mark(self) -> tuple[int, ...]:
        """Where each tier that hears other instances' invalidations stands (a
        :class:`~stratacache.tiers.base.StaleWriteGuard`): take it before reading or fetching what
        will be written, and pass it to :meth:`set` as ``since``. Empty without such tiers."""
        return tuple(guard.mark() for guard in self._guards)

    async def set(
        self, key: str, entry: TierEntry, *, since: tuple[int, ...] | None = None
    ) -> bool:
        """Write ``entry`` to every tier; ``True`` if at least one kept it.

        Nothing is written when a tier that hears other instances' invalidations
        (a :class:`~stratacache.tiers.base.StaleWriteGuard`) says one heard since ``since`` (a
        :meth:`mark`; by default, since the key last missed there) may concern the entry.

        A tier that is unavailable is skipped; it may hold an older entry for ``key`` when it
        comes back, which later writes and invalidations replace.
        """
        check_key(key)
        check_entry(entry)
        self._writes += 1
        # Writes to one key go through the tiers one at a time: two concurrent writes that
        # interleaved across a suspending tier (Redis) could land in opposite orders in L0 and
        # below, leaving the tiers disagreeing about the key's value for good.
        slot = self._key_locks.get(key)
        if slot is None:
            slot = self._key_locks[key] = [asyncio.Lock(), 0]
        slot[1] += 1  # writers holding or awaiting this key's lock
        try:
            async with slot[0]:
                marks = since if since is not None else (None,) * len(self._guards)
                if any(g.stale(key, entry, m) for g, m in zip(self._guards, marks, strict=True)):
                    # Another instance invalidated what this entry may belong to after it was
                    # read or fetched here: written anywhere (the shared tier included), it
                    # would bring back what was invalidated, for every instance.
                    return False
                stored = False
                for tier in self._tiers:
                    try:
                        stored = await tier.set(key, entry) or stored
                    except TierUnavailableError as exc:
                        self._mark_down(tier, exc)
                        continue
                    self._mark_up(tier)
                return stored
        finally:
            slot[1] -= 1
            if not slot[1]:
                del self._key_locks[key]

    async def delete(self, key: str) -> bool:
        """Remove ``key`` from every tier; ``True`` if any of them had a live entry."""
        check_key(key)
        results = await self._invalidate(lambda tier: tier.delete(key))
        return any(results)

    async def delete_tag(self, tag: str) -> int:
        """Remove every entry carrying ``tag`` from every tier; return the largest count."""
        check_key(tag)
        return max(await self._invalidate(lambda tier: tier.delete_tag(tag)), default=0)

    async def delete_namespace(self, namespace: str) -> int:
        """Remove every entry in ``namespace`` from every tier; return the largest count."""
        check_key(namespace)
        results = await self._invalidate(lambda tier: tier.delete_namespace(namespace))
        return max(results, default=0)

    async def clear(self) -> None:
        """Remove every entry from every tier."""
        await self._invalidate(lambda tier: tier.clear())

    async def close(self) -> None:
        """Close every tier, even if one fails; the first failure is raised afterwards."""
        error: BaseException | None = None
        for tier in self._tiers:
            try:
                await tier.close()
            except Exception as exc:
                error = error or exc
        if error is not None:
            raise error

    # -------------------------------------------------------------- internals

    async def _backfill(self, key: str, entry: TierEntry, faster: Sequence[Tier]) -> None:
        for tier in faster:
            try:
                await tier.set(key, entry)
            except TierUnavailableError as exc:
                self._mark_down(tier, exc)
            else:
                self._mark_up(tier)

    async def _invalidate(self, call: Callable[[Tier], Awaitable[_T]]) -> list[_T]:
        """Apply ``call`` to every tier, slowest first; raise the first outage at the end."""
        self._writes += 1
        results: list[_T] = []
        outage: TierUnavailableError | None = None
        for tier in reversed(self._tiers):
            try:
                results.append(await call(tier))
            except TierUnavailableError as exc:
                self._mark_down(tier, exc)
                outage = outage or exc
                continue
            self._mark_up(tier)
        if outage is not None:
            raise outage
        return results

    def _mark_down(self, tier: Tier, exc: TierUnavailableError) -> None:
        if self._health[tier.name]:
            self._health[tier.name] = False
            logger.warning("tier %s is unavailable, serving from the others: %s", tier.name, exc)

    def _mark_up(self, tier: Tier) -> None:
        if not self._health[tier.name]:
            self._health[tier.name] = True
            logger.info("tier %s is available again", tier.name)

    def __repr__(self) -> str:
        return f"TierChain({list(self._tiers)!r})"
