"""Generic key commands: DEL, EXISTS, TYPE, KEYS, SCAN, RENAME, EXPIRE and friends, COPY, ..."""

from __future__ import annotations

import heapq
from typing import TYPE_CHECKING, Final

from stratacache.errors import RecordFormatError
from stratacache.resp.handlers._args import SYNTAX, int_arg
from stratacache.resp.keyspace import WRONGTYPE
from stratacache.resp.protocol import OK, CommandError, SimpleString
from stratacache.resp.snapshot import decode_value, encode_value
from stratacache.resp.spec import CommandSpec, command
from stratacache.resp.values import (
    INT64_MAX,
    INT64_MIN,
    HashValue,
    ListValue,
    SetValue,
    ZSetValue,
    glob_match,
    parse_float,
    parse_int,
    type_name,
)

if TYPE_CHECKING:
    from stratacache.resp.keyspace import Database
    from stratacache.resp.session import Session

__all__ = ["COMMANDS", "copy_value", "scan_order"]

_NO_KEY: Final = "ERR no such key"
_SAME: Final = "ERR source and destination objects are the same"
_DB_RANGE: Final = "ERR DB index is out of range"
_CURSOR_MASK: Final = 0x7FFF_FFFF_FFFF_FFFF


def copy_value(value: object) -> object:
    """A deep copy of a stored value (strings are immutable and shared)."""
    if type(value) is bytes:
        return value
    if type(value) is ListValue:
        return ListValue(value.items)
    if type(value) is SetValue:
        return SetValue(value.members)
    if type(value) is HashValue:
        copy = HashValue()
        for field, item in value.fields.items():
            copy.set(field, item)
        return copy
    if type(value) is ZSetValue:
        zset = ZSetValue()
        for score, member in value.order:
            zset.add(member, score)
        return zset
    raise TypeError(f"cannot copy {type(value).__name__}")


def delete(s: Session, argv: list[bytes]) -> object:
    """DEL key [key ...] (and UNLINK)."""
    db = s.db
    deleted = 0
    for key in argv[1:]:
        if db.delete(key):
            deleted += 1
            db.notify("g", "del", key)
    return deleted


def exists(s: Session, argv: list[bytes]) -> object:
    """EXISTS key [key ...]: how many of the keys exist (repeats count)."""
    store = s.db.store
    return sum(1 for key in argv[1:] if key in store)


def touch(s: Session, argv: list[bytes]) -> object:
    """TOUCH key [key ...]."""
    db = s.db
    return sum(1 for key in argv[1:] if db.get(key) is not None)


def type_(s: Session, argv: list[bytes]) -> object:
    """TYPE key."""
    return SimpleString(type_name(s.db.store.peek(argv[1])))


def keys(s: Session, argv: list[bytes]) -> object:
    """KEYS pattern."""
    pattern = argv[1]
    if pattern == b"*":
        return s.db.key_snapshot()
    return [key for key in s.db.key_snapshot() if glob_match(pattern, key)]


def _cursor_of(item: bytes) -> int:
    # Positions in a SCAN are the items' hashes: stable while the process lives, so an item
    # present for the whole iteration is returned exactly once whatever else changes.
    return (hash(item) & _CURSOR_MASK) + 1


def scan_order(items: list[bytes], cursor: int, count: int) -> tuple[list[bytes], int]:
    """One SCAN step over ``items``: up to ``count`` items from ``cursor`` on, and the next cursor.

    ``0`` as the next cursor means the iteration is complete.
    """
    start = max(cursor, 1)
    page = heapq.nsmallest(
        count + 1,
        ((position, item) for item in items if (position := _cursor_of(item)) >= start),
        key=lambda pair: pair[0],
    )
    if len(page) <= count:
        return [item for _, item in page], 0
    boundary = page[count][0]
    chosen = [item for position, item in page[:count] if position < boundary]
    if not chosen:
        # Everything in the page shares one position (a hash collision): take them all.
        chosen = [item for item in items if _cursor_of(item) == boundary]
        return chosen, boundary + 1
    return chosen, boundary


def parse_cursor(raw: bytes) -> int:
    """A SCAN cursor: an unsigned 64-bit number."""
    if not raw.isdigit() or len(raw) > 20 or int(raw) > 2**64 - 1:
        raise CommandError("ERR invalid cursor")
    return int(raw)


