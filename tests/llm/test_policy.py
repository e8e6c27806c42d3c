"""Tests for stratacache.llm.policy: directives, admission decisions and storable responses."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from stratacache.errors import RequestError
from stratacache.llm.keys import Route
from stratacache.llm.policy import (
    MAX_TAGS,
    AdmissionMode,
    Decision,
    Directives,
    decide,
    is_deterministic,
    parse_directives,
    storable,
)

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0}


def headers_only(headers: dict[str, str]) -> Directives:
    return parse_directives(headers, BODY)[0]


def body_only(cache: Any) -> Directives:
    return parse_directives({}, {**BODY, "cache": cache})[0]


# --- parse_directives: headers --------------------------------------------------------------------


def test_no_directives() -> None:
    directives, body = parse_directives({}, BODY)
    assert directives == Directives()
    assert body == BODY
    assert body is not BODY


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("no-cache", Directives(no_cache=True)),
        ("no-store", Directives(no_store=True)),
        ("max-age=60", Directives(max_age=60)),
        ("max-age=0", Directives(max_age=0)),
        ("max-age=1.5", Directives(max_age=1.5)),
        ('max-age="30"', Directives(max_age=30)),
        ("No-Cache, NO-STORE", Directives(no_cache=True, no_store=True)),
        ("no-cache,max-age=5", Directives(no_cache=True, max_age=5)),
        ("  max-age = 7 ", Directives(max_age=7)),
        ("private, no-transform, only-if-cached, max-stale=3", Directives()),
        ("max-age=10, max-age=3", Directives(max_age=3)),
        ("", Directives()),
        (",,", Directives()),
    ],
)
def test_cache_control(value: str, expected: Directives) -> None:
    assert headers_only({"Cache-Control": value}) == expected


def test_header_names_are_case_insensitive() -> None:
    d = headers_only(
        {
            "CACHE-CONTROL": "no-store",
            "x-cache-ttl": "30",
            "X-CACHE-NAMESPACE": "billing",
            "x-Cache-Tags": "a, b ,c,,",
        }
    )
    assert d == Directives(
        no_store=True, ttl=30, namespace="billing", tags=frozenset({"a", "b", "c"})
    )


def test_multi_valued_headers_are_read_in_full() -> None:
    class MultiHeaders(dict[str, str]):
        # The shape of starlette's Headers: items() yields every occurrence of a repeated header.
        def items(self) -> Any:
            return [
                ("cache-control", "no-cache"),
                ("cache-control", "no-store"),
                ("x-cache-tags", "a"),
                ("x-cache-tags", "b"),
            ]

    d = parse_directives(MultiHeaders(), BODY)[0]
    assert d == Directives(no_cache=True, no_store=True, tags=frozenset({"a", "b"}))


@pytest.mark.parametrize(
    "headers",
    [
        {"Cache-Control": "max-age"},
        {"Cache-Control": "max-age=abc"},
        {"Cache-Control": "max-age=-1"},
        {"Cache-Control": "max-age=1e3"},
        {"Cache-Control": "max-age=inf"},
        {"X-Cache-TTL": "-5"},
        {"X-Cache-TTL": "0"},
        {"X-Cache-TTL": "soon"},
        {"X-Cache-TTL": "nan"},
        {"X-Cache-Namespace": "a/b"},
        {"X-Cache-Namespace": "x" * 129},
        {"X-Cache-Namespace": ""},
        {"X-Cache-Tags": "ok, bad/tag"},
        {"X-Cache-Tags": "t" * 257},
        {"X-Cache-Tags": ",".join(f"t{i}" for i in range(MAX_TAGS + 1))},
    ],
)
def test_bad_headers(headers: dict[str, str]) -> None:
    with pytest.raises(RequestError):
        parse_directives(headers, BODY)


def test_bad_header_message_is_clear() -> None:
    with pytest.raises(RequestError, match="max-age must be a non-negative number"):
        parse_directives({"Cache-Control": "max-age=abc"}, BODY)
    with pytest.raises(RequestError, match="may not contain '/'"):
        parse_directives({"X-Cache-Namespace": "a/b"}, BODY)


# --- parse_directives: body -----------------------------------------------------------------------


def test_body_directives_all_fields() -> None:
    d = body_only(
        {
            "no_cache": True,
            "no_store": True,
            "max_age": 30,
            "ttl": 600.5,
            "namespace": "ns",
            "tags": ["product:1", "user:2"],
        }
    )
    assert d == Directives(
        no_cache=True,
        no_store=True,
        max_age=30,
        ttl=600.5,
        namespace="ns",
        tags=frozenset({"product:1", "user:2"}),
    )


def test_cache_member_is_removed_and_input_untouched() -> None:
    original = {**BODY, "cache": {"ttl": 5}}
    snapshot = copy.deepcopy(original)
    directives, forwarded = parse_directives({}, original)
    assert "cache" not in forwarded
    assert forwarded == BODY
    assert original == snapshot
    assert directives.ttl == 5


def test_null_cache_member_is_removed() -> None:
    directives, forwarded = parse_directives({}, {**BODY, "cache": None})
    assert directives == Directives()
    assert "cache" not in forwarded


@pytest.mark.parametrize(
    "cache",
    [
        "no-store",
        ["ttl", 5],
        {"no_cache": "yes"},
        {"no_store": 1},
        {"ttl": -1},
        {"ttl": 0},
        {"ttl": "60"},
        {"ttl": True},
        {"ttl": float("inf")},
        {"max_age": -3},
        {"max_age": "10"},
        {"namespace": "a/b"},
        {"namespace": "n" * 129},
        {"namespace": 7},
        {"tags": "a,b"},
        {"tags": ["a", 1]},
        {"tags": [""]},
        {"tags": ["bad\nline"]},
        {"ttI": 60},  # a misspelt option is an error, not silently ignored
    ],
)
def test_bad_body_directives(cache: Any) -> None:
    with pytest.raises(RequestError):
        parse_directives({}, {**BODY, "cache": cache})


def test_unknown_body_field_message_names_it() -> None:
    with pytest.raises(RequestError, match="ttI"):
        parse_directives({}, {**BODY, "cache": {"ttI": 60}})


def test_body_must_be_an_object() -> None:
    with pytest.raises(RequestError):
        parse_directives({}, ["not", "an", "object"])  # type: ignore[arg-type]


# --- parse_directives: headers and body together: the stricter wins -------------------------------


def test_flags_from_either_side_apply() -> None:
    d, _ = parse_directives({"Cache-Control": "no-cache"}, {**BODY, "cache": {"no_store": True}})
    assert d.no_cache
    assert d.no_store
    d, _ = parse_directives({"Cache-Control": "no-store"}, {**BODY, "cache": {"no_store": False}})
    assert d.no_store


@pytest.mark.parametrize(("header", "body", "expected"), [("10", 20, 10), ("20", 10, 10)])
def test_smaller_ttl_and_max_age_win(header: str, body: int, expected: int) -> None:
    d, _ = parse_directives(
        {"X-Cache-TTL": header, "Cache-Control": f"max-age={header}"},
        {**BODY, "cache": {"ttl": body, "max_age": body}},
    )
    assert d.ttl == expected
    assert d.max_age == expected


def test_tags_are_united() -> None:
    d, _ = parse_directives({"X-Cache-Tags": "a,b"}, {**BODY, "cache": {"tags": ["b", "c"]}})
    assert d.tags == frozenset({"a", "b", "c"})


def test_namespace_from_one_side_or_both_agreeing() -> None:
    assert parse_directives({"X-Cache-Namespace": "n"}, BODY)[0].namespace == "n"
    assert parse_directives({}, {**BODY, "cache": {"namespace": "n"}})[0].namespace == "n"
    both = parse_directives({"X-Cache-Namespace": "n"}, {**BODY, "cache": {"namespace": "n"}})
    assert both[0].namespace == "n"


def test_conflicting_namespaces_are_an_error() -> None:
    with pytest.raises(RequestError, match="different cache namespaces"):
        parse_directives({"X-Cache-Namespace": "a"}, {**BODY, "cache": {"namespace": "b"}})


# --- is_deterministic -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"temperature": 0}, True),
        ({"temperature": 0.0}, True),
        ({"temperature": 0, "n": 1}, True),
        ({"seed": 7}, True),
        ({"seed": 0, "temperature": 1.2}, True),
        ({}, False),
        ({"temperature": 0.7}, False),
        ({"temperature": 0, "n": 2}, False),
        ({"seed": 7, "n": 3}, False),
        ({"seed": "7"}, False),
        ({"seed": True}, False),
        ({"seed": None}, False),
        ({"temperature": False}, False),
        ({"temperature": 0, "n": True}, False),
    ],
)
def test_is_deterministic(body: dict[str, Any], expected: bool) -> None:
    assert is_deterministic(Route.CHAT, body) is expected


def test_embeddings_are_always_deterministic() -> None:
    assert is_deterministic(Route.EMBEDDINGS, {"model": "m", "input": "x"})


# --- decide ---------------------------------------------------------------------------------------

DET = {"temperature": 0}
SAMPLED = {"temperature": 0.9}


@pytest.mark.parametrize(
    ("body", "directives", "mode", "expected"),
    [
        (DET, Directives(), AdmissionMode.DETERMINISTIC, Decision(True, True, "cacheable")),
        (
            SAMPLED,
            Directives(),
            AdmissionMode.DETERMINISTIC,
            Decision(False, False, "nondeterministic"),
        ),
        (SAMPLED, Directives(), AdmissionMode.ALWAYS, Decision(True, True, "cacheable")),
        (DET, Directives(), AdmissionMode.NEVER, Decision(False, False, "never")),
        (
            DET,
            Directives(no_cache=True),
            AdmissionMode.DETERMINISTIC,
            Decision(False, True, "no-cache"),
        ),
        (
            DET,
            Directives(no_store=True),
            AdmissionMode.DETERMINISTIC,
            Decision(True, False, "no-store"),
        ),
        (
            DET,
            Directives(no_cache=True, no_store=True),
            AdmissionMode.ALWAYS,
            Decision(False, False, "no-cache,no-store"),
        ),
        (
            SAMPLED,
            Directives(no_cache=True),
            AdmissionMode.ALWAYS,
            Decision(False, True, "no-cache"),
        ),
    ],
)
def test_decide(
    body: dict[str, Any], directives: Directives, mode: AdmissionMode, expected: Decision
) -> None:
    assert decide(Route.CHAT, body, directives, mode) == expected


def test_decide_accepts_mode_strings() -> None:
    assert decide(Route.CHAT, DET, Directives(), "never").reason == "never"  # type: ignore[arg-type]


# --- storable -------------------------------------------------------------------------------------


def chat_response(**message: Any) -> dict[str, Any]:
    msg = {"role": "assistant", "content": "4", "refusal": None}
    msg.update(message)
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "message": msg, "logprobs": None, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
    }


def with_finish(response: dict[str, Any], reason: Any) -> dict[str, Any]:
    response["choices"][0]["finish_reason"] = reason
    return response


TOOL_CALL = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]


def test_good_chat_responses_are_storable() -> None:
    assert storable(Route.CHAT, chat_response()) is None
    calls = with_finish(chat_response(content=None, tool_calls=TOOL_CALL), "tool_calls")
    assert storable(Route.CHAT, calls) is None


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        ({"error": {"message": "boom", "type": "server_error"}}, "error"),
        ({**chat_response(), "error": {"message": "partial"}}, "error"),
        (with_finish(chat_response(), "length"), "finish_reason:length"),
        (with_finish(chat_response(), "content_filter"), "finish_reason:content_filter"),
        (with_finish(chat_response(), None), "unfinished"),
        (with_finish(chat_response(), "abort"), "finish_reason:abort"),
        (chat_response(refusal="I can't help with that."), "refusal"),
        (chat_response(content=""), "empty"),
        (chat_response(content=None), "empty"),
        (chat_response(content=None, tool_calls=[]), "empty"),
        ({**chat_response(), "choices": []}, "empty"),
        ({"object": "chat.completion"}, "malformed"),
        ({**chat_response(), "choices": [None]}, "malformed"),
        ("not an object", "malformed"),
    ],
)
def test_bad_chat_responses_are_not_storable(response: Any, reason: str) -> None:
    assert storable(Route.CHAT, response) == reason


def test_missing_finish_reason_key_is_unfinished() -> None:
    response = chat_response()
    del response["choices"][0]["finish_reason"]
    assert storable(Route.CHAT, response) == "unfinished"


def test_every_choice_is_checked() -> None:
    response = chat_response()
    second = copy.deepcopy(response["choices"][0])
    second["index"] = 1
    second["finish_reason"] = "length"
    response["choices"].append(second)
    assert storable(Route.CHAT, response) == "finish_reason:length"


def completion_response(text: str = "Once upon", finish: Any = "stop") -> dict[str, Any]:
    return {
        "object": "text_completion",
        "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}],
    }


def test_completions_storable() -> None:
    assert storable(Route.COMPLETIONS, completion_response()) is None
    assert storable(Route.COMPLETIONS, completion_response(text="")) == "empty"
    assert (
        storable(Route.COMPLETIONS, completion_response(finish="length")) == "finish_reason:length"
    )
    assert storable(Route.COMPLETIONS, completion_response(finish=None)) == "unfinished"


def test_embeddings_storable() -> None:
    good = {"object": "list", "data": [{"object": "embedding", "index": 0, "embedding": [0.1]}]}
    assert storable(Route.EMBEDDINGS, good) is None
    assert storable(Route.EMBEDDINGS, {"object": "list", "data": []}) == "empty"
    assert storable(Route.EMBEDDINGS, {"object": "list"}) == "malformed"
    empty_vector = {"data": [{"index": 0, "embedding": []}]}
    assert storable(Route.EMBEDDINGS, empty_vector) == "empty"
    assert storable(Route.EMBEDDINGS, {"data": [{"index": 0, "embedding": "AAAA"}]}) is None


def responses_response(**overrides: Any) -> dict[str, Any]:
    response: dict[str, Any] = {
        "id": "resp_1",
        "object": "response",
        "status": "completed",
        "incomplete_details": None,
        "error": None,
        "output": [
            {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": "4", "annotations": []}],
            }
        ],
    }
    response.update(overrides)
    return response


def test_responses_storable() -> None:
    assert storable(Route.RESPONSES, responses_response()) is None
    call = {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}
    assert storable(Route.RESPONSES, responses_response(output=[call])) is None


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"status": "incomplete"}, "status:incomplete"),
        ({"status": "failed"}, "status:failed"),
        ({"status": "in_progress"}, "status:in_progress"),
        ({"incomplete_details": {"reason": "max_output_tokens"}}, "incomplete"),
        ({"error": {"code": "server_error", "message": "x"}}, "error"),
        ({"output": []}, "empty"),
        ({"output": [{"type": "reasoning", "id": "rs", "summary": []}]}, "empty"),
        (
            {
                "output": [
                    {
                        "type": "message",
                        "content": [{"type": "refusal", "refusal": "No."}],
                    }
                ]
            },
            "refusal",
        ),
        (
            {"output": [{"type": "message", "content": [{"type": "output_text", "text": ""}]}]},
            "empty",
        ),
    ],
)
def test_bad_responses_are_not_storable(overrides: dict[str, Any], reason: str) -> None:
    assert storable(Route.RESPONSES, responses_response(**overrides)) == reason


def test_repeated_conflicting_headers_are_an_error() -> None:
    class MultiHeaders(dict[str, str]):
        def __init__(self, pairs: list[tuple[str, str]]) -> None:
            super().__init__()
            self.pairs = pairs

        def items(self) -> Any:
            return self.pairs

    with pytest.raises(RequestError, match="conflicting X-Cache-TTL"):
        parse_directives(MultiHeaders([("x-cache-ttl", "5"), ("X-Cache-TTL", "6")]), BODY)
    with pytest.raises(RequestError, match="conflicting X-Cache-Namespace"):
        parse_directives(
            MultiHeaders([("x-cache-namespace", "a"), ("x-cache-namespace", "b")]), BODY
        )
    same = MultiHeaders([("x-cache-ttl", "5"), ("x-cache-ttl", " 5")])
    assert parse_directives(same, BODY)[0].ttl == 5


def test_tags_from_both_sides_are_limited_together() -> None:
    half = MAX_TAGS // 2 + 1
    header = ",".join(f"h{i}" for i in range(half))
    with pytest.raises(RequestError, match=f"at most {MAX_TAGS}"):
        parse_directives(
            {"X-Cache-Tags": header}, {**BODY, "cache": {"tags": [f"b{i}" for i in range(half)]}}
        )


def test_non_string_header_is_an_error() -> None:
    with pytest.raises(RequestError):
        parse_directives({"x-cache-ttl": 5}, BODY)  # type: ignore[dict-item]


@pytest.mark.parametrize(
    ("route", "response"),
    [
        (Route.CHAT, {"choices": [{"finish_reason": "stop", "message": "text"}]}),
        (Route.COMPLETIONS, {"choices": [{"finish_reason": "stop", "text": None}]}),
        (Route.EMBEDDINGS, {"data": ["x"]}),
        (Route.RESPONSES, {"status": "completed", "output": "x"}),
        (Route.RESPONSES, {"status": "completed", "output": ["x"]}),
        (Route.RESPONSES, {"status": "completed", "output": [{"type": "message", "content": "x"}]}),
        (Route.RESPONSES, {"status": "completed", "output": [{"type": "message", "content": [1]}]}),
    ],
)
def test_malformed_responses_are_not_storable(route: Route, response: dict[str, Any]) -> None:
    assert storable(route, response) == "malformed"


def test_chat_audio_and_legacy_function_call_are_output() -> None:
    audio = chat_response(content=None, audio={"id": "a", "data": "UklG", "transcript": "hi"})
    assert storable(Route.CHAT, audio) is None
    legacy = with_finish(
        chat_response(content=None, function_call={"name": "f", "arguments": "{}"}), "function_call"
    )
    assert storable(Route.CHAT, legacy) is None
