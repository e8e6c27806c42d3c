"""The Tier protocol: one seam for every place a cached record can live.

A tier maps a string key to a :class:`TierEntry`: the record's bytes (already serialised and signed by
``stratacache.llm.records``; a tier never looks inside them), its absolute expiry time, its tags and its
namespace. Tags and namespaces are kept beside the bytes so invalidation can find entries without
decoding them.

Times are wall-clock Unix seconds (``time.time``), not monotonic: a durable tier outlives the process,
and its expiry times must mean the same thing after a restart. Each tier takes an injected ``clock`` so
tests move time without sleeping.

The methods are coroutines because the shared tiers (Redis) do network I/O; the in-process tiers answer
without suspending. Every implementation must pass ``tests/tiers/contract.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "StaleWriteGuard", "Tier", "TierEntry", "driven_by_hand"]

driven_by_hand: ContextVar[bool] = ContextVar("stratacache_driven_by_hand", default=False)
"""True while a synchronous caller drives a tier's coroutine to completion by hand, without awaiting
it (:func:`stratacache.memoize` on a plain function). Such a coroutine must never suspend, even
when the calling thread happens to run an event loop, so an in-process tier that would hand work
to a thread (:class:`~stratacache.tiers.SQLiteTier`'s writer) waits for it in place instead."""

Clock = Callable[[], float]
"""A function returning the current wall-clock time in Unix seconds."""


@dataclass(frozen=True, slots=True)
class TierEntry:
    """What a tier stores under one key."""

    value: bytes
    """The serialised, signed record. Opaque to the tier."""
    expires_at: float | None = None
    """Unix seconds after which the entry must not be returned; ``None`` for no expiry."""
    tags: frozenset[str] = field(default_factory=frozenset)
    """Invalidation tags (``product:123``); :meth:`Tier.delete_tag` removes every entry carrying one."""
    namespace: str = ""
    """The namespace the key belongs to; :meth:`Tier.delete_namespace` removes all of them."""

    def expired(self, now: float) -> bool:
        """Whether the entry is past its expiry at time ``now``."""
        return self.expires_at is not None and self.expires_at <= now


@runtime_checkable
class Tier(Protocol):
    """A key -> :class:`TierEntry` store: in-process, embedded durable, or shared."""

    name: str
    """A short label for metrics and the ``X-Cache-Tier`` header: ``memory``, ``sqlite``, ``redis``."""

    async def get(self, key: str) -> TierEntry | None:
        """Return the live entry for ``key``, or ``None`` when absent or expired."""
        ...

    async def set(self, key: str, entry: TierEntry) -> bool:
        """Store ``entry`` under ``key``, replacing any previous one; ``False`` if the tier declined it."""
        ...

    async def delete(self, key: str) -> bool:
        """Remove ``key``; ``True`` if it was present."""
        ...

    async def delete_tag(self, tag: str) -> int:
        """Remove every entry carrying ``tag``; return how many were removed."""
        ...

    async def delete_namespace(self, namespace: str) -> int:
        """Remove every entry in ``namespace``; return how many were removed."""
        ...

    async def clear(self) -> None:
        """Remove every entry."""
        ...

    async def close(self) -> None:
        """Release connections and files. The tier is unusable afterwards."""
        ...


@runtime_checkable
class StaleWriteGuard(Protocol):
    """A tier that can tell a write would bring back what another instance invalidated.

    :class:`~stratacache.tiers.coherence.CoherentTier` is one: it hears the other instances'
    invalidations and keeps the recent ones. A writer takes a :meth:`mark` before it reads or
    fetches what it will write; :class:`~stratacache.tiers.chain.TierChain` then asks every such
    tier whether an invalidation heard since that mark concerns the entry, and writes nowhere (the
    shared tier included) when one does.
    """

    def mark(self) -> int:
        """A point in the sequence of invalidations heard: how many so far."""
        ...

    def stale(self, key: str, entry: TierEntry, since: int | None = None) -> bool:
        """Whether an invalidation heard since ``since`` (a :meth:`mark`; default: ``key``'s last
        miss in this tier) may concern ``entry``."""
        ...
