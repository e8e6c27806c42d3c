"""The hierarchical timer wheel on its own: schedule, deschedule, advance, at every level."""

from __future__ import annotations

import random
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import pytest

from stratacache.engine import TimerWheel
from stratacache.engine.timerwheel import TimedEntry

MINUTE = 60.0
HOUR = 3600.0
DAY = 86400.0


@dataclass(eq=False)
class Timed:
    """The least a wheel entry needs: a key, an expiry and the slot the wheel keeps its bucket in."""

    key: Hashable
    expires: float
    bucket: dict[Hashable, TimedEntry] | None = None


def filed(entry: TimedEntry) -> bool:
    """Whether the wheel holds ``entry`` in one of its buckets."""
    return entry.bucket is not None and entry.bucket.get(entry.key) is entry


def keys(entries: Sequence[TimedEntry]) -> list[Hashable]:
    """The keys of ``entries``, sorted by their repr (keys of mixed types sort too)."""
    return sorted((entry.key for entry in entries), key=repr)


def test_an_entry_is_returned_once_its_time_has_come() -> None:
    wheel = TimerWheel(now=100.0)
    entry = Timed("a", 105.0)
    wheel.schedule(entry)
    assert filed(entry)
    assert wheel.advance(104.0) == []
    assert wheel.advance(104.999, exact=True) == []
    assert wheel.advance(105.0, exact=True) == [entry]
    assert not filed(entry)
    assert wheel.advance(106.0, exact=True) == []
    assert wheel.advance(10**9) == []


def test_without_exact_an_entry_is_at_most_one_second_late() -> None:
    wheel = TimerWheel(now=0.0)
    entry = Timed("a", 5.5)
    wheel.schedule(entry)
    found: list[TimedEntry] = []
    now = 0.0
    while not found:
        now += 0.25
        found = wheel.advance(now)
        assert not found or now >= 5.5
    assert found == [entry]
    assert now <= 5.5 + 1.0


def test_deschedule_removes_an_entry() -> None:
    wheel = TimerWheel(now=0.0)
    gone, kept = Timed("gone", 10.0), Timed("kept", 10.0)
    wheel.schedule(gone)
    wheel.schedule(kept)
    wheel.deschedule(gone)
    assert not filed(gone)
    assert gone.bucket is None
    wheel.deschedule(gone)  # twice is harmless
    wheel.deschedule(Timed("never scheduled", 1.0))
    assert wheel.advance(11.0) == [kept]


def test_rescheduling_moves_an_entry() -> None:
    wheel = TimerWheel(now=0.0)
    entry = Timed("a", 10.0)
    wheel.schedule(entry)
    entry.expires = 5000.0
    wheel.schedule(entry)
    assert wheel.advance(100.0, exact=True) == []
    entry.expires = 200.0  # earlier again, from a coarser level to a finer one
    wheel.schedule(entry)
    assert wheel.advance(199.0, exact=True) == []
    assert wheel.advance(200.0, exact=True) == [entry]
    assert wheel.advance(6000.0, exact=True) == []


def test_entries_with_equal_keys_in_different_wheels_do_not_mix() -> None:
    first, second = TimerWheel(now=0.0), TimerWheel(now=0.0)
    a, b = Timed("k", 3.0), Timed("k", 4.0)
    first.schedule(a)
    second.schedule(b)
    assert first.advance(3.0, exact=True) == [a]
    assert second.advance(3.5, exact=True) == []
    assert second.advance(4.0, exact=True) == [b]


@pytest.mark.parametrize(
    "delay", [0.5, 30.0, 63.9, 64.0, 65.0, 2 * HOUR, 4096.0, 3 * DAY, 200 * DAY, 400 * DAY, 10**9]
)
def test_every_level_delivers_exactly_on_time(delay: float) -> None:
    start = 12_345.6
    wheel = TimerWheel(now=start)
    entry = Timed("a", start + delay)
    wheel.schedule(entry)
    # Step in uneven strides so that each level's buckets tick and cascade on the way.
    rng = random.Random(int(delay))
    now = start
    while now + delay / 50 < entry.expires:
        now += rng.uniform(0, delay / 25)
        if now >= entry.expires:
            break
        assert wheel.advance(now, exact=True) == [], f"{entry.expires - now} s early"
    assert wheel.advance(entry.expires, exact=True) == [entry]


