"""Event-loop time per SQLite write: what a cache miss's store costs the requests behind it.

A miss in the proxy answers the client, then stores the signed record through the tier chain
(memory, then SQLite). Whatever of that store runs on the event loop delays every other request.
This measures, for ``SQLiteTier.set`` of a record-sized value (1.5 KiB, two tags) through a
``TierChain([MemoryTier, SQLiteTier])``:

- **loop busy us/write**: wall time the event loop was not idle in its selector, per write. The
  default asyncio loop's selector is wrapped to time the idle waits (uvloop cannot be wrapped; the
  proxy runs on uvloop, where the figure is lower, but the split between loop and thread is the
  same);
- **loop CPU us/write**: CPU time of the loop's thread (``time.thread_time``) per write;
- **writes/s** and **mean latency** of one ``await set`` (wall), at each concurrency;
- **read us**: one ``SQLiteTier.get`` of a stored key, which stays on the loop (compare it with
  the loop's cost of a hop to the writer thread, the loop busy time per write).

``--tier-module FILE`` loads ``SQLiteTier`` from another copy of ``stratacache/tiers/sqlite.py``
(for instance the version before the writer thread, saved from git) so both run in one session:

    git show HEAD:src/stratacache/tiers/sqlite.py > /tmp/sqlite_before.py
    .venv/bin/python bench/sqlite_writes.py --tier-module /tmp/sqlite_before.py
    .venv/bin/python bench/sqlite_writes.py

Results are printed as a Markdown table (``--json FILE`` and ``--markdown FILE`` also write them,
with the machine).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import selectors
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import machine
from stratacache.tiers import MemoryTier, TierChain, TierEntry


def _load_tier(module_file: str | None) -> Any:
    if module_file is None:
        from stratacache.tiers.sqlite import SQLiteTier

        return SQLiteTier
    spec = importlib.util.spec_from_file_location("sqlite_under_test", module_file)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.SQLiteTier


class _IdleTimer:
    """Wraps the loop's selector to add up the time spent waiting in ``select``."""

    def __init__(self, selector: selectors.BaseSelector) -> None:
        self.idle = 0.0
        self._select = selector.select

        def select(timeout: float | None = None) -> Any:
            started = time.perf_counter()
            try:
                return self._select(timeout)
            finally:
                self.idle += time.perf_counter() - started

        selector.select = select  # type: ignore[method-assign]


async def _run(tier_cls: Any, directory: Path, concurrency: int, writes: int) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    timer = _IdleTimer(loop._selector)  # type: ignore[attr-defined]
    chain = TierChain([MemoryTier(), tier_cls(directory / f"c{concurrency}.sqlite3")])
    value = bytes(1536)
    tags = frozenset({"route:chat", "model:m"})
    latencies: list[float] = []

    async def client(index: int) -> None:
        for i in range(writes // concurrency):
            started = time.perf_counter()
            await chain.set(f"key-{index}-{i}", TierEntry(value, None, tags, "tenant"))
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*[client(c) for c in range(2)])  # warm up: file, schema, caches
    latencies.clear()
    idle_before, cpu_before, wall_before = timer.idle, time.thread_time(), time.perf_counter()
    await asyncio.gather(*[client(c) for c in range(concurrency)])
    wall = time.perf_counter() - wall_before
    cpu = time.thread_time() - cpu_before
    idle = timer.idle - idle_before
    done = len(latencies)
    # Reads stay on the loop: time a read of each stored key from SQLite itself (the memory tier
    # in front would answer otherwise), to compare with the loop cost of a hop to the writer.
    sqlite = chain.tiers[1]
    keys = [f"key-{c}-{i}" for c in range(concurrency) for i in range(writes // concurrency)]
    read_started = time.perf_counter()
    for key in keys:
        assert await sqlite.get(key) is not None
    read_us = (time.perf_counter() - read_started) / len(keys) * 1e6
    await chain.close()
    return {
        "read_us": read_us,
        "concurrency": concurrency,
        "writes": done,
        "loop_busy_us_per_write": (wall - idle) / done * 1e6,
        "loop_cpu_us_per_write": cpu / done * 1e6,
        "writes_per_s": done / wall,
        "mean_latency_us": sum(latencies) / done * 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tier-module", help="load SQLiteTier from this file instead")
    parser.add_argument("--writes", type=int, default=4000, help="timed writes per concurrency")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--markdown", help="also write the table and the machine here")
    args = parser.parse_args()
    tier_cls = _load_tier(args.tier_module)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for concurrency in args.concurrency:
            rows.append(asyncio.run(_run(tier_cls, Path(tmp), concurrency, args.writes)))
    label = args.tier_module or "stratacache.tiers.sqlite"
    info = machine.describe()
    lines = [f"SQLiteTier from {label}", ""]
    lines.append(
        "| concurrency | loop busy us/write | loop CPU us/write | writes/s | mean latency us "
        "| read us (on the loop) |"
    )
    lines.append("|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        lines.append(
            f"| {row['concurrency']} | {row['loop_busy_us_per_write']:.0f} "
            f"| {row['loop_cpu_us_per_write']:.0f} | {row['writes_per_s']:.0f} "
            f"| {row['mean_latency_us']:.0f} | {row['read_us']:.0f} |"
        )
    report = "\n".join(lines) + "\n"
    print(report)
    if args.json:
        result = {"tier": label, "rows": rows, "machine": info}
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if args.markdown:
        command = " ".join(["python", *sys.argv])
        Path(args.markdown).write_text(report + "\n" + machine.markdown_block(info, command))


if __name__ == "__main__":
    main()
