"""``strata demo``: the proxy, in-process, against a SIMULATED upstream, under a replayed workload.

It starts the :class:`~stratacache.proxy.simulated.SimulatedProvider` and the real proxy (the
same app ``strata serve`` runs, with the same HTTP client to its upstream) on free loopback ports,
replays a workload of repeated questions (some streamed, some not, some at the same moment) over
HTTP, and reports the hit rate, the latency of hits against misses, and the dollars the hits saved
at list prices. No API key, no network, and every simulated answer is labelled as such.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["DEMO_QUESTIONS", "DemoResult", "run_demo"]

DEMO_QUESTIONS = (
    "What does a cache hit mean?",
    "How do I reset my password?",
    "What are your opening hours?",
    "Summarise our refund policy.",
    "How do I export my data?",
    "Which plans include single sign-on?",
    "How do I invite a colleague?",
    "Where can I download my invoices?",
    "How do I change the billing email?",
    "What is the API rate limit?",
)
"""The questions the demo's simulated users ask, the first ones much more often than the last."""

_DEMO_MODEL = "gpt-4o"


@dataclass(frozen=True, slots=True)
class DemoResult:
    """What a demo run measured."""

    requests: int
    """Requests sent through the proxy."""
    outcomes: dict[str, int]
    """``X-Cache`` value -> how many requests got it."""
    upstream_calls: int
    """Requests that reached the simulated upstream."""
    hit_p50_ms: float | None
    """Median latency of answers from the cache (hits and coalesced), client-side."""
    miss_p50_ms: float | None
    """Median latency of answers from the upstream, client-side."""
    tokens_saved: int
    """Tokens answered without calling the upstream."""
    dollars_saved: float
    """What those tokens would have cost at list prices."""

    @property
    def hit_rate(self) -> float:
        """The share of requests not answered by an upstream call of their own."""
        served = sum(self.outcomes.get(k, 0) for k in ("HIT", "COALESCED", "STALE"))
        return served / self.requests if self.requests else 0.0


def _workload(requests: int, rng: random.Random) -> list[tuple[str, bool]]:
    weights = [1 / (rank + 1) for rank in range(len(DEMO_QUESTIONS))]
    questions = rng.choices(DEMO_QUESTIONS, weights=weights, k=requests)
    return [(question, rng.random() < 0.35) for question in questions]


def _free_socket() -> socket.socket:
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted connections only when the
    # listening socket says so, and without it every response waits ~40 ms for a delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


async def run_demo(
    *,
    requests: int = 60,
    concurrency: int = 4,
    latency_scale: float = 1.0,
    data_dir: Path | None = None,
    seed: int = 0,
    console: Console | None = None,
) -> DemoResult:
    """Run the demo and print its progress and results to ``console``."""
    if requests < 1 or concurrency < 1:
        raise ValueError("requests and concurrency must be at least 1")
    with contextlib.ExitStack() as stack:
        if data_dir is None:
            data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="strata-demo-")))
        return await _run(
            requests=requests,
            concurrency=concurrency,
            latency_scale=latency_scale,
            data_dir=data_dir,
            seed=seed,
            console=console,
        )


