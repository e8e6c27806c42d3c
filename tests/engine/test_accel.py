"""The compiled accelerator against the pure-Python reference: the same decisions, step for step.

Every other engine test runs on both implementations and checks each against a model; these tests
run the two side by side on the same operations and the same random source and require the same
answers, the same evictions (in the same order), the same counters and the same segment sizes.
That holds because the compiled sketch hashes keys exactly as :class:`FrequencySketch` does.
"""

from __future__ import annotations

import gc
import random
import sys
import threading
import time
import weakref
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stratacache.engine import FrequencySketch, RemovalCause, Store, TimerWheel
from stratacache.engine import policy as policy_module
from stratacache.engine import sketch as sketch_module
from stratacache.engine import store as store_module

from .conftest import Evictions, FakeClock, check_consistent

_accel: Any = getattr(store_module, "_accel", None)
pytestmark = pytest.mark.skipif(_accel is None, reason="the accelerator is not built")


def test_the_constants_agree_with_the_reference() -> None:
    assert _accel.READ_BUFFER == policy_module.READ_BUFFER
    assert _accel.READ_SAMPLE == policy_module._READ_SAMPLE
    assert _accel.EXACT_READS == policy_module._EXACT_READS
    assert _accel.TRANSFER_LIMIT == policy_module._TRANSFER_LIMIT
    assert _accel.HASHDOS_THRESHOLD == policy_module._HASHDOS_THRESHOLD
    assert _accel.GROW_REACH == policy_module._GROW_REACH
    assert (_accel.REFUSED_FLOOR_NUM, _accel.REFUSED_FLOOR_DEN) == policy_module._REFUSED_FLOOR
    assert _accel.SHADOW_KEYS == policy_module._SHADOW_KEYS
    assert _accel.SHADOW_PERIOD == policy_module._SHADOW_PERIOD
    assert _accel.SHADOW_LEAD == policy_module._SHADOW_LEAD
    assert _accel.SHADOW_MEMORY == policy_module._SHADOW_MEMORY
    assert _accel.COUNTERS_PER_SLOT_BITS == sketch_module._COUNTERS_PER_SLOT_BITS


@given(
    seed=st.integers(min_value=-(2**70), max_value=2**70),
    hashes=st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), max_size=40),
)
def test_the_compiled_sketch_counts_like_the_reference(seed: int, hashes: list[int]) -> None:
    compiled = _accel.Sketch(64, seed=seed)
    reference = FrequencySketch(64, seed=seed)
    for key_hash in hashes:
        compiled.increment(key_hash)
        reference.increment(key_hash)
    for key_hash in [*hashes, 0, 1, -2, 2**61 - 1, -(2**63)]:
        assert compiled.frequency(key_hash) == reference.frequency(key_hash)


class Twins:
    """The same operations on a compiled store and a pure-Python one, compared at every step."""

    def __init__(self, seed: int, **limits: Any) -> None:
        self.clock = FakeClock()
        self.listeners = (Evictions(), Evictions())
        self.stores = tuple(
            Store(
                clock=self.clock,
                rng=random.Random(seed),
                on_evict=listener,
                accelerate=compiled,
                **limits,
            )
            for compiled, listener in zip((True, False), self.listeners, strict=True)
        )
        assert [s.accelerated for s in self.stores] == [True, False]

    def same(self, method: str, *args: Any) -> Any:
        """Call ``method`` on both stores; they must return (or raise) the same."""
        outcomes = []
        for store in self.stores:
            try:
                outcomes.append(("ok", getattr(store, method)(*args)))
            except Exception as exc:  # compared below, class and message
                outcomes.append(("raised", (type(exc), str(exc))))
        assert outcomes[0] == outcomes[1], (method, args)
        return outcomes[0]

    def check(self) -> None:
        compiled, reference = self.stores
        assert compiled.stats() == reference.stats()
        assert compiled.policy == reference.policy
        assert sorted(compiled.keys(), key=repr) == sorted(reference.keys(), key=repr)
        assert self.listeners[0].calls == self.listeners[1].calls


def _drive(twins: Twins, rng: random.Random, ops: int, key_space: int) -> None:
    values: list[Any] = [b"v" * 10, "value", 7, 2**70, (1, 2), None, "é" * 5, b""]
    for i in range(ops):
        key: Any = rng.randrange(key_space)
        if rng.random() < 0.5:
            key = f"k{key}" if rng.random() < 0.7 else str(key).encode()
        op = rng.random()
        if op < 0.45:
            twins.same("get", key)
        elif op < 0.85:
            ttl = rng.choice([None, None, None, 0.5, 3.0, 100.0, 5000])
            twins.same("set", key, rng.choice(values), ttl)
        elif op < 0.88:
            twins.same("delete", key)
        elif op < 0.91:
            twins.same("incr", key, rng.randrange(-3, 4))
        elif op < 0.93:
            twins.same("expire", key, rng.choice([0.25, 2.0, 70.0]))
        elif op < 0.95:
            twins.same("persist", key)
        elif op < 0.97:
            twins.same("peek", key)
        elif op < 0.99:
            twins.clock.advance(rng.choice([0.1, 0.5, 1.0, 3.0, 65.0]))
        else:
            twins.same("__contains__", key)
        if i % 500 == 0:
            twins.check()
    twins.check()


