"""Build the tier chain a deployment's settings describe: ``memory``, ``sqlite``, ``redis``.

The proxy (and anything else that starts from a :class:`~stratacache.config.Settings`) calls
:func:`build_chain` so the choice of tiers lives in one place. ``settings.chain_tiers`` lists the
tiers fastest first; each is built from its own settings and shares the one ``clock``. When Redis
is in the chain, the instance's own tiers (the L0 and the SQLite file, wherever they stand) are made
coherent with the other instances' (see :mod:`stratacache.tiers.coherence`), since without it an
instance would keep serving an entry another instance replaced or invalidated. So the SQLite file,
too, starts empty and is emptied whenever the invalidation channel is lost: what it held may have
been invalidated meanwhile, and Redis still has the entries that were not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from stratacache.tiers.base import Clock, Tier
from stratacache.tiers.chain import TierChain

if TYPE_CHECKING:
    from stratacache.config import Settings

__all__ = ["build_chain"]


def build_chain(settings: Settings, *, clock: Clock) -> TierChain:
    """The :class:`TierChain` of ``settings.chain_tiers``, every tier on ``clock``.

    The SQLite file is ``settings.database`` (its directory must exist). Nothing connects yet:
    the Redis client opens its connections on first use, inside the running event loop.
    """
    names = settings.chain_tiers
    redis_tier = None
    if "redis" in names:
        from stratacache.tiers.redis import RedisTier

        assert settings.redis_url is not None  # Settings checked it
        redis_tier = RedisTier(
            settings.redis_url,
            prefix=settings.redis_prefix,
            clock=clock,
            socket_timeout=settings.redis_timeout,
        )
    tiers: list[Tier] = []
    for name in names:
        if name == "memory":
            from stratacache.tiers.memory import MemoryTier

            memory = MemoryTier(
                max_entries=settings.memory_max_entries,
                max_bytes=settings.memory_max_bytes,
                clock=clock,
            )
            if redis_tier is not None:
                from stratacache.tiers.coherence import CoherentTier

                tiers.append(CoherentTier(memory, redis_tier))
            else:
                tiers.append(memory)
        elif name == "sqlite":
            from stratacache.tiers.sqlite import SQLiteTier

            sqlite = SQLiteTier(settings.database, max_bytes=settings.sqlite_max_bytes, clock=clock)
            if redis_tier is not None:
                # The file is this instance's own: it must forget what other instances
                # invalidate in Redis, as the L0 does, or it would serve it (see coherence).
                from stratacache.tiers.coherence import CoherentTier

                tiers.append(CoherentTier(sqlite, redis_tier))
            else:
                tiers.append(sqlite)
        else:
            assert redis_tier is not None
            tiers.append(redis_tier)
    return TierChain(tiers, clock=clock)