def scan(s: Session, argv: list[bytes]) -> object:
    """SCAN cursor [MATCH pattern] [COUNT count] [TYPE type]."""
    cursor = parse_cursor(argv[1])
    pattern, count, kind = _scan_options(argv, 2, allow_type=True)
    db = s.db
    page, next_cursor = scan_order(db.key_snapshot(), cursor, count)
    if pattern is not None:
        page = [key for key in page if glob_match(pattern, key)]
    if kind is not None:
        page = [key for key in page if type_name(db.store.peek(key)).encode() == kind]
    return [str(next_cursor).encode(), page]


def _scan_options(
    argv: list[bytes], index: int, *, allow_type: bool
) -> tuple[bytes | None, int, bytes | None]:
    pattern: bytes | None = None
    count = 10
    kind: bytes | None = None
    while index < len(argv):
        option = argv[index].upper()
        more = len(argv) - index
        if option == b"COUNT" and more >= 2:
            count = int_arg(argv[index + 1])
            if count < 1:
                raise CommandError(SYNTAX)
        elif option == b"MATCH" and more >= 2:
            pattern = argv[index + 1]
            if pattern == b"*":
                pattern = None
        elif option == b"TYPE" and allow_type and more >= 2:
            kind = argv[index + 1].lower()
        else:
            raise CommandError(SYNTAX)
        index += 2
    return pattern, count, kind


def _rename(s: Session, argv: list[bytes], *, nx: bool) -> object:
    db = s.db
    source, target = argv[1], argv[2]
    value = db.get(source)
    if value is None:
        raise CommandError(_NO_KEY)
    if source == target:
        return 0 if nx else OK
    if nx and db.exists(target):
        return 0
    expires = db.expire_at_ms(source)
    db.store.delete(source)
    db.touch(source)
    if expires is not None and expires >= 0:
        db.set_at_ms(target, value, expires)
    else:
        db.set(target, value)
    db.notify("g", "rename_from", source)
    db.notify("g", "rename_to", target)
    return 1 if nx else OK


def rename(s: Session, argv: list[bytes]) -> object:
    """RENAME key newkey."""
    return _rename(s, argv, nx=False)


def renamenx(s: Session, argv: list[bytes]) -> object:
    """RENAMENX key newkey."""
    return _rename(s, argv, nx=True)


def _expire(s: Session, argv: list[bytes], *, unit_ms: int, absolute: bool) -> object:
    name = argv[0].lower().decode()
    when = int_arg(argv[2])
    nx = xx = gt = lt = False
    for raw in argv[3:]:
        option = raw.upper()
        if option == b"NX":
            nx = True
        elif option == b"XX":
            xx = True
        elif option == b"GT":
            gt = True
        elif option == b"LT":
            lt = True
        else:
            raise CommandError(f"ERR Unsupported option {raw.decode('utf-8', 'replace')}")
    if nx and (xx or gt or lt):
        raise CommandError("ERR NX and XX, GT or LT options at the same time are not compatible")
    if gt and lt:
        raise CommandError("ERR GT and LT options at the same time are not compatible")
    if unit_ms == 1000:
        # C division truncates towards zero: LLONG_MIN / 1000 is -9223372036854775.
        if when > INT64_MAX // 1000 or when < -(-INT64_MIN // 1000):
            raise CommandError(f"ERR invalid expire time in '{name}' command")
        when *= 1000
    base = 0 if absolute else s.sidecar.keyspace.now_ms()
    if when > INT64_MAX - base:
        raise CommandError(f"ERR invalid expire time in '{name}' command")
    when += base
    db = s.db
    current = db.expire_at_ms(argv[1])
    if current is None:
        return 0
    if nx and current != -1:
        return 0
    if xx and current == -1:
        return 0
    if gt and (current == -1 or when <= current):
        return 0
    if lt and current != -1 and when >= current:
        return 0
    if when <= s.sidecar.keyspace.now_ms():
        db.delete(argv[1])
        db.notify("g", "del", argv[1])
        return 1
    db.expire_ms(argv[1], when)
    db.notify("g", "expire", argv[1])
    return 1


