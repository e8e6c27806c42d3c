"""Tests for stratacache.llm.streams: the SSE decoder and the stream <-> body conversions.

Chat assembly is checked three ways: against the exact ``chat.completion`` object the same request
returns without streaming, against the openai SDK's own accumulation
(``openai.lib.streaming.chat.ChatCompletionStreamState``) fed the same chunks, and by round trips
through :func:`chat_chunks`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai import omit
from openai.lib.streaming.chat import ChatCompletionStreamState
from openai.lib.streaming.responses import ResponseStreamState
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

from stratacache.errors import RequestError, UpstreamError
from stratacache.llm.keys import Route
from stratacache.llm.policy import storable
from stratacache.llm.streams import (
    DONE,
    SSEDecoder,
    SSEEvent,
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

# --- SSE decoding ---------------------------------------------------------------------------------

SSE_FIXTURES: dict[str, tuple[bytes, list[SSEEvent]]] = {
    "openai-chat": (
        b'data: {"id":"1","choices":[]}\n\ndata: {"id":"2","choices":[]}\n\ndata: [DONE]\n\n',
        [
            SSEEvent(b'{"id":"1","choices":[]}'),
            SSEEvent(b'{"id":"2","choices":[]}'),
            SSEEvent(DONE),
        ],
    ),
    "crlf": (
        b"data: a\r\n\r\ndata: b\r\n\r\n",
        [SSEEvent(b"a"), SSEEvent(b"b")],
    ),
    "cr": (
        b"data: a\r\rdata: b\r\r",
        [SSEEvent(b"a"), SSEEvent(b"b")],
    ),
    "mixed-line-ends": (
        b"data: a\r\ndata: b\rdata: c\n\r\ndata: d\n\n",
        [SSEEvent(b"a\nb\nc"), SSEEvent(b"d")],
    ),
    "multi-line-data": (
        b"data: first\ndata: second\ndata:\ndata: fourth\n\n",
        [SSEEvent(b"first\nsecond\n\nfourth")],
    ),
    "comments-and-keepalives": (
        b": keep-alive\n\n: OPENROUTER PROCESSING\ndata: x\n: inside\n\n:\n\n",
        [SSEEvent(b"x")],
    ),
    "named-events": (
        b"event: response.created\ndata: {}\n\n"
        b"event:response.completed\ndata:{}\n\n"
        b"data: plain\n\n",
        [
            SSEEvent(b"{}", "response.created"),
            SSEEvent(b"{}", "response.completed"),
            SSEEvent(b"plain"),
        ],
    ),
    "event-without-data-is-not-dispatched": (
        b"event: ping\n\ndata: real\n\n",
        [SSEEvent(b"real")],
    ),
    "empty-data": (
        b"data\n\ndata:\n\n",
        [SSEEvent(b""), SSEEvent(b"")],
    ),
    "ignored-fields": (
        b"id: 7\nretry: 1000\nfoo: bar\ndata: x\n\n",
        [SSEEvent(b"x")],
    ),
    "only-one-space-is-stripped": (
        b"data:  two spaces\ndata:none\n\n",
        [SSEEvent(b" two spaces\nnone")],
    ),
    "colons-in-data": (
        b'data: {"a":"b:c"}\n\n',
        [SSEEvent(b'{"a":"b:c"}')],
    ),
    "byte-order-mark": (
        b"\xef\xbb\xbfdata: x\n\n",
        [SSEEvent(b"x")],
    ),
    "utf8-payload": (
        'data: {"t":"caf\u00e9 \u2014 \U0001f600"}\n\n'.encode(),
        [SSEEvent('{"t":"caf\u00e9 \u2014 \U0001f600"}'.encode())],
    ),
    "unterminated-tail-is-held": (
        b"data: done\n\ndata: partial",
        [SSEEvent(b"done")],
    ),
}


def decode_in_pieces(data: bytes, cuts: Sequence[int]) -> list[SSEEvent]:
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    start = 0
    for cut in [*cuts, len(data)]:
        events.extend(decoder.feed(data[start:cut]))
        start = cut
    return events


@pytest.mark.parametrize("name", sorted(SSE_FIXTURES))
def test_sse_fixture_whole(name: str) -> None:
    data, expected = SSE_FIXTURES[name]
    assert SSEDecoder().feed(data) == expected


@pytest.mark.parametrize("name", sorted(SSE_FIXTURES))
def test_sse_fixture_split_at_every_byte(name: str) -> None:
    data, expected = SSE_FIXTURES[name]
    for cut in range(len(data) + 1):
        assert decode_in_pieces(data, [cut]) == expected, f"split at byte {cut}"
    for first in range(len(data) + 1):
        for second in range(first, len(data) + 1, 3):
            assert decode_in_pieces(data, [first, second]) == expected, (first, second)


@pytest.mark.parametrize("name", sorted(SSE_FIXTURES))
def test_sse_fixture_byte_by_byte(name: str) -> None:
    data, expected = SSE_FIXTURES[name]
    assert decode_in_pieces(data, range(1, len(data))) == expected


@given(st.sampled_from(sorted(SSE_FIXTURES)), st.data())
def test_sse_fixture_random_pieces(name: str, data: st.DataObject) -> None:
    raw, expected = SSE_FIXTURES[name]
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=12)))
    assert decode_in_pieces(raw, cuts) == expected


def test_sse_pending() -> None:
    decoder = SSEDecoder()
    seen = [decoder.pending]
    for piece in (b"data: x", b"\n", b"\n", b"event: e\n"):
        decoder.feed(piece)
        seen.append(decoder.pending)
    # Nothing; a partial line; data not yet dispatched; dispatched; an event name waiting for data.
    assert seen == [False, True, True, False, True]


def test_sse_empty_feed() -> None:
    assert SSEDecoder().feed(b"") == []


def test_sse_cr_then_lf_in_the_next_feed_is_one_line_end() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b"data: a\r") == []
    assert decoder.feed(b"\n") == []
    assert decoder.feed(b"\r\n") == [SSEEvent(b"a")]


@pytest.mark.parametrize(
    ("payload", "ok"), [(b"x" * 8, True), (b"x" * 9, True), (b"x" * 10, False)]
)
def test_sse_max_event_size(payload: bytes, ok: bool) -> None:
    decoder = SSEDecoder(max_event_bytes=10)
    frame = b"data: " + payload + b"\n\n"
    if ok:
        assert decoder.feed(frame) == [SSEEvent(payload)]
    else:
        with pytest.raises(UpstreamError, match="exceeds the limit of 10 bytes"):
            decoder.feed(frame)


def test_sse_max_event_size_counts_every_data_line() -> None:
    decoder = SSEDecoder(max_event_bytes=10)
    decoder.feed(b"data: 1234\n")
    with pytest.raises(UpstreamError):
        decoder.feed(b"data: 56789\n")  # 5 + 6 bytes with the joining newlines


def test_sse_max_event_size_applies_to_an_unterminated_line_fed_byte_by_byte() -> None:
    decoder = SSEDecoder(max_event_bytes=64)
    for _ in range(64):
        assert decoder.feed(b"x") == []
    with pytest.raises(UpstreamError):
        decoder.feed(b"x")


def test_sse_decoder_refuses_input_after_failing() -> None:
    decoder = SSEDecoder(max_event_bytes=4)
    with pytest.raises(UpstreamError):
        decoder.feed(b"data: 123456\n\n")
    with pytest.raises(UpstreamError, match="already rejected"):
        decoder.feed(b"data: 1\n\n")


def test_sse_decoder_limit_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        SSEDecoder(max_event_bytes=0)


def test_sse_many_events_in_one_feed_stay_linear() -> None:
    frame = b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n'
    events = SSEDecoder().feed(frame * 20_000)
    assert len(events) == 20_000


# --- SSE encoding ---------------------------------------------------------------------------------


def test_encode_event() -> None:
    assert encode_event(b"{}") == b"data: {}\n\n"
    assert encode_event(DONE) == b"data: [DONE]\n\n"
    assert encode_event(b"a\nb") == b"data: a\ndata: b\n\n"
    assert encode_event(b"{}", "response.completed") == b"event: response.completed\ndata: {}\n\n"


def test_encode_event_rejects_a_line_end_in_the_name() -> None:
    with pytest.raises(RequestError):
        encode_event(b"{}", "bad\nname")


event_names = st.none() | st.text(
    alphabet=st.characters(codec="utf-8", blacklist_characters="\r\n"), min_size=1
)


@given(st.lists(st.tuples(st.binary(max_size=60), event_names), max_size=6))
def test_encode_then_decode(events: list[tuple[bytes, str | None]]) -> None:
    stream = b"".join(encode_event(data, name) for data, name in events)
    expected = [
        SSEEvent(data.replace(b"\r\n", b"\n").replace(b"\r", b"\n"), name) for data, name in events
    ]
    assert SSEDecoder().feed(stream) == expected
    assert decode_in_pieces(stream, range(1, len(stream))) == expected


def test_sse_frames_for_chat_end_with_done() -> None:
    frames = list(sse_frames(Route.CHAT, [b'{"a":1}', b'{"b":2}']))
    assert frames == [b'data: {"a":1}\n\n', b'data: {"b":2}\n\n', b"data: [DONE]\n\n"]


def test_sse_frames_for_responses_name_the_event() -> None:
    payloads = [orjson.dumps(e) for e in response_events(RESPONSE)]
    stream = b"".join(sse_frames(Route.RESPONSES, payloads))
    events = SSEDecoder().feed(stream)
    assert [e.data for e in events] == payloads
    assert [e.event for e in events] == [orjson.loads(p)["type"] for p in payloads]
    assert DONE not in stream


def test_load_payloads() -> None:
    assert load_payloads([b'{"a":1}', DONE, b'{"b":[]}']) == [{"a": 1}, {"b": []}]
    with pytest.raises(UpstreamError, match="not JSON"):
        load_payloads([b"{nope"])
    with pytest.raises(UpstreamError, match="not a JSON object"):
        load_payloads([b"[1]"])


# --- chat fixtures --------------------------------------------------------------------------------

OPENAI_BASE = {
    "id": "chatcmpl-A1",
    "object": "chat.completion.chunk",
    "created": 1_727_000_000,
    "model": "gpt-4o-mini-2024-07-18",
    "service_tier": "default",
    "system_fingerprint": "fp_0ba0d124f1",
}
USAGE = {
    "prompt_tokens": 14,
    "completion_tokens": 7,
    "total_tokens": 21,
    "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
    "completion_tokens_details": {
        "reasoning_tokens": 0,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    },
}


def chunk(
    delta: dict[str, Any] | None = None,
    *,
    index: int = 0,
    finish: str | None = None,
    base: dict[str, Any] = OPENAI_BASE,
    **extra: Any,
) -> dict[str, Any]:
    choice = {"index": index, "delta": delta or {}, "logprobs": None, "finish_reason": finish}
    choice.update(extra.pop("choice_extra", {}))
    return {**base, "choices": [choice], **extra}


def usage_chunk(base: dict[str, Any] = OPENAI_BASE) -> dict[str, Any]:
    return {**base, "choices": [], "usage": USAGE}


def completion(
    *choices: dict[str, Any], usage: Any = USAGE, base: dict[str, Any] = OPENAI_BASE
) -> dict[str, Any]:
    out = {k: v for k, v in base.items() if k not in ("id", "object", "created", "model")}
    return {
        "id": base["id"],
        "object": "chat.completion",
        "created": base["created"],
        "model": base["model"],
        "choices": list(choices),
        "usage": usage,
        **out,
    }


def choice(
    message: dict[str, Any], finish: str = "stop", index: int = 0, logprobs: Any = None
) -> dict[str, Any]:
    return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": finish}


TOKEN = {"token": "4", "logprob": -0.0001, "bytes": [52], "top_logprobs": []}
TOKEN_DOT = {"token": ".", "logprob": -0.02, "bytes": [46], "top_logprobs": []}

CHAT_FIXTURES: dict[str, tuple[list[dict[str, Any]], dict[str, Any]]] = {
    "text-with-usage": (
        [
            chunk(
                {"role": "assistant", "content": "", "refusal": None}, usage=None, obfuscation="q"
            ),
            chunk({"content": "Two plus"}, usage=None, obfuscation="xyz"),
            chunk({"content": " two is 4."}, usage=None),
            chunk({}, finish="stop", usage=None),
            usage_chunk(),
        ],
        completion(choice({"role": "assistant", "content": "Two plus two is 4.", "refusal": None})),
    ),
    "parallel-tool-calls": (
        [
            chunk(
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_a",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": ""},
                        }
                    ],
                    "refusal": None,
                }
            ),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]}),
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]}),
            chunk(
                {
                    "tool_calls": [
                        {
                            "index": 1,
                            "id": "call_b",
                            "type": "function",
                            "function": {"name": "get_time", "arguments": ""},
                        }
                    ]
                }
            ),
            chunk({"tool_calls": [{"index": 1, "function": {"arguments": '{"tz": "CET"}'}}]}),
            chunk({}, finish="tool_calls"),
        ],
        completion(
            choice(
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "call_a",
                            "type": "function",
                            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                        },
                        {
                            "id": "call_b",
                            "type": "function",
                            "function": {"name": "get_time", "arguments": '{"tz": "CET"}'},
                        },
                    ],
                    "refusal": None,
                },
                finish="tool_calls",
            ),
            usage=None,
        ),
    ),
    "reasoning-content": (
        [
            chunk({"role": "assistant", "content": ""}),
            chunk({"reasoning_content": "The user asks"}),
            chunk({"reasoning_content": " for 2+2."}),
            chunk({"content": "4"}),
            chunk({}, finish="stop"),
            usage_chunk(),
        ],
        completion(
            choice(
                {
                    "role": "assistant",
                    "content": "4",
                    "reasoning_content": "The user asks for 2+2.",
                }
            )
        ),
    ),
    "refusal": (
        [
            chunk({"role": "assistant", "content": None, "refusal": ""}),
            chunk({"refusal": "I'm sorry,"}),
            chunk({"refusal": " I can't help with that."}),
            chunk({}, finish="stop"),
            usage_chunk(),
        ],
        completion(
            choice(
                {
                    "role": "assistant",
                    "content": None,
                    "refusal": "I'm sorry, I can't help with that.",
                }
            )
        ),
    ),
    "logprobs": (
        [
            chunk(
                {"role": "assistant", "content": "", "refusal": None},
                choice_extra={"logprobs": {"content": [], "refusal": None}},
            ),
            chunk(
                {"content": "4"}, choice_extra={"logprobs": {"content": [TOKEN], "refusal": None}}
            ),
            chunk(
                {"content": "."},
                choice_extra={"logprobs": {"content": [TOKEN_DOT], "refusal": None}},
            ),
            chunk({}, finish="stop"),
            usage_chunk(),
        ],
        completion(
            choice(
                {"role": "assistant", "content": "4.", "refusal": None},
                logprobs={"content": [TOKEN, TOKEN_DOT], "refusal": None},
            )
        ),
    ),
    "two-choices-interleaved": (
        [
            chunk({"role": "assistant", "content": ""}, index=0),
            chunk({"role": "assistant", "content": ""}, index=1),
            chunk({"content": "Heads"}, index=1),
            chunk({"content": "Tails"}, index=0),
            {
                **OPENAI_BASE,
                "choices": [
                    {"index": 1, "delta": {}, "logprobs": None, "finish_reason": "stop"},
                    {
                        "index": 0,
                        "delta": {"content": "!"},
                        "logprobs": None,
                        "finish_reason": "stop",
                    },
                ],
            },
            usage_chunk(),
        ],
        completion(
            choice({"role": "assistant", "content": "Tails!"}, index=0),
            choice({"role": "assistant", "content": "Heads"}, index=1),
        ),
    ),
}

# Not fed to the SDK: it concatenates a role repeated in every chunk ("assistantassistant").
VLLM_BASE = {"id": "chatcmpl-v", "object": "chat.completion.chunk", "created": 5, "model": "qwen"}
REPEATED_ROLE = (
    [
        chunk({"role": "assistant", "reasoning": "Hmm"}, base=VLLM_BASE),
        chunk({"role": "assistant", "reasoning": "."}, base=VLLM_BASE),
        chunk({"role": "assistant", "content": "Hi"}, base=VLLM_BASE),
        chunk(
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "c",
                        "type": "function",
                        "function": {"name": "f", "arguments": "{"},
                    }
                ],
            },
            base=VLLM_BASE,
        ),
        chunk(
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "c",
                        "type": "function",
                        "function": {"name": "f", "arguments": "}"},
                    }
                ],
            },
            base=VLLM_BASE,
        ),
        chunk({}, finish="tool_calls", base=VLLM_BASE, choice_extra={"stop_reason": None}),
    ],
    completion(
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Hi",
                "reasoning": "Hmm.",
                "tool_calls": [
                    {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                ],
            },
            "logprobs": None,
            "finish_reason": "tool_calls",
            "stop_reason": None,
        },
        usage=None,
        base=VLLM_BASE,
    ),
)


def sdk_final(chunks: Sequence[dict[str, Any]]) -> Any:
    state: ChatCompletionStreamState[Any] = ChatCompletionStreamState()
    for c in chunks:
        state.handle_chunk(ChatCompletionChunk.model_validate(c))
    # The snapshot, not get_final_completion(): the latter refuses to parse "length" and
    # "content_filter" completions, which are exactly the ones we must see to refuse storing them.
    return state.current_completion_snapshot


def assert_matches_sdk(chunks: Sequence[dict[str, Any]], assembled: dict[str, Any]) -> None:
    """Our assembled body must agree with the SDK's accumulation on every answer-bearing field."""
    ours = ChatCompletion.model_validate(assembled)  # also proves the shape is a valid completion
    sdk = sdk_final(chunks)
    assert (ours.id, ours.model, ours.created) == (sdk.id, sdk.model, sdk.created)
    assert ours.system_fingerprint == sdk.system_fingerprint
    assert (ours.usage.model_dump() if ours.usage else None) == (
        sdk.usage.model_dump() if sdk.usage else None
    )
    assert len(ours.choices) == len(sdk.choices)
    for mine, theirs in zip(ours.choices, sdk.choices, strict=True):
        assert mine.index == theirs.index
        assert mine.finish_reason == theirs.finish_reason
        assert mine.message.role == theirs.message.role
        assert mine.message.content == theirs.message.content
        assert mine.message.refusal == theirs.message.refusal
        assert getattr(mine.message, "reasoning_content", None) == getattr(
            theirs.message, "reasoning_content", None
        )
        mine_calls = [
            (c.id, c.type, c.function.name, c.function.arguments)  # type: ignore[union-attr]
            for c in mine.message.tool_calls or []
        ]
        their_calls = [
            (c.id, c.type, c.function.name, c.function.arguments)
            for c in theirs.message.tool_calls or []
        ]
        assert mine_calls == their_calls
        mine_lp = mine.logprobs.model_dump() if mine.logprobs else None
        their_lp = theirs.logprobs.model_dump() if theirs.logprobs else None
        assert mine_lp == their_lp


