"""List commands, blocking ones (BLPOP, BRPOP, BLMOVE, BRPOPLPUSH, BLMPOP) included."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Final

from stratacache.resp.handlers._args import OUT_OF_RANGE_POSITIVE, SYNTAX, int_arg, timeout_arg
from stratacache.resp.keyspace import WRONGTYPE
from stratacache.resp.protocol import NULL_ARRAY, OK, CommandError
from stratacache.resp.session import Block
from stratacache.resp.spec import CommandSpec, command
from stratacache.resp.values import INT64_MAX, INT64_MIN, ListValue, parse_int

if TYPE_CHECKING:
    from stratacache.resp.session import Session

__all__ = ["COMMANDS"]


def _push(s: Session, argv: list[bytes], *, left: bool, only_existing: bool) -> object:
    db = s.db
    key = argv[1]
    value = db.get_list(key)
    if value is None:
        if only_existing:
            return 0
        value = ListValue()
        value.push(argv[2:], left=left)
        db.set(key, value)
    else:
        value.push(argv[2:], left=left)
        db.changed(key, value)
    if db.keyspace.notify_flags:
        db.notify("l", "lpush" if left else "rpush", key)
    return len(value)


def lpush(s: Session, argv: list[bytes]) -> object:
    """LPUSH key element [element ...]."""
    return _push(s, argv, left=True, only_existing=False)


def rpush(s: Session, argv: list[bytes]) -> object:
    """RPUSH key element [element ...]."""
    return _push(s, argv, left=False, only_existing=False)


def lpushx(s: Session, argv: list[bytes]) -> object:
    """LPUSHX key element [element ...]."""
    return _push(s, argv, left=True, only_existing=True)


def rpushx(s: Session, argv: list[bytes]) -> object:
    """RPUSHX key element [element ...]."""
    return _push(s, argv, left=False, only_existing=True)


def _pop_some(s: Session, key: bytes, value: ListValue, count: int, *, left: bool) -> list[bytes]:
    popped = [value.pop(left=left) for _ in range(min(count, len(value)))]
    s.db.changed(key, value)
    s.db.notify("l", "lpop" if left else "rpop", key)
    if not len(value):
        s.db.notify("g", "del", key)
    return popped


def _pop(s: Session, argv: list[bytes], *, left: bool) -> object:
    if len(argv) > 3:
        raise CommandError(
            f"ERR wrong number of arguments for '{argv[0].lower().decode()}' command"
        )
    count: int | None = None
    if len(argv) == 3:
        count = parse_int(argv[2])
        if count is None or count < 0:
            raise CommandError(OUT_OF_RANGE_POSITIVE)
    value = s.db.get_list(argv[1])
    if value is None:
        return None if count is None else NULL_ARRAY
    if count is None:
        return _pop_some(s, argv[1], value, 1, left=left)[0]
    if count == 0:
        return []
    return _pop_some(s, argv[1], value, count, left=left)


def lpop(s: Session, argv: list[bytes]) -> object:
    """LPOP key [count]."""
    return _pop(s, argv, left=True)


def rpop(s: Session, argv: list[bytes]) -> object:
    """RPOP key [count]."""
    return _pop(s, argv, left=False)


def llen(s: Session, argv: list[bytes]) -> object:
    """LLEN key."""
    value = s.db.get_list(argv[1])
    return 0 if value is None else len(value)


def _bounds(start: int, end: int, size: int) -> tuple[int, int] | None:
    if start < 0:
        start += size
    if end < 0:
        end += size
    start = max(start, 0)
    if start > end or start >= size:
        return None
    return start, min(end, size - 1)


def lrange(s: Session, argv: list[bytes]) -> object:
    """LRANGE key start stop."""
    start = int_arg(argv[2])
    end = int_arg(argv[3])
    value = s.db.get_list(argv[1])
    if value is None:
        return []
    bounds = _bounds(start, end, len(value))
    if bounds is None:
        return []
    first, last = bounds
    items = value.items
    if first > len(items) // 2:
        # Walk from the tail: islice from the head would cross the whole list.
        tail = list(itertools.islice(reversed(items), len(items) - 1 - last, len(items) - first))
        tail.reverse()
        return tail
    return list(itertools.islice(items, first, last + 1))


def lindex(s: Session, argv: list[bytes]) -> object:
    """LINDEX key index."""
    index = int_arg(argv[2])
    value = s.db.get_list(argv[1])
    if value is None:
        return None
    if index < 0:
        index += len(value)
    if not 0 <= index < len(value):
        return None
    return value.items[index]


def lset(s: Session, argv: list[bytes]) -> object:
    """LSET key index element."""
    index = int_arg(argv[2])
    value = s.db.get_list(argv[1])
    if value is None:
        raise CommandError("ERR no such key")
    if index < 0:
        index += len(value)
    if not 0 <= index < len(value):
        raise CommandError("ERR index out of range")
    value.set_at(index, argv[3])
    s.db.changed(argv[1], value)
    s.db.notify("l", "lset", argv[1])
    return OK


def linsert(s: Session, argv: list[bytes]) -> object:
    """LINSERT key BEFORE|AFTER pivot element."""
    where = argv[2].upper()
    if where not in (b"BEFORE", b"AFTER"):
        raise CommandError(SYNTAX)
    value = s.db.get_list(argv[1])
    if value is None:
        return 0
    try:
        position = value.items.index(argv[3])
    except ValueError:
        return -1
    items = list(value.items)
    items.insert(position if where == b"BEFORE" else position + 1, argv[4])
    value.replace(items)
    s.db.changed(argv[1], value)
    s.db.notify("l", "linsert", argv[1])
    return len(value)


def lrem(s: Session, argv: list[bytes]) -> object:
    """LREM key count element."""
    count = int_arg(argv[2])
    value = s.db.get_list(argv[1])
    if value is None:
        return 0
    element = argv[3]
    items = list(value.items)
    removed = 0
    if count >= 0:
        kept = []
        for item in items:
            if item == element and (count == 0 or removed < count):
                removed += 1
            else:
                kept.append(item)
    else:
        kept = []
        for item in reversed(items):
            if item == element and removed < -count:
                removed += 1
            else:
                kept.append(item)
        kept.reverse()
    if removed:
        value.replace(kept)
        s.db.changed(argv[1], value)
        s.db.notify("l", "lrem", argv[1])
        if not len(value):
            s.db.notify("g", "del", argv[1])
    return removed


def ltrim(s: Session, argv: list[bytes]) -> object:
    """LTRIM key start stop."""
    start = int_arg(argv[2])
    end = int_arg(argv[3])
    value = s.db.get_list(argv[1])
    if value is None:
        return OK
    bounds = _bounds(start, end, len(value))
    if bounds is None:
        value.replace(())
    else:
        value.replace(itertools.islice(value.items, bounds[0], bounds[1] + 1))
    s.db.changed(argv[1], value)
    s.db.notify("l", "ltrim", argv[1])
    if not len(value):
        s.db.notify("g", "del", argv[1])
    return OK


def lpos(s: Session, argv: list[bytes]) -> object:
    """LPOS key element [RANK rank] [COUNT num-matches] [MAXLEN len]."""
    rank = 1
    count: int | None = None
    maxlen = 0
    index = 3
    while index < len(argv):
        option = argv[index].upper()
        if index + 1 >= len(argv):
            raise CommandError(SYNTAX)
        if option == b"RANK":
            rank = int_arg(argv[index + 1])
            if rank == 0:
                raise CommandError(
                    "ERR RANK can't be zero: use 1 to start from the first match, 2 from the "
                    "second ... or use negative to start from the end of the list"
                )
            if rank == INT64_MIN:
                raise CommandError(
                    "ERR value is out of range, value must between -9223372036854775807 and "
                    "9223372036854775807"
                )
        elif option == b"COUNT":
            count = int_arg(argv[index + 1], "ERR COUNT can't be negative")
            if count < 0:
                raise CommandError("ERR COUNT can't be negative")
        elif option == b"MAXLEN":
            maxlen = int_arg(argv[index + 1], "ERR MAXLEN can't be negative")
            if maxlen < 0:
                raise CommandError("ERR MAXLEN can't be negative")
        else:
            raise CommandError(SYNTAX)
        index += 2
    value = s.db.get_list(argv[1])
    if value is None:
        return None if count is None else []
    element = argv[2]
    items = value.items
    size = len(items)
    wanted = count if count else (INT64_MAX if count == 0 else 1)
    matches: list[int] = []
    skip = abs(rank) - 1
    walked = 0
    positions = range(size) if rank > 0 else range(size - 1, -1, -1)
    iterator = iter(items) if rank > 0 else reversed(items)
    for position, item in zip(positions, iterator, strict=False):
        if maxlen and walked >= maxlen:
            break
        walked += 1
        if item == element:
            if skip:
                skip -= 1
                continue
            matches.append(position)
            if len(matches) >= wanted:
                break
    if count is None:
        return matches[0] if matches else None
    return matches


def _direction(raw: bytes) -> bool:
    """``True`` for LEFT, ``False`` for RIGHT."""
    where = raw.upper()
    if where == b"LEFT":
        return True
    if where == b"RIGHT":
        return False
    raise CommandError(SYNTAX)


def _move(s: Session, source: bytes, target: bytes, from_left: bool, to_left: bool) -> bytes | None:
    db = s.db
    value = db.get_list(source)
    if value is None:
        return None
    destination = db.get_list(target)
    element = value.pop(left=from_left)
    db.changed(source, value)
    db.notify("l", "lpop" if from_left else "rpop", source)
    if not len(value):
        db.notify("g", "del", source)
    if destination is None or (source == target and not len(value)):
        destination = ListValue([element])
        db.set(target, destination)
    else:
        destination.push([element], left=to_left)
        db.changed(target, destination)
    db.notify("l", "lpush" if to_left else "rpush", target)
    return element


def _check_target(s: Session, target: bytes) -> None:
    existing = s.db.store.get(target)
    if existing is not None and type(existing) is not ListValue:
        raise CommandError(WRONGTYPE)


def lmove(s: Session, argv: list[bytes]) -> object:
    """LMOVE source destination LEFT|RIGHT LEFT|RIGHT."""
    from_left = _direction(argv[3])
    to_left = _direction(argv[4])
    if s.db.get_list(argv[1]) is None:
        return None
    _check_target(s, argv[2])
    return _move(s, argv[1], argv[2], from_left, to_left)


def rpoplpush(s: Session, argv: list[bytes]) -> object:
    """RPOPLPUSH source destination."""
    if s.db.get_list(argv[1]) is None:
        return None
    _check_target(s, argv[2])
    return _move(s, argv[1], argv[2], False, True)


def _mpop_args(argv: list[bytes], start: int) -> tuple[list[bytes], bool, int]:
    numkeys = parse_int(argv[start])
    if numkeys is None or numkeys <= 0:
        raise CommandError("ERR numkeys should be greater than 0")
    if numkeys > len(argv) - start - 2:
        raise CommandError(SYNTAX)
    keys = argv[start + 1 : start + 1 + numkeys]
    index = start + 1 + numkeys
    left = _direction(argv[index])
    index += 1
    count = 1
    seen_count = False
    while index < len(argv):
        if argv[index].upper() == b"COUNT" and index + 1 < len(argv) and not seen_count:
            count = parse_int(argv[index + 1]) or 0
            if count <= 0:
                raise CommandError("ERR count should be greater than 0")
            seen_count = True
            index += 2
        else:
            raise CommandError(SYNTAX)
    return keys, left, count


def _mpop(s: Session, keys: list[bytes], left: bool, count: int) -> object:
    db = s.db
    for key in keys:
        value = db.get_list(key)
        if value is not None and len(value):
            return [key, _pop_some(s, key, value, count, left=left)]
    return None


def lmpop(s: Session, argv: list[bytes]) -> object:
    """LMPOP numkeys key [key ...] LEFT|RIGHT [COUNT count]."""
    keys, left, count = _mpop_args(argv, 1)
    result = _mpop(s, keys, left, count)
    return NULL_ARRAY if result is None else result


def _blocking_pop(s: Session, argv: list[bytes], *, left: bool) -> object:
    timeout = timeout_arg(argv[-1])
    keys = argv[1:-1]
    db = s.db
    for key in keys:
        value = db.get_list(key)
        if value is not None and len(value):
            return [key, _pop_some(s, key, value, 1, left=left)[0]]
    return Block(keys, timeout, NULL_ARRAY, ListValue)


def blpop(s: Session, argv: list[bytes]) -> object:
    """BLPOP key [key ...] timeout."""
    return _blocking_pop(s, argv, left=True)


def brpop(s: Session, argv: list[bytes]) -> object:
    """BRPOP key [key ...] timeout."""
    return _blocking_pop(s, argv, left=False)


def blmove(s: Session, argv: list[bytes]) -> object:
    """BLMOVE source destination LEFT|RIGHT LEFT|RIGHT timeout."""
    from_left = _direction(argv[3])
    to_left = _direction(argv[4])
    timeout = timeout_arg(argv[5])
    if s.db.get_list(argv[1]) is None:
        return Block([argv[1]], timeout, None, ListValue)
    _check_target(s, argv[2])
    return _move(s, argv[1], argv[2], from_left, to_left)


def brpoplpush(s: Session, argv: list[bytes]) -> object:
    """BRPOPLPUSH source destination timeout."""
    timeout = timeout_arg(argv[3])
    if s.db.get_list(argv[1]) is None:
        return Block([argv[1]], timeout, None, ListValue)
    _check_target(s, argv[2])
    return _move(s, argv[1], argv[2], False, True)


def blmpop(s: Session, argv: list[bytes]) -> object:
    """BLMPOP timeout numkeys key [key ...] LEFT|RIGHT [COUNT count]."""
    timeout = timeout_arg(argv[1])
    keys, left, count = _mpop_args(argv, 2)
    result = _mpop(s, keys, left, count)
    if result is None:
        return Block(keys, timeout, NULL_ARRAY, ListValue)
    return result


def _mpop_keys(start: int) -> object:
    def finder(argv: list[bytes]) -> list[bytes]:
        numkeys = parse_int(argv[start]) if len(argv) > start else None
        if numkeys is None or numkeys <= 0:
            return []
        return argv[start + 1 : start + 1 + numkeys]

    return finder


_LIST = "list"
_K1: Final = (1, 1, 1)

COMMANDS: Final[tuple[CommandSpec, ...]] = (
    command("lpush", -3, "write denyoom fast", lpush, keys=_K1, group=_LIST),
    command("rpush", -3, "write denyoom fast", rpush, keys=_K1, group=_LIST),
    command("lpushx", -3, "write denyoom fast", lpushx, keys=_K1, group=_LIST, since="2.2.0"),
    command("rpushx", -3, "write denyoom fast", rpushx, keys=_K1, group=_LIST, since="2.2.0"),
    command("lpop", -2, "write fast", lpop, keys=_K1, group=_LIST),
    command("rpop", -2, "write fast", rpop, keys=_K1, group=_LIST),
    command("llen", 2, "readonly fast", llen, keys=_K1, group=_LIST),
    command("lrange", 4, "readonly", lrange, keys=_K1, group=_LIST),
    command("lindex", 3, "readonly", lindex, keys=_K1, group=_LIST),
    command("lset", 4, "write denyoom", lset, keys=_K1, group=_LIST),
    command("linsert", 5, "write denyoom", linsert, keys=_K1, group=_LIST, since="2.2.0"),
    command("lrem", 4, "write", lrem, keys=_K1, group=_LIST),
    command("ltrim", 4, "write", ltrim, keys=_K1, group=_LIST),
    command("lpos", -3, "readonly", lpos, keys=_K1, group=_LIST, since="6.0.6"),
    command("lmove", 5, "write denyoom", lmove, keys=(1, 2, 1), group=_LIST, since="6.2.0"),
    command("rpoplpush", 3, "write denyoom", rpoplpush, keys=(1, 2, 1), group=_LIST, since="1.2.0"),
    command(
        "lmpop",
        -4,
        "write",
        lmpop,
        group=_LIST,
        since="7.0.0",
        key_finder=_mpop_keys(1),  # type: ignore[arg-type]
    ),
    command(
        "blpop", -3, "write noscript blocking", blpop, keys=(1, -2, 1), group=_LIST, since="2.0.0"
    ),
    command(
        "brpop", -3, "write noscript blocking", brpop, keys=(1, -2, 1), group=_LIST, since="2.0.0"
    ),
    command(
        "blmove",
        6,
        "write denyoom noscript blocking",
        blmove,
        keys=(1, 2, 1),
        group=_LIST,
        since="6.2.0",
    ),
    command(
        "brpoplpush",
        4,
        "write denyoom noscript blocking",
        brpoplpush,
        keys=(1, 2, 1),
        group=_LIST,
        since="2.2.0",
    ),
    command(
        "blmpop",
        -5,
        "write blocking",
        blmpop,
        group=_LIST,
        since="7.0.0",
        key_finder=_mpop_keys(2),  # type: ignore[arg-type]
    ),
)
