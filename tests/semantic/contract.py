"""The contract every :class:`~stratacache.semantic.VectorIndex` must pass.

:class:`VectorIndexContract` is a mixin of test methods run by ``test_index.py`` against the
``index`` fixture (parametrised over every implementation in ``conftest.py``). It pins down:

* scores are cosine similarities of the normalised vectors, best first, at most ``k``;
* a search only ever sees its own partition, even when another holds the identical vector;
* adding an id again replaces it (vector, text, partition, expiry);
* an entry is dead from ``expires_at`` on (inclusive), by the index's clock, and a search still
  returns ``k`` live entries when nearer ones have expired;
* bad input raises :class:`~stratacache.errors.ConfigError` and changes nothing;
* a random run of adds, replacements, removals and expiry agrees with a dict.

The shared backends (``test_index_redis.py``, ``test_index_pgvector.py``) run the same class with
an ``index`` fixture of their own, on a server started for the session.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from stratacache.errors import ConfigError
from stratacache.semantic import VectorIndex

from .conftest import DIMENSION
from .helpers import FakeClock, unit


class VectorIndexContract:
    """Tests every index implementation passes unchanged."""

    def test_search_finds_the_added_vector_with_its_text(self, index: VectorIndex) -> None:
        index.add("p", "k1", unit(DIMENSION, 0), text="hello")
        [match] = index.search("p", unit(DIMENSION, 0), k=3)
        assert match.id == "k1"
        assert match.text == "hello"
        assert match.score == pytest.approx(1.0, abs=1e-5)
        assert "k1" in index
        assert len(index) == 1

    def test_results_are_best_first_and_at_most_k(self, index: VectorIndex) -> None:
        index.add("p", "exact", unit(DIMENSION, 0))
        index.add("p", "close", unit(DIMENSION, 0, 0, 1))  # cos = 2/sqrt(5)
        index.add("p", "far", unit(DIMENSION, 1))
        index.add("p", "opposite", -unit(DIMENSION, 0))
        found = index.search("p", unit(DIMENSION, 0), k=4)
        assert [m.id for m in found] == ["exact", "close", "far", "opposite"]
        assert [m.score for m in found] == pytest.approx(
            [1.0, 2 / math.sqrt(5), 0.0, -1.0], abs=1e-4
        )
        assert [m.id for m in index.search("p", unit(DIMENSION, 0), k=2)] == ["exact", "close"]

    def test_vectors_are_normalised(self, index: VectorIndex) -> None:
        index.add("p", "k", 7.5 * unit(DIMENSION, 2))
        [match] = index.search("p", 0.01 * unit(DIMENSION, 2))
        assert match.score == pytest.approx(1.0, abs=1e-5)

    def test_partitions_are_isolated_even_at_cosine_one(self, index: VectorIndex) -> None:
        index.add("tenant-a", "a", unit(DIMENSION, 3), text="yes, cancel it")
        assert index.search("tenant-b", unit(DIMENSION, 3), k=10) == []
        index.add("tenant-b", "b", unit(DIMENSION, 4), text="yes, cancel it")
        assert [m.id for m in index.search("tenant-b", unit(DIMENSION, 3), k=10)] == ["b"]
        assert [m.id for m in index.search("tenant-a", unit(DIMENSION, 4), k=10)] == ["a"]

    def test_adding_an_id_again_replaces_it(self, index: VectorIndex) -> None:
        index.add("p", "k", unit(DIMENSION, 0), text="old")
        index.add("q", "k", unit(DIMENSION, 1), text="new")
        assert len(index) == 1
        assert index.search("p", unit(DIMENSION, 0), k=5) == []
        [match] = index.search("q", unit(DIMENSION, 1))
        assert (match.id, match.text) == ("k", "new")

    def test_remove(self, index: VectorIndex) -> None:
        index.add("p", "k1", unit(DIMENSION, 0))
        index.add("p", "k2", unit(DIMENSION, 1))
        assert index.remove("k1") is True
        assert index.remove("k1") is False
        assert index.remove("never") is False
        assert "k1" not in index
        assert [m.id for m in index.search("p", unit(DIMENSION, 0), k=5)] == ["k2"]
        assert index.remove("k2") is True
        assert index.search("p", unit(DIMENSION, 0), k=5) == []
        index.add("p", "k3", unit(DIMENSION, 0))  # an emptied partition is usable again
        assert [m.id for m in index.search("p", unit(DIMENSION, 0))] == ["k3"]

    def test_remove_partition(self, index: VectorIndex) -> None:
        for i in range(3):
            index.add("p", f"p{i}", unit(DIMENSION, i))
        index.add("q", "q0", unit(DIMENSION, 0))
        assert index.remove_partition("p") == 3
        assert index.remove_partition("p") == 0
        assert index.search("p", unit(DIMENSION, 0), k=5) == []
        assert [m.id for m in index.search("q", unit(DIMENSION, 0))] == ["q0"]
        assert len(index) == 1

    def test_remove_where(self, index: VectorIndex) -> None:
        index.add("p", "t1/support/chat/a", unit(DIMENSION, 0))
        index.add("q", "t2/support/chat/b", unit(DIMENSION, 1))
        index.add("p", "t1/sales/chat/c", unit(DIMENSION, 2))
        assert index.remove_where(lambda id: id.split("/")[1] == "support") == 2
        assert index.remove_where(lambda id: False) == 0
        assert len(index) == 1
        assert "t1/sales/chat/c" in index
        assert index.search("q", unit(DIMENSION, 1), k=5) == []

    def test_expiry_is_inclusive_and_by_the_injected_clock(
        self, index: VectorIndex, clock: FakeClock
    ) -> None:
        index.add("p", "short", unit(DIMENSION, 0), expires_at=clock() + 10)
        index.add("p", "forever", unit(DIMENSION, 0, 1))
        clock.advance(9.999)
        assert [m.id for m in index.search("p", unit(DIMENSION, 0), k=5)] == ["short", "forever"]
        assert "short" in index
        clock.advance(0.001)
        assert "short" not in index
        assert [m.id for m in index.search("p", unit(DIMENSION, 0), k=5)] == ["forever"]

    def test_expired_neighbours_do_not_crowd_out_live_ones(
        self, index: VectorIndex, clock: FakeClock
    ) -> None:
        for i in range(5):
            index.add("p", f"dead{i}", unit(DIMENSION, 0), expires_at=clock() + 1)
        index.add("p", "live1", unit(DIMENSION, 0, 1))
        index.add("p", "live2", unit(DIMENSION, 0, 2, 3))
        clock.advance(1)
        assert [m.id for m in index.search("p", unit(DIMENSION, 0), k=2)] == ["live1", "live2"]
        assert len(index) == 2  # the expired entries met on the way were dropped

    def test_search_of_an_unknown_partition_is_empty(self, index: VectorIndex) -> None:
        assert index.search("nowhere", unit(DIMENSION, 0), k=3) == []

    @pytest.mark.parametrize(
        ("partition", "id", "vector", "expires_at"),
        [
            ("", "k", unit(DIMENSION, 0), None),
            ("p", "", unit(DIMENSION, 0), None),
            ("p", "k", np.ones(DIMENSION + 1, dtype=np.float32), None),
            ("p", "k", np.full(DIMENSION, np.nan, dtype=np.float32), None),
            ("p", "k", unit(DIMENSION, 0), float("nan")),
            ("p", "k", unit(DIMENSION, 0), "soon"),
        ],
    )
    def test_bad_input_is_rejected_and_changes_nothing(
        self,
        index: VectorIndex,
        partition: str,
        id: str,
        vector: np.ndarray,
        expires_at: object,
    ) -> None:
        index.add("p", "k", unit(DIMENSION, 5), text="kept")
        with pytest.raises(ConfigError):
            index.add(partition, id, vector, expires_at=expires_at)  # type: ignore[arg-type]
        [match] = index.search("p", unit(DIMENSION, 5))
        assert (match.id, match.text) == ("k", "kept")
        assert len(index) == 1

    @pytest.mark.parametrize("k", [0, -1, True, 1.5])
    def test_bad_k(self, index: VectorIndex, k: object) -> None:
        with pytest.raises(ConfigError):
            index.search("p", unit(DIMENSION, 0), k=k)  # type: ignore[arg-type]

    def test_nearest_neighbour_among_many(self, index: VectorIndex) -> None:
        rng = np.random.default_rng(7)
        vectors = rng.standard_normal((400, DIMENSION)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        for i, v in enumerate(vectors):
            index.add("p", f"k{i}", v)
        queries = vectors[:40] + 0.05 * rng.standard_normal((40, DIMENSION)).astype(np.float32)
        found = [index.search("p", q)[0].id for q in queries]
        truth = [f"k{int(np.argmax(vectors @ q))}" for q in queries]
        assert sum(f == t for f, t in zip(found, truth, strict=True)) >= 38

    def test_random_operations_match_a_reference_model(
        self, index: VectorIndex, clock: FakeClock
    ) -> None:
        """Adds, replacements, removals and expiry in random order, checked against a dict."""
        rng = np.random.default_rng(11)
        model: dict[str, tuple[str, float | None]] = {}  # id -> (partition, expires_at)
        partitions = ["a", "b", "c"]
        for step in range(150):
            op = rng.integers(0, 10)
            id = f"k{rng.integers(0, 25)}"
            if op < 6:
                partition = partitions[rng.integers(0, 3)]
                expires = None if rng.integers(0, 2) else clock() + float(rng.integers(1, 4))
                index.add(
                    partition,
                    id,
                    rng.standard_normal(DIMENSION).astype(np.float32),
                    text=id,
                    expires_at=expires,
                )
                model[id] = (partition, expires)
            elif op < 8:
                assert index.remove(id) is (id in model)
                model.pop(id, None)
            elif op < 9:
                clock.advance(1)
            else:
                partition = partitions[rng.integers(0, 3)]
                doomed = [i for i, (p, _) in model.items() if p == partition]
                assert index.remove_partition(partition) == len(doomed), step
                for i in doomed:
                    del model[i]
            now = clock()
            live = {i for i, (_, x) in model.items() if x is None or x > now}
            assert {i for i in model if i in index} == live, step
        now = clock()
        for partition in partitions:
            expected = {
                i for i, (p, x) in model.items() if p == partition and (x is None or x > now)
            }
            found = index.search(partition, np.ones(DIMENSION, dtype=np.float32), k=50)
            assert {m.id for m in found} == expected
            assert all(m.text == m.id for m in found)