@pytest.mark.parametrize("name", sorted(CHAT_FIXTURES))
def test_assemble_chat_equals_the_non_streamed_body(name: str) -> None:
    chunks, expected = CHAT_FIXTURES[name]
    assert assemble_chat(chunks) == expected


@pytest.mark.parametrize("name", sorted(CHAT_FIXTURES))
def test_assemble_chat_agrees_with_the_openai_sdk(name: str) -> None:
    chunks, _ = CHAT_FIXTURES[name]
    assert_matches_sdk(chunks, assemble_chat(chunks))


def test_assemble_chat_does_not_mutate_its_input() -> None:
    chunks, _ = CHAT_FIXTURES["parallel-tool-calls"]
    snapshot = copy.deepcopy(chunks)
    assembled = assemble_chat(chunks)
    assembled["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] += "changed"
    assert chunks == snapshot


def test_assemble_chat_repeated_role_and_reasoning_field() -> None:
    chunks, expected = REPEATED_ROLE
    assert assemble_chat(chunks) == expected


def test_assemble_chat_name_repeated_whole_is_not_doubled() -> None:
    call = {"index": 0, "id": "c", "type": "function"}
    chunks = [
        chunk(
            {
                "role": "assistant",
                "tool_calls": [{**call, "function": {"name": "lookup", "arguments": "{"}}],
            }
        ),
        chunk({"tool_calls": [{**call, "function": {"name": "lookup", "arguments": "}"}}]}),
        chunk({}, finish="tool_calls"),
    ]
    message = assemble_chat(chunks)["choices"][0]["message"]
    assert message["tool_calls"] == [
        {"id": "c", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}
    ]


def test_assemble_chat_one_chunk_with_several_fragments_of_one_tool_call() -> None:
    chunks = [
        chunk(
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "index": 0,
                        "id": "c",
                        "type": "function",
                        "function": {"name": "f", "arguments": "{"},
                    },
                    {"index": 0, "function": {"arguments": "}"}},
                ],
            }
        ),
        chunk({}, finish="tool_calls"),
    ]
    assembled = assemble_chat(chunks)
    assert assembled["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"] == "{}"
    assert_matches_sdk(chunks, assembled)


