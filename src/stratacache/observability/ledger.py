"""The cost ledger: providers' usage normalised, and what prompt caching and stratacache saved.

Providers report prompt-cache use in three incompatible shapes:

* **OpenAI** counts cached tokens *inside* the prompt: ``prompt_tokens`` (chat) or ``input_tokens``
  (Responses) is the whole prompt, of which ``prompt_tokens_details.cached_tokens`` were read from
  the cache at the cached-input price.
* **Anthropic** counts them *outside*: ``input_tokens`` is only the uncached part;
  ``cache_read_input_tokens`` were read (0.1x input) and ``cache_creation_input_tokens`` written
  (1.25x input for the 5-minute TTL, 2x for 1 hour; ``cache_creation.ephemeral_1h_input_tokens``
  says how many of them were 1-hour writes).
* **Gemini** counts them *inside*: ``promptTokenCount`` includes ``cachedContentTokenCount``;
  ``thoughtsTokenCount`` is billed as output.

:func:`normalize_usage` maps all three (and records' flattened dotted names) onto one
:class:`Usage`, in which ``input_tokens`` is always the whole prompt. :class:`Ledger` prices each
answer twice, as billed and as it would have been billed without the prompt cache, and keeps per
model totals of what was spent, what the provider's prompt cache saved, and what stratacache's own
response cache saved (an answer served from the cache saves what its upstream call cost).

>>> ledger = Ledger()
>>> charge = ledger.record_upstream(
...     "claude-sonnet-4-5",
...     {"input_tokens": 100, "cache_read_input_tokens": 1000, "output_tokens": 10},
... )
>>> round(charge.billed, 6), round(charge.prompt_cache_saved, 6)
(0.00075, 0.0027)
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from stratacache.observability.pricing import Price, PriceTable

__all__ = [
    "PROVIDER_PRICES",
    "Charge",
    "Ledger",
    "ModelTotals",
    "Usage",
    "default_prices",
    "normalize_usage",
]

PROVIDER_PRICES: Mapping[str, Price] = MappingProxyType(
    {
        # Anthropic: cache reads cost 0.1x input; writes 1.25x (5 minutes) or 2x (1 hour).
        "claude-opus-4-5": Price(5.0, 25.0, 0.50),
        "claude-opus-4-1": Price(15.0, 75.0, 1.50),
        "claude-opus-4": Price(15.0, 75.0, 1.50),
        "claude-sonnet-4-5": Price(3.0, 15.0, 0.30),
        "claude-sonnet-4": Price(3.0, 15.0, 0.30),
        "claude-3-7-sonnet": Price(3.0, 15.0, 0.30),
        "claude-3-5-sonnet": Price(3.0, 15.0, 0.30),
        "claude-haiku-4-5": Price(1.0, 5.0, 0.10),
        "claude-3-5-haiku": Price(0.80, 4.0, 0.08),
        "claude-3-haiku": Price(0.25, 1.25, 0.03),
        # Gemini (prompts up to 200k tokens): implicit cache hits cost 0.1x input.
        "gemini-2.5-pro": Price(1.25, 10.0, 0.125),
        "gemini-2.5-flash": Price(0.30, 2.50, 0.03),
        "gemini-2.5-flash-lite": Price(0.10, 0.40, 0.01),
    }
)
"""List prices (USD per million tokens) of Anthropic and Gemini models, at the time of writing."""

CACHE_WRITE_MULTIPLIER = 1.25
"""An Anthropic cache write (5-minute TTL) costs this many times the input price."""
LONG_CACHE_WRITE_MULTIPLIER = 2.0
"""... and a 1-hour write this many times."""


def default_prices() -> PriceTable:
    """The built-in OpenAI table with :data:`PROVIDER_PRICES` added."""
    return PriceTable.default().with_overrides(PROVIDER_PRICES)


@dataclass(frozen=True, slots=True)
class Usage:
    """One answer's token usage in one shape, whichever provider reported it."""

    shape: str
    """``openai``, ``anthropic``, ``gemini`` or ``none`` (no usage reported)."""
    input_tokens: int = 0
    """The whole prompt: uncached, cached and cache-written tokens together."""
    cached_tokens: int = 0
    """Prompt tokens read from the provider's prompt cache."""
    cache_write_tokens: int = 0
    """Prompt tokens written to the prompt cache (Anthropic), 1-hour writes included."""
    long_cache_write_tokens: int = 0
    """... of which written with the 1-hour TTL."""
    output_tokens: int = 0
    """Completion tokens, reasoning (thinking) included."""


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _get(usage: Mapping[str, Any], *path: str) -> int:
    """``usage[a][b]``, or the flattened ``usage["a.b"]`` a record keeps."""
    flat = usage.get(".".join(path))
    if flat is not None:
        return _int(flat)
    value: Any = usage
    for name in path:
        if not isinstance(value, Mapping):
            return 0
        value = value.get(name)
    return _int(value)


