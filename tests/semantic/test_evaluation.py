"""Labelled pairs through the real pipeline (the core of ``strata eval-pairs``)."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stratacache.errors import ConfigError
from stratacache.semantic import (
    ExactIndex,
    SemanticCache,
    TextPair,
    calibrate,
    labelled,
    read_pairs,
    score_pairs,
    summarize,
)

from .helpers import HashingEmbedder

PAIRS = [
    {"a": "opening hours of the town pool", "b": "town pool opening hours", "same": 1},
    {
        "a": "ship to Madrid in two days",
        "b": "ship to Madrid in 2 days",
        "same": 1,
        "category": "x",
    },
    {"a": "train 4410 platform", "b": "train 4401 platform", "same": 0, "category": "numbers"},
    {"a": "is the ferry running", "b": "is the ferry not running", "same": 0},
    {"a": "recipe for onion soup", "b": "best hiking boots", "same_answer": False},
]


def _lines() -> list[str]:
    return [json.dumps(p) for p in PAIRS] + [""]


def test_read_pairs() -> None:
    pairs = read_pairs(_lines())
    assert len(pairs) == 5
    assert pairs[1] == TextPair("ship to Madrid in two days", "ship to Madrid in 2 days", True, "x")
    assert pairs[4].same is False


@pytest.mark.parametrize(
    "line",
    [
        '{"a": "x", "b": "y"}',
        "not json",
        '{"a": 1, "b": "y", "same": 1}',
        '{"a": "x", "b": "y", "same": 2}',
        "[1]",
    ],
)
def test_read_pairs_rejects_bad_lines_with_their_number(line: str) -> None:
    with pytest.raises(ConfigError, match="line 2"):
        read_pairs([json.dumps(PAIRS[0]), line])


async def test_score_and_summarize_through_the_real_pipeline() -> None:
    embedder = HashingEmbedder()
    cache = SemanticCache(embedder, ExactIndex(embedder.dimension), threshold=0.5)
    outcomes = await score_pairs(cache, read_pairs(_lines()))
    assert len(cache.index) == 0  # every pair's partition was emptied
    assert [o.pair.a for o in outcomes] == [p["a"] for p in PAIRS]
    by_a = {o.pair.a: o for o in outcomes}
    assert by_a["train 4410 platform"].veto is not None
    assert by_a["train 4410 platform"].veto.guard == "numbers"
    assert by_a["is the ferry running"].veto is not None
    assert by_a["recipe for onion soup"].score < 0.5
    assert len(embedder.texts) == len(set(embedder.texts))  # nothing embedded twice

    guarded = summarize(outcomes, 0.5)
    assert guarded.pairs == 5
    assert guarded.served_when_same == 1.0
    assert guarded.wrong_when_different == 0.0
    assert guarded.precision == 1.0
    assert [name for name, _ in guarded.categories] == ["numbers", "x"]
    numbers = dict(guarded.categories)["numbers"]
    assert math.isnan(numbers.served_when_same)
    assert numbers.wrong_when_different == 0.0

    bare = summarize(outcomes, 0.5, guarded=False)
    assert bare.wrong_when_different == pytest.approx(2 / 3)
    assert bare.precision == pytest.approx(0.5)

    cal = calibrate(labelled(outcomes), 1.0)
    assert cal.recall == 1.0
    assert cal.false_hit_rate == 0.0


async def test_an_empty_text_is_never_served() -> None:
    embedder = HashingEmbedder()
    cache = SemanticCache(embedder, ExactIndex(embedder.dimension), threshold=-1.0)
    [outcome] = await score_pairs(cache, [TextPair("   ", "anything", True)])
    assert outcome.score == -math.inf
    assert summarize([outcome], -1.0).served_when_same == 0.0
    assert labelled([outcome])[0].vetoed


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.text(max_size=40),
            st.builds(
                json.dumps,
                st.dictionaries(
                    st.sampled_from(["a", "b", "same", "same_answer", "category", "x"]),
                    st.one_of(st.text(max_size=8), st.integers(-2, 3), st.booleans(), st.none()),
                ),
            ),
        ),
        max_size=6,
    )
)
def test_read_pairs_fuzz_returns_pairs_or_a_config_error(lines: list[str]) -> None:
    try:
        pairs = read_pairs(lines)
    except ConfigError:
        return
    for pair in pairs:
        assert isinstance(pair.a, str)
        assert isinstance(pair.b, str)
        assert isinstance(pair.same, bool)
