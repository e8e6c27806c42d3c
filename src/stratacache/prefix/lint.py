"""The prompt-prefix analyser behind ``strata lint``: why a provider's prompt cache misses.

Feed it logged request bodies (one JSON object per line: a bare chat / Responses / Messages body, or
an envelope ``{"body": {...}, "group": "...", "ts": ...}``) and it

1. renders each request in the provider's prompt order (:mod:`stratacache.prefix.render`) and counts
   its tokens exactly (:mod:`stratacache.prefix.tokens`);
2. groups requests by template: an explicit ``group``/``template``/``route`` in the envelope, the
   body's ``prompt_cache_key``, or else the model, the tool names and the system prompt's skeleton
   (the system prompt with ids, dates, numbers and mid-sentence capitalised words masked, whitespace
   collapsed), so that requests which *should* share a prefix land together even when they do not;
3. replays the log through a model of the provider's cache (:mod:`stratacache.prefix.providers`)
   for the share of requests that would hit and the tokens and dollars that would be cached;
4. compares every request with its group's first request, segment by segment and then token by
   token: the shortest common prefix is the group's stable prefix, and a divergence inside what
   should be static (tool definitions, output schema, system prompt) becomes a finding with its exact
   position, its cause (a UUID, a timestamp, an id, a name, whitespace, key order, tool order) and a
   fix.

Everything here is sans-IO: values in, a :class:`LintReport` out; ``strata lint`` is a shell over it.
"""

from __future__ import annotations

import datetime as dt
import difflib
import json
import re
import statistics
from array import array
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from stratacache.errors import RequestError
from stratacache.observability.ledger import default_prices
from stratacache.observability.pricing import PriceTable
from stratacache.prefix.providers import (
    CacheUse,
    PromptCacheModel,
    Provider,
    ProviderRules,
    rules_for,
)
from stratacache.prefix.render import BOUNDARY, PromptRequest, Segment, render_request
from stratacache.prefix.tokens import Tokenizer, token_ids

_BOUNDARY_BYTES = array("i", [BOUNDARY]).tobytes()
_Text = TypeVar("_Text", str, bytes)

__all__ = [
    "Analyzer",
    "Finding",
    "GroupReport",
    "LintReport",
    "LogEntry",
    "Position",
    "PromptDiff",
    "Skipped",
    "diff_prompts",
    "lint",
    "read_log",
]

# --- the log ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One logged request."""

    line: int
    """Its line number in the log (1-based)."""
    body: Mapping[str, Any]
    """The request body."""
    group: str | None = None
    """An explicit group (route or template name), when the log names one."""
    time: float | None = None
    """When it was sent, in seconds since the epoch, when the log says."""


@dataclass(frozen=True, slots=True)
class Skipped:
    """A log line that was not analysed, and why."""

    line: int
    """Its line number (1-based)."""
    reason: str
    """Why it was skipped."""


_BODY_KEYS = ("body", "request", "params")
_GROUP_KEYS = ("group", "template", "route", "prompt_template")
_TIME_KEYS = ("ts", "timestamp", "time", "created", "created_at")


def _parse_time(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value) / 1000.0 if value > 1e12 else float(value)
    if isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=dt.UTC)
        return parsed.timestamp()
    return None


def _loads() -> Any:
    try:
        import orjson
    except ImportError:  # pragma: no cover - orjson is installed with the proxy extra
        return json.loads
    return orjson.loads


def read_log(lines: Iterable[bytes | str]) -> Iterator[LogEntry | Skipped]:
    """Parse a JSONL request log; blank lines are ignored, unreadable ones yield :class:`Skipped`."""
    loads = _loads()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = loads(line)
        except ValueError as exc:
            yield Skipped(number, f"not JSON: {exc}")
            continue
        if not isinstance(obj, dict):
            yield Skipped(number, "not a JSON object")
            continue
        body: Any = obj
        for key in _BODY_KEYS:
            if isinstance(obj.get(key), dict):
                body = obj[key]
                break
        group: str | None = None
        for key in _GROUP_KEYS:
            value = obj.get(key)
            if isinstance(value, str) and value:
                group = value
                break
        if group is None:
            metadata = body.get("metadata")
            hint = body.get("prompt_cache_key")
            if isinstance(hint, str) and hint:
                group = hint
            elif isinstance(metadata, Mapping):
                for key in _GROUP_KEYS:
                    value = metadata.get(key)
                    if isinstance(value, str) and value:
                        group = value
                        break
        when = None
        for key in _TIME_KEYS:
            if key in obj:
                when = _parse_time(obj[key])
                if when is not None:
                    break
        yield LogEntry(number, body, group, when)