@pytest.mark.parametrize("jump", [1.0, 64.0, 4096.0, 262_144.0, 64 * 262_144.0, 1e12])
def test_a_large_jump_returns_everything_due(jump: float) -> None:
    wheel = TimerWheel(now=0.0)
    rng = random.Random(int(jump))
    entries = [
        Timed(i, rng.choice([0.5, 1.0, 70.0, 5000.0, 3 * DAY, 400 * DAY, 1e11])) for i in range(500)
    ]
    for entry in entries:
        wheel.schedule(entry)
    due = wheel.advance(jump)
    assert keys(due) == keys([e for e in entries if e.expires <= jump])
    rest = wheel.advance(2e12)
    assert keys(due + rest) == keys(entries)


@pytest.mark.parametrize("seed", range(10))
def test_random_schedules_each_entry_returned_once_and_on_time(seed: int) -> None:
    rng = random.Random(seed)
    now = rng.uniform(0, 10**6)
    wheel = TimerWheel(now=now)
    live: dict[int, Timed] = {}
    returned: set[int] = set()
    for step in range(3000):
        action = rng.random()
        if action < 0.4:
            delay = rng.choice([0.1, 0.5, 1.0, 3.0, 63.0, 64.0, 100.0, 4095.0, 5000.0, 3 * DAY])
            entry = Timed(step, now + delay * rng.random())
            live[step] = entry
            wheel.schedule(entry)
        elif action < 0.5 and live:
            key = rng.choice(list(live))
            entry = live[key]
            entry.expires = now + rng.choice([0.2, 2.0, 70.0, 10_000.0])
            wheel.schedule(entry)  # reschedule
        elif action < 0.6 and live:
            wheel.deschedule(live.pop(rng.choice(list(live))))
        else:
            now += rng.choice([0.0, 0.05, 0.3, 1.0, 10.0, 64.0, 1000.0, 5000.0, DAY])
            for found in wheel.advance(now, exact=True):
                assert isinstance(found, Timed)
                assert isinstance(found.key, int)
                assert found.key not in returned, "returned twice"
                assert live.get(found.key) is found, "a descheduled entry came back"
                assert found.expires <= now, "returned early"
                assert found.bucket is None
                returned.add(found.key)
                del live[found.key]
            # Exact: everything due has been returned.
            assert all(entry.expires > now for entry in live.values())
    for found in wheel.advance(now + 10**9):
        assert isinstance(found.key, int)
        assert found.key not in returned
        returned.add(found.key)
        del live[found.key]
    assert live == {}


def test_time_going_backwards_is_ignored() -> None:
    wheel = TimerWheel(now=1000.0)
    entry = Timed("a", 1010.0)
    wheel.schedule(entry)
    assert wheel.advance(500.0) == []
    assert wheel.advance(500.0, exact=True) == []
    assert wheel.advance(1010.0, exact=True) == [entry]


def test_an_entry_already_due_when_scheduled_is_found_by_the_next_exact_advance() -> None:
    wheel = TimerWheel(now=1000.0)
    late = Timed("late", 10.0)  # the clock went backwards before it was scheduled
    wheel.schedule(late)
    assert wheel.advance(20.0, exact=True) == [late]


def test_clear_drops_everything() -> None:
    wheel = TimerWheel(now=0.0)
    for i in range(100):
        wheel.schedule(Timed(i, float(i + 1)))
    wheel.clear(now=50.0)
    assert wheel.advance(10**6) == []
    fresh = Timed("fresh", 51.0)
    wheel.schedule(fresh)
    assert wheel.advance(51.0, exact=True) == [fresh]
