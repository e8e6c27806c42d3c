"""Cache hits and misses through ``strata serve`` beside LiteLLM's caching proxy, driven by ``wrk``.

Every server runs as a subprocess on a free 127.0.0.1 port, started and stopped (by pid) by this
script, in one run:

- **upstream**: a minimal OpenAI-compatible chat-completions server (this file, re-run with
  ``--serve-upstream``; asyncio on uvloop, parsed by httptools) that answers every request after a
  fixed delay (``--upstream-latency-ms``, 50 by default) and counts its calls (``GET /calls``). It
  stands in for the provider, so a miss has a known, constant cost;
- **ours**: ``strata serve`` in front of that upstream, with a fresh temporary ``--data-dir``;
- **forwarder**: the floor for a proxy on our HTTP stack: a bare ASGI app on uvicorn (uvloop,
  httptools) that forwards each request to the upstream with aiohttp, as ``strata serve`` does,
  and caches nothing (this file, re-run with ``--serve-forwarder``). Its added latency is what
  any Python proxy built from these parts pays for the extra hop on this machine;
- **litellm**: LiteLLM's proxy (``litellm --config``) in front of the same upstream, with
  ``litellm_settings: cache: true`` and the in-memory ``local`` cache, started offline
  (``LITELLM_MASTER_KEY``, ``LITELLM_LOCAL_MODEL_COST_MAP=True``). It is installed in its own venv
  so it cannot change the project's; without it the LiteLLM rows are skipped with a message::

      python3 -m venv /tmp/litellm-venv && /tmp/litellm-venv/bin/pip install 'litellm[proxy]'

The load comes from ``wrk`` (Debian: ``apt-get install wrk``), a compiled generator, with a Lua
script per workload: a Python client tops out near 400 requests/s here and would measure itself.
One wrk thread (``--threads``) per run, so the load generator takes one core and leaves the other
to the server. What is measured:

1. **hits**: one fixed chat-completions body (temperature 0) POSTed over and over at concurrency 1,
   16 and 64, after one warming request and a check that the next answer is a hit (``X-Cache: HIT``
   for ours; for LiteLLM, that the upstream's call counter stays still). The upstream's counter is
   read before and after every timed run: any call during a hit run is reported beside the row.
2. **misses**: every request distinct (a per-run tag and a per-request counter in the user message,
   so nothing is ever found or coalesced), sent to the upstream directly, through the bare
   forwarder and through ours, at concurrency 1 and 16. The added latency of a miss is proxy -
   direct, for p50 and for p99 (a difference of percentiles, not a percentile of differences).

Each timed run is preceded by an untimed ``--warmup`` run of the same workload. Latencies are
wrk's (request written to response read, per request, HdrHistogram percentiles); req/s is
completed requests over the run's duration; CPU ms per request is the user + system time of the
server's process group (from ``/proc``) over the timed run, divided by the completed requests.

Targets (issue 3): hits/s at concurrency 16 at least 30 x LiteLLM's; p99 hit latency under 5 ms
(judged at concurrency 1 and 16: at 64, latency is queueing, about 64 / throughput); under 1 ms
added on a miss (judged on p50; p99 reported).

Run it from the repository root (about 2 minutes)::

    .venv/bin/python bench/proxy.py --markdown bench/results/proxy.md --json bench/results/proxy.json

and with an upstream that answers at once (``bench/results/proxy_upstream0.md``)::

    .venv/bin/python bench/proxy.py --no-litellm --upstream-latency-ms 0 \\
        --markdown bench/results/proxy_upstream0.md --json bench/results/proxy_upstream0.json

The numbers only mean something on a quiet machine: the load generator, the upstream and the
proxy share its cores.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, cast

import machine

__all__ = ["Comparison", "Run", "Settings", "main"]

COMMAND = (
    ".venv/bin/python bench/proxy.py --markdown bench/results/proxy.md "
    "--json bench/results/proxy.json"
)
LITELLM_VENV = Path("/tmp/litellm-venv")
MODEL = "gpt-4o-mini"
# LiteLLM checks this key (it must start with "sk-"); ours derives the tenant from it.
API_KEY = "sk-bench-0123456789abcdef"
SYSTEM = "You are a concise assistant. Answer in one short paragraph."
QUESTION = "What is the capital of France, and why did it become the capital?"
# A typical short answer, ~100 words, so a hit carries a realistic body (~1 KB).
ANSWER = (
    "Paris is the capital of France. It became the capital because the Capetian kings, whose "
    "domain centred on the Ile-de-France, made it their seat from the late tenth century; its "
    "position on the Seine, at a crossing of trade routes through a rich agricultural basin, "
    "made it wealthy and easy to supply, and the royal administration, the courts and the "
    "university grew up around the palace on the Ile de la Cite. By the time France unified, "
    "Paris was already its largest city and the centre of government, culture and commerce, "
    "a role the Revolution and every later regime kept."
)


# --- the upstream (child process) ----------------------------------------------------------------


def serve_upstream(port: int, latency: float) -> None:
    """Serve the benchmark's upstream on ``127.0.0.1:port`` until SIGTERM (runs in a child).

    ``POST /v1/chat/completions`` answers a fixed completion after ``latency`` seconds; ``GET
    /calls`` returns ``{"calls": N}`` at once. HTTP/1.1 keep-alive, no pipelining (none of the
    clients here pipeline).
    """
    import asyncio

    import httptools
    import orjson

    calls = 0

    def completion(raw: bytes, serial: int) -> bytes:
        try:
            model = orjson.loads(raw).get("model", MODEL)
        except (orjson.JSONDecodeError, AttributeError):
            model = MODEL
        return orjson.dumps(
            {
                "id": f"chatcmpl-bench-{serial}",
                "object": "chat.completion",
                "created": 1_700_000_000 + serial,
                "model": model,
                "system_fingerprint": "fp_bench",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": ANSWER, "refusal": None},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 32, "completion_tokens": 110, "total_tokens": 142},
            }
        )

    class Connection(asyncio.Protocol):
        def __init__(self) -> None:
            self.transport: asyncio.Transport | None = None
            self.parser = httptools.HttpRequestParser(self)
            self.url = b""
            self.body: list[bytes] = []

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            # uvloop's transports implement asyncio.Transport without subclassing it.
            self.transport = cast(asyncio.Transport, transport)

        def data_received(self, data: bytes) -> None:
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError:
                self.send(400, b'{"error": "bad request"}', keep_alive=False)

        def on_message_begin(self) -> None:
            self.url = b""
            self.body = []

        def on_url(self, url: bytes) -> None:
            self.url += url

        def on_body(self, body: bytes) -> None:
            self.body.append(body)

        def on_message_complete(self) -> None:
            nonlocal calls
            method = self.parser.get_method()
            path = self.url.split(b"?", 1)[0]
            keep_alive = self.parser.should_keep_alive()
            if method == b"POST" and path in (b"/v1/chat/completions", b"/chat/completions"):
                calls += 1
                payload = completion(b"".join(self.body), calls)
                asyncio.get_running_loop().call_later(latency, self.send, 200, payload, keep_alive)
            elif method == b"GET" and path == b"/calls":
                self.send(200, orjson.dumps({"calls": calls}), keep_alive)
            else:
                self.send(404, b'{"error": {"message": "not found"}}', keep_alive)

        def send(self, status: int, payload: bytes, keep_alive: bool) -> None:
            transport = self.transport
            if transport is None or transport.is_closing():
                return
            reason = {200: b"OK", 400: b"Bad Request", 404: b"Not Found"}[status]
            head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n" % (
                status,
                reason,
                len(payload),
            )
            if not keep_alive:
                head += b"connection: close\r\n"
            transport.write(head + b"\r\n" + payload)
            if not keep_alive:
                transport.close()

    async def run() -> None:
        loop = asyncio.get_running_loop()
        # Host and port, not a ready-made socket: asyncio then creates the listener with
        # IPPROTO_TCP and sets TCP_NODELAY on accepted connections (no 40 ms delayed-ACK stalls).
        server = await loop.create_server(Connection, "127.0.0.1", port, backlog=1024)
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        async with server:
            await stop.wait()

    try:
        import uvloop
    except ImportError:
        asyncio.run(run())
    else:
        uvloop.run(run())


def serve_forwarder(port: int, upstream_url: str) -> None:
    """Forward every request to ``upstream_url`` and relay the answer; nothing else (a child).

    The floor a Python proxy on our stack starts from: uvicorn with uvloop and httptools, one
    keep-alive aiohttp session to the upstream, the body read whole and sent back whole.
    """
    import aiohttp
    import uvicorn

    session: aiohttp.ClientSession | None = None
    forwarded = (b"authorization", b"content-type")

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        nonlocal session
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            if session is not None:
                await session.close()
            await send({"type": "lifespan.shutdown.complete"})
            return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        if session is None:
            session = aiohttp.ClientSession()
        headers = {k.decode(): v.decode() for k, v in scope["headers"] if k in forwarded}
        url = upstream_url + scope["path"]
        async with session.request(
            scope["method"], url, data=b"".join(chunks), headers=headers
        ) as reply:
            body = await reply.read()
            head = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
            await send({"type": "http.response.start", "status": reply.status, "headers": head})
            await send({"type": "http.response.body", "body": body})

    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )


# --- processes and HTTP --------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True, slots=True)
class Reply:
    """One HTTP response read by :func:`http`."""

    status: int
    headers: dict[str, str]
    body: bytes


def http(
    url: str, body: bytes | None = None, *, token: str | None = None, timeout: float = 10.0
) -> Reply:
    """GET (``body`` None) or POST JSON ``body`` to ``url``; any status is returned, not raised."""
    headers = {"Content-Type": "application/json"} if body is not None else {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Reply(
                response.status,
                {k.lower(): v for k, v in response.headers.items()},
                response.read(),
            )
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read())


class Server:
    """A server subprocess in its own process group, output to a log file, stopped by pid."""

    def __init__(
        self, name: str, argv: Sequence[str], *, log: Path, env: dict[str, str] | None = None
    ) -> None:
        self.name = name
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=machine.REPO_ROOT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        """The server's process id (also its process group id)."""
        return self.process.pid

    def wait_ready(self, url: str, timeout: float) -> None:
        """Poll ``url`` until it answers 200; raise (with the log's tail) if it never does."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            with contextlib.suppress(OSError):
                if http(url, timeout=2.0).status == 200:
                    return
            time.sleep(0.1)
        self.stop()
        tail = self.log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{self.name} did not become ready at {url}; its log ends:\n{tail}")

    def stop(self) -> None:
        """SIGTERM the server's process group (its own: it was started in a new session)."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=5)


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU seconds of the live processes in process group ``pgid``."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # the process ended while we looked
            continue
        # After the command name (in parentheses, may hold spaces): state, ppid, pgrp, ...
        fields = text.rpartition(")")[2].split()
        if int(fields[2]) == pgid:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


