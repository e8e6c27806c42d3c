"""The data types a key can hold, and the text <-> number rules Redis applies to strings.

A string is stored as plain ``bytes``. The other types are small classes around a Python
structure that keep a running ``size`` in bytes, so the engine's byte budget (``maxmemory``) can
weigh a list of a million elements without walking it: every mutation goes through a method that
updates ``size``. The per-element overheads are estimates of CPython's real cost (an object header
plus the container's slot), not exact numbers.

Numbers follow Redis: integers parse like ``string2ll`` (no sign but ``-``, no leading zeros, no
spaces, within int64), floats like ``strtod`` without leading spaces, NaN or overflow, and
floats print like ``%.17g`` (scores) or in Redis's "human" long-double form (INCRBYFLOAT).
"""

from __future__ import annotations

import bisect
import decimal
import re
from collections import deque
from collections.abc import Iterable, Iterator
from functools import lru_cache
from typing import Final

__all__ = [
    "HashValue",
    "ListValue",
    "SetValue",
    "ZSetValue",
    "format_human_double",
    "glob_match",
    "parse_float",
    "parse_int",
    "type_name",
]

KEY_OVERHEAD: Final = 64
"""Bytes charged per key beyond its name and value: the store's entry and its dict slot."""
_ITEM: Final = 40  # one list or set element: object header + slot
_PAIR: Final = 80  # one hash field and its value
_ZITEM: Final = 120  # one sorted-set member: dict slot, score float, tuple in the order list

INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1


def parse_int(text: bytes) -> int | None:
    """Parse ``text`` as Redis parses an integer (``string2ll``); ``None`` if it is not one.

    >>> parse_int(b"-42"), parse_int(b"042"), parse_int(b" 1"), parse_int(b"9223372036854775808")
    (-42, None, None, None)
    """
    if text.isdigit():
        if len(text) > 1 and text[0] == 0x30:
            return None
    elif not (text[:1] == b"-" and text[1:].isdigit() and text[1:2] != b"0"):
        return None
    if len(text) > 20:
        return None
    value = int(text)
    if value < INT64_MIN or value > INT64_MAX:
        return None
    return value


_FLOAT_RE: Final = re.compile(
    rb"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|inf(?:inity)?)", re.IGNORECASE
)
_NONZERO_RE: Final = re.compile(rb"[1-9]")


def parse_float(text: bytes) -> float | None:
    """Parse ``text`` as Redis parses a double (``strtod``): ``None`` if invalid, NaN or overflowing.

    >>> parse_float(b"1.5"), parse_float(b"-inf"), parse_float(b"nan"), parse_float(b" 1")
    (1.5, -inf, None, None)
    """
    if not _FLOAT_RE.fullmatch(text):
        return None
    value = float(text)
    if value in (float("inf"), float("-inf")) and b"n" not in text.lower():
        return None  # overflow: strtod reports ERANGE
    if value == 0.0:
        mantissa = text.lower().split(b"e")[0]
        if _NONZERO_RE.search(mantissa):
            return None  # underflow to zero: ERANGE too
    return value


_HUMAN: Final = decimal.Context(prec=6000, Emax=6000, Emin=-6000)


