"""Where cached records live: the Tier protocol, its implementations and the layered chain.

* :class:`MemoryTier`: the in-process L0, on the engine's store.
* :class:`SQLiteTier`: the embedded durable tier, one SQLite file in WAL mode.
* :class:`RedisTier`: the shared tier, on a Redis server several instances use.
* :class:`TierChain`: tiers layered fastest first, read through with backfill and written through.

Every tier stores :class:`TierEntry` objects whose bytes it never decodes, and passes the contract
suite in ``tests/tiers/contract.py``. The implementations load on first use, so importing the
protocol does not import the engine or ``sqlite3``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stratacache._lazy import lazy_exports
from stratacache.tiers.base import Clock, Tier, TierEntry

if TYPE_CHECKING:
    from stratacache.tiers.chain import TierChain
    from stratacache.tiers.memory import MemoryTier
    from stratacache.tiers.redis import RedisTier
    from stratacache.tiers.sqlite import SQLiteTier

__all__ = ["Clock", "MemoryTier", "RedisTier", "SQLiteTier", "Tier", "TierChain", "TierEntry"]

_LAZY = {
    "MemoryTier": "stratacache.tiers.memory",
    "RedisTier": "stratacache.tiers.redis",
    "SQLiteTier": "stratacache.tiers.sqlite",
    "TierChain": "stratacache.tiers.chain",
}


__getattr__, __dir__ = lazy_exports("stratacache.tiers", globals(), _LAZY, __all__)