def expire(s: Session, argv: list[bytes]) -> object:
    """EXPIRE key seconds [NX|XX|GT|LT]."""
    return _expire(s, argv, unit_ms=1000, absolute=False)


def pexpire(s: Session, argv: list[bytes]) -> object:
    """PEXPIRE key milliseconds [NX|XX|GT|LT]."""
    return _expire(s, argv, unit_ms=1, absolute=False)


def expireat(s: Session, argv: list[bytes]) -> object:
    """EXPIREAT key unix-time-seconds [NX|XX|GT|LT]."""
    return _expire(s, argv, unit_ms=1000, absolute=True)


def pexpireat(s: Session, argv: list[bytes]) -> object:
    """PEXPIREAT key unix-time-milliseconds [NX|XX|GT|LT]."""
    return _expire(s, argv, unit_ms=1, absolute=True)


def ttl(s: Session, argv: list[bytes]) -> object:
    """TTL key: seconds left, -1 without expiry, -2 if absent."""
    remaining = s.db.pttl(argv[1])
    if remaining is None:
        return -2
    if remaining < 0:
        return -1
    return (remaining + 500) // 1000


def pttl(s: Session, argv: list[bytes]) -> object:
    """PTTL key."""
    remaining = s.db.pttl(argv[1])
    return -2 if remaining is None else remaining


def expiretime(s: Session, argv: list[bytes]) -> object:
    """EXPIRETIME key: the absolute unix time in seconds."""
    when = s.db.expire_at_ms(argv[1])
    if when is None:
        return -2
    if when < 0:
        return -1
    return (when + 500) // 1000


def pexpiretime(s: Session, argv: list[bytes]) -> object:
    """PEXPIRETIME key."""
    when = s.db.expire_at_ms(argv[1])
    return -2 if when is None else when


def persist(s: Session, argv: list[bytes]) -> object:
    """PERSIST key."""
    if s.db.persist(argv[1]):
        s.db.notify("g", "persist", argv[1])
        return 1
    return 0


def randomkey(s: Session, argv: list[bytes]) -> object:
    """RANDOMKEY."""
    return s.db.random_key()


def _db_arg(
    s: Session, raw: bytes, error: str = "ERR value is not an integer or out of range"
) -> Database:
    index = parse_int(raw)
    if index is None or not -(2**31) <= index < 2**31:
        raise CommandError(error)
    dbs = s.sidecar.keyspace.dbs
    if not 0 <= index < len(dbs):
        raise CommandError(_DB_RANGE)
    return dbs[index]


def copy(s: Session, argv: list[bytes]) -> object:
    """COPY source destination [DB destination-db] [REPLACE]."""
    target_db = s.db
    replace = False
    index = 3
    while index < len(argv):
        option = argv[index].upper()
        if option == b"REPLACE":
            replace = True
        elif option == b"DB" and index + 1 < len(argv):
            target_db = _db_arg(s, argv[index + 1])
            index += 1
        else:
            raise CommandError(SYNTAX)
        index += 1
    source, target = argv[1], argv[2]
    if target_db is s.db and source == target:
        raise CommandError(_SAME)
    value = s.db.get(source)
    if value is None:
        return 0
    if target_db.exists(target):
        if not replace:
            return 0
        target_db.delete(target)
    expires = s.db.expire_at_ms(source)
    duplicate = copy_value(value)
    if expires is not None and expires >= 0:
        target_db.set_at_ms(target, duplicate, expires)
    else:
        target_db.set(target, duplicate)
    target_db.notify("g", "copy_to", target)
    return 1


def move(s: Session, argv: list[bytes]) -> object:
    """MOVE key db."""
    target_db = _db_arg(s, argv[2])
    if target_db is s.db:
        raise CommandError(_SAME)
    key = argv[1]
    value = s.db.get(key)
    if value is None or target_db.exists(key):
        return 0
    expires = s.db.expire_at_ms(key)
    if expires is not None and expires >= 0:
        target_db.set_at_ms(key, value, expires)
    else:
        target_db.set(key, value)
    s.db.store.delete(key)
    s.db.touch(key)
    s.db.notify("g", "move_from", key)
    target_db.notify("g", "move_to", key)
    return 1


