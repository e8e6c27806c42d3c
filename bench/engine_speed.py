"""Nanoseconds per operation of the L0 store beside its peers, measured in one process and one run.

The structures (all bounded to ``--keys`` entries except ``dict``):

- **ours**: ``stratacache.engine.Store(max_entries=N, rng=random.Random(seed))``
- **dict**: a plain ``dict`` (``d.get(k)``, ``d[k] = v``): the floor any Python cache pays
- **cachetools**: ``cachetools.LRUCache(maxsize=N)`` (``c.get(k)``, ``c[k] = v``)
- **cachebox**: ``cachebox.LRUCache(N)`` (Rust; ``c.get(k)``, ``c[k] = v``)
- **odict LRU**: the textbook ``OrderedDict`` LRU in a small class, as a reference point

The operations, each on a freshly built and filled structure:

- ``get hit``: every key requested is resident;
- ``get miss``: keys from a disjoint set, never resident;
- ``set overwrite``: ``set`` of a resident key;
- ``set new (evicts)``: ``set`` of a key never seen before into a full cache, so every call evicts
  (or, for ours, may reject the newcomer at admission). ``dict`` has no bound and simply grows.

The access sequences are generated before any timing, from ``--keys`` 16-character ``str`` keys, in
two distributions: Zipf (s = 1, ranks shuffled over the keys) and uniform. Each sequence is cut into
batches of ``--batch`` operations. One round times one batch for every structure in turn (so that
a drift in machine speed hits every structure alike), and ``--rounds`` rounds are run after one
untimed warm-up round; the garbage collector is disabled while timing. For each structure and
operation the table gives the median and p99 of the per-batch ns/op (the time of one batch divided
by its size: this includes the ``for`` loop and the method call, the same for every structure), and
the ratios of the medians: ours / cachetools, ours / dict, ours / cachebox and odict / cachetools.

Then ``get`` throughput on one shared structure: hits/s with 1 thread and with 2 threads doing gets
at once (from a barrier, each over its own Zipf sequence), for ours, for cachetools guarded by a
``threading.Lock`` (it is not thread-safe by itself) and for cachebox (thread-safe by itself).

Run it on a quiet machine (nothing else busy), from the repository root::

    .venv/bin/python bench/engine_speed.py --markdown bench/results/engine_speed.md \\
        --json bench/results/engine_speed.json

``--quick`` shrinks everything to a smoke test of a few seconds (numbers not meaningful).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import random
import statistics
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import machine

__all__ = ["OPERATIONS", "PEERS", "Measurement", "OrderedDictLRU", "Settings", "main"]

VALUE = b"\x00value\x00\x00"  # 8 bytes, never None, shared by every entry of every structure


class OrderedDictLRU:
    """The textbook LRU: an ``OrderedDict`` in recency order, oldest first."""

    __slots__ = ("_data", "_maxsize")

    def __init__(self, maxsize: int) -> None:
        self._data: OrderedDict[str, object] = OrderedDict()
        self._maxsize = maxsize

    def get(self, key: str, default: object = None) -> object:
        """The value for ``key`` (made most recent), or ``default``."""
        try:
            value = self._data[key]
        except KeyError:
            return default
        self._data.move_to_end(key)
        return value

    def __setitem__(self, key: str, value: object) -> None:
        data = self._data
        data[key] = value
        data.move_to_end(key)
        if len(data) > self._maxsize:
            data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


@dataclass(frozen=True, slots=True)
class _Peer:
    """How to build a structure and reach its get and set."""

    name: str
    build: Callable[[int, int], Any]  # (capacity, seed) -> structure
    getter: Callable[[Any], Callable[[str], object]]
    setter: Callable[[Any], Callable[[str, object], object]]


def _build_ours(capacity: int, seed: int) -> Any:
    from stratacache.engine import Store

    return Store(max_entries=capacity, rng=random.Random(seed))


def _build_cachetools(capacity: int, seed: int) -> Any:
    import cachetools

    return cachetools.LRUCache(maxsize=capacity)


def _build_cachebox(capacity: int, seed: int) -> Any:
    import cachebox

    return cachebox.LRUCache(capacity)


def _get(structure: Any) -> Callable[[str], object]:
    return structure.get  # type: ignore[no-any-return]


def _setitem(structure: Any) -> Callable[[str, object], object]:
    return structure.__setitem__  # type: ignore[no-any-return]


def _set_method(structure: Any) -> Callable[[str, object], object]:
    return structure.set  # type: ignore[no-any-return]


PEERS: tuple[_Peer, ...] = (
    _Peer("ours", _build_ours, _get, _set_method),
    _Peer("dict", lambda capacity, seed: {}, _get, _setitem),
    _Peer("cachetools", _build_cachetools, _get, _setitem),
    _Peer("cachebox", _build_cachebox, _get, _setitem),
    _Peer("odict LRU", lambda capacity, seed: OrderedDictLRU(capacity), _get, _setitem),
)

OPERATIONS = (
    "get hit (zipf)",
    "get hit (uniform)",
    "get miss (zipf)",
    "get miss (uniform)",
    "set overwrite (zipf)",
    "set overwrite (uniform)",
    "set new (evicts)",
)


@dataclass(frozen=True, slots=True)
class Settings:
    """The sizes of one run."""

    keys: int
    batch: int
    rounds: int
    thread_ops: int
    thread_repeats: int
    seed: int


FULL = Settings(keys=100_000, batch=10_000, rounds=60, thread_ops=500_000, thread_repeats=5, seed=1)
QUICK = Settings(keys=10_000, batch=2_000, rounds=5, thread_ops=20_000, thread_repeats=2, seed=1)


@dataclass(slots=True)
class Measurement:
    """Per-batch ns/op of one structure on one operation."""

    peer: str
    operation: str
    ns_per_op: list[float] = field(default_factory=list)
    hit_fraction: float | None = None
    """For get rows: the share of gets that found a value in an untimed check pass."""

    @property
    def median(self) -> float:
        """Median of the per-batch ns/op."""
        return statistics.median(self.ns_per_op)

    @property
    def p99(self) -> float:
        """99th percentile of the per-batch ns/op (close to the slowest batch with few batches)."""
        if len(self.ns_per_op) < 2:
            return self.ns_per_op[0]
        return statistics.quantiles(self.ns_per_op, n=100, method="inclusive")[98]


# --- workload generation -------------------------------------------------------------------------


def _keys(prefix: str, count: int) -> list[str]:
    # 16 characters: a 1-letter prefix, 15 digits.
    return [f"{prefix}{i:015d}" for i in range(count)]


def _zipf(rng: random.Random, keys: Sequence[str], count: int, s: float = 1.0) -> list[str]:
    ranked = list(keys)
    rng.shuffle(ranked)  # rank r is a random key, so popularity is not tied to insertion order
    weights = list(itertools.accumulate(1.0 / (r**s) for r in range(1, len(ranked) + 1)))
    return rng.choices(ranked, cum_weights=weights, k=count)


def _uniform(rng: random.Random, keys: Sequence[str], count: int) -> list[str]:
    return rng.choices(keys, k=count)


def _batches(sequence: list[str], size: int) -> list[list[str]]:
    return [sequence[i : i + size] for i in range(0, len(sequence), size)]


# --- timing --------------------------------------------------------------------------------------


def _time_gets(get: Callable[[str], object], batch: list[str]) -> float:
    start = time.perf_counter_ns()
    for key in batch:
        get(key)
    return (time.perf_counter_ns() - start) / len(batch)


def _time_sets(put: Callable[[str, object], object], batch: list[str]) -> float:
    value = VALUE
    start = time.perf_counter_ns()
    for key in batch:
        put(key, value)
    return (time.perf_counter_ns() - start) / len(batch)


def _filled(peer: _Peer, resident: Sequence[str], settings: Settings) -> Any:
    structure = peer.build(settings.keys, settings.seed)
    put = peer.setter(structure)
    for key in resident:
        put(key, VALUE)
    return structure


def _hit_fraction(get: Callable[[str], object], batch: list[str]) -> float:
    return sum(get(k) is not None for k in batch) / len(batch)


def _run_operation(
    operation: str,
    batches: list[list[str]],
    resident: Sequence[str],
    settings: Settings,
) -> list[Measurement]:
    """Time ``operation`` for every peer, one batch each per round; batches[0] is the warm-up."""
    is_get = operation.startswith("get")
    structures = [_filled(peer, resident, settings) for peer in PEERS]
    calls = [
        (peer.getter(s) if is_get else peer.setter(s))
        for peer, s in zip(PEERS, structures, strict=True)
    ]
    results = [Measurement(peer.name, operation) for peer in PEERS]
    timer = _time_gets if is_get else _time_sets
    gc.collect()
    gc.disable()
    try:
        for round_no, batch in enumerate(batches):
            for call, result in zip(calls, results, strict=True):
                elapsed = timer(call, batch)  # type: ignore[arg-type]
                if round_no:  # round 0 warms up caches, branch predictors and the read buffer
                    result.ns_per_op.append(elapsed)
    finally:
        gc.enable()
    if is_get:
        # After timing, so the check does not warm the structures; a get-hit row must read 100 %.
        for peer, structure, result in zip(PEERS, structures, results, strict=True):
            result.hit_fraction = _hit_fraction(peer.getter(structure), batches[-1])
    return results


def run_single_thread(settings: Settings) -> list[Measurement]:
    """Every operation for every peer; returns the measurements in OPERATIONS order."""
    rng = random.Random(settings.seed)
    resident = _keys("k", settings.keys)
    absent = _keys("m", settings.keys)
    ops = settings.batch * (settings.rounds + 1)  # + the warm-up round
    sequences = {
        "get hit (zipf)": _zipf(rng, resident, ops),
        "get hit (uniform)": _uniform(rng, resident, ops),
        "get miss (zipf)": _zipf(rng, absent, ops),
        "get miss (uniform)": _uniform(rng, absent, ops),
        "set overwrite (zipf)": _zipf(rng, resident, ops),
        "set overwrite (uniform)": _uniform(rng, resident, ops),
        # Never seen before: every set of this row brings a new key into a full cache.
        "set new (evicts)": _keys("n", ops),
    }
    measurements: list[Measurement] = []
    for operation in OPERATIONS:
        print(f"  {operation} ...", file=sys.stderr, flush=True)
        batches = _batches(sequences[operation], settings.batch)
        measurements += _run_operation(operation, batches, resident, settings)
    return measurements


# --- threads -------------------------------------------------------------------------------------


class _LockedGet:
    """cachetools' get behind a lock, as a thread-safe caller must use it."""

    __slots__ = ("_get", "_lock")

    def __init__(self, get: Callable[[str], object]) -> None:
        self._get = get
        self._lock = threading.Lock()

    def __call__(self, key: str) -> object:
        with self._lock:
            return self._get(key)


