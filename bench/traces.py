"""Readers for the cache access traces in ``../shared/traces`` (see its README for the formats).

Every reader takes a path and yields the trace's keys as ``int`` lazily, one request at a time, so a
multi-million-request trace never has to sit in memory unless the caller asks for it
(:func:`load_keys` packs one into an ``array('q')``, 8 bytes a request).

Compression is recognised by the file's magic bytes, not its name (gzip and xz through the stdlib;
anything else is read as plain), because the shared file names do not say it reliably and the tests
write plain files.

The formats:

- **lirs**: text, one integer key per line; a line ``*`` is a checkpoint and blank lines carry no
  request (``gli.trace.gz`` ends with one); both are skipped. Lines may end in CRLF (``loop``).
- **arc**: text lines ``start count ignored seq``; each line stands for ``count`` consecutive
  block ids ``start .. start+count-1``.
- **int64be**: binary, big-endian signed 64-bit keys back to back (the Corda trace).
- **int32be**: binary, big-endian signed 32-bit keys back to back (cache2k's ``web07``).

Standalone use, to check a trace's request and unique-key counts against the README::

    .venv/bin/python bench/traces.py ../shared/traces
"""

from __future__ import annotations

import enum
import gzip
import lzma
import sys
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from io import BufferedIOBase
from pathlib import Path

__all__ = [
    "CATALOGUE",
    "TraceFile",
    "TraceFormat",
    "TraceFormatError",
    "load_keys",
    "main",
    "open_trace",
    "read_arc",
    "read_int32be",
    "read_int64be",
    "read_lirs",
    "read_trace",
]

_GZIP_MAGIC = b"\x1f\x8b"
_XZ_MAGIC = b"\xfd7zXZ\x00"
# Binary traces are read in blocks this big (a multiple of 8, so no record straddles two blocks
# except when the file itself is truncated, which is reported).
_BLOCK = 1 << 16


class TraceFormatError(ValueError):
    """A trace file does not follow its format; the message names the file and the place."""


class TraceFormat(enum.StrEnum):
    """The on-disk formats of the shared traces."""

    LIRS = "lirs"
    ARC = "arc"
    INT64BE = "int64be"
    INT32BE = "int32be"


@dataclass(frozen=True, slots=True)
class TraceFile:
    """One trace of the shared set: its short name, file name and format."""

    name: str
    filename: str
    format: TraceFormat


def _lirs(name: str) -> TraceFile:
    return TraceFile(name, f"{name}.trace.gz", TraceFormat.LIRS)


# Every trace in ../shared/traces, by the short name the benchmarks use.
CATALOGUE: dict[str, TraceFile] = {
    t.name: t
    for t in (
        TraceFile("oltp", "oltp.arc.gz", TraceFormat.ARC),
        TraceFile("p3", "p3.arc.gz", TraceFormat.ARC),
        TraceFile("gli", "gli.trace.gz", TraceFormat.LIRS),
        *(
            _lirs(n)
            for n in (
                "loop",
                "multi1",
                "multi2",
                "multi3",
                "sprite",
                "2_pools",
                "ps",
                "cs",
                "cpp",
                "backf",
                "scan",
                "zigzag",
            )
        ),
        TraceFile("corda", "corda_vaultservice.gz", TraceFormat.INT64BE),
        TraceFile("web07", "web07.trace.xz", TraceFormat.INT32BE),
    )
}


def open_trace(path: str | Path) -> BufferedIOBase:
    """Open ``path`` for binary reading, decompressing gzip or xz when its magic bytes say so."""
    p = Path(path)
    with p.open("rb") as f:
        head = f.read(len(_XZ_MAGIC))
    if head.startswith(_GZIP_MAGIC):
        return gzip.open(p, "rb")
    if head.startswith(_XZ_MAGIC):
        return lzma.open(p, "rb")
    return p.open("rb")


def read_lirs(path: str | Path) -> Iterator[int]:
    """Yield the keys of a LIRS text trace, skipping ``*`` checkpoints and blank lines."""
    with open_trace(path) as f:
        for lineno, line in enumerate(f, 1):
            text = line.strip()
            if not text or text == b"*":
                continue
            try:
                # int() accepts ASCII digits in bytes directly; no decode needed.
                yield int(text)
            except ValueError:
                raise TraceFormatError(
                    f"{path}:{lineno}: expected an integer key or '*', got {text[:40]!r}"
                ) from None


def read_arc(path: str | Path) -> Iterator[int]:
    """Yield the keys of an ARC trace: each ``start count ...`` line expands to ``count`` ids."""
    with open_trace(path) as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            try:
                if len(fields) < 2:
                    raise ValueError
                start, count = int(fields[0]), int(fields[1])
            except ValueError:
                raise TraceFormatError(
                    f"{path}:{lineno}: expected 'start count ignored seq', got {line[:60]!r}"
                ) from None
            if count < 0:
                raise TraceFormatError(f"{path}:{lineno}: negative block count {count}")
            yield from range(start, start + count)


def _read_binary(path: str | Path, typecode: str) -> Iterator[int]:
    itemsize = array(typecode).itemsize
    swap = sys.byteorder == "little"  # the files are big-endian
    offset = 0
    with open_trace(path) as f:
        pending = b""
        while block := f.read(_BLOCK):
            data = pending + block
            usable = len(data) - len(data) % itemsize
            pending = data[usable:]
            values = array(typecode)
            values.frombytes(data[:usable])
            if swap:
                values.byteswap()
            offset += usable
            yield from values
        if pending:
            raise TraceFormatError(
                f"{path}: {len(pending)} trailing byte(s) after offset {offset}; "
                f"the file is not a whole number of {itemsize}-byte keys"
            )


def read_int64be(path: str | Path) -> Iterator[int]:
    """Yield the keys of a binary trace of big-endian signed 64-bit integers (Corda)."""
    return _read_binary(path, "q")


def read_int32be(path: str | Path) -> Iterator[int]:
    """Yield the keys of a binary trace of big-endian signed 32-bit integers (cache2k)."""
    return _read_binary(path, "i")


_READERS = {
    TraceFormat.LIRS: read_lirs,
    TraceFormat.ARC: read_arc,
    TraceFormat.INT64BE: read_int64be,
    TraceFormat.INT32BE: read_int32be,
}


def read_trace(path: str | Path, fmt: TraceFormat | str) -> Iterator[int]:
    """Yield the keys of the trace at ``path`` in ``fmt`` (a :class:`TraceFormat` or its value)."""
    try:
        reader = _READERS[TraceFormat(fmt)]
    except ValueError:
        known = ", ".join(f.value for f in TraceFormat)
        raise TraceFormatError(f"unknown trace format {fmt!r}; known: {known}") from None
    return reader(path)


def load_keys(path: str | Path, fmt: TraceFormat | str) -> array[int]:
    """Read a whole trace into a compact ``array('q')`` (8 bytes a request)."""
    return array("q", read_trace(path, fmt))


def main(argv: list[str] | None = None) -> int:
    """Print requests and unique keys for every catalogued trace found in a directory."""
    args = sys.argv[1:] if argv is None else argv
    directory = Path(args[0]) if args else Path(__file__).resolve().parents[2] / "shared" / "traces"
    print(f"{'trace':<8} {'requests':>10} {'unique':>9}")
    for trace in CATALOGUE.values():
        path = directory / trace.filename
        if not path.exists():
            print(f"{trace.name:<8} {'missing':>10}")
            continue
        keys = load_keys(path, trace.format)
        print(f"{trace.name:<8} {len(keys):>10,} {len(set(keys)):>9,}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
