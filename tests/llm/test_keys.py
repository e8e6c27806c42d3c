"""Tests for stratacache.llm.keys: canonical JSON, tenants, exact digests and partitions."""

from __future__ import annotations

import datetime
import math
import re
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stratacache.errors import ConfigError, RequestError
from stratacache.llm.keys import (
    CacheKey,
    Route,
    canonical_json,
    embedding_input_key,
    final_user_turn,
    request_key,
    tenant_for,
    validate_namespace,
)

SECRET = b"s" * 32
TENANT = "t" * 32


def chat(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "What is 2+2?"},
        ],
        "temperature": 0,
    }
    body.update(overrides)
    return body


def digest(body: dict[str, Any], route: Route = Route.CHAT, **kw: Any) -> str:
    return request_key(route, body, tenant=kw.pop("tenant", TENANT), **kw).digest


# --- canonical_json -------------------------------------------------------------------------------


def test_canonical_json_sorts_keys_and_strips_whitespace() -> None:
    assert canonical_json({"b": 1, "a": {"d": [1, 2], "c": None}}) == (
        b'{"a":{"c":null,"d":[1,2]},"b":1}'
    )


def test_canonical_json_keeps_int_and_float_apart() -> None:
    assert canonical_json(1) == b"1"
    assert canonical_json(1.0) == b"1.0"
    assert canonical_json({"t": 1}) != canonical_json({"t": 1.0})


def test_canonical_json_keeps_bool_apart_from_int() -> None:
    assert canonical_json([True, 1, False, 0]) == b"[true,1,false,0]"


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("wrap", [lambda v: v, lambda v: {"a": [1, {"b": v}]}, lambda v: (v,)])
def test_canonical_json_rejects_non_finite(bad: float, wrap: Any) -> None:
    with pytest.raises(RequestError, match="not a valid JSON number"):
        canonical_json(wrap(bad))


def test_canonical_json_allows_null_and_the_text_null() -> None:
    # The fast path scans for b"null"; a real null or the word in a string must still pass.
    assert canonical_json({"a": None, "b": "null"}) == b'{"a":null,"b":"null"}'


@pytest.mark.parametrize(
    "bad",
    [
        {1: "int key"},
        {"big": 2**70},
        {"when": datetime.datetime(2024, 1, 1)},
        {"set": {1, 2}},
        object(),
    ],
)
def test_canonical_json_rejects_non_json_values(bad: Any) -> None:
    with pytest.raises(RequestError):
        canonical_json(bad)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)


@given(json_values)
def test_canonical_json_round_trips_and_is_stable(value: Any) -> None:
    out = canonical_json(value)
    assert orjson.loads(out) == value
    assert canonical_json(orjson.loads(out)) == out


@given(st.dictionaries(st.text(), st.integers(-(2**63), 2**63 - 1), min_size=2, max_size=6))
def test_canonical_json_ignores_insertion_order(d: dict[str, int]) -> None:
    reversed_d = dict(reversed(list(d.items())))
    assert canonical_json(d) == canonical_json(reversed_d)


# --- tenant_for -----------------------------------------------------------------------------------


def test_tenant_is_a_32_hex_hmac_prefix() -> None:
    tenant = tenant_for("sk-secret-key-123", secret=SECRET)
    assert re.fullmatch(r"[0-9a-f]{32}", tenant)
    assert tenant == tenant_for("sk-secret-key-123", secret=SECRET)


def test_two_credentials_give_two_tenants() -> None:
    assert tenant_for("sk-alice", secret=SECRET) != tenant_for("sk-bob", secret=SECRET)


def test_tenant_depends_on_the_secret() -> None:
    assert tenant_for("sk-alice", secret=SECRET) != tenant_for("sk-alice", secret=b"x" * 32)


@given(st.text(min_size=1))
def test_tenant_never_contains_the_credential(credential: str) -> None:
    tenant = tenant_for(credential, secret=SECRET)
    assert re.fullmatch(r"[0-9a-f]{32}", tenant)
    if len(credential) >= 4:
        assert credential not in tenant


def test_tenant_shared_and_anonymous() -> None:
    assert tenant_for("sk-alice", secret=SECRET, share_across_tenants=True) == "shared"
    assert tenant_for(None, secret=SECRET) == "anonymous"
    assert tenant_for("", secret=SECRET) == "anonymous"