# --- wrk -----------------------------------------------------------------------------------------

_LUA_COMMON = """\
wrk.method = "POST"
wrk.path = "/v1/chat/completions"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer %(key)s"

local thread_no = 0
function setup(thread)
  thread_no = thread_no + 1
  thread:set("tid", thread_no)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "WRKJSON {\\"requests\\": %%d, \\"duration_us\\": %%d, \\"p50_us\\": %%.0f, " ..
    "\\"p90_us\\": %%.0f, \\"p99_us\\": %%.0f, \\"max_us\\": %%.0f, \\"mean_us\\": %%.1f, " ..
    "\\"connect\\": %%d, \\"read\\": %%d, \\"write\\": %%d, \\"status\\": %%d, " ..
    "\\"timeout\\": %%d}\\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""

_LUA_HIT = """\
wrk.body = [==[%(body)s]==]
"""

# Every request distinct: the run's tag (wrk argument), the thread and a per-thread counter.
_LUA_MISS = """\
local prefix = [==[%(prefix)s]==]
local suffix = [==[%(suffix)s]==]
local tag = "run"
local counter = 0
function init(args)
  if args[1] then tag = args[1] end
end
function request()
  counter = counter + 1
  local body = prefix .. tag .. "-" .. tostring(tid) .. "-" .. counter .. suffix
  return wrk.format(nil, nil, nil, body)