@dataclass(frozen=True, slots=True)
class Throughput:
    """Gets per second on one shared structure, with 1 and with 2 threads."""

    peer: str
    one_thread: float
    two_threads: float


def _gets_per_second(get: Callable[[str], object], sequences: list[list[str]]) -> float:
    barrier = threading.Barrier(len(sequences))
    spans: list[tuple[int, int]] = []

    def worker(sequence: list[str]) -> None:
        barrier.wait()
        # Each thread times itself: a main thread reading the clock after the barrier could be
        # kept off the GIL until the workers are done.
        start = time.perf_counter_ns()
        for key in sequence:
            get(key)
        spans.append((start, time.perf_counter_ns()))

    threads = [threading.Thread(target=worker, args=(seq,)) for seq in sequences]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = max(end for _, end in spans) - min(start for start, _ in spans)
    return sum(len(s) for s in sequences) / (elapsed / 1e9)


def run_threads(settings: Settings) -> list[Throughput]:
    """Median gets/s over ``thread_repeats`` runs with 1 and 2 threads, per thread-safe peer."""
    rng = random.Random(settings.seed + 1)
    resident = _keys("k", settings.keys)
    sequences = [_zipf(rng, resident, settings.thread_ops) for _ in range(2)]
    peers: list[tuple[str, Callable[[str], object]]] = []
    for peer in PEERS:
        if peer.name in ("ours", "cachebox"):
            peers.append((peer.name, peer.getter(_filled(peer, resident, settings))))
        elif peer.name == "cachetools":
            structure = _filled(peer, resident, settings)
            peers.append(("cachetools + Lock", _LockedGet(peer.getter(structure))))
    results = []
    gc.collect()
    gc.disable()
    try:
        for name, get in peers:
            print(f"  threads: {name} ...", file=sys.stderr, flush=True)
            _gets_per_second(get, [sequences[0][: settings.batch]])  # warm-up
            one = [_gets_per_second(get, sequences[:1]) for _ in range(settings.thread_repeats)]
            two = [_gets_per_second(get, sequences) for _ in range(settings.thread_repeats)]
            results.append(Throughput(name, statistics.median(one), statistics.median(two)))
    finally:
        gc.enable()
    return results


