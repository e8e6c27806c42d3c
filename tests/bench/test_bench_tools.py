"""The benchmark tools: trace readers on tiny files written here, policies on known answers.

``bench/`` is a directory of scripts, not a package; its modules import each other by bare name
(the scripts run as ``python bench/NAME.py``, which puts ``bench/`` first on ``sys.path``), so the
tests put it on the path the same way.
"""

from __future__ import annotations

import gzip
import itertools
import json
import lzma
import random
import struct
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

_BENCH = Path(__file__).resolve().parents[2] / "bench"
if str(_BENCH) not in sys.path:
    sys.path.insert(0, str(_BENCH))

import policies  # noqa: E402
import traces  # noqa: E402

# --- trace readers -------------------------------------------------------------------------------


def _write(path: Path, data: bytes, compression: str) -> Path:
    if compression == "gzip":
        path.write_bytes(gzip.compress(data))
    elif compression == "xz":
        path.write_bytes(lzma.compress(data))
    else:
        path.write_bytes(data)
    return path


COMPRESSIONS = ["plain", "gzip", "xz"]


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_lirs_skips_checkpoints_and_blank_lines(tmp_path: Path, compression: str) -> None:
    data = b"0\r\n1\r\n*\r\n2\n\n*\n-5\n  7  \n12"  # CRLF, checkpoints, a blank, no final newline
    path = _write(tmp_path / "t.trace", data, compression)
    assert list(traces.read_lirs(path)) == [0, 1, 2, -5, 7, 12]


def test_lirs_reports_the_bad_line(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.trace", b"1\n2\nx3\n", "gzip")
    with pytest.raises(traces.TraceFormatError, match=r"t\.trace:3: .*x3"):
        list(traces.read_lirs(path))


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_arc_lines_expand_to_consecutive_ids(tmp_path: Path, compression: str) -> None:
    data = b"1 1 0 0\n230027 3 0 1\n\n5 0 0 2\n9 2 0 3\n"
    path = _write(tmp_path / "t.arc", data, compression)
    assert list(traces.read_arc(path)) == [1, 230027, 230028, 230029, 9, 10]


@pytest.mark.parametrize("line", [b"12\n", b"a 1 0 0\n", b"1 -2 0 0\n"])
def test_arc_rejects_malformed_lines(tmp_path: Path, line: bytes) -> None:
    path = _write(tmp_path / "t.arc", b"1 1 0 0\n" + line, "plain")
    with pytest.raises(traces.TraceFormatError, match=r"t\.arc:2:"):
        list(traces.read_arc(path))


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_int64be_reads_signed_big_endian(tmp_path: Path, compression: str) -> None:
    keys = [0, 1, -1, 2**63 - 1, -(2**63), 0x391C8EE0C57542C7]
    data = b"".join(struct.pack(">q", k) for k in keys)
    path = _write(tmp_path / "corda", data, compression)
    assert list(traces.read_int64be(path)) == keys


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_int32be_reads_signed_big_endian(tmp_path: Path, compression: str) -> None:
    keys = [0, 1, 2, 0, -7, 2**31 - 1, -(2**31)]
    data = b"".join(struct.pack(">i", k) for k in keys)
    path = _write(tmp_path / "web.trace.xz", data, compression)
    assert list(traces.read_int32be(path)) == keys


def test_binary_reader_crosses_block_boundaries(tmp_path: Path) -> None:
    # More than one 64 KiB block, with a record count that does not divide the block evenly.
    keys = list(range(-10_000, 10_001))
    data = b"".join(struct.pack(">i", k) for k in keys)
    path = _write(tmp_path / "big", data, "xz")
    assert list(traces.read_int32be(path)) == keys


def test_binary_reader_reports_a_truncated_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "cut", struct.pack(">q", 5) + b"\x00\x01\x02", "gzip")
    reader = traces.read_int64be(path)
    assert next(reader) == 5
    with pytest.raises(traces.TraceFormatError, match="3 trailing byte"):
        next(reader)


