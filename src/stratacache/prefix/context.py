"""The context cache: token counts of multi-turn conversations, each turn reusing the last one's work.

A chat client resends the whole conversation on every turn, so turn k+1's prompt is turn k's prompt
plus two messages. :class:`ContextCache` keys each conversation prefix by a hash chain over its
messages (``h_i = BLAKE2b(h_{i-1} || canonical JSON of message i)``, seeded with the encoding and the
tool definitions) and remembers the token count through every message. Counting turn k+1 hashes its
messages (cheap), finds the longest prefix already counted, and tokenises only the messages after it.

Counts follow OpenAI's published rule for chat models (the ``num_tokens_from_messages`` recipe): 3
tokens of framing per message, the tokens of every string field (role, content, name), 1 more for a
``name``, and 3 to prime the reply. Tool definitions and tool calls are counted as their canonical
JSON, and non-text content parts (images, audio) are not counted: the result is exact for text
conversations and an estimate otherwise. The proxy uses it for its cost ledger when an upstream
answer reports no usage (:func:`estimate_usage`).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from stratacache.errors import ConfigError, MissingExtraError, RequestError
from stratacache.llm.keys import Route, canonical_json
from stratacache.prefix.tokens import Tokenizer, encoding_for_model

__all__ = ["ContextCache", "ContextCount", "estimate_usage"]

_SCHEME = b"stratacache.context.v1"
TOKENS_PER_MESSAGE = 3
"""Framing tokens around each message."""
TOKENS_PER_NAME = 1
"""Extra tokens for a message's ``name`` field."""
REPLY_PRIMING = 3
"""Tokens that start the assistant's reply."""


@dataclass(frozen=True, slots=True)
class ContextCount:
    """A conversation's prompt size, and how much of the work was reused."""

    prompt_tokens: int
    """Prompt tokens: tool definitions, every message, and the reply priming."""
    messages: int
    """Messages in the conversation."""
    reused: int
    """Messages whose count came from the cache (an earlier turn counted them)."""


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return canonical_json(value).decode()


class ContextCache:
    """Token counts of conversation prefixes, keyed by a hash chain over their messages.

    :param tokenizer: the tokenizer (default: o200k_base).
    :param max_entries: how many conversation prefixes to remember (least recently used go first).
    """

    def __init__(self, tokenizer: Tokenizer | None = None, *, max_entries: int = 100_000) -> None:
        if not isinstance(max_entries, int) or max_entries < 1:
            raise ConfigError(f"max_entries must be an int >= 1, got {max_entries!r}")
        self.tokenizer = tokenizer or Tokenizer("o200k_base")
        """The tokenizer counts come from."""
        self._max = max_entries
        self._counts: OrderedDict[bytes, int] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._counts)

    def _message_tokens(self, message: Mapping[str, Any]) -> int:
        count = self.tokenizer.count
        total = TOKENS_PER_MESSAGE
        for name, value in message.items():
            if value is None:
                continue
            if name == "content" and isinstance(value, Sequence) and not isinstance(value, str):
                for part in value:
                    text = part.get("text") if isinstance(part, Mapping) else None
                    if isinstance(text, str):
                        total += count(text)
                continue
            total += count(_text(value))
            if name == "name":
                total += TOKENS_PER_NAME
        return total

    def _get(self, digest: bytes) -> int | None:
        with self._lock:
            found = self._counts.get(digest)
            if found is not None:
                self._counts.move_to_end(digest)
            return found

    def _put(self, digest: bytes, tokens: int) -> None:
        with self._lock:
            self._counts[digest] = tokens
            self._counts.move_to_end(digest)
            while len(self._counts) > self._max:
                self._counts.popitem(last=False)

    def count(self, messages: Sequence[Any], *, tools: Any = None) -> ContextCount:
        """Count a conversation's prompt tokens, reusing every prefix counted before.

        Raises :class:`RequestError` when ``messages`` is not a list of objects.
        """
        if not isinstance(messages, Sequence) or isinstance(messages, str):
            raise RequestError("messages must be a list")
        seed = hashlib.blake2b(_SCHEME, digest_size=16)
        seed.update(self.tokenizer.name.encode())
        seed.update(canonical_json(tools) if tools is not None else b"null")
        chain = [seed.digest()]
        for i, message in enumerate(messages):
            if not isinstance(message, Mapping):
                raise RequestError(f"messages[{i}] must be an object")
            chain.append(
                hashlib.blake2b(chain[-1] + canonical_json(message), digest_size=16).digest()
            )
        # The longest prefix counted before (chain[0] is the tools alone).
        start = len(chain) - 1
        found = self._get(chain[start])
        while found is None and start > 0:
            start -= 1
            found = self._get(chain[start])
        if found is None:
            found = 0 if tools is None else self.tokenizer.count(_text(tools))
            self._put(chain[0], found)
        total = found
        for i in range(start, len(messages)):
            total += self._message_tokens(messages[i])
            self._put(chain[i + 1], total)
        return ContextCount(total + REPLY_PRIMING, len(messages), start)


_LOCK = threading.Lock()
_SHARED: dict[str, ContextCache | None] = {}


def _shared(model: str) -> ContextCache | None:
    name = encoding_for_model(model)
    with _LOCK:
        if name not in _SHARED:
            try:
                _SHARED[name] = ContextCache(Tokenizer(name))
            except MissingExtraError:
                _SHARED[name] = None  # no tiktoken here: accounting goes without estimates
        return _SHARED[name]


def estimate_usage(route: Route | str, body: Mapping[str, Any]) -> dict[str, int] | None:
    """An estimated ``usage`` for a chat request whose answer reported none.

    Returns ``{"prompt_tokens": n, "estimated": 1}`` for a chat body, ``None`` for other routes,
    malformed bodies, or when the ``prefix`` extra is not installed (accounting never fails).
    Conversations are counted through a process-wide :class:`ContextCache` per encoding, so each
    turn costs only its new messages.
    """
    if Route(route) is not Route.CHAT or not isinstance(body, Mapping):
        return None
    model = body.get("model")
    cache = _shared(model if isinstance(model, str) else "")
    if cache is None:
        return None
    try:
        counted = cache.count(body.get("messages") or [], tools=body.get("tools"))
    except RequestError:
        return None
    return {"prompt_tokens": counted.prompt_tokens, "estimated": 1}
