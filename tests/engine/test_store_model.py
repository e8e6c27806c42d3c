"""Model-based stress tests: the store against a plain dict and a fake clock.

Two drivers apply the same operations to a :class:`Store` and to a reference model and compare every
answer:

* :class:`UnboundedDriver` runs a store with no limits. It never evicts, so it must agree with the
  model *exactly*: values, the remaining TTL to the last bit, and expiry at exactly the right instant
  (an entry whose expiry time equals the clock's reading is expired), hits and misses included.
* :class:`BoundedDriver` runs a store with ``max_entries`` and/or ``max_bytes``. It may evict whatever
  it likes, so the model only knows the *latest* value set for each key and when it expires, and the
  invariants are: whatever the store returns is that latest value and is not expired; it never holds
  more than its limits; ``stats()`` agrees with its contents and with what the listener was told.

Each driver is run by a hypothesis state machine (short, shrinkable sequences) and by long seeded
random sequences (thousands of operations, which reach the read buffer's drains, the sketch's resets
and the timer wheel's coarser levels).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from stratacache.engine import RemovalCause, Store, default_weigher
from stratacache.errors import NotAnIntegerError

from .conftest import Evictions, FakeClock, check_consistent

pytestmark = pytest.mark.usefixtures("implementation")

MISSING: Any = object()
"""The ``default`` every read passes, so that a stored ``None`` is told apart from a miss."""

KEYS: list[Any] = ["a", "b", "", "ü", b"a", b"", 0, 1, -7, 2**70]
"""Few keys of every accepted type, so operations collide often (``"a"`` and ``b"a"`` are distinct)."""

VALUES: list[Any] = [0, 1, -3, 2**65, True, None, "x", "", "héllo", b"", b"\x00\xff", 1.5, (1, 2)]

TTLS: list[float | None] = [None, None, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 30.0, 64.0, 100.0, 4096.0]
TTLS += [7200.0, 262144.0, 3 * 86400.0, 400 * 86400.0]

STEPS: list[float] = [0.0, 0.1, 0.25, 0.5, 0.75, 1.0, 2.0, 30.0, 63.0, 64.0, 100.0, 4096.0]
STEPS += [7200.0, 262144.0, 3 * 86400.0, 400 * 86400.0]

INCREMENTS: list[int] = [1, -1, 5, 0, 2**64]


@dataclass
class Expected:
    """What the model knows about one key: the latest value set and when it expires."""

    value: Any
    expires: float | None  # None: never

    def live(self, now: float) -> bool:
        """Whether the entry is still readable at ``now`` (an expiry equal to ``now`` has passed)."""
        return self.expires is None or self.expires > now


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class UnboundedDriver:
    """A store with no limits and the dict it must agree with exactly."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.evictions = Evictions()
        self.store = Store(clock=self.clock, on_evict=self.evictions)
        self.model: dict[Any, Expected] = {}
        self.hits = 0
        self.misses = 0
        self.reported = 0  # listener calls already checked

    @property
    def now(self) -> float:
        """The fake clock's reading."""
        return self.clock.now

    def expected(self, key: Any) -> Expected | None:
        """The model's live entry for ``key``, if any."""
        entry = self.model.get(key)
        return entry if entry is not None and entry.live(self.now) else None

    def _check_reports(self, before: dict[Any, Expected]) -> None:
        """Every removal the listener heard of in the last operation was a due expiry."""
        for key, value, cause in self.evictions.calls[self.reported :]:
            assert cause is RemovalCause.EXPIRED, "an unbounded store evicted an entry"
            entry = before.get(key)
            assert entry is not None, f"expiry reported for {key!r}, which was never set"
            assert entry.value is value
            assert entry.expires is not None
            assert entry.expires <= self.now
        self.reported = len(self.evictions.calls)

    def _apply(self, action: Callable[[], Any]) -> Any:
        before = dict(self.model)
        try:
            return action()
        finally:  # an action that raises (ttl's KeyError) may have reclaimed an entry on its way
            self._check_reports(before)

    def set(self, key: Any, value: Any, ttl: float | None) -> None:
        """``set`` always stores in an unbounded store; a ``ttl`` of None removes any previous TTL."""
        assert self._apply(lambda: self.store.set(key, value, ttl)) is True
        self.model[key] = Expected(value, None if ttl is None else self.now + ttl)

    def get(self, key: Any) -> None:
        """``get`` returns the live value, counting a hit, or the default, counting a miss."""
        got = self._apply(lambda: self.store.get(key, MISSING))
        entry = self.expected(key)
        if entry is None:
            assert got is MISSING
            self.misses += 1
        else:
            assert got is entry.value
            self.hits += 1

    def peek(self, key: Any) -> None:
        """``peek`` answers like ``get`` but counts nothing."""
        got = self._apply(lambda: self.store.peek(key, MISSING))
        entry = self.expected(key)
        assert got is (MISSING if entry is None else entry.value)

    def contains(self, key: Any) -> None:
        """``in`` sees exactly the live keys."""
        assert self._apply(lambda: key in self.store) is (self.expected(key) is not None)

    def delete(self, key: Any) -> None:
        """``delete`` reports whether a live entry was removed."""
        assert self._apply(lambda: self.store.delete(key)) is (self.expected(key) is not None)
        self.model.pop(key, None)

    def incr(self, key: Any, amount: int) -> None:
        """``incr`` adds to a live int and keeps its TTL, starts an absent key at ``amount``."""
        entry = self.expected(key)
        if entry is not None and not _is_int(entry.value):
            with pytest.raises(NotAnIntegerError):
                self._apply(lambda: self.store.incr(key, amount))
            return
        result = self._apply(lambda: self.store.incr(key, amount))
        if entry is None:
            assert result == amount
            self.model[key] = Expected(amount, None)
        else:
            assert result == entry.value + amount
            self.model[key] = Expected(result, entry.expires)

    def expire(self, key: Any, seconds: float) -> None:
        """``expire`` sets a new TTL on a live key and reports whether there was one."""
        entry = self.expected(key)
        assert self._apply(lambda: self.store.expire(key, seconds)) is (entry is not None)
        if entry is not None:
            entry.expires = self.now + seconds

    def persist(self, key: Any) -> None:
        """``persist`` removes the TTL of a live key and reports whether it had one."""
        entry = self.expected(key)
        had_ttl = entry is not None and entry.expires is not None
        assert self._apply(lambda: self.store.persist(key)) is had_ttl
        if entry is not None:
            entry.expires = None

    def ttl(self, key: Any) -> None:
        """``ttl`` is exact: ``expires - now`` computed as the store computes it."""
        entry = self.expected(key)
        if entry is None:
            with pytest.raises(KeyError):
                self._apply(lambda: self.store.ttl(key))
            return
        remaining = self._apply(lambda: self.store.ttl(key))
        if entry.expires is None:
            assert remaining is None
        else:
            assert remaining == entry.expires - self.now
            assert remaining > 0

    def advance(self, seconds: float) -> None:
        """Time passes; nothing is asked of the store."""
        self.clock.advance(seconds)

    def rewind(self, seconds: float) -> None:
        """The clock goes back by ``seconds``, after the store has seen the present.

        What expired is gone for good once the store noticed; what did not expire simply has
        longer to live. Making the store notice first (``keys()`` reclaims everything due) keeps
        the model exact: an entry that expired unobserved would otherwise come back to life.
        """
        self.keys()
        for key in [key for key in self.model if self.expected(key) is None]:
            del self.model[key]
        self.clock.advance(-seconds)

    def advance_to_next_expiry(self, offset: float) -> None:
        """Move the clock to exactly (or just around) the next expiry, the instant that matters."""
        due = [e.expires for e in self.model.values() if e.expires is not None and e.live(self.now)]
        if due:
            self.clock.now = max(self.now, min(due) + offset)

    def length(self) -> None:
        """``len`` counts exactly the live entries, however recently they expired."""
        live = sum(1 for key in self.model if self.expected(key) is not None)
        assert self._apply(lambda: len(self.store)) == live

    def keys(self) -> None:
        """``keys`` lists exactly the live keys."""
        expected = {key for key in self.model if self.expected(key) is not None}
        got = self._apply(self.store.keys)
        assert len(got) == len(expected)
        assert set(got) == expected

    def clear(self) -> None:
        """``clear`` empties the store and tells no listener."""
        calls = len(self.evictions.calls)
        self.store.clear()
        assert len(self.evictions.calls) == calls
        self.model.clear()

    def stats(self) -> None:
        """The counters are exact, and the listener heard of every expiry."""
        stats = self._apply(self.store.stats)
        assert (stats.hits, stats.misses) == (self.hits, self.misses)
        assert stats.evictions == stats.rejections == 0
        assert stats.expirations == len(self.evictions.calls)
        live = [key for key in self.model if self.expected(key) is not None]
        assert stats.entries == len(live)
        assert stats.bytes == sum(default_weigher(key, self.model[key].value) for key in live)

    def check(self) -> None:
        """Everything at once: the contents, the TTLs, the counters and the internal bookkeeping."""
        self.stats()
        self._apply(lambda: check_consistent(self.store, default_weigher))
        for key in KEYS:
            self.peek(key)
            self.ttl(key)