def swapdb(s: Session, argv: list[bytes]) -> object:
    """SWAPDB index1 index2."""
    dbs = s.sidecar.keyspace.dbs
    first = parse_int(argv[1])
    if first is None or not -(2**31) <= first < 2**31:
        raise CommandError("ERR invalid first DB index")
    second = parse_int(argv[2])
    if second is None or not -(2**31) <= second < 2**31:
        raise CommandError("ERR invalid second DB index")
    if not (0 <= first < len(dbs) and 0 <= second < len(dbs)):
        raise CommandError(_DB_RANGE)
    if first != second:
        s.sidecar.keyspace.swap(first, second)
    return OK


def _encoding(s: Session, value: object) -> bytes:
    config = s.sidecar.config
    if type(value) is bytes:
        if parse_int(value) is not None:
            return b"int"
        return b"embstr" if len(value) <= 44 else b"raw"
    if type(value) is ListValue:
        size = int(config.get("list-max-listpack-size"))
        small = len(value) <= (size if size > 0 else 128) and all(
            len(item) <= 64 for item in value.items
        )
        return b"listpack" if small else b"quicklist"
    if type(value) is HashValue:
        entries = int(config.get("hash-max-listpack-entries"))
        limit = int(config.get("hash-max-listpack-value"))
        small = len(value) <= entries and all(
            len(f) <= limit and len(v) <= limit for f, v in value.fields.items()
        )
        return b"listpack" if small else b"hashtable"
    if type(value) is SetValue:
        entries = int(config.get("set-max-intset-entries"))
        if len(value) <= entries and all(parse_int(m) is not None for m in value.members):
            return b"intset"
        return b"hashtable"
    if type(value) is ZSetValue:
        entries = int(config.get("zset-max-listpack-entries"))
        limit = int(config.get("zset-max-listpack-value"))
        small = len(value) <= entries and all(len(m) <= limit for m in value.scores)
        return b"listpack" if small else b"skiplist"
    return b"raw"


def object_encoding(s: Session, argv: list[bytes]) -> object:
    """OBJECT ENCODING key: the encoding Redis would use for this value, by its thresholds."""
    value = s.db.store.peek(argv[2])
    if value is None:
        return None
    return _encoding(s, value)


def object_refcount(s: Session, argv: list[bytes]) -> object:
    """OBJECT REFCOUNT key: always 1 (values are not shared between keys here)."""
    return None if s.db.store.peek(argv[2]) is None else 1


def object_help(s: Session, argv: list[bytes]) -> object:
    """OBJECT HELP."""
    return [
        b"OBJECT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
        b"ENCODING <key>",
        b"    Return the kind of internal representation used in order to store the value",
        b"    associated with a <key>.",
        b"REFCOUNT <key>",
        b"    Return the number of references of the value associated with the specified",
        b"    <key>.",
        b"HELP",
        b"    Print this help.",
    ]


def dump(s: Session, argv: list[bytes]) -> object:
    """DUMP key: a payload RESTORE accepts (this sidecar's format, not Redis's RDB)."""
    value = s.db.get(argv[1])
    if value is None:
        return None
    return encode_value(value)


def restore(s: Session, argv: list[bytes]) -> object:
    """RESTORE key ttl payload [REPLACE] [ABSTTL] [IDLETIME s] [FREQ f]."""
    key = argv[1]
    ttl_ms = int_arg(argv[2])
    replace = absolute = False
    index = 4
    while index < len(argv):
        option = argv[index].upper()
        if option == b"REPLACE":
            replace = True
        elif option == b"ABSTTL":
            absolute = True
        elif option in (b"IDLETIME", b"FREQ") and index + 1 < len(argv):
            amount = int_arg(argv[index + 1])
            if amount < 0:
                name = "IDLETIME" if option == b"IDLETIME" else "FREQ"
                raise CommandError(f"ERR Invalid {name} value, must be >= 0")
            index += 1
        else:
            raise CommandError(SYNTAX)
        index += 1
    if ttl_ms < 0:
        raise CommandError("ERR Invalid TTL value, must be >= 0")
    db = s.db
    if not replace and db.exists(key):
        raise CommandError("BUSYKEY Target key name already exists.")
    try:
        value = decode_value(argv[3])
    except RecordFormatError:
        raise CommandError("ERR DUMP payload version or checksum are wrong") from None
    if replace:
        db.delete(key)
    if ttl_ms:
        when = ttl_ms if absolute else s.sidecar.keyspace.now_ms() + ttl_ms
        db.set_at_ms(key, value, when)
    else:
        db.set(key, value)
    db.notify("g", "restore", key)
    return OK