end
"""

_MARK = "@@QUESTION@@"


def chat_body(question: str = QUESTION) -> bytes:
    """The benchmark's chat-completions request body (temperature 0: cacheable)."""
    body = {
        "model": MODEL,
        "temperature": 0,
        "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": question},
        ],
    }
    return json.dumps(body, separators=(",", ":")).encode()


def write_scripts(directory: Path) -> dict[str, Path]:
    """Write the hit and miss Lua scripts into ``directory``; return their paths by workload."""
    common = _LUA_COMMON % {"key": API_KEY}
    hit = directory / "hit.lua"
    hit.write_text(common + _LUA_HIT % {"body": chat_body().decode()})
    prefix, suffix = chat_body(f"Question {_MARK}: {QUESTION}").decode().split(_MARK)
    miss = directory / "miss.lua"
    miss.write_text(common + _LUA_MISS % {"prefix": prefix, "suffix": suffix})
    return {"hit": hit, "miss": miss}


@dataclass(frozen=True, slots=True)
class Run:
    """One timed wrk run against one server."""

    server: str
    """``ours``, ``litellm`` or ``upstream`` (direct)."""
    workload: str
    """``hit`` or ``miss``."""
    concurrency: int
    """Open connections, each with one request in flight."""
    seconds: float
    """Measured duration of the run."""
    requests: int
    """Completed requests."""
    p50_ms: float
    """Median latency."""
    p90_ms: float
    """90th percentile latency."""
    p99_ms: float
    """99th percentile latency."""
    max_ms: float
    """Slowest request."""
    mean_ms: float
    """Mean latency."""
    errors: int
    """Socket errors and timeouts (connect, read, write, timeout)."""
    non_2xx: int
    """Responses whose status was not 2xx/3xx."""
    upstream_calls: int
    """Calls the upstream received during the run (0 for a run of pure hits)."""
    server_cpu_ms: float
    """CPU time (user + system) the server's processes spent per completed request."""

    @property
    def rps(self) -> float:
        """Completed requests per second."""
        return self.requests / self.seconds if self.seconds > 0 else 0.0


