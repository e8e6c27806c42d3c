"""LLMCache: the orchestration shared by the proxy and the library: lookup, coalescing, store.

One request goes through these steps, in this order::

    parse the cache controls (headers, body["cache"])  ->  tenant from the caller's credential
    ->  exact key  ->  admission decision (may we read? may we write?)
    ->  look up in the tier chain; decode and verify the record (a record that fails is a miss,
        is deleted and is counted); honour max-age; fresh -> HIT, stale -> STALE or miss
    ->  exact miss, with a semantic layer (``llm.semantic``): a paraphrase of the final user turn
        in the same context partition answers it (SEMANTIC-HIT), and an alias of that answer is
        written under this request's exact key; in shadow mode the would-be answer is only noted
    ->  miss: join an identical request already in flight (COALESCED) or start one (MISS / BYPASS)
    ->  the upstream call runs in its own task; every client reads it as it arrives (a stream is
        teed chunk by chunk, so the first token is not delayed)
    ->  after the terminal event, once the clients have their answers (write-behind), and only if
        the decision and ``storable`` allow: sign, write through every tier. A request for that
        key arriving before the write has landed waits for it and is then a HIT (see
        ``llm.coalesce.PendingWrites``); closing the cache drains the writes still pending.

A hit replays what was recorded: the stored body, or the stored SSE payloads, at once or, with a
route's ``pace = "original"``, with the recorded gaps between chunks (each capped). The
two shapes convert: a plain request served from a streamed record gets the assembled body, a
streamed request served from a plain record gets the synthesised chunks (see ``llm.streams``).

Usage in streams. When a streamed answer may be stored or shared, the upstream request asks for
``stream_options.include_usage`` even if the client did not, so every record carries token counts
(for the "tokens saved" metric, and so a later client that does ask for usage gets it). A client
that did not ask gets the stream it would have got: the usage-only chunk and the ``"usage": null``
members are removed from its copy. ``stream_usage=False`` turns this off for providers that reject
``stream_options``.

Embeddings are cached per input item: a batch with one new text sends only that text upstream, and
the response is reassembled in the original order. The usage of a batch is attributed to its items
in proportion to their length (exact for an item fetched alone or given as token ids), and the usage
of a response is the sum over its items.

Stale answers, off by default, per route (:class:`RoutePolicy`): within ``stale_while_revalidate``
seconds after expiry a stale record is served (``STALE``) while one background request refreshes it;
within ``stale_if_error`` seconds it is served only when the upstream fails (no response, or 5xx).

Errors. An upstream that cannot be reached or times out gives an OpenAI-style error (502 / 504);
an upstream error status is passed to the client as it came (wrapped in the OpenAI error shape if
it was not already). Neither is ever stored. A stream that breaks off ends with an error event,
which the OpenAI SDK raises as ``APIError``, and is not stored.

Verified records. A record is decoded and its signature verified when it is read, except when the
tier hands back the very entry object whose bytes were already verified (or signed) by this cache:
the in-process tier keeps the objects it is given, so a hit there would otherwise decode and verify
the same immutable bytes on every read. The cache remembers, per storage key, the entry object and
its record (bounded, least recently used first out) and reuses the record only while the tier
returns that same object; any other copy (from SQLite or Redis, or an entry replaced since) is a
new object and is verified as before. Invalidations drop the remembered records too, to free them;
correctness does not depend on it, since a replaced or removed entry never matches by identity.

Everything here is transport-agnostic: the upstream is any :class:`Upstream`, the result an
:class:`LLMResponse` the shell turns into HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import hmac
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from stratacache.errors import (
    ConfigError,
    RecordError,
    RequestError,
    SignatureError,
    TierError,
    UpstreamError,
    UpstreamTimeoutError,
)
from stratacache.llm.coalesce import Flight, PendingWrites
from stratacache.llm.keys import (
    CacheKey,
    Route,
    embedding_input_key,
    final_user_turn,
    request_key,
    tenant_for,
)
from stratacache.llm.policy import (
    AdmissionMode,
    Decision,
    Directives,
    decide,
    parse_directives,
    storable,
)
from stratacache.llm.records import Record, RecordCodec, flat_usage
from stratacache.llm.rules import CacheRules
from stratacache.llm.semantic import (
    SemanticLayer,
    ShadowObservation,
    alias_similarity,
    alias_tag,
    answer_text,
    similarity_tag,
)
from stratacache.llm.streams import (
    DEFAULT_MAX_EVENT_BYTES,
    DONE,
    SSEDecoder,
    assemble_chat,
    assemble_completion,
    assemble_response,
    chat_chunks,
    completion_chunks,
    encode_event,
    load_payloads,
    response_events,
    sse_frames,
)
from stratacache.prefix.context import estimate_usage
from stratacache.prefix.keys import KEY_KINDS, PrefixCacheKey, prefix_key, prefix_tokenizer
from stratacache.tiers.base import Clock, TierEntry
from stratacache.tiers.chain import TierChain

if TYPE_CHECKING:
    from stratacache.semantic import Candidate

__all__ = [
    "CacheObserver",
    "CacheStatus",
    "LLMCache",
    "LLMRequest",
    "LLMResponse",
    "RoutePolicy",
    "Upstream",
    "UpstreamReply",
    "derive_tenant_secret",
    "error_body",
    "route_path",
]

logger = logging.getLogger("stratacache.llm.cache")

JSON = "application/json"
EVENT_STREAM = "text/event-stream"

SETTLE_DELAY = 0.005
"""Seconds an answer's signing and storing wait after it was sent (see ``_after_replies``)."""
_MAX_ERROR_BODY = 1 << 20  # an upstream error body longer than this is cut (it is for humans)
_MAX_KEYS_IN_HEADER = 16  # an embeddings batch lists its item keys in X-Cache-Key up to this many
_USAGE_STREAM_ROUTES = frozenset({Route.CHAT, Route.COMPLETIONS})
_PACES = ("off", "original")
_TERMINAL_RESPONSE_EVENTS = frozenset(
    {"response.completed", "response.incomplete", "response.failed"}
)


def _orjson() -> Any:
    from stratacache.llm.keys import _orjson as load

    return load()


# --- public value types -------------------------------------------------------------------------


class CacheStatus(StrEnum):
    """How a request was answered; sent to the client as ``X-Cache``."""

    HIT = "HIT"
    """From the cache, fresh."""
    MISS = "MISS"
    """The cache was read and had no usable answer; the upstream answered."""
    BYPASS = "BYPASS"
    """The cache was not read (not cacheable, ``no-cache``, or the route's mode is ``never``)."""
    STALE = "STALE"
    """From the cache, past its expiry (stale-while-revalidate, or stale-if-error)."""
    COALESCED = "COALESCED"
    """From an identical request already in flight: one upstream call answered both."""
    SEMANTIC_HIT = "SEMANTIC-HIT"
    """From the cache, recorded for a paraphrase of the final user turn in the same context
    (see ``llm.semantic``); ``X-Cache-Similarity`` says how close it was."""


@dataclass(frozen=True, slots=True)
class RoutePolicy:
    """How one route is cached."""

    mode: AdmissionMode = AdmissionMode.DETERMINISTIC
    """Which requests are cached (see :class:`~stratacache.llm.policy.AdmissionMode`)."""
    ttl: float | None = None
    """Seconds a stored answer stays fresh; ``None``: until evicted. ``X-Cache-TTL`` overrides."""
    stale_while_revalidate: float = 0.0
    """Seconds after expiry during which a stale answer is served while it is refreshed."""
    stale_if_error: float = 0.0
    """Seconds after expiry during which a stale answer is served if the upstream fails."""
    semantic: bool = True
    """Answer paraphrases on this route when the cache has a semantic layer (chat, completions and
    responses only; embeddings are always exact)."""
    semantic_threshold: float | None = None
    """The cosine similarity a paraphrase needs on this route; ``None``: the layer's default."""
    pace: str = "off"
    """How a streamed hit is replayed: ``off`` (as fast as the client reads) or ``original`` (with
    the recorded gaps between chunks, each capped at :attr:`pace_max_gap`)."""
    pace_max_gap: float = 1.0
    """The longest pause, in seconds, a paced replay makes between two chunks."""
    key: str = "exact"
    """``exact``: entries are keyed by the whole request. ``prefix``: by its first
    :attr:`granularity` prompt tokens, and accepted only when the whole request matches too
    (:mod:`stratacache.prefix.keys`; needs the ``prefix`` extra)."""
    granularity: int = 1024
    """With ``key = "prefix"``: how many prompt tokens key an entry."""

    def __post_init__(self) -> None:
        if self.pace not in _PACES:
            raise ConfigError(f"pace must be one of {_PACES}, got {self.pace!r}")
        if not _non_negative(self.pace_max_gap):
            raise ConfigError(
                f"pace_max_gap must be a number of seconds >= 0, got {self.pace_max_gap!r}"
            )
        if self.key not in KEY_KINDS:
            raise ConfigError(f"key must be one of {', '.join(KEY_KINDS)}, got {self.key!r}")
        if (
            not isinstance(self.granularity, int)
            or isinstance(self.granularity, bool)
            or self.granularity < 1
        ):
            raise ConfigError(
                f"granularity must be a number of tokens >= 1, got {self.granularity!r}"
            )
        if self.key == "prefix":
            prefix_tokenizer()  # fail at configuration time, naming the extra, not on a request
        if not isinstance(self.semantic, bool):
            raise ConfigError(f"semantic must be true or false, got {self.semantic!r}")
        threshold = self.semantic_threshold
        if threshold is not None and not (
            isinstance(threshold, int | float)
            and not isinstance(threshold, bool)
            and -1.0 <= threshold <= 1.0
        ):
            raise ConfigError(
                f"semantic_threshold must be a cosine similarity in [-1, 1] or None, got {threshold!r}"
            )
        if not isinstance(self.mode, AdmissionMode):
            raise ConfigError(f"mode must be an AdmissionMode, got {self.mode!r}")
        if self.ttl is not None and not _positive(self.ttl):
            raise ConfigError(f"ttl must be a number of seconds > 0 or None, got {self.ttl!r}")
        for name in ("stale_while_revalidate", "stale_if_error"):
            value = getattr(self, name)
            if not _non_negative(value):
                raise ConfigError(f"{name} must be a number of seconds >= 0, got {value!r}")

    @property
    def stale_window(self) -> float:
        """How long past expiry a record must be kept to serve it stale."""
        return max(self.stale_while_revalidate, self.stale_if_error)


@dataclass(frozen=True, slots=True)
class LLMRequest:
    """One request to a cached route, as the shell received it."""

    route: Route
    """The endpoint."""
    body: Mapping[str, Any]
    """The parsed JSON body (may hold a ``cache`` control object)."""
    headers: Mapping[str, str] = field(default_factory=dict)
    """The client's headers: cache controls and the credential are read from them."""
    forward_headers: Mapping[str, str] | None = None
    """The headers to send upstream; ``None``: only the client's ``Authorization``."""
    raw: bytes | None = None
    """The body bytes as received: forwarded unchanged when the cache did not alter the body."""


