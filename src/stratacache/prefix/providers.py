"""Providers' prompt-cache rules, and a model of each cache to replay a request log against.

The rules, as the providers document them (and as :class:`PromptCacheModel` applies them):

* **OpenAI** caches automatically. A prompt of at least 1,024 tokens is cached in 128-token steps
  (1,024, 1,152, 1,280, ...); a request reuses the longest such step whose whole prefix an earlier
  request already sent. Entries live for 5-10 minutes of inactivity (we model 5), refreshed on use.
* **Anthropic** caches only at ``cache_control`` breakpoints (up to four). The prefix up to a
  breakpoint (tools, then system, then messages) is written once it reaches the model's minimum
  (1,024 tokens for most models, 2,048 for the Haiku 3 family, 4,096 for Opus 4.5 and Haiku 4.5) and
  read back by a later request whose prefix up to some breakpoint position matches an earlier
  written one. Writes cost 1.25x input (5-minute TTL) or 2x (1-hour TTL), reads 0.1x.
* **Gemini** caches implicitly (2.5 models and later). It does not publish its granularity; we model
  it like OpenAI's, with its minimum (1,024 tokens for Flash, 4,096 for Pro) and a 5-minute life.

The model is deliberately optimistic in one way: it assumes every request reaches a machine holding
the entry (OpenAI and Gemini route by a hash of the first tokens, so this mostly holds). It is
pessimistic in none: a token that differs always breaks the prefix.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from stratacache.errors import ConfigError

__all__ = ["CacheUse", "PromptCacheModel", "Provider", "ProviderRules", "rules_for"]


class Provider(StrEnum):
    """A provider whose prompt cache we model."""

    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    GEMINI = "gemini"


@dataclass(frozen=True, slots=True)
class ProviderRules:
    """How one provider (and model) caches prompt prefixes."""

    provider: Provider
    """Whose rules these are."""
    minimum: int
    """The fewest tokens a cached prefix can have."""
    step: int
    """Automatic caching's granularity past the minimum; 0 for breakpoint caching (Anthropic)."""
    ttl: float
    """Seconds an unused entry lives (each use refreshes it)."""
    read_multiplier: float
    """A cached input token's price as a share of the input price (when the table has none)."""
    write_multiplier: float = 1.0
    """A cache-write token's price as a share of the input price (Anthropic, 5-minute TTL)."""
    long_write_multiplier: float = 1.0
    """... for the 1-hour TTL."""

    def __post_init__(self) -> None:
        if self.minimum < 1 or self.step < 0 or self.ttl <= 0:
            raise ConfigError(f"invalid prompt-cache rules: {self!r}")


def rules_for(provider: Provider | str, model: str | None = None) -> ProviderRules:
    """The rules of ``provider`` for ``model`` (its minimum prefix depends on the model).

    >>> rules_for("anthropic", "claude-3-5-haiku-latest").minimum
    2048
    >>> rules_for("openai", "gpt-4o").step
    128
    """
    try:
        provider = Provider(provider)
    except ValueError:
        raise ConfigError(
            f"unknown provider {provider!r}; expected one of {', '.join(Provider)}"
        ) from None
    name = (model or "").rsplit("/", 1)[-1].lower()
    if provider is Provider.OPENAI:
        return ProviderRules(provider, minimum=1024, step=128, ttl=300.0, read_multiplier=0.5)
    if provider is Provider.ANTHROPIC:
        if name.startswith(("claude-3-haiku", "claude-3-5-haiku")):
            minimum = 2048
        elif name.startswith(("claude-opus-4-5", "claude-haiku-4-5")):
            minimum = 4096
        else:
            minimum = 1024
        return ProviderRules(
            provider,
            minimum=minimum,
            step=0,
            ttl=300.0,
            read_multiplier=0.1,
            write_multiplier=1.25,
            long_write_multiplier=2.0,
        )
    minimum = 4096 if "pro" in name else 1024
    return ProviderRules(provider, minimum=minimum, step=128, ttl=300.0, read_multiplier=0.1)


@dataclass(frozen=True, slots=True)
class CacheUse:
    """What the provider's cache did for one request."""

    cached_tokens: int
    """Prompt tokens read from the cache."""
    written_tokens: int
    """Prompt tokens written to the cache and billed as writes (Anthropic); 0 elsewhere."""
    long_written_tokens: int = 0
    """... of them with the 1-hour TTL."""


