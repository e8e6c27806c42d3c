"""Several threads on one store: bounded numbers of operations, then the invariants must hold.

The switch interval is shortened while the threads run so that the interpreter hands over between
threads hundreds of times more often than usual, in the middle of the store's methods.
"""

from __future__ import annotations

import contextlib
import random
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from stratacache.engine import RemovalCause, Store, default_weigher
from stratacache.errors import NotAnIntegerError

from .conftest import Evictions, FakeClock, check_consistent

pytestmark = pytest.mark.usefixtures("implementation")

THREADS = 4
MISSING: Any = object()


@pytest.fixture(autouse=True)
def busy_switching() -> Iterator[None]:
    """Switch threads every 10 µs instead of every 5 ms, for the duration of the test."""
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def run_threads(work: Callable[[int], None], count: int = THREADS) -> None:
    """Run ``work(index)`` in ``count`` threads started together; re-raise the first failure."""
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def run(index: int) -> None:
        try:
            barrier.wait()
            work(index)
        except BaseException as exc:  # handed to the test thread below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
        assert not thread.is_alive(), "a thread is stuck (deadlock?)"
    if errors:
        raise errors[0]


def weigh(key: Any, value: Any) -> int:
    """Values are ``(key, writer, sequence, weight)`` tuples or ints."""
    return value[3] if isinstance(value, tuple) else 4


@dataclass
class Tally:
    """What one thread did and saw."""

    gets: int = 0
    hits: int = 0
    wrong: list[Any] = field(default_factory=list)


@pytest.mark.parametrize(
    "limits", [(50, None), (None, 400), (30, 300)], ids=["entries", "bytes", "both"]
)
def test_random_operations_from_four_threads(limits: tuple[int | None, int | None]) -> None:
    max_entries, max_bytes = limits
    clock = FakeClock()
    evictions = Evictions()
    store = Store(
        max_entries,
        max_bytes,
        weigher=weigh,
        clock=clock,
        on_evict=evictions,
        rng=random.Random(1),
    )
    tallies = [Tally() for _ in range(THREADS)]

    def work(index: int) -> None:
        rng = random.Random(index)
        tally = tallies[index]
        for sequence in range(4000):
            key = rng.randrange(120)
            op = rng.random()
            if op < 0.55:
                got = store.get(key, MISSING)
                tally.gets += 1
                if got is not MISSING:
                    tally.hits += 1
                    # Whatever is returned was written for this key by some thread.
                    if not (isinstance(got, int) or got[0] == key):
                        tally.wrong.append((key, got))
            elif op < 0.85:
                value = (key, index, sequence, rng.randrange(1, 40))
                ttl = 5.0 if rng.random() < 0.1 else None
                store.set(key, value, ttl)
            elif op < 0.95:
                store.delete(key)
            else:
                with contextlib.suppress(NotAnIntegerError):  # it held a tuple
                    store.incr(key, 1)
            if index == 0 and sequence % 500 == 0:
                clock.advance(1.0)  # some TTLs run out while the others work
            if index == 1 and sequence % 250 == 0:
                len(store)  # reaping and the statistics race with the writers too
                store.stats()

    run_threads(work)
    for tally in tallies:
        assert tally.wrong == []
    check_consistent(store, weigh, max_entries=max_entries, max_bytes=max_bytes)
    stats = store.stats()
    gets = sum(tally.gets for tally in tallies)
    assert stats.hits + stats.misses == gets
    assert stats.hits == sum(tally.hits for tally in tallies)
    rejected = evictions.count(RemovalCause.REJECTED)
    assert stats.evictions == evictions.count(RemovalCause.SIZE) + rejected
    assert stats.expirations == evictions.count(RemovalCause.EXPIRED)
    for key, _, _ in evictions.calls:
        assert isinstance(key, int)


@pytest.mark.parametrize("limits", [(None, None), (1000, None), (None, 10_000)])
def test_incr_from_four_threads_loses_no_increment(limits: tuple[int | None, int | None]) -> None:
    # Large enough that the counters are never evicted: every increment must be counted.
    store = Store(*limits, rng=random.Random(2))

    def work(index: int) -> None:
        rng = random.Random(index)
        for i in range(3000):
            store.incr("shared", 1)
            store.incr(f"own{index}", 2)
            if i % 10 == 0:
                store.set(f"noise{rng.randrange(50)}", b"x" * rng.randrange(20))
                store.get(f"noise{rng.randrange(50)}")
                store.delete(f"noise{rng.randrange(50)}")

    run_threads(work)
    assert store.get("shared") == THREADS * 3000
    for index in range(THREADS):
        assert store.get(f"own{index}") == 6000


def test_readers_race_a_writer_that_replaces_and_expires(clock: FakeClock) -> None:
    store = Store(max_entries=20, clock=clock, rng=random.Random(3))
    seen: list[Any] = []

    def work(index: int) -> None:
        for generation in range(600):
            if index == 0:
                for key in range(10):
                    store.set(key, (key, generation), ttl=2.0)
                if generation % 20 == 0:
                    clock.advance(1.0)
            else:
                for key in range(10):
                    got = store.get(key)
                    if got is not None and got[0] != key:
                        seen.append((key, got))

    run_threads(work)
    assert seen == []
    check_consistent(store, default_weigher, max_entries=20)


def test_a_listener_running_in_many_threads_at_once() -> None:
    calls = 0
    lock = threading.Lock()
    store: Store

    def listener(key: Any, value: Any, cause: RemovalCause) -> None:
        nonlocal calls
        with lock:
            calls += 1
        store.get(key)  # back into the store, from whichever thread evicted

    store = Store(max_entries=10, rng=random.Random(4), on_evict=listener)

    def work(index: int) -> None:
        for i in range(2000):
            store.set((index * 10_000) + i, i)

    run_threads(work)
    stats = store.stats()
    assert calls == stats.evictions
    assert len(store) <= 10
