"""Cache keys for LLM requests: canonical JSON, tenants, exact digests and context partitions.

A cached answer may only be served for a request that would have produced it, so the exact key is a
SHA-256 over the canonical JSON of *everything that can change the answer*. The rules, in one place:

* **Included**: every field of the request body except the transport-only ones below. That covers
  the model, messages / input / prompt (system prompt included), tools, tool_choice,
  response_format, temperature, top_p, seed, max_tokens / max_completion_tokens, stop, n,
  logit_bias, the penalties, reasoning settings, and any field we do not know (a provider-specific
  field is assumed to matter).
* **Left out** (:data:`TRANSPORT_FIELDS`): ``stream`` and ``stream_options`` (a streamed and a plain
  request share one entry; the replay layer converts), ``user``, ``safety_identifier`` and
  ``prompt_cache_key`` (who asks and how the provider routes it, not what is answered), ``metadata``
  (a label for the caller's dashboard) and ``cache`` (our own control object).
* ``store`` is left out for chat and legacy completions, where it only asks the provider to keep a
  copy for its dashboard. For the Responses API it is kept: ``store: true`` makes the returned
  response id usable as ``previous_response_id`` later, so a response recorded with ``store: false``
  must not answer a request that asked for ``store: true``.
* Dict key order does not matter (keys are sorted); whitespace inside strings does (it is content).
* **No normalisation of values**: an explicit default is not the same as an absent field
  (``temperature: 1`` and no temperature give different keys), ``null`` is not absent, and numbers
  keep their JSON type (``1`` and ``1.0`` serialise differently, and so do ``0.0`` and ``-0.0``).
  Providers are free to treat these differently, and a missed hit costs one upstream call while a
  wrong hit serves a wrong answer, so we never guess.

The tenant is part of every key (see :func:`tenant_for`), as are the namespace, the route and a
caller supplied version (a prompt or application version), so none of them can ever share an entry
by accident.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from stratacache.errors import ConfigError, MissingExtraError, RequestError

__all__ = [
    "KEY_SCHEME",
    "MAX_NAMESPACE_CHARS",
    "TRANSPORT_FIELDS",
    "CacheKey",
    "Route",
    "canonical_json",
    "embedding_input_key",
    "final_user_turn",
    "request_key",
    "tenant_for",
    "validate_namespace",
]

KEY_SCHEME = "stratacache.key.v1"
"""Hashed into every digest, so keys made under changed rules never match the old ones."""

TRANSPORT_FIELDS: frozenset[str] = frozenset(
    {
        "stream",
        "stream_options",
        "user",
        "safety_identifier",
        "prompt_cache_key",
        "metadata",
        "cache",
    }
)
"""Request fields that cannot change the answer and are left out of every digest."""

_TENANT_HEX_CHARS = 32
MAX_NAMESPACE_CHARS = 128
"""The longest namespace accepted; keys embed it, so it is kept short."""


class Route(StrEnum):
    """The OpenAI-compatible endpoints the cache understands (the value is the path after /v1/)."""

    CHAT = "chat.completions"
    COMPLETIONS = "completions"
    EMBEDDINGS = "embeddings"
    RESPONSES = "responses"


@dataclass(frozen=True, slots=True)
class CacheKey:
    """Where a request's answer lives, and the context it may be matched in."""

    route: Route
    """The endpoint the request was sent to."""
    tenant: str
    """An opaque tenant id from :func:`tenant_for` (never a credential)."""
    namespace: str
    """The caller's namespace, ``"default"`` unless one was asked for."""
    digest: str
    """Hex SHA-256 of the canonical answer-relevant request, tenant, namespace, route, version."""
    partition: str
    """Hex SHA-256 over everything except the final user turn: the semantic cache's search scope."""

    @property
    def storage_key(self) -> str:
        """The key records are stored under in every tier: ``tenant/namespace/route/digest``."""
        return f"{self.tenant}/{self.namespace}/{self.route.value}/{self.digest}"


def canonical_json(obj: Any) -> bytes:
    """Serialise ``obj`` to canonical JSON: sorted keys, no whitespace, UTF-8.

    Numbers keep their type: ``1`` is written ``1`` and ``1.0`` is written ``1.0``, so the two never
    share a digest (a possible miss, never a wrong hit). Floats use the shortest round-tripping
    form. NaN and the infinities have no JSON form and raise :class:`RequestError` rather than
    silently becoming ``null``. Only JSON types are accepted: dicts with ``str`` keys, lists and
    tuples, ``str``, ``int`` (64-bit), ``float``, ``bool`` and ``None``.

    >>> canonical_json({"b": [1, 1.0], "a": "x y"})
    b'{"a":"x y","b":[1,1.0]}'
    """
    orjson = _orjson()
    try:
        out: bytes = orjson.dumps(
            obj,
            default=_reject_type,
            option=orjson.OPT_SORT_KEYS
            | orjson.OPT_PASSTHROUGH_DATETIME
            | orjson.OPT_PASSTHROUGH_DATACLASS,
        )
    except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
        cause = exc.__cause__
        if isinstance(cause, RequestError):
            raise cause from None
        raise RequestError(f"request is not canonical JSON: {exc}") from None
    # orjson writes NaN and infinities as null. Scanning the output is cheap and rules them out for
    # nearly every request; only when a null appears do we walk the object to tell the two apart.
    if b"null" in out:
        _reject_non_finite(obj)
    return out


