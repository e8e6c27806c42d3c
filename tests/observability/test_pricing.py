"""Tests for stratacache.observability.pricing."""

from __future__ import annotations

import pytest

from stratacache.errors import ConfigError
from stratacache.observability.pricing import DEFAULT_PRICES, Price, PriceTable, token_counts

MILLION = 1_000_000


def test_exact_and_snapshot_names() -> None:
    table = PriceTable.default()
    assert table.price_for("gpt-4o") == DEFAULT_PRICES["gpt-4o"]
    # A dated snapshot takes its family's price, and the longest family wins.
    assert table.price_for("gpt-4o-mini-2024-07-18") == DEFAULT_PRICES["gpt-4o-mini"]
    assert table.price_for("gpt-4o-2024-08-06") == DEFAULT_PRICES["gpt-4o"]
    assert table.price_for("openai/gpt-4.1-mini") == DEFAULT_PRICES["gpt-4.1-mini"]
    # Not a prefix at a dash boundary: unknown rather than a guess.
    assert table.price_for("gpt-4omni") is None
    assert table.price_for("llama-3") is None
    assert table.price_for(None) is None


def test_cost() -> None:
    table = PriceTable({"m": Price(input=2.0, output=8.0, cached_input=0.5)})
    usage = {"prompt_tokens": MILLION, "completion_tokens": MILLION // 2}
    assert table.cost("m", usage) == pytest.approx(2.0 + 4.0)
    cached = {**usage, "prompt_tokens_details": {"cached_tokens": MILLION // 2}}
    assert table.cost("m", cached) == pytest.approx(1.0 + 0.25 + 4.0)
    flat = {**usage, "prompt_tokens_details.cached_tokens": MILLION // 2}
    assert table.cost("m", flat) == pytest.approx(1.0 + 0.25 + 4.0)
    responses = {"input_tokens": MILLION, "output_tokens": 0}
    assert table.cost("m", responses) == pytest.approx(2.0)
    assert table.cost("unknown", usage) == 0.0
    assert table.cost("m", None) == 0.0


def test_overrides() -> None:
    table = PriceTable.default().with_overrides({"gpt-4o": Price(1.0, 1.0), "mine": Price(3.0)})
    assert table.price_for("gpt-4o") == Price(1.0, 1.0)
    assert table.price_for("mine-v2") == Price(3.0)
    assert PriceTable.default().price_for("gpt-4o") == DEFAULT_PRICES["gpt-4o"]  # not mutated


def test_token_counts_tolerate_junk() -> None:
    assert token_counts(None) == (0, 0, 0)
    assert token_counts({"prompt_tokens": "many", "completion_tokens": -3}) == (0, 0, 0)
    assert token_counts({"prompt_tokens": 5, "prompt_tokens_details": {"cached_tokens": 9}}) == (
        5,
        0,
        5,
    )


@pytest.mark.parametrize(
    "bad",
    [
        {"input": -1.0},
        {"input": float("nan")},
        {"input": True},
        {"input": 1.0, "output": "2"},
        {"input": 1.0, "cached_input": -0.1},
    ],
)
def test_bad_prices(bad: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        Price(**bad)  # type: ignore[arg-type]


def test_bad_tables() -> None:
    with pytest.raises(ConfigError):
        PriceTable({"": Price(1.0)})
    with pytest.raises(ConfigError):
        PriceTable({"m": 1.0})  # type: ignore[dict-item]


def test_lookups_are_remembered_and_stay_right() -> None:
    table = PriceTable({"gpt-4o": Price(2.5, 10.0), "gpt-4o-mini": Price(0.15, 0.6)})
    for _ in range(2):  # the second round answers from what the first found
        assert table.price_for("gpt-4o-mini-2024-07-18") == Price(0.15, 0.6)
        assert table.price_for("openai/gpt-4o-2024-08-06") == Price(2.5, 10.0)
        assert table.price_for("unknown-model") is None
    for i in range(1100):  # more names than are remembered: still found
        assert table.price_for(f"gpt-4o-{i}") == Price(2.5, 10.0)
    assert Price(2.0, 8.0, 0.5).dollars(1_000_000, 500_000, cached=200_000) == 5.7
