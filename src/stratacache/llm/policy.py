"""What may be served from the cache and what may be stored into it.

Three questions, each answered by a pure function:

* :func:`parse_directives`: what did the caller ask for? (``Cache-Control``, ``X-Cache-*`` headers
  and the ``cache`` object in the JSON body)
* :func:`decide`: given the route's admission mode, may this request read the cache, and may its
  answer be written?
* :func:`storable`: is this particular response complete and good enough to keep?

When headers and the body both carry a directive, **the stricter one wins**, whichever side it is
on: ``no-cache`` and ``no-store`` apply if either side sets them, the smaller ``max-age`` and the
smaller TTL apply, tags are the union of both, and two different namespaces are a
:class:`RequestError` (there is no stricter namespace, only a contradiction). Neither side is more
trusted than the other: the headers may be a client library's defaults and the body a single call's
wish, or the other way round, so taking the stricter value is the only rule that never caches
something one of them asked not to.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from stratacache.errors import RequestError
from stratacache.llm.keys import Route, validate_namespace

__all__ = [
    "MAX_TAGS",
    "MAX_TAG_CHARS",
    "AdmissionMode",
    "Decision",
    "Directives",
    "decide",
    "is_deterministic",
    "parse_directives",
    "storable",
]

MAX_TAGS = 64
"""The most tags one request may attach to its entry."""
MAX_TAG_CHARS = 256
"""The longest tag accepted."""

_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_BODY_FIELDS = frozenset({"no_cache", "no_store", "max_age", "ttl", "namespace", "tags"})
# A chat or legacy completion choice is complete only if it stopped for one of these reasons. An
# allow-list: a provider's unknown reason ("abort", "error") is treated as incomplete.
_GOOD_FINISH = frozenset({"stop", "tool_calls", "function_call"})


class AdmissionMode(StrEnum):
    """Which requests a route caches."""

    DETERMINISTIC = "deterministic"
    """Only requests whose answer is reproducible (see :func:`is_deterministic`). The default."""
    ALWAYS = "always"
    """Every request, sampled or not: the first answer is served to everyone who asks again."""
    NEVER = "never"
    """Nothing: the route is passed through."""


@dataclass(frozen=True, slots=True)
class Directives:
    """The cache controls a caller attached to one request."""

    no_cache: bool = False
    """Do not answer from the cache (the fresh answer may still be stored)."""
    no_store: bool = False
    """Do not store the answer."""
    max_age: float | None = None
    """Only accept an entry at most this many seconds old."""
    ttl: float | None = None
    """Keep the stored answer this many seconds (> 0) instead of the route's default."""
    namespace: str | None = None
    """Store and look up in this namespace instead of ``"default"``."""
    tags: frozenset[str] = frozenset()
    """Invalidation tags to attach to the stored answer."""


@dataclass(frozen=True, slots=True)
class Decision:
    """Whether one request may read the cache and whether its answer may be written."""

    lookup: bool
    """Look the request up in the cache."""
    store: bool
    """Store the upstream answer (if :func:`storable` agrees)."""
    reason: str
    """Why: ``cacheable``, ``no-cache``, ``no-store``, ``no-cache,no-store``, ``never``,
    ``nondeterministic``.
    """


def parse_directives(
    headers: Mapping[str, str], body: Mapping[str, Any]
) -> tuple[Directives, dict[str, Any]]:
    """Read the cache controls from ``headers`` and ``body["cache"]``.

    Returns the merged :class:`Directives` (the stricter side wins, see the module docstring) and a
    new dict holding ``body`` without its ``cache`` member, ready to forward upstream; ``body``
    itself is not changed. Header names are matched case-insensitively; a header repeated in a
    multi-valued mapping is read in full (``Cache-Control`` and ``X-Cache-Tags`` values are joined,
    two different TTLs or namespaces are a contradiction). Unknown ``Cache-Control`` directives are
    ignored, as HTTP requires; an unknown member of the ``cache`` object is an error, so a misspelt
    option is never silently dropped.

    >>> body = {"model": "m", "cache": {"ttl": 60}}
    >>> d, rest = parse_directives({"cache-control": "no-store"}, body)
    >>> (d.no_store, d.ttl, rest)
    (True, 60, {'model': 'm'})
    """
    if not isinstance(body, Mapping):
        raise RequestError("the request body must be a JSON object")
    from_headers = _from_headers(headers)
    from_body = _from_body(body.get("cache"))
    forwarded = {k: v for k, v in body.items() if k != "cache"}
    return _stricter(from_headers, from_body), forwarded


def is_deterministic(route: Route, body: Mapping[str, Any]) -> bool:
    """Whether the request asks for a reproducible answer.

    Embeddings always are. Otherwise the request must ask for one answer (``n`` absent or 1) and
    either sample greedily (``temperature`` 0) or fix an integer ``seed``. An absent temperature
    means the provider's default (1 at OpenAI), which samples.
    """
    if route == Route.EMBEDDINGS:
        return True
    n = body.get("n")
    if n is not None and (not _is_int(n) or n != 1):
        return False
    temperature = body.get("temperature")
    if _is_number(temperature) and temperature == 0:
        return True
    return _is_int(body.get("seed"))


