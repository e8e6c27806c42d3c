"""Reference eviction policies the hit-ratio benchmark compares the engine against.

Both are exact simulators of a cache that holds at most ``capacity`` keys and count a request as a
hit when its key is resident:

- :func:`lru_hits`: least-recently-used, with an ``OrderedDict``. Every miss is admitted.
- :func:`opt_hits`: Bélády's offline optimum. Every miss is admitted, as in LRU; with a full cache
  the resident key whose next use lies furthest in the future is evicted first. This is the
  classic form and reproduces the README's OPT column exactly. ``bypass=True`` also lets the
  missing key itself be the one dropped (it is not admitted when it is needed later than every
  resident key), the optimum for a cache that may decline to store, as W-TinyLFU's admission does;
  it scores a few hundredths of a point higher (gli @ 250: 17.71 against 17.64).

OPT needs the whole sequence: :func:`next_uses` computes, in one backward pass, the index of the
next request for the same key (requests never seen again get distinct indices past the end, so
entries never tie). The simulator keeps a max-heap of (next use, key) with lazy deletion: when a
resident key is requested again its new next use is pushed and the old heap entry is left to be
discarded when it surfaces, recognisable because it no longer matches the key's current next use.

Check them against the README's columns with::

    .venv/bin/python bench/hit_ratio.py --only oltp
"""

from __future__ import annotations

import heapq
from array import array
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["HitCount", "lru_hits", "next_uses", "opt_hits"]


@dataclass(frozen=True, slots=True)
class HitCount:
    """Hits out of requests for one policy on one trace at one size."""

    hits: int
    requests: int

    @property
    def ratio(self) -> float:
        """Hits per request, as a percentage (0.0 for an empty trace)."""
        return 100.0 * self.hits / self.requests if self.requests else 0.0


def _check_capacity(capacity: int) -> None:
    if capacity < 1:
        raise ValueError(f"capacity must be at least 1, got {capacity}")


def lru_hits(keys: Iterable[int], capacity: int) -> HitCount:
    """Replay ``keys`` through an exact LRU cache of ``capacity`` entries."""
    _check_capacity(capacity)
    cache: OrderedDict[int, None] = OrderedDict()
    hits = requests = 0
    for key in keys:
        requests += 1
        if key in cache:
            hits += 1
            cache.move_to_end(key)
        else:
            if len(cache) >= capacity:
                cache.popitem(last=False)
            cache[key] = None
    return HitCount(hits, requests)


def next_uses(keys: Sequence[int]) -> array[int]:
    """For each request, the index of the next request for the same key.

    A request whose key never comes back gets ``len(keys) + i`` (its own index past the end), so
    every value is distinct and greater than any real index.
    """
    n = len(keys)
    result = array("q", bytes(8 * n))
    last_seen: dict[int, int] = {}
    for i in range(n - 1, -1, -1):
        key = keys[i]
        result[i] = last_seen.get(key, n + i)
        last_seen[key] = i
    return result


def opt_hits(
    keys: Sequence[int],
    capacity: int,
    nexts: Sequence[int] | None = None,
    *,
    bypass: bool = False,
) -> HitCount:
    """Replay ``keys`` through Bélády's optimal cache of ``capacity`` entries.

    ``nexts`` is :func:`next_uses` of ``keys``; pass it to replay the same trace at several sizes
    without recomputing it. With ``bypass`` a missing key needed later than every resident key is
    not admitted (see the module docstring).
    """
    _check_capacity(capacity)
    if nexts is None:
        nexts = next_uses(keys)
    elif len(nexts) != len(keys):
        raise ValueError(f"nexts has {len(nexts)} entries for {len(keys)} keys")
    resident: dict[int, int] = {}  # key -> index of its next request
    heap: list[tuple[int, int]] = []  # (-next use, key); stale entries are skipped lazily
    hits = 0
    for key, nxt in zip(keys, nexts, strict=True):
        if key in resident:
            hits += 1
        elif len(resident) >= capacity:
            # Find the live resident key needed furthest in the future.
            while True:
                neg, victim = heap[0]
                if resident.get(victim) == -neg:
                    break
                heapq.heappop(heap)
            if bypass and nxt > -neg:
                continue  # the newcomer is needed last of all: do not admit it
            heapq.heappop(heap)
            del resident[victim]
        resident[key] = nxt
        heapq.heappush(heap, (-nxt, key))
        # Stale entries would otherwise accumulate on hit-heavy traces; rebuild when they dominate.
        if len(heap) > 4 * capacity + 64:
            heap = [(-n, k) for k, n in resident.items()]
            heapq.heapify(heap)
    return HitCount(hits, len(keys))
