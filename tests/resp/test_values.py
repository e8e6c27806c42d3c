"""Number parsing and formatting as Redis does it, glob matching, and container sizes."""

from __future__ import annotations

import decimal
import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stratacache.resp.values import (
    HashValue,
    ListValue,
    SetValue,
    ZSetValue,
    _match_tokens,
    _token_list,
    _translate,
    format_human_double,
    glob_match,
    parse_float,
    parse_int,
    type_name,
    weigh,
)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (b"0", 0),
        (b"-1", -1),
        (b"9223372036854775807", 2**63 - 1),
        (b"-9223372036854775808", -(2**63)),
        (b"9223372036854775808", None),
        (b"01", None),
        (b"-0", None),
        (b"+1", None),
        (b" 1", None),
        (b"1 ", None),
        (b"1_0", None),
        (b"", None),
        (b"-", None),
        (b"\xd9\xa1", None),  # an Arabic-Indic digit: isdigit() on str would accept it
    ],
)
def test_parse_int_is_string2ll(text: bytes, value: int | None) -> None:
    assert parse_int(text) == value


@pytest.mark.parametrize(
    ("text", "value"),
    [
        (b"1.5", 1.5),
        (b"-inf", float("-inf")),
        (b"+inf", float("inf")),
        (b"Infinity", float("inf")),
        (b"1e3", 1000.0),
        (b".5", 0.5),
        (b"5.", 5.0),
        (b"nan", None),
        (b" 1", None),
        (b"1e", None),
        (b"1e999", None),
        (b"1e-999", None),
        (b"0e10", 0.0),
        (b"1_0", None),
        (b"", None),
    ],
)
def test_parse_float_is_strtod_without_nan_or_overflow(text: bytes, value: float | None) -> None:
    assert parse_float(text) == value


def test_human_double_formatting() -> None:
    assert format_human_double(decimal.Decimal("10.5") + decimal.Decimal("0.1")) == b"10.6"
    assert format_human_double(decimal.Decimal("3.0e3")) == b"3000"
    assert format_human_double(decimal.Decimal("-0.0")) == b"0"
    assert format_human_double(decimal.Decimal("1") / decimal.Decimal("3")) == (
        b"0.33333333333333333"
    )


def _reference_glob(pattern: bytes, text: bytes) -> bool:
    """A direct port of Redis's recursive stringmatchlen, for small inputs."""

    def match(p: int, s: int) -> bool:
        while p < len(pattern) and s < len(text):
            c = pattern[p]
            if c == 0x2A:
                while p + 1 < len(pattern) and pattern[p + 1] == 0x2A:
                    p += 1
                if p + 1 == len(pattern):
                    return True
                return any(match(p + 1, k) for k in range(s, len(text) + 1))
            if c == 0x3F:
                s += 1
            elif c == 0x5B:
                p += 1
                negate = p < len(pattern) and pattern[p] == 0x5E
                if negate:
                    p += 1
                hit = False
                while True:
                    if p < len(pattern) and pattern[p] == 0x5C and len(pattern) - p >= 2:
                        p += 1
                        hit |= pattern[p] == text[s]
                    elif p < len(pattern) and pattern[p] == 0x5D:
                        break
                    elif p >= len(pattern):
                        p -= 1
                        break
                    elif len(pattern) - p >= 3 and pattern[p + 1] == 0x2D:
                        lo, hi = sorted((pattern[p], pattern[p + 2]))
                        hit |= lo <= text[s] <= hi
                        p += 2
                    else:
                        hit |= pattern[p] == text[s]
                    p += 1
                if hit == negate:
                    return False
                s += 1
            else:
                if c == 0x5C and len(pattern) - p >= 2:
                    p += 1
                    c = pattern[p]
                if c != text[s]:
                    return False
                s += 1
            p += 1
        if s == len(text):
            while p < len(pattern) and pattern[p] == 0x2A:
                p += 1
            return p == len(pattern)
        return False

    return match(0, 0)


_PATTERN = st.lists(
    st.sampled_from([b"*", b"?", b"a", b"b", b"[ab]", b"[^a]", b"[a-c]", b"\\*", b"c"]),
    max_size=7,
).map(b"".join)
_TEXT = st.lists(st.sampled_from([b"a", b"b", b"c", b"*"]), max_size=8).map(b"".join)


@settings(max_examples=400, deadline=None)
@given(pattern=_PATTERN, text=_TEXT)
def test_glob_matches_redis_reference(pattern: bytes, text: bytes) -> None:
    expected = _reference_glob(pattern, text)
    assert glob_match(pattern, text) is expected
    # Both strategies (regex translation and the linear matcher) agree with the reference.
    assert _match_tokens(_token_list(pattern, False), text) is expected
    compiled = re.compile(_translate(pattern), re.DOTALL)
    assert (compiled.fullmatch(text) is not None) is expected


def test_glob_nocase_and_pathological_patterns() -> None:
    assert glob_match(b"H*L*O", b"hello", nocase=True)
    assert not glob_match(b"H*L*O", b"hello")
    started = time.perf_counter()
    assert not glob_match(b"a*" * 30 + b"b", b"a" * 2000)
    assert time.perf_counter() - started < 2.0  # linear, not exponential


def test_container_sizes_follow_mutations() -> None:
    hash_value = HashValue()
    hash_value.set(b"f", b"vv")
    grown = hash_value.size
    hash_value.set(b"f", b"v")
    assert hash_value.size == grown - 1
    hash_value.delete(b"f")
    assert hash_value.size == 0
    items = ListValue([b"a", b"bb"])
    before = items.size
    items.push([b"ccc"], left=True)
    assert items.pop(left=True) == b"ccc"
    assert items.size == before
    members = SetValue([b"x"])
    assert not members.add(b"x")
    assert members.remove(b"x")
    assert members.size == 0
    zset = ZSetValue()
    zset.add(b"m", 1.0)
    zset.add(b"m", 2.0)
    assert zset.order == [(2.0, b"m")]
    assert zset.remove(b"m")
    assert zset.size == 0
    assert not zset.order


def test_weigher_records_container_weight() -> None:
    value = ListValue([b"x" * 100])
    weight = weigh(b"key", value)
    assert weight == value.weighed
    assert weight > 100
    assert weigh(b"k", b"v") == weigh(b"kk", b"")
    assert type_name(value) == "list"
    assert type_name(None) == "none"
    assert type_name(b"") == "string"


@settings(max_examples=200, deadline=None)
@given(
    operations=st.lists(
        st.tuples(st.sampled_from(["add", "remove"]), st.binary(max_size=3), st.floats(-5, 5)),
        max_size=40,
    )
)
def test_zset_order_matches_a_sorted_dict(operations: list[tuple[str, bytes, float]]) -> None:
    zset = ZSetValue()
    model: dict[bytes, float] = {}
    for operation, member, score in operations:
        if operation == "add":
            assert zset.add(member, score) is (member not in model)
            model[member] = score
        else:
            assert zset.remove(member) is (member in model)
            model.pop(member, None)
    assert zset.order == sorted((score, member) for member, score in model.items())
    for member in model:
        assert zset.order[zset.rank(member)][1] == member  # type: ignore[index]
    start, stop = zset.score_bounds(-1.0, True, 1.0, False)
    assert [m for _, m in zset.order[start:stop]] == [
        m for s, m in sorted((s, m) for m, s in model.items()) if -1.0 < s <= 1.0
    ]