def decide(
    route: Route, body: Mapping[str, Any], directives: Directives, mode: AdmissionMode
) -> Decision:
    """Decide whether to look the request up and whether to store its answer."""
    if mode == AdmissionMode.NEVER:
        return Decision(lookup=False, store=False, reason="never")
    if mode == AdmissionMode.DETERMINISTIC and not is_deterministic(route, body):
        return Decision(lookup=False, store=False, reason="nondeterministic")
    if directives.no_cache and directives.no_store:
        return Decision(lookup=False, store=False, reason="no-cache,no-store")
    if directives.no_cache:
        return Decision(lookup=False, store=True, reason="no-cache")
    if directives.no_store:
        return Decision(lookup=True, store=False, reason="no-store")
    return Decision(lookup=True, store=True, reason="cacheable")


def storable(route: Route, response: Mapping[str, Any]) -> str | None:
    """Return ``None`` if the complete ``response`` may be stored, else the reason it may not.

    Reasons: ``malformed`` (not the shape the route returns), ``error`` (an error object),
    ``unfinished`` (a choice without ``finish_reason``), ``finish_reason:<value>`` (``length``,
    ``content_filter`` or any reason other than ``stop``/``tool_calls``/``function_call``),
    ``refusal``, ``empty`` (no text and no tool call, or no embedding), ``status:<value>`` (a
    Responses API status other than ``completed``) and ``incomplete`` (``incomplete_details`` set).
    """
    shape: object = response  # callers pass decoded JSON, which may be any value
    if not isinstance(shape, Mapping):
        return "malformed"
    if response.get("error") is not None:
        return "error"
    if route == Route.CHAT:
        return _check_choices(response, _chat_choice)
    if route == Route.COMPLETIONS:
        return _check_choices(response, _completion_choice)
    if route == Route.EMBEDDINGS:
        return _check_embeddings(response)
    return _check_response(response)


# --- directives -----------------------------------------------------------------------------------


def _from_headers(headers: Mapping[str, str]) -> Directives:
    values: dict[str, list[str]] = {}
    # Walk items() rather than indexing, so a multi-valued mapping (starlette's Headers) shows every
    # occurrence of a repeated header.
    for name, value in headers.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise RequestError("header names and values must be strings")
        values.setdefault(name.lower(), []).append(value)
    no_cache = no_store = False
    max_age: float | None = None
    for directive in ",".join(values.get("cache-control", ())).split(","):
        name, has_value, raw = directive.partition("=")
        name = name.strip().lower()
        if name == "no-cache":
            no_cache = True
        elif name == "no-store":
            no_store = True
        elif name == "max-age":
            if not has_value:
                raise RequestError("Cache-Control max-age needs a value, e.g. max-age=60")
            age = _header_number("Cache-Control max-age", raw.strip().strip('"'))
            max_age = age if max_age is None else min(max_age, age)
    ttl: float | None = None
    ttls = {v.strip() for v in values.get("x-cache-ttl", ())}
    if len(ttls) > 1:
        raise RequestError(f"conflicting X-Cache-TTL headers: {sorted(ttls)}")
    if ttls:
        ttl = _positive_ttl(_header_number("X-Cache-TTL", ttls.pop()))
    namespace: str | None = None
    namespaces = {v.strip() for v in values.get("x-cache-namespace", ())}
    if len(namespaces) > 1:
        raise RequestError(f"conflicting X-Cache-Namespace headers: {sorted(namespaces)}")
    if namespaces:
        namespace = validate_namespace(namespaces.pop())
    tags = [t.strip() for t in ",".join(values.get("x-cache-tags", ())).split(",")]
    return Directives(
        no_cache=no_cache,
        no_store=no_store,
        max_age=max_age,
        ttl=ttl,
        namespace=namespace,
        tags=_tags([t for t in tags if t]),
    )


def _from_body(raw: Any) -> Directives:
    if raw is None:
        return Directives()
    if not isinstance(raw, Mapping):
        raise RequestError('the "cache" member of the request body must be a JSON object')
    unknown = set(raw) - _BODY_FIELDS
    if unknown:
        raise RequestError(
            f'unknown field(s) in the "cache" object: {sorted(map(str, unknown))}; '
            f"expected some of {sorted(_BODY_FIELDS)}"
        )
    flags = {}
    for name in ("no_cache", "no_store"):
        value = raw.get(name, False)
        if not isinstance(value, bool):
            raise RequestError(f'"cache.{name}" must be true or false')
        flags[name] = value
    max_age = raw.get("max_age")
    if max_age is not None:
        max_age = _body_number("cache.max_age", max_age)
    ttl = raw.get("ttl")
    if ttl is not None:
        ttl = _positive_ttl(_body_number("cache.ttl", ttl))
    namespace = raw.get("namespace")
    if namespace is not None:
        namespace = validate_namespace(namespace)
    tags = raw.get("tags", [])
    if not isinstance(tags, list):
        raise RequestError('"cache.tags" must be a list of strings')
    return Directives(
        no_cache=flags["no_cache"],
        no_store=flags["no_store"],
        max_age=max_age,
        ttl=ttl,
        namespace=namespace,
        tags=_tags(tags),
    )


