"""Logged request bodies as the ordered text segments a provider's prompt cache sees.

Providers cache a prompt by its prefix, in the order they lay the request out: tool definitions first,
then the structured-output schema, the system prompt (``system``, ``instructions``, or system and
developer messages), then the conversation. :func:`render_request` turns an OpenAI chat, OpenAI
Responses or Anthropic Messages body into that sequence of :class:`Segment` s, keeping everything that
can shift a token boundary: whitespace is kept as sent, and JSON (tool schemas, tool calls) is
written with its keys in the order they were sent, because a provider sees the order it was sent.

Each segment is tokenised on its own and preceded by one boundary token (:data:`BOUNDARY`), which
stands for the provider's per-message framing tokens: counts are exact inside the text, and within a
token or two of the provider's at message boundaries.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from stratacache.errors import RequestError

__all__ = ["BOUNDARY", "PromptRequest", "Segment", "render_request"]

BOUNDARY = -1
"""The token id standing for a provider's framing between segments (never a real token id)."""

_STATIC_ROLES = frozenset({"system", "developer"})


@dataclass(frozen=True, slots=True)
class Segment:
    """One piece of a prompt, in the provider's order."""

    path: str
    """Where it is in the request body: ``tools[1]``, ``system``, ``messages[2].content[0]``."""
    role: str
    """``tool-definition``, ``response-format``, ``system``, ``developer``, ``user``, ``assistant``,
    ``tool``, or the item type of a Responses input item."""
    text: str
    """The text the provider tokenises."""
    breakpoint: str | None = None
    """An Anthropic ``cache_control`` breakpoint at the end of this segment: its TTL (``5m``, ``1h``)."""

    @property
    def static(self) -> bool:
        """Whether the segment belongs to what should be the same in every request of a template:
        tool definitions, the output schema and the system prompt."""
        return self.role in ("tool-definition", "response-format") or self.role in _STATIC_ROLES


@dataclass(frozen=True, slots=True)
class PromptRequest:
    """A request body laid out in the provider's prompt order."""

    format: str
    """``openai-chat``, ``openai-responses`` or ``anthropic-messages``."""
    model: str
    """The ``model`` field (``""`` when absent)."""
    segments: tuple[Segment, ...]
    """The prompt's segments in order."""
    tool_names: tuple[str, ...]
    """The names of the tools, in the order sent."""


_orjson_dumps: Callable[[Any], bytes] | None
try:
    from orjson import dumps as _orjson_dumps
except ImportError:  # pragma: no cover - orjson is installed with the proxy extra
    _orjson_dumps = None


def _dumps(value: Any) -> str:
    # Compact, keys in the order sent (a provider sees the order it was sent). orjson is an
    # order of magnitude faster; json handles what orjson refuses (integers beyond 64 bits).
    if _orjson_dumps is not None:
        try:
            return _orjson_dumps(value).decode()
        except TypeError:
            pass
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _without_cache_control(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: v for k, v in value.items() if k != "cache_control"}
    return value


def _breakpoint(block: Any) -> str | None:
    if not isinstance(block, Mapping):
        return None
    control = block.get("cache_control")
    if not isinstance(control, Mapping):
        return None
    ttl = control.get("ttl")
    return ttl if isinstance(ttl, str) and ttl else "5m"


def _part_text(part: Any) -> str:
    if isinstance(part, str):
        return part
    if isinstance(part, Mapping):
        kind = part.get("type")
        text = part.get("text")
        if kind in ("text", "input_text", "output_text") and isinstance(text, str):
            return text
        return _dumps(_without_cache_control(part))
    return _dumps(part)


def _content(path: str, role: str, content: Any) -> list[Segment]:
    if content is None:
        return []
    if isinstance(content, str):
        return [Segment(path, role, content)]
    if isinstance(content, Sequence):
        return [
            Segment(f"{path}[{i}]", role, _part_text(part), _breakpoint(part))
            for i, part in enumerate(content)
        ]
    return [Segment(path, role, _dumps(content), _breakpoint(content))]