_GENERIC = "generic"
_K1: Final = (1, 1, 1)

COMMANDS: tuple[CommandSpec, ...] = (
    command("del", -2, "write", delete, keys=(1, -1, 1), summary="Delete keys"),
    command("unlink", -2, "write fast", delete, keys=(1, -1, 1), since="4.0.0"),
    command("exists", -2, "readonly fast", exists, keys=(1, -1, 1)),
    command("touch", -2, "readonly fast", touch, keys=(1, -1, 1), since="3.2.1"),
    command("type", 2, "readonly fast", type_, keys=_K1),
    command("keys", 2, "readonly", keys, summary="Find keys matching a pattern"),
    command("scan", -2, "readonly", scan, since="2.8.0"),
    command("randomkey", 1, "readonly", randomkey),
    command("rename", 3, "write", rename, keys=(1, 2, 1)),
    command("renamenx", 3, "write fast", renamenx, keys=(1, 2, 1)),
    command("expire", -3, "write fast", expire, keys=_K1),
    command("pexpire", -3, "write fast", pexpire, keys=_K1, since="2.6.0"),
    command("expireat", -3, "write fast", expireat, keys=_K1, since="1.2.0"),
    command("pexpireat", -3, "write fast", pexpireat, keys=_K1, since="2.6.0"),
    command("ttl", 2, "readonly fast", ttl, keys=_K1),
    command("pttl", 2, "readonly fast", pttl, keys=_K1, since="2.6.0"),
    command("expiretime", 2, "readonly fast", expiretime, keys=_K1, since="7.0.0"),
    command("pexpiretime", 2, "readonly fast", pexpiretime, keys=_K1, since="7.0.0"),
    command("persist", 2, "write fast", persist, keys=_K1, since="2.2.0"),
    command("copy", -3, "write denyoom", copy, keys=(1, 2, 1), since="6.2.0"),
    command("move", 3, "write fast", move, keys=_K1),
    command("swapdb", 3, "write fast", swapdb, since="4.0.0"),
    command("dump", 2, "readonly", dump, keys=_K1, since="2.6.0"),
    command("restore", -4, "write denyoom", restore, keys=_K1, since="2.6.0"),
    command(
        "object",
        -2,
        "",
        None,
        subcommands=(
            command("object|encoding", 3, "readonly", object_encoding, keys=(2, 2, 1)),
            command("object|refcount", 3, "readonly", object_refcount, keys=(2, 2, 1)),
            command("object|help", 2, "loading stale", object_help),
        ),
    ),
)


# --------------------------------------------------------------------------- SORT


def _by_pattern(s: Session, pattern: bytes, element: bytes) -> bytes | None:
    """Redis's lookupKeyByPattern: ``#`` is the element, ``*`` is replaced by it, ``->f`` a field."""
    if pattern == b"#":
        return element
    star = pattern.find(b"*")
    if star < 0:
        return None
    arrow = pattern.find(b"->", star + 1)
    field: bytes | None = None
    if arrow >= 0 and arrow + 2 < len(pattern):
        field = pattern[arrow + 2 :]
        key = pattern[:star] + element + pattern[star + 1 : arrow]
    else:
        key = pattern[:star] + element + pattern[star + 1 :]
    value = s.db.get(key)
    if value is None:
        return None
    if field is not None:
        if type(value) is not HashValue:
            return None
        return value.fields.get(field)
    return value if type(value) is bytes else None


