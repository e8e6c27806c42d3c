"""Hash commands: HSET, HGET, HGETALL, HINCRBY, HRANDFIELD, HSCAN, ..."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from stratacache.resp.handlers._args import SYNTAX, int_arg
from stratacache.resp.handlers.keys import _scan_options, parse_cursor, scan_order
from stratacache.resp.handlers.strings import add_long_doubles
from stratacache.resp.protocol import OK, CommandError
from stratacache.resp.spec import CommandSpec, command
from stratacache.resp.values import (
    INT64_MAX,
    INT64_MIN,
    HashValue,
    format_human_double,
    glob_match,
    parse_int,
    to_decimal,
)

if TYPE_CHECKING:
    from stratacache.resp.session import Session

__all__ = ["COMMANDS", "random_picks"]


def _hash_for_write(s: Session, key: bytes) -> tuple[HashValue, bool]:
    existing = s.db.get_hash(key)
    if existing is None:
        return HashValue(), True
    return existing, False


def _store(s: Session, key: bytes, value: HashValue, created: bool) -> None:
    if created:
        if len(value):
            s.db.set(key, value)
    else:
        s.db.changed(key, value)


def hset(s: Session, argv: list[bytes]) -> object:
    """HSET key field value [field value ...]."""
    if len(argv) % 2:
        raise CommandError(
            f"ERR wrong number of arguments for '{argv[0].lower().decode()}' command"
        )
    value, created = _hash_for_write(s, argv[1])
    added = 0
    for index in range(2, len(argv), 2):
        if value.set(argv[index], argv[index + 1]):
            added += 1
    _store(s, argv[1], value, created)
    if s.db.keyspace.notify_flags:
        s.db.notify("h", "hset", argv[1])
    return added


def hmset(s: Session, argv: list[bytes]) -> object:
    """HMSET key field value [field value ...]."""
    hset(s, argv)
    return OK


def hsetnx(s: Session, argv: list[bytes]) -> object:
    """HSETNX key field value."""
    value, created = _hash_for_write(s, argv[1])
    if argv[2] in value.fields:
        return 0
    value.set(argv[2], argv[3])
    _store(s, argv[1], value, created)
    s.db.notify("h", "hset", argv[1])
    return 1


def hget(s: Session, argv: list[bytes]) -> object:
    """HGET key field."""
    value = s.db.get_hash(argv[1])
    return None if value is None else value.fields.get(argv[2])


def hmget(s: Session, argv: list[bytes]) -> object:
    """HMGET key field [field ...]."""
    value = s.db.get_hash(argv[1])
    if value is None:
        return [None] * (len(argv) - 2)
    fields = value.fields
    return [fields.get(field) for field in argv[2:]]


def hdel(s: Session, argv: list[bytes]) -> object:
    """HDEL key field [field ...]."""
    value = s.db.get_hash(argv[1])
    if value is None:
        return 0
    deleted = sum(1 for field in argv[2:] if value.delete(field))
    if deleted:
        s.db.changed(argv[1], value)
        s.db.notify("h", "hdel", argv[1])
        if not len(value):
            s.db.notify("g", "del", argv[1])
    return deleted


def hlen(s: Session, argv: list[bytes]) -> object:
    """HLEN key."""
    value = s.db.get_hash(argv[1])
    return 0 if value is None else len(value)


def hstrlen(s: Session, argv: list[bytes]) -> object:
    """HSTRLEN key field."""
    value = s.db.get_hash(argv[1])
    if value is None:
        return 0
    return len(value.fields.get(argv[2], b""))


def hexists(s: Session, argv: list[bytes]) -> object:
    """HEXISTS key field."""
    value = s.db.get_hash(argv[1])
    return 1 if value is not None and argv[2] in value.fields else 0


def hkeys(s: Session, argv: list[bytes]) -> object:
    """HKEYS key."""
    value = s.db.get_hash(argv[1])
    return [] if value is None else list(value.fields)


def hvals(s: Session, argv: list[bytes]) -> object:
    """HVALS key."""
    value = s.db.get_hash(argv[1])
    return [] if value is None else list(value.fields.values())


def hgetall(s: Session, argv: list[bytes]) -> object:
    """HGETALL key: a map in RESP3, a flat array in RESP2."""
    value = s.db.get_hash(argv[1])
    return {} if value is None else dict(value.fields)


def hincrby(s: Session, argv: list[bytes]) -> object:
    """HINCRBY key field increment."""
    amount = int_arg(argv[3])
    value, created = _hash_for_write(s, argv[1])
    current = value.fields.get(argv[2])
    if current is None:
        number = 0
    else:
        parsed = parse_int(current)
        if parsed is None:
            raise CommandError("ERR hash value is not an integer")
        number = parsed
    result = number + amount
    if result > INT64_MAX or result < INT64_MIN:
        raise CommandError("ERR increment or decrement would overflow")
    value.set(argv[2], b"%d" % result)
    _store(s, argv[1], value, created)
    s.db.notify("h", "hincrby", argv[1])
    return result


def hincrbyfloat(s: Session, argv: list[bytes]) -> object:
    """HINCRBYFLOAT key field increment."""
    amount = to_decimal(argv[3])
    if amount is None:
        raise CommandError("ERR value is not a valid float")
    if amount.is_nan() or amount.is_infinite():
        raise CommandError("ERR value is NaN or Infinity")
    value, created = _hash_for_write(s, argv[1])
    current = value.fields.get(argv[2])
    if current is None:
        base = to_decimal(b"0")
    else:
        base = to_decimal(current)
        if base is None:
            raise CommandError("ERR hash value is not a float")
    assert base is not None
    text = format_human_double(add_long_doubles(base, amount))
    value.set(argv[2], text)
    _store(s, argv[1], value, created)
    s.db.notify("h", "hincrbyfloat", argv[1])
    return text


def random_picks(s: Session, items: list[bytes], count: int) -> list[bytes]:
    """``count`` random items: distinct when ``count`` > 0, with repeats when negative."""
    rng = s.sidecar.keyspace.rng
    if count >= 0:
        if count >= len(items):
            picked = list(items)
            rng.shuffle(picked)
            return picked
        return rng.sample(items, count)
    return [items[rng.randrange(len(items))] for _ in range(-count)]


def hrandfield(s: Session, argv: list[bytes]) -> object:
    """HRANDFIELD key [count [WITHVALUES]]."""
    with_values = False
    if len(argv) > 4 or (len(argv) == 4 and argv[3].upper() != b"WITHVALUES"):
        raise CommandError(SYNTAX)
    count: int | None = None
    if len(argv) >= 3:
        count = int_arg(argv[2])
        if count < -(2**63 - 1) or (with_values and abs(count) > INT64_MAX // 2):
            raise CommandError("ERR value is out of range")
        with_values = len(argv) == 4
        if with_values and (count > INT64_MAX // 2 or count < -(INT64_MAX // 2)):
            raise CommandError("ERR value is out of range")
    value = s.db.get_hash(argv[1])
    if value is None:
        return None if count is None else []
    fields = list(value.fields)
    if count is None:
        return fields[s.sidecar.keyspace.rng.randrange(len(fields))]
    picked = random_picks(s, fields, count)
    if not with_values:
        return picked
    if s.resp == 3:
        return [[field, value.fields[field]] for field in picked]
    out: list[bytes] = []
    for field in picked:
        out.extend((field, value.fields[field]))
    return out


def hscan(s: Session, argv: list[bytes]) -> object:
    """HSCAN key cursor [MATCH pattern] [COUNT count]."""
    cursor = parse_cursor(argv[2])
    pattern, count, _ = _scan_options(argv, 3, allow_type=False)
    value = s.db.get_hash(argv[1])
    if value is None:
        return [b"0", []]
    page, next_cursor = scan_order(list(value.fields), cursor, count)
    out: list[bytes] = []
    for field in page:
        if pattern is None or glob_match(pattern, field):
            out.extend((field, value.fields[field]))
    return [str(next_cursor).encode(), out]


_HASH = "hash"
_K1: Final = (1, 1, 1)

COMMANDS: Final[tuple[CommandSpec, ...]] = (
    command("hset", -4, "write denyoom fast", hset, keys=_K1, group=_HASH, since="2.0.0"),
    command("hmset", -4, "write denyoom fast", hmset, keys=_K1, group=_HASH, since="2.0.0"),
    command("hsetnx", 4, "write denyoom fast", hsetnx, keys=_K1, group=_HASH, since="2.0.0"),
    command("hget", 3, "readonly fast", hget, keys=_K1, group=_HASH, since="2.0.0"),
    command("hmget", -3, "readonly fast", hmget, keys=_K1, group=_HASH, since="2.0.0"),
    command("hdel", -3, "write fast", hdel, keys=_K1, group=_HASH, since="2.0.0"),
    command("hlen", 2, "readonly fast", hlen, keys=_K1, group=_HASH, since="2.0.0"),
    command("hstrlen", 3, "readonly fast", hstrlen, keys=_K1, group=_HASH, since="3.2.0"),
    command("hexists", 3, "readonly fast", hexists, keys=_K1, group=_HASH, since="2.0.0"),
    command("hkeys", 2, "readonly", hkeys, keys=_K1, group=_HASH, since="2.0.0"),
    command("hvals", 2, "readonly", hvals, keys=_K1, group=_HASH, since="2.0.0"),
    command("hgetall", 2, "readonly", hgetall, keys=_K1, group=_HASH, since="2.0.0"),
    command("hincrby", 4, "write denyoom fast", hincrby, keys=_K1, group=_HASH, since="2.0.0"),
    command(
        "hincrbyfloat", 4, "write denyoom fast", hincrbyfloat, keys=_K1, group=_HASH, since="2.6.0"
    ),
    command("hrandfield", -2, "readonly", hrandfield, keys=_K1, group=_HASH, since="6.2.0"),
    command("hscan", -3, "readonly", hscan, keys=_K1, group=_HASH, since="2.8.0"),
)