LIMITS = [
    {"max_entries": 50},
    {"max_bytes": 400},
    {"max_entries": 40, "max_bytes": 300},
    {},
]


@pytest.mark.parametrize("limits", LIMITS, ids=lambda d: ",".join(map(str, d.items())) or "none")
@pytest.mark.parametrize("seed", range(3))
def test_both_implementations_take_the_same_decisions(limits: dict[str, int], seed: int) -> None:
    twins = Twins(seed, **limits)
    _drive(twins, random.Random(seed + 100), 4000, key_space=150)
    check_consistent(twins.stores[0], store_module.default_weigher, **limits)


def test_long_read_runs_and_window_moves_agree() -> None:
    # A recency-skewed phase grows the window, a frequency-skewed one shrinks it again; long runs
    # of reads between them reach the sampled drains.
    twins = Twins(7, max_entries=200)
    rng = random.Random(8)
    for phase in range(6):
        for _ in range(3000):
            if phase % 2:
                key = int(rng.paretovariate(1.0)) % 2000
            else:
                key = rng.randrange(600)
            if twins.same("get", key) == ("ok", None):
                twins.same("set", key, key)
        hot = twins.stores[1].keys()
        for _ in range(3000):
            twins.same("get", rng.choice(hot))
        twins.check()


def test_the_shadow_lru_and_its_jumps_agree() -> None:
    # Zigzag sweeps make the shadow LRU lead and hand the window the whole cache; a skewed phase
    # follows. Both implementations must move the window at the same requests.
    twins = Twins(9, max_entries=120)
    up = list(range(480))
    for sweep in range(8):
        for key in up if sweep % 2 == 0 else up[::-1]:
            if twins.same("get", key) == ("ok", None):
                twins.same("set", key, key)
        twins.check()
    assert twins.stores[0].policy.window_limit >= 100
    rng = random.Random(10)
    for _ in range(20_000):
        key = 10_000 + int(rng.paretovariate(1.0)) % 3000
        if twins.same("get", key) == ("ok", None):
            twins.same("set", key, key)
    twins.check()


def test_custom_weighers_and_failures_agree() -> None:
    def weigh(key: Any, value: Any) -> int:
        if value == "boom":
            raise ValueError("no weight for boom")
        return len(str(value)) + 1

    clock = FakeClock()
    stores = [
        Store(max_bytes=100, weigher=weigh, clock=clock, rng=random.Random(3), accelerate=c)
        for c in (True, False)
    ]
    rng = random.Random(4)
    for _ in range(2000):
        key = rng.randrange(80)
        value = rng.choice(["a", "bb", "c" * 30, "d" * 101, "boom", 12345])
        outcomes = []
        for store in stores:
            try:
                outcomes.append(store.set(key, value))
            except Exception as exc:
                outcomes.append((type(exc), str(exc)))
        assert outcomes[0] == outcomes[1]
        probe = rng.randrange(80)
        assert stores[0].get(probe) == stores[1].get(probe)
    assert stores[0].stats() == stores[1].stats()
    assert stores[0].policy == stores[1].policy


def test_bad_arguments_to_the_compiled_set_get_the_python_errors() -> None:
    twins = Twins(0, max_entries=10)
    for args in [
        ([1], 1),
        (1.5, 1),
        ("k", 1, -1),
        ("k", 1, 0),
        ("k", 1, float("nan")),
        ("k", 1, float("inf")),
        ("k", 1, "1"),
        ("k", 1, True),
        ("k", 1, 10**400),
    ]:
        outcome = twins.same("set", *args)
        assert outcome[0] == "raised", args
    for store in twins.stores:
        assert store.set(key="k", value=1, ttl=2.0) is True
        assert store.set("k", 2, ttl=3) is True
        with pytest.raises(TypeError):
            store.set("k")  # type: ignore[call-arg]
    twins.check()


def test_the_compiled_store_leaks_no_references() -> None:
    value = object()
    key_base = "leak-check-"
    store = Store(max_entries=30, rng=random.Random(1), on_evict=lambda k, v, c: None)
    assert store.accelerated
    baseline = sys.getrefcount(value)
    rng = random.Random(2)
    for i in range(5000):
        key = key_base + str(rng.randrange(100))
        store.set(key, value, rng.choice([None, 5.0]))
        store.get(key_base + str(rng.randrange(100)))
        if i % 97 == 0:
            store.delete(key)
        if i % 301 == 0:
            store.incr(f"n{i % 7}")
    resident = store.keys()
    holding = sum(1 for k in resident if store.peek(k) is value)
    assert sys.getrefcount(value) - baseline == holding
    store.clear()
    assert sys.getrefcount(value) == baseline
    del store
    gc.collect()
    assert sys.getrefcount(value) == baseline