def test_tenant_rejects_a_short_secret() -> None:
    with pytest.raises(ConfigError):
        tenant_for("sk-alice", secret=b"short")


# --- request_key ----------------------------------------------------------------------------------


def test_key_fields_and_storage_key() -> None:
    key = request_key(Route.CHAT, chat(), tenant=TENANT)
    assert isinstance(key, CacheKey)
    assert key.route is Route.CHAT
    assert key.namespace == "default"
    assert re.fullmatch(r"[0-9a-f]{64}", key.digest)
    assert re.fullmatch(r"[0-9a-f]{64}", key.partition)
    assert key.storage_key == f"{TENANT}/default/chat.completions/{key.digest}"


def test_key_is_deterministic() -> None:
    assert digest(chat()) == digest(chat())


def test_key_order_does_not_change_the_digest() -> None:
    body = chat(tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}])
    shuffled = dict(reversed(list(body.items())))
    shuffled["messages"] = [dict(reversed(list(m.items()))) for m in body["messages"]]
    assert digest(body) == digest(shuffled)


def test_whitespace_in_content_changes_the_digest() -> None:
    spaced = chat()
    spaced["messages"] = [*spaced["messages"][:-1], {"role": "user", "content": "What is 2+2? "}]
    assert digest(chat()) != digest(spaced)


@pytest.mark.parametrize(
    "change",
    [
        {"model": "gpt-4o"},
        {"messages": [{"role": "system", "content": "You are verbose."}, chat()["messages"][1]]},
        {"messages": [chat()["messages"][1]]},  # no system prompt at all
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
        {"tool_choice": "required"},
        {"response_format": {"type": "json_object"}},
        {"temperature": 0.7},
        {
            "temperature": 0.0
        },  # a float zero is not the int zero: documented, a miss not a wrong hit
        {"top_p": 0.5},
        {"seed": 42},
        {"max_tokens": 10},
        {"max_completion_tokens": 10},
        {"stop": ["\n"]},
        {"n": 2},
        {"logit_bias": {"50256": -100}},
        {"presence_penalty": 0.5},
        {"frequency_penalty": 0.5},
        {"reasoning_effort": "high"},
        {"some_provider_field": True},
    ],
)
def test_answer_relevant_fields_change_the_digest(change: dict[str, Any]) -> None:
    assert digest(chat()) != digest(chat(**change))


def test_explicit_default_differs_from_absent() -> None:
    without = chat()
    del without["temperature"]
    assert digest(without) != digest(chat(temperature=1))


@pytest.mark.parametrize(
    "change",
    [
        {"stream": True},
        {"stream": True, "stream_options": {"include_usage": True}},
        {"user": "end-user-17"},
        {"metadata": {"trace": "abc"}},
        {"store": True},
        {"safety_identifier": "u17"},
        {"prompt_cache_key": "k"},
        {"cache": {"ttl": 60, "tags": ["x"]}},
    ],
)
def test_transport_fields_do_not_change_the_digest(change: dict[str, Any]) -> None:
    assert digest(chat()) == digest(chat(**change))


def test_store_counts_for_the_responses_api() -> None:
    body = {"model": "gpt-4o", "input": "hi", "temperature": 0}
    assert digest(body, Route.RESPONSES) != digest({**body, "store": True}, Route.RESPONSES)
    assert digest(body, Route.RESPONSES) == digest({**body, "stream": True}, Route.RESPONSES)


def test_tenants_namespaces_routes_and_versions_are_separate() -> None:
    base = request_key(Route.CHAT, chat(), tenant=TENANT)
    other_tenant = request_key(Route.CHAT, chat(), tenant="u" * 32)
    other_ns = request_key(Route.CHAT, chat(), tenant=TENANT, namespace="billing")
    other_version = request_key(Route.CHAT, chat(), tenant=TENANT, version="prompt-v2")
    other_route = request_key(Route.COMPLETIONS, chat(), tenant=TENANT)
    keys = [base, other_tenant, other_ns, other_version, other_route]
    assert len({k.digest for k in keys}) == len(keys)
    assert len({k.partition for k in keys}) == len(keys)
    assert len({k.storage_key for k in keys}) == len(keys)
    assert other_ns.storage_key.startswith(f"{TENANT}/billing/chat.completions/")