def tenant_for(credential: str | None, *, secret: bytes, share_across_tenants: bool = False) -> str:
    """Return the opaque tenant id for a caller's credential.

    The id is the first 32 hex characters of HMAC-SHA256(``secret``, credential): stable for one
    credential, unrelated across credentials, and useless to anyone who reads it from a key or a log
    (it cannot be reversed without ``secret``). ``"shared"`` when the deployment shares entries
    across tenants; ``"anonymous"`` when the request carries no credential.

    >>> tenant_for(None, secret=b"k" * 32)
    'anonymous'
    """
    if not isinstance(secret, bytes) or len(secret) < 16:
        raise ConfigError("the tenant secret must be at least 16 bytes")
    if share_across_tenants:
        return "shared"
    if not credential:
        return "anonymous"
    mac = hmac.new(secret, credential.encode("utf-8"), hashlib.sha256)
    return mac.hexdigest()[:_TENANT_HEX_CHARS]


def validate_namespace(namespace: str) -> str:
    """Return ``namespace`` if it may be used in a storage key; raise :class:`RequestError` if not.

    A namespace is 1 to 128 characters with no ``/`` (the storage key's separator), no whitespace
    and no control characters.
    """
    if not isinstance(namespace, str) or not namespace:
        raise RequestError("a cache namespace must be a non-empty string")
    if len(namespace) > MAX_NAMESPACE_CHARS:
        raise RequestError(f"a cache namespace may be at most {MAX_NAMESPACE_CHARS} characters")
    if "/" in namespace:
        raise RequestError(f"a cache namespace may not contain '/': {namespace!r}")
    if not namespace.isprintable() or any(c.isspace() for c in namespace):
        raise RequestError(
            f"a cache namespace may not contain whitespace or control characters: {namespace!r}"
        )
    return namespace


def request_key(
    route: Route,
    body: Mapping[str, Any],
    *,
    tenant: str,
    namespace: str = "default",
    version: str = "",
) -> CacheKey:
    """Compute the :class:`CacheKey` of one request body (a ``cache`` control object is ignored).

    See the module docstring for which fields count. ``version`` is mixed into both hashes: bump it
    when a prompt template or the application changes so old answers stop matching.
    """
    route = _route(route)
    if not isinstance(body, Mapping):
        raise RequestError("the request body must be a JSON object")
    _check_scope(tenant, namespace)
    relevant = _answer_relevant(route, body)
    digest = _hash(
        {
            "scheme": KEY_SCHEME,
            "kind": "exact",
            "route": route.value,
            "tenant": tenant,
            "namespace": namespace,
            "version": version,
            "request": relevant,
        }
    )
    partition = _hash(
        {
            "scheme": KEY_SCHEME,
            "kind": "partition",
            "route": route.value,
            "tenant": tenant,
            "namespace": namespace,
            "version": version,
            "context": _without_final_turn(route, relevant),
        }
    )
    return CacheKey(route, tenant, namespace, digest, partition)


def embedding_input_key(
    model: str,
    text_or_tokens: str | Sequence[int],
    *,
    tenant: str,
    namespace: str = "default",
    extra: Mapping[str, Any] | None = None,
    version: str = "",
) -> CacheKey:
    """Compute the key of one input item of an embeddings request, so a batch is cached per item.

    ``extra`` holds the other request fields (``dimensions`` and ``encoding_format`` change the
    answer and are hashed, as is any unknown field). Passing the whole request body is fine: its
    ``input`` is ignored, transport fields are dropped, and a ``model`` in it must equal ``model``.
    """
    if not isinstance(model, str) or not model:
        raise RequestError("an embeddings request needs a model name")
    _check_scope(tenant, namespace)
    item: str | list[int]
    if isinstance(text_or_tokens, str):
        item = text_or_tokens
    elif isinstance(text_or_tokens, list | tuple) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in text_or_tokens
    ):
        item = [int(t) for t in text_or_tokens]
    else:
        raise RequestError("an embeddings input item must be a string or a list of token ids")
    params: dict[str, Any] = {}
    for name, value in (extra or {}).items():
        if name in TRANSPORT_FIELDS or name == "input":
            continue
        if name == "model":
            if value != model:
                raise RequestError(
                    f"conflicting models for an embeddings key: {model!r}, {value!r}"
                )
            continue
        params[name] = value
    common = {
        "scheme": KEY_SCHEME,
        "route": Route.EMBEDDINGS.value,
        "tenant": tenant,
        "namespace": namespace,
        "version": version,
        "model": model,
        "params": params,
    }
    digest = _hash({**common, "kind": "embedding-item", "input": item})
    partition = _hash({**common, "kind": "partition"})
    return CacheKey(Route.EMBEDDINGS, tenant, namespace, digest, partition)