@dataclass(frozen=True, slots=True)
class LLMResponse:
    """The answer to one request, ready for a shell to send: exactly one of body and stream."""

    status: int
    """The HTTP status."""
    cache: CacheStatus
    """How it was answered."""
    media_type: str = JSON
    """``application/json`` or ``text/event-stream``."""
    body: bytes | None = None
    """The whole body."""
    stream: AsyncIterator[bytes] | None = None
    """The body as it is produced (a live stream); iterate it to the end or close it."""
    key: str | None = None
    """The storage key (``X-Cache-Key``); for an embeddings batch, its distinct item keys joined
    by commas (omitted beyond 16 items)."""
    age: int | None = None
    """Seconds since the answer was recorded, for answers from the cache (``Age``)."""
    tier: str | None = None
    """The tier that served a hit (``X-Cache-Tier``)."""
    upstream_headers: Mapping[str, str] = field(default_factory=dict)
    """The upstream's response headers, when the upstream answered (unfiltered)."""
    similarity: float | None = None
    """For a ``SEMANTIC-HIT``: the cosine similarity of the question to the one answered."""

    @property
    def cache_headers(self) -> dict[str, str]:
        """``X-Cache``, ``X-Cache-Key``, ``Age``, ``X-Cache-Tier`` and ``X-Cache-Similarity``, as
        they apply."""
        headers = {"x-cache": self.cache.value}
        if self.key:
            headers["x-cache-key"] = self.key
        if self.age is not None:
            headers["age"] = str(self.age)
        if self.tier:
            headers["x-cache-tier"] = self.tier
        if self.similarity is not None:
            headers["x-cache-similarity"] = f"{self.similarity:.4f}"
        return headers


@runtime_checkable
class UpstreamReply(Protocol):
    """A provider's response whose body is read as it arrives."""

    @property
    def status(self) -> int:
        """The HTTP status."""
        ...

    @property
    def headers(self) -> Mapping[str, str]:
        """The response headers (case-insensitive look-ups)."""
        ...

    def iter_bytes(self) -> AsyncIterator[bytes]:
        """The decoded body as it arrives; raises :class:`UpstreamError` if it breaks off."""
        ...

    async def read(self) -> bytes:
        """The whole decoded body."""
        ...

    async def aclose(self) -> None:
        """Release the connection (idempotent)."""
        ...


@runtime_checkable
class Upstream(Protocol):
    """An OpenAI-compatible provider.

    Transport failures raise :class:`UpstreamError`; error statuses are returned as replies.
    """

    async def post(self, path: str, body: bytes, headers: Mapping[str, str]) -> UpstreamReply:
        """POST JSON ``body`` to ``path`` (``/chat/completions``); return at the headers."""
        ...


class CacheObserver(Protocol):
    """What the cache reports, for metrics (``observability.metrics.Metrics`` implements it)."""

    def request_served(self, route: str, outcome: str, tier: str | None, seconds: float) -> None:
        """A request was answered: outcome is the lower-case :class:`CacheStatus`."""
        ...

    def tokens_saved(self, route: str, model: str | None, usage: Mapping[str, int] | None) -> None:
        """Tokens answered without an upstream call of their own."""
        ...

    def upstream_usage(
        self, route: str, model: str | None, usage: Mapping[str, int] | None
    ) -> None:
        """An upstream answer's usage (the cost ledger prices it, prompt-cache reads included)."""
        ...

    def upstream_called(self, route: str, seconds: float, status: int | None, error: str) -> None:
        """An upstream call got its headers (or failed: ``status`` None, ``error`` says how)."""
        ...

    def request_coalesced(self, route: str) -> None:
        """A request joined an identical one in flight."""
        ...

    def verification_failed(self, tier: str, reason: str) -> None:
        """A stored record failed to decode or verify, and was deleted."""
        ...

    def not_stored(self, route: str, reason: str) -> None:
        """An upstream answer was not stored, and why."""
        ...


class _NullObserver:
    def request_served(self, route: str, outcome: str, tier: str | None, seconds: float) -> None:
        pass

    def tokens_saved(self, route: str, model: str | None, usage: Mapping[str, int] | None) -> None:
        pass

    def upstream_usage(
        self, route: str, model: str | None, usage: Mapping[str, int] | None
    ) -> None:
        pass

    def upstream_called(self, route: str, seconds: float, status: int | None, error: str) -> None:
        pass

    def request_coalesced(self, route: str) -> None:
        pass

    def verification_failed(self, tier: str, reason: str) -> None:
        pass

    def not_stored(self, route: str, reason: str) -> None:
        pass


def _flight_key(key: CacheKey) -> str:
    """The coalescing key: requests sharing a prefix slot are different requests, never joined."""
    if isinstance(key, PrefixCacheKey):
        return f"{key.storage_key}#{key.digest}"
    return key.storage_key


def route_path(route: Route) -> str:
    """The path of ``route`` relative to an OpenAI base URL: ``/chat/completions``.

    >>> route_path(Route.CHAT)
    '/chat/completions'
    """
    return "/" + route.value.replace(".", "/")


def error_body(message: str, *, type: str, code: str | int | None = None) -> bytes:
    """An OpenAI-style error body: ``{"error": {"message", "type", "param", "code"}}``.

    >>> error_body("no", type="invalid_request_error", code="bad")
    b'{"error":{"message":"no","type":"invalid_request_error","param":null,"code":"bad"}}'
    """
    payload = {"error": {"message": message, "type": type, "param": None, "code": code}}
    body: bytes = _orjson().dumps(payload)
    return body


def derive_tenant_secret(key: bytes) -> bytes:
    """Derive the secret tenant ids are computed with from the record key (domain separated).

    One key file then serves both purposes without using the same key for two things.
    """
    if not isinstance(key, bytes) or len(key) < 16:
        raise ConfigError("the key to derive a tenant secret from must be at least 16 bytes")
    return hmac.new(key, b"stratacache tenant secret v1", hashlib.sha256).digest()


# --- internals: lookups and contexts ------------------------------------------------------------


class _Freshness(Enum):
    FRESH = "fresh"
    REVALIDATE = "revalidate"  # stale, within stale-while-revalidate
    IF_ERROR = "if-error"  # stale, within stale-if-error only


@dataclass(frozen=True, slots=True)
class _Found:
    record: Record
    tier: str
    freshness: _Freshness


@dataclass(frozen=True, slots=True)
class _Context:
    """Everything about one request that the miss path needs."""

    route: Route
    policy: RoutePolicy
    body: dict[str, Any]  # without the cache member
    directives: Directives
    decision: Decision
    key: CacheKey
    stream: bool
    want_usage: bool
    upstream_body: bytes
    upstream_headers: Mapping[str, str]
    started: float
    semantic_text: str | None = None  # the final user turn, to index once the answer is stored
    caller: str = ""  # the credential's own tenant id, even when entries are shared (Flight.caller)
    shadow: Candidate | None = None  # shadow mode: the answer semantic caching would have given


class _ItemFailureError(Exception):
    """An embeddings batch failed upstream; carries the response every waiter should give."""

    def __init__(self, response: LLMResponse) -> None:
        super().__init__(f"upstream answered {response.status}")
        self.response = response


@dataclass(frozen=True, slots=True)
class _Item:
    """One embedding, from the cache or fresh."""

    embedding: Any
    tokens: int
    model: str
    age: float | None = None
    tier: str | None = None


class _VerifiedRecords:
    """Records already decoded and verified, each beside the :class:`TierEntry` it came from.

    :meth:`get` returns a record only for the *same entry object* it was remembered with: an
    object this process verified (or built) cannot have changed since, since its bytes are
    immutable, while a tier's fresh copy of the bytes is a different object. Bounded by a count and
    by the stored bytes the records stand for; the least recently used go first.
    """

    __slots__ = ("_bytes", "_entries", "_max_bytes", "_max_entries")

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        for name, value in (("verified_entries", max_entries), ("verified_bytes", max_bytes)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{name} must be an int >= 0, got {value!r}")
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._bytes = 0
        # Insertion order is recency order: get() moves a key to the end, eviction takes the head.
        self._entries: dict[str, tuple[TierEntry, Record]] = {}

    def get(self, key: str, entry: TierEntry) -> Record | None:
        """The record remembered for ``key`` if it came from this very ``entry``, else ``None``."""
        known = self._entries.get(key)
        if known is None or known[0] is not entry:
            return None
        del self._entries[key]
        self._entries[key] = known
        return known[1]

    def put(self, key: str, entry: TierEntry, record: Record) -> None:
        """Remember that ``entry`` (stored under ``key``) holds the verified ``record``."""
        self.discard(key)
        weight = len(entry.value)
        if self._max_entries == 0 or weight > self._max_bytes:
            return
        self._entries[key] = (entry, record)
        self._bytes += weight
        while len(self._entries) > self._max_entries or self._bytes > self._max_bytes:
            oldest = next(iter(self._entries))
            self.discard(oldest)

    def discard(self, key: str) -> None:
        """Forget ``key``."""
        known = self._entries.pop(key, None)
        if known is not None:
            self._bytes -= len(known[0].value)

    def discard_namespace(self, namespace: str) -> None:
        """Forget every record stored in ``namespace``."""
        for key in [k for k, (e, _) in self._entries.items() if e.namespace == namespace]:
            self.discard(key)

    def discard_tag(self, tag: str) -> None:
        """Forget every record stored with ``tag``."""
        for key in [k for k, (e, _) in self._entries.items() if tag in e.tags]:
            self.discard(key)

    def clear(self) -> None:
        """Forget everything."""
        self._entries.clear()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)


# --- the cache ----------------------------------------------------------------------------------