def wrk(
    settings: Settings,
    script: Path,
    base_url: str,
    *,
    concurrency: int,
    seconds: int,
    tag: str,
) -> dict[str, Any]:
    """Run wrk once and return the numbers its ``done`` hook printed."""
    threads = max(1, min(settings.threads, concurrency))
    argv = [
        settings.wrk,
        f"-t{threads}",
        f"-c{concurrency}",
        f"-d{seconds}s",
        "--timeout",
        "30s",
        "-s",
        str(script),
        base_url,
        "--",
        tag,
    ]
    out = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=seconds + 60)
    for line in out.stdout.splitlines():
        if line.startswith("WRKJSON "):
            numbers: dict[str, Any] = json.loads(line.removeprefix("WRKJSON "))
            return numbers
    raise RuntimeError(f"wrk printed no result:\n{out.stdout}\n{out.stderr}")


class Bench:
    """The state of one benchmark run: settings, scripts, upstream, and the runs so far."""

    def __init__(
        self, settings: Settings, workdir: Path, upstream_url: str, upstream_pid: int
    ) -> None:
        self.settings = settings
        self.scripts = write_scripts(workdir)
        self.upstream_url = upstream_url
        self.upstream_pid = upstream_pid
        self.runs: list[Run] = []
        self._tags = 0

    def upstream_calls(self) -> int:
        """The upstream's call counter."""
        reply = http(f"{self.upstream_url}/calls")
        calls: int = json.loads(reply.body)["calls"]
        return calls

    def measure(
        self, server: str, workload: str, base_url: str, concurrency: int, *, pgid: int
    ) -> Run:
        """One untimed warm-up run, then one timed run; print and keep the timed one.

        ``pgid`` is the server's process group: its CPU time over the timed run is recorded.
        """
        script = self.scripts[workload]
        self._tags += 1
        if self.settings.warmup > 0:
            wrk(
                self.settings,
                script,
                base_url,
                concurrency=concurrency,
                seconds=self.settings.warmup,
                tag=f"w{self._tags}",
            )
        before = self.upstream_calls()
        cpu_before = group_cpu_seconds(pgid)
        raw = wrk(
            self.settings,
            script,
            base_url,
            concurrency=concurrency,
            seconds=self.settings.duration,
            tag=f"t{self._tags}",
        )
        cpu = group_cpu_seconds(pgid) - cpu_before
        calls = self.upstream_calls() - before
        if server == "upstream":
            calls = 0  # the direct run's own requests, not calls made on its behalf
        run = Run(
            server=server,
            workload=workload,
            concurrency=concurrency,
            seconds=raw["duration_us"] / 1e6,
            requests=raw["requests"],
            p50_ms=raw["p50_us"] / 1e3,
            p90_ms=raw["p90_us"] / 1e3,
            p99_ms=raw["p99_us"] / 1e3,
            max_ms=raw["max_us"] / 1e3,
            mean_ms=raw["mean_us"] / 1e3,
            errors=raw["connect"] + raw["read"] + raw["write"] + raw["timeout"],
            non_2xx=raw["status"],
            upstream_calls=calls,
            server_cpu_ms=1e3 * cpu / raw["requests"] if raw["requests"] else 0.0,
        )
        self.runs.append(run)
        print(
            f"  {server:8} {workload:4} c={concurrency:<3} {run.rps:9.1f} req/s  "
            f"p50 {run.p50_ms:8.3f} ms  p99 {run.p99_ms:8.3f} ms  cpu {run.server_cpu_ms:.3f} ms/req  "
            f"errors {run.errors + run.non_2xx}  upstream calls {calls}",
            flush=True,
        )
        return run


# --- the servers ---------------------------------------------------------------------------------


@contextlib.contextmanager
def running(server: Server) -> Iterator[Server]:
    """Stop ``server`` when the block ends, however it ends."""
    try:
        yield server
    finally:
        server.stop()


def check_ours_hit(base_url: str) -> dict[str, str]:
    """Warm ours with one request; check the next one is an ``X-Cache: HIT``. Its cache headers."""
    first = http(f"{base_url}/v1/chat/completions", chat_body(), token=API_KEY)
    if first.status != 200:
        raise RuntimeError(f"ours answered {first.status} to the warming request: {first.body!r}")
    second = http(f"{base_url}/v1/chat/completions", chat_body(), token=API_KEY)
    if second.status != 200 or second.headers.get("x-cache") != "HIT":
        raise RuntimeError(
            f"the second request was not a hit: {second.status}, headers {second.headers}"
        )
    return {
        "first": first.headers.get("x-cache", "?"),
        "second": second.headers.get("x-cache", "?"),
        "tier": second.headers.get("x-cache-tier", "?"),
    }


