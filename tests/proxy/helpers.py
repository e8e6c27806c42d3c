"""Small helpers shared by the proxy tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from openai import AsyncOpenAI, OpenAI

from .conftest import RunningProxy

CHAT = {
    "model": "gpt-4o-mini",
    "messages": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is the capital of France?"},
    ],
    "temperature": 0,
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


def client(proxy: RunningProxy, api_key: str = "sk-test-a", **kwargs: Any) -> OpenAI:
    return OpenAI(base_url=proxy.base_url, api_key=api_key, max_retries=0, **kwargs)


def aclient(proxy: RunningProxy, api_key: str = "sk-test-a", **kwargs: Any) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=proxy.base_url, api_key=api_key, max_retries=0, **kwargs)


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait for an event in another thread (not for time): poll ``condition`` until it holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.002)


async def await_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """The asyncio twin of :func:`wait_until`: yields to the loop between checks."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.002)
