"""Sorted-set commands: ZADD, ranges by rank, score and lex, pops (blocking too), set algebra."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from stratacache.resp.handlers._args import (
    NOT_FLOAT,
    SYNTAX,
    int_arg,
    positive_arg,
    range_arg,
    timeout_arg,
)
from stratacache.resp.handlers.hashes import random_picks
from stratacache.resp.handlers.keys import _scan_options, parse_cursor, scan_order
from stratacache.resp.keyspace import WRONGTYPE
from stratacache.resp.protocol import NULL_ARRAY, CommandError
from stratacache.resp.session import Block
from stratacache.resp.spec import CommandSpec, command
from stratacache.resp.values import (
    INT64_MAX,
    SetValue,
    ZSetValue,
    glob_match,
    parse_float,
    parse_int,
)

if TYPE_CHECKING:
    from stratacache.resp.session import Session

__all__ = ["COMMANDS"]

_NAN: Final = "ERR resulting score is not a number (NaN)"
_NOT_FLOAT_RANGE: Final = "ERR min or max is not a float"
_NOT_LEX_RANGE: Final = "ERR min or max not valid string range item"


def _score(raw: bytes) -> float:
    value = parse_float(raw)
    if value is None:
        raise CommandError(NOT_FLOAT)
    return value


def _with_scores(s: Session, pairs: list[tuple[float, bytes]]) -> list[object]:
    """Members and scores: a flat array in RESP2, pairs in RESP3."""
    if s.resp == 3:
        return [[member, score] for score, member in pairs]
    out: list[object] = []
    for score, member in pairs:
        out.append(member)
        out.append(score)
    return out


def _zset_for_write(s: Session, key: bytes) -> ZSetValue | None:
    return s.db.get_zset(key)


def zadd(s: Session, argv: list[bytes], *, incr_only: bool = False) -> object:
    """ZADD key [NX|XX] [GT|LT] [CH] [INCR] score member [score member ...]."""
    nx = xx = gt = lt = ch = False
    incr = incr_only
    index = 2
    if not incr_only:
        while index < len(argv):
            option = argv[index].upper()
            if option == b"NX":
                nx = True
            elif option == b"XX":
                xx = True
            elif option == b"CH":
                ch = True
            elif option == b"INCR":
                incr = True
            elif option == b"GT":
                gt = True
            elif option == b"LT":
                lt = True
            else:
                break
            index += 1
    elements = len(argv) - index
    if elements % 2 or not elements:
        raise CommandError(SYNTAX)
    if nx and xx:
        raise CommandError("ERR XX and NX options at the same time are not compatible")
    if (gt and nx) or (lt and nx) or (gt and lt):
        raise CommandError("ERR GT, LT, and/or NX options at the same time are not compatible")
    if incr and elements > 2:
        raise CommandError("ERR INCR option supports a single increment-element pair")
    pairs = [(_score(argv[i]), argv[i + 1]) for i in range(index, len(argv), 2)]
    db = s.db
    key = argv[1]
    value = db.get_zset(key)
    created = False
    if value is None:
        if xx:
            return None if incr else 0
        value = ZSetValue()
        created = True
    added = updated = processed = 0
    score = 0.0
    error: str | None = None
    for given, member in pairs:
        new_score = given
        current = value.scores.get(member)
        if current is not None:
            if nx:
                continue
            if incr:
                new_score += current
                if math.isnan(new_score):
                    error = _NAN
                    break
            if (lt and new_score >= current) or (gt and new_score <= current):
                continue
            processed += 1
            score = new_score
            if new_score != current:
                value.add(member, new_score)
                updated += 1
        elif not xx:
            value.add(member, new_score)
            added += 1
            processed += 1
            score = new_score
    if added or updated:
        if created:
            db.set(key, value)
        else:
            db.changed(key, value)
        db.notify("z", "zincr" if incr else "zadd", key)
    if error is not None:
        raise CommandError(error)
    if incr:
        return score if processed else None
    return added + updated if ch else added


def zincrby(s: Session, argv: list[bytes]) -> object:
    """ZINCRBY key increment member."""
    return zadd(s, argv, incr_only=True)


def zrem(s: Session, argv: list[bytes]) -> object:
    """ZREM key member [member ...]."""
    db = s.db
    value = db.get_zset(argv[1])
    if value is None:
        return 0
    removed = sum(1 for member in argv[2:] if value.remove(member))
    if removed:
        db.changed(argv[1], value)
        db.notify("z", "zrem", argv[1])
        if not len(value):
            db.notify("g", "del", argv[1])
    return removed


def zcard(s: Session, argv: list[bytes]) -> object:
    """ZCARD key."""
    value = s.db.get_zset(argv[1])
    return 0 if value is None else len(value)


def zscore(s: Session, argv: list[bytes]) -> object:
    """ZSCORE key member."""
    value = s.db.get_zset(argv[1])
    return None if value is None else value.scores.get(argv[2])


def zmscore(s: Session, argv: list[bytes]) -> object:
    """ZMSCORE key member [member ...]."""
    value = s.db.get_zset(argv[1])
    scores = value.scores if value is not None else {}
    return [scores.get(member) for member in argv[2:]]


def _rank(s: Session, argv: list[bytes], *, reverse: bool) -> object:
    if len(argv) > 3:
        raise CommandError(SYNTAX)
    value = s.db.get_zset(argv[1])
    if value is None:
        return None
    rank = value.rank(argv[2])
    if rank is None:
        return None
    return len(value) - 1 - rank if reverse else rank


def zrank(s: Session, argv: list[bytes]) -> object:
    """ZRANK key member."""
    return _rank(s, argv, reverse=False)


def zrevrank(s: Session, argv: list[bytes]) -> object:
    """ZREVRANK key member."""
    return _rank(s, argv, reverse=True)


def parse_score_range(low: bytes, high: bytes) -> tuple[float, bool, float, bool]:
    """``(min, min_exclusive, max, max_exclusive)`` from ZRANGEBYSCORE-style bounds."""

    def one(raw: bytes) -> tuple[float, bool]:
        if raw[:1] == b"(":
            value = parse_float(raw[1:])
            if value is None:
                raise CommandError(_NOT_FLOAT_RANGE)
            return value, True
        value = parse_float(raw)
        if value is None:
            raise CommandError(_NOT_FLOAT_RANGE)
        return value, False

    low_value, low_open = one(low)
    high_value, high_open = one(high)
    return low_value, low_open, high_value, high_open


def parse_lex_range(low: bytes, high: bytes) -> tuple[bytes | None, bool, bytes | None, bool]:
    """``(min, min_exclusive, max, max_exclusive)`` from ZRANGEBYLEX bounds; ``None`` is open-ended.

    An impossible range (``+`` as min or ``-`` as max) comes back with both ends set so that it
    selects nothing.
    """

    def one(raw: bytes, *, is_min: bool) -> tuple[bytes | None, bool, bool]:
        if raw == b"-":
            return None, False, not is_min  # "-" as max: nothing
        if raw == b"+":
            return None, False, is_min  # "+" as min: nothing
        if raw[:1] == b"[":
            return raw[1:], False, False
        if raw[:1] == b"(":
            return raw[1:], True, False
        raise CommandError(_NOT_LEX_RANGE)

    low_value, low_open, low_empty = one(low, is_min=True)
    high_value, high_open, high_empty = one(high, is_min=False)
    if low_empty or high_empty:
        return b"\x01", True, b"\x00", True
    return low_value, low_open, high_value, high_open


def _limit(items: list[tuple[float, bytes]], offset: int, count: int) -> list[tuple[float, bytes]]:
    if offset < 0:
        return []
    if count < 0:
        return items[offset:]
    return items[offset : offset + count]


def _select(
    value: ZSetValue,
    kind: str,
    low: bytes,
    high: bytes,
    *,
    reverse: bool,
    offset: int,
    count: int,
) -> list[tuple[float, bytes]]:
    """The members a ZRANGE-family call selects, in reply order."""
    if kind == "rank":
        start, end = int_arg(low), int_arg(high)
        size = len(value)
        if start < 0:
            start += size
        if end < 0:
            end += size
        start = max(start, 0)
        if start > end or start >= size:
            return []
        end = min(end, size - 1)
        if reverse:
            # Reverse rank r is position size-1-r.
            selected = value.order[size - 1 - end : size - start]
            selected.reverse()
            return selected
        return value.order[start : end + 1]
    if kind == "score":
        lo, lo_open, hi, hi_open = parse_score_range(low, high)
        first, stop = value.score_bounds(lo, lo_open, hi, hi_open)
    else:
        lex_lo, lex_lo_open, lex_hi, lex_hi_open = parse_lex_range(low, high)
        first, stop = value.lex_bounds(lex_lo, lex_lo_open, lex_hi, lex_hi_open)
    selected = value.order[first:stop]
    if reverse:
        selected.reverse()
    return _limit(selected, offset, count)


def _parse_range_call(
    argv: list[bytes], start: int, *, store: bool, kind: str | None, reverse: bool | None
) -> tuple[str, bool, bool, int, int]:
    with_scores = False
    offset, count = 0, -1
    limit_given = False
    index = start + 3
    while index < len(argv):
        option = argv[index].upper()
        left = len(argv) - index - 1
        if not store and option == b"WITHSCORES":
            with_scores = True
        elif option == b"LIMIT" and left >= 2:
            offset = int_arg(argv[index + 1])
            count = int_arg(argv[index + 2])
            limit_given = True
            index += 2
        elif reverse is None and option == b"REV":
            reverse = True
        elif kind is None and option == b"BYLEX":
            kind = "lex"
        elif kind is None and option == b"BYSCORE":
            kind = "score"
        else:
            raise CommandError(SYNTAX)
        index += 1
    kind = kind or "rank"
    reverse = bool(reverse)
    if limit_given and kind == "rank":
        raise CommandError(
            "ERR syntax error, LIMIT is only supported in combination with either BYSCORE or BYLEX"
        )
    if with_scores and kind == "lex":
        raise CommandError("ERR syntax error, WITHSCORES not supported in combination with BYLEX")
    return kind, reverse, with_scores, offset, count


def _range(
    s: Session,
    argv: list[bytes],
    *,
    kind: str | None = None,
    reverse: bool | None = None,
    store: bool = False,
) -> object:
    start = 2 if store else 1
    kind, is_reverse, with_scores, offset, count = _parse_range_call(
        argv, start, store=store, kind=kind, reverse=reverse
    )
    low, high = argv[start + 1], argv[start + 2]
    if is_reverse and kind != "rank":
        low, high = high, low
    # Validate the bounds before looking at the key, as Redis does.
    if kind == "rank":
        int_arg(low)
        int_arg(high)
    elif kind == "score":
        parse_score_range(low, high)
    else:
        parse_lex_range(low, high)
    key = argv[start]
    value = s.db.get_zset(key)
    if value is None:
        selected: list[tuple[float, bytes]] = []
    else:
        selected = _select(value, kind, low, high, reverse=is_reverse, offset=offset, count=count)
    if store:
        destination = argv[1]
        db = s.db
        if selected:
            result = ZSetValue()
            for score, member in selected:
                result.add(member, score)
            db.set(destination, result)
            db.notify("z", "zrangestore", destination)
        elif db.delete(destination):
            db.notify("g", "del", destination)
        return len(selected)
    if with_scores:
        return _with_scores(s, selected)
    return [member for _, member in selected]


def zrange(s: Session, argv: list[bytes]) -> object:
    """ZRANGE key start stop [BYSCORE|BYLEX] [REV] [LIMIT offset count] [WITHSCORES]."""
    return _range(s, argv)


def zrangestore(s: Session, argv: list[bytes]) -> object:
    """ZRANGESTORE dst src min max [BYSCORE|BYLEX] [REV] [LIMIT offset count]."""
    return _range(s, argv, store=True)


def zrevrange(s: Session, argv: list[bytes]) -> object:
    """ZREVRANGE key start stop [WITHSCORES]."""
    return _range(s, argv, kind="rank", reverse=True)


def zrangebyscore(s: Session, argv: list[bytes]) -> object:
    """ZRANGEBYSCORE key min max [WITHSCORES] [LIMIT offset count]."""
    return _range(s, argv, kind="score", reverse=False)


def zrevrangebyscore(s: Session, argv: list[bytes]) -> object:
    """ZREVRANGEBYSCORE key max min [WITHSCORES] [LIMIT offset count]."""
    return _range(s, argv, kind="score", reverse=True)


def zrangebylex(s: Session, argv: list[bytes]) -> object:
    """ZRANGEBYLEX key min max [LIMIT offset count]."""
    return _range(s, argv, kind="lex", reverse=False)


def zrevrangebylex(s: Session, argv: list[bytes]) -> object:
    """ZREVRANGEBYLEX key max min [LIMIT offset count]."""
    return _range(s, argv, kind="lex", reverse=True)


def zcount(s: Session, argv: list[bytes]) -> object:
    """ZCOUNT key min max."""
    low, low_open, high, high_open = parse_score_range(argv[2], argv[3])
    value = s.db.get_zset(argv[1])
    if value is None:
        return 0
    first, stop = value.score_bounds(low, low_open, high, high_open)
    return stop - first


def zlexcount(s: Session, argv: list[bytes]) -> object:
    """ZLEXCOUNT key min max."""
    low, low_open, high, high_open = parse_lex_range(argv[2], argv[3])
    value = s.db.get_zset(argv[1])
    if value is None:
        return 0
    first, stop = value.lex_bounds(low, low_open, high, high_open)
    return stop - first


def _remove_range(s: Session, argv: list[bytes], kind: str) -> object:
    if kind == "rank":
        start, end = int_arg(argv[2]), int_arg(argv[3])
    elif kind == "score":
        score_range = parse_score_range(argv[2], argv[3])
    else:
        lex_range = parse_lex_range(argv[2], argv[3])
    db = s.db
    value = db.get_zset(argv[1])
    if value is None:
        return 0
    if kind == "rank":
        size = len(value)
        if start < 0:
            start += size
        if end < 0:
            end += size
        start = max(start, 0)
        if start > end or start >= size:
            return 0
        first, stop = start, min(end, size - 1) + 1
    elif kind == "score":
        first, stop = value.score_bounds(*score_range)
    else:
        first, stop = value.lex_bounds(*lex_range)
    removed = value.delete_slice(first, stop)
    if removed:
        db.changed(argv[1], value)
        db.notify("z", f"zremrangeby{kind}", argv[1])
        if not len(value):
            db.notify("g", "del", argv[1])
    return len(removed)


def zremrangebyrank(s: Session, argv: list[bytes]) -> object:
    """ZREMRANGEBYRANK key start stop."""
    return _remove_range(s, argv, "rank")


def zremrangebyscore(s: Session, argv: list[bytes]) -> object:
    """ZREMRANGEBYSCORE key min max."""
    return _remove_range(s, argv, "score")


def zremrangebylex(s: Session, argv: list[bytes]) -> object:
    """ZREMRANGEBYLEX key min max."""
    return _remove_range(s, argv, "lex")


def _pop_from(
    s: Session, key: bytes, value: ZSetValue, count: int, *, maximum: bool
) -> list[tuple[float, bytes]]:
    size = len(value)
    take = min(count, size)
    if maximum:
        popped = value.delete_slice(size - take, size)
        popped.reverse()
    else:
        popped = value.delete_slice(0, take)
    db = s.db
    db.changed(key, value)
    db.notify("z", "zpopmax" if maximum else "zpopmin", key)
    if not len(value):
        db.notify("g", "del", key)
    return popped


def _zpop(s: Session, argv: list[bytes], *, maximum: bool) -> object:
    if len(argv) > 3:
        raise CommandError(SYNTAX)
    count = -1
    if len(argv) == 3:
        count = positive_arg(argv[2])
    value = s.db.get_zset(argv[1])
    if value is None or count == 0:
        return []
    popped = _pop_from(s, argv[1], value, 1 if count == -1 else count, maximum=maximum)
    if s.resp == 3 and count != -1:
        return [[member, score] for score, member in popped]
    out: list[object] = []
    for score, member in popped:
        out.extend((member, score))
    return out


def zpopmin(s: Session, argv: list[bytes]) -> object:
    """ZPOPMIN key [count]."""
    return _zpop(s, argv, maximum=False)


def zpopmax(s: Session, argv: list[bytes]) -> object:
    """ZPOPMAX key [count]."""
    return _zpop(s, argv, maximum=True)


def _bzpop(s: Session, argv: list[bytes], *, maximum: bool) -> object:
    timeout = timeout_arg(argv[-1])
    keys = argv[1:-1]
    for key in keys:
        value = s.db.get_zset(key)
        if value is not None and len(value):
            score, member = _pop_from(s, key, value, 1, maximum=maximum)[0]
            return [key, member, score]
    return Block(keys, timeout, NULL_ARRAY, ZSetValue)


def bzpopmin(s: Session, argv: list[bytes]) -> object:
    """BZPOPMIN key [key ...] timeout."""
    return _bzpop(s, argv, maximum=False)


def bzpopmax(s: Session, argv: list[bytes]) -> object:
    """BZPOPMAX key [key ...] timeout."""
    return _bzpop(s, argv, maximum=True)


def _mpop_args(argv: list[bytes], start: int) -> tuple[list[bytes], bool, int]:
    numkeys = range_arg(argv[start], 1, INT64_MAX, "numkeys should be greater than 0")
    if numkeys > len(argv) - start - 2:
        raise CommandError(SYNTAX)
    keys = argv[start + 1 : start + 1 + numkeys]
    index = start + 1 + numkeys
    where = argv[index].upper()
    if where not in (b"MIN", b"MAX"):
        raise CommandError(SYNTAX)
    index += 1
    count = -1
    while index < len(argv):
        if argv[index].upper() == b"COUNT" and index + 1 < len(argv) and count == -1:
            count = range_arg(argv[index + 1], 1, INT64_MAX, "count should be greater than 0")
            index += 2
        else:
            raise CommandError(SYNTAX)
    return keys, where == b"MAX", 1 if count == -1 else count


def _mpop(s: Session, keys: list[bytes], maximum: bool, count: int) -> object:
    for key in keys:
        value = s.db.get_zset(key)
        if value is not None and len(value):
            popped = _pop_from(s, key, value, count, maximum=maximum)
            return [key, [[member, score] for score, member in popped]]
    return None


def zmpop(s: Session, argv: list[bytes]) -> object:
    """ZMPOP numkeys key [key ...] MIN|MAX [COUNT count]."""
    keys, maximum, count = _mpop_args(argv, 1)
    result = _mpop(s, keys, maximum, count)
    return NULL_ARRAY if result is None else result


def bzmpop(s: Session, argv: list[bytes]) -> object:
    """BZMPOP timeout numkeys key [key ...] MIN|MAX [COUNT count]."""
    timeout = timeout_arg(argv[1])
    keys, maximum, count = _mpop_args(argv, 2)
    result = _mpop(s, keys, maximum, count)
    if result is None:
        return Block(keys, timeout, NULL_ARRAY, ZSetValue)
    return result


def zrandmember(s: Session, argv: list[bytes]) -> object:
    """ZRANDMEMBER key [count [WITHSCORES]]."""
    if len(argv) > 4 or (len(argv) == 4 and argv[3].upper() != b"WITHSCORES"):
        raise CommandError(SYNTAX)
    with_scores = len(argv) == 4
    count: int | None = None
    if len(argv) >= 3:
        limit = INT64_MAX // 2 if with_scores else INT64_MAX
        count = range_arg(argv[2], -limit, limit)
    value = s.db.get_zset(argv[1])
    if value is None:
        return None if count is None else []
    members = list(value.scores)
    if count is None:
        return members[s.sidecar.keyspace.rng.randrange(len(members))]
    picked = random_picks(s, members, count)
    if not with_scores:
        return picked
    return _with_scores(s, [(value.scores[member], member) for member in picked])


def _sources(s: Session, keys: list[bytes]) -> list[dict[bytes, float] | None]:
    out: list[dict[bytes, float] | None] = []
    for key in keys:
        value = s.db.store.get(key)
        if value is None:
            out.append(None)
        elif type(value) is ZSetValue:
            out.append(value.scores)
        elif type(value) is SetValue:
            out.append(dict.fromkeys(value.members, 1.0))
        else:
            raise CommandError(WRONGTYPE)
    return out


def _aggregate(function: str) -> Callable[[float, float], float]:
    if function == "min":
        return min
    if function == "max":
        return max

    def total(a: float, b: float) -> float:
        result = a + b
        return 0.0 if math.isnan(result) else result

    return total


def _set_operation(
    s: Session, argv: list[bytes], numkeys_index: int, operation: str, *, store: bool
) -> object:
    name = argv[0].lower().decode()
    numkeys = int_arg(argv[numkeys_index])
    if numkeys < 1:
        raise CommandError(f"ERR at least 1 input key is needed for '{name}' command")
    if numkeys > len(argv) - numkeys_index - 1:
        raise CommandError(SYNTAX)
    keys = argv[numkeys_index + 1 : numkeys_index + 1 + numkeys]
    sources = _sources(s, keys)
    weights = [1.0] * numkeys
    aggregate = "sum"
    with_scores = False
    limit = 0
    cardinality = operation == "intercard"
    index = numkeys_index + 1 + numkeys
    while index < len(argv):
        option = argv[index].upper()
        remaining = len(argv) - index
        if (
            operation != "diff"
            and not cardinality
            and remaining >= numkeys + 1
            and option == b"WEIGHTS"
        ):
            for offset in range(numkeys):
                weight = parse_float(argv[index + 1 + offset])
                if weight is None:
                    raise CommandError("ERR weight value is not a float")
                weights[offset] = weight
            index += numkeys + 1
        elif operation != "diff" and not cardinality and remaining >= 2 and option == b"AGGREGATE":
            function = argv[index + 1].lower()
            if function not in (b"sum", b"min", b"max"):
                raise CommandError(SYNTAX)
            aggregate = function.decode()
            index += 2
        elif not store and not cardinality and option == b"WITHSCORES":
            with_scores = True
            index += 1
        elif cardinality and remaining >= 2 and option == b"LIMIT":
            limit = positive_arg(argv[index + 1], "LIMIT can't be negative")
            index += 2
        else:
            raise CommandError(SYNTAX)
    combine = _aggregate(aggregate)

    def weighted(score: float, weight: float) -> float:
        result = score * weight
        return 0.0 if math.isnan(result) else result

    result: dict[bytes, float] = {}
    if operation == "union":
        for source, weight in zip(sources, weights, strict=True):
            if not source:
                continue
            for member, score in source.items():
                value = weighted(score, weight)
                if member in result:
                    result[member] = combine(result[member], value)
                else:
                    result[member] = value
    elif operation in ("inter", "intercard"):
        if all(source is not None for source in sources):
            order = sorted(range(numkeys), key=lambda i: len(sources[i] or {}))
            first = order[0]
            for member, score in (sources[first] or {}).items():
                value = weighted(score, weights[first])
                for other in order[1:]:
                    other_scores = sources[other] or {}
                    if member not in other_scores:
                        break
                    value = combine(value, weighted(other_scores[member], weights[other]))
                else:
                    result[member] = value
                    if cardinality and limit and len(result) >= limit:
                        break
    else:  # diff
        first_source = sources[0]
        if first_source:
            others = [source for source in sources[1:] if source]
            for member, score in first_source.items():
                if not any(member in other for other in others):
                    result[member] = score
    if cardinality:
        return min(len(result), limit) if limit else len(result)
    ordered = sorted((score, member) for member, score in result.items())
    if store:
        destination = argv[1]
        db = s.db
        if ordered:
            zset = ZSetValue()
            for score, member in ordered:
                zset.add(member, score)
            db.set(destination, zset)
            db.notify(
                "z",
                {"union": "zunionstore", "inter": "zinterstore"}.get(operation, "zdiffstore"),
                destination,
            )
        elif db.delete(destination):
            db.notify("g", "del", destination)
        return len(ordered)
    if with_scores:
        return _with_scores(s, ordered)
    return [member for _, member in ordered]


def zunion(s: Session, argv: list[bytes]) -> object:
    """ZUNION numkeys key [key ...] [WEIGHTS w ...] [AGGREGATE SUM|MIN|MAX] [WITHSCORES]."""
    return _set_operation(s, argv, 1, "union", store=False)


def zinter(s: Session, argv: list[bytes]) -> object:
    """ZINTER numkeys key [key ...] [WEIGHTS w ...] [AGGREGATE SUM|MIN|MAX] [WITHSCORES]."""
    return _set_operation(s, argv, 1, "inter", store=False)


def zdiff(s: Session, argv: list[bytes]) -> object:
    """ZDIFF numkeys key [key ...] [WITHSCORES]."""
    return _set_operation(s, argv, 1, "diff", store=False)


def zunionstore(s: Session, argv: list[bytes]) -> object:
    """ZUNIONSTORE destination numkeys key [key ...] [WEIGHTS ...] [AGGREGATE ...]."""
    return _set_operation(s, argv, 2, "union", store=True)


def zinterstore(s: Session, argv: list[bytes]) -> object:
    """ZINTERSTORE destination numkeys key [key ...] [WEIGHTS ...] [AGGREGATE ...]."""
    return _set_operation(s, argv, 2, "inter", store=True)


def zdiffstore(s: Session, argv: list[bytes]) -> object:
    """ZDIFFSTORE destination numkeys key [key ...]."""
    return _set_operation(s, argv, 2, "diff", store=True)


def zintercard(s: Session, argv: list[bytes]) -> object:
    """ZINTERCARD numkeys key [key ...] [LIMIT limit]."""
    numkeys = int_arg(argv[1])
    if numkeys < 1:
        raise CommandError("ERR at least 1 input key is needed for 'zintercard' command")
    if numkeys > len(argv) - 2:
        raise CommandError("ERR Number of keys can't be greater than number of args")
    return _set_operation(s, argv, 1, "intercard", store=False)


def zscan(s: Session, argv: list[bytes]) -> object:
    """ZSCAN key cursor [MATCH pattern] [COUNT count]."""
    cursor = parse_cursor(argv[2])
    pattern, count, _ = _scan_options(argv, 3, allow_type=False)
    value = s.db.get_zset(argv[1])
    if value is None:
        return [b"0", []]
    page, next_cursor = scan_order(list(value.scores), cursor, count)
    out: list[object] = []
    for member in page:
        if pattern is None or glob_match(pattern, member):
            out.extend((member, value.scores[member]))
    return [str(next_cursor).encode(), out]


def _numkeys_at(index: int) -> Callable[[list[bytes]], list[bytes]]:
    def finder(argv: list[bytes]) -> list[bytes]:
        numkeys = parse_int(argv[index]) if len(argv) > index else None
        if numkeys is None or numkeys <= 0:
            return []
        return argv[index + 1 : index + 1 + numkeys]

    return finder


def _store_keys(argv: list[bytes]) -> list[bytes]:
    return [argv[1], *_numkeys_at(2)(argv)]


_ZSET = "sorted-set"
_K1: Final = (1, 1, 1)

COMMANDS: Final[tuple[CommandSpec, ...]] = (
    command("zadd", -4, "write denyoom fast", zadd, keys=_K1, group=_ZSET, since="1.2.0"),
    command("zincrby", 4, "write denyoom fast", zincrby, keys=_K1, group=_ZSET, since="1.2.0"),
    command("zrem", -3, "write fast", zrem, keys=_K1, group=_ZSET, since="1.2.0"),
    command("zcard", 2, "readonly fast", zcard, keys=_K1, group=_ZSET, since="1.2.0"),
    command("zscore", 3, "readonly fast", zscore, keys=_K1, group=_ZSET, since="1.2.0"),
    command("zmscore", -3, "readonly fast", zmscore, keys=_K1, group=_ZSET, since="6.2.0"),
    command("zrank", 3, "readonly fast", zrank, keys=_K1, group=_ZSET, since="2.0.0"),
    command("zrevrank", 3, "readonly fast", zrevrank, keys=_K1, group=_ZSET, since="2.0.0"),
    command("zcount", 4, "readonly fast", zcount, keys=_K1, group=_ZSET, since="2.0.0"),
    command("zlexcount", 4, "readonly fast", zlexcount, keys=_K1, group=_ZSET, since="2.8.9"),
    command("zrange", -4, "readonly", zrange, keys=_K1, group=_ZSET, since="1.2.0"),
    command(
        "zrangestore", -5, "write denyoom", zrangestore, keys=(1, 2, 1), group=_ZSET, since="6.2.0"
    ),
    command("zrevrange", -4, "readonly", zrevrange, keys=_K1, group=_ZSET, since="1.2.0"),
    command("zrangebyscore", -4, "readonly", zrangebyscore, keys=_K1, group=_ZSET, since="1.0.5"),
    command(
        "zrevrangebyscore", -4, "readonly", zrevrangebyscore, keys=_K1, group=_ZSET, since="2.2.0"
    ),
    command("zrangebylex", -4, "readonly", zrangebylex, keys=_K1, group=_ZSET, since="2.8.9"),
    command("zrevrangebylex", -4, "readonly", zrevrangebylex, keys=_K1, group=_ZSET, since="2.8.9"),
    command("zremrangebyrank", 4, "write", zremrangebyrank, keys=_K1, group=_ZSET, since="2.0.0"),
    command("zremrangebyscore", 4, "write", zremrangebyscore, keys=_K1, group=_ZSET, since="1.2.0"),
    command("zremrangebylex", 4, "write", zremrangebylex, keys=_K1, group=_ZSET, since="2.8.9"),
    command("zpopmin", -2, "write fast", zpopmin, keys=_K1, group=_ZSET, since="5.0.0"),
    command("zpopmax", -2, "write fast", zpopmax, keys=_K1, group=_ZSET, since="5.0.0"),
    command(
        "bzpopmin",
        -3,
        "write noscript fast blocking",
        bzpopmin,
        keys=(1, -2, 1),
        group=_ZSET,
        since="5.0.0",
    ),
    command(
        "bzpopmax",
        -3,
        "write noscript fast blocking",
        bzpopmax,
        keys=(1, -2, 1),
        group=_ZSET,
        since="5.0.0",
    ),
    command("zmpop", -4, "write", zmpop, group=_ZSET, since="7.0.0", key_finder=_numkeys_at(1)),
    command(
        "bzmpop",
        -5,
        "write blocking",
        bzmpop,
        group=_ZSET,
        since="7.0.0",
        key_finder=_numkeys_at(2),
    ),
    command("zrandmember", -2, "readonly", zrandmember, keys=_K1, group=_ZSET, since="6.2.0"),
    command(
        "zunion", -3, "readonly", zunion, group=_ZSET, since="6.2.0", key_finder=_numkeys_at(1)
    ),
    command(
        "zinter", -3, "readonly", zinter, group=_ZSET, since="6.2.0", key_finder=_numkeys_at(1)
    ),
    command("zdiff", -3, "readonly", zdiff, group=_ZSET, since="6.2.0", key_finder=_numkeys_at(1)),
    command(
        "zunionstore",
        -4,
        "write denyoom",
        zunionstore,
        group=_ZSET,
        since="2.0.0",
        key_finder=_store_keys,
    ),
    command(
        "zinterstore",
        -4,
        "write denyoom",
        zinterstore,
        group=_ZSET,
        since="2.0.0",
        key_finder=_store_keys,
    ),
    command(
        "zdiffstore",
        -4,
        "write denyoom",
        zdiffstore,
        group=_ZSET,
        since="6.2.0",
        key_finder=_store_keys,
    ),
    command(
        "zintercard",
        -3,
        "readonly",
        zintercard,
        group=_ZSET,
        since="7.0.0",
        key_finder=_numkeys_at(1),
    ),
    command("zscan", -3, "readonly", zscan, keys=_K1, group=_ZSET, since="2.8.0"),
)
