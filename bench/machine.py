"""What a benchmark result was measured on: machine, CPU, Python, package versions, date.

Every committed result under ``bench/results/`` starts with this block (STYLE.md habit 8), so a
number can always be traced to the machine and the versions that produced it.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

__all__ = ["REPO_ROOT", "describe", "markdown_block"]

REPO_ROOT = Path(__file__).resolve().parents[1]
"""The repository's root (``bench/`` is directly under it)."""

_PACKAGES = ("stratacache", "cachetools", "cachebox", "numpy", "xxhash")


def _cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.processor() or "unknown"
    for line in text.splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.processor() or "unknown"


def _run(*command: str) -> str:
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip()


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def describe() -> dict[str, str]:
    """The machine, interpreter, package versions, commit and UTC date, as strings."""
    load = " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    info = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "uname -a": _run("uname", "-a") or " ".join(platform.uname()),
        "cpu": f"{_cpu_model()} x {os.cpu_count()}",
        "load average (1/5/15 min)": load,
        "python": f"{sys.version.split()[0]} ({platform.python_implementation()}, "
        f"{sys.executable})",
        "commit": _run("git", "-C", str(REPO_ROOT), "describe", "--always", "--dirty")
        or "unknown (no commit yet)",
    }
    for package in _PACKAGES:
        info[package] = _version(package)
    return info


def markdown_block(info: dict[str, str], command: str) -> str:
    """``info`` and the command that produced a result, as a Markdown list."""
    lines = [f"- command: `{command}`"]
    lines += [f"- {key}: {value}" for key, value in info.items()]
    return "\n".join(lines) + "\n"