def test_the_compiled_lock_behaves_like_a_lock() -> None:
    lock = _accel.Lock()
    assert lock.acquire(blocking=False) is True
    assert lock.locked()
    assert lock.acquire(blocking=False) is False
    lock.release()
    with pytest.raises(RuntimeError):
        lock.release()
    with lock:
        assert lock.locked()
        # Another thread blocks on it until it is released.
        taken = threading.Event()

        def take() -> None:
            with lock:
                taken.set()

        thread = threading.Thread(target=take)
        thread.start()
        assert not taken.wait(0.05)
    thread.join(5)
    assert taken.is_set()
    assert not lock.locked()


def test_removal_causes_reach_the_listener_from_the_compiled_set() -> None:
    evictions = Evictions()
    store = Store(max_entries=5, rng=random.Random(0), on_evict=evictions)
    for round_ in range(5):
        for key in range(5):
            store.get(key) or store.set(key, round_)
    for key in range(100, 140):
        store.set(key, key)
    causes = {cause for _, _, cause in evictions.calls}
    assert causes <= {RemovalCause.SIZE, RemovalCause.REJECTED}
    assert evictions.count(RemovalCause.REJECTED) == store.stats().rejections


def test_a_byte_bounded_sketch_grows_alike() -> None:
    # Small entries under a byte budget: the entry count passes the first sketch's capacity (256),
    # so both implementations replace their sketch, seeded from the same rng draw.
    twins = Twins(5, max_bytes=20000)
    _drive(twins, random.Random(6), 8000, key_space=5000)
    assert len(twins.stores[0]) > 256


@pytest.mark.parametrize("accelerate", [True, False], ids=["compiled", "python"])
def test_a_cycle_through_a_cached_value_is_collected(accelerate: bool) -> None:
    # Compiled entries are not tracked by the garbage collector; the policy reports what they
    # hold, so a value that refers back to its store does not keep the store alive forever.
    class Node:
        def __init__(self, store: Store) -> None:
            self.store = store

    store = Store(max_entries=100, accelerate=accelerate)
    for i in range(50):
        store.set(i, Node(store), ttl=60.0 if i % 2 else None)
    for i in range(0, 50, 3):
        store.get(i)
    alive = weakref.ref(store)
    del store
    gc.collect()
    assert alive() is None


def test_the_compiled_lock_excludes_under_contention() -> None:
    # sleep(0) hands the GIL to another thread while the lock is held, so every thread really
    # finds it taken now and then and must sleep until a release wakes it.
    lock = _accel.Lock()
    counter = [0]

    def work() -> None:
        for _ in range(500):
            with lock:
                seen = counter[0]
                time.sleep(0)
                counter[0] = seen + 1

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert counter[0] == 2000
    assert not lock.locked()


def test_a_subclass_that_overrides_get_and_set_keeps_them() -> None:
    class Counting(Store):
        def __init__(self) -> None:
            super().__init__(max_entries=10)
            self.calls = 0

        def get(self, key: Any, default: Any = None) -> Any:
            self.calls += 1
            return super().get(key, default)

        def set(self, key: Any, value: Any, ttl: float | None = None) -> bool:
            self.calls += 1
            return super().set(key, value, ttl)

    store = Counting()
    assert store.accelerated
    assert store.set("a", 1) is True
    for _ in range(600):  # more than the read buffer holds
        assert store.get("a") == 1
    assert store.get("b") is None
    assert store.calls == 602
    stats = store.stats()
    assert (stats.hits, stats.misses, stats.entries) == (600, 1, 1)


@pytest.mark.parametrize("now", [0.0, 1000.0, -37.5, 2.0**40])
def test_the_compiled_policy_files_entries_in_the_wheels_own_buckets(now: float) -> None:
    delays = [5e-324, 0.25, 1.0, 63.9, 64.0, 100.0, 4095.0, 4096.0, 262143.0, 262144.0 * 70]
    delays += [1e12, 1e300, -5.0, -1e6]
    wheel = TimerWheel(now)
    compiled = _accel.Policy(None, None, rng=random.Random(0), wheel=wheel, size=1, rejected=2)
    for i, delay in enumerate(delays):
        expires = now + delay
        if expires == 0.0:
            continue
        entry = compiled.put(i, i, 1, expires, None)
        expected = wheel._bucket_for(expires)
        assert entry.bucket is expected, (now, delay)
        assert expected[i] is entry
    # Re-filing moves an entry out of its old bucket.
    entry = compiled.put(0, 0, 1, now + 5000.0, None)
    assert sum(0 in bucket for level in wheel._wheel for bucket in level) == 1
    assert entry.bucket is wheel._bucket_for(now + 5000.0)
    compiled.put(0, 0, 1, 0.0, None)
    assert entry.bucket is None
    assert all(0 not in bucket for level in wheel._wheel for bucket in level)