def check_litellm_hit(bench: Bench, base_url: str) -> dict[str, str]:
    """Warm LiteLLM; wait until a request is answered without calling the upstream."""
    first = http(f"{base_url}/v1/chat/completions", chat_body(), token=API_KEY, timeout=60)
    if first.status != 200:
        raise RuntimeError(
            f"LiteLLM answered {first.status} to the warming request: {first.body!r}"
        )
    # LiteLLM may write its cache after answering: give it a few tries.
    for _ in range(20):
        before = bench.upstream_calls()
        again = http(f"{base_url}/v1/chat/completions", chat_body(), token=API_KEY, timeout=60)
        if again.status == 200 and bench.upstream_calls() == before:
            # LiteLLM sends x-litellm-cache-key only with an answer from its cache.
            return {
                "verified_by": "upstream call counter unchanged on a repeated request",
                "x-litellm-cache-key on the first request": first.headers.get(
                    "x-litellm-cache-key", "(absent)"
                ),
                "x-litellm-cache-key on the hit": again.headers.get(
                    "x-litellm-cache-key", "(absent)"
                ),
            }
        time.sleep(0.25)
    raise RuntimeError("LiteLLM never answered the repeated request from its cache")


def bench_ours(bench: Bench, workdir: Path, python: str) -> dict[str, str]:
    """Hits at every concurrency, then misses beside the upstream measured directly."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    argv = [
        python,
        "-m",
        "stratacache.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--upstream",
        f"{bench.upstream_url}/v1",
        "--data-dir",
        str(workdir / "strata-data"),
        "--log-level",
        "warning",
        # The exact cache's costs: a semantic lookup embeds every miss (bench/semantic.py).
        "--no-semantic",
    ]
    print(f"ours: strata serve on {base}", flush=True)
    with running(Server("strata serve", argv, log=workdir / "strata.log")) as server:
        server.wait_ready(f"{base}/healthz", timeout=60)
        print(f"  pid {server.pid}", flush=True)
        check = check_ours_hit(base)
        for concurrency in bench.settings.concurrency:
            bench.measure("ours", "hit", base, concurrency, pgid=server.pid)
        for concurrency in bench.settings.miss_concurrency:
            bench.measure(
                "upstream", "miss", bench.upstream_url, concurrency, pgid=bench.upstream_pid
            )
            bench.measure("ours", "miss", base, concurrency, pgid=server.pid)
    return check


def bench_forwarder(bench: Bench, workdir: Path, python: str) -> None:
    """The miss workload through the bare forwarder: the stack's own cost of a hop."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    argv = [python, str(Path(__file__).resolve()), "--serve-forwarder", str(port)]
    argv += ["--upstream-url", bench.upstream_url]
    print(f"forwarder: {base}", flush=True)
    with running(Server("forwarder", argv, log=workdir / "forwarder.log")) as server:
        server.wait_ready(f"{base}/calls", timeout=60)
        for concurrency in bench.settings.miss_concurrency:
            bench.measure("forwarder", "miss", base, concurrency, pgid=server.pid)


def litellm_config(upstream_url: str) -> dict[str, Any]:
    """LiteLLM's proxy config: one openai/ model at the upstream, the in-memory cache on."""
    return {
        "model_list": [
            {
                "model_name": MODEL,
                "litellm_params": {
                    "model": f"openai/{MODEL}",
                    "api_base": f"{upstream_url}/v1",
                    "api_key": "sk-upstream-not-checked",
                },
            }
        ],
        "litellm_settings": {
            "cache": True,
            "cache_params": {"type": "local"},
            "set_verbose": False,
        },
        "general_settings": {"master_key": "os.environ/LITELLM_MASTER_KEY"},
    }