def test_assemble_chat_of_a_stream_without_finish_is_not_storable() -> None:
    chunks, _ = CHAT_FIXTURES["text-with-usage"]
    cut = assemble_chat(chunks[:2])
    assert cut["choices"][0]["finish_reason"] is None
    assert storable(Route.CHAT, cut) == "unfinished"


def test_assemble_chat_keeps_a_mid_stream_error() -> None:
    chunks = [chunk({"role": "assistant", "content": "Hi"}), {"error": {"message": "overloaded"}}]
    assert storable(Route.CHAT, assemble_chat(chunks)) == "error"


@pytest.mark.parametrize(
    "chunks",
    [
        [],
        ["not a chunk"],
        [{"choices": "nope"}],
        [{"choices": ["nope"]}],
        [{"choices": [{"index": -1, "delta": {}}]}],
        [{"choices": [{"index": "0", "delta": {}}]}],
        [{"choices": [{"index": 0, "delta": "text"}]}],
        [{"choices": [{"index": 0, "delta": {}, "logprobs": "x"}]}],
    ],
)
def test_assemble_chat_rejects_malformed_streams(chunks: list[Any]) -> None:
    with pytest.raises(UpstreamError):
        assemble_chat(chunks)


# --- chat round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CHAT_FIXTURES))
def test_chat_chunks_round_trip(name: str) -> None:
    _, body = CHAT_FIXTURES[name]
    chunks = chat_chunks(body, include_usage=True)
    for c in chunks:
        ChatCompletionChunk.model_validate(c)
    assert assemble_chat(chunks) == body
    assert_matches_sdk(chunks, assemble_chat(chunks))