def test_request_key_does_not_mutate_the_body() -> None:
    body = chat(stream=True, cache={"ttl": 5})
    snapshot = orjson.dumps(body)
    request_key(Route.CHAT, body, tenant=TENANT)
    assert orjson.dumps(body) == snapshot


def test_request_key_accepts_route_strings() -> None:
    assert digest(chat(), "chat.completions") == digest(chat(), Route.CHAT)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("route", "body", "kw"),
    [
        ("nope", chat(), {}),
        (Route.CHAT, ["not", "a", "dict"], {}),
        (Route.CHAT, chat(temperature=math.nan), {}),
        (Route.CHAT, chat(), {"namespace": "a/b"}),
        (Route.CHAT, chat(), {"namespace": ""}),
        (Route.CHAT, chat(), {"namespace": "x" * 129}),
        (Route.CHAT, chat(), {"namespace": "has space"}),
        (Route.CHAT, chat(), {"tenant": "a/b"}),
        (Route.CHAT, chat(), {"tenant": ""}),
    ],
)
def test_request_key_rejects_bad_input(route: Any, body: Any, kw: dict[str, Any]) -> None:
    kw.setdefault("tenant", TENANT)
    with pytest.raises(RequestError):
        request_key(route, body, **kw)


def test_validate_namespace_accepts_reasonable_names() -> None:
    for name in ("default", "billing-v2", "team_a:prod", "x" * 128, "café"):
        assert validate_namespace(name) == name


# --- partitions and the final user turn -----------------------------------------------------------


def test_partition_ignores_only_the_final_user_turn() -> None:
    a = request_key(Route.CHAT, chat(), tenant=TENANT)
    rephrased = chat()
    rephrased["messages"] = [rephrased["messages"][0], {"role": "user", "content": "2 plus 2?"}]
    b = request_key(Route.CHAT, rephrased, tenant=TENANT)
    assert a.digest != b.digest
    assert a.partition == b.partition


@pytest.mark.parametrize(
    "change",
    [
        {"model": "gpt-4o"},
        {"temperature": 0.5},
        {"messages": [{"role": "system", "content": "Be verbose."}, chat()["messages"][1]]},
    ],
)
def test_partition_covers_everything_else(change: dict[str, Any]) -> None:
    a = request_key(Route.CHAT, chat(), tenant=TENANT)
    assert a.partition != request_key(Route.CHAT, chat(**change), tenant=TENANT).partition


def test_partition_without_a_final_user_turn_matches_only_identical_requests() -> None:
    tool_turn = chat()
    tool_turn["messages"] = [*tool_turn["messages"], {"role": "tool", "content": "4"}]
    other = chat()
    other["messages"] = [*other["messages"], {"role": "tool", "content": "5"}]
    assert (
        request_key(Route.CHAT, tool_turn, tenant=TENANT).partition
        != request_key(Route.CHAT, other, tenant=TENANT).partition
    )


def test_final_user_turn_chat() -> None:
    assert final_user_turn(Route.CHAT, chat()) == "What is 2+2?"
    parts = chat(
        messages=[
            {
                "role": "user",
                "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}],
            }
        ]
    )
    assert final_user_turn(Route.CHAT, parts) == "a\nb"
    image = chat(
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is this?"},
                    {"type": "image_url", "image_url": {"url": "data:,"}},
                ],
            }
        ]
    )
    assert final_user_turn(Route.CHAT, image) is None
    assert (
        final_user_turn(Route.CHAT, chat(messages=[{"role": "assistant", "content": "x"}])) is None
    )
    assert final_user_turn(Route.CHAT, {"messages": []}) is None


def test_final_user_turn_other_routes() -> None:
    assert final_user_turn(Route.COMPLETIONS, {"prompt": "Once"}) == "Once"
    assert final_user_turn(Route.COMPLETIONS, {"prompt": ["Once"]}) == "Once"
    assert final_user_turn(Route.COMPLETIONS, {"prompt": [1, 2, 3]}) is None
    assert final_user_turn(Route.EMBEDDINGS, {"input": "text"}) == "text"
    assert final_user_turn(Route.EMBEDDINGS, {"input": ["a", "b"]}) is None
    assert final_user_turn(Route.RESPONSES, {"input": "hello"}) == "hello"
    items = {
        "input": [
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "reply"},
            {"role": "user", "content": [{"type": "input_text", "text": "second"}]},
        ]
    }
    assert final_user_turn(Route.RESPONSES, items) == "second"
    image = {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}
    assert final_user_turn(Route.RESPONSES, image) is None


