"""The W-TinyLFU policy against a plain LRU, on small traces the tests build themselves.

Every trace here comes from a seeded ``random.Random``, so the numbers are the same on every run and
need nothing from ``../shared``. Each is replayed the way a cache is used: ``get``, and ``set`` on a
miss. The LRU is an ``OrderedDict`` of the same size, so the contrast is shown in the test itself.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from typing import Any

import pytest

from stratacache.engine import RemovalCause, Store

from .conftest import Evictions, check_consistent

pytestmark = pytest.mark.usefixtures("implementation")

MISSING: Any = object()
SIZE = 100


def lru_hit_ratio(trace: Sequence[Hashable], size: int) -> float:
    """The hit ratio of a textbook LRU cache of ``size`` entries on ``trace``."""
    cache: OrderedDict[Hashable, None] = OrderedDict()
    hits = 0
    for key in trace:
        if key in cache:
            cache.move_to_end(key)
            hits += 1
        else:
            cache[key] = None
            if len(cache) > size:
                cache.popitem(last=False)
    return hits / len(trace)


def replay(store: Store, trace: Sequence[Any]) -> float:
    """Replay ``trace`` through ``store`` (set on a miss) and return the hit ratio."""
    hits = 0
    for key in trace:
        if store.get(key, MISSING) is MISSING:
            store.set(key, key)
        else:
            hits += 1
    return hits / len(trace)


def store_hit_ratio(trace: Sequence[Any], size: int = SIZE, seed: int = 1) -> float:
    """The hit ratio of a fresh ``Store(max_entries=size)`` on ``trace``."""
    return replay(Store(max_entries=size, rng=random.Random(seed)), trace)


def zipf_trace(length: int, items: int, skew: float, seed: int) -> list[int]:
    """Keys drawn with probability proportional to ``1 / rank**skew``: a few hot, a long tail."""
    cumulative = list(itertools.accumulate(1 / rank**skew for rank in range(1, items + 1)))
    return random.Random(seed).choices(range(items), cum_weights=cumulative, k=length)


def loop_trace(length: int, items: int) -> list[int]:
    """The same ``items`` keys over and over, in order: LRU's worst case when ``items > size``."""
    return [i % items for i in range(length)]


def recency_trace(length: int, gap: int, repeats: int, seed: int) -> list[int]:
    """Every key is new once, then asked for ``repeats`` more times within ``gap`` requests, never again.

    Frequency tells nothing here (every key is equally popular), recency tells everything: the
    workload that collapses a W-TinyLFU with a fixed, small window (Corda, in the papers).
    """
    rng = random.Random(seed)
    trace: list[int] = []
    due: list[tuple[int, int]] = []  # (position, key)
    for key in itertools.count():
        if len(trace) >= length:
            break
        trace.append(key)
        for _ in range(repeats):
            heapq.heappush(due, (len(trace) + rng.randint(1, gap), key))
        while due and due[0][0] <= len(trace) and len(trace) < length:
            trace.append(heapq.heappop(due)[1])
    return trace


# ------------------------------------------------------------------------- scan resistance