def _weigh(key: Any, value: Any) -> int:
    """The bounded tests' weigher: strings and bytes by length, other values by a small number."""
    if isinstance(value, str | bytes):
        return len(value) + 1
    if isinstance(value, int):
        return 1 + abs(value) % 5
    return 3


BOUNDED_KEYS: list[Any] = [*KEYS, "c", "d", 2, 3, b"z"]
BOUNDED_VALUES: list[Any] = [*VALUES, b"x" * 12, "y" * 20, b"heavy" * 20]
LIMITS: list[tuple[int | None, int | None]] = [
    (5, None),
    (None, 40),
    (6, 30),
    (3, 100),
    (1, None),
    (None, 6),
    (40, 2000),
]
"""(max_entries, max_bytes): tight, byte-only, both, one entry, a budget smaller than some values."""


class BoundedDriver:
    """A bounded store and the latest value set for every key, which is all it may ever return."""

    def __init__(self, max_entries: int | None, max_bytes: int | None, seed: int = 0) -> None:
        self.clock = FakeClock()
        self.evictions = Evictions()
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.store = Store(
            max_entries,
            max_bytes,
            weigher=_weigh,
            clock=self.clock,
            on_evict=self.evictions,
            rng=random.Random(seed),
        )
        self.model: dict[Any, Expected] = {}
        self.hits = 0
        self.misses = 0
        self.too_heavy = 0  # sets refused because the value alone exceeds max_bytes
        self.reported = 0

    @property
    def now(self) -> float:
        """The fake clock's reading."""
        return self.clock.now

    def expected(self, key: Any) -> Expected | None:
        """The latest live value set for ``key``, if any: the only value the store may return."""
        entry = self.model.get(key)
        return entry if entry is not None and entry.live(self.now) else None

    def _check_reports(self, before: dict[Any, Expected], written: Any = MISSING) -> None:
        """Each removal reported in the last operation names a value the key really had."""
        for key, value, cause in self.evictions.calls[self.reported :]:
            entry = before.get(key)
            if cause is RemovalCause.EXPIRED:
                assert entry is not None
                assert entry.value is value
                assert entry.expires is not None
                assert entry.expires <= self.now
            else:
                # Evicted for size or refused admission: the previous value, or the one just set.
                assert (entry is not None and entry.value is value) or (
                    written is not MISSING and value is written
                ), f"{cause} reported {key!r}={value!r}, never its latest value"
        self.reported = len(self.evictions.calls)

    def _apply(self, action: Callable[[], Any], written: Any = MISSING) -> Any:
        before = dict(self.model)
        try:
            return action()
        finally:
            self._check_reports(before, written)

    def _peek(self, key: Any) -> Any:
        return self.store.peek(key, MISSING)

    def _check_read(self, key: Any, got: Any) -> None:
        if got is not MISSING:
            entry = self.expected(key)
            assert entry is not None, f"{key!r} returned {got!r} after it expired or was deleted"
            assert got is entry.value, f"{key!r} returned {got!r}, not its latest value"

    def set(self, key: Any, value: Any, ttl: float | None) -> None:
        """``True`` means resident now; ``False`` means gone (no stale previous value)."""
        heavy = self.max_bytes is not None and _weigh(key, value) > self.max_bytes
        stored = self._apply(lambda: self.store.set(key, value, ttl), written=value)
        self.model[key] = Expected(value, None if ttl is None else self.now + ttl)
        if heavy:
            assert stored is False
            self.too_heavy += 1
        if stored:
            assert self._peek(key) is value
        else:
            assert self._peek(key) is MISSING
            assert key not in self.store

    def get(self, key: Any) -> None:
        """A hit returns the latest live value; a miss is always allowed."""
        got = self._apply(lambda: self.store.get(key, MISSING))
        self._check_read(key, got)
        if got is MISSING:
            self.misses += 1
        else:
            self.hits += 1

    def peek(self, key: Any) -> None:
        """``peek`` obeys the same rule as ``get``."""
        self._check_read(key, self._apply(lambda: self._peek(key)))

    def contains(self, key: Any) -> None:
        """A key reported present returns its latest value."""
        if self._apply(lambda: key in self.store):
            got = self._peek(key)
            assert got is not MISSING
            self._check_read(key, got)

    def delete(self, key: Any) -> None:
        """``delete`` may only report a live entry, and leaves nothing behind."""
        present = self._peek(key) is not MISSING
        assert self._apply(lambda: self.store.delete(key)) is present
        assert self._peek(key) is MISSING
        self.model.pop(key, None)

    def incr(self, key: Any, amount: int) -> None:
        """``incr`` adds to what the store holds (which may have been evicted: then 0)."""
        current = self._peek(key)
        self._check_read(key, current)
        if current is not MISSING and not _is_int(current):
            with pytest.raises(NotAnIntegerError):
                self._apply(lambda: self.store.incr(key, amount))
            assert self._peek(key) is current
            return
        before = dict(self.model)
        result = self.store.incr(key, amount)
        # The new value may itself be refused or evicted at once: then the listener names it.
        self._check_reports(before, written=result)
        if current is MISSING:
            assert result == amount
            self.model[key] = Expected(result, None)
        else:
            assert result == current + amount
            entry = self.expected(key)
            assert entry is not None
            self.model[key] = Expected(result, entry.expires)
        got = self._peek(key)
        assert got is MISSING or got == result

    def expire(self, key: Any, seconds: float) -> None:
        """``expire`` works on whatever is resident."""
        present = self._peek(key) is not MISSING
        assert self._apply(lambda: self.store.expire(key, seconds)) is present
        entry = self.expected(key)
        if present:
            assert entry is not None
            entry.expires = self.now + seconds

    def persist(self, key: Any) -> None:
        """``persist`` reports whether the resident entry had a TTL."""
        present = self._peek(key) is not MISSING
        entry = self.expected(key)
        had_ttl = present and entry is not None and entry.expires is not None
        assert self._apply(lambda: self.store.persist(key)) is had_ttl
        if present:
            assert entry is not None
            entry.expires = None

    def ttl(self, key: Any) -> None:
        """A resident entry's TTL is exactly the one last given to it."""
        if self._peek(key) is MISSING:
            with pytest.raises(KeyError):
                self.store.ttl(key)
            return
        entry = self.expected(key)
        assert entry is not None
        remaining = self.store.ttl(key)
        assert remaining == (None if entry.expires is None else entry.expires - self.now)

    def advance(self, seconds: float) -> None:
        """Time passes."""
        self.clock.advance(seconds)

    def advance_to_next_expiry(self, offset: float) -> None:
        """Move the clock to exactly (or just around) the next expiry."""
        due = [e.expires for e in self.model.values() if e.expires is not None and e.live(self.now)]
        if due:
            self.clock.now = max(self.now, min(due) + offset)

    def clear(self) -> None:
        """``clear`` empties the store without telling the listener."""
        calls = len(self.evictions.calls)
        self.store.clear()
        assert len(self.evictions.calls) == calls
        assert len(self.store) == 0
        self.model.clear()

    def stats(self) -> None:
        """The counters agree with the reads made and the removals reported."""
        stats = self._apply(self.store.stats)
        assert (stats.hits, stats.misses) == (self.hits, self.misses)
        rejected = self.evictions.count(RemovalCause.REJECTED)
        assert stats.evictions == self.evictions.count(RemovalCause.SIZE) + rejected
        assert stats.rejections == rejected + self.too_heavy
        assert stats.expirations == self.evictions.count(RemovalCause.EXPIRED)

    def check(self) -> None:
        """The invariants that hold after every operation."""
        self._apply(
            lambda: check_consistent(
                self.store, _weigh, max_entries=self.max_entries, max_bytes=self.max_bytes
            )
        )
        resident = self.store.keys()
        for key in resident:
            self._check_read(key, self._peek(key))


