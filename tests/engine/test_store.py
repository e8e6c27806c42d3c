"""The store's API one method at a time, bad input, the eviction listener, and the doctests."""

from __future__ import annotations

import dataclasses
import doctest
import logging
import math
import random
import sys
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest

import stratacache.engine
import stratacache.engine.sketch
import stratacache.engine.store
import stratacache.engine.timerwheel
from stratacache.engine import RemovalCause, Store, StoreStats, default_weigher
from stratacache.errors import (
    ConfigError,
    EngineError,
    InvalidKeyError,
    InvalidTTLError,
    NotAnIntegerError,
    StrataError,
    WeigherError,
)

from .conftest import Evictions, FakeClock, check_consistent, snapshot

pytestmark = pytest.mark.usefixtures("implementation")

MISSING: Any = object()

# ------------------------------------------------------------------------- the basic API


def test_get_returns_the_default_for_an_absent_key() -> None:
    store = Store()
    assert store.get("a") is None
    assert store.get("a", MISSING) is MISSING
    assert store.peek("a", 7) == 7


def test_set_then_get_returns_the_same_object() -> None:
    store = Store()
    value = {"any": ["python", "object"]}
    assert store.set("a", value) is True
    assert store.get("a") is value
    assert store.peek("a") is value


def test_none_is_a_value_not_a_miss() -> None:
    store = Store()
    store.set("a", None)
    assert store.get("a", MISSING) is None
    assert "a" in store
    assert store.stats().hits == 1


def test_set_replaces_the_previous_value() -> None:
    store = Store()
    store.set("a", 1)
    store.set("a", 2)
    assert store.get("a") == 2
    assert len(store) == 1


@pytest.mark.parametrize("key", ["text", "", "ü∂", b"bytes", b"", 0, -1, 2**100, -(2**100)])
def test_every_accepted_key_type_round_trips(key: Any) -> None:
    store = Store()
    assert store.set(key, "v")
    assert store.get(key) == "v"
    assert key in store
    assert store.keys() == [key]
    assert store.delete(key) is True
    assert key not in store


def test_str_and_bytes_keys_are_distinct() -> None:
    store = Store()
    store.set("a", "text")
    store.set(b"a", "bytes")
    assert store.get("a") == "text"
    assert store.get(b"a") == "bytes"
    assert sorted(map(repr, store.keys())) == ["'a'", "b'a'"]


def test_delete_reports_whether_the_key_was_present() -> None:
    store = Store()
    store.set("a", 1)
    assert store.delete("a") is True
    assert store.delete("a") is False
    assert store.get("a") is None
    assert len(store) == 0


def test_contains_len_and_keys_follow_the_contents() -> None:
    store = Store()
    for i in range(10):
        store.set(i, str(i))
    store.delete(3)
    assert len(store) == 9
    assert 3 not in store
    assert 4 in store
    keys = store.keys()
    assert isinstance(keys, list)
    assert sorted(keys) == [0, 1, 2, 4, 5, 6, 7, 8, 9]


def test_keys_is_a_snapshot() -> None:
    store = Store()
    store.set("a", 1)
    keys = store.keys()
    store.set("b", 2)
    assert keys == ["a"]


def test_clear_empties_the_store() -> None:
    store = Store(max_entries=10)
    for i in range(20):
        store.set(i, i)
    store.clear()
    assert len(store) == 0
    assert store.keys() == []
    assert store.get(5) is None
    assert store.stats().bytes == 0
    assert store.stats().entries == 0
    store.set("again", 1)
    assert store.get("again") == 1
    check_consistent(store, default_weigher, max_entries=10)


def test_clear_keeps_the_counters(clock: FakeClock) -> None:
    store = Store(max_entries=2, clock=clock)
    for i in range(5):
        store.set(i, i)
    store.set("t", 1, ttl=1)
    clock.advance(1)
    store.get("missing")
    before = store.stats()
    assert before.evictions > 0
    assert before.misses == 1
    store.clear()
    after = store.stats()
    assert dataclasses.replace(after, bytes=before.bytes, entries=before.entries) == before


def test_clear_keeps_hits_that_were_still_buffered() -> None:
    # Hits wait in the read buffer until a write or a full buffer applies them to the policy.
    store = Store()
    store.set("a", 1)
    assert store.get("a") == 1
    assert store.get("a") == 1
    store.clear()
    assert store.stats().hits == 2


