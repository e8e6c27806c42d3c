"""Bytes of overhead per entry of the L0 store beside dict, cachetools, OrderedDict and cachebox.

Each structure is measured in its own child process (this script re-run with ``--child``), so
that one structure's freed memory, arenas and interned objects cannot flatter or burden the next.
A child:

1. builds the keys and values first (``--entries`` 16-character ``str`` keys; values are 8-byte
   ``bytes``, one object per entry, or with ``--values int`` small ints, which CPython shares), so
   they are not counted: what remains is what the structure itself costs per entry;
2. collects garbage and takes a baseline, inserts every entry into a structure bounded at
   exactly ``--entries`` (so nothing is evicted; ``dict`` is unbounded), collects garbage again
   and takes the difference, with one of two meters:

   - **tracemalloc**: bytes allocated through Python's allocators and still live. Exact for pure
     Python structures, blind to memory a C or Rust extension allocates itself (cachebox);
   - **RSS**: the resident set from ``/proc/self/statm``, in a separate child without tracemalloc
     (whose own bookkeeping would inflate it). Sees everything, including allocator slack.

It reports bytes per entry for both meters and the ratio to ``dict``'s. The store is built with
``Store(max_entries=N, rng=random.Random(1))`` (the compiled accelerator), and as
``ours (python)`` with ``accelerate=False`` (the pure-Python reference).

From the repository root (about a minute; ``--quick`` measures 100,000 entries instead)::

    .venv/bin/python bench/engine_memory.py --markdown bench/results/engine_memory.md
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import subprocess
import sys
import tracemalloc
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import machine

__all__ = ["STRUCTURES", "Footprint", "main", "measure"]

FULL_ENTRIES = 1_000_000
QUICK_ENTRIES = 100_000


def _ours(n: int) -> Any:
    from stratacache.engine import Store

    return Store(max_entries=n, rng=random.Random(1))


def _ours_python(n: int) -> Any:
    from stratacache.engine import Store

    return Store(max_entries=n, rng=random.Random(1), accelerate=False)


def _cachetools(n: int) -> Any:
    import cachetools

    return cachetools.LRUCache(maxsize=n)


def _cachebox(n: int) -> Any:
    import cachebox

    return cachebox.LRUCache(n)


def _odict(n: int) -> Any:
    return OrderedDict()


def _dict(n: int) -> Any:
    return {}


# name -> (build(capacity), how to insert one entry)
STRUCTURES: dict[
    str, tuple[Callable[[int], Any], Callable[[Any], Callable[[str, object], Any]]]
] = {
    "dict": (_dict, lambda s: s.__setitem__),
    "ours": (_ours, lambda s: s.set),
    "ours (python)": (_ours_python, lambda s: s.set),
    "cachetools": (_cachetools, lambda s: s.__setitem__),
    "OrderedDict": (_odict, lambda s: s.__setitem__),
    "cachebox": (_cachebox, lambda s: s.__setitem__),
}


@dataclass(frozen=True, slots=True)
class Footprint:
    """What one structure added, by one meter."""

    structure: str
    meter: str
    entries: int
    bytes: int
    length: int
    """``len(structure)`` afterwards: must equal ``entries`` (nothing evicted)."""

    @property
    def per_entry(self) -> float:
        """Bytes per entry."""
        return self.bytes / self.entries


def _rss() -> int:
    with open("/proc/self/statm", encoding="ascii") as f:
        resident_pages = int(f.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def measure(structure: str, meter: str, entries: int, values: str) -> Footprint:
    """Build ``structure`` with ``entries`` entries in this process and meter what it added."""
    build, inserter = STRUCTURES[structure]
    keys = [f"k{i:015d}" for i in range(entries)]
    vals: list[object]
    if values == "bytes":
        vals = [i.to_bytes(8, "big") for i in range(entries)]
    else:
        vals = [i % 256 for i in range(entries)]
    gc.collect()
    if meter == "tracemalloc":
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
    else:
        before = _rss()
    target = build(entries)
    put = inserter(target)
    for key, value in zip(keys, vals, strict=True):
        put(key, value)
    gc.collect()
    if meter == "tracemalloc":
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
    else:
        after = _rss()
    return Footprint(structure, meter, entries, after - before, len(target))


def _child(structure: str, meter: str, entries: int, values: str) -> Footprint:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        structure,
        "--meter",
        meter,
        "--entries",
        str(entries),
        "--values",
        values,
    ]
    out = subprocess.run(command, capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(f"{structure}/{meter} child failed:\n{out.stderr}")
    return Footprint(**json.loads(out.stdout))


def _table(footprints: Sequence[Footprint]) -> tuple[list[str], list[list[str]]]:
    by = {(f.structure, f.meter): f for f in footprints}
    header = [
        "structure",
        "tracemalloc B/entry",
        "/ dict",
        "RSS B/entry",
        "/ dict",
    ]
    rows = []
    for name in STRUCTURES:
        cells = [name]
        for meter in ("tracemalloc", "rss"):
            f, d = by.get((name, meter)), by.get(("dict", meter))
            if f is None or d is None:
                cells += ["-", "-"]
                continue
            note = "" if f.length == f.entries else f" (len {f.length}!)"
            cells += [f"{f.per_entry:.1f}{note}", f"{f.per_entry / d.per_entry:.2f}"]
        rows.append(cells)
    return header, rows


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="engine_memory.py", description="bytes/entry vs peers")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_ENTRIES:,} entries")
    parser.add_argument("--entries", type=int, help=f"entries (default {FULL_ENTRIES:,})")
    parser.add_argument("--values", choices=("bytes", "int"), default="bytes")
    parser.add_argument("--only", action="append", choices=sorted(STRUCTURES), metavar="NAME")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write raw results as JSON")
    parser.add_argument("--markdown", type=Path, metavar="OUT", help="write a Markdown report")
    parser.add_argument("--child", choices=sorted(STRUCTURES), help=argparse.SUPPRESS)
    parser.add_argument("--meter", choices=("tracemalloc", "rss"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Measure every structure in its own child process and print bytes per entry."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = _parse(arguments)
    entries = args.entries or (QUICK_ENTRIES if args.quick else FULL_ENTRIES)
    if entries < 1:
        print("engine_memory: --entries must be at least 1", file=sys.stderr)
        return 2
    if args.child:
        print(json.dumps(asdict(measure(args.child, args.meter, entries, args.values))))
        return 0

    names = list(STRUCTURES) if not args.only else ["dict", *(n for n in args.only if n != "dict")]
    footprints = []
    for name in names:
        for meter in ("tracemalloc", "rss"):
            print(f"  {name} / {meter} ...", file=sys.stderr, flush=True)
            footprints.append(_child(name, meter, entries, args.values))
    header, rows = _table(footprints)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print(f"overhead per entry at {entries:,} entries (16-char str keys, {args.values} values)")
    for r in [header, *rows]:
        print(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    print("tracemalloc does not see cachebox's own (Rust) allocations; read its RSS column.")

    info = machine.describe()
    command = " ".join([".venv/bin/python bench/engine_memory.py", *arguments])
    if args.json:
        payload = {
            "machine": info,
            "command": command,
            "entries": entries,
            "values": args.values,
            "results": [{**asdict(f), "per_entry": f.per_entry} for f in footprints],
        }
        args.json.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    if args.markdown:
        lines = [
            "# Engine memory",
            "",
            machine.markdown_block(info, command),
            f"Overhead per entry at {entries:,} entries: 16-character `str` keys, {args.values} "
            "values, both allocated before the baseline (so not counted). One child process per "
            "structure and meter. tracemalloc does not see cachebox's own (Rust) allocations: read "
            "its RSS column. Method: bench/README.md.",
            "",
            "| " + " | ".join(header) + " |",
            "|---|" + "---:|" * (len(header) - 1),
            *("| " + " | ".join(r) + " |" for r in rows),
            "",
        ]
        args.markdown.write_text("\n".join(lines), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
