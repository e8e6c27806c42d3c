"""String commands: GET, SET (EX/PX/EXAT/PXAT/NX/XX/KEEPTTL/GET), INCR family, ranges, bits, LCS."""

from __future__ import annotations

import decimal
from typing import TYPE_CHECKING, Final

from stratacache.resp.handlers._args import NOT_INTEGER, SYNTAX, int_arg
from stratacache.resp.keyspace import WRONGTYPE
from stratacache.resp.protocol import OK, CommandError
from stratacache.resp.spec import CommandSpec, command
from stratacache.resp.values import (
    INT64_MAX,
    INT64_MIN,
    format_human_double,
    parse_int,
    to_decimal,
)

if TYPE_CHECKING:
    from stratacache.resp.keyspace import Database
    from stratacache.resp.session import Session

__all__ = ["COMMANDS"]

_TOO_BIG: Final = "ERR string exceeds maximum allowed size (proto-max-bulk-len)"
_LONG_DOUBLE_MAX: Final = decimal.Decimal("1.18973149535723176502e4932")


def _max_len(s: Session) -> int:
    return int(s.sidecar.config.get("proto-max-bulk-len"))


def get(s: Session, argv: list[bytes]) -> object:
    """GET key."""
    value = s.db.store.get(argv[1])
    if value is None or type(value) is bytes:
        return value
    raise CommandError(WRONGTYPE)


# Option bits for SET and GETEX, as in Redis's parseExtendedStringArgumentsOrReply.
_NX, _XX, _GET, _KEEPTTL, _PERSIST, _EX, _PX, _EXAT, _PXAT = (1 << i for i in range(9))
_EXPIRY: Final = _EX | _PX | _EXAT | _PXAT


def _parse_options(argv: list[bytes], start: int, *, for_set: bool) -> tuple[int, bytes | None]:
    flags = 0
    expire: bytes | None = None
    index = start
    while index < len(argv):
        option = argv[index].upper()
        has_next = index + 1 < len(argv)
        if option == b"NX" and for_set and not flags & _XX:
            flags |= _NX
        elif option == b"XX" and for_set and not flags & _NX:
            flags |= _XX
        elif option == b"GET" and for_set:
            flags |= _GET
        elif option == b"KEEPTTL" and for_set and not flags & (_PERSIST | _EXPIRY):
            flags |= _KEEPTTL
        elif option == b"PERSIST" and not for_set and not flags & (_EXPIRY | _KEEPTTL):
            flags |= _PERSIST
        elif (
            option in (b"EX", b"PX", b"EXAT", b"PXAT")
            and has_next
            and not (flags & (_KEEPTTL | _PERSIST | _EXPIRY))
        ):
            flags |= {b"EX": _EX, b"PX": _PX, b"EXAT": _EXAT, b"PXAT": _PXAT}[option]
            expire = argv[index + 1]
            index += 1
        else:
            raise CommandError(SYNTAX)
        index += 1
    return flags, expire