def test_stats_count_hits_and_misses() -> None:
    store = Store()
    store.set("a", 1)
    for _ in range(300):  # more than one read buffer's worth
        store.get("a")
    store.get("b")
    stats = store.stats()
    assert (stats.hits, stats.misses) == (300, 1)
    assert stats.hit_ratio == 300 / 301
    assert stats.entries == 1
    assert stats.bytes == default_weigher("a", 1)


def test_hit_ratio_before_any_lookup_is_zero() -> None:
    assert Store().stats().hit_ratio == 0.0


def test_stats_are_a_frozen_value() -> None:
    stats = Store().stats()
    assert isinstance(stats, StoreStats)
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.hits = 1  # type: ignore[misc]


def test_peek_and_contains_count_nothing() -> None:
    store = Store()
    store.set("a", 1)
    store.peek("a")
    store.peek("b")
    assert "a" in store
    assert "b" not in store
    stats = store.stats()
    assert (stats.hits, stats.misses) == (0, 0)


def _replay(peeks: bool) -> tuple[list[Any], Any]:
    store = Store(max_entries=20, rng=random.Random(5))
    rng = random.Random(6)
    for i in range(3000):
        key = int(rng.paretovariate(1.2)) % 60
        if store.get(key) is None:
            store.set(key, i)
        if peeks:
            for other in range(0, 60, 7):
                store.peek(other)
                assert (other in store) is (store.peek(other) is not None)
    return sorted(store.keys()), store.policy


def test_peek_has_no_effect_on_the_policy() -> None:
    assert _replay(peeks=True) == _replay(peeks=False)


def test_get_takes_its_arguments_by_keyword_too() -> None:
    store = Store()
    store.set("a", 1)
    assert store.get(key="a") == 1
    assert store.get("b", default=2) == 2
    assert store.get(key="b", default=3) == 3
    with pytest.raises(TypeError):
        store.get()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        store.get("a", 1, 2)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        store.get("a", fallback=2)  # type: ignore[call-arg]
    stats = store.stats()
    assert (stats.hits, stats.misses) == (1, 2)


def test_accelerated_says_which_implementation_runs(implementation: str) -> None:
    assert Store().accelerated is (implementation == "compiled")
    assert Store(accelerate=False).accelerated is False


def test_incr_starts_an_absent_key_at_the_amount() -> None:
    store = Store()
    assert store.incr("n") == 1
    assert store.incr("m", 5) == 5
    assert store.incr("k", -3) == -3
    assert store.get("n") == 1


def test_incr_adds_to_an_int() -> None:
    store = Store()
    store.set("n", 40)
    assert store.incr("n", 2) == 42
    assert store.incr("n", -50) == -8
    assert store.incr("n", 2**80) == 2**80 - 8
    assert store.get("n") == 2**80 - 8


def test_ttl_of_an_absent_key_is_a_key_error() -> None:
    store = Store()
    with pytest.raises(KeyError):
        store.ttl("a")
    store.set("a", 1)
    assert store.ttl("a") is None


def test_expire_and_persist_on_an_absent_key_return_false() -> None:
    store = Store()
    assert store.expire("a", 10) is False
    assert store.persist("a") is False
    assert len(store) == 0


def test_default_weigher() -> None:
    assert default_weigher("key", b"value") == 8
    assert default_weigher(b"k", "é") == 1 + 2  # str counts its UTF-8 length
    assert default_weigher("", bytearray(10)) == 10
    assert default_weigher("", memoryview(b"abcd")) == 4
    assert default_weigher("", [1, 2, 3]) == sys.getsizeof([1, 2, 3])
    assert default_weigher(7, "") == sys.getsizeof(7)


def test_the_default_weigher_is_what_stats_count() -> None:
    store = Store()
    store.set("key", b"value")
    store.set(b"other", "é" * 10)
    assert store.stats().bytes == 8 + 5 + 20


def test_policy_segments_add_up_to_the_contents() -> None:
    store = Store(max_entries=50, rng=random.Random(1))
    rng = random.Random(2)
    for i in range(2000):
        key = rng.randrange(200)
        if store.get(key) is None:
            store.set(key, i)
        if i % 100 == 0:
            policy = store.policy
            assert policy.window + policy.probation + policy.protected == len(store)
            assert policy.window_limit >= 1
            assert 0 <= policy.protected <= policy.protected_limit
            assert policy.window_limit + policy.protected_limit <= 50


