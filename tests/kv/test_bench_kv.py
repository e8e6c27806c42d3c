"""``bench/kv.py`` runs end to end on a tiny model and writes its report (no timing is judged)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

_BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(_BENCH) not in sys.path:
    sys.path.insert(0, str(_BENCH))  # bench scripts import their helpers (machine) by bare name

# Loaded by path under its own name: ``kv`` alone would be this test package.
_spec = importlib.util.spec_from_file_location("bench_kv", _BENCH / "kv.py")
assert _spec is not None
assert _spec.loader is not None
bench_kv = importlib.util.module_from_spec(_spec)
sys.modules["bench_kv"] = bench_kv  # dataclasses look their module up there
_spec.loader.exec_module(bench_kv)


def test_the_benchmark_runs_and_reports_every_section(tmp_path: Path) -> None:
    printed: list[str] = []
    argv = [
        "--prefix", "32", "--prefix", "64", "--block-size", "16", "--repeats", "1",
        "--layers", "1", "--hidden", "32", "--heads", "4", "--kv-heads", "2", "--vocab", "64",
        "--threads", "1", "--markdown", str(tmp_path / "kv.md"), "--json", str(tmp_path / "kv.json"),
    ]  # fmt: skip
    assert bench_kv.main(argv, out=printed.append) == 0
    report = (tmp_path / "kv.md").read_text(encoding="utf-8")
    assert report == printed[0]
    for heading in ("## Time to first token", "## Load time per MiB", "## Overhead when nothing"):
        assert heading in report
    data = json.loads((tmp_path / "kv.json").read_text(encoding="utf-8"))
    tiers = {row["tier"] for row in data["load"]}
    assert {"memory", "disk"} <= tiers
    assert [row["prefix_tokens"] for row in data["ttft"] if row["tier"] == "memory"] == [32, 64]
    assert all(row["reused_tokens"] == row["prefix_tokens"] for row in data["ttft"])
    assert all(row["max_logit_diff"] <= 1e-5 for row in data["ttft"])
    assert data["miss"][0]["prompt_tokens"] == 64 + 32
