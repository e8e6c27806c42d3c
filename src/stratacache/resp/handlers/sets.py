"""Set commands: SADD, SREM, SMEMBERS, SPOP, SRANDMEMBER, set algebra, SSCAN, ..."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from stratacache.resp.handlers._args import SYNTAX, positive_arg, range_arg
from stratacache.resp.handlers.hashes import random_picks
from stratacache.resp.handlers.keys import _scan_options, parse_cursor, scan_order
from stratacache.resp.keyspace import WRONGTYPE
from stratacache.resp.protocol import CommandError
from stratacache.resp.spec import CommandSpec, command
from stratacache.resp.values import INT64_MAX, SetValue, glob_match

if TYPE_CHECKING:
    from stratacache.resp.session import Session

__all__ = ["COMMANDS"]


def sadd(s: Session, argv: list[bytes]) -> object:
    """SADD key member [member ...]."""
    db = s.db
    value = db.get_set(argv[1])
    created = value is None
    if value is None:
        value = SetValue()
    added = sum(1 for member in argv[2:] if value.add(member))
    if created:
        db.set(argv[1], value)
    elif added:
        db.changed(argv[1], value)
    if added:
        db.notify("s", "sadd", argv[1])
    return added


def srem(s: Session, argv: list[bytes]) -> object:
    """SREM key member [member ...]."""
    db = s.db
    value = db.get_set(argv[1])
    if value is None:
        return 0
    removed = sum(1 for member in argv[2:] if value.remove(member))
    if removed:
        db.changed(argv[1], value)
        db.notify("s", "srem", argv[1])
        if not len(value):
            db.notify("g", "del", argv[1])
    return removed


def smembers(s: Session, argv: list[bytes]) -> object:
    """SMEMBERS key: a set in RESP3, an array in RESP2."""
    value = s.db.get_set(argv[1])
    return set() if value is None else set(value.members)


def sismember(s: Session, argv: list[bytes]) -> object:
    """SISMEMBER key member."""
    value = s.db.get_set(argv[1])
    return 1 if value is not None and argv[2] in value.members else 0


def smismember(s: Session, argv: list[bytes]) -> object:
    """SMISMEMBER key member [member ...]."""
    value = s.db.get_set(argv[1])
    members = value.members if value is not None else set()
    return [1 if member in members else 0 for member in argv[2:]]


def scard(s: Session, argv: list[bytes]) -> object:
    """SCARD key."""
    value = s.db.get_set(argv[1])
    return 0 if value is None else len(value)


def spop(s: Session, argv: list[bytes]) -> object:
    """SPOP key [count]."""
    if len(argv) > 3:
        raise CommandError(SYNTAX)
    count: int | None = None
    if len(argv) == 3:
        count = positive_arg(argv[2])
    db = s.db
    value = db.get_set(argv[1])
    if value is None:
        return None if count is None else set()
    if count == 0:
        return set()
    members = list(value.members)
    picked = random_picks(s, members, 1 if count is None else count)
    for member in picked:
        value.remove(member)
    db.changed(argv[1], value)
    db.notify("s", "spop", argv[1])
    if not len(value):
        db.notify("g", "del", argv[1])
    if count is None:
        return picked[0]
    return set(picked)


def srandmember(s: Session, argv: list[bytes]) -> object:
    """SRANDMEMBER key [count]."""
    if len(argv) > 3:
        raise CommandError(SYNTAX)
    count: int | None = None
    if len(argv) == 3:
        count = range_arg(argv[2], -INT64_MAX, INT64_MAX)
    value = s.db.get_set(argv[1])
    if value is None:
        return None if count is None else []
    members = list(value.members)
    if count is None:
        return members[s.sidecar.keyspace.rng.randrange(len(members))]
    if count == 0:
        return []
    return random_picks(s, members, count)


def smove(s: Session, argv: list[bytes]) -> object:
    """SMOVE source destination member."""
    db = s.db
    source = db.get_set(argv[1])
    destination = db.get_set(argv[2])
    if source is None:
        return 0
    member = argv[3]
    if argv[1] == argv[2]:
        return 1 if member in source.members else 0
    if not source.remove(member):
        return 0
    db.changed(argv[1], source)
    db.notify("s", "srem", argv[1])
    if not len(source):
        db.notify("g", "del", argv[1])
    if destination is None:
        destination = SetValue([member])
        db.set(argv[2], destination)
        db.notify("s", "sadd", argv[2])
    elif destination.add(member):
        db.changed(argv[2], destination)
        db.notify("s", "sadd", argv[2])
    return 1


def _sets(s: Session, keys: list[bytes]) -> list[set[bytes] | None]:
    out: list[set[bytes] | None] = []
    for key in keys:
        value = s.db.store.get(key)
        if value is None:
            out.append(None)
        elif type(value) is SetValue:
            out.append(value.members)
        else:
            raise CommandError(WRONGTYPE)
    return out


def _inter(sets: list[set[bytes] | None]) -> set[bytes]:
    present = [members for members in sets if members is not None]
    if len(present) < len(sets):
        return set()
    present.sort(key=len)
    result = set(present[0])
    for members in present[1:]:
        result &= members
        if not result:
            break
    return result


def _union(sets: list[set[bytes] | None]) -> set[bytes]:
    result: set[bytes] = set()
    for members in sets:
        if members:
            result |= members
    return result


def _diff(sets: list[set[bytes] | None]) -> set[bytes]:
    if not sets or sets[0] is None:
        return set()
    result = set(sets[0])
    for members in sets[1:]:
        if members:
            result -= members
        if not result:
            break
    return result


def _store_result(s: Session, key: bytes, members: set[bytes], event: str) -> int:
    db = s.db
    if members:
        db.set(key, SetValue(members))
        db.notify("s", event, key)
    elif db.delete(key):
        db.notify("g", "del", key)
    return len(members)


def sinter(s: Session, argv: list[bytes]) -> object:
    """SINTER key [key ...]."""
    return _inter(_sets(s, argv[1:]))


def sinterstore(s: Session, argv: list[bytes]) -> object:
    """SINTERSTORE destination key [key ...]."""
    return _store_result(s, argv[1], _inter(_sets(s, argv[2:])), "sinterstore")


def sintercard(s: Session, argv: list[bytes]) -> object:
    """SINTERCARD numkeys key [key ...] [LIMIT limit]."""
    numkeys = range_arg(argv[1], 1, INT64_MAX, "numkeys should be greater than 0")
    if numkeys > len(argv) - 2:
        raise CommandError("ERR Number of keys can't be greater than number of args")
    limit = 0
    index = 2 + numkeys
    while index < len(argv):
        if argv[index].upper() == b"LIMIT" and index + 1 < len(argv):
            limit = positive_arg(argv[index + 1], "LIMIT can't be negative")
            index += 2
        else:
            raise CommandError(SYNTAX)
    size = len(_inter(_sets(s, argv[2 : 2 + numkeys])))
    return min(size, limit) if limit else size


def sunion(s: Session, argv: list[bytes]) -> object:
    """SUNION key [key ...]."""
    return _union(_sets(s, argv[1:]))


def sunionstore(s: Session, argv: list[bytes]) -> object:
    """SUNIONSTORE destination key [key ...]."""
    return _store_result(s, argv[1], _union(_sets(s, argv[2:])), "sunionstore")


def sdiff(s: Session, argv: list[bytes]) -> object:
    """SDIFF key [key ...]."""
    return _diff(_sets(s, argv[1:]))


def sdiffstore(s: Session, argv: list[bytes]) -> object:
    """SDIFFSTORE destination key [key ...]."""
    return _store_result(s, argv[1], _diff(_sets(s, argv[2:])), "sdiffstore")


def sscan(s: Session, argv: list[bytes]) -> object:
    """SSCAN key cursor [MATCH pattern] [COUNT count]."""
    cursor = parse_cursor(argv[2])
    pattern, count, _ = _scan_options(argv, 3, allow_type=False)
    value = s.db.get_set(argv[1])
    if value is None:
        return [b"0", []]
    page, next_cursor = scan_order(list(value.members), cursor, count)
    if pattern is not None:
        page = [member for member in page if glob_match(pattern, member)]
    return [str(next_cursor).encode(), page]


def _numkeys_finder(argv: list[bytes]) -> list[bytes]:
    try:
        numkeys = int(argv[1])
    except ValueError:
        return []
    return argv[2 : 2 + max(numkeys, 0)]


_SET = "set"
_K1: Final = (1, 1, 1)

COMMANDS: Final[tuple[CommandSpec, ...]] = (
    command("sadd", -3, "write denyoom fast", sadd, keys=_K1, group=_SET),
    command("srem", -3, "write fast", srem, keys=_K1, group=_SET),
    command("smembers", 2, "readonly", smembers, keys=_K1, group=_SET),
    command("sismember", 3, "readonly fast", sismember, keys=_K1, group=_SET),
    command("smismember", -3, "readonly fast", smismember, keys=_K1, group=_SET, since="6.2.0"),
    command("scard", 2, "readonly fast", scard, keys=_K1, group=_SET),
    command("spop", -2, "write fast", spop, keys=_K1, group=_SET),
    command("srandmember", -2, "readonly", srandmember, keys=_K1, group=_SET),
    command("smove", 4, "write fast", smove, keys=(1, 2, 1), group=_SET),
    command("sinter", -2, "readonly", sinter, keys=(1, -1, 1), group=_SET),
    command("sinterstore", -3, "write denyoom", sinterstore, keys=(1, -1, 1), group=_SET),
    command(
        "sintercard",
        -3,
        "readonly",
        sintercard,
        group=_SET,
        since="7.0.0",
        key_finder=_numkeys_finder,
    ),
    command("sunion", -2, "readonly", sunion, keys=(1, -1, 1), group=_SET),
    command("sunionstore", -3, "write denyoom", sunionstore, keys=(1, -1, 1), group=_SET),
    command("sdiff", -2, "readonly", sdiff, keys=(1, -1, 1), group=_SET),
    command("sdiffstore", -3, "write denyoom", sdiffstore, keys=(1, -1, 1), group=_SET),
    command("sscan", -3, "readonly", sscan, keys=_K1, group=_SET, since="2.8.0"),
)
