"""The byte budget and the entry limit: never exceeded after any operation, whatever the weights."""

from __future__ import annotations

import random
from typing import Any

import pytest

from stratacache.engine import RemovalCause, Store, default_weigher

from .conftest import Evictions, FakeClock, check_consistent

pytestmark = pytest.mark.usefixtures("implementation")

MISSING: Any = object()


def weigh(key: Any, value: Any) -> int:
    """Values in these tests are ``(payload, weight)`` pairs, or ints weighing 8."""
    if isinstance(value, tuple):
        weight: int = value[1]
        return weight
    return 8


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize(
    "limits", [(None, 1000), (20, 1000), (200, 300), (5, None)], ids=["bytes", "both", "b2", "n"]
)
def test_the_budget_holds_after_every_operation(
    seed: int, limits: tuple[int | None, int | None]
) -> None:
    max_entries, max_bytes = limits
    clock = FakeClock()
    evictions = Evictions()
    store = Store(
        max_entries,
        max_bytes,
        weigher=weigh,
        clock=clock,
        on_evict=evictions,
        rng=random.Random(seed),
    )
    rng = random.Random(seed)
    latest: dict[int, Any] = {}
    for i in range(600):
        key = rng.randrange(60)
        op = rng.random()
        if op < 0.5:
            value = (i, rng.choice([0, 1, 5, 50, 120, 400, 999, 1000, 1001, 5000]))
            stored = store.set(key, value, ttl=rng.choice([None, None, 0.5, 3.0]))
            latest[key] = value
            assert stored is (store.peek(key, MISSING) is value)
        elif op < 0.7:
            got = store.get(key, MISSING)
            assert got is MISSING or got is latest[key]
        elif op < 0.8:
            store.delete(key)
            latest.pop(key, None)
        elif op < 0.9:
            current = store.peek(key, MISSING)
            if current is MISSING or isinstance(current, int):
                result = store.incr(key, rng.randrange(-5, 5))
                latest[key] = result
        else:
            clock.advance(rng.choice([0.25, 1.0, 2.0]))
        check_consistent(store, weigh, max_entries=max_entries, max_bytes=max_bytes)
    reported = [value for _, value, _ in evictions.calls]
    assert all(isinstance(v, tuple | int) for v in reported)


def test_an_entry_heavier_than_the_budget_is_rejected(clock: FakeClock) -> None:
    evictions = Evictions()
    store = Store(max_bytes=100, weigher=weigh, clock=clock, on_evict=evictions)
    for i in range(5):
        store.set(i, (i, 10))
    assert store.set("big", ("big", 101)) is False
    assert "big" not in store
    assert store.get("big") is None
    assert sorted(store.keys()) == [0, 1, 2, 3, 4]  # nothing was flushed to make room for it
    stats = store.stats()
    assert stats.rejections == 1
    assert stats.bytes == 50
    check_consistent(store, weigh, max_bytes=100)


def test_a_heavy_overwrite_removes_the_previous_value(clock: FakeClock) -> None:
    store = Store(max_bytes=100, weigher=weigh, clock=clock)
    store.set("k", ("old", 10), ttl=60)
    assert store.set("k", ("new", 500)) is False
    # Never stale: the old value must not be served in place of the one that was refused.
    assert store.get("k", MISSING) is MISSING
    assert store.peek("k", MISSING) is MISSING
    assert "k" not in store
    with pytest.raises(KeyError):
        store.ttl("k")
    assert store.stats().bytes == 0
    check_consistent(store, weigh, max_bytes=100)


def test_an_entry_weighing_exactly_the_budget_fits(clock: FakeClock) -> None:
    store = Store(max_bytes=100, weigher=weigh, clock=clock, rng=random.Random(0))
    assert store.set("whole", ("whole", 100)) is True
    assert store.get("whole") == ("whole", 100)
    store.set("one more", ("x", 1))
    check_consistent(store, weigh, max_bytes=100)


def test_max_entries_bounds_heavy_values_too() -> None:
    # max_entries alone: weights do not matter, however large.
    store = Store(max_entries=3, weigher=weigh, rng=random.Random(0))
    for i in range(10):
        assert isinstance(store.set(i, (i, 10**9)), bool)
        check_consistent(store, weigh, max_entries=3)
    assert len(store) == 3


def test_both_limits_apply_at_once() -> None:
    store = Store(max_entries=10, max_bytes=100, weigher=weigh, rng=random.Random(0))
    for i in range(50):  # light entries: the entry limit binds
        store.set(i, (i, 1))
        check_consistent(store, weigh, max_entries=10, max_bytes=100)
    assert len(store) == 10
    for _ in range(20):  # heavy entries, asked for often enough to be admitted
        for i in range(50, 53):
            if store.get(i) is None:
                store.set(i, (i, 40))
            check_consistent(store, weigh, max_entries=10, max_bytes=100)
    resident = store.keys()
    heavy = [key for key in resident if isinstance(key, int) and key >= 50]
    assert 1 <= len(heavy) <= 2


def test_growing_an_entry_evicts_others(clock: FakeClock) -> None:
    evictions = Evictions()
    store = Store(max_bytes=100, weigher=weigh, clock=clock, on_evict=evictions)
    for i in range(10):
        store.set(i, (i, 10))
    assert store.stats().bytes == 100
    store.set(0, (0, 60))
    check_consistent(store, weigh, max_bytes=100)
    assert store.stats().evictions >= 5
    assert {cause for _, _, cause in evictions.calls} <= {RemovalCause.SIZE, RemovalCause.REJECTED}


def test_shrinking_an_entry_releases_bytes() -> None:
    store = Store(max_bytes=100, weigher=weigh)
    store.set("a", ("a", 90))
    store.set("a", ("a", 5))
    assert store.stats().bytes == 5
    store.set("b", ("b", 95))
    check_consistent(store, weigh, max_bytes=100)


def test_weightless_entries_are_kept_by_a_byte_budget() -> None:
    store = Store(max_bytes=10, weigher=weigh)
    for i in range(100):
        assert store.set(i, (i, 0)) is True
    assert len(store) == 100
    assert store.stats().bytes == 0
    check_consistent(store, weigh, max_bytes=10)


def test_incr_reweighs_the_counter() -> None:
    def by_digits(key: Any, value: Any) -> int:
        return len(str(value))

    store = Store(max_bytes=50, weigher=by_digits)
    store.set("n", 9)
    assert store.stats().bytes == 1
    store.incr("n", 10**9 - 9)
    assert store.stats().bytes == 10
    check_consistent(store, by_digits, max_bytes=50)


def test_expire_and_persist_do_not_change_the_weight(clock: FakeClock) -> None:
    store = Store(max_bytes=100, weigher=weigh, clock=clock)
    store.set("a", ("a", 30))
    store.expire("a", 10)
    store.persist("a")
    assert store.stats().bytes == 30


@pytest.mark.parametrize("seed", range(4))
def test_the_default_weigher_under_a_byte_budget(seed: int) -> None:
    rng = random.Random(seed)
    store = Store(max_bytes=2000, rng=random.Random(seed))
    for _ in range(1000):
        key: bytes | str = rng.randbytes(rng.randrange(1, 20))
        if rng.random() < 0.5:
            key = str(rng.randrange(100))
        store.set(key, "é" * rng.randrange(0, 300))
        stats = store.stats()
        assert stats.bytes <= 2000
    check_consistent(store, default_weigher, max_bytes=2000)
