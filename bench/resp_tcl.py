"""Redis's own Tcl test suite against the sidecar and against Debian's redis-server, per file.

The suite is not part of this repository. Check out Redis 7.0.15's ``tests/`` and ``runtest``
once (any copy of the redis repository works; with a bare clone at ``REDIS_GIT``)::

    mkdir -p /tmp/redis-tcl
    git --git-dir=REDIS_GIT archive 7.0.15 tests runtest | tar -x -C /tmp/redis-tcl

Then, from the repository root (tclsh 8.6 and redis-server on the PATH; ~15 minutes)::

    .venv/bin/python bench/resp_tcl.py --suite /tmp/redis-tcl \
        --markdown bench/results/resp_tcl.md --json bench/results/resp_tcl.json

For every unit file both servers are started afresh on free loopback ports (so a test that
changes a setting cannot leak into the next file) and the file is run (``--single``) against
redis-server first and then the sidecar, with the same options: ``--host/--port``
(external-server mode, which skips tests tagged ``external:skip``), ``--tags`` excluding
``needs:debug needs:repl needs:save needs:config-maxmemory needs:reset needs:config-resetstat``
(DEBUG, replication, RDB persistence, eviction policies, RESET and CONFIG RESETSTAT tests),
``--ignore-encoding --ignore-digest`` (the suite's switches for servers whose internal
encodings differ: the sidecar's values are Python structures, not listpacks), ``--durable``
(a test that raises does not abort the file), ``--clients 1``.

The table counts tests reported ``[ok]``; the list under it names every test redis-server passes
and the sidecar does not.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import machine

__all__ = ["UNITS", "UnitResult", "main", "parse_output", "run_unit"]

UNITS = (
    "unit/type/string",
    "unit/type/incr",
    "unit/type/hash",
    "unit/type/list",
    "unit/type/set",
    "unit/type/zset",
    "unit/expire",
    "unit/multi",
    "unit/keyspace",
    "unit/pubsub",
    "unit/scripting",
)
DENIED_TAGS = (
    "needs:debug",
    "needs:repl",
    "needs:save",
    "needs:config-maxmemory",
    "needs:reset",
    "needs:config-resetstat",
)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_RESULT = re.compile(r"^\[(ok|err|exception|ignore|skip)\]: (.*?)(?: \(\d+ ms\))?$")


@dataclass
class UnitResult:
    """The outcome of one unit file against one server."""

    unit: str
    passed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    ignored: int = 0
    completed: bool = False
    seconds: float = 0.0


def parse_output(unit: str, text: str) -> UnitResult:
    """Count the ``[ok]``/``[err]`` lines of a ``runtest`` run."""
    result = UnitResult(unit)
    for raw in text.splitlines():
        line = _ANSI.sub("", raw).rstrip()
        match = _RESULT.match(line)
        if match is None:
            if "All tests passed" in line or "The following tests failed" in line:
                result.completed = True
            continue
        kind, name = match.groups()
        if kind == "ok":
            result.passed.append(name)
        elif kind in ("err", "exception"):
            result.failed.append(name.split(" in tests/")[0])
        else:
            result.ignored += 1
    return result


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    """Wait until something accepts connections on ``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


