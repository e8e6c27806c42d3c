"""Server-sent events, sans-IO: decode bytes into events, and convert between streams and bodies.

Two halves:

* :class:`SSEDecoder` / :func:`encode_event`: the wire format (WHATWG server-sent events). The
  decoder takes bytes in whatever pieces the network delivers them, a chunk boundary may fall on any
  byte, and returns complete events. It does no I/O.
* Assembly and disassembly, one pair per route: :func:`assemble_chat` turns the
  ``chat.completion.chunk`` objects of a stream into the ``chat.completion`` the same request would
  have returned without streaming, and :func:`chat_chunks` goes back, so a streamed record can
  answer a plain request and the other way round. :func:`assemble_completion` /
  :func:`completion_chunks` do the same for the legacy completions route, and
  :func:`assemble_response` / :func:`response_events` for the Responses API.

Assembly follows the OpenAI SDK's own accumulation (``openai.lib.streaming.chat``): strings are
concatenated, objects merged, lists of ``{"index": ...}`` entries merged by index, other lists
extended. Where the SDK's rule is an accident rather than the protocol, we keep the protocol:
``role``, ``type`` and ``id`` are replaced, not concatenated (some providers repeat ``"role":
"assistant"`` in every chunk), numbers are replaced, not summed, and a function ``name`` repeated
whole in a later delta is not doubled.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from stratacache.errors import MissingExtraError, RequestError, UpstreamError
from stratacache.llm.keys import Route

__all__ = [
    "DEFAULT_MAX_EVENT_BYTES",
    "DONE",
    "SSEDecoder",
    "SSEEvent",
    "assemble_chat",
    "assemble_completion",
    "assemble_response",
    "chat_chunks",
    "completion_chunks",
    "encode_event",
    "load_payloads",
    "response_events",
    "sse_frames",
]

DONE = b"[DONE]"
"""The data of the last event of a chat or legacy completions stream (Responses has none)."""
DEFAULT_MAX_EVENT_BYTES = 16 * 1024 * 1024
"""The default largest event an :class:`SSEDecoder` accepts.

A ``response.completed`` event carries the whole response, so this is generous: it bounds memory,
not normal traffic.
"""

_EOL = re.compile(rb"[\r\n]")
_EOL_SPLIT = re.compile(rb"\r\n|\r|\n")
_BOM = b"\xef\xbb\xbf"
_CR = 0x0D
_LF = 0x0A
_COLON = 0x3A

# Keys whose value names a thing rather than accumulating: replaced by a later delta, never joined.
_REPLACED = frozenset({"role", "type", "index", "id"})
# Top-level stream fields fixed by the first chunk, as in the SDK; the others take their last value.
_FIRST_WINS = ("id", "created", "model")
# OpenAI pads stream chunks with this random field against length side channels; a body has none.
_STREAM_ONLY = frozenset({"obfuscation"})
_NOT_COPIED = frozenset({"choices", "object"}) | _STREAM_ONLY
_TERMINAL_RESPONSE_EVENTS = frozenset(
    {"response.completed", "response.incomplete", "response.failed"}
)


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One dispatched server-sent event."""

    data: bytes
    """The event's data: its ``data:`` lines joined with ``\\n``."""
    event: str | None = None
    """The ``event:`` name, or ``None`` for the default (``message``)."""


