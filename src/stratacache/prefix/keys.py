"""Prefix-aware cache keys: find an entry by its first N tokens, accept it only for the same request.

A route configured with ``key = "prefix"`` and ``granularity = N`` stores each answer under the hash
of its request's first N prompt tokens (in the provider's prompt order, see
:mod:`stratacache.prefix.render`) together with every parameter that is not prompt text (model,
temperature, tools' presence...). Requests that share a long prefix, such as questions about the same
document, therefore share one slot, which bounds how many entries one long context can occupy.

Sharing a slot must never mean sharing an answer. The stored record keeps the SHA-256 of the *whole*
canonical request (its ``fingerprint``), and the cache accepts an entry found by prefix only when that
fingerprint equals the full hash of the request at hand (the collision check). A request with the same
prefix and another suffix is a miss: it is answered upstream and its answer takes the slot.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from stratacache.errors import ConfigError, RequestError
from stratacache.llm.keys import KEY_SCHEME, TRANSPORT_FIELDS, CacheKey, Route, canonical_json
from stratacache.prefix.render import BOUNDARY, render_request
from stratacache.prefix.tokens import Tokenizer, encoding_for_model

__all__ = ["KEY_KINDS", "PROMPT_FIELDS", "PrefixCacheKey", "prefix_key", "prefix_tokenizer"]

KEY_KINDS = ("exact", "prefix")
"""How a route's entries are keyed: by the whole request, or by its first N tokens."""

PROMPT_FIELDS: frozenset[str] = frozenset(
    {"messages", "system", "tools", "input", "instructions", "prompt", "response_format", "text"}
)
"""Body fields represented by the prompt's tokens rather than hashed as JSON in a prefix key."""


@dataclass(frozen=True, slots=True)
class PrefixCacheKey(CacheKey):
    """A :class:`CacheKey` stored under the hash of the request's first ``granularity`` tokens.

    ``digest`` stays the full request's hash: records carry it, and a record found under
    :attr:`storage_key` answers this request only when the two agree.
    """

    prefix_digest: str = ""
    """Hex SHA-256 over the non-prompt parameters and the first ``granularity`` prompt tokens."""
    granularity: int = 0
    """N: how many prompt tokens the slot is keyed by."""

    @property
    def storage_key(self) -> str:
        """``tenant/namespace/route/prefix-N/prefix_digest``."""
        return (
            f"{self.tenant}/{self.namespace}/{self.route.value}/"
            f"prefix-{self.granularity}/{self.prefix_digest}"
        )


_LOCK = threading.Lock()
_TOKENIZERS: dict[str, Tokenizer] = {}


def prefix_tokenizer(model: str = "") -> Tokenizer:
    """The tokenizer prefix keys use for ``model``, one per encoding per process.

    Building one costs about half a second and the pieces it remembers of a long shared context
    are what make the next request's key cheap, so it is shared. Raises
    :class:`~stratacache.prefix.tokens.EncodingUnavailableError` when the ``prefix`` extra is
    missing.
    """
    name = encoding_for_model(model)
    with _LOCK:
        found = _TOKENIZERS.get(name)
        if found is None:
            found = _TOKENIZERS[name] = Tokenizer(name)
        return found


def _prompt_tokens(
    route: Route, body: Mapping[str, Any], tokenizer: Tokenizer, limit: int
) -> list[int]:
    if route is Route.COMPLETIONS:
        prompt = body.get("prompt")
        texts: Sequence[Any] = [prompt] if isinstance(prompt, str) else prompt or []
        if not isinstance(texts, Sequence):
            raise RequestError("prompt must be a string or a list")
        segments = [t if isinstance(t, str) else canonical_json(t).decode() for t in texts]
    else:
        segments = [s.text for s in render_request(body).segments]
    out: list[int] = []
    for text in segments:
        out.append(BOUNDARY)
        out.extend(tokenizer.encode(text))
        if len(out) >= limit:
            break
    return out[:limit]


def prefix_key(
    exact: CacheKey,
    body: Mapping[str, Any],
    *,
    granularity: int,
    version: str = "",
    tokenizer: Tokenizer | None = None,
) -> PrefixCacheKey:
    """The prefix key of a request whose exact key is ``exact``.

    :param granularity: N, the number of prompt tokens the slot is keyed by (>= 1).
    :param version: the caller's version string, as given to ``request_key``.
    :param tokenizer: the tokenizer (default: the model's encoding, shared per process).
    """
    if not isinstance(granularity, int) or isinstance(granularity, bool) or granularity < 1:
        raise ConfigError(f"granularity must be a number of tokens >= 1, got {granularity!r}")
    if exact.route is Route.EMBEDDINGS:
        raise ConfigError("prefix keys apply to generation routes, not embeddings")
    model = body.get("model")
    tok = tokenizer or prefix_tokenizer(model if isinstance(model, str) else "")
    tokens = _prompt_tokens(exact.route, body, tok, granularity)
    parameters = {
        name: value
        for name, value in body.items()
        if name not in PROMPT_FIELDS and name not in TRANSPORT_FIELDS
    }
    # Which prompt fields are present, and their shape's kind, so a chat body and a Responses body
    # with the same text never share a slot.
    present = sorted(name for name in PROMPT_FIELDS if name in body)
    envelope = canonical_json(
        {
            "scheme": KEY_SCHEME,
            "kind": "prefix",
            "route": exact.route.value,
            "tenant": exact.tenant,
            "namespace": exact.namespace,
            "version": version,
            "granularity": granularity,
            "encoding": tok.name,
            "parameters": parameters,
            "fields": present,
        }
    )
    digest = hashlib.sha256(envelope)
    digest.update(b"\0")
    digest.update(b"".join(t.to_bytes(4, "little", signed=True) for t in tokens))
    return PrefixCacheKey(
        exact.route,
        exact.tenant,
        exact.namespace,
        exact.digest,
        exact.partition,
        prefix_digest=digest.hexdigest(),
        granularity=granularity,
    )