def start_redis(port: int, workdir: Path) -> subprocess.Popen[bytes]:
    """Debian's redis-server, without persistence."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found (apt-get install -y redis-server)")
    return subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
            "--daemonize",
            "no",
            "--loglevel",
            "warning",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def start_sidecar(port: int) -> subprocess.Popen[bytes]:
    """The sidecar, as ``strata resp`` would run it."""
    code = (
        "import sys; from stratacache.resp.cli import resp_command; "
        "resp_command.main(args=sys.argv[1:], standalone_mode=True)"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def run_unit(suite: Path, port: int, unit: str, timeout: float) -> UnitResult:
    """Run one unit file of the suite against the server on ``port``."""
    command = [
        "./runtest",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--single",
        unit,
        "--durable",
        "--ignore-encoding",
        "--ignore-digest",
        "--clients",
        "1",
        "--timeout",
        "120",
        "--tags",
        " ".join(f"-{tag}" for tag in DENIED_TAGS),
    ]
    started = time.monotonic()
    try:
        done = subprocess.run(
            command, cwd=suite, capture_output=True, text=True, timeout=timeout, check=False
        )
        output = done.stdout + done.stderr
    except subprocess.TimeoutExpired as exc:
        output = (
            (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        )
    result = parse_output(unit, output)
    result.seconds = time.monotonic() - started
    return result


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def markdown(pairs: list[tuple[UnitResult, UnitResult]], command: str, info: dict[str, str]) -> str:
    """The per-file table and the list of tests only redis-server passes."""
    lines = [
        "# Redis's Tcl test suite: redis-server vs the sidecar",
        "",
        machine.markdown_block(info, command),
    ]
    lines += [
        "| file | redis-server passed | sidecar passed | sidecar / redis | sidecar failed |",
        "|---|---:|---:|---:|---:|",
    ]
    total_redis = total_ours = 0
    for redis, ours in pairs:
        # Test names repeat (scripting runs each test for EVAL and for FUNCTION): count them
        # as multisets, so a test that passes once and fails once is counted once of each.
        both = Counter(ours.passed) & Counter(redis.passed)
        total_redis += len(redis.passed)
        total_ours += sum(both.values())
        ratio = sum(both.values()) / len(redis.passed) if redis.passed else 0.0
        note = "" if ours.completed else " (run did not finish)"
        lines.append(
            f"| {redis.unit} | {len(redis.passed)} | {len(ours.passed)} | {ratio:.1%} | "
            f"{len(ours.failed)}{note} |"
        )
    share = total_ours / total_redis if total_redis else 0.0
    lines += [
        f"| **all** | **{total_redis}** | **{total_ours}** | **{share:.1%}** | |",
        "",
        "The ratio counts the tests that pass on both servers, over those that pass on",
        "redis-server.",
        "",
        "## Tests redis-server passes and the sidecar does not",
        "",
    ]
    for redis, ours in pairs:
        missing = Counter(redis.passed) - Counter(ours.passed)
        if missing:
            lines.append(f"### {redis.unit} ({sum(missing.values())})")
            lines.append("")
            for name, count in missing.items():
                lines.append(f"- {name}" + (f" (x{count})" if count > 1 else ""))
            lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the comparison; write Markdown if asked."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", type=Path, default=Path("/tmp/redis-tcl"))
    parser.add_argument("--units", nargs="*", default=list(UNITS))
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--unit-timeout", type=float, default=900.0)
    args = parser.parse_args(argv)
    if not (args.suite / "runtest").exists():
        raise SystemExit(f"no Redis test suite in {args.suite}: see this script's docstring")
    pairs: list[tuple[UnitResult, UnitResult]] = []
    with tempfile.TemporaryDirectory() as workdir:
        for unit in args.units:
            # Fresh servers for every file: a test that changes a setting and fails before
            # restoring it must not change how the next file runs.
            redis_port, ours_port = free_port(), free_port()
            redis = start_redis(redis_port, Path(workdir))
            ours = start_sidecar(ours_port)
            try:
                wait_for_port(redis_port)
                wait_for_port(ours_port)
                theirs = run_unit(args.suite, redis_port, unit, args.unit_timeout)
                mine = run_unit(args.suite, ours_port, unit, args.unit_timeout)
            finally:
                _stop(ours)
                _stop(redis)
            pairs.append((theirs, mine))
            print(
                f"{unit:20s} redis {len(theirs.passed):4d}  sidecar {len(mine.passed):4d}"
                f"  ({theirs.seconds:.0f} s / {mine.seconds:.0f} s)",
                flush=True,
            )
    command = "python bench/resp_tcl.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = markdown(pairs, command, machine.describe())
    if args.markdown is not None:
        args.markdown.write_text(text, encoding="utf-8")
    else:
        print(text)
    if args.json is not None:
        raw = [
            {
                "unit": redis.unit,
                "redis": redis.passed,
                "sidecar": ours.passed,
                "failed": ours.failed,
            }
            for redis, ours in pairs
        ]
        args.json.write_text(json.dumps(raw, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