class SSEDecoder:
    """Incremental server-sent-events parser: :meth:`feed` bytes, get complete events.

    Handles ``\\n``, ``\\r\\n`` and ``\\r`` line ends (a ``\\r\\n`` split across two feeds
    included), multi-line data, comments, a leading byte-order mark, and field lines without a space
    after the colon. ``id:`` and ``retry:`` are ignored: the cache neither reconnects nor resumes.
    An event larger than ``max_event_bytes`` raises :class:`UpstreamError`, after which the decoder
    refuses further input (the stream is unusable; a half-parsed event must not be served).

    >>> decoder = SSEDecoder()
    >>> decoder.feed(b'data: {"a":1}\\n\\nda')
    [SSEEvent(data=b'{"a":1}', event=None)]
    >>> decoder.feed(b"ta: [DONE]\\n\\n")
    [SSEEvent(data=b'[DONE]', event=None)]
    """

    __slots__ = (
        "_buffer",
        "_data",
        "_event",
        "_failed",
        "_scanned",
        "_size",
        "_skip_lf",
        "_started",
        "max_event_bytes",
    )

    def __init__(self, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        if max_event_bytes < 1:
            raise ValueError("max_event_bytes must be positive")
        self.max_event_bytes = max_event_bytes
        self._buffer = bytearray()  # bytes of the current, unfinished line
        self._scanned = 0  # how much of _buffer is known to hold no line end
        self._data: list[bytes] = []
        self._size = 0
        self._event: str | None = None
        self._skip_lf = False
        self._started = False
        self._failed = False

    @property
    def pending(self) -> bool:
        """Whether part of an event is buffered: a stream that ended now would be cut short."""
        return bool(self._buffer or self._data or self._event is not None)

    def feed(self, data: bytes) -> list[SSEEvent]:
        """Consume ``data`` and return the events it completed, in order."""
        if self._failed:
            raise UpstreamError("the event stream was already rejected")
        if not data:
            return []
        if self._skip_lf:
            # The previous feed ended on \r: a \n starting this one is the rest of that line end.
            self._skip_lf = False
            if data[0] == _LF:
                data = data[1:]
        buffer = self._buffer
        buffer += data
        if not self._started:
            if len(buffer) < len(_BOM) and _BOM.startswith(buffer):
                return []  # maybe a byte-order mark; wait for the rest of it
            if buffer.startswith(_BOM):
                del buffer[: len(_BOM)]
            self._started = True
        events: list[SSEEvent] = []
        start = 0
        end = len(buffer)
        match = _EOL.search(buffer, self._scanned)
        while match is not None:
            eol = match.start()
            after = eol + 1
            if buffer[eol] == _CR:
                if after < end:
                    if buffer[after] == _LF:
                        after += 1
                else:
                    self._skip_lf = True
            self._line(bytes(buffer[start:eol]), events)
            start = after
            match = _EOL.search(buffer, start)
        del buffer[:start]
        self._scanned = len(buffer)
        if len(buffer) + self._size > self.max_event_bytes:
            self._fail()
        return events

    def _line(self, line: bytes, events: list[SSEEvent]) -> None:
        if not line:
            if self._data:
                events.append(SSEEvent(b"\n".join(self._data), self._event))
            self._data = []
            self._size = 0
            self._event = None
            return
        if line[0] == _COLON:
            return  # a comment (keep-alive)
        name, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            self._data.append(value)
            self._size += len(value) + 1
            if self._size > self.max_event_bytes:
                self._fail()
        elif name == b"event":
            self._event = value.decode("utf-8", "replace") or None

    def _fail(self) -> None:
        self._failed = True
        self._buffer.clear()
        self._data = []
        raise UpstreamError(f"an upstream event exceeds the limit of {self.max_event_bytes} bytes")


def encode_event(data: bytes, event: str | None = None) -> bytes:
    """Encode one server-sent event. Line ends inside ``data`` become separate ``data:`` lines.

    >>> encode_event(b'{"a":1}')
    b'data: {"a":1}\\n\\n'
    >>> encode_event(b"{}", "response.created")
    b'event: response.created\\ndata: {}\\n\\n'
    """
    head = b""
    if event is not None:
        if "\r" in event or "\n" in event:
            raise RequestError("an SSE event name may not contain a line end")
        head = b"event: " + event.encode("utf-8") + b"\n"
    if b"\n" not in data and b"\r" not in data:
        return head + b"data: " + data + b"\n\n"
    lines = _EOL_SPLIT.split(data)
    return head + b"".join(b"data: " + line + b"\n" for line in lines) + b"\n"


def sse_frames(route: Route, payloads: Iterable[bytes]) -> Iterator[bytes]:
    """Encode recorded payloads as the SSE frames the upstream would have sent for ``route``.

    Chat and legacy completion streams end with ``data: [DONE]``; Responses API events carry their
    ``type`` as the SSE event name and have no ``[DONE]``.
    """
    if route == Route.RESPONSES:
        orjson = _orjson()
        for payload in payloads:
            kind = orjson.loads(payload).get("type")
            yield encode_event(payload, kind if isinstance(kind, str) else None)
        return
    for payload in payloads:
        yield encode_event(payload)
    yield encode_event(DONE)


def load_payloads(payloads: Iterable[bytes]) -> list[dict[str, Any]]:
    """Parse recorded SSE payloads as JSON objects (``[DONE]`` is skipped).

    Raises :class:`UpstreamError` for a payload that is not a JSON object.
    """
    orjson = _orjson()
    out: list[dict[str, Any]] = []
    for payload in payloads:
        if payload == DONE:
            continue
        try:
            value = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise UpstreamError(f"a stream event is not JSON: {exc}") from None
        if not isinstance(value, dict):
            raise UpstreamError("a stream event is not a JSON object")
        out.append(value)
    return out


# --- chat completions -----------------------------------------------------------------------------


def assemble_chat(chunks: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Build the ``chat.completion`` that a stream of ``chat.completion.chunk`` objects adds up to.

    Content, refusal and reasoning text (``reasoning_content``, ``reasoning``) are concatenated;
    tool call deltas are merged by index (id, type, function name, arguments); logprobs are
    concatenated; ``finish_reason`` is the last one given; ``usage`` comes from the final usage
    chunk (``None`` if the stream had none). Choices come out sorted by index. Raises
    :class:`UpstreamError` for a stream that is not a chat completion stream.
    """
    top, states = _accumulate(chunks, _chat_choice_delta)
    choices = []
    for index in sorted(states):
        state = states[index]
        delta = state.pop("delta")
        message: dict[str, Any] = {
            "role": delta.pop("role", None) or "assistant",
            "content": delta.pop("content", None),
        }
        message.update(delta)
        tool_calls = message.get("tool_calls")
        if isinstance(tool_calls, list):
            message["tool_calls"] = _finish_tool_calls(tool_calls)
        choices.append(
            {
                "index": index,
                "message": message,
                "logprobs": state.pop("logprobs", None),
                "finish_reason": state.pop("finish_reason", None),
                **state,
            }
        )
    return _envelope(top, "chat.completion", choices)


def chat_chunks(
    completion: Mapping[str, Any], *, include_usage: bool = False
) -> list[dict[str, Any]]:
    """Synthesise the stream of ``chat.completion.chunk`` objects for a non-streamed completion.

    Per choice: a role chunk (with any non-text message fields), one chunk per text
    field such as ``reasoning_content`` or ``refusal``, a content chunk, two chunks per tool call
    (id and name, then arguments) and a finish chunk. With ``include_usage`` (the request's
    ``stream_options.include_usage``) every chunk carries ``"usage": null`` and a final chunk with
    no choices carries the usage, as OpenAI does. :func:`assemble_chat` of the result gives back
    ``completion``.
    """
    base = _chunk_base(completion, "chat.completion.chunk", include_usage)
    chunks: list[dict[str, Any]] = []

    def emit(index: int, delta: dict[str, Any], **choice: Any) -> None:
        entry = {"index": index, "delta": delta, "logprobs": None, "finish_reason": None, **choice}
        chunks.append({**base, "choices": [entry]})

    for choice in _choices(completion):
        index = choice.get("index", 0)
        message = choice.get("message")
        if not isinstance(message, Mapping):
            raise UpstreamError("a chat completion choice has no message")
        content = message.get("content")
        extras = {k: v for k, v in message.items() if k not in ("role", "content", "tool_calls")}
        first: dict[str, Any] = {
            "role": message.get("role", "assistant"),
            "content": "" if isinstance(content, str) else content,
        }
        first.update((k, v) for k, v in extras.items() if not isinstance(v, str))
        tool_calls = message.get("tool_calls")
        streamed_calls = tool_calls if isinstance(tool_calls, list) and tool_calls else []
        if "tool_calls" in message and not streamed_calls:
            first["tool_calls"] = _copy(tool_calls)  # null or [] is kept as it was
        emit(index, first)
        for name, text in extras.items():
            if isinstance(text, str):
                emit(index, {name: text})
        # Logprobs travel with the tokens they describe, as OpenAI sends them; with no content they
        # ride on the finish chunk. Never on a choice's first chunk: the SDK's accumulator counts
        # the logprobs of a choice that first appears mid-stream twice.
        logprobs = _copy(choice.get("logprobs"))
        if isinstance(content, str) and content:
            emit(index, {"content": content}, logprobs=logprobs)
            logprobs = None
        for position, call in enumerate(streamed_calls):
            if not isinstance(call, Mapping):
                raise UpstreamError("a tool call is not an object")
            function = dict(call.get("function") or {})
            arguments = function.pop("arguments", None)
            head = {"index": position, **{k: v for k, v in call.items() if k != "function"}}
            head["function"] = {**function, "arguments": ""}
            emit(index, {"tool_calls": [head]})
            if arguments:
                emit(
                    index,
                    {"tool_calls": [{"index": position, "function": {"arguments": arguments}}]},
                )
        rest = {
            k: v
            for k, v in choice.items()
            if k not in ("index", "message", "logprobs", "finish_reason")
        }
        emit(index, {}, finish_reason=choice.get("finish_reason"), logprobs=logprobs, **rest)
    if include_usage:
        chunks.append({**base, "choices": [], "usage": completion.get("usage")})
    return chunks


# --- legacy completions ---------------------------------------------------------------------------


def assemble_completion(chunks: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Build the ``text_completion`` object that a legacy completions stream adds up to.

    Text is concatenated per choice, logprobs lists are concatenated, ``finish_reason`` is the last
    one given and ``usage`` comes from the final usage chunk.
    """
    top, states = _accumulate(chunks, _completion_choice_delta)
    choices = []
    for index in sorted(states):
        state = states[index]
        delta = state.pop("delta")
        choices.append(
            {
                "text": delta.get("text") or "",
                "index": index,
                "logprobs": state.pop("logprobs", None),
                "finish_reason": state.pop("finish_reason", None),
                **state,
            }
        )
    return _envelope(top, "text_completion", choices)


def completion_chunks(
    completion: Mapping[str, Any], *, include_usage: bool = False
) -> list[dict[str, Any]]:
    """Synthesise the legacy completions stream for a non-streamed ``text_completion``.

    Per choice, one chunk with the text and logprobs and one finish chunk; with ``include_usage`` a
    final chunk with no choices carries the usage.
    """
    base = _chunk_base(completion, "text_completion", include_usage)
    chunks: list[dict[str, Any]] = []
    for choice in _choices(completion):
        index = choice.get("index", 0)
        text = choice.get("text")
        if not isinstance(text, str):
            raise UpstreamError("a completion choice has no text")
        rest = {
            k: v
            for k, v in choice.items()
            if k not in ("text", "index", "logprobs", "finish_reason")
        }
        chunks.append(
            {
                **base,
                "choices": [
                    {
                        "text": text,
                        "index": index,
                        "logprobs": choice.get("logprobs"),
                        "finish_reason": None,
                    }
                ],
            }
        )
        finish = {
            "text": "",
            "index": index,
            "logprobs": None,
            "finish_reason": choice.get("finish_reason"),
            **rest,
        }
        chunks.append({**base, "choices": [finish]})
    if include_usage:
        chunks.append({**base, "choices": [], "usage": completion.get("usage")})
    return chunks


# --- Responses API --------------------------------------------------------------------------------


def assemble_response(events: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Return the response a Responses API event stream ended with.

    The terminal event (``response.completed``, or ``response.incomplete`` / ``response.failed``,
    whose responses :func:`~stratacache.llm.policy.storable` then refuses) carries the whole
    response. Raises :class:`UpstreamError` if the stream has no terminal event: it was cut short.
    """
    for event in reversed(events):
        if not isinstance(event, Mapping):
            raise UpstreamError("a Responses stream event is not an object")
        if event.get("type") in _TERMINAL_RESPONSE_EVENTS:
            response = event.get("response")
            if not isinstance(response, Mapping):
                raise UpstreamError(f"a {event.get('type')} event carries no response")
            return dict(_copy(response))
    raise UpstreamError("the Responses stream ended before its terminal event")


def response_events(response: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Synthesise the event sequence a streamed Responses API call would have sent for ``response``.

    ``response.created`` and ``response.in_progress`` (status ``in_progress``, no output yet); per
    output item ``response.output_item.added``; per message content part
    ``response.content_part.added``, one ``response.output_text.delta`` (or
    ``response.refusal.delta``), ``response.output_text.done`` (or ``response.refusal.done``) and
    ``response.content_part.done``; per function call one ``response.function_call_arguments.delta``
    and ``.done``; ``response.output_item.done``; and finally ``response.completed`` with the
    response itself. ``sequence_number`` counts from 0.
    """
    output = response.get("output")
    if not isinstance(output, list):
        raise UpstreamError("a response has no output list")
    sequence = itertools.count()
    events: list[dict[str, Any]] = []

    def emit(kind: str, **fields: Any) -> None:
        events.append({"type": kind, **fields, "sequence_number": next(sequence)})

    opening = {**_copy(response), "status": "in_progress", "output": [], "usage": None}
    for name in ("completed_at", "incomplete_details", "error"):
        if name in opening:
            opening[name] = None
    emit("response.created", response=opening)
    emit("response.in_progress", response=_copy(opening))
    for position, item in enumerate(output):
        if not isinstance(item, Mapping):
            raise UpstreamError("a response output item is not an object")
        _item_events(emit, position, item)
    emit("response.completed", response=_copy(response))
    return events


def _item_events(emit: Callable[..., None], position: int, item: Mapping[str, Any]) -> None:
    kind = item.get("type")
    item_id = item.get("id", "")
    started = _copy(item)
    if "status" in started:
        started["status"] = "in_progress"
    if kind == "message":
        started["content"] = []
        emit("response.output_item.added", output_index=position, item=started)
        content = item.get("content")
        for content_index, part in enumerate(content if isinstance(content, list) else ()):
            if not isinstance(part, Mapping):
                raise UpstreamError("a response content part is not an object")
            where = {"item_id": item_id, "output_index": position, "content_index": content_index}
            part_type = part.get("type")
            if part_type == "output_text":
                empty = {**_copy(part), "text": "", "annotations": []}
                if "logprobs" in empty:
                    empty["logprobs"] = []
                emit("response.content_part.added", **where, part=empty)
                text = part.get("text", "")
                logprobs = part.get("logprobs") or []
                if text:
                    emit(
                        "response.output_text.delta", **where, delta=text, logprobs=_copy(logprobs)
                    )
                emit("response.output_text.done", **where, text=text, logprobs=_copy(logprobs))
            elif part_type == "refusal":
                emit("response.content_part.added", **where, part={**_copy(part), "refusal": ""})
                refusal = part.get("refusal", "")
                if refusal:
                    emit("response.refusal.delta", **where, delta=refusal)
                emit("response.refusal.done", **where, refusal=refusal)
            else:
                emit("response.content_part.added", **where, part=_copy(part))
            emit("response.content_part.done", **where, part=_copy(part))
    elif kind == "function_call":
        started["arguments"] = ""
        emit("response.output_item.added", output_index=position, item=started)
        arguments = item.get("arguments", "")
        where = {"item_id": item_id, "output_index": position}
        if arguments:
            emit("response.function_call_arguments.delta", **where, delta=arguments)
        emit("response.function_call_arguments.done", **where, arguments=arguments)
    else:
        emit("response.output_item.added", output_index=position, item=started)
    emit("response.output_item.done", output_index=position, item=_copy(item))


# --- shared machinery -----------------------------------------------------------------------------


def _accumulate(
    chunks: Sequence[Mapping[str, Any]],
    delta_of: Callable[[Mapping[str, Any]], Mapping[str, Any]],
) -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
    """Fold stream chunks into top-level fields and per-choice state ``{"delta": merged, ...}``."""
    if not chunks:
        raise UpstreamError("the stream has no chunks")
    top: dict[str, Any] = {}
    states: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        if not isinstance(chunk, Mapping):
            raise UpstreamError("a stream chunk is not an object")
        for key, value in chunk.items():
            if key in _NOT_COPIED:
                continue
            if key in _FIRST_WINS:
                if top.get(key) is None:
                    top[key] = value
            elif value is not None or key not in top:
                top[key] = _copy(value)
        choices = chunk.get("choices")
        if choices is None:
            continue
        if not isinstance(choices, list):
            raise UpstreamError("a stream chunk's choices is not a list")
        for choice in choices:
            if not isinstance(choice, Mapping):
                raise UpstreamError("a stream choice is not an object")
            index = choice.get("index", 0)
            if not isinstance(index, int) or isinstance(index, bool) or index < 0:
                raise UpstreamError(f"a stream choice has an invalid index: {index!r}")
            state = states.setdefault(index, {"delta": {}})
            _merge(state["delta"], delta_of(choice))
            for key, value in choice.items():
                if key in ("index", "delta", "text") or key in _STREAM_ONLY:
                    continue
                if key == "logprobs":
                    if value is not None:
                        if not isinstance(value, Mapping):
                            raise UpstreamError("a stream choice's logprobs is not an object")
                        if state.get("logprobs") is None:
                            state["logprobs"] = {}
                        _merge(state["logprobs"], value)
                    else:
                        state.setdefault("logprobs", None)
                elif value is not None or key not in state:
                    state[key] = _copy(value)
    return top, states


def _chat_choice_delta(choice: Mapping[str, Any]) -> Mapping[str, Any]:
    delta = choice.get("delta")
    if delta is None:
        return {}
    if not isinstance(delta, Mapping):
        raise UpstreamError("a chat stream choice's delta is not an object")
    return delta


def _completion_choice_delta(choice: Mapping[str, Any]) -> Mapping[str, Any]:
    text = choice.get("text")
    if text is None:
        return {}
    if not isinstance(text, str):
        raise UpstreamError("a completion stream choice's text is not a string")
    return {"text": text}


def _merge(acc: dict[str, Any], delta: Mapping[str, Any]) -> None:
    for key, value in delta.items():
        if value is None:
            # Keep the field (``"refusal": null``) without erasing a value already there.
            acc.setdefault(key, None)
            continue
        old = acc.get(key)
        if isinstance(value, list):
            if not isinstance(old, list):
                old = acc[key] = []
            _merge_list(old, value)
        elif old is None:
            acc[key] = _copy(value)
        elif key in _REPLACED:
            acc[key] = value
        elif isinstance(old, str) and isinstance(value, str):
            if key == "name" and old == value:
                continue  # a provider repeating the whole name, not streaming it
            acc[key] = old + value
        elif isinstance(old, dict) and isinstance(value, Mapping):
            _merge(old, value)
        else:
            acc[key] = _copy(value)


def _merge_list(acc: list[Any], delta: list[Any]) -> None:
    for entry in delta:
        if isinstance(entry, Mapping) and "index" in entry:
            for existing in acc:
                if isinstance(existing, dict) and existing.get("index") == entry["index"]:
                    _merge(existing, entry)
                    break
            else:
                fresh: dict[str, Any] = {}
                _merge(fresh, entry)
                acc.append(fresh)
        else:
            acc.append(_copy(entry))


def _finish_tool_calls(calls: list[Any]) -> list[Any]:
    out = []
    for call in sorted(calls, key=lambda c: c.get("index", 0) if isinstance(c, dict) else 0):
        if isinstance(call, dict):
            finished = {k: v for k, v in call.items() if k != "index"}
            finished.setdefault("type", "function")
            out.append(finished)
        else:
            out.append(call)
    return out


def _envelope(top: dict[str, Any], kind: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": top.pop("id", None),
        "object": kind,
        "created": top.pop("created", None),
        "model": top.pop("model", None),
        "choices": choices,
        "usage": top.pop("usage", None),
    }
    out.update(top)
    return out


def _chunk_base(completion: Mapping[str, Any], kind: str, include_usage: bool) -> dict[str, Any]:
    if not isinstance(completion, Mapping):
        raise UpstreamError("a completion is not an object")
    base: dict[str, Any] = {
        "id": completion.get("id"),
        "object": kind,
        "created": completion.get("created"),
        "model": completion.get("model"),
    }
    for key, value in completion.items():
        if key not in ("id", "object", "created", "model", "choices", "usage"):
            base[key] = _copy(value)
    if include_usage:
        base["usage"] = None
    return base


def _choices(completion: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    choices = completion.get("choices")
    if not isinstance(choices, list) or not all(isinstance(c, Mapping) for c in choices):
        raise UpstreamError("a completion has no list of choices")
    return choices


def _copy(value: Any) -> Any:
    # A JSON-only deep copy: much cheaper than copy.deepcopy, and it turns Mappings into dicts.
    if isinstance(value, Mapping):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_copy(v) for v in value]
    return value


def _orjson() -> Any:
    try:
        import orjson
    except ImportError as exc:  # pragma: no cover - orjson is installed wherever tests run
        raise MissingExtraError("orjson", "proxy") from exc
    return orjson