def test_chat_chunks_shape() -> None:
    _, body = CHAT_FIXTURES["text-with-usage"]
    chunks = chat_chunks(body, include_usage=True)
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert all(c["id"] == body["id"] and c["model"] == body["model"] for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == USAGE
    assert all(c["usage"] is None for c in chunks[:-1])


def test_chat_chunks_without_usage() -> None:
    _, body = CHAT_FIXTURES["text-with-usage"]
    chunks = chat_chunks(body)
    assert all("usage" not in c for c in chunks)
    assert assemble_chat(chunks) == {**body, "usage": None}


def test_chat_chunks_of_a_streamed_record_replays_faithfully_over_sse() -> None:
    # The full path a streamed hit takes: record payloads -> SSE frames -> client-side decoding.
    chunks, body = CHAT_FIXTURES["parallel-tool-calls"]
    payloads = [orjson.dumps(c) for c in chunks]
    stream = b"".join(sse_frames(Route.CHAT, payloads))
    for cut in range(0, len(stream), 11):
        decoded = decode_in_pieces(stream, [cut])
        assert [e.data for e in decoded] == [*payloads, DONE]
    assert assemble_chat(load_payloads(e.data for e in SSEDecoder().feed(stream))) == body


def test_chat_chunks_keeps_null_and_empty_tool_calls() -> None:
    calls: list[Any] | None
    for calls in (None, []):
        body = completion(choice({"role": "assistant", "content": "x", "tool_calls": calls}))
        assert assemble_chat(chat_chunks(body, include_usage=True)) == body


def test_chat_chunks_rejects_a_malformed_completion() -> None:
    with pytest.raises(UpstreamError):
        chat_chunks({"choices": "x"})
    with pytest.raises(UpstreamError):
        chat_chunks({"choices": [{"index": 0}]})


safe_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=30)
tool_calls = st.lists(
    st.fixed_dictionaries(
        {
            "id": st.text(alphabet="abcdef0123456789", min_size=1, max_size=8).map("call_".__add__),
            "type": st.just("function"),
            "function": st.fixed_dictionaries({"name": safe_text, "arguments": safe_text}),
        }
    ),
    min_size=1,
    max_size=3,
)
token_logprob = st.fixed_dictionaries(
    {
        "token": safe_text,
        "logprob": st.floats(-20, 0),
        "bytes": st.lists(st.integers(0, 255), max_size=4),
        "top_logprobs": st.just([]),
    }
)


