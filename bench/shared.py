"""Several instances sharing one Redis: hit latency through L0 versus Redis, and hit rates.

Two measurements, both on :class:`stratacache.llm.cache.LLMCache` built from ``Settings`` exactly as
``strata serve`` builds it (no HTTP: the proxy's own overhead is measured in ``bench/proxy.py``),
against a Debian ``redis-server`` started here on a free loopback port:

1. **Hit latency.** Instance A stores N answers (chain ``memory,redis``). Instance B, sharing the
   Redis and the signing key, then asks for each once (a hit from Redis, verified, copied into its
   L0) and again (a hit from its L0). The table gives the median and p99 of ``LLMCache.handle`` for
   both, and their ratio. Instance B's requests alternate between the two kinds key by key, so a
   slow moment of the shared machine falls on both alike.
2. **Hit rate behind a round-robin balancer.** A Zipf-distributed stream of chat requests (a
   universe of U prompts, exponent s) is sent, one request at a time, to: one instance (L0 only),
   two instances in turn with L0 only (each learns alone), one instance with L0 + Redis, and two
   instances in turn sharing the Redis. Every L0 holds at most ``--l0-entries`` entries. The
   upstream is an in-process stand-in (the only fake: it answers instantly, so only the cache is
   measured); the table gives the hit rate of each set-up and its ratio to one instance.

Run it from the repository root (~1 minute)::

    .venv/bin/python bench/shared.py --entries 5000 --requests 50000 \\
        --markdown bench/results/shared.md --json bench/results/shared.json

``--entries 200 --requests 2000`` gives a smoke run in seconds (numbers meaningless).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import machine
from resp_tcl import free_port, start_redis, wait_for_port
from stratacache.config import Settings
from stratacache.llm.cache import CacheStatus, LLMCache, LLMRequest
from stratacache.llm.factory import build_cache
from stratacache.llm.keys import Route
from stratacache.llm.warm import RecordedReply

__all__ = ["HitRate", "Latency", "main"]

AUTH = {"authorization": "Bearer sk-bench"}


@dataclass(frozen=True, slots=True)
class Latency:
    """Hit latency of one tier, in microseconds."""

    tier: str
    hits: int
    p50_us: float
    p99_us: float


@dataclass(frozen=True, slots=True)
class HitRate:
    """The hit rate of one deployment over the Zipf stream."""

    setup: str
    instances: int
    shared_redis: bool
    requests: int
    hits: int

    @property
    def rate(self) -> float:
        """Hits over requests."""
        return self.hits / self.requests


class _Upstream:
    """The stand-in provider: answers every chat completion at once."""

    def __init__(self) -> None:
        self.calls = 0

    async def post(self, path: str, body: bytes, headers: Mapping[str, str]) -> RecordedReply:
        self.calls += 1
        question = json.loads(body)["messages"][-1]["content"]
        answer = {
            "id": f"chatcmpl-{self.calls}",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": "gpt-4o-mini",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": f"The answer to {question}."},
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 12, "completion_tokens": 6, "total_tokens": 18},
        }
        return RecordedReply(json.dumps(answer).encode())


def _request(n: int) -> LLMRequest:
    body = {
        "model": "gpt-4o-mini",
        "temperature": 0,
        "messages": [
            {"role": "system", "content": "You answer in one sentence."},
            {"role": "user", "content": f"What is fact number {n}?"},
        ],
    }
    return LLMRequest(route=Route.CHAT, body=body, headers=AUTH)


def _settings(root: Path, name: str, redis_url: str | None, l0_entries: int) -> Settings:
    return Settings(
        data_dir=root / name,
        signing_key_file=root / "shared.key",
        upstream="http://127.0.0.1:9/v1",
        redis_url=redis_url,
        redis_prefix=f"bench-{name.split('-', maxsplit=1)[0]}:",
        chain="memory,redis" if redis_url else "memory",
        memory_max_entries=l0_entries,
        redis_timeout=2.0,
    )


async def _close(*caches: LLMCache) -> None:
    for cache in caches:
        await cache.aclose()
        await cache.tiers.close()


async def measure_latency(root: Path, redis_url: str, entries: int) -> list[Latency]:
    """Hits from Redis and from L0 on instance B, after instance A stored ``entries`` answers."""
    upstream = _Upstream()
    a = build_cache(_settings(root, "lat-a", redis_url, entries * 2), upstream)
    b = build_cache(_settings(root, "lat-b", redis_url, entries * 2), upstream)
    try:
        for n in range(entries):
            await a.handle(_request(n))
        await a.drain()
        timings: dict[str, list[float]] = {"redis": [], "memory": []}
        for n in range(entries):
            for _ in range(2):  # first from Redis (and copied into L0), then from L0
                request = _request(n)
                t0 = time.perf_counter()
                response = await b.handle(request)
                elapsed = time.perf_counter() - t0
                if response.cache is not CacheStatus.HIT or response.tier is None:
                    raise SystemExit(f"expected a hit, got {response.cache} from {response.tier}")
                timings[response.tier].append(elapsed * 1e6)
    finally:
        await _close(a, b)
    return [
        Latency(tier, len(values), statistics.median(values), _p99(values))
        for tier, values in timings.items()
    ]


def _p99(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def zipf_stream(universe: int, exponent: float, count: int, seed: int) -> list[int]:
    """``count`` draws from ranks ``0..universe-1`` with P(rank r) proportional to 1/(r+1)^s."""
    weights = [1.0 / (rank + 1) ** exponent for rank in range(universe)]
    cumulative: list[float] = []
    total = 0.0
    for weight in weights:
        total += weight
        cumulative.append(total)
    rng = random.Random(seed)
    return [bisect.bisect_left(cumulative, rng.random() * total) for _ in range(count)]


async def measure_hit_rates(
    root: Path, redis_url: str, stream: Sequence[int], l0_entries: int
) -> list[HitRate]:
    """The hit rate of each deployment over ``stream`` (one request at a time, round robin)."""
    results = []
    setups = [
        ("one instance, L0 only", 1, False),
        ("two instances, L0 only, round robin", 2, False),
        ("one instance, L0 + Redis", 1, True),
        ("two instances sharing Redis, round robin", 2, True),
    ]
    for index, (label, count, shared) in enumerate(setups):
        upstream = _Upstream()
        caches = [
            build_cache(
                _settings(root, f"rate{index}-{i}", redis_url if shared else None, l0_entries),
                upstream,
            )
            for i in range(count)
        ]
        hits = 0
        try:
            for position, n in enumerate(stream):
                response = await caches[position % count].handle(_request(n))
                hits += response.cache is CacheStatus.HIT
                # Stores run after the answer is given; settle them before the next request so
                # the comparison does not depend on scheduling.
                await caches[position % count].drain()
        finally:
            await _close(*caches)
        results.append(HitRate(label, count, shared, len(stream), hits))
    return results


def markdown(
    latencies: Sequence[Latency],
    rates: Sequence[HitRate],
    args: argparse.Namespace,
    command: str,
    info: dict[str, str],
) -> str:
    """The results as a Markdown page."""
    by_tier = {lat.tier: lat for lat in latencies}
    lines = [
        "# Several instances sharing one Redis",
        "",
        "Provisional figures: measured on a shared, busy machine; read the ratios.",
        "",
        machine.markdown_block(info, command),
        f"## Hit latency on instance B ({args.entries} answers stored by instance A)",
        "",
        "| served from | hits | p50 (us) | p99 (us) |",
        "|---|---:|---:|---:|",
    ]
    for lat in latencies:
        lines.append(f"| {lat.tier} | {lat.hits} | {lat.p50_us:.1f} | {lat.p99_us:.1f} |")
    if "redis" in by_tier and "memory" in by_tier:
        ratio = by_tier["redis"].p50_us / by_tier["memory"].p50_us
        lines += ["", f"A hit through Redis costs {ratio:.1f}x a hit from L0 (p50)."]
    lines += [
        "",
        f"## Hit rate, {args.requests} requests, Zipf s={args.exponent} over {args.universe} "
        f"prompts, L0 of {args.l0_entries} entries per instance",
        "",
        "| deployment | hit rate | vs one instance (L0 only) |",
        "|---|---:|---:|",
    ]
    base = rates[0].rate
    for rate in rates:
        lines.append(f"| {rate.setup} | {rate.rate:.3f} | {rate.rate / base:.3f}x |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Run both measurements and print (or write) the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--entries", type=int, default=5000, help="answers for the latency run")
    parser.add_argument("--requests", type=int, default=50_000, help="requests in the Zipf stream")
    parser.add_argument("--universe", type=int, default=20_000, help="distinct prompts")
    parser.add_argument("--exponent", type=float, default=0.9, help="Zipf exponent")
    parser.add_argument("--l0-entries", type=int, default=2_000, help="L0 entries per instance")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    command = "python bench/shared.py " + " ".join(sys.argv[1:] if argv is None else argv)

    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        server = start_redis(port, Path(tmp))
        try:
            wait_for_port(port)
            url = f"redis://127.0.0.1:{port}/0"
            latencies = asyncio.run(measure_latency(Path(tmp), url, args.entries))
            stream = zipf_stream(args.universe, args.exponent, args.requests, args.seed)
            rates = asyncio.run(measure_hit_rates(Path(tmp), url, stream, args.l0_entries))
        finally:
            server.kill()
            server.wait(timeout=10)
    info = machine.describe()
    page = markdown(latencies, rates, args, command, info)
    print(page)
    if args.markdown is not None:
        args.markdown.write_text(page, encoding="utf-8")
    if args.json is not None:
        payload: dict[str, Any] = {
            "machine": info,
            "command": command,
            "latency": [asdict(lat) for lat in latencies],
            "hit_rate": [{**asdict(rate), "rate": rate.rate} for rate in rates],
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
