"""Expiry on a fake clock: lazy checks on read, the timer wheel's reclaiming, and TTL bookkeeping.

No test sleeps: the store reads a :class:`FakeClock`, and the tests move it.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from stratacache.engine import RemovalCause, Store, default_weigher
from stratacache.errors import InvalidKeyError

from .conftest import Evictions, FakeClock, check_consistent

pytestmark = pytest.mark.usefixtures("implementation")

MISSING: Any = object()

MINUTE = 60.0
HOUR = 3600.0
DAY = 86400.0


def test_an_entry_is_served_until_its_expiry_and_not_at_it(clock: FakeClock) -> None:
    store = Store(clock=clock)
    store.set("a", 1, ttl=10)
    clock.advance(9.75)
    assert store.get("a") == 1
    clock.advance(0.25)  # now == expiry time: expired
    assert store.get("a", MISSING) is MISSING
    assert store.stats().misses == 1
    clock.advance(1)
    assert store.get("a", MISSING) is MISSING


@pytest.mark.parametrize("reader", ["get", "peek", "contains", "ttl", "len", "keys", "stats"])
def test_every_reader_agrees_at_the_instant_of_expiry(clock: FakeClock, reader: str) -> None:
    store = Store(clock=clock)
    store.set("a", 1, ttl=0.5)
    store.set("b", 2)
    clock.advance(0.5)
    if reader == "get":
        assert store.get("a", MISSING) is MISSING
    elif reader == "peek":
        assert store.peek("a", MISSING) is MISSING
    elif reader == "contains":
        assert "a" not in store
    elif reader == "ttl":
        with pytest.raises(KeyError):
            store.ttl("a")
    elif reader == "len":
        assert len(store) == 1
    elif reader == "keys":
        assert store.keys() == ["b"]
    else:
        stats = store.stats()
        assert (stats.entries, stats.expirations) == (1, 1)
        assert stats.bytes == default_weigher("b", 2)


def test_ttl_counts_down_exactly(clock: FakeClock) -> None:
    store = Store(clock=clock)
    store.set("a", 1, ttl=100)
    assert store.ttl("a") == 100
    for elapsed in (0.25, 1.0, 50.0, 99.5):
        clock.now = 1000.0 + elapsed
        assert store.ttl("a") == 100 - elapsed
    clock.now = 1100.0
    with pytest.raises(KeyError):
        store.ttl("a")


def test_ttl_reclaims_an_expired_entry_and_names_the_key(clock: FakeClock) -> None:
    evictions = Evictions()
    store = Store(clock=clock, on_evict=evictions)
    store.set(b"k", b"v", ttl=5)
    store.set(7, "never")
    assert store.ttl(7) is None
    clock.advance(5)
    with pytest.raises(KeyError) as raised:
        store.ttl(b"k")
    assert raised.value.args == (b"k",)
    assert store.stats().expirations == 1
    assert len(store) == 1
    assert evictions.count(RemovalCause.EXPIRED) == 1
    with pytest.raises(KeyError):
        store.ttl("absent")
    with pytest.raises(InvalidKeyError):
        store.ttl([1, 2])  # type: ignore[arg-type]
    check_consistent(store, default_weigher)


def test_a_fractional_ttl(clock: FakeClock) -> None:
    store = Store(clock=clock)
    store.set("a", 1, ttl=0.1)
    assert store.ttl("a") == pytest.approx(0.1)
    clock.advance(0.05)
    assert store.get("a") == 1
    clock.now = 1000.0 + 0.1
    assert "a" not in store


def test_expire_sets_a_ttl_and_replaces_one(clock: FakeClock) -> None:
    store = Store(clock=clock)
    store.set("a", 1)
    assert store.expire("a", 5) is True
    assert store.ttl("a") == 5
    clock.advance(4)
    assert store.expire("a", 10) is True  # from now, not from the first expire()
    clock.advance(9)
    assert store.get("a") == 1
    clock.advance(1)
    assert store.get("a") is None
    assert store.expire("a", 10) is False  # an expired key is absent


def test_expire_can_shorten_a_ttl(clock: FakeClock) -> None:
    evictions = Evictions()
    store = Store(clock=clock, on_evict=evictions)
    store.set("a", 1, ttl=400 * DAY)
    assert store.expire("a", 1) is True
    clock.advance(2)
    store.set("other", 1)  # a write advances the wheel: the new, earlier expiry is found
    assert evictions.calls == [("a", 1, RemovalCause.EXPIRED)]


def test_persist_removes_the_ttl(clock: FakeClock) -> None:
    evictions = Evictions()
    store = Store(clock=clock, on_evict=evictions)
    store.set("a", 1, ttl=5)
    assert store.persist("a") is True
    assert store.ttl("a") is None
    assert store.persist("a") is False  # no TTL left to remove
    clock.advance(400 * DAY)
    assert store.get("a") == 1
    assert len(store) == 1
    assert evictions.calls == []


def test_persist_on_an_expired_key_is_too_late(clock: FakeClock) -> None:
    store = Store(clock=clock)
    store.set("a", 1, ttl=5)
    clock.advance(5)
    assert store.persist("a") is False
    assert "a" not in store


def test_set_without_a_ttl_removes_the_ttl(clock: FakeClock) -> None:
    store = Store(clock=clock)
    store.set("a", 1, ttl=5)
    store.set("a", 2)
    assert store.ttl("a") is None
    clock.advance(10)
    assert store.get("a") == 2


def test_set_with_a_ttl_resets_it(clock: FakeClock) -> None:
    store = Store(clock=clock)
    store.set("a", 1, ttl=5)
    clock.advance(4)
    store.set("a", 2, ttl=5)
    assert store.ttl("a") == 5
    clock.advance(4)
    assert store.get("a") == 2
    store.set("a", 3, ttl=1)  # a shorter TTL replaces a longer one
    clock.advance(1)
    assert store.get("a") is None


def test_incr_keeps_the_ttl(clock: FakeClock) -> None:
    store = Store(clock=clock)
    store.set("n", 1, ttl=10)
    clock.advance(4)
    assert store.incr("n", 2) == 3
    assert store.ttl("n") == 6
    clock.advance(6)
    assert store.get("n") is None
    assert store.incr("n") == 1  # the old counter expired: a new one starts, without a TTL
    assert store.ttl("n") is None


def test_an_expired_key_can_be_set_again(clock: FakeClock) -> None:
    store = Store(clock=clock)
    store.set("a", 1, ttl=1)
    clock.advance(2)
    assert store.set("a", 2, ttl=1) is True
    assert store.get("a") == 2
    assert store.ttl("a") == 1


def test_delete_of_an_expired_key_reports_it_absent(clock: FakeClock) -> None:
    store = Store(clock=clock)
    store.set("a", 1, ttl=1)
    clock.advance(1)
    assert store.delete("a") is False
    assert len(store) == 0


# ---------------------------------------------------------------- the timer wheel, seen from outside

WHEEL_TTLS = [0.5, 30.0, 2 * HOUR, 3 * DAY, 400 * DAY]
"""One TTL per wheel level (seconds, minutes, hours, days) and one beyond the wheel's span."""


