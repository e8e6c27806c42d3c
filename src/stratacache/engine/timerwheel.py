"""A hierarchical timer wheel: finds expired entries in O(1) amortised time.

Entries with a TTL are filed in a bucket by their expiry time. Level 0 has 64 buckets of one second,
level 1 has 64 buckets of 64 seconds, and so on up to buckets of about three days (64 of them: about
six months; a later expiry is filed at the top level and simply re-filed when its bucket comes round).
Advancing the clock visits only the buckets whose time has come; an entry found in one that is not yet
due cascades down to a finer level. Each entry is touched a bounded number of times between its
scheduling and its expiry, so the cost per entry is constant, however many entries there are: no scan,
no heap. This is the design of Caffeine's ``TimerWheel`` (after Varghese & Lauck, 1987).

The wheel only *finds* due entries; the store removes them, so the store's bookkeeping stays in one
place. Reads check expiry lazily as well, so an entry is never served late even between two advances.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Protocol

__all__ = ["TimedEntry", "TimerWheel"]

_BUCKETS = 64
_MASK = _BUCKETS - 1
# Seconds covered by one bucket at each level; each level spans 64 buckets of the level below.
_SPANS = (1.0, 64.0, 4096.0, 262144.0)
_TOP = len(_SPANS) - 1


class TimedEntry(Protocol):
    """What the wheel needs of an entry: its key, its expiry and a slot to remember its bucket."""

    key: Hashable
    expires: float
    bucket: dict[Hashable, TimedEntry] | None


class TimerWheel:
    """Buckets of entries by expiry time, advanced by the store's clock."""

    # The compiled policy (_accel.c, wheel_schedule) files entries itself, reading these two slots
    # and following _bucket_for step for step: change them together.
    __slots__ = ("_time", "_wheel")

    def __init__(self, now: float = 0.0) -> None:
        self._time = now
        self._wheel: list[list[dict[Hashable, TimedEntry]]] = [
            [{} for _ in range(_BUCKETS)] for _ in _SPANS
        ]

    def schedule(self, entry: TimedEntry) -> None:
        """File ``entry`` by its ``expires`` time, moving it if it was already filed."""
        if entry.bucket is not None:
            del entry.bucket[entry.key]
        bucket = self._bucket_for(entry.expires)
        bucket[entry.key] = entry
        entry.bucket = bucket

    @staticmethod
    def deschedule(entry: TimedEntry) -> None:
        """Remove ``entry`` from the wheel (it was deleted, or its TTL removed)."""
        if entry.bucket is not None:
            del entry.bucket[entry.key]
            entry.bucket = None

    def _bucket_for(self, expires: float) -> dict[Hashable, TimedEntry]:
        # An entry already due (the clock went backwards, or a zero delay) goes in the current
        # bucket, which the next advance, or an exact one, visits; filed by its own time it could
        # sit unseen until the wheel came round to that slot again.
        expires = max(expires, self._time)
        delta = expires - self._time
        for level, span in enumerate(_SPANS):
            if delta < span * _BUCKETS or level == _TOP:
                return self._wheel[level][int(expires // span) & _MASK]
        raise AssertionError("unreachable")  # pragma: no cover

    def advance(self, now: float, *, exact: bool = False) -> list[TimedEntry]:
        """Move the wheel to ``now`` and return the entries that expired, unfiled.

        Entries are found up to one second late unless ``exact`` is set, which also checks the
        entries of the current second one by one (for ``len()``, where late is wrong).
        """
        due: list[TimedEntry] = []
        previous = self._time
        if now > previous:
            self._time = now
            for level, span in enumerate(_SPANS):
                previous_ticks = int(previous // span)
                delta = int(now // span) - previous_ticks
                if delta <= 0:
                    break  # coarser levels cannot have ticked either
                self._expire(level, previous_ticks, delta, now, due)
        if exact:
            self._expire(0, int(self._time), 0, now, due)
        return due

    def _expire(
        self, level: int, previous_ticks: int, delta: int, now: float, due: list[TimedEntry]
    ) -> None:
        buckets = self._wheel[level]
        if delta >= _BUCKETS:
            indexes: range | list[int] = range(_BUCKETS)
        else:
            # From the bucket the wheel was in through the one it is in now: both may hold due entries.
            indexes = [(previous_ticks + i) & _MASK for i in range(delta + 1)]
        for index in indexes:
            bucket = buckets[index]
            if not bucket:
                continue
            # Swap in a fresh bucket first: entries re-filed below may belong in this same slot.
            buckets[index] = {}
            for entry in bucket.values():
                entry.bucket = None
                if entry.expires <= now:
                    due.append(entry)
                else:
                    self.schedule(entry)

    def clear(self, now: float) -> None:
        """Drop every filed entry and restart at ``now``."""
        self._time = now
        self._wheel = [[{} for _ in range(_BUCKETS)] for _ in _SPANS]