def normalize_usage(usage: Mapping[str, Any] | None) -> Usage:
    """Map any provider's usage object onto :class:`Usage` (missing or malformed counts are 0).

    >>> normalize_usage({"prompt_tokens": 2000, "completion_tokens": 5,
    ...                  "prompt_tokens_details": {"cached_tokens": 1792}})
    Usage(shape='openai', input_tokens=2000, cached_tokens=1792, cache_write_tokens=0, \
long_cache_write_tokens=0, output_tokens=5)
    """
    if not isinstance(usage, Mapping):
        return Usage("none")
    if isinstance(usage.get("usageMetadata"), Mapping):
        usage = usage["usageMetadata"]
    gemini_prompt = usage.get("promptTokenCount", usage.get("prompt_token_count"))
    if gemini_prompt is not None:
        prompt = _int(gemini_prompt)
        cached = _int(usage.get("cachedContentTokenCount", usage.get("cached_content_token_count")))
        tools = _int(usage.get("toolUsePromptTokenCount", usage.get("tool_use_prompt_token_count")))
        output = _int(usage.get("candidatesTokenCount", usage.get("candidates_token_count")))
        output += _int(usage.get("thoughtsTokenCount", usage.get("thoughts_token_count")))
        return Usage("gemini", prompt + tools, min(cached, prompt + tools), 0, 0, output)
    if "cache_read_input_tokens" in usage or "cache_creation_input_tokens" in usage:
        read = _int(usage.get("cache_read_input_tokens"))
        written = _int(usage.get("cache_creation_input_tokens"))
        long = min(written, _get(usage, "cache_creation", "ephemeral_1h_input_tokens"))
        uncached = _int(usage.get("input_tokens"))
        return Usage(
            "anthropic",
            uncached + read + written,
            read,
            written,
            long,
            _int(usage.get("output_tokens")),
        )
    prompt = _int(usage.get("prompt_tokens", usage.get("input_tokens")))
    output = _int(usage.get("completion_tokens", usage.get("output_tokens")))
    cached = _get(usage, "prompt_tokens_details", "cached_tokens") or _get(
        usage, "input_tokens_details", "cached_tokens"
    )
    return Usage("openai", prompt, min(cached, prompt), 0, 0, output)


@dataclass(frozen=True, slots=True)
class Charge:
    """What one answer cost, and what it would have cost without the provider's prompt cache."""

    usage: Usage
    """The normalised usage."""
    billed: float
    """US dollars as billed (cache reads discounted, cache writes surcharged)."""
    uncached: float
    """US dollars at the plain input price for the whole prompt."""
    priced: bool
    """Whether the model has a price (otherwise both amounts are 0)."""

    @property
    def prompt_cache_saved(self) -> float:
        """What the prompt cache saved (negative when writes cost more than reads saved)."""
        return self.uncached - self.billed


