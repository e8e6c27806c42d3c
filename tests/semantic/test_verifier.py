"""The verifier: features, numpy inference, the weight file, and its place in SemanticCache."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stratacache.errors import ConfigError
from stratacache.semantic import (
    DEFAULT_MODEL,
    ExactIndex,
    SemanticCache,
    TextPair,
    labelled,
    score_pairs,
    summarize,
)
from stratacache.semantic.verifier import (
    LEXICAL_FEATURES,
    Verifier,
    lexical_features,
    packaged_path,
    packaged_verifier,
    pair_features,
)

from .helpers import HashingEmbedder

DIM = 256


def word_set_verifier(model: str = "hashing-test", dimension: int = DIM) -> Verifier:
    """Accepts a pair exactly when both texts use the same set of words (a hand-set perceptron).

    One hidden unit reads the ``same_word_set`` feature; the output is ``20 * h - 10``.
    """
    width = 2 * dimension + len(LEXICAL_FEATURES)
    w0 = np.zeros((width, 1), np.float32)
    w0[2 * dimension + LEXICAL_FEATURES.index("same_word_set"), 0] = 1.0
    return Verifier.from_arrays(
        [w0, np.array([[20.0]], np.float32)],
        [np.zeros(1, np.float32), np.array([-10.0], np.float32)],
        model=model,
        dimension=dimension,
        threshold=0.5,
        floor=0.3,
    )


def test_lexical_features_are_named_and_bounded() -> None:
    row = lexical_features("Track order 48213", "track order #48231", 0.99)
    assert len(row) == len(LEXICAL_FEATURES)
    named = dict(zip(LEXICAL_FEATURES, row, strict=True))
    assert named["cosine"] == pytest.approx(0.99)
    assert named["guard_numbers"] == 1.0
    assert named["guard_polarity"] == 0.0
    assert named["same_question_word"] == 1.0
    assert 0.0 < named["word_jaccard"] < 1.0
    same = dict(zip(LEXICAL_FEATURES, lexical_features("a b c", "c b a", 1.0), strict=True))
    assert same["same_word_set"] == 1.0
    assert same["same_words"] == 0.0


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=40), st.text(max_size=40))
def test_features_do_not_depend_on_which_text_was_cached(a: str, b: str) -> None:
    rng = np.random.default_rng(0)
    u, v = rng.normal(size=(2, 1, 8)).astype(np.float32)
    vec_ab, lex_ab = pair_features([a], [b], u, v)
    vec_ba, lex_ba = pair_features([b], [a], v, u)
    np.testing.assert_allclose(vec_ab, vec_ba, rtol=1e-6)
    np.testing.assert_allclose(lex_ab, lex_ba, rtol=1e-5, atol=1e-6)
    assert np.isfinite(lex_ab).all()


def test_probabilities_follow_the_weights() -> None:
    verifier = word_set_verifier(dimension=4)
    u = np.eye(4, dtype=np.float32)[:2]
    probs = verifier.probabilities(["a b", "a b"], ["b a", "a c"], u, u)
    assert probs[0] > 0.99
    assert probs[1] < 0.01
    assert verifier.probabilities([], [], u[:0], u[:0]).shape == (0,)
    with pytest.raises(ConfigError, match="8-dimensional"):
        Verifier.probabilities(word_set_verifier(dimension=8), ["a"], ["a"], u[:1], u[:1])


def test_save_and_load_round_trip_without_pickle(tmp_path: Path) -> None:
    verifier = word_set_verifier().with_threshold(0.7, floor=0.4)
    path = tmp_path / "v.npz"
    verifier.save(path)
    loaded = Verifier.load(path)
    assert (loaded.model, loaded.dimension, loaded.threshold, loaded.floor) == (
        "hashing-test",
        DIM,
        0.7,
        0.4,
    )
    for a, b in zip(loaded.weights, verifier.weights, strict=True):
        np.testing.assert_array_equal(a, b)
    with np.load(path, allow_pickle=False) as data:  # plain arrays only
        assert json.loads(str(data["meta"]))["format"] == "stratacache-verifier/1"


def test_load_rejects_what_is_not_a_verifier(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no verifier weights"):
        Verifier.load(tmp_path / "missing.npz")
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file at all")
    with pytest.raises(ConfigError, match="not a verifier"):
        Verifier.load(garbage)
    other = tmp_path / "other.npz"
    np.savez(other, meta=np.array(json.dumps({"format": "something-else/9"})))
    with pytest.raises(ConfigError, match="format"):
        Verifier.load(other)
    truncated = tmp_path / "truncated.npz"
    np.savez(truncated, w0=np.zeros((3, 1), np.float32))
    with pytest.raises(ConfigError, match="not a verifier"):
        Verifier.load(truncated)


def test_bad_shapes_and_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match="do not chain"):
        Verifier.from_arrays(
            [np.zeros((3, 1))], [np.zeros(1)], model="m", dimension=4, threshold=0.5, floor=0.0
        )
    with pytest.raises(ConfigError, match="probability"):
        word_set_verifier().with_threshold(1.5)
    width = 2 * 4 + len(LEXICAL_FEATURES)
    with pytest.raises(ConfigError, match="one output"):
        Verifier.from_arrays(
            [np.zeros((width, 2))], [np.zeros(2)], model="m", dimension=4, threshold=0.5, floor=0
        )


def test_the_packaged_verifier_only_serves_its_own_model() -> None:
    assert packaged_verifier("hashing-test") is None
    if not packaged_path().is_file():
        pytest.skip("the packaged weights are not in this checkout")
    verifier = packaged_verifier(DEFAULT_MODEL)
    assert verifier is not None
    assert verifier.dimension == 384
    assert packaged_verifier(DEFAULT_MODEL, 128) is None
    # The weights carry how they were fitted and what they measured on held-out pairs.
    assert set(verifier.info["pairs"]) == {"train", "validation", "test"}
    assert 0.0 <= verifier.info["test"]["wrong_when_different"] <= 1.0
    assert 0.0 < verifier.threshold < 1.0


async def test_semantic_cache_serves_only_what_the_verifier_accepts() -> None:
    embedder = HashingEmbedder(DIM)
    cache = SemanticCache(embedder, ExactIndex(DIM), verifier=word_set_verifier())
    assert cache.verifier is not None
    assert cache.threshold == 0.3  # the verifier's floor replaces the default threshold
    await cache.add("p", "town pool opening hours", "k1")
    hit = await cache.lookup("p", "opening hours town pool")
    assert hit is not None
    assert hit.key == "k1"
    assert await cache.lookup("p", "town pool opening hours for swimmers") is None
    stats = cache.stats()
    assert stats.hits == 1
    assert stats.vetoed == 1
    assert stats.vetoes["verifier"] == 1
    [candidate] = await cache.explain("p", "town pool opening hours for swimmers")
    assert candidate.probability is not None
    assert candidate.probability < 0.5
    assert not candidate.verified
    assert not candidate.served


async def test_guards_veto_before_the_verifier_is_asked() -> None:
    embedder = HashingEmbedder(DIM)
    cache = SemanticCache(embedder, ExactIndex(DIM), verifier=word_set_verifier())
    await cache.add("p", "track order 48213", "k1")
    assert await cache.lookup("p", "order 48231 track") is None
    assert dict(cache.stats().vetoes) == {"numbers": 1}


async def test_verifier_choice() -> None:
    embedder = HashingEmbedder(DIM)
    default = SemanticCache(embedder, ExactIndex(DIM))
    assert default.verifier is None  # the packaged one was not fitted on this embedder
    assert default.threshold == 0.95
    off = SemanticCache(embedder, ExactIndex(DIM), verifier=False)
    assert off.verifier is None
    with pytest.raises(ConfigError, match="fitted on other-model"):
        SemanticCache(embedder, ExactIndex(DIM), verifier=word_set_verifier("other-model"))
    with pytest.raises(ConfigError, match="verifier must be"):
        SemanticCache(embedder, ExactIndex(DIM), verifier="yes")  # type: ignore[arg-type]
    explicit = SemanticCache(embedder, ExactIndex(DIM), threshold=0.8, verifier=word_set_verifier())
    assert explicit.threshold == 0.8


async def test_evaluation_reports_the_pipeline_decision_and_calibrates_the_verifier() -> None:
    embedder = HashingEmbedder(DIM)
    cache = SemanticCache(embedder, ExactIndex(DIM), verifier=word_set_verifier())
    pairs = [
        TextPair("town pool opening hours", "opening hours town pool", True, "reorder"),
        TextPair("ferry timetable to the island", "island ferry timetable to the", True),
        TextPair("town pool opening hours", "town pool opening hours for kids", False),
        TextPair("is the ferry running", "is the ferry not running", False, "negation"),
    ]
    outcomes = await score_pairs(cache, pairs)
    assert [o.served for o in outcomes] == [True, True, False, False]
    assert all(o.probability is not None for o in outcomes)
    summary = summarize(outcomes)
    assert summary.served_when_same == 1.0
    assert summary.wrong_when_different == 0.0
    # Without the verifier, cosine alone serves the scope change.
    loose = summarize(outcomes, 0.3, guarded=True)
    assert loose.wrong_when_different == 0.5
    strict = summarize(outcomes, 0.3, verifier_threshold=0.5)
    assert strict.wrong_when_different == 0.0
    rows = labelled(outcomes, floor=0.3)
    assert [r.vetoed for r in rows] == [False, False, False, True]  # the negation is vetoed
    assert rows[0].score == pytest.approx(outcomes[0].probability)
    assert not math.isnan(rows[2].score)