@pytest.mark.parametrize("ttl", WHEEL_TTLS)
def test_the_wheel_reclaims_without_any_read(clock: FakeClock, ttl: float) -> None:
    evictions = Evictions()
    store = Store(clock=clock, on_evict=evictions)
    store.set("doomed", "v", ttl=ttl)
    store.set("kept", "v")
    # Walk the clock up to the expiry in uneven steps, writing another key at every step (writes
    # advance the wheel); nothing is reclaimed early, so the cascades between levels are exercised.
    rng = random.Random(int(ttl))
    elapsed = 0.0
    while True:
        step = rng.uniform(0, ttl / 5)
        if elapsed + step >= ttl:
            break
        clock.advance(step)
        elapsed += step
        store.set("writer", elapsed)
        assert evictions.calls == [], f"reclaimed {ttl - elapsed} s early"
    clock.now = 1000.0 + ttl + 1.0  # the wheel may be up to one second late, not more
    store.set("writer", "last")
    assert evictions.calls == [("doomed", "v", RemovalCause.EXPIRED)]
    stats = store.stats()
    assert stats.expirations == 1
    assert stats.entries == 2
    assert stats.bytes == default_weigher("kept", "v") + default_weigher("writer", "last")


@pytest.mark.parametrize("ttl", WHEEL_TTLS)
def test_len_is_exact_at_the_instant_of_expiry(clock: FakeClock, ttl: float) -> None:
    evictions = Evictions()
    store = Store(clock=clock, on_evict=evictions)
    store.set("doomed", "v", ttl=ttl)
    clock.advance(ttl / 2)
    assert len(store) == 1
    clock.now = 1000.0 + ttl
    assert len(store) == 0
    assert evictions.calls == [("doomed", "v", RemovalCause.EXPIRED)]
    assert store.stats().expirations == 1


@pytest.mark.parametrize("jump", [1.0, 65.0, 5000.0, 300000.0, 20 * 10**6, 1e12])
def test_a_large_clock_jump_reclaims_everything_due(clock: FakeClock, jump: float) -> None:
    evictions = Evictions()
    store = Store(clock=clock, on_evict=evictions)
    rng = random.Random(7)
    ttls = {
        i: rng.choice([0.5, 1.0, 30.0, 64.0, HOUR, DAY, 3 * DAY, 100 * DAY, 400 * DAY])
        for i in range(300)
    }
    for key, ttl in ttls.items():
        store.set(key, key, ttl=ttl)
    store.set("forever", 0)
    clock.advance(jump + 1.0)
    store.set("writer", 0)  # no read: only the wheel can have found them
    due = {key for key, ttl in ttls.items() if ttl <= jump}
    assert set(evictions.keys(RemovalCause.EXPIRED)) == due
    assert len(evictions.calls) == len(due)
    assert sorted(store.keys(), key=repr) == sorted(
        [*(k for k in ttls if k not in due), "forever", "writer"], key=repr
    )
    assert store.stats().expirations == len(due)