def _stricter(a: Directives, b: Directives) -> Directives:
    if a.namespace is not None and b.namespace is not None and a.namespace != b.namespace:
        raise RequestError(
            f"the header and the body ask for different cache namespaces: "
            f"{a.namespace!r} and {b.namespace!r}"
        )
    tags = a.tags | b.tags
    if len(tags) > MAX_TAGS:
        raise RequestError(f"at most {MAX_TAGS} cache tags per request")
    return Directives(
        no_cache=a.no_cache or b.no_cache,
        no_store=a.no_store or b.no_store,
        max_age=_smaller(a.max_age, b.max_age),
        ttl=_smaller(a.ttl, b.ttl),
        namespace=a.namespace if a.namespace is not None else b.namespace,
        tags=tags,
    )


def _smaller(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


def _header_number(what: str, raw: str) -> float:
    if not _NUMBER.fullmatch(raw):
        raise RequestError(f"{what} must be a non-negative number of seconds, got {raw!r}")
    value = float(raw)
    return int(value) if value.is_integer() else value


def _body_number(what: str, value: Any) -> float:
    if not _is_number(value) or not math.isfinite(value) or value < 0:
        raise RequestError(f'"{what}" must be a non-negative number of seconds, got {value!r}')
    return float(value) if isinstance(value, float) else int(value)


def _positive_ttl(value: float) -> float:
    if value <= 0:
        raise RequestError(
            "a cache TTL must be greater than 0 seconds (use no-store to skip storing)"
        )
    return value


def _tags(tags: list[Any]) -> frozenset[str]:
    for tag in tags:
        if not isinstance(tag, str) or not tag:
            raise RequestError(f"cache tags must be non-empty strings, got {tag!r}")
        if len(tag) > MAX_TAG_CHARS:
            raise RequestError(f"a cache tag may be at most {MAX_TAG_CHARS} characters")
        if "," in tag or "/" in tag or not tag.isprintable():
            raise RequestError(
                f"a cache tag may not contain ',', '/' or control characters: {tag!r}"
            )
    if len(tags) > MAX_TAGS:
        raise RequestError(f"at most {MAX_TAGS} cache tags per request")
    return frozenset(tags)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# --- storable -------------------------------------------------------------------------------------


def _check_choices(response: Mapping[str, Any], check: Any) -> str | None:
    choices = response.get("choices")
    if not isinstance(choices, list):
        return "malformed"
    if not choices:
        return "empty"
    for choice in choices:
        if not isinstance(choice, Mapping):
            return "malformed"
        finish = choice.get("finish_reason")
        if finish is None:
            return "unfinished"
        if finish not in _GOOD_FINISH:
            return f"finish_reason:{finish}"
        reason: str | None = check(choice)
        if reason is not None:
            return reason
    return None


def _chat_choice(choice: Mapping[str, Any]) -> str | None:
    message = choice.get("message")
    if not isinstance(message, Mapping):
        return "malformed"
    if message.get("refusal"):
        return "refusal"
    if message.get("content") or message.get("tool_calls") or message.get("function_call"):
        return None
    if message.get("audio"):
        return None
    return "empty"


def _completion_choice(choice: Mapping[str, Any]) -> str | None:
    text = choice.get("text")
    if not isinstance(text, str):
        return "malformed"
    return None if text else "empty"


def _check_embeddings(response: Mapping[str, Any]) -> str | None:
    data = response.get("data")
    if not isinstance(data, list):
        return "malformed"
    if not data:
        return "empty"
    for item in data:
        if not isinstance(item, Mapping):
            return "malformed"
        if not item.get("embedding"):  # an empty list or an empty base64 string
            return "empty"
    return None


def _check_response(response: Mapping[str, Any]) -> str | None:
    status = response.get("status")
    if status != "completed":
        return f"status:{status}"
    if response.get("incomplete_details"):
        return "incomplete"
    output = response.get("output")
    if not isinstance(output, list):
        return "malformed"
    produced = False
    for item in output:
        if not isinstance(item, Mapping):
            return "malformed"
        kind = item.get("type")
        if kind == "message":
            content = item.get("content")
            if not isinstance(content, list):
                return "malformed"
            for part in content:
                if not isinstance(part, Mapping):
                    return "malformed"
                if part.get("type") == "refusal":
                    return "refusal"
                if part.get("text"):
                    produced = True
        elif kind != "reasoning":
            # A function call, a web search, an image: output in its own right. Reasoning alone is
            # not.
            produced = True
    return None if produced else "empty"
