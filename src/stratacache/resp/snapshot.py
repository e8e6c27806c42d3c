"""Serialising values and whole keyspaces: DUMP/RESTORE payloads and SAVE/BGSAVE snapshot files.

The format is msgpack (never pickle: loading a snapshot must not be able to run code), with a
magic, a format version and a CRC-32, so a truncated or foreign file is refused instead of
half-loaded. A value is ``[type, data]``: ``0`` string (bytes), ``1`` list (array of bytes),
``2`` hash (map), ``3`` set (array), ``4`` sorted set (array of ``[member, score]``).

A snapshot file holds ``{"v": 1, "saved": unix_seconds, "dbs": {index: [[key, value,
expire_at_ms or -1], ...]}}`` and is written to a temporary file and renamed into place, so a
crash during SAVE leaves the previous snapshot intact.
"""

from __future__ import annotations

import os
import struct
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from stratacache.errors import MissingExtraError, RecordFormatError
from stratacache.resp.values import HashValue, ListValue, SetValue, ZSetValue

if TYPE_CHECKING:
    from stratacache.resp.keyspace import Keyspace

__all__ = [
    "SnapshotCapture",
    "capture_snapshot",
    "decode_value",
    "encode_value",
    "load_snapshot",
    "save_snapshot",
    "write_snapshot",
]

_DUMP_MAGIC: Final = b"SC"
_FILE_MAGIC: Final = b"STRATA-RESP\n"
_VERSION: Final = 1


def _msgpack() -> Any:
    try:
        import msgpack  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - msgpack ships with the proxy extra
        raise MissingExtraError("msgpack", "proxy") from None
    return msgpack


def _to_plain(value: object) -> list[object]:
    if type(value) is bytes:
        return [0, value]
    if type(value) is ListValue:
        return [1, list(value.items)]
    if type(value) is HashValue:
        return [2, dict(value.fields)]  # a copy: BGSAVE encodes it while the hash may change
    if type(value) is SetValue:
        return [3, list(value.members)]
    if type(value) is ZSetValue:
        return [4, [[member, score] for score, member in value.order]]
    raise RecordFormatError(f"cannot serialise a {type(value).__name__}")


def _from_plain(plain: object) -> object:
    if not isinstance(plain, list) or len(plain) != 2 or not isinstance(plain[0], int):
        raise RecordFormatError("not a serialised value")
    kind, data = plain
    if kind == 0 and isinstance(data, bytes):
        return data
    if kind == 1 and isinstance(data, list) and all(isinstance(x, bytes) for x in data):
        return ListValue(data)
    if kind == 2 and isinstance(data, dict):
        hash_value = HashValue()
        for field, item in data.items():
            if not isinstance(field, bytes) or not isinstance(item, bytes):
                raise RecordFormatError("a hash field is not bytes")
            hash_value.set(field, item)
        return hash_value
    if kind == 3 and isinstance(data, list) and all(isinstance(x, bytes) for x in data):
        return SetValue(data)
    if kind == 4 and isinstance(data, list):
        zset = ZSetValue()
        for pair in data:
            if (
                not isinstance(pair, list)
                or len(pair) != 2
                or not isinstance(pair[0], bytes)
                or not isinstance(pair[1], float | int)
            ):
                raise RecordFormatError("a sorted-set member is malformed")
            zset.add(pair[0], float(pair[1]))
        return zset
    raise RecordFormatError(f"unknown value type {kind!r}")


def encode_value(value: object) -> bytes:
    """A DUMP payload for ``value``: magic, version, msgpack body, CRC-32."""
    body: bytes = _msgpack().packb(_to_plain(value), use_bin_type=True)
    head = _DUMP_MAGIC + bytes([_VERSION]) + body
    return head + struct.pack(">I", zlib.crc32(head))