# --- reporting -----------------------------------------------------------------------------------


def _ratio(measurements: dict[tuple[str, str], Measurement], a: str, b: str, op: str) -> str:
    ma, mb = measurements.get((a, op)), measurements.get((b, op))
    if ma is None or mb is None:
        return "-"
    return f"{ma.median / mb.median:.2f}"


_RATIOS = (
    ("ours", "cachetools"),
    ("ours", "dict"),
    ("ours", "cachebox"),
    ("odict LRU", "cachetools"),
)


def _rows(measurements: Sequence[Measurement]) -> tuple[list[str], list[list[str]]]:
    index = {(m.peer, m.operation): m for m in measurements}
    header = ["operation"] + [p.name for p in PEERS] + [f"{a}/{b}" for a, b in _RATIOS]
    rows = []
    for op in OPERATIONS:
        cells = [op]
        for peer in PEERS:
            m = index[(peer.name, op)]
            cell = f"{m.median:.0f} / {m.p99:.0f}"
            # A get row whose check pass disagrees with its name says so in the cell.
            expected = 1.0 if op.startswith("get hit") else 0.0
            if m.hit_fraction is not None and m.hit_fraction != expected:
                cell += f" ({100 * m.hit_fraction:.0f} % hits!)"
            cells.append(cell)
        cells += [_ratio(index, a, b, op) for a, b in _RATIOS]
        rows.append(cells)
    return header, rows