def _sort(s: Session, argv: list[bytes], *, readonly: bool) -> object:
    desc = alpha = dontsort = False
    start, count = 0, -1
    store: bytes | None = None
    by: bytes | None = None
    gets: list[bytes] = []
    index = 2
    while index < len(argv):
        option = argv[index].upper()
        left = len(argv) - index - 1
        if option == b"ASC":
            desc = False
        elif option == b"DESC":
            desc = True
        elif option == b"ALPHA":
            alpha = True
        elif option == b"LIMIT" and left >= 2:
            start = int_arg(argv[index + 1])
            count = int_arg(argv[index + 2])
            index += 2
        elif option == b"STORE" and left >= 1 and not readonly:
            store = argv[index + 1]
            index += 1
        elif option == b"BY" and left >= 1:
            by = argv[index + 1]
            if b"*" not in by:
                dontsort = True
            index += 1
        elif option == b"GET" and left >= 1:
            gets.append(argv[index + 1])
            index += 1
        else:
            raise CommandError(SYNTAX)
        index += 1
    value = s.db.get(argv[1])
    if value is not None and type(value) not in (ListValue, SetValue, ZSetValue):
        raise CommandError(WRONGTYPE)
    if type(value) is SetValue and dontsort and (store is not None or s.in_script):
        # A set has no order of its own: sort it so the stored/replicated result is stable.
        dontsort, alpha, by = False, True, None
    if value is None:
        items: list[bytes] = []
    elif type(value) is ListValue:
        items = list(value.items)
    elif type(value) is SetValue:
        items = list(value.members)
    else:
        assert isinstance(value, ZSetValue)
        items = [member for _, member in value.order]
    size = len(items)
    first = min(max(start, 0), size)
    count = min(max(count, -1), size)
    last = size - 1 if count < 0 else first + count - 1
    if first >= size:
        first, last = size - 1, size - 2
    last = min(last, size - 1)
    if dontsort:
        if type(value) in (ListValue, ZSetValue) and desc:
            items.reverse()
    elif alpha:
        if by is not None:
            keyed = [(_by_pattern(s, by, item), item) for item in items]
            # Elements whose BY key is missing sort first, as Redis compares NULL lowest.
            keyed.sort(key=lambda pair: (pair[0] is not None, pair[0] or b""), reverse=desc)
            items = [item for _, item in keyed]
        else:
            items.sort(reverse=desc)
    else:
        scored: list[tuple[float, bytes]] = []
        for item in items:
            source = _by_pattern(s, by, item) if by is not None else item
            if source is None:
                score = 0.0
            else:
                parsed = _sort_score(source)
                if parsed is None:
                    raise CommandError("ERR One or more scores can't be converted into double")
                score = parsed
            scored.append((score, item))
        scored.sort(reverse=desc)
        items = [item for _, item in scored]
    selected = items[first : last + 1] if last >= first else []
    out: list[bytes | None] = []
    for item in selected:
        if not gets:
            out.append(item)
        for pattern in gets:
            out.append(_by_pattern(s, pattern, item))
    if store is None:
        return out
    db = s.db
    if out:
        db.set(store, ListValue([item if item is not None else b"" for item in out]))
        db.notify("l", "sortstore", store)
    elif db.delete(store):
        db.notify("g", "del", store)
    else:
        db.touch(store)
    return len(out)


def _sort_score(text: bytes) -> float | None:
    """A sort weight as ``strtod`` reads it: leading spaces allowed, "" is 0, junk is an error."""
    if not text:
        return 0.0
    return parse_float(text.lstrip(b" \t\n\v\f\r"))


def sort(s: Session, argv: list[bytes]) -> object:
    """SORT key [BY pattern] [LIMIT offset count] [GET pattern ...] [ASC|DESC] [ALPHA] [STORE dst]."""
    return _sort(s, argv, readonly=False)


def sort_ro(s: Session, argv: list[bytes]) -> object:
    """SORT_RO key [BY pattern] [LIMIT offset count] [GET pattern ...] [ASC|DESC] [ALPHA]."""
    return _sort(s, argv, readonly=True)


def _sort_keys(argv: list[bytes]) -> list[bytes]:
    keys_found = [argv[1]] if len(argv) > 1 else []
    for index in range(2, len(argv) - 1):
        if argv[index].upper() == b"STORE":
            keys_found.append(argv[index + 1])
    return keys_found


COMMANDS = (
    *COMMANDS,
    command("sort", -2, "write denyoom", sort, key_finder=_sort_keys),
    command("sort_ro", -2, "readonly", sort_ro, keys=_K1, since="7.0.0"),
)