def bench_litellm(bench: Bench, workdir: Path, venv: Path) -> dict[str, str]:
    """The hit workload against LiteLLM's proxy with its in-memory cache."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    config = workdir / "litellm.yaml"
    # JSON is YAML: no YAML library needed here.
    config.write_text(json.dumps(litellm_config(bench.upstream_url), indent=2))
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("OPENAI_", "LITELLM_", "DATABASE_", "REDIS_"))
    }
    env.update(
        {
            "LITELLM_MASTER_KEY": API_KEY,
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_LOG": "ERROR",
        }
    )
    argv = [
        str(venv / "bin" / "litellm"),
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    print(f"litellm: {litellm_version(venv)} on {base} (starting takes a while)", flush=True)
    with running(Server("litellm", argv, log=workdir / "litellm.log", env=env)) as server:
        server.wait_ready(f"{base}/health/liveliness", timeout=240)
        print(f"  pid {server.pid}", flush=True)
        check = check_litellm_hit(bench, base)
        for concurrency in bench.settings.concurrency:
            bench.measure("litellm", "hit", base, concurrency, pgid=server.pid)
    return check


def litellm_version(venv: Path) -> str:
    """The version of LiteLLM installed in ``venv``."""
    out = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import importlib.metadata as m; print(m.version('litellm'))",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    return out.stdout.strip() or "unknown"


# --- results -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Settings:
    """What one run of the benchmark does."""

    duration: int = 8
    """Seconds per timed wrk run (wrk takes whole seconds)."""
    warmup: int = 1
    """Seconds of untimed warm-up before each timed run (0: none)."""
    upstream_latency_ms: float = 50.0
    concurrency: tuple[int, ...] = (1, 16, 64)
    miss_concurrency: tuple[int, ...] = (1, 16)
    threads: int = 1
    wrk: str = "wrk"
    litellm_venv: str = str(LITELLM_VENV)
    skip_litellm: bool = False


@dataclass(frozen=True, slots=True)
class Comparison:
    """The derived figures and the targets of issue 3."""

    hit_ratio_c16: float | None
    """ours hits/s / LiteLLM hits/s at concurrency 16 (None without LiteLLM)."""
    cpu_ratio_c16: float | None = None
    """LiteLLM's server CPU time per hit / ours, at concurrency 16 (None without LiteLLM)."""
    added_ms: dict[int, tuple[float, float]] = field(default_factory=dict)
    """Per miss concurrency: (p50, p99) of proxy miss - upstream direct, in ms."""
    floor_ms: dict[int, tuple[float, float]] = field(default_factory=dict)
    """Per miss concurrency: (p50, p99) of bare forwarder - upstream direct, in ms."""
    targets: list[tuple[str, str, bool | None]] = field(default_factory=list)
    """(target, measured, met); met None when it could not be measured."""


def compare(runs: Sequence[Run], settings: Settings) -> Comparison:
    """Ratios, added miss latency and the verdict on each target."""

    def find(server: str, workload: str, concurrency: int) -> Run | None:
        for run in runs:
            if (run.server, run.workload, run.concurrency) == (server, workload, concurrency):
                return run
        return None

    ours16 = find("ours", "hit", 16)
    lite16 = find("litellm", "hit", 16)
    ratio = ours16.rps / lite16.rps if ours16 and lite16 and lite16.rps > 0 else None
    cpu_ratio = (
        lite16.server_cpu_ms / ours16.server_cpu_ms
        if ours16 and lite16 and ours16.server_cpu_ms > 0
        else None
    )
    added: dict[int, tuple[float, float]] = {}
    floor: dict[int, tuple[float, float]] = {}
    for c in settings.miss_concurrency:
        ours, direct = find("ours", "miss", c), find("upstream", "miss", c)
        forwarder = find("forwarder", "miss", c)
        if ours and direct:
            added[c] = (ours.p50_ms - direct.p50_ms, ours.p99_ms - direct.p99_ms)
        if forwarder and direct:
            floor[c] = (forwarder.p50_ms - direct.p50_ms, forwarder.p99_ms - direct.p99_ms)
    targets: list[tuple[str, str, bool | None]] = [
        (
            "hits/s at c=16 ≥ 30 x LiteLLM's",
            f"{ratio:.1f} x" if ratio is not None else "LiteLLM not measured",
            ratio >= 30 if ratio is not None else None,
        )
    ]
    for c in (1, 16):
        run = find("ours", "hit", c)
        if run is not None:
            targets.append(
                (f"p99 hit latency < 5 ms at c={c}", f"{run.p99_ms:.2f} ms", run.p99_ms < 5)
            )
    for c, (p50, p99) in added.items():
        targets.append(
            (
                f"added latency on a miss < 1 ms at c={c} (p50; p99 for information)",
                f"p50 {p50:+.2f} ms, p99 {p99:+.2f} ms",
                p50 < 1,
            )
        )
    return Comparison(
        hit_ratio_c16=ratio,
        cpu_ratio_c16=cpu_ratio,
        added_ms=added,
        floor_ms=floor,
        targets=targets,
    )


def _verdict(met: bool | None) -> str:
    return "n/a" if met is None else ("meets" if met else "MISSES")