def _verdicts(measurements: Sequence[Measurement]) -> list[str]:
    """Issue 2's speed targets, judged on the Zipf rows of this run."""
    index = {(m.peer, m.operation): m.median for m in measurements}
    hit, ct_hit = index[("ours", "get hit (zipf)")], index[("cachetools", "get hit (zipf)")]
    dict_hit = index[("dict", "get hit (zipf)")]
    lines = [
        f"get hit: ours/cachetools = {hit / ct_hit:.2f} (target <= 0.50) "
        + ("meets" if hit <= 0.5 * ct_hit else "MISSES"),
        f"get hit: ours/dict.get = {hit / dict_hit:.2f} (target <= 5) "
        + ("meets" if hit <= 5 * dict_hit else "MISSES"),
    ]
    for op in ("set overwrite (zipf)", "set new (evicts)"):
        ours, ct = index[("ours", op)], index[("cachetools", op)]
        lines.append(
            f"{op}: ours/cachetools = {ours / ct:.2f} (target <= 1) "
            + ("meets" if ours <= ct else "MISSES")
        )
    return lines


def _text_table(header: list[str], rows: list[list[str]]) -> str:
    table = [header, *rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    return "\n".join(
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in table
    )


def _markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _thread_rows(throughput: Sequence[Throughput]) -> tuple[list[str], list[list[str]]]:
    header = ["structure", "1 thread (M gets/s)", "2 threads (M gets/s)", "2 / 1"]
    rows = [
        [
            t.peer,
            f"{t.one_thread / 1e6:.2f}",
            f"{t.two_threads / 1e6:.2f}",
            f"{t.two_threads / t.one_thread:.2f}",
        ]
        for t in throughput
    ]
    return header, rows


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="engine_speed.py", description="ns/op of Store vs peers")
    parser.add_argument("--quick", action="store_true", help="a small smoke run")
    parser.add_argument("--keys", type=int, help="entries in each structure")
    parser.add_argument("--batch", type=int, help="operations per timed batch")
    parser.add_argument("--rounds", type=int, help="timed batches per structure and operation")
    parser.add_argument("--seed", type=int, help="seed of the workloads and the Store")
    parser.add_argument("--no-threads", action="store_true", help="skip the threads section")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write raw results as JSON")
    parser.add_argument("--markdown", type=Path, metavar="OUT", help="write a Markdown report")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the tables; 0 on success, 2 on bad arguments."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = _parse(arguments)
    base = QUICK if args.quick else FULL
    overrides = {
        name: getattr(args, name)
        for name in ("keys", "batch", "rounds", "seed")
        if getattr(args, name) is not None
    }
    if any(v < 1 for k, v in overrides.items() if k != "seed"):
        print("engine_speed: --keys, --batch and --rounds must be at least 1", file=sys.stderr)
        return 2
    settings = Settings(**{**asdict(base), **overrides})
    info = machine.describe()
    command = " ".join([".venv/bin/python bench/engine_speed.py", *arguments])
    print(f"engine_speed: {settings}", file=sys.stderr)

    measurements = run_single_thread(settings)
    throughput = [] if args.no_threads else run_threads(settings)

    header, rows = _rows(measurements)
    verdicts = _verdicts(measurements)
    print("ns per operation, median / p99 of per-batch means")
    print(_text_table(header, rows))
    if throughput:
        print()
        print(_text_table(*_thread_rows(throughput)))
    print()
    print("\n".join(verdicts))
    if args.quick:
        print("(--quick: a smoke run; these numbers are not meaningful)")

    if args.json:
        payload = {
            "machine": info,
            "command": command,
            "settings": asdict(settings),
            "single_thread": [
                {**asdict(m), "median": m.median, "p99": m.p99} for m in measurements
            ],
            "threads": [asdict(t) for t in throughput],
        }
        args.json.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    if args.markdown:
        parts = [
            "# Engine speed",
            "",
            machine.markdown_block(info, command),
            f"Settings: {settings}. Method: bench/README.md.",
            "",
            "## ns per operation (median / p99 of per-batch means; lower is better)",
            "",
            _markdown_table(header, rows),
            "",
        ]
        if throughput:
            parts += [
                "## get throughput on one shared structure",
                "",
                _markdown_table(*_thread_rows(throughput)),
                "",
            ]
        parts += ["## Targets (issue 2)", "", *(f"- {v}" for v in verdicts), ""]
        args.markdown.write_text("\n".join(parts), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