@dataclass(frozen=True, slots=True)
class ModelTotals:
    """A model's running totals in the ledger."""

    model: str
    """The model name as reported."""
    upstream_requests: int = 0
    """Answers that came from the provider."""
    input_tokens: int = 0
    """Their prompt tokens (whole prompts)."""
    cached_tokens: int = 0
    """... read from the provider's prompt cache."""
    cache_write_tokens: int = 0
    """... written to it."""
    output_tokens: int = 0
    """Their completion tokens."""
    spent: float = 0.0
    """US dollars billed for them."""
    prompt_cache_saved: float = 0.0
    """US dollars the provider's prompt cache saved on them."""
    cache_hits: int = 0
    """Answers stratacache served without an upstream call."""
    response_cache_saved: float = 0.0
    """US dollars those upstream calls would have cost."""

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (dollars rounded to micro-dollars)."""
        return {
            "upstream_requests": self.upstream_requests,
            "input_tokens": self.input_tokens,
            "cached_tokens": self.cached_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "output_tokens": self.output_tokens,
            "spent_dollars": round(self.spent, 6),
            "prompt_cache_saved_dollars": round(self.prompt_cache_saved, 6),
            "cache_hits": self.cache_hits,
            "response_cache_saved_dollars": round(self.response_cache_saved, 6),
        }


_MAX_MODELS = 1024  # model names come from answers: keep the per-model table bounded


class Ledger:
    """Per-model totals of spend and savings, priced from a :class:`PriceTable`.

    :param prices: the price table (default: :func:`default_prices`); a cached-input price of
        ``None`` means cache reads are billed as plain input.
    """

    def __init__(self, prices: PriceTable | None = None) -> None:
        self.prices = prices or default_prices()
        """The table answers are priced from."""
        self._totals: dict[str, ModelTotals] = {}
        # Cache hits are the hot path (one per served answer): their counts are kept in place
        # (model -> [hits, dollars saved]) and merged into the totals on read, and their charges
        # are remembered per (model, usage), since the same record's usage repeats on every hit.
        self._hits: dict[str, list[float]] = {}
        self._hit_charges: dict[tuple[Any, ...], Charge] = {}
        self._lock = threading.Lock()

    def charge(self, model: str | None, usage: Mapping[str, Any] | Usage | None) -> Charge:
        """Price one answer's usage without recording it."""
        normal = usage if isinstance(usage, Usage) else normalize_usage(usage)
        price = self.prices.price_for(model)
        if price is None:
            return Charge(normal, 0.0, 0.0, False)
        read = price.input if price.cached_input is None else price.cached_input
        short = normal.cache_write_tokens - normal.long_cache_write_tokens
        plain = normal.input_tokens - normal.cached_tokens - normal.cache_write_tokens
        billed = (
            plain * price.input
            + normal.cached_tokens * read
            + short * price.input * CACHE_WRITE_MULTIPLIER
            + normal.long_cache_write_tokens * price.input * LONG_CACHE_WRITE_MULTIPLIER
            + normal.output_tokens * price.output
        )
        uncached = normal.input_tokens * price.input + normal.output_tokens * price.output
        return Charge(normal, billed / 1_000_000, uncached / 1_000_000, True)

    def _update(self, model: str, **add: float) -> None:
        with self._lock:
            current = self._totals.get(model)
            if current is None:
                if len(self._totals) >= _MAX_MODELS:
                    model = "other"
                current = self._totals.get(model) or ModelTotals(model)
            values = {name: getattr(current, name) + amount for name, amount in add.items()}
            self._totals[model] = dataclasses.replace(current, **values)

    def record_upstream(self, model: str | None, usage: Mapping[str, Any] | None) -> Charge:
        """Record an answer from the provider; returns its :class:`Charge`."""
        charge = self.charge(model, usage)
        u = charge.usage
        self._update(
            model or "unknown",
            upstream_requests=1,
            input_tokens=u.input_tokens,
            cached_tokens=u.cached_tokens,
            cache_write_tokens=u.cache_write_tokens,
            output_tokens=u.output_tokens,
            spent=charge.billed,
            prompt_cache_saved=charge.prompt_cache_saved,
        )
        return charge

    def record_cache_hit(self, model: str | None, usage: Mapping[str, Any] | None) -> Charge:
        """Record an answer stratacache served: it saved what its upstream call was billed."""
        charge = self._hit_charge(model, usage)
        name = model or "unknown"
        with self._lock:
            running = self._hits.get(name)
            if running is None:
                if len(self._hits) >= _MAX_MODELS:
                    name = "other"
                running = self._hits.setdefault(name, [0, 0.0])
            running[0] += 1
            running[1] += charge.billed
        return charge

    def _hit_charge(self, model: str | None, usage: Mapping[str, Any] | None) -> Charge:
        try:
            key = (model, *usage.items()) if isinstance(usage, Mapping) else (model, usage)
            known = self._hit_charges.get(key)
        except TypeError:  # nested (unhashable) usage: price it every time
            return self.charge(model, usage)
        if known is None:
            known = self.charge(model, usage)
            if len(self._hit_charges) >= _MAX_MODELS * 4:
                self._hit_charges.clear()
            self._hit_charges[key] = known
        return known

    def totals(self) -> dict[str, ModelTotals]:
        """The per-model totals so far."""
        with self._lock:
            totals = dict(self._totals)
            hits = {name: tuple(running) for name, running in self._hits.items()}
        for name, (count, saved) in hits.items():
            current = totals.get(name) or ModelTotals(name)
            totals[name] = dataclasses.replace(
                current,
                cache_hits=current.cache_hits + int(count),
                response_cache_saved=current.response_cache_saved + saved,
            )
        return totals

    def snapshot(self) -> dict[str, Any]:
        """The totals as JSON-ready dicts, per model and summed, for ``GET /stats``."""
        totals = self.totals()
        keys = ("spent", "prompt_cache_saved", "response_cache_saved")
        return {
            "by_model": {name: t.as_dict() for name, t in sorted(totals.items())},
            **{
                f"{key}_dollars": round(sum(getattr(t, key) for t in totals.values()), 6)
                for key in keys
            },
        }
