"""Coherent local tiers: each instance's own tiers forget what another instance changed in Redis.

Every write and invalidation through a :class:`~stratacache.tiers.redis.RedisTier` is published on
its channel by the same Lua script that makes the change (see that module): ``origin`` (16
characters, the publishing tier's id), one letter for the kind (``w`` a key written, ``k`` a key
deleted, ``t`` tag, ``n`` namespace, ``c`` clear), then the name. :class:`CoherentTier` wraps
one tier that only this instance sees (its L0; its SQLite file, when the chain has one) and runs
one subscriber task that applies every message from *another* origin to it (its own changes are
already there). Below, "the L0" stands for whichever local tier is wrapped.

Losing the subscription means missing invalidations, so the L0 is only used while the subscription
is confirmed: until the first confirmation, and from the moment the connection fails until it is
confirmed again, reads miss and writes are declined, and the L0 is emptied on both edges. The
chain then serves from its slower tiers and the upstream; nothing errors. A silent connection is
caught by a PING every ``heartbeat`` seconds: no answer within three heartbeats counts as lost.

A read that races with an invalidation. The chain reads Redis after an L0 miss and copies what it
found into the L0 (backfill); if another instance replaced the entry in between, the copy would be
stale. So the tier notes, at each L0 miss, how many invalidations it had applied; a later ``set`` of
that key is declined when an invalidation that could concern it (the key, one of the entry's tags,
its namespace, or a clear) arrived since. Only the most recent invalidations are remembered
(``history``); a miss older than those is declined too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Final

from stratacache.errors import ConfigError, TierError
from stratacache.tiers.base import Tier, TierEntry
from stratacache.tiers.redis import ORIGIN_BYTES, RedisTier

__all__ = ["CoherentTier"]

logger = logging.getLogger("stratacache.tiers.coherence")

_MAX_PENDING: Final = 65_536  # L0 misses remembered; the oldest are forgotten first


class CoherentTier:
    """An L0 tier kept coherent with other instances through ``redis``'s invalidation channel.

    :param local: the in-process tier (a :class:`~stratacache.tiers.MemoryTier`); this tier owns it
        and closes it.
    :param redis: the shared tier whose channel to follow (not closed by this tier).
    :param heartbeat: seconds between PINGs on an idle subscription.
    :param history: how many recent invalidations are kept to check backfills against.
    :param retry_delay: seconds between two attempts to subscribe again after a failure.
    :param timer: a monotonic clock for the heartbeat.

    The subscriber task starts on the first call, in the running event loop, and stops in
    :meth:`close`; that first call waits up to ``startup_wait`` seconds for the subscription, so a
    fresh instance uses its L0 from its first request on. :attr:`subscribed` says whether the L0
    is in use.
    """

    def __init__(
        self,
        local: Tier,
        redis: RedisTier,
        *,
        heartbeat: float = 1.0,
        history: int = 4096,
        retry_delay: float = 0.5,
        startup_wait: float = 0.5,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        if not isinstance(redis, RedisTier):
            raise ConfigError("CoherentTier follows a RedisTier's channel")
        if not heartbeat > 0 or not history >= 1 or not retry_delay > 0:
            raise ConfigError("heartbeat and retry_delay must be > 0 seconds, history >= 1")
        self.name: str = local.name
        """The wrapped tier's name (``memory``)."""
        self._local = local
        self._redis = redis
        self._heartbeat = float(heartbeat)
        self._retry_delay = float(retry_delay)
        self._startup_wait = float(startup_wait)
        self._confirmed: asyncio.Event | None = None  # made in the loop, by the first call
        self._timer = timer
        self._subscribed = False
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._applied = 0  # remote invalidations applied so far
        self._recent: deque[tuple[int, str, str]] = deque(maxlen=history)  # (number, kind, name)
        # The invalidations alone (no writes), numbered apart: what mark() and stale(since=...)
        # read. Another instance's write of a key is an answer as good as ours; its deletion of
        # it, or of a tag or namespace, means what we are fetching may be out of date.
        self._invalidations = 0
        self._recent_invalidations: deque[tuple[int, str, str]] = deque(maxlen=history)
        self._pending: dict[str, int] = {}  # key -> _applied at its last L0 miss

    @property
    def local(self) -> Tier:
        """The wrapped in-process tier."""
        return self._local

    @property
    def subscribed(self) -> bool:
        """Whether the subscription is confirmed, so the L0 is in use."""
        return self._subscribed

    async def wait_subscribed(self, timeout: float = 10.0) -> None:
        """Start the subscriber if needed and wait until it is confirmed.

        :raises TimeoutError: not confirmed within ``timeout`` seconds.
        """
        await self._start()
        async with asyncio.timeout(timeout):
            while not self._subscribed:
                assert self._confirmed is not None
                self._confirmed.clear()
                await self._confirmed.wait()

    @property
    def applied(self) -> int:
        """How many invalidations from other instances were applied to the L0."""
        return self._applied

    # ---------------------------------------------------------------- the Tier

    async def get(self, key: str) -> TierEntry | None:
        """The L0's entry for ``key``; ``None`` while not subscribed."""
        await self._start()
        if not self._subscribed:
            return None
        entry = await self._local.get(key)
        if entry is None:
            self._pending.pop(key, None)  # re-inserted at the end: the dict stays oldest first
            self._pending[key] = self._applied
            if len(self._pending) > _MAX_PENDING:
                del self._pending[next(iter(self._pending))]
        return entry

    def mark(self) -> int:
        """How many invalidations (not writes) from other instances were heard so far, a lost
        channel counting as one that concerns everything: pass it back to :meth:`stale` to ask
        about the ones heard since."""
        return self._invalidations

    def stale(self, key: str, entry: TierEntry, since: int | None = None) -> bool:
        """Whether ``entry`` may be out of date for what was heard here.

        With ``since`` (a :meth:`mark` taken before the answer was read or fetched): whether an
        invalidation heard since then may concern it. Without: whether a write or invalidation
        heard since ``key``'s last L0 miss may (the backfill rule of the module's docstring).
        Forgotten history counts as concerning it.
        """
        if since is None:
            missed = self._pending.get(key)
            return missed is not None and self._invalidated(key, entry, missed)
        return _concerns(self._recent_invalidations, self._invalidations, since, key, entry)

    async def set(self, key: str, entry: TierEntry) -> bool:
        """Store in the L0, unless not subscribed or an invalidation may have made ``entry`` stale."""
        await self._start()
        since = self._pending.pop(key, None)
        if not self._subscribed or (since is not None and self._invalidated(key, entry, since)):
            await self._local.delete(key)
            return False
        return await self._local.set(key, entry)

    async def delete(self, key: str) -> bool:
        """Remove ``key`` from the L0."""
        await self._start()
        return await self._local.delete(key)

    async def delete_tag(self, tag: str) -> int:
        """Remove every L0 entry carrying ``tag``."""
        await self._start()
        return await self._local.delete_tag(tag)

    async def delete_namespace(self, namespace: str) -> int:
        """Remove every L0 entry in ``namespace``."""
        await self._start()
        return await self._local.delete_namespace(namespace)

    async def clear(self) -> None:
        """Empty the L0."""
        await self._start()
        await self._local.clear()

    async def close(self) -> None:
        """Stop the subscriber and close the L0."""
        if self._closed:
            return
        self._closed = True
        self._subscribed = False
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._local.close()

    # -------------------------------------------------------------- internals

    async def _start(self) -> None:
        if self._closed:
            raise TierError("the coherent tier is closed")
        if self._task is None:
            self._confirmed = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._listen())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._startup_wait):
                    await self._confirmed.wait()

    def _invalidated(self, key: str, entry: TierEntry, since: int) -> bool:
        return _concerns(self._recent, self._applied, since, key, entry)

    def _gap(self) -> None:
        """The channel was lost or (re)confirmed: whatever was sent meanwhile went unheard, so
        every mark taken before now must count as invalidated (as by a clear)."""
        self._invalidations += 1
        self._recent_invalidations.append((self._invalidations, "c", ""))

    async def _listen(self) -> None:
        while not self._closed:
            try:
                await self._follow()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._subscribed:
                    logger.warning("lost the invalidation channel; L0 off until back: %r", exc)
                else:
                    logger.debug("cannot follow the invalidation channel: %r", exc)
            await self._lost()
            if self._confirmed is not None:
                self._confirmed.set()  # an attempt ended: a first call waits no longer
            await asyncio.sleep(self._retry_delay)

    async def _lost(self) -> None:
        self._subscribed = False
        self._pending.clear()
        self._gap()
        await self._local.clear()

    async def _follow(self) -> None:
        pubsub = await self._redis.pubsub()
        try:
            await pubsub.subscribe(self._redis.channel)
            last_seen = self._timer()
            pinged = False
            while True:
                message = await pubsub.get_message(timeout=self._heartbeat)
                now = self._timer()
                if message is None:
                    if now - last_seen > 3 * self._heartbeat:
                        raise TierError("no answer on the invalidation channel")
                    if not pinged:
                        await pubsub.ping()
                        pinged = True
                    continue
                last_seen, pinged = now, False
                kind = message.get("type")
                if kind == "subscribe":
                    # Whatever changed before this moment was missed: start from an empty L0.
                    await self._local.clear()
                    self._pending.clear()
                    self._gap()
                    self._subscribed = True
                    if self._confirmed is not None:
                        self._confirmed.set()
                    logger.info("following the invalidation channel %s", self._redis.channel)
                elif kind == "message":
                    await self._apply(message["data"])
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def _apply(self, data: bytes) -> None:
        origin = data[:ORIGIN_BYTES].decode("ascii", "replace")
        if origin == self._redis.origin or len(data) <= ORIGIN_BYTES:
            return
        kind = chr(data[ORIGIN_BYTES])
        name = data[ORIGIN_BYTES + 1 :].decode("utf-8", "replace")
        if kind in ("k", "w"):
            await self._local.delete(name)
        elif kind == "t":
            await self._local.delete_tag(name)
        elif kind == "n":
            await self._local.delete_namespace(name)
        elif kind == "c":
            await self._local.clear()
        else:
            return
        self._applied += 1
        self._recent.append((self._applied, kind, name))
        if kind != "w":
            self._invalidations += 1
            self._recent_invalidations.append((self._invalidations, kind, name))

    def __repr__(self) -> str:
        return f"CoherentTier({self._local!r}, subscribed={self._subscribed})"


def _concerns(
    recent: deque[tuple[int, str, str]], latest: int, since: int, key: str, entry: TierEntry
) -> bool:
    """Whether a message numbered after ``since`` in ``recent`` (numbered up to ``latest``) may
    concern ``entry`` stored under ``key``; forgotten messages are assumed to."""
    if since == latest:
        return False
    if not recent or recent[0][0] > since + 1:
        return True  # some of the messages since are forgotten: assume the worst
    for number, kind, name in reversed(recent):
        if number <= since:
            break
        if (
            kind == "c"
            or (kind in ("k", "w") and name == key)
            or (kind == "t" and name in entry.tags)
            or (kind == "n" and name == entry.namespace)
        ):
            return True
    return False