# ------------------------------------------------------------------------- bad input


def _populated(clock: FakeClock | None = None, **kwargs: Any) -> Store:
    """A small store with a bit of everything: TTLs, counters, a hit and a miss."""
    store = Store(clock=clock or FakeClock(), **kwargs)
    store.set("a", b"alpha")
    store.set(b"b", "beta", ttl=30)
    store.set(3, 12)
    store.set("s", "text")
    store.get("a")
    store.get("nope")
    return store


def _unchanged(store: Store, action: Callable[[], object], error: type[Exception]) -> None:
    """Run ``action``, which must raise ``error``, and check the store is exactly as before."""
    before = snapshot(store)
    with pytest.raises(error) as info:
        action()
    assert isinstance(info.value, StrataError)
    assert str(info.value), "the error says nothing"
    assert snapshot(store) == before
    check_consistent(store, default_weigher)


UNHASHABLE: list[Any] = [[], ["a"], {}, {"a": 1}, {1}, bytearray(b"x")]


@pytest.mark.parametrize("key", UNHASHABLE, ids=repr)
@pytest.mark.parametrize(
    "method",
    ["get", "peek", "set", "delete", "incr", "ttl", "expire", "persist"],
)
def test_an_unhashable_key_is_an_invalid_key_error(key: Any, method: str) -> None:
    store = _populated()
    calls: dict[str, Callable[[], object]] = {
        "get": lambda: store.get(key),
        "peek": lambda: store.peek(key),
        "set": lambda: store.set(key, 1),
        "delete": lambda: store.delete(key),
        "incr": lambda: store.incr(key),
        "ttl": lambda: store.ttl(key),
        "expire": lambda: store.expire(key, 5),
        "persist": lambda: store.persist(key),
    }
    _unchanged(store, calls[method], InvalidKeyError)
    with pytest.raises(TypeError):
        calls[method]()


@pytest.mark.parametrize("key", UNHASHABLE, ids=repr)
def test_contains_with_an_unhashable_key_raises(key: Any) -> None:
    # Like a dict, and with the package's own error: a list key is a bug in the caller.
    store = _populated()
    before = snapshot(store)
    with pytest.raises(InvalidKeyError):
        _ = key in store
    assert snapshot(store) == before


@pytest.mark.parametrize("key", [1.5, 1.0, None, (1, 2), ("a",), frozenset(), 1j], ids=repr)
def test_a_key_of_the_wrong_type_is_refused_by_writes(key: Any) -> None:
    store = _populated()
    writes: list[Callable[[], object]] = [
        lambda: store.set(key, 1),
        lambda: store.incr(key),
        lambda: store.delete(key),
    ]
    for write in writes:
        _unchanged(store, write, InvalidKeyError)
        with pytest.raises(TypeError):
            write()
    assert isinstance(InvalidKeyError("x"), EngineError)


BAD_TTLS: list[Any] = [0, 0.0, -1, -0.5, -math.inf, math.inf, math.nan, "10", b"1", True, [1]]


@pytest.mark.parametrize("ttl", BAD_TTLS, ids=repr)
def test_a_bad_ttl_on_set_is_an_invalid_ttl_error(ttl: Any) -> None:
    store = _populated()
    _unchanged(store, lambda: store.set("a", b"new", ttl=ttl), InvalidTTLError)
    _unchanged(store, lambda: store.set("new", b"new", ttl=ttl), InvalidTTLError)
    with pytest.raises(ValueError):
        store.set("a", 1, ttl=ttl)
    assert store.get("a") == b"alpha"


@pytest.mark.parametrize("ttl", BAD_TTLS, ids=repr)
def test_a_bad_ttl_on_expire_is_an_invalid_ttl_error(ttl: Any) -> None:
    store = _populated()
    _unchanged(store, lambda: store.expire("a", ttl), InvalidTTLError)
    _unchanged(store, lambda: store.expire(b"b", ttl), InvalidTTLError)
    _unchanged(store, lambda: store.expire("absent", ttl), InvalidTTLError)
    with pytest.raises(ValueError):
        store.expire(b"b", ttl)


def test_a_tiny_or_huge_ttl_is_accepted(clock: FakeClock) -> None:
    store = Store(clock=clock)
    assert store.set("tiny", 1, ttl=1e-9)
    assert store.set("huge", 1, ttl=1e12)
    assert store.ttl("huge") == pytest.approx(1e12)
    clock.advance(1e-9)
    assert "tiny" not in store
    assert "huge" in store


