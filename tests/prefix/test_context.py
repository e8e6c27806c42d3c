"""The context cache: conversation token counts, each turn reusing the previous turn's work."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stratacache.errors import ConfigError, RequestError
from stratacache.prefix import context
from stratacache.prefix.context import ContextCache, estimate_usage
from stratacache.prefix.tokens import Tokenizer, load_encoding


def cookbook(messages: list[dict[str, Any]], encoding: str = "o200k_base") -> int:
    """OpenAI's num_tokens_from_messages recipe, with tiktoken directly."""
    enc = load_encoding(encoding)
    total = 0
    for message in messages:
        total += 3
        for key, value in message.items():
            total += len(enc.encode_ordinary(value))
            if key == "name":
                total += 1
    return total + 3


def conversation(turns: int) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are a careful assistant.\nAnswer in one paragraph."}
    ]
    for i in range(turns):
        messages.append(
            {"role": "user", "content": f"Turn {i}: what is {i} squared?", "name": "ann"}
        )
        messages.append({"role": "assistant", "content": f"{i} squared is {i * i}."})
    return messages


def test_counts_follow_the_recipe_and_each_turn_reuses_the_last() -> None:
    cache = ContextCache()
    for turns in range(1, 6):
        messages = conversation(turns)
        counted = cache.count(messages)
        assert counted.prompt_tokens == cookbook(messages)
        assert counted.messages == len(messages)
        # Turn k+1 resends turn k's messages: all of them were counted already.
        assert counted.reused == (0 if turns == 1 else len(messages) - 2)
    again = cache.count(conversation(5))
    assert again.reused == again.messages


def test_an_edited_history_is_not_reused_past_the_edit() -> None:
    cache = ContextCache()
    messages = conversation(4)
    cache.count(messages)
    edited = [dict(m) for m in messages]
    edited[3]["content"] = "something else entirely"
    counted = cache.count(edited)
    assert counted.reused == 3
    assert counted.prompt_tokens == cookbook(edited)


def test_tools_are_part_of_the_chain_and_cl100k_works() -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]
    cache = ContextCache(Tokenizer("cl100k_base"))
    messages = conversation(2)
    with_tools = cache.count(messages, tools=tools)
    without = cache.count(messages)
    assert without.reused == 0  # another chain seed
    tool_tokens = len(
        load_encoding("cl100k_base").encode_ordinary(
            json.dumps(tools, separators=(",", ":"), sort_keys=True)
        )
    )
    assert with_tools.prompt_tokens == without.prompt_tokens + tool_tokens
    assert without.prompt_tokens == cookbook(messages, "cl100k_base")


def test_bounded_and_validated() -> None:
    cache = ContextCache(max_entries=4)
    cache.count(conversation(5))
    assert len(cache) == 4
    with pytest.raises(ConfigError):
        ContextCache(max_entries=0)
    with pytest.raises(RequestError):
        cache.count("hello")  # type: ignore[arg-type]
    with pytest.raises(RequestError):
        cache.count([1, 2])


_MESSAGE = st.fixed_dictionaries(
    {
        "role": st.sampled_from(["system", "user", "assistant"]),
        "content": st.text(max_size=40),
    }
)


@settings(max_examples=60, deadline=None)
@given(st.lists(_MESSAGE, max_size=6), st.lists(_MESSAGE, max_size=6))
def test_cached_counts_equal_fresh_counts(first: list[Any], second: list[Any]) -> None:
    shared = ContextCache()
    shared.count(first)
    combined = first + second
    assert shared.count(combined).prompt_tokens == ContextCache().count(combined).prompt_tokens
    assert shared.count(combined).prompt_tokens == cookbook(combined)


def test_estimate_usage(monkeypatch: pytest.MonkeyPatch) -> None:
    body = {"model": "gpt-4o-mini", "messages": conversation(2)}
    assert estimate_usage("chat.completions", body) == {
        "prompt_tokens": cookbook(body["messages"]),
        "estimated": 1,
    }
    assert estimate_usage("embeddings", {"input": "x"}) is None
    assert estimate_usage("chat.completions", {"messages": "nope"}) is None
    # Without the prefix extra, accounting goes on without estimates.
    monkeypatch.setattr(context, "_SHARED", {"o200k_base": None})
    assert estimate_usage("chat.completions", body) is None
