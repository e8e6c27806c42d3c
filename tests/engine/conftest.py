"""Shared pieces of the engine tests: a fake clock, an eviction recorder, and a consistency check.

The engine takes its clock and its randomness as arguments, so no test here sleeps or depends on
the time of day: :class:`FakeClock` stands still until a test moves it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from stratacache.engine import RemovalCause, Store, StoreStats
from stratacache.engine import store as store_module

START = 1000.0
"""Where a :class:`FakeClock` starts: a round number, so TTLs that are sums of powers of two stay exact."""


class FakeClock:
    """A monotonic clock that moves only when told to: ``clock()`` reads it, ``advance()`` moves it."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock by ``seconds`` (a negative number moves it back, as a broken clock might)."""
        self.now += seconds


@dataclass
class Evictions:
    """An ``on_evict`` listener that remembers every call, in order."""

    calls: list[tuple[Any, Any, RemovalCause]] = field(default_factory=list)

    def __call__(self, key: Any, value: Any, cause: RemovalCause) -> None:
        self.calls.append((key, value, cause))

    def keys(self, cause: RemovalCause) -> list[Any]:
        """The keys reported with ``cause``, in the order they were reported."""
        return [key for key, _, reported in self.calls if reported is cause]

    def count(self, cause: RemovalCause) -> int:
        """How many removals were reported with ``cause``."""
        return len(self.keys(cause))


@dataclass(frozen=True)
class Snapshot:
    """Everything observable about a store without touching its policy: contents, TTLs, counters."""

    contents: dict[Any, tuple[Any, float | None]]
    stats: StoreStats


def snapshot(store: Store) -> Snapshot:
    """Read ``store`` with :meth:`Store.peek` and :meth:`Store.ttl` only (no hit or miss is counted)."""
    missing = object()
    contents: dict[Any, tuple[Any, float | None]] = {}
    live = store.keys()
    for key in live:
        value = store.peek(key, missing)
        assert value is not missing, f"keys() listed {key!r} but peek() does not find it"
        contents[key] = (value, store.ttl(key))
    return Snapshot(contents, store.stats())


def check_consistent(
    store: Store,
    weigher: Callable[[Any, Any], int],
    *,
    max_entries: int | None = None,
    max_bytes: int | None = None,
) -> None:
    """Assert the store's own bookkeeping agrees with its contents and stays within its limits."""
    missing = object()
    keys = store.keys()
    stats = store.stats()
    assert len(set(keys)) == len(keys), "keys() repeats a key"
    assert stats.entries == len(keys) == len(store)
    weight = 0
    for key in keys:
        value = store.peek(key, missing)
        assert value is not missing, f"keys() listed {key!r} but peek() does not find it"
        assert key in store
        remaining = store.ttl(key)
        assert remaining is None or (remaining > 0 and math.isfinite(remaining))
        weight += weigher(key, value)
    assert stats.bytes == weight, f"stats().bytes is {stats.bytes}, the entries weigh {weight}"
    if max_entries is not None:
        assert len(keys) <= max_entries
    if max_bytes is not None:
        assert stats.bytes <= max_bytes
    policy = store.policy
    units = stats.bytes if max_bytes is not None else len(keys)
    if max_entries is not None or max_bytes is not None:
        assert policy.window + policy.probation + policy.protected == units
    assert min(policy.window, policy.probation, policy.protected) >= 0


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock at :data:`START`."""
    return FakeClock()


@pytest.fixture
def evictions() -> Evictions:
    """A fresh recording ``on_evict`` listener."""
    return Evictions()


IMPLEMENTATIONS = ["compiled", "python"]
"""The store runs on the compiled accelerator when it was built, else on pure Python: test both."""


@pytest.fixture(params=IMPLEMENTATIONS)
def implementation(request: pytest.FixtureRequest) -> Iterator[str]:
    """Make every ``Store()`` in the test use one implementation (a module opts in with usefixtures).

    It changes the default of ``Store(accelerate=...)`` for the duration of the test, so helpers that
    build their own stores are covered without each growing a parameter.
    """
    compiled = request.param == "compiled"
    if compiled and getattr(store_module, "_accel", None) is None:
        pytest.skip("the compiled accelerator is not built on this machine")
    defaults = Store.__init__.__kwdefaults__
    assert defaults is not None
    assert "accelerate" in defaults
    saved = defaults["accelerate"]
    defaults["accelerate"] = compiled
    try:
        assert Store().accelerated is compiled
        yield request.param
    finally:
        defaults["accelerate"] = saved
