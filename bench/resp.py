"""Throughput of the RESP sidecar beside redis-server, measured with ``redis-benchmark``.

Both servers are started here on free loopback ports (the sidecar as ``strata resp`` runs it,
uvloop and hiredis when installed; Debian's redis-server without persistence) and measured in
the same run with the same ``redis-benchmark`` invocations: GET, SET, INCR, LPUSH, HSET and
MGET (10 keys) at ``-P 1`` and ``-P 16``, 50 clients, random keys from a 100,000-key space. The
table reports requests per second, p50/p99 latency and the sidecar/redis ratio, and the CPU time
each server process spent per request (``/proc/PID/stat``, user + system): on a machine shared
with other work the requests per second swing with the neighbours, while CPU per request
mostly does not, so its ratio is the steadier estimate of what each server can do on one core.
Then the in-process path: ns per GET on the engine's ``Store`` directly, and one GET round trip
through redis-py to the sidecar and to redis-server.

The sidecar serves its hot commands through the compiled fast path (``stratacache.resp._fast``,
built with the package or by ``.venv/bin/python setup.py build_ext --inplace``) when it is built;
the results say which path ran.

Run it on a quiet machine (``uptime`` load near 0), from the repository root (~5 minutes)::

    .venv/bin/python bench/resp.py --requests 200000 \\
        --markdown bench/results/resp.md --json bench/results/resp.json

``--requests 2000`` gives a smoke run in seconds (numbers meaningless).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import machine
from resp_tcl import free_port, start_redis, start_sidecar, wait_for_port

__all__ = ["TESTS", "Result", "main", "parse_csv", "run_benchmark"]

TESTS: dict[str, list[str]] = {
    "GET": ["-t", "get"],
    "SET": ["-t", "set"],
    "INCR": ["-t", "incr"],
    "LPUSH": ["-t", "lpush"],
    "HSET": ["-t", "hset"],
    "MGET": ["mget", *(f"key:__rand_int__{i}" for i in range(10))],
}
PIPELINES = (1, 16)


@dataclass(frozen=True, slots=True)
class Result:
    """One redis-benchmark measurement."""

    server: str
    test: str
    pipeline: int
    rps: float
    p50_ms: float
    p99_ms: float
    cpu_us: float = float("nan")
    """Server CPU time (user + system) per request, microseconds."""


def parse_csv(text: str) -> list[tuple[str, float, float, float]]:
    """``(test, rps, p50 ms, p99 ms)`` rows of ``redis-benchmark --csv`` output."""
    rows = []
    for row in csv.reader(io.StringIO(text)):
        if len(row) < 7 or row[0] == "test":
            continue
        try:
            rows.append((row[0], float(row[1]), float(row[4]), float(row[6])))
        except ValueError:
            continue
    return rows


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds process ``pid`` has used (Linux ``/proc``); NaN elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    # After the command name: state is field 3, so utime (14) and stime (15) are at 11 and 12.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_benchmark(
    server: str,
    port: int,
    test: str,
    *,
    pipeline: int,
    requests: int,
    clients: int,
    pid: int | None = None,
) -> Result:
    """One ``redis-benchmark`` run against ``port`` (served by process ``pid``)."""
    binary = shutil.which("redis-benchmark")
    if binary is None:
        raise SystemExit("redis-benchmark not found (apt-get install -y redis-tools)")
    command = [
        binary,
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-n",
        str(requests),
        "-c",
        str(clients),
        "-P",
        str(pipeline),
        "-r",
        "100000",
        "--csv",
        *TESTS[test],
    ]
    before = cpu_seconds(pid) if pid is not None else float("nan")
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600, check=True)
    after = cpu_seconds(pid) if pid is not None else float("nan")
    rows = parse_csv(done.stdout)
    if not rows:
        raise RuntimeError(f"no result from {' '.join(command)}: {done.stdout!r} {done.stderr!r}")
    _, rps, p50, p99 = rows[0]
    return Result(server, test, pipeline, rps, p50, p99, (after - before) / requests * 1e6)


def in_process(port_sidecar: int, port_redis: int, rounds: int) -> dict[str, float]:
    """ns per GET: the engine's Store in-process, and redis-py round trips to each server."""
    import redis

    from stratacache.engine import Store

    store = Store()
    store.set(b"key", b"value")
    get = store.get
    started = time.perf_counter_ns()
    for _ in range(rounds * 10):
        get(b"key")
    out = {"store.get (in-process)": (time.perf_counter_ns() - started) / (rounds * 10)}
    for name, port in (
        ("sidecar round trip", port_sidecar),
        ("redis-server round trip", port_redis),
    ):
        with redis.Redis(port=port) as client:
            client.set("key", "value")
            client.get("key")
            started = time.perf_counter_ns()
            for _ in range(rounds):
                client.get("key")
            out[name] = (time.perf_counter_ns() - started) / rounds
    return out


