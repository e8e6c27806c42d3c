"""Request logs built in the tests: one template sent many times, with or without caching bugs."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from typing import Any

RULES = "\n".join(
    f"Rule {i}: when the customer asks about topic {i}, answer politely and cite policy {i * 7}."
    for i in range(120)
)
"""About 2,500 tokens of static instructions."""

QUESTIONS = [f"Question {i}: how do I reset my password on device {i}?" for i in range(200)]

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": name,
            "description": f"Look up the {name.replace('_', ' ')} for a customer.",
            "parameters": {
                "type": "object",
                "properties": {"customer": {"type": "string"}, "limit": {"type": "integer"}},
                "required": ["customer"],
            },
        },
    }
    for name in ("get_orders", "get_invoices", "get_tickets")
]


def chat(system: str, question: str, **extra: Any) -> dict[str, Any]:
    """An OpenAI chat body."""
    return {
        "model": "gpt-4o-mini",
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}],
        **extra,
    }


def request_id(i: int) -> str:
    """A deterministic UUID."""
    return str(uuid.UUID(int=(i + 1) * 0x9E3779B97F4A7C15F39CC0605CEDC835 % (1 << 128)))


def uuid_on_top(n: int) -> list[dict[str, Any]]:
    """A request id at the top of the system prompt."""
    return [
        chat(f"Request {request_id(i)}\n{RULES}", QUESTIONS[i % len(QUESTIONS)]) for i in range(n)
    ]


def uuid_fixed(n: int) -> list[dict[str, Any]]:
    """The suggested fix: the request id moved to the end of the user message."""
    return [
        chat(RULES, f"{QUESTIONS[i % len(QUESTIONS)]}\n(request {request_id(i)})") for i in range(n)
    ]


def jsonl(bodies: Iterable[Any]) -> list[bytes]:
    """Log lines."""
    return [json.dumps(b).encode() for b in bodies]