def _tool_name(tool: Any) -> str:
    if not isinstance(tool, Mapping):
        return ""
    function = tool.get("function")
    name = function.get("name") if isinstance(function, Mapping) else tool.get("name")
    return name if isinstance(name, str) else ""


def _tools(body: Mapping[str, Any]) -> tuple[list[Segment], tuple[str, ...]]:
    tools = body.get("tools")
    if not isinstance(tools, Sequence) or isinstance(tools, str):
        return [], ()
    segments = [
        Segment(
            f"tools[{i}]",
            "tool-definition",
            _dumps(_without_cache_control(tool)),
            _breakpoint(tool),
        )
        for i, tool in enumerate(tools)
    ]
    return segments, tuple(_tool_name(tool) for tool in tools)


def _schema(body: Mapping[str, Any]) -> list[Segment]:
    schema = body.get("response_format")
    path = "response_format"
    if schema is None:
        text = body.get("text")
        if isinstance(text, Mapping) and text.get("format") is not None:
            schema, path = text.get("format"), "text.format"
    if schema is None:
        return []
    return [Segment(path, "response-format", _dumps(schema))]


def _messages(messages: Any, path: str = "messages") -> list[Segment]:
    if not isinstance(messages, Sequence) or isinstance(messages, str):
        raise RequestError(f"{path} must be a list")
    segments: list[Segment] = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise RequestError(f"{path}[{i}] must be an object")
        role = message.get("role")
        if not isinstance(role, str):
            # A Responses input item that is not a message (a function call, its output...).
            kind = message.get("type")
            segments.append(
                Segment(f"{path}[{i}]", kind if isinstance(kind, str) else "item", _dumps(message))
            )
            continue
        segments.extend(_content(f"{path}[{i}].content", role, message.get("content")))
        calls = message.get("tool_calls")
        if calls is not None:
            segments.append(Segment(f"{path}[{i}].tool_calls", role, _dumps(calls)))
    return segments


def _is_anthropic(body: Mapping[str, Any]) -> bool:
    if "system" in body or "anthropic_version" in body:
        return True
    tools = body.get("tools")
    if isinstance(tools, Sequence) and any(
        isinstance(t, Mapping) and ("input_schema" in t or "cache_control" in t) for t in tools
    ):
        return True
    messages = body.get("messages")
    if isinstance(messages, Sequence) and not isinstance(messages, str):
        for message in messages:
            content = message.get("content") if isinstance(message, Mapping) else None
            if (
                isinstance(content, Sequence)
                and not isinstance(content, str)
                and any(_breakpoint(block) for block in content)
            ):
                return True
    return False


def render_request(body: Mapping[str, Any]) -> PromptRequest:
    """Lay ``body`` out in prompt order; raises :class:`RequestError` for a body that is no
    chat, Responses or Messages request."""
    if not isinstance(body, Mapping):
        raise RequestError("a request body must be a JSON object")
    model = body.get("model")
    model = model if isinstance(model, str) else ""
    tools, names = _tools(body)
    segments = tools + _schema(body)
    if "messages" in body:
        if _is_anthropic(body):
            kind = "anthropic-messages"
            system = body.get("system")
            segments += _content("system", "system", system)
        else:
            kind = "openai-chat"
        segments += _messages(body["messages"])
    elif "input" in body or "instructions" in body:
        kind = "openai-responses"
        instructions = body.get("instructions")
        if isinstance(instructions, str):
            segments.append(Segment("instructions", "system", instructions))
        given = body.get("input")
        if isinstance(given, str):
            segments.append(Segment("input", "user", given))
        elif given is not None:
            segments += _messages(given, "input")
    else:
        raise RequestError("not a chat, Responses or Messages request (no messages or input)")
    return PromptRequest(kind, model, tuple(segments), names)