def markdown(
    info: dict[str, str],
    runs: Sequence[Run],
    comparison: Comparison,
    settings: Settings,
    notes: Sequence[str],
) -> str:
    """The results as Markdown: machine block, hit table, miss table, targets."""
    out = [
        "# Proxy: cache hits and misses, ours beside LiteLLM\n\n",
        machine.markdown_block(info, COMMAND),
    ]
    out.append(
        f"\nwrk, {settings.threads} thread(s), {settings.duration:g} s per timed run after a "
        f"{settings.warmup:g} s warm-up; upstream latency {settings.upstream_latency_ms:g} ms. "
        "Latencies in ms. `upstream calls` counts calls the upstream received during the timed "
        "run: 0 means every answer was a cache hit. `CPU ms` is the user + system CPU time of "
        "the server's processes per completed request over the timed run (less sensitive to a "
        "busy machine than the latencies).\n"
    )
    out.append("\n## Cache hits\n")
    out.append(
        "\n| server | concurrency | hits/s | p50 | p90 | p99 | max | server CPU ms/hit | errors "
        "| upstream calls |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    for run in runs:
        if run.workload == "hit":
            out.append(
                f"| {run.server} | {run.concurrency} | {run.rps:,.0f} | {run.p50_ms:.2f} | "
                f"{run.p90_ms:.2f} | {run.p99_ms:.2f} | {run.max_ms:.2f} | "
                f"{run.server_cpu_ms:.3f} | {run.errors + run.non_2xx} | {run.upstream_calls} |\n"
            )
    if comparison.hit_ratio_c16 is not None:
        out.append(f"\nours / LiteLLM hits/s at c=16: **{comparison.hit_ratio_c16:.1f} x**\n")
    if comparison.cpu_ratio_c16 is not None:
        out.append(
            f"\nLiteLLM / ours server CPU time per hit at c=16: "
            f"**{comparison.cpu_ratio_c16:.1f} x** (what the throughput ratio would be if each "
            "had a core to itself)\n"
        )
    out.append("\n## Misses: latency added by the proxy\n")
    out.append(
        "\nEvery request distinct. `direct` calls the upstream itself; `ours` goes through "
        "`strata serve` (lookup, upstream call, validate, sign, store in L0 and SQLite). Added = "
        "ours - direct, per percentile.\n\n"
        "| concurrency | direct req/s | direct p50 | direct p99 | ours req/s | ours p50 | ours p99 "
        "| added p50 | added p99 | upstream CPU ms/req | ours CPU ms/miss | ours errors "
        "| upstream calls |\n"
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    for c, (p50, p99) in comparison.added_ms.items():
        ours = next(r for r in runs if (r.server, r.workload, r.concurrency) == ("ours", "miss", c))
        direct = next(
            r for r in runs if (r.server, r.workload, r.concurrency) == ("upstream", "miss", c)
        )
        out.append(
            f"| {c} | {direct.rps:,.1f} | {direct.p50_ms:.2f} | {direct.p99_ms:.2f} | "
            f"{ours.rps:,.1f} | {ours.p50_ms:.2f} | {ours.p99_ms:.2f} | {p50:+.2f} | {p99:+.2f} | "
            f"{direct.server_cpu_ms:.3f} | {ours.server_cpu_ms:.3f} | "
            f"{ours.errors + ours.non_2xx} | {ours.upstream_calls} |\n"
        )
    if comparison.floor_ms:
        out.append(
            "\nThe same misses through the bare forwarder (uvicorn + httptools + aiohttp, no "
            "cache): the hop's own cost on this stack and machine.\n\n"
            "| concurrency | forwarder req/s | forwarder p50 | forwarder p99 | added p50 | added p99 "
            "| forwarder CPU ms/req | ours added p50 - forwarder added p50 |\n"
            "|---:|---:|---:|---:|---:|---:|---:|---:|\n"
        )
        for c, (p50, p99) in comparison.floor_ms.items():
            run = next(
                r for r in runs if (r.server, r.workload, r.concurrency) == ("forwarder", "miss", c)
            )
            ours_added = comparison.added_ms.get(c)
            beyond = f"{ours_added[0] - p50:+.2f}" if ours_added is not None else "-"
            out.append(
                f"| {c} | {run.rps:,.1f} | {run.p50_ms:.2f} | {run.p99_ms:.2f} | {p50:+.2f} | "
                f"{p99:+.2f} | {run.server_cpu_ms:.3f} | {beyond} |\n"
            )
    out.append("\n## Targets (issue 3)\n\n| target | measured | verdict |\n|---|---|---|\n")
    for name, measured, met in comparison.targets:
        out.append(f"| {name} | {measured} | {_verdict(met)} |\n")
    if notes:
        out.append("\n## Notes\n\n" + "".join(f"- {note}\n" for note in notes))
    return "".join(out)


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=int, default=8, help="whole seconds per timed wrk run")
    parser.add_argument(
        "--warmup", type=int, default=1, help="whole seconds of untimed warm-up (0: none)"
    )
    parser.add_argument("--upstream-latency-ms", type=float, default=50.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--miss-concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--litellm-venv", default=str(LITELLM_VENV))
    parser.add_argument("--no-litellm", action="store_true", help="skip LiteLLM")
    parser.add_argument("--json", type=Path, help="write the raw results here")
    parser.add_argument("--markdown", type=Path, help="write the Markdown report here")
    parser.add_argument("--serve-upstream", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--serve-forwarder", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--upstream-url", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; return the exit status (1 if a server or wrk is missing or fails)."""
    args = _parse_args(argv)
    if args.serve_upstream is not None:
        serve_upstream(args.serve_upstream, args.upstream_latency_ms / 1000)
        return 0
    if args.serve_forwarder is not None:
        serve_forwarder(args.serve_forwarder, args.upstream_url)
        return 0
    wrk_path = shutil.which("wrk")
    if wrk_path is None:
        print("wrk is not installed: apt-get install -y wrk", file=sys.stderr)
        return 1
    settings = Settings(
        duration=args.duration,
        warmup=args.warmup,
        upstream_latency_ms=args.upstream_latency_ms,
        concurrency=tuple(args.concurrency),
        miss_concurrency=tuple(args.miss_concurrency),
        threads=args.threads,
        wrk=wrk_path,
        litellm_venv=args.litellm_venv,
        skip_litellm=args.no_litellm,
    )
    info = machine.describe()
    for package in ("uvicorn", "uvloop", "httptools", "starlette", "httpx", "orjson"):
        info[package] = _version(package)
    info["wrk"] = subprocess.run(
        [wrk_path, "-v"], capture_output=True, text=True, check=False
    ).stdout.splitlines()[0]
    venv = Path(settings.litellm_venv)
    notes: list[str] = []
    checks: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="strata-bench-proxy-") as tmp:
        workdir = Path(tmp)
        port = free_port()
        upstream_url = f"http://127.0.0.1:{port}"
        upstream = Server(
            "upstream",
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--serve-upstream",
                str(port),
                "--upstream-latency-ms",
                f"{settings.upstream_latency_ms:g}",
            ],
            log=workdir / "upstream.log",
        )
        with running(upstream):
            upstream.wait_ready(f"{upstream_url}/calls", timeout=30)
            print(f"upstream: {upstream_url}, pid {upstream.pid}", flush=True)
            bench = Bench(settings, workdir, upstream_url, upstream.pid)
            checks["ours"] = bench_ours(bench, workdir, sys.executable)
            bench_forwarder(bench, workdir, sys.executable)
            if settings.skip_litellm:
                notes.append("LiteLLM skipped (--no-litellm).")
            elif not (venv / "bin" / "litellm").exists():
                message = (
                    f"LiteLLM skipped: no {venv}/bin/litellm. Create it with: python3 -m venv "
                    f"{venv} && {venv}/bin/pip install 'litellm[proxy]'"
                )
                print(message, flush=True)
                notes.append(message)
            else:
                info["litellm"] = litellm_version(venv)
                try:
                    checks["litellm"] = bench_litellm(bench, workdir, venv)
                except RuntimeError as exc:  # keep our own results; say why the peer is missing
                    print(f"LiteLLM failed: {exc}", file=sys.stderr, flush=True)
                    notes.append(f"LiteLLM failed: {str(exc).splitlines()[0]}")
    info["load average at the end (1/5/15 min)"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    comparison = compare(bench.runs, settings)
    print()
    if comparison.cpu_ratio_c16 is not None:
        print(f"LiteLLM / ours CPU per hit at c=16: {comparison.cpu_ratio_c16:.1f} x")
    for name, measured, met in comparison.targets:
        print(f"{_verdict(met):7} {name}: {measured}")
    if args.json is not None:
        payload = {
            "machine": info,
            "settings": asdict(settings),
            "checks": checks,
            "runs": [{**asdict(run), "rps": run.rps} for run in bench.runs],
            "hit_ratio_c16": comparison.hit_ratio_c16,
            "cpu_ratio_c16": comparison.cpu_ratio_c16,
            "added_ms": {str(c): {"p50": a, "p99": b} for c, (a, b) in comparison.added_ms.items()},
            "forwarder_added_ms": {
                str(c): {"p50": a, "p99": b} for c, (a, b) in comparison.floor_ms.items()
            },
            "targets": [
                {"target": name, "measured": measured, "met": met}
                for name, measured, met in comparison.targets
            ],
            "notes": notes,
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    if args.markdown is not None:
        args.markdown.write_text(markdown(info, bench.runs, comparison, settings, notes))
    return 0


if __name__ == "__main__":
    sys.exit(main())