def test_every_expiry_is_reported_exactly_once(clock: FakeClock) -> None:
    evictions = Evictions()
    store = Store(clock=clock, on_evict=evictions)
    rng = random.Random(3)
    expected: dict[int, float] = {}
    for i in range(2000):
        ttl = rng.choice([0.25, 0.5, 1.0, 10.0, 70.0, 5000.0, 300000.0])
        store.set(i, i, ttl=ttl)
        expected[i] = clock.now + ttl
        clock.advance(rng.choice([0.0, 0.1, 1.0, 50.0, 1000.0]))
        if i % 3 == 0:
            store.get(rng.randrange(i + 1))  # some are found by lazy reads instead
    clock.advance(10**7)
    assert len(store) == 0
    reported = evictions.keys(RemovalCause.EXPIRED)
    assert sorted(reported) == list(range(2000))
    assert store.stats().expirations == 2000


def test_a_replaced_entry_is_not_expired_by_its_old_ttl(clock: FakeClock) -> None:
    evictions = Evictions()
    store = Store(clock=clock, on_evict=evictions)
    store.set("a", 1, ttl=5)
    store.set("a", 2, ttl=50)
    clock.advance(10)
    assert len(store) == 1
    assert store.get("a") == 2
    store.delete("a")
    store.set("a", 3)
    clock.advance(100)
    assert store.get("a") == 3
    assert evictions.calls == []


def test_many_keys_expire_in_the_same_second(clock: FakeClock) -> None:
    store = Store(clock=clock)
    for i in range(1000):
        store.set(i, i, ttl=10 + i / 1000)
    clock.advance(10.5)  # exactly the expiry of key 500, which is therefore gone too
    assert len(store) == 499
    resident = store.keys()
    assert sorted(key for key in resident if isinstance(key, int)) == list(range(501, 1000))
    clock.advance(0.5)
    assert len(store) == 0


def test_expired_entries_leave_the_byte_count(clock: FakeClock) -> None:
    store = Store(max_bytes=10_000, clock=clock)
    for i in range(100):
        store.set(i, b"x" * 50, ttl=1 + i % 10)
    clock.advance(5)
    check_consistent(store, default_weigher, max_bytes=10_000)
    assert len(store) == 50


# ---------------------------------------------------------------- a clock that goes backwards


def test_a_clock_going_backwards_is_harmless_to_reads(clock: FakeClock) -> None:
    store = Store(clock=clock)
    store.set("a", 1, ttl=10)
    clock.advance(5)
    store.set("b", 2, ttl=10)  # the wheel has now seen 1005
    clock.now = 500.0
    assert store.get("a") == 1
    assert store.ttl("a") == 510.0
    assert store.set("c", 3, ttl=10) is True  # expires at 510, before the wheel's time
    assert store.get("c") == 3
    clock.now = 510.0
    assert store.get("c") is None
    assert store.get("a") == 1
    clock.now = 1010.0
    assert store.get("a") is None
    assert store.get("b") == 2
    clock.now = 1015.0
    assert store.keys() == []


def test_a_clock_going_backwards_loses_no_expiry(clock: FakeClock) -> None:
    evictions = Evictions()
    store = Store(clock=clock, on_evict=evictions)
    store.set("a", 1, ttl=100)
    clock.advance(50)
    store.set("b", 1)
    clock.advance(-40)
    store.set("c", 1, ttl=100)
    clock.now = 1000.0 + 10 * DAY
    store.set("d", 1)
    assert sorted(evictions.keys(RemovalCause.EXPIRED)) == ["a", "c"]
    assert sorted(store.keys()) == ["b", "d"]


def test_len_after_the_clock_went_backwards(clock: FakeClock) -> None:
    store = Store(clock=clock)
    store.set("x", 1)  # the wheel's time is now 1000
    clock.now = 0.0
    store.set("a", 1, ttl=10)
    clock.now = 20.0
    assert store.get("a") is None  # reads are right...
    store.set("a", 1, ttl=10)  # expires at 30
    clock.now = 40.0
    # ...and so are the counts, though the entry was filed while the wheel stood at 1000: an
    # entry filed by its own expiry time would sit in a slot the wheel only visits at 1034.
    assert len(store) == 1
    assert store.keys() == ["x"]
    assert store.stats().entries == 1
