"""What an answer would have cost: a per-model price table, for the "dollars saved" metric.

Prices are US dollars per million tokens, as providers publish them. The built-in table holds
list prices for common OpenAI models at the time of writing; prices change and deployments
negotiate their own, so every entry can be overridden (``[pricing."gpt-4o"]`` in the config
file), and unknown models cost nothing rather than a guess.

A model name matches its own entry, else the longest entry it extends with a ``-`` (a dated snapshot
such as ``gpt-4o-mini-2024-07-18`` is priced as ``gpt-4o-mini``, never as ``gpt-4o``); a provider
prefix (``openai/gpt-4o``) is ignored.

>>> table = PriceTable.default()
>>> usage = {"prompt_tokens": 1_000_000, "completion_tokens": 0}
>>> round(table.cost("gpt-4o-mini-2024-07-18", usage), 2)
0.15
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from stratacache.errors import ConfigError

__all__ = ["DEFAULT_PRICES", "Price", "PriceTable", "token_counts"]


@dataclass(frozen=True, slots=True)
class Price:
    """A model's price in US dollars per million tokens."""

    input: float
    """Per million prompt (input) tokens."""
    output: float = 0.0
    """Per million completion (output) tokens, reasoning included."""
    cached_input: float | None = None
    """Per million prompt tokens served from the provider's prompt cache; ``None``: as input."""

    def __post_init__(self) -> None:
        for name in ("input", "output", "cached_input"):
            value = getattr(self, name)
            if value is None and name == "cached_input":
                continue
            if (
                not isinstance(value, int | float)
                or isinstance(value, bool)
                or not math.isfinite(value)
                or value < 0
            ):
                raise ConfigError(f"price {name} must be a finite number >= 0, got {value!r}")

    def dollars(self, prompt: int, completion: int, cached: int = 0) -> float:
        """What ``prompt`` input tokens (``cached`` of them from the prompt cache) and
        ``completion`` output tokens cost, in US dollars.

        >>> Price(2.0, 8.0, 0.5).dollars(1_000_000, 500_000, cached=200_000)
        5.7
        """
        cached_rate = self.input if self.cached_input is None else self.cached_input
        total = (prompt - cached) * self.input + cached * cached_rate + completion * self.output
        return total / 1_000_000


DEFAULT_PRICES: Mapping[str, Price] = MappingProxyType(
    {
        "gpt-5": Price(1.25, 10.0, 0.125),
        "gpt-5-mini": Price(0.25, 2.0, 0.025),
        "gpt-5-nano": Price(0.05, 0.40, 0.005),
        "gpt-4.1": Price(2.0, 8.0, 0.50),
        "gpt-4.1-mini": Price(0.40, 1.60, 0.10),
        "gpt-4.1-nano": Price(0.10, 0.40, 0.025),
        "gpt-4o": Price(2.50, 10.0, 1.25),
        "gpt-4o-mini": Price(0.15, 0.60, 0.075),
        "gpt-4-turbo": Price(10.0, 30.0),
        "gpt-4": Price(30.0, 60.0),
        "gpt-3.5-turbo": Price(0.50, 1.50),
        "gpt-3.5-turbo-instruct": Price(1.50, 2.0),
        "o1": Price(15.0, 60.0, 7.50),
        "o1-mini": Price(1.10, 4.40, 0.55),
        "o3": Price(2.0, 8.0, 0.50),
        "o3-mini": Price(1.10, 4.40, 0.55),
        "o4-mini": Price(1.10, 4.40, 0.275),
        "text-embedding-3-small": Price(0.02),
        "text-embedding-3-large": Price(0.13),
        "text-embedding-ada-002": Price(0.10),
    }
)
"""List prices (USD per million tokens) for common OpenAI models; override them in the config."""


def token_counts(usage: Mapping[str, Any] | None) -> tuple[int, int, int]:
    """Return ``(input, output, cached_input)`` token counts from any OpenAI usage object.

    Chat and legacy completions report ``prompt_tokens``/``completion_tokens``, the Responses
    API ``input_tokens``/``output_tokens``, embeddings only ``prompt_tokens``; nested details may
    be flattened to dotted names (``prompt_tokens_details.cached_tokens``), as records keep
    them. Missing or malformed counts are 0.
    """
    if not isinstance(usage, Mapping):
        return 0, 0, 0
    prompt = _count(usage.get("prompt_tokens", usage.get("input_tokens")))
    completion = _count(usage.get("completion_tokens", usage.get("output_tokens")))
    details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details")
    if isinstance(details, Mapping):
        cached = _count(details.get("cached_tokens"))
    else:  # a record's flattened usage (stratacache.llm.records.flat_usage)
        cached = _count(
            usage.get(
                "prompt_tokens_details.cached_tokens",
                usage.get("input_tokens_details.cached_tokens"),
            )
        )
    return prompt, completion, min(cached, prompt)


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


_MAX_REMEMBERED = 1024  # model names whose price lookup a table remembers


class PriceTable:
    """Prices by model name, with prefix matching for dated snapshots."""

    __slots__ = ("_by_length", "_found", "_prices")

    def __init__(self, prices: Mapping[str, Price]) -> None:
        for name, price in prices.items():
            if not isinstance(name, str) or not name:
                raise ConfigError(f"a priced model name must be a non-empty string, got {name!r}")
            if not isinstance(price, Price):
                raise ConfigError(f"the price of {name!r} must be a Price, got {price!r}")
        self._prices: Mapping[str, Price] = MappingProxyType(dict(prices))
        # Longest names first, so a prefix search finds gpt-4o-mini before gpt-4o.
        self._by_length = sorted(self._prices, key=len, reverse=True)
        # Model name -> its price, as found: providers answer with dated names (gpt-4o-2024-08-06)
        # that only a prefix search finds, and the same few names recur on every request.
        self._found: dict[str, Price | None] = {}

    @classmethod
    def default(cls) -> PriceTable:
        """The built-in table."""
        return cls(DEFAULT_PRICES)

    def with_overrides(self, overrides: Mapping[str, Price]) -> PriceTable:
        """A new table: this one with ``overrides`` added or replacing entries."""
        return PriceTable({**self._prices, **overrides})

    @property
    def prices(self) -> Mapping[str, Price]:
        """Every entry, read-only."""
        return self._prices

    def price_for(self, model: str | None) -> Price | None:
        """The price of ``model``, or ``None`` when the table does not know it."""
        if not model:
            return None
        try:
            return self._found[model]
        except KeyError:
            pass
        if len(self._found) >= _MAX_REMEMBERED:
            self._found.clear()  # model names come from requests and answers: stay bounded
        price = self._found[model] = self._lookup(model)
        return price

    def _lookup(self, model: str) -> Price | None:
        name = model.rsplit("/", 1)[-1]
        exact = self._prices.get(name)
        if exact is not None:
            return exact
        for candidate in self._by_length:
            if name.startswith(candidate + "-"):
                return self._prices[candidate]
        return None

    def cost(self, model: str | None, usage: Mapping[str, Any] | None) -> float:
        """What ``usage`` of ``model`` costs in US dollars (0.0 for an unknown model)."""
        price = self.price_for(model)
        if price is None:
            return 0.0
        return price.dollars(*token_counts(usage))