class LLMCache:
    """The exact LLM cache: tiers for storage, a codec for trust, an upstream for misses.

    :param tiers: where records live, fastest first.
    :param codec: signs records on write and verifies them on read.
    :param upstream: the provider, called on a miss.
    :param tenant_secret: the secret tenant ids are derived with (:func:`derive_tenant_secret`).
    :param share_across_tenants: let every credential share one set of entries.
    :param routes: a :class:`RoutePolicy` per route; routes not given get the default policy.
    :param version: mixed into every key; change it to stop matching older answers.
    :param observer: receives the metrics events (default: none).
    :param clock: wall-clock Unix seconds for record times and expiry (tests pass a fake; the tiers
        should share it).
    :param timer: a monotonic clock for latencies.
    :param stream_usage: ask for usage in streams that may be stored or shared (see the module doc).
    :param max_event_bytes: the largest upstream SSE event accepted.
    :param verified_entries: how many verified records to remember beside the entries they came
        from (see "Verified records" in the module doc; 0: decode and verify every read).
    :param verified_bytes: the most stored bytes those remembered records may stand for.
    :param semantic: answer paraphrases too (see ``llm.semantic``); ``None``: exact only.
    :param sleep: how a paced replay waits (``asyncio.sleep``; tests record the pauses instead).
    :param rules: TTL rules and versioned namespaces (see ``llm.rules``); ``None``: none.
    """

    def __init__(
        self,
        tiers: TierChain,
        codec: RecordCodec,
        upstream: Upstream,
        *,
        tenant_secret: bytes,
        share_across_tenants: bool = False,
        routes: Mapping[Route, RoutePolicy] | None = None,
        version: str = "",
        observer: CacheObserver | None = None,
        clock: Clock = time.time,
        timer: Callable[[], float] = time.perf_counter,
        stream_usage: bool = True,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
        verified_entries: int = 10_000,
        verified_bytes: int = 64 * 1024 * 1024,
        semantic: SemanticLayer | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rules: CacheRules | None = None,
    ) -> None:
        if not isinstance(tiers, TierChain):
            raise ConfigError("tiers must be a TierChain (wrap a single tier: TierChain([tier]))")
        if not isinstance(codec, RecordCodec):
            raise ConfigError("codec must be a RecordCodec")
        tenant_for(None, secret=tenant_secret)  # validates the secret now, not on the first request
        self.tiers = tiers
        self.codec = codec
        self.upstream = upstream
        self._tenant_secret = tenant_secret
        self._share = share_across_tenants
        policies = {route: RoutePolicy() for route in Route}
        for route, policy in (routes or {}).items():
            if not isinstance(policy, RoutePolicy):
                raise ConfigError(f"the policy for {route} must be a RoutePolicy, got {policy!r}")
            policies[Route(route)] = policy
        self.routes: Mapping[Route, RoutePolicy] = MappingProxyType(policies)
        self._version = version
        if rules is not None and not isinstance(rules, CacheRules):
            raise ConfigError("rules must be a CacheRules (see llm.rules)")
        self.rules: CacheRules = rules or CacheRules()
        """The TTL rules and versioned namespaces applied to every request."""
        self._observer: CacheObserver = observer or _NullObserver()
        self._clock = clock
        self._timer = timer
        self._stream_usage = stream_usage
        self._max_event_bytes = max_event_bytes
        self._verified = _VerifiedRecords(verified_entries, verified_bytes)
        self._flights: dict[str, Flight] = {}
        # Embedding items being fetched, with the epoch and mark their call started under.
        # storage key -> (the item's future, epoch and marks when its call began, its caller)
        self._item_flights: dict[str, tuple[asyncio.Future[_Item], int, tuple[int, ...], str]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._pending = PendingWrites()
        # Bumped when every invalidation starts and again when it ends: a write whose answer was
        # read or fetched under an older epoch may predate an invalidation, and is not stored
        # (it would bring back what was invalidated); nor is one read while an invalidation runs
        # (_invalidating > 0). See _generation, _promote and _settle.
        self._epoch = 0
        self._invalidating = 0
        self._closed = False
        if semantic is not None and not isinstance(semantic, SemanticLayer):
            raise ConfigError("semantic must be a SemanticLayer (see llm.semantic.semantic_layer)")
        self.semantic = semantic
        """The semantic layer, if paraphrases are answered (or observed, in shadow mode)."""
        self._sleep = sleep
        self._semantic_lookups: dict[
            tuple[str, float | None, float | None, int, tuple[int, ...]],
            asyncio.Future[tuple[_Found, float] | None],
        ] = {}

    # --- entry points ----------------------------------------------------------------------------

    async def handle(self, request: LLMRequest) -> LLMResponse:
        """Answer one request: from the cache, from an identical request in flight, or upstream.

        Raises :class:`RequestError` for a request the cache cannot accept (bad controls, bad body);
        upstream failures become error responses, not exceptions.
        """
        started = self._timer()
        route = Route(request.route)
        if not isinstance(request.body, Mapping):
            raise RequestError("the request body must be a JSON object")
        policy = self.routes[route]
        directives, body = parse_directives(request.headers, request.body)
        credential = _credential(request.headers)
        tenant = tenant_for(
            credential, secret=self._tenant_secret, share_across_tenants=self._share
        )
        # Who is asking, even when entries are shared: an upstream refusal of one credential is
        # not passed to a request made with another (see _refused_another).
        caller = tenant_for(credential, secret=self._tenant_secret) if self._share else tenant
        namespace = directives.namespace or "default"
        # TTL rules and versioned namespaces (llm.rules): both unchanged when none are configured.
        policy, version = self.rules.resolve(route, namespace, body, policy, self._version)
        if route is Route.EMBEDDINGS:
            return await self._embeddings(
                request,
                body=body,
                directives=directives,
                tenant=tenant,
                namespace=namespace,
                policy=policy,
                started=started,
                version=version,
                caller=caller,
            )
        stream = body.get("stream") is True
        options = body.get("stream_options")
        want_usage = isinstance(options, Mapping) and options.get("include_usage") is True
        key = request_key(route, body, tenant=tenant, namespace=namespace, version=version)
        if policy.key == "prefix":
            key = prefix_key(key, body, granularity=policy.granularity, version=version)
        decision = decide(route, body, directives, policy.mode)

        fallback: _Found | None = None
        # A stale fallback is served only if no invalidation ran since it was read: see _miss.
        fallback_read, fallback_heard = self._generation(), self.tiers.mark()
        if decision.lookup:
            if key.storage_key in self._pending:
                await self._pending.wait(key.storage_key)
                fallback_read, fallback_heard = self._generation(), self.tiers.mark()
            found = await self._find(key, directives, policy)
            if found is not None and found.freshness is _Freshness.FRESH:
                return self._serve_record(
                    route,
                    found=found,
                    status=CacheStatus.HIT,
                    stream=stream,
                    want_usage=want_usage,
                    started=started,
                )
            if found is not None and found.freshness is _Freshness.REVALIDATE:
                self._revalidate(
                    route,
                    policy=policy,
                    body=body,
                    directives=directives,
                    decision=decision,
                    key=key,
                    request=request,
                )
                return self._serve_record(
                    route,
                    found=found,
                    status=CacheStatus.STALE,
                    stream=stream,
                    want_usage=want_usage,
                    started=started,
                )
            if found is not None:
                fallback = found

        semantic_text: str | None = None
        shadow: Candidate | None = None
        layer = self.semantic
        epoch = self._generation()  # before the semantic read: see _promote
        heard = self.tiers.mark()
        if (
            layer is not None
            and layer.ready
            and policy.semantic
            and route in layer.routes
            # An identical request in flight answers this one for free: no embedding needed.
            and _flight_key(key) not in self._flights
        ):
            text = final_user_turn(route, body)
            if text is not None and text.strip():
                semantic_text = text if decision.store else None
                if decision.lookup and layer.shadow:
                    shadow = await self._shadow_lookup(layer, route, key, text)
                elif decision.lookup:
                    similar = await self._semantic_once(
                        layer, route, key, text, directives=directives, policy=policy
                    )
                    if similar is not None:
                        found, score = similar
                        if decision.store:  # no-store: not even an alias under this key
                            ttl = directives.ttl if directives.ttl is not None else policy.ttl
                            self._promote(
                                key, found.record, score, policy, ttl=ttl, epoch=epoch, heard=heard
                            )
                        layer.count("served")
                        return self._serve_record(
                            route,
                            found=found,
                            status=CacheStatus.SEMANTIC_HIT,
                            stream=stream,
                            want_usage=want_usage,
                            started=started,
                            similarity=score,
                        )

        forward = body
        if (
            stream
            and route in _USAGE_STREAM_ROUTES
            and self._stream_usage
            and not want_usage
            and (decision.lookup or decision.store)
        ):
            forward = {
                **body,
                "stream_options": {
                    **(options if isinstance(options, Mapping) else {}),
                    "include_usage": True,
                },
            }
        ctx = _Context(
            route=route,
            policy=policy,
            body=body,
            directives=directives,
            decision=decision,
            key=key,
            stream=stream,
            want_usage=want_usage,
            upstream_body=self._upstream_body(request, forward, changed=forward is not body),
            upstream_headers=_upstream_headers(request),
            started=started,
            semantic_text=semantic_text,
            shadow=shadow,
            caller=caller,
        )
        return await self._miss(ctx, fallback, (fallback_read, fallback_heard))

    @contextlib.asynccontextmanager
    async def _invalidation(self, forget: Callable[[], None]) -> AsyncIterator[None]:
        """Bracket one invalidation: the epoch moves before and after it, so an answer fetched or a
        promotion read while it ran is not stored (see ``_epoch``); ``forget`` then drops what the
        process keeps beside the tiers (verified records, semantic vectors), even on failure."""
        self._epoch += 1
        self._invalidating += 1
        try:
            yield
        finally:
            self._invalidating -= 1
            self._epoch += 1
            forget()

    def _generation(self) -> int | None:
        """The invalidation epoch, or ``None`` while an invalidation runs.

        What is read or fetched under generation ``g`` may be stored (promoted, joined, served as
        a fallback) only while the generation is still ``g``: an invalidation that started since
        may have removed it. ``None`` matches nothing, not even itself: what is read while an
        invalidation runs may be what it is removing, whichever tier it has reached.
        """
        return None if self._invalidating else self._epoch

    def _unchanged(self, generation: int | None) -> bool:
        """Whether no invalidation ran here since ``generation`` was read (see
        :meth:`_generation`)."""
        return generation is not None and generation == self._generation()

    def _still(self, generation: int | None, heard: tuple[int, ...]) -> bool:
        """:meth:`_unchanged`, and no other instance's invalidation heard since ``heard`` (a
        ``TierChain.mark``) either: whether what was read then may still be kept or served."""
        return self._unchanged(generation) and heard == self.tiers.mark()

    def _joinable(self, epoch: int, heard: tuple[int, ...]) -> bool:
        """Whether work begun at ``epoch`` (the raw epoch, even mid-invalidation) and ``heard``
        may be shared by a request arriving now: no invalidation began or ended since, here or
        heard from elsewhere. Requests arriving during one invalidation share among themselves;
        what they get is not kept (see :meth:`_generation`)."""
        return epoch == self._epoch and heard == self.tiers.mark()

    def _forget_key(self, key: str) -> None:
        self._verified.discard(key)
        if self.semantic is not None:
            self.semantic.delete_key(key)

    def _forget_namespace(self, namespace: str) -> None:
        self._verified.discard_namespace(namespace)
        if self.semantic is not None:
            self.semantic.delete_namespace(namespace)

    def _forget_tag(self, tag: str) -> None:
        self._verified.discard_tag(tag)
        if self.semantic is not None:
            self.semantic.delete_tag(tag)

    def _forget_all(self) -> None:
        self._verified.clear()
        if self.semantic is not None:
            self.semantic.clear()

    async def invalidate_key(self, key: str) -> bool:
        """Remove the entry stored under ``key`` (an ``X-Cache-Key`` value) from every tier."""
        async with self._invalidation(lambda: self._forget_key(key)):
            # A write still pending would land after the delete and bring the entry back.
            await self._pending.wait(key)
            deleted = await self.tiers.delete(key)
            if self.semantic is not None:
                # The answers promoted from this one (aliases under paraphrases' keys) go with it.
                await self._pending.settle_current()
                await self.tiers.delete_tag(alias_tag(key))
            return deleted

    async def invalidate_namespace(self, namespace: str) -> int:
        """Remove every entry in ``namespace`` (of every tenant) from every tier."""
        async with self._invalidation(lambda: self._forget_namespace(namespace)):
            await self._pending.settle_current()
            return await self.tiers.delete_namespace(namespace)

    async def invalidate_tag(self, tag: str) -> int:
        """Remove every entry carrying ``tag`` from every tier."""
        async with self._invalidation(lambda: self._forget_tag(tag)):
            await self._pending.settle_current()
            return await self.tiers.delete_tag(tag)

    async def flush(self) -> None:
        """Remove every entry from every tier."""
        async with self._invalidation(self._forget_all):
            await self._pending.settle_current()
            await self.tiers.clear()

    @property
    def in_flight(self) -> int:
        """How many upstream calls are in flight and joinable right now."""
        return len(self._flights) + len(self._item_flights)

    @property
    def pending_writes(self) -> int:
        """How many answers already given are still being signed and written to the tiers."""
        return len(self._pending)

    async def drain(self) -> None:
        """Wait until the background work in progress (upstream calls and the stores that follow
        them, refreshes) has finished; ``strata warm`` calls it before it reports what was stored."""
        while self._tasks or len(self._pending):
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._pending.drain()

    async def aclose(self) -> None:
        """Cancel background calls (refreshes, abandoned calls), then finish the pending writes of
        answers already given, so none is lost. Tiers and upstream stay open."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._pending.drain()

    # --- lookups ---------------------------------------------------------------------------------

    async def _find(
        self, key: CacheKey, directives: Directives, policy: RoutePolicy
    ) -> _Found | None:
        return await self._find_stored(
            key.storage_key,
            key.digest,
            key.route,
            directives,
            policy,
            shared=isinstance(key, PrefixCacheKey),
        )

    async def _find_stored(
        self,
        storage: str,
        digest: str,
        route: Route,
        directives: Directives,
        policy: RoutePolicy,
        *,
        shared: bool = False,
        raise_tier_errors: bool = False,
    ) -> _Found | None:
        """The record under ``storage``, verified to answer the request ``digest`` on ``route``.

        ``shared``: ``storage`` is a prefix slot that different requests share, so a record for
        another request is refused and kept rather than treated as tampering.
        ``raise_tier_errors``: raise a failed lookup's :class:`TierError` instead of answering
        ``None``, for a caller that must tell "absent" from "unknown".
        """
        try:
            found = await self.tiers.lookup(storage)
        except TierError as exc:
            if raise_tier_errors:
                raise
            logger.warning("cache lookup failed, answering from upstream: %s", exc)
            return None
        if found is None:
            return None
        entry, tier = found
        record = self._verified.get(storage, entry)
        try:
            if record is None:
                record = self.codec.decode(entry.value, expected_key=storage)
                self._verified.put(storage, entry, record)
            if shared and record.fingerprint != digest and record.route == route.value:
                # The collision check: same first N tokens, another request. The record is a
                # valid answer to that one: refused here, and kept.
                return None
            if record.fingerprint != digest or record.route != route.value:
                raise SignatureError("the record answers another request")
        except RecordError as exc:
            reason = "signature" if isinstance(exc, SignatureError) else "format"
            logger.warning("deleting a record that failed verification in %s: %s", tier, exc)
            self._observer.verification_failed(tier, reason)
            self._verified.discard(storage)
            with contextlib.suppress(TierError):
                await self.tiers.delete(storage)
            return None
        now = self._clock()
        if directives.max_age is not None and record.age(now) > directives.max_age:
            return None
        if not record.expired(now):
            return _Found(record, tier, _Freshness.FRESH)
        assert record.expires_at is not None
        late = now - record.expires_at
        if late < policy.stale_while_revalidate:
            return _Found(record, tier, _Freshness.REVALIDATE)
        if late < policy.stale_if_error:
            return _Found(record, tier, _Freshness.IF_ERROR)
        return None

    def _serve_record(
        self,
        route: Route,
        *,
        found: _Found,
        status: CacheStatus,
        stream: bool,
        want_usage: bool,
        started: float,
        similarity: float | None = None,
    ) -> LLMResponse:
        record = found.record
        if record.tags and status is CacheStatus.HIT and self.semantic is not None:
            # An alias written by a semantic hit is still a semantic answer.
            similarity = alias_similarity(record.tags)
            if similarity is not None:
                status = CacheStatus.SEMANTIC_HIT
        policy = self.routes[route]
        if stream and policy.pace == "original" and record.gaps is not None:
            frames, pauses = _paced_frames(route, record, want_usage, policy.pace_max_gap)
            self._observer.request_served(
                route.value, status.value.lower(), found.tier, self._timer() - started
            )
            self._observer.tokens_saved(route.value, record.model, record.usage)
            return LLMResponse(
                status=200,
                cache=status,
                media_type=EVENT_STREAM,
                stream=_paced(frames, pauses, self._sleep),
                key=record.key,
                age=int(record.age(self._clock())),
                tier=found.tier,
                similarity=similarity,
            )
        body, media_type = _replay(route, record, stream=stream, want_usage=want_usage)
        self._observer.request_served(
            route.value, status.value.lower(), found.tier, self._timer() - started
        )
        self._observer.tokens_saved(route.value, record.model, record.usage)
        return LLMResponse(
            status=200,
            cache=status,
            media_type=media_type,
            body=body,
            key=record.key,
            age=int(record.age(self._clock())),
            tier=found.tier,
            similarity=similarity,
        )

    # --- semantic ------------------------------------------------------------------------------

    async def _semantic_once(
        self,
        layer: SemanticLayer,
        route: Route,
        key: CacheKey,
        text: str,
        *,
        directives: Directives,
        policy: RoutePolicy,
    ) -> tuple[_Found, float] | None:
        """:meth:`_semantic_find`, shared by identical requests arriving together: the first
        embeds and searches, the others wait for its answer (then coalesce on one upstream call
        if it found nothing).

        Shared only by requests that would accept the same answers (the same key, max-age and
        TTL) and that arrived with no invalidation begun or ended in between, here or heard from
        another instance (:meth:`_joinable`): a lookup begun before one may find what it removed.
        """
        ttl = directives.ttl if directives.ttl is not None else policy.ttl
        token = (key.storage_key, directives.max_age, ttl, self._epoch, self.tiers.mark())
        shared = self._semantic_lookups.get(token)
        if shared is not None:
            return await asyncio.shield(shared)
        result: asyncio.Future[tuple[_Found, float] | None]
        result = asyncio.get_running_loop().create_future()
        self._semantic_lookups[token] = result
        found: tuple[_Found, float] | None = None
        try:
            found = await self._semantic_find(
                layer, route, key, text, directives=directives, policy=policy
            )
            return found
        finally:
            del self._semantic_lookups[token]
            result.set_result(found)

    async def _semantic_find(
        self,
        layer: SemanticLayer,
        route: Route,
        key: CacheKey,
        text: str,
        *,
        directives: Directives,
        policy: RoutePolicy,
    ) -> tuple[_Found, float] | None:
        """A fresh, verified record answering a paraphrase of ``text`` in ``key``'s partition."""
        try:
            hit = await layer.lookup(route, key.partition, text)
        except Exception as exc:  # an embedder down or broken: answer exactly, as without one
            logger.warning("semantic lookup failed, answering from upstream: %s", exc)
            layer.count("error")
            return None
        if hit is None:
            return None
        # The index only searched this partition; the key must still be this tenant's, in this
        # namespace, on this route (defence in depth: an index shared with a bug stays harmless).
        scope = f"{key.tenant}/{key.namespace}/{route.value}/"
        digest = hit.key[len(scope) :]
        found = None
        if hit.key.startswith(scope) and "/" not in digest:
            try:
                found = await self._find_stored(
                    hit.key, digest, route, directives, policy, raise_tier_errors=True
                )
            except TierError as exc:
                # The tier could not say: the record may well be there, so its vector stays.
                logger.warning("semantic candidate lookup failed, answering from upstream: %s", exc)
                layer.count("error")
                return None
        if found is not None:
            # The paraphrase's own TTL (its directive, else its resolved policy, TTL rules
            # included) bounds how old an answer it accepts, whatever the original was stored with.
            ttl = directives.ttl if directives.ttl is not None else policy.ttl
            if ttl is not None and found.record.age(self._clock()) > ttl:
                return None
        if found is None or found.freshness is not _Freshness.FRESH:
            # Invalidated, expired or evicted (or refused by max-age): nothing to serve. A record
            # that is gone takes its vector with it; one merely too old for max-age keeps it.
            if found is None and directives.max_age is None:
                layer.delete_key(hit.key)
                layer.count("stale")
            return None
        return found, hit.score

    async def _shadow_lookup(
        self, layer: SemanticLayer, route: Route, key: CacheKey, text: str
    ) -> Candidate | None:
        try:
            candidate = await layer.explain(route, key.partition, text)
        except Exception as exc:
            logger.warning("shadow semantic lookup failed: %s", exc)
            layer.count("error")
            return None
        if candidate is None:
            layer.shadow_log.no_candidate()
        return candidate

    def _promote(
        self,
        key: CacheKey,
        record: Record,
        score: float,
        policy: RoutePolicy,
        *,
        ttl: float | None,
        epoch: int | None,
        heard: tuple[int, ...],
    ) -> None:
        """Write-behind: an alias of ``record`` under the paraphrase's exact key, re-signed, into
        the faster tiers, so the same paraphrase next time is an exact hit.

        ``ttl``: the paraphrase's own resolved TTL (directive, else its policy's), which caps the
        alias's expiry; ``epoch``: the invalidation generation read before the semantic lookup.
        """
        if key.storage_key in self._pending:
            return
        if not self._still(epoch, heard):
            # An invalidation ran (or runs) while the original was being read: it may be the one
            # that removes it (its alias tag deleted before this alias existed). Not promoted.
            return
        self._pending.schedule(
            (key.storage_key,),
            self._write_alias(key, record, score, policy, ttl=ttl, epoch=epoch, heard=heard),
        )

    async def _write_alias(
        self,
        key: CacheKey,
        record: Record,
        score: float,
        policy: RoutePolicy,
        *,
        ttl: float | None,
        epoch: int | None,
        heard: tuple[int, ...],
    ) -> None:
        layer = self.semantic
        try:
            await _after_replies()
            if not self._still(epoch, heard):
                return  # an invalidation began during the settle delay: see _promote
            expires_at = record.expires_at
            if ttl is not None:
                # The paraphrase's TTL rule holds for its alias too. The alias keeps the original's
                # created_at, so it expires when the answer is ttl seconds old, as the lookup
                # (_semantic_find) would refuse it then; never later than the original.
                capped = record.created_at + ttl
                expires_at = capped if expires_at is None else min(expires_at, capped)
            tags = frozenset(
                {
                    *(t for t in record.tags if not t.startswith("strata/")),
                    alias_tag(record.key),
                    similarity_tag(score),
                }
            )
            alias = Record(
                key=key.storage_key,
                fingerprint=key.digest,
                route=key.route.value,
                model=record.model,
                created_at=record.created_at,  # the answer is as old as the original
                expires_at=expires_at,
                namespace=key.namespace,
                tags=tags,
                body=record.body,
                chunks=record.chunks,
                usage=record.usage,
                gaps=record.gaps,
            )
            entry = TierEntry(
                self.codec.encode(alias),
                expires_at=(
                    None if alias.expires_at is None else alias.expires_at + policy.stale_window
                ),
                tags=tags,
                namespace=key.namespace,
            )
            # The faster tiers: all but the slowest (the durable or shared one), or the only one.
            tiers = self.tiers.tiers
            for tier in tiers[:-1] or tiers:
                await tier.set(key.storage_key, entry)
            self._verified.put(key.storage_key, entry, alias)
            if layer is not None:
                layer.count("promoted")
        except Exception as exc:  # an alias is an accelerator: a failure only costs an embedding
            logger.warning("could not promote a semantic hit: %s", exc)
            if layer is not None:
                layer.count("error")

    async def _index_answer(self, ctx: _Context, record: Record) -> None:
        """Add the vector of a stored answer's final user turn (and record a shadow comparison)."""
        layer = self.semantic
        if layer is None or ctx.semantic_text is None or not layer.ready:
            return
        try:
            await layer.add(
                ctx.route,
                ctx.key.partition,
                ctx.semantic_text,
                record.key,
                expires_at=record.expires_at,
                tags=record.tags,
            )
        except Exception as exc:
            logger.warning("could not index an answer for semantic lookups: %s", exc)
            layer.count("error")

    async def _observe_shadow(self, ctx: _Context, response: Mapping[str, Any]) -> None:
        """Compare the upstream's answer with the one semantic caching would have served."""
        layer = self.semantic
        candidate = ctx.shadow
        if layer is None or candidate is None:
            return
        scope = f"{ctx.key.tenant}/{ctx.key.namespace}/{ctx.route.value}/"
        if not candidate.key.startswith(scope):
            return
        found = await self._find_stored(
            candidate.key,
            candidate.key[len(scope) :],
            ctx.route,
            ctx.directives,
            ctx.policy,
        )
        if found is None:
            layer.shadow_log.no_candidate()
            return
        record = found.record
        if record.body is not None:
            stored: Any = _orjson().loads(record.body)
        else:
            assert record.chunks is not None
            stored = _assemble(ctx.route, load_payloads(record.chunks))
        matched = answer_text(ctx.route, stored) == answer_text(ctx.route, response)
        layer.shadow_log.record(
            ShadowObservation(
                score=candidate.score,
                would_serve=candidate.served,
                vetoed=candidate.veto is not None or not getattr(candidate, "verified", True),
                matched=matched,
            )
        )

    # --- misses ----------------------------------------------------------------------------------

    async def _miss(
        self,
        ctx: _Context,
        fallback: _Found | None,
        fallback_read: tuple[int | None, tuple[int, ...]],
    ) -> LLMResponse:
        """Answer from upstream: join the identical call in flight, or make one.

        A call launched before an invalidation (or during one) is not joined: its answer may be
        what the invalidation announced was out of date, which is why it will not be stored
        either (see :meth:`_settle_after_replies`). This request makes its own call, which takes
        the old one's place in the table. Likewise the stale ``fallback`` (stale-if-error) is
        served only if no invalidation ran since it was read (``fallback_read``). Invalidations
        heard from other instances count for both.
        """
        storage = _flight_key(ctx.key)
        flight = self._flights.get(storage) if ctx.decision.lookup else None
        if flight is not None and not self._joinable(flight.epoch, flight.heard):
            flight = None
        if flight is not None:
            outcome = CacheStatus.COALESCED
            flight.followers += 1
            flight.store = flight.store or ctx.decision.store
            if ctx.decision.store:
                flight.controls = _merge_controls(flight.controls, ctx)
            self._observer.request_coalesced(ctx.route.value)
        else:
            outcome = CacheStatus.MISS if ctx.decision.lookup else CacheStatus.BYPASS
            flight = self._launch(ctx, register=ctx.decision.lookup or ctx.decision.store)
        flight.subscribe()
        handed_over = False
        try:
            await flight.wait_started()
            if outcome is CacheStatus.COALESCED and _refused_another(
                flight.status, flight.caller, ctx.caller
            ):
                # The call this request joined was refused for its caller's credential: this
                # request makes its own, with its own credential.
                flight.unsubscribe()
                flight = self._launch(ctx, register=False)
                flight.subscribe()
                outcome = CacheStatus.MISS
                await flight.wait_started()
            if flight.failed and fallback is not None and self._still(*fallback_read):
                return self._serve_record(
                    ctx.route,
                    found=fallback,
                    status=CacheStatus.STALE,
                    stream=ctx.stream,
                    want_usage=ctx.want_usage,
                    started=ctx.started,
                )
            # X-Cache-Key is always the storage key (what invalidate_key takes), never the flight
            # key, which on a prefix route is "slot#digest".
            error = _error_response(flight, outcome, ctx.key.storage_key)
            if error is not None:
                self._served(ctx, outcome)
                return error
            if ctx.stream:
                handed_over = True
                response = LLMResponse(
                    status=flight.status or 200,
                    cache=outcome,
                    media_type=EVENT_STREAM,
                    stream=self._follow(flight, ctx),
                    key=ctx.key.storage_key,
                    upstream_headers=flight.headers,
                )
                self._served(ctx, outcome)
                return response
            await flight.wait_done()
            response = self._whole(flight, ctx, outcome)
            self._served(ctx, outcome)
            return response
        finally:
            if not handed_over:
                flight.unsubscribe()

    def _served(self, ctx: _Context, outcome: CacheStatus) -> None:
        self._observer.request_served(
            ctx.route.value, outcome.value.lower(), None, self._timer() - ctx.started
        )

    def _whole(self, flight: Flight, ctx: _Context, outcome: CacheStatus) -> LLMResponse:
        """The complete body of a finished flight, for a client that did not ask to stream."""
        storage = ctx.key.storage_key
        body: bytes
        if not flight.sse:
            if flight.error is not None or flight.body is None:
                return _upstream_failure(flight.error, outcome, storage)
            body = flight.body
        else:
            if flight.error is not None or not flight.terminal:
                error = flight.error or UpstreamError("the upstream stream ended before its end")
                return _upstream_failure(error, outcome, storage)
            try:
                body = _orjson().dumps(_assemble(ctx.route, load_payloads(flight.events)))
            except UpstreamError as exc:
                return _upstream_failure(exc, outcome, storage)
        return LLMResponse(
            status=flight.status or 200,
            cache=outcome,
            body=body,
            key=storage,
            upstream_headers=flight.headers,
        )

    async def _follow(self, flight: Flight, ctx: _Context) -> AsyncIterator[bytes]:
        """A client's copy of a flight's stream, from the first event, as fast as it arrives."""
        strip = ctx.route in _USAGE_STREAM_ROUTES and not ctx.want_usage
        sent = 0
        try:
            while True:
                available = len(flight.events)
                if sent < available:
                    if strip:
                        payloads = [_strip_usage(p) for p in flight.events[sent:available]]
                        out = b"".join(encode_event(p) for p in payloads if p is not None)
                    else:
                        out = b"".join(flight.frames[sent:available])
                    sent = available
                    if out:
                        yield out
                    continue
                if flight.done:
                    break
                await flight.changed()
            tail = self._stream_tail(flight, ctx)
            if tail:
                yield tail
        finally:
            flight.unsubscribe()

    def _stream_tail(self, flight: Flight, ctx: _Context) -> bytes:
        """What ends a client's stream once the flight is over: [DONE], or an error event."""
        if flight.sse:
            if flight.error is None and flight.terminal:
                return b"" if ctx.route is Route.RESPONSES else encode_event(DONE)
            reason = (
                str(flight.error)
                if flight.error is not None
                else "the upstream stream ended before its terminal event"
            )
            return _stream_error(ctx.route, reason)
        # The upstream answered a stream request with a plain body: convert it.
        if flight.error is not None or flight.body is None:
            return _stream_error(ctx.route, str(flight.error or "no response from upstream"))
        try:
            obj = _orjson().loads(flight.body)
            chunks = _disassemble(ctx.route, obj, include_usage=ctx.want_usage)
        except (UpstreamError, ValueError) as exc:
            return _stream_error(ctx.route, f"the upstream answer is not valid: {exc}")
        dumps = _orjson().dumps
        return b"".join(sse_frames(ctx.route, [dumps(c) for c in chunks]))

    # --- upstream calls --------------------------------------------------------------------------

    def _launch(self, ctx: _Context, *, register: bool, detached: bool = False) -> Flight:
        storage = _flight_key(ctx.key)
        flight = Flight(storage, store=ctx.decision.store, detached=detached)
        flight.generation = self._generation()  # the answer is fetched from here on
        flight.epoch = self._epoch
        flight.heard = self.tiers.mark()
        flight.caller = ctx.caller
        flight.controls = ctx if ctx.decision.store else None
        if register:
            self._flights[storage] = flight
        task = asyncio.get_running_loop().create_task(self._fly(flight, ctx))
        flight.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return flight

    async def _fly(self, flight: Flight, ctx: _Context) -> None:
        try:
            await self._fetch(flight, ctx)
            # Registered before the flight leaves the table below (no await in between), so a
            # request for this key finds either the flight or the pending write. Under the
            # storage key, not the flight key: that is what requests and invalidate_key wait on
            # (on a prefix route the flight key is "slot#digest").
            keys = (ctx.key.storage_key,) if flight.store and _may_store(flight) else ()
            # The record is dated when the answer arrived, not when the write gets its turn.
            answered = self._clock()
            # An invalidation here that ran (even in part) while the answer was being fetched may
            # predate it: storing it would bring back what was invalidated. Decided now, when the
            # write is scheduled: one starting later waits for this write and deletes after it
            # (PendingWrites.settle_current). Other instances' invalidations cannot wait for it:
            # the write itself checks those, when it is made (TierChain.set's ``since``).
            invalidated = not self._unchanged(flight.generation)
            self._pending.schedule(
                keys, self._settle_after_replies(flight, ctx, answered, invalidated)
            )
        except asyncio.CancelledError:
            flight.finish(UpstreamError("the request was abandoned"))
            if flight.store:
                self._observer.not_stored(ctx.route.value, "abandoned")
            raise
        except Exception as exc:  # a bug must not leave subscribers waiting forever
            logger.exception("unexpected error in an upstream call")
            flight.finish(UpstreamError(f"internal error: {exc!r}"))
        finally:
            if self._flights.get(flight.key) is flight:
                del self._flights[flight.key]

    async def _fetch(self, flight: Flight, ctx: _Context) -> None:
        route = ctx.route.value
        t0 = flight.sent_at = self._timer()
        try:
            reply = await self.upstream.post(
                route_path(ctx.route), ctx.upstream_body, ctx.upstream_headers
            )
        except UpstreamError as exc:
            kind = "timeout" if isinstance(exc, UpstreamTimeoutError) else "transport"
            self._observer.upstream_called(route, self._timer() - t0, None, kind)
            flight.finish(exc)
            return
        try:
            status = reply.status
            self._observer.upstream_called(
                route, self._timer() - t0, status, "status" if status >= 400 else ""
            )
            flight.headers = dict(reply.headers.items())
            if status >= 400:
                flight.body = await _read_capped(reply, _MAX_ERROR_BODY)
                flight.status = status
                flight.finish()
                return
            flight.status = status
            content_type = reply.headers.get("content-type", "")
            if ctx.stream and content_type.startswith(EVENT_STREAM):
                flight.sse = True
                flight.begin()
                await self._record_stream(flight, ctx.route, reply)
            else:
                flight.body = await reply.read()
            flight.finish()
        except UpstreamError as exc:
            flight.finish(exc)
        finally:
            await reply.aclose()

    async def _record_stream(self, flight: Flight, route: Route, reply: UpstreamReply) -> None:
        decoder = SSEDecoder(self._max_event_bytes)
        responses = route is Route.RESPONSES
        async for data in reply.iter_bytes():
            events = decoder.feed(data)
            if not events:
                continue
            arrived = self._timer()
            for event in events:
                if event.data == DONE:
                    flight.terminal = True
                    continue
                name = event.event
                if responses and name is None:
                    name = _event_type(event.data)
                flight.events.append(event.data)
                flight.arrivals.append(arrived)
                flight.frames.append(encode_event(event.data, name))
                if responses and name in _TERMINAL_RESPONSE_EVENTS:
                    flight.terminal = True
            flight.wake()

    async def _settle_after_replies(
        self, flight: Flight, ctx: _Context, answered: float, invalidated: bool
    ) -> None:
        """:meth:`_settle`, once the clients' answers are on their way; failures are counted."""
        try:
            await _after_replies()
            await self._settle(flight, ctx, answered, invalidated)
        except Exception:  # the client has its answer; a failed write must not reach it
            logger.exception("could not store an answer")
            if flight.store:
                self._observer.not_stored(ctx.route.value, "write-error")

    async def _settle(
        self, flight: Flight, ctx: _Context, answered: float, invalidated: bool
    ) -> None:
        """After a flight: count what followers saved, and store the answer if it may be.

        ``invalidated``: an invalidation ran here while the upstream call was in flight (see
        :meth:`_fly`)."""
        if flight.error is not None or flight.status is None or not 200 <= flight.status < 300:
            if flight.store:
                self._observer.not_stored(ctx.route.value, "upstream-error")
            return
        if flight.sse and not flight.terminal:
            if flight.store:
                self._observer.not_stored(ctx.route.value, "truncated")
            return
        try:
            if flight.sse:
                response: Any = _assemble(ctx.route, load_payloads(flight.events))
            else:
                response = _orjson().loads(flight.body or b"")
        except (UpstreamError, ValueError):
            if flight.store:
                self._observer.not_stored(ctx.route.value, "malformed")
            return
        if not isinstance(response, dict):
            if flight.store:
                self._observer.not_stored(ctx.route.value, "malformed")
            return
        model = response.get("model")
        model = model if isinstance(model, str) else str(ctx.body.get("model", ""))
        usage = response.get("usage")
        usage_flat = flat_usage(usage) if isinstance(usage, Mapping) else None
        # An answer without usage (a stream without include_usage) is still counted: the context
        # cache estimates its prompt, tokenising only the turns it has not seen before.
        billed = usage_flat if usage_flat is not None else estimate_usage(ctx.route, ctx.body)
        self._observer.upstream_usage(ctx.route.value, model, billed)
        for _ in range(flight.followers):
            self._observer.tokens_saved(ctx.route.value, model, usage_flat)
        if ctx.shadow is not None:
            try:
                await self._observe_shadow(ctx, response)
            except Exception as exc:
                logger.warning("could not compare a shadow semantic answer: %s", exc)
        if not flight.store:
            return
        reason = storable(ctx.route, response)
        if reason is not None:
            self._observer.not_stored(ctx.route.value, reason)
            return
        if invalidated:
            self._observer.not_stored(ctx.route.value, "invalidated")
            return
        # Stored with the controls of a request that asked for storing (the leader may have
        # said no-store while a coalesced follower did not): see _merge_controls.
        store_ctx: _Context = flight.controls if isinstance(flight.controls, _Context) else ctx
        record = await self._write(
            store_ctx.key,
            store_ctx.route,
            store_ctx.policy,
            store_ctx.directives,
            model=model,
            usage=usage_flat,
            body=None if flight.sse else flight.body,
            chunks=tuple(flight.events) if flight.sse else None,
            now=answered,
            gaps=_gaps(flight) if flight.sse else None,
            since=flight.heard,
        )
        if record is not None:
            await self._index_answer(store_ctx, record)

    async def _write(
        self,
        key: CacheKey,
        route: Route,
        policy: RoutePolicy,
        directives: Directives,
        *,
        model: str,
        usage: Mapping[str, int] | None,
        body: bytes | None,
        chunks: tuple[bytes, ...] | None,
        now: float | None = None,
        gaps: tuple[float, ...] | None = None,
        since: tuple[int, ...] | None = None,
    ) -> Record | None:
        """Sign and store an answer; the record if a tier kept it, else ``None`` (counted).

        ``since``: the ``TierChain.mark`` taken when the answer's upstream call started, so that
        an invalidation another instance made since, if it concerns this answer, stops the write.
        """
        if now is None:
            now = self._clock()
        ttl = directives.ttl if directives.ttl is not None else policy.ttl
        expires_at = None if ttl is None else now + ttl
        record = Record(
            key=key.storage_key,
            fingerprint=key.digest,
            route=route.value,
            model=model,
            created_at=now,
            expires_at=expires_at,
            namespace=key.namespace,
            tags=directives.tags,
            body=body,
            chunks=chunks,
            usage=usage,
            gaps=gaps,
        )
        entry = TierEntry(
            self.codec.encode(record),
            # Tiers drop an entry at its expiry; keep it for the stale window beyond the record's.
            expires_at=None if expires_at is None else expires_at + policy.stale_window,
            tags=directives.tags,
            namespace=key.namespace,
        )
        try:
            stored = await self.tiers.set(key.storage_key, entry, since=since)
        except TierError as exc:
            self._verified.discard(key.storage_key)
            logger.warning("could not store an answer: %s", exc)
            self._observer.not_stored(route.value, "tier-error")
            return None
        if not stored:
            self._verified.discard(key.storage_key)
            self._observer.not_stored(route.value, "declined")
            return None
        # We signed this record ourselves: the in-process tier hands back this very entry, whose
        # bytes need no verifying. A slower tier's copy is a new object and is verified as read.
        self._verified.put(key.storage_key, entry, record)
        return record

    def _revalidate(
        self,
        route: Route,
        *,
        policy: RoutePolicy,
        body: dict[str, Any],
        directives: Directives,
        decision: Decision,
        key: CacheKey,
        request: LLMRequest,
    ) -> None:
        """Refresh a stale entry in the background (one refresh per key at a time)."""
        if self._closed or _flight_key(key) in self._flights or not decision.store:
            return
        plain = {k: v for k, v in body.items() if k not in ("stream", "stream_options")}
        ctx = _Context(
            route=route,
            policy=policy,
            body=plain,
            directives=directives,
            decision=decision,
            key=key,
            stream=False,
            want_usage=False,
            upstream_body=_orjson().dumps(plain),
            upstream_headers=_upstream_headers(request),
            started=self._timer(),
        )
        self._launch(ctx, register=True, detached=True)

    def _upstream_body(
        self, request: LLMRequest, forward: Mapping[str, Any], *, changed: bool
    ) -> bytes:
        if request.raw is not None and not changed and "cache" not in request.body:
            return request.raw
        body: bytes = _orjson().dumps(forward)
        return body

    # --- embeddings ------------------------------------------------------------------------------

    async def _embeddings(
        self,
        request: LLMRequest,
        *,
        body: dict[str, Any],
        directives: Directives,
        tenant: str,
        namespace: str,
        policy: RoutePolicy,
        started: float,
        version: str,
        caller: str,
    ) -> LLMResponse:
        route = Route.EMBEDDINGS
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise RequestError('an embeddings request needs a "model" string')
        items = _embedding_items(body.get("input"))
        decision = decide(route, body, directives, policy.mode)
        headers = _upstream_headers(request)
        if not (decision.lookup or decision.store):
            raw = self._upstream_body(request, body, changed=False)
            answer = await self._embeddings_upstream(raw, headers, CacheStatus.BYPASS)
            self._observer.request_served(route.value, "bypass", None, self._timer() - started)
            if isinstance(answer, LLMResponse):
                return answer
            return LLMResponse(
                status=200,
                cache=CacheStatus.BYPASS,
                body=_orjson().dumps(answer[0]),
                upstream_headers=answer[1],
            )

        keys = [
            embedding_input_key(
                model, item, tenant=tenant, namespace=namespace, extra=body, version=version
            )
            for item in items
        ]
        unique: dict[str, tuple[CacheKey, str | list[int]]] = {}
        for key, item in zip(keys, items, strict=True):
            unique.setdefault(key.storage_key, (key, item))
        results: dict[str, _Item] = {}
        if decision.lookup:
            for storage, (key, _item) in unique.items():
                if storage in self._pending:
                    await self._pending.wait(storage)
                found = await self._find(key, directives, policy)
                if found is None or found.freshness is not _Freshness.FRESH:
                    continue
                item_result = _item_from_record(found, self._clock())
                if item_result is not None:
                    results[storage] = item_result

        waits: dict[str, tuple[asyncio.Future[_Item], str]] = {}
        own: list[str] = []
        for storage in unique:
            if storage in results:
                continue
            pending = self._item_flights.get(storage) if decision.lookup else None
            if pending is not None and self._joinable(pending[1], pending[2]):
                waits[storage] = (pending[0], pending[3])
            else:  # nobody fetches it, or the call began before an invalidation: see _miss
                own.append(storage)

        async def fetch(storages: list[str]) -> Mapping[str, str] | LLMResponse:
            """Fetch ``storages`` into ``results``; the upstream's headers, or the answer to give.

            In a task of its own, as a completion's flight: the requests waiting for these
            items must not lose them when this client leaves (or its caller times out).
            """
            fetching = asyncio.get_running_loop().create_task(
                self._fetch_items(
                    request,
                    body=body,
                    unique=unique,
                    own=storages,
                    directives=directives,
                    policy=policy,
                    decision=decision,
                    headers=headers,
                    caller=caller,
                )
            )
            self._tasks.add(fetching)
            fetching.add_done_callback(self._tasks.discard)
            fetched = await asyncio.shield(fetching)
            if isinstance(fetched, LLMResponse):
                self._observer.request_served(route.value, "miss", None, self._timer() - started)
                return fetched
            results.update(fetched[0])
            return fetched[1]

        upstream_headers: Mapping[str, str] = {}
        if own:
            headers_or_error = await fetch(own)
            if isinstance(headers_or_error, LLMResponse):
                return headers_or_error
            upstream_headers = headers_or_error
        refused: list[str] = []
        for storage, (future, made_by) in waits.items():
            self._observer.request_coalesced(route.value)
            try:
                results[storage] = await asyncio.shield(future)
            except _ItemFailureError as exc:
                if not _refused_another(exc.response.status, made_by, caller):
                    return exc.response
                refused.append(storage)  # refused for another credential: fetched with ours
        if refused:
            headers_or_error = await fetch(refused)
            if isinstance(headers_or_error, LLMResponse):
                return headers_or_error
            upstream_headers = upstream_headers or headers_or_error
            own.extend(refused)

        if own:
            outcome = CacheStatus.MISS
        elif waits:
            outcome = CacheStatus.COALESCED
        else:
            outcome = CacheStatus.HIT
        ordered = [results[key.storage_key] for key in keys]
        tokens = sum(r.tokens for r in ordered)
        saved_tokens = sum(results[s].tokens for s in unique if s not in own)
        hit_tiers = [r.tier for r in ordered if r.tier]
        response_model = next((r.model for r in ordered if r.model), model)
        payload = {
            "object": "list",
            "data": [
                {"object": "embedding", "index": index, "embedding": r.embedding}
                for index, r in enumerate(ordered)
            ],
            "model": response_model,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        if saved_tokens:
            self._observer.tokens_saved(
                route.value,
                response_model,
                {"prompt_tokens": saved_tokens, "total_tokens": saved_tokens},
            )
        ages = [r.age for r in ordered if r.age is not None]
        self._observer.request_served(
            route.value,
            outcome.value.lower(),
            hit_tiers[0] if outcome is CacheStatus.HIT and hit_tiers else None,
            self._timer() - started,
        )
        return LLMResponse(
            status=200,
            cache=outcome,
            body=_orjson().dumps(payload),
            key=",".join(unique) if len(unique) <= _MAX_KEYS_IN_HEADER else None,
            age=int(max(ages)) if outcome is CacheStatus.HIT and ages else None,
            tier=hit_tiers[0] if outcome is CacheStatus.HIT and hit_tiers else None,
            upstream_headers=upstream_headers,
        )

    async def _fetch_items(
        self,
        request: LLMRequest,
        *,
        body: dict[str, Any],
        unique: Mapping[str, tuple[CacheKey, str | list[int]]],
        own: Sequence[str],
        directives: Directives,
        policy: RoutePolicy,
        decision: Decision,
        headers: Mapping[str, str],
        caller: str,
    ) -> tuple[dict[str, _Item], Mapping[str, str]] | LLMResponse:
        """Fetch the items nobody has in cache or in flight, in one upstream call; store them."""
        loop = asyncio.get_running_loop()
        generation = self._generation()  # the answer is fetched from here on: see _write_items
        heard = self.tiers.mark()
        futures: dict[str, asyncio.Future[_Item]] = {}
        for storage in own:
            future: asyncio.Future[_Item] = loop.create_future()
            futures[storage] = future
            self._item_flights[storage] = (future, self._epoch, heard, caller)
        try:
            # The client's own bytes go up when they ask for exactly these items in this order.
            everything = len(own) == len(_embedding_items(body.get("input")))
            if everything:
                raw = self._upstream_body(request, body, changed=False)
            else:
                raw = _orjson().dumps({**body, "input": [unique[s][1] for s in own]})
            outcome = await self._embeddings_upstream(
                raw, headers, CacheStatus.MISS, expect=len(own)
            )
            if isinstance(outcome, LLMResponse):
                for future in futures.values():
                    future.set_exception(_ItemFailureError(outcome))
                    future.exception()  # retrieved: waiters re-raise it, nobody else must log it
                return outcome
            parsed, upstream_headers = outcome
            sent = list(own)
            by_storage = dict(zip(sent, _vectors(parsed), strict=True))
            counts = _attribute(_prompt_tokens(parsed), [_weight(unique[s][1]) for s in sent])
            model = parsed.get("model")
            model = model if isinstance(model, str) else str(body.get("model"))
            fetched: dict[str, _Item] = {}
            for storage, tokens in zip(sent, counts, strict=True):
                result = _Item(embedding=by_storage[storage], tokens=tokens, model=model)
                fetched[storage] = result
                futures[storage].set_result(result)
            if decision.store:
                # Write-behind, as for completions: registered before the futures leave
                # _item_flights (in the finally below, with no await in between).
                writes = [(unique[s][0], fetched[s]) for s in sent]
                self._pending.schedule(
                    tuple(sent),
                    self._write_items(
                        writes,
                        model,
                        policy,
                        directives,
                        answered=self._clock(),
                        invalidated=not self._unchanged(generation),
                        heard=heard,
                    ),
                )
            return fetched, upstream_headers
        finally:
            for storage, future in futures.items():
                if not future.done():
                    future.set_exception(
                        _ItemFailureError(
                            _upstream_failure(
                                UpstreamError("the request fetching this input was abandoned"),
                                CacheStatus.COALESCED,
                                None,
                            )
                        )
                    )
                    future.exception()
                flying = self._item_flights.get(storage)
                if flying is not None and flying[0] is future:
                    del self._item_flights[storage]

    async def _write_items(
        self,
        items: Sequence[tuple[CacheKey, _Item]],
        model: str,
        policy: RoutePolicy,
        directives: Directives,
        *,
        answered: float,
        invalidated: bool,
        heard: tuple[int, ...],
    ) -> None:
        """Store fetched embeddings once the answer is on its way; failures are counted.

        Not stored if an invalidation ran here during the upstream call (``invalidated``) or, as
        the write finds out, one made by another instance since it started concerns an item
        (``heard``): as for a completion (see :meth:`_fly`), the answer may predate it.
        """
        try:
            await _after_replies()
            if invalidated:
                self._observer.not_stored(Route.EMBEDDINGS.value, "invalidated")
                return
            for key, result in items:
                await self._write(
                    key,
                    Route.EMBEDDINGS,
                    policy,
                    directives,
                    model=model,
                    usage={"prompt_tokens": result.tokens, "total_tokens": result.tokens},
                    body=_orjson().dumps(result.embedding),
                    chunks=None,
                    now=answered,
                    since=heard,
                )
        except Exception:
            logger.exception("could not store embeddings")
            self._observer.not_stored(Route.EMBEDDINGS.value, "write-error")

    async def _embeddings_upstream(
        self,
        body: bytes,
        headers: Mapping[str, str],
        outcome: CacheStatus,
        *,
        expect: int | None = None,
    ) -> tuple[dict[str, Any], dict[str, str]] | LLMResponse:
        """One call to the embeddings endpoint: the parsed answer and the upstream headers, or the
        error response to give."""
        route = Route.EMBEDDINGS.value
        t0 = self._timer()
        try:
            reply = await self.upstream.post(route_path(Route.EMBEDDINGS), body, headers)
        except UpstreamError as exc:
            kind = "timeout" if isinstance(exc, UpstreamTimeoutError) else "transport"
            self._observer.upstream_called(route, self._timer() - t0, None, kind)
            return _upstream_failure(exc, outcome, None)
        try:
            status = reply.status
            self._observer.upstream_called(
                route, self._timer() - t0, status, "status" if status >= 400 else ""
            )
            reply_headers = dict(reply.headers.items())
            if status >= 400:
                raw = await _read_capped(reply, _MAX_ERROR_BODY)
                return _status_failure(status, raw, reply_headers, outcome, None)
            raw = await reply.read()
        except UpstreamError as exc:
            return _upstream_failure(exc, outcome, None)
        finally:
            await reply.aclose()
        try:
            parsed = _orjson().loads(raw)
        except ValueError:
            parsed = None
        reason = storable(Route.EMBEDDINGS, parsed) if isinstance(parsed, dict) else "malformed"
        if reason is None and expect is not None and len(parsed["data"]) != expect:
            reason = "wrong number of embeddings"
        if reason is not None or not isinstance(parsed, dict):
            self._observer.not_stored(route, reason or "malformed")
            return _upstream_failure(
                UpstreamError(f"the upstream embeddings answer is unusable ({reason})"),
                outcome,
                None,
            )
        return parsed, reply_headers


# --- helpers ------------------------------------------------------------------------------------


def _positive(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > 0
    )


def _non_negative(value: Any) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )


async def _after_replies() -> None:
    """Wait until the answers just handed to clients are on the wire, and a little longer.

    Signing an answer and writing it to the tiers is loop work (and wakes the SQLite writer
    thread, which then competes for the GIL); none of it may delay an answer. Yielding two turns
    of the loop is enough to get this answer out (its clients write in the next turn, and the
    proxy's ``CoalescingTransport`` sends at the end of the one after), but not to stay out of
    the way of the *next* request: a client that asks again as soon as it has its answer (a
    sequential agent, a benchmark's closed loop) would find the loop signing and the writer thread
    holding the GIL while its own request waits to be parsed and forwarded. Measured with
    ``bench/proxy.py`` at concurrency 1, that overlap was about 1 ms of the latency a miss adds.
    So the store waits :data:`SETTLE_DELAY`: by then the next request, if any, has reached its
    upstream call and the loop is idle. Nothing is served stale meanwhile: a request for the same
    key waits for this write (``PendingWrites``) rather than calling upstream.
    """
    await asyncio.sleep(0)
    await asyncio.sleep(SETTLE_DELAY)


def _gaps(flight: Flight) -> tuple[float, ...] | None:
    """The seconds before each event of a recorded stream (the first: since the request went up),
    to the millisecond; ``None`` if the times are not all there."""
    if flight.sent_at is None or len(flight.arrivals) != len(flight.events):
        return None
    gaps: list[float] = []
    previous = flight.sent_at
    for arrived in flight.arrivals:
        gaps.append(round(max(0.0, arrived - previous), 3))
        previous = arrived
    return tuple(gaps)


def _paced_frames(
    route: Route, record: Record, want_usage: bool, max_gap: float
) -> tuple[list[bytes], list[float]]:
    """The SSE frames replaying ``record`` and the pause before each (capped at ``max_gap``).

    A chunk left out for this client (the usage chunk it did not ask for) passes its pause on to
    the next one, so the stream still takes the time it took.
    """
    assert record.chunks is not None
    assert record.gaps is not None
    strip = route in _USAGE_STREAM_ROUTES and not want_usage
    kept: list[bytes] = []
    pauses: list[float] = []
    carried = 0.0
    for payload, gap in zip(record.chunks, record.gaps, strict=True):
        carried += gap
        out = _strip_usage(payload) if strip else payload
        if out is None:
            continue
        kept.append(out)
        pauses.append(min(carried, max_gap))
        carried = 0.0
    frames = list(sse_frames(route, kept))
    pauses += [0.0] * (len(frames) - len(pauses))  # [DONE] follows the last chunk at once
    return frames, pauses


async def _paced(
    frames: Sequence[bytes], pauses: Sequence[float], sleep: Callable[[float], Awaitable[None]]
) -> AsyncIterator[bytes]:
    """Yield ``frames``, each after its pause."""
    for frame, pause in zip(frames, pauses, strict=True):
        if pause > 0:
            await sleep(pause)
        yield frame


def _merge_controls(stored: Any, ctx: _Context) -> _Context:
    """The controls a coalesced answer is stored with, once ``ctx`` (a request that asked for
    storing) joined a flight whose storing controls so far are ``stored`` (``None``: none yet).

    The rule: the first storing request's context, with the union of every storing request's tags
    (each may invalidate the shared answer by its own tag) and the smallest of their effective
    TTLs (directive, else policy; no request gets its answer kept longer than it asked).
    """
    if not isinstance(stored, _Context):
        return ctx
    ttls = [
        t
        for t in (
            stored.directives.ttl if stored.directives.ttl is not None else stored.policy.ttl,
            ctx.directives.ttl if ctx.directives.ttl is not None else ctx.policy.ttl,
        )
        if t is not None
    ]
    directives = dataclasses.replace(
        stored.directives,
        tags=stored.directives.tags | ctx.directives.tags,
        ttl=min(ttls) if ttls else None,
    )
    return dataclasses.replace(stored, directives=directives)


def _may_store(flight: Flight) -> bool:
    """Whether a finished flight's answer could be stored (the full check is in ``_settle``)."""
    if flight.error is not None or flight.status is None or not 200 <= flight.status < 300:
        return False
    return flight.terminal or not flight.sse


def _credential(headers: Mapping[str, str]) -> str | None:
    """The caller's credential: the bearer token, or an ``api-key`` / ``x-api-key`` header."""
    found: dict[str, str] = {}
    for name, value in headers.items():
        lower = name.lower()
        if lower in ("authorization", "api-key", "x-api-key"):
            found.setdefault(lower, value)
    auth = found.get("authorization")
    if auth:
        scheme, _, token = auth.strip().partition(" ")
        return token.strip() if scheme.lower() == "bearer" and token.strip() else auth.strip()
    return found.get("api-key") or found.get("x-api-key") or None


def _upstream_headers(request: LLMRequest) -> dict[str, str]:
    if request.forward_headers is not None:
        headers = {k.lower(): v for k, v in request.forward_headers.items()}
    else:
        headers = {
            k.lower(): v
            for k, v in request.headers.items()
            if k.lower() in ("authorization", "api-key", "x-api-key")
        }
    headers.pop("content-length", None)
    headers["content-type"] = JSON
    return headers


def _replay(route: Route, record: Record, *, stream: bool, want_usage: bool) -> tuple[bytes, str]:
    """The body and media type that replay ``record`` for a request that did or did not stream."""
    orjson = _orjson()
    if stream:
        if record.chunks is not None:
            payloads: Iterable[bytes] = record.chunks
            if route in _USAGE_STREAM_ROUTES and not want_usage:
                payloads = [p for p in map(_strip_usage, record.chunks) if p is not None]
        else:
            obj = orjson.loads(record.body or b"")
            payloads = [orjson.dumps(c) for c in _disassemble(route, obj, include_usage=want_usage)]
        return b"".join(sse_frames(route, payloads)), EVENT_STREAM
    if record.body is not None:
        return record.body, JSON
    assert record.chunks is not None
    body: bytes = orjson.dumps(_assemble(route, load_payloads(record.chunks)))
    return body, JSON


def _assemble(route: Route, objects: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    if route is Route.CHAT:
        return assemble_chat(objects)
    if route is Route.COMPLETIONS:
        return assemble_completion(objects)
    return assemble_response(objects)


def _disassemble(route: Route, obj: Any, *, include_usage: bool) -> list[dict[str, Any]]:
    if not isinstance(obj, Mapping):
        raise UpstreamError("a stored answer is not a JSON object")
    if route is Route.CHAT:
        return chat_chunks(obj, include_usage=include_usage)
    if route is Route.COMPLETIONS:
        return completion_chunks(obj, include_usage=include_usage)
    return response_events(obj)


def _strip_usage(payload: bytes) -> bytes | None:
    """A chunk as a client that did not ask for usage would get it (``None``: not at all)."""
    if b'"usage"' not in payload:
        return payload
    orjson = _orjson()
    try:
        obj = orjson.loads(payload)
    except ValueError:
        return payload
    if not isinstance(obj, dict) or "usage" not in obj:
        return payload
    if obj["usage"] is not None:
        # The usage-only chunk that closes the stream; any other chunk keeps what it says.
        return None if obj.get("choices") == [] else payload
    del obj["usage"]
    stripped: bytes = orjson.dumps(obj)
    return stripped


def _event_type(data: bytes) -> str | None:
    try:
        kind = _orjson().loads(data).get("type")
    except (ValueError, AttributeError):
        return None
    return kind if isinstance(kind, str) else None


def _stream_error(route: Route, message: str) -> bytes:
    """An error event the OpenAI SDK raises as ``APIError`` mid-stream."""
    error = {"message": message, "type": "upstream_error", "param": None, "code": "stream_broken"}
    dumps = _orjson().dumps
    if route is Route.RESPONSES:
        return encode_event(dumps({"type": "error", "error": error, **error}), "error")
    return encode_event(dumps({"error": error}))


def _refused_another(status: int | None, made_by: str, caller: str) -> bool:
    """Whether an upstream ``status`` for a call made by ``made_by`` is no answer for ``caller``.

    A 4xx may be about the credential that made the call rather than the request: a revoked key,
    a rate limit, a spent quota, a model its organisation may not use. Only with entries shared
    across tenants do requests with different credentials share a call (``made_by`` and
    ``caller`` are tenant ids of the credentials); one that joined such a call makes its own.
    """
    return made_by != caller and status is not None and 400 <= status < 500


def _error_response(flight: Flight, outcome: CacheStatus, key: str) -> LLMResponse | None:
    """The error to give for a flight that failed before its response started, else ``None``."""
    if flight.status is None:
        return _upstream_failure(flight.error or UpstreamError("no response"), outcome, key)
    if flight.status >= 400:
        return _status_failure(flight.status, flight.body or b"", flight.headers, outcome, key)
    return None


def _upstream_failure(
    error: UpstreamError | None, outcome: CacheStatus, key: str | None
) -> LLMResponse:
    if isinstance(error, UpstreamTimeoutError):
        status, kind, code = 504, "upstream_timeout", "upstream_timeout"
    else:
        status, kind, code = 502, "upstream_error", "upstream_unavailable"
    message = str(error) if error is not None else "the upstream failed"
    return LLMResponse(
        status=status, cache=outcome, body=error_body(message, type=kind, code=code), key=key
    )


def _status_failure(
    status: int, raw: bytes, headers: Mapping[str, str], outcome: CacheStatus, key: str | None
) -> LLMResponse:
    """An upstream error status, passed on; wrapped in the OpenAI error shape if it is not in it."""
    try:
        parsed = _orjson().loads(raw)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
        body = raw
    else:
        text = raw[:500].decode("utf-8", "replace")
        body = error_body(
            f"the upstream answered {status}: {text}",
            type="upstream_error" if status >= 500 else "invalid_request_error",
            code=status,
        )
    return LLMResponse(status=status, cache=outcome, body=body, key=key, upstream_headers=headers)


async def _read_capped(reply: UpstreamReply, limit: int) -> bytes:
    parts: list[bytes] = []
    size = 0
    async for chunk in reply.iter_bytes():
        parts.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(parts)[:limit]


def _embedding_items(raw: Any) -> list[str | list[int]]:
    """The input items of an embeddings request: a string, token ids, or a list of either."""
    if isinstance(raw, str):
        return [raw]
    if not isinstance(raw, list) or not raw:
        raise RequestError('"input" must be a string, a list of strings, or token ids')
    if all(isinstance(t, int) and not isinstance(t, bool) for t in raw):
        return [list(raw)]
    items: list[str | list[int]] = []
    for item in raw:
        if isinstance(item, str):
            items.append(item)
        elif isinstance(item, list) and all(
            isinstance(t, int) and not isinstance(t, bool) for t in item
        ):
            items.append(list(item))
        else:
            raise RequestError('"input" items must all be strings or all lists of token ids')
    return items


def _item_from_record(found: _Found, now: float) -> _Item | None:
    record = found.record
    if record.body is None:
        return None
    try:
        embedding = _orjson().loads(record.body)
    except ValueError:
        return None
    tokens = (record.usage or {}).get("prompt_tokens", 0)
    return _Item(
        embedding=embedding,
        tokens=tokens,
        model=record.model,
        age=record.age(now),
        tier=found.tier,
    )


def _vectors(response: Mapping[str, Any]) -> list[Any]:
    data = sorted(response["data"], key=lambda d: d.get("index", 0))
    return [d["embedding"] for d in data]


def _prompt_tokens(response: Mapping[str, Any]) -> int:
    usage = response.get("usage")
    if isinstance(usage, Mapping):
        value = usage.get("prompt_tokens", usage.get("total_tokens"))
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return 0


def _weight(item: str | list[int]) -> int:
    return max(1, len(item))


def _attribute(total: int, weights: Sequence[int]) -> list[int]:
    """Split ``total`` in proportion to ``weights`` into integers that add up to it exactly.

    Token ids are exact when the total equals their count; text gets a proportional share with the
    remainder going to the largest fractional parts.

    >>> _attribute(10, [1, 1, 2])
    [2, 3, 5]
    """
    if not weights:
        return []
    if total == sum(weights):
        return list(weights)
    whole = sum(weights)
    shares = [total * w / whole for w in weights]
    counts = [int(s) for s in shares]
    remainder = total - sum(counts)
    by_fraction = sorted(range(len(weights)), key=lambda i: (counts[i] - shares[i], -i))
    for i in by_fraction[:remainder]:
        counts[i] += 1
    return counts
