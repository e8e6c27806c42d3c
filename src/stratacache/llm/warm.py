"""Pre-warming: replay a log of requests through an :class:`~stratacache.llm.cache.LLMCache`.

``strata warm LOG.jsonl`` is the shell; this module is the logic. Each line of the log is one JSON
object, in one of these shapes:

* a bare OpenAI request body, ``{"model": ..., "messages": [...]}``. The route is given
  (``--route``) or inferred: ``messages`` is a chat completion, ``prompt`` a legacy completion, and
  ``input`` is an embeddings request when the body has ``dimensions`` or ``encoding_format``, when
  the input is token ids, or when the model's name contains ``embed``; otherwise a Responses API
  request;
* an envelope, ``{"request": {...}, "response": {...}, "route": ..., "headers": {...}}``, where
  ``route`` may also be a ``url`` or ``path`` (``/v1/chat/completions``) and every member but the
  request is optional. OpenAI Batch API input lines (``{"custom_id", "method", "url", "body"}``)
  are envelopes too;
* with a ``response``: a request+response pair, *imported* without calling the upstream. The
  response is the JSON body the provider returned, a Batch API ``{"status_code", "body"}``, or the
  list of stream chunks (events) it streamed, which are assembled into one body.

Every request goes through :meth:`LLMCache.handle` as a non-streamed request (``stream`` is not part
of the key, so the entry also answers streamed requests), so the keys, tenants, directives
(``headers`` and a ``cache`` member), admission policy and validation are exactly the proxy's. An
imported answer reaches the cache through :class:`RecordedUpstream`, which answers the call the
cache makes with the recorded body instead of the network; the cache does not know the difference,
so an imported answer is checked and signed like a fetched one.

Requests the policy would not store (sampled, ``no-store``, a route in ``never`` mode) are not sent
at all: warming must not spend upstream calls on answers it cannot keep. A request already cached
is answered from the cache and counted as such, so an interrupted warm-up can simply be run again.

:func:`plan` is the dry run: the same parsing, directives, admission policy and (for imports)
:func:`~stratacache.llm.policy.storable` check, with nothing read, written or sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from stratacache.errors import RequestError, StrataError, UpstreamError
from stratacache.llm.cache import (
    CacheStatus,
    LLMCache,
    LLMRequest,
    RoutePolicy,
    Upstream,
    UpstreamReply,
    route_path,
)
from stratacache.llm.keys import Route, canonical_json, request_key, tenant_for
from stratacache.llm.policy import decide, parse_directives, storable
from stratacache.llm.rules import CacheRules
from stratacache.llm.streams import assemble_chat, assemble_completion, assemble_response

__all__ = [
    "RecordedReply",
    "RecordedUpstream",
    "Rejected",
    "WarmItem",
    "WarmOutcome",
    "WarmReport",
    "dry_run",
    "infer_route",
    "parse_entry",
    "plan",
    "read_log",
    "summarize",
    "warm",
]

STORED = "stored"
"""The outcome of a request whose answer was stored (or, in a dry run, would be)."""
CACHED = "already-cached"
"""The outcome of a request the cache already answered (or a repeat of an earlier line)."""

_EXAMPLES = 10  # rejected lines quoted in a report
_CONFIRM_EVERY = 10_000  # answers checked in the store per batch (bounds memory on huge logs)
_EMBEDDING_HINTS = frozenset({"dimensions", "encoding_format"})
_RESPONSES_HINTS = frozenset(
    {"instructions", "previous_response_id", "reasoning", "text", "max_output_tokens", "tools"}
)
_STREAM_FIELDS = ("stream", "stream_options")
# Longest path first: "/chat/completions" also ends with "/completions".
_ROUTES_BY_PATH = sorted(Route, key=lambda r: len(route_path(r)), reverse=True)
# Tenants in a dry run only tell duplicates apart; any fixed secret does.
_DRY_RUN_SECRET = hashlib.sha256(b"stratacache warm dry run").digest()


def _orjson() -> Any:
    from stratacache.llm.keys import _orjson as load

    return load()


# --- log entries -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WarmItem:
    """One request from the log, ready to replay."""

    line: int
    """Its line number in the log (1-based)."""
    route: Route
    """The endpoint."""
    body: Mapping[str, Any]
    """The request body, without ``stream`` and ``stream_options``."""
    headers: Mapping[str, str] = field(default_factory=dict)
    """The request headers: the credential (which tenant the entry belongs to) and cache controls."""
    response: Mapping[str, Any] | None = None
    """The recorded answer to import (a complete, non-streamed body), or ``None`` to fetch it."""


@dataclass(frozen=True, slots=True)
class Rejected:
    """A log line that is not a request the cache can take."""

    line: int
    """Its line number in the log (1-based)."""
    reason: str
    """A short category: ``invalid-json``, ``not-an-object``, ``no-request``, ``unknown-route``,
    ``bad-headers``, ``bad-response``, ``recorded-error``."""
    detail: str
    """What exactly is wrong, for a human."""


@dataclass(frozen=True, slots=True)
class WarmOutcome:
    """What became of one line."""

    line: int
    """Its line number in the log."""
    outcome: str
    """:data:`STORED`, :data:`CACHED`, or why the answer is not (or would not be) cached."""


@dataclass(frozen=True, slots=True)
class WarmReport:
    """The totals of one warm-up (or of a dry run)."""

    dry_run: bool
    """Nothing was read, written or sent; :attr:`stored` says what *would* be stored."""
    lines: int
    """Log lines read (blank lines are not counted)."""
    stored: int
    """Requests whose answer was stored (dry run: would be)."""
    cached: int
    """Requests the cache already answered, or repeats of an earlier line."""
    not_cached: Mapping[str, int]
    """The other requests, counted by why they are not cached."""
    examples: tuple[Rejected, ...] = ()
    """The first few rejected lines, for the report."""


def infer_route(body: Mapping[str, Any]) -> Route:
    """The route a bare request body was meant for (see the module doc for the rules).

    >>> infer_route({"model": "m", "messages": []}).value
    'chat.completions'
    >>> infer_route({"model": "text-embedding-3-small", "input": "hi"}).value
    'embeddings'
    >>> infer_route({"model": "gpt-4o", "input": "hi"}).value
    'responses'
    """
    if "messages" in body:
        return Route.CHAT
    if "prompt" in body:
        return Route.COMPLETIONS
    if "input" not in body:
        raise RequestError('cannot tell the route: no "messages", "prompt" or "input"')
    if _EMBEDDING_HINTS & body.keys():
        return Route.EMBEDDINGS
    if _RESPONSES_HINTS & body.keys():
        return Route.RESPONSES
    raw = body["input"]
    if isinstance(raw, list) and raw and all(_token_ids(x) or _is_int(x) for x in raw):
        return Route.EMBEDDINGS
    model = body.get("model")
    if isinstance(model, str) and "embed" in model.lower():
        return Route.EMBEDDINGS
    return Route.RESPONSES


def parse_entry(
    text: str | bytes,
    *,
    line: int,
    route: Route | None = None,
    headers: Mapping[str, str] | None = None,
) -> WarmItem | Rejected:
    """Parse one log line into a :class:`WarmItem`, or say why it is :class:`Rejected`.

    ``route`` is used for lines that do not name one (instead of inferring it); ``headers`` are the
    defaults a line's own ``headers`` add to and override.
    """
    try:
        obj = _orjson().loads(text)
    except ValueError as exc:
        return Rejected(line, "invalid-json", str(exc))
    if not isinstance(obj, dict):
        return Rejected(line, "not-an-object", f"a line must be a JSON object, not {_kind(obj)}")
    envelope = isinstance(obj.get("request"), dict) or (
        isinstance(obj.get("body"), dict) and bool({"url", "path", "route", "method"} & obj.keys())
    )
    if not envelope and "response" in obj:
        return Rejected(line, "no-request", 'a line with a "response" needs its "request" too')
    body: Any = obj.get("request", obj.get("body")) if envelope else obj
    if not isinstance(body, dict):
        return Rejected(line, "no-request", '"request" must be a JSON object')
    merged = dict(headers or {})
    if envelope and obj.get("headers") is not None:
        extra = obj["headers"]
        if not isinstance(extra, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in extra.items()
        ):
            return Rejected(line, "bad-headers", '"headers" must map names to strings')
        lower = {k.lower() for k in extra}
        merged = {k: v for k, v in merged.items() if k.lower() not in lower}
        merged.update(extra)
    try:
        chosen = _envelope_route(obj) if envelope else None
        chosen = chosen or route or infer_route(body)
    except RequestError as exc:
        return Rejected(line, "unknown-route", str(exc))
    response: Mapping[str, Any] | None = None
    if envelope and obj.get("response") is not None:
        recorded = _recorded_body(chosen, obj["response"])
        if isinstance(recorded, str):
            reason = "recorded-error" if recorded.startswith("status ") else "bad-response"
            return Rejected(line, reason, recorded)
        response = recorded
    plain = {k: v for k, v in body.items() if k not in _STREAM_FIELDS}
    return WarmItem(line=line, route=chosen, body=plain, headers=merged, response=response)


def read_log(
    lines: Iterable[str | bytes],
    *,
    route: Route | None = None,
    headers: Mapping[str, str] | None = None,
) -> Iterator[WarmItem | Rejected]:
    """Parse a JSONL log lazily, one entry per non-blank line (see :func:`parse_entry`)."""
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        yield parse_entry(text, line=number, route=route, headers=headers)


def _envelope_route(obj: Mapping[str, Any]) -> Route | None:
    named = obj.get("route")
    if named is None:
        named = obj.get("url", obj.get("path"))
    if named is None:
        return None
    if not isinstance(named, str):
        raise RequestError(f"the route must be a string, got {named!r}")
    with contextlib.suppress(ValueError):
        return Route(named)
    path = named.split("?", 1)[0].rstrip("/")
    for candidate in _ROUTES_BY_PATH:
        if path.endswith(route_path(candidate)):
            return candidate
    raise RequestError(f"not a cached route: {named!r} (known: {[r.value for r in Route]})")


def _recorded_body(route: Route, raw: Any) -> Mapping[str, Any] | str:
    """The recorded answer as one complete body, or a message saying why it cannot be used."""
    if isinstance(raw, dict) and "status_code" in raw and "body" in raw:  # Batch API output
        status = raw["status_code"]
        if not _is_int(status) or not 200 <= status < 300:
            return f"status {status!r}: the recorded call failed"
        raw = raw["body"]
    if isinstance(raw, list):
        if not raw or not all(isinstance(event, dict) for event in raw):
            return "a recorded stream must be a non-empty list of JSON objects"
        if route is Route.EMBEDDINGS:
            return "embeddings are never streamed"
        try:
            if route is Route.CHAT:
                return assemble_chat(raw)
            if route is Route.COMPLETIONS:
                return assemble_completion(raw)
            return assemble_response(raw)
        except (StrataError, KeyError, TypeError, ValueError) as exc:
            return f"the recorded stream does not assemble: {exc}"
    if not isinstance(raw, dict):
        return f'"response" must be a JSON object or a list of stream events, not {_kind(raw)}'
    return raw


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _token_ids(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(_is_int(t) for t in value)


# --- planning (the dry run, and the filter before a real run) ------------------------------------


def plan(
    item: WarmItem, policies: Mapping[Route, RoutePolicy], rules: CacheRules | None = None
) -> str:
    """Whether the cache would store ``item``'s answer: :data:`STORED`, or why not.

    ``policies`` and ``rules`` are the cache's (``cache.routes`` and ``cache.rules``, or a
    deployment's ``settings.routes`` and ``settings.cache_rules``). The reasons are the admission
    decision's (``nondeterministic``, ``never``, ``no-store``, ``no-cache,no-store``),
    ``invalid-request`` (bad cache controls), and for an imported answer
    :func:`~stratacache.llm.policy.storable`'s (``finish_reason:length``, ``refusal``, ...).
    """
    try:
        directives, body = parse_directives(item.headers, item.body)
    except RequestError:
        return "invalid-request"
    policy = policies.get(item.route) or RoutePolicy()
    if rules:
        namespace = directives.namespace or "default"
        policy = rules.policy_for(item.route, namespace, body, policy)
    decision = decide(item.route, body, directives, policy.mode)
    if not decision.store:
        return decision.reason
    if item.response is not None:
        reason = storable(item.route, item.response)
        if reason is not None:
            return reason
    return STORED


def _identity(item: WarmItem) -> str:
    """What makes two lines the same request in a dry run (the key, under a throwaway tenant)."""
    directives, body = parse_directives(item.headers, item.body)
    credential = next(
        (v for k, v in item.headers.items() if k.lower() in ("authorization", "api-key")), None
    )
    tenant = tenant_for(credential, secret=_DRY_RUN_SECRET)
    namespace = directives.namespace or "default"
    if item.route is Route.EMBEDDINGS:
        return hashlib.sha256(canonical_json([tenant, namespace, body])).hexdigest()
    return request_key(item.route, body, tenant=tenant, namespace=namespace).storage_key


# --- recorded answers ------------------------------------------------------------------------------


_RECORDED: ContextVar[WarmItem | None] = ContextVar("stratacache_warm_recorded", default=None)


class RecordedUpstream:
    """An :class:`~stratacache.llm.cache.Upstream` that answers with the recorded response of the
    item being warmed, and passes every other call to ``fallback``.

    The item travels in a context variable: the cache starts its upstream call in a task, which
    inherits the context of the :meth:`LLMCache.handle` call that started it, so concurrent imports
    never see each other's answers. An embeddings call for part of a recorded batch (the other
    inputs were already cached) gets just those inputs' vectors.
    """

    def __init__(self, fallback: Upstream | None) -> None:
        self.fallback = fallback

    async def post(self, path: str, body: bytes, headers: Mapping[str, str]) -> UpstreamReply:
        """Answer from the recorded response, or from ``fallback``."""
        item = _RECORDED.get()
        if item is None or item.response is None:
            if self.fallback is None:
                raise UpstreamError("no recorded answer for this request and no upstream")
            return await self.fallback.post(path, body, headers)
        answer: Mapping[str, Any] = item.response
        if item.route is Route.EMBEDDINGS:
            answer = _embeddings_subset(item, _orjson().loads(body))
        return RecordedReply(_orjson().dumps(answer))


def _embeddings_subset(item: WarmItem, sent: Mapping[str, Any]) -> Mapping[str, Any]:
    """The recorded embeddings answer cut down to the inputs the cache actually asked for."""
    recorded = item.response
    assert recorded is not None
    asked = _items(item.body.get("input"))
    wanted = _items(sent.get("input"))
    if asked == wanted:
        return recorded
    data = recorded.get("data")
    if not isinstance(data, list) or len(data) != len(asked):
        return recorded  # the cache rejects it as the wrong number of embeddings
    ordered = sorted(data, key=lambda d: d.get("index", 0) if isinstance(d, dict) else 0)
    by_input: dict[bytes, Any] = {}
    for value, entry in zip(asked, ordered, strict=True):
        by_input.setdefault(canonical_json(value), entry)
    out = []
    for index, value in enumerate(wanted):
        entry = by_input.get(canonical_json(value))
        if not isinstance(entry, dict):
            raise UpstreamError("the recorded answer has no embedding for an input asked for")
        out.append({**entry, "index": index})
    usage = recorded.get("usage")
    total = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    subset: dict[str, Any] = {**recorded, "data": out}
    if isinstance(total, int) and not isinstance(total, bool) and asked:
        share = total * len(wanted) // len(asked)
        subset["usage"] = {"prompt_tokens": share, "total_tokens": share}
    return subset


def _items(raw: Any) -> list[Any]:
    if isinstance(raw, str) or _token_ids(raw):
        return [raw]
    return list(raw) if isinstance(raw, list) else [raw]


class RecordedReply:
    """A complete 200 JSON reply held in memory, as :class:`~stratacache.llm.cache.UpstreamReply`
    (what an import answers with; also handy for in-process upstreams in benchmarks and tests)."""

    status = 200
    headers: Mapping[str, str] = {"content-type": "application/json"}

    def __init__(self, body: bytes) -> None:
        self._body = body

    async def iter_bytes(self) -> AsyncIterator[bytes]:
        yield self._body

    async def read(self) -> bytes:
        return self._body

    async def aclose(self) -> None:
        return None


# --- the run --------------------------------------------------------------------------------------


@dataclass
class _Tally:
    lines: int = 0
    stored: int = 0
    cached: int = 0
    not_cached: Counter[str] = field(default_factory=Counter)
    examples: list[Rejected] = field(default_factory=list)
    # Lines answered by a fresh upstream call (or import), to check once the stores are done.
    pending: list[tuple[int, tuple[str, ...]]] = field(default_factory=list)

    def count(self, outcome: str) -> None:
        if outcome == STORED:
            self.stored += 1
        elif outcome == CACHED:
            self.cached += 1
        else:
            self.not_cached[outcome] += 1

    def report(self, *, dry_run: bool) -> WarmReport:
        return WarmReport(
            dry_run=dry_run,
            lines=self.lines,
            stored=self.stored,
            cached=self.cached,
            not_cached=dict(self.not_cached.most_common()),
            examples=tuple(self.examples),
        )


class _Run:
    """The bookkeeping of one warm-up or dry run: what each line came to."""

    def __init__(
        self,
        policies: Mapping[Route, RoutePolicy],
        rules: CacheRules | None,
        *,
        fetch: bool,
        dry_run: bool,
        on_outcome: Callable[[WarmOutcome], None] | None,
    ) -> None:
        self.tally = _Tally()
        self._policies = policies
        self._rules = rules
        self._fetch = fetch
        self._dry_run = dry_run
        self._on_outcome = on_outcome
        self._seen: set[str] = set()

    def settle(self, line: int, outcome: str) -> None:
        self.tally.count(outcome)
        if self._on_outcome is not None:
            self._on_outcome(WarmOutcome(line, outcome))

    def admit(self, entry: WarmItem | Rejected) -> WarmItem | None:
        """Settle a line that is not to be sent; return the item if it is."""
        self.tally.lines += 1
        if isinstance(entry, Rejected):
            if len(self.tally.examples) < _EXAMPLES:
                self.tally.examples.append(entry)
            self.settle(entry.line, entry.reason)
            return None
        verdict = plan(entry, self._policies, self._rules)
        if verdict == STORED and entry.response is None and not self._fetch:
            verdict = "no-response"
        if verdict == STORED and self._dry_run:
            identity = _identity(entry)
            verdict = CACHED if identity in self._seen else STORED
            self._seen.add(identity)
        if verdict != STORED or self._dry_run:
            self.settle(entry.line, verdict)
            return None
        return entry


def dry_run(
    entries: Iterable[WarmItem | Rejected],
    policies: Mapping[Route, RoutePolicy],
    rules: CacheRules | None = None,
    *,
    fetch: bool = True,
    on_outcome: Callable[[WarmOutcome], None] | None = None,
) -> WarmReport:
    """What :func:`warm` would store, by :func:`plan`, with nothing read, written or sent.

    ``policies`` and ``rules`` are the cache's (``settings.routes`` and ``settings.cache_rules``). A line
    repeating an earlier request counts as already cached; whether the store already holds a
    request is not looked up.
    """
    run = _Run(policies, rules, fetch=fetch, dry_run=True, on_outcome=on_outcome)
    for entry in entries:
        run.admit(entry)
    return run.tally.report(dry_run=True)


async def warm(
    cache: LLMCache,
    entries: Iterable[WarmItem | Rejected],
    *,
    concurrency: int = 8,
    fetch: bool = True,
    on_outcome: Callable[[WarmOutcome], None] | None = None,
) -> WarmReport:
    """Replay ``entries`` (from :func:`read_log`) through ``cache`` and report what was stored.

    :param concurrency: requests handled at once (imports and upstream calls alike).
    :param fetch: send requests without a recorded response upstream; ``False``: skip them
        (``no-response``), so only imports happen.
    :param on_outcome: called once per line as it is settled (a progress bar). A fetched or
        imported answer is reported ``stored`` when the cache accepted it. Whether the tiers kept
        it is checked afterwards, every 10,000 answers and at the end; one they declined (or had
        already evicted by then) is counted in the report as ``not-kept``.

    While it runs, ``cache.upstream`` is wrapped in a :class:`RecordedUpstream` (other requests
    the cache serves meanwhile still reach the real upstream).
    """
    if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
        raise RequestError(f"concurrency must be an integer >= 1, got {concurrency!r}")
    run = _Run(cache.routes, cache.rules, fetch=fetch, dry_run=False, on_outcome=on_outcome)
    original = cache.upstream
    cache.upstream = RecordedUpstream(original)
    queue = iter(entries)

    async def worker() -> None:
        for entry in queue:  # one shared iterator: each line goes to exactly one worker
            item = run.admit(entry)
            if item is not None:
                run.settle(item.line, await _replay(cache, item, run.tally))
                if len(run.tally.pending) >= _CONFIRM_EVERY:
                    await cache.drain()
                    await _confirm(cache, run.tally)

    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        await cache.drain()
        await _confirm(cache, run.tally)
    finally:
        cache.upstream = original
    return run.tally.report(dry_run=False)


async def _replay(cache: LLMCache, item: WarmItem, tally: _Tally) -> str:
    token = _RECORDED.set(item)
    try:
        response = await cache.handle(
            LLMRequest(route=item.route, body=item.body, headers=item.headers)
        )
    except RequestError:
        return "invalid-request"
    finally:
        _RECORDED.reset(token)
    body = response.body
    if response.stream is not None:  # not asked for; drained so nothing is left open
        parts = [chunk async for chunk in response.stream]
        body = b"".join(parts)
    if response.cache in (CacheStatus.HIT, CacheStatus.STALE, CacheStatus.COALESCED):
        return CACHED
    if response.status >= 400:
        return f"upstream-{response.status}"
    try:
        parsed = _orjson().loads(body or b"")
    except ValueError:
        return "malformed"
    reason = storable(item.route, parsed) if isinstance(parsed, dict) else "malformed"
    if reason is not None:
        return reason
    if response.key:
        tally.pending.append((item.line, tuple(response.key.split(","))))
    return STORED


async def _confirm(cache: LLMCache, tally: _Tally) -> None:
    """Move answers the tiers did not keep (declined, or a tier error) from stored to not stored.

    Call it after :meth:`LLMCache.drain`, so every answer it checks has been written.
    """
    batch, tally.pending = tally.pending, []  # workers may add more while this one awaits
    for _line, keys in batch:
        for key in keys:
            try:
                found = await cache.tiers.lookup(key)
            except StrataError:
                found = None
            if found is None:
                tally.stored -= 1
                tally.not_cached["not-kept"] += 1
                break


def summarize(report: WarmReport) -> Sequence[tuple[str, int]]:
    """The report as ``(label, count)`` rows, the order a table shows them in."""
    stored = "would be stored" if report.dry_run else "stored"
    rows = [("lines", report.lines), (stored, report.stored), ("already cached", report.cached)]
    rows += [(f"not cached: {reason}", count) for reason, count in report.not_cached.items()]
    return rows
