"""Event-loop time per cache miss through ``LLMCache``, in one process, with a fake upstream.

Each request is a distinct chat completion (temperature 0, so it is stored), answered by an
in-process upstream after ``--upstream-latency-ms`` (0 by default: the loop is then busy with the
cache's own work or idle waiting for the SQLite writer, nothing else). The chain is memory, then
SQLite (HMAC-signed records), as ``strata serve`` builds it. Reported per miss, the stores included
(the run ends with ``LLMCache.drain``):

- **loop busy us/miss**: wall time the default asyncio loop was not idle in its selector;
- **loop CPU us/miss**: CPU time of the loop's thread.

``--tier-module FILE`` loads ``SQLiteTier`` from another copy of ``stratacache/tiers/sqlite.py``,
to compare two versions in one session::

    git show HEAD:src/stratacache/tiers/sqlite.py > /tmp/sqlite_before.py
    .venv/bin/python bench/llm_miss_loop.py --tier-module /tmp/sqlite_before.py
    .venv/bin/python bench/llm_miss_loop.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import machine
from sqlite_writes import _IdleTimer, _load_tier
from stratacache.llm.cache import LLMCache, LLMRequest, derive_tenant_secret
from stratacache.llm.keys import Route
from stratacache.llm.records import HmacSigner, RecordCodec
from stratacache.llm.warm import RecordedReply
from stratacache.tiers import MemoryTier, TierChain

_KEY = b"k" * 32


class _Upstream:
    """Answers every chat completion with a fixed 1 KiB-ish completion after ``latency`` s."""

    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.calls = 0

    async def post(self, path: str, body: bytes, headers: Mapping[str, str]) -> RecordedReply:
        self.calls += 1
        if self.latency:
            await asyncio.sleep(self.latency)
        answer = {
            "id": f"chatcmpl-{self.calls}",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": "gpt-4o-mini",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "An answer. " * 80},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 12, "completion_tokens": 160, "total_tokens": 172},
        }
        return RecordedReply(json.dumps(answer).encode())


async def _run(
    tier_cls: Any, directory: Path, concurrency: int, misses: int, latency: float
) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    timer = _IdleTimer(loop._selector)  # type: ignore[attr-defined]
    chain = TierChain([MemoryTier(), tier_cls(directory / f"c{concurrency}.sqlite3")])
    upstream = _Upstream(latency)
    cache = LLMCache(
        chain,
        RecordCodec(HmacSigner(_KEY)),
        upstream,
        tenant_secret=derive_tenant_secret(_KEY),
    )
    headers = {"authorization": "Bearer sk-bench"}

    async def client(index: int, count: int) -> None:
        for i in range(count):
            body = {
                "model": "gpt-4o-mini",
                "temperature": 0,
                "messages": [{"role": "user", "content": f"question {index}-{i}"}],
            }
            response = await cache.handle(LLMRequest(Route.CHAT, body, headers=headers))
            assert response.status == 200

    await asyncio.gather(*[client(-1 - c, 20) for c in range(2)])  # warm up
    await cache.drain()
    idle_before, cpu_before, wall_before = timer.idle, time.thread_time(), time.perf_counter()
    await asyncio.gather(*[client(c, misses // concurrency) for c in range(concurrency)])
    await cache.drain()
    wall = time.perf_counter() - wall_before
    cpu = time.thread_time() - cpu_before
    idle = timer.idle - idle_before
    done = misses // concurrency * concurrency
    await cache.aclose()
    await chain.close()
    return {
        "concurrency": concurrency,
        "misses": done,
        "loop_busy_us_per_miss": (wall - idle) / done * 1e6,
        "loop_cpu_us_per_miss": cpu / done * 1e6,
        "misses_per_s": done / wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tier-module", help="load SQLiteTier from this file instead")
    parser.add_argument("--misses", type=int, default=3000, help="timed misses per concurrency")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--upstream-latency-ms", type=float, default=0.0)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--markdown", help="also write the table and the machine here")
    args = parser.parse_args()
    tier_cls = _load_tier(args.tier_module)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for concurrency in args.concurrency:
            rows.append(
                asyncio.run(
                    _run(
                        tier_cls,
                        Path(tmp),
                        concurrency,
                        args.misses,
                        args.upstream_latency_ms / 1000,
                    )
                )
            )
    label = args.tier_module or "stratacache.tiers.sqlite"
    info = machine.describe()
    lines = [f"SQLiteTier from {label}", ""]
    lines.append("| concurrency | loop busy us/miss | loop CPU us/miss | misses/s |")
    lines.append("|---:|---:|---:|---:|")
    for row in rows:
        lines.append(
            f"| {row['concurrency']} | {row['loop_busy_us_per_miss']:.0f} "
            f"| {row['loop_cpu_us_per_miss']:.0f} | {row['misses_per_s']:.0f} |"
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