@st.composite
def chat_completions(draw: st.DrawFn) -> dict[str, Any]:
    choices = []
    for index in range(draw(st.integers(1, 3))):
        message: dict[str, Any] = {"role": "assistant", "content": draw(st.none() | safe_text)}
        if draw(st.booleans()):
            message["refusal"] = draw(st.none() | safe_text)
        if draw(st.booleans()):
            message["tool_calls"] = draw(tool_calls)
        if draw(st.booleans()):
            message["reasoning_content"] = draw(safe_text)
        if draw(st.booleans()):
            message["annotations"] = []
        logprobs = draw(
            st.none()
            | st.fixed_dictionaries(
                {"content": st.none() | st.lists(token_logprob, max_size=3), "refusal": st.none()}
            )
        )
        finish = draw(st.sampled_from(["stop", "length", "tool_calls", "content_filter"]))
        choices.append(choice(message, finish=finish, index=index, logprobs=logprobs))
    base = {
        "id": "chatcmpl-" + draw(st.text(alphabet="abc123", min_size=1, max_size=6)),
        "object": "chat.completion.chunk",
        "created": draw(st.integers(0, 2**31)),
        "model": draw(safe_text),
    }
    if draw(st.booleans()):
        base["system_fingerprint"] = draw(st.none() | safe_text)
    usage = draw(
        st.none()
        | st.fixed_dictionaries(
            {
                "prompt_tokens": st.integers(0, 10**6),
                "completion_tokens": st.integers(0, 10**6),
                "total_tokens": st.integers(0, 10**6),
            }
        )
    )
    return completion(*choices, usage=usage, base=base)