def _expire_ms(s: Session, raw: bytes, flags: int, name: str) -> int:
    """The absolute expiry in unix ms that an EX/PX/EXAT/PXAT argument names."""
    amount = parse_int(raw)
    if amount is None:
        raise CommandError(NOT_INTEGER)
    seconds = bool(flags & (_EX | _EXAT))
    if amount <= 0 or (seconds and amount > INT64_MAX // 1000):
        raise CommandError(f"ERR invalid expire time in '{name}' command")
    if seconds:
        amount *= 1000
    if flags & (_EX | _PX):
        amount += s.sidecar.keyspace.now_ms()
        if amount > INT64_MAX:
            raise CommandError(f"ERR invalid expire time in '{name}' command")
    return amount


def _set(
    s: Session,
    key: bytes,
    value: bytes,
    *,
    flags: int,
    expire: bytes | None,
    name: str,
    ok: object = OK,
    abort: object = None,
) -> object:
    db = s.db
    when = _expire_ms(s, expire, flags, name) if expire is not None else None
    old: object = None
    if flags & _GET:
        current = db.store.get(key)
        if current is not None and type(current) is not bytes:
            raise CommandError(WRONGTYPE)
        old = current
        found = current is not None
    else:
        found = (flags & (_NX | _XX)) != 0 and db.exists(key)
    if (flags & _NX and found) or (flags & _XX and not found):
        return old if flags & _GET else abort
    if when is not None:
        db.set_at_ms(key, value, when)
    else:
        db.set(key, value, keep_ttl=bool(flags & _KEEPTTL))
    db.notify("$", "set", key)
    if when is not None:
        db.notify("g", "expire", key)
    return old if flags & _GET else ok


def set_(s: Session, argv: list[bytes]) -> object:
    """SET key value [NX|XX] [GET] [EX s|PX ms|EXAT ts|PXAT ms-ts|KEEPTTL]."""
    if len(argv) == 3:
        db = s.db
        db.set(argv[1], argv[2])
        if db.keyspace.notify_flags:
            db.notify("$", "set", argv[1])
        return OK
    flags, expire = _parse_options(argv, 3, for_set=True)
    return _set(s, argv[1], argv[2], flags=flags, expire=expire, name="set")


def setnx(s: Session, argv: list[bytes]) -> object:
    """SETNX key value."""
    return _set(s, argv[1], argv[2], flags=_NX, expire=None, name="setnx", ok=1, abort=0)


def setex(s: Session, argv: list[bytes]) -> object:
    """SETEX key seconds value."""
    return _set(s, argv[1], argv[3], flags=_EX, expire=argv[2], name="setex")


def psetex(s: Session, argv: list[bytes]) -> object:
    """PSETEX key milliseconds value."""
    return _set(s, argv[1], argv[3], flags=_PX, expire=argv[2], name="psetex")


def getset(s: Session, argv: list[bytes]) -> object:
    """GETSET key value."""
    return _set(s, argv[1], argv[2], flags=_GET, expire=None, name="getset")


def getdel(s: Session, argv: list[bytes]) -> object:
    """GETDEL key."""
    db = s.db
    value = db.get_string(argv[1])
    if value is not None:
        db.delete(argv[1])
        db.notify("g", "del", argv[1])
    return value


def getex(s: Session, argv: list[bytes]) -> object:
    """GETEX key [EX s|PX ms|EXAT ts|PXAT ms-ts|PERSIST]."""
    flags, expire = _parse_options(argv, 2, for_set=False)
    db = s.db
    key = argv[1]
    value = db.get_string(key)
    if value is None:
        return None
    if expire is not None:
        when = _expire_ms(s, expire, flags, "getex")
        if when <= s.sidecar.keyspace.now_ms():
            db.delete(key)
            db.notify("g", "del", key)
        else:
            db.expire_ms(key, when)
            db.notify("g", "expire", key)
    elif flags & _PERSIST and db.persist(key):
        db.notify("g", "persist", key)
    return value


def mget(s: Session, argv: list[bytes]) -> object:
    """MGET key [key ...]: a value that is not a string reads as null."""
    get_value = s.db.store.get
    out: list[object] = []
    for key in argv[1:]:
        value = get_value(key)
        out.append(value if type(value) is bytes else None)
    return out


def mset(s: Session, argv: list[bytes]) -> object:
    """MSET key value [key value ...]."""
    if len(argv) % 2 == 0:
        raise CommandError("ERR wrong number of arguments for 'mset' command")
    db = s.db
    for index in range(1, len(argv), 2):
        db.set(argv[index], argv[index + 1])
        db.notify("$", "set", argv[index])
    return OK


def msetnx(s: Session, argv: list[bytes]) -> object:
    """MSETNX key value [key value ...]."""
    if len(argv) % 2 == 0:
        raise CommandError("ERR wrong number of arguments for 'msetnx' command")
    db = s.db
    if any(db.exists(argv[index]) for index in range(1, len(argv), 2)):
        return 0
    for index in range(1, len(argv), 2):
        db.set(argv[index], argv[index + 1])
        db.notify("$", "set", argv[index])
    return 1


def append(s: Session, argv: list[bytes]) -> object:
    """APPEND key value."""
    db = s.db
    current = db.get_string(argv[1])
    if current is None:
        value = argv[2]
    else:
        if len(current) + len(argv[2]) > _max_len(s):
            raise CommandError(_TOO_BIG)
        value = current + argv[2]
    db.set(argv[1], value, keep_ttl=current is not None)
    db.notify("$", "append", argv[1])
    return len(value)


def strlen(s: Session, argv: list[bytes]) -> object:
    """STRLEN key."""
    value = s.db.get_string(argv[1])
    return 0 if value is None else len(value)


def getrange(s: Session, argv: list[bytes]) -> object:
    """GETRANGE key start end (and SUBSTR)."""
    start = int_arg(argv[2])
    end = int_arg(argv[3])
    value = s.db.get_string(argv[1])
    if value is None:
        return b""
    size = len(value)
    if start < 0 and end < 0 and start > end:
        return b""
    if start < 0:
        start += size
    if end < 0:
        end += size
    start = max(start, 0)
    end = max(end, 0)
    end = min(end, size - 1)
    if start > end or size == 0:
        return b""
    return value[start : end + 1]


def setrange(s: Session, argv: list[bytes]) -> object:
    """SETRANGE key offset value."""
    offset = int_arg(argv[2])
    if offset < 0:
        raise CommandError("ERR offset is out of range")
    db = s.db
    patch = argv[3]
    current = db.get_string(argv[1])
    if current is None:
        if not patch:
            return 0
        current = b""
    elif not patch:
        return len(current)
    if offset + len(patch) > _max_len(s):
        raise CommandError(_TOO_BIG)
    if len(current) < offset:
        current += b"\x00" * (offset - len(current))
    value = current[:offset] + patch + current[offset + len(patch) :]
    db.set(argv[1], value, keep_ttl=True)
    db.notify("$", "setrange", argv[1])
    return len(value)


def _incr(s: Session, key: bytes, amount: int) -> object:
    db = s.db
    current = db.store.get(key)
    if current is None:
        number = 0
    elif type(current) is bytes:
        parsed = parse_int(current)
        if parsed is None:
            raise CommandError(NOT_INTEGER)
        number = parsed
    else:
        raise CommandError(WRONGTYPE)
    result = number + amount
    if result > INT64_MAX or result < INT64_MIN:
        raise CommandError("ERR increment or decrement would overflow")
    db.set(key, b"%d" % result, keep_ttl=current is not None)
    if db.keyspace.notify_flags:
        db.notify("$", "incrby", key)
    return result


def incr(s: Session, argv: list[bytes]) -> object:
    """INCR key."""
    return _incr(s, argv[1], 1)


def decr(s: Session, argv: list[bytes]) -> object:
    """DECR key."""
    return _incr(s, argv[1], -1)


def incrby(s: Session, argv: list[bytes]) -> object:
    """INCRBY key increment."""
    return _incr(s, argv[1], int_arg(argv[2]))


def decrby(s: Session, argv: list[bytes]) -> object:
    """DECRBY key decrement."""
    amount = int_arg(argv[2])
    if amount == INT64_MIN:
        raise CommandError("ERR decrement would overflow")
    return _incr(s, argv[1], -amount)


def incrbyfloat(s: Session, argv: list[bytes]) -> object:
    """INCRBYFLOAT key increment."""
    db = s.db
    key = argv[1]
    current = db.get_string(key)
    base = decimal.Decimal(0) if current is None else to_decimal(current)
    amount = to_decimal(argv[2])
    if base is None or amount is None:
        raise CommandError("ERR value is not a valid float")
    result = add_long_doubles(base, amount)
    text = format_human_double(result)
    db.set(key, text, keep_ttl=current is not None)
    db.notify("$", "incrbyfloat", key)
    return text


def add_long_doubles(base: decimal.Decimal, amount: decimal.Decimal) -> decimal.Decimal:
    """``base + amount`` as INCRBYFLOAT computes it, refusing NaN and infinities."""
    if base.is_infinite() or amount.is_infinite():
        raise CommandError("ERR increment would produce NaN or Infinity")
    result = decimal.Context(prec=40).add(base, amount)
    if abs(result) > _LONG_DOUBLE_MAX:
        raise CommandError("ERR increment would produce NaN or Infinity")
    return result


# --------------------------------------------------------------------------- bits


def _bit_offset(s: Session, raw: bytes) -> int:
    offset = parse_int(raw)
    limit = _max_len(s) * 8
    if offset is None or offset < 0 or offset >= limit:
        raise CommandError("ERR bit offset is not an integer or out of range")
    return offset


def setbit(s: Session, argv: list[bytes]) -> object:
    """SETBIT key offset value."""
    offset = _bit_offset(s, argv[2])
    bit = parse_int(argv[3])
    if bit not in (0, 1):
        raise CommandError("ERR bit is not an integer or out of range")
    db = s.db
    current = db.get_string(argv[1])
    data = bytearray(current or b"")
    byte = offset >> 3
    if len(data) <= byte:
        data.extend(b"\x00" * (byte + 1 - len(data)))
    mask = 1 << (7 - (offset & 7))
    old = 1 if data[byte] & mask else 0
    if bit:
        data[byte] |= mask
    else:
        data[byte] &= ~mask & 0xFF
    db.set(argv[1], bytes(data), keep_ttl=current is not None)
    db.notify("$", "setbit", argv[1])
    return old


def getbit(s: Session, argv: list[bytes]) -> object:
    """GETBIT key offset."""
    offset = _bit_offset(s, argv[2])
    value = s.db.get_string(argv[1]) or b""
    byte = offset >> 3
    if byte >= len(value):
        return 0
    return 1 if value[byte] & (1 << (7 - (offset & 7))) else 0


def _range_args(argv: list[bytes], index: int, size: int) -> tuple[int, int, bool] | None:
    """Parse ``start end [BYTE|BIT]``; ``None`` when the range is empty."""
    start = int_arg(argv[index])
    end = int_arg(argv[index + 1])
    bits = False
    if len(argv) > index + 2:
        unit = argv[index + 2].upper()
        if unit == b"BIT":
            bits = True
        elif unit != b"BYTE":
            raise CommandError(SYNTAX)
    total = size * 8 if bits else size
    if start < 0:
        start += total
    if end < 0:
        end += total
    start = max(start, 0)
    end = max(end, 0)
    end = min(end, total - 1)
    if start > end or total == 0:
        return None
    return start, end, bits


def bitcount(s: Session, argv: list[bytes]) -> object:
    """BITCOUNT key [start end [BYTE|BIT]]."""
    if len(argv) not in (2, 4, 5):
        raise CommandError(SYNTAX)
    value = s.db.get_string(argv[1])
    if len(argv) > 2:
        bounds = _range_args(argv, 2, len(value or b""))
        if value is None:
            return 0
        if bounds is None:
            return 0
        start, end, bits = bounds
        if bits:
            number = int.from_bytes(value, "big")
            width = len(value) * 8
            chunk = (number >> (width - end - 1)) & ((1 << (end - start + 1)) - 1)
            return chunk.bit_count()
        return int.from_bytes(value[start : end + 1], "big").bit_count()
    if value is None:
        return 0
    return int.from_bytes(value, "big").bit_count()


def bitpos(s: Session, argv: list[bytes]) -> object:
    """BITPOS key bit [start [end [BYTE|BIT]]]."""
    bit = parse_int(argv[2])
    if bit not in (0, 1):
        raise CommandError("ERR The bit argument must be 1 or 0.")
    if len(argv) > 6:
        raise CommandError(SYNTAX)
    value = s.db.get_string(argv[1])
    end_given = len(argv) >= 5
    if value is None:
        if len(argv) > 3:
            int_arg(argv[3])
        if end_given:
            int_arg(argv[4])
        return -1 if bit else 0
    size = len(value)
    bits = False
    start, end = 0, size - 1
    if len(argv) >= 4:
        start = int_arg(argv[3])
        if end_given:
            end = int_arg(argv[4])
            if len(argv) == 6:
                unit = argv[5].upper()
                if unit == b"BIT":
                    bits = True
                elif unit != b"BYTE":
                    raise CommandError(SYNTAX)
        total = size * 8 if bits else size
        if not end_given:
            end = total - 1
        if start < 0:
            start += total
        if end < 0:
            end += total
        start = max(start, 0)
        end = max(end, 0)
        end = min(end, total - 1)
        if start > end:
            return -1
    if not bits:
        first_bit, last_bit = start * 8, end * 8 + 7
    else:
        first_bit, last_bit = start, end
    for position in range(first_bit, last_bit + 1):
        byte = value[position >> 3]
        if ((byte >> (7 - (position & 7))) & 1) == bit:
            return position
    if bit == 0 and not end_given and not bits:
        # Looking for a clear bit with no end: the string is padded with zeros on the right.
        return (end + 1) * 8
    return -1


def bitop(s: Session, argv: list[bytes]) -> object:
    """BITOP AND|OR|XOR|NOT destkey key [key ...]."""
    operation = argv[1].upper()
    if operation not in (b"AND", b"OR", b"XOR", b"NOT"):
        raise CommandError(SYNTAX)
    sources = argv[3:]
    if operation == b"NOT" and len(sources) != 1:
        raise CommandError("ERR BITOP NOT must be called with a single source key.")
    db = s.db
    values = [db.get_string(key) or b"" for key in sources]
    size = max((len(value) for value in values), default=0)
    if size == 0:
        db.delete(argv[2])
        return 0
    numbers = [int.from_bytes(value.ljust(size, b"\x00"), "big") for value in values]
    if operation == b"NOT":
        result = ~numbers[0] & ((1 << (size * 8)) - 1)
    else:
        result = numbers[0]
        for number in numbers[1:]:
            if operation == b"AND":
                result &= number
            elif operation == b"OR":
                result |= number
            else:
                result ^= number
    db.set(argv[2], result.to_bytes(size, "big"))
    db.notify("$", "set", argv[2])
    return size


# --------------------------------------------------------------------------- LCS


def lcs(s: Session, argv: list[bytes]) -> object:
    """LCS key1 key2 [LEN] [IDX] [MINMATCHLEN len] [WITHMATCHLEN]."""
    want_len = want_idx = with_match_len = False
    min_match = 0
    index = 3
    while index < len(argv):
        option = argv[index].upper()
        if option == b"LEN":
            want_len = True
        elif option == b"IDX":
            want_idx = True
        elif option == b"WITHMATCHLEN":
            with_match_len = True
        elif option == b"MINMATCHLEN" and index + 1 < len(argv):
            min_match = max(int_arg(argv[index + 1]), 0)
            index += 1
        else:
            raise CommandError(SYNTAX)
        index += 1
    db = s.db
    first = _lcs_string(db, argv[1])
    second = _lcs_string(db, argv[2])
    if want_len and want_idx:
        raise CommandError("ERR If you want both the length and indexes, please just use IDX.")
    rows, cols = len(first), len(second)
    table = [[0] * (cols + 1) for _ in range(rows + 1)]
    for i in range(1, rows + 1):
        row, previous = table[i], table[i - 1]
        a = first[i - 1]
        for j in range(1, cols + 1):
            if a == second[j - 1]:
                row[j] = previous[j - 1] + 1
            else:
                row[j] = max(previous[j], row[j - 1])
    length = table[rows][cols]
    if want_len:
        return length
    # Walk back from the end, collecting the common string and the matching ranges.
    out = bytearray(length)
    position = length
    matches: list[list[object]] = []
    i, j = rows, cols
    current: list[int] | None = None  # [a_start, a_end, b_start, b_end]
    while i > 0 and j > 0:
        if first[i - 1] == second[j - 1]:
            position -= 1
            out[position] = first[i - 1]
            if current is not None and current[0] == i and current[2] == j:
                current[0] -= 1
                current[2] -= 1
            else:
                if current is not None:
                    _emit(matches, current, min_match, with_match_len)
                current = [i - 1, i - 1, j - 1, j - 1]
            i -= 1
            j -= 1
        elif table[i - 1][j] > table[i][j - 1]:
            i -= 1
        else:
            j -= 1
    if current is not None:
        _emit(matches, current, min_match, with_match_len)
    if want_idx:
        return {b"matches": matches, b"len": length}
    return bytes(out)


def _emit(matches: list[list[object]], current: list[int], minimum: int, with_len: bool) -> None:
    size = current[1] - current[0] + 1
    if size < minimum:
        return
    match: list[object] = [[current[0], current[1]], [current[2], current[3]]]
    if with_len:
        match.append(size)
    matches.append(match)


def _lcs_string(db: Database, key: bytes) -> bytes:
    value = db.store.get(key)
    if value is None:
        return b""
    if type(value) is not bytes:
        raise CommandError("ERR The specified keys must contain string values")
    return value


_STRING = "string"
_K1: Final = (1, 1, 1)

COMMANDS: Final[tuple[CommandSpec, ...]] = (
    command("get", 2, "readonly fast", get, keys=_K1, group=_STRING, summary="Get a value"),
    command("set", -3, "write denyoom", set_, keys=_K1, group=_STRING, summary="Set a value"),
    command("setnx", 3, "write denyoom fast", setnx, keys=_K1, group=_STRING),
    command("setex", 4, "write denyoom", setex, keys=_K1, group=_STRING, since="2.0.0"),
    command("psetex", 4, "write denyoom", psetex, keys=_K1, group=_STRING, since="2.6.0"),
    command("getset", 3, "write denyoom fast", getset, keys=_K1, group=_STRING),
    command("getdel", 2, "write fast", getdel, keys=_K1, group=_STRING, since="6.2.0"),
    command("getex", -2, "write fast", getex, keys=_K1, group=_STRING, since="6.2.0"),
    command("mget", -2, "readonly fast", mget, keys=(1, -1, 1), group=_STRING),
    command("mset", -3, "write denyoom", mset, keys=(1, -1, 2), group=_STRING, since="1.0.1"),
    command("msetnx", -3, "write denyoom", msetnx, keys=(1, -1, 2), group=_STRING),
    command("append", 3, "write denyoom fast", append, keys=_K1, group=_STRING, since="2.0.0"),
    command("strlen", 2, "readonly fast", strlen, keys=_K1, group=_STRING, since="2.2.0"),
    command("getrange", 4, "readonly", getrange, keys=_K1, group=_STRING, since="2.4.0"),
    command("substr", 4, "readonly", getrange, keys=_K1, group=_STRING),
    command("setrange", 4, "write denyoom", setrange, keys=_K1, group=_STRING, since="2.2.0"),
    command("incr", 2, "write denyoom fast", incr, keys=_K1, group=_STRING),
    command("decr", 2, "write denyoom fast", decr, keys=_K1, group=_STRING),
    command("incrby", 3, "write denyoom fast", incrby, keys=_K1, group=_STRING),
    command("decrby", 3, "write denyoom fast", decrby, keys=_K1, group=_STRING),
    command(
        "incrbyfloat", 3, "write denyoom fast", incrbyfloat, keys=_K1, group=_STRING, since="2.6.0"
    ),
    command("setbit", 4, "write denyoom", setbit, keys=_K1, group="bitmap", since="2.2.0"),
    command("getbit", 3, "readonly fast", getbit, keys=_K1, group="bitmap", since="2.2.0"),
    command("bitcount", -2, "readonly", bitcount, keys=_K1, group="bitmap", since="2.6.0"),
    command("bitpos", -3, "readonly", bitpos, keys=_K1, group="bitmap", since="2.8.7"),
    command("bitop", -4, "write denyoom", bitop, keys=(2, -1, 1), group="bitmap", since="2.6.0"),
    command("lcs", -3, "readonly", lcs, keys=(1, 2, 1), group=_STRING, since="7.0.0"),
)