# --- what dynamic content looks like ----------------------------------------------------------

_DYNAMIC: tuple[tuple[str, re.Pattern[str]], ...] = (
    (
        "a UUID",
        re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"),
    ),
    (
        "a timestamp",
        re.compile(
            r"\d{4}-\d{2}-\d{2}[T ]\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2}| ?UTC)?"
        ),
    ),
    (
        "a date",
        re.compile(
            r"\d{4}-\d{2}-\d{2}|\b\d{1,2}/\d{1,2}/\d{2,4}\b|\b(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|"
            r"Oct|Nov|Dec)[a-z]*\.? \d{1,2}(?:st|nd|rd|th)?,? \d{4}\b|\b(?:Mon|Tues|Wednes|Thurs|"
            r"Fri|Satur|Sun)day\b"
        ),
    ),
    ("a time of day", re.compile(r"\b\d{1,2}:\d{2}(?::\d{2})?(?: ?[AaPp][Mm])?\b")),
    ("a Unix time", re.compile(r"\b1[5-9]\d{8}(?:\d{3})?\b")),
    ("an email address", re.compile(r"[\w.+-]+@[\w-]+\.[\w.-]+")),
    (
        "an id",
        re.compile(
            r"\b[A-Za-z]+[_-][A-Za-z0-9]*\d[A-Za-z0-9]{5,}\b|\b[0-9a-fA-F]*\d[0-9a-fA-F]{11,}\b"
        ),
    ),
    ("a number", re.compile(r"\b\d{4,}\b")),
)
"""Patterns of content that changes per request, most specific first."""

# Only these are reported when they are the same in every logged request (a day's log has one
# date throughout, but tomorrow's will differ); numbers and names are too often real content.
_ALWAYS_DYNAMIC = frozenset({"a UUID", "a timestamp", "a date", "a Unix time"})

_WORD = re.compile(r"\w+")
_SKELETON_CHARS = 240
_MASKED = re.compile(r"[\d@]")
_MAX_VARIANTS = 256  # classified variants remembered per group
_MAX_SKELETONS = 4096  # template skeletons remembered
_MAX_GROUPS = 5000  # templates analysed in one log


def _dynamic_at(text: str, char: int) -> tuple[str, int, int] | None:
    """The dynamic-looking span of ``text`` covering ``char``: (what, start, end)."""
    low, high = max(0, char - 80), min(len(text), char + 80)
    window = text[low:high]
    for what, pattern in _DYNAMIC:
        for match in pattern.finditer(window):
            start, end = match.start() + low, match.end() + low
            if start <= char <= end and end > start:
                return what, start, end
    return None


def _word_at(text: str, char: int) -> tuple[int, int] | None:
    for match in _WORD.finditer(text, max(0, char - 40), min(len(text), char + 40)):
        if match.start() <= char <= match.end():
            return match.start(), match.end()
    return None


def _common_prefix(a: _Text, b: _Text) -> int:
    """Length of the common prefix of two strings or byte strings (binary search over C-speed
    comparisons)."""
    low, high = 0, min(len(a), len(b))
    if a[:high] == b[:high]:
        return high
    while low < high:
        mid = (low + high + 1) // 2
        if a[:mid] == b[:mid]:
            low = mid
        else:
            high = mid - 1
    return low


def _line_column(text: str, char: int) -> tuple[int, int]:
    line = text.count("\n", 0, char) + 1
    column = char - (text.rfind("\n", 0, char) + 1) + 1
    return line, column


def _head(request: PromptRequest) -> str:
    """The start of the system prompt, which :func:`_skeleton` reduces."""
    # Only the start matters (the skeleton is cut to 240 characters), and reducing a whole long
    # prompt per request would cost more than everything else lint does.
    limit = _SKELETON_CHARS + _SKELETON_CHARS // 4
    text = " ".join(
        s.text[:limit] for s in request.segments if s.static and s.role != "tool-definition"
    )
    return text[:limit]