class Weight:
    """A value the test weigher answers for with ``answer`` (or raises, if it is an exception)."""

    def __init__(self, answer: object) -> None:
        self.answer = answer


def _test_weigher(key: Any, value: Any) -> Any:
    if isinstance(value, Weight):
        if isinstance(value.answer, Exception):
            raise value.answer
        return value.answer
    if isinstance(value, int) and value >= 100:
        raise OverflowError("too big to weigh")
    return default_weigher(key, value)


@pytest.mark.parametrize(
    "limits", [(None, None), (3, None), (None, 500)], ids=["unbounded", "entries", "bytes"]
)
def test_a_weigher_that_raises_is_a_weigher_error_with_its_cause(
    limits: tuple[int | None, int | None],
) -> None:
    store = _populated(max_entries=limits[0], max_bytes=limits[1], weigher=_test_weigher)
    boom = RuntimeError("boom")
    for key in ("a", "fresh"):
        before = snapshot(store)
        with pytest.raises(WeigherError) as info:
            store.set(key, Weight(boom))
        assert info.value.__cause__ is boom
        assert isinstance(info.value, EngineError)
        assert snapshot(store) == before


@pytest.mark.parametrize("weight", [-1, 1.5, 2.0, True, False, None, "3", math.nan], ids=repr)
def test_a_weigher_returning_a_bad_weight_is_a_weigher_error(weight: object) -> None:
    store = _populated(weigher=_test_weigher)
    _unchanged(store, lambda: store.set("a", Weight(weight)), WeigherError)
    _unchanged(store, lambda: store.set("fresh", Weight(weight)), WeigherError)


def test_a_weigher_failing_inside_incr_leaves_the_counter_alone() -> None:
    store = _populated(max_entries=10, weigher=_test_weigher)
    store.set("n", 98)
    assert store.incr("n") == 99
    before = snapshot(store)
    with pytest.raises(WeigherError) as info:
        store.incr("n")  # 100: the weigher raises OverflowError
    assert isinstance(info.value.__cause__, OverflowError)
    assert snapshot(store) == before
    assert store.get("n") == 99
    with pytest.raises(WeigherError):
        store.incr("new", 100)
    assert "new" not in store


@pytest.mark.parametrize("limits", [(None, None), (5, None)], ids=["unbounded", "entries"])
def test_a_weight_too_big_for_a_machine_word(limits: tuple[int | None, None]) -> None:
    # Weights are capped at 2**62 (the compiled entry keeps them in a machine word): a bigger one
    # is refused with a WeigherError, never half-applied.
    def weigh(key: Any, value: Any) -> int:
        return value if isinstance(value, int) else 1

    store = Store(*limits, weigher=weigh, clock=FakeClock())
    store.set("a", 1)
    store.set("b", 5)
    for key in ("a", "new"):
        before = snapshot(store)
        try:
            assert store.set(key, 2**64) is True
        except WeigherError:
            assert snapshot(store) == before
        check_consistent(store, weigh, max_entries=limits[0])


@pytest.mark.parametrize("value", ["12", b"12", 1.0, True, None, [1]], ids=repr)
def test_incr_on_a_value_that_is_not_an_int(value: Any) -> None:
    store = _populated()
    store.set("v", value)
    _unchanged(store, lambda: store.incr("v"), NotAnIntegerError)
    with pytest.raises(TypeError):
        store.incr("v", 2)
    assert store.get("v") is value


@pytest.mark.parametrize("amount", [1.0, 1.5, "1", b"1", True, None, math.nan], ids=repr)
def test_incr_by_an_amount_that_is_not_an_int(amount: Any) -> None:
    store = _populated()
    _unchanged(store, lambda: store.incr(3, amount), NotAnIntegerError)
    _unchanged(store, lambda: store.incr("absent", amount), NotAnIntegerError)
    with pytest.raises(TypeError):
        store.incr(3, amount)


@pytest.mark.parametrize("limit", [0, -1, 1.5, 1.0, True, False, "10", math.inf], ids=repr)
@pytest.mark.parametrize("name", ["max_entries", "max_bytes"])
def test_a_bad_limit_is_a_config_error(name: str, limit: Any) -> None:
    with pytest.raises(ConfigError) as info:
        Store(**{name: limit})
    assert isinstance(info.value, ValueError)
    assert name in str(info.value)