async def _run(
    *,
    requests: int,
    concurrency: int,
    latency_scale: float,
    data_dir: Path,
    seed: int,
    console: Console | None,
) -> DemoResult:
    import httpx
    import uvicorn
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from stratacache.config import Settings
    from stratacache.proxy.app import create_app
    from stratacache.proxy.simulated import SIMULATED_LABEL, SimulatedProvider

    out = console or Console()
    out.print(
        f"[bold yellow]{SIMULATED_LABEL} upstream[/]: answers and latencies are synthetic "
        "(no API key, no network). The proxy, cache and store are the real ones."
    )
    provider = SimulatedProvider(latency_scale=latency_scale, rng=random.Random(seed))
    provider_sock = _free_socket()
    provider_server = uvicorn.Server(
        uvicorn.Config(provider, log_level="warning", lifespan="on", access_log=False)
    )
    providing = asyncio.ensure_future(provider_server.serve(sockets=[provider_sock]))
    serving: asyncio.Future[None] | None = None
    server: uvicorn.Server | None = None
    try:
        await _started(provider_server, providing)
        settings = Settings(
            data_dir=data_dir,
            upstream=f"http://127.0.0.1:{provider_sock.getsockname()[1]}/v1",
            port=0,
            log_level="warning",
            semantic=False,  # exact caching is what the demo shows; no model to load for it
        )
        app = create_app(settings)
        sock = _free_socket()
        port = sock.getsockname()[1]
        server = uvicorn.Server(
            uvicorn.Config(app, log_level="warning", lifespan="on", ws="none", access_log=False)
        )
        serving = asyncio.ensure_future(server.serve(sockets=[sock]))
        await _started(server, serving)
        out.print(f"proxy listening on http://127.0.0.1:{port}/v1 (data in {data_dir})")
        workload = _workload(requests, random.Random(seed))
        outcomes: Counter[str] = Counter()
        latency: dict[str, list[float]] = {"hit": [], "miss": []}
        gate = asyncio.Semaphore(concurrency)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}/v1",
            headers={"authorization": "Bearer demo-key"},
            timeout=60,
        ) as http:
            columns = (
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("hits {task.fields[hits]}"),
                TimeElapsedColumn(),
            )
            with Progress(*columns, console=out, transient=False) as progress:
                task = progress.add_task("replaying requests", total=len(workload), hits=0)

                async def one(question: str, stream: bool) -> None:
                    body: dict[str, Any] = {
                        "model": _DEMO_MODEL,
                        "temperature": 0,
                        "messages": [{"role": "user", "content": question}],
                        "stream": stream,
                    }
                    async with gate:
                        started = time.perf_counter()
                        async with http.stream("POST", "/chat/completions", json=body) as reply:
                            await reply.aread()
                        elapsed = time.perf_counter() - started
                    status = reply.headers.get("x-cache", "ERROR")
                    outcomes[status] += 1
                    kind = "hit" if status in ("HIT", "COALESCED", "STALE") else "miss"
                    latency[kind].append(elapsed)
                    progress.update(task, advance=1, hits=len(latency["hit"]))

                await asyncio.gather(*(one(q, s) for q, s in workload))
            stats = (await http.get(f"http://127.0.0.1:{port}/stats")).json()
    finally:
        # The proxy first (it drains its writes), then the provider it was calling.
        if server is not None and serving is not None:
            server.should_exit = True
            await serving
        provider_server.should_exit = True
        await providing
    result = DemoResult(
        requests=len(workload),
        outcomes=dict(outcomes),
        upstream_calls=provider.calls,
        hit_p50_ms=_p50_ms(latency["hit"]),
        miss_p50_ms=_p50_ms(latency["miss"]),
        tokens_saved=sum(stats["tokens_served_from_cache"].values()),
        dollars_saved=float(stats["dollars_saved"]),
    )
    _report(out, result)
    return result


async def _started(server: Any, serving: asyncio.Future[None]) -> None:
    """Return once ``server`` (a ``uvicorn.Server``) listens; raise why it stopped, if it did."""
    while not server.started:
        if serving.done():
            serving.result()
            raise RuntimeError("the server stopped before it started")
        await asyncio.sleep(0.01)


def _p50_ms(samples: list[float]) -> float | None:
    return statistics.median(samples) * 1000 if samples else None


def _report(out: Console, result: DemoResult) -> None:
    from rich.table import Table

    from stratacache.proxy.simulated import SIMULATED_LABEL

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f} ms"

    table = Table(title=f"stratacache demo ({SIMULATED_LABEL} upstream)")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("requests", str(result.requests))
    for name in ("HIT", "COALESCED", "MISS", "STALE", "BYPASS"):
        if result.outcomes.get(name):
            table.add_row(f"  X-Cache: {name}", str(result.outcomes[name]))
    table.add_row("upstream calls", str(result.upstream_calls))
    table.add_row("hit rate", f"{result.hit_rate:.0%}")
    table.add_row("latency p50, hit", ms(result.hit_p50_ms))
    table.add_row("latency p50, miss", ms(result.miss_p50_ms))
    table.add_row("tokens served from cache", str(result.tokens_saved))
    table.add_row(f"dollars saved ({_DEMO_MODEL} list price)", f"${result.dollars_saved:.4f}")
    out.print(table)
