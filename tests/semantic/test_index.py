"""The index contract for every implementation, and persistence beside the SQLite tier."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from stratacache.errors import ConfigError, MissingExtraError, TierError
from stratacache.semantic import (
    ExactIndex,
    USearchIndex,
    VectorIndex,
    default_index,
    vector_file_for,
)

from .conftest import DIMENSION, INDEX_FACTORIES, IndexFactory
from .contract import VectorIndexContract
from .helpers import FakeClock, unit


class TestVectorIndexContract(VectorIndexContract):
    """The contract, once per ``index`` parameter: exact, usearch."""


def test_vector_file_sits_beside_the_database(tmp_path: Path) -> None:
    assert vector_file_for(tmp_path / "cache.sqlite3") == tmp_path / "cache.sqlite3.vectors"


def test_default_index_is_usearch_when_installed() -> None:
    pytest.importorskip("usearch")
    assert isinstance(default_index(8), USearchIndex)


@pytest.mark.parametrize("loader", sorted(INDEX_FACTORIES))
def test_save_and_rebuild_keeps_live_entries(
    index_factory: IndexFactory, loader: str, clock: FakeClock, tmp_path: Path
) -> None:
    index = index_factory(DIMENSION, clock)
    index.add("p", "k1", unit(DIMENSION, 0), text="first", expires_at=clock() + 100)
    index.add("p", "k2", unit(DIMENSION, 1), text="second")
    index.add("q", "k3", unit(DIMENSION, 0), text="other partition")
    index.add("p", "gone", unit(DIMENSION, 2), expires_at=clock() + 5)
    path = vector_file_for(tmp_path / "db" / "cache.sqlite3")
    index.save(path)  # type: ignore[attr-defined]
    cls = ExactIndex if loader == "exact" else USearchIndex
    if loader == "usearch":
        pytest.importorskip("usearch")
    clock.advance(10)  # "gone" expires while the process is down
    rebuilt = cls.load(path, clock=clock)
    assert len(rebuilt) == 3
    assert "gone" not in rebuilt
    [m1, m2] = rebuilt.search("p", unit(DIMENSION, 0), k=5)
    assert (m1.id, m1.text, m2.id) == ("k1", "first", "k2")
    assert m1.score == pytest.approx(1.0, abs=1e-5)
    assert [m.id for m in rebuilt.search("q", unit(DIMENSION, 0), k=5)] == ["k3"]
    clock.advance(90)  # the expiry survived the round trip
    assert [m.id for m in rebuilt.search("p", unit(DIMENSION, 0), k=5)] == ["k2"]


def test_open_starts_empty_without_a_file_and_rebuilds_with_one(
    clock: FakeClock, tmp_path: Path
) -> None:
    path = tmp_path / "cache.sqlite3.vectors"
    index = ExactIndex.open(path, DIMENSION, clock=clock)
    assert len(index) == 0
    index.add("p", "k", unit(DIMENSION, 0), text="t")
    index.save(path)
    assert [
        m.id for m in ExactIndex.open(path, DIMENSION, clock=clock).search("p", unit(DIMENSION, 0))
    ] == ["k"]
    with pytest.raises(TierError, match="expected 8"):
        ExactIndex.open(path, 8, clock=clock)


def test_save_leaves_no_temporary_file_and_replaces_atomically(
    clock: FakeClock, tmp_path: Path
) -> None:
    path = tmp_path / "v"
    index = ExactIndex(DIMENSION, clock=clock)
    index.add("p", "k", unit(DIMENSION, 0))
    index.save(path)
    index.remove("k")
    index.save(path)
    assert [p.name for p in tmp_path.iterdir()] == ["v"]
    assert len(ExactIndex.load(path, clock=clock)) == 0


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[:-1] + bytes([b[-1] ^ 1]),  # checksum
        lambda b: b[:40] + bytes([b[40] ^ 1]) + b[41:],  # header
        lambda b: b[:-40],  # truncated
        lambda b: b"not a vector file at all" * 3,
        lambda b: b"",
    ],
)
def test_a_damaged_file_raises_tier_error(
    damage: Callable[[bytes], bytes], clock: FakeClock, tmp_path: Path
) -> None:
    path = tmp_path / "v"
    index = ExactIndex(DIMENSION, clock=clock)
    index.add("p", "k", unit(DIMENSION, 0), text="t")
    index.save(path)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(TierError):
        ExactIndex.load(path, clock=clock)


def test_missing_file_raises_tier_error(tmp_path: Path) -> None:
    with pytest.raises(TierError):
        ExactIndex.load(tmp_path / "absent")


def test_the_file_holds_raw_float32_not_pickle(clock: FakeClock, tmp_path: Path) -> None:
    path = tmp_path / "v"
    index = ExactIndex(DIMENSION, clock=clock)
    vector = unit(DIMENSION, 0, 1, 2, 3)  # 0.5 each: exact in float32, whatever the rounding
    index.add("p", "k", vector, text="t")
    index.save(path)
    blob = path.read_bytes()
    assert blob.startswith(b"STRATACACHE-VECTORS\n")
    assert vector.astype("<f4").tobytes() in blob
    assert b"\x80\x04" not in blob[:2]  # not a pickle stream


def test_many_small_partitions(clock: FakeClock) -> None:
    index = ExactIndex(DIMENSION, clock=clock)
    rng = np.random.default_rng(3)
    for i in range(200):
        index.add(f"conv{i}", f"k{i}", rng.standard_normal(DIMENSION).astype(np.float32))
    assert len(index.partitions()) == 200
    for i in (0, 57, 199):
        found = index.search(f"conv{i}", rng.standard_normal(DIMENSION).astype(np.float32), k=5)
        assert [m.id for m in found] == [f"k{i}"]


def test_without_usearch_the_default_is_exact_and_usearch_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "usearch", None)  # makes the import fail
    monkeypatch.setitem(sys.modules, "usearch.index", None)
    assert type(default_index(8)) is ExactIndex
    with pytest.raises(MissingExtraError, match=r"stratacache\[semantic\]"):
        USearchIndex(8)


def test_a_large_partition_moves_into_a_graph_and_keeps_its_entries(clock: FakeClock) -> None:
    pytest.importorskip("usearch")
    index = USearchIndex(DIMENSION, clock=clock, exact_below=4)
    for i in range(DIMENSION):
        index.add("p", f"k{i}", unit(DIMENSION, i), text=str(i))
    assert "usearch" in type(index._shards["p"]).__name__.lower()
    for i in range(DIMENSION):
        [match] = index.search("p", unit(DIMENSION, i))
        assert (match.id, match.text) == (f"k{i}", str(i))


def test_text_that_cannot_be_saved_is_rejected_on_add(index: VectorIndex) -> None:
    for bad in ({"partition": "\ud800"}, {"id": "k\udfff"}, {"text": "half \ud83d"}):
        args = {"partition": "p", "id": "k", "text": "t", **bad}
        with pytest.raises(ConfigError):
            index.add(args["partition"], args["id"], unit(DIMENSION, 0), text=args["text"])
    assert len(index) == 0


def test_a_file_with_a_bad_entry_raises_tier_error(clock: FakeClock, tmp_path: Path) -> None:
    import hashlib
    import json
    import struct

    head = json.dumps(
        {"version": 1, "kind": "exact", "dimension": 2, "entries": [["k", "", "t", None]]}
    ).encode()
    body = b"STRATACACHE-VECTORS\n" + struct.pack("<I", len(head)) + head + b"\x00" * 8
    path = tmp_path / "v"
    path.write_bytes(body + hashlib.sha256(body).digest())
    with pytest.raises(TierError, match="bad entry"):
        ExactIndex.load(path, clock=clock)


def _bulk(index: VectorIndex) -> ExactIndex | USearchIndex:
    assert isinstance(index, ExactIndex | USearchIndex)
    return index


def test_add_many_is_add_per_row(index: VectorIndex, clock: FakeClock) -> None:
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((40, DIMENSION)).astype(np.float32)
    ids = [f"k{i}" for i in range(40)]
    _bulk(index).add_many(
        "p",
        ids,
        vectors * 3.0,  # normalised on the way in, as add does
        texts=[f"t{i}" for i in range(40)],
        expires_at=[clock.now + 10 if i % 2 else None for i in range(40)],
    )
    one_by_one = ExactIndex(DIMENSION, clock=clock)
    for i in range(40):
        one_by_one.add("p", ids[i], vectors[i], text=f"t{i}")
    assert len(index) == 40
    for i in range(40):
        got = index.search("p", vectors[i], 3)
        want = one_by_one.search("p", vectors[i], 3)
        assert [m.id for m in got] == [m.id for m in want]
        assert [m.text for m in got] == [m.text for m in want]
        assert [m.score for m in got] == pytest.approx([m.score for m in want], abs=1e-5)
    clock.advance(11)
    assert index.search("p", vectors[1], 1)[0].id != "k1"  # odd rows expired
    assert "k1" not in index
    assert "k0" in index


def test_add_many_replaces_ids_and_appends_to_a_partition(index: VectorIndex) -> None:
    bulk = _bulk(index)
    index.add("p", "a", unit(DIMENSION, 0), text="old")
    bulk.add_many("p", ["a", "b"], np.stack([unit(DIMENSION, 1), unit(DIMENSION, 2)]))
    assert len(index) == 2
    [match] = index.search("p", unit(DIMENSION, 1))
    assert (match.id, match.text) == ("a", "")
    [match] = index.search("p", unit(DIMENSION, 0))
    assert match.score == pytest.approx(0.0, abs=1e-6)
    bulk.add_many("p", [], np.zeros((0, DIMENSION), dtype=np.float32))
    assert len(index) == 2


@pytest.mark.parametrize(
    ("ids", "rows", "extra"),
    [
        (["a", "a"], 2, {}),
        (["a", ""], 2, {}),
        (["a", "b"], 3, {}),
        (["a", "b"], 2, {"texts": ["x"]}),
        (["a", "b"], 2, {"texts": ["x", 3]}),
        (["a", "b"], 2, {"texts": ["x", "\ud800"]}),
        (["a", "b"], 2, {"expires_at": [None, float("nan")]}),
        (["a", "b"], 2, {"expires_at": [None]}),
    ],
)
def test_add_many_rejects_bad_input_and_changes_nothing(
    index: VectorIndex, ids: list[str], rows: int, extra: dict[str, object]
) -> None:
    index.add("p", "a", unit(DIMENSION, 0), text="kept")
    with pytest.raises(ConfigError):
        _bulk(index).add_many("p", ids, np.ones((rows, DIMENSION), dtype=np.float32), **extra)  # type: ignore[arg-type]
    assert len(index) == 1
    [match] = index.search("p", unit(DIMENSION, 0))
    assert (match.id, match.text) == ("a", "kept")


def test_add_many_rejects_non_finite_rows(index: VectorIndex) -> None:
    rows = np.ones((2, DIMENSION), dtype=np.float32)
    rows[1, 3] = np.inf
    with pytest.raises(ConfigError):
        _bulk(index).add_many("p", ["a", "b"], rows)
    with pytest.raises(ConfigError):
        _bulk(index).add_many("p", ["a", "b"], np.ones((2, DIMENSION + 1), dtype=np.float32))
    assert len(index) == 0


def test_a_bulk_added_partition_moves_into_a_graph(clock: FakeClock) -> None:
    pytest.importorskip("usearch")
    index = USearchIndex(DIMENSION, clock=clock, exact_below=4, threads=1)
    index.add_many(
        "p",
        [f"k{i}" for i in range(DIMENSION)],
        np.stack([unit(DIMENSION, i) for i in range(DIMENSION)]),
        texts=[str(i) for i in range(DIMENSION)],
    )
    assert "usearch" in type(index._shards["p"]).__name__.lower()
    for i in range(DIMENSION):
        [match] = index.search("p", unit(DIMENSION, i))
        assert (match.id, match.text) == (f"k{i}", str(i))
        assert match.score == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("dtype", ["i8", "f16"])
def test_a_quantised_graph_reports_exact_scores(
    clock: FakeClock, tmp_path: Path, dtype: str
) -> None:
    """The int8 or f16 graph only finds the candidates; their scores and saved vectors are
    float32."""
    pytest.importorskip("usearch")
    rng = np.random.default_rng(5)
    vectors = rng.standard_normal((40, DIMENSION)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = USearchIndex(DIMENSION, clock=clock, exact_below=0, dtype=dtype, threads=1)
    index.add_many("p", [f"k{i}" for i in range(40)], vectors)
    index.add("p", "late", vectors[0] + 1e-3)  # one by one too
    query = vectors[3] + 0.05 * rng.standard_normal(DIMENSION).astype(np.float32)
    unit_query = query / np.linalg.norm(query)
    found = index.search("p", query, 4)
    assert [m.score for m in found] == sorted((m.score for m in found), reverse=True)
    lookup = {f"k{i}": vectors[i] for i in range(40)}
    for m in found:
        if m.id in lookup:
            assert m.score == pytest.approx(float(lookup[m.id] @ unit_query), abs=1e-6)
    assert index.remove("k3")
    assert "k3" not in [m.id for m in index.search("p", query, 4)]
    index.save(tmp_path / "v")
    loaded = USearchIndex.load(tmp_path / "v", clock=clock)
    again = loaded.search("p", vectors[7], 1)
    assert again[0].id == "k7"
    assert again[0].score == pytest.approx(1.0, abs=1e-6)  # not rounded through the graph


@pytest.mark.parametrize("dtype", ["i8", "f16"])
def test_a_quantised_graph_finds_what_exact_search_finds(
    clock: FakeClock, tmp_path: Path, dtype: str
) -> None:
    pytest.importorskip("usearch")
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((50, DIMENSION)).astype(np.float32)
    # One build thread: a multi-threaded build inserts in a racy order, so the (approximate) graph
    # and its search results would differ from run to run.
    index = USearchIndex(DIMENSION, clock=clock, exact_below=0, dtype=dtype, threads=1)
    index.add_many("p", [f"k{i}" for i in range(50)], vectors)
    exact = ExactIndex(DIMENSION, clock=clock)
    exact.add_many("p", [f"k{i}" for i in range(50)], vectors)
    for i in range(50):
        got, want = index.search("p", vectors[i], 2), exact.search("p", vectors[i], 2)
        assert got[0].id == want[0].id == f"k{i}"
        assert [m.score for m in got] == pytest.approx([m.score for m in want], abs=1e-3)
    index.save(tmp_path / "v")
    assert len(USearchIndex.load(tmp_path / "v", clock=clock)) == 50


@pytest.mark.parametrize(
    "settings",
    [
        {"connectivity": 1},
        {"expansion_add": 0},
        {"expansion_search": True},
        {"threads": -1},
        {"dtype": "f64"},
    ],
)
def test_usearch_rejects_bad_graph_settings(settings: dict[str, object]) -> None:
    pytest.importorskip("usearch")
    with pytest.raises(ConfigError):
        USearchIndex(DIMENSION, **settings)  # type: ignore[arg-type]


def test_the_search_beam_can_be_changed_without_a_rebuild(clock: FakeClock) -> None:
    pytest.importorskip("usearch")
    rng = np.random.default_rng(9)
    vectors = rng.standard_normal((30, DIMENSION)).astype(np.float32)
    index = USearchIndex(DIMENSION, clock=clock, exact_below=0, threads=1)
    index.add_many("p", [f"k{i}" for i in range(30)], vectors)
    assert index.expansion_search == 32
    index.expansion_search = 4
    assert index.expansion_search == 4
    assert index.search("p", vectors[5], 1)[0].id == "k5"
    index.add("q", "other", vectors[0])  # a graph made after the change uses the new beam
    assert index.search("q", vectors[0], 1)[0].id == "other"
    for bad in (0, True, 2.5):
        with pytest.raises(ConfigError):
            index.expansion_search = bad  # type: ignore[assignment]