def _skeleton(head: str) -> str:
    """The start of a system prompt with per-request content masked: a template's identity.

    >>> _skeleton("Today is 2026-11-22. You help Alice Smith with order 1234.")
    'today is # you help _ _ with order #'
    """
    words = head.split()
    kept: list[str] = []
    for i, word in enumerate(words):
        # Ids, UUIDs, dates, times and numbers all hold a digit; names are capitalised mid-sentence.
        if not word.isalpha() and _MASKED.search(word):
            kept.append("#")
            continue
        mid_sentence = i > 0 and not words[i - 1].endswith((".", "!", "?", ":"))
        kept.append("_" if mid_sentence and word[:1].isupper() else word.lower())
    return " ".join(kept)[:_SKELETON_CHARS]


# --- the report ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Position:
    """Where a finding is: a token index in the rendered prompt and a place in the request body."""

    token: int
    """The index of the first token affected (0-based, in the provider's prompt order)."""
    path: str
    """The body field holding it: ``messages[0].content``, ``tools[2]``, ``system``."""
    char: int
    """The character offset inside that field's text (0-based)."""
    line: int
    """The line inside that field's text (1-based)."""
    column: int
    """The column inside that line (1-based)."""

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "token": self.token,
            "path": self.path,
            "char": self.char,
            "line": self.line,
            "column": self.column,
        }


@dataclass(frozen=True, slots=True)
class Finding:
    """One reason a group's prompts do not share as long a prefix as they could."""

    kind: str
    """``dynamic-content``, ``whitespace-variance``, ``key-order-variance``,
    ``tool-order-variance``, ``under-minimum``, ``breakpoint-after-dynamic`` or
    ``missing-breakpoint``."""
    group: str
    """The id of the group it was found in."""
    message: str
    """What was found, for a human."""
    fix: str
    """What to change."""
    position: Position
    """Where."""
    requests: int
    """How many requests of the group show it."""

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "kind": self.kind,
            "group": self.group,
            "message": self.message,
            "fix": self.fix,
            "position": self.position.as_dict(),
            "requests": self.requests,
        }


@dataclass(frozen=True, slots=True)
class GroupReport:
    """What one group of requests (one template) gets from the provider's prompt cache."""

    id: str
    """A short id (``g1``, ``g2``...) findings refer to."""
    label: str
    """The group's name, or a description (model and the start of its system prompt)."""
    model: str
    """The model of its first request."""
    provider: str
    """Whose cache rules were applied."""
    requests: int
    """How many requests it has."""
    stable_prefix_tokens: int
    """Tokens every request of the group shares from the start."""
    median_prompt_tokens: int
    """The median prompt length in tokens."""
    minimum_tokens: int
    """The provider's minimum cacheable prefix for this model."""
    provider_hit_rate: float
    """The share of requests that would read a cached prefix, replaying the log in order."""
    cached_token_share: float
    """The share of all prompt tokens that would be read from the cache."""
    expected_cached_tokens_per_1k: float
    """Cached prompt tokens per 1,000 requests."""
    expected_dollars_saved_per_1k: float | None
    """US dollars the cache saves per 1,000 requests (net of cache writes); ``None`` when the
    model has no price."""

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "id": self.id,
            "label": self.label,
            "model": self.model,
            "provider": self.provider,
            "requests": self.requests,
            "stable_prefix_tokens": self.stable_prefix_tokens,
            "median_prompt_tokens": self.median_prompt_tokens,
            "minimum_tokens": self.minimum_tokens,
            "provider_hit_rate": round(self.provider_hit_rate, 6),
            "cached_token_share": round(self.cached_token_share, 6),
            "expected_cached_tokens_per_1k": round(self.expected_cached_tokens_per_1k, 1),
            "expected_dollars_saved_per_1k": (
                None
                if self.expected_dollars_saved_per_1k is None
                else round(self.expected_dollars_saved_per_1k, 6)
            ),
        }


@dataclass(frozen=True, slots=True)
class LintReport:
    """Everything ``strata lint`` prints."""

    requests: int
    """Requests analysed."""
    groups: tuple[GroupReport, ...]
    """One per template, in order of first appearance."""
    findings: tuple[Finding, ...]
    """Ordered by group, then position."""
    skipped: tuple[Skipped, ...] = ()
    """Lines not analysed."""

    def as_dict(self) -> dict[str, Any]:
        """The ``--json`` output."""
        return {
            "requests": self.requests,
            "groups": [g.as_dict() for g in self.groups],
            "findings": [f.as_dict() for f in self.findings],
            "skipped": [{"line": s.line, "reason": s.reason} for s in self.skipped],
        }

    def failing(self, rate: float) -> tuple[GroupReport, ...]:
        """The groups whose expected hit rate is under ``rate``."""
        return tuple(g for g in self.groups if g.provider_hit_rate < rate)