def test_a_hot_set_survives_a_scan_that_flushes_lru() -> None:
    hot = [f"hot{i}" for i in range(SIZE // 2)]
    scan = [f"scan{i}" for i in range(20 * SIZE)]
    warm_up = hot * 20
    trace = warm_up + scan

    store = Store(max_entries=SIZE, rng=random.Random(1))
    replay(store, trace)
    survivors = [key for key in hot if key in store]

    lru: OrderedDict[str, None] = OrderedDict()
    for key in trace:
        lru[key] = None
        lru.move_to_end(key)
        if len(lru) > SIZE:
            lru.popitem(last=False)
    assert not any(key in lru for key in hot), "the LRU should have lost the whole hot set"

    # The sketch forgets over a scan twenty times the cache, so a hot key caught on the wrong
    # side of the window may go; the hot set as a whole stays.
    assert len(survivors) >= 0.9 * len(hot)
    hits_after = replay(store, hot)
    assert hits_after >= 0.9
    assert lru_hit_ratio(trace + hot, SIZE) < store_hit_ratio(trace + hot)


def test_scan_keys_are_refused_admission() -> None:
    evictions = Evictions()
    store = Store(max_entries=SIZE, rng=random.Random(1), on_evict=evictions)
    hot = [f"hot{i}" for i in range(SIZE // 2)]
    replay(store, hot * 10)
    assert store.stats().rejections == evictions.count(RemovalCause.REJECTED)
    before, reported = store.stats().rejections, len(evictions.calls)
    replay(store, [f"scan{i}" for i in range(5 * SIZE)])
    stats = store.stats()
    assert stats.rejections - before >= 3 * SIZE
    assert stats.rejections == evictions.count(RemovalCause.REJECTED)
    during_scan = evictions.calls[reported:]
    rejected = [key for key, _, cause in during_scan if cause is RemovalCause.REJECTED]
    assert len(rejected) == stats.rejections - before
    assert all(key.startswith("scan") for key in rejected)
    assert sum(key in store for key in hot) >= 0.9 * len(hot)


# ------------------------------------------------------------------------- hit ratios


@pytest.mark.parametrize("seed", range(3))
def test_zipf_beats_lru(seed: int) -> None:
    trace = zipf_trace(30_000, 2_000, 0.9, seed)
    ours, lru = store_hit_ratio(trace, seed=seed), lru_hit_ratio(trace, SIZE)
    assert ours >= lru + 0.05, f"W-TinyLFU {ours:.3f} vs LRU {lru:.3f}"


@pytest.mark.parametrize("seed", range(2))
def test_zipf_under_a_byte_budget_beats_lru(seed: int) -> None:
    trace = zipf_trace(20_000, 2_000, 0.9, seed)
    store = Store(max_bytes=SIZE, weigher=lambda key, value: 1, rng=random.Random(seed))
    ours, lru = replay(store, trace), lru_hit_ratio(trace, SIZE)
    assert ours >= lru + 0.05, f"W-TinyLFU {ours:.3f} vs LRU {lru:.3f}"
    check_consistent(store, lambda key, value: 1, max_bytes=SIZE)


@pytest.mark.parametrize("items", [120, 150, 190])
def test_a_loop_larger_than_the_cache(items: int) -> None:
    trace = loop_trace(100 * items, items)
    lru = lru_hit_ratio(trace, SIZE)
    assert lru == 0.0
    ours = store_hit_ratio(trace)
    # The best possible is about SIZE / items; a frequency filter keeps most of the loop resident.
    assert ours >= 0.8 * SIZE / items - 0.1, f"W-TinyLFU {ours:.3f} on a loop of {items}"


@pytest.mark.parametrize("items", [105, 110])
def test_a_loop_slightly_larger_than_the_cache(items: int) -> None:
    trace = loop_trace(100 * items, items)
    assert lru_hit_ratio(trace, SIZE) == 0.0
    assert store_hit_ratio(trace) >= 0.5


@pytest.mark.parametrize("gap", [30, 100, 150])
def test_a_recency_skewed_workload_gets_close_to_lru(gap: int) -> None:
    trace = recency_trace(30_000, gap=gap, repeats=3, seed=gap)
    lru = lru_hit_ratio(trace, SIZE)
    assert lru > 0.7  # the repeats come back soon enough for LRU to catch nearly all of them
    store = Store(max_entries=SIZE, rng=random.Random(gap))
    ours = replay(store, trace)
    assert ours >= lru - 0.02, f"W-TinyLFU {ours:.3f} vs LRU {lru:.3f}"
    # It got there by growing the window well beyond its initial 1 %.
    assert store.policy.window_limit >= 10


def test_a_recency_skewed_workload_with_a_working_set_near_the_cache_size() -> None:
    trace = recency_trace(30_000, gap=250, repeats=3, seed=1)
    lru = lru_hit_ratio(trace, SIZE)
    assert lru > 0.7
    assert store_hit_ratio(trace) >= lru - 0.02


def test_the_window_stays_small_on_a_frequency_skewed_workload() -> None:
    store = Store(max_entries=SIZE, rng=random.Random(0))
    replay(store, zipf_trace(30_000, 2_000, 0.9, 0))
    assert store.policy.window_limit <= SIZE // 5


def test_a_small_window_remembers_few_refused_keys() -> None:
    # White box, on the reference policy (test_accel holds the compiled one to the same decisions):
    # a refused key only counts for growth within the grow reach, so with a small window the list
    # of refused keys is cut to two thirds of its share instead of keeping stale growth votes.
    store = Store(max_entries=1000, rng=random.Random(0), accelerate=False)
    policy: Any = store._policy
    for key in range(1000):
        store.set(key, key)
    for key in range(1000):
        assert store.get(key) == key  # every resident key now outweighs a newcomer
    for key in range(1000, 1500):
        store.set(key, key)  # each is refused when it leaves the window
    assert policy.window_limit == 10
    share = policy._ghost_limit()
    assert share == 120
    assert len(policy._ghost_rejected) == share * 2 // 3
    assert 1489 in policy._ghost_rejected  # the newest refused; the last ten are in the window
    assert 1408 not in policy._ghost_rejected


def zigzag_trace(passes: int, items: int) -> list[int]:
    """Keys 0..items-1 up, then back down, ``passes`` times: each turn re-reads what was just read.

    Every key is as frequent as every other, and the only hits are just after a turn, on the keys
    read last: plain LRU is optimal here, and a frequency filter has nothing to go on.
    """
    up = list(range(items))
    return [key for i in range(passes) for key in (up if i % 2 == 0 else up[::-1])]


def test_a_zigzag_hands_the_window_the_whole_cache() -> None:
    trace = zigzag_trace(30, 4 * SIZE)
    lru = lru_hit_ratio(trace, SIZE)
    assert lru > 0.2
    store = Store(max_entries=SIZE, rng=random.Random(3))
    ours = replay(store, trace)
    # The shadow LRU saw the turns pay and the window took the main area: the cache is an LRU
    # now. Only the first turn, before any evidence, is lost (1/30 of LRU's hits).
    assert store.policy.window_limit >= 0.9 * SIZE
    assert ours >= lru - 0.015, f"W-TinyLFU {ours:.3f} vs LRU {lru:.3f}"


def test_before_the_first_hit_newcomers_are_admitted_as_lru_would() -> None:
    evictions = Evictions()
    store = Store(max_entries=SIZE, rng=random.Random(1), on_evict=evictions)
    for key in range(3 * SIZE):
        store.set(key, key)
    # Nothing was hit, so the sketch had no reason to prefer the first keys: the last SIZE stay.
    assert store.stats().rejections == 0
    assert all(key in store for key in range(2 * SIZE, 3 * SIZE))
    assert evictions.count(RemovalCause.REJECTED) == 0

    assert store.get(3 * SIZE - 1) == 3 * SIZE - 1  # the first hit: frequency decides from now on
    for key in range(3 * SIZE, 5 * SIZE):
        store.set(key, key)
    assert store.stats().rejections > SIZE
    assert evictions.count(RemovalCause.REJECTED) == store.stats().rejections


def test_admitting_everything_ends_after_a_few_cache_fulls_without_a_hit() -> None:
    # A loop longer than the cache never hits under LRU; admitting as LRU would forever would
    # keep it at zero, so the cold start ends on its own and the loop is then partly cached.
    trace = list(range(SIZE + SIZE // 2)) * 20
    store = Store(max_entries=SIZE, rng=random.Random(1))
    ours = replay(store, trace)
    assert lru_hit_ratio(trace, SIZE) == 0
    assert store.stats().rejections > 0
    assert ours > 0.4


def test_the_first_turn_of_a_sweep_hits_as_lru_does() -> None:
    # Back and forth over three cache sizes: LRU's hits come just after each turn, the first
    # included, before any hit has shown the policy what pays (the backf trace has this shape).
    trace = zigzag_trace(12, 3 * SIZE)
    lru = lru_hit_ratio(trace, SIZE)
    ours = store_hit_ratio(trace)
    assert lru > 0.25
    assert ours >= lru - 0.01, f"W-TinyLFU {ours:.3f} vs LRU {lru:.3f}"


@pytest.mark.parametrize("items", [2 * SIZE, 10 * SIZE])
def test_a_loop_keeps_the_window_small(items: int) -> None:
    # LRU never hits a loop larger than the cache, so the shadow never leads and the window stays
    # at its minimum while the main area holds a fixed part of the loop.
    store = Store(max_entries=SIZE, rng=random.Random(4))
    ours = replay(store, loop_trace(40 * items, items))
    assert store.policy.window_limit <= SIZE // 20
    assert ours >= 0.7 * SIZE / items


def test_after_a_zigzag_a_frequency_workload_takes_the_window_back() -> None:
    store = Store(max_entries=SIZE, rng=random.Random(5))
    replay(store, zigzag_trace(30, 4 * SIZE))
    assert store.policy.window_limit >= 0.9 * SIZE
    trace = [k + 10**6 for k in zipf_trace(60_000, 2_000, 1.0, 6)]
    replay(store, trace[:30_000])
    # LRU never leads on a skewed workload, so the main-area victims that return vote the window
    # down again, and the second half is served about as well as by a fresh store.
    assert store.policy.window_limit <= SIZE // 5
    assert (
        replay(store, trace[30_000:])
        >= replay(Store(max_entries=SIZE, rng=random.Random(5)), trace[30_000:]) - 0.02
    )


def test_a_large_store_has_no_shadow_and_keeps_its_window_small_on_a_zigzag() -> None:
    # Above 1024 entries there is no shadow LRU (see Policy._shadow_access): the ghosts alone
    # steer, and on a zigzag they keep the window small, as before the shadow.
    size = 2000
    store = Store(max_entries=size, rng=random.Random(5))
    replay(store, zigzag_trace(8, 4 * size))
    assert store.policy.window_limit <= size // 5


def test_the_window_follows_a_change_of_workload() -> None:
    store = Store(max_entries=SIZE, rng=random.Random(0))
    replay(store, recency_trace(20_000, gap=100, repeats=3, seed=0))
    grown = store.policy.window_limit
    replay(store, [k + 10**6 for k in zipf_trace(40_000, 2_000, 1.0, 1)])
    assert store.policy.window_limit < grown


# ------------------------------------------------------------------------- bookkeeping


def test_rejections_are_counted_and_reported() -> None:
    evictions = Evictions()
    store = Store(max_entries=SIZE, rng=random.Random(2), on_evict=evictions)
    replay(store, zipf_trace(20_000, 1_000, 1.0, 2))
    stats = store.stats()
    assert stats.rejections > 0
    assert stats.rejections == evictions.count(RemovalCause.REJECTED)
    assert stats.evictions == len(evictions.calls)
    for key, value, _ in evictions.calls:
        assert value == key


def test_a_refused_set_returns_false_and_reports_the_new_value() -> None:
    # Under a byte budget the window holds 1 % of it: an entry heavier than that goes straight
    # from the window to face the main area, where a cold key loses to a hot one.
    evictions = Evictions()
    store = Store(
        max_bytes=1000, weigher=lambda key, value: 100, rng=random.Random(0), on_evict=evictions
    )
    for _ in range(20):
        for key in range(10):
            if store.get(key) is None:
                store.set(key, f"hot{key}")
    refused = [key for key in range(100, 200) if store.set(key, f"cold{key}") is False]
    assert refused
    for key in refused:
        assert key not in store
        assert (key, f"cold{key}", RemovalCause.REJECTED) in evictions.calls
    assert store.stats().rejections == evictions.count(RemovalCause.REJECTED)
    check_consistent(store, lambda key, value: 100, max_bytes=1000)


@pytest.mark.parametrize("by_bytes", [False, True], ids=["entries", "bytes"])
def test_the_segments_add_up_to_the_total_weight(by_bytes: bool) -> None:
    def weigh(key: Any, value: Any) -> int:
        return 1 + int(key) % 7

    store = (
        Store(max_bytes=400, weigher=weigh, rng=random.Random(4))
        if by_bytes
        else Store(max_entries=100, weigher=weigh, rng=random.Random(4))
    )
    rng = random.Random(5)
    for i in range(20_000):
        if i < 10_000:
            key = int(rng.paretovariate(1.0)) % 1000
        else:
            key = rng.randrange(1000)
        if store.get(key) is None:
            store.set(key, key)
        if i % 500 == 0:
            policy = store.policy
            total = store.stats().bytes if by_bytes else len(store)
            assert policy.window + policy.probation + policy.protected == total
            assert policy.window_limit >= 1
            assert policy.protected <= policy.protected_limit


def _run_seeded(seed: int) -> tuple[list[Any], Any, Any]:
    store = Store(max_entries=50, rng=random.Random(seed))
    replay(store, zipf_trace(10_000, 500, 0.8, 3))
    return sorted(store.keys(), key=repr), store.stats(), store.policy


def test_a_seeded_rng_makes_results_reproducible() -> None:
    assert _run_seeded(11) == _run_seeded(11)