@settings(max_examples=150, deadline=None)
@given(chat_completions())
def test_chat_round_trip_property(body: dict[str, Any]) -> None:
    chunks = chat_chunks(body, include_usage=True)
    assert assemble_chat(chunks) == body
    assert_matches_sdk(chunks, assemble_chat(chunks))


# --- legacy completions ---------------------------------------------------------------------------

LEGACY_BASE = {
    "id": "cmpl-9",
    "object": "text_completion",
    "created": 1_727_000_001,
    "model": "gpt-3.5-turbo-instruct",
}
LEGACY_USAGE = {"prompt_tokens": 4, "completion_tokens": 4, "total_tokens": 8}


def legacy(
    text: str, finish: str | None = None, logprobs: Any = None, index: int = 0
) -> dict[str, Any]:
    return {
        **LEGACY_BASE,
        "choices": [{"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish}],
    }


LEGACY_CHUNKS = [
    legacy(
        "Once",
        logprobs={
            "tokens": ["Once"],
            "token_logprobs": [-0.5],
            "top_logprobs": [{"Once": -0.5}],
            "text_offset": [0],
        },
    ),
    legacy(
        " upon",
        logprobs={
            "tokens": [" upon"],
            "token_logprobs": [-0.1],
            "top_logprobs": [{" upon": -0.1}],
            "text_offset": [4],
        },
    ),
    legacy("", finish="length"),
    {**LEGACY_BASE, "choices": [], "usage": LEGACY_USAGE},
]
LEGACY_BODY = {
    **LEGACY_BASE,
    "choices": [
        {
            "text": "Once upon",
            "index": 0,
            "logprobs": {
                "tokens": ["Once", " upon"],
                "token_logprobs": [-0.5, -0.1],
                "top_logprobs": [{"Once": -0.5}, {" upon": -0.1}],
                "text_offset": [0, 4],
            },
            "finish_reason": "length",
        }
    ],
    "usage": LEGACY_USAGE,
}


def test_assemble_completion() -> None:
    assembled = assemble_completion(LEGACY_CHUNKS)
    assert assembled == LEGACY_BODY
    Completion.model_validate(assembled)


def test_completion_chunks_round_trip() -> None:
    chunks = completion_chunks(LEGACY_BODY, include_usage=True)
    assert assemble_completion(chunks) == LEGACY_BODY
    assert assemble_completion(completion_chunks(LEGACY_BODY)) == {**LEGACY_BODY, "usage": None}


def test_completion_two_choices() -> None:
    body = {
        **LEGACY_BASE,
        "choices": [
            {"text": "a", "index": 0, "logprobs": None, "finish_reason": "stop"},
            {"text": "b", "index": 1, "logprobs": None, "finish_reason": "stop"},
        ],
        "usage": LEGACY_USAGE,
    }
    assert assemble_completion(completion_chunks(body, include_usage=True)) == body
    interleaved = [
        legacy("b", index=1),
        legacy("a", index=0),
        legacy("", "stop", index=1),
        legacy("", "stop"),
    ]
    assert assemble_completion(interleaved)["choices"] == [
        {"text": "a", "index": 0, "logprobs": None, "finish_reason": "stop"},
        {"text": "b", "index": 1, "logprobs": None, "finish_reason": "stop"},
    ]


@given(st.lists(safe_text, min_size=1, max_size=6), st.sampled_from(["stop", "length"]))
def test_completion_text_is_concatenated(pieces: list[str], finish: str) -> None:
    chunks = [legacy(p) for p in pieces] + [legacy("", finish)]
    assembled = assemble_completion(chunks)
    assert assembled["choices"][0]["text"] == "".join(pieces)
    assert assembled["choices"][0]["finish_reason"] == finish


def test_completion_rejects_malformed_input() -> None:
    with pytest.raises(UpstreamError):
        assemble_completion([{"choices": [{"index": 0, "text": 5}]}])
    with pytest.raises(UpstreamError):
        completion_chunks({"choices": [{"index": 0}]})


# --- Responses API --------------------------------------------------------------------------------

RESPONSE: dict[str, Any] = {
    "id": "resp_67ccd2bed1ec8190b14f964abc054267",
    "object": "response",
    "created_at": 1_741_476_542,
    "status": "completed",
    "error": None,
    "incomplete_details": None,
    "instructions": None,
    "max_output_tokens": None,
    "model": "gpt-4.1-2025-04-14",
    "output": [
        {
            "id": "rs_1",
            "type": "reasoning",
            "summary": [{"type": "summary_text", "text": "Looked up the capital."}],
        },
        {
            "id": "msg_1",
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [
                {
                    "type": "output_text",
                    "text": "Paris is the capital of France.",
                    "annotations": [],
                    "logprobs": [],
                }
            ],
        },
        {
            "id": "fc_1",
            "type": "function_call",
            "status": "completed",
            "call_id": "call_1",
            "name": "get_weather",
            "arguments": '{"city":"Paris"}',
        },
    ],
    "parallel_tool_calls": True,
    "previous_response_id": None,
    "reasoning": {"effort": None, "summary": None},
    "store": True,
    "temperature": 0.0,
    "text": {"format": {"type": "text"}},
    "tool_choice": "auto",
    "tools": [],
    "top_p": 1.0,
    "truncation": "disabled",
    "usage": {
        "input_tokens": 36,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": 87,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 123,
    },
    "user": None,
    "metadata": {},
}

REFUSAL_RESPONSE = {
    **RESPONSE,
    "output": [
        {
            "id": "msg_2",
            "type": "message",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "refusal", "refusal": "I can't help with that."}],
        }
    ],
}