# --- analysis -------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Rendered:
    request: PromptRequest
    tokens: list[bytes]  # each segment's tokens, packed (Tokenizer.encode_bytes)
    starts: list[int]  # token index where each segment's boundary token sits; one extra at the end

    @property
    def length(self) -> int:
        return self.starts[-1]

    def position(self, index: int, char: int, token: int) -> Position:
        segment = self.request.segments[index]
        line, column = _line_column(segment.text, char)
        return Position(token, segment.path, char, line, column)


@dataclass(slots=True)
class _Found:
    kind: str
    message: str
    fix: str
    position: Position
    count: int = 0


@dataclass(slots=True)
class _Group:
    id: str
    label: str
    rules: ProviderRules
    reference: _Rendered
    model: str
    stable: int
    requests: int = 0
    hits: int = 0
    cached: int = 0
    written: int = 0
    long_written: int = 0
    prompt_tokens: int = 0
    dollars: float = 0.0
    priced: bool = False
    lengths: list[int] = field(default_factory=list)
    first_static_divergence: int | None = None
    found: dict[tuple[str, str], _Found] = field(default_factory=dict)
    # Variants of a static segment seen before (another service's whitespace, another tool
    # order) and what they were classified as: a variant recurs on every request it sends.
    variants: dict[tuple[int, str], tuple[str, str, str, Position]] = field(default_factory=dict)


def _snippet(text: str, start: int, end: int) -> str:
    piece = text[start:end]
    return piece if len(piece) <= 60 else piece[:57] + "..."


