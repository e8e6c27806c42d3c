"""Argument parsing shared by the handlers, with Redis's error texts."""

from __future__ import annotations

import math
from typing import Final

from stratacache.resp.protocol import CommandError
from stratacache.resp.values import parse_float, parse_int

__all__ = [
    "NOT_FLOAT",
    "NOT_INTEGER",
    "SYNTAX",
    "float_arg",
    "int_arg",
    "keyword",
    "timeout_arg",
]

SYNTAX: Final = "ERR syntax error"
NOT_INTEGER: Final = "ERR value is not an integer or out of range"
NOT_FLOAT: Final = "ERR value is not a valid float"
OUT_OF_RANGE_POSITIVE: Final = "ERR value is out of range, must be positive"


def int_arg(text: bytes, error: str = NOT_INTEGER) -> int:
    """An int64 argument, or the error reply."""
    value = parse_int(text)
    if value is None:
        raise CommandError(error)
    return value


def float_arg(text: bytes, error: str = NOT_FLOAT) -> float:
    """A double argument, or the error reply."""
    value = parse_float(text)
    if value is None:
        raise CommandError(error)
    return value


def keyword(text: bytes) -> bytes:
    """An option name, upper-cased for comparison."""
    return text.upper()


def timeout_arg(text: bytes) -> float:
    """A blocking command's timeout in seconds (``0`` = forever), as Redis validates it."""
    value = parse_float(text)
    if value is None or math.isinf(value):
        raise CommandError("ERR timeout is not a float or out of range")
    if value < 0:
        raise CommandError("ERR timeout is negative")
    if value * 1000 > 2**63 - 1:
        raise CommandError("ERR timeout is out of range")
    return value


def range_arg(text: bytes, low: int, high: int, message: str | None = None) -> int:
    """An integer within ``[low, high]``, with the errors of Redis's ``getRangeLongFromObject``."""
    value = parse_int(text)
    if value is None:
        raise CommandError(f"ERR {message}" if message else NOT_INTEGER)
    if value < low or value > high:
        if message:
            raise CommandError(f"ERR {message}")
        raise CommandError(f"ERR value is out of range, value must between {low} and {high}")
    return value


def positive_arg(text: bytes, message: str | None = None) -> int:
    """A non-negative integer (Redis's ``getPositiveLongFromObject``)."""
    return range_arg(text, 0, 2**63 - 1, message or "value is out of range, must be positive")