def fast_path() -> str:
    """Which request path the sidecar runs: the compiled fast path, or pure Python."""
    try:
        from stratacache.resp import _fast  # noqa: F401
    except ImportError:
        return "pure Python (stratacache.resp._fast not built)"
    return "compiled (stratacache.resp._fast)"


def markdown(results: list[Result], inproc: dict[str, float], command: str, note: str = "") -> str:
    """The results as a Markdown document with the machine block."""
    lines = ["# RESP sidecar vs redis-server (redis-benchmark)", ""]
    lines.append(machine.markdown_block(machine.describe(), command))
    lines += [f"Sidecar request path: {fast_path()}.", ""]
    if note:
        lines += [note, ""]
    lines += [
        "| test | -P | redis-server req/s | sidecar req/s | sidecar / redis | "
        "redis p50/p99 ms | sidecar p50/p99 ms | redis CPU us/req | sidecar CPU us/req | "
        "redis CPU / sidecar CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    by_key = {(r.server, r.test, r.pipeline): r for r in results}
    for test in TESTS:
        for pipeline in PIPELINES:
            redis_result = by_key.get(("redis-server", test, pipeline))
            ours = by_key.get(("sidecar", test, pipeline))
            if redis_result is None or ours is None:
                continue
            lines.append(
                f"| {test} | {pipeline} | {redis_result.rps:,.0f} | {ours.rps:,.0f} | "
                f"{ours.rps / redis_result.rps:.2f} | {redis_result.p50_ms:.3f}/"
                f"{redis_result.p99_ms:.3f} | {ours.p50_ms:.3f}/{ours.p99_ms:.3f} | "
                f"{redis_result.cpu_us:.2f} | {ours.cpu_us:.2f} | "
                f"{redis_result.cpu_us / ours.cpu_us if ours.cpu_us > 0 else float('nan'):.2f} |"
            )
    lines += [
        "",
        "## One GET, in-process and over the loopback",
        "",
        "| path | ns per GET |",
        "|---|---:|",
    ]
    lines += [f"| {name} | {value:,.0f} |" for name, value in inproc.items()]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison and print (or write) the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--tests", nargs="*", default=list(TESTS))
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--note", default="", help="a line printed under the header")
    args = parser.parse_args(argv)
    results: list[Result] = []
    with tempfile.TemporaryDirectory() as workdir:
        redis_port, sidecar_port = free_port(), free_port()
        redis_process = start_redis(redis_port, Path(workdir))
        sidecar_process = start_sidecar(sidecar_port)
        try:
            wait_for_port(redis_port)
            wait_for_port(sidecar_port)
            for test in args.tests:
                for pipeline in PIPELINES:
                    for server, port, pid in (
                        ("redis-server", redis_port, redis_process.pid),
                        ("sidecar", sidecar_port, sidecar_process.pid),
                    ):
                        result = run_benchmark(
                            server,
                            port,
                            test,
                            pipeline=pipeline,
                            requests=args.requests,
                            clients=args.clients,
                            pid=pid,
                        )
                        results.append(result)
                        print(
                            f"{server:12s} {test:6s} -P {pipeline:2d} {result.rps:12,.0f} req/s "
                            f"{result.cpu_us:8.2f} us CPU/req",
                            flush=True,
                        )
            inproc = in_process(sidecar_port, redis_port, max(100, args.requests // 100))
        finally:
            _stop(sidecar_process)
            _stop(redis_process)
    command = "python bench/resp.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = markdown(results, inproc, command, args.note)
    if args.markdown is not None:
        args.markdown.write_text(text, encoding="utf-8")
    else:
        print(text)
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "machine": machine.describe(),
                    "fast_path": fast_path(),
                    "note": args.note,
                    "results": [asdict(r) for r in results],
                    "in_process_ns": inproc,
                },
                indent=2,
            ),
            encoding="utf-8",
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
