"""The count-min sketch: never under, saturating at 15, halving, and seeded against collisions.

Both implementations run every test: the pure-Python reference and, when it was built, the compiled
accelerator's ``Sketch``, which must behave the same.
"""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from stratacache.engine import FrequencySketch
from stratacache.engine import store as store_module

_accel = getattr(store_module, "_accel", None)

IMPLEMENTATIONS: list[Any] = [
    pytest.param(FrequencySketch, id="python"),
    pytest.param(
        getattr(_accel, "Sketch", None),
        id="compiled",
        marks=pytest.mark.skipif(_accel is None, reason="the accelerator is not built"),
    ),
]


@pytest.fixture(params=IMPLEMENTATIONS)
def sketch_class(request: pytest.FixtureRequest) -> Any:
    """A sketch implementation: ``cls(capacity, seed=...)``."""
    return request.param


@pytest.mark.parametrize("seed", range(5))
def test_it_never_underestimates(sketch_class: Any, seed: int) -> None:
    rng = random.Random(seed)
    sketch = sketch_class(256, seed=seed)
    truth: Counter[int] = Counter()
    # Fewer increments than the sample size, so no halving intervenes.
    for _ in range(sketch.sample_size - 1):
        key = int(rng.paretovariate(0.8)) * 7919 + rng.randrange(3)
        truth[key] += 1
        sketch.increment(hash(key))
    assert len(truth) > 100
    for key, count in truth.items():
        assert sketch.frequency(hash(key)) >= min(count, 15), key


def test_a_lone_key_is_counted_exactly(sketch_class: Any) -> None:
    sketch = sketch_class(64, seed=3)
    for count in range(1, 16):
        sketch.increment(hash("only"))
        assert sketch.frequency(hash("only")) == count


def test_counts_saturate_at_15(sketch_class: Any) -> None:
    sketch = sketch_class(1024, seed=1)
    for _ in range(100):
        sketch.increment(hash("hot"))
    assert sketch.frequency(hash("hot")) == 15


def test_an_unseen_key_in_an_empty_sketch_is_zero(sketch_class: Any) -> None:
    sketch = sketch_class(64, seed=1)
    assert all(sketch.frequency(hash(i)) == 0 for i in range(1000))


@pytest.mark.parametrize("seed", range(3))
def test_a_full_sketch_rarely_mistakes_an_unseen_key_for_a_seen_one(
    sketch_class: Any, seed: int
) -> None:
    # Sixteen counters per slot of capacity (four per row): with a key for every slot counted once,
    # an unseen key finds all four of its counters taken about 0.2 % of the time. With one counter
    # per row (the earlier layout) it was about 15 %, and admission took such keys for warm ones.
    sketch = sketch_class(1000, seed=seed)
    for i in range(1000):
        sketch.increment(hash(f"seen{i}"))
    mistaken = sum(sketch.frequency(hash(f"unseen{i}")) > 0 for i in range(1000))
    assert mistaken <= 10


def test_halve_halves_every_counter(sketch_class: Any) -> None:
    sketch = sketch_class(1024, seed=2)
    counts = {"a": 1, "b": 2, "c": 7, "d": 10, "e": 15, "f": 40}
    for key, count in counts.items():
        for _ in range(count):
            sketch.increment(hash(key))
    before = {key: sketch.frequency(hash(key)) for key in counts}
    assert before == {key: min(count, 15) for key, count in counts.items()}
    sketch.halve()
    assert {key: sketch.frequency(hash(key)) for key in counts} == {
        key: value // 2 for key, value in before.items()
    }


def test_the_sample_size_triggers_a_halving(sketch_class: Any) -> None:
    sketch = sketch_class(64, seed=4)
    assert sketch.capacity == 64
    assert sketch.sample_size == 640
    for _ in range(15):
        sketch.increment(hash("hot"))
    filler = iter(range(10**6))
    for _ in range(sketch.sample_size - 15 - 1):
        sketch.increment(hash(("filler", next(filler))))
    assert sketch.frequency(hash("hot")) == 15
    sketch.increment(hash(("filler", next(filler))))  # the sample_size-th increment
    assert sketch.frequency(hash("hot")) == 7


def test_after_a_halving_the_next_one_comes_half_a_sample_later(sketch_class: Any) -> None:
    sketch = sketch_class(64, seed=5)
    for i in range(sketch.sample_size):
        sketch.increment(hash(("warm", i)))
    for _ in range(15):
        sketch.increment(hash("hot"))
    for i in range(sketch.sample_size // 2 - 15 - 1):
        sketch.increment(hash(("more", i)))
    assert sketch.frequency(hash("hot")) == 15
    sketch.increment(hash("last"))
    assert sketch.frequency(hash("hot")) == 7


def test_small_capacities_are_raised_to_16(sketch_class: Any) -> None:
    for capacity in (0, 1, 15):
        sketch = sketch_class(capacity, seed=0)
        assert sketch.capacity == 16
        assert sketch.sample_size == 160


def test_clear_forgets_everything(sketch_class: Any) -> None:
    sketch = sketch_class(64, seed=6)
    for i in range(300):
        sketch.increment(hash(i))
    sketch.clear()
    assert all(sketch.frequency(hash(i)) == 0 for i in range(300))
    # The additions restart too: a full sample is needed before the next halving.
    for _ in range(15):
        sketch.increment(hash("hot"))
    for i in range(sketch.sample_size - 16):
        sketch.increment(hash(("x", i)))
    assert sketch.frequency(hash("hot")) == 15


def _estimates(sketch_class: Any, seed: int) -> list[int]:
    sketch = sketch_class(16, seed=seed)
    for key in range(60):
        sketch.increment(hash(key))
    return [sketch.frequency(hash(("unseen", i))) for i in range(500)]


def test_the_seed_decides_the_collisions(sketch_class: Any) -> None:
    # Integer keys hash to themselves: without a seed, an attacker could pick colliding keys.
    assert _estimates(sketch_class, 1) == _estimates(sketch_class, 1)
    assert _estimates(sketch_class, 1) != _estimates(sketch_class, 2)
    over = [sum(_estimates(sketch_class, seed)) for seed in range(4)]
    assert len(set(over)) > 1


def test_adjacent_integer_keys_do_not_collide_systematically(sketch_class: Any) -> None:
    sketch = sketch_class(4096, seed=7)
    for key in range(0, 4096, 2):
        for _ in range(3):
            sketch.increment(hash(key))
    # The odd keys were never seen; with a good mix few of them inherit their neighbours' counts.
    inflated = sum(1 for key in range(1, 4096, 2) if sketch.frequency(hash(key)) >= 3)
    assert inflated < 2048 * 0.05


@pytest.mark.parametrize("key_hash", [0, -1, -2, 2**63 - 1, -(2**63), hash("x"), hash(b"y")])
def test_any_hash_value_is_accepted(sketch_class: Any, key_hash: int) -> None:
    sketch = sketch_class(32, seed=8)
    sketch.increment(key_hash)
    assert sketch.frequency(key_hash) >= 1


def test_the_implementations_agree_on_the_interface() -> None:
    if _accel is None:
        pytest.skip("the accelerator is not built")
    for cls in (FrequencySketch, _accel.Sketch):
        sketch = cls(100, seed=9)
        assert (sketch.capacity, sketch.sample_size) == (100, 1000)
        sketch.increment(hash("k"))
        assert sketch.frequency(hash("k")) == 1