def format_human_double(value: decimal.Decimal | float) -> bytes:
    """Format a number as INCRBYFLOAT replies: fixed point, at most 17 decimals, no trailing zeros.

    Redis prints a long double with ``%.17Lf``; computing in :class:`decimal.Decimal` gives the
    same text for the values people use (``10.5 + 0.1`` is ``10.6``, not ``10.5999...``).

    >>> format_human_double(decimal.Decimal("10.6")), format_human_double(-0.0)
    (b'10.6', b'0')
    """
    number = value if isinstance(value, decimal.Decimal) else decimal.Decimal(repr(value))
    text = format(number.quantize(decimal.Decimal(1).scaleb(-17), context=_HUMAN), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    if text in ("-0", ""):
        text = "0"
    return text.encode()


def to_decimal(text: bytes) -> decimal.Decimal | None:
    """Parse a float argument for INCRBYFLOAT/HINCRBYFLOAT; ``None`` if invalid."""
    number = parse_float(text)
    if number is None:
        return None
    if number in (float("inf"), float("-inf")):
        return decimal.Decimal(number)
    try:
        return decimal.Decimal(text.decode("ascii"))
    except (decimal.InvalidOperation, UnicodeDecodeError):
        return decimal.Decimal(repr(number))


# --------------------------------------------------------------------------- glob patterns


def _translate(pattern: bytes) -> bytes:
    """Translate a Redis glob (``stringmatchlen``) into an equivalent regular expression."""
    out: list[bytes] = []
    i = 0
    n = len(pattern)
    while i < n:
        c = pattern[i]
        if c == 0x2A:  # '*'
            while i + 1 < n and pattern[i + 1] == 0x2A:
                i += 1
            out.append(b".*")
        elif c == 0x3F:  # '?'
            out.append(b".")
        elif c == 0x5B:  # '['
            i += 1
            negate = i < n and pattern[i] == 0x5E
            if negate:
                i += 1
            items: list[bytes] = []
            while True:
                if i < n and pattern[i] == 0x5C and n - i >= 2:
                    i += 1
                    items.append(b"\\x%02x" % pattern[i])
                elif i < n and pattern[i] == 0x5D:
                    break
                elif i >= n:
                    i -= 1
                    break
                elif n - i >= 3 and pattern[i + 1] == 0x2D:
                    start, end = pattern[i], pattern[i + 2]
                    if start > end:
                        start, end = end, start
                    items.append(b"\\x%02x-\\x%02x" % (start, end))
                    i += 2
                else:
                    items.append(b"\\x%02x" % pattern[i])
                i += 1
            if items:
                out.append(b"[" + (b"^" if negate else b"") + b"".join(items) + b"]")
            else:
                out.append(b"." if negate else b"(?!)")
        else:
            if c == 0x5C and n - i >= 2:  # '\\' escapes the next byte
                i += 1
                c = pattern[i]
            out.append(b"\\x%02x" % c)
        i += 1
    return b"".join(out)


_STAR: Final = -1
_ANY: Final = -2


def _tokens(pattern: bytes) -> list[int | frozenset[int] | tuple[bool, frozenset[int]]]:
    """The pattern as tokens: STAR, ANY, a byte, or (negated, set of bytes) for ``[...]``."""
    tokens: list[int | frozenset[int] | tuple[bool, frozenset[int]]] = []
    i = 0
    n = len(pattern)
    while i < n:
        c = pattern[i]
        if c == 0x2A:
            while i + 1 < n and pattern[i + 1] == 0x2A:
                i += 1
            tokens.append(_STAR)
        elif c == 0x3F:
            tokens.append(_ANY)
        elif c == 0x5B:
            i += 1
            negate = i < n and pattern[i] == 0x5E
            if negate:
                i += 1
            members: set[int] = set()
            while True:
                if i < n and pattern[i] == 0x5C and n - i >= 2:
                    i += 1
                    members.add(pattern[i])
                elif i < n and pattern[i] == 0x5D:
                    break
                elif i >= n:
                    i -= 1
                    break
                elif n - i >= 3 and pattern[i + 1] == 0x2D:
                    start, end = pattern[i], pattern[i + 2]
                    if start > end:
                        start, end = end, start
                    members.update(range(start, end + 1))
                    i += 2
                else:
                    members.add(pattern[i])
                i += 1
            tokens.append((negate, frozenset(members)))
        else:
            if c == 0x5C and n - i >= 2:
                i += 1
                c = pattern[i]
            tokens.append(c)
        i += 1
    return tokens


@lru_cache(maxsize=256)
def _compiled(pattern: bytes, nocase: bool) -> re.Pattern[bytes] | None:
    # A regular expression is fastest, but with several stars its backtracking can go
    # exponential ("a*a*a*...b" against "aaaa..."): those patterns use the linear matcher.
    if pattern.count(b"*") > 1:
        return None
    flags = re.DOTALL | (re.IGNORECASE if nocase else 0)
    return re.compile(_translate(pattern), flags)


@lru_cache(maxsize=256)
def _token_list(
    pattern: bytes, nocase: bool
) -> list[int | frozenset[int] | tuple[bool, frozenset[int]]]:
    tokens = _tokens(pattern.lower() if nocase else pattern)
    if nocase:
        folded: list[int | frozenset[int] | tuple[bool, frozenset[int]]] = []
        for token in tokens:
            if isinstance(token, tuple):
                negate, members = token
                extra = {m + 32 for m in members if 65 <= m <= 90}
                extra |= {m - 32 for m in members if 97 <= m <= 122}
                folded.append((negate, members | extra))
            else:
                folded.append(token)
        return folded
    return tokens


def _match_tokens(
    tokens: list[int | frozenset[int] | tuple[bool, frozenset[int]]], text: bytes
) -> bool:
    """Glob matching in O(len(pattern) * len(text)): backtrack only to the last star."""
    p = i = 0
    star = -1
    resume = 0
    count = len(tokens)
    size = len(text)
    while i < size:
        token = tokens[p] if p < count else None
        if token is not None and token != _STAR:
            byte = text[i]
            if token == _ANY:
                ok = True
            elif isinstance(token, tuple):
                ok = (byte in token[1]) != token[0]
            else:
                ok = byte == token
            if ok:
                p += 1
                i += 1
                continue
        elif token == _STAR:
            star = p
            resume = i
            p += 1
            continue
        if star < 0:
            return False
        p = star + 1
        resume += 1
        i = resume
    while p < count and tokens[p] == _STAR:
        p += 1
    return p == count


def glob_match(pattern: bytes, text: bytes, *, nocase: bool = False) -> bool:
    """Match ``text`` against a Redis glob (``*``, ``?``, ``[a-z]``, ``[^x]``, ``\\`` escapes).

    >>> glob_match(b"h?llo*", b"hallo world"), glob_match(b"[^a]b", b"ab"), glob_match(b"*", b"")
    (True, False, True)
    """
    if pattern == b"*":
        return True
    compiled = _compiled(pattern, nocase)
    if compiled is not None:
        return compiled.fullmatch(text) is not None
    return _match_tokens(_token_list(pattern, nocase), text.lower() if nocase else text)


# --------------------------------------------------------------------------- containers


class HashValue:
    """A hash: field -> value, with its size in bytes."""

    __slots__ = ("fields", "size", "weighed")

    def __init__(self) -> None:
        self.fields: dict[bytes, bytes] = {}
        self.size = 0
        self.weighed = 0  # the weight the store last recorded for this value

    def __len__(self) -> int:
        return len(self.fields)

    def set(self, field: bytes, value: bytes) -> bool:
        """Set ``field``; ``True`` if it is new."""
        old = self.fields.get(field)
        self.fields[field] = value
        if old is None:
            self.size += len(field) + len(value) + _PAIR
            return True
        self.size += len(value) - len(old)
        return False

    def delete(self, field: bytes) -> bool:
        """Remove ``field``; ``True`` if it was there."""
        old = self.fields.pop(field, None)
        if old is None:
            return False
        self.size -= len(field) + len(old) + _PAIR
        return True


class ListValue:
    """A list of byte strings, with its size in bytes."""

    __slots__ = ("items", "size", "weighed")

    def __init__(self, items: Iterable[bytes] = ()) -> None:
        self.items: deque[bytes] = deque(items)
        self.size = sum(len(item) + _ITEM for item in self.items)
        self.weighed = 0

    def __len__(self) -> int:
        return len(self.items)

    def push(self, values: Iterable[bytes], *, left: bool) -> None:
        """Push ``values`` one by one at the head (``left``) or the tail."""
        if type(values) is not list:
            values = list(values)
        if left:
            self.items.extendleft(values)
        else:
            self.items.extend(values)
        self.size += sum(map(len, values)) + _ITEM * len(values)

    def pop(self, *, left: bool) -> bytes:
        """Remove and return the head (``left``) or the tail element."""
        item = self.items.popleft() if left else self.items.pop()
        self.size -= len(item) + _ITEM
        return item

    def replace(self, items: Iterable[bytes]) -> None:
        """Replace the whole content."""
        self.items = deque(items)
        self.size = sum(len(item) + _ITEM for item in self.items)

    def set_at(self, index: int, value: bytes) -> None:
        """Replace the element at ``index`` (already normalised and in range)."""
        self.size += len(value) - len(self.items[index])
        self.items[index] = value


class SetValue:
    """A set of byte strings, with its size in bytes."""

    __slots__ = ("members", "size", "weighed")

    def __init__(self, members: Iterable[bytes] = ()) -> None:
        self.members: set[bytes] = set(members)
        self.size = sum(len(member) + _ITEM for member in self.members)
        self.weighed = 0

    def __len__(self) -> int:
        return len(self.members)

    def add(self, member: bytes) -> bool:
        """Add ``member``; ``True`` if it is new."""
        if member in self.members:
            return False
        self.members.add(member)
        self.size += len(member) + _ITEM
        return True

    def remove(self, member: bytes) -> bool:
        """Remove ``member``; ``True`` if it was there."""
        if member not in self.members:
            return False
        self.members.discard(member)
        self.size -= len(member) + _ITEM
        return True


def _score_of(item: tuple[float, bytes]) -> float:
    return item[0]


def _member_of(item: tuple[float, bytes]) -> bytes:
    return item[1]


class ZSetValue:
    """A sorted set: member -> score, and the members ordered by (score, member).

    The order is a sorted Python list searched with :mod:`bisect`: ranks and ranges are
    logarithmic, an insert moves memory but no Python objects, which stays fast into the
    hundreds of thousands of members.
    """

    __slots__ = ("order", "scores", "size", "weighed")

    def __init__(self) -> None:
        self.scores: dict[bytes, float] = {}
        self.order: list[tuple[float, bytes]] = []
        self.size = 0
        self.weighed = 0

    def __len__(self) -> int:
        return len(self.scores)

    def add(self, member: bytes, score: float) -> bool:
        """Set ``member``'s score; ``True`` if it is new."""
        old = self.scores.get(member)
        if old is not None:
            if old == score:
                return False
            del self.order[bisect.bisect_left(self.order, (old, member))]
            self.scores[member] = score
            bisect.insort(self.order, (score, member))
            return False
        self.scores[member] = score
        bisect.insort(self.order, (score, member))
        self.size += len(member) + _ZITEM
        return True

    def remove(self, member: bytes) -> bool:
        """Remove ``member``; ``True`` if it was there."""
        old = self.scores.pop(member, None)
        if old is None:
            return False
        del self.order[bisect.bisect_left(self.order, (old, member))]
        self.size -= len(member) + _ZITEM
        return True

    def rank(self, member: bytes) -> int | None:
        """The 0-based position of ``member`` in ascending order, or ``None``."""
        score = self.scores.get(member)
        if score is None:
            return None
        return bisect.bisect_left(self.order, (score, member))

    def delete_slice(self, start: int, stop: int) -> list[tuple[float, bytes]]:
        """Remove and return the members at positions ``start`` to ``stop - 1``."""
        removed = self.order[start:stop]
        del self.order[start:stop]
        for _score, member in removed:
            del self.scores[member]
            self.size -= len(member) + _ZITEM
        return removed

    def score_bounds(
        self, low: float, low_open: bool, high: float, high_open: bool
    ) -> tuple[int, int]:
        """Positions ``[start, stop)`` of the members whose score is within the bounds."""
        order = self.order
        if low_open:
            start = bisect.bisect_right(order, low, key=_score_of)
        else:
            start = bisect.bisect_left(order, low, key=_score_of)
        if high_open:
            stop = bisect.bisect_left(order, high, key=_score_of)
        else:
            stop = bisect.bisect_right(order, high, key=_score_of)
        return start, max(start, stop)

    def lex_bounds(
        self, low: bytes | None, low_open: bool, high: bytes | None, high_open: bool
    ) -> tuple[int, int]:
        """Positions ``[start, stop)`` of the members within lexicographic bounds (``None``: open end).

        Meaningful when every member has the same score, as Redis documents.
        """
        order = self.order
        if low is None:
            start = 0
        elif low_open:
            start = bisect.bisect_right(order, low, key=_member_of)
        else:
            start = bisect.bisect_left(order, low, key=_member_of)
        if high is None:
            stop = len(order)
        elif high_open:
            stop = bisect.bisect_left(order, high, key=_member_of)
        else:
            stop = bisect.bisect_right(order, high, key=_member_of)
        return start, max(start, stop)

    def __iter__(self) -> Iterator[tuple[float, bytes]]:
        return iter(self.order)


_TYPE_NAMES: Final = {
    bytes: "string",
    ListValue: "list",
    HashValue: "hash",
    SetValue: "set",
    ZSetValue: "zset",
}


def type_name(value: object) -> str:
    """The Redis type name of a stored value (``"string"``, ``"list"``, ...), ``"none"`` for None."""
    if value is None:
        return "none"
    return _TYPE_NAMES.get(type(value), "string")


def weigh(key: object, value: object) -> int:
    """The engine weigher: key + value bytes + a per-key overhead; containers report their size.

    It also records the weight on a container, so the keyspace knows when a container has
    grown or shrunk enough since the store last weighed it to be worth re-weighing.
    """
    if type(value) is bytes and type(key) is bytes:  # every string SET: the cheapest test first
        return len(key) + len(value) + KEY_OVERHEAD
    key_size = len(key) if isinstance(key, bytes | str) else 8
    if type(value) is bytes:
        return key_size + len(value) + KEY_OVERHEAD
    size: int = getattr(value, "size", 0)
    weight = key_size + size + KEY_OVERHEAD
    if hasattr(value, "weighed"):
        value.weighed = weight
    return weight
