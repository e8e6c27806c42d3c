"""The RESP benchmark scripts' parsers: redis-benchmark CSV and the Tcl suite's output.

``bench/`` is a directory of scripts, not a package (see tests/bench); it is put on the path the
same way the scripts run.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

_BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(_BENCH) not in sys.path:
    sys.path.insert(0, str(_BENCH))


def _script(name: str) -> ModuleType:
    # Loaded by path: "resp" would otherwise resolve to this test package.
    spec = importlib.util.spec_from_file_location(f"bench_{name}", _BENCH / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


resp = _script("resp")
resp_tcl = _script("resp_tcl")


def test_redis_benchmark_csv_is_parsed() -> None:
    text = (
        '"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms",'
        '"p99_latency_ms","max_latency_ms"\n'
        '"GET","123456.78","0.2","0.1","0.191","0.3","0.455","1.2"\n'
        "garbage line\n"
    )
    assert resp.parse_csv(text) == [("GET", 123456.78, 0.191, 0.455)]


def test_tcl_output_is_counted_per_test() -> None:
    output = (
        "\x1b[0;32;49mok\x1b[0m\n"
        "[\x1b[0;32;49mok\x1b[0m]: EVAL - works (3 ms)\n"
        "[ok]: EVAL - works (1 ms)\n"
        "[err]: Broken thing in tests/unit/x.tcl\n"
        "[ignore]: Needs debug: Tag: needs:debug denied\n"
        "[exception]: Exploded in tests/unit/x.tcl\n"
        "!!! WARNING The following tests failed:\n"
    )
    result = resp_tcl.parse_output("unit/x", output)
    assert result.passed == ["EVAL - works", "EVAL - works"]
    assert result.failed == ["Broken thing", "Exploded"]
    assert result.ignored == 1
    assert result.completed


def test_tcl_table_counts_repeated_names_as_multisets() -> None:
    theirs = resp_tcl.UnitResult("unit/s", passed=["a", "a", "b"], completed=True)
    mine = resp_tcl.UnitResult("unit/s", passed=["a", "b"], failed=["a"], completed=True)
    text = resp_tcl.markdown([(theirs, mine)], "cmd", {"date": "today"})
    assert "| unit/s | 3 | 2 | 66.7% | 1 |" in text
    assert "- a" in text


def test_cpu_seconds_of_a_process_grow_with_its_work() -> None:
    import os

    if not Path(f"/proc/{os.getpid()}/stat").exists():
        return  # not Linux: the column reads NaN
    before = resp.cpu_seconds(os.getpid())
    deadline = before + 0.05
    total = 0
    while resp.cpu_seconds(os.getpid()) < deadline:  # spins until 50 ms of CPU were used
        total += sum(range(10_000))
    assert resp.cpu_seconds(os.getpid()) >= before + 0.05
    assert resp.cpu_seconds(2**22 + 12345) != resp.cpu_seconds(2**22 + 12345)  # NaN: no process