# ------------------------------------------------------------------ hypothesis state machines

keys = st.sampled_from(KEYS)
values = st.sampled_from(VALUES) | st.integers() | st.text(max_size=4) | st.binary(max_size=4)
ttls = st.sampled_from(TTLS) | st.floats(min_value=0.001, max_value=1e9)
positive = st.sampled_from([t for t in TTLS if t is not None]) | st.floats(0.001, 1e9)
steps = st.sampled_from(STEPS) | st.floats(min_value=0.0, max_value=1e8)
amounts = st.sampled_from(INCREMENTS) | st.integers()
# Around an expiry: exactly on it, a hair before, a hair after.
offsets = st.sampled_from([0.0, 0.0, -1e-6, 1e-6, 1.0])
# A clock that goes backwards (a broken or adjusted clock) must do no harm.
rewinds = st.sampled_from([0.25, 1.0, 30.0, 5000.0])

MACHINE_SETTINGS = settings(
    max_examples=120,
    stateful_step_count=50,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


class UnboundedMachine(RuleBasedStateMachine):
    """Random operations on an unbounded store; it must match the model exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.driver = UnboundedDriver()

    @rule(key=keys, value=values, ttl=ttls)
    def set(self, key: Any, value: Any, ttl: float | None) -> None:
        self.driver.set(key, value, ttl)

    @rule(key=keys)
    def get(self, key: Any) -> None:
        self.driver.get(key)

    @rule(key=keys)
    def peek(self, key: Any) -> None:
        self.driver.peek(key)

    @rule(key=keys)
    def contains(self, key: Any) -> None:
        self.driver.contains(key)

    @rule(key=keys)
    def delete(self, key: Any) -> None:
        self.driver.delete(key)

    @rule(key=keys, amount=amounts)
    def incr(self, key: Any, amount: int) -> None:
        self.driver.incr(key, amount)

    @rule(key=keys, seconds=positive)
    def expire(self, key: Any, seconds: float) -> None:
        self.driver.expire(key, seconds)

    @rule(key=keys)
    def persist(self, key: Any) -> None:
        self.driver.persist(key)

    @rule(key=keys)
    def ttl(self, key: Any) -> None:
        self.driver.ttl(key)

    @rule(seconds=steps)
    def advance(self, seconds: float) -> None:
        self.driver.advance(seconds)

    @rule(offset=offsets)
    def advance_to_next_expiry(self, offset: float) -> None:
        self.driver.advance_to_next_expiry(offset)

    @rule(seconds=rewinds)
    def rewind(self, seconds: float) -> None:
        self.driver.rewind(seconds)

    @rule()
    def length(self) -> None:
        self.driver.length()

    @rule()
    def keys(self) -> None:
        self.driver.keys()

    @precondition(lambda self: len(self.driver.model) > 3)
    @rule()
    def clear(self) -> None:
        self.driver.clear()

    @rule()
    def stats(self) -> None:
        self.driver.stats()

    @rule()
    def check(self) -> None:
        self.driver.check()

    def teardown(self) -> None:
        self.driver.check()


bounded_keys = st.sampled_from(BOUNDED_KEYS)
bounded_values = st.sampled_from(BOUNDED_VALUES) | st.binary(max_size=30) | st.integers()


class BoundedMachine(RuleBasedStateMachine):
    """Random operations on a bounded store; it may evict, never lie, never overflow."""

    def __init__(self) -> None:
        super().__init__()
        self.driver = BoundedDriver(5, None)

    @initialize(limits=st.sampled_from(LIMITS), seed=st.integers(0, 3))
    def limits(self, limits: tuple[int | None, int | None], seed: int) -> None:
        self.driver = BoundedDriver(*limits, seed=seed)

    @rule(key=bounded_keys, value=bounded_values, ttl=ttls)
    def set(self, key: Any, value: Any, ttl: float | None) -> None:
        self.driver.set(key, value, ttl)

    @rule(key=bounded_keys)
    def get(self, key: Any) -> None:
        self.driver.get(key)

    @rule(key=bounded_keys)
    def peek(self, key: Any) -> None:
        self.driver.peek(key)

    @rule(key=bounded_keys)
    def contains(self, key: Any) -> None:
        self.driver.contains(key)

    @rule(key=bounded_keys)
    def delete(self, key: Any) -> None:
        self.driver.delete(key)

    @rule(key=bounded_keys, amount=amounts)
    def incr(self, key: Any, amount: int) -> None:
        self.driver.incr(key, amount)

    @rule(key=bounded_keys, seconds=positive)
    def expire(self, key: Any, seconds: float) -> None:
        self.driver.expire(key, seconds)

    @rule(key=bounded_keys)
    def persist(self, key: Any) -> None:
        self.driver.persist(key)

    @rule(key=bounded_keys)
    def ttl(self, key: Any) -> None:
        self.driver.ttl(key)

    @rule(seconds=steps)
    def advance(self, seconds: float) -> None:
        self.driver.advance(seconds)

    @rule(offset=offsets)
    def advance_to_next_expiry(self, offset: float) -> None:
        self.driver.advance_to_next_expiry(offset)

    @rule(seconds=rewinds)
    def rewind(self, seconds: float) -> None:
        self.driver.advance(-seconds)

    @precondition(lambda self: len(self.driver.model) > 3)
    @rule()
    def clear(self) -> None:
        self.driver.clear()

    @rule()
    def stats(self) -> None:
        self.driver.stats()

    @invariant()
    def within_limits(self) -> None:
        self.driver.check()

    def teardown(self) -> None:
        self.driver.stats()


def test_unbounded_machine() -> None:
    run_state_machine_as_test(UnboundedMachine, settings=MACHINE_SETTINGS)


def test_bounded_machine() -> None:
    run_state_machine_as_test(BoundedMachine, settings=MACHINE_SETTINGS)


# ------------------------------------------------------------------ long seeded random runs


def _random_ttl(rng: random.Random) -> float | None:
    return rng.choice(TTLS) if rng.random() < 0.8 else rng.uniform(0.001, 1e6)


def _run(driver: UnboundedDriver | BoundedDriver, rng: random.Random, ops: int) -> None:
    pool = KEYS if isinstance(driver, UnboundedDriver) else BOUNDED_KEYS
    vals = VALUES if isinstance(driver, UnboundedDriver) else BOUNDED_VALUES
    for _ in range(ops):
        key = rng.choice(pool)
        op = rng.random()
        if op < 0.25:
            driver.set(key, rng.choice(vals), _random_ttl(rng))
        elif op < 0.50:
            driver.get(key)
        elif op < 0.55:
            driver.peek(key)
        elif op < 0.60:
            driver.contains(key)
        elif op < 0.65:
            driver.delete(key)
        elif op < 0.72:
            driver.incr(key, rng.choice(INCREMENTS))
        elif op < 0.75:
            driver.expire(key, rng.choice([0.5, 1.0, 30.0, 5000.0, rng.uniform(0.01, 100.0)]))
        elif op < 0.77:
            driver.persist(key)
        elif op < 0.80:
            driver.ttl(key)
        elif op < 0.89:
            driver.advance(rng.choice(STEPS))
        elif op < 0.90:
            rewind = rng.choice([0.25, 1.0, 30.0, 5000.0])
            if isinstance(driver, UnboundedDriver):
                driver.rewind(rewind)
            else:
                driver.advance(-rewind)
        elif op < 0.95:
            driver.advance_to_next_expiry(rng.choice([0.0, 0.0, -1e-6, 1e-6]))
        elif op < 0.999:
            if isinstance(driver, UnboundedDriver):
                rng.choice([driver.length, driver.keys, driver.stats])()
            else:
                driver.stats()
        else:
            driver.clear()
        if isinstance(driver, BoundedDriver):
            driver.check()
    driver.stats()
    driver.check()


@pytest.mark.parametrize("seed", range(12))
def test_unbounded_store_matches_the_model(seed: int) -> None:
    _run(UnboundedDriver(), random.Random(seed), 1500)


@pytest.mark.parametrize("limits", LIMITS, ids=[f"entries={e}-bytes={b}" for e, b in LIMITS])
@pytest.mark.parametrize("seed", range(3))
def test_bounded_store_keeps_its_invariants(
    limits: tuple[int | None, int | None], seed: int
) -> None:
    _run(BoundedDriver(*limits, seed=seed), random.Random(seed), 800)


def test_long_run_reaches_the_coarse_wheel_levels() -> None:
    """Many keys with long TTLs and big clock steps: every level of the wheel cascades many times."""
    driver = UnboundedDriver()
    rng = random.Random(99)
    for i in range(3000):
        key = rng.choice(KEYS)
        driver.set(key, i, rng.choice([7200.0, 86400.0, 3 * 86400.0, 40 * 86400.0, 400 * 86400.0]))
        driver.advance(rng.choice([0.5, 3600.0, 86400.0, 10 * 86400.0]))
        if i % 7 == 0:
            driver.length()
        elif i % 7 == 1:
            driver.get(rng.choice(KEYS))
        elif i % 7 == 2:
            driver.ttl(rng.choice(KEYS))
    driver.check()
    assert driver.evictions.count(RemovalCause.EXPIRED) > 1000  # most entries lived to expire