def test_responses_partition_ignores_the_final_input() -> None:
    base = {"model": "gpt-4o", "instructions": "Be terse.", "input": "hi"}
    a = request_key(Route.RESPONSES, base, tenant=TENANT)
    b = request_key(Route.RESPONSES, {**base, "input": "hello"}, tenant=TENANT)
    c = request_key(Route.RESPONSES, {**base, "instructions": "Be kind."}, tenant=TENANT)
    assert a.partition == b.partition != c.partition


# --- embeddings -----------------------------------------------------------------------------------


def test_embedding_item_keys() -> None:
    a = embedding_input_key("text-embedding-3-small", "hello", tenant=TENANT)
    assert a.route is Route.EMBEDDINGS
    assert a == embedding_input_key("text-embedding-3-small", "hello", tenant=TENANT, extra={})
    assert a.digest != embedding_input_key("text-embedding-3-small", "hello ", tenant=TENANT).digest
    assert a.digest != embedding_input_key("text-embedding-3-large", "hello", tenant=TENANT).digest
    assert (
        a.digest != embedding_input_key("text-embedding-3-small", "hello", tenant="u" * 32).digest
    )


@pytest.mark.parametrize("extra", [{"dimensions": 256}, {"encoding_format": "base64"}, {"x": 1}])
def test_embedding_parameters_change_the_key(extra: dict[str, Any]) -> None:
    plain = embedding_input_key("m", "hello", tenant=TENANT)
    assert plain.digest != embedding_input_key("m", "hello", tenant=TENANT, extra=extra).digest
    assert (
        plain.partition != embedding_input_key("m", "hello", tenant=TENANT, extra=extra).partition
    )


def test_embedding_key_accepts_the_whole_body() -> None:
    body = {"model": "m", "input": ["a", "b"], "user": "u", "dimensions": 8}
    assert (
        embedding_input_key("m", "a", tenant=TENANT, extra=body).digest
        == embedding_input_key("m", "a", tenant=TENANT, extra={"dimensions": 8}).digest
    )


def test_embedding_tokens_and_text_differ() -> None:
    tokens = embedding_input_key("m", [1, 2, 3], tenant=TENANT)
    assert tokens.digest == embedding_input_key("m", (1, 2, 3), tenant=TENANT).digest
    assert tokens.digest != embedding_input_key("m", "[1, 2, 3]", tenant=TENANT).digest
    assert tokens.partition == embedding_input_key("m", "x", tenant=TENANT).partition


@pytest.mark.parametrize(
    ("model", "item", "extra"),
    [
        ("", "x", {}),
        ("m", 3, {}),
        ("m", [1, "a"], {}),
        ("m", [True], {}),
        ("m", "x", {"model": "other"}),
    ],
)
def test_embedding_key_rejects_bad_input(model: str, item: Any, extra: dict[str, Any]) -> None:
    with pytest.raises(RequestError):
        embedding_input_key(model, item, tenant=TENANT, extra=extra)


def test_partition_for_completions_and_responses_items() -> None:
    a = request_key(Route.COMPLETIONS, {"model": "m", "prompt": "Once"}, tenant=TENANT)
    b = request_key(Route.COMPLETIONS, {"model": "m", "prompt": "Twice"}, tenant=TENANT)
    assert a.digest != b.digest
    assert a.partition == b.partition
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]

    def items(last: str, earlier: list[dict[str, Any]] = history) -> dict[str, Any]:
        return {"model": "m", "input": [*earlier, {"role": "user", "content": last}]}

    first = request_key(Route.RESPONSES, items("weather?"), tenant=TENANT)
    second = request_key(Route.RESPONSES, items("forecast?"), tenant=TENANT)
    other_history = request_key(Route.RESPONSES, items("weather?", history[:1]), tenant=TENANT)
    assert first.partition == second.partition != other_history.partition


def test_final_user_turn_of_a_one_item_embeddings_batch() -> None:
    assert final_user_turn(Route.EMBEDDINGS, {"input": ["only"]}) == "only"


def test_request_key_rejects_non_string_field_names() -> None:
    with pytest.raises(RequestError):
        request_key(Route.CHAT, {1: "x"}, tenant=TENANT)  # type: ignore[dict-item]