class Analyzer:
    """Accumulates logged requests and reports their prompt-cache behaviour.

    :param provider: whose rules to apply; ``None``: guess per request (Anthropic Messages bodies
        are Anthropic's, ``gemini-*`` models Gemini's, the rest OpenAI's).
    :param tokenizer: the tokenizer (default: o200k_base).
    :param prices: the price table (default: OpenAI's with Anthropic and Gemini list prices).
    """

    def __init__(
        self,
        *,
        provider: Provider | str | None = None,
        tokenizer: Tokenizer | None = None,
        prices: PriceTable | None = None,
    ) -> None:
        self.provider = None if provider is None else Provider(provider)
        self.tokenizer = tokenizer or Tokenizer("o200k_base")
        self.prices = prices or default_prices()
        self._groups: dict[tuple[Any, ...], _Group] = {}
        self._caches: dict[tuple[Provider, int], PromptCacheModel] = {}
        self._skipped: list[Skipped] = []
        self._skeletons: dict[str, str] = {}  # system prompt head -> skeleton (templates recur)
        self._requests = 0

    def _skeleton_of(self, request: PromptRequest) -> str:
        head = _head(request)
        found = self._skeletons.get(head)
        if found is None:
            if len(self._skeletons) >= _MAX_SKELETONS:
                self._skeletons.clear()
            found = self._skeletons[head] = _skeleton(head)
        return found

    def _provider_of(self, request: PromptRequest) -> Provider:
        if self.provider is not None:
            return self.provider
        if request.format == "anthropic-messages" or request.model.startswith("claude"):
            return Provider.ANTHROPIC
        if request.model.rsplit("/", 1)[-1].startswith("gemini"):
            return Provider.GEMINI
        return Provider.OPENAI

    def _render(self, request: PromptRequest) -> tuple[_Rendered, bytes]:
        """Tokenise ``request``; returns the segments' tokens and the whole prompt, packed 4 bytes
        per token (packed bytes hash and compare at C speed, a list of ints would not)."""
        encode = self.tokenizer.encode_bytes
        parts: list[bytes] = []
        starts: list[int] = []
        tokens: list[bytes] = []
        length = 0
        for segment in request.segments:
            starts.append(length)
            ids = encode(segment.text)
            tokens.append(ids)
            parts.append(_BOUNDARY_BYTES)
            parts.append(ids)
            length += 1 + len(ids) // 4
        starts.append(length)
        return _Rendered(request, tokens, starts), b"".join(parts)

    def add(self, entry: LogEntry | Skipped) -> None:
        """Analyse one logged request (a :class:`Skipped` line is only counted)."""
        if isinstance(entry, Skipped):
            self._skipped.append(entry)
            return
        try:
            request = render_request(entry.body)
        except RequestError as exc:
            self._skipped.append(Skipped(entry.line, str(exc)))
            return
        provider = self._provider_of(request)
        rules = rules_for(provider, request.model)
        if entry.group is not None:
            key: tuple[Any, ...] = ("named", entry.group)
            label = entry.group
        else:
            key = (
                request.format,
                request.model,
                tuple(sorted(request.tool_names)),
                self._skeleton_of(request),
            )
            first = next(
                (s.text for s in request.segments if s.static and s.role != "tool-definition"), ""
            )
            head = " ".join(first[:200].split())[:48]
            label = f"{request.model or '?'} {request.format}" + (f": {head!r}" if head else "")
        group = self._groups.get(key)
        if group is None and len(self._groups) >= _MAX_GROUPS:
            # Each group keeps its first request's tokens: a log that looks like thousands of
            # templates would hold them all. Say so rather than run out of memory.
            self._skipped.append(
                Skipped(
                    entry.line,
                    f'more than {_MAX_GROUPS} templates; name them with a "group" field',
                )
            )
            return
        self._requests += 1
        rendered, stream = self._render(request)
        if group is None:
            group = _Group(
                id=f"g{len(self._groups) + 1}",
                label=label,
                rules=rules,
                reference=rendered,
                model=request.model,
                stable=rendered.length,
            )
            self._groups[key] = group
        else:
            self._compare(group, rendered)
        cache = self._caches.get((provider, rules.minimum))
        if cache is None:
            cache = self._caches[(provider, rules.minimum)] = PromptCacheModel(rules)
        breakpoints = [
            (rendered.starts[i + 1], s.breakpoint)
            for i, s in enumerate(request.segments)
            if s.breakpoint is not None
        ]
        use = cache.observe(stream, breakpoints=breakpoints, now=entry.time)
        self._account(group, request.model, rendered.length, use)

    def _account(self, group: _Group, model: str, length: int, use: CacheUse) -> None:
        group.requests += 1
        group.lengths.append(length)
        group.prompt_tokens += length
        group.cached += use.cached_tokens
        group.written += use.written_tokens
        group.long_written += use.long_written_tokens
        if use.cached_tokens:
            group.hits += 1
        price = self.prices.price_for(model)
        if price is not None:
            group.priced = True
            rules = group.rules
            read = price.cached_input
            if read is None:
                read = price.input * rules.read_multiplier
            short = use.written_tokens - use.long_written_tokens
            dollars = use.cached_tokens * (price.input - read)
            dollars -= short * price.input * (rules.write_multiplier - 1.0)
            dollars -= use.long_written_tokens * price.input * (rules.long_write_multiplier - 1.0)
            group.dollars += dollars / 1_000_000

    # --- comparing a request with its group's first ---------------------------------------------

    def _compare(self, group: _Group, other: _Rendered) -> None:
        ref = group.reference
        a, b = ref.request.segments, other.request.segments
        n = min(len(a), len(b))
        i = 0
        while i < n and a[i].text == b[i].text and a[i].path == b[i].path:
            i += 1
        if i == n:
            lcp = ref.starts[n]
            if len(a) == len(b):
                return
        else:
            k = _common_prefix(ref.tokens[i], other.tokens[i]) // 4
            lcp = ref.starts[i] + 1 + k
        group.stable = min(group.stable, lcp)
        if i < n and (a[i].static or b[i].static):
            if group.first_static_divergence is None or lcp < group.first_static_divergence:
                group.first_static_divergence = lcp
            self._classify(group, other, i, lcp)
        elif i == n:
            # One request has more segments than the other: an extra one in the static part is
            # content some requests send and others do not.
            longer = other if len(b) > len(a) else ref
            segment = longer.request.segments[i]
            if not segment.static:
                return
            self._note(
                group,
                "dynamic-content",
                f"{segment.path} ({segment.role}) is in some requests of this group and not in others",
                f"send the same {segment.role} content in every request, or move it after the "
                "conversation",
                longer.position(i, 0, lcp),
            )

    def _note(self, group: _Group, kind: str, message: str, fix: str, position: Position) -> None:
        key = (kind, position.path)
        found = group.found.get(key)
        if found is None or position.token < found.position.token:
            count = found.count if found else 0
            found = group.found[key] = _Found(kind, message, fix, position, count)
        found.count += 1

    def _classify(self, group: _Group, other: _Rendered, i: int, lcp: int) -> None:
        text = other.request.segments[i].text
        known = group.variants.get((i, text))
        if known is None:
            known = self._diagnose(group, other, i, lcp)
            if known[0] != "dynamic-content" and len(group.variants) < _MAX_VARIANTS:
                group.variants[(i, text)] = known
        self._note(group, *known)

    def _diagnose(
        self, group: _Group, other: _Rendered, i: int, lcp: int
    ) -> tuple[str, str, str, Position]:
        """Why segment ``i`` of ``other`` differs from the group's first request."""
        ref = group.reference
        sa, sb = ref.request.segments[i], other.request.segments[i]
        ta, tb = sa.text, sb.text
        char = _common_prefix(ta, tb)
        if sa.role == "tool-definition" and sb.role == "tool-definition":
            names_a, names_b = ref.request.tool_names, other.request.tool_names
            if names_a != names_b and sorted(names_a) == sorted(names_b):
                return (
                    "tool-order-variance",
                    f"tools are sent in different orders ({', '.join(names_a)} vs "
                    f"{', '.join(names_b)}); every token after {sa.path} misses the cache",
                    "send tools in one fixed order in every service (for example sorted by name)",
                    other.position(i, char, lcp),
                )
        # Texts equal up to whitespace first differ at a whitespace character on one side: only
        # then is the (whole-text) comparison worth making.
        near = ta[char : char + 1] + tb[char : char + 1]
        if (len(near) < 2 or any(c.isspace() for c in near)) and (
            " ".join(ta.split()) == " ".join(tb.split())
        ):
            return (
                "whitespace-variance",
                f"whitespace differs in {sb.path} at char {char}: "
                f"{ta[char : char + 12]!r} vs {tb[char : char + 12]!r}",
                "build the prompt with identical whitespace everywhere (one newline style, no "
                "trailing spaces, the same indentation): strip or normalise it where it is assembled",
                other.position(i, char, lcp),
            )
        if ta[:1] in "{[" and tb[:1] in "{[":
            try:
                same = json.loads(ta) == json.loads(tb)
            except ValueError:
                same = False
            if same:
                return (
                    "key-order-variance",
                    f"{sb.path} is the same JSON with its keys in a different order (from char {char})",
                    "serialise it with a fixed key order everywhere (json.dumps(..., sort_keys=True) "
                    "or one shared definition)",
                    other.position(i, char, lcp),
                )
        span = _dynamic_at(tb, char) or _dynamic_at(ta, char)
        if span is not None:
            what, start, end = span
            start = min(start, char)
            return (
                "dynamic-content",
                f"{what} in {sb.path} ({sb.role}) at char {start} differs per request "
                f"({_snippet(ta, start, max(end, start + 8))!r} vs "
                f"{_snippet(tb, start, max(end, start + 8))!r}); the cached prefix ends at token {lcp}",
                f"move {what} out of the {sb.role} prompt (to the end of the last user message, or "
                "drop it) so everything before it is the same in every request",
                other.position(i, start, lcp),
            )
        word_a, word_b = _word_at(ta, char), _word_at(tb, char)
        if (
            word_a
            and word_b
            and ta[word_a[0] : word_a[0] + 1].isupper()
            and tb[word_b[0] : word_b[0] + 1].isupper()
        ):
            start = min(word_a[0], word_b[0])
            return (
                "dynamic-content",
                f"a name in {sb.path} ({sb.role}) at char {start} differs per request "
                f"({ta[word_a[0] : word_a[1]]!r} vs {tb[word_b[0] : word_b[1]]!r})",
                f"move per-user names out of the {sb.role} prompt, after the static instructions",
                other.position(i, start, lcp),
            )
        return (
            "dynamic-content",
            f"{sb.path} ({sb.role}) differs between requests from char {char} "
            f"({ta[char : char + 24]!r} vs {tb[char : char + 24]!r})",
            f"keep the {sb.role} prompt identical across requests; put what varies after it",
            other.position(i, char, lcp),
        )

    # --- the report -------------------------------------------------------------------------------

    def _static_scan(self, group: _Group) -> None:
        ref = group.reference
        noted = {path for _kind, path in group.found}
        for i, segment in enumerate(ref.request.segments):
            if not segment.static or segment.path in noted:
                continue
            for what, pattern in _DYNAMIC:
                if what not in _ALWAYS_DYNAMIC:
                    continue
                match = pattern.search(segment.text)
                if match is None:
                    continue
                token = ref.starts[i] + 1 + self.tokenizer.count(segment.text[: match.start()])
                found = _Found(
                    "dynamic-content",
                    f"{what} in {segment.path} ({segment.role}) at char {match.start()} "
                    f"({match.group()!r}) is the same in these {group.requests} requests but will "
                    "change; every request after it misses the cache",
                    f"move {what} out of the {segment.role} prompt (to the end of the last user "
                    "message) so the prefix before it stays the same",
                    ref.position(i, match.start(), token),
                    group.requests,
                )
                group.found[("dynamic-content", segment.path)] = found
                break

    def _structural(self, group: _Group) -> None:
        rules = group.rules
        ref = group.reference
        minimum = rules.minimum
        where = self._locate(ref, group.stable)
        if rules.step:
            if 0.75 * minimum <= group.stable < minimum:
                short = minimum - group.stable
                self._add(
                    group,
                    "under-minimum",
                    f"the stable prefix is {group.stable} tokens, {short} under "
                    f"{rules.provider.value}'s minimum of {minimum}: nothing is cached",
                    f"put at least {short} more tokens of static content (instructions, examples) "
                    "before the first part that varies",
                    where,
                )
            return
        points = [
            (ref.starts[i + 1], s)
            for i, s in enumerate(ref.request.segments)
            if s.breakpoint is not None
        ]
        if not points:
            if group.stable >= minimum:
                self._add(
                    group,
                    "missing-breakpoint",
                    f"no cache_control breakpoint: {group.stable} stable tokens are billed in full "
                    "on every request",
                    f"add cache_control to the block ending at token {group.stable} "
                    f"({where.path}), the end of the stable prefix",
                    where,
                )
            return
        for end, segment in points:
            divergence = group.first_static_divergence
            if divergence is not None and divergence < end:
                self._add(
                    group,
                    "breakpoint-after-dynamic",
                    f"the breakpoint on {segment.path} (token {end}) comes after content that "
                    f"varies at token {divergence}: its prefix is rewritten instead of read",
                    "move the varying content after the breakpoint, or put the breakpoint on the "
                    f"last block before token {divergence}",
                    self._locate(ref, divergence),
                )
            elif 0.75 * minimum <= end < minimum:
                self._add(
                    group,
                    "under-minimum",
                    f"the breakpoint on {segment.path} caches {end} tokens, {minimum - end} under "
                    f"the minimum of {minimum} for {group.model}: it is never cached",
                    f"move the breakpoint later, or add {minimum - end} tokens of static content "
                    "before it",
                    self._locate(ref, end),
                )

    def _add(self, group: _Group, kind: str, message: str, fix: str, where: Position) -> None:
        group.found[(kind, where.path + f"@{where.token}")] = _Found(
            kind, message, fix, where, group.requests
        )

    def _locate(self, rendered: _Rendered, token: int) -> Position:
        """The position of token index ``token`` in ``rendered``."""
        starts = rendered.starts
        segments = rendered.request.segments
        if not segments:
            return Position(token, "", 0, 1, 1)
        i = 0
        while i + 1 < len(segments) and starts[i + 1] <= token:
            i += 1
        k = max(0, min(token - starts[i] - 1, len(rendered.tokens[i]) // 4))
        text = self.tokenizer.decode(token_ids(rendered.tokens[i][: 4 * k]))
        return rendered.position(i, min(len(text), len(segments[i].text)), token)

    def report(self) -> LintReport:
        """The report over everything added so far."""
        groups: list[GroupReport] = []
        findings: list[Finding] = []
        for group in self._groups.values():
            self._static_scan(group)
            self._structural(group)
            n = group.requests
            groups.append(
                GroupReport(
                    id=group.id,
                    label=group.label,
                    model=group.model,
                    provider=group.rules.provider.value,
                    requests=n,
                    stable_prefix_tokens=group.stable,
                    median_prompt_tokens=int(statistics.median(group.lengths)),
                    minimum_tokens=group.rules.minimum,
                    provider_hit_rate=group.hits / n,
                    cached_token_share=group.cached / group.prompt_tokens
                    if group.prompt_tokens
                    else 0.0,
                    expected_cached_tokens_per_1k=1000 * group.cached / n,
                    expected_dollars_saved_per_1k=1000 * group.dollars / n
                    if group.priced
                    else None,
                )
            )
            for found in sorted(group.found.values(), key=lambda f: f.position.token):
                findings.append(
                    Finding(
                        found.kind, group.id, found.message, found.fix, found.position, found.count
                    )
                )
        return LintReport(self._requests, tuple(groups), tuple(findings), tuple(self._skipped))


def lint(
    lines: Iterable[bytes | str],
    *,
    provider: Provider | str | None = None,
    tokenizer: Tokenizer | None = None,
    prices: PriceTable | None = None,
) -> LintReport:
    """Analyse a JSONL request log (see :class:`Analyzer`)."""
    analyzer = Analyzer(provider=provider, tokenizer=tokenizer, prices=prices)
    for entry in read_log(lines):
        analyzer.add(entry)
    return analyzer.report()


# --- diff -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PromptDiff:
    """Where two versions of a prompt template stop sharing tokens."""

    old_tokens: int
    """The old version's length in tokens."""
    new_tokens: int
    """The new version's length in tokens."""
    common_prefix_tokens: int
    """Tokens both share from the start."""
    old_position: Position | None
    """Where the old version diverges (``None``: it does not)."""
    new_position: Position | None
    """Where the new version diverges."""
    reusable_tokens: int
    """Of the old version's cached prefix, what a request of the new version can still read under
    the provider's rules."""
    cacheable_tokens: int
    """What the old version itself could have read from the cache (its whole length, rounded down
    to the provider's steps)."""
    edits: tuple[dict[str, Any], ...]
    """The first token-level edits: ``op``, token ranges and the text on each side."""

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "old_tokens": self.old_tokens,
            "new_tokens": self.new_tokens,
            "common_prefix_tokens": self.common_prefix_tokens,
            "old_position": None if self.old_position is None else self.old_position.as_dict(),
            "new_position": None if self.new_position is None else self.new_position.as_dict(),
            "reusable_tokens": self.reusable_tokens,
            "cacheable_tokens": self.cacheable_tokens,
            "edits": list(self.edits),
        }


def _template(value: str | Mapping[str, Any]) -> PromptRequest:
    if isinstance(value, Mapping):
        return render_request(value)
    return PromptRequest("template", "", (Segment("template", "system", value),), ())


def _cacheable(length: int, rules: ProviderRules) -> int:
    if length < rules.minimum:
        return 0
    if not rules.step:
        return length
    return rules.minimum + (length - rules.minimum) // rules.step * rules.step


def diff_prompts(
    old: str | Mapping[str, Any],
    new: str | Mapping[str, Any],
    *,
    provider: Provider | str = Provider.OPENAI,
    tokenizer: Tokenizer | None = None,
    max_edits: int = 10,
) -> PromptDiff:
    """Compare two template versions (texts, or request bodies) token by token."""
    analyzer = Analyzer(provider=provider, tokenizer=tokenizer)
    a, packed_a = analyzer._render(_template(old))
    b, packed_b = analyzer._render(_template(new))
    stream_a, stream_b = token_ids(packed_a), token_ids(packed_b)
    rules = rules_for(provider, a.request.model)
    common = 0
    for x, y in zip(stream_a, stream_b, strict=False):
        if x != y:
            break
        common += 1
    same = common == len(stream_a) == len(stream_b)
    edits: list[dict[str, Any]] = []
    matcher = difflib.SequenceMatcher(None, stream_a.tolist(), stream_b.tolist(), autojunk=False)
    decode = analyzer.tokenizer.decode
    for op, a0, a1, b0, b1 in matcher.get_opcodes():
        if op == "equal":
            continue
        edits.append(
            {
                "op": op,
                "old": [a0, a1],
                "new": [b0, b1],
                "old_text": decode(t for t in stream_a[a0:a1] if t != BOUNDARY),
                "new_text": decode(t for t in stream_b[b0:b1] if t != BOUNDARY),
            }
        )
        if len(edits) >= max_edits:
            break
    return PromptDiff(
        old_tokens=len(stream_a),
        new_tokens=len(stream_b),
        common_prefix_tokens=common,
        old_position=None if same else analyzer._locate(a, common),
        new_position=None if same else analyzer._locate(b, common),
        reusable_tokens=_cacheable(common, rules),
        cacheable_tokens=_cacheable(len(stream_a), rules),
        edits=tuple(edits),
    )