def decode_value(payload: bytes) -> object:
    """The value of a DUMP payload; :class:`RecordFormatError` if it is corrupt or foreign."""
    if len(payload) < 7 or payload[:2] != _DUMP_MAGIC or payload[2] != _VERSION:
        raise RecordFormatError("DUMP payload version or checksum are wrong")
    head, (crc,) = payload[:-4], struct.unpack(">I", payload[-4:])
    if zlib.crc32(head) != crc:
        raise RecordFormatError("DUMP payload version or checksum are wrong")
    try:
        plain = _msgpack().unpackb(head[3:], raw=True, strict_map_key=False)
    except Exception as exc:
        raise RecordFormatError(f"DUMP payload does not decode: {exc}") from None
    return _from_plain(plain)


@dataclass(frozen=True, slots=True)
class SnapshotCapture:
    """A consistent copy of the keyspace, ready to be encoded and written (maybe elsewhere)."""

    document: dict[str, object]
    keys: int


def capture_snapshot(keyspace: Keyspace) -> SnapshotCapture:
    """Copy every live key of every database (on the loop: the copy is the consistent point)."""
    dbs: dict[int, list[list[object]]] = {}
    count = 0
    for db in keyspace.dbs:
        rows: list[list[object]] = []
        for key in db.key_snapshot():
            value = db.store.peek(key)
            if value is None:
                continue
            expires = db.expire_at_ms(key)
            if expires is None:
                continue
            rows.append([key, _to_plain(value), expires])
            count += 1
        if rows:
            dbs[db.index] = rows
    return SnapshotCapture({"v": _VERSION, "saved": int(keyspace.now), "dbs": dbs}, count)


def write_snapshot(capture: SnapshotCapture, path: str | os.PathLike[str]) -> None:
    """Encode and write a capture atomically (safe to run in another thread)."""
    body = _msgpack().packb(capture.document, use_bin_type=True)
    data = _FILE_MAGIC + body + struct.pack(">I", zlib.crc32(body))
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=".strata-snapshot-", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def save_snapshot(keyspace: Keyspace, path: str | os.PathLike[str]) -> int:
    """Write every live key of every database to ``path`` atomically; returns the key count."""
    capture = capture_snapshot(keyspace)
    write_snapshot(capture, path)
    return capture.keys


def load_snapshot(keyspace: Keyspace, path: str | os.PathLike[str]) -> int:
    """Load a snapshot into ``keyspace`` (keys already expired are skipped); the key count.

    :class:`RecordFormatError` if the file is not a snapshot or is corrupt; nothing is loaded then.
    """
    data = Path(path).read_bytes()
    if not data.startswith(_FILE_MAGIC) or len(data) < len(_FILE_MAGIC) + 4:
        raise RecordFormatError(f"{path} is not a stratacache RESP snapshot")
    body, (crc,) = data[len(_FILE_MAGIC) : -4], struct.unpack(">I", data[-4:])
    if zlib.crc32(body) != crc:
        raise RecordFormatError(f"{path}: checksum mismatch (truncated or corrupt)")
    try:
        document = _msgpack().unpackb(body, raw=False, strict_map_key=False)
    except Exception as exc:
        raise RecordFormatError(f"{path} does not decode: {exc}") from None
    if not isinstance(document, dict) or document.get("v") != _VERSION:
        raise RecordFormatError(f"{path}: unsupported snapshot version")
    entries: list[tuple[int, bytes, object, int]] = []
    for index, rows in (document.get("dbs") or {}).items():
        if not isinstance(index, int) or not 0 <= index < len(keyspace.dbs):
            raise RecordFormatError(f"{path}: database {index!r} out of range")
        for row in rows:
            if not isinstance(row, list) or len(row) != 3 or not isinstance(row[0], bytes):
                raise RecordFormatError(f"{path}: malformed entry")
            entries.append((index, row[0], _from_plain(row[1]), int(row[2])))
    keyspace.tick()
    now_ms = keyspace.now_ms()
    loaded = 0
    for index, key, value, expires in entries:
        db = keyspace.dbs[index]
        if expires == -1:
            db.set(key, value)
        elif expires > now_ms:
            db.set_at_ms(key, value, expires)
        else:
            continue
        loaded += 1
    return loaded