_TTL_SECONDS = {"5m": 300.0, "1h": 3600.0}
_MAX_LENGTHS_CHECKED = 32  # Anthropic: how many earlier breakpoint positions a lookup tries


class PromptCacheModel:
    """A provider's prompt cache, fed requests in the order they were sent.

    Sans-IO: :meth:`observe` takes a request's tokens (as the bytes of an ``array('i')``), its
    breakpoints and its time, and returns a :class:`CacheUse`. Entries are 64-bit prefix hashes
    (BLAKE2b, chained over blocks for automatic caching) with their expiry time, and at most
    ``max_entries`` are kept (least recently used go first), so memory stays bounded over a long log.
    """

    def __init__(self, rules: ProviderRules, *, max_entries: int = 500_000) -> None:
        self.rules = rules
        """The rules applied."""
        self._max = max_entries
        self._entries: dict[int, float] = {}  # prefix hash -> expiry (inf: never)
        self._lengths: set[int] = set()  # the prefix lengths written so far

    def _alive(self, key: int, now: float | None) -> bool:
        expires = self._entries.get(key)
        return expires is not None and (now is None or now <= expires)

    def _touch(self, key: int, now: float | None, ttl: float) -> None:
        entries = self._entries
        old = entries.pop(key, None)
        expires = math.inf if now is None else now + ttl
        entries[key] = expires if old is None else max(old, expires)
        if len(entries) > self._max:
            # Dicts keep insertion order and a touch re-inserts: the first keys are the least
            # recently used. Drop a tenth at once so this runs rarely.
            for stale in list(itertools.islice(entries, self._max // 10 or 1)):
                del entries[stale]

    def observe(
        self,
        tokens: bytes,
        *,
        breakpoints: Sequence[tuple[int, str]] = (),
        now: float | None = None,
    ) -> CacheUse:
        """Replay one request: ``tokens`` are 4 bytes per token; ``breakpoints`` are (token end,
        TTL) pairs; ``now`` in seconds (``None``: entries never expire)."""
        if self.rules.step:
            return self._automatic(tokens, now)
        return self._breakpoints(tokens, breakpoints, now)

    def _automatic(self, tokens: bytes, now: float | None) -> CacheUse:
        rules = self.rules
        length = len(tokens) // 4
        cached = 0
        reading = True
        # Chained over blocks with Python's own (SipHash, per-process keyed) hash: this runs for
        # every block of every request of a long log, and the keys never leave the process.
        key = 0
        start = 0
        end = rules.minimum
        alive, touch, ttl = self._alive, self._touch, rules.ttl
        while end <= length:
            key = hash((key, tokens[4 * start : 4 * end]))
            if reading and alive(key, now):
                cached = end
            else:
                reading = False
            touch(key, now, ttl)
            start, end = end, end + rules.step
        return CacheUse(cached, 0)

    def _breakpoints(
        self, tokens: bytes, breakpoints: Sequence[tuple[int, str]], now: float | None
    ) -> CacheUse:
        rules = self.rules
        points = sorted({(end, ttl) for end, ttl in breakpoints if 0 < end <= len(tokens) // 4})[
            -4:
        ]
        if not points:
            return CacheUse(0, 0)
        last = points[-1][0]
        cached = 0
        # A lookup reads the longest earlier-written prefix that this request repeats, at or
        # before its last breakpoint.
        tried = 0
        for length in sorted(self._lengths, reverse=True):
            if length > last:
                continue
            tried += 1
            if tried > _MAX_LENGTHS_CHECKED:
                break
            key = _prefix_hash(tokens, length)
            if self._alive(key, now):
                cached = length
                self._touch(key, now, rules.ttl)
                break
        written = long_written = 0
        covered = cached
        for end, ttl in points:
            if end < rules.minimum or end <= covered:
                continue
            key = _prefix_hash(tokens, end)
            if self._alive(key, now):
                cached = end  # written before at exactly this breakpoint: a read
            else:
                written += end - covered
                if ttl == "1h":
                    long_written += end - covered
                self._lengths.add(end)
            covered = end
            self._touch(key, now, _TTL_SECONDS.get(ttl, rules.ttl))
        return CacheUse(cached, written, long_written)


def _prefix_hash(tokens: bytes, length: int) -> int:
    return int.from_bytes(
        hashlib.blake2b(memoryview(tokens)[: 4 * length], digest_size=8).digest(), "little"
    )