EVENT = TypeAdapter(ResponseStreamEvent)


@pytest.mark.parametrize("response", [RESPONSE, REFUSAL_RESPONSE], ids=["text+call", "refusal"])
def test_response_events_are_valid_sdk_events(response: dict[str, Any]) -> None:
    events = response_events(response)
    for event in events:
        EVENT.validate_python(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert events[0]["type"] == "response.created"
    assert events[0]["response"]["status"] == "in_progress"
    assert events[0]["response"]["output"] == []
    assert events[-1] == {
        "type": "response.completed",
        "response": response,
        "sequence_number": len(events) - 1,
    }


def test_response_events_sequence() -> None:
    types = [e["type"] for e in response_events(RESPONSE)]
    assert types == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",  # reasoning
        "response.output_item.done",
        "response.output_item.added",  # message
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",  # function call
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]


@pytest.mark.parametrize("response", [RESPONSE, REFUSAL_RESPONSE], ids=["text+call", "refusal"])
def test_response_events_agree_with_the_openai_sdk(response: dict[str, Any]) -> None:
    state: ResponseStreamState[Any] = ResponseStreamState(input_tools=omit, text_format=omit)
    completed = None
    deltas = ""
    for raw in response_events(response):
        for event in state.handle_event(EVENT.validate_python(raw)):
            if event.type == "response.output_text.delta":
                deltas += event.delta
            if event.type == "response.completed":
                completed = event.response
    assert completed is not None
    expected = Response.model_validate(response)
    assert completed.output_text == expected.output_text
    assert deltas == expected.output_text
    assert completed.model_dump(exclude={"output"}) == expected.model_dump(exclude={"output"})
    # The SDK adds its own "parsed" / "parsed_arguments" fields; everything else must be identical.
    assert [_without_parsed(item.model_dump()) for item in completed.output] == [
        item.model_dump() for item in expected.output
    ]


