"""What a process pays on this machine for running right after it slept: the wake-up penalty.

A caching proxy in front of a slow upstream sleeps while each call is out (50 ms in
``bench/proxy.py``), then runs the reply path on a CPU that has been idle. This measures, in one
process, the same small operations run back to back and right after sleeping 1 ms and 50 ms:

- ``getpid``: one system call;
- ``pread 4 KiB``: one read of a page the kernel has cached;
- ``sqlite SELECT (miss)``: the SQLite tier's lookup of an absent key (its ``_GET`` statement) on a
  small WAL database in a temporary directory;
- ``python work``: building a 200-item dict, JSON-encoding it and hashing it with SHA-256.

The ratio of each "after a sleep" median to its back-to-back median is the penalty: on a machine
whose idle CPUs keep their caches it stays near 1. Added latency measured with an idle upstream
(``bench/proxy.py --upstream-latency-ms 50``) includes it twice per request (the request's arrival
and the upstream's reply) for every line of code on that path, the bare forwarder's included.

Run from the repository root (about 20 seconds)::

    .venv/bin/python bench/wakeup.py --markdown bench/results/wakeup.md --json bench/results/wakeup.json
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import machine
from stratacache.tiers import sqlite as sqlite_tier

SLEEPS = (0.0, 0.001, 0.05)


def python_work() -> None:
    """A few dozen microseconds of ordinary interpreter work."""
    items = {str(i): i * 2 for i in range(200)}
    hashlib.sha256(json.dumps(items).encode()).hexdigest()


def measure(fn: Callable[[], object], sleep: float, samples: int) -> float:
    """Median seconds of ``fn()``, each call made right after sleeping ``sleep`` seconds."""
    times = []
    for _ in range(samples):
        if sleep:
            time.sleep(sleep)
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(samples: int) -> list[dict[str, object]]:
    """Every operation at every sleep; one row per operation."""
    with tempfile.TemporaryDirectory(prefix="strata-wakeup-") as tmp:
        path = Path(tmp) / "cache.db"
        # The tier creates the schema and switches the file to WAL, as the proxy's does.
        asyncio.run(sqlite_tier.SQLiteTier(path).close())
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        page = Path(tmp) / "page"
        page.write_bytes(os.urandom(4096))
        fd = os.open(page, os.O_RDONLY)
        counter = iter(range(10**9))
        operations: dict[str, Callable[[], object]] = {
            "getpid": os.getpid,
            "pread 4 KiB": lambda: os.pread(fd, 4096, 0),
            "sqlite SELECT (miss)": lambda: conn.execute(
                sqlite_tier._GET, (f"absent-{next(counter)}",)
            ).fetchone(),
            "python work": python_work,
        }
        rows = []
        try:
            for name, fn in operations.items():
                medians = {sleep: measure(fn, sleep, samples) for sleep in SLEEPS}
                rows.append(
                    {
                        "operation": name,
                        **{f"after {s * 1e3:g} ms (us)": m * 1e6 for s, m in medians.items()},
                        "penalty after 50 ms": medians[0.05] / medians[0.0],
                    }
                )
        finally:
            os.close(fd)
            conn.close()
    return rows


def markdown(rows: Sequence[dict[str, object]], info: dict[str, str], command: str) -> str:
    """The report: machine header, then one table row per operation."""
    columns = list(rows[0])
    lines = ["# Wake-up penalty", "", machine.markdown_block(info, command)]
    lines.append('Medians of 60 calls each; "after 0 ms" is back to back. See the docstring.')
    lines.append("")
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "---|" * len(columns))
    for row in rows:
        cells = [f"{v:.1f}" if isinstance(v, float) else str(v) for v in row.values()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=60)
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--json", type=Path)
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(arguments)
    rows = run(args.samples)
    info = machine.describe()
    command = " ".join([".venv/bin/python bench/wakeup.py", *arguments])
    text = markdown(rows, info, command)
    print(text)
    if args.markdown:
        args.markdown.write_text(text, encoding="utf-8")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