def final_user_turn(route: Route, body: Mapping[str, Any]) -> str | None:
    """Return the text of the request's final user turn, or ``None`` when there is no such text.

    That is the last chat message when its role is ``user``, the prompt of a legacy completion, the
    input of a single embedding, or the last user item of a Responses API input. A turn that holds
    anything but text (an image, audio, a file) gives ``None``: matching it on its text alone would
    ignore what the model was shown.
    """
    route = _route(route)
    if route is Route.CHAT:
        messages = body.get("messages")
        if isinstance(messages, list) and messages:
            last = messages[-1]
            if isinstance(last, Mapping) and last.get("role") == "user":
                return _text_of(last.get("content"), ("text",))
        return None
    if route is Route.COMPLETIONS:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]
        return prompt if isinstance(prompt, str) else None
    if route is Route.EMBEDDINGS:
        text = body.get("input")
        if isinstance(text, list) and len(text) == 1:
            text = text[0]
        return text if isinstance(text, str) else None
    items = body.get("input")
    if isinstance(items, str):
        return items
    if isinstance(items, list) and items:
        last = items[-1]
        if (
            isinstance(last, Mapping)
            and last.get("role") == "user"
            and last.get("type", "message") == "message"
        ):
            return _text_of(last.get("content"), ("input_text", "text"))
    return None


# --- internals ------------------------------------------------------------------------------------


def _orjson() -> Any:
    # orjson ships with the proxy extra; importing it here keeps `import stratacache.llm` cheap and
    # turns its absence into an error that names the extra.
    try:
        import orjson
    except ImportError as exc:  # pragma: no cover - orjson is installed wherever tests run
        raise MissingExtraError("orjson", "proxy") from exc
    return orjson


def _route(route: Route | str) -> Route:
    try:
        return Route(route)
    except ValueError:
        raise RequestError(f"unknown route {route!r}") from None


def _check_scope(tenant: str, namespace: str) -> None:
    if not isinstance(tenant, str) or not tenant or "/" in tenant:
        raise RequestError(f"a tenant id must be a non-empty string without '/': {tenant!r}")
    validate_namespace(namespace)


def _reject_type(obj: Any) -> Any:
    raise RequestError(f"a request may only hold JSON values, not {type(obj).__name__}")


def _reject_non_finite(obj: Any) -> None:
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                raise RequestError(f"{item!r} is not a valid JSON number")
        elif isinstance(item, Mapping):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)


def _hash(envelope: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(envelope)).hexdigest()


def _answer_relevant(route: Route, body: Mapping[str, Any]) -> dict[str, Any]:
    keep_store = route is Route.RESPONSES
    out: dict[str, Any] = {}
    for name, value in body.items():
        if not isinstance(name, str):
            raise RequestError("request field names must be strings")
        if name in TRANSPORT_FIELDS or (name == "store" and not keep_store):
            continue
        out[name] = value
    return out


def _without_final_turn(route: Route, body: dict[str, Any]) -> dict[str, Any]:
    # The context a semantic match is allowed within: the request with only the final user turn's
    # text taken out. When there is no final user text, nothing is taken out and only identical
    # requests share the partition.
    if final_user_turn(route, body) is None:
        return body
    context = dict(body)
    if route is Route.CHAT:
        messages = body["messages"]
        last = {k: v for k, v in messages[-1].items() if k != "content"}
        context["messages"] = [*messages[:-1], last]
    elif route is Route.COMPLETIONS:
        del context["prompt"]
    elif route is Route.EMBEDDINGS or isinstance(body["input"], str):
        del context["input"]
    else:
        items = body["input"]
        last = {k: v for k, v in items[-1].items() if k != "content"}
        context["input"] = [*items[:-1], last]
    return context


def _text_of(content: Any, text_types: tuple[str, ...]) -> str | None:
    if isinstance(content, str):
        return content
    if not isinstance(content, list) or not content:
        return None
    texts: list[str] = []
    for part in content:
        if not isinstance(part, Mapping) or part.get("type") not in text_types:
            return None
        text = part.get("text")
        if not isinstance(text, str):
            return None
        texts.append(text)
    return "\n".join(texts)
