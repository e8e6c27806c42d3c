"""SemanticCache end to end with a real (hashing) embedder, both indexes, a fake clock."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from stratacache.errors import ConfigError
from stratacache.semantic import (
    Calibration,
    EmbeddingCache,
    ExactIndex,
    GuardVerdict,
    LabelledPair,
    SemanticCache,
    SemanticHit,
    calibrate,
    vector_file_for,
)

from .conftest import IndexFactory
from .helpers import FakeClock, HashingEmbedder

THRESHOLD = 0.5  # the hashing embedder scores shared words, not meaning


@pytest.fixture
def embedder() -> HashingEmbedder:
    return HashingEmbedder()


@pytest.fixture
def cache(
    index_factory: IndexFactory, embedder: HashingEmbedder, clock: FakeClock
) -> SemanticCache:
    return SemanticCache(
        embedder, index_factory(embedder.dimension, clock), threshold=THRESHOLD, clock=clock
    )


async def test_a_paraphrase_hits_with_its_score(cache: SemanticCache) -> None:
    assert await cache.add("conv", "How do I reset my router password?", "rec/1")
    hit = await cache.lookup("conv", "how do i reset the router password")
    assert isinstance(hit, SemanticHit)
    assert hit.key == "rec/1"
    assert hit.text == "How do I reset my router password?"
    assert THRESHOLD <= hit.score < 1.0
    stats = cache.stats()
    assert (stats.lookups, stats.hits, stats.vetoed, stats.below_threshold) == (1, 1, 0, 0)


async def test_a_trap_above_the_threshold_is_vetoed_and_counted(cache: SemanticCache) -> None:
    await cache.add("conv", "Track my parcel 55120 please", "rec/1")
    assert await cache.lookup("conv", "Track my parcel 55210 please") is None
    await cache.add("conv", "Is the lake safe for swimming today?", "rec/2")
    assert await cache.lookup("conv", "Is the lake unsafe for swimming today?") is None
    stats = cache.stats()
    assert stats.vetoed == 2
    assert stats.hits == 0
    assert dict(stats.vetoes) == {"numbers": 1, "polarity": 1}
    [candidate] = await cache.explain("conv", "Track my parcel 55210 please", k=1)
    assert candidate.above_threshold
    assert candidate.veto == GuardVerdict("numbers", "numbers differ: 55210 vs 55120")
    assert not candidate.served
    assert cache.stats().lookups == 2  # explain() is not counted


async def test_the_next_candidate_is_served_when_the_best_is_vetoed(cache: SemanticCache) -> None:
    await cache.add("conv", "refund for order 1001 status", "rec/wrong")
    await cache.add("conv", "my refund status for order 1002 please now thanks", "rec/right")
    hit = await cache.lookup("conv", "refund for order 1002 status")
    assert hit is not None
    assert hit.key == "rec/right"
    assert cache.stats().vetoes == {"numbers": 1}


async def test_without_guards_the_trap_is_served(
    index_factory: IndexFactory, embedder: HashingEmbedder, clock: FakeClock
) -> None:
    bare = SemanticCache(embedder, index_factory(embedder.dimension, clock), [], THRESHOLD, clock)
    await bare.add("conv", "Track my parcel 55120 please", "rec/1")
    assert await bare.lookup("conv", "Track my parcel 55210 please") is not None


async def test_another_partition_is_never_searched_even_at_cosine_one(
    cache: SemanticCache,
) -> None:
    await cache.add("gym-chat", "yes, cancel it", "rec/gym")
    assert await cache.lookup("streaming-chat", "yes, cancel it") is None
    assert await cache.explain("streaming-chat", "yes, cancel it") == []
    hit = await cache.lookup("gym-chat", "yes, cancel it")
    assert hit is not None
    assert hit.score == pytest.approx(1.0, abs=1e-5)


async def test_below_the_threshold_is_a_miss(cache: SemanticCache) -> None:
    await cache.add("conv", "What is the capital of Peru?", "rec/1")
    assert await cache.lookup("conv", "Recommend a good hiking boot") is None
    assert cache.stats().below_threshold == 1


async def test_ttl_is_honoured(cache: SemanticCache, clock: FakeClock) -> None:
    await cache.add("conv", "opening hours of the pool", "rec/1", expires_at=clock() + 60)
    assert await cache.lookup("conv", "opening hours of the pool") is not None
    clock.advance(60)
    assert await cache.lookup("conv", "opening hours of the pool") is None
    assert await cache.add("conv", "already stale", "rec/2", expires_at=clock() - 1) is False
    assert "rec/2" not in cache.index


async def test_delete_by_key_and_by_partition(cache: SemanticCache) -> None:
    await cache.add("conv", "weather in Porto tomorrow", "rec/1")
    await cache.add("conv", "weather in Porto tomorrow morning", "rec/2")
    await cache.add("other", "weather in Porto tomorrow", "rec/3")
    assert cache.delete("rec/1") is True
    assert cache.delete("rec/1") is False
    hit = await cache.lookup("conv", "weather in Porto tomorrow")
    assert hit is None or hit.key == "rec/2"
    assert cache.delete_partition("conv") == 1
    assert await cache.lookup("conv", "weather in Porto tomorrow") is None
    assert await cache.lookup("other", "weather in Porto tomorrow") is not None
    assert cache.delete_where(lambda key: key == "rec/3") == 1
    assert await cache.lookup("other", "weather in Porto tomorrow") is None


async def test_empty_text_is_a_miss_and_is_never_indexed(
    cache: SemanticCache, embedder: HashingEmbedder
) -> None:
    assert await cache.add("conv", "   ", "rec/1") is False
    assert await cache.lookup("conv", "") is None
    assert embedder.calls == 0


async def test_each_text_is_embedded_once(cache: SemanticCache, embedder: HashingEmbedder) -> None:
    await cache.add("conv", "how many moons has mars", "rec/1")
    for _ in range(3):
        await cache.lookup("conv", "how many moons has mars")
        await cache.lookup("other", "how many moons has mars")
    assert embedder.texts == ["how many moons has mars"]


async def test_bad_input_raises_config_error(cache: SemanticCache) -> None:
    for call in (
        cache.add("", "text", "k"),
        cache.add("p", "text", ""),
        cache.add("p", 42, "k"),  # type: ignore[arg-type]
        cache.add("p", "text", "k", expires_at=math.nan),
        cache.lookup("", "text"),
        cache.lookup("p", None),  # type: ignore[arg-type]
    ):
        with pytest.raises(ConfigError):
            await call
    assert len(cache.index) == 0


@pytest.mark.parametrize("threshold", [1.5, -2, math.nan, True])
def test_bad_threshold(threshold: float, embedder: HashingEmbedder) -> None:
    with pytest.raises(ConfigError):
        SemanticCache(embedder, ExactIndex(embedder.dimension), threshold=threshold)


def test_an_embedding_cache_can_be_shared(embedder: HashingEmbedder) -> None:
    shared = EmbeddingCache(embedder)
    cache = SemanticCache(shared, ExactIndex(embedder.dimension))
    assert cache.embeddings is shared


async def test_rebuild_from_the_vector_file_beside_sqlite(
    embedder: HashingEmbedder, clock: FakeClock, tmp_path: Path
) -> None:
    path = vector_file_for(tmp_path / "cache.sqlite3")
    first = SemanticCache(
        embedder,
        ExactIndex.open(path, embedder.dimension, clock=clock),
        threshold=THRESHOLD,
        clock=clock,
    )
    await first.add("conv", "best pizza near the station", "rec/1", expires_at=clock() + 30)
    first.index.save(path)  # type: ignore[attr-defined]
    second = SemanticCache(
        embedder,
        ExactIndex.open(path, embedder.dimension, clock=clock),
        threshold=THRESHOLD,
        clock=clock,
    )
    hit = await second.lookup("conv", "best pizza near the station please")
    assert hit is not None
    assert hit.key == "rec/1"
    clock.advance(30)
    assert await second.lookup("conv", "best pizza near the station please") is None


# --- calibration ---------------------------------------------------------------------------------


def _pairs(*rows: tuple[float, bool]) -> list[LabelledPair]:
    return [LabelledPair(score, same) for score, same in rows]


def test_calibrate_maximises_recall_at_the_precision_target() -> None:
    pairs = _pairs(
        (0.99, True), (0.97, True), (0.95, False), (0.93, True), (0.91, True),
        (0.90, True), (0.85, False), (0.80, True), (0.70, False),
    )  # fmt: skip
    # At 0.90: 5 right, 1 wrong = 83 %; at 0.80: 6 right, 2 wrong = 75 %.
    assert calibrate(pairs, 0.8) == Calibration(0.90, 5 / 6, 5 / 6, 1 / 3, 6, 9)
    assert calibrate(pairs, 0.75).threshold == 0.80
    assert calibrate(pairs, 1.0).threshold == 0.97
    assert calibrate(pairs, 0.0).threshold == 0.80  # all positives: no lower threshold helps


def test_calibrate_respects_a_wrong_answer_budget() -> None:
    pairs = _pairs((0.99, True), (0.95, False), (0.9, True), (0.8, False), (0.7, True))
    cal = calibrate(pairs, 0.0, max_false_hit_rate=0.5)
    assert cal.threshold == 0.9
    assert cal.false_hit_rate == 0.5
    assert calibrate(pairs, 0.0, max_false_hit_rate=0.0).threshold == 0.99


def test_calibrate_never_serves_vetoed_pairs_and_keeps_ties_together() -> None:
    pairs = [
        LabelledPair(0.99, False, vetoed=True),
        LabelledPair(0.95, True),
        LabelledPair(0.9, True),
        LabelledPair(0.9, False),
    ]
    cal = calibrate(pairs, 1.0)
    assert cal.threshold == 0.95
    assert cal.precision == 1.0
    assert cal.recall == 0.5


def test_calibrate_without_a_feasible_threshold_serves_nothing() -> None:
    cal = calibrate(_pairs((0.9, False), (0.8, True)), 1.0)
    assert cal.threshold == math.inf
    assert cal.served == 0
    assert cal.recall == 0.0


@pytest.mark.parametrize("target", [-0.1, 1.1, math.nan])
def test_calibrate_rejects_bad_targets(target: float) -> None:
    with pytest.raises(ConfigError):
        calibrate([], target)
    with pytest.raises(ConfigError):
        calibrate(_pairs((math.inf, True)), 0.9)