def test_the_smallest_limits_are_accepted() -> None:
    store = Store(max_entries=1, max_bytes=1, weigher=lambda k, v: 1)
    store.set("a", 1)
    store.set("b", 2)
    assert len(store) == 1
    check_consistent(store, lambda k, v: 1, max_entries=1, max_bytes=1)


# ------------------------------------------------------------------------- the listener


def _bounded_with_listener(listener: Callable[[Any, Any, RemovalCause], None]) -> Store:
    return Store(max_entries=3, rng=random.Random(1), on_evict=listener)


def test_the_listener_hears_of_evictions_only() -> None:
    evictions = Evictions()
    store = _bounded_with_listener(evictions)
    store.set("a", 1)
    store.set("a", 2)  # overwrite
    store.delete("a")  # explicit delete
    store.set("b", 1)
    store.clear()  # clear
    assert evictions.calls == []
    for i in range(10):
        store.set(i, i * 10)
    assert len(evictions.calls) == 10 - len(store)
    for key, value, cause in evictions.calls:
        assert value == key * 10
        assert cause in (RemovalCause.SIZE, RemovalCause.REJECTED)
        assert key not in store


def _call_with_timeout(action: Callable[[], None], seconds: float = 20.0) -> None:
    """Run ``action`` in a thread and fail (rather than hang the suite) if it never returns."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            action()
        except BaseException as exc:  # handed back to the test below
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "deadlock: the listener was called with the lock held"
    if errors:
        raise errors[0]


def test_a_listener_may_call_back_into_the_store(clock: FakeClock) -> None:
    seen: list[tuple[Any, RemovalCause]] = []
    store: Store

    def listener(key: Any, value: Any, cause: RemovalCause) -> None:
        seen.append((key, cause))
        assert store.get(key) is None  # already gone when the listener runs
        if len(seen) < 20:
            # A write from inside the listener may evict again and re-enter it: bounded here.
            store.set(f"side-{len(seen)}", value)
        store.stats()
        len(store)
        store.keys()

    store = Store(max_entries=4, clock=clock, rng=random.Random(3), on_evict=listener)

    def workload() -> None:
        for i in range(50):
            store.set(i, i)
        store.set("t", 1, ttl=1)
        clock.advance(1)
        store.get("t")  # lazy expiry, reported from get()
        store.set("u", 1, ttl=1)
        clock.advance(2)
        store.stats()  # expiry found by the timer wheel

    _call_with_timeout(workload)
    causes = {cause for _, cause in seen}
    assert RemovalCause.EXPIRED in causes
    assert causes & {RemovalCause.SIZE, RemovalCause.REJECTED}
    check_consistent(store, default_weigher, max_entries=4)


def test_a_listener_that_raises_is_logged_and_the_store_carries_on(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[Any] = []

    def listener(key: Any, value: Any, cause: RemovalCause) -> None:
        calls.append(key)
        raise RuntimeError(f"listener broke on {key!r}")

    store = Store(max_entries=3, clock=clock, rng=random.Random(1), on_evict=listener)
    with caplog.at_level(logging.ERROR, logger="stratacache.engine"):
        for i in range(10):
            assert isinstance(store.set(i, i), bool)
        store.set("t", 1, ttl=1)
        clock.advance(5)
        assert store.get("t") is None
    assert len(calls) >= 8
    failures = [r for r in caplog.records if r.name == "stratacache.engine"]
    assert len(failures) == len(calls)
    for record in failures:
        assert record.levelno == logging.ERROR
        assert record.exc_info is not None
        assert isinstance(record.exc_info[1], RuntimeError)
    check_consistent(store, default_weigher, max_entries=3)
    assert store.set("after", 1) in (True, False)
    stats = store.stats()
    assert stats.evictions + stats.expirations == len(calls)


# ------------------------------------------------------------------------- doctests

ENGINE_MODULES = [
    stratacache.engine,
    stratacache.engine.store,
    stratacache.engine.sketch,
    stratacache.engine.timerwheel,
]


@pytest.mark.parametrize("module", ENGINE_MODULES, ids=lambda m: m.__name__)
def test_the_doctests_pass(module: ModuleType) -> None:
    result = doctest.testmod(module, verbose=False, report=True)
    assert result.failed == 0
    if module in (stratacache.engine.store, stratacache.engine.sketch):
        assert result.attempted > 0, "the examples in the docstrings were not found"