def _without_parsed(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: _without_parsed(v)
            for k, v in value.items()
            if k not in ("parsed", "parsed_arguments")
        }
    if isinstance(value, list):
        return [_without_parsed(v) for v in value]
    return value


def test_assemble_response_round_trip() -> None:
    assert assemble_response(response_events(RESPONSE)) == RESPONSE
    assert storable(Route.RESPONSES, assemble_response(response_events(RESPONSE))) is None
    assert (
        storable(Route.RESPONSES, assemble_response(response_events(REFUSAL_RESPONSE))) == "refusal"
    )


def test_assemble_response_of_an_incomplete_stream() -> None:
    incomplete = {
        **RESPONSE,
        "status": "incomplete",
        "incomplete_details": {"reason": "max_output_tokens"},
    }
    events = [
        *response_events(RESPONSE)[:-1],
        {"type": "response.incomplete", "response": incomplete, "sequence_number": 99},
    ]
    assembled = assemble_response(events)
    assert assembled == incomplete
    assert storable(Route.RESPONSES, assembled) == "status:incomplete"


def test_assemble_response_of_a_cut_stream_raises() -> None:
    with pytest.raises(UpstreamError, match="before its terminal event"):
        assemble_response(response_events(RESPONSE)[:-1])
    with pytest.raises(UpstreamError):
        assemble_response([])
    with pytest.raises(UpstreamError):
        assemble_response([{"type": "response.completed", "response": None}])


def test_assemble_response_returns_a_copy() -> None:
    events = response_events(RESPONSE)
    assembled = assemble_response(events)
    assembled["output"].clear()
    assert events[-1]["response"]["output"]


def test_response_events_reject_malformed_responses() -> None:
    with pytest.raises(UpstreamError):
        response_events({"id": "r"})
    with pytest.raises(UpstreamError):
        response_events({**RESPONSE, "output": ["x"]})
    with pytest.raises(UpstreamError):
        response_events({**RESPONSE, "output": [{"type": "message", "id": "m", "content": ["x"]}]})


def test_response_events_for_other_content_parts_and_items() -> None:
    odd = {
        **RESPONSE,
        "output": [
            {"id": "ws_1", "type": "web_search_call", "status": "completed"},
            {
                "id": "msg_3",
                "type": "message",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "some_future_part", "data": 1}],
            },
        ],
    }
    events = response_events(odd)
    assert [e["type"] for e in events][2:-1] == [
        "response.output_item.added",
        "response.output_item.done",
        "response.output_item.added",
        "response.content_part.added",
        "response.content_part.done",
        "response.output_item.done",
    ]
    assert events[2]["item"]["status"] == "in_progress"
    assert assemble_response(events) == odd


def test_assemble_response_rejects_non_object_events() -> None:
    with pytest.raises(UpstreamError):
        assemble_response(["response.completed"])  # type: ignore[list-item]


def test_assemble_chat_tolerates_null_deltas_and_text() -> None:
    chunks = [
        chunk({"role": "assistant", "content": "a"}),
        {**OPENAI_BASE, "choices": [{"index": 0, "delta": None, "finish_reason": "stop"}]},
    ]
    assert assemble_chat(chunks)["choices"][0]["message"]["content"] == "a"
    assert assemble_completion([legacy("a"), legacy(None, "stop")])["choices"][0]["text"] == "a"  # type: ignore[arg-type]