def test_readers_are_lazy(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.trace", b"1\n2\nnot-a-key\n", "plain")
    reader = traces.read_lirs(path)
    assert list(itertools.islice(reader, 2)) == [1, 2]  # the bad line has not been read yet


def test_read_trace_dispatches_and_load_keys_packs(tmp_path: Path) -> None:
    path = _write(tmp_path / "t.arc.gz", b"3 2 0 0\n", "gzip")
    assert list(traces.read_trace(path, "arc")) == [3, 4]
    loaded = traces.load_keys(path, traces.TraceFormat.ARC)
    assert loaded.typecode == "q"
    assert list(loaded) == [3, 4]
    with pytest.raises(traces.TraceFormatError, match="unknown trace format 'csv'"):
        traces.read_trace(path, "csv")


def test_catalogue_names_every_shared_trace() -> None:
    assert len(traces.CATALOGUE) == 17
    assert traces.CATALOGUE["oltp"].format is traces.TraceFormat.ARC
    assert traces.CATALOGUE["corda"].format is traces.TraceFormat.INT64BE
    assert traces.CATALOGUE["web07"].format is traces.TraceFormat.INT32BE
    assert traces.CATALOGUE["gli"].filename == "gli.trace.gz"


# --- reference policies --------------------------------------------------------------------------

# The textbook reference string (Silberschatz, "Operating System Concepts", 3 frames): OPT takes 9
# faults and LRU 12 out of 20 requests.
TEXTBOOK = [7, 0, 1, 2, 0, 3, 0, 4, 2, 3, 0, 3, 2, 1, 2, 0, 1, 7, 0, 1]


def test_lru_textbook() -> None:
    assert policies.lru_hits(TEXTBOOK, 3) == policies.HitCount(hits=8, requests=20)


def test_opt_textbook() -> None:
    assert policies.opt_hits(TEXTBOOK, 3) == policies.HitCount(hits=11, requests=20)


def test_lru_and_opt_by_hand() -> None:
    # capacity 2: 1 m, 2 m, 1 h, 3 m (LRU evicts 2; OPT evicts 1, needed later than 2),
    # 2: LRU m (evicts 1) / OPT h, 1: LRU m / OPT m.
    seq = [1, 2, 1, 3, 2, 1]
    assert policies.lru_hits(seq, 2).hits == 1
    assert policies.opt_hits(seq, 2).hits == 2


def test_opt_bypass_declines_a_key_needed_last() -> None:
    # capacity 1: classic OPT must admit 2 and loses 1; with bypass 2 is not admitted and 1 hits.
    assert policies.opt_hits([1, 2, 1], 1).hits == 0
    assert policies.opt_hits([1, 2, 1], 1, bypass=True).hits == 1


def test_scan_larger_than_lru_gets_nothing_opt_keeps_part() -> None:
    loop = list(range(5)) * 4  # a loop over 5 keys through a cache of 4
    assert policies.lru_hits(loop, 4).hits == 0
    # OPT: 4 misses fill the cache; then it evicts the key needed furthest ahead, so the 4 keys it
    # keeps hit and one miss comes every 4 requests (at 4, 8, 12, 16): 20 - 8 misses = 12 hits.
    assert policies.opt_hits(loop, 4).hits == 12


def test_hit_ratio_is_a_percentage() -> None:
    assert policies.HitCount(1, 4).ratio == 25.0
    assert policies.HitCount(0, 0).ratio == 0.0


def test_next_uses() -> None:
    assert list(policies.next_uses([5, 6, 5, 5, 7])) == [2, 6, 3, 8, 9]


def test_policies_reject_a_zero_capacity() -> None:
    with pytest.raises(ValueError, match="capacity"):
        policies.lru_hits([1], 0)
    with pytest.raises(ValueError, match="capacity"):
        policies.opt_hits([1], 0)
    with pytest.raises(ValueError, match="nexts"):
        policies.opt_hits([1, 2], 1, nexts=[1])


def _brute_force_optimum(seq: Sequence[int], capacity: int) -> int:
    """The most hits any demand-paging cache can get, by trying every eviction choice."""
    best = 0

    def walk(i: int, resident: frozenset[int], hits: int) -> None:
        nonlocal best
        if i == len(seq):
            best = max(best, hits)
            return
        key = seq[i]
        if key in resident:
            walk(i + 1, resident, hits + 1)
        elif len(resident) < capacity:
            walk(i + 1, resident | {key}, hits)
        else:
            for victim in resident:
                walk(i + 1, (resident - {victim}) | {key}, hits)

    walk(0, frozenset(), 0)
    return best


def test_opt_is_optimal_and_at_least_lru_on_random_sequences() -> None:
    rng = random.Random(20240602)
    for _ in range(60):
        seq = [rng.randrange(5) for _ in range(rng.randrange(1, 11))]
        capacity = rng.randrange(1, 4)
        opt = policies.opt_hits(seq, capacity).hits
        assert opt == _brute_force_optimum(seq, capacity), (seq, capacity)
        assert opt >= policies.lru_hits(seq, capacity).hits
        assert policies.opt_hits(seq, capacity, bypass=True).hits >= opt


# --- the benchmark scripts' plumbing, on tiny inputs --------------------------------------------


def test_hit_ratio_replays_a_small_trace_end_to_end(tmp_path: Path) -> None:
    import hit_ratio

    # A "loop" trace of our own: a loop over 6 keys, 5 times, then a scan of new keys.
    keys = list(range(6)) * 5 + list(range(100, 110))
    _write(tmp_path / "loop.trace.gz", "\n".join(map(str, keys)).encode(), "gzip")
    out_json, out_md = tmp_path / "r.json", tmp_path / "r.md"
    argv = ["--traces", str(tmp_path), "--only", "loop", "--size", "4", "--size", "5"]
    argv += ["--workers", "1", "--json", str(out_json), "--markdown", str(out_md)]
    assert hit_ratio.main(argv) == 0  # without --check the status does not depend on the rows
    status = hit_ratio.main([*argv, "--check"])

    rows = json.loads(out_json.read_text())["rows"]
    assert [(r["trace"], r["size"], r["requests"]) for r in rows] == [
        ("loop", 4, 40),
        ("loop", 5, 40),
    ]
    for row in rows:
        assert row["lru"] == 0.0  # a loop longer than the cache defeats LRU
        assert row["opt"] == policies.opt_hits(keys, row["size"]).ratio
        assert row["wtinylfu"] is None
        assert row["store_stats_hits"] == row["ours_hits"]
        # No cache, whatever its admission policy, beats Bélády with bypass.
        assert row["ours_hits"] <= policies.opt_hits(keys, row["size"], bypass=True).hits
        assert row["reference_ok"] is True
    assert status == (1 if any(r["below"] for r in rows) else 0)
    text = out_md.read_text()
    assert text.startswith("# Hit ratio on real traces")
    assert "- uname -a:" in text
    assert "| 4 | 40 | 0.00 |" in text


def test_hit_ratio_flags_a_row_below_the_best() -> None:
    import hit_ratio

    row = hit_ratio.Row(
        trace="corda", size=1024, requests=10, lru=33.3, ours=2.0, opt=33.3, wtinylfu=2.33,
        wtinylfu_published=False, delta=-31.3, below=True, reference_ok=True, ours_hits=1,
        store_stats_hits=1, seconds=0.0,
    )  # fmt: skip
    assert "BELOW" in hit_ratio.format_text([row])


def test_hit_ratio_reports_missing_traces(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import hit_ratio

    assert hit_ratio.main(["--traces", str(tmp_path), "--only", "gli"]) == 2
    assert "gli" in capsys.readouterr().err


def test_engine_speed_harness_measures_every_peer_and_operation() -> None:
    import engine_speed

    settings = engine_speed.Settings(
        keys=64, batch=16, rounds=3, thread_ops=200, thread_repeats=1, seed=3
    )
    measurements = engine_speed.run_single_thread(settings)
    assert {(m.peer, m.operation) for m in measurements} == {
        (p.name, op) for p in engine_speed.PEERS for op in engine_speed.OPERATIONS
    }
    for m in measurements:
        assert len(m.ns_per_op) == settings.rounds  # the warm-up round is not kept
        assert m.median > 0
        if m.operation.startswith("get hit"):
            assert m.hit_fraction == 1.0, m.peer  # every peer really was hit
        elif m.operation.startswith("get miss"):
            assert m.hit_fraction == 0.0, m.peer
    throughput = engine_speed.run_threads(settings)
    assert [t.peer for t in throughput] == ["ours", "cachetools + Lock", "cachebox"]
    assert all(t.one_thread > 0 and t.two_threads > 0 for t in throughput)


def test_ordered_dict_lru_evicts_the_least_recent() -> None:
    import engine_speed

    lru = engine_speed.OrderedDictLRU(2)
    lru["a"] = 1
    lru["b"] = 2
    assert lru.get("a") == 1  # a is now the most recent
    lru["c"] = 3
    assert (lru.get("b"), lru.get("a"), lru.get("c"), len(lru)) == (None, 1, 3, 2)


@pytest.mark.parametrize("structure", ["dict", "ours", "cachetools", "OrderedDict", "cachebox"])
def test_engine_memory_meters_a_structure_without_evicting(structure: str) -> None:
    import engine_memory

    footprint = engine_memory.measure(structure, "tracemalloc", 2000, "bytes")
    assert footprint.length == 2000  # bounded at exactly the entry count: nothing evicted
    assert footprint.bytes > 0


def test_wakeup_measures_every_operation_after_every_sleep(tmp_path: Path) -> None:
    import wakeup

    assert wakeup.main(["--samples", "2", "--markdown", str(tmp_path / "w.md")]) == 0
    text = (tmp_path / "w.md").read_text(encoding="utf-8")
    for operation in ("getpid", "pread 4 KiB", "sqlite SELECT (miss)", "python work"):
        assert f"| {operation} |" in text
    rows = wakeup.run(2)
    assert [row["operation"] for row in rows][2] == "sqlite SELECT (miss)"
    assert all(float(str(row["penalty after 50 ms"])) > 0 for row in rows)
